//! The firewall step: olboot's own nftables table, `table inet olboot`, loaded into the running
//! kernel and persisted for the next boot. It runs first, so nothing installed later is ever
//! reachable from outside.
//!
//! - **Only olboot's table.** The ruleset (`ruleset.rs`) replaces `table inet olboot` in one
//!   `nft -f` transaction, checked first with `nft -c`; no `flush ruleset`, so Docker's and the
//!   distribution's tables are never touched. If nft refuses it, the running table stays as it
//!   was. Restarting Docker rewrites only Docker's tables, and since a drop in any base chain
//!   is final, nothing Docker accepts can reopen a port olboot drops.
//! - **Containers.** New connections forwarded into a container network (the bridges of
//!   `firewall.container_bridges`, Docker's `docker0` and `br-*` by default), whether DNAT'd
//!   by a published port or routed straight to a container's address, obey the allow rules;
//!   container egress and container-to-container traffic are left to Docker. `from:
//!   containers` admits the local containers (by the bridge they come from) to a host service
//!   or a published port.
//! - **Persisted** in `/etc/nftables.d/olboot.nft` (the same text: loading it twice is
//!   harmless), loaded at boot by olboot's own unit and included from `/etc/nftables.conf`,
//!   whose `flush ruleset` is replaced so a reload leaves Docker's tables alone (`boot.rs`).
//!   Whatever can still flush everything (a `flush ruleset` olboot may not edit,
//!   nftables.service's `ExecStop`) is a warning; the next `apply` loads the table again.
//! - **Unchanged** when the file holds the rendered text and the running table's listing is
//!   the one recorded right after olboot last loaded that text (`/var/lib/olboot/
//!   firewall.listing`): any edit of the running table, a flush, or a reboot into other
//!   rules, shows.
//! - **`--root`**: the files and the unit inside the root; the kernel is not touched
//!   (`nft -c` still checks the ruleset when this system has nft).
//! - `nft` missing on the target: the nftables package is installed first, by the changes
//!   the packages step plans for it.

mod boot;
mod diff;
mod docker;
mod ruleset;

use super::{packages, Ctx, Describe, Done, Plan, Step, Tense, Verb};
use crate::config;
use crate::root::Root;
use crate::sys::{cmd, fs, link, nft};
use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// The persisted ruleset, as the target sees it.
pub const FILE: &str = "/etc/nftables.d/olboot.nft";
/// The listing of the table right after olboot last loaded it, with the hash of that ruleset.
pub const RECORD: &str = "/var/lib/olboot/firewall.listing";
/// First words of [`RECORD`]; the ruleset's sha256 follows.
const RECORD_HEAD: &str = "# olboot loaded the ruleset with sha256";
/// Most diff lines a change shows.
const DIFF_LINES: usize = 60;
/// Where Debian's package puts `nft`, as the target sees it; the first is the default.
const NFT_PATHS: [&str; 4] = ["/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft", "/bin/nft"];

/// The firewall step.
pub struct Firewall<'a> {
    /// Its config.
    pub cfg: &'a config::Firewall,
}

/// The rendered ruleset and its sha256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ruleset {
    /// The nft text, as loaded and written.
    pub text: String,
    /// Its sha256, in hex.
    pub sha256: String,
}

/// One change of the firewall step; each carries what `apply` needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// `nft` is missing on the target: the packages step's changes that install nftables.
    InstallNftables(Vec<packages::Change>),
    /// Load the ruleset into the running kernel.
    Load {
        /// What to load.
        ruleset: Ruleset,
        /// Whether a table inet olboot is loaded now (it is replaced).
        replace: bool,
        /// Why the running table is not right.
        why: String,
    },
    /// Write [`FILE`].
    Write {
        /// What to write.
        ruleset: Ruleset,
        /// The line diff from the file as it is.
        diff: String,
    },
    /// Write `/etc/nftables.conf` as `text`.
    Conf {
        /// The whole new file.
        text: String,
        /// The file does not exist yet.
        create: bool,
        /// The include line is added.
        include: bool,
        /// `flush ruleset` is commented out; the tables that replace it.
        unflushed: Option<Vec<String>>,
    },
    /// Write olboot's unit.
    Unit {
        /// Its text.
        text: String,
    },
    /// Enable olboot's unit: the symlink `link` -> `dest`.
    Enable {
        /// The symlink, as the target sees it.
        link: PathBuf,
        /// The unit file.
        dest: PathBuf,
    },
}

impl Describe for Change {
    fn describe(&self, tense: Tense) -> String {
        let table = ruleset::TABLE;
        match self {
            Change::InstallNftables(nested) => {
                let steps: Vec<String> = nested.iter().map(|c| c.describe(tense)).collect();
                format!(
                    "{} nftables (nft is missing): {}",
                    tense.of(Verb::Install),
                    steps.join("; ")
                )
            }
            Change::Load {
                replace: false,
                why,
                ..
            } => format!(
                "{} table {table} into the running kernel ({why})",
                tense.of(Verb::Load)
            ),
            Change::Load {
                replace: true, why, ..
            } => format!(
                "{} table {table} in the running kernel ({why})",
                tense.of(Verb::Replace)
            ),
            Change::Write { diff, .. } => format!("{} {FILE}: {diff}", tense.of(Verb::Write)),
            Change::Conf { create: true, .. } => format!(
                "{} {} with {}",
                tense.of(Verb::Create),
                boot::CONF,
                boot::INCLUDE
            ),
            Change::Conf {
                include, unflushed, ..
            } => {
                let mut parts = Vec::new();
                if let Some(tables) = unflushed {
                    parts.push(format!(
                        "{} `flush ruleset` in {} (on every reload it would drop every \
                         table, Docker's too) and {} only the file's own tables there ({})",
                        tense.of(Verb::Comment),
                        boot::CONF,
                        tense.of(Verb::Replace),
                        tables.join(", ")
                    ));
                }
                if *include {
                    parts.push(format!(
                        "{} {} to {}",
                        tense.of(Verb::Add),
                        boot::INCLUDE,
                        boot::CONF
                    ));
                }
                parts.join("; ")
            }
            Change::Unit { .. } => format!(
                "{} {} (it loads {FILE} at boot, before the network)",
                tense.of(Verb::Write),
                boot::UNIT_PATH
            ),
            Change::Enable { link, dest } => format!(
                "{} {} for boot ({} -> {})",
                tense.of(Verb::Enable),
                boot::UNIT,
                link.display(),
                dest.display()
            ),
        }
    }
}

fn sha256(text: &str) -> String {
    config::hex(&Sha256::digest(text.as_bytes()))
}

/// The record of a load: the ruleset's hash, then the table's listing.
fn record_text(sha256: &str, listing: &str) -> String {
    format!("{RECORD_HEAD} {sha256}\n{listing}")
}

/// The hash and listing of a record, if it is one.
fn parse_record(text: &str) -> Option<(&str, &str)> {
    let (head, listing) = text.split_once('\n')?;
    let hash = head.strip_prefix(RECORD_HEAD)?.trim();
    Some((hash, listing))
}

impl Ruleset {
    fn of(cfg: &config::Firewall) -> Ruleset {
        let text = ruleset::render(cfg);
        Ruleset {
            sha256: sha256(&text),
            text,
        }
    }
}

/// Whether the target has `nft`: on the live system, on `PATH`; below `--root`, where
/// Debian's package puts it.
fn target_has_nft(ctx: &Ctx) -> Result<bool> {
    if ctx.root.is_live() {
        return Ok(cmd::exists("nft"));
    }
    Ok(target_nft(ctx.root)?.is_some())
}

/// The first of [`NFT_PATHS`] that is a file in `root`.
fn target_nft(root: &Root) -> Result<Option<&'static str>> {
    for p in NFT_PATHS {
        if root.resolve(Path::new(p))?.is_file() {
            return Ok(Some(p));
        }
    }
    Ok(None)
}

/// Whether a table inet olboot is loaded, and why the running kernel needs the ruleset
/// loaded (`None` when it already runs it).
fn kernel_drift(ctx: &Ctx, rules: &Ruleset) -> Result<(bool, Option<String>)> {
    let Some(live) = nft::list_table(ruleset::FAMILY, ruleset::NAME)? else {
        return Ok((
            false,
            Some(format!("table {} is not loaded", ruleset::TABLE)),
        ));
    };
    let record = fs::read_optional(&ctx.root.resolve(Path::new(RECORD))?)?;
    let why = match record.as_deref().and_then(parse_record) {
        None => Some(format!("no record of olboot loading it ({RECORD})")),
        Some((hash, _)) if hash != rules.sha256 => Some("the rules changed".into()),
        Some((_, listing)) if listing != live => Some(format!(
            "the running table was changed outside olboot: {}",
            diff::describe(&diff::lines(&live, listing), DIFF_LINES)
        )),
        Some(_) => None,
    };
    Ok((true, why))
}

/// nftables.conf: the include line, and no `flush ruleset` that would remove Docker's tables.
fn plan_conf(root: &Root, plan: &mut Plan<Change>) -> Result<()> {
    let conf_path = root.path(Path::new(boot::CONF))?;
    if let Ok(target) = std::fs::read_link(&conf_path) {
        // Managed elsewhere (e.g. linked from olsystem): read it, never rewrite it.
        let target = Path::new("/etc").join(target);
        let text = fs::read_optional(&root.resolve(&target)?)?.unwrap_or_default();
        if boot::flushes_ruleset(&text) {
            plan.warnings.push(format!(
                "{} is a symlink to {}, which olboot leaves alone, and it runs `flush \
                 ruleset`: `systemctl reload nftables` removes every table, Docker's too (the \
                 next `olboot apply` loads table {} again; restart Docker after it)",
                boot::CONF,
                target.display(),
                ruleset::TABLE
            ));
        }
        return Ok(());
    }
    let Some(old) = fs::read_optional(&conf_path)? else {
        plan.changes.push(Change::Conf {
            text: boot::with_include(None),
            create: true,
            include: true,
            unflushed: None,
        });
        return Ok(());
    };
    let (text, unflushed) = match boot::unflushed(&old) {
        Some((text, tables)) => (text, Some(tables)),
        None => (old.clone(), None),
    };
    let include = !boot::includes_ours(&text);
    let text = if include {
        boot::with_include(Some(&text))
    } else {
        text
    };
    if text != old {
        plan.changes.push(Change::Conf {
            text,
            create: false,
            include,
            unflushed,
        });
    }
    Ok(())
}

/// olboot's unit, written and enabled.
fn plan_unit(root: &Root, plan: &mut Plan<Change>) -> Result<()> {
    if !boot::has_systemd(root)? {
        plan.warnings.push(format!(
            "no systemd on the target: make sure {FILE} is loaded at boot"
        ));
        return Ok(());
    }
    let nft = target_nft(root)?.unwrap_or(NFT_PATHS[0]);
    let text = boot::unit_text(Path::new(nft), FILE);
    if fs::read_optional(&root.resolve(Path::new(boot::UNIT_PATH))?)?.as_deref() != Some(&text) {
        plan.changes.push(Change::Unit { text });
    }
    if !boot::enabled(root)? {
        plan.changes.push(Change::Enable {
            link: boot::unit_link(),
            dest: boot::UNIT_PATH.into(),
        });
    }
    Ok(())
}

/// What outside olboot can still remove every table, and bridges taken for containers that
/// are likely not Docker's.
fn plan_warnings(ctx: &Ctx, cfg: &config::Firewall, plan: &mut Plan<Change>) -> Result<()> {
    let root = ctx.root;
    if boot::service_stop_flushes(root)? {
        let docker = docker::found(root)?
            .map(|how| format!(" and Docker's (Docker is installed: {how}; restart it after)"))
            .unwrap_or_default();
        plan.warnings.push(format!(
            "nftables.service stops with `nft flush ruleset`: `systemctl stop` or `restart \
             nftables` removes every table, olboot's (the next `olboot apply` loads it \
             again){docker}; `systemctl reload nftables` is safe"
        ));
    }
    if root.is_live() {
        let bridges = link::bridges()?;
        for b in docker::suspicious_bridges(&bridges, &cfg.bridges()) {
            plan.warnings.push(format!(
                "bridge {b} matches firewall.container_bridges ({}) but is not named as \
                 Docker names its bridges: new connections forwarded into it obey the allow \
                 rules; list the container bridges by name to leave it out",
                cfg.bridges().join(", ")
            ));
        }
    }
    if root.is_live() && target_has_nft(ctx)? && Path::new(boot::CONF).exists() {
        // nftables.service loads the whole file or nothing: a mistake anywhere in it means
        // none of its rules at boot.
        if let Err(e) = nft::check_file(Path::new(boot::CONF)) {
            plan.warnings.push(format!(
                "{} does not load, so nftables.service would load no rules at boot: {e:#}",
                boot::CONF
            ));
        }
    }
    Ok(())
}

/// The nftables install, planned by the packages step.
fn plan_nft(ctx: &Ctx, plan: &mut Plan<Change>) -> Result<()> {
    let nested = packages::plan_install(ctx, &["nftables"])?;
    if nested.is_empty() {
        plan.failures
            .push("nft is missing although the nftables package is installed: reinstall it".into());
    } else {
        plan.changes.push(Change::InstallNftables(nested));
    }
    Ok(())
}

/// Load `rules` into the kernel and record the listing that results.
fn load(ctx: &Ctx, rules: &Ruleset) -> Result<()> {
    nft::load(&rules.text).with_context(|| {
        format!(
            "cannot load table {}; the running rules are as they were",
            ruleset::TABLE
        )
    })?;
    let listing = nft::list_table(ruleset::FAMILY, ruleset::NAME)?
        .with_context(|| format!("table {} is missing right after loading it", ruleset::TABLE))?;
    let record = ctx.root.path(Path::new(RECORD))?;
    fs::write_atomic(
        &record,
        record_text(&rules.sha256, &listing).as_bytes(),
        0o644,
    )
}

/// Make one change (the ruleset was checked before any).
fn apply_one(ctx: &Ctx, change: &Change) -> Result<()> {
    let root = ctx.root;
    match change {
        Change::InstallNftables(nested) => {
            packages::apply_changes(ctx, nested, &mut Done::new(Firewall::NAME))
        }
        Change::Load { ruleset, .. } => load(ctx, ruleset),
        Change::Write { ruleset, .. } => {
            fs::write_atomic(&root.path(Path::new(FILE))?, ruleset.text.as_bytes(), 0o644)
        }
        Change::Conf { text, .. } => {
            fs::write_atomic(&root.path(Path::new(boot::CONF))?, text.as_bytes(), 0o755)
        }
        Change::Unit { text } => fs::write_atomic(
            &root.path(Path::new(boot::UNIT_PATH))?,
            text.as_bytes(),
            0o644,
        ),
        Change::Enable { link, dest } => boot::enable(root, link, dest),
    }
}

impl Step for Firewall<'_> {
    const NAME: &'static str = "firewall";
    type Change = Change;

    fn plan(&self, ctx: &Ctx) -> Result<Plan<Change>> {
        let root = ctx.root;
        let rules = Ruleset::of(self.cfg);
        let mut plan = Plan::default();
        plan.warnings.extend(ruleset::empty_rules(self.cfg));

        let has_nft = target_has_nft(ctx)?;
        if !has_nft {
            plan_nft(ctx, &mut plan)?;
        }
        if root.is_live() {
            let (replace, why) = if has_nft {
                kernel_drift(ctx, &rules)?
            } else {
                (false, Some("nft is not installed yet".into()))
            };
            if let Some(why) = why {
                plan.changes.push(Change::Load {
                    ruleset: rules.clone(),
                    replace,
                    why,
                });
            }
        } else if !cmd::exists("nft") {
            plan.warnings
                .push("no nft on this system: the ruleset is written unchecked (nft -c)".into());
        }

        let file = fs::read_optional(&root.resolve(Path::new(FILE))?)?;
        if file.as_deref() != Some(rules.text.as_str()) {
            let d = diff::lines(file.as_deref().unwrap_or(""), &rules.text);
            plan.changes.push(Change::Write {
                diff: diff::describe(&d, DIFF_LINES),
                ruleset: rules,
            });
        }
        plan_conf(root, &mut plan)?;
        plan_unit(root, &mut plan)?;
        plan_warnings(ctx, self.cfg, &mut plan)?;
        Ok(plan)
    }

    fn apply(ctx: &Ctx, changes: &[Change], done: &mut Done<Change>) -> Result<()> {
        let live = ctx.root.is_live();
        for change in changes {
            if let Change::InstallNftables(_) = change {
                apply_one(ctx, change)?;
                done.record(change);
            }
        }
        // Last-moment check, before anything of the rules changes: nft refuses nothing later.
        let rules = changes.iter().find_map(|c| match c {
            Change::Load { ruleset, .. } | Change::Write { ruleset, .. } => Some(ruleset),
            _ => None,
        });
        if let Some(rules) = rules.filter(|_| live || cmd::exists("nft")) {
            nft::check(&rules.text)
                .context("nft refused the rendered ruleset; nothing was changed")?;
        }
        for change in changes {
            if !matches!(change, Change::InstallNftables(_)) {
                apply_one(ctx, change)?;
                done.record(change);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips() {
        let r = record_text(&sha256("ruleset"), "table inet olboot {\n}\n");
        let (hash, listing) = parse_record(&r).expect("record");
        assert_eq!(hash, sha256("ruleset"));
        assert_eq!(listing, "table inet olboot {\n}\n");
        assert!(parse_record("table inet olboot {\n}\n").is_none());
    }

    /// Every kind of change, as plan would make them.
    fn all_changes() -> Vec<Change> {
        let rules = Ruleset {
            text: "table inet olboot {}\n".into(),
            sha256: sha256("table inet olboot {}\n"),
        };
        vec![
            Change::InstallNftables(vec![
                packages::Change::Update {
                    sources: Vec::new(),
                },
                packages::Change::Install {
                    names: vec!["nftables".into()],
                    recommends: false,
                    absent: Vec::new(),
                },
            ]),
            Change::Load {
                ruleset: rules.clone(),
                replace: false,
                why: "table inet olboot is not loaded".into(),
            },
            Change::Load {
                ruleset: rules.clone(),
                replace: true,
                why: "the rules changed".into(),
            },
            Change::Write {
                ruleset: rules,
                diff: "1 line(s) added, 0 removed\n    + table inet olboot {}".into(),
            },
            Change::Conf {
                text: String::new(),
                create: true,
                include: true,
                unflushed: None,
            },
            Change::Conf {
                text: String::new(),
                create: false,
                include: true,
                unflushed: Some(vec!["inet filter".into()]),
            },
            Change::Unit {
                text: String::new(),
            },
            Change::Enable {
                link: boot::unit_link(),
                dest: boot::UNIT_PATH.into(),
            },
        ]
    }

    #[test]
    fn report_lines_are_plan_lines_in_the_done_tense() {
        for c in all_changes() {
            let plan = c.describe(Tense::Plan);
            assert_eq!(
                super::super::in_done_tense(&plan),
                c.describe(Tense::Done),
                "{c:?}"
            );
        }
    }

    #[test]
    fn changes_read_as_imperatives() {
        let lines: Vec<String> = all_changes()
            .iter()
            .map(|c| c.describe(Tense::Plan))
            .collect();
        assert_eq!(
            lines[0],
            "install nftables (nft is missing): update package lists; install nftables"
        );
        assert_eq!(
            lines[1],
            "load table inet olboot into the running kernel (table inet olboot is not loaded)"
        );
        assert_eq!(
            lines[2],
            "replace table inet olboot in the running kernel (the rules changed)"
        );
        assert_eq!(
            lines[5],
            "comment out `flush ruleset` in /etc/nftables.conf (on every reload it would drop \
             every table, Docker's too) and replace only the file's own tables there (inet \
             filter); add include \"/etc/nftables.d/*.nft\" to /etc/nftables.conf"
        );
        assert_eq!(
            lines[7],
            "enable olboot-firewall.service for boot (/etc/systemd/system/sysinit.target.wants/olboot-firewall.service -> /etc/systemd/system/olboot-firewall.service)"
        );
    }
}
