//! Snapshots: committed layers kept as read-only directories, and mutable
//! snapshots a step writes into.
//!
//! With overlayfs, a committed snapshot holds only its own layer's files in
//! overlay form (deletions as char 0/0 devices, opaque directories marked
//! with `trusted.overlay.opaque`), and a [`MutableSnapshot`] is an overlay
//! mount: the parent chain as lower directories, a fresh upper and work
//! directory. [`MutableSnapshot::commit`] unmounts, writes the upper
//! directory as a layer and keeps it as a new committed snapshot. Where
//! overlayfs is missing, snapshots are full copies and a commit diffs the
//! two trees: the same API, slower.
//!
//! Snapshot ids are short numbers so that long lower chains fit the
//! page-sized mount option string; a chain that still does not fit is
//! flattened into one directory first. A mount is undone on commit, on
//! discard and on drop; a process killed with mounts up leaves them to the
//! next [`Snapshotter::open`], which unmounts and removes every active
//! snapshot whose lock nobody holds.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::PathError;
use crate::blob::BlobStore;
use crate::layer::{
    DiffSource, Layer, LayerError, LayerOptions, UnpackOptions, unpack, write_layer,
};

mod active;
mod copy;
mod disk;
mod fuse;
mod mount;
mod view;

pub use active::MutableSnapshot;
use copy::{HardLinks, apply_overlay_dir, copy_entry, copy_metadata, copy_tree};

pub use mount::abandon_own;
use mount::{
    MAX_MOUNT_OPTIONS, lowers_by_fd, mount_overlay, mounts_under, overlay_options, overlay_works,
    unmount, upper_and_work,
};

/// Snapshot failures; each names the snapshot or path.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// A filesystem operation failed.
    #[error(transparent)]
    Io(#[from] PathError),
    /// Mounting the overlay failed.
    #[error("mounting overlay at {path} (options {options})")]
    Mount {
        /// Mount point.
        path: PathBuf,
        /// The option string.
        options: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// No such snapshot.
    #[error("snapshot {0} not found")]
    NotFound(String),
    /// Writing or reading a layer failed.
    #[error(transparent)]
    Layer(#[from] LayerError),
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> SnapshotError + use<> {
    let at = PathError::at(action, path);
    move |source| at(source).into()
}

/// The `backend` record of an overlay store mounted with fuse-overlayfs.
const FUSE: &str = "fuse-overlayfs";

/// How snapshots are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// overlayfs mounts; committed snapshots hold one layer each.
    Overlay,
    /// Full copies; committed snapshots hold the whole tree.
    Copy,
}

impl Backend {
    /// How the snapshot directory's `backend` file names it.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Overlay => "overlay",
            Backend::Copy => "copy",
        }
    }

    fn from_name(name: &str) -> Option<Backend> {
        match name {
            "overlay" | FUSE => Some(Backend::Overlay),
            "copy" => Some(Backend::Copy),
            _ => None,
        }
    }
}

/// A committed, read-only snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Its id.
    pub id: String,
    /// The snapshot below it.
    pub parent: Option<String>,
}

/// Makes and keeps snapshots under one directory.
#[derive(Debug, Clone)]
pub struct Snapshotter {
    root: PathBuf,
    backend: Backend,
    /// Overlay mounts made by fuse-overlayfs (recorded as `fuse-overlayfs`:
    /// the layout is the overlay backend's).
    fuse: bool,
    /// Each committed snapshot's parent, as read once: committed snapshots
    /// never change and their ids are never reused, and every step reads
    /// its whole chain (twice: to mount, to diff), which was one file read
    /// per layer below.
    parents: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, Option<String>>>>,
    /// What the directories of committed layers are, for the diffs of the
    /// layers written on them.
    known_dirs: std::sync::Arc<crate::layer::KnownDirs>,
}

impl Snapshotter {
    /// Opens the snapshot directory with the backend it was made with, and
    /// cleans what killed processes left (mounts, active snapshots). A new
    /// directory gets overlay when a test mount works here
    /// (`RBUILD_SNAPSHOTTER=copy` forces copies); the choice is kept in
    /// `backend`, so later opens skip the test mount (~6 ms). In a user
    /// namespace (an ordinary user's rbuild) overlay mounts say `userxattr`
    /// and opaque directories are marked with `user.overlay.opaque`.
    pub fn open(root: &Path) -> Result<Snapshotter, SnapshotError> {
        fs::create_dir_all(root).map_err(io_err("creating", root))?;
        let record = root.join("backend");
        // A record lost or torn by a crash (empty, unknown) is made again.
        let recorded = match fs::read_to_string(&record) {
            Ok(s) => Backend::from_name(s.trim()).map(|b| (b, s.trim() == FUSE)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_err("reading", &record)(e)),
        };
        let (backend, fuse) = match recorded {
            Some(b) => b,
            None => {
                let wanted = std::env::var("RBUILD_SNAPSHOTTER").unwrap_or_default();
                let b = if wanted == "copy" {
                    (Backend::Copy, false)
                } else if wanted != FUSE && overlay_works(root) {
                    (Backend::Overlay, false)
                } else if (wanted == FUSE || crate::in_user_namespace()) && fuse::works(root) {
                    (Backend::Overlay, true)
                } else {
                    (Backend::Copy, false)
                };
                let name = if b.1 { FUSE } else { b.0.name() };
                let tmp = root.join(format!(".backend.{}.tmp", std::process::id()));
                fs::write(&tmp, name)
                    .and_then(|()| fs::rename(&tmp, &record))
                    .map_err(io_err("writing", &record))?;
                b
            }
        };
        let mut s = Snapshotter::open_with_backend(root, backend)?;
        s.fuse = fuse;
        Ok(s)
    }

    /// Opens with a given backend. A store must keep one backend: the two
    /// lay out committed snapshots differently.
    pub fn open_with_backend(root: &Path, backend: Backend) -> Result<Snapshotter, SnapshotError> {
        for d in ["committed", "active"] {
            let p = root.join(d);
            fs::create_dir_all(&p).map_err(io_err("creating", &p))?;
            disk::spread_subdirectories(&p);
        }
        let s = Snapshotter {
            root: root.to_path_buf(),
            backend,
            fuse: false,
            parents: Default::default(),
            known_dirs: Default::default(),
        };
        s.clean_stale()?;
        Ok(s)
    }

    /// The layer of committed snapshot `id` (what its step changed),
    /// written into `store`: from an overlay snapshot's own directory,
    /// which holds exactly the changes in overlay form; for the copy
    /// backend by comparing it with its parent.
    pub fn layer(
        &self,
        id: &str,
        store: &BlobStore,
        options: &LayerOptions,
    ) -> Result<Layer, SnapshotError> {
        let fs_dir = self.committed_dir(id).join("fs");
        let layer = match self.backend {
            Backend::Overlay => {
                let lowers = self.lower_dirs(self.get(id)?.parent.as_deref())?;
                write_layer(
                    store,
                    &DiffSource::Overlay {
                        upper: &fs_dir,
                        lowers: &lowers,
                        known: Some(&self.known_dirs),
                    },
                    options,
                )?
            }
            Backend::Copy => match self.get(id)?.parent {
                Some(p) => {
                    let lower = self.committed_dir(&p).join("fs");
                    write_layer(
                        store,
                        &DiffSource::Compare {
                            lower: &lower,
                            upper: &fs_dir,
                        },
                        options,
                    )?
                }
                None => write_layer(store, &DiffSource::Full { root: &fs_dir }, options)?,
            },
        };
        Ok(layer)
    }

    /// The backend in use.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    fn committed_dir(&self, id: &str) -> PathBuf {
        self.root.join("committed").join(id)
    }

    /// The files committed snapshot `id` added (with overlay, the step's
    /// changes only; with copies, its whole tree), if it exists. Read-only:
    /// a committed snapshot never changes, so its files may be hard-linked
    /// into a new snapshot's changes.
    pub fn changes_of(&self, id: &str) -> Option<PathBuf> {
        let fs = self.committed_dir(id).join("fs");
        fs.is_dir().then_some(fs)
    }

    fn clean_stale(&self) -> Result<(), SnapshotError> {
        let active = self.root.join("active");
        for entry in fs::read_dir(&active)
            .map_err(io_err("reading", &active))?
            .flatten()
        {
            let dir = entry.path();
            if entry.file_name().to_string_lossy().starts_with(".new-") {
                // Being set up by a live process, or left by a killed one
                // long ago.
                let old = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age.as_secs() > 3600);
                if old {
                    let _ = crate::tree::remove_tree(&dir);
                }
                continue;
            }
            let Ok(lock) = File::open(dir.join("lock")) else {
                let _ = crate::tree::remove_tree(&dir);
                continue;
            };
            if lock.try_lock().is_err() {
                continue; // a live build owns it
            }
            for m in mounts_under(&dir) {
                let _ = unmount(&m);
            }
            let _ = crate::tree::remove_tree(&dir);
        }
        // Committed snapshots half-written by a killed commit have no meta.
        let committed = self.root.join("committed");
        for entry in fs::read_dir(&committed)
            .map_err(io_err("reading", &committed))?
            .flatten()
        {
            // tmp-<pid>-<n>: a commit in progress, or one a killed process left.
            let name = entry.file_name().to_string_lossy().into_owned();
            let owner_alive = name
                .strip_prefix("tmp-")
                .and_then(|rest| rest.split('-').next())
                .is_some_and(|pid| Path::new("/proc").join(pid).exists());
            if name.starts_with("tmp-") && !owner_alive && !entry.path().join("meta.json").exists()
            {
                let _ = crate::tree::remove_tree(entry.path());
            }
        }
        Ok(())
    }

    fn next_id(&self) -> Result<String, SnapshotError> {
        // A counter file under a lock: short ids keep mount options short.
        let path = self.root.join("next-id");
        let mut f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io_err("opening", &path))?;
        f.lock().map_err(io_err("locking", &path))?;
        let mut text = String::new();
        io::Read::read_to_string(&mut f, &mut text).map_err(io_err("reading", &path))?;
        let n: u64 = text.trim().parse().unwrap_or(1);
        io::Seek::seek(&mut f, io::SeekFrom::Start(0)).map_err(io_err("writing", &path))?;
        f.set_len(0).map_err(io_err("writing", &path))?;
        io::Write::write_all(&mut f, (n + 1).to_string().as_bytes())
            .map_err(io_err("writing", &path))?;
        Ok(n.to_string())
    }

    /// A committed snapshot by id.
    pub fn get(&self, id: &str) -> Result<Snapshot, SnapshotError> {
        let meta = self.committed_dir(id).join("meta.json");
        let data = fs::read(&meta).map_err(|_| SnapshotError::NotFound(id.to_string()))?;
        serde_json::from_slice(&data).map_err(|e| io_err("reading", &meta)(io::Error::other(e)))
    }

    /// Ids from `id` down to the bottom.
    fn chain(&self, id: &str) -> Result<Vec<String>, SnapshotError> {
        let mut out = Vec::new();
        let mut cur = Some(id.to_string());
        while let Some(c) = cur {
            let known = self
                .parents
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&c)
                .cloned();
            cur = match known {
                Some(parent) => parent,
                None => {
                    let parent = self.get(&c)?.parent;
                    self.parents
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(c.clone(), parent.clone());
                    parent
                }
            };
            out.push(c);
        }
        Ok(out)
    }

    fn finish_commit(&self, tmp: &Path, parent: Option<&str>) -> Result<Snapshot, SnapshotError> {
        let id = self.next_id()?;
        let snap = Snapshot {
            id: id.clone(),
            parent: parent.map(str::to_string),
        };
        let meta = serde_json::to_vec(&snap).expect("serialises");
        fs::write(tmp.join("meta.json"), meta).map_err(io_err("writing", tmp))?;
        let dest = self.committed_dir(&id);
        fs::rename(tmp, &dest).map_err(io_err("renaming", &dest))?;
        Ok(snap)
    }

    fn tmp_committed(&self) -> Result<PathBuf, SnapshotError> {
        let tmp = self.root.join("committed").join(format!(
            "tmp-{}-{}",
            std::process::id(),
            self.next_id()?
        ));
        fs::create_dir_all(tmp.join("fs")).map_err(io_err("creating", &tmp))?;
        Ok(tmp)
    }

    /// Unpacks a layer on top of `parent` as a new committed snapshot.
    pub fn import(
        &self,
        parent: Option<&str>,
        layer: impl io::Read + Send,
    ) -> Result<Snapshot, SnapshotError> {
        let tmp = self.tmp_committed()?;
        let fs_dir = tmp.join("fs");
        let result = (|| {
            let options = match self.backend {
                Backend::Overlay => UnpackOptions {
                    overlay_whiteouts: true,
                    ..UnpackOptions::default()
                },
                Backend::Copy => {
                    if let Some(p) = parent {
                        copy_tree(&self.committed_dir(p).join("fs"), &fs_dir)?;
                    }
                    UnpackOptions::default()
                }
            };
            unpack(layer, &fs_dir, &options)?;
            self.finish_commit(&tmp, parent)
        })();
        if result.is_err() {
            let _ = crate::tree::remove_tree(&tmp);
        }
        result
    }

    /// A new active snapshot directory (locked, with an empty `merged`),
    /// not mounted yet.
    fn new_active(&self, parent: Option<&str>) -> Result<MutableSnapshot, SnapshotError> {
        // Made under a dot name with its lock held, then renamed: another
        // process's cleanup only ever sees active snapshots that are locked.
        let name = format!("{}-{}", std::process::id(), self.next_id()?);
        let staging = self.root.join("active").join(format!(".new-{name}"));
        let active = self.root.join("active").join(&name);
        fs::create_dir_all(&staging).map_err(io_err("creating", &staging))?;
        let lock = File::create(staging.join("lock")).map_err(io_err("creating", &staging))?;
        lock.lock().map_err(io_err("locking", &staging))?;
        fs::rename(&staging, &active).map_err(io_err("creating", &active))?;
        let snap = MutableSnapshot {
            snapshotter: self.clone(),
            dir: active,
            parent: parent.map(str::to_string),
            mounted: false,
            _lock: lock,
        };
        let merged = snap.root();
        fs::create_dir_all(&merged).map_err(io_err("creating", &merged))?;
        Ok(snap)
    }

    /// The `fs` directories of `parent` and its ancestors, nearest first:
    /// the lower directories of an overlay on top of `parent`.
    fn lower_dirs(&self, parent: Option<&str>) -> Result<Vec<PathBuf>, SnapshotError> {
        Ok(match parent {
            Some(p) => self
                .chain(p)?
                .iter()
                .map(|id| self.committed_dir(id).join("fs"))
                .collect(),
            None => Vec::new(),
        })
    }

    /// A writable snapshot on top of `parent` (or empty).
    pub fn prepare(&self, parent: Option<&str>) -> Result<MutableSnapshot, SnapshotError> {
        let mut snap = self.new_active(parent)?;
        let active = snap.dir.clone();
        let merged = snap.root();
        match self.backend {
            Backend::Copy => {
                if let Some(p) = parent {
                    copy_tree(&self.committed_dir(p).join("fs"), &merged)?;
                }
            }
            Backend::Overlay => {
                let (upper, work) = upper_and_work(&active)?;
                let mut lowers = self.lower_dirs(parent)?;
                if lowers.is_empty() {
                    // overlayfs needs a lower directory.
                    let empty = active.join("empty");
                    fs::create_dir_all(&empty).map_err(io_err("creating", &empty))?;
                    lowers.push(empty);
                }
                if self.fuse {
                    fuse::mount(&merged, &lowers, &upper, &work).map_err(|source| {
                        SnapshotError::Mount {
                            path: merged.clone(),
                            options: "fuse-overlayfs".into(),
                            source,
                        }
                    })?;
                } else {
                    mount_layers(&merged, &lowers, (&upper, &work), &active)?;
                }
                snap.mounted = true;
            }
        }
        Ok(snap)
    }

    /// Every committed snapshot.
    pub fn list(&self) -> Result<Vec<Snapshot>, SnapshotError> {
        let mut out: Vec<Snapshot> = self
            .committed_names()?
            .iter()
            .filter_map(|name| self.get(name).ok())
            .collect();
        out.sort_by_key(|s| s.id.parse::<u64>().unwrap_or(u64::MAX));
        Ok(out)
    }

    /// The names in `committed/`: snapshots, and commits under way.
    fn committed_names(&self) -> Result<Vec<String>, SnapshotError> {
        let dir = self.root.join("committed");
        Ok(fs::read_dir(&dir)
            .map_err(io_err("reading", &dir))?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect())
    }

    /// Committed snapshots whose metadata can't be read (a disk fault):
    /// nothing can use one, and [`Snapshotter::list`] leaves it out. Only
    /// numbered ones: a commit under way is a `tmp-` directory until its
    /// metadata is written.
    pub fn unreadable(&self) -> Result<Vec<String>, SnapshotError> {
        Ok(self
            .committed_names()?
            .into_iter()
            .filter(|name| name.parse::<u64>().is_ok() && self.get(name).is_err())
            .collect())
    }

    /// Removes a committed snapshot (the caller checks nothing uses it).
    pub fn remove(&self, id: &str) -> Result<(), SnapshotError> {
        let dir = self.committed_dir(id);
        match crate::tree::remove_tree(&dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("removing", &dir)(e)),
            _ => Ok(()),
        }
    }

    /// The full filesystem of a committed snapshot, materialised into
    /// `dest` (for exporters and copy sources).
    pub fn materialize(&self, id: &str, dest: &Path) -> Result<(), SnapshotError> {
        match self.backend {
            Backend::Copy => copy_tree(&self.committed_dir(id).join("fs"), dest),
            Backend::Overlay => {
                for c in self.chain(id)?.iter().rev() {
                    apply_overlay_dir(
                        &self.committed_dir(c).join("fs"),
                        dest,
                        &mut HardLinks::new(),
                    )?;
                }
                Ok(())
            }
        }
    }
}

/// The kernel's overlay of `lowers` (top first) under `upper` at
/// `merged`: a chain too long for the page-sized option string is named
/// by open directories (`/proc/self/fd/N`, 17 bytes a layer, whatever the
/// state root's path) while the mount is made, and one longer still is
/// flattened into `active`'s `flat` first.
fn mount_layers(
    merged: &Path,
    lowers: &[PathBuf],
    (upper, work): (&Path, &Path),
    active: &Path,
) -> Result<(), SnapshotError> {
    let mut options = overlay_options(lowers, upper, work);
    let _held: Vec<File>;
    if options.len() > MAX_MOUNT_OPTIONS {
        let (held, by_fd) = lowers_by_fd(lowers)?;
        let by_fd = overlay_options(&by_fd, upper, work);
        if by_fd.len() <= MAX_MOUNT_OPTIONS {
            _held = held;
            options = by_fd;
        } else {
            let flat = active.join("flat");
            for dir in lowers.iter().rev() {
                apply_overlay_dir(dir, &flat, &mut HardLinks::new())?;
            }
            options = overlay_options(&[flat], upper, work);
        }
    }
    mount_overlay(merged, &options).map_err(|source| SnapshotError::Mount {
        path: merged.to_path_buf(),
        options,
        source,
    })
}
