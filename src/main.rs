//! `olboot`: parse the command line, set up logging, hand over to the library.

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
