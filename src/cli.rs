//! The command line: what each subcommand does, and its exit code.

use crate::config::{self, Config, Invalid};
use crate::engine::{self, Mode, StepName};
use crate::report::{self, Outcome, Report};
use crate::root::Root;
use crate::steps::Ctx;
use crate::tuning::Tuning;
use anyhow::Result;
use std::path::PathBuf;

/// Exit code: success, converged (`plan`: nothing to change).
pub const EXIT_OK: u8 = 0;
/// Exit code: a step failed.
pub const EXIT_FAILED: u8 = 1;
/// Exit code: the config or the command line is invalid; nothing was touched.
pub const EXIT_INVALID: u8 = 2;
/// Exit code: `plan` found pending changes.
pub const EXIT_PENDING: u8 = 3;

const HELP: &str = "\
olboot: turn a fresh VM into a working member of the Open Library fleet.

Steps, always in this order: firewall, volumes, opt, packages, links.

Usage: olboot <COMMAND> [OPTIONS]

Commands:
  apply     Converge this machine to the config
  plan      Say what apply would change, as a JSON report; change nothing
  validate  Check a config (the whole fleet unless --host is given); change nothing
  status    Print the last apply's report
  pack      Archive a legacy /opt for the archive store and print its sha256

Exit codes: 0 converged, 1 a step failed, 2 invalid config or command line,
3 (plan) changes pending.

Run `olboot <COMMAND> --help` for its options. Logs go to stderr (RUST_LOG=debug for more).
";

const TARGET_OPTIONS: &str = "\
  -c, --config CONFIG   A path, `-` for stdin, or an http(s):// URL [default: /etc/olboot.yaml]
      --root DIR        Work on the system mounted at DIR (rescue boot): files below DIR,
                        packages installed in a chroot, firewall written but not loaded
      --host NAME       Use the fleet entry of NAME instead of this machine's host name
      --only STEP,...   Run only these steps: firewall, volumes, opt, packages, links
";

fn help(cmd: &str) -> String {
    match cmd {
        "apply" => format!(
            "Converge this machine to the config.\n\nUsage: olboot apply [OPTIONS]\n\nOptions:\n{TARGET_OPTIONS}      --json            Print the report as JSON on stdout\n  -h, --help            Print help\n"
        ),
        "plan" => format!(
            "Say what apply would change, as a JSON report on stdout; change nothing.\nExit code 3: changes are pending.\n\nUsage: olboot plan [OPTIONS]\n\nOptions:\n{TARGET_OPTIONS}  -h, --help            Print help\n"
        ),
        "validate" => "Check a config (the whole fleet unless --host is given); change nothing.\n\nUsage: olboot validate [OPTIONS]\n\nOptions:\n  -c, --config CONFIG   A path, `-` for stdin, or an http(s):// URL [default: /etc/olboot.yaml]\n      --host NAME       Check only the fleet entry of this host\n  -h, --help            Print help\n".into(),
        "status" => "Print the last apply's report.\n\nUsage: olboot status [OPTIONS]\n\nOptions:\n      --root DIR        Read the report of the system mounted at DIR\n      --json            Print it as JSON\n  -h, --help            Print help\n".into(),
        "pack" => "Archive a legacy /opt for the archive store (zstd tar: numeric owners, modes, mtimes,\nsymlinks and hard links, stable order); print its sha256 and write FILE.sha256 beside it.\n\nUsage: olboot pack DIR -o FILE\n\nOptions:\n  -o FILE               The archive to write (FILE.tar.zst)\n  -h, --help            Print help\n".into(),
        _ => HELP.into(),
    }
}

/// What the command line asks for.
#[derive(Debug)]
pub enum Cli {
    /// Run a command.
    Run(Command),
    /// Print this text on stdout and exit 0 (`--help`, `--version`).
    Print(String),
}

/// A command and its options.
#[derive(Debug)]
pub enum Command {
    /// `olboot apply`.
    Apply {
        /// Config source, root, host and steps.
        target: Target,
        /// Print the report as JSON.
        json: bool,
    },
    /// `olboot plan`.
    Plan {
        /// Config source, root, host and steps.
        target: Target,
    },
    /// `olboot validate`.
    Validate {
        /// Config source.
        config: String,
        /// Check only this host's entry.
        host: Option<String>,
    },
    /// `olboot status`.
    Status {
        /// Read the report below this root.
        root: Option<PathBuf>,
        /// Print it as JSON.
        json: bool,
    },
    /// `olboot pack`.
    Pack {
        /// The tree to archive.
        dir: PathBuf,
        /// The archive to write.
        output: PathBuf,
    },
}

/// The options shared by `apply` and `plan`.
#[derive(Debug)]
pub struct Target {
    config: String,
    root: Option<PathBuf>,
    host: Option<String>,
    only: Vec<StepName>,
}

const DEFAULT_CONFIG: &str = "/etc/olboot.yaml";

/// Parse the arguments (without the program name). The error is the one-line usage error.
pub fn parse(args: impl IntoIterator<Item = std::ffi::OsString>) -> Result<Cli, String> {
    use lexopt::prelude::*;
    let mut p = lexopt::Parser::from_args(args);
    let err = |e: lexopt::Error| e.to_string();
    let cmd = match p.next().map_err(err)? {
        Some(Value(v)) => v.string().map_err(err)?,
        Some(Long("help") | Short('h')) | None => return Ok(Cli::Print(HELP.into())),
        Some(Long("version") | Short('V')) => {
            return Ok(Cli::Print(format!(
                "olboot {}\n",
                env!("CARGO_PKG_VERSION")
            )))
        }
        Some(other) => return Err(other.unexpected().to_string()),
    };
    if !["apply", "plan", "validate", "status", "pack"].contains(&cmd.as_str()) {
        return Err(format!(
            "unknown command {cmd:?} (olboot --help lists them)"
        ));
    }
    let mut config = DEFAULT_CONFIG.to_string();
    let (mut root, mut host, mut only, mut json) = (None, None, Vec::new(), false);
    let (mut dir, mut output) = (None, None);
    let takes = |opt: &str| -> bool {
        match opt {
            "config" | "host" => matches!(cmd.as_str(), "apply" | "plan" | "validate"),
            "root" => matches!(cmd.as_str(), "apply" | "plan" | "status"),
            "only" => matches!(cmd.as_str(), "apply" | "plan"),
            "json" => matches!(cmd.as_str(), "apply" | "status"),
            "o" | "dir" => cmd == "pack",
            _ => false,
        }
    };
    while let Some(arg) = p.next().map_err(err)? {
        let name = match &arg {
            Short('h') | Long("help") => return Ok(Cli::Print(help(&cmd))),
            Short('c') | Long("config") => "config",
            Long("root") => "root",
            Long("host") => "host",
            Long("only") => "only",
            Long("json") => "json",
            Short('o') => "o",
            Value(_) => "dir",
            _ => "",
        };
        if !takes(name) {
            return Err(format!("{} (olboot {cmd} --help)", arg.unexpected()));
        }
        match arg {
            Value(v) if dir.is_none() => dir = Some(PathBuf::from(v)),
            Value(v) => return Err(format!("unexpected argument {v:?} (olboot {cmd} --help)")),
            Short('c') | Long("config") => {
                config = p.value().map_err(err)?.string().map_err(err)?
            }
            Long("root") => root = Some(PathBuf::from(p.value().map_err(err)?)),
            Long("host") => host = Some(p.value().map_err(err)?.string().map_err(err)?),
            Long("only") => {
                for s in p.value().map_err(err)?.string().map_err(err)?.split(',') {
                    only.push(s.parse::<StepName>()?);
                }
            }
            Long("json") => json = true,
            _ => output = Some(PathBuf::from(p.value().map_err(err)?)),
        }
    }
    let target = || Target {
        config: config.clone(),
        root: root.clone(),
        host: host.clone(),
        only: only.clone(),
    };
    Ok(Cli::Run(match cmd.as_str() {
        "apply" => Command::Apply {
            target: target(),
            json,
        },
        "plan" => Command::Plan { target: target() },
        "validate" => Command::Validate { config, host },
        "status" => Command::Status { root, json },
        _ => Command::Pack {
            dir: dir.ok_or("pack needs the directory to archive (olboot pack DIR -o FILE)")?,
            output: output.ok_or("pack needs -o FILE")?,
        },
    }))
}

/// Run the command line and return the process exit code.
pub fn main(cmd: Command) -> u8 {
    match dispatch(cmd) {
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

fn dispatch(cmd: Command) -> Result<u8> {
    match cmd {
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
        Mode::Apply => {
            crate::sys::signal::install();
            Some(crate::sys::fs::lock(&root)?)
        }
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
    rep.print(json)?;
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
    rep.print(json)?;
    Ok(if rep.result == Outcome::Failed {
        EXIT_FAILED
    } else {
        EXIT_OK
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Result<Cli, String> {
        parse(s.split_whitespace().map(std::ffi::OsString::from))
    }

    #[test]
    fn parses_every_command() {
        let Ok(Cli::Run(Command::Apply { target, json: true })) =
            args("apply --json -c - --root /mnt --host ol-web1 --only opt,links")
        else {
            panic!("apply not parsed");
        };
        assert_eq!(target.config, "-");
        assert_eq!(target.root, Some(PathBuf::from("/mnt")));
        assert_eq!(target.host.as_deref(), Some("ol-web1"));
        assert_eq!(target.only, [StepName::Opt, StepName::Links]);
        let Ok(Cli::Run(Command::Plan { target })) = args("plan") else {
            panic!()
        };
        assert_eq!(target.config, DEFAULT_CONFIG);
        assert!(matches!(
            args("validate --host x"),
            Ok(Cli::Run(Command::Validate { host: Some(_), .. }))
        ));
        assert!(matches!(
            args("status --json"),
            Ok(Cli::Run(Command::Status { json: true, .. }))
        ));
        let Ok(Cli::Run(Command::Pack { dir, output })) = args("pack /opt -o o.tar.zst") else {
            panic!()
        };
        assert_eq!(
            (dir, output),
            (PathBuf::from("/opt"), PathBuf::from("o.tar.zst"))
        );
        assert!(matches!(args("--version"), Ok(Cli::Print(v)) if v.starts_with("olboot ")));
        assert!(matches!(args("pack --help"), Ok(Cli::Print(h)) if h.contains("-o FILE")));
    }

    #[test]
    fn refuses_what_a_command_does_not_take() {
        for bad in [
            "",
            "frob",
            "apply extra",
            "status --only links",
            "validate --root /",
            "plan --json",
            "pack /opt",
            "pack -o x",
            "pack a b -o x",
            "apply --only nope",
            "apply -c",
        ] {
            if bad.is_empty() {
                assert!(
                    matches!(args(bad), Ok(Cli::Print(_))),
                    "no command prints the help"
                );
                continue;
            }
            assert!(args(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
