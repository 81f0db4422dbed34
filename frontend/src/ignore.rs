//! `.dockerignore` semantics, ported from moby/patternmatcher (not gitignore).
//!
//! [`read_ignore_file`] turns the file into patterns (comments, BOM, `!`,
//! `filepath.Clean`, leading `/` dropped); [`PatternMatcher`] decides whether
//! a context path is excluded: later patterns win, `!` re-includes, `**`
//! spans directories, and a path is excluded when it or any parent matches.
//! For walking a context, [`PatternMatcher::matches_with_parents`] reuses the
//! parent directory's result, and [`PatternMatcher::may_include_under`] tells
//! whether an excluded directory can be skipped whole.
//!
//! [`ignore_file_for`] picks `<Dockerfile>.dockerignore` over the context's.

use std::path::{Path, PathBuf};

use regex::Regex;

use crate::glob::{self, BadPattern};

/// A pattern that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IgnoreError {
    /// `!` alone.
    #[error("illegal exclusion pattern: \"!\"")]
    IllegalExclusion,
    /// Not a valid glob.
    #[error("syntax error in pattern `{pattern}`")]
    BadPattern {
        /// The pattern as cleaned.
        pattern: String,
    },
    /// More wildcard patterns than [`MAX_WILDCARD_PATTERNS`].
    #[error(
        "more than {MAX_WILDCARD_PATTERNS} patterns with wildcards (the one past it: `{pattern}`)"
    )]
    TooManyPatterns {
        /// The first pattern past the limit, as cleaned.
        pattern: String,
    },
}

/// The most patterns that need a regex (wildcards in the middle) one
/// matcher takes: each costs some 10 KB and is tried on every path of
/// the context, so a hostile ignore file of a million of them (16 MiB)
/// would take gigabytes. Plain names, `dir/**` and `**/name` patterns are
/// not counted; real files have tens of lines.
pub const MAX_WILDCARD_PATTERNS: usize = 10_000;

/// Reads `.dockerignore` text into patterns, as `ignorefile.ReadAll`.
pub fn read_ignore_file(text: &str) -> Vec<String> {
    read_ignore_file_lines(text)
        .into_iter()
        .map(|(_, p)| p)
        .collect()
}

/// Like [`read_ignore_file`], with each pattern's 1-based line number.
pub fn read_ignore_file_lines(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    // Lines as Go's bufio.ScanLines gives them: no empty last line, `\r` dropped.
    let body = text.strip_suffix('\n').unwrap_or(text);
    let lines = body.split('\n').filter(|_| !text.is_empty());
    for (i, line) in lines.enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        let line = if i == 0 {
            line.strip_prefix('\u{FEFF}').unwrap_or(line)
        } else {
            line
        };
        if line.starts_with('#') {
            continue;
        }
        let mut pattern = line.trim();
        if pattern.is_empty() {
            continue;
        }
        let invert = pattern.starts_with('!');
        if invert {
            pattern = pattern[1..].trim();
        }
        let mut cleaned = String::new();
        if !pattern.is_empty() {
            cleaned = glob::clean(pattern);
            if cleaned.len() > 1 && cleaned.starts_with('/') {
                cleaned.remove(0);
            }
        }
        if invert {
            cleaned.insert(0, '!');
        }
        out.push((i + 1, cleaned));
    }
    out
}

/// The ignore file that applies to a build: `<dockerfile>.dockerignore`
/// beside the Dockerfile wins over `<context>/.dockerignore`.
pub fn ignore_file_for(context: &Path, dockerfile: &Path) -> Option<PathBuf> {
    let mut specific = dockerfile.as_os_str().to_owned();
    specific.push(".dockerignore");
    let specific = PathBuf::from(specific);
    if specific.is_file() {
        return Some(specific);
    }
    let general = context.join(".dockerignore");
    general.is_file().then_some(general)
}

#[derive(Debug, Clone)]
enum Kind {
    Exact,
    Prefix(String),
    Suffix(String),
    Regex(Regex),
}

/// One cleaned pattern.
#[derive(Debug, Clone)]
pub struct Pattern {
    cleaned: String,
    dirs: Vec<String>,
    exclusion: bool,
    kind: Result<Kind, BadPattern>,
}

impl Pattern {
    /// The pattern without its `!`.
    pub fn as_str(&self) -> &str {
        &self.cleaned
    }

    /// Whether it re-includes (`!`).
    pub fn is_exclusion(&self) -> bool {
        self.exclusion
    }

    fn matches(&self, path: &str) -> Result<bool, IgnoreError> {
        let bad = || IgnoreError::BadPattern {
            pattern: self.cleaned.clone(),
        };
        Ok(match self.kind.as_ref().map_err(|_| bad())? {
            Kind::Exact => path == self.cleaned,
            Kind::Prefix(p) => path.starts_with(p.as_str()),
            Kind::Suffix(suffix) => {
                path.ends_with(suffix.as_str()) || (suffix.starts_with('/') && path == &suffix[1..])
            }
            Kind::Regex(re) => re.is_match(path),
        })
    }
}

/// Turns a cleaned pattern into a matcher, as patternmatcher's `compile`.
fn compile(pattern: &str) -> Result<Kind, BadPattern> {
    #[derive(PartialEq)]
    enum Detected {
        Exact,
        Prefix,
        Suffix,
        Regex,
    }
    let mut re = String::from("^");
    let mut detected = Detected::Exact;
    let chars: Vec<char> = pattern.chars().collect();
    let mut i = 0;
    let mut first = true;
    while i < chars.len() {
        let ch = chars[i];
        i += 1;
        if ch == '*' {
            if chars.get(i) == Some(&'*') {
                i += 1;
                if chars.get(i) == Some(&'/') {
                    i += 1;
                }
                if i == chars.len() {
                    if detected == Detected::Exact {
                        detected = Detected::Prefix;
                    } else {
                        re.push_str(".*");
                        detected = Detected::Regex;
                    }
                } else {
                    re.push_str("(.*/)?");
                    detected = Detected::Regex;
                }
                if first {
                    detected = Detected::Suffix;
                }
            } else {
                re.push_str("[^/]*");
                detected = Detected::Regex;
            }
        } else if ch == '?' {
            re.push_str("[^/]");
            detected = Detected::Regex;
        } else if ".+()|{}$".contains(ch) {
            re.push('\\');
            re.push(ch);
        } else if ch == '\\' {
            match chars.get(i) {
                Some(&next) => {
                    i += 1;
                    re.push('\\');
                    re.push(next);
                    detected = Detected::Regex;
                }
                None => re.push('\\'),
            }
        } else if ch == '[' || ch == ']' {
            re.push(ch);
            detected = Detected::Regex;
        } else {
            re.push(ch);
        }
        first = false;
    }
    Ok(match detected {
        Detected::Exact => Kind::Exact,
        Detected::Prefix => Kind::Prefix(pattern[..pattern.len() - 2].to_string()),
        Detected::Suffix => Kind::Suffix(pattern[2..].to_string()),
        Detected::Regex => {
            re.push('$');
            Kind::Regex(Regex::new(&go_regex_to_rust(&re)).map_err(|_| BadPattern)?)
        }
    })
}

/// Go's RE2 syntax and the regex crate differ inside character classes: the
/// regex crate reads `[` as a nested class and `&&`, `--`, `~~` as set
/// operations, where Go reads plain characters. Escape those.
fn go_regex_to_rust(re: &str) -> String {
    let mut out = String::with_capacity(re.len());
    let chars: Vec<char> = re.chars().collect();
    let mut in_class = false;
    let mut class_start = 0;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\\' && i + 1 < chars.len() {
            out.push(c);
            out.push(chars[i + 1]);
            i += 2;
            continue;
        }
        if in_class {
            match c {
                ']' if i > class_start => in_class = false,
                '[' if chars.get(i + 1) == Some(&':') => {
                    // A POSIX class such as [:alpha:]: copy it whole.
                    if let Some(end) = (i + 2..chars.len().saturating_sub(1))
                        .find(|&j| chars[j] == ':' && chars[j + 1] == ']')
                    {
                        out.extend(&chars[i..=end + 1]);
                        i = end + 2;
                        continue;
                    }
                    out.push('\\');
                }
                '[' | '&' | '~' => out.push('\\'),
                '-' if chars.get(i + 1) == Some(&'-') => out.push('\\'),
                _ => {}
            }
            out.push(c);
            i += 1;
            continue;
        }
        if c == '[' {
            in_class = true;
            out.push(c);
            i += 1;
            if chars.get(i) == Some(&'^') {
                out.push('^');
                i += 1;
            }
            // A `]` right after `[` or `[^` is a literal in both syntaxes.
            class_start = i;
            continue;
        }
        out.push(c);
        i += 1;
    }
    out
}

/// The result of matching a directory, reused for its children.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MatchInfo {
    parent_matched: Vec<bool>,
}

/// An ordered list of `.dockerignore` patterns.
#[derive(Debug, Clone, Default)]
pub struct PatternMatcher {
    patterns: Vec<Pattern>,
    exclusions: bool,
}

impl PatternMatcher {
    /// Cleans and checks `patterns` (`!` re-includes).
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Result<PatternMatcher, IgnoreError> {
        let mut pm = PatternMatcher::default();
        let mut wildcards = 0;
        for p in patterns {
            let p = p.as_ref().trim();
            if p.is_empty() {
                continue;
            }
            let mut p = glob::clean(p);
            let mut exclusion = false;
            if let Some(rest) = p.strip_prefix('!') {
                if rest.is_empty() {
                    return Err(IgnoreError::IllegalExclusion);
                }
                p = rest.to_string();
                exclusion = true;
                pm.exclusions = true;
            }
            glob::glob_match(&p, ".")
                .map_err(|_| IgnoreError::BadPattern { pattern: p.clone() })?;
            let kind = compile(&p);
            if matches!(kind, Ok(Kind::Regex(_))) {
                wildcards += 1;
                if wildcards > MAX_WILDCARD_PATTERNS {
                    return Err(IgnoreError::TooManyPatterns { pattern: p });
                }
            }
            pm.patterns.push(Pattern {
                dirs: p.split('/').map(str::to_string).collect(),
                kind,
                cleaned: p,
                exclusion,
            });
        }
        Ok(pm)
    }

    /// The index of the first pattern that cannot match anything because
    /// it does not compile (Go accepts it at first and fails when matching).
    pub fn first_invalid(&self) -> Option<usize> {
        self.patterns.iter().position(|p| p.kind.is_err())
    }

    /// The patterns, in order.
    pub fn patterns(&self) -> &[Pattern] {
        &self.patterns
    }

    /// Whether any pattern re-includes.
    pub fn has_exclusions(&self) -> bool {
        self.exclusions
    }

    /// Whether `path` (slash-separated, relative to the context) is ignored:
    /// it or one of its parents matches the last pattern that decides.
    /// This is what a build uses.
    pub fn matches_or_parent_matches(&self, path: &str) -> Result<bool, IgnoreError> {
        let path = glob::clean(path);
        if path == "." {
            return Ok(false);
        }
        let parent = glob::dir(&path);
        let parent_dirs: Vec<&str> = parent.split('/').collect();
        let mut matched = false;
        for pattern in &self.patterns {
            if pattern.exclusion != matched {
                continue;
            }
            let mut hit = pattern.matches(&path)?;
            if !hit && parent != "." {
                for i in 0..parent_dirs.len() {
                    if pattern
                        .matches(&parent_dirs[..=i].join("/"))
                        .unwrap_or(false)
                    {
                        hit = true;
                        break;
                    }
                }
            }
            if hit {
                matched = !pattern.exclusion;
            }
        }
        Ok(matched)
    }

    /// patternmatcher's older `Matches`: only the parent at the pattern's
    /// own depth is tried. Kept for conformance; builds use
    /// [`PatternMatcher::matches_or_parent_matches`].
    pub fn matches(&self, path: &str) -> Result<bool, IgnoreError> {
        let path = glob::clean(path);
        if path == "." {
            return Ok(false);
        }
        let parent = glob::dir(&path);
        let parent_dirs: Vec<&str> = parent.split('/').collect();
        let mut matched = false;
        for pattern in &self.patterns {
            if pattern.exclusion != matched {
                continue;
            }
            let mut hit = pattern.matches(&path)?;
            if !hit && parent != "." && pattern.dirs.len() <= parent_dirs.len() {
                hit = pattern
                    .matches(&parent_dirs[..pattern.dirs.len()].join("/"))
                    .unwrap_or(false);
            }
            if hit {
                matched = !pattern.exclusion;
            }
        }
        Ok(matched)
    }

    /// Matches `path` given its parent directory's [`MatchInfo`] (empty for
    /// a top-level entry), so a walk tests each pattern against each path
    /// once instead of against every parent again.
    pub fn matches_with_parents(
        &self,
        path: &str,
        parent: &MatchInfo,
    ) -> Result<(bool, MatchInfo), IgnoreError> {
        let mut info = MatchInfo {
            parent_matched: vec![false; self.patterns.len()],
        };
        let mut matched = false;
        for (i, pattern) in self.patterns.iter().enumerate() {
            let mut hit = parent.parent_matched.get(i).copied().unwrap_or(false);
            if !hit {
                if pattern.exclusion != matched {
                    continue;
                }
                hit = pattern.matches(path)?;
            }
            info.parent_matched[i] = hit;
            if hit {
                matched = !pattern.exclusion;
            }
        }
        Ok((matched, info))
    }

    /// Whether something under the excluded directory `dir` could be
    /// re-included by a `!` pattern. When false, a walk skips `dir` whole.
    pub fn may_include_under(&self, dir: &str) -> bool {
        let dir = glob::clean(dir);
        let dir_parts: Vec<&str> = dir.split('/').collect();
        self.patterns.iter().filter(|p| p.exclusion).any(|p| {
            for (i, segment) in p.dirs.iter().enumerate() {
                if segment.contains("**") {
                    return true;
                }
                let Some(part) = dir_parts.get(i) else {
                    // The pattern goes deeper than `dir`.
                    return true;
                };
                if !glob::glob_match(segment, part).unwrap_or(true) {
                    return false;
                }
            }
            // The pattern names `dir` itself (or a parent): everything under it.
            true
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn dockerfile_specific_ignore_file_wins() {
        let root = std::env::temp_dir().join(format!("rbuild-ignfile-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(root.join("build")).unwrap();
        fs::write(root.join(".dockerignore"), "a").unwrap();
        let dockerfile = root.join("build/web.Dockerfile");
        assert_eq!(
            ignore_file_for(&root, &dockerfile),
            Some(root.join(".dockerignore"))
        );
        fs::write(root.join("build/web.Dockerfile.dockerignore"), "b").unwrap();
        assert_eq!(
            ignore_file_for(&root, &dockerfile),
            Some(root.join("build/web.Dockerfile.dockerignore"))
        );
        fs::remove_dir_all(&root).unwrap();
        assert_eq!(ignore_file_for(&root, &dockerfile), None);
    }

    #[test]
    fn exceptions_inside_excluded_dir() {
        let pm = PatternMatcher::new(&["docs", "!docs/keep.md"]).unwrap();
        assert!(pm.matches_or_parent_matches("docs/a.md").unwrap());
        assert!(!pm.matches_or_parent_matches("docs/keep.md").unwrap());
        assert!(pm.may_include_under("docs"));
        let pm = PatternMatcher::new(&["docs", "!src/x"]).unwrap();
        assert!(!pm.may_include_under("docs"));
    }

    #[test]
    fn walk_with_parent_results_agrees() {
        let pm = PatternMatcher::new(&["a/**/c", "!a/b/c/keep", "*.tmp"]).unwrap();
        let (m1, i1) = pm.matches_with_parents("a", &MatchInfo::default()).unwrap();
        let (m2, i2) = pm.matches_with_parents("a/b", &i1).unwrap();
        let (m3, i3) = pm.matches_with_parents("a/b/c", &i2).unwrap();
        let (m4, _) = pm.matches_with_parents("a/b/c/keep", &i3).unwrap();
        let (m5, _) = pm.matches_with_parents("a/b/c/other", &i3).unwrap();
        assert_eq!((m1, m2, m3, m4, m5), (false, false, true, false, true));
        for p in ["a", "a/b", "a/b/c", "a/b/c/keep", "a/b/c/other"] {
            let _ = pm.matches_or_parent_matches(p).unwrap();
        }
    }

    #[test]
    fn reads_file() {
        let pats = read_ignore_file("\u{FEFF}# c\n/a/../b\n ! c/ \n\n!\n*.o\r\n");
        assert_eq!(pats, vec!["b", "!c", "!", "*.o"]);
    }

    #[test]
    fn rust_regex_classes_read_as_go() {
        assert_eq!(go_regex_to_rust("^[a[b]$"), "^[a\\[b]$");
        assert_eq!(go_regex_to_rust("^[]a]$"), "^[]a]$");
        assert_eq!(go_regex_to_rust("^a[^/]*b[x]$"), "^a[^/]*b[x]$");
        assert_eq!(go_regex_to_rust("^[[:alpha:]x]$"), "^[[:alpha:]x]$");
    }
}
