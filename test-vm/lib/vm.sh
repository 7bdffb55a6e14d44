# shellcheck shell=bash
# Disks, seeds and QEMU runs. Each VM is a directory $STATE/<vm>/ with its disks and logs.

VM_CMDLINE="root=LABEL=olroot ro console=ttyS0 net.ifnames=0 panic=-1"

# new_vm VM: a fresh root disk (copy of the cached image) in $STATE/VM/.
new_vm() {
  local dir=$STATE/$1
  rm -rf "$dir"
  mkdir -p "$dir"
  cp --sparse=always "$IMG_BASE" "$dir/root.img"
}

# new_data_disk FILE: a blank 2 GB data volume (no signature at all).
new_data_disk() {
  rm -f "$1"
  truncate -s 2G "$1"
}

# make_seed VM USER_DATA HOSTNAME: the NoCloud seed (an ISO labelled cidata). Its network-config
# asks for DHCPv4 only: trixie's cloud-init (25.1) falls back to dhcp4 + dhcp6, and ifupdown's
# `dhclient -6` then waits for ever for a DHCPv6 server QEMU's user network does not have,
# holding networking.service (and all of cloud-init) for minutes.
make_seed() {
  local dir=$STATE/$1/seed
  mkdir -p "$dir"
  cp "$2" "$dir/user-data"
  printf 'instance-id: %s\nlocal-hostname: %s\n' "$1-$(date +%s)" "$3" >"$dir/meta-data"
  printf 'version: 2\nethernets:\n  eth0:\n    match: {name: eth0}\n    dhcp4: true\n    dhcp6: false\n' \
    >"$dir/network-config"
  genisoimage -quiet -output "$STATE/$1/seed.iso" -volid cidata -joliet -rock \
    "$dir/user-data" "$dir/meta-data" "$dir/network-config"
}

# KVM only when a guest really runs under it (on some machines /dev/kvm exists but hangs).
detect_accel() {
  if [[ -n ${OLBOOT_VM_ACCEL:-} ]]; then
    ACCEL=$OLBOOT_VM_ACCEL
  elif [[ -f $CACHE/accel ]]; then
    ACCEL=$(cat "$CACHE/accel")
  else
    ACCEL=tcg
    if [[ -r /dev/kvm && -w /dev/kvm ]]; then
      log "accel: probing KVM with a tiny guest (60 s at most)"
      local dir=$CACHE/accel-probe-$SUITE
      mkdir -p "$dir"
      build_initramfs "$dir/initrd" "$HERE/lib/probe-init"
      if timeout 60 qemu-system-x86_64 -accel kvm -cpu host -m 256 -nodefaults -display none \
        -no-reboot -serial "file:$dir/serial.log" -kernel "$IMG_KERNEL" -initrd "$dir/initrd" \
        -append "console=ttyS0 panic=-1" >/dev/null 2>&1 &&
        grep -q ACCEL-PROBE-OK "$dir/serial.log"; then
        ACCEL=kvm
      fi
    fi
    # Suites side by side may both probe: each writes whole.
    echo "$ACCEL" >"$CACHE/accel.$SUITE" && mv "$CACHE/accel.$SUITE" "$CACHE/accel"
  fi
  log "accel: $ACCEL (cached in $CACHE/accel; OLBOOT_VM_ACCEL=kvm|tcg overrides)"
}

# build_initramfs OUT INIT [OLBOOT]: busybox (static), the virtio modules and INIT as /init.
build_initramfs() {
  local out=$1 init=$2 bin=${3:-} dir
  dir=$(mktemp -d)
  mkdir -p "$dir"/{bin,dev,proc,sys,mnt,lib/modules}
  cp /bin/busybox "$dir/bin/busybox"
  ln -s busybox "$dir/bin/sh"
  cp "$IMG_MODULES"/*.ko "$dir/lib/modules/"
  install -m 0755 "$init" "$dir/init"
  [[ -n $bin ]] && install -m 0755 "$bin" "$dir/bin/olboot"
  (cd "$dir" && find . | cpio -o -H newc --quiet | gzip -9 >"$out")
  rm -rf "$dir"
}

# boot VM [KERNEL INITRD APPEND]: run the VM's disks until the guest powers off.
# Disks: $STATE/VM/root.img, the data disk named by $STATE/VM/data (a path), the seed if any.
# BOOT_NETDEV_EXTRA (e.g. ",hostfwd=tcp:127.0.0.1:PORT-:8080") adds to the user network,
# BOOT_APPEND_EXTRA to the kernel command line, and BOOT_HOOK names a function called every
# 2 s while the guest runs (the web scenario checks the guest from outside in it).
boot() {
  local vm=$1 kernel=${2:-$IMG_KERNEL} initrd=${3:-$IMG_INITRD} append=${4:-$VM_CMDLINE}${BOOT_APPEND_EXTRA:-}
  local dir=$STATE/$vm
  local serial=$dir/serial.log
  # TCG runs both vCPUs on one host thread (OLBOOT_VM_TCG_THREAD=multi overrides): with one
  # thread per vCPU, trixie's 6.12 kernel was seen to die early in boot with "Oops: int3" in
  # sched_clock_cpu (code patched by one vCPU while the other runs it); on this shared 2-core
  # machine a second TCG thread buys little anyway.
  local accel=$ACCEL
  [[ $ACCEL == tcg ]] && accel=tcg,thread=${OLBOOT_VM_TCG_THREAD:-single}
  # shellcheck disable=SC2054 # commas belong to the QEMU options
  local args=(-accel "$accel" -smp 2 -m 1536 -nodefaults -display none -no-reboot
    -serial "file:$serial" -kernel "$kernel" -initrd "$initrd" -append "$append"
    -drive "file=$dir/root.img,if=none,id=root,format=raw,cache=unsafe"
    -device virtio-blk-pci,drive=root
    -drive "file=$(cat "$dir/data"),if=none,id=data,format=raw,cache=unsafe"
    -device virtio-blk-pci,drive=data,serial=ol-data
    -netdev "user,id=n0,restrict=on,guestfwd=tcp:10.0.2.100:80-cmd:socat - TCP:127.0.0.1:$HTTP_PORT${BOOT_NETDEV_EXTRA:-}"
    -device virtio-net-pci,netdev=n0 -device virtio-rng-pci)
  if [[ $ACCEL == kvm ]]; then args+=(-cpu host); else args+=(-cpu max); fi
  # shellcheck disable=SC2054
  [[ -f $dir/seed.iso ]] && args+=(-drive "file=$dir/seed.iso,if=none,id=seed,format=raw,readonly=on"
    -device virtio-blk-pci,drive=seed)
  : >"$serial"
  local start=$SECONDS
  log "$vm: booting $SUITE ($ACCEL, serial log $serial)"
  nice qemu-system-x86_64 "${args[@]}" >"$dir/qemu.log" 2>&1 &
  local pid=$!
  add_cleanup "kill $pid 2>/dev/null || true"
  local last=$SECONDS line
  while kill -0 "$pid" 2>/dev/null; do
    if ((SECONDS - start > TIMEOUT)); then
      kill "$pid"
      wait "$pid" 2>/dev/null || true
      BOOT_WALL=$((SECONDS - start))
      log "$vm: no power-off after ${TIMEOUT}s: killed"
      return 1
    fi
    if ((SECONDS - last >= 20)); then
      last=$SECONDS
      line=$(tr -d '\r' <"$serial" | sed 's/\x1b\[[0-9;]*[a-zA-Z]//g' | grep -v '^\s*$' | tail -1 | cut -c1-100)
      log "$vm: $((SECONDS - start))s: $line"
    fi
    [[ -n ${BOOT_HOOK:-} ]] && "$BOOT_HOOK"
    sleep 2
  done
  local rc=0
  wait "$pid" || rc=$?
  BOOT_WALL=$((SECONDS - start))
  ((rc == 0)) || { cat "$dir/qemu.log" >&2; log "$vm: qemu exited with $rc"; return 1; }
  log "$vm: powered off after ${BOOT_WALL}s"
}
