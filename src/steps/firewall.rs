//! The firewall step: olboot's own nftables table, `table inet olboot`, loaded into the running
//! kernel and persisted for the next boot. It runs first, so nothing installed later is ever
//! reachable from outside.
//!
//! - **Only olboot's table.** The ruleset (`ruleset.rs`) replaces `table inet olboot` in one
//!   `nft -f` transaction, checked first with `nft -c`; no `flush ruleset`, so Docker's and the
//!   distribution's tables are never touched. If nft refuses it, the running table stays as it
//!   was. Restarting Docker rewrites only Docker's tables, and since a drop in any base chain
//!   is final, nothing Docker accepts can reopen a port olboot drops.
//! - **Published container ports.** Docker DNATs them in prerouting and forwards them, past
//!   the input chain; the table's forward chain applies the same allow rules to DNAT'd new
//!   connections by the port the client asked for. Sources are matched by address only: a
//!   container of this host reaching a published port through the host's address needs its
//!   network (e.g. 172.16.0.0/12) in an allowed set like any other client.
//! - **Persisted** in `/etc/nftables.d/olboot.nft` (the same text: loading it twice is
//!   harmless), included from `/etc/nftables.conf`, with `nftables.service` enabled
//!   (`boot.rs`). Debian's default nftables.conf begins with `flush ruleset`: harmless at boot,
//!   where nftables.service runs before Docker, but a later `systemctl reload|restart
//!   nftables` also removes Docker's rules; the step warns when Docker is installed. Since
//!   nftables.service loads that file all or nothing, the step also warns when it does not
//!   pass `nft -c` (someone's mistake elsewhere in it would leave the machine open at boot).
//! - **Unchanged** when the file holds the rendered text and the running table's listing is
//!   the one recorded right after olboot last loaded that text (`/var/lib/olboot/
//!   firewall.listing`): any edit of the running table, or a reboot into other rules, shows.
//! - **`--root`**: the files and the service links inside the root; the kernel is not touched
//!   (`nft -c` still checks the ruleset when this system has nft).
//! - `nft` missing on the target: the nftables package is installed first.

mod boot;
mod diff;
mod ruleset;

use super::{Ctx, Describe, Done, Plan, Step, Tense};
use crate::config;
use crate::root::Root;
use crate::sys::{cmd, fs, nft};
use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use std::fmt;
use std::path::Path;

/// The persisted ruleset, as the target sees it.
pub const FILE: &str = "/etc/nftables.d/olboot.nft";
/// The listing of the table right after olboot last loaded it, with the hash of that ruleset.
pub const RECORD: &str = "/var/lib/olboot/firewall.listing";
/// First words of [`RECORD`]; the ruleset's sha256 follows.
const RECORD_HEAD: &str = "# olboot loaded the ruleset with sha256";
/// Most diff lines a change shows.
const DIFF_LINES: usize = 60;

/// The firewall step.
pub struct Firewall<'a> {
    /// Its config.
    pub cfg: &'a config::Firewall,
}

/// One change of the firewall step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// `nft` is missing on the target: install the nftables package.
    InstallNftables,
    /// Load the ruleset into the running kernel, for the reason given.
    Load(String),
    /// Write [`FILE`]; the description of the difference (a line diff).
    Write(String),
    /// Add the include line to nftables.conf (`true`: create the file).
    Include(bool),
    /// Create the enablement symlinks of nftables.service.
    Enable,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::InstallNftables => f.write_str("install nftables (nft is missing)"),
            Change::Load(why) => write!(
                f,
                "load table {} into the running kernel ({why})",
                ruleset::TABLE
            ),
            Change::Write(what) => write!(f, "write {FILE}: {what}"),
            Change::Include(true) => write!(f, "create {} with {}", boot::CONF, boot::INCLUDE),
            Change::Include(false) => write!(f, "add {} to {}", boot::INCLUDE, boot::CONF),
            Change::Enable => write!(f, "enable {} for boot", boot::SERVICE),
        }
    }
}

fn sha256(text: &str) -> String {
    config::hex(&Sha256::digest(text.as_bytes()))
}

/// The record of a load: the ruleset's hash, then the table's listing.
fn record_text(rendered: &str, listing: &str) -> String {
    format!("{RECORD_HEAD} {}\n{listing}", sha256(rendered))
}

/// The hash and listing of a record, if it is one.
fn parse_record(text: &str) -> Option<(&str, &str)> {
    let (head, listing) = text.split_once('\n')?;
    let hash = head.strip_prefix(RECORD_HEAD)?.trim();
    Some((hash, listing))
}

impl Firewall<'_> {
    /// Whether the target has `nft`: on the live system, on `PATH`; below `--root`, where
    /// Debian's package puts it.
    fn target_has_nft(ctx: &Ctx) -> bool {
        if ctx.root.is_live() {
            return cmd::exists("nft");
        }
        ["/usr/sbin/nft", "/sbin/nft"]
            .iter()
            .any(|p| ctx.root.path(Path::new(p)).is_file())
    }

    /// Why the running kernel needs the ruleset loaded, or `None` when it already runs it.
    fn kernel_drift(ctx: &Ctx, rendered: &str) -> Result<Option<String>> {
        let Some(live) = nft::list_table(ruleset::FAMILY, ruleset::NAME)? else {
            return Ok(Some(format!("table {} is not loaded", ruleset::TABLE)));
        };
        let record = fs::read_optional(&ctx.root.path(Path::new(RECORD)))?;
        let why = match record.as_deref().and_then(parse_record) {
            None => Some(format!("no record of olboot loading it ({RECORD})")),
            Some((hash, _)) if hash != sha256(rendered) => Some("the rules changed".into()),
            Some((_, listing)) if listing != live => Some(format!(
                "the running table was changed outside olboot: {}",
                diff::describe(&diff::lines(&live, listing), DIFF_LINES)
            )),
            Some(_) => None,
        };
        Ok(why)
    }

    /// The include line of nftables.conf, and what that file does to Docker's rules.
    fn plan_conf(root: &Root, plan: &mut Plan<Change>) -> Result<()> {
        let conf_path = root.path(Path::new(boot::CONF));
        let conf = if let Ok(target) = std::fs::read_link(&conf_path) {
            // Managed elsewhere (e.g. linked from olsystem): read it, never rewrite it.
            let target = Path::new("/etc").join(target);
            let text = fs::read_optional(&root.path(&target))?;
            if !text.as_deref().is_some_and(boot::includes_ours) {
                plan.warnings.push(format!(
                    "{} is a symlink to {}, which olboot leaves alone: it must say {} or the \
                     rules are not loaded at boot",
                    boot::CONF,
                    target.display(),
                    boot::INCLUDE
                ));
            }
            text
        } else {
            let text = fs::read_optional(&conf_path)?;
            match text.as_deref() {
                None => plan.changes.push(Change::Include(true)),
                Some(t) if !boot::includes_ours(t) => plan.changes.push(Change::Include(false)),
                Some(_) => {}
            }
            text
        };
        if conf.as_deref().is_some_and(boot::flushes_ruleset)
            && root.path(Path::new("/usr/bin/dockerd")).exists()
        {
            plan.warnings.push(format!(
                "{} runs `flush ruleset`: `systemctl reload` or `restart nftables` also \
                 removes Docker's rules (restart Docker after it); at boot it runs before \
                 Docker and is harmless",
                boot::CONF
            ));
        }
        Ok(())
    }

    /// nftables.service enabled for boot.
    fn plan_service(root: &Root, has_nft: bool, plan: &mut Plan<Change>) -> Result<()> {
        if boot::has_systemd(root) {
            match boot::find_unit(root)? {
                Some(unit) if boot::missing_links(root, &unit).is_empty() => {}
                Some(_) => plan.changes.push(Change::Enable),
                // The package about to be installed brings the unit.
                None if !has_nft => plan.changes.push(Change::Enable),
                None => plan.warnings.push(format!(
                    "{} not found: nothing loads {} at boot",
                    boot::SERVICE,
                    boot::CONF
                )),
            }
            if boot::masked(root) {
                plan.warnings.push(format!(
                    "{} is masked: the rules will not come back after a reboot",
                    boot::SERVICE
                ));
            }
        } else {
            plan.warnings.push(format!(
                "no systemd on the target: make sure {} is loaded at boot",
                boot::CONF
            ));
        }
        Ok(())
    }

    /// Load `rendered` into the kernel and record the listing that results.
    fn load(ctx: &Ctx, rendered: &str, done: &mut Done<Change>) -> Result<()> {
        let existed = nft::list_table(ruleset::FAMILY, ruleset::NAME)?.is_some();
        nft::load(rendered).with_context(|| {
            format!(
                "cannot load table {}; the running rules are as they were",
                ruleset::TABLE
            )
        })?;
        done.record_line(if existed {
            format!("replaced table {} in the running kernel", ruleset::TABLE)
        } else {
            format!("loaded table {} into the running kernel", ruleset::TABLE)
        });
        let listing = nft::list_table(ruleset::FAMILY, ruleset::NAME)?.with_context(|| {
            format!("table {} is missing right after loading it", ruleset::TABLE)
        })?;
        let record = ctx.root.path(Path::new(RECORD));
        fs::write_atomic(&record, record_text(rendered, &listing).as_bytes(), 0o644)
    }
}

impl Step for Firewall<'_> {
    const NAME: &'static str = "firewall";
    type Change = Change;

    fn plan(&self, ctx: &Ctx) -> Result<Plan<Change>> {
        let root = ctx.root;
        let rendered = ruleset::render(self.cfg);
        let mut plan = Plan::default();
        plan.warnings.extend(ruleset::empty_rules(self.cfg));

        let has_nft = Self::target_has_nft(ctx);
        if !has_nft {
            plan.changes.push(Change::InstallNftables);
        }
        if root.is_live() {
            let why = if has_nft {
                Self::kernel_drift(ctx, &rendered)?
            } else {
                Some("nft is not installed yet".into())
            };
            plan.changes.extend(why.map(Change::Load));
        } else if !cmd::exists("nft") {
            plan.warnings
                .push("no nft on this system: the ruleset is written unchecked (nft -c)".into());
        }

        let file = fs::read_optional(&root.path(Path::new(FILE)))?;
        if file.as_deref() != Some(rendered.as_str()) {
            let d = diff::lines(file.as_deref().unwrap_or(""), &rendered);
            plan.changes
                .push(Change::Write(diff::describe(&d, DIFF_LINES)));
        }

        Self::plan_conf(root, &mut plan)?;
        if root.is_live() && has_nft && Path::new(boot::CONF).exists() {
            // nftables.service loads the whole file or nothing: a mistake anywhere in it
            // (or in what it includes) means no rules at all after a reboot, olboot's neither.
            if let Err(e) = nft::check_file(Path::new(boot::CONF)) {
                plan.warnings.push(format!(
                    "{} does not load, so nftables.service would load no rules at boot: {e:#}",
                    boot::CONF
                ));
            }
        }
        Self::plan_service(root, has_nft, &mut plan)?;
        Ok(plan)
    }

    fn apply(&self, ctx: &Ctx, changes: &[Change], done: &mut Done<Change>) -> Result<()> {
        let root = ctx.root;
        let rendered = ruleset::render(self.cfg);
        if changes.contains(&Change::InstallNftables) {
            let mut installed = Done::new(Self::NAME);
            let r = super::packages::plan_install(ctx, &["nftables"])
                .and_then(|c| super::packages::apply_changes(ctx, &c, &mut installed));
            installed.lines.iter().for_each(|l| done.record_line(l));
            r?;
        }
        let rules = changes
            .iter()
            .any(|c| matches!(c, Change::Load(_) | Change::Write(_)));
        if rules && (root.is_live() || cmd::exists("nft")) {
            nft::check(&rendered)
                .context("nft refused the rendered ruleset; nothing was changed")?;
        }
        for change in changes {
            match change {
                Change::InstallNftables => {}
                Change::Load(_) => Self::load(ctx, &rendered, done)?,
                Change::Write(_) => {
                    fs::write_atomic(&root.path(Path::new(FILE)), rendered.as_bytes(), 0o644)?;
                    done.record_line(format!("wrote {FILE}"));
                }
                Change::Include(create) => {
                    let path = root.path(Path::new(boot::CONF));
                    let old = fs::read_optional(&path)?;
                    fs::write_atomic(&path, boot::with_include(old.as_deref()).as_bytes(), 0o755)?;
                    done.record_line(if *create {
                        format!("created {} with {}", boot::CONF, boot::INCLUDE)
                    } else {
                        format!("added {} to {}", boot::INCLUDE, boot::CONF)
                    });
                }
                Change::Enable => {
                    let unit = boot::find_unit(root)?.with_context(|| {
                        format!("{} not found below {}", boot::SERVICE, root.dir().display())
                    })?;
                    for link in boot::enable(root, &unit)? {
                        done.record_line(format!(
                            "enabled {} ({} -> {})",
                            boot::SERVICE,
                            link.display(),
                            unit.path.display()
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

// Transitional: both tenses from the plan text until this step describes its changes itself.
impl Describe for Change {
    fn describe(&self, _tense: Tense) -> String {
        self.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips() {
        let r = record_text("ruleset", "table inet olboot {\n}\n");
        let (hash, listing) = parse_record(&r).expect("record");
        assert_eq!(hash, sha256("ruleset"));
        assert_eq!(listing, "table inet olboot {\n}\n");
        assert!(parse_record("table inet olboot {\n}\n").is_none());
    }

    #[test]
    fn changes_read_as_imperatives() {
        assert_eq!(
            Change::Include(false).to_string(),
            "add include \"/etc/nftables.d/*.nft\" to /etc/nftables.conf"
        );
        assert_eq!(
            Change::Load("table inet olboot is not loaded".into()).to_string(),
            "load table inet olboot into the running kernel (table inet olboot is not loaded)"
        );
        assert_eq!(
            Change::Enable.to_string(),
            "enable nftables.service for boot"
        );
    }
}
