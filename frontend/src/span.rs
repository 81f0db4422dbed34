//! Source positions: where a node or an error is in which file.

use std::fmt;
use std::sync::Arc;

/// A range of a Dockerfile, 1-based lines and columns, end inclusive.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Span {
    /// The file the range is in.
    pub file: Arc<str>,
    /// First line.
    pub start_line: usize,
    /// Column of the first character on the first line.
    pub start_column: usize,
    /// Last line (heredoc bodies included).
    pub end_line: usize,
    /// Column of the last character on the last line.
    pub end_column: usize,
}

impl Span {
    /// The start as a [`Location`].
    pub fn start(&self) -> Location {
        Location {
            file: self.file.clone(),
            line: self.start_line,
            column: self.start_column,
        }
    }
}

/// One point of a file: `file:line:col`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Location {
    /// The file.
    pub file: Arc<str>,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

/// `message`, then the line with its number and a caret under the column:
///
/// ```text
/// Dockerfile:2:1: unknown instruction: FORM
///   2 | FORM alpine
///     | ^
/// ```
pub fn render_snippet(message: &str, location: &Location, line_text: &str) -> String {
    let number = location.line.to_string();
    let pad = " ".repeat(number.len());
    let shown: String = line_text.chars().take(200).collect();
    let caret_at = location.column.saturating_sub(1).min(shown.chars().count());
    let caret_pad: String = shown
        .chars()
        .take(caret_at)
        .map(|c| if c == '\t' { '\t' } else { ' ' })
        .collect();
    format!("{message}\n {number} | {shown}\n {pad} | {caret_pad}^")
}

/// The lines of `text` around `span`, as BuildKit prints a source range
/// (`errdefs.Source.Print`): a `file:line` header, two lines of context
/// each side (four for a one-line range), the range's lines marked `>>>`.
pub fn render_source(file: &str, text: &str, span: &Span) -> String {
    let lines: Vec<&str> = text.split('\n').collect();
    let (first, last) = (span.start_line, span.end_line.max(span.start_line));
    if first < 1 || first > lines.len() {
        return String::new();
    }
    let (mut start, mut end) = (first, last.min(lines.len()));
    let pad = if end == start { 4 } else { 2 };
    let mut p = 0;
    while p < pad {
        if start > 1 {
            start -= 1;
            p += 1;
        }
        if end != lines.len() {
            end += 1;
            p += 1;
        }
        p += 1;
    }
    let mut out = format!("{file}:{first}\n--------------------\n");
    for (i, line) in lines.iter().enumerate().take(end).skip(start - 1) {
        let n = i + 1;
        let marker = if (first..=last).contains(&n) {
            ">>>"
        } else {
            "   "
        };
        out.push_str(&format!(" {n:>3} | {marker} {line}\n"));
    }
    out.push_str("--------------------\n");
    out
}

#[cfg(test)]
mod source_tests {
    use super::*;

    #[test]
    fn one_line_gets_context_as_buildkit_prints_it() {
        let text = "FROM a as b\nRUN x\nRUN y\nRUN z\nCMD w";
        let span = Span {
            start_line: 1,
            end_line: 1,
            ..Span::default()
        };
        assert_eq!(
            render_source("Dockerfile", text, &span),
            "Dockerfile:1\n--------------------\n   1 | >>> FROM a as b\n   2 |     RUN x\n   3 |     RUN y\n--------------------\n"
        );
        let span = Span {
            start_line: 3,
            end_line: 4,
            ..Span::default()
        };
        assert_eq!(
            render_source("Dockerfile", text, &span),
            "Dockerfile:3\n--------------------\n   2 |     RUN x\n   3 | >>> RUN y\n   4 | >>> RUN z\n   5 |     CMD w\n--------------------\n"
        );
    }
}
