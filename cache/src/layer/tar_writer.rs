//! [`TarWriter`]: tar entries with the header fields fixed for
//! determinism (GNU format, no uname/gname, zero atime/ctime, mtimes as
//! found or clamped), hard links as links to the path written first, long
//! names and link targets, file capabilities (the one extended attribute a
//! layer keeps) and whiteouts. The walks that feed it are `diff.rs`'s.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, Metadata};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use tar::{EntryType, Header};

use super::LayerError;
use super::diff::os_join;
use super::write::TarSink;

/// The one extended attribute layers keep (see `write_xattrs`): a file's
/// capabilities.
pub const CAPABILITY: &str = "security.capability";

/// The capabilities of an open file (`setcap`), if it has any.
pub fn capabilities(file: &File) -> Option<Vec<u8>> {
    use xattr::FileExt as _;
    file.get_xattr(CAPABILITY)
        .ok()
        .flatten()
        .filter(|c| !c.is_empty())
}

/// Gives an open file `caps` (after any chown: a chown clears them).
pub fn set_capabilities(file: &File, caps: &[u8]) -> io::Result<()> {
    use xattr::FileExt as _;
    file.set_xattr(CAPABILITY, caps)
}

/// Builds tar entries with fixed header fields.
pub(crate) struct TarWriter<W: TarSink> {
    builder: tar::Builder<W>,
    clamp_mtime: Option<i64>,
    /// (dev, ino) of files with several links -> the path written first.
    links: HashMap<(u64, u64), PathBuf>,
    /// Unchanged directories (full path, name) around the entry being
    /// walked, outermost first: written before the first entry below them.
    deferred: Vec<(PathBuf, PathBuf)>,
}

impl<W: TarSink> TarWriter<W> {
    pub(crate) fn new(inner: W, clamp_mtime: Option<i64>) -> TarWriter<W> {
        let mut builder = tar::Builder::new(inner);
        builder.mode(tar::HeaderMode::Complete);
        builder.follow_symlinks(false);
        TarWriter {
            builder,
            clamp_mtime,
            links: HashMap::new(),
            deferred: Vec::new(),
        }
    }

    pub(crate) fn finish(self) -> Result<W, LayerError> {
        self.builder
            .into_inner()
            .map_err(|e| LayerError::io("writing", Path::new("layer"), e))
    }

    fn header(&self, meta: &Metadata, entry_type: EntryType) -> Header {
        let mut h = Header::new_gnu();
        h.set_entry_type(entry_type);
        h.set_mode(meta.mode() & 0o7777);
        h.set_uid(u64::from(meta.uid()));
        h.set_gid(u64::from(meta.gid()));
        let mtime = match self.clamp_mtime {
            Some(clamp) if meta.mtime() > clamp => clamp,
            _ => meta.mtime(),
        };
        h.set_mtime(mtime.max(0) as u64);
        h.set_size(0);
        h
    }

    /// Writes entry `full` as `rel`, after the directories deferred
    /// around it.
    pub(super) fn emit(
        &mut self,
        full: &Path,
        rel: &Path,
        meta: &Metadata,
    ) -> Result<(), LayerError> {
        self.write_deferred()?;
        self.write_entry(full, rel, meta)
    }

    /// Writes the whiteout of `name` in `rel_dir`, after the directories
    /// deferred around it.
    pub(super) fn emit_whiteout(
        &mut self,
        rel_dir: &Path,
        name: &OsStr,
        template: Option<&Metadata>,
    ) -> Result<(), LayerError> {
        self.write_deferred()?;
        self.write_whiteout(rel_dir, name, template)
    }

    /// An unchanged directory about to be walked: written only if
    /// something below it is.
    pub(super) fn defer_dir(&mut self, full: &Path, rel: &Path) {
        self.deferred.push((full.to_path_buf(), rel.to_path_buf()));
    }

    /// Done walking directory `rel`.
    pub(super) fn leave_dir(&mut self, rel: &Path) {
        if self.deferred.last().is_some_and(|(_, r)| r == rel) {
            self.deferred.pop();
        }
    }

    fn write_deferred(&mut self) -> Result<(), LayerError> {
        for (full, rel) in std::mem::take(&mut self.deferred) {
            let meta =
                fs::symlink_metadata(&full).map_err(|e| LayerError::io("reading", &full, e))?;
            self.write_entry(&full, &rel, &meta)?;
        }
        Ok(())
    }

    /// Writes one filesystem entry found at `full` as `rel`.
    fn write_entry(&mut self, full: &Path, rel: &Path, meta: &Metadata) -> Result<(), LayerError> {
        let io = |e| LayerError::io("writing", full, e);
        self.write_xattrs(full, meta)?;
        let ft = meta.file_type();
        if ft.is_dir() {
            let mut h = self.header(meta, EntryType::Directory);
            let mut name = rel.as_os_str().to_owned();
            name.push("/");
            self.builder
                .append_data(&mut h, Path::new(&name), io::empty())
                .map_err(io)?;
        } else if ft.is_symlink() {
            let target = fs::read_link(full).map_err(|e| LayerError::io("reading", full, e))?;
            let mut h = self.header(meta, EntryType::Symlink);
            self.append_link(&mut h, rel, target.as_os_str().as_bytes())
                .map_err(io)?;
        } else if ft.is_file() {
            if meta.nlink() > 1 {
                let key = (meta.dev(), meta.ino());
                if let Some(first) = self.links.get(&key).cloned() {
                    let mut h = self.header(meta, EntryType::Link);
                    self.append_link(&mut h, rel, first.as_os_str().as_bytes())
                        .map_err(io)?;
                    return Ok(());
                }
                self.links.insert(key, rel.to_path_buf());
            }
            let mut h = self.header(meta, EntryType::Regular);
            h.set_size(meta.len());
            let mut file = File::open(full).map_err(|e| LayerError::io("opening", full, e))?;
            // The header (and a long-name entry) from the builder, the data
            // and its padding from here.
            self.builder
                .append_data(&mut h, rel, io::empty())
                .map_err(io)?;
            // A file that changes size while it is read would corrupt the
            // tar: exactly the size in the header is read, or it fails.
            let mut left = meta.len();
            while left > 0 {
                let max = usize::try_from(left).unwrap_or(usize::MAX);
                let n = match self.builder.get_mut().read_from(&mut file, max) {
                    Ok([]) => return Err(LayerError::Changed(full.to_path_buf())),
                    Ok(read) => read.len(),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(LayerError::io("reading", full, e)),
                };
                left -= n as u64;
            }
            let pad = (512 - meta.len() % 512) % 512;
            self.builder
                .get_mut()
                .write_all(&[0; 512][..pad as usize])
                .map_err(io)?;
        } else if ft.is_char_device() || ft.is_block_device() || ft.is_fifo() {
            let kind = if ft.is_char_device() {
                EntryType::Char
            } else if ft.is_block_device() {
                EntryType::Block
            } else {
                EntryType::Fifo
            };
            let mut h = self.header(meta, kind);
            if kind != EntryType::Fifo {
                let rdev = meta.rdev();
                h.set_device_major(libc::major(rdev)).map_err(io)?;
                h.set_device_minor(libc::minor(rdev)).map_err(io)?;
            }
            self.builder
                .append_data(&mut h, rel, io::empty())
                .map_err(io)?;
        }
        // Sockets have no tar form; they are left out, as by Docker.
        Ok(())
    }

    /// A symlink or hard link entry whose target is `target` byte for byte.
    /// (`tar::Builder::append_link` cleans the target as a path: `//a`
    /// became `/a`, `a/./b` `a/b`; a symlink's target is any bytes.) A
    /// target longer than the header's 100 bytes goes before it in a GNU
    /// long-link entry, as GNU tar writes it.
    fn append_link(&mut self, h: &mut Header, rel: &Path, target: &[u8]) -> io::Result<()> {
        let slot = &mut h.as_old_mut().linkname;
        if target.len() > slot.len() {
            let mut long = Header::new_gnu();
            let name = b"././@LongLink";
            long.as_gnu_mut().expect("a GNU header").name[..name.len()].copy_from_slice(name);
            long.set_mode(0o644);
            long.set_uid(0);
            long.set_gid(0);
            long.set_mtime(0);
            long.set_size(target.len() as u64 + 1);
            long.set_entry_type(EntryType::GNULongLink);
            long.set_cksum();
            let sink = self.builder.get_mut();
            sink.write_all(long.as_bytes())?;
            sink.write_all(target)?;
            let written = target.len() + 1;
            sink.write_all(&[0; 512][..1 + (512 - written % 512) % 512])?;
        }
        let n = target.len().min(slot.len());
        slot[..n].copy_from_slice(&target[..n]);
        self.builder.append_data(h, rel, io::empty())
    }

    /// The PAX `SCHILY.xattr.security.capability` record of a file that
    /// has file capabilities (`setcap`; Debian's ping has one). That is the
    /// one attribute containerd's and Docker's layer writers keep, so the
    /// one BuildKit's layers hold: a host's SELinux labels, ACLs and
    /// `user.*` attributes stay out of images.
    fn write_xattrs(&mut self, full: &Path, meta: &Metadata) -> Result<(), LayerError> {
        if meta.file_type().is_symlink() {
            return Ok(());
        }
        let Ok(Some(value)) = xattr::get(full, CAPABILITY) else {
            return Ok(());
        };
        if value.is_empty() {
            return Ok(());
        }
        let key = format!("SCHILY.xattr.{CAPABILITY}");
        self.builder
            .append_pax_extensions([(key.as_str(), value.as_slice())])
            .map_err(|e| LayerError::io("writing", full, e))
    }

    fn write_whiteout(
        &mut self,
        rel_dir: &Path,
        name: &OsStr,
        template: Option<&Metadata>,
    ) -> Result<(), LayerError> {
        let mut wh = OsString::from(".wh.");
        wh.push(name);
        let path = os_join(rel_dir, &wh);
        let mut h = Header::new_gnu();
        h.set_entry_type(EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(0);
        let mtime = template.map_or(0, |m| m.mtime().max(0) as u64);
        h.set_mtime(match self.clamp_mtime {
            Some(c) if mtime as i64 > c => c.max(0) as u64,
            _ => mtime,
        });
        self.builder
            .append_data(&mut h, &path, io::empty())
            .map_err(|e| LayerError::io("writing", &path, e))
    }
}
