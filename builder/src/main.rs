use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // The RUN sandbox helper re-executes this binary.
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == builder::sandbox::embedded::HELPER_ARG)
    {
        builder::sandbox::embedded::helper_main();
    }
    let cli = builder::cli::Cli::parse();
    match builder::commands::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("{}", builder::commands::render_error(&err));
            ExitCode::from(1)
        }
    }
}
