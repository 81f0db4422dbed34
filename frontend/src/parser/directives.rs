//! Parser directives (`# syntax=`, `# escape=`, `# check=`) as BuildKit's
//! `parser/directives.go` reads them: only in the comment lines at the very
//! top, key case-insensitive, each key once; the first line that is not a
//! directive ends the search.

use std::sync::OnceLock;

use regex::Regex;

/// One directive found at the top of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directive {
    /// Lower-case key: `syntax`, `escape` or `check`.
    pub name: String,
    /// The value as written, surrounding whitespace removed.
    pub value: String,
    /// 1-based line.
    pub line: usize,
}

const VALID: [&str; 3] = ["syntax", "escape", "check"];

fn directive_regex() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(r"^([a-zA-Z][a-zA-Z0-9]*)[\t\n\f\r ]*=[\t\n\f\r ]*(.+?)[\t\n\f\r ]*$")
            .expect("valid regex")
    })
}

/// Reads directives line by line, stopping at the first other line.
#[derive(Debug, Clone)]
pub struct DirectiveParser {
    line: usize,
    comment: &'static str,
    seen: Vec<String>,
    done: bool,
}

impl Default for DirectiveParser {
    fn default() -> Self {
        DirectiveParser::new("#", 0)
    }
}

impl DirectiveParser {
    /// A parser for lines that start with `comment`, numbering from `first_line + 1`.
    pub fn new(comment: &'static str, first_line: usize) -> DirectiveParser {
        DirectiveParser {
            line: first_line,
            comment,
            seen: Vec::new(),
            done: false,
        }
    }

    /// Reads the next line; `Err` names a repeated directive.
    pub fn parse_line(&mut self, line: &str) -> Result<Option<Directive>, String> {
        self.line += 1;
        if self.done {
            return Ok(None);
        }
        let Some(rest) = line.strip_prefix(self.comment) else {
            self.done = true;
            return Ok(None);
        };
        let rest = rest.trim_start();
        let Some(caps) = directive_regex().captures(rest) else {
            self.done = true;
            return Ok(None);
        };
        let key = caps[1].to_ascii_lowercase();
        if !VALID.contains(&key.as_str()) {
            self.done = true;
            return Ok(None);
        }
        if self.seen.contains(&key) {
            return Err(format!("only one {key} parser directive can be used"));
        }
        self.seen.push(key.clone());
        Ok(Some(Directive {
            name: key,
            value: caps[2].to_string(),
            line: self.line,
        }))
    }

    /// Reads every directive at the top of `text`.
    pub fn parse_all(&mut self, text: &str) -> Result<Vec<Directive>, String> {
        let mut out = Vec::new();
        for line in go_lines(text) {
            if self.done {
                break;
            }
            if let Some(d) = self.parse_line(line)? {
                out.push(d);
            }
        }
        Ok(out)
    }
}

/// Lines as Go's `bufio.ScanLines` gives them: split on `\n`, a final `\r`
/// dropped, no empty last line.
fn go_lines(text: &str) -> impl Iterator<Item = &str> {
    let body = text.strip_suffix('\n').unwrap_or(text);
    let empty = text.is_empty();
    body.split('\n')
        .filter(move |_| !empty)
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
}

/// Where a directive was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundDirective {
    /// The value's first word (for `syntax`: the frontend reference).
    pub reference: String,
    /// The whole value.
    pub value: String,
    /// 1-based line; 0 for the JSON form after a shebang-less file.
    pub line: usize,
}

/// The `syntax` directive of a file, in any of the forms BuildKit accepts:
/// `# syntax=`, `// syntax=`, or a one-line JSON object `{"syntax": "..."}`.
pub fn detect_syntax(text: &str) -> Option<FoundDirective> {
    find_directive("syntax", text, true)
}

/// Another directive (`#` comments only).
pub fn parse_directive(key: &str, text: &str) -> Option<FoundDirective> {
    find_directive(key, text, false)
}

fn find_directive(key: &str, text: &str, any_format: bool) -> Option<FoundDirective> {
    let text = text.strip_prefix('\u{FEFF}').unwrap_or(text);
    let (first, rest) = text.split_once('\n').unwrap_or((text, ""));
    let (text, first_line) = if first.starts_with("#!") {
        (rest, 1)
    } else {
        (text, 0)
    };
    let mut prefixes = vec!["#"];
    if any_format {
        prefixes.push("//");
    }
    for prefix in prefixes {
        let mut parser = DirectiveParser::new(prefix, first_line);
        // A repeated directive ends the search, keeping what came before.
        let mut found = Vec::new();
        for line in go_lines(text) {
            if parser.done {
                break;
            }
            match parser.parse_line(line) {
                Ok(Some(d)) => found.push(d),
                Ok(None) => {}
                Err(_) => break,
            }
        }
        if let Some(d) = found.into_iter().find(|d| d.name == key) {
            let reference = d.value.split(' ').next().unwrap_or_default().to_string();
            return Some(FoundDirective {
                reference,
                value: d.value,
                line: d.line,
            });
        }
    }
    if any_format
        && let Ok(serde_json::Value::Object(map)) = serde_json::from_str(text)
        && let Some(serde_json::Value::String(v)) = map.get(key)
    {
        return Some(FoundDirective {
            reference: v.clone(),
            value: v.clone(),
            line: first_line,
        });
    }
    None
}
