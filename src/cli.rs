//! The command line: what each subcommand does, and its exit code. The options themselves
//! are defined in [`flags`]; reading the config from its source in [`load`].

mod flags;
mod load;

use crate::config::{Config, Invalid};
use crate::engine::{self, Mode, StepName};
use crate::report::{self, Outcome, Report};
use crate::root::Root;
use crate::steps::Ctx;
use crate::tuning::Tuning;
use anyhow::{Context, Result};
use std::path::PathBuf;

/// Exit code: success, converged (`plan`: nothing to change).
pub const EXIT_OK: u8 = 0;
/// Exit code: a step failed.
pub const EXIT_FAILED: u8 = 1;
/// Exit code: the config or the command line is invalid; nothing was touched.
pub const EXIT_INVALID: u8 = 2;
/// Exit code: `plan` found pending changes.
pub const EXIT_PENDING: u8 = 3;

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
        /// Credentials for a config URL.
        auth_file: Option<PathBuf>,
    },
    /// `olboot status`.
    Status {
        /// Read the report below this root.
        root: Option<PathBuf>,
        /// Print it as JSON.
        json: bool,
    },
    /// `olboot pack`.
    Pack(crate::archive::pack::Options),
}

/// The options shared by `apply` and `plan`.
#[derive(Debug)]
pub struct Target {
    config: String,
    root: Option<PathBuf>,
    host: Option<String>,
    only: Vec<StepName>,
    auth_file: Option<PathBuf>,
}

/// Parse the arguments (without the program name). The error is the one-line usage error.
pub fn parse(args: impl IntoIterator<Item = std::ffi::OsString>) -> Result<Cli, String> {
    let (command, a) = match flags::parse(args)? {
        flags::Parsed::Print(text) => return Ok(Cli::Print(text)),
        flags::Parsed::Run { command, args } => (command.name, *args),
    };
    let config = a.config.unwrap_or_else(|| flags::DEFAULT_CONFIG.into());
    let target = || Target {
        config: config.clone(),
        root: a.root.clone(),
        host: a.host.clone(),
        only: a.only.clone(),
        auth_file: a.auth_file.clone(),
    };
    Ok(Cli::Run(match command {
        "apply" => Command::Apply {
            target: target(),
            json: a.json,
        },
        "plan" => Command::Plan { target: target() },
        "validate" => Command::Validate {
            config,
            host: a.host,
            auth_file: a.auth_file,
        },
        "status" => Command::Status {
            root: a.root,
            json: a.json,
        },
        _ => Command::Pack(crate::archive::pack::Options {
            dir: a
                .dir
                .ok_or("pack needs the directory to archive (olboot pack DIR -o FILE)")?,
            output: a.output.ok_or("pack needs -o FILE")?,
            excludes: a.excludes,
            allow_changing: a.allow_changing,
            json: a.json,
            recipients: a.recipients,
        }),
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
        Command::Validate {
            config,
            host,
            auth_file,
        } => validate(&config, host.as_deref(), auth_file.as_deref()),
        Command::Status { root, json } => status(root, json),
        Command::Pack(o) => {
            crate::archive::pack::pack(&o)?;
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
/// machine's. Only a fleet file needs one (to pick its entry): a single-host config under a
/// root without `/etc/hostname` is reported as `(single host)`.
fn host_of(host: Option<String>, root: &Root, cfg: &Config) -> Result<String> {
    if let Some(h) = host {
        return Ok(h);
    }
    if root.is_live() {
        return machine_hostname();
    }
    let p = root.resolve(std::path::Path::new("/etc/hostname"))?;
    match std::fs::read_to_string(&p) {
        Ok(s) => Ok(short_name(s.trim()).to_string()),
        Err(_) if !cfg.is_fleet() => Ok(SINGLE_HOST.into()),
        Err(e) => Err(Invalid(format!("{}: {e} (give --host)", p.display())).into()),
    }
}

/// The host name a single-host config is reported under when none can be read.
const SINGLE_HOST: &str = "(single host)";

/// The fleet names hosts by their short name; cloud-init may set an FQDN.
fn short_name(name: &str) -> &str {
    name.split('.').next().unwrap_or(name)
}

/// The host name of the running machine.
fn machine_hostname() -> Result<String> {
    let uts = rustix::system::uname();
    let name = uts.nodename().to_str().context("host name is not UTF-8")?;
    Ok(short_name(name).to_string())
}

fn converge(t: Target, mode: Mode, json: bool) -> Result<u8> {
    let root = root_of(t.root)?;
    let cfg = load::config(&t.config, t.auth_file.as_deref())?;
    let host = host_of(t.host, &root, &cfg)?;
    let host_cfg = cfg.for_host(&host)?;
    // The root-only key and credential files: refused before anything is touched.
    crate::store::check(&host_cfg, &root)?;
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
    // A signal stopped the run: whatever the steps that had finished say, the host has not
    // converged, and a service manager must see it fail.
    let result = match crate::sys::signal::received() {
        Some(_) => Outcome::Failed,
        None => Report::summarize(&steps),
    };
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

fn validate(source: &str, host: Option<&str>, auth_file: Option<&std::path::Path>) -> Result<u8> {
    let cfg = load::config(source, auth_file)?;
    // As the config names itself in messages: a URL without its query and user-info.
    let source = &cfg.source;
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
        assert_eq!(target.config, flags::DEFAULT_CONFIG);
        assert!(matches!(
            args("validate --host x"),
            Ok(Cli::Run(Command::Validate { host: Some(_), .. }))
        ));
        assert!(matches!(
            args("status --json"),
            Ok(Cli::Run(Command::Status { json: true, .. }))
        ));
        let Ok(Cli::Run(Command::Pack(o))) = args("pack /opt -o o.tar.zst") else {
            panic!()
        };
        assert_eq!(
            (o.dir, o.output, o.excludes.len(), o.allow_changing, o.json),
            (
                PathBuf::from("/opt"),
                PathBuf::from("o.tar.zst"),
                0,
                false,
                false
            )
        );
        let a = "pack /opt -o o --exclude *.pyc --exclude /petabox/ --allow-changing --json";
        let Ok(Cli::Run(Command::Pack(o))) = args(a) else {
            panic!()
        };
        assert_eq!(o.excludes, ["*.pyc", "/petabox/"]);
        assert!(o.allow_changing && o.json);
        assert!(o.recipients.is_empty());
        let e = args("pack /opt -o o --recipient age1nope").unwrap_err();
        assert!(
            e.starts_with("--recipient: \"age1nope\" is not an age recipient"),
            "{e}"
        );
        assert!(args("status --recipient age1x").is_err());
        let Ok(Cli::Run(Command::Validate { auth_file, .. })) =
            args("validate -c https://x/c.yaml --auth-file /etc/a")
        else {
            panic!()
        };
        assert_eq!(auth_file, Some(PathBuf::from("/etc/a")));
        assert!(matches!(args("--version"), Ok(Cli::Print(v)) if v.starts_with("olboot ")));
        assert!(
            matches!(args("pack --help"), Ok(Cli::Print(h)) if h.contains("-o, --output FILE"))
        );
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
            "pack a -o x --exclude /",
            "apply --allow-changing",
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
