//! Runs each command of [`crate::cli`]; errors go back to `main` with
//! context naming the file, flag or reference at fault.

mod debug;

use std::fmt::Write;

use crate::cli::{Cli, Command};

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Debug(cmd) => debug::run(cmd),
    }
}

/// `error: ...` with its cause chain, and the Dockerfile snippet when a
/// frontend error is in the chain.
pub fn render_error(err: &anyhow::Error) -> String {
    let mut out = format!("error: {err}");
    for cause in err.chain().skip(1) {
        let _ = write!(out, "\n  Caused by: {cause}");
    }
    for cause in err.chain() {
        if let Some(parse) = cause.downcast_ref::<frontend::ParseError>() {
            let snippet = parse.render();
            // The first line repeats the message; keep the snippet only.
            if let Some((_, lines)) = snippet.split_once('\n') {
                let _ = write!(out, "\n{lines}");
            }
            break;
        }
    }
    out
}
