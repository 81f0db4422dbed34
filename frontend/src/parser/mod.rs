//! The line-oriented Dockerfile parser, a port of BuildKit's
//! `frontend/dockerfile/parser`.
//!
//! [`parse`] turns text into a [`Dockerfile`]: one [`Node`] per instruction,
//! with its keyword, `--flags`, argument words, heredocs, original text and
//! [`Span`]. It handles parser directives, the escape character, line
//! continuations (dropping comment and empty lines inside them, the latter
//! with a [`Warning`]), exec vs shell form and heredocs. It does not check
//! instruction arguments beyond what BuildKit's parser does; that is
//! [`crate::instructions`]' job.

mod directives;
mod heredoc;
mod line_parsers;

use std::fmt;
use std::sync::Arc;

pub use directives::{Directive, DirectiveParser, FoundDirective, detect_syntax, parse_directive};
pub use heredoc::{Heredoc, chomp, heredocs_from_line, parse_heredoc};
pub use line_parsers::{JsonArrayError, NOT_STRING_ARRAY, parse_json_array, parse_words};

use crate::quote::{go_quote, go_quote_list};
use crate::span::{Location, Span};

/// The longest line BuildKit's scanner accepts (bufio.MaxScanTokenSize - 1).
pub const MAX_LINE: usize = 65535;

/// The most instructions a Dockerfile may have. Real ones have hundreds;
/// each instruction costs a build a few KiB, so a file far beyond this is
/// refused with an error rather than run out of memory.
pub const MAX_INSTRUCTIONS: usize = 100_000;

/// ONBUILD may nest only one level; deeper nesting is refused later, but the
/// parser must not recurse without bound on hostile input.
const MAX_DEPTH: usize = 4;

/// One instruction as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// The keyword as written (`RUN`, `run`, `Copy`).
    pub cmd: String,
    /// `--name[=value]` words before the arguments, quotes removed.
    pub flags: Vec<String>,
    /// Argument words, as BuildKit's dump shows them.
    pub args: Vec<String>,
    /// The trigger of an ONBUILD.
    pub trigger: Option<Box<Node>>,
    /// Exec (JSON) form.
    pub json: bool,
    /// Heredoc bodies, in order (on the ONBUILD node for ONBUILD triggers).
    pub heredocs: Vec<Heredoc>,
    /// The joined instruction line (continuations removed), as BuildKit's `Original`.
    pub original: String,
    /// Where the instruction is, heredoc bodies included.
    pub span: Span,
    /// The comment lines right above the instruction.
    pub comments: Vec<String>,
}

impl Node {
    /// The keyword in lower case.
    pub fn keyword(&self) -> String {
        self.cmd.to_ascii_lowercase()
    }

    /// BuildKit's `Node.Dump()` of this instruction, without parentheses.
    pub fn dump(&self) -> String {
        let mut out = self.cmd.to_lowercase();
        if !self.flags.is_empty() {
            out.push(' ');
            out.push_str(&go_quote_list(&self.flags));
        }
        if let Some(trigger) = &self.trigger {
            out.push_str(" (");
            out.push_str(&trigger.dump());
            out.push(')');
        }
        for arg in &self.args {
            out.push(' ');
            out.push_str(&go_quote(arg));
        }
        out.trim().to_string()
    }

    /// Whether heredocs may follow this instruction (RUN, COPY, ADD, or an
    /// ONBUILD of those, in shell form).
    fn can_contain_heredoc(&self) -> bool {
        let node = match &self.trigger {
            Some(t) if self.keyword() == "onbuild" => t,
            _ => self,
        };
        matches!(node.keyword().as_str(), "add" | "copy" | "run") && !node.json
    }
}

/// A parsed file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dockerfile {
    /// The file name given to [`parse`].
    pub file: Arc<str>,
    /// Instructions in file order.
    pub nodes: Vec<Node>,
    /// The parser directives at the top.
    pub directives: Vec<Directive>,
    /// `\` or `` ` ``.
    pub escape: char,
    /// Findings of the parser itself (empty continuation lines).
    pub warnings: Vec<Warning>,
}

impl Dockerfile {
    /// BuildKit's `AST.Dump()` plus the final newline its tests compare.
    pub fn dump(&self) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            out.push('(');
            out.push_str(&node.dump());
            out.push_str(")\n");
        }
        format!("{}\n", out.trim())
    }

    /// The value of a directive, if present.
    pub fn directive(&self, name: &str) -> Option<&str> {
        self.directives
            .iter()
            .find(|d| d.name == name)
            .map(|d| d.value.as_str())
    }
}

/// A parser finding that does not stop the parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// The build-check rule it belongs to.
    pub rule: &'static str,
    /// BuildKit's short text.
    pub message: String,
    /// 1-based line.
    pub line: usize,
}

/// A file that does not parse; names the line and column at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ParseError {
    /// BuildKit's message.
    pub message: String,
    /// Where.
    pub location: Location,
    /// The text of the line at fault, for the snippet.
    pub line_text: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location, self.message)
    }
}

impl ParseError {
    /// The message with a snippet of the line and a caret under the column.
    pub fn render(&self) -> String {
        crate::span::render_snippet(&self.to_string(), &self.location, &self.line_text)
    }
}

/// Parses a Dockerfile. `file` names it in spans and errors.
pub fn parse(file: &str, text: &str) -> Result<Dockerfile, ParseError> {
    Parser::new(file, text).run()
}

/// Lines as BuildKit's scanner yields them: each with its `\n`, stopping
/// (with an error) at a line longer than [`MAX_LINE`].
struct Lines<'a> {
    text: &'a str,
    pos: usize,
    too_long: bool,
    /// 1-based number of the line most recently returned.
    number: usize,
}

impl<'a> Iterator for Lines<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        if self.too_long || self.pos >= self.text.len() {
            return None;
        }
        let rest = &self.text[self.pos..];
        let end = rest.find('\n').map_or(rest.len(), |i| i + 1);
        let content = rest[..end].strip_suffix('\n').unwrap_or(&rest[..end]);
        if content.len() > MAX_LINE {
            self.too_long = true;
            return None;
        }
        self.pos += end;
        self.number += 1;
        Some(&rest[..end])
    }
}

struct Parser<'a> {
    file: Arc<str>,
    text: &'a str,
    /// Where each line of `text` starts: a line's text without a scan from
    /// the top (that was quadratic in the number of instructions).
    line_starts: Vec<usize>,
    lines: Lines<'a>,
    escape: char,
    directive_parser: DirectiveParser,
    directives: Vec<Directive>,
}

fn trim_newline(s: &str) -> &str {
    s.trim_end_matches(['\r', '\n'])
}

fn is_comment(line: &str) -> bool {
    line.trim_start().starts_with('#')
}

impl<'a> Parser<'a> {
    fn new(file: &str, text: &'a str) -> Parser<'a> {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .filter(|&i| i < text.len())
            .collect();
        Parser {
            file: Arc::from(file),
            text,
            line_starts,
            lines: Lines {
                text,
                pos: 0,
                too_long: false,
                number: 0,
            },
            escape: '\\',
            directive_parser: DirectiveParser::default(),
            directives: Vec::new(),
        }
    }

    /// Line `n` (1-based) of the text, without its newline.
    fn line(&self, n: usize) -> Option<&'a str> {
        let start = *self.line_starts.get(n.checked_sub(1)?)?;
        let end = self.line_starts.get(n).copied().unwrap_or(self.text.len());
        Some(trim_newline(&self.text[start..end]))
    }

    fn error(&self, message: impl Into<String>, line: usize, column: usize) -> ParseError {
        let line = line.max(1);
        ParseError {
            message: message.into(),
            location: Location {
                file: self.file.clone(),
                line,
                column: column.max(1),
            },
            line_text: self.line(line).unwrap_or_default().to_string(),
        }
    }

    /// Drops the newline, optionally leading whitespace, reads a directive,
    /// and returns "" for comment lines (BuildKit's `processLine`).
    fn process_line<'l>(
        &mut self,
        line: &'l str,
        strip_left: bool,
    ) -> Result<(&'l str, bool), ParseError> {
        let mut token = trim_newline(line);
        if strip_left {
            token = token.trim_start();
        }
        let number = self.lines.number;
        let directive = self
            .directive_parser
            .parse_line(token)
            .map_err(|m| self.error(m, number, 1))?;
        let mut is_directive = false;
        if let Some(d) = directive {
            is_directive = true;
            if d.name == "escape" {
                match d.value.as_str() {
                    "\\" => self.escape = '\\',
                    "`" => self.escape = '`',
                    v => {
                        return Err(self.error(
                            format!("invalid escape token '{v}' does not match ` or \\"),
                            number,
                            1,
                        ));
                    }
                }
            }
            self.directives.push(d);
        }
        let out = if is_comment(token) { "" } else { token };
        Ok((out, is_directive))
    }

    /// Removes a trailing escape character (and blanks after it): the line
    /// continues. Returns the line and whether it ends the instruction.
    fn trim_continuation<'l>(&self, line: &'l str) -> (&'l str, bool) {
        let body = line.trim_end_matches([' ', '\t']);
        let Some(before) = body.strip_suffix(self.escape) else {
            return (line, true);
        };
        if before.is_empty() {
            return ("", false);
        }
        if before.ends_with(self.escape) {
            return (line, true);
        }
        (before, false)
    }

    fn run(mut self) -> Result<Dockerfile, ParseError> {
        let mut nodes = Vec::new();
        let mut warnings = Vec::new();
        let mut comments: Vec<String> = Vec::new();
        let mut first = true;

        while let Some(raw) = self.lines.next() {
            let raw = if first {
                raw.strip_prefix('\u{FEFF}').unwrap_or(raw)
            } else {
                raw
            };
            first = false;
            if is_comment(raw) {
                let comment = raw.trim_start()[1..].trim();
                if comment.is_empty() {
                    comments.clear();
                } else {
                    comments.push(comment.to_string());
                }
            }
            let (line, is_directive) = self.process_line(raw, true)?;
            if is_directive {
                comments.pop();
            }
            let start_line = self.lines.number;
            let start_column = 1 + trim_newline(raw).chars().count()
                - trim_newline(raw).trim_start().chars().count();
            let (line, mut end_of_instruction) = self.trim_continuation(line);
            if end_of_instruction && line.is_empty() {
                continue;
            }
            let mut buf = String::from(line);
            let mut empty_continuation = false;
            while !end_of_instruction {
                let Some(raw) = self.lines.next() else { break };
                let (line, _) = self.process_line(raw, false)?;
                if is_comment(raw) {
                    continue;
                }
                if trim_newline(line).trim_start().is_empty() {
                    empty_continuation = true;
                    continue;
                }
                let (line, end) = self.trim_continuation(line);
                end_of_instruction = end;
                buf.push_str(line);
            }
            let mut end_line = self.lines.number;
            if empty_continuation {
                warnings.push(Warning {
                    rule: "NoEmptyContinuation",
                    message: format!("Empty continuation line found in: {buf}"),
                    line: end_line,
                });
            }

            let mut node = node_from_line(&buf, self.escape, std::mem::take(&mut comments), 0)
                .map_err(|m| self.error(m, start_line, start_column))?;

            if node.can_contain_heredoc() && buf.contains("<<") {
                let docs = heredocs_from_line(&buf)
                    .map_err(|m| self.error(m, start_line, start_column))?;
                for mut doc in docs {
                    let mut terminated = false;
                    for raw in self.lines.by_ref() {
                        let mut candidate = trim_newline(raw);
                        if doc.chomp {
                            candidate = candidate.trim_start_matches('\t');
                        }
                        if candidate == doc.name {
                            terminated = true;
                            break;
                        }
                        doc.content.push_str(raw);
                    }
                    if !terminated {
                        return Err(self.error("unterminated heredoc", start_line, start_column));
                    }
                    node.heredocs.push(doc);
                }
                end_line = self.lines.number;
            }

            let end_text = self.line(end_line).unwrap_or("");
            node.span = Span {
                file: self.file.clone(),
                start_line,
                start_column,
                end_line,
                end_column: end_text.chars().count().max(1),
            };
            if let Some(trigger) = node.trigger.as_mut() {
                trigger.span = node.span.clone();
            }
            if nodes.len() == MAX_INSTRUCTIONS {
                return Err(self.error(
                    format!("more than {MAX_INSTRUCTIONS} instructions: the Dockerfile is too large to build"),
                    start_line,
                    1,
                ));
            }
            nodes.push(node);
        }

        let last = self.lines.number;
        if nodes.is_empty() {
            return Err(self.error("file with no instructions", last, 1));
        }
        if self.lines.too_long {
            return Err(self.error(
                format!("dockerfile line greater than max allowed size of {MAX_LINE}"),
                last + 1,
                1,
            ));
        }
        Ok(Dockerfile {
            file: self.file,
            nodes,
            directives: self.directives,
            escape: self.escape,
            warnings,
        })
    }
}

/// Whether `line` ends with the escape character (and blanks), which would
/// continue it onto the next line.
pub fn ends_with_continuation(line: &str, escape: char) -> bool {
    let body = line.trim_end_matches([' ', '\t']);
    match body.strip_suffix(escape) {
        None => false,
        Some(before) => before.is_empty() || !before.ends_with(escape),
    }
}

/// Splits a joined instruction line and runs its argument parser.
fn node_from_line(
    line: &str,
    escape: char,
    comments: Vec<String>,
    depth: usize,
) -> Result<Node, String> {
    if depth > MAX_DEPTH {
        return Err("ONBUILD nested too deeply".into());
    }
    let (cmd, flags, rest) = line_parsers::split_command(line, escape);
    let parsed = line_parsers::parse_args(&cmd.to_ascii_lowercase(), &rest, escape, depth)?;
    Ok(Node {
        cmd,
        flags,
        args: parsed.args,
        trigger: parsed.trigger,
        json: parsed.json,
        heredocs: Vec::new(),
        original: line.to_string(),
        span: Span::default(),
        comments,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continuation_keeps_leading_whitespace() {
        let df = parse("Dockerfile", "RUN a && \\\n    b\n").unwrap();
        assert_eq!(df.nodes[0].args, vec!["a &&     b"]);
        assert_eq!(
            (df.nodes[0].span.start_line, df.nodes[0].span.end_line),
            (1, 2)
        );
    }

    #[test]
    fn error_names_line() {
        let err = parse("Dockerfile", "FROM a\nCMD [\"a\", 1]\n").unwrap_err();
        assert_eq!(err.location.line, 2);
        assert_eq!(
            err.to_string(),
            format!("Dockerfile:2:1: {NOT_STRING_ARRAY}")
        );
    }

    #[test]
    fn onbuild_heredoc() {
        let df = parse("Dockerfile", "FROM a\nONBUILD RUN <<EOF\necho hi\nEOF\n").unwrap();
        assert_eq!(df.nodes[1].heredocs[0].content, "echo hi\n");
        assert_eq!(df.nodes[1].dump(), "onbuild (run \"<<EOF\")");
    }
}
