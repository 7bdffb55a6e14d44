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

# The private store's material (made once, kept in the cache, root-only): an age identity and
# its recipient, and the bearer token the loopback store demands. Test keys, never printed.
ensure_store_keys() {
  STORE_DIR=$CACHE/store
  STORE_IDENTITY=$STORE_DIR/age.key STORE_AUTH=$STORE_DIR/store.auth
  if [[ ! -s $STORE_IDENTITY || ! -s $STORE_AUTH ]]; then
    rm -rf "$STORE_DIR"
    mkdir -m 0700 "$STORE_DIR"
    (umask 077 && age-keygen -o "$STORE_IDENTITY" 2>/dev/null &&
      echo "Bearer $(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')" >"$STORE_AUTH")
  fi
  STORE_RECIPIENT=$(age-keygen -y "$STORE_IDENTITY")
}

# Which of the other engineers' features this olboot has (a feature shows by `olboot validate`
# accepting its config keys): packages.sources (issue 16) and the private store (issue 15).
# Missing ones fall back (cloud-init's apt config; an open, unencrypted archive) and the run
# says so in its summary line.
detect_features() {
  local t=$CACHE/feature-probe.yaml
  printf 'version: 1\npackages:\n  sources:\n    t:\n      uris: [http://10.0.2.100/repo]\n      suites: ["./"]\n      key_file: %s\n' \
    "$REPO_KEY" >"$t"
  if "$OLBOOT" validate -c "$t" >/dev/null 2>&1; then APT_MODE=olboot; else APT_MODE=cloud-init; fi
  printf 'version: 1\nopt:\n  path: /1/opt\n  archive:\n    urls: [http://10.0.2.100/store/o.tar.zst.age]\n    sha256: %s\n    identity_file: %s\n    auth_file: %s\n' \
    "$(printf '0%.0s' {1..64})" "$STORE_IDENTITY" "$STORE_AUTH" >"$t"
  if "$OLBOOT" validate -c "$t" >/dev/null 2>&1; then STORE_MODE=age; else STORE_MODE=open; fi
  rm -f "$t"
  FEATURES="apt source by ${APT_MODE/cloud-init/cloud-init (olboot has no packages.sources yet)}, archive ${STORE_MODE/age/age-encrypted on an authenticated store}"
  FEATURES=${FEATURES/archive open/archive unencrypted, open (olboot has no identity_file yet)}
  log "features: $FEATURES"
}

# Pack with `olboot pack` (age-encrypted to the test recipient when olboot can decrypt); redone
# whenever the olboot binary or the mode changes.
ensure_opt_archive() {
  local stamp
  stamp="$(sha256_of "$OLBOOT") $STORE_MODE $STORE_RECIPIENT"
  OPT_ARCHIVE=$OPT_DIR/opt.tar.zst
  local args=()
  if [[ $STORE_MODE == age ]]; then
    OPT_ARCHIVE=$OPT_DIR/opt.tar.zst.age
    args=(--recipient "$STORE_RECIPIENT")
  fi
  if [[ -f $OPT_DIR/packed-by && $(cat "$OPT_DIR/packed-by") == "$stamp" && -f $OPT_ARCHIVE ]]; then
    OPT_SHA=$(sha256_of "$OPT_ARCHIVE")
    return
  fi
  mount_loop "$OPT_DIR/tree.img" "$OPT_DIR/mnt" ro
  rm -f "$OPT_DIR"/opt.tar.zst*   # the plain copy of an encrypted one too
  log "opt: olboot pack ${args[*]}"
  "$OLBOOT" pack "$OPT_DIR/mnt/opt" -o "$OPT_ARCHIVE" "${args[@]}" >"$OPT_DIR/pack.log" 2>&1 ||
    { cat "$OPT_DIR/pack.log" >&2; die "olboot pack failed"; }
  umount "$OPT_DIR/mnt"
  OPT_SHA=$(sha256_of "$OPT_ARCHIVE")
  [[ -f $OPT_ARCHIVE.sha256 ]] && ! grep -q "^$OPT_SHA " "$OPT_ARCHIVE.sha256" &&
    die "olboot pack: $OPT_ARCHIVE.sha256 does not match the archive"
  if [[ $STORE_MODE == age ]]; then
    [[ $(head -c 21 "$OPT_ARCHIVE") == "age-encryption.org/v1" ]] || die "olboot pack: $OPT_ARCHIVE is not age-encrypted"
    # The host's age decrypts it to a zstd stream: the format is age's own. (The plain copy is
    # what compare's cloud-init twin fetches.)
    age -d -i "$STORE_IDENTITY" -o "$OPT_DIR/opt.tar.zst" "$OPT_ARCHIVE" ||
      die "age -d of $OPT_ARCHIVE failed"
    [[ $(head -c 4 "$OPT_DIR/opt.tar.zst" | od -An -tx1 | tr -d ' ') == 28b52ffd ]] ||
      die "age -d of $OPT_ARCHIVE is not a zstd stream"
  fi
  echo "$stamp" >"$OPT_DIR/packed-by"
  log "opt: packed $(du -h "$OPT_ARCHIVE" | cut -f1), sha256 $OPT_SHA"
}

# The web scenario's container image: busybox-static's httpd and one page, for `docker import`
# (no registry is reachable from the guest).
ensure_web_image() {
  WEB_IMAGE=$CACHE/olweb.tar
  [[ -s $WEB_IMAGE ]] && return
  local d
  d=$(mktemp -d)
  mkdir -p "$d/bin" "$d/www"
  cp /bin/busybox "$d/bin/busybox"
  echo "$WEB_MARK" >"$d/www/index.html"
  tar -C "$d" -cf "$WEB_IMAGE.new" bin www
  mv "$WEB_IMAGE.new" "$WEB_IMAGE"
  rm -rf "$d"
}

# The test key the flat repository is signed with (made once, kept in the cache; a test key,
# not a secret). Sets GNUPGHOME and REPO_KEY (the ASCII-armored public key file).
ensure_repo_key() {
  export GNUPGHOME=$CACHE/gnupg
  REPO_KEY=$CACHE/repo-key.asc
  if [[ ! -s $REPO_KEY ]]; then
    log "repo: making the test signing key"
    rm -rf "$GNUPGHOME"
    mkdir -m 0700 "$GNUPGHOME"
    gpg --batch -q --passphrase '' --quick-generate-key 'olboot test repository' ed25519 sign never
    gpg --batch -q --armor --export >"$REPO_KEY.new"
    mv "$REPO_KEY.new" "$REPO_KEY"
  fi
}

# apt-get on $SUITE's mirror with a private config, lists and cache: the host's own apt
# sources and state play no part, so a bookworm host downloads trixie packages as well.
suite_apt() {
  local d=$CACHE/apt-$SUITE
  mkdir -p "$d"/{lists/partial,cache/archives/partial,etc/preferences.d,etc/sources.list.d}
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $DEBIAN_MIRROR $SUITE main" \
    >"$d/etc/sources.list"
  apt-get -q -o Dir::Etc::sourcelist="$d/etc/sources.list" \
    -o Dir::Etc::sourceparts="$d/etc/sources.list.d" -o Dir::Etc::preferencesparts="$d/etc/preferences.d" \
    -o Dir::State::lists="$d/lists" -o Dir::Cache="$d/cache" -o Dir::State::status="$IMG_STATUS" \
    -o APT::Install-Recommends=false -o Debug::NoLocking=true "$@"
}

# The packages the scenarios install on this suite: the test host's roles, and docker.io for
# the web scenario.
repo_packages() {
  python3 "$HERE/lib/render.py" packages "$REPO/cloud-config/fleet.yaml" "$HOST"
  printf '%s\n' "${WEB_PACKAGES[@]}"
}

# A flat repository with those packages and the dependencies the image lacks (apt resolves them
# against the image's own dpkg status), signed with the test key: InRelease and Release.gpg.
ensure_repo() {
  local pkgs key
  ensure_repo_key
  mapfile -t pkgs < <(repo_packages | sort -u)
  key=$( { printf '%s\n' "$SUITE" "${pkgs[@]}"; cat "$IMG_STATUS" "$REPO_KEY"; } | sha256sum | cut -c1-12)
  APT_REPO=$CACHE/repo-$SUITE-$key
  if [[ ! -f $APT_REPO/InRelease ]]; then
    log "repo: $SUITE: downloading ${pkgs[*]} and the dependencies the image lacks"
    rm -rf "$CACHE"/repo-"$SUITE"-*/
    mkdir -p "$APT_REPO"
    { suite_apt update && suite_apt install -y --download-only "${pkgs[@]}"; } \
      >"$APT_REPO.log" 2>&1 || { tail -30 "$APT_REPO.log" >&2; die "apt-get download for $SUITE failed"; }
    mv "$CACHE/apt-$SUITE"/cache/archives/*.deb "$APT_REPO/"
    (cd "$APT_REPO" && apt-ftparchive packages . >Packages && apt-ftparchive release . >Release &&
      gpg --batch -q --yes --clearsign -o InRelease Release &&
      gpg --batch -q --yes --armor --detach-sign -o Release.gpg Release)
  fi
  log "repo: $SUITE: $(find "$APT_REPO" -name '*.deb' | wc -l) packages not in the image, signed by $(gpg --batch --with-colons --show-keys "$REPO_KEY" | awk -F: '$1 == "fpr" {print $10; exit}')"
}

# What every suite serves alike, made once before the suites run (side by side, they would race
# for the same cache files).
ensure_shared_fixtures() {
  python3 "$HERE/lib/render.py" unit "$REPO/cloud-config/olboot.service" \
    "$REPO"/cloud-config/{web,memcache,db,solr}.yaml
  ensure_opt_tree
  ensure_repo_key
  ensure_store_keys
  detect_features
  ensure_opt_archive
  ensure_web_image
}

# This part's served directory (cache/www-PART), on top of the shared fixtures and the suite's
# repository.
ensure_fixtures() {
  ensure_repo
  WWW=$CACHE/www-${STATE##*/}
  rm -rf "$WWW"
  mkdir -p "$WWW/store" "$WWW/hold"
  cp "$OLBOOT" "$WWW/olboot"
  ln -s "$APT_REPO" "$WWW/repo"
  ln -s "$WEB_IMAGE" "$WWW/olweb.tar"
  local store=() ud=()
  if [[ $STORE_MODE == age ]]; then
    OPT_PATH=store/opt.tar.zst.age
    store=(IDENTITY=/etc/olboot/age.key AUTH=/etc/olboot/store.auth)
    ud=(IDENTITY_FILE=/etc/olboot/age.key IDENTITY="$STORE_IDENTITY"
      AUTH_FILE=/etc/olboot/store.auth AUTH="$STORE_AUTH")
  else
    OPT_PATH=opt.tar.zst
  fi
  ln -s "$OPT_ARCHIVE" "$WWW/$OPT_PATH"
  # compare's cloud-init twin fetches with curl and unpacks with tar: the plain archive.
  OPT_PLAIN=$OPT_DIR/opt.tar.zst
  if [[ $STORE_MODE == age && ! -s $OPT_PLAIN ]]; then
    age -d -i "$STORE_IDENTITY" -o "$OPT_PLAIN" "$OPT_ARCHIVE"
  fi
  [[ $OPT_PATH == opt.tar.zst ]] || ln -s "$OPT_PLAIN" "$WWW/opt.tar.zst"
  local src=()
  [[ $APT_MODE == olboot ]] && src=(REPO_KEY="$REPO_KEY")
  python3 "$HERE/lib/render.py" olboot "$REPO/cloud-config/fleet.yaml" "$WWW/fleet.yaml" \
    BASE="$GUEST_BASE" OPT_SHA="$OPT_SHA" OPT_PATH="$OPT_PATH" WEB_ADDR=10.0.2.2 \
    WEB_PACKAGES="$(IFS=,; echo "${WEB_PACKAGES[*]}")" "${src[@]}" "${store[@]}"
  # On the host the identity and auth files are the cache's copies (root-only, like the guest's).
  local host_store=()
  [[ $STORE_MODE == age ]] && host_store=(IDENTITY="$STORE_IDENTITY" AUTH="$STORE_AUTH")
  local validate=$STATE/fleet.validate.yaml
  python3 "$HERE/lib/render.py" olboot "$REPO/cloud-config/fleet.yaml" "$validate" \
    BASE="$GUEST_BASE" OPT_SHA="$OPT_SHA" OPT_PATH="$OPT_PATH" WEB_ADDR=10.0.2.2 \
    WEB_PACKAGES="$(IFS=,; echo "${WEB_PACKAGES[*]}")" "${src[@]}" "${host_store[@]}"
  local h
  for h in "$HOST" "$WEB_HOST"; do
    "$OLBOOT" validate -c "$validate" --host "$h" >/dev/null ||
      die "the rendered fleet config is invalid for $h"
  done
  USER_DATA_ARGS=(BASE="$GUEST_BASE" FLEET_URL="$GUEST_BASE/fleet.yaml"
    FLEET_SHA256="$(sha256_of "$WWW/fleet.yaml")" APT="$APT_MODE" REPO_KEY="$REPO_KEY" "${ud[@]}")
  render_user_data "$REPO/cloud-config/$ROLE.yaml" "$WWW/user-data" olboot
  render_user_data "$REPO/cloud-config/web.yaml" "$WWW/user-data.web" olboot WEB=1
  python3 "$HERE/lib/render.py" compare "$REPO/cloud-config/fleet.yaml" "$HOST" \
    "$WWW/user-data.compare" "$GUEST_BASE" "$(sha256_of "$OPT_PLAIN")" "$REPO_KEY"
}

# render_user_data TEMPLATE OUT BIN [KEY=VALUE...]: a role's user-data fetching $WWW/BIN as olboot.
render_user_data() {
  python3 "$HERE/lib/render.py" user-data "$1" "$2" "${USER_DATA_ARGS[@]}" \
    OLBOOT_URL="$GUEST_BASE/$3" OLBOOT_SHA256="$(sha256_of "$WWW/$3")" "${@:4}"
}

# The same seed for test-vm/Vagrantfile (bookworm box): everything read from the synced folder
# (file://: the plain archive, no store), /dev/sdb as a further data disk candidate
# (VirtualBox attaches SATA disks), and the link cache/www -> this suite's files.
vagrant_fixtures() {
  local base=file:///vagrant/test-vm/cache/www out=$WWW/vagrant
  mkdir -p "$out"
  ln -sfn "$(basename "$WWW")" "$CACHE/www"
  python3 "$HERE/lib/render.py" olboot "$REPO/cloud-config/fleet.yaml" "$out/fleet.yaml" \
    BASE="$base" OPT_SHA="$(sha256_of "$OPT_PLAIN")" OPT_PATH=opt.tar.zst DEVS=/dev/sdb
  python3 "$HERE/lib/render.py" user-data "$REPO/cloud-config/$ROLE.yaml" "$out/user-data" \
    BASE="$base" OLBOOT_URL="$base/olboot" OLBOOT_SHA256="$(sha256_of "$OLBOOT")" \
    FLEET_URL="$base/vagrant/fleet.yaml" FLEET_SHA256="$(sha256_of "$out/fleet.yaml")" \
    APT=cloud-init REPO_KEY="$REPO_KEY"
  log "fixtures: ready in $WWW (Vagrant seed: $out)"
}

# lib/serve.py on a free loopback port: the files of $WWW, the private store below /store/
# (the token of $STORE_AUTH required), SERVER_RATE bytes/s for the store when set. Its request
# log tells what the guest fetched.
start_server() {
  HTTP_PORT=$(free_port)
  HTTP_LOG=$STATE/http.log
  : >"$HTTP_LOG"
  local rate=()
  [[ -n ${SERVER_RATE:-} ]] && rate=(--rate "$SERVER_RATE")
  python3 -u "$HERE/lib/serve.py" "$WWW" "$HTTP_PORT" --token-file "$STORE_AUTH" "${rate[@]}" \
    >>"$HTTP_LOG" 2>&1 &
  SERVER_PID=$!
  add_cleanup "kill $SERVER_PID 2>/dev/null; wait $SERVER_PID 2>/dev/null"
  local i
  for i in $(seq 50); do
    curl -fsS -o /dev/null "http://127.0.0.1:$HTTP_PORT/fleet.yaml" 2>/dev/null && break
    ((i == 50)) && die "http server on 127.0.0.1:$HTTP_PORT did not start"
    sleep 0.1
  done
  # The store refuses a request without the token (or the first-boot check of the token
  # would prove nothing).
  [[ $STORE_MODE == open ||
    $(curl -s -I -o /dev/null -w '%{http_code}' "http://127.0.0.1:$HTTP_PORT/$OPT_PATH") == 401 ]] ||
    die "the store served the archive without the token"
  log "server: http://127.0.0.1:$HTTP_PORT (guest: $GUEST_BASE)"
}

stop_server() {
  kill "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
