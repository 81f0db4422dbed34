//! [`MutableSnapshot`]: the tree a step writes into, committed or thrown
//! away.

use std::fs::{self, File};
use std::path::PathBuf;

use super::*;

/// A snapshot being written. Dropped without commit, it is discarded.
pub struct MutableSnapshot {
    pub(super) snapshotter: Snapshotter,
    pub(super) dir: PathBuf,
    pub(super) parent: Option<String>,
    pub(super) mounted: bool,
    pub(super) _lock: File,
}

impl MutableSnapshot {
    /// The directory to write into (the container's root).
    pub fn root(&self) -> PathBuf {
        self.dir.join("merged")
    }

    /// With overlay, the directory that receives the changes (beside the
    /// mount, for entries written there directly: hard links to files of
    /// committed snapshots, which cannot be made through the mount).
    /// Not with fuse-overlayfs, which would not see them: it caches what
    /// it has looked up.
    pub fn upper(&self) -> Option<PathBuf> {
        (self.snapshotter.backend == Backend::Overlay && !self.snapshotter.fuse)
            .then(|| self.dir.join("upper"))
    }

    /// The parent snapshot.
    pub fn parent(&self) -> Option<&str> {
        self.parent.as_deref()
    }

    fn unmount(&mut self) -> Result<(), SnapshotError> {
        if self.mounted {
            unmount(&self.root()).map_err(io_err("unmounting", &self.root()))?;
            self.mounted = false;
        }
        Ok(())
    }

    /// Moves the step's changes (overlay: the upper directory; copy: the
    /// whole tree) into a new committed snapshot.
    fn finish(mut self) -> Result<Snapshot, SnapshotError> {
        self.unmount()?;
        let s = self.snapshotter.clone();
        let changes = match s.backend {
            Backend::Overlay => self.dir.join("upper"),
            Backend::Copy => self.root(),
        };
        let tmp = s.tmp_committed()?;
        let result = (|| {
            let dest = tmp.join("fs");
            fs::remove_dir(&dest).map_err(io_err("replacing", &dest))?;
            fs::rename(&changes, &dest).map_err(io_err("moving", &changes))?;
            s.finish_commit(&tmp, self.parent.as_deref())
        })();
        if result.is_err() {
            let _ = crate::tree::remove_tree(&tmp);
        }
        result
    }

    /// Commits and writes the layer of the changes into `store`
    /// ([`Snapshotter::layer`]); when the layer fails, nothing is committed.
    pub fn commit(
        self,
        store: &BlobStore,
        options: &LayerOptions,
    ) -> Result<(Snapshot, Layer), SnapshotError> {
        let s = self.snapshotter.clone();
        let snap = self.finish()?;
        match s.layer(&snap.id, store, options) {
            Ok(layer) => Ok((snap, layer)),
            Err(e) => {
                let _ = crate::tree::remove_tree(s.committed_dir(&snap.id));
                Err(e)
            }
        }
    }

    /// Commits without writing the layer tar where it can be made later
    /// from the committed snapshot ([`Snapshotter::layer`]): with overlay
    /// the upper directory is kept as it is. Returns the snapshot, the
    /// layer when it was written (copy backend), and the bytes of the
    /// step's changes (0: it changed nothing).
    pub fn commit_lazy(
        self,
        store: &BlobStore,
        options: &LayerOptions,
    ) -> Result<(Snapshot, Option<Layer>, u64), SnapshotError> {
        match self.snapshotter.backend {
            Backend::Overlay => {
                let upper = self.dir.join("upper");
                let changed = fs::read_dir(&upper)
                    .map_err(io_err("reading", &upper))?
                    .next()
                    .is_some();
                // Entries count a block each, so a change of names only
                // (a whiteout, an empty file) is not 0.
                let size = if changed {
                    super::disk::tree_bytes(&upper)
                } else {
                    0
                };
                Ok((self.finish()?, None, size))
            }
            Backend::Copy => {
                let (snap, layer) = self.commit(store, options)?;
                let size = if layer.uncompressed_size > 1024 {
                    layer.uncompressed_size
                } else {
                    0
                };
                Ok((snap, Some(layer), size))
            }
        }
    }

    /// Throws the changes away.
    pub fn discard(mut self) -> Result<(), SnapshotError> {
        self.unmount()?;
        crate::tree::remove_tree(&self.dir).map_err(io_err("removing", &self.dir))
    }
}

impl Drop for MutableSnapshot {
    fn drop(&mut self) {
        let _ = self.unmount();
        let _ = crate::tree::remove_tree(&self.dir);
    }
}
