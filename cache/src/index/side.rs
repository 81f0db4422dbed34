//! The index's side tables: the snapshot of each layer chain, layer
//! conversions (a layer compressed once per format), each step's latest
//! key inputs (`rbuild explain`), the files a copy can reuse, and the
//! repositories blobs were fetched from.

use rusqlite::{OptionalExtension, params};

use super::{CacheIndex, CacheKey, IndexError, now, stale};

impl CacheIndex {
    /// The snapshot holding the layers of `chain_id`, if unpacked before.
    pub fn snapshot_for_chain(&self, chain_id: &str) -> Result<Option<String>, IndexError> {
        let conn = self.conn();
        let found: Option<(String, i64)> = conn
            .query_row(
                "SELECT snapshot, last_used FROM layer_snapshots WHERE chain_id = ?1",
                params![chain_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(self.sql())?;
        let Some((snapshot, last_used)) = found else {
            return Ok(None);
        };
        let now = now();
        if stale(last_used, now) {
            conn.execute(
                "UPDATE layer_snapshots SET last_used = ?2 WHERE chain_id = ?1",
                params![chain_id, now],
            )
            .map_err(self.sql())?;
        }
        Ok(Some(snapshot))
    }

    /// Records that `snapshot` holds the layers of `chain_id`.
    pub fn set_snapshot_for_chain(&self, chain_id: &str, snapshot: &str) -> Result<(), IndexError> {
        self.conn()
            .execute(
                "INSERT OR REPLACE INTO layer_snapshots (chain_id, snapshot, last_used) VALUES (?1, ?2, ?3)",
                params![chain_id, snapshot, now()],
            )
            .map(|_| ())
            .map_err(self.sql())
    }

    /// The blob that layer blob `source` was converted to for `target` (a
    /// compression and level, as the caller names them): digest, size and
    /// media type. The blob itself may since have been collected.
    pub fn conversion(
        &self,
        source: &str,
        target: &str,
    ) -> Result<Option<(String, u64, String)>, IndexError> {
        self.conn()
            .query_row(
                "SELECT digest, size, media_type FROM conversions WHERE source = ?1 AND target = ?2",
                params![source, target],
                |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64, r.get(2)?)),
            )
            .optional()
            .map_err(self.sql())
    }

    /// Records a conversion (see [`CacheIndex::conversion`]).
    pub fn set_conversion(
        &self,
        source: &str,
        target: &str,
        converted: (&str, u64, &str),
    ) -> Result<(), IndexError> {
        let (digest, size, media_type) = converted;
        self.conn()
            .execute(
                "INSERT OR REPLACE INTO conversions (source, target, digest, size, media_type) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![source, target, digest, size as i64, media_type],
            )
            .map(|_| ())
            .map_err(self.sql())
    }

    /// Every snapshot recorded for a chain id (GC roots while recorded).
    pub fn chain_snapshots(&self) -> Result<Vec<(String, String)>, IndexError> {
        self.pairs("SELECT chain_id, snapshot FROM layer_snapshots")
    }

    /// The key and key inputs (the caller's format) of the latest build of
    /// step `identity`.
    pub fn inputs_get(&self, identity: &str) -> Result<Option<(String, String)>, IndexError> {
        self.conn()
            .query_row(
                "SELECT key, inputs FROM step_inputs WHERE identity = ?1",
                params![identity],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(self.sql())
    }

    /// Records `key` and its `inputs` as the latest build of step
    /// `identity` (replacing the one before).
    pub fn inputs_put(
        &self,
        identity: &str,
        key: &CacheKey,
        inputs: &str,
    ) -> Result<(), IndexError> {
        self.conn()
            .execute(
                "INSERT OR REPLACE INTO step_inputs (identity, key, inputs) VALUES (?1, ?2, ?3)",
                params![identity, key.as_str(), inputs],
            )
            .map(|_| ())
            .map_err(self.sql())
    }

    /// The latest result recorded for copy `identity`: its snapshot and
    /// manifest (the caller's format).
    pub fn reuse_get(&self, identity: &str) -> Result<Option<(String, Vec<u8>)>, IndexError> {
        self.conn()
            .query_row(
                "SELECT snapshot, manifest FROM file_reuse WHERE identity = ?1",
                params![identity],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(self.sql())
    }

    /// Records `snapshot` and its `manifest` as the latest result of copy
    /// `identity` (replacing the one before).
    pub fn reuse_put(
        &self,
        identity: &str,
        snapshot: &str,
        manifest: &[u8],
    ) -> Result<(), IndexError> {
        self.conn()
            .execute(
                "INSERT OR REPLACE INTO file_reuse (identity, snapshot, manifest) VALUES (?1, ?2, ?3)",
                params![identity, snapshot, manifest],
            )
            .map(|_| ())
            .map_err(self.sql())
    }

    /// Forgets the copy results whose snapshot `keep` rejects (GC removed
    /// it); how many.
    pub fn reuse_prune(&self, keep: impl Fn(&str) -> bool) -> Result<usize, IndexError> {
        let conn = self.conn();
        let rows: Vec<(String, String)> = conn
            .prepare("SELECT identity, snapshot FROM file_reuse")
            .and_then(|mut stmt| {
                stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect()
            })
            .map_err(self.sql())?;
        let mut n = 0;
        for (identity, snapshot) in rows {
            if !keep(&snapshot) {
                conn.execute(
                    "DELETE FROM file_reuse WHERE identity = ?1",
                    params![identity],
                )
                .map_err(self.sql())?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Forgets a chain id's snapshot.
    pub fn forget_chain(&self, chain_id: &str) -> Result<(), IndexError> {
        self.conn()
            .execute(
                "DELETE FROM layer_snapshots WHERE chain_id = ?1",
                params![chain_id],
            )
            .map(|_| ())
            .map_err(self.sql())
    }

    /// Notes that blob `digest` was fetched from repository `source`
    /// (`domain/path`).
    pub fn set_blob_source(&self, digest: &str, source: &str) -> Result<(), IndexError> {
        self.conn()
            .execute(
                "INSERT INTO blob_sources (digest, source) VALUES (?1, ?2)
                 ON CONFLICT(digest) DO UPDATE SET source = excluded.source",
                params![digest, source],
            )
            .map(|_| ())
            .map_err(self.sql())
    }

    /// Every blob's noted source: (digest, `domain/path`).
    pub fn blob_sources(&self) -> Result<Vec<(String, String)>, IndexError> {
        self.pairs("SELECT digest, source FROM blob_sources")
    }

    /// Every row of a two-column text query.
    fn pairs(&self, sql: &str) -> Result<Vec<(String, String)>, IndexError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(sql).map_err(self.sql())?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(self.sql())?;
        rows.collect::<Result<_, _>>().map_err(self.sql())
    }
}
