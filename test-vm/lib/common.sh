# shellcheck shell=bash
# Logging, prerequisites, loop mounts and cleanup shared by the harness.

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Cleanup actions run in reverse order on exit, success or failure.
CLEANUP=()
add_cleanup() { CLEANUP+=("$*"); }
run_cleanup() {
  local i
  for ((i = ${#CLEANUP[@]} - 1; i >= 0; i--)); do
    eval "${CLEANUP[i]}" || true
  done
  CLEANUP=()
}

need_root() { [[ $(id -u) == 0 ]] || die "run as root (loop devices, mounts, mmdebstrap)"; }

install_prerequisites() {
  local missing=() cmd
  local -A want=([qemu-system-x86_64]=qemu-system-x86 [mmdebstrap]=mmdebstrap
    [genisoimage]=genisoimage [socat]=socat [apt-ftparchive]=apt-utils [mkfs.ext4]=e2fsprogs
    [busybox]=busybox-static [cpio]=cpio [zstd]=zstd [musl-gcc]=musl-tools [python3]=python3
    [gpg]=gpg [age]=age [xz]=xz-utils)
  for cmd in "${!want[@]}"; do
    command -v "$cmd" >/dev/null || missing+=("${want[$cmd]}")
  done
  python3 -c 'import yaml' 2>/dev/null || missing+=(python3-yaml)
  if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    apt-get -o DPkg::Lock::Timeout=600 update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q \
      --no-install-recommends "${missing[@]}" >/dev/null
  fi
  if ! rustup target list --installed | grep -x x86_64-unknown-linux-musl >/dev/null; then
    rustup target add x86_64-unknown-linux-musl
  fi
}

# mount_loop FILE DIR ro|rw
mount_loop() {
  local opts=loop
  [[ $3 == ro ]] && opts=loop,ro,noload
  mkdir -p "$2"
  mount -o "$opts" "$1" "$2"
  add_cleanup "mountpoint -q '$2' && umount '$2'"
}

unmount_loop() { umount "$1"; }

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }
