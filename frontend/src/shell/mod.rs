//! Shell-word expansion as BuildKit's `frontend/dockerfile/shell/lex.go` does it.
//!
//! [`Lex`] expands `$v`, `${v}` and the `${v:-w}` family, removes quotes and
//! applies the escape character, either into one word ([`Lex::process_word`])
//! or into whitespace-split fields ([`Lex::process_words`]). It never runs a
//! command and knows nothing of instructions: callers decide which words are
//! expanded and with which environment.
//!
//! The port keeps BuildKit's quirks on purpose, because users' Dockerfiles
//! depend on them: `$1` and `$@` look up variables that are never set, a
//! leading BOM is skipped, and a `${v:-w}` inside a word being split restarts
//! the field that was in progress (BuildKit shares one buffer between nested
//! calls).

mod pattern;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use regex::Regex;

use pattern::{replace, shell_pattern_regex, trim_prefix, trim_suffix};

/// Where expansion looks variables up.
pub trait Env {
    /// The value of `name`, or `None` when it is not set (an empty value is set).
    fn lookup(&self, name: &str) -> Option<&str>;
}

impl Env for BTreeMap<String, String> {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.get(name).map(String::as_str)
    }
}

impl Env for HashMap<String, String> {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.get(name).map(String::as_str)
    }
}

impl Env for [(String, String)] {
    /// Later entries win, as in a process environment built by appending.
    fn lookup(&self, name: &str) -> Option<&str> {
        self.iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

impl Env for Vec<(String, String)> {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.as_slice().lookup(name)
    }
}

/// An environment with nothing in it.
pub struct NoEnv;

impl Env for NoEnv {
    fn lookup(&self, _: &str) -> Option<&str> {
        None
    }
}

/// An expansion failure; the message is BuildKit's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("failed to process {source_word:?}: {message}")]
pub struct ExpandError {
    /// The word that was being expanded.
    pub source_word: String,
    /// What went wrong, without the word.
    pub message: String,
}

/// The outcome of one expansion.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expansion {
    /// The single-word result.
    pub result: String,
    /// The result split into fields.
    pub words: Vec<String>,
    /// Variables looked up and found (also when empty).
    pub matched: BTreeSet<String>,
    /// Variables looked up and not found.
    pub unmatched: BTreeSet<String>,
}

/// A shell-word lexer with a fixed escape character (`\` or `` ` ``).
#[derive(Debug, Clone)]
pub struct Lex {
    escape: char,
    /// Keep quote characters in the output.
    pub raw_quotes: bool,
    /// Keep escape characters in the output.
    pub raw_escapes: bool,
    /// Treat quotes as ordinary characters.
    pub skip_process_quotes: bool,
    /// Leave references to unset variables as written.
    pub skip_unset_env: bool,
}

impl Lex {
    /// A lexer that uses `escape` to escape characters.
    pub fn new(escape: char) -> Lex {
        Lex {
            escape,
            raw_quotes: false,
            raw_escapes: false,
            skip_process_quotes: false,
            skip_unset_env: false,
        }
    }

    /// Expands `word` into one string (BuildKit's `ProcessWord`).
    pub fn process_word(
        &self,
        word: &str,
        env: &(impl Env + ?Sized),
    ) -> Result<String, ExpandError> {
        self.process(word, env).map(|e| e.result)
    }

    /// Expands `word` and splits it into fields (BuildKit's `ProcessWords`).
    pub fn process_words(
        &self,
        word: &str,
        env: &(impl Env + ?Sized),
    ) -> Result<Vec<String>, ExpandError> {
        self.run(word, env, false).map(|e| e.words)
    }

    /// Expands `word`, returning both forms and the variables looked up.
    pub fn process(&self, word: &str, env: &(impl Env + ?Sized)) -> Result<Expansion, ExpandError> {
        self.run(word, env, true)
    }

    fn run(
        &self,
        word: &str,
        env: &(impl Env + ?Sized),
        capture: bool,
    ) -> Result<Expansion, ExpandError> {
        // text/scanner skips a byte-order mark at the very start.
        let text = word.strip_prefix('\u{FEFF}').unwrap_or(word);
        let mut sw = ShellWord {
            lex: self,
            depth: 0,
            text,
            pos: 0,
            capture,
            env,
            raw_escapes: self.raw_escapes,
            grown: 0,
            words_buf: String::new(),
            matched: BTreeSet::new(),
            unmatched: BTreeSet::new(),
        };
        match sw.process_stop_on(None, self.raw_escapes) {
            Ok((result, words)) => Ok(Expansion {
                result,
                words,
                matched: sw.matched,
                unmatched: sw.unmatched,
            }),
            Err(message) => Err(ExpandError {
                source_word: word.to_string(),
                message,
            }),
        }
    }
}

/// How deep `${...}` may nest.
const MAX_NESTING: usize = 256;

/// How many bytes one expansion may take from variables (their values and
/// what `${v/p/r}` makes of them). Each `ARG B=$A$A` doubles a value, so
/// forty such lines asked for a terabyte; Linux passes no environment
/// string over 128 KiB to a program (`MAX_ARG_STRLEN`), so this is far
/// above any value a build can use.
pub const MAX_EXPANSION: usize = 1 << 20;

struct ShellWord<'a, E: ?Sized> {
    lex: &'a Lex,
    /// Current `${...}` nesting.
    depth: usize,
    text: &'a str,
    /// Byte offset of the next character.
    pos: usize,
    /// Record the variables looked up.
    capture: bool,
    env: &'a E,
    raw_escapes: bool,
    /// Bytes taken from variables so far, within [`MAX_EXPANSION`].
    grown: usize,
    /// Shared by nested `process_stop_on` calls, as in BuildKit.
    words_buf: String,
    matched: BTreeSet<String>,
    unmatched: BTreeSet<String>,
}

struct Fields {
    words: Vec<String>,
    in_word: bool,
}

impl Fields {
    fn add_char(&mut self, buf: &mut String, ch: char) {
        if ch.is_whitespace() && self.in_word {
            if !buf.is_empty() {
                self.words.push(std::mem::take(buf));
                self.in_word = false;
            }
        } else if !ch.is_whitespace() {
            self.add_raw_char(buf, ch);
        }
    }

    fn add_raw_char(&mut self, buf: &mut String, ch: char) {
        buf.push(ch);
        self.in_word = true;
    }

    fn add_string(&mut self, buf: &mut String, s: &str) {
        for ch in s.chars() {
            self.add_char(buf, ch);
        }
    }

    fn add_raw_string(&mut self, buf: &mut String, s: &str) {
        buf.push_str(s);
        self.in_word = true;
    }

    fn finish(mut self, buf: &mut String) -> Vec<String> {
        if !buf.is_empty() {
            self.words.push(std::mem::take(buf));
        }
        self.words
    }
}

type LexResult<T> = Result<T, String>;

impl<E: Env + ?Sized> ShellWord<'_, E> {
    fn peek(&self) -> Option<char> {
        self.text[self.pos..].chars().next()
    }

    fn next(&mut self) -> Option<char> {
        let ch = self.peek();
        if let Some(c) = ch {
            self.pos += c.len_utf8();
        }
        ch
    }

    fn process_stop_on(
        &mut self,
        stop: Option<char>,
        raw_escapes: bool,
    ) -> LexResult<(String, Vec<String>)> {
        // `${a:-${b:-...}}` recurses once per level; hostile input must not
        // exhaust the stack.
        if self.depth >= MAX_NESTING {
            return Err(format!(
                "substitutions nested deeper than {MAX_NESTING} levels"
            ));
        }
        self.depth += 1;
        let out = self.process_stop_on_nested(stop, raw_escapes);
        self.depth -= 1;
        out
    }

    fn process_stop_on_nested(
        &mut self,
        stop: Option<char>,
        raw_escapes: bool,
    ) -> LexResult<(String, Vec<String>)> {
        let saved = self.raw_escapes;
        self.raw_escapes = raw_escapes;
        let out = self.process_stop_on_inner(stop);
        self.raw_escapes = saved;
        out
    }

    fn process_stop_on_inner(&mut self, stop: Option<char>) -> LexResult<(String, Vec<String>)> {
        let mut result = String::new();
        self.words_buf.clear();
        let mut fields = Fields {
            words: Vec::new(),
            in_word: false,
        };
        let escape = self.lex.escape;
        let quotes = !self.lex.skip_process_quotes;

        while let Some(ch) = self.peek() {
            if stop == Some(ch) {
                self.next();
                let words = fields.finish(&mut self.words_buf);
                return Ok((result, words));
            }
            let special = match ch {
                '$' => Some(self.process_dollar()?),
                '<' => Some(self.process_possible_heredoc()),
                '\'' if quotes => Some(self.process_single_quote()?),
                '"' if quotes => Some(self.process_double_quote()?),
                _ => None,
            };
            if let Some(tmp) = special {
                result.push_str(&tmp);
                if ch == '$' {
                    fields.add_string(&mut self.words_buf, &tmp);
                } else {
                    fields.add_raw_string(&mut self.words_buf, &tmp);
                }
                continue;
            }
            let mut ch = self.next().unwrap_or(ch);
            if ch == escape {
                if self.raw_escapes {
                    fields.add_raw_char(&mut self.words_buf, ch);
                    result.push(ch);
                }
                // The escape character escapes the next one, except at the end.
                match self.next() {
                    None => break,
                    Some(c) => ch = c,
                }
                fields.add_raw_char(&mut self.words_buf, ch);
            } else {
                fields.add_char(&mut self.words_buf, ch);
            }
            result.push(ch);
        }
        if let Some(stop) = stop {
            return Err(format!(
                "unexpected end of statement while looking for matching {stop}"
            ));
        }
        let words = fields.finish(&mut self.words_buf);
        Ok((result, words))
    }

    /// The word up to `stop` (consumed); past the end of the text, the
    /// error is `missing` (BuildKit's message for that place).
    fn process_until(&mut self, stop: char, raw_escapes: bool, missing: &str) -> LexResult<String> {
        match self.process_stop_on(Some(stop), raw_escapes) {
            Ok((word, _)) => Ok(word),
            Err(_) if self.peek().is_none() => Err(missing.into()),
            Err(e) => Err(e),
        }
    }

    fn process_single_quote(&mut self) -> LexResult<String> {
        let mut result = String::new();
        let open = self.next();
        if self.lex.raw_quotes {
            result.extend(open);
        }
        loop {
            match self.next() {
                None => {
                    return Err(
                        "unexpected end of statement while looking for matching single-quote"
                            .into(),
                    );
                }
                Some('\'') => {
                    if self.lex.raw_quotes {
                        result.push('\'');
                    }
                    return Ok(result);
                }
                Some(c) => result.push(c),
            }
        }
    }

    fn process_double_quote(&mut self) -> LexResult<String> {
        let mut result = String::new();
        let open = self.next();
        if self.lex.raw_quotes {
            result.extend(open);
        }
        let escape = self.lex.escape;
        loop {
            match self.peek() {
                None => {
                    return Err(
                        "unexpected end of statement while looking for matching double-quote"
                            .into(),
                    );
                }
                Some('"') => {
                    self.next();
                    if self.lex.raw_quotes {
                        result.push('"');
                    }
                    return Ok(result);
                }
                Some('$') => {
                    let value = self.process_dollar()?;
                    result.push_str(&value);
                }
                Some(_) => {
                    let mut ch = self.next().unwrap_or_default();
                    if ch == escape {
                        if self.raw_escapes {
                            result.push(ch);
                        }
                        match self.peek() {
                            // An escape at the end of the word is dropped.
                            None => continue,
                            Some(c) if c == '"' || c == '$' || c == escape => {
                                ch = c;
                                self.next();
                            }
                            Some(_) => {}
                        }
                    }
                    result.push(ch);
                }
            }
        }
    }

    fn process_dollar(&mut self) -> LexResult<String> {
        self.next();
        if self.peek() != Some('{') {
            let name = self.process_name();
            if name.is_empty() {
                return Ok("$".into());
            }
            return Ok(match self.get_env(&name)? {
                Some(v) => v,
                None if self.lex.skip_unset_env => format!("${name}"),
                None => String::new(),
            });
        }

        self.next();
        match self.peek() {
            None => return Err("syntax error: missing '}'".into()),
            Some('{' | '}' | ':') => return Err("syntax error: bad substitution".into()),
            Some(_) => {}
        }
        let name = self.process_name();
        let first = self.next();
        let mut modifier = String::new();
        modifier.extend(first);
        match first {
            Some('}') => match self.get_env(&name)? {
                Some(v) => Ok(v),
                None if self.lex.skip_unset_env => Ok(format!("${{{name}}}")),
                None => Ok(String::new()),
            },
            Some(':' | '+' | '-' | '?' | '#' | '%') => {
                let null_is_unset = first == Some(':');
                let op = if null_is_unset {
                    let op = self.next();
                    modifier.extend(op);
                    op
                } else {
                    first
                };
                let raw_escapes = matches!(op, Some('#' | '%'));
                if null_is_unset && raw_escapes {
                    return Err(format!("unsupported modifier ({modifier}) in substitution"));
                }
                let word = self.process_until('}', raw_escapes, "syntax error: missing '}'")?;
                let value = self.get_env(&name)?;
                if self.lex.skip_unset_env && value.is_none() {
                    return Ok(format!("${{{name}{modifier}{word}}}"));
                }
                let empty = value.as_deref() == Some("");
                let unset = value.is_none() || (null_is_unset && empty);
                match op {
                    Some('-') => Ok(if unset {
                        word
                    } else {
                        value.unwrap_or_default()
                    }),
                    Some('+') => Ok(if unset { String::new() } else { word }),
                    Some('?') => match value {
                        None => Err(format!(
                            "{name}: {}",
                            if word.is_empty() {
                                "is not allowed to be unset"
                            } else {
                                &word
                            }
                        )),
                        Some(v) if null_is_unset && v.is_empty() => Err(format!(
                            "{name}: {}",
                            if word.is_empty() {
                                "is not allowed to be empty"
                            } else {
                                &word
                            }
                        )),
                        Some(v) => Ok(v),
                    },
                    Some(c @ ('%' | '#')) => {
                        let value = value.unwrap_or_default();
                        let (greedy, pattern) = match word.strip_prefix(c) {
                            Some(rest) => (true, rest.to_string()),
                            None => (false, word),
                        };
                        if c == '%' {
                            trim_suffix(&pattern, &value, greedy)
                        } else {
                            trim_prefix(&pattern, &value, greedy)
                        }
                    }
                    _ => Err(format!("unsupported modifier ({modifier}) in substitution")),
                }
            }
            Some('/') => {
                let replace_all = self.peek() == Some('/');
                if replace_all {
                    self.next();
                }
                let pattern = self.process_until('/', true, "syntax error: missing '/' in ${}")?;
                let replacement = self.process_until('}', true, "syntax error: missing '}'")?;
                let value = self.get_env(&name)?;
                if self.lex.skip_unset_env && value.is_none() {
                    return Ok(format!("${{{name}/{pattern}/{replacement}}}"));
                }
                let value = value.unwrap_or_default();
                let re = shell_pattern_regex(&pattern, true, false)
                    .map_err(|e| format!("invalid pattern ({pattern}) in substitution: {e}"))?;
                let limit = MAX_EXPANSION - self.grown.min(MAX_EXPANSION);
                let replaced =
                    replace(&re, &value, &replacement, replace_all, limit).ok_or_else(too_large)?;
                self.grow(replaced.len())?;
                Ok(replaced)
            }
            _ => Err(format!("unsupported modifier ({modifier}) in substitution")),
        }
    }

    fn process_name(&mut self) -> String {
        let mut name = String::new();
        while let Some(ch) = self.peek() {
            if name.is_empty() && is_go_digit(ch) {
                while let Some(d) = self.peek().filter(|c| is_go_digit(*c)) {
                    self.next();
                    name.push(d);
                }
                return name;
            }
            if name.is_empty() && is_special_param(ch) {
                self.next();
                return ch.to_string();
            }
            if !ch.is_alphabetic() && !is_go_digit(ch) && ch != '_' {
                break;
            }
            self.next();
            name.push(ch);
        }
        name
    }

    fn process_possible_heredoc(&mut self) -> String {
        self.next();
        if self.peek() != Some('<') {
            return "<".into();
        }
        self.next();
        let mut result = String::from("<<");
        while let Some(c) = self.peek().filter(|c| matches!(c, '\t' | '\r' | ' ')) {
            result.push(c);
            self.next();
        }
        result
    }

    /// Counts `bytes` more taken from variables.
    fn grow(&mut self, bytes: usize) -> LexResult<()> {
        self.grown = self.grown.saturating_add(bytes);
        if self.grown > MAX_EXPANSION {
            return Err(too_large());
        }
        Ok(())
    }

    fn get_env(&mut self, name: &str) -> LexResult<Option<String>> {
        let env = self.env;
        let found = env.lookup(name);
        if let Some(v) = found {
            self.grow(v.len())?;
        }
        let value = found.map(str::to_string);
        if self.capture {
            let set = if value.is_some() {
                &mut self.matched
            } else {
                &mut self.unmatched
            };
            if !set.contains(name) {
                set.insert(name.to_string());
            }
        }
        Ok(value)
    }
}

fn too_large() -> String {
    format!(
        "expands to more than {} MiB of variable values",
        MAX_EXPANSION >> 20
    )
}

/// Go's `unicode.IsDigit`: Unicode decimal digits (category Nd), which is
/// narrower than `char::is_numeric` (that also takes `½` and `Ⅻ`).
fn is_go_digit(c: char) -> bool {
    static ND: std::sync::OnceLock<Regex> = std::sync::OnceLock::new();
    c.is_ascii_digit()
        || (!c.is_ascii()
            && c.is_numeric()
            && ND
                .get_or_init(|| Regex::new(r"^\p{Nd}$").expect("valid regex"))
                .is_match(c.encode_utf8(&mut [0u8; 4])))
}

fn is_special_param(c: char) -> bool {
    matches!(c, '@' | '*' | '#' | '?' | '-' | '$' | '!' | '0')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn nested_default_restarts_field_as_buildkit() {
        let lex = Lex::new('\\');
        let words = lex.process_words("ab${x:-c}d", &env(&[])).unwrap();
        assert_eq!(words, vec!["cd"]);
        assert_eq!(lex.process_word("ab${x:-c}d", &env(&[])).unwrap(), "abcd");
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let word = "${a:-".repeat(100_000) + &"}".repeat(100_000);
        let err = Lex::new('\\').process_word(&word, &env(&[])).unwrap_err();
        assert!(err.message.contains("nested deeper"), "{err}");
        let ok = "${a:-".repeat(50) + "x" + &"}".repeat(50);
        assert_eq!(Lex::new('\\').process_word(&ok, &env(&[])).unwrap(), "x");
    }

    #[test]
    fn expansions_past_the_limit_are_errors() {
        let lex = Lex::new('\\');
        let half = "x".repeat(MAX_EXPANSION / 2);
        let vars = env(&[("A", &half), ("S", "ab")]);
        assert_eq!(
            lex.process_word("$A$A", &vars).unwrap().len(),
            MAX_EXPANSION
        );
        for word in [
            "$A$A$S",
            "${A}\"$A$A\"",
            "${A:-x}${A:+$A}$A",
            "${S//?/$A}",
            "${A//x/xxx}",
        ] {
            let err = lex.process_word(word, &vars).unwrap_err();
            assert!(err.message.contains("more than 1 MiB"), "{word}: {err}");
        }
        // A template of many `$0`s over a long value is refused unmade.
        let many = format!("${{A/x/{}}}", "\\$0".repeat(10_000));
        assert!(lex.process_word(&many, &vars).is_err());
        assert_eq!(lex.process_word("${S//?/$S}", &vars).unwrap(), "abab");
    }

    #[test]
    fn digits() {
        assert!(is_go_digit('7'));
        assert!(is_go_digit('٣'));
        assert!(!is_go_digit('½'));
        assert!(!is_go_digit('Ⅻ'));
    }
}
