//! The report of a run: what each step found, did or would do. `apply` writes it to
//! `/var/lib/olboot/report.json` (below `--root`); `status` reads it back.

use crate::root::Root;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Where the report lives on the target system.
pub const PATH: &str = "/var/lib/olboot/report.json";

/// How one step (or the whole run) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Nothing differed from the config.
    Unchanged,
    /// Changes were made.
    Changed,
    /// `plan` only: changes would be made.
    Pending,
    /// The step failed; `error` says why.
    Failed,
    /// The step did not run; `error` says why.
    Skipped,
}

/// One step's part of the report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepReport {
    /// Step name.
    pub name: String,
    /// How it ended.
    pub result: Outcome,
    /// Wall time of observe + apply.
    pub duration_ms: u64,
    /// When the step started, RFC 3339, UTC, to the millisecond (steps may overlap); absent
    /// for a step that did not run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<String>,
    /// When the step finished, as `started`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<String>,
    /// Changes made (`apply`) or that would be made (`plan`).
    pub changes: Vec<String>,
    /// Things an operator should know that olboot does not change.
    #[serde(default)]
    pub warnings: Vec<String>,
    /// Why the step failed or was skipped.
    pub error: Option<String>,
}

/// The whole report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// Format version (1).
    pub version: u32,
    /// The host name whose fleet entry was used.
    pub host: String,
    /// sha256 of the config file's bytes.
    pub config_sha256: String,
    /// Start time, RFC 3339, UTC.
    pub started: String,
    /// End time, RFC 3339, UTC.
    pub finished: String,
    /// `unchanged`, `changed` (`pending` for plan) or `failed`.
    pub result: Outcome,
    /// The steps, in the order they ran.
    pub steps: Vec<StepReport>,
}

impl Report {
    /// The run's result from its steps: failed if one failed, else changed/pending if one did.
    pub fn summarize(steps: &[StepReport]) -> Outcome {
        let any = |o: Outcome| steps.iter().any(|s| s.result == o);
        if any(Outcome::Failed) {
            Outcome::Failed
        } else if any(Outcome::Changed) {
            Outcome::Changed
        } else if any(Outcome::Pending) {
            Outcome::Pending
        } else {
            Outcome::Unchanged
        }
    }

    /// The report's path on this machine.
    pub fn path(root: &Root) -> Result<PathBuf> {
        root.path(Path::new(PATH))
    }

    /// Write the report atomically below `root`.
    pub fn write(&self, root: &Root) -> Result<()> {
        let mut json = serde_json::to_vec_pretty(self).context("cannot encode the report")?;
        json.push(b'\n');
        crate::sys::fs::write_atomic(&Report::path(root)?, &json, 0o644)
    }

    /// Read the last report below `root`.
    pub fn read(root: &Root) -> Result<Report> {
        let path = Report::path(root)?;
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {} (has olboot apply run?)", path.display()))?;
        serde_json::from_str(&text)
            .with_context(|| format!("{}: not an olboot report", path.display()))
    }

    /// Print the report on stdout: JSON, or [`Report::human`].
    pub fn print(&self, json: bool) -> Result<()> {
        if json {
            let text = serde_json::to_string_pretty(self).context("cannot encode the report")?;
            println!("{text}");
        } else {
            print!("{}", self.human());
        }
        Ok(())
    }

    /// A few lines for a person: one per step, with its changes and problems below it.
    pub fn human(&self) -> String {
        let mut s = format!(
            "olboot on {}: {} (started {}, finished {})\n",
            self.host,
            word(self.result),
            self.started,
            self.finished
        );
        for st in &self.steps {
            s.push_str(&format!(
                "  {:<9} {:<9} {:>6} ms\n",
                st.name,
                word(st.result),
                st.duration_ms
            ));
            for c in &st.changes {
                s.push_str(&format!("      - {c}\n"));
            }
            for w in &st.warnings {
                s.push_str(&format!("      ! {w}\n"));
            }
            match (&st.error, st.result) {
                (Some(e), Outcome::Skipped) => s.push_str(&format!("      ({e})\n")),
                (Some(e), _) => s.push_str(&format!("      error: {e}\n")),
                (None, _) => {}
            }
        }
        s
    }
}

fn word(o: Outcome) -> &'static str {
    match o {
        Outcome::Unchanged => "unchanged",
        Outcome::Changed => "changed",
        Outcome::Pending => "pending",
        Outcome::Failed => "failed",
        Outcome::Skipped => "skipped",
    }
}

/// The current time as RFC 3339 in UTC, to the second.
pub fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// The current time as RFC 3339 in UTC, to the millisecond.
pub fn now_ms() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}
