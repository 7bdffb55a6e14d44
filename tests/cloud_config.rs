//! The files of `cloud-config/` are what operators copy: every fleet file validates with the
//! built binary, today's fleet says what the 2026 provisioning script does, and every role
//! cloud-config is YAML that installs the one `olboot.service` and runs `olboot apply`.

mod common;
use common::{code, run, stderr};
use std::path::{Path, PathBuf};

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("cloud-config")
}

/// The `.yaml` files of cloud-config/ whose name starts with `fleet` (true) or not (false).
fn files(fleet: bool) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("fleet")
                == fleet
        })
        .collect();
    out.sort();
    out
}

#[test]
fn every_fleet_file_validates() {
    let fleets = files(true);
    assert!(fleets.len() >= 2, "{fleets:?}");
    for f in &fleets {
        let o = run(&["validate", "-c", f.to_str().unwrap()], None);
        assert_eq!(code(&o), 0, "{}: {}", f.display(), stderr(&o));
    }
}

#[test]
fn todays_web_head_has_docker_ce_from_the_mirror() {
    let path = dir().join("fleet-2026.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let cfg = olboot::config::Config::parse("fleet-2026.yaml", &text).unwrap();
    let host = cfg.for_host("ol-web1").unwrap();
    let p = host.packages.expect("packages");
    let docker = &p.sources["docker"];
    assert_eq!(docker.suites[0].0, "trixie");
    assert!(docker.key_url.is_some() && docker.key_sha256.is_some());
    let remove: Vec<&str> = p.remove.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(
        remove,
        [
            "docker.io",
            "docker-compose",
            "docker-doc",
            "podman-docker",
            "containerd",
            "runc"
        ]
    );
    for name in [
        "apparmor",
        "docker-ce",
        "docker-ce-cli",
        "containerd.io",
        "nftables",
    ] {
        assert!(
            p.install.iter().any(|i| i.0 == name),
            "{name} not installed"
        );
    }
    assert_eq!(host.links[0].from.to_string(), "/opt/olsystem/etc");
}

#[test]
fn role_cloud_configs_install_the_unit_and_run_olboot() {
    let unit = std::fs::read_to_string(dir().join("olboot.service")).unwrap();
    // The unit's own text without its comment lines, as the role files carry it.
    let bare: String = unit
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    let roles = files(false);
    assert!(
        roles.iter().any(|r| r.ends_with("docker-web.yaml")),
        "{roles:?}"
    );
    for r in &roles {
        let text = std::fs::read_to_string(r).unwrap();
        assert!(text.starts_with("#cloud-config\n"), "{}", r.display());
        let doc: serde_yaml::Value =
            serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", r.display()));
        let files = doc["write_files"].as_sequence().expect("write_files");
        let written = files
            .iter()
            .find(|f| f["path"] == "/etc/systemd/system/olboot.service")
            .unwrap_or_else(|| panic!("{}: no olboot.service", r.display()));
        let content = written["content"].as_str().unwrap();
        let strip = |s: &str| -> String {
            s.lines()
                .filter(|l| !l.trim_start().starts_with('#'))
                .map(|l| format!("{l}\n"))
                .collect()
        };
        assert_eq!(
            strip(content),
            strip(&bare),
            "{}: unit differs",
            r.display()
        );
        let script = doc["runcmd"][0].as_str().expect("runcmd script");
        assert!(
            script.contains("/usr/local/sbin/olboot apply -c /etc/olboot.yaml"),
            "{}",
            r.display()
        );
        assert_eq!(doc["locale"], "C.UTF-8", "{}", r.display());
    }
}
