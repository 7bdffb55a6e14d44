//! A real `dockerd` (Debian's docker.io) for the firewall tests, inside a test's network
//! namespace and a private mount namespace of its own ([`Sandbox`]), with its own data root,
//! exec root, pid file and socket below a scratch directory: nothing of the machine's own
//! Docker, network or files is touched. Images come from `docker import` of a tarball holding
//! busybox-static (no registry is reachable). When dockerd does not start, the test fails
//! with its log.

use super::ns::{must, Netns, Sandbox};
use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Debian's docker.io client (a newer one elsewhere on PATH may not speak to it as well).
const DOCKER: &str = "/usr/bin/docker";
/// The image the containers run.
pub const IMAGE: &str = "olboot-test/busybox";
/// How long dockerd gets to answer on its socket.
const START_WAIT: Duration = Duration::from_secs(60);

/// One dockerd, stopped (with what it started) when dropped.
pub struct Dockerd {
    ns_name: String,
    sandbox: Sandbox,
    dir: PathBuf,
    child: Option<Child>,
    /// Extra daemon arguments (`--ipv6 ...`).
    args: Vec<String>,
}

impl Dockerd {
    /// Start dockerd in `ns` with the iptables backend, IPv6 on the default bridge
    /// (`fixed_cidr_v6`), and wait until it answers; then import the busybox image.
    pub fn start(ns: &Netns, fixed_cidr_v6: &str) -> Dockerd {
        let sandbox = Sandbox::new();
        let dir = sandbox.dir().join("docker");
        std::fs::create_dir_all(&dir).expect("docker dir");
        let args = [
            "--iptables=true",
            "--ip6tables",
            "--ipv6",
            "--experimental",
            "--fixed-cidr-v6",
            fixed_cidr_v6,
            "--shutdown-timeout",
            "2",
        ];
        let mut d = Dockerd {
            ns_name: ns.name.clone(),
            sandbox,
            dir,
            child: None,
            args: args.iter().map(|a| a.to_string()).collect(),
        };
        d.spawn(ns);
        d.import_busybox();
        d
    }

    fn sock(&self) -> String {
        format!("unix://{}", self.dir.join("docker.sock").display())
    }

    fn spawn(&mut self, ns: &Netns) {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.dir.join("dockerd.log"))
            .expect("dockerd log");
        let child = self
            .sandbox
            .command(ns, "dockerd")
            .arg("--data-root")
            .arg(self.dir.join("data"))
            .arg("--exec-root")
            .arg(self.dir.join("exec"))
            .arg("--pidfile")
            .arg(self.dir.join("dockerd.pid"))
            .arg("-H")
            .arg(self.sock())
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("dockerd must be installed (apt-get install docker.io)");
        self.child = Some(child);
        let deadline = Instant::now() + START_WAIT;
        loop {
            let ok = Command::new(DOCKER)
                .args(["-H", &self.sock(), "info", "--format", "{{.ServerVersion}}"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return;
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "dockerd did not start ({exited:?}):\n{}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// `docker ARGS` against this daemon; its stdout, trimmed.
    pub fn docker(&self, args: &[&str]) -> String {
        must(Command::new(DOCKER).arg("-H").arg(self.sock()).args(args))
            .trim()
            .to_string()
    }

    /// `docker ARGS`: whether it succeeded, and its output.
    pub fn try_docker(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new(DOCKER)
            .arg("-H")
            .arg(self.sock())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("docker");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    }

    /// The image: /bin/busybox (static) and a page at /www/index.html.
    fn import_busybox(&self) {
        let root = self.dir.join("image");
        std::fs::create_dir_all(root.join("bin")).expect("image bin");
        std::fs::create_dir_all(root.join("www")).expect("image www");
        std::fs::copy("/bin/busybox", root.join("bin/busybox"))
            .expect("busybox-static must be installed (apt-get install busybox-static)");
        std::fs::write(root.join("www/index.html"), "hello from a container\n").expect("page");
        let tar = self.dir.join("image.tar");
        must(
            Command::new("tar")
                .arg("-C")
                .arg(&root)
                .arg("-cf")
                .arg(&tar)
                .arg("."),
        );
        self.docker(&["import", &tar.display().to_string(), IMAGE]);
    }

    /// Stop dockerd (it stops its containers) and wait for it.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = rustix::process::Pid::from_child(&child);
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        while child.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stop and start dockerd again, as `systemctl restart docker` does.
    pub fn restart(&mut self, ns: &Netns) {
        self.stop();
        self.spawn(ns);
    }

    /// A container's IPv4 and IPv6 address on its first network.
    pub fn addresses(&self, name: &str) -> (String, String) {
        let out = self.docker(&[
            "inspect",
            "-f",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{.GlobalIPv6Address}}\n{{end}}",
            name,
        ]);
        let mut words = out.split_whitespace();
        let v4 = words.next().expect("IPv4 address").to_string();
        let v6 = words.next().expect("IPv6 address").to_string();
        (v4, v6)
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        self.stop();
        // Anything dockerd left in the namespace (shims, containers): ours, by namespace.
        let pids = Command::new("ip")
            .args(["netns", "pids", &self.ns_name])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        for pid in pids
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
    }
}

/// A minimal HTTP server on `addr` in `ns` answering every request with `body`, until the
/// test process ends.
pub fn http_server(ns: &Netns, addr: &str, body: &'static str) {
    ns.serve(addr, move |mut conn| {
        let mut buf = [0u8; 1024];
        let _ = conn.read(&mut buf);
        let _ = write!(
            conn,
            "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
    });
}

/// The body `GET /` on `addr` from `ns` answers with, or why there is none.
pub fn http_get(ns: &Netns, addr: &str) -> Result<String, String> {
    let addr: SocketAddr = addr.parse().expect("address");
    ns.run(|| {
        let mut s = TcpStream::connect_timeout(&addr, super::ns::BLOCKED_WAIT)
            .map_err(|e| format!("connect {addr}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        s.write_all(b"GET / HTTP/1.0\r\n\r\n")
            .map_err(|e| format!("send to {addr}: {e}"))?;
        let mut got = String::new();
        s.read_to_string(&mut got)
            .map_err(|e| format!("read from {addr}: {e}"))?;
        match got.split_once("\r\n\r\n") {
            Some((head, body)) if head.starts_with("HTTP/1.") => Ok(body.to_string()),
            _ => Err(format!("no HTTP answer from {addr}: {got:?}")),
        }
    })
}
