//! The stat cache: a context file's digest by path, kept while its
//! inode, size, mtime and ctime stay the same (any difference rehashes).

use std::fs;

use rusqlite::{OptionalExtension, TransactionBehavior, params};

use super::{CacheIndex, FileStamp, IndexError};

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
