//! Snapshots as plain trees (the copy backend, and chains too long to
//! mount): a tree copied with its metadata, overlay-form layers applied
//! onto one.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::*;

/// `cp -a` of a tree, hard links kept as copies (layers record them anyway).
pub(super) fn copy_tree(src: &Path, dest: &Path) -> Result<(), SnapshotError> {
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg("--")
        .arg(format!("{}/.", src.display()))
        .arg(dest)
        .status()
        .map_err(io_err("running cp for", src))?;
    if !status.success() {
        return Err(io_err("copying", src)(io::Error::other(format!(
            "cp exited with {status}"
        ))));
    }
    Ok(())
}

/// Files of one layer directory with more than one link, by (device,
/// inode), and where their first name was copied to.
pub(super) type HardLinks = std::collections::HashMap<(u64, u64), PathBuf>;

/// Applies one overlay-form layer directory onto a flat tree (char 0/0 =
/// delete, opaque directory = replace the contents). Names of one file in
/// the layer stay hard links of one file in the tree.
pub(super) fn apply_overlay_dir(
    layer: &Path,
    dest: &Path,
    links: &mut HardLinks,
) -> Result<(), SnapshotError> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    fs::create_dir_all(dest).map_err(io_err("creating", dest))?;
    for e in fs::read_dir(layer)
        .map_err(io_err("reading", layer))?
        .flatten()
    {
        if e.file_name() == crate::OPAQUE_MARKER {
            // fuse-overlayfs's opaque marker: the directory's xattr says it.
            continue;
        }
        let src = e.path();
        let target = dest.join(e.file_name());
        let meta = fs::symlink_metadata(&src).map_err(io_err("reading", &src))?;
        let existing = fs::symlink_metadata(&target).ok();
        let whiteout = meta.file_type().is_char_device() && meta.rdev() == 0;
        let opaque = meta.is_dir() && crate::is_overlay_opaque(&src);
        if let Some(m) = &existing
            && (whiteout || opaque || !(m.is_dir() && meta.is_dir()))
        {
            let r = if m.is_dir() {
                crate::tree::remove_tree(&target)
            } else {
                fs::remove_file(&target)
            };
            r.map_err(io_err("removing", &target))?;
        }
        if whiteout {
            continue;
        }
        if meta.is_dir() {
            if !target.exists() {
                fs::create_dir(&target).map_err(io_err("creating", &target))?;
            }
            apply_overlay_dir(&src, &target, links)?;
        } else if meta.is_file() && meta.nlink() > 1 {
            match links.get(&(meta.dev(), meta.ino())) {
                Some(first) => {
                    fs::hard_link(first, &target).map_err(io_err("linking", &target))?;
                    continue;
                }
                None => {
                    copy_entry(&src, &target, &meta)?;
                    links.insert((meta.dev(), meta.ino()), target.clone());
                }
            }
        } else {
            copy_entry(&src, &target, &meta)?;
        }
        copy_metadata(&src, &target, &meta)?;
    }
    Ok(())
}

/// Copies one non-directory entry (content, link target or device node).
pub(super) fn copy_entry(
    src: &Path,
    dest: &Path,
    meta: &fs::Metadata,
) -> Result<(), SnapshotError> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let ft = meta.file_type();
    if ft.is_symlink() {
        let target = fs::read_link(src).map_err(io_err("reading", src))?;
        std::os::unix::fs::symlink(target, dest).map_err(io_err("creating", dest))
    } else if ft.is_file() {
        fs::copy(src, dest)
            .map(|_| ())
            .map_err(io_err("copying", src))
    } else if ft.is_char_device() || ft.is_block_device() || ft.is_fifo() {
        let c = CString::new(dest.as_os_str().as_bytes())
            .map_err(|e| io_err("creating", dest)(io::Error::other(e)))?;
        // SAFETY: valid path.
        let rc = unsafe { libc::mknod(c.as_ptr(), meta.mode(), meta.rdev()) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io_err("creating", dest)(io::Error::last_os_error()))
        }
    } else {
        Ok(())
    }
}

/// Owner, mode, xattrs and mtime of `src` onto `dest` (not following links).
pub(super) fn copy_metadata(
    src: &Path,
    dest: &Path,
    meta: &fs::Metadata,
) -> Result<(), SnapshotError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let _ = std::os::unix::fs::lchown(dest, Some(meta.uid()), Some(meta.gid()));
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    fs::set_permissions(dest, fs::Permissions::from_mode(meta.mode() & 0o7777))
        .map_err(io_err("changing mode of", dest))?;
    if let Ok(names) = xattr::list(src) {
        for n in names {
            if crate::is_overlay_xattr(n.as_bytes()) {
                continue;
            }
            if let Ok(Some(v)) = xattr::get(src, &n) {
                let _ = xattr::set(dest, &n, &v);
            }
        }
    }
    crate::layer::set_times_nofollow(dest, meta.mtime(), meta.mtime_nsec());
    Ok(())
}
