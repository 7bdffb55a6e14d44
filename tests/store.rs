//! The private store against the real reference: archives encrypted by the `age` CLI and by
//! `olboot pack --recipient` (read back by `age -d`), loopback stores that demand a bearer
//! token, basic auth, the archive.org `LOW` header or another header, redirects to another
//! host (127.0.0.2) that must not receive the credential, the fetch limits (endless body, 1 B/s
//! body, 1 B/s headers, an age header that never ends, a config URL whose body trickles), and
//! a grep of every log line and the report for the secrets.

mod common;
#[path = "opt/support.rs"]
mod support;

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::{assert_same_tree, make_tree, olboot, opt_step, Scratch};

const TOKEN: &str = "Bearer tok-5f2a9c1e";
const QUERY: &str = "X-Signature=q7Zr88secret";

/// One request as the store saw it: path with query, and every header (names lowercase).
#[derive(Debug, Clone)]
struct Req {
    path: String,
    headers: Vec<(String, String)>,
}

impl Req {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What a store does.
#[derive(Clone)]
enum Mode {
    /// Serve `data` (honouring `Range`), demanding header `need` (401 without it), cutting
    /// the first response after `cut` bytes.
    Serve {
        data: Arc<Vec<u8>>,
        need: Option<(String, String)>,
        cut: Option<usize>,
    },
    /// Redirect every request to this URL.
    Redirect(String),
    /// 200 without Content-Length, and a body that never ends (at about 1 MiB/s): a tar
    /// whose one file claims a terabyte, so that the pipeline keeps reading it.
    Endless,
    /// The same tar, at 1 byte per second after its header.
    TrickleBody,
    /// Headers at 1 byte per second.
    TrickleHeaders,
    /// 200 without Content-Length, and an age header whose one stanza body never ends.
    EndlessAgeHeader,
}

/// A loopback store on `ip` that records what it receives.
struct Store {
    base: String,
    seen: Arc<Mutex<Vec<Req>>>,
}

impl Store {
    fn start(ip: &str, mode: Mode) -> Store {
        let listener = TcpListener::bind((ip, 0)).unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (mode, seen) = (mode.clone(), s2.clone());
                std::thread::spawn(move || {
                    let _ = serve(conn, &mode, &seen);
                });
            }
        });
        Store { base, seen }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/{path}", self.base)
    }

    fn requests(&self) -> Vec<Req> {
        self.seen.lock().unwrap().clone()
    }
}

fn serve(conn: TcpStream, mode: &Mode, seen: &Mutex<Vec<Req>>) -> std::io::Result<()> {
    let mut r = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let req = Req { path, headers };
    let first = {
        let mut s = seen.lock().unwrap();
        s.push(req.clone());
        s.len() == 1
    };
    let mut w = conn;
    match mode {
        Mode::Serve { data, need, cut } => {
            if let Some((k, v)) = need {
                if req.header(k) != Some(v) {
                    w.write_all(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n")?;
                    return Ok(());
                }
            }
            let from = req
                .header("range")
                .and_then(|r| r.strip_prefix("bytes="))
                .and_then(|r| r.trim_end_matches('-').parse::<usize>().ok());
            let len = data.len();
            let (status, from) = match from {
                Some(f) => (
                    format!(
                        "206 Partial Content\r\nContent-Range: bytes {f}-{}/{len}",
                        len - 1
                    ),
                    f,
                ),
                None => ("200 OK".to_string(), 0),
            };
            let head = format!(
                "HTTP/1.1 {status}\r\nETag: \"e1\"\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                len - from
            );
            w.write_all(head.as_bytes())?;
            let end = match cut {
                Some(c) if first => *c,
                _ => len,
            };
            w.write_all(&data[from..end])?;
        }
        Mode::Redirect(to) => {
            let head = format!(
                "HTTP/1.1 302 Found\r\nLocation: {to}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            w.write_all(head.as_bytes())?;
        }
        Mode::Endless => {
            w.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")?;
            w.write_all(&huge_tar_header())?;
            let chunk = vec![0u8; 64 * 1024];
            loop {
                w.write_all(&chunk)?;
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Mode::TrickleBody => {
            w.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")?;
            w.write_all(&huge_tar_header())?;
            for _ in 0..100_000 {
                w.write_all(b"\0")?;
                std::thread::sleep(Duration::from_millis(1000));
            }
        }
        Mode::EndlessAgeHeader => {
            w.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")?;
            w.write_all(b"age-encryption.org/v1\n-> X25519 ")?;
            w.write_all(&[b'A'; 43])?;
            // Full lines of 64 or more characters: the body goes on.
            let mut lines = Vec::new();
            for _ in 0..64 {
                lines.extend_from_slice(&[b'A'; 4092]);
                lines.push(b'\n');
            }
            w.write_all(b"\n")?;
            loop {
                w.write_all(&lines)?;
            }
        }
        Mode::TrickleHeaders => {
            for b in b"HTTP/1.1 200 OK\r\nX-Slow: "
                .iter()
                .chain([b'a'; 10_000].iter())
            {
                w.write_all(&[*b])?;
                std::thread::sleep(Duration::from_millis(1000));
            }
        }
    }
    w.flush()?;
    w.shutdown(std::net::Shutdown::Both)
}

/// The header block of a tar entry `big` of a terabyte.
fn huge_tar_header() -> Vec<u8> {
    let mut h = tar::Header::new_ustar();
    h.set_path("big").unwrap();
    h.set_size(1 << 40);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    h.as_bytes().to_vec()
}

/// A key pair made by `age-keygen`: (identity file, public key).
fn keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    let key = dir.join(name);
    let out = Command::new("age-keygen")
        .arg("-o")
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success(), "age-keygen: {out:?}");
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
    let out = Command::new("age-keygen")
        .arg("-y")
        .arg(&key)
        .output()
        .unwrap();
    (
        key,
        String::from_utf8(out.stdout).unwrap().trim().to_string(),
    )
}

/// The secret line of an identity file.
fn secret_of(key: &Path) -> String {
    fs::read_to_string(key)
        .unwrap()
        .lines()
        .find(|l| l.starts_with("AGE-SECRET-KEY-1"))
        .unwrap()
        .to_string()
}

fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A source tree and its plain `olboot pack`.
struct Source {
    dir: tempfile::TempDir,
    src: PathBuf,
    plain: PathBuf,
}

fn source(big: usize) -> Source {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("opt");
    fs::create_dir(&src).unwrap();
    make_tree(&src, big);
    let plain = dir.path().join("opt.tar.zst");
    let out = olboot()
        .arg("pack")
        .arg(&src)
        .arg("-o")
        .arg(&plain)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    Source { dir, src, plain }
}

/// `age -r PUB` of `plain`, by the reference CLI.
fn age_encrypt(plain: &Path, recipient: &str) -> Vec<u8> {
    let out = Command::new("age")
        .args(["-r", recipient])
        .arg(plain)
        .output()
        .unwrap();
    assert!(out.status.success(), "age: {out:?}");
    out.stdout
}

/// A secret file below the scratch root, root-only.
fn put_secret(s: &Scratch, at: &str, text: &str) {
    let p = s.root().join(at.trim_start_matches('/'));
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(&p, text).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
}

fn apply_debug(s: &Scratch, cfg: &Path, env: &[(&str, &str)]) -> Output {
    let mut e = vec![("RUST_LOG", "debug"), ("OLBOOT_PROGRESS_MS", "0")];
    e.extend_from_slice(env);
    s.run("apply", cfg, &e)
}

/// No secret in the output nor in the report.
fn assert_no_secret(s: &Scratch, out: &Output, secrets: &[&str]) {
    let text = format!(
        "{}{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        fs::read_to_string(s.root().join("var/lib/olboot/report.json")).unwrap_or_default()
    );
    assert!(!text.is_empty());
    for secret in secrets {
        assert!(!text.contains(secret), "{secret:?} was printed");
    }
}

fn assert_nothing_unpacked(s: &Scratch) {
    assert!(!s.opt().exists(), "something was put in place");
    s.assert_nothing_beside();
}

#[test]
fn olboot_pack_recipient_is_read_back_by_the_age_cli() {
    let src = source(300 * 1024);
    let (key, public) = keygen(src.dir.path(), "key");
    let (key2, public2) = keygen(src.dir.path(), "key2");
    let rfile = src.dir.path().join("recipients");
    fs::write(&rfile, format!("# the second VM\n{public2}\n")).unwrap();
    let enc = src.dir.path().join("opt.tar.zst.age");
    let out = olboot()
        .arg("pack")
        .arg(&src.src)
        .arg("-o")
        .arg(&enc)
        .args(["--recipient", &public, "--recipients-file"])
        .arg(&rfile)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let cipher = fs::read(&enc).unwrap();
    let printed = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_eq!(printed, sha256(&cipher), "the digest is of the ciphertext");
    assert_eq!(
        fs::read_to_string(src.dir.path().join("opt.tar.zst.age.sha256")).unwrap(),
        format!("{printed}  opt.tar.zst.age\n")
    );
    let plain = fs::read(&src.plain).unwrap();
    for k in [&key, &key2] {
        let out = Command::new("age")
            .arg("-d")
            .arg("-i")
            .arg(k)
            .arg(&enc)
            .output()
            .unwrap();
        assert!(out.status.success(), "age -d: {out:?}");
        assert_eq!(out.stdout, plain, "not the same tar stream");
    }
    let bad = olboot()
        .arg("pack")
        .arg(&src.src)
        .arg("-o")
        .arg(src.dir.path().join("x"))
        .args(["--recipient", "age1nope"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--recipient: \"age1nope\""));
}

#[test]
fn an_age_cli_archive_behind_a_token_resumes_after_a_cut_and_unpacks_identical() {
    let src = source(3 * 1024 * 1024);
    let (key, public) = keygen(src.dir.path(), "key");
    let cipher = age_encrypt(&src.plain, &public);
    let cut = cipher.len() / 3;
    let store = Store::start(
        "127.0.0.1",
        Mode::Serve {
            data: Arc::new(cipher.clone()),
            need: Some(("authorization".into(), TOKEN.into())),
            cut: Some(cut),
        },
    );
    let s = Scratch::new();
    put_secret(
        &s,
        "/etc/olboot/age.key",
        &fs::read_to_string(&key).unwrap(),
    );
    put_secret(&s, "/etc/olboot/store.auth", &format!("{TOKEN}\n"));
    let url = store.url(&format!("opt.tar.zst.age?{QUERY}"));
    let cfg = s.config(
        &[url],
        Some(&sha256(&cipher)),
        "    identity_file: /etc/olboot/age.key\n    auth_file: /etc/olboot/store.auth\n",
        "symlink",
    );
    let out = apply_debug(&s, &cfg, &[]);
    assert!(out.status.success());
    assert_same_tree(&src.src, &s.opt(), true);
    let reqs = store.requests();
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    assert!(reqs
        .iter()
        .all(|r| r.header("authorization") == Some(TOKEN)));
    assert_eq!(reqs[1].header("range"), Some(&*format!("bytes={cut}-")));
    let err = support::stderr(&out);
    assert!(err.contains(&format!("resumed at byte {cut}")), "{err}");
    assert!(err.contains("/opt.tar.zst.age?…"), "{err}");
    let secret = secret_of(&key);
    assert_no_secret(&s, &out, &[TOKEN, "tok-5f2a9c1e", QUERY, "q7Zr88", &secret]);
    let changes = opt_step(&s.root())["changes"].to_string();
    assert!(changes.contains("opt.tar.zst.age?…"), "{changes}");
}

#[test]
fn wrong_key_truncated_and_tampered_ciphertext_fail_with_nothing_unpacked() {
    let src = source(300 * 1024);
    let (key, public) = keygen(src.dir.path(), "key");
    let (other, _) = keygen(src.dir.path(), "other");
    let cipher = age_encrypt(&src.plain, &public);
    let mut truncated = cipher.clone();
    truncated.truncate(cipher.len() - 100);
    let mut tampered = cipher.clone();
    let at = cipher.len() - 50;
    tampered[at] ^= 0x40;
    let cases: [(&str, &Path, Vec<u8>, &str); 3] = [
        (
            "wrong key",
            &other,
            cipher.clone(),
            "not encrypted to any identity",
        ),
        ("truncated", &key, truncated, "cannot decrypt"),
        ("tampered", &key, tampered, "cannot decrypt"),
    ];
    for (what, identity, bytes, expect) in cases {
        let archive = src.dir.path().join("served.age");
        fs::write(&archive, &bytes).unwrap();
        let s = Scratch::new();
        put_secret(&s, "/k", &fs::read_to_string(identity).unwrap());
        let cfg = s.config(
            &[format!("file://{}", archive.display())],
            Some(&sha256(&bytes)),
            "    identity_file: /k\n",
            "symlink",
        );
        let out = apply_debug(&s, &cfg, &[]);
        assert_eq!(out.status.code(), Some(1), "{what}");
        let error = opt_step(&s.root())["error"].as_str().unwrap().to_string();
        assert!(error.contains(expect), "{what}: {error}");
        assert!(!error.contains('\n'), "{what}: not one line: {error}");
        assert_nothing_unpacked(&s);
        assert_no_secret(&s, &out, &[&secret_of(identity)]);
    }
    // An encrypted archive without identity_file: said so, nothing unpacked.
    let archive = src.dir.path().join("served.age");
    fs::write(&archive, &cipher).unwrap();
    let s = Scratch::new();
    let cfg = s.config(
        &[format!("file://{}", archive.display())],
        Some(&sha256(&cipher)),
        "",
        "symlink",
    );
    let out = s.apply(&cfg);
    assert_eq!(out.status.code(), Some(1));
    let error = opt_step(&s.root())["error"].to_string();
    assert!(error.contains("age-encrypted"), "{error}");
    assert_nothing_unpacked(&s);
}

#[test]
fn basic_low_and_custom_headers_are_sent_as_written() {
    let src = source(64 * 1024);
    let plain = fs::read(&src.plain).unwrap();
    let cases = [
        ("Basic dXNlcjpwdw==", "authorization", "Basic dXNlcjpwdw=="),
        ("LOW key1:secret2", "authorization", "LOW key1:secret2"),
        ("X-Api-Key: k-998877", "x-api-key", "k-998877"),
    ];
    for (line, name, value) in cases {
        let store = Store::start(
            "127.0.0.1",
            Mode::Serve {
                data: Arc::new(plain.clone()),
                need: Some((name.into(), value.into())),
                cut: None,
            },
        );
        let s = Scratch::new();
        put_secret(&s, "/etc/olboot/store.auth", line);
        let cfg = s.config(
            &[store.url("opt.tar.zst")],
            Some(&sha256(&plain)),
            "    auth_file: /etc/olboot/store.auth\n",
            "symlink",
        );
        let out = apply_debug(&s, &cfg, &[]);
        assert!(out.status.success(), "{line}");
        assert_same_tree(&src.src, &s.opt(), true);
        assert_eq!(store.requests().len(), 1);
        assert_no_secret(&s, &out, &[value]);
    }
    // Without the credential the store says 401: a one-line failure, nothing unpacked.
    let store = Store::start(
        "127.0.0.1",
        Mode::Serve {
            data: Arc::new(plain.clone()),
            need: Some(("authorization".into(), TOKEN.into())),
            cut: None,
        },
    );
    let s = Scratch::new();
    let cfg = s.config(
        &[store.url("opt.tar.zst")],
        Some(&sha256(&plain)),
        "",
        "symlink",
    );
    let out = s.apply(&cfg);
    assert_eq!(out.status.code(), Some(1));
    assert!(opt_step(&s.root())["error"].to_string().contains("401"));
    assert_nothing_unpacked(&s);
}

#[test]
fn a_redirect_to_another_host_does_not_get_the_credential_unless_trusted() {
    let src = source(64 * 1024);
    let plain = fs::read(&src.plain).unwrap();
    for trusted in [false, true] {
        let far = Store::start(
            "127.0.0.2",
            Mode::Serve {
                data: Arc::new(plain.clone()),
                need: None,
                cut: None,
            },
        );
        let near = Store::start("127.0.0.1", Mode::Redirect(far.url("blob?sig=presigned9")));
        let s = Scratch::new();
        put_secret(&s, "/a", TOKEN);
        let extra = if trusted {
            "    auth_file: /a\n    trusted_hosts: [127.0.0.2]\n"
        } else {
            "    auth_file: /a\n"
        };
        let cfg = s.config(
            &[near.url("opt.tar.zst")],
            Some(&sha256(&plain)),
            extra,
            "symlink",
        );
        let out = apply_debug(&s, &cfg, &[]);
        assert!(out.status.success(), "trusted: {trusted}");
        assert_same_tree(&src.src, &s.opt(), true);
        assert_eq!(near.requests()[0].header("authorization"), Some(TOKEN));
        let got = far.requests();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].path, "/blob?sig=presigned9");
        let sent = got[0].header("authorization");
        assert_eq!(sent, if trusted { Some(TOKEN) } else { None });
        assert_no_secret(&s, &out, &[TOKEN, "presigned9"]);
    }
}

#[test]
fn secret_files_readable_by_others_make_the_config_invalid() {
    let src = source(1024);
    let s = Scratch::new();
    put_secret(&s, "/k", "AGE-SECRET-KEY-1QQ\n");
    fs::set_permissions(s.root().join("k"), fs::Permissions::from_mode(0o640)).unwrap();
    let cfg = s.config(
        &[format!("file://{}", src.plain.display())],
        None,
        "    identity_file: /k\n",
        "symlink",
    );
    for verb in ["plan", "apply"] {
        let out = s.run(verb, &cfg, &[]);
        assert_eq!(out.status.code(), Some(2), "{verb}");
        let err = support::stderr(&out);
        assert!(
            err.contains("opt.archive.identity_file:") && err.contains("0640"),
            "{err}"
        );
        assert!(!s.root().join("var/lib/olboot/report.json").exists());
        assert_nothing_unpacked(&s);
    }
    // A key that does not parse: invalid too, and the line is not echoed.
    fs::set_permissions(s.root().join("k"), fs::Permissions::from_mode(0o600)).unwrap();
    let out = s.run("apply", &cfg, &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = support::stderr(&out);
    assert!(err.contains("line 1: not an age identity"), "{err}");
    assert!(!err.contains("AGE-SECRET-KEY-1QQ"), "{err}");
    let cfg = s.config(
        &[format!("file://{}", src.plain.display())],
        None,
        "    auth_file: /missing\n",
        "symlink",
    );
    let out = s.run("apply", &cfg, &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(support::stderr(&out).contains("opt.archive.auth_file: cannot read"));
}

/// Run `apply` against `store` with shrunk limits; it must fail cleanly within `bound`.
fn fails_within(mode: Mode, env: &[(&str, &str)], bound: Duration, expect: &str) {
    let store = Store::start("127.0.0.1", mode);
    let s = Scratch::new();
    let cfg = s.config(
        &[store.url("opt.tar.zst")],
        Some(&"0".repeat(64)),
        "",
        "symlink",
    );
    let started = Instant::now();
    let out = s.run("apply", &cfg, env);
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(1));
    assert!(took < bound, "took {took:?}");
    let error = opt_step(&s.root())["error"].as_str().unwrap().to_string();
    assert!(error.contains(expect), "{error}");
    assert_nothing_unpacked(&s);
}

#[test]
fn an_endless_body_without_length_ends_at_the_deadline() {
    fails_within(
        Mode::Endless,
        &[("OLBOOT_MIRROR_DEADLINE_MS", "3000")],
        Duration::from_secs(15),
        "deadline",
    );
}

#[test]
fn a_body_at_one_byte_per_second_fails_the_rate_check() {
    fails_within(
        Mode::TrickleBody,
        &[
            ("OLBOOT_SPEED_TIME_MS", "3000"),
            ("OLBOOT_SPEED_LIMIT", "1024"),
        ],
        Duration::from_secs(15),
        "too slow",
    );
}

#[test]
fn headers_at_one_byte_per_second_fail_within_the_deadline() {
    fails_within(
        Mode::TrickleHeaders,
        &[
            ("OLBOOT_STALL_TIMEOUT_MS", "2000"),
            ("OLBOOT_MIRROR_DEADLINE_MS", "5000"),
        ],
        Duration::from_secs(15),
        "deadline",
    );
}

#[test]
fn archive_size_bounds_what_is_read() {
    let src = source(64 * 1024);
    let plain = fs::read(&src.plain).unwrap();
    let store = Store::start(
        "127.0.0.1",
        Mode::Serve {
            data: Arc::new(plain.clone()),
            need: None,
            cut: None,
        },
    );
    let s = Scratch::new();
    let extra = format!("    size: {}\n", plain.len() - 1);
    let cfg = s.config(
        &[store.url("opt.tar.zst")],
        Some(&sha256(&plain)),
        &extra,
        "symlink",
    );
    let out = s.apply(&cfg);
    assert_eq!(out.status.code(), Some(1));
    let error = opt_step(&s.root())["error"].to_string();
    assert!(error.contains("opt.archive.size says"), "{error}");
    assert_nothing_unpacked(&s);
    // The endless body stops at `size`, with an error rather than a truncated archive.
    let store = Store::start("127.0.0.1", Mode::Endless);
    let s = Scratch::new();
    let cfg = s.config(
        &[store.url("opt")],
        Some(&"0".repeat(64)),
        "    size: 100000\n",
        "symlink",
    );
    let out = s.apply(&cfg);
    assert_eq!(out.status.code(), Some(1));
    let error = opt_step(&s.root())["error"].to_string();
    assert!(error.contains("goes on past the 100000 bytes"), "{error}");
    assert_nothing_unpacked(&s);
}

#[test]
fn a_config_url_gets_the_auth_file_and_is_shown_without_its_query() {
    let config = b"version: 1\nlinks: []\n".to_vec();
    let store = Store::start(
        "127.0.0.1",
        Mode::Serve {
            data: Arc::new(config),
            need: Some(("authorization".into(), TOKEN.into())),
            cut: None,
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let auth = dir.path().join("auth");
    fs::write(&auth, TOKEN).unwrap();
    fs::set_permissions(&auth, fs::Permissions::from_mode(0o600)).unwrap();
    let url = store.url(&format!("olboot.yaml?{QUERY}"));
    let out = olboot()
        .args(["validate", "-c", &url, "--auth-file"])
        .arg(&auth)
        .env("RUST_LOG", "debug")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(text.contains("/olboot.yaml?…: valid"), "{text}");
    assert!(
        !text.contains("q7Zr88") && !text.contains("tok-5f2a"),
        "{text}"
    );
    assert_eq!(store.requests()[0].header("authorization"), Some(TOKEN));
    // Without it: 401, exit 2, the URL still without its query.
    let out = olboot().args(["validate", "-c", &url]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("401") && !err.contains("q7Zr88"), "{err}");
}

#[test]
fn an_age_header_that_never_ends_fails_at_once_in_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let (key, _) = keygen(dir.path(), "key");
    let store = Store::start("127.0.0.1", Mode::EndlessAgeHeader);
    let s = Scratch::new();
    put_secret(&s, "/k", &fs::read_to_string(&key).unwrap());
    let url = store.url("opt.tar.zst.age");
    let cfg = s.config(
        std::slice::from_ref(&url),
        Some(&"0".repeat(64)),
        "    identity_file: /k\n",
        "symlink",
    );
    let started = Instant::now();
    let env = [("OLBOOT_MIRROR_DEADLINE_MS", "3000")];
    let (out, peak_kib) = support::output_and_peak_rss(s.command(olboot(), "apply", &cfg, &env));
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(1));
    let error = opt_step(&s.root())["error"].as_str().unwrap().to_string();
    assert!(error.contains("age header"), "{error}");
    assert!(error.contains(&url), "{error}");
    assert!(!error.contains('\n'), "not one line: {error}");
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert!(peak_kib < 64 * 1024, "peak RSS {peak_kib} KiB");
    assert_nothing_unpacked(&s);
}

#[test]
fn a_config_url_whose_body_trickles_ends_at_its_deadline() {
    let store = Store::start("127.0.0.1", Mode::TrickleBody);
    let url = store.url(&format!("olboot.yaml?{QUERY}"));
    let started = Instant::now();
    let mut child = olboot()
        .args(["validate", "-c", &url])
        .env("OLBOOT_CONFIG_DEADLINE_MS", "1500")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if started.elapsed() > Duration::from_secs(8) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("still reading the config after {:?}", started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5), "{err}");
    let line = err
        .lines()
        .find(|l| l.contains("deadline"))
        .unwrap_or_else(|| panic!("no deadline named: {err}"));
    assert!(line.contains("/olboot.yaml?…"), "{line}");
    assert!(!err.contains("q7Zr88"), "{err}");
}
