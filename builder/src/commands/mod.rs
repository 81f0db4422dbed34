//! Runs each command of [`crate::cli`]; errors go back to `main` with
//! context naming the file, flag or reference at fault.

mod build;
pub(crate) mod debug;
mod graph;
pub(crate) mod store;

use std::fmt::Write;

use crate::cli::{Cli, Command};

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Debug(cmd) => debug::run(cmd),
        Command::Build(args) => build::run(cli.root, *args),
        Command::Images => build::images(cli.root),
        Command::Inspect { reference } => build::inspect(cli.root, &reference),
        Command::Tag { source, target } => build::tag(cli.root, &source, &target),
        Command::Rmi { references } => build::rmi(cli.root, &references),
        Command::Save {
            output,
            format,
            references,
        } => build::save(cli.root, &output, &format, &references),
        Command::Graph(args) => graph::run(args),
        Command::Du(args) => store::du(cli.root, args),
        Command::Prune(args) => store::prune(cli.root, args),
        Command::Verify => store::verify(cli.root),
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
        if let Some(snippet) = snippet_of(cause) {
            let _ = write!(out, "\n{snippet}");
            break;
        }
    }
    crate::mask::Masker::global().mask_str(&out)
}

/// The Dockerfile lines a frontend error points at, with a caret.
fn snippet_of(cause: &(dyn std::error::Error + 'static)) -> Option<String> {
    let (location, text) = if let Some(e) = cause.downcast_ref::<frontend::ParseError>() {
        (e.location.clone(), e.line_text.clone())
    } else {
        let span = if let Some(e) = cause.downcast_ref::<frontend::stage::PlanError>() {
            e.span()?.clone()
        } else if let Some(e) = cause.downcast_ref::<frontend::instructions::InstructionError>() {
            e.span.clone()
        } else {
            return None;
        };
        let text = std::fs::read_to_string(&*span.file).ok()?;
        let line = text
            .lines()
            .nth(span.start_line.checked_sub(1)?)?
            .to_string();
        (span.start(), line)
    };
    let rendered = frontend::span::render_snippet("", &location, &text);
    rendered.split_once('\n').map(|(_, s)| s.to_string())
}
