//! One argument parser per instruction, as BuildKit's `parser/line_parsers.go`
//! and `split_command.go`: they turn the text after the keyword into the
//! argument words of a [`Node`](super::Node). Quotes and escapes stay in the
//! words; expansion removes them later.

use super::Node;

/// What an argument parser produces for a node.
#[derive(Debug, Default)]
pub(super) struct Args {
    pub args: Vec<String>,
    pub trigger: Option<Box<Node>>,
    pub json: bool,
}

impl Args {
    fn words(args: Vec<String>) -> Args {
        Args {
            args,
            ..Args::default()
        }
    }
}

/// BuildKit's `reWhitespace`: `[\t\v\f\r ]+`.
pub(super) fn is_re_whitespace(c: char) -> bool {
    matches!(c, '\t' | '\u{b}' | '\u{c}' | '\r' | ' ')
}

/// Splits on the first run of `[\t\v\f\r ]`, as `reWhitespace.Split(s, 2)`.
pub(super) fn split_once_whitespace(s: &str) -> (&str, Option<&str>) {
    match s.find(is_re_whitespace) {
        None => (s, None),
        Some(i) => {
            let rest = s[i..].trim_start_matches(is_re_whitespace);
            (&s[..i], Some(rest))
        }
    }
}

/// All words split on `[\t\v\f\r ]+`, as `reWhitespace.Split(s, -1)` (empty
/// leading/trailing words kept, as Go does).
fn split_all_whitespace(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = s;
    loop {
        match rest.find(is_re_whitespace) {
            None => {
                out.push(rest.to_string());
                return out;
            }
            Some(i) => {
                out.push(rest[..i].to_string());
                rest = rest[i..].trim_start_matches(is_re_whitespace);
            }
        }
    }
}

/// Splits a line into its keyword, its `--flags` and the rest.
pub(super) fn split_command(line: &str, escape: char) -> (String, Vec<String>, String) {
    let (cmd, rest) = split_once_whitespace(line.trim());
    let (args, flags) = match rest {
        Some(rest) => extract_builder_flags(rest, escape),
        None => (String::new(), Vec::new()),
    };
    (cmd.to_string(), flags, args.trim().to_string())
}

/// Reads the leading `--name[=value]` words. Like BuildKit it walks bytes,
/// not characters, so a non-ASCII byte in a flag becomes the Latin-1
/// character of that byte; the dump must show the same.
fn extract_builder_flags(line: &str, escape: char) -> (String, Vec<String>) {
    #[derive(PartialEq)]
    enum Phase {
        Spaces,
        Word,
        Quote,
    }
    let bytes = line.as_bytes();
    let rest_from = |pos: usize| String::from_utf8_lossy(&bytes[pos..]).into_owned();
    let mut words = Vec::new();
    let mut phase = Phase::Spaces;
    let mut word = String::new();
    let mut quote = '\0';
    let mut blank_ok = false;
    let mut ch = '\0';
    let mut pos = 0;
    while pos <= bytes.len() {
        if pos != bytes.len() {
            ch = bytes[pos] as char;
        }
        if phase == Phase::Spaces {
            if pos == bytes.len() {
                break;
            }
            if ch.is_whitespace() {
                pos += 1;
                continue;
            }
            if ch != '-' || pos + 1 == bytes.len() || bytes[pos + 1] != b'-' {
                return (rest_from(pos), words);
            }
            phase = Phase::Word;
        }
        if pos == bytes.len() {
            if word != "--" && (blank_ok || !word.is_empty()) {
                words.push(word);
            }
            break;
        }
        if phase == Phase::Word {
            if ch.is_whitespace() {
                phase = Phase::Spaces;
                if word == "--" {
                    return (rest_from(pos), words);
                }
                if blank_ok || !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
                word.clear();
                blank_ok = false;
                pos += 1;
                continue;
            }
            if ch == '\'' || ch == '"' {
                quote = ch;
                blank_ok = true;
                phase = Phase::Quote;
                pos += 1;
                continue;
            }
            if ch == escape {
                if pos + 1 == bytes.len() {
                    pos += 1;
                    continue;
                }
                pos += 1;
                ch = bytes[pos] as char;
            }
            word.push(ch);
            pos += 1;
            continue;
        }
        // Phase::Quote
        if ch == quote {
            phase = Phase::Word;
            pos += 1;
            continue;
        }
        if ch == escape {
            if pos + 1 == bytes.len() {
                phase = Phase::Word;
                pos += 1;
                continue;
            }
            pos += 1;
            ch = bytes[pos] as char;
        }
        word.push(ch);
        pos += 1;
    }
    (String::new(), words)
}

/// Splits on whitespace, keeping quoted text (and the quotes) in one word.
pub fn parse_words(rest: &str, escape: char) -> Vec<String> {
    #[derive(PartialEq)]
    enum Phase {
        Spaces,
        Word,
        Quote,
    }
    let chars: Vec<char> = rest.chars().collect();
    let mut words = Vec::new();
    let mut phase = Phase::Spaces;
    let mut quote = '\0';
    let mut blank_ok = false;
    let mut word = String::new();
    let mut pos = 0;
    while pos <= chars.len() {
        let at_end = pos == chars.len();
        let mut ch = if at_end { '\0' } else { chars[pos] };
        if phase == Phase::Spaces {
            if at_end {
                break;
            }
            if ch.is_whitespace() {
                pos += 1;
                continue;
            }
            phase = Phase::Word;
        }
        if at_end {
            if blank_ok || !word.is_empty() {
                words.push(word);
            }
            break;
        }
        if phase == Phase::Word {
            if ch.is_whitespace() {
                phase = Phase::Spaces;
                if blank_ok || !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
                blank_ok = false;
                pos += 1;
                continue;
            }
            if ch == '\'' || ch == '"' {
                quote = ch;
                blank_ok = true;
                phase = Phase::Quote;
            }
            if ch == escape {
                if pos + 1 == chars.len() {
                    pos += 1;
                    continue;
                }
                word.push(ch);
                pos += 1;
                ch = chars[pos];
            }
            word.push(ch);
            pos += 1;
            continue;
        }
        // Phase::Quote
        if ch == quote {
            phase = Phase::Word;
        }
        if ch == escape && quote != '\'' {
            if pos + 1 == chars.len() {
                phase = Phase::Word;
                pos += 1;
                continue;
            }
            pos += 1;
            word.push(ch);
            ch = chars[pos];
        }
        word.push(ch);
        pos += 1;
    }
    words
}

/// The argument parser for an instruction keyword (lower case).
pub(super) fn parse_args(
    cmd: &str,
    rest: &str,
    escape: char,
    depth: usize,
) -> Result<Args, String> {
    match cmd {
        "add" | "copy" | "volume" => parse_maybe_json_to_list(rest),
        "arg" => Ok(Args::words(parse_words(rest, escape))),
        "cmd" | "entrypoint" | "run" | "shell" => parse_maybe_json(rest),
        "env" => parse_name_val(rest, "ENV", escape),
        "label" => parse_name_val(rest, "LABEL", escape),
        "expose" | "from" => Ok(Args::words(parse_strings_whitespace_delimited(rest))),
        "healthcheck" => parse_health_config(rest),
        "maintainer" | "stopsignal" | "user" | "workdir" => Ok(parse_string(rest)),
        "onbuild" => parse_sub_command(rest, escape, depth),
        // Unknown instructions parse (with one empty argument, as BuildKit's
        // dump shows); turning them into commands fails later.
        _ => Ok(Args::words(vec![String::new()])),
    }
}

fn parse_sub_command(rest: &str, escape: char, depth: usize) -> Result<Args, String> {
    if rest.is_empty() {
        return Ok(Args::default());
    }
    let child = super::node_from_line(rest, escape, Vec::new(), depth + 1)?;
    Ok(Args {
        trigger: Some(Box::new(child)),
        ..Args::default()
    })
}

fn parse_name_val(rest: &str, key: &str, escape: char) -> Result<Args, String> {
    let words = parse_words(rest, escape);
    if words.is_empty() {
        return Ok(Args::default());
    }
    if !words[0].contains('=') {
        let (name, value) = split_once_whitespace(rest);
        let Some(value) = value else {
            return Err(format!("{key} must have two arguments"));
        };
        return Ok(Args::words(vec![
            name.to_string(),
            value.to_string(),
            String::new(),
        ]));
    }
    let mut args = Vec::with_capacity(words.len() * 3);
    for word in words {
        let Some((name, value)) = word.split_once('=') else {
            return Err(format!(
                "Syntax error - can't find = in {}. Must be of the form: name=value",
                crate::quote::go_quote(&word)
            ));
        };
        args.push(name.to_string());
        args.push(value.to_string());
        args.push("=".to_string());
    }
    Ok(Args::words(args))
}

fn parse_strings_whitespace_delimited(rest: &str) -> Vec<String> {
    if rest.is_empty() {
        return Vec::new();
    }
    split_all_whitespace(rest)
}

fn parse_string(rest: &str) -> Args {
    if rest.is_empty() {
        return Args::default();
    }
    Args::words(vec![rest.to_string()])
}

/// Why a text is not exec form.
#[derive(Debug, PartialEq, Eq)]
pub enum JsonArrayError {
    /// Not JSON, or not an array: the text is shell form.
    NotArray,
    /// A JSON array with something other than strings in it: an error.
    NotStringArray,
}

/// The message BuildKit gives for [`JsonArrayError::NotStringArray`].
pub const NOT_STRING_ARRAY: &str =
    "when using JSON array syntax, arrays must be comprised of strings only";

/// Parses exec-form JSON: an array of strings.
pub fn parse_json_array(rest: &str) -> Result<Vec<String>, JsonArrayError> {
    let rest = rest.trim_start();
    if !rest.starts_with('[') {
        return Err(JsonArrayError::NotArray);
    }
    let values: Vec<serde_json::Value> =
        serde_json::from_str(rest).map_err(|_| JsonArrayError::NotArray)?;
    values
        .into_iter()
        .map(|v| match v {
            serde_json::Value::String(s) => Ok(s),
            _ => Err(JsonArrayError::NotStringArray),
        })
        .collect()
}

fn parse_maybe_json(rest: &str) -> Result<Args, String> {
    if rest.is_empty() {
        return Ok(Args::default());
    }
    match parse_json_array(rest) {
        Ok(args) => Ok(Args {
            args,
            json: true,
            trigger: None,
        }),
        Err(JsonArrayError::NotStringArray) => Err(NOT_STRING_ARRAY.into()),
        Err(JsonArrayError::NotArray) => Ok(Args::words(vec![rest.to_string()])),
    }
}

fn parse_maybe_json_to_list(rest: &str) -> Result<Args, String> {
    match parse_json_array(rest) {
        Ok(args) => Ok(Args {
            args,
            json: true,
            trigger: None,
        }),
        Err(JsonArrayError::NotStringArray) => Err(NOT_STRING_ARRAY.into()),
        Err(JsonArrayError::NotArray) => Ok(Args::words(parse_strings_whitespace_delimited(rest))),
    }
}

/// HEALTHCHECK: a type word (`CMD`, `NONE`) then exec or shell form.
fn parse_health_config(rest: &str) -> Result<Args, String> {
    // BuildKit tests bytes with unicode.IsSpace here.
    let bytes = rest.as_bytes();
    let is_space = |b: u8| (b as char).is_whitespace();
    let sep = bytes
        .iter()
        .position(|&b| is_space(b))
        .unwrap_or(bytes.len());
    if sep == 0 {
        return Ok(Args::default());
    }
    let next = bytes[sep..]
        .iter()
        .position(|&b| !is_space(b))
        .map_or(bytes.len(), |i| sep + i);
    let typ = String::from_utf8_lossy(&bytes[..sep]).into_owned();
    let cmd = parse_maybe_json(&String::from_utf8_lossy(&bytes[next..]))?;
    let mut args = vec![typ];
    args.extend(cmd.args);
    Ok(Args {
        args,
        json: cmd.json,
        trigger: None,
    })
}
