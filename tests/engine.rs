//! The engine runs independent steps at the same time: real steps on a scratch root, one of
//! them (`opt`) fetching from a deliberately slow server on 127.0.0.1 while another
//! (`volumes`) waits for a disk that never comes. The report's per-step `started`/`finished`
//! show the overlap; the report keeps the spec's order, each log line names its step, and a
//! failure stops only the steps that need the failed one; a SIGTERM fails the run.

mod common;
use common::{code, olboot, report, stderr, step};
use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Output;
use std::time::{Duration, SystemTime};

/// How long `volumes` waits for its (absent) device.
const VOLUME_WAIT_MS: u64 = 2000;
/// The slow server sends the archive in this many pieces, one every [`PIECE_DELAY`].
const PIECES: usize = 15;
const PIECE_DELAY: Duration = Duration::from_millis(100);

/// An uncompressed tar of an olsystem-like tree, and its sha256.
fn archive() -> (Vec<u8>, String) {
    let mut b = tar::Builder::new(Vec::new());
    for (name, body) in [
        (
            "olsystem/etc/nginx/nginx.conf",
            &b"worker_processes 2;\n"[..],
        ),
        ("olsystem/etc/app.yml", &[b'x'; 64 * 1024][..]),
    ] {
        let mut h = tar::Header::new_ustar();
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        b.append_data(&mut h, name, body).unwrap();
    }
    let bytes = b.into_inner().unwrap();
    let sha = Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    (bytes, sha)
}

/// Serve `body` to every GET on 127.0.0.1, slowly: [`PIECES`] pieces [`PIECE_DELAY`] apart.
fn slow_server(body: Vec<u8>) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut r = BufReader::new(conn.try_clone().unwrap());
            let mut line = String::new();
            while r.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                line.clear();
            }
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = conn.write_all(head.as_bytes());
            for piece in body.chunks(body.len().div_ceil(PIECES)) {
                std::thread::sleep(PIECE_DELAY);
                if conn.write_all(piece).and_then(|()| conn.flush()).is_err() {
                    break;
                }
            }
        }
    });
    format!("http://{addr}/opt.tar")
}

/// Start `olboot apply` of `config` (fed on stdin) on the scratch root `root`, with `PATH`
/// set to `path`.
fn spawn_apply(root: &Path, config: &str, path: &str) -> std::process::Child {
    let mut child = olboot()
        .args(["apply", "-c", "-", "--host", "h", "--json", "--root"])
        .arg(root)
        .env("OLBOOT_PROGRESS_MS", "200")
        .env("PATH", path)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(config.as_bytes())
        .unwrap();
    child
}

/// Wait for `child` and show its log.
fn output(child: std::process::Child) -> Output {
    let out = child.wait_with_output().unwrap();
    eprintln!("--- olboot apply\n{}", stderr(&out));
    out
}

/// Apply `config` on the scratch root `root`.
fn apply(root: &Path, config: &str) -> Output {
    output(spawn_apply(root, config, &std::env::var("PATH").unwrap()))
}

fn config(url: &str, sha: &str, opt_path: &str) -> String {
    format!(
        "version: 1\n\
         volumes:\n  - {{ device: /dev/olboot-test-absent, wait: {VOLUME_WAIT_MS}ms, mountpoint: /1 }}\n\
         opt:\n  path: {opt_path}\n  expose: symlink\n  archive: {{ urls: [{url}], sha256: {sha} }}\n\
         packages:\n  install: [hello]\n\
         links:\n  - {{ from: /opt/olsystem/etc, to: /etc }}\n"
    )
}

/// A step's `started` and `finished` as times.
fn span(s: &serde_json::Value) -> (SystemTime, SystemTime) {
    let t = |k: &str| {
        let v = s[k].as_str().unwrap_or_else(|| panic!("no {k} in {s}"));
        humantime::parse_rfc3339(v).unwrap()
    };
    (t("started"), t("finished"))
}

fn ms(d: Result<Duration, std::time::SystemTimeError>) -> u128 {
    d.map(|d| d.as_millis()).unwrap_or(0)
}

#[test]
fn independent_steps_overlap_and_dependants_wait() {
    let (body, sha) = archive();
    let url = slow_server(body);
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let started = std::time::Instant::now();
    // opt's path is not on the volume: opt does not need volumes and runs beside it.
    let o = apply(root, &config(&url, &sha, "/srv/opt"));
    let wall = started.elapsed();
    assert_eq!(code(&o), 1, "volumes fails: no such device");
    let r = report(&o);
    let names: Vec<&str> = r["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["firewall", "volumes", "opt", "packages", "links"]);
    let (volumes, opt, links) = (step(&r, "volumes"), step(&r, "opt"), step(&r, "links"));
    assert_eq!(volumes["result"], "failed");
    assert_eq!(opt["result"], "changed", "{opt}");
    assert_eq!(links["result"], "changed", "links needs opt only: {links}");
    assert!(root.join("etc/nginx/nginx.conf").is_symlink());
    let ((v0, v1), (o0, o1), (l0, _)) = (span(volumes), span(opt), span(links));
    let (v_ms, o_ms) = (ms(v1.duration_since(v0)), ms(o1.duration_since(o0)));
    assert!(v_ms >= VOLUME_WAIT_MS as u128, "volumes waited {v_ms} ms");
    let slow = (PIECES as u128) * PIECE_DELAY.as_millis();
    assert!(o_ms >= slow, "opt took {o_ms} ms, the server needs {slow}");
    // They overlapped: each started before the other finished.
    assert!(
        o0 < v1 && v0 < o1,
        "volumes {v0:?}..{v1:?}, opt {o0:?}..{o1:?}"
    );
    assert!(
        wall.as_millis() < v_ms + o_ms,
        "the run took {wall:?}: the sum of volumes {v_ms} ms and opt {o_ms} ms"
    );
    assert!(l0 >= o1, "links started before opt finished");
    // Every line of a step's thread names its step, the fetch thread's too.
    let err = stderr(&o);
    assert!(err.contains("volumes: waiting up to"), "{err}");
    assert!(err.contains("opt: fetching http://127.0.0.1"), "{err}");
    assert!(err.contains("opt: unpacked into"), "{err}");
}

#[test]
fn a_failure_stops_only_the_steps_that_need_it() {
    let (body, sha) = archive();
    let url = slow_server(body);
    let dir = tempfile::tempdir().unwrap();
    // Now opt's path is on the volume that never comes: opt, and links after it, are skipped;
    // packages, which needs neither, still runs (and fails on its own: no dpkg in this root).
    let o = apply(dir.path(), &config(&url, &sha, "/1/opt"));
    assert_eq!(code(&o), 1);
    let r = report(&o);
    assert_eq!(step(&r, "volumes")["result"], "failed");
    assert_eq!(step(&r, "opt")["result"], "skipped");
    assert_eq!(step(&r, "opt")["error"], "needs volumes, which failed");
    assert_eq!(step(&r, "links")["result"], "skipped");
    assert_eq!(step(&r, "links")["error"], "needs opt, which was skipped");
    let packages = step(&r, "packages");
    assert_eq!(packages["result"], "failed", "{packages}");
    assert!(packages["started"].is_string(), "packages ran: {packages}");
    assert!(!dir.path().join("1/opt").exists());
}

/// A SIGTERM while a step that does not poll for it (the firewall, in a slow `nft`) is
/// running: that step finishes, the steps after it are skipped as interrupted, the steps the
/// config does not mention stay "not configured", and the run fails: it has not converged,
/// whatever the finished steps say.
#[test]
fn a_signal_between_steps_fails_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    common::write(&root.join("usr/sbin/nft"), "");
    common::write(&root.join("opt/olsystem/etc/app.conf"), "a\n");
    // A check-only `nft` that takes its time; it refuses anything but a check.
    let bin = dir.path().join("bin");
    common::write(
        &bin.join("nft"),
        "#!/bin/sh\ncase \" $* \" in *\" -c \"*) sleep 2; exit 0;; esac\nexit 1\n",
    );
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(bin.join("nft"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = "version: 1\n\
        firewall:\n  allow:\n    - { port: 22 }\n\
        links:\n  - { from: /opt/olsystem/etc, to: /etc }\n";
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let o = apply_until_sigterm(&root, config, &path, Duration::from_secs(10));
    assert_eq!(code(&o), 1, "a run stopped by SIGTERM must not exit 0");
    let r = report(&o);
    assert_eq!(r["result"], "failed", "{r}");
    let firewall = step(&r, "firewall");
    assert_ne!(
        firewall["result"], "skipped",
        "the firewall was running: {firewall}"
    );
    assert_eq!(step(&r, "links")["result"], "skipped");
    assert_eq!(step(&r, "links")["error"], "interrupted by SIGTERM");
    for name in ["volumes", "opt", "packages"] {
        assert_eq!(step(&r, name)["error"], "not configured", "{name}");
    }
    assert!(
        !root.join("etc/app.conf").exists(),
        "links ran after SIGTERM"
    );
}

/// Apply `config` on `root` with `PATH` set to `path`, send SIGTERM after 700 ms, and wait up
/// to `within` for olboot to end.
fn apply_until_sigterm(root: &Path, config: &str, path: &str, within: Duration) -> Output {
    let mut child = spawn_apply(root, config, path);
    std::thread::sleep(Duration::from_millis(700));
    common::sigterm_and_wait(&mut child, within).expect("still running after SIGTERM");
    output(child)
}

/// A SIGTERM while `volumes` waits for its device ends the wait at once.
#[test]
fn a_signal_ends_the_wait_for_a_device() {
    let dir = tempfile::tempdir().unwrap();
    let config = "version: 1\n\
        volumes:\n  - { device: /dev/olboot-test-absent, wait: 30s, mountpoint: /1 }\n";
    let path = std::env::var("PATH").unwrap();
    let o = apply_until_sigterm(dir.path(), config, &path, Duration::from_secs(3));
    assert_eq!(code(&o), 1);
    let volumes = step(&report(&o), "volumes").clone();
    assert_eq!(volumes["result"], "failed", "{volumes}");
    let error = volumes["error"].as_str().unwrap();
    assert!(error.contains("interrupted by SIGTERM"), "{error}");
}
