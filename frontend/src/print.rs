//! Prints a parsed Dockerfile back as Dockerfile text: directives, one line
//! per instruction (continuations already joined) and heredoc bodies. Parsing
//! the output gives the same instructions, which the tests check for every
//! real-world file.

use crate::parser::Dockerfile;

/// The Dockerfile text of `df`.
pub fn print(df: &Dockerfile) -> String {
    let mut out = String::new();
    for d in &df.directives {
        out.push_str(&format!("# {}={}\n", d.name, d.value));
    }
    for node in &df.nodes {
        if node.original.trim().is_empty() {
            // Only a lone escape character continued into the end of the
            // file gives an empty instruction; write it the same way.
            out.push(df.escape);
            out.push('\n');
            continue;
        }
        out.push_str(&node.original);
        // An instruction that ran into the end of the file can end in what
        // looks like a continuation; one more escape is eaten instead.
        if crate::parser::ends_with_continuation(&node.original, df.escape) {
            out.push(df.escape);
        }
        out.push('\n');
        for doc in &node.heredocs {
            out.push_str(&doc.content);
            out.push_str(&doc.name);
            out.push('\n');
        }
    }
    // The parser drops a byte-order mark at the very start; keep one that
    // belongs to the first instruction.
    if out.starts_with('\u{FEFF}') {
        out.insert(0, '\u{FEFF}');
    }
    out
}

#[cfg(test)]
mod tests {
    use crate::parser::parse;

    fn round_trip(text: &str) {
        let df = parse("Dockerfile", text).unwrap();
        let again = parse("Dockerfile", &super::print(&df)).unwrap();
        assert_eq!(again.dump(), df.dump(), "{text:?}");
    }

    #[test]
    fn round_trips_found_by_fuzzing() {
        // A continuation that runs into the end of the file after a `\ `.
        round_trip("FROM a\nRUN --mount=target=. \\ \\\n# B\n  ");
        // A lone escape at the end: an empty instruction.
        round_trip("FROM `\n\\\n");
        // A byte-order mark that starts the first instruction.
        round_trip("\n\u{feff}");
        round_trip("# escape=`\nFROM a\nRUN x `\n  y\n");
    }
}
