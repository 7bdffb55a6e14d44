//! The links step through the binary, on scratch roots with real files and symlinks.

mod common;
use common::*;
use std::collections::BTreeMap;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

const CONFIG: &str = "version: 1\nlinks:\n  - { from: /opt/openlibrary/olsystem/etc, to: /etc }\n";

/// A scratch root with an olsystem deploy behind the `olsystem` symlink (absolute, as on the
/// fleet) and a config file outside it.
struct Scratch {
    _dir: tempfile::TempDir,
    root: PathBuf,
    config: PathBuf,
}

impl Scratch {
    fn new() -> Scratch {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let etc = root.join("opt/openlibrary/deploys/olsystem/3f2a1b/etc");
        write(&etc.join("nginx/nginx.conf"), "worker_processes 4;\n");
        write(
            &etc.join("nginx/sites-available/openlibrary.conf"),
            "server {}\n",
        );
        write(&etc.join("haproxy/haproxy.cfg"), "global\n");
        write(&etc.join("openlibrary.yml"), "db: x\n");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        symlink(
            "/opt/openlibrary/deploys/olsystem/3f2a1b",
            root.join("opt/openlibrary/olsystem"),
        )
        .unwrap();
        let config = dir.path().join("olboot.yaml");
        write(&config, CONFIG);
        Scratch {
            _dir: dir,
            root,
            config,
        }
    }

    fn etc_src(&self) -> PathBuf {
        self.root
            .join("opt/openlibrary/deploys/olsystem/3f2a1b/etc")
    }

    fn olboot(&self, cmd: &str) -> std::process::Output {
        let mut args = vec![
            cmd,
            "-c",
            self.config.to_str().unwrap(),
            "--root",
            self.root.to_str().unwrap(),
            "--host",
            "ol-www0",
        ];
        if cmd == "apply" {
            args.push("--json");
        }
        run(&args, None)
    }

    fn link(&self, rel: &str) -> PathBuf {
        std::fs::read_link(self.root.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
    }
}

#[test]
fn links_then_rerun_is_unchanged() {
    let s = Scratch::new();
    let o = s.olboot("apply");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let r = report(&o);
    assert_eq!(r["result"], "changed");
    assert_eq!(step(&r, "links")["result"], "changed");
    // Links point through `from` as written, never at the deploy, never with the root prefix.
    assert_eq!(
        s.link("etc/nginx/nginx.conf"),
        Path::new("/opt/openlibrary/olsystem/etc/nginx/nginx.conf")
    );
    assert_eq!(
        s.link("etc/nginx/sites-available/openlibrary.conf"),
        Path::new("/opt/openlibrary/olsystem/etc/nginx/sites-available/openlibrary.conf")
    );
    assert!(
        std::fs::symlink_metadata(s.root.join("etc/nginx"))
            .unwrap()
            .is_dir(),
        "directories are created, not linked"
    );
    // The report is on disk, and `status` reads it.
    let st = run(
        &["status", "--root", s.root.to_str().unwrap(), "--json"],
        None,
    );
    assert_eq!(code(&st), 0);
    assert_eq!(report(&st)["result"], "changed");

    let again = s.olboot("apply");
    assert_eq!(code(&again), 0);
    let r = report(&again);
    assert_eq!(r["result"], "unchanged", "{r}");
    assert_eq!(step(&r, "links")["changes"].as_array().unwrap().len(), 0);
    let p = s.olboot("plan");
    assert_eq!(code(&p), 0, "plan of a converged system exits 0");
    assert_eq!(report(&p)["result"], "unchanged");
}

#[test]
fn plan_changes_nothing_and_lists_what_apply_does() {
    let s = Scratch::new();
    write(&s.root.join("etc/openlibrary.yml"), "hand edited\n");
    let before = snapshot(&s.root);
    let p = s.olboot("plan");
    assert_eq!(code(&p), 3, "pending changes: exit 3; {}", stderr(&p));
    assert_eq!(snapshot(&s.root), before, "plan touched the root");
    let planned: Vec<String> = step(&report(&p), "links")["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    assert!(planned.contains(&"back up the file at /etc/openlibrary.yml and link it -> /opt/openlibrary/olsystem/etc/openlibrary.yml".to_string()), "{planned:?}");
    let a = s.olboot("apply");
    let done = step(&report(&a), "links")["changes"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(
        done,
        planned.len(),
        "apply makes exactly the planned changes"
    );
}

#[test]
fn things_in_the_way_are_backed_up_and_never_written_through() {
    let s = Scratch::new();
    // A migrated VM: a whole directory linked, pointing at an old directory with a file.
    write(&s.root.join("srv/old-sites/legacy.conf"), "old\n");
    write(
        &s.root.join("etc/nginx/nginx.conf"),
        "distribution default\n",
    );
    symlink("/srv/old-sites", s.root.join("etc/nginx/sites-available")).unwrap();
    // A wrong link.
    symlink("/nowhere", s.root.join("etc/openlibrary.yml")).unwrap();
    let old_sites = snapshot(&s.root.join("srv/old-sites"));

    let o = s.olboot("apply");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(
        snapshot(&s.root.join("srv/old-sites")),
        old_sites,
        "wrote through the directory symlink"
    );
    let sa = s.root.join("etc/nginx/sites-available");
    assert!(std::fs::symlink_metadata(&sa).unwrap().is_dir());
    assert_eq!(
        std::fs::read_link(sa.join("openlibrary.conf")).unwrap(),
        Path::new("/opt/openlibrary/olsystem/etc/nginx/sites-available/openlibrary.conf")
    );
    let backup = s.root.join("var/lib/olboot/backup/etc");
    assert_eq!(
        std::fs::read_to_string(backup.join("nginx/nginx.conf")).unwrap(),
        "distribution default\n"
    );
    assert_eq!(
        std::fs::read_link(backup.join("nginx/sites-available")).unwrap(),
        Path::new("/srv/old-sites")
    );
    assert_eq!(
        std::fs::read_link(backup.join("openlibrary.yml")).unwrap(),
        Path::new("/nowhere")
    );
    assert_eq!(report(&s.olboot("apply"))["result"], "unchanged");
}

#[test]
fn a_second_backup_does_not_overwrite_the_first() {
    let s = Scratch::new();
    write(&s.root.join("etc/openlibrary.yml"), "one\n");
    assert_eq!(code(&s.olboot("apply")), 0);
    std::fs::remove_file(s.root.join("etc/openlibrary.yml")).unwrap();
    write(&s.root.join("etc/openlibrary.yml"), "two\n");
    assert_eq!(code(&s.olboot("apply")), 0);
    let b = s.root.join("var/lib/olboot/backup/etc");
    assert_eq!(
        std::fs::read_to_string(b.join("openlibrary.yml")).unwrap(),
        "one\n"
    );
    assert_eq!(
        std::fs::read_to_string(b.join("openlibrary.yml.1")).unwrap(),
        "two\n"
    );
}

#[test]
fn a_file_gone_from_the_source_is_reported_and_unlinked() {
    let s = Scratch::new();
    assert_eq!(code(&s.olboot("apply")), 0);
    std::fs::remove_file(s.etc_src().join("haproxy/haproxy.cfg")).unwrap();
    let p = s.olboot("plan");
    assert_eq!(code(&p), 3);
    let changes = step(&report(&p), "links")["changes"].to_string();
    assert!(
        changes.contains("remove /etc/haproxy/haproxy.cfg -> /opt/openlibrary/olsystem/etc/haproxy/haproxy.cfg (its source is gone)"),
        "{changes}"
    );
    assert_eq!(code(&s.olboot("apply")), 0);
    assert!(std::fs::symlink_metadata(s.root.join("etc/haproxy/haproxy.cfg")).is_err());
    // A link somebody else made into another place is not ours to remove.
    symlink("/usr/share/x", s.root.join("etc/haproxy/other.cfg")).unwrap();
    assert_eq!(report(&s.olboot("apply"))["result"], "unchanged");
}

#[test]
fn switching_the_deploy_needs_no_relinking() {
    let s = Scratch::new();
    assert_eq!(code(&s.olboot("apply")), 0);
    let new = s.root.join("opt/openlibrary/deploys/olsystem/9c8d7e/etc");
    for f in [
        "nginx/nginx.conf",
        "nginx/sites-available/openlibrary.conf",
        "haproxy/haproxy.cfg",
        "openlibrary.yml",
    ] {
        write(&new.join(f), "new deploy\n");
    }
    let olsystem = s.root.join("opt/openlibrary/olsystem");
    std::fs::remove_file(&olsystem).unwrap();
    symlink("/opt/openlibrary/deploys/olsystem/9c8d7e", &olsystem).unwrap();
    assert_eq!(report(&s.olboot("apply"))["result"], "unchanged");
}

#[test]
fn files_cron_and_logrotate_would_ignore_are_warned_about() {
    let s = Scratch::new();
    let cron = s.etc_src().join("cron.d/openlibrary.ol_home0");
    write(&cron, "* * * * * root true\n");
    let lr = s.etc_src().join("logrotate.d/nginx");
    write(&lr, "/var/log/nginx/*.log {}\n");
    std::fs::set_permissions(&lr, std::fs::Permissions::from_mode(0o664)).unwrap();
    let o = s.olboot("apply");
    assert_eq!(code(&o), 0);
    let w = step(&report(&o), "links")["warnings"].to_string();
    assert!(w.contains("/etc/cron.d/openlibrary.ol_home0: cron ignores files in cron.d whose names are not run-parts-clean"), "{w}");
    assert!(
        w.contains(
            "/etc/logrotate.d/nginx: logrotate ignores it: group- or world-writable (mode 664)"
        ),
        "{w}"
    );
    assert!(
        !w.contains("cron.d/openlibrary.ol_home0: cron ignores it: group"),
        "mode 644 is fine: {w}"
    );
    assert!(stderr(&o).contains("WARN"), "warnings are logged too");
}

#[test]
fn missing_source_fails_the_step() {
    let s = Scratch::new();
    std::fs::remove_file(s.root.join("opt/openlibrary/olsystem")).unwrap();
    let o = s.olboot("apply");
    assert_eq!(code(&o), 1);
    let r = report(&o);
    assert_eq!(r["result"], "failed");
    let e = step(&r, "links")["error"].as_str().unwrap().to_string();
    assert!(e.contains("/opt/openlibrary/olsystem/etc"), "{e}");
}

#[test]
fn links_wait_for_a_failed_opt() {
    let s = Scratch::new();
    write(
        &s.config,
        &format!("{CONFIG}opt:\n  path: /1/opt\n  expose: symlink\n  archive: {{ urls: [\"file:///nonexistent/opt.tar.zst\"] }}\n"),
    );
    let o = s.olboot("apply");
    assert_eq!(code(&o), 1);
    let r = report(&o);
    assert_eq!(step(&r, "opt")["result"], "failed");
    assert_eq!(step(&r, "links")["result"], "skipped");
    assert_eq!(step(&r, "links")["error"], "needs opt, which failed");
    // --only links runs it alone.
    let o = run(
        &[
            "apply",
            "-c",
            s.config.to_str().unwrap(),
            "--root",
            s.root.to_str().unwrap(),
            "--host",
            "x",
            "--only",
            "links",
            "--json",
        ],
        None,
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let r = report(&o);
    assert_eq!(r["steps"].as_array().unwrap().len(), 1);
    assert_eq!(step(&r, "links")["result"], "changed");
}

#[test]
fn converged_rerun_over_hundreds_of_files_changes_nothing() {
    let s = Scratch::new();
    for d in 0..20 {
        for f in 0..20 {
            write(&s.etc_src().join(format!("d{d}/f{f}.conf")), "x\n");
        }
    }
    let first = report(&s.olboot("apply"));
    assert_eq!(
        step(&first, "links")["changes"].as_array().unwrap().len(),
        20 + 400 + 4 + 3,
        "dirs and links"
    );
    let before = snapshot(&s.root.join("etc"));
    let r = report(&s.olboot("apply"));
    assert_eq!(r["result"], "unchanged");
    assert_eq!(snapshot(&s.root.join("etc")), before);
}

#[test]
fn links_below_a_source_directory_gone_as_a_whole_are_removed() {
    let s = Scratch::new();
    assert_eq!(code(&s.olboot("apply")), 0);
    std::fs::remove_dir_all(s.etc_src().join("haproxy")).unwrap();
    let p = s.olboot("plan");
    assert_eq!(code(&p), 3);
    let changes = step(&report(&p), "links")["changes"].to_string();
    assert!(
        changes.contains("remove /etc/haproxy/haproxy.cfg -> "),
        "{changes}"
    );
    assert_eq!(code(&s.olboot("apply")), 0);
    assert!(std::fs::symlink_metadata(s.root.join("etc/haproxy/haproxy.cfg")).is_err());
    assert_eq!(report(&s.olboot("apply"))["result"], "unchanged");
}

#[test]
fn backups_never_go_through_an_earlier_backup_symlink() {
    let s = Scratch::new();
    // First run: a directory symlink in the way is backed up as a symlink.
    symlink("/srv/old-sites", s.root.join("etc/nginx")).unwrap();
    std::fs::create_dir_all(s.root.join("srv/old-sites")).unwrap();
    assert_eq!(code(&s.olboot("apply")), 0);
    let b = s.root.join("var/lib/olboot/backup/etc");
    assert_eq!(
        std::fs::read_link(b.join("nginx")).unwrap(),
        Path::new("/srv/old-sites")
    );
    // Somebody edits a link into a plain file (sed -i does that); the next run backs it up
    // below etc/nginx, which must not resolve through the backed-up symlink.
    let conf = s.root.join("etc/nginx/nginx.conf");
    std::fs::remove_file(&conf).unwrap();
    write(&conf, "edited in place\n");
    let before = snapshot(&s.root.join("srv"));
    assert_eq!(code(&s.olboot("apply")), 0);
    assert_eq!(
        snapshot(&s.root.join("srv")),
        before,
        "a backup went through the symlink"
    );
    assert_eq!(
        std::fs::read_to_string(b.join("nginx.1/nginx.conf")).unwrap(),
        "edited in place\n"
    );
}

/// Everything below `root` but what any run writes (the report, the run lock): a refused run
/// must leave the rest as it was. The directories they live in are made first, so that they
/// are the same before and after.
fn tree_but_the_report(root: &Path) -> BTreeMap<PathBuf, String> {
    std::fs::create_dir_all(root.join("var/lib/olboot")).unwrap();
    std::fs::create_dir_all(root.join("run")).unwrap();
    let mut t = snapshot(root);
    t.retain(|p, _| {
        p != Path::new("var/lib/olboot/report.json")
            && !(p.starts_with("run") && p != Path::new("run"))
    });
    t
}

/// `apply` and `plan` both fail the links step with an error containing `want`, and change
/// nothing below the root.
fn assert_refused(s: &Scratch, want: &str) {
    let before = tree_but_the_report(&s.root);
    for cmd in ["apply", "plan"] {
        let o = s.olboot(cmd);
        assert_eq!(code(&o), 1, "{cmd}: {}", stderr(&o));
        let r = report(&o);
        assert_eq!(r["result"], "failed", "{cmd}: {r}");
        let links = step(&r, "links");
        assert_eq!(links["result"], "failed", "{cmd}: {r}");
        assert_eq!(links["changes"].as_array().unwrap().len(), 0, "{cmd}: {r}");
        let e = links["error"].as_str().unwrap();
        assert!(e.contains(want), "{cmd}: {e}");
        assert!(!e.contains('\n'), "one line: {e}");
        assert_eq!(
            tree_but_the_report(&s.root),
            before,
            "{cmd} changed the root"
        );
    }
}

#[test]
fn a_source_that_resolves_to_the_target_or_around_it_is_refused() {
    // olsystem -> / makes /opt/openlibrary/olsystem/etc name /etc itself: linking would move
    // every file of /etc to the backup and leave a link to itself in its place.
    let s = Scratch::new();
    write(&s.root.join("etc/passwd"), "root:x:0:0\n");
    write(&s.root.join("etc/ssh/sshd_config"), "k\n");
    let olsystem = s.root.join("opt/openlibrary/olsystem");
    std::fs::remove_file(&olsystem).unwrap();
    symlink("/", &olsystem).unwrap();
    assert_refused(
        &s,
        "links[0]: source /opt/openlibrary/olsystem/etc resolves to /etc, the target /etc itself",
    );

    // The source inside the target: a deploy kept below /etc.
    std::fs::remove_file(&olsystem).unwrap();
    symlink("/etc/olsystem-deploy", &olsystem).unwrap();
    write(&s.root.join("etc/olsystem-deploy/etc/app.conf"), "x\n");
    assert_refused(
        &s,
        "links[0]: source /opt/openlibrary/olsystem/etc resolves to /etc/olsystem-deploy/etc, inside the target /etc",
    );

    // The target inside the source: `to` reaches into the checkout through a symlink.
    std::fs::remove_file(&olsystem).unwrap();
    symlink("/opt/openlibrary/deploys/olsystem/3f2a1b", &olsystem).unwrap();
    symlink("/opt/openlibrary/olsystem/etc", s.root.join("srv")).unwrap();
    write(
        &s.config,
        "version: 1\nlinks:\n  - { from: /opt/openlibrary/olsystem/etc, to: /srv/nginx }\n",
    );
    assert_refused(
        &s,
        "links[0]: target /srv/nginx resolves to /opt/openlibrary/deploys/olsystem/3f2a1b/etc/nginx, inside the source /opt/openlibrary/olsystem/etc",
    );
}

/// A root with the sources /opt/a/etc and /opt/b/etc (each with `files`) and a config linking
/// the entries `links` (source letter, target) in order.
fn two_sources(a: &[&str], b: &[&str], links: &[(&str, &str)]) -> Scratch {
    let s = Scratch::new();
    for (src, files) in [("a", a), ("b", b)] {
        for f in files {
            write(
                &s.root.join(format!("opt/{src}/etc/{f}")),
                &format!("{src}: {f}\n"),
            );
        }
    }
    let mut cfg = String::from("version: 1\nlinks:\n");
    for (src, to) in links {
        cfg.push_str(&format!("  - {{ from: /opt/{src}/etc, to: {to} }}\n"));
    }
    write(&s.config, &cfg);
    s
}

#[test]
fn two_entries_wanting_one_target_path_are_refused_before_anything_changes() {
    // Both sources hold app.conf: without the refusal, each run relinked it to the other
    // source and backed the last link up, exit 0 every time.
    let s = two_sources(
        &["app.conf", "only-a.conf"],
        &["app.conf", "only-b.conf"],
        &[("a", "/etc"), ("b", "/etc")],
    );
    write(&s.root.join("etc/only-a.conf"), "distribution default\n");
    for _ in 0..2 {
        assert_refused(
            &s,
            "links[1]: conflicts with links[0] at /etc/app.conf: links[0] wants a link -> /opt/a/etc/app.conf there, links[1] a link -> /opt/b/etc/app.conf",
        );
    }

    // A file of one source where the other has a directory.
    let s = two_sources(
        &["nginx"],
        &["nginx/b.conf"],
        &[("a", "/etc"), ("b", "/etc")],
    );
    assert_refused(
        &s,
        "links[1]: conflicts with links[0] at /etc/nginx: links[0] wants a link -> /opt/a/etc/nginx there, links[1] a directory",
    );

    // The same through a second entry whose target is below the first one's link.
    let s = two_sources(
        &["nginx"],
        &["b.conf"],
        &[("a", "/etc"), ("b", "/etc/nginx/sub")],
    );
    assert_refused(
        &s,
        "links[1]: conflicts with links[0] at /etc/nginx: links[0] wants a link -> /opt/a/etc/nginx there, links[1] a directory at /etc/nginx/sub, below it",
    );

    // And in the other order: the link comes after the directory below it.
    let s = two_sources(
        &["nginx"],
        &["b.conf"],
        &[("b", "/etc/nginx/sub"), ("a", "/etc")],
    );
    assert_refused(
        &s,
        "links[1]: conflicts with links[0] at /etc/nginx: links[1] wants a link -> /opt/a/etc/nginx there, links[0] a directory at /etc/nginx/sub, below it",
    );
}

#[test]
fn entries_merging_disjoint_files_into_one_target_converge() {
    // Two sources share /etc and a directory that does not exist yet; a third entry repeats the
    // first, as two roles that both list it merge to.
    let s = two_sources(
        &["app.conf", "nginx/a.conf", "gone.conf"],
        &["other.conf", "nginx/b.conf"],
        &[("a", "/etc"), ("b", "/etc"), ("a", "/etc")],
    );
    let p = s.olboot("plan");
    assert_eq!(code(&p), 3, "{}", stderr(&p));
    let o = s.olboot("apply");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_apply_did_what_plan_said(&report(&p), &report(&o), "links");
    for (at, dest) in [
        ("etc/app.conf", "/opt/a/etc/app.conf"),
        ("etc/nginx/a.conf", "/opt/a/etc/nginx/a.conf"),
        ("etc/other.conf", "/opt/b/etc/other.conf"),
        ("etc/nginx/b.conf", "/opt/b/etc/nginx/b.conf"),
    ] {
        assert_eq!(s.link(at), Path::new(dest));
    }
    let again = s.olboot("apply");
    assert_eq!(code(&again), 0, "{}", stderr(&again));
    assert_eq!(report(&again)["result"], "unchanged", "{}", report(&again));

    // A file gone from the repeated source is unlinked once, not once per entry.
    std::fs::remove_file(s.root.join("opt/a/etc/gone.conf")).unwrap();
    let o = s.olboot("apply");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(
        change_lines(&report(&o), "links"),
        ["removed /etc/gone.conf -> /opt/a/etc/gone.conf (its source is gone)"]
    );
    assert_eq!(report(&s.olboot("apply"))["result"], "unchanged");
    assert!(
        !s.root.join("var/lib/olboot/backup").exists(),
        "nothing was in the way, nothing backed up"
    );
}

/// A symlink in the target that loops onto itself (`/x -> /x`) is ELOOP inside the root, but
/// the very same path on this machine names this machine's `/x`: the walk must fail there,
/// not hand the literal path to the kernel, which would follow it out of the root.
#[test]
fn a_symlink_loop_in_the_target_never_leads_out_of_the_root() {
    let dir = tempfile::tempdir().unwrap();
    let host = dir.path().join("host-etc");
    write(&host.join("app.conf"), "this machine's own\n");
    let root = dir.path().join("root");
    write(&root.join("opt/ol/etc/app.conf"), "the target's\n");
    // In the root, the host directory's own path is a symlink to itself.
    let looped = root.join(host.strip_prefix("/").unwrap());
    std::fs::create_dir_all(looped.parent().unwrap()).unwrap();
    symlink(&host, &looped).unwrap();
    let config = dir.path().join("olboot.yaml");
    let text = format!(
        "version: 1\nlinks:\n  - {{ from: /opt/ol/etc, to: {} }}\n",
        host.display()
    );
    write(&config, &text);
    let out = run(
        &[
            "apply",
            "-c",
            config.to_str().unwrap(),
            "--root",
            root.to_str().unwrap(),
            "--host",
            "h",
        ],
        None,
    );
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("too many levels of symbolic links"),
        "{}",
        stderr(&out)
    );
    let kept = host.join("app.conf");
    assert!(
        !kept.is_symlink(),
        "this machine's file was replaced by a link"
    );
    assert_eq!(
        std::fs::read_to_string(&kept).unwrap(),
        "this machine's own\n"
    );
}
