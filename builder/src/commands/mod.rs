//! Runs each command of [`crate::cli`]; errors go back to `main` with
//! context naming the file, flag or reference at fault.

mod build;
mod call;
mod check;
pub(crate) mod debug;
mod flags;
mod graph;
mod image;
mod inputs;
mod outputs;
mod registry;
pub mod store;

use std::fmt::Write;

use crate::cli::{Cli, Command};

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Debug(cmd) => debug::run(cmd),
        Command::Build(args) => build::run(cli.root, *args),
        Command::Explain(mut args) => {
            args.explain = true;
            build::run(cli.root, *args)
        }
        Command::Images => image::images(cli.root),
        Command::Inspect {
            reference,
            platform,
        } => image::inspect(cli.root, &reference, platform.as_ref()),
        Command::Tag { source, target } => image::tag(cli.root, &source, &target),
        Command::Rmi { references } => image::rmi(cli.root, &references),
        Command::Save {
            output,
            format,
            references,
            platform,
        } => image::save(cli.root, &output, &format, &references, platform.as_ref()),
        Command::Pull {
            reference,
            platform,
        } => registry::pull(cli.root, &reference, platform.as_ref()),
        Command::Push {
            reference,
            platform,
        } => registry::push(cli.root, &reference, platform.as_ref()),
        Command::Login(args) => registry::login(cli.root, args),
        Command::Logout { server } => registry::logout(server.as_deref()),
        Command::Check(args) => check::run(cli.root, args),
        Command::Graph(args) => graph::run(args),
        Command::Du(args) => store::du(cli.root, args),
        Command::Prune(args) => store::prune(cli.root, args),
        Command::Verify => store::verify(cli.root),
    }
}

/// `error: ...` with its cause chain, and the Dockerfile lines at fault
/// when a frontend error or a failed step is in the chain, as BuildKit
/// prints them (`Dockerfile:LINE`, the lines around, the failing ones
/// marked `>>>`).
pub fn render_error(err: &anyhow::Error) -> String {
    let mut out = format!("error: {err}");
    for cause in err.chain().skip(1) {
        let _ = write!(out, "\n  Caused by: {cause}");
    }
    let step = err
        .downcast_ref::<crate::solve::StepLocation>()
        .and_then(|s| source_block(&s.span));
    if let Some(snippet) = step.or_else(|| err.chain().find_map(snippet_of)) {
        let _ = write!(out, "\n{snippet}");
    }
    crate::mask::Masker::global().mask_str(&out)
}

/// The Dockerfile lines a frontend error points at.
fn snippet_of(cause: &(dyn std::error::Error + 'static)) -> Option<String> {
    let span = if let Some(e) = cause.downcast_ref::<frontend::ParseError>() {
        let one_line = frontend::Span {
            file: e.location.file.clone(),
            start_line: e.location.line,
            start_column: e.location.column,
            end_line: e.location.line,
            end_column: e.location.column,
        };
        // A text this process did not keep: the line the parser saw.
        return source_block(&one_line).or_else(|| with_caret(&e.location, &e.line_text));
    } else if let Some(e) = cause.downcast_ref::<frontend::stage::PlanError>() {
        e.span()?.clone()
    } else if let Some(e) = cause.downcast_ref::<frontend::instructions::InstructionError>() {
        e.span.clone()
    } else {
        return None;
    };
    source_block(&span)
}

/// The lines around `span` from the text that was parsed.
fn source_block(span: &frontend::Span) -> Option<String> {
    let text = crate::dockerfile::source(&span.file)?;
    let block = frontend::span::render_source(&span.file, &text, span);
    (!block.is_empty()).then(|| block.trim_end().to_string())
}

/// `line` and a caret under `location`, without the file-name header.
fn with_caret(location: &frontend::Location, line: &str) -> Option<String> {
    let rendered = frontend::span::render_snippet("", location, line);
    rendered.split_once('\n').map(|(_, s)| s.to_string())
}
