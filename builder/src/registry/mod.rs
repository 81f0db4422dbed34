//! Registries. For now the grammar of image references, as Docker parses
//! them; the distribution client (pull, push, auth) will live beside it.

pub mod reference;

pub use reference::{Reference, ReferenceError};
