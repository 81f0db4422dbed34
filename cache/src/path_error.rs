//! The one shape of a filesystem failure across the store (and the
//! builder's COPY): what was being done, to which path, and the cause.
//! Each module's error enum wraps it as its `Io` variant.

use std::io;
use std::path::{Path, PathBuf};

/// A filesystem operation on `path` failed; shows as "`action` `path`"
/// with the OS error as its source.
#[derive(Debug, thiserror::Error)]
#[error("{action} {path}")]
pub struct PathError {
    /// What was being done ("creating", "reading", ...).
    pub action: &'static str,
    /// Where.
    pub path: PathBuf,
    /// The cause.
    #[source]
    pub source: io::Error,
}

impl PathError {
    /// For `map_err`: `fs::read(&p).map_err(PathError::at("reading", &p))?`.
    pub fn at(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> PathError + use<> {
        let path = path.to_path_buf();
        move |source| PathError {
            action,
            path,
            source,
        }
    }
}
