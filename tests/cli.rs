//! The command line: help, exit codes, config sources, and "nothing touched" on bad input.

mod common;
use common::*;
use std::io::{Read, Write};

const SUBCOMMANDS: [&str; 5] = ["apply", "plan", "validate", "status", "pack"];

#[test]
fn every_command_has_help_and_the_readme_documents_its_options() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let top = run(&["--help"], None);
    assert_eq!(code(&top), 0);
    let top = String::from_utf8_lossy(&top.stdout).to_string();
    for sub in SUBCOMMANDS {
        assert!(top.contains(sub), "--help does not list {sub}");
        let o = run(&[sub, "--help"], None);
        assert_eq!(code(&o), 0, "{sub} --help");
        let text = String::from_utf8_lossy(&o.stdout).to_string();
        assert!(
            text.lines().count() <= 40,
            "{sub} --help is longer than a screen"
        );
        assert!(
            readme.contains(&format!("olboot {sub}")),
            "README does not show `olboot {sub}`"
        );
        for word in text.split_whitespace() {
            let opt = word.trim_end_matches(',').trim_end_matches('=');
            if opt.starts_with("--") && opt.len() > 2 && opt != "--help" {
                assert!(readme.contains(opt), "README does not document {sub} {opt}");
            }
        }
    }
}

#[test]
fn bad_command_lines_exit_2() {
    assert_eq!(code(&run(&["frobnicate"], None)), 2);
    assert_eq!(
        code(&run(&["apply", "--only", "firewall,nonsense"], None)),
        2
    );
    assert_eq!(code(&run(&["plan", "--bogus"], None)), 2);
    let o = run(
        &["apply", "--root", "/nonexistent/dir", "-c", "-"],
        Some("version: 1\n"),
    );
    assert_eq!(code(&o), 2);
    assert!(
        stderr(&o).contains("--root /nonexistent/dir"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn an_invalid_config_touches_nothing_and_says_where() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    let cfg = dir.path().join("bad.yaml");
    write(&cfg, "version: 1\nlinks:\n  - { from: /opt/x, to: /etc }\nvolumes:\n  - { device: /dev/vdb, mountpoint: /1, sizee: 3 }\n");
    let before = snapshot(dir.path());
    for cmd in ["apply", "plan"] {
        let o = run(
            &[
                cmd,
                "-c",
                cfg.to_str().unwrap(),
                "--root",
                root.to_str().unwrap(),
                "--host",
                "h",
            ],
            None,
        );
        assert_eq!(code(&o), 2, "{cmd}");
        let err = stderr(&o);
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 1, "one line: {err}");
        assert!(
            lines[0].contains(&format!(
                "{}: volumes[0]: unknown field `sizee`",
                cfg.display()
            )),
            "{err}"
        );
        assert!(lines[0].contains("line 5 column"), "{err}");
        assert!(o.stdout.is_empty());
    }
    assert_eq!(
        snapshot(dir.path()),
        before,
        "an invalid config changed files"
    );
    let o = run(&["validate", "-c", cfg.to_str().unwrap()], None);
    assert_eq!(code(&o), 2);
    let o = run(&["validate", "-c", "/nonexistent.yaml"], None);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("/nonexistent.yaml"), "{}", stderr(&o));
}

#[test]
fn validate_checks_the_whole_fleet_or_one_host() {
    let fleet = "version: 1\nhosts:\n  ol-web[1-2]: [base]\n  ol-mem[3-5]: [base, mem]\nroles:\n  base:\n    firewall:\n      sets: { admin: [10.1.0.0/16] }\n      allow: [ { port: 22, from: admin } ]\n  mem:\n    firewall:\n      allow: [ { port: 11211, from: web } ]\n";
    let o = run(&["validate", "-c", "-"], Some(fleet));
    assert_eq!(code(&o), 2, "the mem role references an unknown set");
    let e = stderr(&o);
    assert!(
        e.contains("-: roles.mem.firewall.allow[0].from: unknown set \"web\" (in hosts.ol-mem[3-5] (roles base, mem))"),
        "{e}"
    );
    // The web hosts alone are fine.
    let o = run(&["validate", "-c", "-", "--host", "ol-web2"], Some(fleet));
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let fixed = fleet.replace(
        "sets: { admin: [10.1.0.0/16] }",
        "sets: { admin: [10.1.0.0/16], web: [10.0.1.11] }",
    );
    let o = run(&["validate", "-c", "-"], Some(&fixed));
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("valid (2 entries: ol-web[1-2], ol-mem[3-5])")
    );
    let o = run(&["validate", "-c", "-", "--host", "ol-db1"], Some(&fixed));
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("no entry matches host \"ol-db1\""));
}

/// Serve `body` once per connection on 127.0.0.1, `n` times.
fn serve(body: &'static str, n: usize) -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for _ in 0..n {
            let Ok((mut s, _)) = l.accept() else { return };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let status = if buf.starts_with(b"GET /missing") {
                "404 Not Found"
            } else {
                "200 OK"
            };
            let _ = write!(
                s,
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    format!("http://{addr}")
}

#[test]
fn config_from_a_url() {
    let base = serve(
        "version: 1\nlinks:\n  - { from: /opt/x/etc, to: /etc }\n",
        2,
    );
    let o = run(&["validate", "-c", &format!("{base}/olboot.yaml")], None);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let o = run(&["validate", "-c", &format!("{base}/missing.yaml")], None);
    assert_eq!(code(&o), 2);
    assert!(
        stderr(&o).contains(&format!("{base}/missing.yaml")),
        "{}",
        stderr(&o)
    );
}

#[test]
fn status_without_a_report_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let o = run(&["status", "--root", dir.path().to_str().unwrap()], None);
    assert_eq!(code(&o), 1);
    assert!(
        stderr(&o).contains("var/lib/olboot/report.json"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn host_name_comes_from_the_target_under_root() {
    let dir = tempfile::tempdir().unwrap();
    write(&dir.path().join("etc/hostname"), "ol-mem4.us.archive.org\n");
    let fleet = "version: 1\nhosts:\n  ol-mem[3-5]: [m]\nroles:\n  m: {}\n";
    let o = run(
        &[
            "apply",
            "-c",
            "-",
            "--root",
            dir.path().to_str().unwrap(),
            "--json",
        ],
        Some(fleet),
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let r = report(&o);
    assert_eq!(r["host"], "ol-mem4");
    assert_eq!(r["result"], "unchanged");
    assert_eq!(r["steps"].as_array().unwrap().len(), 5);
    assert!(dir.path().join("var/lib/olboot/report.json").is_file());

    // An absolute symlink names the target's own file, not this machine's (which lacks it).
    let dir = tempfile::tempdir().unwrap();
    let real = "/etc/olboot-test-hostname.not-on-this-machine";
    assert!(!std::path::Path::new(real).exists());
    write(&dir.path().join(&real[1..]), "ol-mem5\n");
    std::os::unix::fs::symlink(real, dir.path().join("etc/hostname")).unwrap();
    let root = dir.path().to_str().unwrap();
    let o = run(&["apply", "-c", "-", "--root", root, "--json"], Some(fleet));
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(report(&o)["host"], "ol-mem5");
}

#[test]
fn a_single_host_config_needs_no_host_name_under_root() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_str().unwrap();
    let single = "version: 1\nlinks: []\n";
    let o = run(
        &["apply", "-c", "-", "--root", root, "--json"],
        Some(single),
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(report(&o)["host"], "(single host)");
    // A fleet file still needs one, to pick its entry.
    let fleet = "version: 1\nhosts:\n  ol-mem[3-5]: [m]\nroles:\n  m: {}\n";
    let o = run(&["apply", "-c", "-", "--root", root], Some(fleet));
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("etc/hostname"), "{}", stderr(&o));
    assert!(stderr(&o).contains("give --host"), "{}", stderr(&o));
}

#[test]
fn packages_wait_for_a_failed_firewall() {
    // An empty root has no nft and no dpkg: the firewall cannot install nftables and fails;
    // packages must then not install anything that could listen unprotected.
    let dir = tempfile::tempdir().unwrap();
    let cfg = "version: 1\nfirewall:\n  allow: [ { port: 22 } ]\npackages:\n  install: [hello]\n";
    let o = run(
        &[
            "apply",
            "-c",
            "-",
            "--root",
            dir.path().to_str().unwrap(),
            "--host",
            "h",
            "--json",
        ],
        Some(cfg),
    );
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    let r = report(&o);
    assert_eq!(step(&r, "firewall")["result"], "failed");
    assert_eq!(step(&r, "packages")["result"], "skipped");
    assert_eq!(
        step(&r, "packages")["error"],
        "needs firewall, which failed"
    );
    // plan does not wait for the firewall's pending changes: packages are planned.
    let o = run(
        &[
            "plan",
            "-c",
            "-",
            "--root",
            dir.path().to_str().unwrap(),
            "--host",
            "h",
        ],
        Some(cfg),
    );
    let r = report(&o);
    assert_ne!(
        step(&r, "packages")["error"],
        "needs firewall, which has pending changes: planned once they are made"
    );
}
