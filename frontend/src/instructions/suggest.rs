//! BuildKit's ` (did you mean X?)` hints: an edit-distance search over
//! the options a value could have meant.

/// Adds BuildKit's ` (did you mean X?)` when an option is within edit
/// distance 2 of `value`.
pub(crate) fn suggest(
    message: String,
    value: &str,
    options: &[&str],
    case_sensitive: bool,
) -> String {
    match search(value, options, case_sensitive) {
        Some(m) => format!("{message} (did you mean {m}?)"),
        None => message,
    }
}

/// BuildKit's `suggest.Search`: the first option nearest to `value` within
/// edit distance 2, none when one equals it; case-insensitive search gives
/// the option in `value`'s case.
pub(crate) fn search<S: AsRef<str>>(
    value: &str,
    options: &[S],
    case_sensitive: bool,
) -> Option<String> {
    let fold = |s: &str| {
        if case_sensitive {
            s.to_string()
        } else {
            s.to_lowercase()
        }
    };
    let val = fold(value);
    let mut best: Option<String> = None;
    let mut min = 3;
    for opt in options {
        let o = fold(opt.as_ref());
        if o == val {
            return None;
        }
        let d = levenshtein(&val, &o);
        if d < min {
            min = d;
            best = Some(if case_sensitive {
                o
            } else if value == value.to_lowercase() {
                o.to_lowercase()
            } else if value == value.to_uppercase() {
                o.to_uppercase()
            } else {
                o
            });
        }
    }
    best
}

fn levenshtein(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}
