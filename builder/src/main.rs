use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = builder::cli::Cli::parse();
    match builder::commands::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("{}", builder::commands::render_error(&err));
            ExitCode::from(1)
        }
    }
}
