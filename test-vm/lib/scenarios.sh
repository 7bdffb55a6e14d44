# shellcheck shell=bash
# The scenarios. vm1 is the VM of first-boot, reboot and rescue; vm2 gets vm1's data disk
# (moved-volume); vmc is compare's cloud-init-only twin. Results: $STATE/times.tsv and $STATE/results.


# The HTTP requests the guest made since mark_http.
mark_http() { HTTP_MARK=$(wc -l <"$HTTP_LOG"); }
http_since() { tail -n +"$((HTTP_MARK + 1))" "$HTTP_LOG"; }
fetched_opt() { http_since | grep "GET /$OPT_PATH 20[06]" >/dev/null; }
# The store: the archive came with the token, and no request of the guest went without it.
fetched_with_token() {
  http_since | grep -q "GET /$OPT_PATH 20[06] .* auth=yes" && ! http_since | grep -q "/store/.* auth=no"
}

step_changes() { report_get "[c for s in r['steps'] if s['name'] == '$1' for c in s['changes']]"; }
volume_not_formatted() { ! step_changes volumes | grep -i format >/dev/null; }
opt_not_fetched() { ! fetched_opt; }

# Seconds cloud-init's provisioning modules took in the last boot (`cloud-init analyze blame`
# lists one record per boot; the modules that did nothing count too, they are quick).
ci_modules_s() {
  awk '/Boot Record/ { s = 0; n = 0 }
    /config-(disk_setup|mounts|package[-_]update[-_]upgrade[-_]install|scripts[-_]user)\)/ {
    sub(/s$/, "", $1); s += $1; n++ } END { if (n) printf "%.1f", s; else print "-" }' \
    "$(latest_probe)/cloud-init-blame" 2>/dev/null || echo "-"
}

# The part's records: $STATE/times.tsv (one line a boot) and $STATE/results ("passed" or
# "failed", then SUITE/SCENARIO), merged by summary.
start_times() {
  TIMES=$STATE/times.tsv RESULTS=$STATE/results
  : >"$TIMES"
  : >"$RESULTS"
}

# record SCENARIO VM OLBOOT_MS [CLOUD_INIT_S]
record() {
  local steps
  steps=$(report_get '" ".join("%s=%s" % (s["name"], s["duration_ms"]) for s in r["steps"])' 2>/dev/null) || steps=-
  local wall=-
  [[ $3 == - ]] || wall=$(olboot_wall_ms)
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$SUITE" "$1" "$2" "$BOOT_WALL" "$3" "$wall" "${4:-$(ci_modules_s)}" "$steps" >>"$TIMES"
}

# finish SCENARIO VM: print the logs when a check failed, unmount, count.
finish() {
  if ((FAILS > 0)); then
    show_logs "$2"
    log "$SUITE $1: FAILED ($FAILS checks)"
    echo "failed $SUITE/$1" >>"$RESULTS"
  else
    log "$SUITE $1: passed"
    echo "passed $SUITE/$1" >>"$RESULTS"
  fi
  if mountpoint -q "$R"; then umount_vm; fi
  FAILS=0
}

boot_or_fail() {
  boot "$@" || fail "$1: the guest powered off by itself within ${TIMEOUT}s"
}

scenario_first_boot() {
  new_vm vm1
  echo "$STATE/vm1/data.img" >"$STATE/vm1/data"
  new_data_disk "$STATE/vm1/data.img"
  make_seed vm1 "$WWW/user-data" "$HOST"
  mark_http
  boot_or_fail vm1 && touch "$STATE/vm1/booted"
  mount_vm vm1
  check_in_service vm1 changed runcmd
  check "volume: formatted by olboot (report)" step_changes volumes
  check "opt: archive fetched from the store" fetched_opt
  if [[ $STORE_MODE == age ]]; then
    check "store: the age-encrypted archive fetched with the token (auth_file), never without" fetched_with_token
    check "store: identity and auth file in the guest root-only (0600)" store_files_private
  fi
  record first-boot vm1 "$(olboot_ms)"
  finish first-boot vm1
}

# The later scenarios go on from the disks first-boot left (whatever its checks said).
need_vm1() {
  [[ -f $STATE/vm1/booted ]] && return
  log "$1 needs the VM of first-boot: running first-boot"
  scenario_first_boot
  [[ -f $STATE/vm1/booted ]] || die "$1: the first boot did not finish"
}

scenario_reboot() {
  need_vm1 reboot
  mark_http
  boot_or_fail vm1
  mount_vm vm1
  check_in_service vm1 unchanged service
  check "opt: nothing fetched" opt_not_fetched
  record reboot vm1 "$(olboot_ms)"
  finish reboot vm1
}

scenario_moved_volume() {
  need_vm1 moved-volume
  new_vm vm2
  cat "$STATE/vm1/data" >"$STATE/vm2/data"
  make_seed vm2 "$WWW/user-data" "$HOST"
  mark_http
  boot_or_fail vm2
  mount_vm vm2
  check_in_service vm2 changed runcmd
  check "volume: not formatted" volume_not_formatted
  check "opt: nothing fetched" opt_not_fetched
  record moved-volume vm2 "$(olboot_ms)"
  finish moved-volume vm2
}

# Break vm1 as a bad day would: the olsystem links in /etc and the fstab lines are gone.
break_vm1() {
  local r=$STATE/vm1/mnt-root
  mount_loop "$STATE/vm1/root.img" "$r" rw
  find "$r/etc" -lname '/opt/openlibrary/olsystem/etc/*' -delete
  awk '$2 != "/1" && $2 != "/opt"' "$r/etc/fstab" >"$r/etc/fstab.new"
  mv "$r/etc/fstab.new" "$r/etc/fstab"
  umount "$r"
}

store_files_private() {
  local f
  for f in "$R/etc/olboot/age.key" "$R/etc/olboot/store.auth"; do
    [[ $(stat -c '%a %u' "$f") == "600 0" ]] || return 1
  done
}

rescue_rc_zero() { [[ $(cat "$R/var/lib/olboot-test/rescue.rc") == 0 ]]; }

scenario_rescue() {
  need_vm1 rescue
  break_vm1
  build_initramfs "$STATE/rescue.initrd" "$HERE/lib/rescue-init" "$OLBOOT"
  mark_http
  boot_or_fail vm1 "$IMG_KERNEL" "$STATE/rescue.initrd" "console=ttyS0 panic=-1"
  mount_vm vm1
  check "rescue: olboot apply --root exited 0" rescue_rc_zero
  check "rescue: report result changed" [ "$(report_get 'r["result"]' 2>/dev/null)" = changed ]
  check "rescue: volume not formatted" volume_not_formatted
  check "rescue: /1 back in /etc/fstab" fstab_has /1 '^UUID='
  check "rescue: /opt back in /etc/fstab" fstab_has /opt .
  check "rescue: olsystem links back in /etc" links_present
  check "rescue: nothing fetched" opt_not_fetched
  record rescue vm1 "$(olboot_ms)" -
  finish rescue vm1
  log "rescue: next normal boot"
  boot_or_fail vm1
  mount_vm vm1
  check_in_service vm1 unchanged service
  record rescue-next-boot vm1 "$(olboot_ms)"
  finish rescue-next-boot vm1
}

# The same job by cloud-init's own modules (disk_setup/fs_setup, mounts, packages, runcmd);
# with OLBOOT_VM_BEFORE=REV|BINARY also the first boot by that olboot (a revision old enough
# may not read today's cloud-config: test-vm/README.md says how the before/after of the
# concurrent engine was built), same image, archive and repository. The archive is served at
# OLBOOT_VM_RATE bytes/s (default 350 kB/s: 25 MB take ~75 s, as long as apt on trixie) so that the
# download matters and overlapping it with apt shows.
scenario_compare() {
  scenario_first_boot
  if [[ -n ${OLBOOT_VM_BEFORE:-} ]]; then
    local before
    before=$(before_binary "$OLBOOT_VM_BEFORE")
    cp "$before" "$WWW/olboot-before"
    render_user_data "$REPO/cloud-config/$ROLE.yaml" "$WWW/user-data.before" olboot-before
    new_vm vmb
    echo "$STATE/vmb/data.img" >"$STATE/vmb/data"
    new_data_disk "$STATE/vmb/data.img"
    make_seed vmb "$WWW/user-data.before" "$HOST"
    mark_http
    boot_or_fail vmb
    mount_vm vmb
    check_in_service vmb changed runcmd
    record "first-boot-by-$OLBOOT_VM_BEFORE" vmb "$(olboot_ms)"
    finish "first-boot-by-$OLBOOT_VM_BEFORE" vmb
  fi
  new_vm vmc
  echo "$STATE/vmc/data.img" >"$STATE/vmc/data"
  new_data_disk "$STATE/vmc/data.img"
  make_seed vmc "$WWW/user-data.compare" "$HOST"
  boot_or_fail vmc
  mount_vm vmc
  check "cloud-init: result.json has no errors" cloud_init_ok
  check "volume: ext4 labelled ol-data" volume_formatted vmc
  check "opt: /1/opt identical to the packed tree" opt_identical
  check "packages: installed" packages_installed
  check "firewall: persisted" firewall_persisted
  check "links: olsystem etc/ files linked in /etc" links_present
  check "service: memcached running" probe_says memcached.state active
  record compare-cloud-init vmc -
  finish compare-cloud-init vmc
}

# before_binary REV|PATH: a static olboot built from git revision REV (cached by commit), or PATH.
before_binary() {
  if [[ -f $1 ]]; then realpath "$1"; return; fi
  local commit dir
  commit=$(git -C "$REPO" rev-parse --verify "$1^{commit}") || die "OLBOOT_VM_BEFORE: no file or revision $1"
  dir=$CACHE/bin-$commit
  if [[ ! -x $dir/olboot ]]; then
    log "compare: building olboot at $1 ($commit)"
    rm -rf "$dir"
    mkdir -p "$dir/src"
    git -C "$REPO" archive "$commit" | tar -x -C "$dir/src"
    (cd "$dir/src" && CARGO_TARGET_DIR=$REPO/target/before nice cargo build -q --release \
      --target x86_64-unknown-linux-musl >&2)
    cp "$REPO/target/before/x86_64-unknown-linux-musl/release/olboot" "$dir/olboot"
    rm -rf "$dir/src"
  fi
  echo "$dir/olboot"
}

run_scenarios() {
  detect_accel
  local s
  for s in "$@"; do
    log "=== $SUITE $s"
    "scenario_${s//-/_}"
  done
}

# summary SECONDS PART...: the times of every boot of these parts, and one line for CI. A
# part whose harness stopped early (run_part's exit status, in $STATES/PART/exit) fails.
summary() {
  local secs=$1 s times=$STATES/times.tsv passes=() fails=()
  shift
  printf 'suite\tscenario\tvm\tboot_wall_s\tolboot_ms\tolboot_wall_ms\tcloud_init_provisioning_s\tolboot_steps_ms\n' >"$times"
  for s in "$@"; do
    cat "$STATES/$s/times.tsv" >>"$times" 2>/dev/null || true
    mapfile -t -O "${#passes[@]}" passes < <(awk '$1 == "passed" {print $2}' "$STATES/$s/results" 2>/dev/null)
    mapfile -t -O "${#fails[@]}" fails < <(awk '$1 == "failed" {print $2}' "$STATES/$s/results" 2>/dev/null)
    [[ $(cat "$STATES/$s/exit" 2>/dev/null) == 0 ]] || fails+=("$s (harness stopped: see its log above)")
  done
  log "=== times (also in $times)"
  column -t -s $'\t' "$times" >&2
  log "features exercised: $FEATURES"
  # One count per checked boot (rescue and web check two), for CI's summary.
  echo "vm: ${#passes[@]} passed, ${#fails[@]} failed in $secs s ($FEATURES)"
  if ((${#fails[@]})); then
    die "failed: ${fails[*]}"
  fi
  log "all passed: ${passes[*]}"
}

# A Docker web head (issue 14): docker.io from the signed repository, a container publishing
# 8080 (allowed from www, which holds 10.0.2.2: the host as QEMU's user network shows it) and
# 7072 (allowed from nobody), checked from the host through QEMU's port forwards while the
# guest waits (lib/vm-probe, olboot_test.hold), on the first boot and after a reboot.
scenario_web() {
  new_vm vmw
  echo "$STATE/vmw/data.img" >"$STATE/vmw/data"
  new_data_disk "$STATE/vmw/data.img"
  make_seed vmw "$WWW/user-data.web" "$WEB_HOST"
  WEB_PORT_OPEN=$(free_port) WEB_PORT_CLOSED=$(free_port)
  # shellcheck disable=SC2034 # read by boot and the checks (bash's dynamic scope)
  local BOOT_NETDEV_EXTRA=",hostfwd=tcp:127.0.0.1:$WEB_PORT_OPEN-:8080,hostfwd=tcp:127.0.0.1:$WEB_PORT_CLOSED-:7072"
  # shellcheck disable=SC2034
  local BOOT_APPEND_EXTRA=" olboot_test.hold=vmw" BOOT_HOOK=web_from_outside CHECK_HOST=$WEB_HOST
  rm -f "$STATE"/vmw.outside-*
  mark_http
  boot_or_fail vmw
  mount_vm vmw
  check_in_service vmw changed runcmd
  check_web 1
  record web vmw "$(olboot_ms)"
  finish web vmw
  log "web: reboot"
  mark_http
  boot_or_fail vmw
  mount_vm vmw
  check_in_service vmw unchanged service
  check_web 2
  record web-reboot vmw "$(olboot_ms)"
  finish web-reboot vmw
}

# BOOT_HOOK of the web scenario: once the guest's probe asks for /hold/vmw-N, try both ports
# from the host, keep what came back, then let the guest power off.
web_from_outside() {
  local n
  n=$(http_since | sed -n 's|^GET /hold/vmw-\([0-9]*\) .*|\1|p' | tail -1)
  [[ -n $n && ! -f $WWW/hold/vmw-$n ]] || return 0
  local p
  for p in "$WEB_PORT_OPEN" "$WEB_PORT_CLOSED"; do
    curl -sS -m 10 "http://127.0.0.1:$p/" >"$STATE/vmw.outside-$n-$p" 2>&1 || true
  done
  log "web: boot $n checked from the host: 8080 -> $(head -c 60 "$STATE/vmw.outside-$n-$WEB_PORT_OPEN" | tr '\n' ' '), 7072 -> $(head -c 60 "$STATE/vmw.outside-$n-$WEB_PORT_CLOSED" | tr '\n' ' ')"
  touch "$WWW/hold/vmw-$n"
}

web_answers() { grep -qx "$WEB_MARK" "$1"; }
check_web() {
  local n=$1 probe
  probe=$R/var/lib/olboot-test/boot-$n
  check "web: docker running" probe_says docker.state active
  check "web: the container answers on 8080 and 7072 inside the guest" \
    eval "web_answers '$probe/local-8080' && web_answers '$probe/local-7072'"
  check "web: 8080 (allowed from www = 10.0.2.2) answers from the host" \
    web_answers "$STATE/vmw.outside-$n-$WEB_PORT_OPEN"
  check "web: 7072 (allowed from nobody) does not answer from the host" \
    eval "[ -f '$STATE/vmw.outside-$n-$WEB_PORT_CLOSED' ] && ! web_answers '$STATE/vmw.outside-$n-$WEB_PORT_CLOSED'"
}
