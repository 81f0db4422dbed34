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
        out.push_str(&node.original);
        out.push('\n');
        for doc in &node.heredocs {
            out.push_str(&doc.content);
            out.push_str(&doc.name);
            out.push('\n');
        }
    }
    out
}
