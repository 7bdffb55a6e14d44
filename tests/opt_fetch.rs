//! The opt step over HTTP(S) against a misbehaving server on 127.0.0.1: resume with Range
//! after a cut or a stalled transfer, restart when Range is ignored, retry on 503, a lying
//! Content-Length, 404 → next mirror, a wrong sha256, a kill in the middle of a fetch, HTTPS
//! with a CA made in the test, a relative redirect with a URL in its query, one deadline
//! across restarts, a few bytes per connection, and SIGTERM during a retry's wait.

mod common;
#[path = "opt/support.rs"]
mod support;

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::*;

/// Archive with a data file big enough to span several pipe buffers.
const BIG: usize = 3 * 1024 * 1024;

fn ok_and_same(s: &Scratch, p: &Packed, out: &std::process::Output) {
    assert!(out.status.success(), "apply failed");
    assert_same_tree(&p.src, &s.opt(), true);
    assert_eq!(
        fs::read_link(s.root().join("opt")).unwrap(),
        Path::new("/1/opt")
    );
    s.assert_nothing_beside();
}

#[test]
fn a_cut_connection_resumes_with_range() {
    let p = packed(BIG);
    let cut = p.bytes.len() / 3;
    let srv = Server::start(p.bytes.clone(), vec![Fault::CutAt(cut)]);
    let s = Scratch::new();
    let cfg = s.config(&[srv.url("opt.tar.zst")], Some(&p.sha256), "", "symlink");
    let out = s.run("apply", &cfg, &[("OLBOOT_PROGRESS_MS", "0")]);
    ok_and_same(&s, &p, &out);
    let reqs = srv.requests();
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    assert_eq!(reqs[0].range, None);
    assert_eq!(reqs[1].range.as_deref(), Some(&*format!("bytes={cut}-")));
    assert_eq!(reqs[1].if_range.as_deref(), Some("\"v1\""));
    let err = stderr(&out);
    assert!(err.contains(&format!("resumed at byte {cut}")), "{err}");
    assert!(err.contains("ETA"), "no progress line: {err}");
    // Converged: a second apply fetches nothing.
    let again = s.apply(&cfg);
    assert!(again.status.success());
    assert_eq!(opt_step(&s.root())["result"], "unchanged");
    assert_eq!(srv.requests().len(), 2);
}

#[test]
fn a_stalled_transfer_times_out_and_resumes() {
    let p = packed(BIG);
    let at = p.bytes.len() / 2;
    let srv = Server::start(p.bytes.clone(), vec![Fault::Hang(at)]);
    let s = Scratch::new();
    let cfg = s.config(&[srv.url("opt.tar.zst")], Some(&p.sha256), "", "symlink");
    let started = Instant::now();
    let out = s.run("apply", &cfg, &[("OLBOOT_STALL_TIMEOUT_MS", "300")]);
    ok_and_same(&s, &p, &out);
    assert!(started.elapsed() < Duration::from_secs(20));
    let reqs = srv.requests();
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    assert_eq!(reqs[1].range.as_deref(), Some(&*format!("bytes={at}-")));
}

#[test]
fn a_server_ignoring_range_makes_the_stream_start_over() {
    let p = packed(BIG);
    let srv = Server::start(
        p.bytes.clone(),
        vec![Fault::CutAt(p.bytes.len() / 2), Fault::IgnoreRange],
    );
    let s = Scratch::new();
    let cfg = s.config(&[srv.url("opt.tar.zst")], Some(&p.sha256), "", "symlink");
    let out = s.apply(&cfg);
    ok_and_same(&s, &p, &out);
    let reqs = srv.requests();
    assert_eq!(reqs.len(), 3, "{reqs:?}");
    assert!(reqs[1].range.is_some());
    assert_eq!(reqs[2].range, None, "the restart must fetch from byte 0");
    assert!(stderr(&out).contains("must start over"));
}

#[test]
fn transient_503_is_retried() {
    let p = packed(64 * 1024);
    let srv = Server::start(
        p.bytes.clone(),
        vec![Fault::Status(503), Fault::Status(503)],
    );
    let s = Scratch::new();
    let cfg = s.config(&[srv.url("opt.tar.zst")], Some(&p.sha256), "", "symlink");
    let out = s.apply(&cfg);
    ok_and_same(&s, &p, &out);
    assert_eq!(srv.requests().len(), 3);
}

#[test]
fn retries_are_bounded() {
    let p = packed(1024);
    let srv = Server::start(p.bytes.clone(), vec![Fault::Status(503); 10]);
    let s = Scratch::new();
    let cfg = s.config(&[srv.url("opt.tar.zst")], Some(&p.sha256), "", "symlink");
    let out = s.apply(&cfg);
    assert_eq!(out.status.code(), Some(1));
    // OLBOOT_RETRIES=3: three tries in all (src/retry.rs counts tries, the first included).
    assert_eq!(srv.requests().len(), 3);
    let err = opt_step(&s.root())["error"].as_str().unwrap().to_string();
    assert!(err.contains("gave up after 3 tries"), "{err}");
    assert!(!s.opt().exists());
    s.assert_nothing_beside();
}

#[test]
fn a_lying_content_length_fails_cleanly() {
    let p = packed(256 * 1024);
    let srv = Server::start(p.bytes.clone(), vec![Fault::LieLength(1000)]);
    let s = Scratch::new();
    let cfg = s.config(&[srv.url("opt.tar.zst")], Some(&p.sha256), "", "symlink");
    let out = s.apply(&cfg);
    assert_eq!(out.status.code(), Some(1));
    let err = opt_step(&s.root())["error"].as_str().unwrap().to_string();
    assert!(err.contains("416"), "{err}");
    assert!(!s.opt().exists());
    assert!(!s.root().join("opt").exists());
    s.assert_nothing_beside();
}

#[test]
fn a_404_moves_on_to_the_next_mirror() {
    let p = packed(64 * 1024);
    let bad = Server::start(Vec::new(), vec![Fault::Status(404)]);
    let good = Server::start(p.bytes.clone(), vec![]);
    let s = Scratch::new();
    let cfg = s.config(
        &[bad.url("opt.tar.zst"), good.url("opt.tar.zst")],
        Some(&p.sha256),
        "",
        "symlink",
    );
    let out = s.apply(&cfg);
    ok_and_same(&s, &p, &out);
    assert_eq!(bad.requests().len(), 1, "a 404 is not retried");
    assert_eq!(good.requests().len(), 1);
    // The report line is the plan's (it names the first mirror); the log says which served.
    let changes = opt_step(&s.root())["changes"].to_string();
    assert!(changes.contains(&bad.url("opt.tar.zst")), "{changes}");
    let err = stderr(&out);
    assert!(
        err.contains(&format!("opt: fetched {}", good.url("opt.tar.zst"))),
        "{err}"
    );
}

#[test]
fn a_wrong_sha256_fails_and_leaves_nothing() {
    let p = packed(256 * 1024);
    let srv = Server::start(p.bytes.clone(), vec![]);
    let s = Scratch::new();
    let wrong = "0".repeat(64);
    let cfg = s.config(&[srv.url("opt.tar.zst")], Some(&wrong), "", "symlink");
    let out = s.apply(&cfg);
    assert_eq!(out.status.code(), Some(1));
    let err = opt_step(&s.root())["error"].as_str().unwrap().to_string();
    assert!(err.contains("sha256 mismatch"), "{err}");
    assert!(err.contains(&p.sha256), "{err}");
    assert!(!s.opt().exists());
    assert!(
        !s.root().join("opt").exists(),
        "/opt exposed after a failure"
    );
    s.assert_nothing_beside();
}

#[test]
fn a_killed_fetch_is_cleaned_up_by_the_next_run() {
    let p = packed(BIG);
    let srv = Server::start(p.bytes.clone(), vec![Fault::Hang(p.bytes.len() / 2)]);
    let s = Scratch::new();
    let cfg = s.config(&[srv.url("opt.tar.zst")], Some(&p.sha256), "", "symlink");
    let mut child = olboot()
        .env("OLBOOT_STALL_TIMEOUT_MS", "60000")
        .arg("apply")
        .arg("-c")
        .arg(&cfg)
        .arg("--root")
        .arg(s.root())
        .args(["--host", "ol-web1", "--only", "opt"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until files are being unpacked into the staging directory.
    let started = Instant::now();
    let venv = s.staging().join("openlibrary/deploys");
    while !venv.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no staging appeared"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&child),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    child.wait().unwrap();
    assert!(
        s.staging().exists(),
        "the killed run left no staging to clean"
    );
    assert!(!s.opt().exists(), "a half-written tree at opt.path");
    let out = s.apply(&cfg);
    ok_and_same(&s, &p, &out);
    let changes = opt_step(&s.root())["changes"].to_string();
    assert!(changes.contains("removed leftover staging"), "{changes}");
}

/// An `openssl s_server` serving a directory over HTTPS, killed when dropped.
struct Https {
    child: std::process::Child,
    port: u16,
}

impl Drop for Https {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and a server certificate for 127.0.0.1 signed by it, in `dir`.
fn make_ca(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=olboot test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "srv.key",
            "-out",
            "srv.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    );
    fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "srv.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "srv.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    );
}

fn https_server(dir: &Path) -> Https {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("openssl")
        .args([
            "s_server", "-quiet", "-WWW", "-cert", "srv.pem", "-key", "srv.key",
        ])
        .args(["-accept", &format!("127.0.0.1:{port}")])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "s_server did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Https { child, port }
}

#[test]
fn https_needs_the_ca_file_of_an_internal_mirror() {
    let p = packed(64 * 1024);
    let tls = tempfile::tempdir().unwrap();
    make_ca(tls.path());
    fs::copy(&p.archive, tls.path().join("opt.tar.zst")).unwrap();
    let srv = https_server(tls.path());
    let url = format!("https://127.0.0.1:{}/opt.tar.zst", srv.port);

    let s = Scratch::new();
    let cfg = s.config(std::slice::from_ref(&url), Some(&p.sha256), "", "symlink");
    let out = s.apply(&cfg);
    assert_eq!(out.status.code(), Some(1));
    let err = opt_step(&s.root())["error"].as_str().unwrap().to_string();
    assert!(err.contains("certificate is not trusted"), "{err}");
    assert!(err.contains("ca_file"), "{err}");
    assert!(!s.opt().exists());
    s.assert_nothing_beside();

    // ca_file is a path of the target system: below --root.
    fs::create_dir_all(s.root().join("etc/ssl")).unwrap();
    fs::copy(
        tls.path().join("ca.pem"),
        s.root().join("etc/ssl/internal-ca.pem"),
    )
    .unwrap();
    let cfg = s.config(
        &[url],
        Some(&p.sha256),
        "    ca_file: /etc/ssl/internal-ca.pem\n",
        "symlink",
    );
    let out = s.apply(&cfg);
    ok_and_same(&s, &p, &out);
}

#[test]
fn a_relative_redirect_with_a_url_in_its_query_is_followed_and_its_secret_never_shown() {
    // A presigned store: the query carries the signature and a return URL with `://`.
    const TO: &str = "/dl?X-Amz-Signature=S3CR3T&next=http://127.0.0.1/x";
    let p = packed(64 * 1024);
    let srv = Server::start(p.bytes.clone(), vec![Fault::Redirect(TO)]);
    let s = Scratch::new();
    let cfg = s.config(&[srv.url("start")], Some(&p.sha256), "", "symlink");
    let out = s.apply(&cfg);
    ok_and_same(&s, &p, &out);
    let paths: Vec<String> = srv.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, ["/start", TO]);
    let err = stderr(&out);
    assert!(
        err.contains(&format!("redirected to http://127.0.0.1:{}/dl?…", srv.port)),
        "{err}"
    );
    let report = fs::read_to_string(s.root().join("var/lib/olboot/report.json")).unwrap();
    for text in [
        &err,
        &report,
        &String::from_utf8_lossy(&out.stdout).into_owned(),
    ] {
        assert!(!text.contains("S3CR3T"), "the signature is shown: {text}");
    }
}

#[test]
fn restarts_share_the_mirror_deadline() {
    let p = packed(BIG);
    // Every pass stalls, and its resume is answered with the whole file: each pass starts
    // the stream over, well within the deadline, but all of them together are not.
    let script = [Fault::Hang(p.bytes.len() / 4), Fault::IgnoreRange].repeat(10);
    let srv = Server::start(p.bytes.clone(), script);
    let s = Scratch::new();
    let cfg = s.config(&[srv.url("opt.tar.zst")], Some(&p.sha256), "", "symlink");
    let started = Instant::now();
    let env = [
        ("OLBOOT_STALL_TIMEOUT_MS", "400"),
        ("OLBOOT_MIRROR_DEADLINE_MS", "1500"),
        ("OLBOOT_RETRIES", "8"),
    ];
    let out = s.run("apply", &cfg, &env);
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(1));
    let err = opt_step(&s.root())["error"].as_str().unwrap().to_string();
    assert!(err.contains("deadline"), "{err}");
    assert!(err.contains(&srv.url("opt.tar.zst")), "{err}");
    assert!(took < Duration::from_secs(3), "took {took:?}");
    assert!(!s.opt().exists());
    s.assert_nothing_beside();
}

#[test]
fn a_server_that_closes_every_connection_after_a_few_bytes_fails_the_rate_check() {
    let p = packed(64 * 1024);
    let srv = Server::start(p.bytes.clone(), vec![Fault::Chunk(20); 10_000]);
    let s = Scratch::new();
    let cfg = s.config(&[srv.url("opt.tar.zst")], Some(&p.sha256), "", "symlink");
    let started = Instant::now();
    let env = [
        ("OLBOOT_SPEED_LIMIT", "1024"),
        ("OLBOOT_SPEED_TIME_MS", "1000"),
        ("OLBOOT_BACKOFF_MS", "100"),
        ("OLBOOT_BACKOFF_MAX_MS", "100"),
        ("OLBOOT_MIRROR_DEADLINE_MS", "8000"),
    ];
    let out = s.run("apply", &cfg, &env);
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(1));
    let err = opt_step(&s.root())["error"].as_str().unwrap().to_string();
    assert!(err.contains("too slow"), "{err}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(
        srv.requests().len() < 30,
        "{} requests",
        srv.requests().len()
    );
    assert!(!s.opt().exists());
    s.assert_nothing_beside();
}

#[test]
fn sigterm_during_a_retry_backoff_stops_at_once() {
    let p = packed(1024);
    let srv = Server::start(p.bytes.clone(), vec![Fault::Status(503); 10]);
    let s = Scratch::new();
    let cfg = s.config(&[srv.url("opt.tar.zst")], Some(&p.sha256), "", "symlink");
    let env = [
        ("OLBOOT_BACKOFF_MS", "5000"),
        ("OLBOOT_BACKOFF_MAX_MS", "5000"),
        ("OLBOOT_RETRIES", "10"),
    ];
    let ready = || !srv.requests().is_empty();
    sigterm_when(&s, &cfg, &env, ready, Duration::from_millis(1500));
    assert_eq!(srv.requests().len(), 1, "retried after SIGTERM");
}

/// An `opt.path` that is a symlink to an empty directory cannot take the unpacked tree (the
/// staging directory is renamed over the path): refused before anything is fetched, rather
/// than after the whole download. The symlink is absolute and followed inside the root.
#[test]
fn an_opt_path_that_is_a_symlink_to_an_empty_directory_is_refused_before_fetching() {
    let p = packed(0);
    let srv = Server::start(p.bytes.clone(), vec![]);
    let s = Scratch::new();
    std::fs::create_dir_all(s.root().join("srv/empty")).unwrap();
    std::os::unix::fs::symlink("/srv/empty", s.opt()).unwrap();
    let cfg = s.config(&[srv.url("opt.tar.zst")], Some(&p.sha256), "", "symlink");
    let out = s.apply(&cfg);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/1/opt is a symlink to /srv/empty, which holds no tree"),
        "{err}"
    );
    assert!(
        srv.requests().is_empty(),
        "fetched: {:?}",
        srv.requests().len()
    );
    assert_eq!(
        std::fs::read_link(s.opt()).unwrap(),
        Path::new("/srv/empty")
    );
}
