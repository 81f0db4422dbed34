//! The cache index: cache key -> result, in SQLite (WAL, busy timeout), the
//! only store tested safe for several rbuild processes at once.
//!
//! A [`Record`] is what a build step produced: an opaque result description
//! (the builder's JSON), the snapshot it left, the blobs it references and
//! its size. Records carry their last use for garbage collection. The
//! schema is versioned (`PRAGMA user_version`) and migrated forward at open,
//! in a transaction. [`CacheIndex::lock_key`] takes an exclusive per-key
//! file lock, so two builds computing the same step do the work once: the
//! second waits, then finds the first's record. The stat cache is
//! `stat.rs`'s, the side tables (layer chains, conversions, step inputs,
//! reusable files) `side.rs`'s.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

mod side;
mod stat;

/// Index failures; each names the database or key.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// SQLite failed.
    #[error("cache index {path}")]
    Sql {
        /// The database.
        path: PathBuf,
        /// The cause.
        #[source]
        source: rusqlite::Error,
    },
    /// A lock file could not be taken.
    #[error("locking {path}")]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The database is newer than this rbuild.
    #[error("cache index {path} has schema version {found}; this rbuild knows up to {known}")]
    TooNew {
        /// The database.
        path: PathBuf,
        /// Its version.
        found: i64,
        /// Ours.
        known: i64,
    },
    /// A key that is not 64 hex digits.
    #[error("invalid cache key `{0}`")]
    BadKey(String),
    /// An unreadable index could not be moved aside.
    #[error("moving the unreadable cache index {path} aside")]
    Recover {
        /// The database.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// A content cache key: 64 lower-case hex digits (a sha256).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CacheKey(String);

impl CacheKey {
    /// Checks and wraps a hex key.
    pub fn new(hex: &str) -> Result<CacheKey, IndexError> {
        if hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            Ok(CacheKey(hex.to_string()))
        } else {
            Err(IndexError::BadKey(hex.to_string()))
        }
    }

    /// The hex text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What a step produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The key.
    pub key: CacheKey,
    /// The builder's description of the result (opaque here).
    pub result: String,
    /// The snapshot the step left, if any.
    pub snapshot: Option<String>,
    /// Blobs (digests) the result references.
    pub blobs: Vec<String>,
    /// Bytes the result holds on disk.
    pub size: u64,
    /// Unix seconds when it was made.
    pub created: i64,
    /// Unix seconds when it was last used.
    pub last_used: i64,
}

/// Migrations, in order; `PRAGMA user_version` says how many have run.
const MIGRATIONS: &[&str] = &[
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

/// Seconds a record's last-used time may lag behind its real last use:
/// a lookup within this of the last one writes nothing (a no-op rebuild
/// of many cached steps would otherwise commit once a step). Far below
/// the granularity of `prune --filter until=`.
const TOUCH_EVERY: i64 = 60;

fn stale(last_used: i64, now: i64) -> bool {
    now - last_used >= TOUCH_EVERY || now < last_used
}

/// Unix seconds now.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The index.
pub struct CacheIndex {
    conn: Mutex<Connection>,
    path: PathBuf,
    lock_dir: PathBuf,
    /// Where an unreadable index was moved when this one was opened.
    recovered: Option<PathBuf>,
}

/// An exclusive lock on one cache key, released on drop.
pub struct KeyLock {
    _file: File,
}

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

    fn sql(&self) -> impl FnOnce(rusqlite::Error) -> IndexError + use<> {
        let path = self.path.clone();
        move |source| IndexError::Sql { path, source }
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The schema version in use.
    pub fn schema_version(&self) -> Result<i64, IndexError> {
        self.conn()
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(self.sql())
    }

    /// Looks a key up and marks it used. A miss writes nothing.
    pub fn get(&self, key: &CacheKey) -> Result<Option<Record>, IndexError> {
        let conn = self.conn();
        let row = conn
            .prepare_cached(
                "SELECT result, snapshot, size, created, last_used FROM records WHERE key = ?1",
            )
            .and_then(|mut stmt| {
                stmt.query_row(params![key.as_str()], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, Option<String>>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, i64>(3)?,
                        r.get::<_, i64>(4)?,
                    ))
                })
                .optional()
            })
            .map_err(self.sql())?;
        let Some((result, snapshot, size, created, last_used)) = row else {
            return Ok(None);
        };
        let now = now();
        let last_used = if stale(last_used, now) {
            conn.prepare_cached("UPDATE records SET last_used = ?2 WHERE key = ?1")
                .and_then(|mut stmt| stmt.execute(params![key.as_str(), now]))
                .map_err(self.sql())?;
            now
        } else {
            last_used
        };
        let blobs = blobs_of(&conn, key).map_err(self.sql())?;
        Ok(Some(Record {
            key: key.clone(),
            result,
            snapshot,
            blobs,
            size: size as u64,
            created,
            last_used,
        }))
    }

    /// Stores (or replaces) a record with its blob references, atomically.
    pub fn put(&self, record: &Record) -> Result<(), IndexError> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.sql())?;
        tx.execute(
            "DELETE FROM records WHERE key = ?1",
            params![record.key.as_str()],
        )
        .map_err(self.sql())?;
        tx.execute(
            "INSERT INTO records (key, result, snapshot, size, created, last_used) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![record.key.as_str(), record.result, record.snapshot, record.size as i64, record.created, record.last_used],
        )
        .map_err(self.sql())?;
        for digest in &record.blobs {
            tx.execute(
                "INSERT OR IGNORE INTO record_blobs (key, digest) VALUES (?1, ?2)",
                params![record.key.as_str(), digest],
            )
            .map_err(self.sql())?;
        }
        tx.commit().map_err(self.sql())
    }

    /// Removes a record.
    pub fn delete(&self, key: &CacheKey) -> Result<bool, IndexError> {
        let n = self
            .conn()
            .execute("DELETE FROM records WHERE key = ?1", params![key.as_str()])
            .map_err(self.sql())?;
        Ok(n > 0)
    }

    /// Every record, least recently used first.
    pub fn records(&self) -> Result<Vec<Record>, IndexError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare("SELECT key, result, snapshot, size, created, last_used FROM records ORDER BY last_used, key")
            .map_err(self.sql())?;
        let rows = stmt
            .query_map([], |r| {
                Ok(Record {
                    key: CacheKey(r.get(0)?),
                    result: r.get(1)?,
                    snapshot: r.get(2)?,
                    blobs: Vec::new(),
                    size: r.get::<_, i64>(3)? as u64,
                    created: r.get(4)?,
                    last_used: r.get(5)?,
                })
            })
            .map_err(self.sql())?;
        let mut out: Vec<Record> = rows.collect::<Result<_, _>>().map_err(self.sql())?;
        for rec in &mut out {
            rec.blobs = blobs_of(&conn, &rec.key).map_err(self.sql())?;
        }
        Ok(out)
    }

    /// Every blob some record references.
    pub fn referenced_blobs(&self) -> Result<std::collections::BTreeSet<String>, IndexError> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare("SELECT DISTINCT digest FROM record_blobs")
            .map_err(self.sql())?;
        let rows = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(self.sql())?;
        rows.collect::<Result<_, _>>().map_err(self.sql())
    }

    /// Takes the exclusive lock of a key, waiting for another holder.
    pub fn lock_key(&self, key: &CacheKey) -> Result<KeyLock, IndexError> {
        let path = self.lock_dir.join(key.as_str());
        let lock_err = |source| IndexError::Lock {
            path: path.clone(),
            source,
        };
        let file = crate::lock::lock_exclusive(&path).map_err(lock_err)?;
        Ok(KeyLock { _file: file })
    }
}

fn blobs_of(conn: &Connection, key: &CacheKey) -> rusqlite::Result<Vec<String>> {
    let mut stmt =
        conn.prepare_cached("SELECT digest FROM record_blobs WHERE key = ?1 ORDER BY digest")?;
    let rows = stmt.query_map(params![key.as_str()], |r| r.get(0))?;
    rows.collect()
}

#[cfg(test)]
mod tests {
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

    fn key(n: u8) -> CacheKey {
        CacheKey::new(&format!("{n:02x}").repeat(32)).unwrap()
    }

    fn temp(name: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("rbuild-index-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        p
    }

    #[test]
    fn a_lookup_writes_last_used_only_when_a_minute_old() {
        let dir = temp("touch");
        let idx = CacheIndex::open(&dir.join("index.db")).unwrap();
        let record = |n, last_used| Record {
            key: key(n),
            result: "{}".into(),
            snapshot: None,
            blobs: vec![],
            size: 1,
            created: 1,
            last_used,
        };
        let recent = now() - 10;
        idx.put(&record(1, recent)).unwrap();
        idx.put(&record(2, now() - 3600)).unwrap();
        let changes = || idx.conn().total_changes();
        let before = changes();
        assert_eq!(idx.get(&key(1)).unwrap().unwrap().last_used, recent);
        assert_eq!(changes(), before, "a recent record is not rewritten");
        assert!(idx.get(&key(2)).unwrap().unwrap().last_used >= now() - 5);
        assert_eq!(changes(), before + 1);
        drop(idx);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn put_get_delete() {
        let dir = temp("basic");
        let idx = CacheIndex::open(&dir.join("index.db")).unwrap();
        assert_eq!(idx.schema_version().unwrap(), MIGRATIONS.len() as i64);
        assert!(idx.get(&key(1)).unwrap().is_none());
        let rec = Record {
            key: key(1),
            result: r#"{"layer":"x"}"#.into(),
            snapshot: Some("snap".into()),
            blobs: vec!["sha256:a".into(), "sha256:b".into()],
            size: 42,
            created: 100,
            last_used: 100,
        };
        idx.put(&rec).unwrap();
        let got = idx.get(&key(1)).unwrap().unwrap();
        assert_eq!(
            (got.result.as_str(), got.blobs.len(), got.size),
            (rec.result.as_str(), 2, 42)
        );
        assert!(got.last_used >= now() - 5);
        assert_eq!(idx.referenced_blobs().unwrap().len(), 2);
        assert!(idx.delete(&key(1)).unwrap());
        assert!(
            idx.referenced_blobs().unwrap().is_empty(),
            "blob refs go with the record"
        );
        drop(idx);
        // Reopening keeps the version and does not migrate again.
        let idx = CacheIndex::open(&dir.join("index.db")).unwrap();
        assert_eq!(idx.schema_version().unwrap(), MIGRATIONS.len() as i64);
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

    #[test]
    fn key_lock_excludes_a_second_holder() {
        let dir = temp("lock");
        let idx = std::sync::Arc::new(CacheIndex::open(&dir.join("index.db")).unwrap());
        let held = idx.lock_key(&key(9)).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let idx2 = idx.clone();
        let t = std::thread::spawn(move || {
            let _l = idx2.lock_key(&key(9)).unwrap();
            tx.send(()).unwrap();
        });
        assert!(
            rx.recv_timeout(Duration::from_millis(200)).is_err(),
            "second lock taken while held"
        );
        drop(held);
        rx.recv_timeout(Duration::from_secs(5)).unwrap();
        t.join().unwrap();
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn index_speed_smoke() {
        // Not a timing assertion: exercises 1k commits and 10k lookups.
        let dir = temp("speed");
        let idx = CacheIndex::open(&dir.join("index.db")).unwrap();
        for i in 0..1000u32 {
            let k = CacheKey::new(&format!("{i:064x}")).unwrap();
            idx.put(&Record {
                key: k,
                result: "{}".into(),
                snapshot: None,
                blobs: vec![format!("sha256:{i}")],
                size: 1,
                created: 0,
                last_used: 0,
            })
            .unwrap();
        }
        for i in 0..10_000u32 {
            let k = CacheKey::new(&format!("{:064x}", i % 2000)).unwrap();
            let _ = idx.get(&k).unwrap();
        }
        assert_eq!(idx.records().unwrap().len(), 1000);
        fs::remove_dir_all(&dir).unwrap();
    }
}
