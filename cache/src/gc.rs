//! Disk usage and garbage collection over a whole state directory.
//!
//! [`Store`] opens the pieces under one root: `content/` (the OCI layout
//! blob store, whose `index.json` holds the tagged images), `index.db` (the
//! cache index), `snapshots/` and `leases/`. [`prune`] first drops cache
//! records by policy (all, older than, least recently used beyond a size),
//! then marks what is still reachable — tagged images (manifest, config,
//! layers, index children), remaining records (blobs, snapshot chains) and
//! the leases of running builds — and sweeps the rest. Blobs younger than a
//! grace period are never swept, so a blob a build has just written but not
//! yet recorded survives a concurrent prune.

use std::collections::{BTreeSet, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use crate::blob::{BlobError, BlobStore};
use crate::index::{CacheIndex, IndexError, Record, now};
use crate::snapshot::{SnapshotError, Snapshotter};
use crate::spec::{Index, Manifest};
use crate::{Digest, PathError};

/// GC failures.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    /// Blob store.
    #[error(transparent)]
    Blob(#[from] BlobError),
    /// Cache index.
    #[error(transparent)]
    Index(#[from] IndexError),
    /// Snapshots.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// Lease or lock files.
    #[error(transparent)]
    Io(#[from] PathError),
}

/// Everything under one state root.
pub struct Store {
    /// The state root.
    pub root: PathBuf,
    /// Blobs and tagged images.
    pub blobs: BlobStore,
    /// Cache records.
    pub index: CacheIndex,
    /// Snapshots.
    pub snapshots: Snapshotter,
    /// This process's lease, made when it first keeps something.
    lease: std::sync::Mutex<Option<Lease>>,
}

impl Store {
    /// Opens (creating) a state root.
    pub fn open(root: &Path) -> Result<Store, GcError> {
        let leases = root.join("leases");
        fs::create_dir_all(&leases).map_err(PathError::at("creating", &leases))?;
        Ok(Store {
            root: root.to_path_buf(),
            blobs: BlobStore::open(&root.join("content"))?,
            index: CacheIndex::open(&root.join("index.db"))?,
            snapshots: Snapshotter::open(&root.join("snapshots"))?,
            lease: std::sync::Mutex::new(None),
        })
    }

    /// Runs `f` (a lookup or a write of the cache record `key`) with no
    /// prune under way, `key` first put in this process's lease: a prune
    /// keeps the record, and with it its snapshot chain and blobs, while
    /// this process lives, and never drops one between a build's finding it
    /// and its using it.
    pub fn using_record<T>(&self, key: &str, f: impl FnOnce() -> T) -> Result<T, GcError> {
        let _no_prune = self.no_prune()?;
        self.keep(|lease| lease.add_record(key))?;
        Ok(f())
    }

    /// Runs `make`, which makes a snapshot (a commit, an import), with no
    /// prune under way, and keeps the snapshot `id_of` names in what it
    /// made in this process's lease.
    pub fn making_snapshot<T, E: Into<GcError>>(
        &self,
        make: impl FnOnce() -> Result<T, E>,
        id_of: impl FnOnce(&T) -> &str,
    ) -> Result<T, GcError> {
        let _no_prune = self.no_prune()?;
        let made = make().map_err(Into::into)?;
        self.keep(|lease| lease.add_snapshot(id_of(&made)))?;
        Ok(made)
    }

    /// A layer unpacked on `parent` as a new snapshot, kept in this
    /// process's lease (see [`Store::making_snapshot`]).
    pub fn import_snapshot(
        &self,
        parent: Option<&str>,
        layer: impl std::io::Read + Send,
    ) -> Result<crate::snapshot::Snapshot, GcError> {
        self.making_snapshot(|| self.snapshots.import(parent, layer), |s| &s.id)
    }

    /// A shared hold of the GC lock: [`prune`] takes it exclusively.
    fn no_prune(&self) -> Result<File, GcError> {
        let path = self.root.join("gc.lock");
        Ok(crate::lock::lock_shared(&path).map_err(PathError::at("locking", &path))?)
    }

    /// Adds to this process's lease, made on first use.
    fn keep(&self, add: impl FnOnce(&mut Lease) -> Result<(), GcError>) -> Result<(), GcError> {
        let mut lease = self.lease.lock().unwrap_or_else(|e| e.into_inner());
        if lease.is_none() {
            *lease = Some(self.lease()?);
        }
        add(lease.as_mut().expect("made above"))
    }

    /// A lease for a running build: what it adds is kept by any prune
    /// until the lease is dropped (or its process dies).
    pub fn lease(&self) -> Result<Lease, GcError> {
        let n = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let path = self
            .root
            .join("leases")
            .join(format!("{}-{n}", std::process::id()));
        let io_err = |source| GcError::from(PathError::at("creating lease", &path)(source));
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(io_err)?;
        file.lock().map_err(io_err)?;
        Ok(Lease {
            path,
            file,
            written: HashSet::new(),
        })
    }
}

/// Keeps blobs and snapshots of a running build from GC.
pub struct Lease {
    path: PathBuf,
    file: File,
    /// The lines in the file: a build looks a record up and then writes
    /// it, and commits on snapshots it already keeps.
    written: HashSet<String>,
}

impl Lease {
    /// Protects a blob.
    pub fn add_blob(&mut self, digest: &Digest) -> Result<(), GcError> {
        self.add(&format!("blob {digest}\n"))
    }

    /// Protects a snapshot (and its parents).
    pub fn add_snapshot(&mut self, id: &str) -> Result<(), GcError> {
        self.add(&format!("snapshot {id}\n"))
    }

    /// Protects a cache record (and so its snapshots and blobs).
    pub fn add_record(&mut self, key: &str) -> Result<(), GcError> {
        self.add(&format!("record {key}\n"))
    }

    fn add(&mut self, line: &str) -> Result<(), GcError> {
        if self.written.contains(line) {
            return Ok(());
        }
        self.file
            .write_all(line.as_bytes())
            .map_err(|source| PathError::at("writing lease", &self.path)(source))?;
        self.written.insert(line.to_string());
        Ok(())
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Which records a prune drops.
#[derive(Debug, Clone, Default)]
pub struct PruneOptions {
    /// Every record.
    pub all: bool,
    /// Records not used for this long.
    pub older_than: Option<Duration>,
    /// Drop least recently used records until the cache is this small.
    pub keep_storage: Option<u64>,
    /// Blobs younger than this are never swept (default 10 minutes).
    pub grace: Option<Duration>,
}

/// What a prune removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// Records dropped.
    pub records: usize,
    /// Blobs deleted.
    pub blobs: usize,
    /// Snapshots deleted.
    pub snapshots: usize,
    /// Bytes of blobs freed.
    pub bytes: u64,
    /// Stat cache records dropped (their files are gone, or `all`).
    pub stat_records: usize,
}

/// One line of `rbuild du`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRecord {
    /// The record.
    pub record: Record,
    /// Bytes of its blobs that nothing else (no tagged image) references.
    pub reclaimable: u64,
}

/// What the cache holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiskUsage {
    /// Records, least recently used first.
    pub records: Vec<UsageRecord>,
    /// Bytes of all blobs.
    pub total: u64,
    /// Bytes a `prune --all` would free.
    pub reclaimable: u64,
}

/// Blobs reachable from the tagged images.
fn image_roots(blobs: &BlobStore) -> Result<BTreeSet<String>, GcError> {
    let mut marked = BTreeSet::new();
    let index = blobs.read_index()?;
    let mut todo: Vec<String> = index.manifests.iter().map(|d| d.digest.clone()).collect();
    while let Some(d) = todo.pop() {
        if !marked.insert(d.clone()) {
            continue;
        }
        let Ok(digest) = d.parse::<Digest>() else {
            continue;
        };
        let Ok(data) = blobs.read(&digest) else {
            continue;
        };
        if let Ok(m) = serde_json::from_slice::<Manifest>(&data) {
            marked.insert(m.config.digest.clone());
            for l in &m.layers {
                marked.insert(l.digest.clone());
            }
        } else if let Ok(i) = serde_json::from_slice::<Index>(&data) {
            todo.extend(i.manifests.iter().map(|d| d.digest.clone()));
        }
    }
    Ok(marked)
}

/// What live leases keep: blobs, snapshots and cache records.
#[derive(Default)]
struct Leased {
    blobs: BTreeSet<String>,
    snapshots: BTreeSet<String>,
    records: BTreeSet<String>,
}

/// Lease contents; stale lease files (no live holder) are removed.
fn lease_roots(root: &Path) -> Leased {
    let mut leased = Leased::default();
    let Ok(entries) = fs::read_dir(root.join("leases")) else {
        return leased;
    };
    for e in entries.flatten() {
        let path = e.path();
        let Ok(f) = File::open(&path) else { continue };
        if f.try_lock().is_ok() {
            let _ = fs::remove_file(&path);
            continue;
        }
        for line in fs::read_to_string(&path).unwrap_or_default().lines() {
            let (kind, value) = line.split_once(' ').unwrap_or_default();
            let set = match kind {
                "blob" => &mut leased.blobs,
                "snapshot" => &mut leased.snapshots,
                "record" => &mut leased.records,
                _ => continue,
            };
            set.insert(value.to_string());
        }
    }
    leased
}

/// Disk usage of the cache.
pub fn disk_usage(store: &Store) -> Result<DiskUsage, GcError> {
    let images = image_roots(&store.blobs)?;
    let sizes: std::collections::BTreeMap<String, u64> = store
        .blobs
        .list()?
        .into_iter()
        .map(|(d, s)| (d.to_string(), s))
        .collect();
    let mut total: u64 = sizes.values().sum();
    let mut records = Vec::new();
    let mut reclaimable_set = BTreeSet::new();
    // Records with no blob (a step whose layer was never needed as a tar)
    // hold only their snapshot: their size is that, and reclaimable.
    let mut snapshot_only = 0;
    for record in store.index.records()? {
        let mut reclaimable = 0;
        if record.blobs.is_empty() {
            reclaimable = record.size;
            snapshot_only += record.size;
        }
        for b in &record.blobs {
            if !images.contains(b) {
                reclaimable += sizes.get(b).copied().unwrap_or(0);
                reclaimable_set.insert(b.clone());
            }
        }
        records.push(UsageRecord {
            record,
            reclaimable,
        });
    }
    let reclaimable = sizes
        .iter()
        .filter(|(d, _)| !images.contains(*d))
        .map(|(_, s)| *s)
        .sum::<u64>()
        + snapshot_only;
    total += snapshot_only;
    Ok(DiskUsage {
        records,
        total,
        reclaimable,
    })
}

/// Drops records by policy, then sweeps what nothing reaches.
pub fn prune(store: &Store, options: &PruneOptions) -> Result<PruneReport, GcError> {
    let gc_lock_path = store.root.join("gc.lock");
    let _gc_lock = crate::lock::lock_exclusive(&gc_lock_path)
        .map_err(PathError::at("locking", &gc_lock_path))?;

    let mut report = PruneReport::default();
    let leased = lease_roots(&store.root);
    let records = store.index.records()?;
    let now = now();
    let mut keep_size: u64 = records.iter().map(|r| r.size).sum();
    // A record a running build found or made stays (and so what it needs).
    for r in records
        .iter()
        .filter(|r| !leased.records.contains(r.key.as_str()))
    {
        let old = options
            .older_than
            .is_some_and(|d| r.last_used < now - d.as_secs() as i64);
        let over = options.keep_storage.is_some_and(|limit| keep_size > limit);
        if options.all || old || over {
            store.index.delete(&r.key)?;
            keep_size = keep_size.saturating_sub(r.size);
            report.records += 1;
        }
    }

    report.stat_records = store.index.stat_prune(options.all)?;

    // Mark.
    let mut marked = image_roots(&store.blobs)?;
    marked.extend(store.index.referenced_blobs()?);
    marked.extend(leased.blobs);
    let mut snap_roots: BTreeSet<String> = store
        .index
        .records()?
        .into_iter()
        .filter_map(|r| r.snapshot)
        .collect();
    snap_roots.extend(leased.snapshots);
    snap_roots.extend(store.index.chain_snapshots()?.into_iter().map(|(_, s)| s));
    let mut snaps_marked = BTreeSet::new();
    for id in snap_roots {
        let mut cur = Some(id);
        while let Some(c) = cur {
            if !snaps_marked.insert(c.clone()) {
                break;
            }
            cur = store.snapshots.get(&c).ok().and_then(|s| s.parent);
        }
    }

    // Sweep.
    let grace = options.grace.unwrap_or(Duration::from_secs(600));
    for (digest, size) in store.blobs.list()? {
        if marked.contains(&digest.to_string()) {
            continue;
        }
        let young = fs::metadata(store.blobs.path(&digest))
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_none_or(|age| age < grace);
        if young {
            continue;
        }
        store.blobs.delete(&digest)?;
        report.blobs += 1;
        report.bytes += size;
    }
    for s in store.snapshots.list()? {
        if !snaps_marked.contains(&s.id) {
            store.snapshots.remove(&s.id)?;
            report.snapshots += 1;
        }
    }
    for id in store.snapshots.unreadable()? {
        store.snapshots.remove(&id)?;
        report.snapshots += 1;
    }
    store.index.reuse_prune(|s| snaps_marked.contains(s))?;
    Ok(report)
}

/// BuildKit-like default limit for automatic GC: 10% of the filesystem
/// holding the store, at least 2 GiB.
pub fn default_limit(root: &Path) -> u64 {
    let floor = 2 << 30;
    let Ok(c) = std::ffi::CString::new(root.as_os_str().as_encoded_bytes()) else {
        return floor;
    };
    // SAFETY: c is a valid path and st is written by the call.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return floor;
    }
    let size = st.f_blocks as u64 * st.f_frsize as u64;
    (size / 10).max(floor)
}

/// Prunes least recently used records when the store holds more than
/// `limit` bytes of blobs; returns what was removed, if anything.
pub fn auto_prune(store: &Store, limit: u64) -> Result<Option<PruneReport>, GcError> {
    let total: u64 = store.blobs.list()?.iter().map(|(_, s)| *s).sum();
    if total <= limit {
        return Ok(None);
    }
    let options = PruneOptions {
        keep_storage: Some(limit / 10 * 8),
        ..PruneOptions::default()
    };
    prune(store, &options).map(Some)
}
