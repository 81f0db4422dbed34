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
