//! A writable view of a directory of the host with some entries hidden:
//! what a step mounts when it binds a build context (the context without
//! what its ignore file excludes). Writes through the view never reach the
//! directory; the view goes when the [`MutableSnapshot`] is dropped.

use std::collections::HashSet;
use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::{
    Backend, MutableSnapshot, SnapshotError, Snapshotter, copy_entry, copy_metadata, io_err,
    mount_overlay, overlay_options, upper_and_work,
};

impl Snapshotter {
    /// A writable snapshot showing directory `dir` without the entries
    /// `hidden` (paths relative to `dir`; a hidden directory hides all
    /// below it). With overlay, `dir` is the lower directory of a mount
    /// and each hidden entry a whiteout in the upper one: nothing is
    /// copied. Without overlay, or where `dir` cannot be a lower directory
    /// (some network and FUSE filesystems), the view is a copy.
    pub fn view(&self, dir: &Path, hidden: &[PathBuf]) -> Result<MutableSnapshot, SnapshotError> {
        let mut snap = self.new_active(None)?;
        let merged = snap.root();
        // fuse-overlayfs stores: the kernel can't mount overlays here.
        if self.backend == Backend::Overlay && !self.fuse {
            let (upper, work) = upper_and_work(&snap.dir)?;
            hide(dir, &upper, hidden)?;
            let options = overlay_options(&[dir.to_path_buf()], &upper, &work);
            if mount_overlay(&merged, &options).is_ok() {
                snap.mounted = true;
                return Ok(snap);
            }
        }
        let hidden: HashSet<&Path> = hidden.iter().map(PathBuf::as_path).collect();
        copy_shown(dir, &merged, Path::new(""), &hidden)?;
        Ok(snap)
    }
}

/// Whiteouts in `upper` for the `hidden` entries of `lower`; the
/// directories above them are made with their metadata from `lower` (an
/// upper directory's owner, mode and mtime are the merged directory's).
fn hide(lower: &Path, upper: &Path, hidden: &[PathBuf]) -> Result<(), SnapshotError> {
    let mut made: Vec<PathBuf> = Vec::new();
    for rel in hidden {
        let Some(parent) = rel.parent() else { continue };
        let mut dir = PathBuf::new();
        for c in parent.components() {
            dir.push(c);
            let up = upper.join(&dir);
            if !up.exists() {
                fs::create_dir(&up).map_err(io_err("creating", &up))?;
                made.push(dir.clone());
            }
        }
        let path = upper.join(rel);
        let c = CString::new(path.as_os_str().as_bytes())
            .map_err(|e| io_err("creating", &path)(io::Error::other(e)))?;
        // SAFETY: a valid path; char 0/0 is overlayfs's whiteout.
        if unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR, 0) } != 0 {
            return Err(io_err("hiding", &path)(io::Error::last_os_error()));
        }
    }
    // Deepest first: setting a directory's mtime before its children were
    // made would not hold.
    made.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    for dir in made {
        let low = lower.join(&dir);
        let meta = fs::symlink_metadata(&low).map_err(io_err("reading", &low))?;
        copy_metadata(&low, &upper.join(&dir), &meta)?;
    }
    Ok(())
}

/// Copies the entries of `src` that are not hidden into `dest`.
fn copy_shown(
    src: &Path,
    dest: &Path,
    rel: &Path,
    hidden: &HashSet<&Path>,
) -> Result<(), SnapshotError> {
    let dir = src.join(rel);
    for e in fs::read_dir(&dir).map_err(io_err("reading", &dir))? {
        let e = e.map_err(io_err("reading", &dir))?;
        let child = rel.join(e.file_name());
        if hidden.contains(child.as_path()) {
            continue;
        }
        let from = src.join(&child);
        let to = dest.join(&child);
        let meta = fs::symlink_metadata(&from).map_err(io_err("reading", &from))?;
        if meta.is_dir() {
            fs::create_dir(&to).map_err(io_err("creating", &to))?;
            copy_shown(src, dest, &child, hidden)?;
        } else {
            copy_entry(&from, &to, &meta)?;
        }
        copy_metadata(&from, &to, &meta)?;
    }
    Ok(())
}
