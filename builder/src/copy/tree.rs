//! A directory source copied entry by entry (in parallel): files, links,
//! hard links, special files, with the request's owners, modes and
//! excludes.

use super::*;

/// Where a directory walk is: `rel` from the source root (what
/// `.dockerignore` matches), `exclude_rel` from the copy's source (what
/// `--exclude` matches).
#[derive(Clone, Copy)]
pub(super) struct TreeWalk<'a> {
    pub(super) rel: &'a str,
    pub(super) exclude_rel: &'a str,
}

/// What stays the same over a directory copy: the request, its
/// `--exclude` patterns, the `--chown` owner and the `--chmod` of every
/// entry.
#[derive(Clone, Copy)]
pub(super) struct TreeCopy<'a> {
    pub(super) req: &'a CopyRequest<'a>,
    pub(super) excludes: &'a PatternMatcher,
    pub(super) owner: Option<Owner>,
    pub(super) chmod: Option<&'a Chmod>,
    pub(super) links: &'a HardLinks,
}

/// Copies the contents of `src_dir` into `dest_dir`, links as links.
pub(super) fn copy_tree(
    src_dir: &Path,
    dest_dir: &Path,
    walk: TreeWalk<'_>,
    tree: TreeCopy<'_>,
) -> Result<u64, CopyError> {
    use rayon::prelude::*;
    let mut entries: Vec<_> = fs::read_dir(src_dir)
        .map_err(io_err("reading", src_dir))?
        .flatten()
        .map(|e| (e.file_name(), e))
        .collect();
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    // The entries of a directory are copied in parallel (rayon): a COPY of
    // many small files is syscall-bound, and one thread left the second
    // core idle (bench incremental: 20,000 files). Each is stat'ed through
    // the listing (relative to the open directory: no path walk).
    entries
        .par_iter()
        .map(|(name, e)| copy_entry(src_dir, dest_dir, name, e, walk, tree))
        .try_reduce(|| 0, |a, b| Ok(a + b))
}

/// One entry of [`copy_tree`]: how many files it copied.
pub(super) fn copy_entry(
    src_dir: &Path,
    dest_dir: &Path,
    name: &std::ffi::OsStr,
    listed: &fs::DirEntry,
    walk: TreeWalk<'_>,
    tree: TreeCopy<'_>,
) -> Result<u64, CopyError> {
    let TreeCopy {
        req,
        excludes,
        owner,
        chmod,
        links,
    } = tree;
    let child_rel = join_rel(walk.rel, &name.to_string_lossy());
    let child_exclude_rel = join_rel(walk.exclude_rel, &name.to_string_lossy());
    if !sent::sent(req.ignore, req.source_root, &child_rel)
        || excludes
            .matches_or_parent_matches(&child_exclude_rel)
            .unwrap_or(false)
    {
        return Ok(0);
    }
    let child = TreeWalk {
        rel: &child_rel,
        exclude_rel: &child_exclude_rel,
    };
    let src = src_dir.join(name);
    let dest = dest_dir.join(name);
    let meta = listed.metadata().map_err(io_err("reading", &src))?;
    let owner = Owner::of(owner, req.keep_owners, &meta);
    let ft = meta.file_type();
    if ft.is_dir() {
        match fs::symlink_metadata(&dest) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                fs::remove_file(&dest).map_err(io_err("replacing", &dest))?;
                fs::create_dir(&dest).map_err(io_err("creating", &dest))?;
            }
            Err(_) => fs::create_dir(&dest).map_err(io_err("creating", &dest))?,
        }
        let n = copy_tree(&src, &dest, child, tree)?;
        std::os::unix::fs::lchown(&dest, Some(owner.uid), Some(owner.gid))
            .map_err(io_err("changing owner of", &dest))?;
        let mode = chmod.map_or(meta.mode() & 0o7777, |c| c.apply(meta.mode(), true));
        fs::set_permissions(&dest, fs::Permissions::from_mode(mode))
            .map_err(io_err("changing mode of", &dest))?;
        set_mtime(&dest, &meta);
        return Ok(n + 1);
    }
    if ft.is_symlink() {
        let target = fs::read_link(&src).map_err(io_err("reading", &src))?;
        if fs::symlink_metadata(&dest).is_ok() {
            remove_any(&dest)?;
        }
        symlink(&target, &dest).map_err(io_err("creating", &dest))?;
        std::os::unix::fs::lchown(&dest, Some(owner.uid), Some(owner.gid))
            .map_err(io_err("changing owner of", &dest))?;
    } else if ft.is_file() {
        links.copy_or_link(&meta, &dest, || {
            let reuse = req.reuse.and_then(|r| {
                let rel = dest.strip_prefix(req.dest_root).ok()?;
                Some((r, rel, FileStamp::of(&meta)))
            });
            if let Some((r, rel, stamp)) = reuse
                && r.link(rel, stamp, &dest)
            {
                return Ok(());
            }
            let file = File::open(&src).map_err(io_err("opening", &src))?;
            let mode = meta.mode() & 0o7777;
            let data = Data::File(&file, meta.len());
            write_file_from(data, &dest, mode, owner, chmod, meta.modified().ok(), true)?;
            if let Some((r, rel, stamp)) = reuse {
                r.wrote(rel, stamp);
            }
            Ok(())
        })?;
    } else {
        special(&dest, &meta, owner)?;
    }
    Ok(1)
}

/// A device, fifo or socket, as fsutil's copyDevice makes it (and the
/// context transfer sends it): the node again, a socket as an empty file.
/// A device where the kernel refuses one (an ordinary user's namespace) is
/// left out.
pub(super) fn special(dest: &Path, meta: &fs::Metadata, owner: Owner) -> Result<(), CopyError> {
    use std::os::unix::fs::FileTypeExt;
    if fs::symlink_metadata(dest).is_ok() {
        remove_any(dest)?;
    }
    let ft = meta.file_type();
    let perm = meta.mode() & 0o7777;
    let (kind, rdev) = if ft.is_char_device() {
        (libc::S_IFCHR, meta.rdev())
    } else if ft.is_block_device() {
        (libc::S_IFBLK, meta.rdev())
    } else if ft.is_fifo() {
        (libc::S_IFIFO, 0)
    } else {
        (libc::S_IFREG, 0)
    };
    let c = std::ffi::CString::new(dest.as_os_str().as_encoded_bytes())
        .map_err(|_| CopyError::Invalid(format!("a NUL byte in {}", dest.display())))?;
    // SAFETY: mknod on a NUL-terminated path.
    if unsafe { libc::mknod(c.as_ptr(), kind | perm, rdev as libc::dev_t) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EPERM) && kind != libc::S_IFIFO && kind != libc::S_IFREG {
            return Ok(());
        }
        return Err(io_err("creating", dest)(e));
    }
    std::os::unix::fs::lchown(dest, Some(owner.uid), Some(owner.gid))
        .map_err(io_err("changing owner of", dest))?;
    fs::set_permissions(dest, fs::Permissions::from_mode(perm))
        .map_err(io_err("changing mode of", dest))?;
    cache::layer::set_times_nofollow(dest, meta.mtime(), meta.mtime_nsec());
    Ok(())
}
