//! A rerun of a copy links the files that did not change from its last
//! result instead of copying them again.

use super::*;

/// Hard links in place of copies for a copy that ran before with the same
/// sources, destination, options and parent (its *identity*; the content
/// is not part of it): each file whose source has the inode, size, mtime
/// and ctime it had when the earlier result copied it (ctime moves on any
/// write, moby/buildkit#2592) is linked from the earlier result's committed
/// changes into this snapshot's overlay upper directory. Its owner, mode
/// and mtime are the same, as they follow from the same source stamp and
/// options. A link costs no inode and no data copy: a 20,000-file context
/// with one change is linked, not rewritten.
///
/// A file is recorded only when its source had settled (changed more than
/// two seconds before the copy), as the stat cache does: a later write in
/// the same timestamp tick could otherwise keep its stamp.
#[derive(Debug)]
pub struct Reuse {
    /// The earlier result: destination path (from the rootfs) -> the
    /// stamp of the source it was copied from.
    earlier: std::collections::HashMap<Vec<u8>, FileStamp>,
    /// The earlier result's committed changes.
    earlier_fs: PathBuf,
    /// This copy's overlay upper directory.
    upper: PathBuf,
    settled_before_ns: i64,
    /// What this copy wrote or linked: destination path -> source stamp.
    wrote: std::sync::Mutex<Vec<(Vec<u8>, FileStamp)>>,
    /// Directories of the earlier result checked to hold no symlink on
    /// the way (one of its own copies may have put a link where a
    /// directory was): true when plain.
    plain_dirs: std::sync::Mutex<std::collections::HashMap<PathBuf, bool>>,
}

/// How long before it is recorded a file must have last changed (stat
/// cache, copy manifests): a write in the same timestamp tick as the
/// recorded stamp could otherwise go unseen.
pub(super) const SETTLE_NS: i64 = 2_000_000_000;

/// Unix time now, in nanoseconds.
pub(super) fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// The manifest format's first byte.
pub(super) const MANIFEST_V1: u8 = 1;

impl Reuse {
    /// Reuse into `upper` from the `earlier` result (its committed changes
    /// and the manifest [`Reuse::manifest`] made of it), or none.
    pub fn new(upper: PathBuf, earlier: Option<(PathBuf, Vec<u8>)>) -> Reuse {
        let (earlier_fs, manifest) = earlier.unwrap_or_default();
        Reuse {
            earlier: decode_manifest(&manifest),
            earlier_fs,
            upper,
            settled_before_ns: now_ns() - SETTLE_NS,
            wrote: std::sync::Mutex::new(Vec::new()),
            plain_dirs: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// The files this copy wrote, to find them again the next time.
    pub fn manifest(&self) -> Vec<u8> {
        let wrote = self.wrote.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::with_capacity(1 + wrote.len() * 64);
        out.push(MANIFEST_V1);
        for (path, s) in wrote.iter() {
            out.extend_from_slice(&(path.len() as u32).to_le_bytes());
            out.extend_from_slice(path);
            out.extend_from_slice(&s.ino.to_le_bytes());
            out.extend_from_slice(&s.size.to_le_bytes());
            out.extend_from_slice(&s.mtime_ns.to_le_bytes());
            out.extend_from_slice(&s.ctime_ns.to_le_bytes());
        }
        out
    }

    /// Records that `rel` was written from a source with `stamp`.
    pub(super) fn wrote(&self, rel: &Path, stamp: FileStamp) {
        if stamp.changed_before(self.settled_before_ns) {
            let path = rel.as_os_str().as_encoded_bytes().to_vec();
            self.wrote
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((path, stamp));
        }
    }

    /// Links `rel` from the earlier result when its source is unchanged
    /// (`merged` is the same path through the mount); false: copy it.
    pub(super) fn link(&self, rel: &Path, stamp: FileStamp, merged: &Path) -> bool {
        if self.earlier.get(rel.as_os_str().as_encoded_bytes()) != Some(&stamp) {
            return false;
        }
        if !self.plain_dir(rel.parent().unwrap_or(Path::new(""))) {
            return false;
        }
        let from = self.earlier_fs.join(rel);
        // What the earlier result holds there must still be that file.
        match fs::symlink_metadata(&from) {
            Ok(m) if m.is_file() && m.len() == stamp.size => {}
            _ => return false,
        }
        let to = self.upper.join(rel);
        let linked = match fs::hard_link(&from, &to) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // The directory is only in a lower layer so far: a file made
                // and removed through the mount copies it up, as writing
                // the file there would have.
                merged.parent().is_some_and(copy_up) && fs::hard_link(&from, &to).is_ok()
            }
            // Something is there already, too many links, another
            // filesystem: copied instead.
            other => other.is_ok(),
        };
        if linked {
            self.wrote(rel, stamp);
        }
        linked
    }

    /// Whether `dir` (relative) is a directory of the earlier result with
    /// no symlink on the way to it.
    fn plain_dir(&self, dir: &Path) -> bool {
        let mut plain = self.plain_dirs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(&known) = plain.get(dir) {
            return known;
        }
        let parent_plain = match dir.parent() {
            Some(p) if !dir.as_os_str().is_empty() => {
                drop(plain);
                let p = self.plain_dir(p);
                plain = self.plain_dirs.lock().unwrap_or_else(|e| e.into_inner());
                p
            }
            _ => true,
        };
        let this = parent_plain
            && fs::symlink_metadata(self.earlier_fs.join(dir)).is_ok_and(|m| m.is_dir());
        plain.insert(dir.to_path_buf(), this);
        this
    }
}

/// Copies directory `dir` (seen through an overlay mount) up into the upper
/// layer by creating and removing a file in it.
pub(super) fn copy_up(dir: &Path) -> bool {
    static PROBES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = PROBES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let probe = dir.join(format!(".rbuild-copy-up-{}-{n}", std::process::id()));
    let made = OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&probe)
        .is_ok();
    made && fs::remove_file(&probe).is_ok()
}

/// A manifest made by [`Reuse::manifest`]; empty when it is not one.
pub(super) fn decode_manifest(bytes: &[u8]) -> std::collections::HashMap<Vec<u8>, FileStamp> {
    let mut out = std::collections::HashMap::new();
    let Some((&MANIFEST_V1, mut rest)) = bytes.split_first() else {
        return out;
    };
    let u64_at = |b: &[u8], i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
    while rest.len() >= 4 {
        let len = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
        let Some(entry) = rest.get(4..4 + len + 32) else {
            break;
        };
        let stamp = FileStamp {
            ino: u64_at(entry, len),
            size: u64_at(entry, len + 8),
            mtime_ns: u64_at(entry, len + 16) as i64,
            ctime_ns: u64_at(entry, len + 24) as i64,
        };
        out.insert(entry[..len].to_vec(), stamp);
        rest = &rest[4 + len + 32..];
    }
    out
}
