//! Applying a layer onto a directory: gzip, zstd or plain tar (found from
//! the first bytes), OCI whiteouts and opaque directories.
//!
//! Hostile archives are refused or neutralised, never followed: names are
//! cleaned and may not climb out of the root (`..`, absolute paths are
//! taken relative to it), every parent directory is resolved inside the
//! root (a symlink in the way is followed only as if the root were `/`),
//! hard links must point at an entry inside the root, device nodes are
//! skipped unless running as root, and absurd sizes are refused. Files are
//! created without following a symlink at their own name.

use std::collections::HashSet;
use std::fs::{self, OpenOptions};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt, symlink};

use std::path::{Path, PathBuf};
use xattr::FileExt as _;

use tar::EntryType;

use super::LayerError;
use super::decode::{ChannelReader, decompress};
use super::paths::{c_string, clean_name, lchown, remove_any, resolve_in_root, set_mtime};

/// Entries larger than this are refused (1 TiB).
pub const MAX_ENTRY_SIZE: u64 = 1 << 40;

/// What an unpack did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnpackStats {
    /// Entries written.
    pub entries: u64,
    /// Whiteouts applied.
    pub whiteouts: u64,
    /// Device nodes skipped (not root).
    pub skipped_devices: u64,
    /// Bytes of file content written.
    pub bytes: u64,
}

/// Options for [`unpack`].
#[derive(Debug, Clone)]
pub struct UnpackOptions {
    /// Set owners from the archive (needs root).
    pub same_owner: bool,
    /// Create device nodes (needs root).
    pub devices: bool,
    /// Keep whiteouts in overlayfs form instead of applying them: a char
    /// 0/0 device for a deleted name, `trusted.overlay.opaque=y` (in a user
    /// namespace `user.overlay.opaque=y`) on an opaque directory (for a layer kept as an overlay lower directory).
    pub overlay_whiteouts: bool,
    /// Give every entry this uid and gid instead of the archive's (needs
    /// root; `ADD --chown` of an archive).
    pub owner: Option<(u32, u32)>,
}

impl Default for UnpackOptions {
    fn default() -> Self {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        UnpackOptions {
            same_owner: root,
            devices: root,
            overlay_whiteouts: false,
            owner: None,
        }
    }
}

/// Applies the layer read from `reader` onto `root`.
pub fn unpack(
    reader: impl Read + Send,
    root: &Path,
    options: &UnpackOptions,
) -> Result<UnpackStats, LayerError> {
    // Decompression runs on its own thread, a few MiB ahead of the thread
    // that creates files: on two cores the two halves overlap.
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<io::Result<Vec<u8>>>(8);
        scope.spawn(move || {
            let result = (|| -> io::Result<()> {
                let mut decoded = decompress(reader)?;
                loop {
                    let mut chunk = vec![0u8; 1 << 20];
                    let mut filled = 0;
                    while filled < chunk.len() {
                        match decoded.read(&mut chunk[filled..])? {
                            0 => break,
                            n => filled += n,
                        }
                    }
                    if filled == 0 {
                        return Ok(());
                    }
                    chunk.truncate(filled);
                    if tx.send(Ok(chunk)).is_err() {
                        return Ok(()); // the reader gave up
                    }
                }
            })();
            if let Err(e) = result {
                let _ = tx.send(Err(e));
            }
        });
        unpack_decoded(
            ChannelReader {
                rx,
                chunk: Vec::new(),
                pos: 0,
            },
            root,
            options,
        )
    })
}

fn unpack_decoded(
    decoded: impl Read,
    root: &Path,
    options: &UnpackOptions,
) -> Result<UnpackStats, LayerError> {
    fs::create_dir_all(root).map_err(|e| LayerError::io("creating", root, e))?;
    // Metadata entries the parser reads whole are bounded before it does.
    let mut archive = tar::Archive::new(super::guard::TarGuard::new(decoded));
    let mut state = Unpacker {
        root: root.to_path_buf(),
        options: options.clone(),
        stats: UnpackStats::default(),
        written: HashSet::new(),
        dir_times: Vec::new(),
        parent_cache: None,
    };
    let entries = archive
        .entries()
        .map_err(|e| LayerError::io("reading", Path::new("layer"), e))?;
    for entry in entries {
        let entry = entry.map_err(|e| LayerError::io("reading", Path::new("layer"), e))?;
        state.apply(entry)?;
    }
    // Read to the end so that a verifying reader below checks the digest
    // (tar stops at its end marker; padding may follow).
    io::copy(&mut archive.into_inner(), &mut io::sink())
        .map_err(|e| LayerError::io("reading", Path::new("layer"), e))?;
    // Directory times last: adding entries changed them.
    for (path, mtime) in state.dir_times.iter().rev() {
        set_mtime(path, *mtime);
    }
    Ok(state.stats)
}

struct Unpacker {
    root: PathBuf,
    options: UnpackOptions,
    stats: UnpackStats,
    /// Paths (relative) this layer wrote; an opaque marker keeps these.
    written: HashSet<PathBuf>,
    dir_times: Vec<(PathBuf, u64)>,
    /// The last parent resolved, created and opened (tar entries come
    /// sorted, so neighbours share it); dropped whenever a symlink or a
    /// removal could change what a path resolves to.
    parent_cache: Option<Parent>,
}

/// A parent directory of entries: its name in the archive, its resolved
/// path and an open descriptor, through which files are created and set
/// up without a path walk per call (a 1 GiB /usr layer: five walks a file
/// were most of the unpack).
struct Parent {
    rel: PathBuf,
    path: PathBuf,
    dir: fs::File,
}

impl Unpacker {
    fn apply<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<(), LayerError> {
        let raw = entry.path_bytes().into_owned();
        let rel = clean_name(&raw)?;
        if rel.as_os_str().is_empty() {
            return Ok(()); // the root itself
        }
        let header = entry.header().clone();
        let size = entry.size();
        if size > MAX_ENTRY_SIZE {
            return Err(LayerError::Hostile {
                entry: rel.display().to_string(),
                reason: "its size is absurd",
            });
        }
        let name = rel
            .file_name()
            .map(|n| n.as_bytes().to_vec())
            .unwrap_or_default();
        let parent_rel = rel.parent().unwrap_or(Path::new("")).to_path_buf();
        if self
            .parent_cache
            .as_ref()
            .is_none_or(|p| p.rel != parent_rel)
        {
            let resolved = resolve_in_root(&self.root, &parent_rel, true);
            fs::create_dir_all(&resolved).map_err(|e| LayerError::io("creating", &resolved, e))?;
            let dir = OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
                .open(&resolved)
                .map_err(|e| LayerError::io("opening", &resolved, e))?;
            self.parent_cache = Some(Parent {
                rel: parent_rel.clone(),
                path: resolved,
                dir,
            });
        }
        let parent = self.parent_cache.as_ref().expect("set above").path.clone();

        // Whiteouts remove things a cached parent may go through.
        if name.starts_with(b".wh.") {
            self.parent_cache = None;
        }
        if name == b".wh..wh..opq" && self.options.overlay_whiteouts {
            self.stats.whiteouts += 1;
            xattr::set(&parent, crate::overlay_opaque_xattr(), b"y")
                .map_err(|e| LayerError::io("marking opaque", &parent, e))?;
            return Ok(());
        }
        if let Some(hidden) = name
            .strip_prefix(b".wh.")
            .filter(|_| self.options.overlay_whiteouts)
        {
            self.stats.whiteouts += 1;
            let target = parent.join(std::ffi::OsStr::from_bytes(hidden));
            remove_any(&target).map_err(|e| LayerError::io("removing", &target, e))?;
            let c = c_string(target.as_os_str().as_bytes(), &rel)?;
            // SAFETY: valid path; a char 0/0 device is overlayfs's whiteout.
            if unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR, 0) } != 0 {
                return Err(LayerError::io(
                    "creating whiteout",
                    &target,
                    io::Error::last_os_error(),
                ));
            }
            return Ok(());
        }
        if name == b".wh..wh..opq" {
            self.stats.whiteouts += 1;
            let keep: Vec<PathBuf> = self
                .written
                .iter()
                .filter(|p| p.parent() == Some(&parent_rel))
                .cloned()
                .collect();
            for e in fs::read_dir(&parent)
                .map_err(|e| LayerError::io("reading", &parent, e))?
                .flatten()
            {
                let child_rel = parent_rel.join(e.file_name());
                if !keep.contains(&child_rel) {
                    remove_any(&e.path())
                        .map_err(|err| LayerError::io("removing", &e.path(), err))?;
                }
            }
            return Ok(());
        }
        if let Some(hidden) = name.strip_prefix(b".wh.") {
            self.stats.whiteouts += 1;
            let target = parent.join(std::ffi::OsStr::from_bytes(hidden));
            remove_any(&target).map_err(|e| LayerError::io("removing", &target, e))?;
            return Ok(());
        }

        let dest = parent.join(std::ffi::OsStr::from_bytes(&name));
        let kind = header.entry_type();
        if matches!(
            kind,
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse
        ) && let Some(file) = self.create_in_parent(&name, &dest)?
        {
            return self.fill_file(file, entry, &header, &rel, &dest);
        }
        if kind == EntryType::Symlink && self.symlink_in_parent(&name, &entry, &header, &dest)? {
            self.stats.entries += 1;
            self.mark_written(&rel);
            return Ok(());
        }
        let existing = fs::symlink_metadata(&dest).ok();
        // Replace what is there unless both are directories.
        if let Some(m) = &existing
            && !(m.is_dir() && kind == EntryType::Directory)
        {
            remove_any(&dest).map_err(|e| LayerError::io("replacing", &dest, e))?;
            self.parent_cache = None;
        }
        if kind == EntryType::Symlink {
            self.parent_cache = None;
        }
        let mode = header
            .mode()
            .map_err(|e| LayerError::io("reading", &dest, e))?
            & 0o7777;
        let mtime = header.mtime().unwrap_or(0);
        match kind {
            EntryType::Directory => {
                if existing.as_ref().is_none_or(|m| !m.is_dir()) {
                    fs::create_dir(&dest).map_err(|e| LayerError::io("creating", &dest, e))?;
                }
                self.dir_times.push((dest.clone(), mtime));
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                let mut file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .mode(0o600)
                    .open(&dest)
                    .map_err(|e| LayerError::io("creating", &dest, e))?;
                let n = io::copy(&mut entry, &mut file)
                    .map_err(|e| LayerError::io("writing", &dest, e))?;
                self.stats.bytes += n;
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                symlink(std::ffi::OsStr::from_bytes(&target), &dest)
                    .map_err(|e| LayerError::io("creating", &dest, e))?;
            }
            EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                let target_rel = clean_name(&target).map_err(|_| LayerError::Hostile {
                    entry: rel.display().to_string(),
                    reason: "its hard link points outside the root",
                })?;
                let source = resolve_in_root(&self.root, &target_rel, false);
                let source_meta =
                    fs::symlink_metadata(&source).map_err(|_| LayerError::Hostile {
                        entry: rel.display().to_string(),
                        reason: "its hard link target is not in the layer or below it",
                    })?;
                if source_meta.is_dir() {
                    return Err(LayerError::Hostile {
                        entry: rel.display().to_string(),
                        reason: "it hard-links a directory",
                    });
                }
                fs::hard_link(&source, &dest).map_err(|e| LayerError::io("linking", &dest, e))?;
                self.stats.entries += 1;
                self.mark_written(&rel);
                return Ok(());
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                if kind != EntryType::Fifo && !self.options.devices {
                    self.stats.skipped_devices += 1;
                    return Ok(());
                }
                let fmt = match kind {
                    EntryType::Char => libc::S_IFCHR,
                    EntryType::Block => libc::S_IFBLK,
                    _ => libc::S_IFIFO,
                };
                let major = header.device_major().ok().flatten().unwrap_or(0);
                let minor = header.device_minor().ok().flatten().unwrap_or(0);
                let c = c_string(dest.as_os_str().as_bytes(), &rel)?;
                // SAFETY: c is a valid path; mknod has no memory preconditions.
                let rc =
                    unsafe { libc::mknod(c.as_ptr(), fmt | mode, libc::makedev(major, minor)) };
                if rc != 0 {
                    let err = io::Error::last_os_error();
                    // In a user namespace no device can be made: left out,
                    // as containerd's unpacker does there.
                    if kind != EntryType::Fifo
                        && err.raw_os_error() == Some(libc::EPERM)
                        && crate::in_user_namespace()
                    {
                        self.stats.skipped_devices += 1;
                        return Ok(());
                    }
                    return Err(LayerError::io("creating", &dest, err));
                }
            }
            // PAX/GNU metadata records are consumed by the tar reader.
            _ => return Ok(()),
        }

        if let Some((uid, gid)) = self.owner_of(&header) {
            lchown(&dest, uid.into(), gid.into())
                .map_err(|e| LayerError::io("changing owner of", &dest, e))?;
        }
        if kind != EntryType::Symlink {
            // After chown, which clears setuid bits.
            fs::set_permissions(&dest, fs::Permissions::from_mode(mode))
                .map_err(|e| LayerError::io("changing mode of", &dest, e))?;
        }
        // Extended attributes last: chown drops security.capability.
        if let Ok(Some(pax)) = entry.pax_extensions() {
            for ext in pax.flatten() {
                if let Some(name) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.") {
                    let name = std::ffi::OsStr::from_bytes(name);
                    if kind != EntryType::Symlink {
                        let _ = xattr::set(&dest, name, ext.value_bytes());
                    }
                }
            }
        }
        if kind != EntryType::Directory {
            set_mtime(&dest, mtime);
        }
        self.stats.entries += 1;
        self.mark_written(&rel);
        Ok(())
    }

    /// Creates file `name` in the cached parent; `None` when something is
    /// in the way (the caller replaces it and creates by path).
    fn create_in_parent(&self, name: &[u8], dest: &Path) -> Result<Option<fs::File>, LayerError> {
        let parent = self.parent_cache.as_ref().expect("resolved before");
        let c = c_string(name, dest)?;
        // SAFETY: the directory fd is open and c is NUL-terminated; a
        // returned fd is ours alone.
        let fd = unsafe {
            libc::openat(
                parent.dir.as_raw_fd(),
                c.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                0o600 as libc::c_uint,
            )
        };
        if fd < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::AlreadyExists {
                return Ok(None);
            }
            return Err(LayerError::io("creating", dest, e));
        }
        // SAFETY: fd was just returned by openat and is owned by nobody else.
        Ok(Some(unsafe { fs::File::from_raw_fd(fd) }))
    }

    /// The owner to give an entry: the `--chown` override, else the
    /// archive's when running as root, else none (the creator's).
    fn owner_of(&self, header: &tar::Header) -> Option<(u32, u32)> {
        match self.options.owner {
            Some(owner) => Some(owner),
            None if self.options.same_owner => Some((
                header.uid().unwrap_or(0) as u32,
                header.gid().unwrap_or(0) as u32,
            )),
            None => None,
        }
    }

    /// Creates symlink `name` in the cached parent with its owner and time,
    /// all relative to the parent's descriptor; `false` when something is
    /// in the way (the caller replaces it). A new link inside the parent
    /// does not change what the parent resolves to, so the cache stays.
    fn symlink_in_parent<R: Read>(
        &self,
        name: &[u8],
        entry: &tar::Entry<'_, R>,
        header: &tar::Header,
        dest: &Path,
    ) -> Result<bool, LayerError> {
        let parent = self.parent_cache.as_ref().expect("resolved before");
        let fd = parent.dir.as_raw_fd();
        let c_name = c_string(name, dest)?;
        let target = entry.link_name_bytes().unwrap_or_default();
        let c_target = c_string(&target, dest)?;
        // SAFETY: fd is open and both strings are NUL-terminated.
        if unsafe { libc::symlinkat(c_target.as_ptr(), fd, c_name.as_ptr()) } != 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::AlreadyExists {
                return Ok(false);
            }
            return Err(LayerError::io("creating", dest, e));
        }
        let owner = self.owner_of(header);
        if let Some((uid, gid)) = owner {
            // SAFETY: as above; AT_SYMLINK_NOFOLLOW changes the link itself.
            let rc =
                unsafe { libc::fchownat(fd, c_name.as_ptr(), uid, gid, libc::AT_SYMLINK_NOFOLLOW) };
            if rc != 0 {
                return Err(LayerError::io(
                    "changing owner of",
                    dest,
                    io::Error::last_os_error(),
                ));
            }
        }
        let t = libc::timespec {
            tv_sec: header.mtime().unwrap_or(0) as libc::time_t,
            tv_nsec: 0,
        };
        // SAFETY: as above; times has the two entries utimensat reads.
        unsafe {
            libc::utimensat(
                fd,
                c_name.as_ptr(),
                [t, t].as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            );
        }
        Ok(true)
    }

    /// Writes a regular file's content and metadata through its open
    /// descriptor: owner, then mode (chown clears setuid), then extended
    /// attributes (chown drops security.capability), then the time.
    fn fill_file<R: Read>(
        &mut self,
        mut file: fs::File,
        mut entry: tar::Entry<'_, R>,
        header: &tar::Header,
        rel: &Path,
        dest: &Path,
    ) -> Result<(), LayerError> {
        let mode = header
            .mode()
            .map_err(|e| LayerError::io("reading", dest, e))?
            & 0o7777;
        let n = io::copy(&mut entry, &mut file).map_err(|e| LayerError::io("writing", dest, e))?;
        self.stats.bytes += n;
        let owner = self.owner_of(header);
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::fchown(&file, Some(uid), Some(gid))
                .map_err(|e| LayerError::io("changing owner of", dest, e))?;
        }
        file.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(|e| LayerError::io("changing mode of", dest, e))?;
        if let Ok(Some(pax)) = entry.pax_extensions() {
            for ext in pax.flatten() {
                if let Some(name) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.") {
                    let _ = file.set_xattr(std::ffi::OsStr::from_bytes(name), ext.value_bytes());
                }
            }
        }
        let mtime =
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(header.mtime().unwrap_or(0));
        file.set_modified(mtime)
            .map_err(|e| LayerError::io("setting the time of", dest, e))?;
        self.stats.entries += 1;
        self.mark_written(rel);
        Ok(())
    }

    /// Records `rel` and its parents as this layer's, which an opaque
    /// marker later in the same directory must keep.
    fn mark_written(&mut self, rel: &Path) {
        let mut p = Some(rel);
        while let Some(path) = p.filter(|p| !p.as_os_str().is_empty()) {
            if !self.written.insert(path.to_path_buf()) {
                break;
            }
            p = path.parent();
        }
    }
}
