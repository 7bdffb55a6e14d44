//! `olboot`: parse the command line, set up logging, hand over to the library.

use clap::Parser;
use std::io::Write;
use std::process::ExitCode;

fn main() -> ExitCode {
    // Plain lines with a timestamp: stderr is usually cloud-init-output.log, not a terminal.
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format(|f, r| {
            writeln!(
                f,
                "{} olboot {:<5} {}",
                olboot::report::now(),
                r.level(),
                r.args()
            )
        })
        .init();
    let cli = match olboot::cli::Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                olboot::cli::EXIT_INVALID
            } else {
                0
            });
        }
    };
    ExitCode::from(olboot::cli::main(cli))
}
