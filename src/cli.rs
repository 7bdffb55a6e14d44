//! The command line: what each subcommand does, and its exit code.

use crate::config::{self, Config, Invalid};
use crate::engine::{self, Mode, StepName};
use crate::report::{self, Outcome, Report};
use crate::root::Root;
use crate::steps::Ctx;
use crate::tuning::Tuning;
use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// Exit code: success, converged (`plan`: nothing to change).
pub const EXIT_OK: u8 = 0;
/// Exit code: a step failed.
pub const EXIT_FAILED: u8 = 1;
/// Exit code: the config or the command line is invalid; nothing was touched.
pub const EXIT_INVALID: u8 = 2;
/// Exit code: `plan` found pending changes.
pub const EXIT_PENDING: u8 = 3;

/// Turn a fresh VM into a working member of the Open Library fleet.
///
/// Steps, always in this order: firewall, volumes, opt, packages, links.
/// Exit codes: 0 converged, 1 a step failed, 2 invalid config or command line,
/// 3 (plan) changes pending.
#[derive(Debug, Parser)]
#[command(name = "olboot", version)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Converge this machine to the config.
    Apply {
        #[command(flatten)]
        target: Target,
        /// Print the report as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Say what apply would change, as a JSON report; change nothing (exit 3: changes pending).
    Plan {
        #[command(flatten)]
        target: Target,
    },
    /// Check a config (the whole fleet unless --host is given); change nothing.
    Validate {
        /// Config: a path, `-` for stdin, or an http(s):// URL.
        #[arg(short, long, default_value = "/etc/olboot.yaml", value_name = "CONFIG")]
        config: String,
        /// Check only the fleet entry of this host.
        #[arg(long, value_name = "NAME")]
        host: Option<String>,
    },
    /// Print the last apply's report.
    Status {
        /// Read the report of the system mounted at DIR.
        #[arg(long, value_name = "DIR")]
        root: Option<PathBuf>,
        /// Print it as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Archive a legacy /opt for the archive store (zstd tar) and print its sha256.
    Pack {
        /// The tree to archive.
        dir: PathBuf,
        /// The archive to write (FILE.tar.zst); FILE.tar.zst.sha256 is written beside it.
        #[arg(short, value_name = "FILE")]
        output: PathBuf,
    },
}

#[derive(Debug, Args)]
struct Target {
    /// Config: a path, `-` for stdin, or an http(s):// URL.
    #[arg(short, long, default_value = "/etc/olboot.yaml", value_name = "CONFIG")]
    config: String,
    /// Work on the system mounted at DIR (rescue boot): files below DIR, packages installed in
    /// a chroot, firewall written but not loaded.
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
    /// Use the fleet entry of NAME instead of this machine's host name.
    #[arg(long, value_name = "NAME")]
    host: Option<String>,
    /// Run only these steps (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',', value_name = "STEP,...")]
    only: Vec<StepName>,
}

/// Run the command line and return the process exit code.
pub fn main(cli: Cli) -> u8 {
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            let code = if e.downcast_ref::<Invalid>().is_some() {
                EXIT_INVALID
            } else {
                EXIT_FAILED
            };
            log::error!("{e:#}");
            code
        }
    }
}

fn dispatch(cli: Cli) -> Result<u8> {
    match cli.command {
        Command::Apply { target, json } => converge(target, Mode::Apply, json),
        Command::Plan { target } => converge(target, Mode::Plan, true),
        Command::Validate { config, host } => validate(&config, host.as_deref()),
        Command::Status { root, json } => status(root, json),
        Command::Pack { dir, output } => {
            crate::archive::pack::pack(&dir, &output)?;
            Ok(EXIT_OK)
        }
    }
}

fn root_of(dir: Option<PathBuf>) -> Result<Root> {
    match dir {
        None => Ok(Root::live()),
        Some(d) => {
            let d = std::fs::canonicalize(&d)
                .map_err(|e| Invalid(format!("--root {}: {e}", d.display())))?;
            if !d.is_dir() {
                return Err(Invalid(format!("--root {}: not a directory", d.display())).into());
            }
            Ok(Root::at(d))
        }
    }
}

/// The host name: `--host`, else the target's `/etc/hostname` under `--root`, else this
/// machine's.
fn host_of(host: Option<String>, root: &Root) -> Result<String> {
    if let Some(h) = host {
        return Ok(h);
    }
    if !root.is_live() {
        let p = root.path(std::path::Path::new("/etc/hostname"));
        return std::fs::read_to_string(&p)
            .map(|s| s.trim().split('.').next().unwrap_or("").to_string())
            .map_err(|e| Invalid(format!("{}: {e} (give --host)", p.display())).into());
    }
    config::machine_hostname()
}

fn converge(t: Target, mode: Mode, json: bool) -> Result<u8> {
    let root = root_of(t.root)?;
    let cfg = Config::load(&t.config)?;
    let host = host_of(t.host, &root)?;
    let host_cfg = cfg.for_host(&host)?;
    let _lock = match mode {
        Mode::Apply => Some(crate::sys::fs::lock(&root)?),
        Mode::Plan => None,
    };
    let tuning = Tuning::from_env();
    let ctx = Ctx {
        root: &root,
        tuning: &tuning,
    };
    log::info!(
        "{} for host {host} from {}{}",
        if mode == Mode::Apply { "apply" } else { "plan" },
        cfg.source,
        if root.is_live() {
            String::new()
        } else {
            format!(" on root {}", root.dir().display())
        }
    );
    let started = report::now();
    let steps = engine::run(&host_cfg, &ctx, mode, &t.only);
    let result = Report::summarize(&steps);
    let rep = Report {
        version: 1,
        host,
        config_sha256: cfg.sha256.clone(),
        started,
        finished: report::now(),
        result,
        steps,
    };
    if mode == Mode::Apply {
        rep.write(&root)?;
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&rep).context("cannot encode the report")?
        );
    } else {
        print!("{}", rep.human());
    }
    Ok(match result {
        Outcome::Failed => EXIT_FAILED,
        Outcome::Pending => EXIT_PENDING,
        _ => EXIT_OK,
    })
}

fn validate(source: &str, host: Option<&str>) -> Result<u8> {
    let cfg = Config::load(source)?;
    match host {
        Some(h) => {
            cfg.for_host(h)?;
            println!("{source}: valid for host {h}");
        }
        None => {
            let entries = cfg.validate_all()?;
            println!(
                "{source}: valid ({} entries: {})",
                entries.len(),
                entries.join(", ")
            );
        }
    }
    Ok(EXIT_OK)
}

fn status(root: Option<PathBuf>, json: bool) -> Result<u8> {
    let root = root_of(root)?;
    let rep = Report::read(&root)?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&rep).context("cannot encode the report")?
        );
    } else {
        print!("{}", rep.human());
    }
    Ok(if rep.result == Outcome::Failed {
        EXIT_FAILED
    } else {
        EXIT_OK
    })
}
