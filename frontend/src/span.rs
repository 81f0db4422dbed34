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
