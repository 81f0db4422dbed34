//! [`Budget`]: how much of variables and labels a walk over a Dockerfile's
//! stages (the graph compiler, the build checks, the outline) may hold.
//!
//! Each RUN carries all of its stage's variables, each ENV, ARG and LABEL
//! its values (twice in the image: config and history), and each stage
//! built on another starts with a copy of that one's. A file of many ENV
//! lines each followed by a RUN, or of many stages each adding to the last
//! one's variables, grows with the square of its length, and one line may
//! expand to a MiB: past [`MAX_HELD`] such a file is refused with an error
//! naming the line, not run out of memory.

use crate::span::Span;

use super::PlanError;

/// The most variables and labels the steps of a build may hold together.
pub const MAX_HELD: usize = 128 << 20;

/// About what one variable costs beyond its text (its strings' headers and
/// allocations, its place in an index), so that many short ones count as
/// what they take.
pub const ENTRY_OVERHEAD: usize = 160;

/// The same for a `KEY=VALUE` string of a RUN's environment (one string,
/// no index).
pub const STRING_OVERHEAD: usize = 48;

/// What one variable `key=value` counts.
pub fn entry_bytes(key: &str, value: &str) -> usize {
    key.len() + value.len() + ENTRY_OVERHEAD
}

/// Bytes held so far.
#[derive(Debug, Default)]
pub struct Budget {
    held: usize,
}

impl Budget {
    /// Counts `bytes` more, held by the instruction at `span`.
    pub fn hold(&mut self, bytes: usize, span: &Span) -> Result<(), PlanError> {
        self.held = self.held.saturating_add(bytes);
        if self.held > MAX_HELD {
            return Err(PlanError::at(
                span,
                format!(
                    "the steps up to here hold over {} MiB of variables and labels: \
                     the Dockerfile is too large to build",
                    MAX_HELD >> 20
                ),
            ));
        }
        Ok(())
    }
}
