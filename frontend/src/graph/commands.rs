//! What instructions' words become in ops: RUN's argv and inline files
//! from its heredocs (BuildKit's `dispatchRun`), CMD and ENTRYPOINT with
//! the stage's SHELL, COPY/ADD heredoc sources, HEALTHCHECK's config.

use super::{HealthcheckValue, InlineFile};
use crate::instructions::{self, HealthConfig, SourceContent};
use crate::shell::Lex;
use crate::stage::StageEnv;

/// RUN's argv and inline files, as BuildKit's `dispatchRun` makes them from
/// heredocs: one heredoc alone runs its body with the shell, or (with a
/// shebang) as an executable file; anything else is passed to the shell
/// with the bodies put back in place. Returns the progress-name suffix.
pub(super) fn run_command(
    command: &instructions::CommandLine,
    shell: &[String],
) -> Result<(Vec<String>, Vec<InlineFile>, String), String> {
    let mut args = command.args.clone();
    let mut inline = Vec::new();
    let mut suffix = String::new();
    if !command.files.is_empty() {
        if args.len() != 1 || !command.prepend_shell {
            return Err(format!("parsing produced an invalid run command: {args:?}"));
        }
        if matches!(crate::parser::parse_heredoc(&args[0]), Ok(Some(_))) {
            let file = &command.files[0];
            let data = if file.chomp {
                crate::parser::chomp(&file.data)
            } else {
                file.data.clone()
            };
            if data.starts_with("#!") {
                let path = format!("/dev/pipes/{}", file.name);
                inline.push(InlineFile {
                    path: path.clone(),
                    data,
                    mode: 0o755,
                });
                args = vec![path];
            } else {
                args = vec![data];
            }
            suffix = format!(" ({})", summarize_heredoc(&file.data));
        } else {
            let mut full = args[0].clone();
            for f in &command.files {
                full.push('\n');
                full.push_str(&f.data);
                full.push_str(&f.name);
            }
            args = vec![full];
        }
    }
    if command.prepend_shell {
        let mut full = shell.to_vec();
        full.extend(args);
        args = full;
    }
    Ok((args, inline, suffix))
}

/// The first line of a heredoc, with `...` when there are more.
fn summarize_heredoc(doc: &str) -> String {
    let doc = doc.trim().replace("\r\n", "\n");
    let mut lines = doc.split('\n');
    let first = lines.next().unwrap_or_default().to_string();
    if lines.next().is_some() {
        format!("{first}...")
    } else {
        first
    }
}

/// Heredoc sources of COPY/ADD: expanded (quotes kept) unless the delimiter was quoted.
pub(super) fn expand_heredoc(
    c: &SourceContent,
    env: &StageEnv,
) -> Result<(String, String), String> {
    if !c.expand {
        return Ok((c.path.clone(), c.data.clone()));
    }
    let mut lex = Lex::new('\\');
    lex.skip_process_quotes = true;
    Ok((c.path.clone(), env.expand(&lex, &c.data)?))
}

pub(super) fn with_shell(shell: &[String], c: &instructions::CommandLine) -> Vec<String> {
    if c.prepend_shell && !c.args.is_empty() {
        let mut out = shell.to_vec();
        out.extend(c.args.iter().cloned());
        out
    } else {
        c.args.clone()
    }
}

pub(super) fn health(h: &HealthConfig) -> HealthcheckValue {
    HealthcheckValue {
        test: h.test.clone(),
        interval: h.interval,
        timeout: h.timeout,
        start_period: h.start_period,
        start_interval: h.start_interval,
        retries: h.retries,
    }
}
