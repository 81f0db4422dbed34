//! Heredoc words (`<<EOF`, `<<-EOF`, `3<<"EOF"`) as BuildKit's parser finds
//! them in RUN, COPY and ADD lines.

use std::sync::OnceLock;

use regex::Regex;

use crate::shell::{Lex, NoEnv};

/// A here-document attached to an instruction.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Heredoc {
    /// The delimiter word, quotes removed.
    pub name: String,
    /// `3<<EOF` gives 3; 0 when no descriptor was written.
    pub file_descriptor: u32,
    /// False when any part of the delimiter was quoted: no expansion.
    pub expand: bool,
    /// `<<-`: leading tabs are removed from the body (see [`chomp`]).
    pub chomp: bool,
    /// The body, each line with its newline, before chomping.
    pub content: String,
}

fn heredoc_regex() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(r"^([0-9]*)<<(-?)[\t\n\f\r ]*([^<]*)$").expect("valid regex"))
}

/// Parses one word as a heredoc start. `Ok(None)`: not a heredoc.
pub fn parse_heredoc(word: &str) -> Result<Option<Heredoc>, String> {
    let Some(caps) = heredoc_regex().captures(word) else {
        return Ok(None);
    };
    let file_descriptor = caps[1].parse::<u32>().unwrap_or(0);
    let chomp = &caps[2] == "-";
    let rest = &caps[3];
    if rest.is_empty() {
        return Ok(None);
    }
    let mut lex = Lex::new('\\');
    lex.skip_unset_env = true;
    let words = lex.process_words(rest, &NoEnv).map_err(|e| e.to_string())?;
    if words.len() != 1 {
        return Ok(None);
    }
    lex.raw_quotes = true;
    let raw = lex.process_words(rest, &NoEnv).map_err(|e| e.to_string())?;
    if raw.len() != words.len() {
        return Err(format!(
            "internal lexing of heredoc produced inconsistent results: {rest}"
        ));
    }
    let quotes = |s: &str| s.chars().filter(|c| *c == '\'' || *c == '"').count();
    Ok(Some(Heredoc {
        expand: quotes(&words[0]) == quotes(&raw[0]),
        name: words.into_iter().next().unwrap_or_default(),
        file_descriptor,
        chomp,
        content: String::new(),
    }))
}

/// The heredocs started on an instruction line, in order.
pub fn heredocs_from_line(line: &str) -> Result<Vec<Heredoc>, String> {
    let mut lex = Lex::new('\\');
    lex.raw_quotes = true;
    lex.raw_escapes = true;
    lex.skip_unset_env = true;
    // BuildKit ignores a lexing error here: then the line has no heredocs.
    let words = lex.process_words(line, &NoEnv).unwrap_or_default();
    let mut docs = Vec::new();
    for word in words {
        if let Some(doc) = parse_heredoc(&word)? {
            docs.push(doc);
        }
    }
    Ok(docs)
}

/// Removes leading tabs from every line (`<<-`).
pub fn chomp(content: &str) -> String {
    let mut out = String::with_capacity(content.len());
    for line in content.split_inclusive('\n') {
        out.push_str(line.trim_start_matches('\t'));
    }
    out
}
