//! The stat cache: a context file's digest by path, kept while its
//! inode, size, mtime and ctime stay the same (any difference rehashes).

use std::fs;

use rusqlite::{OptionalExtension, TransactionBehavior, params};

use super::{CacheIndex, IndexError};

/// A file's identity for the stat cache. Any difference means "rehash".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    /// Inode.
    pub ino: u64,
    /// Size.
    pub size: u64,
    /// mtime, nanoseconds.
    pub mtime_ns: i64,
    /// ctime, nanoseconds (changes on any write, even with mtime reset).
    pub ctime_ns: i64,
}

impl FileStamp {
    /// The stamp of a file with metadata `meta`.
    pub fn of(meta: &std::fs::Metadata) -> FileStamp {
        use std::os::unix::fs::MetadataExt;
        FileStamp {
            ino: meta.ino(),
            size: meta.len(),
            mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
            ctime_ns: meta.ctime() * 1_000_000_000 + meta.ctime_nsec(),
        }
    }

    /// Whether the file last changed (content or inode) before `t_ns`
    /// (Unix nanoseconds).
    pub fn changed_before(&self, t_ns: i64) -> bool {
        self.ctime_ns.max(self.mtime_ns) < t_ns
    }
}

impl CacheIndex {
    /// A stat-cache hit: the digest recorded for `path` in `context`, if the
    /// file still has exactly the same inode, size, mtime and ctime.
    pub fn stat_lookup(
        &self,
        context: &str,
        path: &[u8],
        stamp: FileStamp,
    ) -> Result<Option<String>, IndexError> {
        self.conn()
            .query_row(
                "SELECT digest FROM stat_cache WHERE context = ?1 AND path = ?2 AND ino = ?3 AND size = ?4 AND mtime_ns = ?5 AND ctime_ns = ?6",
                params![context, path, stamp.ino as i64, stamp.size as i64, stamp.mtime_ns, stamp.ctime_ns],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.sql())
    }

    /// The recorded files of `context` below directory `dir` (an absolute
    /// path): path, stamp, digest. One range query on the primary key, for
    /// walks that look up many files; what other directories recorded is
    /// not read.
    pub fn stat_under(
        &self,
        context: &str,
        dir: &[u8],
    ) -> Result<Vec<(Vec<u8>, FileStamp, String)>, IndexError> {
        let mut out = Vec::new();
        self.stat_under_each(context, dir, |path, stamp, digest| {
            out.push((path.to_vec(), stamp, digest.to_string()));
        })?;
        Ok(out)
    }

    /// [`CacheIndex::stat_under`] record by record, in path order, lent
    /// to `each` (no allocation per record).
    pub fn stat_under_each(
        &self,
        context: &str,
        dir: &[u8],
        mut each: impl FnMut(&[u8], FileStamp, &str),
    ) -> Result<(), IndexError> {
        // Paths below `base/` sort between `base/` and `base0` ('0' follows '/').
        let base = match dir.iter().rposition(|&b| b != b'/') {
            Some(end) => &dir[..=end],
            None => &[][..],
        };
        let low = [base, b"/"].concat();
        let high = [base, b"0"].concat();
        let conn = self.conn();
        let mut stmt = conn
            .prepare(
                "SELECT path, ino, size, mtime_ns, ctime_ns, digest FROM stat_cache \
                 WHERE context = ?1 AND path >= ?2 AND path < ?3 ORDER BY path",
            )
            .map_err(self.sql())?;
        let mut rows = stmt
            .query(params![context, low, high])
            .map_err(self.sql())?;
        while let Some(r) = rows.next().map_err(self.sql())? {
            let mut read = || -> rusqlite::Result<()> {
                let stamp = FileStamp {
                    ino: r.get::<_, i64>(1)? as u64,
                    size: r.get::<_, i64>(2)? as u64,
                    mtime_ns: r.get(3)?,
                    ctime_ns: r.get(4)?,
                };
                let path = r.get_ref(0)?.as_blob()?;
                let digest = r.get_ref(5)?.as_str()?;
                each(path, stamp, digest);
                Ok(())
            };
            read().map_err(self.sql())?;
        }
        Ok(())
    }

    /// Drops the stat cache records of files that are gone (every record
    /// with `all`); how many. A record outlives its file otherwise: the
    /// table would grow with every file any build ever hashed. Only records
    /// keyed by an absolute path are files; other keys (memos a caller
    /// keeps under a name of its own) go only with `all`.
    pub fn stat_prune(&self, all: bool) -> Result<usize, IndexError> {
        use std::os::unix::ffi::OsStrExt;
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.sql())?;
        let gone: Vec<(String, Vec<u8>)> = {
            let mut stmt = tx
                .prepare("SELECT context, path FROM stat_cache")
                .map_err(self.sql())?;
            let rows = stmt
                .query_map([], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?))
                })
                .map_err(self.sql())?;
            rows.collect::<Result<Vec<_>, _>>()
                .map_err(self.sql())?
                .into_iter()
                .filter(|(_, path)| {
                    all || (path.starts_with(b"/")
                        && fs::symlink_metadata(std::ffi::OsStr::from_bytes(path)).is_err())
                })
                .collect()
        };
        {
            let mut stmt = tx
                .prepare("DELETE FROM stat_cache WHERE context = ?1 AND path = ?2")
                .map_err(self.sql())?;
            for (context, path) in &gone {
                stmt.execute(params![context, path]).map_err(self.sql())?;
            }
        }
        tx.commit().map_err(self.sql())?;
        Ok(gone.len())
    }

    /// Records the digests of hashed files (one transaction).
    pub fn stat_store(
        &self,
        context: &str,
        entries: &[(Vec<u8>, FileStamp, String)],
    ) -> Result<(), IndexError> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.sql())?;
        {
            let mut stmt = tx
                .prepare("INSERT OR REPLACE INTO stat_cache (context, path, ino, size, mtime_ns, ctime_ns, digest) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)")
                .map_err(self.sql())?;
            for (path, s, digest) in entries {
                stmt.execute(params![
                    context,
                    path,
                    s.ino as i64,
                    s.size as i64,
                    s.mtime_ns,
                    s.ctime_ns,
                    digest
                ])
                .map_err(self.sql())?;
            }
        }
        tx.commit().map_err(self.sql())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::tests::temp;
    use super::*;

    #[test]
    fn stat_cache_rehashes_on_any_doubt() {
        let dir = temp("stat");
        let idx = CacheIndex::open(&dir.join("index.db")).unwrap();
        let s = FileStamp {
            ino: 7,
            size: 10,
            mtime_ns: 1,
            ctime_ns: 2,
        };
        idx.stat_store("ctx", &[(b"a/b".to_vec(), s, "sha256:x".into())])
            .unwrap();
        assert_eq!(
            idx.stat_lookup("ctx", b"a/b", s).unwrap().as_deref(),
            Some("sha256:x")
        );
        // Same size and mtime but a new ctime (moby/buildkit#2592): a miss.
        assert!(
            idx.stat_lookup("ctx", b"a/b", FileStamp { ctime_ns: 3, ..s })
                .unwrap()
                .is_none()
        );
        assert!(
            idx.stat_lookup("ctx", b"a/b", FileStamp { ino: 8, ..s })
                .unwrap()
                .is_none()
        );
        assert!(idx.stat_lookup("other", b"a/b", s).unwrap().is_none());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn stat_prune_forgets_files_that_are_gone() {
        let dir = temp("stat-prune");
        let idx = CacheIndex::open(&dir.join("index.db")).unwrap();
        let kept = dir.join("kept");
        fs::write(&kept, b"x").unwrap();
        let gone = dir.join("gone");
        let s = FileStamp {
            ino: 1,
            size: 1,
            mtime_ns: 1,
            ctime_ns: 1,
        };
        let row = |p: &Path| {
            (
                p.as_os_str().as_encoded_bytes().to_vec(),
                s,
                "d".to_string(),
            )
        };
        idx.stat_store("local", &[row(&kept), row(&gone)]).unwrap();
        // A memo under a key that is no path stays.
        idx.stat_store("memo", &[(b"12:/app".to_vec(), s, "d".into())])
            .unwrap();
        assert_eq!(idx.stat_prune(false).unwrap(), 1);
        assert!(idx.stat_lookup("memo", b"12:/app", s).unwrap().is_some());
        let left = idx
            .stat_under("local", dir.as_os_str().as_encoded_bytes())
            .unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].0, kept.as_os_str().as_encoded_bytes());
        assert_eq!(idx.stat_prune(true).unwrap(), 2);
        assert!(
            idx.stat_under("local", dir.as_os_str().as_encoded_bytes())
                .unwrap()
                .is_empty()
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn stat_cache_reads_one_directory() {
        let dir = temp("stat-under");
        let idx = CacheIndex::open(&dir.join("index.db")).unwrap();
        let s = FileStamp {
            ino: 1,
            size: 1,
            mtime_ns: 1,
            ctime_ns: 1,
        };
        let paths: [&[u8]; 6] = [
            b"/p/app/a",
            b"/p/app/sub/b",
            b"/p/app",
            b"/p/app0/c",
            b"/p/app-old/d",
            b"/p/ap/e",
        ];
        let rows: Vec<_> = paths.iter().map(|p| (p.to_vec(), s, "d".into())).collect();
        idx.stat_store("local", &rows).unwrap();
        idx.stat_store("other", &[(b"/p/app/x".to_vec(), s, "d".into())])
            .unwrap();
        for dir_name in [&b"/p/app"[..], b"/p/app/", b"/p/app//"] {
            let mut under: Vec<_> = idx
                .stat_under("local", dir_name)
                .unwrap()
                .into_iter()
                .map(|(p, _, _)| p)
                .collect();
            under.sort();
            assert_eq!(under, [b"/p/app/a".to_vec(), b"/p/app/sub/b".to_vec()]);
        }
        assert_eq!(idx.stat_under("local", b"/").unwrap().len(), 6);
        fs::remove_dir_all(&dir).unwrap();
    }
}
