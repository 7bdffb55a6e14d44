//! `olboot`: parse the command line, set up logging, hand over to the library.

use std::io::Write;
use std::process::ExitCode;

fn main() -> ExitCode {
    // Plain lines with a timestamp: stderr is usually cloud-init-output.log, not a terminal.
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format(|f, r| {
            // Steps run at the same time on threads named after them: every line names its
            // step, unless the message does already.
            let msg = r.args().to_string();
            let step = std::thread::current()
                .name()
                .filter(|n| n.parse::<olboot::engine::StepName>().is_ok())
                .filter(|n| !msg.strip_prefix(n).is_some_and(|m| m.starts_with(": ")))
                .map(|n| format!("{n}: "))
                .unwrap_or_default();
            writeln!(
                f,
                "{} olboot {:<5} {step}{msg}",
                olboot::report::now(),
                r.level(),
            )
        })
        .init();
    match olboot::cli::parse(std::env::args_os().skip(1)) {
        Ok(olboot::cli::Cli::Run(cmd)) => ExitCode::from(olboot::cli::main(cmd)),
        Ok(olboot::cli::Cli::Print(text)) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("olboot: {e}");
            ExitCode::from(olboot::cli::EXIT_INVALID)
        }
    }
}
