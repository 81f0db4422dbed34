//! Removing a directory tree however deep it is nested.
//!
//! `std::fs::remove_dir_all` recurses once per level and holds a directory
//! descriptor for each: a tree a step nested a hundred thousand levels
//! deep (`mkdir d; cd d` in a loop) overflowed the stack or ran out of
//! descriptors, and a snapshot holding one could not be removed, ever.
//! [`remove_tree`] walks with a list instead of recursion, one descriptor
//! at a time, and keeps every path it uses short: a directory whose path
//! grows long is first renamed to a fresh name right under the tree's top.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Past this many bytes of path, a directory is moved up to the top before
/// it is walked (a name is at most 255 bytes: a child's path stays well
/// under PATH_MAX).
const LONG_PATH: usize = 1024;

/// Removes `path` and everything below it (a file or link is removed
/// itself); nothing there is not an error.
pub fn remove_tree(path: impl AsRef<Path>) -> io::Result<()> {
    let path = path.as_ref();
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
        Ok(m) if !m.is_dir() => return fs::remove_file(path),
        Ok(_) => {}
    }
    let mut moved = 0u64;
    // Directories still to empty; every directory met, parents first.
    let mut pending = vec![path.to_path_buf()];
    let mut met: Vec<PathBuf> = Vec::new();
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            let mut child = entry.path();
            if !entry.file_type()?.is_dir() {
                remove_file_tolerant(&child)?;
                continue;
            }
            if child.as_os_str().len() > LONG_PATH {
                moved += 1;
                let up = path.join(format!(".rbuild-deep-{moved}"));
                fs::rename(&child, &up)?;
                child = up;
            }
            pending.push(child);
        }
        met.push(dir);
    }
    // Children come after their parents (a moved one after the top).
    for dir in met.iter().rev() {
        match fs::remove_dir(dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// Removes a file; one already gone is no error (as remove_dir_all).
fn remove_file_tolerant(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A chain of `depth` directories below `top`, each made from an open
    /// descriptor of the one above (no path reaches the bottom), with a
    /// file at the bottom.
    fn deep_chain(top: &Path, depth: usize) {
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        fs::create_dir_all(top).unwrap();
        let mut dir = OwnedFd::from(fs::File::open(top).unwrap());
        for _ in 0..depth {
            let fd = dir.as_raw_fd();
            // SAFETY: mkdirat/openat on our own descriptor and a C string.
            let next = unsafe {
                libc::mkdirat(fd, c"d".as_ptr(), 0o755);
                libc::openat(fd, c"d".as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY)
            };
            assert!(next >= 0, "{}", io::Error::last_os_error());
            // SAFETY: a descriptor openat just gave us.
            dir = unsafe { OwnedFd::from_raw_fd(next) };
        }
        // SAFETY: as above.
        let f = unsafe {
            libc::openat(
                dir.as_raw_fd(),
                c"f".as_ptr(),
                libc::O_CREAT | libc::O_WRONLY,
                0o644,
            )
        };
        assert!(f >= 0);
        // SAFETY: our own descriptor.
        unsafe { libc::close(f) };
    }

    #[test]
    fn trees_deeper_than_paths_and_stacks_are_removed() {
        let t = std::env::temp_dir().join(format!("rbuild-deep-tree-{}", std::process::id()));
        let _ = fs::remove_dir_all(&t);
        // 30,000 levels: past PATH_MAX by path, past the test thread's
        // stack for a recursive walk, past the usual open-file limits.
        deep_chain(&t.join("tree"), 30_000);
        fs::write(t.join("tree/top-file"), "x").unwrap();
        std::os::unix::fs::symlink("/", t.join("tree/link-out")).unwrap();
        remove_tree(t.join("tree")).unwrap();
        assert!(!t.join("tree").exists());
        // Shallow trees, files, links and missing paths as remove_dir_all
        // (a link is removed, never followed).
        fs::create_dir_all(t.join("small/a/b")).unwrap();
        fs::write(t.join("small/a/b/f"), "x").unwrap();
        remove_tree(t.join("small")).unwrap();
        assert!(!t.join("small").exists());
        fs::write(t.join("file"), "x").unwrap();
        remove_tree(t.join("file")).unwrap();
        std::os::unix::fs::symlink(&t, t.join("link")).unwrap();
        remove_tree(t.join("link")).unwrap();
        assert!(t.exists() && !t.join("link").exists());
        remove_tree(t.join("missing")).unwrap();
        fs::remove_dir_all(&t).unwrap();
    }
}
