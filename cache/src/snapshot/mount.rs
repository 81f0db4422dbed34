//! Overlay mounts of snapshots: the kernel's mount call and its option
//! string (paths escaped, `userxattr` in a user namespace, a long chain
//! named by open directories), unmounting, the mounts left under a
//! directory, and the interrupt's cleanup of this process's mounts.

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::{SnapshotError, io_err};

/// Whether [`abandon_own`] ran; mounts hold it shared, so that one in
/// flight ends (and shows in mountinfo) before the cleanup looks, and none
/// starts after it.
static ABANDONED: std::sync::RwLock<bool> = std::sync::RwLock::new(false);

pub(super) fn mount_overlay(target: &Path, options: &str) -> io::Result<()> {
    let abandoned = ABANDONED.read().unwrap_or_else(|e| e.into_inner());
    if *abandoned {
        return Err(io::Error::new(
            io::ErrorKind::Interrupted,
            "the build is being interrupted",
        ));
    }
    let src = CString::new("overlay").expect("no NUL");
    let tgt = CString::new(target.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let opts = CString::new(options).map_err(io::Error::other)?;
    // SAFETY: all pointers are valid NUL-terminated strings for the call.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            tgt.as_ptr(),
            src.as_ptr(),
            0,
            opts.as_ptr().cast(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

pub(super) fn unmount(target: &Path) -> io::Result<()> {
    let tgt = CString::new(target.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: valid NUL-terminated path.
    let rc = unsafe { libc::umount2(tgt.as_ptr(), libc::MNT_DETACH) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Mount points at or under `dir`, from /proc/self/mountinfo.
pub(super) fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(m.replace("\\040", " ")))
        .filter(|m| m.starts_with(dir))
        .collect();
    // Deepest first.
    out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    out
}

/// Longest option string the kernel takes in one page, with margin.
pub(super) const MAX_MOUNT_OPTIONS: usize = 4000;

/// The `upper` and `work` directories of an overlay mount, made in `dir`.
pub(super) fn upper_and_work(dir: &Path) -> Result<(PathBuf, PathBuf), SnapshotError> {
    let (upper, work) = (dir.join("upper"), dir.join("work"));
    for d in [&upper, &work] {
        fs::create_dir_all(d).map_err(io_err("creating", d))?;
    }
    Ok((upper, work))
}

/// `lowers` opened (`O_PATH`), and the paths that name them through
/// /proc/self/fd while the files are open.
pub(super) fn lowers_by_fd(lowers: &[PathBuf]) -> Result<(Vec<File>, Vec<PathBuf>), SnapshotError> {
    use std::os::fd::AsRawFd as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut held = Vec::with_capacity(lowers.len());
    let mut paths = Vec::with_capacity(lowers.len());
    for l in lowers {
        let f = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
            .open(l)
            .map_err(io_err("opening", l))?;
        paths.push(PathBuf::from(format!("/proc/self/fd/{}", f.as_raw_fd())));
        held.push(f);
    }
    Ok((held, paths))
}

/// The options of an overlay mount, each path escaped.
/// In a user namespace, `userxattr`: overlayfs keeps its marks in
/// `user.overlay.*` there.
pub(super) fn overlay_options(lowers: &[PathBuf], upper: &Path, work: &Path) -> String {
    let lower: Vec<String> = lowers.iter().map(|p| escape(p)).collect();
    let userxattr = if crate::overlay_opaque_xattr().starts_with("user.") {
        ",userxattr"
    } else {
        ""
    };
    format!(
        "lowerdir={},upperdir={},workdir={}{userxattr}",
        lower.join(":"),
        escape(upper),
        escape(work)
    )
}

/// `path` as one overlay mount option value: `\`, `,` and `:` escaped.
fn escape(path: &Path) -> String {
    let mut out = String::new();
    for c in path.to_string_lossy().chars() {
        if matches!(c, '\\' | ',' | ':') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

pub(super) fn overlay_works(root: &Path) -> bool {
    probe(root, "probe", |merged, lower, upper, work| {
        mount_overlay(merged, &overlay_options(&[lower], upper, work))
    })
}

/// Whether `mount(merged, lower, upper, work)` works on directories made
/// under `root` (in `NAME-PID`, removed after, the mount undone).
pub(super) fn probe(
    root: &Path,
    name: &str,
    mount: impl FnOnce(&Path, PathBuf, &Path, &Path) -> io::Result<()>,
) -> bool {
    let probe = root.join(format!("{name}-{}", std::process::id()));
    let [lower, upper, work, merged] = ["lower", "upper", "work", "merged"].map(|d| probe.join(d));
    let ok = [&lower, &upper, &work, &merged]
        .iter()
        .all(|d| fs::create_dir_all(d).is_ok())
        && mount(&merged, lower, &upper, &work).is_ok();
    if ok {
        let _ = unmount(&merged);
    }
    let _ = fs::remove_dir_all(&probe);
    ok
}

/// Unmounts and removes the active snapshots of this process under the
/// snapshot root `root` (for an interrupted build: Ctrl-C, SIGTERM), and
/// refuses every later mount in this process.
pub fn abandon_own(root: &Path) {
    let mut abandoned = ABANDONED.write().unwrap_or_else(|e| e.into_inner());
    *abandoned = true;
    let prefix = format!("{}-", std::process::id());
    let active = root.join("active");
    let Ok(entries) = fs::read_dir(&active) else {
        return;
    };
    for e in entries.flatten() {
        if !e.file_name().to_string_lossy().starts_with(&prefix) {
            continue;
        }
        let dir = e.path();
        for m in mounts_under(&dir) {
            let _ = unmount(&m);
        }
        let _ = fs::remove_dir_all(&dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_option_separators() {
        assert_eq!(escape(Path::new("/a,b:c\\d")), "/a\\,b\\:c\\\\d");
        assert_eq!(escape(Path::new("/plain/dir")), "/plain/dir");
    }
}
