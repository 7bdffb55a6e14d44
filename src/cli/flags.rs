//! The commands and options, each defined once: its name, its help text and how its value is
//! parsed. The parser and every `--help` page are generated from these tables, so the help,
//! the option table and the parsing cannot drift apart (ripgrep's `flags/defs.rs` is the model,
//! on `lexopt` to keep the binary small).

use crate::engine::StepName;
use std::ffi::OsString;
use std::path::PathBuf;

/// A subcommand.
pub struct CommandDef {
    /// Its name on the command line.
    pub name: &'static str,
    /// One line for the command list.
    pub about: &'static str,
    /// More lines for its own help page (may be empty).
    pub details: &'static str,
    /// The positional argument it takes, if any (`DIR` for `pack`).
    pub positional: Option<&'static str>,
}

/// The subcommands, in the order help lists them.
pub const COMMANDS: &[CommandDef] = &[
    CommandDef {
        name: "apply",
        about: "Converge this machine to the config",
        details: "",
        positional: None,
    },
    CommandDef {
        name: "plan",
        about: "Say what apply would change, as a JSON report; change nothing",
        details: "Exit code 3: changes are pending.",
        positional: None,
    },
    CommandDef {
        name: "validate",
        about: "Check a config (the whole fleet unless --host is given); change nothing",
        details: "",
        positional: None,
    },
    CommandDef {
        name: "status",
        about: "Print the last apply's report",
        details: "",
        positional: None,
    },
    CommandDef {
        name: "pack",
        about: "Archive a legacy /opt for the archive store and print its sha256",
        details:
            "A zstd tar of DIR (numeric owners, modes, ns mtimes, symlinks, hard links, sparse\n\
                  files, xattrs, ACLs, capabilities; stable order); FILE.sha256 is written beside\n\
                  it in sha256sum format. A summary (sizes per top-level directory, what was\n\
                  skipped, which files mention each top-level directory) goes to stderr.",
        positional: Some("DIR"),
    },
];

/// Everything the command line can say, before it is checked against the command.
#[derive(Debug, Default, Clone)]
pub struct Args {
    /// `-c`: a path, `-` or a URL.
    pub config: Option<String>,
    /// `--root`.
    pub root: Option<PathBuf>,
    /// `--host`.
    pub host: Option<String>,
    /// `--only`, in the order given.
    pub only: Vec<StepName>,
    /// `--json`.
    pub json: bool,
    /// `pack -o`.
    pub output: Option<PathBuf>,
    /// `pack DIR`.
    pub dir: Option<PathBuf>,
    /// `pack --exclude`, in the order given.
    pub excludes: Vec<String>,
    /// `pack --allow-changing`.
    pub allow_changing: bool,
    /// `--auth-file`: credentials for a config URL.
    pub auth_file: Option<PathBuf>,
    /// `pack --recipient` and `--recipients-file`, parsed.
    pub recipients: crate::archive::crypt::Recipients,
}

/// How an option's value (if it takes one) lands in [`Args`].
type Setter = fn(&mut Args, OsString) -> Result<(), String>;

/// One option.
pub struct Flag {
    /// `--long`.
    pub long: &'static str,
    /// `-s`, if it has one.
    pub short: Option<char>,
    /// The value's name in help (`CONFIG`), or `None` for a switch.
    pub value: Option<&'static str>,
    /// What it does; lines after the first are indented under it.
    pub doc: &'static str,
    /// The commands that take it.
    pub commands: &'static [&'static str],
    /// Store the value (a switch gets an empty one).
    set: Setter,
}

fn utf8(v: OsString) -> Result<String, String> {
    v.into_string()
        .map_err(|v| format!("{v:?} is not valid UTF-8"))
}

/// The default of `-c`.
pub const DEFAULT_CONFIG: &str = "/etc/olboot.yaml";

/// The options, in the order help lists them.
pub const FLAGS: &[Flag] = &[
    Flag {
        long: "config",
        short: Some('c'),
        value: Some("CONFIG"),
        doc: "A path, `-` for stdin, or an http(s):// URL [default: /etc/olboot.yaml]",
        commands: &["apply", "plan", "validate"],
        set: |a, v| {
            a.config = Some(utf8(v)?);
            Ok(())
        },
    },
    Flag {
        long: "root",
        short: None,
        value: Some("DIR"),
        doc: "Work on the system mounted at DIR (rescue boot): files below DIR,\n\
              packages installed in a chroot, firewall written but not loaded",
        commands: &["apply", "plan", "status"],
        set: |a, v| {
            a.root = Some(PathBuf::from(v));
            Ok(())
        },
    },
    Flag {
        long: "host",
        short: None,
        value: Some("NAME"),
        doc: "Use (validate: check only) the fleet entry of NAME instead of this\n\
              machine's host name",
        commands: &["apply", "plan", "validate"],
        set: |a, v| {
            a.host = Some(utf8(v)?);
            Ok(())
        },
    },
    Flag {
        long: "only",
        short: None,
        value: Some("STEP,..."),
        doc: "Run only these steps: firewall, volumes, opt, packages, links",
        commands: &["apply", "plan"],
        set: |a, v| {
            for s in utf8(v)?.split(',') {
                a.only.push(s.parse::<StepName>()?);
            }
            Ok(())
        },
    },
    Flag {
        long: "json",
        short: None,
        value: None,
        doc: "Print the report (pack: the summary) as JSON on stdout",
        commands: &["apply", "status", "pack"],
        set: |a, _| {
            a.json = true;
            Ok(())
        },
    },
    Flag {
        long: "output",
        short: Some('o'),
        value: Some("FILE"),
        doc: "The archive to write (FILE.tar.zst)",
        commands: &["pack"],
        set: |a, v| {
            a.output = Some(PathBuf::from(v));
            Ok(())
        },
    },
    Flag {
        long: "exclude",
        short: None,
        value: Some("PATTERN"),
        doc: "Leave out what matches (repeatable; rsync-like: /x at the root only,\n\
              x/ directories only, *, ?, **)",
        commands: &["pack"],
        set: |a, v| {
            let v = utf8(v)?;
            crate::archive::pack::exclude::Pattern::new(&v)?;
            a.excludes.push(v);
            Ok(())
        },
    },
    Flag {
        long: "allow-changing",
        short: None,
        value: None,
        doc: "Store a file that keeps changing while read as last read (a warning)\n\
              instead of failing",
        commands: &["pack"],
        set: |a, _| {
            a.allow_changing = true;
            Ok(())
        },
    },
    Flag {
        long: "recipient",
        short: None,
        value: Some("age1..."),
        doc: "Encrypt the archive with age to this public key (repeatable)",
        commands: &["pack"],
        set: |a, v| {
            let key = utf8(v)?;
            a.recipients
                .add(&key, "--recipient")
                .map_err(|e| format!("{e:#}"))
        },
    },
    Flag {
        long: "recipients-file",
        short: None,
        value: Some("FILE"),
        doc: "Encrypt to every age1... key in FILE (repeatable)",
        commands: &["pack"],
        set: |a, v| {
            a.recipients
                .add_file(std::path::Path::new(&v))
                .map_err(|e| format!("--recipients-file: {e:#}"))
        },
    },
    Flag {
        long: "auth-file",
        short: None,
        value: Some("FILE"),
        doc: "A root-only file with one header line, sent with an http(s) config URL",
        commands: &["apply", "plan", "validate"],
        set: |a, v| {
            a.auth_file = Some(PathBuf::from(v));
            Ok(())
        },
    },
];

/// What the command line asks for, parsed but not yet turned into a command.
pub enum Parsed {
    /// Run `command` with `args`.
    Run {
        /// The command's name, one of [`COMMANDS`].
        command: &'static CommandDef,
        /// Its options (boxed: they outweigh the other variant by far).
        args: Box<Args>,
    },
    /// Print this text and exit 0 (`--help`, `--version`).
    Print(String),
}

/// Parse the arguments (without the program name) against the tables above.
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Parsed, String> {
    use lexopt::prelude::*;
    let mut p = lexopt::Parser::from_args(args);
    let err = |e: lexopt::Error| e.to_string();
    let name = match p.next().map_err(err)? {
        Some(Value(v)) => utf8(v)?,
        Some(Long("help") | Short('h')) | None => return Ok(Parsed::Print(help(None))),
        Some(Long("version") | Short('V')) => {
            let v = format!("olboot {}\n", env!("CARGO_PKG_VERSION"));
            return Ok(Parsed::Print(v));
        }
        Some(other) => return Err(other.unexpected().to_string()),
    };
    let command = COMMANDS
        .iter()
        .find(|c| c.name == name)
        .ok_or_else(|| format!("unknown command {name:?} (olboot --help lists them)"))?;
    let mut out = Args::default();
    while let Some(arg) = p.next().map_err(err)? {
        let flag = match &arg {
            Short('h') | Long("help") => return Ok(Parsed::Print(help(Some(command)))),
            Value(_) if command.positional.is_some() && out.dir.is_none() => None,
            Short(c) => FLAGS.iter().find(|f| f.short == Some(*c)),
            Long(l) => FLAGS.iter().find(|f| f.long == *l),
            Value(_) => return Err(format!("{} (olboot {name} --help)", arg.unexpected())),
        };
        match (flag, arg) {
            (None, Value(v)) => out.dir = Some(PathBuf::from(v)),
            (Some(f), _) if f.commands.contains(&command.name) => {
                let v = match f.value {
                    Some(_) => p.value().map_err(err)?,
                    None => OsString::new(),
                };
                (f.set)(&mut out, v)?;
            }
            (_, arg) => return Err(format!("{} (olboot {name} --help)", arg.unexpected())),
        }
    }
    Ok(Parsed::Run {
        command,
        args: Box::new(out),
    })
}

/// The help page of `command`, or the overview when `None`.
pub fn help(command: Option<&CommandDef>) -> String {
    let Some(c) = command else {
        return overview();
    };
    let mut s = format!("{}.\n", c.about);
    if !c.details.is_empty() {
        s += &format!("{}\n", c.details);
    }
    let pos = c.positional.map(|p| format!(" {p}")).unwrap_or_default();
    s += &format!("\nUsage: olboot {}{pos} [OPTIONS]\n\nOptions:\n", c.name);
    for f in FLAGS.iter().filter(|f| f.commands.contains(&c.name)) {
        s += &option_lines(f);
    }
    s + "  -h, --help            Print help\n"
}

/// One option's lines in a help page.
fn option_lines(f: &Flag) -> String {
    let short = f.short.map(|c| format!("-{c}, ")).unwrap_or_default();
    let value = f.value.map(|v| format!(" {v}")).unwrap_or_default();
    let head = format!("  {short:>4}--{}{value}", f.long);
    let mut lines = f.doc.lines();
    let mut s = format!("{head:<24}{}\n", lines.next().unwrap_or(""));
    for l in lines {
        s += &format!("{:24}{}\n", "", l.trim_start());
    }
    s
}

fn overview() -> String {
    let mut s = String::from(
        "olboot: turn a fresh VM into a working member of the Open Library fleet.\n\n\
         Steps, always in this order: firewall, volumes, opt, packages, links.\n\n\
         Usage: olboot <COMMAND> [OPTIONS]\n\nCommands:\n",
    );
    for c in COMMANDS {
        s += &format!("  {:<10}{}\n", c.name, c.about);
    }
    s + "\nExit codes: 0 converged, 1 a step failed, 2 invalid config or command line,\n\
         3 (plan) changes pending.\n\n\
         Run `olboot <COMMAND> --help` for its options. Logs go to stderr (RUST_LOG=debug for more).\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_flag_is_taken_by_a_command_and_listed_in_its_help() {
        for f in FLAGS {
            assert!(
                !f.commands.is_empty(),
                "--{} is taken by no command",
                f.long
            );
            for name in f.commands {
                let c = COMMANDS.iter().find(|c| c.name == *name);
                let c = c.unwrap_or_else(|| panic!("--{}: unknown command {name}", f.long));
                assert!(help(Some(c)).contains(&format!("--{}", f.long)));
            }
        }
        for c in COMMANDS {
            assert!(help(None).contains(c.name));
        }
    }

    #[test]
    fn help_lines_align() {
        let h = help(COMMANDS.iter().find(|c| c.name == "apply"));
        assert!(h.contains("  -c, --config CONFIG   A path"), "{h}");
        assert!(h.contains("      --root DIR        Work on"), "{h}");
        assert!(
            h.contains("\n                        packages installed"),
            "{h}"
        );
    }
}
