//! Opening the index: the schema and its migrations (`PRAGMA
//! user_version` counts those run), WAL mode, moving an unreadable
//! database aside, and read-only second connections.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{Connection, TransactionBehavior};

use super::{CacheIndex, IndexError, now};

/// Migrations, in order; `PRAGMA user_version` says how many have run.
pub(super) const MIGRATIONS: &[&str] = &[
    // 1: records and the blobs they reference.
    "CREATE TABLE records (
        key TEXT PRIMARY KEY,
        result TEXT NOT NULL,
        snapshot TEXT,
        size INTEGER NOT NULL,
        created INTEGER NOT NULL,
        last_used INTEGER NOT NULL
     );
     CREATE TABLE record_blobs (
        key TEXT NOT NULL REFERENCES records(key) ON DELETE CASCADE,
        digest TEXT NOT NULL,
        PRIMARY KEY (key, digest)
     );
     CREATE INDEX record_blobs_digest ON record_blobs(digest);
     CREATE INDEX records_last_used ON records(last_used);",
    // 2: the context stat cache (path, inode, size, mtime, ctime -> digest).
    "CREATE TABLE stat_cache (
        context TEXT NOT NULL,
        path BLOB NOT NULL,
        ino INTEGER NOT NULL,
        size INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL,
        ctime_ns INTEGER NOT NULL,
        digest TEXT NOT NULL,
        PRIMARY KEY (context, path)
     );",
    // 3: unpacked base layers by chain id, so a base image is unpacked once.
    "CREATE TABLE layer_snapshots (
        chain_id TEXT PRIMARY KEY,
        snapshot TEXT NOT NULL,
        last_used INTEGER NOT NULL
     );",
    // 4: layer blobs converted to another compression, so an export
    // compresses each layer once.
    "CREATE TABLE conversions (
        source TEXT NOT NULL,
        target TEXT NOT NULL,
        digest TEXT NOT NULL,
        size INTEGER NOT NULL,
        media_type TEXT NOT NULL,
        PRIMARY KEY (source, target)
     );",
    // 5: the latest result of each file copy (by what it copies, not the
    // content) and what it wrote, so a rerun after a change can link the
    // files that did not change instead of copying them again.
    "CREATE TABLE file_reuse (
        identity TEXT PRIMARY KEY,
        snapshot TEXT NOT NULL,
        manifest BLOB NOT NULL
     );",
    // 6: per step (its place in a Dockerfile), the key and the key inputs
    // of its latest build, so the next build can say what changed.
    "CREATE TABLE step_inputs (
        identity TEXT PRIMARY KEY,
        key TEXT NOT NULL,
        inputs TEXT NOT NULL
     );",
    // 7: the repository (`domain/path`) a blob was fetched from when no
    // image names it (a layer of an imported build cache): a push to the
    // same registry mounts it from there instead of uploading it.
    "CREATE TABLE blob_sources (
        digest TEXT PRIMARY KEY,
        source TEXT NOT NULL
     );",
];

/// Whether SQLite says the file is damaged or no database at all.
fn is_corrupt(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase)
    )
}

impl CacheIndex {
    /// Opens (creating and migrating) the index at `path`. An index SQLite
    /// finds malformed or not a database (a disk fault, a torn copy) is
    /// moved aside and an empty one started: it holds only what can be
    /// made again (cached steps run again), and without this every command
    /// on the state directory failed. [`CacheIndex::recovered`] says where
    /// it went.
    pub fn open(path: &Path) -> Result<CacheIndex, IndexError> {
        if let Some(dir) = path.parent() {
            let _ = fs::create_dir_all(dir);
        }
        // Setting WAL mode and migrating need the database to themselves:
        // SQLite answers "busy" at once, without waiting, when two processes
        // do it together, so opening is serialised with a file lock.
        let open_lock_path = PathBuf::from(format!("{}.open-lock", path.display()));
        let _open_lock =
            crate::lock::lock_exclusive(&open_lock_path).map_err(|source| IndexError::Lock {
                path: open_lock_path.clone(),
                source,
            })?;
        match Self::open_locked(path) {
            Err(IndexError::Sql { source, .. }) if is_corrupt(&source) => {
                let aside = PathBuf::from(format!("{}.corrupt-{}", path.display(), now()));
                fs::rename(path, &aside).map_err(|source| IndexError::Recover {
                    path: path.to_path_buf(),
                    source,
                })?;
                for suffix in ["-wal", "-shm"] {
                    let _ = fs::remove_file(format!("{}{suffix}", path.display()));
                }
                let mut fresh = Self::open_locked(path)?;
                fresh.recovered = Some(aside);
                Ok(fresh)
            }
            other => other,
        }
    }

    /// Where an unreadable index found at open was moved, if one was.
    pub fn recovered(&self) -> Option<&Path> {
        self.recovered.as_deref()
    }

    fn open_locked(path: &Path) -> Result<CacheIndex, IndexError> {
        let sql = |source| IndexError::Sql {
            path: path.to_path_buf(),
            source,
        };
        let mut conn = Connection::open(path).map_err(sql)?;
        conn.busy_timeout(Duration::from_secs(60)).map_err(sql)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(sql)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(sql)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(sql)?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql)?;
        let version: i64 = tx
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(sql)?;
        let known = MIGRATIONS.len() as i64;
        if version > known {
            return Err(IndexError::TooNew {
                path: path.to_path_buf(),
                found: version,
                known,
            });
        }
        for migration in &MIGRATIONS[version as usize..] {
            tx.execute_batch(migration).map_err(sql)?;
        }
        // Written only when it changes: a commit at every open would make
        // every command, a no-op build too, write and sync the database.
        if version != known {
            tx.pragma_update(None, "user_version", known).map_err(sql)?;
        }
        tx.commit().map_err(sql)?;
        let lock_dir = path.with_extension("locks");
        fs::create_dir_all(&lock_dir).map_err(|source| IndexError::Lock {
            path: lock_dir.clone(),
            source,
        })?;
        Ok(CacheIndex {
            conn: Mutex::new(conn),
            path: path.to_path_buf(),
            lock_dir,
            recovered: None,
        })
    }

    /// A second, read-only connection to the same index, for a reader on
    /// another thread that should not wait for this one's lock (a build's
    /// stat-cache preload). Sees what is committed.
    pub fn reader(&self) -> Result<CacheIndex, IndexError> {
        let sql = |source| IndexError::Sql {
            path: self.path.clone(),
            source,
        };
        let conn = Connection::open_with_flags(
            &self.path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(sql)?;
        conn.busy_timeout(Duration::from_secs(60)).map_err(sql)?;
        // Pages read through a mapping, not into page-cache buffers that
        // a fresh connection allocates one by one.
        conn.pragma_update(None, "mmap_size", 256i64 << 20)
            .map_err(sql)?;
        Ok(CacheIndex {
            conn: Mutex::new(conn),
            path: self.path.clone(),
            lock_dir: self.lock_dir.clone(),
            recovered: None,
        })
    }

    /// The schema version in use.
    pub fn schema_version(&self) -> Result<i64, IndexError> {
        self.conn()
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(self.sql())
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{key, temp};
    use super::super::*;
    use super::*;

    #[test]
    fn unreadable_indexes_are_moved_aside() {
        let dir = temp("corrupt");
        let path = dir.join("index.db");
        // A real index cut short (SQLite: malformed), and no database.
        let idx = CacheIndex::open(&path).unwrap();
        let rec = |n| Record {
            key: key(n),
            result: "{}".into(),
            snapshot: None,
            blobs: Vec::new(),
            size: 1,
            created: 1,
            last_used: 1,
        };
        idx.put(&rec(1)).unwrap();
        drop(idx);
        let whole = fs::read(&path).unwrap();
        for (case, bytes) in [("cut", whole[..100].to_vec()), ("garbage", vec![7u8; 8192])] {
            fs::write(&path, &bytes).unwrap();
            let _ = fs::remove_file(dir.join("index.db-wal"));
            let idx = CacheIndex::open(&path).unwrap_or_else(|e| panic!("{case}: {e}"));
            let aside = idx.recovered().expect("moved aside").to_path_buf();
            assert_eq!(fs::read(&aside).unwrap(), bytes, "{case}");
            assert!(idx.records().unwrap().is_empty(), "{case}");
            idx.put(&rec(2)).unwrap();
            assert_eq!(idx.records().unwrap().len(), 1, "{case}");
            drop(idx);
            assert!(CacheIndex::open(&path).unwrap().recovered().is_none());
            fs::remove_file(&aside).unwrap();
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn migrates_an_older_database_forward() {
        let dir = temp("migrate");
        let path = dir.join("index.db");
        {
            // A version-1 database, as an older rbuild left it.
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(MIGRATIONS[0]).unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
            conn.execute("INSERT INTO records VALUES ('k', '{}', NULL, 1, 0, 0)", [])
                .unwrap();
        }
        let idx = CacheIndex::open(&path).unwrap();
        assert_eq!(idx.schema_version().unwrap(), MIGRATIONS.len() as i64);
        assert_eq!(
            idx.records().unwrap().len(),
            1,
            "data survives the migration"
        );
        idx.set_snapshot_for_chain("sha256:c", "7").unwrap();
        assert_eq!(
            idx.snapshot_for_chain("sha256:c").unwrap().as_deref(),
            Some("7")
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn refuses_newer_schema() {
        let dir = temp("newer");
        let path = dir.join("index.db");
        drop(CacheIndex::open(&path).unwrap());
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        assert!(matches!(
            CacheIndex::open(&path),
            Err(IndexError::TooNew { found: 99, .. })
        ));
        fs::remove_dir_all(&dir).unwrap();
    }
}
