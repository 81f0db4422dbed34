//! File locks: an exclusive `flock` on a lock file, released when the
//! returned file is dropped or its process dies (so a killed process never
//! leaves a lock behind). Used for `index.json` updates, cache keys and GC.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;

/// Opens (creating) `path` and waits for an exclusive lock on it.
pub fn lock_exclusive(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    file.lock()?;
    Ok(file)
}
