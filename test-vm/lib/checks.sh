# shellcheck shell=bash
# Checks from the host, on the guest's disks mounted read-only after it powered off.

FAILS=0
ok() { printf '  ok    %s\n' "$1" >&2; }
fail() { printf '  FAIL  %s\n' "$1" >&2; FAILS=$((FAILS + 1)); }
# check DESCRIPTION COMMAND...: ok when the command succeeds.
check() {
  local what=$1
  shift
  if "$@" >/dev/null 2>&1; then ok "$what"; else fail "$what"; fi
}

# mount_vm VM: its root at $R, its data disk at $D (both read-only).
mount_vm() {
  R=$STATE/$1/mnt-root D=$STATE/$1/mnt-data
  mount_loop "$STATE/$1/root.img" "$R" ro
  mkdir -p "$D"
  # A data disk left blank (olboot failed before formatting) has nothing to mount.
  if blkid -p "$(cat "$STATE/$1/data")" >/dev/null 2>&1; then
    mount_loop "$(cat "$STATE/$1/data")" "$D" ro
  fi
}
umount_vm() {
  umount "$R"
  if mountpoint -q "$D"; then umount "$D"; fi
}

# The report olboot wrote (below the root), as one value: report_get 'python expr on r'.
report_get() {
  python3 -c 'import json, sys; r = json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' \
    "$R/var/lib/olboot/report.json" "$1"
}
# Milliseconds olboot's steps took, from its report (its timestamps have whole seconds): work,
# not wall time, since steps overlap.
olboot_ms() {
  report_get 'sum(s["duration_ms"] for s in r["steps"])' 2>/dev/null || echo "-"
}
# Milliseconds from the first step's start to the last step's end (steps' times have
# milliseconds): how long the machine waited for olboot.
olboot_wall_ms() {
  report_get '(lambda t: round(1000 * (max(t(s["finished"]) for s in r["steps"] if s.get("finished")) - min(t(s["started"]) for s in r["steps"] if s.get("started")))))(lambda v: __import__("datetime").datetime.fromisoformat(v.replace("Z", "+00:00")).timestamp())' 2>/dev/null || echo "-"
}

latest_probe() { find "$R/var/lib/olboot-test" -maxdepth 1 -name 'boot-*' | sort -V | tail -1; }

cloud_init_ok() {
  python3 -c 'import json, sys; r = json.load(open(sys.argv[1]))["v1"]; sys.exit(1 if r["errors"] else 0)' \
    "$R/var/lib/cloud/data/result.json"
}

fstab_has() { awk -v mp="$1" -v src="$2" '$1 !~ /^#/ && $2 == mp && $1 ~ src {f = 1} END {exit !f}' "$R/etc/fstab"; }

volume_formatted() {
  [[ $(blkid -p -o value -s TYPE "$(cat "$STATE/$1/data")") == ext4 ]] &&
    [[ $(blkid -p -o value -s LABEL "$(cat "$STATE/$1/data")") == ol-data ]]
}

opt_identical() {
  [[ -d $D/opt ]] || return 1
  python3 "$HERE/lib/manifest.py" "$D/opt" >"$STATE/opt.manifest.guest"
  diff -q "$OPT_MANIFEST" "$STATE/opt.manifest.guest"
}

# The packages the host's roles install (CHECK_HOST: the host the VM plays, default $HOST).
packages_installed() {
  local p
  for p in $(python3 "$HERE/lib/render.py" packages "$WWW/fleet.yaml" "${CHECK_HOST:-$HOST}"); do
    [[ $(dpkg-query --admindir="$R/var/lib/dpkg" -W -f '${Status}' "$p" 2>/dev/null) == "install ok installed" ]] ||
      { echo "not installed: $p" >&2; return 1; }
  done
}

firewall_persisted() {
  grep -q 'table inet olboot' "$R/etc/nftables.d/olboot.nft" &&
    grep -Eq '^\s*include\s+"/etc/nftables\.d/(\*|olboot)\.nft"' "$R/etc/nftables.conf"
}

# Every file of the active olsystem's etc/ has its link in /etc, through the `olsystem` link.
links_present() {
  local rel target n=0
  while read -r rel; do
    target=$(readlink "$R/etc/$rel") || { echo "no link /etc/$rel" >&2; return 1; }
    [[ $target == /opt/openlibrary/olsystem/etc/$rel ]] || { echo "/etc/$rel -> $target" >&2; return 1; }
    n=$((n + 1))
  done < <(olsystem_etc_files)
  ((n > 0))
}
olsystem_etc_files() {
  local active
  active=$(awk '$1 == "openlibrary/olsystem" {print $NF}' "$OPT_MANIFEST")
  awk -v p="openlibrary/$active/etc/" '$2 == "file" && index($1, p) == 1 {print substr($1, length(p) + 1)}' "$OPT_MANIFEST"
}

probe_says() { [[ $(cat "$(latest_probe)/$1" 2>/dev/null) == "$2"* ]]; }
probe_has() { grep -q -- "$2" "$(latest_probe)/$1"; }

# The checks every booted VM must pass; $1 = the VM, $2 = olboot's expected run result
# ("changed" or "unchanged"), $3 = where olboot ran this boot (runcmd, service or none).
check_in_service() {
  local vm=$1 want=$2 how=$3
  check "cloud-init: result.json has no errors" cloud_init_ok
  check "cloud-init: status done" probe_has cloud-init-status 'status: done'
  check "volume: ext4 labelled ol-data on the data disk" volume_formatted "$vm"
  check "volume: /1 in /etc/fstab by UUID" fstab_has /1 '^UUID='
  check "volume: /1 mounted at the end of the boot" probe_has mnt-1 ext4
  check "opt: /1/opt identical to the packed tree ($(wc -l <"$OPT_MANIFEST") entries)" opt_identical
  check "opt: /opt in /etc/fstab" fstab_has /opt .
  check "opt: /opt mounted at the end of the boot (bind of /1/opt)" probe_has mnt-opt "\\[/opt\\] ext4"
  check "packages: installed (dpkg status)" packages_installed
  check "firewall: /etc/nftables.d/olboot.nft included from /etc/nftables.conf" firewall_persisted
  check "firewall: table inet olboot loaded at the end of the boot" probe_says nft-olboot.rc 0
  check "links: olsystem etc/ files linked in /etc" links_present
  if [[ ${CHECK_HOST:-$HOST} == "$HOST" ]]; then
    check "service: memcached running" probe_says memcached.state active
  fi
  check_apt_source "$want"
  check "olboot: report result $want" [ "$(report_get 'r["result"]' 2>/dev/null)" = "$want" ]
  check "olboot: no step failed" [ "$(report_get '[s["name"] for s in r["steps"] if s["result"] == "failed"]' 2>/dev/null)" = "[]" ]
  case $how in
    service) check "olboot: olboot.service ran this boot and succeeded" probe_says olboot.service.state active ;;
    runcmd) check "olboot: olboot.service enabled for later boots" probe_says olboot.service.enabled enabled ;;
  esac
}

# The flat repository came with its key, never as trusted=yes: through olboot's
# packages.sources (its deb822 file and key in the guest) or cloud-init's apt config.
check_apt_source() {  # $1: olboot's expected result (apt ran only when changed)
  check "apt: no source in the guest is trusted=yes" not_trusted
  if [[ $APT_MODE == olboot ]]; then
    check "apt: olboot wrote the signed source (sources.list.d/olboot-test.sources, keyrings/olboot-test.asc)" \
      olboot_source_written
  else
    check "apt: cloud-init's source is signed-by the test key" grep -q "signed-by=/etc/apt/keyrings/olboot-test.asc" \
      "$R/etc/apt/sources.list"
  fi
  if [[ $1 == changed ]]; then
    check "apt: the guest fetched the signed InRelease" http_has 'GET /repo/(\./)?InRelease 200'
  fi
}
not_trusted() { ! grep -rqi 'trusted=yes\|trusted: *yes' "$R/etc/apt/sources.list" "$R/etc/apt/sources.list.d/" 2>/dev/null; }
olboot_source_written() {
  local key
  key=$(gpg --batch --with-colons --show-keys "$REPO_KEY" | awk -F: '$1 == "fpr" {print $10; exit}')
  grep -q "10.0.2.100/repo" "$R/etc/apt/sources.list.d/olboot-test.sources" &&
    [[ $(gpg --batch --with-colons --show-keys "$R/etc/apt/keyrings/olboot-test.asc" | awk -F: '$1 == "fpr" {print $10; exit}') == "$key" ]]
}
http_has() { http_since | grep -Eq -- "$1"; }

# On failure: the guest's serial console and olboot's log, then the failed list.
show_logs() {
  local vm=$1 probe
  # The boot up to the probe (the rest is the power-off), last 150 lines.
  log "----- $vm: serial console ($STATE/$vm/serial.log, up to the probe) -----"
  tr -d '\r' <"$STATE/$vm/serial.log" | sed 's/\x1b\[[0-9;]*[a-zA-Z]//g' |
    awk '!seen {print} /Starting vm-probe.service/ {seen = 1}' | tail -150 >&2
  if mountpoint -q "$R"; then
    log "----- $vm: olboot in /var/log/cloud-init-output.log -----"
    if [[ -f $R/var/log/cloud-init-output.log ]]; then
      # The modules:final part: runcmd, where olboot runs.
      sed -n "/running 'modules:final'/,\$p" "$R/var/log/cloud-init-output.log" | tail -100 >&2
    fi
    probe=$(latest_probe)
    if [[ -n $probe && -s $probe/olboot.service.log ]]; then
      log "----- $vm: journalctl -u olboot.service -----"
      tail -80 "$probe/olboot.service.log" >&2
    fi
    if [[ -f $R/var/lib/olboot/report.json ]]; then
      log "----- $vm: olboot report -----"
      cat "$R/var/lib/olboot/report.json" >&2
    fi
  fi
}
