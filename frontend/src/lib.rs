//! The Dockerfile frontend: text in, build graph out; nothing is executed here.
//!
//! ```text
//! text -parser::parse-> parser::Dockerfile (Node per instruction, Span, heredocs)
//!      -instructions::parse-> Vec<Instruction> (typed, every flag checked)
//!      -stage::plan-> Vec<Stage> (ARGs scoped, words expanded)
//!      -graph::compile-> BuildGraph (petgraph of Op, only what --target needs)
//! ```
//!
//! Beside that path: [`shell`] is BuildKit's word expander (`$v`, `${v:-w}`,
//! quotes), [`ignore`] the `.dockerignore` matcher, and [`gitref`] the parser
//! of git URLs for `ADD` and git contexts. The crate depends on no other
//! rbuild crate and never touches a container or a cache.

pub mod csv;
pub mod gitref;
pub mod glob;
pub mod graph;
pub mod hosts;
pub mod ignore;
pub mod instructions;
pub mod limits;
pub mod lint;
pub mod outline;
pub mod parser;
pub mod print;
pub mod quote;
pub mod reference;
pub mod shell;
pub mod span;
pub mod stage;

pub use parser::{Dockerfile, Node, ParseError, parse};
pub use span::{Location, Span};

/// Go's `strconv.ParseBool`, which BuildKit uses for every boolean it
/// reads from text (mount options, git URL queries, `check=`, build args).
pub fn parse_go_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}
