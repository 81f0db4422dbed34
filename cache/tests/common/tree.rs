//! Trees for layer tests: device nodes, and what a round trip must keep.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

pub fn mknod(path: &Path, kind: libc::mode_t, major: u32, minor: u32) {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: valid path.
    let rc = unsafe { libc::mknod(c.as_ptr(), kind | 0o644, libc::makedev(major, minor)) };
    assert_eq!(
        rc,
        0,
        "mknod {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

/// Everything that must survive a layer round trip, per path.
pub fn describe(root: &Path) -> BTreeMap<Vec<u8>, String> {
    let mut out = BTreeMap::new();
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<Vec<u8>, String>) {
        let mut names: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        for n in names {
            let p = dir.join(&n);
            let m = fs::symlink_metadata(&p).unwrap();
            let rel = p
                .strip_prefix(root)
                .unwrap()
                .as_os_str()
                .as_bytes()
                .to_vec();
            let mut xattrs: Vec<String> = if m.file_type().is_symlink() {
                vec![]
            } else {
                xattr::list(&p)
                    .unwrap()
                    .map(|k| format!("{}={:?}", k.to_string_lossy(), xattr::get(&p, &k).unwrap()))
                    .collect()
            };
            xattrs.sort();
            let content = if m.is_file() {
                format!(
                    "{:x}",
                    fs::read(&p)
                        .unwrap()
                        .iter()
                        .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(*b)))
                )
            } else if m.file_type().is_symlink() {
                fs::read_link(&p).unwrap().display().to_string()
            } else {
                String::new()
            };
            // A directory's mtime changes as entries are made in it, and
            // its link count is the filesystem's (overlayfs says 1).
            let mtime = if m.is_dir() { 0 } else { m.mtime() };
            let nlink = if m.is_dir() { 0 } else { m.nlink() };
            out.insert(
                rel,
                format!(
                    "mode={:o} uid={} gid={} rdev={} nlink={} mtime={} {content} {xattrs:?}",
                    m.mode(),
                    m.uid(),
                    m.gid(),
                    m.rdev(),
                    nlink,
                    mtime
                ),
            );
            if m.is_dir() {
                walk(root, &p, out);
            }
        }
    }
    walk(root, root, &mut out);
    out
}
