//! The config: parsing, every error class, host patterns and the merge rule of roles.

use olboot::config::{Config, HostPattern, Invalid, Proto};

fn parse(text: &str) -> Result<Config, String> {
    Config::parse("fleet.yaml", text).map_err(|e| {
        assert!(
            e.downcast_ref::<Invalid>().is_some(),
            "not an Invalid: {e:#}"
        );
        format!("{e:#}")
    })
}

fn host_err(text: &str, host: &str) -> String {
    match parse(text) {
        Err(e) => e,
        Ok(c) => format!(
            "{:#}",
            c.for_host(host).expect_err("config should be invalid")
        ),
    }
}

const FLEET: &str = r#"
version: 1
hosts:
  ol-web[1-2]: [base, web]
  ol-mem[3-5]: [base, memcache]
  ol-db0: [base, db]
roles:
  base:
    volumes:
      - device: [/dev/disk/by-id/virtio-ol-data, /dev/vdb]
        wait: 120s
        filesystem: ext4
        label: ol-data
        mountpoint: /1
    opt:
      path: /1/opt
      archive:
        urls: [https://archive.example/opt.tar.zst]
        sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
    packages:
      install: [git, docker.io, nftables]
    firewall:
      sets:
        admin: [207.241.224.0/20, "2620:0:9c0::/48"]
      allow:
        - { port: 22, from: admin }
    links:
      - { from: /opt/openlibrary/olsystem/etc, to: /etc }
  web:
    packages:
      install: [nginx, git]
    firewall:
      allow:
        - { port: [80, 443] }
  memcache:
    packages:
      install: [memcached]
    firewall:
      sets: { web: [10.0.1.11, 10.0.1.12], admin: [10.9.0.0/16] }
      allow:
        - { port: 11211, proto: tcp, from: web }
  db:
    volumes:
      - { device: /dev/vdc, mountpoint: /2, filesystem: xfs, label: ol-pg }
      - { device: /dev/vdd, mountpoint: /1, filesystem: xfs }
"#;

#[test]
fn fleet_merges_roles_in_order() {
    let c = parse(FLEET).unwrap();
    let web = c.for_host("ol-web2").unwrap();
    let names: Vec<String> = web
        .packages
        .as_ref()
        .unwrap()
        .install
        .iter()
        .map(|p| p.0.clone())
        .collect();
    assert_eq!(
        names,
        ["git", "docker.io", "nftables", "nginx"],
        "union, first mention keeps its place"
    );
    let fw = web.firewall.as_ref().unwrap();
    assert_eq!(fw.allow.len(), 2, "allow rules are appended");
    assert_eq!(fw.allow[1].port.0.len(), 2);
    assert_eq!(web.links.len(), 1);
    assert_eq!(web.volumes.len(), 1);

    let mem = c.for_host("ol-mem4").unwrap();
    let fw = mem.firewall.as_ref().unwrap();
    assert_eq!(
        fw.sets.keys().collect::<Vec<_>>(),
        ["admin", "web"],
        "sets merge by name"
    );
    assert_eq!(
        fw.sets["admin"][0].to_string(),
        "10.9.0.0/16",
        "a later set replaces the earlier one"
    );
    assert_eq!(fw.sets["web"][1].to_string(), "10.0.1.12/32");
    assert_eq!(fw.allow[1].proto, Proto::Tcp);

    let db = c.for_host("ol-db0").unwrap();
    let mps: Vec<String> = db
        .volumes
        .iter()
        .map(|v| v.mountpoint.to_string())
        .collect();
    assert_eq!(mps, ["/1", "/2"], "volumes merge by mountpoint, in place");
    assert_eq!(
        db.volumes[0].filesystem.name(),
        "xfs",
        "the db role's /1 replaced the base one"
    );
    assert_eq!(
        db.volumes[0].wait.0.as_secs(),
        60,
        "replaced whole, so the default wait"
    );
}

#[test]
fn whole_fleet_validates() {
    let c = parse(FLEET).unwrap();
    assert_eq!(
        c.validate_all().unwrap(),
        ["ol-web[1-2]", "ol-mem[3-5]", "ol-db0"]
    );
}

#[test]
fn host_selection() {
    let c = parse(FLEET).unwrap();
    assert!(c.for_host("ol-mem5").is_ok());
    let e = format!("{:#}", c.for_host("ol-mem6").unwrap_err());
    assert!(e.contains("no entry matches host \"ol-mem6\""), "{e}");
    let e = format!("{:#}", c.for_host("ol-web12").unwrap_err());
    assert!(e.contains("no entry matches"), "{e}");
    let two = FLEET.replace(
        "  ol-db0: [base, db]",
        "  ol-db0: [base, db]\n  ol-web[2-3]: [base]",
    );
    let e = format!(
        "{:#}",
        parse(&two).unwrap().for_host("ol-web2").unwrap_err()
    );
    assert!(
        e.contains("matches several entries: ol-web[1-2], ol-web[2-3]"),
        "{e}"
    );
}

#[test]
fn patterns() {
    let p = HostPattern::parse("ol-mem[3-5]").unwrap();
    assert!(p.matches("ol-mem3") && p.matches("ol-mem5"));
    assert!(
        !p.matches("ol-mem2")
            && !p.matches("ol-mem6")
            && !p.matches("ol-mem35")
            && !p.matches("ol-mem")
    );
    assert!(!p.matches("ol-mem03"), "no leading zeros");
    let p = HostPattern::parse("ol-web[0-3,7]x").unwrap();
    assert!(
        p.matches("ol-web7x")
            && p.matches("ol-web0x")
            && !p.matches("ol-web5x")
            && !p.matches("ol-web7")
    );
    let p = HostPattern::parse("ol-solr[0-10]").unwrap();
    assert!(p.matches("ol-solr10") && !p.matches("ol-solr11"));
    assert!(HostPattern::parse("ol-[5-3]").is_err());
    assert!(HostPattern::parse("ol-[3").is_err());
    assert!(HostPattern::parse("ol-[a-b]").is_err());
    assert!(HostPattern::parse("ol web").is_err());
}

#[test]
fn single_host_file() {
    let c = parse("version: 1\nlinks:\n  - { from: /opt/a/etc, to: /etc }\n").unwrap();
    let h = c.for_host("anything").unwrap();
    assert_eq!(h.links.len(), 1);
    assert!(h.firewall.is_none() && h.opt.is_none());
}

/// Each error names the file, says where, and names the key.
#[test]
fn errors_name_file_position_and_key() {
    let cases: &[(&str, &[&str])] = &[
        ("version: 1\nlinks:\n  - { from: /a, to: /etc, mode: x }\n", &["fleet.yaml", "unknown field `mode`", "line 3"]),
        ("version: 1\nfrobnicate: 1\n", &["fleet.yaml", "unknown field `frobnicate`", "line 2"]),
        ("version: 2\n", &["fleet.yaml", "version", "not supported"]),
        ("version: 1\nvolumes:\n  - { device: /dev/vdb, mountpoint: 1 }\n", &["volumes[0]", "\"1\" is not an absolute path", "line 3"]),
        ("version: 1\nvolumes:\n  - { device: /dev/vdb, mountpoint: data }\n", &["not an absolute path", "line 3"]),
        ("version: 1\nvolumes:\n  - { device: dev/vdb, mountpoint: /1 }\n", &["\"dev/vdb\" is not an absolute path"]),
        ("version: 1\nvolumes:\n  - { device: /dev/vdb, mountpoint: /1/../x }\n", &["contains `..`"]),
        ("version: 1\nvolumes:\n  - { device: /dev/vdb, mountpoint: /1, wait: 120 }\n", &["has no unit", "line 3"]),
        ("version: 1\nvolumes:\n  - { device: /dev/vdb, mountpoint: /1, wait: soon }\n", &["invalid duration"]),
        ("version: 1\nvolumes:\n  - { device: /dev/vdb, mountpoint: /1, filesystem: ntfs }\n", &["unknown variant `ntfs`", "line 3"]),
        ("version: 1\nvolumes:\n  - { device: /dev/vdb, mountpoint: /1, format: always }\n", &["unknown variant `always`"]),
        ("version: 1\nvolumes:\n  - { mountpoint: /1 }\n", &["missing field `device`"]),
        ("version: 1\nvolumes:\n  - { device: /dev/vdb, mountpoint: /1, label: much-too-long-label }\n", &["volumes[0].label", "1 to 16"]),
        ("version: 1\nfirewall:\n  ssh: closed\n  allow:\n    - { port: 70000 }\n", &["port 70000 is out of range", "line 5"]),
        ("version: 1\nfirewall:\n  ssh: closed\n  allow:\n    - { port: 0 }\n", &["port 0 is out of range"]),
        ("version: 1\nfirewall:\n  ssh: closed\n  allow:\n    - { port: \"90-80\" }\n", &["backwards"]),
        ("version: 1\nfirewall:\n  ssh: closed\n  allow:\n    - { port: 80, proto: sctp }\n", &["unknown variant `sctp`"]),
        ("version: 1\nfirewall:\n  allow:\n    - { port: 22, from: admins }\n", &["firewall.allow[0].from", "unknown set \"admins\""]),
        ("version: 1\nfirewall:\n  sets: { a: [10.0.0.1/8] }\n  allow:\n    - { port: 22, from: a }\n", &["host bits set", "line 3"]),
        ("version: 1\nfirewall:\n  sets: { a: [300.0.0.1] }\n  allow:\n    - { port: 22 }\n", &["is not an IP address"]),
        ("version: 1\nfirewall:\n  sets: { a: [\"2620:0:9c0::/129\"] }\n  allow:\n    - { port: 22 }\n", &["invalid prefix length"]),
        ("version: 1\nfirewall:\n  allow:\n    - { port: [80, 443] }\n", &["firewall.allow", "SSH", "ssh: closed"]),
        ("version: 1\nfirewall:\n  allow:\n    - { port: 22, proto: udp }\n", &["SSH"]),
        ("version: 1\nfirewall:\n  sets: { admin: [] }\n  allow:\n    - { port: 22, from: admin }\n", &["SSH"]),
        ("version: 1\nopt:\n  path: /1/opt\n  archive:\n    urls: [https://a.example/opt.tar.zst]\n", &["opt.archive.sha256", "missing"]),
        ("version: 1\nopt:\n  path: /1/opt\n  archive:\n    urls: [ftp://a.example/x]\n    sha256: 00\n", &["not an http://"]),
        ("version: 1\nopt:\n  path: /1/opt\n  archive:\n    urls: [https://a.example/x]\n    sha256: abc\n", &["not a sha256"]),
        ("version: 1\nopt:\n  path: /opt\n", &["opt.path", "must not be /opt"]),
        ("version: 1\npackages:\n  install: [\"Bad Name\"]\n", &["not a Debian package name", "line 3"]),
        ("version: 1\nlinks:\n  - { from: /etc/x, to: /etc }\n", &["links[0]", "overlap"]),
        ("version: 1\nlinks: [\n", &["fleet.yaml", "line"]),
        ("version: 1\nlinks: {from: /a}\n", &["invalid type"]),
        ("version: 1\nhosts:\n  ol-web1: [web]\nroles:\n  base: {}\n", &["hosts.ol-web1[0]", "unknown role \"web\""]),
        ("version: 1\nhosts:\n  ol-web[1: [base]\nroles:\n  base: {}\n", &["hosts.ol-web[1", "unclosed"]),
        ("version: 1\nhosts:\n  ol-web1: [base]\n", &["roles", "missing"]),
        ("version: 1\nhosts:\n  ol-web1: [base]\nroles:\n  base: {}\nlinks: []\n", &["links", "inside roles"]),
        ("version: 1\nhosts:\n  ol-web1: [base]\nroles:\n  base: { firewall: { allow: [ { port: 80 } ] } }\n", &["hosts.ol-web1", "SSH"]),
    ];
    let mut bad = Vec::new();
    for (text, wants) in cases {
        let e = host_err(text, "ol-web1");
        for w in *wants {
            if !e.contains(w) {
                bad.push(format!("error for {text:?} lacks {w:?}: {e}"));
            }
        }
        if !e.starts_with("fleet.yaml") || e.contains('\n') {
            bad.push(format!("not one line starting with the file name: {e:?}"));
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

#[test]
fn values_that_are_valid() {
    let c = parse(
        "version: 1\nfirewall:\n  ssh: closed\n  sets: { v6: [\"fd00::/8\", \"::1\"], v4: [0.0.0.0/0] }\n  allow:\n    - { port: \"8000-8100\", proto: udp, from: [v4, v6] }\nvolumes:\n  - { device: /dev/vdb, mountpoint: /1/, wait: 2m 30s, options: [noatime] }\nopt:\n  path: /1/opt\n  archive: { urls: file:///srv/opt.tar.zst }\n",
    )
    .unwrap();
    let h = c.for_host("x").unwrap();
    let a = &h.firewall.as_ref().unwrap().allow[0];
    assert_eq!(a.port.0[0].to_string(), "8000-8100");
    assert_eq!(a.from, ["v4", "v6"]);
    assert_eq!(h.volumes[0].mountpoint.to_string(), "/1", "normalized");
    assert_eq!(h.volumes[0].wait.0.as_secs(), 150);
    assert!(!h.opt.as_ref().unwrap().archive.as_ref().unwrap().urls[0].is_remote());
}

#[test]
fn a_later_role_keeps_recommends_unless_it_sets_it() {
    let c = parse("version: 1\nhosts:\n  a: [r1, r2]\n  b: [r1, r3]\nroles:\n  r1: { packages: { install: [git], recommends: true } }\n  r2: { packages: { install: [tree] } }\n  r3: { packages: { recommends: false } }\n").unwrap();
    assert_eq!(
        c.for_host("a").unwrap().packages.unwrap().recommends,
        Some(true)
    );
    assert_eq!(
        c.for_host("b").unwrap().packages.unwrap().recommends,
        Some(false)
    );
}

/// The error of each of `cases` (config text, the strings its one-line error must hold, the
/// strings it must not hold): the checks of [`errors_name_file_position_and_key`] for cases
/// that are each about one rule.
fn assert_refused(cases: &[(&str, &[&str], &[&str])]) {
    let mut bad = Vec::new();
    for (text, wants, never) in cases {
        let e = match parse(text).map(|c| c.for_host("ol-web1")) {
            Err(e) => e,
            Ok(Err(e)) => format!("{e:#}"),
            Ok(Ok(_)) => {
                bad.push(format!("accepted: {text:?}"));
                continue;
            }
        };
        for w in *wants {
            if !e.contains(w) {
                bad.push(format!("error for {text:?} lacks {w:?}: {e}"));
            }
        }
        for n in *never {
            if e.contains(n) {
                bad.push(format!("error for {text:?} shows {n:?}: {e}"));
            }
        }
        if !e.starts_with("fleet.yaml") || e.contains('\n') {
            bad.push(format!("not one line starting with the file name: {e:?}"));
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

/// A key written twice in any map is refused, naming it: last-one-wins would let
/// `admin: [0.0.0.0/0]` below `admin: [10.0.0.0/8]` open SSH to the world.
#[test]
fn a_key_written_twice_is_refused() {
    const FW: &str = "  allow:\n    - { port: 22, from: admin }\n";
    let source = "    uris: [https://m.example/d]\n    suites: [trixie]\n    components: [stable]\n    key_file: /etc/k.asc\n";
    assert_refused(&[
        (
            &format!("version: 1\nfirewall:\n  sets: {{admin: [10.0.0.0/8], admin: [0.0.0.0/0]}}\n{FW}"),
            &["firewall.sets", "\"admin\" is written twice", "line 3"],
            &[],
        ),
        (
            &format!("version: 1\nfirewall:\n  sets:\n    admin: [10.0.0.0/8]\n    web: [10.0.1.0/24]\n    admin: [0.0.0.0/0]\n{FW}"),
            &["firewall.sets", "\"admin\" is written twice", "line 6"],
            &[],
        ),
        (
            "version: 1\nhosts:\n  ol-web1: [base]\n  ol-web1: [web]\nroles:\n  base: {}\n  web: {}\n",
            &["hosts", "\"ol-web1\" is written twice", "line 4"],
            &[],
        ),
        (
            "version: 1\nhosts:\n  ol-web1: [base]\nroles:\n  base: {}\n  base: { opt: { path: /srv/opt } }\n",
            &["roles", "\"base\" is written twice", "line 6"],
            &[],
        ),
        (
            &format!("version: 1\npackages:\n  sources:\n    docker:\n{}    docker:\n{}", source.replace("    ", "      "), source.replace("    ", "      ")),
            &["packages.sources", "\"docker\" is written twice", "line 9"],
            &[],
        ),
        (
            "version: 1\nhosts:\n  ol-web1: [base]\nroles:\n  base:\n    firewall:\n      sets: { admin: [10.0.0.0/8], admin: [0.0.0.0/0] }\n      allow: [{ port: 22, from: admin }]\n",
            &["roles.base.firewall.sets", "\"admin\" is written twice", "line 7"],
            &[],
        ),
        // Struct keys were refused already; they stay so.
        ("version: 1\nversion: 1\n", &["duplicate field `version`"], &[]),
        (
            "version: 1\nopt:\n  path: /srv/opt\n  path: /opt/x\n",
            &["opt", "duplicate field `path`", "line 3"],
            &[],
        ),
    ]);
}

/// Values the spec calls impossible: each refused, naming its key.
#[test]
fn impossible_paths_are_refused() {
    const V1: &str = "  - { device: /dev/vdb, mountpoint: /1 }\n";
    // Two roles' volume lists, each given as the top-level lines it would be.
    let fleet = |base: &str, db: &str| {
        let ind = |l: &str| l.replace("  - ", "      - ");
        format!(
            "version: 1\nhosts:\n  ol-web1: [base, db]\nroles:\n  base:\n    volumes:\n{}  db:\n    volumes:\n{}",
            ind(base),
            ind(db)
        )
    };
    let mut cases: Vec<(String, Vec<&str>)> = vec![
        // opt.path
        ("version: 1\nopt: { path: / }\n".into(), vec!["opt.path", "must not be /"]),
        ("version: 1\nopt: { path: /opt/ }\n".into(), vec!["opt.path", "must not be /opt"]),
        ("version: 1\nopt: { path: /opt/tree }\n".into(), vec!["opt.path", "/opt/tree", "inside /opt"]),
        ("version: 1\nopt: { path: /etc }\n".into(), vec!["opt.path", "/etc", "system directory"]),
        ("version: 1\nopt: { path: /proc/opt }\n".into(), vec!["opt.path", "/proc"]),
        (format!("version: 1\nvolumes:\n{V1}opt: {{ path: /1 }}\n"), vec!["opt.path", "mountpoint of volumes[0]", "below it"]),
        (format!("version: 1\nvolumes:\n{V1}opt: {{ path: /1/ }}\n"), vec!["opt.path", "mountpoint of volumes[0]"]),
        (
            format!("version: 1\nvolumes:\n{V1}  - {{ device: /dev/vdc, mountpoint: /2/opt/data }}\nopt: {{ path: /2/opt }}\n"),
            vec!["volumes[1].mountpoint", "/2/opt/data", "inside opt.path"],
        ),
        (
            "version: 1\nvolumes:\n  - { device: /dev/vdc, mountpoint: /opt/data }\nopt: { path: /1/opt }\n".into(),
            vec!["volumes[0].mountpoint", "/opt/data", "inside /opt"],
        ),
        (fleet(V1, "      - { device: /dev/vdc, mountpoint: /2 }\n") + "    opt: { path: /2 }\n", vec!["opt.path", "mountpoint of volumes[1]", "(in hosts.ol-web1"]),
        // Two volumes.
        (format!("version: 1\nvolumes:\n{V1}  - {{ device: /dev/vdc, mountpoint: /1/ }}\n"), vec!["volumes[1].mountpoint", "/1 is also the mountpoint of volumes[0]"]),
        (format!("version: 1\nvolumes:\n{V1}  - {{ device: /dev/vdc, mountpoint: /1/data }}\n"), vec!["volumes[1].mountpoint", "/1/data is inside /1, the mountpoint of volumes[0]"]),
        (format!("version: 1\nvolumes:\n  - {{ device: /dev/vdc, mountpoint: /1/data }}\n{V1}"), vec!["volumes[1].mountpoint", "/1 holds /1/data, the mountpoint of volumes[0]"]),
        (format!("version: 1\nvolumes:\n{V1}  - {{ device: [/dev/vdc, /dev/vdb], mountpoint: /2 }}\n"), vec!["volumes[1].device", "/dev/vdb is also a device of volumes[0]"]),
        (
            fleet(&format!("{V1}  - {{ device: /dev/vdc, mountpoint: //1 }}\n"), V1),
            vec!["roles.base.volumes[1].mountpoint", "/1 is also the mountpoint of roles.base.volumes[0]"],
        ),
        (fleet(V1, "      - { device: /dev/vdc, mountpoint: /1/pg }\n"), vec!["volumes[1].mountpoint", "inside /1", "(in hosts.ol-web1 (roles base, db))"]),
        (fleet(V1, "      - { device: /dev/vdb, mountpoint: /2 }\n"), vec!["volumes[1].device", "/dev/vdb is also a device of volumes[0]", "(in hosts.ol-web1"]),
        // Paths anywhere.
        ("version: 1\nvolumes:\n  - { device: /dev/vdb, mountpoint: \"/1\\0/x\" }\n".into(), vec!["volumes[0].mountpoint", "NUL", "line 3"]),
        ("version: 1\nvolumes:\n  - { device: \"/dev/vdb\\0\", mountpoint: /1 }\n".into(), vec!["volumes[0].device", "NUL"]),
        ("version: 1\nlinks:\n  - { from: \"/opt/x\\0\", to: /etc }\n".into(), vec!["links[0].from", "NUL"]),
        ("version: 1\nopt:\n  path: /srv/opt\n  archive: { urls: \"file:///srv/o\\0.tar\" }\n".into(), vec!["opt.archive.urls", "NUL"]),
        ("version: 1\nopt:\n  path: /srv/opt\n  archive: { urls: file:///srv/o.tar, identity_file: etc/age.key }\n".into(), vec!["opt.archive.identity_file", "not an absolute path"]),
        ("version: 1\nopt: { path: /srv/../opt }\n".into(), vec!["opt.path", "contains `..`", "line 2"]),
        ("version: 1\nlinks:\n  - { from: /opt/x, to: /etc/.. }\n".into(), vec!["links[0].to", "contains `..`"]),
    ];
    for mp in [
        "/",
        "/opt",
        "/opt/",
        "/etc",
        "/usr",
        "/var/",
        "/boot",
        "/proc",
        "/sys",
        "/dev",
        "/run",
        "/bin",
        "/lib",
        "/sys/fs/x",
    ] {
        cases.push((
            format!("version: 1\nvolumes:\n  - {{ device: /dev/vdb, mountpoint: \"{mp}\" }}\n"),
            vec!["volumes[0].mountpoint", "system directory"],
        ));
    }
    let cases: Vec<(&str, &[&str], &[&str])> = cases
        .iter()
        .map(|(t, w)| (t.as_str(), w.as_slice(), &[][..]))
        .collect();
    assert_refused(&cases);
}

/// A URL with user-info is refused (ureq sends no credential from it), and the error shows
/// neither the user-info nor the query.
#[test]
fn a_url_with_user_info_is_refused_without_showing_it() {
    const SHA: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    let never: &[&str] = &["alice", "s3cret", "sig=", "X-Amz"];
    assert_refused(&[
        (
            &format!("version: 1\nopt:\n  path: /srv/opt\n  archive:\n    urls: [https://archive.example/o.tar.zst, \"https://alice:s3cret@store.example/o.tar.zst?X-Amz-Signature=sig=1\"]\n    sha256: {SHA}\n"),
            &["opt.archive.urls", "https://store.example/o.tar.zst?…", "user-info", "auth_file", "line 5"],
            never,
        ),
        (
            &format!("version: 1\nopt:\n  path: /srv/opt\n  archive:\n    urls: http://alice@store.example\n    sha256: {SHA}\n"),
            &["opt.archive.urls", "http://store.example", "user-info"],
            never,
        ),
        (
            "version: 1\npackages:\n  sources:\n    d:\n      uris: [\"https://alice:s3cret@m.example/d\"]\n      suites: [trixie]\n      components: [main]\n      key_file: /etc/k.asc\n",
            &["packages.sources.d.uris", "https://m.example/d", "user-info"],
            never,
        ),
    ]);
}

/// What the new rules must leave alone: a volume below a system directory, opt.path below a
/// volume's mountpoint written with a trailing slash, an `@` in a URL's path or query.
#[test]
fn paths_near_the_refused_ones_are_valid() {
    let c = parse(
        "version: 1\nvolumes:\n  - { device: /dev/vdb, mountpoint: /1/ }\n  - { device: [/dev/vdc, /dev/vdd], mountpoint: /var/lib/docker }\n  - { device: /dev/vde, mountpoint: /10 }\nopt:\n  path: /1/opt/\n  archive:\n    urls: [\"https://store.example/a@b/o.tar.zst?by=x@y\"]\n    sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\n",
    )
    .unwrap();
    let h = c.for_host("x").unwrap();
    assert_eq!(h.opt.unwrap().path.to_string(), "/1/opt");
    assert_eq!(h.volumes.len(), 3);
    let c = parse("version: 1\nopt: { path: /srv/opt }\nvolumes:\n  - { device: /dev/vdb, mountpoint: /opt-data }\n").unwrap();
    assert!(c.for_host("x").is_ok());
}

/// Brackets nested without end are refused before the YAML parser, whose time grows with the
/// square of the depth; a fleet file's own brackets (host patterns, flow lists) are fine.
#[test]
fn brackets_nested_without_end_are_refused_at_once() {
    let deep = format!("version: 1\nhosts: {}\n", "[".repeat(1_000_000));
    let started = std::time::Instant::now();
    let e = parse(&deep).unwrap_err();
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(
        e.contains("fleet.yaml: line 2: brackets nested deeper than 256"),
        "{e}"
    );
    let nested = format!(
        "version: 1\nhosts: {{ a: {}b{} }}\n",
        "[".repeat(100),
        "]".repeat(100)
    );
    let e = parse(&nested).unwrap_err();
    assert!(!e.contains("nested deeper"), "{e}");
    parse(FLEET).unwrap();
}
