//! The cache index: cache key -> result, in SQLite (WAL, busy timeout), the
//! only store tested safe for several rbuild processes at once.
//!
//! A [`Record`] is what a build step produced: an opaque result description
//! (the builder's JSON), the snapshot it left, the blobs it references and
//! its size. Records carry their last use for garbage collection. The
//! schema is versioned (`PRAGMA user_version`) and migrated forward at open,
//! in a transaction. [`CacheIndex::lock_key`] takes an exclusive per-key
//! file lock, so two builds computing the same step do the work once: the
//! second waits, then finds the first's record. Opening and migrating are
//! `open.rs`'s, the stat cache `stat.rs`'s, the side tables (layer chains,
//! conversions, step inputs, reusable files) `side.rs`'s.

use std::fs::File;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

mod open;
mod side;
mod stat;

pub use stat::FileStamp;

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

impl CacheIndex {
    fn sql(&self) -> impl FnOnce(rusqlite::Error) -> IndexError + use<> {
        let path = self.path.clone();
        move |source| IndexError::Sql { path, source }
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
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
    use std::fs;
    use std::time::Duration;

    use super::open::MIGRATIONS;
    use super::*;

    pub(super) fn key(n: u8) -> CacheKey {
        CacheKey::new(&format!("{n:02x}").repeat(32)).unwrap()
    }

    pub(super) fn temp(name: &str) -> PathBuf {
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
