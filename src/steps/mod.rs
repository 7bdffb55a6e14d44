//! The steps. Each one has the same shape: observe the machine, compute the list of changes
//! that would bring it to the config ([`Step::plan`]), and make exactly those changes
//! ([`Step::apply`]). A change carries everything `apply` needs, and one
//! [`Describe::describe`] gives both the line `plan` prints and the line the report records,
//! so what `olboot plan` prints is what `olboot apply` does.

use crate::root::Root;
use crate::tuning::Tuning;
use anyhow::Result;
use std::marker::PhantomData;

pub mod firewall;
pub mod links;
pub mod opt;
pub mod packages;
pub mod volumes;

/// Everything a step may look at besides its own config.
pub struct Ctx<'a> {
    /// The system being converged.
    pub root: &'a Root,
    /// Timeouts and retries.
    pub tuning: &'a Tuning,
}

/// Whether a change is described as one to make (`plan`) or one that was made (the report).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tense {
    /// "format /dev/vdb as ext4"
    Plan,
    /// "formatted /dev/vdb as ext4"
    Done,
}

macro_rules! verbs {
    ($($v:ident $now:literal $past:literal,)*) => {
        /// The verbs change lines are made of, each with its two forms, so that the plan line
        /// and the report line of a change differ in nothing but the tense of their verbs.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Verb { $(#[doc = $now] $v,)* }

        impl Verb {
            /// Every verb.
            pub const ALL: &'static [Verb] = &[$(Verb::$v,)*];

            /// The verb's form in `tense`.
            pub fn form(self, tense: Tense) -> &'static str {
                match (self, tense) {
                    $((Verb::$v, Tense::Plan) => $now, (Verb::$v, Tense::Done) => $past,)*
                }
            }
        }
    };
}

verbs! {
    Add "add" "added",
    BackUp "back up" "backed up",
    Bind "bind-mount" "bind-mounted",
    Comment "comment out" "commented out",
    Configure "configure" "configured",
    Create "create" "created",
    Enable "enable" "enabled",
    Fetch "fetch" "fetched",
    Format "format" "formatted",
    Install "install" "installed",
    Link "link" "linked",
    Load "load" "loaded",
    Mount "mount" "mounted",
    Purge "purge" "purged",
    Remove "remove" "removed",
    Repair "repair" "repaired",
    Replace "replace" "replaced",
    Unpack "unpack" "unpacked",
    Update "update" "updated",
    Write "write" "wrote",
}

impl Tense {
    /// `verb` in this tense.
    pub fn of(self, verb: Verb) -> &'static str {
        verb.form(self)
    }
}

/// `line` (a change described in [`Tense::Plan`]) with every verb put in [`Tense::Done`]: what
/// the report must say once the change is made. Tests use it to check that `apply` reports
/// exactly what `plan` printed.
pub fn in_done_tense(line: &str) -> String {
    let words: Vec<&str> = line.split(' ').collect();
    let mut out: Vec<&str> = Vec::with_capacity(words.len());
    let mut i = 0;
    'words: while i < words.len() {
        for v in Verb::ALL {
            let now: Vec<&str> = v.form(Tense::Plan).split(' ').collect();
            if words[i..].starts_with(&now) {
                out.push(v.form(Tense::Done));
                i += now.len();
                continue 'words;
            }
        }
        out.push(words[i]);
        i += 1;
    }
    out.join(" ")
}

/// A change that can say what it does, in either tense, from what it carries alone.
pub trait Describe {
    /// The change in words: what it would do, or what it did.
    fn describe(&self, tense: Tense) -> String;
}

/// What a step found: the changes to make, things that are not wrong enough to change but that
/// an operator should know (a config file its consumer will ignore, say), and parts that cannot
/// be converged (one volume of two holds a foreign filesystem). The engine makes the changes
/// of the other parts and then fails the step with `failures`.
pub struct Plan<C> {
    /// The changes, in the order `apply` makes them.
    pub changes: Vec<C>,
    /// Warnings for the log and the report.
    pub warnings: Vec<String>,
    /// Parts of the step that fail, each a one-line reason naming the part.
    pub failures: Vec<String>,
}

impl<C> Default for Plan<C> {
    fn default() -> Self {
        Plan {
            changes: Vec::new(),
            warnings: Vec::new(),
            failures: Vec::new(),
        }
    }
}

/// The changes a step has made so far; each is logged as it is recorded. Only a change can be
/// recorded, and it is recorded as its own description, so the report cannot say anything
/// else than the plan did.
pub struct Done<C> {
    step: &'static str,
    /// Report lines, one per change made.
    pub lines: Vec<String>,
    /// What a change could not do exactly as planned but did not fail for (an xattr the
    /// target filesystem does not support), for the report's warnings.
    pub warnings: Vec<String>,
    change: PhantomData<fn(&C)>,
}

impl<C: Describe> Done<C> {
    /// An empty record for `step`.
    pub fn new(step: &'static str) -> Done<C> {
        Done {
            step,
            lines: Vec::new(),
            warnings: Vec::new(),
            change: PhantomData,
        }
    }

    /// Record (and log) one change that was made.
    pub fn record(&mut self, change: &C) {
        let line = change.describe(Tense::Done);
        log::info!("{}: {line}", self.step);
        self.lines.push(line);
    }

    /// Record (and log) a warning about a change being made.
    pub fn warn(&mut self, w: impl std::fmt::Display) {
        let w = w.to_string();
        log::warn!("{}: {w}", self.step);
        self.warnings.push(w);
    }
}

/// One step of the provisioning, in the shape every step shares.
pub trait Step {
    /// The step's name, as `--only` and the report spell it.
    const NAME: &'static str;
    /// One change.
    type Change: Describe;

    /// Observe the machine and compute the changes. Must not change anything.
    fn plan(&self, ctx: &Ctx) -> Result<Plan<Self::Change>>;

    /// Make `changes` (computed by `plan` just before), in order, recording each in `done` as
    /// it is made. Has no `self`, so it reads nothing of the config: each change carries what
    /// it needs; only the
    /// last-moment safety checks look at the machine again, and they may refuse.
    /// On error, `done` holds what was made before the failure.
    fn apply(ctx: &Ctx, changes: &[Self::Change], done: &mut Done<Self::Change>) -> Result<()>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn done_tense_changes_only_whole_verbs() {
        assert_eq!(
            in_done_tense("format /dev/vdb as ext4 (label ol-data)"),
            "formatted /dev/vdb as ext4 (label ol-data)"
        );
        assert_eq!(
            in_done_tense("back up the file at /etc/x under /b and link it -> /opt/x"),
            "backed up the file at /etc/x under /b and linked it -> /opt/x"
        );
        assert_eq!(
            in_done_tense("load /etc/addresses"),
            "loaded /etc/addresses"
        );
        assert_eq!(in_done_tense("mount /dev/mounted"), "mounted /dev/mounted");
    }
}
