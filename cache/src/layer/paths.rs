//! Paths and metadata below a root as the unpacker needs them: names
//! cleaned, parents resolved inside the root, times and owners set
//! without following links.

use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use super::LayerError;

/// Cleans an archive name into a relative path inside the root.
pub(super) fn clean_name(raw: &[u8]) -> Result<PathBuf, LayerError> {
    let path = Path::new(std::ffi::OsStr::from_bytes(raw));
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            Component::ParentDir => {
                if !out.pop() {
                    return Err(LayerError::Hostile {
                        entry: String::from_utf8_lossy(raw).into_owned(),
                        reason: "it climbs out of the root with ..",
                    });
                }
            }
            Component::Normal(n) => out.push(n),
        }
    }
    Ok(out)
}

/// `rel` resolved inside `root`: symlinks met on the way are followed as if
/// `root` were `/`, and `..` stops at the root. The last component is not
/// resolved when `follow_last` is false.
pub fn resolve_in_root(root: &Path, rel: &Path, follow_last: bool) -> PathBuf {
    let mut resolved = PathBuf::new();
    let mut pending: Vec<OsString> = rel
        .components()
        .rev()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect();
    let mut hops = 0;
    while let Some(part) = pending.pop() {
        if part == ".." {
            resolved.pop();
            continue;
        }
        let candidate = resolved.join(&part);
        let is_last = pending.is_empty();
        if is_last && !follow_last {
            resolved = candidate;
            break;
        }
        match fs::symlink_metadata(root.join(&candidate)) {
            Ok(m) if m.file_type().is_symlink() && hops < 255 => {
                hops += 1;
                let target = fs::read_link(root.join(&candidate)).unwrap_or_default();
                if target.is_absolute() {
                    resolved = PathBuf::new();
                }
                for c in target.components().rev() {
                    match c {
                        Component::Normal(n) => pending.push(n.to_os_string()),
                        Component::ParentDir => pending.push(OsString::from("..")),
                        _ => {}
                    }
                }
            }
            _ => resolved = candidate,
        }
    }
    root.join(resolved)
}

pub(super) fn set_mtime(path: &Path, mtime: u64) {
    set_times_nofollow(path, mtime as i64, 0);
}

/// Sets `path`'s access and modification times by path, not following a
/// last symlink and without opening it (opening a fifo would wait for a
/// writer, opening a device would touch it). Best effort.
pub fn set_times_nofollow(path: &Path, secs: i64, nanos: i64) {
    let t = libc::timespec {
        tv_sec: secs as libc::time_t,
        tv_nsec: nanos as libc::c_long,
    };
    let times = [t, t];
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return;
    };
    // SAFETY: c is a valid NUL-terminated path and times has two entries.
    unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        );
    }
}

pub(super) fn lchown(path: &Path, uid: u64, gid: u64) -> io::Result<()> {
    std::os::unix::fs::lchown(path, Some(uid as u32), Some(gid as u32))
}

/// `bytes` (a name from the archive) for a system call; a NUL in it makes
/// the entry `entry` hostile.
pub(super) fn c_string(bytes: &[u8], entry: &Path) -> Result<std::ffi::CString, LayerError> {
    std::ffi::CString::new(bytes).map_err(|_| LayerError::Hostile {
        entry: entry.display().to_string(),
        reason: "its name has a NUL byte",
    })
}

pub(super) fn remove_any(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => crate::tree::remove_tree(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}
