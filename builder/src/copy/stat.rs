//! The stat cache: a context file's digest kept by path and stamp (inode,
//! size, mtime, ctime), so an unchanged file is not read again.

use super::*;

/// What the stat cache knows of the files below one directory: for each
/// path, in order, its stamp and hex digest. The paths share one buffer
/// and the records are fixed-size: reading thousands makes a few
/// allocations, not two a file (on a step's fresh thread each few small
/// ones grew its heap by a page, an mprotect that stalled the other
/// threads' page faults and thread starts: ~2 ms of a no-op rebuild).
#[derive(Debug, Default)]
pub(super) struct Known {
    paths: Vec<u8>,
    /// By path.
    records: Vec<KnownFile>,
}

/// One file of [`Known`].
#[derive(Debug)]
pub(super) struct KnownFile {
    /// Where its path is in [`Known::paths`].
    path: std::ops::Range<usize>,
    stamp: FileStamp,
    /// The content digest, hex.
    digest: [u8; 64],
}

impl Known {
    fn push(&mut self, path: &[u8], stamp: FileStamp, digest: &str) {
        // A digest that is not 64 hex digits is not used: the file is
        // hashed again.
        let Ok(digest) = <[u8; 64]>::try_from(digest.as_bytes()) else {
            return;
        };
        let start = self.paths.len();
        self.paths.extend_from_slice(path);
        self.records.push(KnownFile {
            path: start..self.paths.len(),
            stamp,
            digest,
        });
    }

    fn path_of(&self, file: &KnownFile) -> &[u8] {
        &self.paths[file.path.clone()]
    }

    /// The stamp and digest recorded for `path`.
    pub(super) fn get(&self, path: &[u8]) -> Option<(FileStamp, &str)> {
        let i = self
            .records
            .binary_search_by(|f| self.path_of(f).cmp(path))
            .ok()?;
        let file = &self.records[i];
        Some((file.stamp, std::str::from_utf8(&file.digest).ok()?))
    }
}

/// The stat cache as COPY/ADD hashing uses it: a file's content digest is
/// reused while its inode, size, mtime and ctime are unchanged (ctime moves
/// on every write, even when mtime is put back: moby/buildkit#2592). A file
/// changed less than two seconds before it was hashed is not recorded, as
/// a write in the same timestamp tick could go unseen.
pub struct StatCache<'a> {
    index: &'a cache::index::CacheIndex,
    /// Digests are kept per context and absolute path.
    context: &'a str,
    /// How long ago a file must have changed for its digest to be kept.
    settle_ns: i64,
    /// The records below each context directory walked, read in one query
    /// on first use (one query per file cost 30 µs: 0.6 s on a 20,000-file
    /// context; reading every directory's records cost more with each
    /// project built).
    known: std::sync::Mutex<std::collections::HashMap<PathBuf, std::sync::Arc<Known>>>,
}

/// The stat cache records of `context` below `root`; none when the index
/// fails (that only costs a rehash).
pub(super) fn read_known(index: &cache::index::CacheIndex, context: &str, root: &Path) -> Known {
    let mut known = Known::default();
    let read = index.stat_under_each(context, root.as_os_str().as_encoded_bytes(), |p, s, d| {
        known.push(p, s, d)
    });
    // In path order from the query; out of order (never expected), they
    // are dropped: a rehash is safe, a binary search in disorder is not.
    let sorted = known
        .records
        .windows(2)
        .all(|w| known.path_of(&w[0]) < known.path_of(&w[1]));
    if read.is_err() || !sorted {
        return Known::default();
    }
    known
}

impl<'a> StatCache<'a> {
    /// The stat cache of `index` for files under the context named `context`.
    pub fn new(index: &'a cache::index::CacheIndex, context: &'a str) -> StatCache<'a> {
        StatCache {
            index,
            context,
            settle_ns: SETTLE_NS,
            known: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// Reads the records below `root` now, on a database connection of
    /// its own (the build's other steps keep theirs meanwhile): the step
    /// that loads the build context does this, in parallel with the steps
    /// before the first COPY, which then finds them read.
    pub fn preload(&self, root: &Path) {
        let Ok(reader) = self.index.reader() else {
            return;
        };
        let records = std::sync::Arc::new(read_known(&reader, self.context, root));
        self.known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(root.to_path_buf())
            .or_insert(records);
    }

    /// The records of the files below `root` (read once per build).
    pub(super) fn under(&self, root: &Path) -> std::sync::Arc<Known> {
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(records) = known.get(root) {
            return std::sync::Arc::clone(records);
        }
        let records = std::sync::Arc::new(read_known(self.index, self.context, root));
        known.insert(root.to_path_buf(), std::sync::Arc::clone(&records));
        records
    }

    pub(super) fn settled(&self, stamp: FileStamp) -> bool {
        stamp.changed_before(now_ns() - self.settle_ns)
    }

    pub(super) fn store(&self, entries: &[(Vec<u8>, FileStamp, String)]) {
        if !entries.is_empty() {
            let _ = self.index.stat_store(self.context, entries);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("rbuild-copy-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(p.join("ctx")).unwrap();
        p
    }

    fn stamp(path: &Path) -> FileStamp {
        FileStamp::of(&fs::metadata(path).unwrap())
    }

    #[test]
    fn known_finds_every_recorded_path_and_no_other() {
        let stamp = |n| FileStamp {
            ino: n,
            size: n,
            mtime_ns: 0,
            ctime_ns: 0,
        };
        let mut known = Known::default();
        let paths: Vec<String> = (0..50).map(|i| format!("/ctx/d{:02}/f", i * 2)).collect();
        for (i, p) in paths.iter().enumerate() {
            known.push(p.as_bytes(), stamp(i as u64), &format!("{i:064x}"));
        }
        known.push(b"/ctx/short-digest", stamp(99), "abc");
        for (i, p) in paths.iter().enumerate() {
            let hex = format!("{i:064x}");
            assert_eq!(
                known.get(p.as_bytes()),
                Some((stamp(i as u64), hex.as_str()))
            );
        }
        assert_eq!(known.get(b"/ctx/d01/f"), None);
        assert_eq!(
            known.get(b"/ctx/short-digest"),
            None,
            "not a digest: not kept"
        );
    }

    #[test]
    fn stat_cache_reuses_digests_until_any_stamp_field_moves() {
        let dir = temp("stat");
        let index = cache::index::CacheIndex::open(&dir.join("index.db")).unwrap();
        let ctx = dir.join("ctx");
        let file = ctx.join("a.txt");
        fs::write(&file, "payload\n").unwrap();
        let sources = ["a.txt".to_string()];
        let real = content_digest(&ctx, None, &sources, &[], None).unwrap();
        // A recorded digest for the file's exact stamp is used, not the content.
        let path = file.as_os_str().as_encoded_bytes().to_vec();
        let fake = "0".repeat(64);
        index
            .stat_store("t", &[(path.clone(), stamp(&file), fake)])
            .unwrap();
        let stat = StatCache::new(&index, "t");
        let cached = content_digest(&ctx, None, &sources, &[], Some(&stat)).unwrap();
        assert_ne!(cached, real, "the recorded digest was not used");
        // Same size and mtime, new content (moby/buildkit#2592): ctime moved.
        let mtime = fs::metadata(&file).unwrap().modified().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        fs::write(&file, "PAYLOAD\n").unwrap();
        File::options()
            .write(true)
            .open(&file)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        let after = content_digest(&ctx, None, &sources, &[], Some(&stat)).unwrap();
        assert_eq!(
            after,
            content_digest(&ctx, None, &sources, &[], None).unwrap()
        );
        assert_ne!(after, real);
        // A freshly changed file is not recorded; a settled one is.
        assert_eq!(index.stat_lookup("t", &path, stamp(&file)).unwrap(), None);
        let settled = StatCache {
            settle_ns: 0,
            ..StatCache::new(&index, "t")
        };
        std::thread::sleep(std::time::Duration::from_millis(20));
        content_digest(&ctx, None, &sources, &[], Some(&settled)).unwrap();
        let kept = index.stat_lookup("t", &path, stamp(&file)).unwrap();
        use sha2::{Digest as _, Sha256};
        let want: String = Sha256::digest(b"PAYLOAD\n")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(kept, Some(want));
        let _ = fs::remove_dir_all(&dir);
    }
}
