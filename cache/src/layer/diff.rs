//! Which entries a layer holds: the walks over a whole tree, an overlayfs
//! upper directory, or two trees, deciding what changed the way BuildKit's
//! differs do (its overlay differ and continuity's double walk):
//!
//! - an entry that exists below and looks the same is not written: for a
//!   directory, the same type, mode, owner and extended attributes (its
//!   mtime does not count: a directory copied up by overlayfs, or touched
//!   by a mount stub made and removed, is no change); for anything else
//!   also the same size, mtime and content;
//! - a directory left out that way is still written, just before its first
//!   written descendant (containerd's `includeParents`), so every entry of
//!   a layer has its parent directories;
//! - a whiteout is written only for what exists below; an opaque directory
//!   is written as the changes against what it hides (whiteouts for what
//!   is gone), as BuildKit does, not as `.wh..opq`.
//!
//! Where BuildKit would miss a change (a file rewritten with its size and
//! mtime kept, an extended attribute changed), it is written.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, Metadata};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::LayerError;
use super::tar_writer::TarWriter;
use super::write::TarSink;

/// A directory of the tree below a layer, as the layers that show at its
/// path: top first. One directory for a full tree (the copy backend);
/// for overlay snapshots each committed layer that has the directory,
/// down to the first that hides what is under it.
#[derive(Debug, Clone, Default)]
pub struct Lower<'k> {
    dirs: Vec<PathBuf>,
    known: Option<&'k KnownDirs>,
}

/// What a path of a lower layer is, for the walk down the layers.
#[derive(Debug, Clone, Copy)]
enum Below {
    Absent,
    NotDir,
    Dir { opaque: bool },
}

/// What the directory paths of lower layers were found to be, kept by
/// the caller (a snapshotter, for its life): lower layers are committed
/// snapshots, which never change. Each layer written on a stack walks the
/// same directories of every layer below it (a RUN that writes into
/// `/steps` looks at `steps` in each of the 30 layers below, a stat and
/// two xattr reads each); with this only the first walk asks the
/// filesystem.
#[derive(Debug, Default)]
pub struct KnownDirs(std::sync::Mutex<HashMap<PathBuf, Below>>);

impl KnownDirs {
    fn get(&self, path: &Path) -> Below {
        let known = self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(path)
            .copied();
        if let Some(b) = known {
            return b;
        }
        let b = below(path);
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(path.to_path_buf(), b);
        b
    }
}

fn below(path: &Path) -> Below {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => Below::Dir {
            opaque: is_opaque(path),
        },
        Ok(_) => Below::NotDir,
        Err(_) => Below::Absent,
    }
}

impl<'k> Lower<'k> {
    /// The root of a stack of overlay layers (top first), or of one tree;
    /// what its directories are is asked of `known` when given.
    pub fn new(dirs: &[&Path], known: Option<&'k KnownDirs>) -> Lower<'k> {
        let mut lower = Lower {
            dirs: Vec::new(),
            known,
        };
        lower.dirs = dirs
            .iter()
            .filter(|d| matches!(lower.below(d), Below::Dir { .. }))
            .map(|d| d.to_path_buf())
            .collect();
        lower
    }

    fn below(&self, path: &Path) -> Below {
        match self.known {
            Some(k) => k.get(path),
            None => below(path),
        }
    }

    /// Entry `name` as the merged tree shows it.
    fn get(&self, name: &OsStr) -> Option<(PathBuf, Metadata)> {
        for dir in &self.dirs {
            let path = dir.join(name);
            if let Ok(meta) = fs::symlink_metadata(&path) {
                if is_whiteout_device(&meta) {
                    return None;
                }
                return Some((path, meta));
            }
        }
        None
    }

    /// Directory `name` below this one: the layers where it is a
    /// directory, down to the first that hides the rest (an opaque
    /// directory, a whiteout or a file).
    fn child(&self, name: &OsStr) -> Lower<'k> {
        let mut dirs = Vec::new();
        for dir in &self.dirs {
            let path = dir.join(name);
            match self.below(&path) {
                Below::Dir { opaque } => {
                    dirs.push(path);
                    if opaque {
                        break;
                    }
                }
                Below::NotDir => break,
                Below::Absent => continue,
            }
        }
        Lower {
            dirs,
            known: self.known,
        }
    }

    /// The names of the merged directory, sorted by bytes.
    fn names(&self) -> Result<Vec<OsString>, LayerError> {
        if let [only] = self.dirs.as_slice() {
            return sorted_entries(only);
        }
        let mut seen: HashMap<OsString, bool> = HashMap::new();
        for dir in &self.dirs {
            for e in fs::read_dir(dir).map_err(|e| LayerError::io("reading", dir, e))? {
                let e = e.map_err(|e| LayerError::io("reading", dir, e))?;
                let name = e.file_name();
                if seen.contains_key(&name) {
                    continue;
                }
                let gone = e.file_type().is_ok_and(|t| t.is_char_device())
                    && fs::symlink_metadata(e.path()).is_ok_and(|m| is_whiteout_device(&m));
                seen.insert(name, !gone);
            }
        }
        let mut names: Vec<OsString> = seen
            .into_iter()
            .filter_map(|(n, shown)| shown.then_some(n))
            .collect();
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        Ok(names)
    }
}

pub(super) fn os_join(dir: &Path, name: &OsStr) -> PathBuf {
    if dir.as_os_str().is_empty() {
        PathBuf::from(name)
    } else {
        dir.join(name)
    }
}

/// Directory entries sorted by name bytes.
/// The names in `dir`, sorted; fuse-overlayfs's opaque marker file
/// (`.wh..wh..opq`, beside its xattr) is no entry.
fn sorted_entries(dir: &Path) -> Result<Vec<OsString>, LayerError> {
    let mut names: Vec<OsString> = fs::read_dir(dir)
        .map_err(|e| LayerError::io("reading", dir, e))?
        .map(|e| e.map(|e| e.file_name()))
        .filter(|n| !n.as_ref().is_ok_and(|n| n == crate::OPAQUE_MARKER))
        .collect::<Result<_, _>>()
        .map_err(|e| LayerError::io("reading", dir, e))?;
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    Ok(names)
}

fn is_whiteout_device(meta: &Metadata) -> bool {
    meta.file_type().is_char_device() && meta.rdev() == 0
}

fn is_opaque(path: &Path) -> bool {
    crate::is_overlay_opaque(path)
}

impl<W: TarSink> TarWriter<W> {
    /// Every entry below `dir` (relative name `rel`), depth first, sorted.
    pub(crate) fn write_tree(&mut self, dir: &Path, rel: &Path) -> Result<(), LayerError> {
        for name in sorted_entries(dir)? {
            let full = dir.join(&name);
            let child = os_join(rel, &name);
            let meta =
                fs::symlink_metadata(&full).map_err(|e| LayerError::io("reading", &full, e))?;
            self.emit(&full, &child, &meta)?;
            if meta.is_dir() {
                self.write_tree(&full, &child)?;
            }
        }
        Ok(())
    }

    /// An overlayfs upper directory over `lower`, whiteouts translated to
    /// OCI form.
    pub(crate) fn write_overlay(
        &mut self,
        dir: &Path,
        lower: &Lower<'_>,
        rel: &Path,
    ) -> Result<(), LayerError> {
        for name in sorted_entries(dir)? {
            let full = dir.join(&name);
            let child = os_join(rel, &name);
            let meta =
                fs::symlink_metadata(&full).map_err(|e| LayerError::io("reading", &full, e))?;
            let below = lower.get(&name);
            if is_whiteout_device(&meta) {
                if below.is_some() {
                    self.emit_whiteout(rel, &name, Some(&meta))?;
                }
                continue;
            }
            let same = match &below {
                Some((low, low_meta)) => same_entry(low_meta, &meta, low, &full)?,
                None => false,
            };
            if !meta.is_dir() {
                if !same {
                    self.emit(&full, &child, &meta)?;
                }
                continue;
            }
            if same {
                self.defer_dir(&full, &child);
            } else {
                self.emit(&full, &child, &meta)?;
            }
            let below_dir = lower.child(&name);
            if below.is_some() && is_opaque(&full) {
                // It hides everything below: what is gone becomes
                // whiteouts, what is shown is compared with what was.
                self.write_compare(&below_dir, &full, &child)?;
            } else {
                self.write_overlay(&full, &below_dir, &child)?;
            }
            self.leave_dir(&child);
        }
        Ok(())
    }

    /// Entries of the tree `upper` that are new or differ from `lower`,
    /// whiteouts for entries of `lower` that are gone.
    pub(crate) fn write_compare(
        &mut self,
        lower: &Lower<'_>,
        upper: &Path,
        rel: &Path,
    ) -> Result<(), LayerError> {
        let upper_names = sorted_entries(upper)?;
        let lower_names = lower.names()?;
        let mut all: Vec<&OsString> = upper_names.iter().chain(lower_names.iter()).collect();
        all.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        all.dedup();
        for name in all {
            let up = upper.join(name);
            let child = os_join(rel, name);
            // A whiteout left in an opaque upper directory is no entry.
            let up_meta = fs::symlink_metadata(&up)
                .ok()
                .filter(|m| !is_whiteout_device(m));
            match (up_meta, lower.get(name)) {
                (None, Some((_, low_meta))) => self.emit_whiteout(rel, name, Some(&low_meta))?,
                (Some(um), None) => {
                    self.emit(&up, &child, &um)?;
                    if um.is_dir() {
                        self.write_tree(&up, &child)?;
                    }
                }
                (Some(um), Some((low, lm))) => {
                    if um.is_dir() && lm.is_dir() {
                        if same_entry(&lm, &um, &low, &up)? {
                            self.defer_dir(&up, &child);
                        } else {
                            self.emit(&up, &child, &um)?;
                        }
                        self.write_compare(&lower.child(name), &up, &child)?;
                        self.leave_dir(&child);
                    } else if um.is_dir() != lm.is_dir() {
                        // A directory replaced by a file or the other way:
                        // hide the old one, then write the new one whole.
                        if lm.is_dir() {
                            self.emit_whiteout(rel, name, Some(&lm))?;
                        }
                        self.emit(&up, &child, &um)?;
                        if um.is_dir() {
                            self.emit_whiteout(&child, OsStr::new(".wh..opq"), Some(&um))?;
                            self.write_tree(&up, &child)?;
                        }
                    } else if !same_entry(&lm, &um, &low, &up)? {
                        self.emit(&up, &child, &um)?;
                    }
                }
                (None, None) => {}
            }
        }
        Ok(())
    }
}

/// Whether entry `b` (at `pb`) is unchanged from `a` (at `pa`): BuildKit's
/// `sameDirent` (type, mode, owner, device number, capabilities; for
/// non-directories size and mtime), with every extended attribute and the
/// content compared too, so that no real change is lost.
fn same_entry(a: &Metadata, b: &Metadata, pa: &Path, pb: &Path) -> Result<bool, LayerError> {
    if a.dev() == b.dev() && a.ino() == b.ino() {
        return Ok(true);
    }
    let meta_same = a.mode() == b.mode()
        && a.uid() == b.uid()
        && a.gid() == b.gid()
        && a.rdev() == b.rdev()
        && (a.file_type().is_symlink() || xattrs(pa) == xattrs(pb));
    if !meta_same {
        return Ok(false);
    }
    if a.is_dir() {
        return Ok(true);
    }
    if a.len() != b.len() || a.mtime() != b.mtime() || a.mtime_nsec() != b.mtime_nsec() {
        return Ok(false);
    }
    same_content(a, pa, pb)
}

/// Extended attributes but overlayfs's own, sorted.
fn xattrs(p: &Path) -> Vec<(OsString, Option<Vec<u8>>)> {
    xattr::list(p)
        .map(|names| {
            let mut v: Vec<_> = names
                .filter(|n| {
                    let n = n.as_bytes();
                    !crate::is_overlay_xattr(n)
                })
                .map(|n| (n.clone(), xattr::get(p, &n).ok().flatten()))
                .collect();
            v.sort();
            v
        })
        .unwrap_or_default()
}

/// Same content, for two entries of the same type and size.
fn same_content(a: &Metadata, pa: &Path, pb: &Path) -> Result<bool, LayerError> {
    if a.file_type().is_symlink() {
        return Ok(fs::read_link(pa).ok() == fs::read_link(pb).ok());
    }
    if !a.is_file() || a.len() == 0 {
        return Ok(true);
    }
    let mut fa = File::open(pa).map_err(|e| LayerError::io("opening", pa, e))?;
    let mut fb = File::open(pb).map_err(|e| LayerError::io("opening", pb, e))?;
    let (mut ba, mut bb) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
    loop {
        let na = io::Read::read(&mut fa, &mut ba).map_err(|e| LayerError::io("reading", pa, e))?;
        if na == 0 {
            return Ok(true);
        }
        io::Read::read_exact(&mut fb, &mut bb[..na])
            .map_err(|e| LayerError::io("reading", pb, e))?;
        if ba[..na] != bb[..na] {
            return Ok(false);
        }
    }
}
