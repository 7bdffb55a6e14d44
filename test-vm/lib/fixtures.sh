# shellcheck shell=bash
# What the guest fetches: the static olboot, the fleet config, the /opt archive and a flat apt
# repository, all served by a plain HTTP server on the host's loopback (the guest reaches it
# as http://10.0.2.100 through QEMU's guestfwd; it reaches nothing else).

GUEST_BASE=http://10.0.2.100
WWW=$CACHE/www

# OLBOOT_VM_BIN=PATH tests a binary built elsewhere (a release, another branch) instead.
build_olboot() {
  if [[ -n ${OLBOOT_VM_BIN:-} ]]; then
    OLBOOT=$(realpath "$OLBOOT_VM_BIN")
    log "olboot: $OLBOOT (OLBOOT_VM_BIN)"
  else
    log "olboot: cargo build --release --target x86_64-unknown-linux-musl"
    (cd "$REPO" && nice cargo build -q --release --target x86_64-unknown-linux-musl)
    OLBOOT=$REPO/target/x86_64-unknown-linux-musl/release/olboot
  fi
  file -b "$OLBOOT" 2>/dev/null | grep 'static' >/dev/null ||
    ldd "$OLBOOT" 2>&1 | grep 'not a dynamic' >/dev/null || die "$OLBOOT is not static"
}

# The generated /opt tree lives on its own ext4 image (this machine's root filesystem is slow
# at many small files); its manifest is what the guest's /1/opt must match.
ensure_opt_tree() {
  local key
  key=$(sha256sum "$HERE/lib/gen-opt.py" | cut -c1-12)
  OPT_DIR=$CACHE/opt-$key
  OPT_MANIFEST=$OPT_DIR/manifest
  if [[ ! -f $OPT_DIR/done ]]; then
    log "opt: generating a legacy /opt tree"
    rm -rf "$OPT_DIR"
    mkdir -p "$OPT_DIR"
    truncate -s 512M "$OPT_DIR/tree.img"
    mkfs.ext4 -q -F "$OPT_DIR/tree.img"
    mount_loop "$OPT_DIR/tree.img" "$OPT_DIR/mnt" rw
    python3 "$HERE/lib/gen-opt.py" "$OPT_DIR/mnt/opt"
    python3 "$HERE/lib/manifest.py" "$OPT_DIR/mnt/opt" >"$OPT_MANIFEST"
    umount "$OPT_DIR/mnt"
    touch "$OPT_DIR/done"
  fi
  log "opt: $(wc -l <"$OPT_MANIFEST") entries, $(awk '$2 == "file" {s += $6} END {printf "%.0f MB", s / 1e6}' "$OPT_MANIFEST")"
}

# Pack with `olboot pack`; redone whenever the olboot binary changes.
ensure_opt_archive() {
  local bin_sha
  bin_sha=$(sha256_of "$OLBOOT")
  OPT_ARCHIVE=$OPT_DIR/opt.tar.zst
  if [[ -f $OPT_DIR/packed-by && $(cat "$OPT_DIR/packed-by") == "$bin_sha" ]]; then
    OPT_SHA=$(sha256_of "$OPT_ARCHIVE")
    return
  fi
  mount_loop "$OPT_DIR/tree.img" "$OPT_DIR/mnt" ro
  rm -f "$OPT_ARCHIVE" "$OPT_ARCHIVE.sha256"
  log "opt: olboot pack"
  "$OLBOOT" pack "$OPT_DIR/mnt/opt" -o "$OPT_ARCHIVE" >"$OPT_DIR/pack.log" 2>&1 ||
    { cat "$OPT_DIR/pack.log" >&2; die "olboot pack failed"; }
  umount "$OPT_DIR/mnt"
  OPT_SHA=$(sha256_of "$OPT_ARCHIVE")
  [[ -f $OPT_ARCHIVE.sha256 ]] && ! grep -q "^$OPT_SHA " "$OPT_ARCHIVE.sha256" &&
    die "olboot pack: $OPT_ARCHIVE.sha256 does not match the archive"
  echo "$bin_sha" >"$OPT_DIR/packed-by"
  log "opt: packed $(du -h "$OPT_ARCHIVE" | cut -f1), sha256 $OPT_SHA"
}

# A flat repository with the packages the test host's roles install, and their dependencies
# that the image lacks, taken from this machine's apt lists (Debian bookworm like the image).
ensure_repo() {
  local pkgs key
  mapfile -t pkgs < <(python3 "$HERE/lib/render.py" packages "$REPO/cloud-config/fleet.yaml" "$HOST")
  key=$(printf '%s\n' "${pkgs[@]}" | cat - "$IMG_PKGLIST" | sha256sum | cut -c1-12)
  APT_REPO=$CACHE/repo-$key
  if [[ ! -f $APT_REPO/Release ]]; then
    log "repo: apt-get download ${pkgs[*]} and dependencies"
    rm -rf "$APT_REPO"
    mkdir -p "$APT_REPO"
    local closure
    closure=$(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts \
      --no-breaks --no-replaces --no-enhances "${pkgs[@]}" | grep '^[a-z0-9]' | sort -u |
      comm -23 - "$IMG_PKGLIST")
    if [[ -n $closure ]]; then
      # shellcheck disable=SC2086 # one package name per word
      (cd "$APT_REPO" && apt-get download -q $closure >"$APT_REPO/download.log" 2>&1) ||
        { cat "$APT_REPO/download.log" >&2; die "apt-get download failed"; }
    fi
    (cd "$APT_REPO" && apt-ftparchive packages . >Packages && apt-ftparchive release . >Release)
  fi
  log "repo: $(find "$APT_REPO" -name '*.deb' | wc -l) packages not in the image"
}

ensure_fixtures() {
  python3 "$HERE/lib/render.py" unit "$REPO/cloud-config/olboot.service" \
    "$REPO"/cloud-config/{web,memcache,db,solr}.yaml
  ensure_opt_tree
  ensure_opt_archive
  ensure_repo
  rm -rf "$WWW"
  mkdir -p "$WWW"
  cp "$OLBOOT" "$WWW/olboot"
  ln -s "$OPT_ARCHIVE" "$WWW/opt.tar.zst"
  ln -s "$APT_REPO" "$WWW/repo"
  python3 "$HERE/lib/render.py" olboot "$REPO/cloud-config/fleet.yaml" "$WWW/fleet.yaml" \
    "$GUEST_BASE" "$OPT_SHA"
  "$OLBOOT" validate -c "$WWW/fleet.yaml" --host "$HOST" >/dev/null ||
    die "the rendered fleet config is invalid"
  python3 "$HERE/lib/render.py" user-data "$REPO/cloud-config/$ROLE.yaml" "$WWW/user-data" \
    BASE="$GUEST_BASE" OLBOOT_URL="$GUEST_BASE/olboot" OLBOOT_SHA256="$(sha256_of "$OLBOOT")" \
    FLEET_URL="$GUEST_BASE/fleet.yaml" FLEET_SHA256="$(sha256_of "$WWW/fleet.yaml")"
  python3 "$HERE/lib/render.py" compare "$REPO/cloud-config/fleet.yaml" "$HOST" \
    "$WWW/user-data.compare" "$GUEST_BASE" "$OPT_SHA"
}

# The same seed for test-vm/Vagrantfile: everything read from the synced folder (file://),
# and /dev/sdb as a further data disk candidate (VirtualBox attaches SATA disks).
vagrant_fixtures() {
  local base=file:///vagrant/test-vm/cache/www out=$WWW/vagrant
  mkdir -p "$out"
  python3 "$HERE/lib/render.py" olboot "$REPO/cloud-config/fleet.yaml" "$out/fleet.yaml" \
    "$base" "$OPT_SHA" /dev/sdb
  python3 "$HERE/lib/render.py" user-data "$REPO/cloud-config/$ROLE.yaml" "$out/user-data" \
    BASE="$base" OLBOOT_URL="$base/olboot" OLBOOT_SHA256="$(sha256_of "$OLBOOT")" \
    FLEET_URL="$base/vagrant/fleet.yaml" FLEET_SHA256="$(sha256_of "$out/fleet.yaml")"
  log "fixtures: ready in $WWW (Vagrant seed: $out)"
}

# python3's http.server on a free loopback port; its request log tells what the guest fetched.
start_server() {
  HTTP_PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  HTTP_LOG=$STATE/http.log
  : >"$HTTP_LOG"
  python3 -u -m http.server --bind 127.0.0.1 --directory "$WWW" "$HTTP_PORT" >>"$HTTP_LOG" 2>&1 &
  local pid=$!
  add_cleanup "kill $pid 2>/dev/null; wait $pid 2>/dev/null"
  local i
  for i in $(seq 50); do
    curl -fsS -o /dev/null "http://127.0.0.1:$HTTP_PORT/fleet.yaml" 2>/dev/null && break
    ((i == 50)) && die "http server on 127.0.0.1:$HTTP_PORT did not start"
    sleep 0.1
  done
  log "server: http://127.0.0.1:$HTTP_PORT (guest: $GUEST_BASE)"
}
