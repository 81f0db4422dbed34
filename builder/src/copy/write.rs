//! Writing one file of a copy: created without following links, with its
//! mode, owner and time, its data sent by the kernel where it can be.

use super::*;

/// What a new file is filled from.
pub(super) enum Data<'a> {
    /// A file of this many bytes (its size when it was stat'ed).
    File(&'a File, u64),
    /// Bytes in memory (a heredoc).
    Bytes(&'a [u8]),
}

/// Creates `target` as a file with `data`, its owner, mode and mtime. An
/// existing file or link there is replaced; an existing directory is
/// replaced when `replace_dir` (a file copied over a directory inside a
/// directory copy), else refused.
pub(super) fn write_file_from(
    data: Data<'_>,
    target: &Path,
    mode: u32,
    owner: Owner,
    chmod: Option<&Chmod>,
    mtime: Option<std::time::SystemTime>,
    replace_dir: bool,
) -> Result<(), CopyError> {
    let mode = chmod.map_or(mode, |c| c.apply(mode, false));
    // Created with its final mode where the umask leaves it whole and no
    // set-id bit needs the chown to come first (a chown clears them): no
    // fchmod then. Otherwise created private and set after the chown.
    let exact = mode & 0o7000 == 0 && mode & process_umask() == 0;
    let create = || {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .mode(if exact { mode } else { 0o600 })
            .open(target)
    };
    // Created first and looked at only when something is in the way: a
    // copy into a new directory costs no lookups (each one is a walk of
    // every overlay layer).
    let out = match create() {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            let existing = fs::symlink_metadata(target).map_err(io_err("reading", target))?;
            if existing.is_dir() {
                if !replace_dir {
                    return Err(CopyError::Invalid(format!(
                        "cannot replace directory {} with a file",
                        target.display()
                    )));
                }
                cache::tree::remove_tree(target).map_err(io_err("replacing", target))?;
            } else {
                fs::remove_file(target).map_err(io_err("replacing", target))?;
            }
            create().map_err(io_err("creating", target))?
        }
        Err(e) => return Err(io_err("creating", target)(e)),
    };
    let source = match data {
        Data::File(src, _) => Some(src),
        Data::Bytes(_) => None,
    };
    match data {
        Data::File(src, len) => send_file(src, &out, len),
        Data::Bytes(bytes) => (&out).write_all(bytes),
    }
    .map_err(io_err("writing", target))?;
    // Owner, mode and time through the open file: no more path lookups.
    std::os::unix::fs::fchown(&out, Some(owner.uid), Some(owner.gid))
        .map_err(io_err("changing owner of", target))?;
    // A file's capabilities go with it (after the chown, which clears
    // them), as BuildKit's copy keeps its attributes: the one attribute a
    // layer holds. Where the kernel refuses them (an ordinary user's
    // namespace) the file goes without, as BuildKit ignores such errors.
    if let Some(caps) = source.and_then(cache::layer::capabilities) {
        let _ = cache::layer::set_capabilities(&out, &caps);
    }
    if !exact {
        out.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(io_err("changing mode of", target))?;
    }
    if let Some(t) = mtime {
        out.set_modified(t)
            .map_err(io_err("setting the time of", target))?;
    }
    Ok(())
}

/// Copies `len` bytes of `src` into `dst` in the kernel (sendfile; a
/// snapshot is an overlay mount, where copy_file_range always fails with
/// EXDEV first). A file that shrank since its stat copies what it has.
pub(super) fn send_file(src: &File, dst: &File, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut left = len;
    while left > 0 {
        let chunk = usize::try_from(left.min(1 << 30)).unwrap_or(1 << 30);
        // SAFETY: both descriptors are open for the call; a null offset
        // uses and advances src's file position.
        let n = unsafe {
            libc::sendfile(
                dst.as_raw_fd(),
                src.as_raw_fd(),
                std::ptr::null_mut(),
                chunk,
            )
        };
        match n {
            0 => break,
            n if n > 0 => left -= n as u64,
            _ => {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EINTR) => continue,
                    // A filesystem without sendfile: through a buffer.
                    Some(libc::EINVAL | libc::ENOSYS) if left == len => {
                        io::copy(&mut io::Read::take(src, len), &mut &*dst)?;
                        break;
                    }
                    _ => return Err(e),
                }
            }
        }
    }
    Ok(())
}

/// This process's umask, read once (`/proc/self/status`; setting it to read
/// it would race with other threads). All bits when unknown.
pub(super) fn process_umask() -> u32 {
    static UMASK: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *UMASK.get_or_init(|| {
        fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("Umask:"))
                    .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
            })
            .unwrap_or(0o777)
    })
}

/// Gives `target` (a directory here: opened read-only, which works for
/// one) the modification time of `meta`.
pub(super) fn set_mtime(target: &Path, meta: &fs::Metadata) {
    if let Ok(t) = meta.modified() {
        let _ = File::open(target).and_then(|f| f.set_modified(t));
    }
}

/// `mkdir -p` inside the root; new directories get `owner` and `mode`.
pub(super) fn make_dirs(root: &Path, dir: &str, owner: Owner, mode: u32) -> Result<(), CopyError> {
    let mut rel = PathBuf::new();
    for c in Path::new(dir.trim_start_matches('/')).components() {
        rel.push(c);
        let path = resolve_in_root(root, &rel, true);
        match fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(CopyError::Invalid(format!(
                    "cannot copy to {}: not a directory",
                    rel.display()
                )));
            }
            Err(_) => {
                fs::create_dir(&path).map_err(io_err("creating", &path))?;
                let _ = std::os::unix::fs::lchown(&path, Some(owner.uid), Some(owner.gid));
                fs::set_permissions(&path, fs::Permissions::from_mode(mode))
                    .map_err(io_err("changing mode of", &path))?;
            }
        }
    }
    Ok(())
}
