//! The firewall step against real nftables, in network namespaces made for each test, with
//! real TCP connections across veth links. olboot runs live (no `--root`) inside the server
//! namespace and a private mount namespace whose `/etc`, `/var/lib` and `/run` are overlays:
//! the machine's own firewall, files and services never change.
//!
//! Addresses: client 10.200.1.2 / fd00:200::2, server 10.200.1.1 / fd00:200::1; a "container"
//! namespace behind the server at 10.200.2.2 for published (DNAT'd) ports.

mod common;
#[path = "firewall/docker.rs"]
mod docker;
#[path = "firewall/ns.rs"]
mod ns;

use ns::{link, Netns, Sandbox};
use serde_json::Value;
use std::path::Path;

const SRV4: &str = "10.200.1.1";
const SRV6: &str = "[fd00:200::1]";

/// Sets: `cli` holds the client, `other` does not. Ports: 22 and 8082 from cli, 8081 from
/// other, 8083 unlisted.
const CONFIG_A: &str = "version: 1
firewall:
  sets:
    cli: [10.200.1.2, \"fd00:200::2\"]
    other: [10.200.9.0/24, \"fd00:200:9::/64\"]
  allow:
    - { port: 22, from: cli }
    - { port: 8081, from: other }
    - { port: 8082, from: cli }
    - { port: [9090], from: cli }
";

/// Like A, but 8082 is gone, 8084 is open to anywhere, and the published 9090 is only for
/// `other`.
const CONFIG_B: &str = "version: 1
firewall:
  sets:
    cli: [10.200.1.2, \"fd00:200::2\"]
    other: [10.200.9.0/24, \"fd00:200:9::/64\"]
  allow:
    - { port: 22, from: cli }
    - { port: 8081, from: other }
    - { port: 8084 }
    - { port: 9090, from: other }
";

/// Somebody else's table (as Docker's would be), with an input chain that accepts everything:
/// olboot must leave it alone, and its accept must not reopen what olboot drops.
const DOCKER_LIKE: &str = "table ip docker_like {
	chain input {
		type filter hook input priority filter + 10; policy accept;
		tcp dport 8083 accept
	}
}
";

/// A client and a server namespace joined by a veth pair, echo servers on the server, and a
/// scratch sandbox for olboot's files.
struct Lab {
    cli: Netns,
    srv: Netns,
    sandbox: Sandbox,
}

impl Lab {
    fn new() -> Lab {
        let cli = Netns::new();
        let srv = Netns::new();
        link(
            &cli,
            "vc",
            &["10.200.1.2/24", "fd00:200::2/64"],
            &srv,
            "vs",
            &["10.200.1.1/24", "fd00:200::1/64"],
        );
        for port in [22, 8081, 8082, 8083, 8084] {
            // One dual-stack socket per port: IPv4 and IPv6 clients alike.
            srv.echo(&format!("[::]:{port}"));
        }
        cli.wait_reaches(&format!("{SRV4}:22"));
        cli.wait_reaches(&format!("{SRV6}:22"));
        Lab {
            cli,
            srv,
            sandbox: Sandbox::new(),
        }
    }

    fn config(&self, name: &str, text: &str) -> String {
        let p = self.sandbox.dir().join(name);
        std::fs::write(&p, text).expect("write config");
        p.display().to_string()
    }

    /// `olboot ARGS -c CONFIG --host lab --only firewall`, live in the server namespace.
    fn olboot(&self, verb: &str, config: &str) -> std::process::Output {
        let cfg = self.config("olboot.yaml", config);
        let mut args = vec![verb, "-c", &cfg, "--host", "lab", "--only", "firewall"];
        if verb == "apply" {
            args.push("--json");
        }
        self.sandbox.olboot(&self.srv, &args)
    }

    /// Apply `config` and return the firewall step's report, which must not have failed.
    fn apply(&self, config: &str) -> Value {
        let out = self.olboot("apply", config);
        let r = common::report(&out);
        let step = common::step(&r, "firewall").clone();
        assert_eq!(
            common::code(&out),
            0,
            "apply failed: {step}\n{}",
            common::stderr(&out)
        );
        step
    }

    fn reaches(&self, port: u16) -> (bool, bool) {
        (
            self.cli.reaches(&format!("{SRV4}:{port}")),
            self.cli.reaches(&format!("{SRV6}:{port}")),
        )
    }
}

/// Whether `text` has a diff line `sign` (`+` or `-`) for `rule`, whatever its indentation.
fn has_diff_line(text: &str, sign: char, rule: &str) -> bool {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix(sign))
        .any(|l| l.trim() == rule)
}

fn changes(step: &Value) -> Vec<String> {
    step["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .map(|c| c.as_str().expect("string").to_string())
        .collect()
}

#[test]
fn allow_rules_filter_by_set_port_and_family() {
    let lab = Lab::new();
    lab.srv.nft_load(DOCKER_LIKE);
    let docker_before = lab.srv.nft(&["list", "table", "ip", "docker_like"]);
    for port in [22, 8081, 8082, 8083] {
        assert_eq!(lab.reaches(port), (true, true), "port {port} before olboot");
    }

    let step = lab.apply(CONFIG_A);
    assert_eq!(step["result"], "changed", "{step}");
    let done = changes(&step);
    assert!(
        done.iter().any(|l| {
            l
            == "loaded table inet olboot into the running kernel (table inet olboot is not loaded)"
        }),
        "{done:?}"
    );
    assert!(done
        .iter()
        .any(|l| l.starts_with("wrote /etc/nftables.d/olboot.nft: ")));

    // Forget the neighbours learnt before the firewall: IPv6 must now find them through it
    // (neighbour discovery), IPv4 through ARP.
    for ns in [&lab.cli, &lab.srv] {
        ns.ip(&["neigh", "flush", "all"]);
    }
    lab.cli.wait_reaches(&format!("{SRV6}:22"));
    assert_eq!(lab.reaches(22), (true, true), "22 is allowed from cli");
    assert_eq!(lab.reaches(8082), (true, true), "8082 is allowed from cli");
    assert_eq!(lab.reaches(8081), (false, false), "8081 is only for other");
    assert_eq!(
        lab.reaches(8083),
        (false, false),
        "8083 is unlisted; docker_like's accept does not reopen it"
    );

    assert_eq!(
        lab.srv.nft(&["list", "table", "ip", "docker_like"]),
        docker_before,
        "somebody else's table is untouched"
    );

    let again = lab.apply(CONFIG_A);
    assert_eq!(again["result"], "unchanged", "{again}");
    assert!(
        !again["warnings"].to_string().contains("does not load"),
        "the boot file loads: {again}"
    );
    let plan = lab.olboot("plan", CONFIG_A);
    assert_eq!(common::code(&plan), 0, "{}", common::stderr(&plan));
}

#[test]
fn established_connections_survive_and_plan_shows_the_diff() {
    let lab = Lab::new();
    lab.apply(CONFIG_A);
    let mut v4 = lab.cli.connect(&format!("{SRV4}:8082")).expect("v4 8082");
    let mut v6 = lab.cli.connect(&format!("{SRV6}:8082")).expect("v6 8082");

    let plan = lab.olboot("plan", CONFIG_B);
    assert_eq!(common::code(&plan), 3, "{}", common::stderr(&plan));
    let step = common::step(&common::report(&plan), "firewall").clone();
    assert_eq!(step["result"], "pending");
    let text = changes(&step).join("\n");
    assert!(
        text.contains("replace table inet olboot in the running kernel (the rules changed)"),
        "{text}"
    );
    assert!(
        has_diff_line(
            &text,
            '-',
            "ip saddr @cli_v4 tcp dport 8082 accept comment \"allow[2]: tcp 8082 from cli\""
        ),
        "{text}"
    );
    assert!(
        has_diff_line(
            &text,
            '+',
            "tcp dport 8084 accept comment \"allow[2]: tcp 8084 from anywhere\""
        ),
        "{text}"
    );
    assert_eq!(lab.reaches(8084), (false, false), "plan changed nothing");

    let step = lab.apply(CONFIG_B);
    assert!(
        changes(&step)
            .iter()
            .any(|l| l == "replaced table inet olboot in the running kernel (the rules changed)"),
        "{step}"
    );
    ns::echoes(&mut v4).expect("the established IPv4 connection survives");
    ns::echoes(&mut v6).expect("the established IPv6 connection survives");
    assert_eq!(
        lab.reaches(8082),
        (false, false),
        "new connections to 8082 are dropped"
    );
    assert_eq!(lab.reaches(8084), (true, true), "8084 is open to anywhere");
    assert_eq!(lab.apply(CONFIG_B)["result"], "unchanged");

    // An edit of the running table outside olboot shows in plan and is undone by apply.
    lab.srv
        .nft(&["flush", "chain", "inet", "olboot", "published"]);
    let plan = lab.olboot("plan", CONFIG_B);
    assert_eq!(common::code(&plan), 3);
    let text = changes(common::step(&common::report(&plan), "firewall")).join("\n");
    assert!(
        text.contains("the running table was changed outside olboot")
            && has_diff_line(
                &text,
                '+',
                "meta l4proto tcp ct original proto-dst 8084 accept comment \"allow[2]: tcp 8084 from anywhere\""
            ),
        "{text}"
    );
    assert_eq!(lab.apply(CONFIG_B)["result"], "changed");
    assert_eq!(lab.apply(CONFIG_B)["result"], "unchanged");
}

#[test]
fn published_ports_obey_the_allow_rules() {
    let lab = Lab::new();
    let ctr = Netns::new();
    link(
        &lab.srv,
        "vt",
        &["10.200.2.1/24"],
        &ctr,
        "vu",
        &["10.200.2.2/24"],
    );
    ctr.ip(&["route", "add", "default", "via", "10.200.2.1"]);
    lab.srv.sysctl("net.ipv4.ip_forward", "1");
    ctr.echo("0.0.0.0:80");
    ctr.echo("0.0.0.0:81");
    lab.cli.echo("0.0.0.0:7000");
    // Docker-like publishing: 9090 -> container:80, 9091 -> container:81, and masquerade of
    // what the container sends out.
    let docker = "table ip docker_like {
	chain pre {
		type nat hook prerouting priority dstnat; policy accept;
		tcp dport 9090 dnat to 10.200.2.2:80
		tcp dport 9091 dnat to 10.200.2.2:81
	}
	chain post {
		type nat hook postrouting priority srcnat; policy accept;
		ip saddr 10.200.2.0/24 oifname \"vs\" masquerade
	}
}
";
    lab.srv.nft_load(docker);
    let docker_before = lab.srv.nft(&["list", "table", "ip", "docker_like"]);
    let published = |port: u16| lab.cli.reaches(&format!("{SRV4}:{port}"));
    // DNAT works before olboot (waiting for the fresh links to settle).
    lab.cli.wait_reaches(&format!("{SRV4}:9090"));
    lab.cli.wait_reaches(&format!("{SRV4}:9091"));
    ctr.wait_reaches("10.200.1.2:7000");

    lab.apply(CONFIG_A);
    assert!(published(9090), "9090 is allowed from cli");
    assert!(
        !published(9091),
        "9091 is published by DNAT but not allowed"
    );
    assert!(
        ctr.reaches("10.200.1.2:7000"),
        "the container still reaches the outside"
    );

    lab.apply(CONFIG_B);
    assert!(!published(9090), "9090 is now only for other");
    assert!(ctr.reaches("10.200.1.2:7000"));
    assert_eq!(
        lab.srv.nft(&["list", "table", "ip", "docker_like"]),
        docker_before
    );
}

#[test]
fn the_persisted_file_loads_at_boot_and_twice() {
    let lab = Lab::new();
    lab.apply(CONFIG_A);
    let file = std::fs::read_to_string(lab.sandbox.etc("nftables.d/olboot.nft")).expect("file");
    assert!(file.starts_with('#'));
    assert!(file.contains("table inet olboot {}\ndelete table inet olboot\ntable inet olboot {\n"));
    let conf = std::fs::read_to_string(lab.sandbox.etc("nftables.conf")).expect("conf");
    assert_eq!(
        conf.matches("include \"/etc/nftables.d/*.nft\"").count(),
        1,
        "{conf}"
    );
    if let Ok(orig) = std::fs::read_to_string("/etc/nftables.conf") {
        let kept = orig.lines().filter(|l| l.trim() != "flush ruleset");
        let mut rest = conf.as_str();
        for line in kept {
            let at = rest
                .find(line)
                .unwrap_or_else(|| panic!("{line:?} kept in {conf}"));
            rest = &rest[at + line.len()..];
        }
    }
    assert!(
        !conf.lines().any(|l| l.trim() == "flush ruleset"),
        "a reload flushes nothing: {conf}"
    );
    let record =
        std::fs::read_to_string(lab.sandbox.var_lib("olboot/firewall.listing")).expect("record");
    let (_, listing) = record.split_once('\n').expect("header");

    // A fresh namespace stands in for a boot: nftables.service runs `nft -f
    // /etc/nftables.conf`; running it twice (a reload) must not duplicate anything.
    let boot = Netns::new();
    for _ in 0..2 {
        ns::must(
            lab.sandbox
                .command(&boot, "nft")
                .args(["-f", "/etc/nftables.conf"]),
        );
    }
    assert_eq!(
        boot.nft(&["-s", "list", "table", "inet", "olboot"]),
        listing,
        "the boot-time table is the one olboot loaded"
    );
    if Path::new("/lib/systemd/systemd").exists() {
        let link = lab
            .sandbox
            .etc("systemd/system/sysinit.target.wants/olboot-firewall.service");
        assert_eq!(
            std::fs::read_link(link).expect("olboot-firewall.service is enabled"),
            Path::new("/etc/systemd/system/olboot-firewall.service")
        );
        // What the unit runs at boot loads the table olboot loaded.
        let unit =
            std::fs::read_to_string(lab.sandbox.etc("systemd/system/olboot-firewall.service"))
                .expect("unit");
        let exec = unit
            .lines()
            .find_map(|l| l.strip_prefix("ExecStart="))
            .expect("ExecStart");
        let argv: Vec<&str> = exec.split_whitespace().collect();
        let unit_boot = Netns::new();
        ns::must(lab.sandbox.command(&unit_boot, argv[0]).args(&argv[1..]));
        assert_eq!(
            unit_boot.nft(&["-s", "list", "table", "inet", "olboot"]),
            listing
        );
    }
    // The include is added once, whatever the number of runs.
    lab.apply(CONFIG_B);
    let conf = std::fs::read_to_string(lab.sandbox.etc("nftables.conf")).expect("conf");
    assert_eq!(conf.matches("include \"/etc/nftables.d/*.nft\"").count(), 1);
}

#[test]
fn a_refused_ruleset_changes_nothing() {
    let lab = Lab::new();
    // Another program owns a table named inet olboot (nft's `owner` flag): while it holds its
    // netlink socket, the kernel refuses every change to that table, as it would refuse any
    // ruleset it cannot load.
    let mut owner = lab
        .srv
        .command("nft")
        .arg("-i")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("nft -i");
    let mut stdin = owner.stdin.take().expect("stdin");
    std::io::Write::write_all(
        &mut stdin,
        b"add table inet olboot { flags owner; }\nadd chain inet olboot input { type filter hook input priority 0; policy accept; }\n",
    )
    .expect("write");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !lab
        .srv
        .nft(&["list", "tables"])
        .contains("table inet olboot")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "owner table not created"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let before = lab.srv.nft(&["list", "ruleset"]);

    let out = lab.olboot("apply", CONFIG_A);
    assert_eq!(common::code(&out), 1, "{}", common::stderr(&out));
    let step = common::step(&common::report(&out), "firewall").clone();
    assert_eq!(step["result"], "failed");
    let err = step["error"].as_str().expect("error");
    assert!(
        err.contains("nft refused the rendered ruleset; nothing was changed")
            && err.contains("nft -c -f -"),
        "{err}"
    );
    assert!(changes(&step).is_empty(), "{step}");
    assert_eq!(
        lab.srv.nft(&["list", "ruleset"]),
        before,
        "kernel unchanged"
    );
    assert!(
        !lab.sandbox.etc("nftables.d/olboot.nft").exists(),
        "no file written"
    );
    assert!(!lab.sandbox.var_lib("olboot/firewall.listing").exists());

    drop(stdin);
    let _ = owner.kill();
    let _ = owner.wait();
    // With the owner gone its table goes too, and olboot's loads.
    assert_eq!(lab.apply(CONFIG_A)["result"], "changed");
    assert_eq!(lab.reaches(8082), (true, true));
}

/// Debian 12's nftables.service.
const UNIT: &str = "[Unit]
Description=nftables
Wants=network-pre.target
Before=network-pre.target shutdown.target
Conflicts=shutdown.target
DefaultDependencies=no

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/sbin/nft -f /etc/nftables.conf
ExecReload=/usr/sbin/nft -f /etc/nftables.conf
ExecStop=/usr/sbin/nft flush ruleset

[Install]
WantedBy=sysinit.target
";

/// Debian's default /etc/nftables.conf.
const DEBIAN_CONF: &str = "#!/usr/sbin/nft -f

flush ruleset

table inet filter {
	chain input {
		type filter hook input priority filter;
	}
}
";

#[test]
fn under_root_only_files_change() {
    let srv = Netns::new();
    srv.nft_load(DOCKER_LIKE);
    let before = srv.nft(&["list", "ruleset"]);
    let t = tempfile::tempdir().expect("tempdir");
    let root = t.path().join("root");
    common::write(&root.join("usr/sbin/nft"), "");
    common::write(&root.join("lib/systemd/systemd"), "");
    common::write(&root.join("lib/systemd/system/nftables.service"), UNIT);
    common::write(&root.join("etc/nftables.conf"), DEBIAN_CONF);
    common::write(&root.join("usr/sbin/dockerd"), "");
    let cfg = t.path().join("olboot.yaml");
    std::fs::write(&cfg, CONFIG_A).expect("config");
    let run = |verb: &str| {
        let mut c = srv.command(env!("CARGO_BIN_EXE_olboot"));
        c.args([verb, "-c"])
            .arg(&cfg)
            .arg("--root")
            .arg(&root)
            .args(["--host", "lab", "--only", "firewall"]);
        if verb == "apply" {
            c.arg("--json");
        }
        c.output().expect("olboot")
    };

    let out = run("plan");
    assert_eq!(common::code(&out), 3, "{}", common::stderr(&out));
    let plan = common::report(&out);
    let step = common::step(&plan, "firewall").clone();
    let planned = changes(&step);
    assert_eq!(planned.len(), 4, "{planned:?}");
    assert!(planned[0].starts_with("write /etc/nftables.d/olboot.nft: "));
    assert!(
        planned[0].contains("\n    + table inet olboot {}"),
        "{}",
        planned[0]
    );
    assert_eq!(
        planned[1],
        "comment out `flush ruleset` in /etc/nftables.conf (on every reload it would drop every \
         table, Docker's too) and replace only the file's own tables there (inet filter); add \
         include \"/etc/nftables.d/*.nft\" to /etc/nftables.conf"
    );
    assert_eq!(
        planned[2],
        "write /etc/systemd/system/olboot-firewall.service (it loads /etc/nftables.d/olboot.nft at boot, before the network)"
    );
    assert_eq!(
        planned[3],
        "enable olboot-firewall.service for boot (/etc/systemd/system/sysinit.target.wants/olboot-firewall.service -> /etc/systemd/system/olboot-firewall.service)"
    );
    let warnings = step["warnings"].to_string();
    assert!(
        warnings.contains("nftables.service stops with `nft flush ruleset`")
            && warnings.contains("Docker is installed: /usr/sbin/dockerd"),
        "Docker is installed and nftables.service flushes on stop: {step}"
    );

    let out = run("apply");
    assert_eq!(common::code(&out), 0, "{}", common::stderr(&out));
    common::assert_apply_did_what_plan_said(&plan, &common::report(&out), "firewall");
    assert_eq!(
        srv.nft(&["list", "ruleset"]),
        before,
        "the kernel is untouched"
    );
    let conf = std::fs::read_to_string(root.join("etc/nftables.conf")).expect("conf");
    assert!(conf.starts_with("#!/usr/sbin/nft -f\n\n# flush ruleset  # commented out by olboot"));
    assert!(
        conf.contains("\ntable inet filter {}\ndelete table inet filter\n\ntable inet filter {\n")
    );
    assert!(conf.ends_with("include \"/etc/nftables.d/*.nft\"\n"));
    assert_eq!(
        std::fs::read_link(
            root.join("etc/systemd/system/sysinit.target.wants/olboot-firewall.service")
        )
        .expect("link"),
        Path::new("/etc/systemd/system/olboot-firewall.service")
    );
    assert!(!root.join("var/lib/olboot/firewall.listing").exists());

    // The written file loads as it is.
    let check = Netns::new();
    let file = std::fs::read_to_string(root.join("etc/nftables.d/olboot.nft")).expect("file");
    check.nft_load(&file);
    check.nft_load(&file);

    let out = run("apply");
    assert_eq!(common::code(&out), 0);
    assert_eq!(
        common::step(&common::report(&out), "firewall")["result"],
        "unchanged"
    );
    assert_eq!(common::code(&run("plan")), 0);
    assert_eq!(srv.nft(&["list", "ruleset"]), before);
}

/// `olboot plan --only firewall` for the system at `root`, run on this machine (it only reads).
fn plan_under_root(root: &std::path::Path, cfg: &std::path::Path) -> std::process::Output {
    common::olboot()
        .args(["plan", "-c"])
        .arg(cfg)
        .arg("--root")
        .arg(root)
        .args(["--host", "lab", "--only", "firewall"])
        .output()
        .expect("olboot")
}

#[test]
fn a_target_without_nft_or_dpkg_fails_loudly() {
    // Without nft the firewall step plans the packages step's install of nftables; a target
    // whose packages cannot even be listed fails the step, naming the command.
    let t = tempfile::tempdir().expect("tempdir");
    let root = t.path().join("root");
    std::fs::create_dir_all(&root).expect("root");
    let cfg = t.path().join("olboot.yaml");
    std::fs::write(&cfg, CONFIG_A).expect("config");
    let out = plan_under_root(&root, &cfg);
    assert_eq!(common::code(&out), 1, "{}", common::stderr(&out));
    let step = common::step(&common::report(&out), "firewall").clone();
    assert_eq!(step["result"], "failed");
    let err = step["error"].as_str().expect("error");
    assert!(
        err.contains("cannot list the installed packages") && err.contains("dpkg-query"),
        "{err}"
    );
    assert_eq!(common::snapshot(&root).len(), 0, "plan wrote nothing");
}

#[test]
fn a_linked_nftables_conf_is_left_alone() {
    let t = tempfile::tempdir().expect("tempdir");
    let root = t.path().join("root");
    common::write(&root.join("usr/sbin/nft"), "");
    common::write(&root.join("opt/olsystem/etc/nftables.conf"), DEBIAN_CONF);
    std::fs::create_dir_all(root.join("etc")).expect("etc");
    std::os::unix::fs::symlink(
        "/opt/olsystem/etc/nftables.conf",
        root.join("etc/nftables.conf"),
    )
    .expect("symlink");
    let cfg = t.path().join("olboot.yaml");
    std::fs::write(&cfg, CONFIG_A).expect("config");
    let out = plan_under_root(&root, &cfg);
    assert_eq!(common::code(&out), 3, "{}", common::stderr(&out));
    let step = common::step(&common::report(&out), "firewall").clone();
    let planned = changes(&step);
    assert_eq!(planned.len(), 1, "only the rules file: {planned:?}");
    assert!(
        step["warnings"]
            .as_array()
            .expect("warnings")
            .iter()
            .any(|w| w
                .as_str()
                .is_some_and(|w| w.contains("is a symlink to /opt/olsystem/etc/nftables.conf"))),
        "{step}"
    );
}

#[test]
fn a_broken_nftables_conf_is_reported() {
    let lab = Lab::new();
    lab.apply(CONFIG_A);
    // Somebody's mistake elsewhere in the file that nftables.service loads at boot.
    let conf = lab.sandbox.etc("nftables.conf");
    let mut text = std::fs::read_to_string(&conf).expect("conf");
    text.push_str("table inet broken {\n\tchain c {\n\t\tnonsense here\n\t}\n}\n");
    std::fs::write(&conf, text).expect("write");
    let plan = lab.olboot("plan", CONFIG_A);
    assert_eq!(
        common::code(&plan),
        0,
        "nothing to change: {}",
        common::stderr(&plan)
    );
    let step = common::step(&common::report(&plan), "firewall").clone();
    assert!(
        step["warnings"]
            .as_array()
            .expect("warnings")
            .iter()
            .any(|w| w
                .as_str()
                .is_some_and(|w| w.contains("/etc/nftables.conf does not load"))),
        "{step}"
    );
}

/// The Docker lab's config: the published 8080 for `cli` only, the host's 7000 for the
/// containers; 8081, 8082 and 8083 are unlisted; Docker's bridges and a custom-named one.
const DOCKER_CONFIG: &str = "version: 1
firewall:
  sets:
    cli: [10.200.1.2, \"fd00:200::2\"]
  container_bridges: [docker0, \"br-*\", olcustom]
  allow:
    - { port: 22, from: cli }
    - { port: 8080, from: cli }
    - { port: 7000, from: containers }
";

/// A VM namespace running a real dockerd, with an allowed client (`cli`) and another one
/// (`oth`), both routing the container networks through the VM, as a neighbour may.
struct DockerLab {
    cli: Netns,
    oth: Netns,
    vm: Netns,
    dockerd: docker::Dockerd,
    olboot: Sandbox,
}

impl DockerLab {
    fn new() -> DockerLab {
        let (cli, oth, vm) = (Netns::new(), Netns::new(), Netns::new());
        link(
            &cli,
            "vc",
            &["10.200.1.2/24", "fd00:200::2/64"],
            &vm,
            "vmc",
            &["10.200.1.1/24", "fd00:200::1/64"],
        );
        link(
            &oth,
            "vo",
            &["10.200.3.2/24", "fd00:203::2/64"],
            &vm,
            "vmo",
            &["10.200.3.1/24", "fd00:203::1/64"],
        );
        for (ns, v4, v6) in [
            (&cli, "10.200.1.1", "fd00:200::1"),
            (&oth, "10.200.3.1", "fd00:203::1"),
        ] {
            ns.ip(&["route", "add", "172.16.0.0/12", "via", v4]);
            ns.ip(&["route", "add", "fd00:dd::/62", "via", v6]);
        }
        vm.sysctl("net.ipv4.ip_forward", "1");
        vm.sysctl("net.ipv6.conf.all.forwarding", "1");
        let dockerd = docker::Dockerd::start(&vm, "fd00:dd::/64");
        DockerLab {
            cli,
            oth,
            vm,
            dockerd,
            olboot: Sandbox::new(),
        }
    }

    /// `olboot VERB --only firewall` live in the VM, with the Docker lab's config.
    fn olboot(&self, verb: &str, config: &str) -> std::process::Output {
        let cfg = self.olboot.dir().join("olboot.yaml");
        std::fs::write(&cfg, config).expect("config");
        let cfg = cfg.display().to_string();
        let mut args = vec![verb, "-c", &cfg, "--host", "lab", "--only", "firewall"];
        if verb == "apply" {
            args.push("--json");
        }
        self.olboot.olboot(&self.vm, &args)
    }

    /// The firewall step's result of `olboot VERB`, which must exit with `code`.
    fn result(&self, verb: &str, config: &str, code: i32) -> Value {
        let out = self.olboot(verb, config);
        assert_eq!(common::code(&out), code, "{verb}: {}", common::stderr(&out));
        common::step(&common::report(&out), "firewall").clone()
    }

    /// Whether `GET /` from `ns` to `addr` gets the page of a container.
    fn page(ns: &Netns, addr: &str) -> bool {
        docker::http_get(ns, addr).is_ok_and(|b| b == "hello from a container\n")
    }

    /// `GET URL` from inside container `name` (busybox wget, bounded by busybox timeout: its
    /// wget's own `-T` crashes); whether it got `want`.
    fn fetch_in(&self, name: &str, url: &str, want: &str) -> bool {
        let (ok, out) = self.dockerd.try_docker(&[
            "exec",
            name,
            "/bin/busybox",
            "timeout",
            "5",
            "/bin/busybox",
            "wget",
            "-O",
            "-",
            url,
        ]);
        if !(ok && out.contains(want)) {
            eprintln!("{name}: wget {url}: {out}");
        }
        ok && out.contains(want)
    }
}

/// The containers: `web` on docker0 publishing 8080, `api` on the user-defined network
/// `olnet` (a `br-*` bridge) publishing 8081, `cust` on network `custom` whose bridge is
/// named `olcustom` publishing 8082, and `tool` on olnet for egress and
/// container-to-container checks. Returns the direct addresses of web's and api's servers.
fn run_containers(d: &docker::Dockerd) -> Vec<String> {
    d.docker(&[
        "network",
        "create",
        "--ipv6",
        "--subnet",
        "172.30.0.0/16",
        "--subnet",
        "fd00:dd:0:1::/64",
        "olnet",
    ]);
    let httpd = |name: &str, net: &str, publish: &str, port: &str| {
        d.docker(&[
            "run",
            "-d",
            "--restart",
            "always",
            "--name",
            name,
            "--network",
            net,
            "-p",
            publish,
            docker::IMAGE,
            "/bin/busybox",
            "httpd",
            "-f",
            "-p",
            port,
            "-h",
            "/www",
        ]);
    };
    httpd("web", "bridge", "8080:80", "80");
    httpd("api", "olnet", "8081:81", "81");
    d.docker(&[
        "network",
        "create",
        "--ipv6",
        "--subnet",
        "172.31.0.0/16",
        "--subnet",
        "fd00:dd:0:2::/64",
        "-o",
        "com.docker.network.bridge.name=olcustom",
        "custom",
    ]);
    httpd("cust", "custom", "8082:82", "82");
    d.docker(&[
        "run",
        "-d",
        "--restart",
        "always",
        "--name",
        "tool",
        "--network",
        "olnet",
        docker::IMAGE,
        "/bin/busybox",
        "sleep",
        "100000",
    ]);
    direct_addresses(d)
}

/// The direct addresses of web's and api's servers (v4, v6 each): they may change when
/// Docker restarts the containers.
fn direct_addresses(d: &docker::Dockerd) -> Vec<String> {
    let (web4, web6) = d.addresses("web");
    let (api4, api6) = d.addresses("api");
    let (cust4, cust6) = d.addresses("cust");
    vec![
        format!("{web4}:80"),
        format!("[{web6}]:80"),
        format!("{api4}:81"),
        format!("[{api6}]:81"),
        format!("{cust4}:82"),
        format!("[{cust6}]:82"),
    ]
}

/// The VM's addresses as `cli` and as `oth` see them.
const VM_FOR_CLI: (&str, &str) = ("10.200.1.1", "[fd00:200::1]");
const VM_FOR_OTH: (&str, &str) = ("10.200.3.1", "[fd00:203::1]");

/// Wait until `f` holds (fresh veths and bridges take a moment), failing with `what`.
fn wait_for(what: &str, f: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !f() {
        assert!(std::time::Instant::now() < deadline, "{what}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// Whether `ns` gets the page of the port published at `port` of the VM (v4, v6).
fn published(ns: &Netns, vm: (&str, &str), port: u16) -> (bool, bool) {
    (
        DockerLab::page(ns, &format!("{}:{port}", vm.0)),
        DockerLab::page(ns, &format!("{}:{port}", vm.1)),
    )
}

/// What must hold with olboot's table in place, whatever happened to Docker's rules since.
fn assert_contained(lab: &DockerLab, direct: &[String]) {
    assert_eq!(
        published(&lab.cli, VM_FOR_CLI, 8080),
        (true, true),
        "8080 is published for cli"
    );
    assert_eq!(
        published(&lab.oth, VM_FOR_OTH, 8080),
        (false, false),
        "8080 is not for oth"
    );
    assert_eq!(
        published(&lab.cli, VM_FOR_CLI, 8081),
        (false, false),
        "8081 is unlisted"
    );
    assert_eq!(
        published(&lab.oth, VM_FOR_OTH, 8081),
        (false, false),
        "8081 is unlisted"
    );
    assert_eq!(
        published(&lab.cli, VM_FOR_CLI, 8082),
        (false, false),
        "8082 is unlisted"
    );
    for addr in direct {
        assert!(
            !DockerLab::page(&lab.cli, addr),
            "the direct route to {addr} is closed"
        );
        assert!(
            !DockerLab::page(&lab.oth, addr),
            "the direct route to {addr} is closed"
        );
    }
    assert!(
        lab.fetch_in("tool", "http://10.200.1.2:7001/", "outside"),
        "egress from olnet (br-*)"
    );
    assert!(
        lab.fetch_in("web", "http://10.200.1.2:7001/", "outside"),
        "egress from docker0"
    );
    let api = &direct[2];
    assert!(
        lab.fetch_in("tool", &format!("http://{api}/"), "hello from a container"),
        "container to container"
    );
    assert!(
        lab.fetch_in("tool", "http://172.30.0.1:7000/", "host service"),
        "containers reach the host's 7000"
    );
    assert!(
        lab.fetch_in("web", "http://172.17.0.1:7000/", "host service"),
        "from docker0 too"
    );
    assert!(
        lab.fetch_in("cust", "http://172.31.0.1:7000/", "host service"),
        "from the custom-named bridge too"
    );
    assert!(
        lab.fetch_in("cust", "http://10.200.1.2:7001/", "outside"),
        "egress from the custom-named bridge"
    );
    assert!(
        docker::http_get(&lab.cli, "10.200.1.1:7000").is_err(),
        "7000 is only for containers"
    );
}

#[test]
fn docker_containers_are_reachable_only_as_allowed() {
    let mut lab = DockerLab::new();
    docker::http_server(&lab.vm, "[::]:7000", "host service");
    docker::http_server(&lab.cli, "0.0.0.0:7001", "outside");
    let direct = run_containers(&lab.dockerd);
    // Before olboot, Docker 20.10 lets anyone reach published ports and, routed, the
    // containers themselves: the checks that follow can fail.
    wait_for("8080 before olboot", || {
        published(&lab.oth, VM_FOR_OTH, 8080) == (true, true)
    });
    wait_for("8081 before olboot", || {
        published(&lab.oth, VM_FOR_OTH, 8081) == (true, true)
    });
    for addr in &direct {
        wait_for(&format!("{addr} before olboot"), || {
            DockerLab::page(&lab.oth, addr)
        });
    }

    let plan_out = lab.olboot("plan", DOCKER_CONFIG);
    assert_eq!(common::code(&plan_out), 3, "{}", common::stderr(&plan_out));
    let apply_out = lab.olboot("apply", DOCKER_CONFIG);
    assert_eq!(
        common::code(&apply_out),
        0,
        "{}",
        common::stderr(&apply_out)
    );
    common::assert_apply_did_what_plan_said(
        &common::report(&plan_out),
        &common::report(&apply_out),
        "firewall",
    );
    assert_contained(&lab, &direct);
    assert_eq!(lab.result("apply", DOCKER_CONFIG, 0)["result"], "unchanged");

    // A port published after apply is closed too.
    lab.dockerd.docker(&[
        "run",
        "-d",
        "--name",
        "late",
        "-p",
        "8083:80",
        docker::IMAGE,
        "/bin/busybox",
        "httpd",
        "-f",
        "-p",
        "80",
        "-h",
        "/www",
    ]);
    wait_for("late runs", || {
        lab.fetch_in("late", "http://127.0.0.1:80/", "hello")
    });
    assert_eq!(
        published(&lab.cli, VM_FOR_CLI, 8083),
        (false, false),
        "8083 is unlisted"
    );

    // A direct route opens for the port an allow rule names, to that rule's sources only.
    let web = direct[0].clone();
    let open80 = format!("{DOCKER_CONFIG}    - {{ port: 80, from: cli }}\n");
    lab.result("apply", &open80, 0);
    assert!(DockerLab::page(&lab.cli, &web), "allowed: cli to {web}");
    assert!(!DockerLab::page(&lab.oth, &web), "oth to {web}");
    lab.result("apply", DOCKER_CONFIG, 0);

    reloads_and_restarts(&mut lab, &direct);
}

/// A reload of /etc/nftables.conf, an iptables flush by another firewall and a Docker
/// restart leave olboot's table and (after the restart) Docker's rules in place; a full
/// flush is noticed.
fn reloads_and_restarts(lab: &mut DockerLab, direct: &[String]) {
    ns::must(
        lab.olboot
            .command(&lab.vm, "nft")
            .args(["-f", "/etc/nftables.conf"]),
    );
    assert!(
        lab.vm.nft(&["list", "tables"]).contains("table ip nat"),
        "Docker's tables survive a reload"
    );
    assert_contained(lab, direct);
    assert_eq!(lab.result("apply", DOCKER_CONFIG, 0)["result"], "unchanged");

    // ferm's iptables-restore flushes the iptables-nft tables, Docker's chains with them.
    for table in ["filter", "nat"] {
        for prog in ["iptables", "ip6tables"] {
            ns::must(lab.vm.command(prog).args(["-t", table, "-F"]));
        }
    }
    assert_eq!(
        lab.result("apply", DOCKER_CONFIG, 0)["result"],
        "unchanged",
        "olboot's table is intact"
    );
    lab.dockerd.restart(&lab.vm);
    let direct = direct_addresses(&lab.dockerd);
    let api = direct[2].clone();
    wait_for("api back after the Docker restart", || {
        lab.fetch_in("tool", &format!("http://{api}/"), "hello from a container")
    });
    wait_for("web back after the Docker restart", || {
        lab.fetch_in("web", "http://127.0.0.1:80/", "hello")
    });
    wait_for("8080 back after the Docker restart", || {
        published(&lab.cli, VM_FOR_CLI, 8080) == (true, true)
    });
    assert_contained(lab, &direct);
    assert_eq!(lab.result("apply", DOCKER_CONFIG, 0)["result"], "unchanged");

    // `systemctl restart nftables` runs `nft flush ruleset`: plan warns of it, apply notices.
    lab.vm.nft(&["flush", "ruleset"]);
    let plan = lab.result("plan", DOCKER_CONFIG, 3);
    assert!(
        changes(&plan).iter().any(|l| l
            == "load table inet olboot into the running kernel (table inet olboot is not loaded)"),
        "{plan}"
    );
    let warnings = plan["warnings"].to_string();
    assert!(
        warnings.contains("nftables.service stops with `nft flush ruleset`")
            && warnings.contains("Docker is installed: package docker.io"),
        "{plan}"
    );
    assert_eq!(lab.result("apply", DOCKER_CONFIG, 0)["result"], "changed");
    assert_eq!(published(&lab.oth, VM_FOR_OTH, 8080), (false, false));
}

#[test]
fn container_names_are_checked() {
    for (yaml, says) in [
        (
            "  sets: { containers: [10.0.0.1] }\n  allow: [{ port: 22 }]\n",
            "firewall.sets.containers: a reserved name",
        ),
        (
            "  container_bridges: [\"br-*x\"]\n  allow: [{ port: 22 }]\n",
            "firewall.container_bridges: \"br-*x\" is not an interface name",
        ),
        (
            "  container_bridges: [docker0, a-much-too-long-name]\n  allow: [{ port: 22 }]\n",
            "\"a-much-too-long-name\" is not an interface name",
        ),
        (
            "  allow: [{ port: 22, from: containers }]\n",
            "no rule allows SSH",
        ),
    ] {
        let out = common::run(
            &["validate", "-c", "-"],
            Some(&format!("version: 1\nfirewall:\n{yaml}")),
        );
        assert_eq!(common::code(&out), 2, "{yaml}: {}", common::stderr(&out));
        assert!(
            common::stderr(&out).contains(says),
            "{yaml}: {}",
            common::stderr(&out)
        );
    }
    // `containers` needs no definition.
    let ok = "version: 1\nfirewall:\n  container_bridges: [docker0, \"br-*\", olnet]\n  allow: [{ port: 22 }, { port: 7000, from: containers }]\n";
    let out = common::run(&["validate", "-c", "-"], Some(ok));
    assert_eq!(common::code(&out), 0, "{}", common::stderr(&out));
}

#[test]
fn a_bridge_of_the_machine_matched_by_a_wildcard_is_a_warning() {
    let lab = Lab::new();
    lab.srv.ip(&["link", "add", "br-lan", "type", "bridge"]);
    lab.srv
        .ip(&["link", "add", "br-0123456789ab", "type", "bridge"]);
    let plan = lab.olboot("plan", CONFIG_A);
    assert_eq!(common::code(&plan), 3, "{}", common::stderr(&plan));
    let warnings: Vec<String> = common::step(&common::report(&plan), "firewall")["warnings"]
        .as_array()
        .expect("warnings")
        .iter()
        .filter_map(|w| w.as_str().map(String::from))
        .filter(|w| w.starts_with("bridge "))
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].starts_with("bridge br-lan matches firewall.container_bridges (docker0, br-*)"),
        "{warnings:?}"
    );
    // Named in the config, it is meant.
    let named = CONFIG_A.replace(
        "firewall:\n",
        "firewall:\n  container_bridges: [docker0, \"br-*\", br-lan]\n",
    );
    let plan = lab.olboot("plan", &named);
    let step = common::step(&common::report(&plan), "firewall").clone();
    assert!(
        !step["warnings"].to_string().contains("bridge br-lan"),
        "{step}"
    );
}
