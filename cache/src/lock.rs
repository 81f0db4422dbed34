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

/// Opens (creating) `path` and waits for a shared lock on it (held with
/// others', never with an exclusive one).
pub fn lock_shared(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    file.lock_shared()?;
    Ok(file)
}

/// Opens (creating) `path` and takes an exclusive lock on it if no one
/// holds one; `None` when it is held.
pub fn try_lock_exclusive(path: &Path) -> io::Result<Option<File>> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => Err(e),
    }
}
