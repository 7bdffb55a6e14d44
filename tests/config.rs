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
