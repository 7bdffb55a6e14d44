# shellcheck shell=bash
# The guest image: Debian $SUITE (bookworm or trixie) with systemd, the suite's own cloud-init
# and cloud kernel, built once per suite with mmdebstrap from an explicit mirror (the host's
# apt sources play no part) and cached as a raw ext4 file labelled olroot (booted with
# root=LABEL=olroot: the order of vda/vdb in the guest does not follow the command line).

IMAGE_PACKAGES=systemd-sysv,udev,cloud-init,linux-image-cloud-amd64,e2fsprogs,nftables,iproute2,ifupdown,isc-dhcp-client,netbase,ca-certificates,curl,zstd,locales,procps
IMAGE_SIZE=3G
DEBIAN_MIRROR=${OLBOOT_VM_MIRROR:-http://deb.debian.org/debian}

# Files the image gets on top of the packages (the probe is the harness's eyes in the guest).
image_key() {
  { echo "$SUITE $DEBIAN_MIRROR"; cat "$HERE/lib/image.sh" "$HERE/lib/image-customize" "$HERE/lib/vm-probe"; } |
    sha256sum | cut -c1-12
}

# Sets IMG_BASE, IMG_KERNEL, IMG_INITRD, IMG_PKGLIST, IMG_STATUS (the image's dpkg status, for
# working out which packages the flat repository must carry); builds them when missing.
ensure_image() {
  local key dir
  key=$(image_key)
  dir=$CACHE/image-$SUITE-$key
  IMG_BASE=$dir/root.img IMG_KERNEL=$dir/vmlinuz IMG_INITRD=$dir/initrd.img
  IMG_PKGLIST=$dir/packages.txt IMG_MODULES=$dir/modules IMG_STATUS=$dir/dpkg/status
  if [[ -f $dir/done ]]; then
    log "image: cached ($dir)"
    return
  fi
  log "image: building Debian $SUITE with cloud-init (mmdebstrap from $DEBIAN_MIRROR, ~1-2 min)"
  rm -rf "$CACHE"/image-"$SUITE"-*/
  mkdir -p "$dir"
  local scratch=$dir/scratch.img mnt=$dir/mnt
  truncate -s 4G "$scratch"
  mkfs.ext4 -q -F "$scratch"
  mkdir -p "$mnt"
  mount_loop "$scratch" "$mnt" rw
  # mmdebstrap wants an empty directory: the scratch filesystem's root holds lost+found.
  local tree=$mnt/tree
  nice mmdebstrap --variant=minbase --include="$IMAGE_PACKAGES" \
    --customize-hook="$HERE/lib/image-customize \"\$1\" \"$HERE/lib/vm-probe\"" \
    "$SUITE" "$tree" "deb $DEBIAN_MIRROR $SUITE main" >"$dir/mmdebstrap.log" 2>&1 ||
    { tail -30 "$dir/mmdebstrap.log" >&2; die "mmdebstrap failed (log: $dir/mmdebstrap.log)"; }
  cp "$tree"/boot/vmlinuz-* "$IMG_KERNEL"
  cp "$tree"/boot/initrd.img-* "$IMG_INITRD"
  # shellcheck disable=SC2016 # dpkg-query's format, not a shell expansion
  chroot "$tree" dpkg-query -W -f '${Package}\n' | sort >"$IMG_PKGLIST"
  mkdir -p "$(dirname "$IMG_STATUS")"
  cp "$tree/var/lib/dpkg/status" "$IMG_STATUS"
  # The kernel modules the rescue initramfs needs to see virtio disks (load order kept in
  # lib/rescue-init); ext4 is built into Debian's cloud kernel. trixie's kernel compresses
  # its modules (.ko.xz): busybox's insmod gets them decompressed.
  local kver m ko
  kver=$(basename "$tree"/lib/modules/*)
  mkdir -p "$IMG_MODULES"
  for m in virtio/virtio virtio/virtio_ring virtio/virtio_pci_legacy_dev \
    virtio/virtio_pci_modern_dev virtio/virtio_pci block/virtio_blk; do
    # trixie's cloud kernel has the virtio core built in: only virtio_blk is a module there.
    grep -qx "kernel/drivers/$m.ko" "$tree/lib/modules/$kver/modules.builtin" && continue
    ko=$(compgen -G "$tree/lib/modules/$kver/kernel/drivers/$m.ko*" | head -1) || true
    [[ -n $ko ]] || die "image: no module $m in the $SUITE kernel $kver"
    case $ko in
      *.xz) xz -dc "$ko" >"$IMG_MODULES/${m##*/}.ko" ;;
      *.zst) zstd -qdc "$ko" >"$IMG_MODULES/${m##*/}.ko" ;;
      *) cp "$ko" "$IMG_MODULES/${m##*/}.ko" ;;
    esac
  done
  truncate -s "$IMAGE_SIZE" "$IMG_BASE"
  mkfs.ext4 -q -F -L olroot -d "$tree" "$IMG_BASE"
  unmount_loop "$mnt"
  rm -f "$scratch"
  touch "$dir/done"
  log "image: $SUITE built ($(du -sh --apparent-size "$IMG_BASE" | cut -f1) raw, kernel $kver)"
}
