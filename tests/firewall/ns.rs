//! Network namespaces for the firewall tests: creation and removal (a Drop guard), veth links,
//! TCP echo listeners and clients inside a namespace, and running a program inside one with a
//! private mount namespace whose `/etc`, `/var/lib` and `/run` are overlays on scratch
//! directories, so that nothing of the machine's own firewall, files or services changes.

use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// How long a connection that the firewall should drop is given.
pub const BLOCKED_WAIT: Duration = Duration::from_millis(800);

/// Run `cmd`, panicking with its output unless it succeeds; return stdout.
pub fn must(cmd: &mut Command) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `ip ARGS`.
pub fn ip(args: &[&str]) {
    must(Command::new("ip").args(args));
}

/// A network namespace made for one test, deleted when dropped.
pub struct Netns {
    /// Its name under /run/netns.
    pub name: String,
}

impl Netns {
    /// A new namespace with its loopback up.
    pub fn new() -> Netns {
        let name = format!(
            "olfw-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        ip(&["netns", "add", &name]);
        let ns = Netns { name };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }

    fn file(&self) -> File {
        File::open(Path::new("/run/netns").join(&self.name)).expect("open netns")
    }

    /// `ip -n NS ARGS`.
    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all);
    }

    /// Run `f` on a thread that lives in this namespace; sockets it creates stay there.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let ns = self.file();
        std::thread::scope(|s| {
            s.spawn(move || {
                rustix::thread::move_into_link_name_space(
                    ns.as_fd(),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )
                .expect("setns");
                f()
            })
            .join()
            .expect("thread in netns")
        })
    }

    /// Set a sysctl below /proc/sys/net for this namespace.
    pub fn sysctl(&self, key: &str, value: &str) {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        self.run(|| std::fs::write(&path, value)).expect("sysctl");
    }

    /// A command that runs `program` in this namespace (network only).
    pub fn command(&self, program: &str) -> Command {
        let ns = self.file();
        let mut c = Command::new(program);
        // SAFETY: only the setns syscall runs between fork and exec.
        unsafe {
            c.pre_exec(move || {
                rustix::thread::move_into_link_name_space(
                    ns.as_fd(),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )
                .map_err(std::io::Error::from)
            });
        }
        c
    }

    /// `nft ARGS` in this namespace; its stdout.
    pub fn nft(&self, args: &[&str]) -> String {
        must(self.command("nft").args(args))
    }

    /// Load `ruleset` with `nft -f -` in this namespace.
    pub fn nft_load(&self, ruleset: &str) {
        let mut child = self
            .command("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .expect("nft");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(ruleset.as_bytes())
            .expect("write ruleset");
        assert!(child.wait().expect("nft").success(), "nft -f - failed");
    }

    /// A TCP server on `addr` in this namespace, each connection handled by `handle` on a
    /// thread of its own, serving until the test process ends.
    pub fn serve(&self, addr: &str, handle: impl Fn(TcpStream) + Copy + Send + 'static) {
        let addr: SocketAddr = addr.parse().expect("address");
        let listener = self
            .run(|| TcpListener::bind(addr))
            .unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                std::thread::spawn(move || handle(conn));
            }
        });
    }

    /// A TCP echo server on `addr` in this namespace, serving until the test process ends.
    pub fn echo(&self, addr: &str) {
        self.serve(addr, |mut conn| {
            let mut buf = [0u8; 256];
            while let Ok(n) = conn.read(&mut buf) {
                if n == 0 || conn.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        });
    }

    /// A connection from this namespace to `addr` that has echoed a message, or why not.
    pub fn connect(&self, addr: &str) -> Result<TcpStream, String> {
        let addr: SocketAddr = addr.parse().expect("address");
        let mut s = self
            .run(|| TcpStream::connect_timeout(&addr, BLOCKED_WAIT))
            .map_err(|e| format!("connect {addr}: {e}"))?;
        echoes(&mut s).map_err(|e| format!("echo from {addr}: {e}"))?;
        Ok(s)
    }

    /// Wait until `addr` answers from this namespace: the first SYN over a fresh veth link
    /// can be lost while IPv6 neighbour discovery settles, and its retransmission takes 1 s.
    pub fn wait_reaches(&self, addr: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while let Err(e) = self.connect(addr) {
            assert!(std::time::Instant::now() < deadline, "{e}");
        }
    }

    /// Whether a connection from this namespace to `addr` gets through and echoes.
    pub fn reaches(&self, addr: &str) -> bool {
        self.connect(addr).is_ok()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Whether `s` still carries data both ways.
pub fn echoes(s: &mut TcpStream) -> std::io::Result<()> {
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    s.write_all(b"ping")?;
    let mut got = [0u8; 4];
    s.read_exact(&mut got)?;
    if &got != b"ping" {
        return Err(std::io::Error::other("wrong echo"));
    }
    Ok(())
}

/// A veth pair between `a` (address `a_addrs`) and `b` (`b_addrs`), created inside the
/// namespaces (the machine's own namespace never sees it).
pub fn link(a: &Netns, a_if: &str, a_addrs: &[&str], b: &Netns, b_if: &str, b_addrs: &[&str]) {
    a.ip(&[
        "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", &b.name,
    ]);
    for (ns, dev, addrs) in [(a, a_if, a_addrs), (b, b_if, b_addrs)] {
        for addr in addrs {
            if addr.contains(':') {
                ns.ip(&["addr", "add", addr, "dev", dev, "nodad"]);
            } else {
                ns.ip(&["addr", "add", addr, "dev", dev]);
            }
        }
        ns.ip(&["link", "set", dev, "up"]);
    }
}

/// Scratch upper layers for `/etc`, `/var/lib` and `/run` of the programs run by
/// [`Sandbox::command`]: what they write lands here, the machine's own files stay as they are.
pub struct Sandbox {
    dir: tempfile::TempDir,
}

/// The directories overlaid, and their scratch names.
const OVERLAID: [(&str, &str); 3] = [("/etc", "etc"), ("/var/lib", "varlib"), ("/run", "run")];

impl Sandbox {
    /// Empty upper layers, on tmpfs (`/dev/shm`): overlayfs cannot use an upper layer on
    /// overlayfs, which is what `/tmp` is in many containers.
    pub fn new() -> Sandbox {
        let dir = tempfile::Builder::new()
            .prefix("olboot-fw-")
            .tempdir_in("/dev/shm")
            .expect("tempdir in /dev/shm");
        for (_, name) in OVERLAID {
            std::fs::create_dir_all(dir.path().join(name).join("upper")).expect("mkdir");
            std::fs::create_dir_all(dir.path().join(name).join("work")).expect("mkdir");
        }
        Sandbox { dir }
    }

    /// The scratch directory (for configs and other test files).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Where the program's write to `/etc/REL` landed.
    pub fn etc(&self, rel: &str) -> PathBuf {
        self.dir.path().join("etc/upper").join(rel)
    }

    /// Where the program's write to `/var/lib/REL` landed.
    pub fn var_lib(&self, rel: &str) -> PathBuf {
        self.dir.path().join("varlib/upper").join(rel)
    }

    /// `program` run in `ns` and in a private mount namespace with the overlays.
    pub fn command(&self, ns: &Netns, program: &str) -> Command {
        let net = ns.file();
        let mounts: Vec<(CString, CString)> = OVERLAID
            .iter()
            .map(|(target, name)| {
                let base = self.dir.path().join(name);
                let data = format!(
                    "lowerdir={target},upperdir={},workdir={}",
                    base.join("upper").display(),
                    base.join("work").display()
                );
                (
                    CString::new(*target).expect("path"),
                    CString::new(data.as_bytes()).expect("data"),
                )
            })
            .collect();
        let overlay = CString::new("overlay").expect("name");
        let root = CString::new(Path::new("/").as_os_str().as_bytes()).expect("root");
        let mut c = Command::new(program);
        // SAFETY: between fork and exec only syscalls run, on data prepared before the fork.
        unsafe {
            c.pre_exec(move || {
                use rustix::mount::{mount, mount_change, MountFlags, MountPropagationFlags};
                rustix::thread::move_into_link_name_space(
                    net.as_fd(),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )?;
                rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNS)?;
                mount_change(
                    root.as_c_str(),
                    MountPropagationFlags::PRIVATE | MountPropagationFlags::REC,
                )?;
                for (target, data) in &mounts {
                    mount(
                        overlay.as_c_str(),
                        target.as_c_str(),
                        overlay.as_c_str(),
                        MountFlags::empty(),
                        data.as_c_str(),
                    )?;
                }
                Ok(())
            });
        }
        c
    }

    /// Run `olboot ARGS` live (no `--root`) in `ns` with the overlays.
    pub fn olboot(&self, ns: &Netns, args: &[&str]) -> Output {
        self.command(ns, env!("CARGO_BIN_EXE_olboot"))
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .output()
            .expect("run olboot")
    }
}
