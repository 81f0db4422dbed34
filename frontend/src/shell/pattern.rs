//! Shell patterns in `${v#p}`, `${v%p}` and `${v/p/r}`: BuildKit's
//! `convertShellPatternToRegex` and the trims and replacement built on it.

use std::collections::HashMap;

use regex::Regex;

use super::LexResult;

/// Turns a shell glob (`?`, `*`, `\` escapes; no bracket expressions) into a
/// regex, as BuildKit's `convertShellPatternToRegex`. Compiled regexes are
/// kept per thread: Dockerfiles repeat the same few patterns, and compiling
/// costs far more than matching.
pub(super) fn shell_pattern_regex(
    pattern: &str,
    greedy: bool,
    anchored: bool,
) -> Result<Regex, String> {
    thread_local! {
        static CACHE: std::cell::RefCell<HashMap<(String, bool, bool), Regex>> =
            std::cell::RefCell::new(HashMap::new());
    }
    let key = (pattern.to_string(), greedy, anchored);
    if let Some(re) = CACHE.with(|c| c.borrow().get(&key).cloned()) {
        return Ok(re);
    }
    let re = compile_shell_pattern(pattern, greedy, anchored)?;
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.len() >= 256 {
            c.clear();
        }
        c.insert(key, re.clone());
    });
    Ok(re)
}

fn compile_shell_pattern(pattern: &str, greedy: bool, anchored: bool) -> Result<Regex, String> {
    let mut out = String::with_capacity(pattern.len() + 4);
    if anchored {
        out.push('^');
    }
    let star = if greedy { ".*" } else { ".*?" };
    let mut chars = pattern.chars().peekable();
    while let Some(tok) = chars.next() {
        match tok {
            '*' => out.push_str(star),
            '?' => out.push('.'),
            '\\' => {
                // `}` and `/` are escaped to get them into a `${}`; the escape
                // is not part of the pattern.
                if matches!(chars.peek(), Some('}' | '/')) {
                    continue;
                }
                out.push('\\');
                match chars.next() {
                    Some(c @ ('*' | '?' | '\\')) => out.push(c),
                    Some(c) => return Err(format!("invalid escape '\\{c}'")),
                    None => return Err("invalid escape '\\\u{FFFD}'".into()),
                }
            }
            c => {
                let mut buf = [0u8; 4];
                out.push_str(&regex::escape(c.encode_utf8(&mut buf)));
            }
        }
    }
    Regex::new(&out).map_err(|e| e.to_string())
}

pub(super) fn trim_prefix(pattern: &str, value: &str, greedy: bool) -> LexResult<String> {
    let re = shell_pattern_regex(pattern, greedy, true)
        .map_err(|e| format!("invalid pattern ({pattern}) in substitution: {e}"))?;
    Ok(match re.find(value) {
        Some(m) => value[m.end()..].to_string(),
        None => value.to_string(),
    })
}

/// Regexes cannot find the shortest match that ends at the end, so reverse
/// both the value and the pattern (keeping `\x` escapes in order).
pub(super) fn trim_suffix(pattern: &str, value: &str, greedy: bool) -> LexResult<String> {
    let reversed_pattern = reverse_pattern(pattern);
    let reversed_value: String = value.chars().rev().collect();
    let trimmed = trim_prefix(&reversed_pattern, &reversed_value, greedy)?;
    Ok(trimmed.chars().rev().collect())
}

fn reverse_pattern(pattern: &str) -> String {
    let chars: Vec<char> = pattern.chars().collect();
    let mut out = vec!['\0'; chars.len()];
    let last = chars.len().wrapping_sub(1);
    let mut i = 0;
    while i < chars.len() {
        let out_idx = last - i;
        if chars[i] == '\\' && i != last {
            out[out_idx - 1] = '\\';
            out[out_idx] = chars[i + 1];
            i += 2;
        } else {
            out[out_idx] = chars[i];
            i += 1;
        }
    }
    out.into_iter().collect()
}

/// `value` with the first or every match of `re` replaced by `template`
/// (Go's `$1`/`${name}` templates read the same in the regex crate), as
/// Go's `ReplaceAllString`; `None` once the result would pass `limit` bytes.
/// A match's text is bounded before it is made (the template's length and
/// the whole value for each `$` in it), so a template of many `$0`s over a
/// long value fails without being built.
pub(super) fn replace(
    re: &Regex,
    value: &str,
    template: &str,
    all: bool,
    limit: usize,
) -> Option<String> {
    let references = template.matches('$').count();
    let per_match = references
        .checked_mul(value.len())?
        .checked_add(template.len())?;
    if per_match > limit {
        return None;
    }
    let mut out = String::new();
    let mut last = 0;
    for caps in re
        .captures_iter(value)
        .take(if all { usize::MAX } else { 1 })
    {
        let m = caps.get(0).expect("group 0 is the match");
        out.push_str(&value[last..m.start()]);
        caps.expand(template, &mut out);
        last = m.end();
        if out.len() > limit {
            return None;
        }
    }
    out.push_str(&value[last..]);
    (out.len() <= limit).then_some(out)
}
