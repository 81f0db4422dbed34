//! COPY and ADD from local sources into a root filesystem, with BuildKit's
//! rules: Go globs, a directory source copies its contents, a trailing `/`
//! makes the destination a directory, several sources need one, missing
//! parents are created, `--chown` by name or id (resolved in the
//! destination's /etc/passwd), `--chmod` octal or symbolic, `--exclude`,
//! `.dockerignore` for the build context, heredoc sources, and ADD's local
//! archive extraction.
//!
//! Nothing is read outside the source root or written outside the
//! destination root: both sides are resolved inside their roots
//! (`cache::layer::resolve_in_root`), files are created without following
//! symlinks, and symlinks found inside a copied tree are copied as links.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use cache::PathError;
use cache::index::FileStamp;
use cache::layer::resolve_in_root;
use frontend::glob::glob_match;
use frontend::ignore::PatternMatcher;
use frontend::instructions::chmod::Chmod;

/// What to copy where.
#[derive(Debug, Clone)]
pub struct CopyRequest<'a> {
    /// Root of the sources (build context or another stage's filesystem).
    pub source_root: &'a Path,
    /// `.dockerignore` of the build context (none for stages).
    pub ignore: Option<&'a PatternMatcher>,
    /// Source paths (globs allowed), relative to `source_root`.
    pub sources: &'a [String],
    /// Heredoc sources: (file name, content).
    pub contents: &'a [(String, String)],
    /// Absolute destination inside `dest_root`; a trailing `/` means a directory.
    pub dest: &'a str,
    /// Root filesystem written to.
    pub dest_root: &'a Path,
    /// `--chown` (unresolved).
    pub chown: Option<&'a str>,
    /// `--chmod`.
    pub chmod: Option<&'a str>,
    /// `--exclude` patterns.
    pub excludes: &'a [String],
    /// ADD: extract local archives.
    pub add: bool,
    /// ADD `--unpack` (None: extract archives by default).
    pub unpack: Option<bool>,
    /// `COPY --parents`: keep each source's parent directories (from the
    /// context root, or from a `/./` pivot in the source) under the
    /// destination.
    pub parents: bool,
    /// An earlier result of the same copy whose unchanged files are
    /// hard-linked instead of copied (see [`Reuse`]).
    pub reuse: Option<&'a Reuse>,
}

impl<'a> CopyRequest<'a> {
    /// A plain copy of `sources` (from `source_root`) to `dest` in
    /// `dest_root`: no ignore file, owner, mode, exclusion or archive.
    pub fn plain(
        source_root: &'a Path,
        sources: &'a [String],
        dest: &'a str,
        dest_root: &'a Path,
    ) -> CopyRequest<'a> {
        CopyRequest {
            source_root,
            ignore: None,
            sources,
            contents: &[],
            dest,
            dest_root,
            chown: None,
            chmod: None,
            excludes: &[],
            add: false,
            unpack: None,
            parents: false,
            reuse: None,
        }
    }
}

/// Why a copy failed; names the path.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    /// A source that does not exist (or is excluded).
    #[error("{0:?}: not found")]
    NotFound(String),
    /// A rule of COPY was broken.
    #[error("{0}")]
    Invalid(String),
    /// A filesystem operation failed.
    #[error(transparent)]
    Io(#[from] PathError),
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> CopyError + use<> {
    let at = PathError::at(action, path);
    move |source| at(source).into()
}

fn has_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// Relative paths (from `root`) matching `pattern` segment by segment.
fn expand_glob(root: &Path, pattern: &str) -> Result<Vec<String>, CopyError> {
    let segments: Vec<&str> = pattern.split('/').filter(|s| !s.is_empty()).collect();
    let mut found = vec![String::new()];
    for seg in segments {
        let mut next = Vec::new();
        for base in &found {
            let dir = resolve_in_root(root, Path::new(base), true);
            if !has_glob(seg) {
                let candidate = if base.is_empty() {
                    seg.to_string()
                } else {
                    format!("{base}/{seg}")
                };
                if fs::symlink_metadata(resolve_in_root(root, Path::new(&candidate), false)).is_ok()
                {
                    next.push(candidate);
                }
                continue;
            }
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            let mut names: Vec<String> = entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            for name in names {
                let matched = glob_match(seg, &name)
                    .map_err(|_| CopyError::Invalid(format!("invalid pattern {pattern:?}")))?;
                if matched {
                    next.push(if base.is_empty() {
                        name
                    } else {
                        format!("{base}/{name}")
                    });
                }
            }
        }
        found = next;
    }
    Ok(found.into_iter().filter(|f| !f.is_empty()).collect())
}

/// The owner a copied entry gets.
#[derive(Debug, Clone, Copy)]
struct Owner {
    uid: u32,
    gid: u32,
}

/// Copies what `req` asks for. Returns the number of entries written.
pub fn copy(req: &CopyRequest<'_>) -> Result<u64, CopyError> {
    let links = HardLinks::default();
    if req.parents {
        return copy_parents(req, &links);
    }
    copy_sources(req, "", &links)
}

/// Source files with more than one link, by (device, inode), and where
/// their first name was copied to: the other names copied become hard
/// links to it, as BuildKit's copier keeps them.
#[derive(Default)]
struct HardLinks(std::sync::Mutex<std::collections::HashMap<(u64, u64), PathBuf>>);

impl HardLinks {
    /// Writes `dest` with `write`, unless `meta` (of the source) is a file
    /// already copied under another name: then `dest` is a link to it.
    /// Multiply-linked files are copied one at a time (the map is held).
    fn copy_or_link(
        &self,
        meta: &fs::Metadata,
        dest: &Path,
        write: impl FnOnce() -> Result<(), CopyError>,
    ) -> Result<(), CopyError> {
        if meta.nlink() < 2 {
            return write();
        }
        let mut first = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let key = (meta.dev(), meta.ino());
        if let Some(earlier) = first.get(&key) {
            if fs::symlink_metadata(dest).is_ok() {
                remove_any(dest)?;
            }
            return fs::hard_link(earlier, dest).map_err(io_err("linking", dest));
        }
        write()?;
        first.insert(key, dest.to_path_buf());
        Ok(())
    }
}

/// Copies `req`'s sources. `--exclude` patterns match paths below each
/// source relative to it (as BuildKit's copier walks a source: `COPY
/// --exclude=*.log logs/ /x/` skips `logs/a.log`), prefixed with
/// `exclude_base`; a source itself is never excluded.
fn copy_sources(
    req: &CopyRequest<'_>,
    exclude_base: &str,
    links: &HardLinks,
) -> Result<u64, CopyError> {
    let owner = match req.chown {
        None => Owner { uid: 0, gid: 0 },
        Some(spec) => {
            let u =
                crate::sandbox::user::resolve(req.dest_root, spec).map_err(CopyError::Invalid)?;
            Owner {
                uid: u.uid,
                gid: u.gid,
            }
        }
    };
    let chmod = req
        .chmod
        .map(Chmod::parse)
        .transpose()
        .map_err(CopyError::Invalid)?;
    let excludes =
        PatternMatcher::new(req.excludes).map_err(|e| CopyError::Invalid(e.to_string()))?;

    // Sources, expanded.
    let mut selected: Vec<String> = Vec::new();
    let mut wildcard = false;
    for src in req.sources {
        let clean = frontend::glob::clean(&format!("/{src}"));
        let rel = clean.trim_start_matches('/').to_string();
        if has_glob(&rel) {
            wildcard = true;
            selected.extend(expand_glob(req.source_root, &rel)?);
        } else {
            let path = resolve_in_root(req.source_root, Path::new(&rel), true);
            let ignored = req.ignore.is_some_and(|m| {
                !rel.is_empty() && m.matches_or_parent_matches(&rel).unwrap_or(false)
            });
            if ignored || fs::symlink_metadata(&path).is_err() {
                return Err(CopyError::NotFound(format!("/{rel}")));
            }
            selected.push(rel);
        }
    }
    if let Some(m) = req.ignore {
        selected.retain(|p| !m.matches_or_parent_matches(p).unwrap_or(false));
    }
    let total = selected.len() + req.contents.len();
    if total == 0 && wildcard {
        // A wildcard may match nothing (BuildKit allows empty wildcards);
        // the destination directory is made all the same.
        let dir = if req.dest.ends_with('/') {
            req.dest.to_string()
        } else {
            Path::new(req.dest)
                .parent()
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        make_dirs(req.dest_root, &dir, Owner { uid: 0, gid: 0 }, 0o755)?;
        return Ok(0);
    }
    if total == 0 {
        return Err(CopyError::Invalid("no source files were specified".into()));
    }
    // BuildKit counts the sources as written, not their matches: one
    // wildcard may land on a file name (`COPY f*.go foo2.go`).
    let dest_is_dir_word = req.dest.ends_with('/');
    if req.sources.len() + req.contents.len() > 1 && !dest_is_dir_word {
        // BuildKit accepts an existing directory too.
        let existing = resolve_in_root(
            req.dest_root,
            Path::new(req.dest.trim_start_matches('/')),
            true,
        );
        if !existing.is_dir() {
            return Err(CopyError::Invalid(
                "When using COPY with more than one source file, the destination must be a directory and end with a /".into(),
            ));
        }
    }

    let mut n = 0;
    for (name, data) in req.contents {
        let target = dest_path(req, name)?;
        write_file_from(
            Data::Bytes(data.as_bytes()),
            &target,
            0o644,
            owner,
            chmod.as_ref(),
            None,
            false,
        )?;
        n += 1;
    }
    for rel in &selected {
        let src = resolve_in_root(req.source_root, Path::new(rel), true);
        let meta = fs::metadata(&src).map_err(io_err("reading", &src))?;
        if meta.is_dir() {
            // A directory copies its contents.
            let dest_dir = resolve_in_root(
                req.dest_root,
                Path::new(req.dest.trim_start_matches('/')),
                true,
            );
            make_dirs(req.dest_root, req.dest, owner, new_dir_mode(req))?;
            let walk = TreeWalk {
                rel,
                exclude_rel: exclude_base,
            };
            let tree = TreeCopy {
                req,
                excludes: &excludes,
                owner,
                chmod: chmod.as_ref(),
                links,
            };
            n += copy_tree(&src, &dest_dir, walk, tree)?;
            continue;
        }
        if req.add && req.unpack != Some(false) && is_archive(&src)? {
            let dest_dir = resolve_in_root(
                req.dest_root,
                Path::new(req.dest.trim_start_matches('/')),
                true,
            );
            make_dirs(req.dest_root, req.dest, owner, new_dir_mode(req))?;
            // --chown owns every extracted entry; else the archive's owners.
            let options = cache::layer::UnpackOptions {
                owner: req.chown.map(|_| (owner.uid, owner.gid)),
                ..cache::layer::UnpackOptions::default()
            };
            let stats = cache::layer::unpack(archive_reader(&src)?, &dest_dir, &options)
                .map_err(|e| CopyError::Invalid(format!("extracting {rel}: {e}")))?;
            n += stats.entries;
            continue;
        }
        let base = Path::new(rel)
            .file_name()
            .map(|b| b.to_string_lossy().into_owned())
            .unwrap_or_default();
        let target = dest_path(req, &base)?;
        links.copy_or_link(&meta, &target, || {
            let file = File::open(&src).map_err(io_err("opening", &src))?;
            write_file_from(
                Data::File(&file, meta.len()),
                &target,
                meta.mode() & 0o7777,
                owner,
                chmod.as_ref(),
                meta.modified().ok(),
                false,
            )
        })?;
        n += 1;
    }
    Ok(n)
}

/// `COPY --parents`: each match of each source is copied on its own, to
/// the destination directory joined with the match's path (a directory) or
/// its parent (a file). The kept path starts at the context root, or after
/// a `/./` in the source (`src/./pkg/*.go` keeps `pkg/...`).
fn copy_parents(req: &CopyRequest<'_>, links: &HardLinks) -> Result<u64, CopyError> {
    let excludes =
        PatternMatcher::new(req.excludes).map_err(|e| CopyError::Invalid(e.to_string()))?;
    let ignored = |rel: &str| {
        req.ignore
            .is_some_and(|m| m.matches_or_parent_matches(rel).unwrap_or(false))
    };
    // BuildKit walks from the pivot here: `--exclude` matches paths
    // relative to it, the kept paths.
    let excluded = |kept: &str| excludes.matches_or_parent_matches(kept).unwrap_or(false);
    let dest = req.dest.trim_end_matches('/');
    let mut n = 0;
    if !req.contents.is_empty() {
        n += copy(&CopyRequest {
            sources: &[],
            parents: false,
            dest: &format!("{dest}/"),
            ..*req
        })?;
    }
    for src in req.sources {
        let (pivot, whole) = match src.split_once("/./") {
            Some((before, after)) => {
                let before = frontend::glob::clean(&format!("/{before}"));
                let before = before.trim_start_matches('/').to_string();
                (before.clone(), format!("{before}/{after}"))
            }
            None => (String::new(), src.clone()),
        };
        let clean = frontend::glob::clean(&format!("/{whole}"));
        let rel = clean.trim_start_matches('/').to_string();
        let matches = if has_glob(&rel) {
            expand_glob(req.source_root, &rel)?
        } else {
            vec![rel]
        };
        for m in matches {
            let kept = if pivot.is_empty() {
                m.as_str()
            } else {
                m.strip_prefix(&pivot)
                    .map(|k| k.trim_start_matches('/'))
                    .unwrap_or(&m)
            };
            if (ignored(&m) && has_glob(&clean)) || excluded(kept) {
                continue;
            }
            let path = resolve_in_root(req.source_root, Path::new(&m), true);
            let under = if path.is_dir() {
                kept.to_string()
            } else {
                Path::new(kept)
                    .parent()
                    .map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or_default()
            };
            let target = if under.is_empty() {
                format!("{dest}/")
            } else {
                format!("{dest}/{under}/")
            };
            n += copy_sources(
                &CopyRequest {
                    sources: std::slice::from_ref(&m),
                    contents: &[],
                    dest: &target,
                    parents: false,
                    ..*req
                },
                kept,
                links,
            )?;
        }
    }
    Ok(n)
}

/// Where a single file named `base` goes.
fn dest_path(req: &CopyRequest<'_>, base: &str) -> Result<PathBuf, CopyError> {
    let dest_rel = req.dest.trim_start_matches('/');
    let existing = resolve_in_root(req.dest_root, Path::new(dest_rel), true);
    let into_dir = req.dest.ends_with('/') || existing.is_dir() || dest_rel.is_empty();
    let target_rel = if into_dir {
        format!("{}/{base}", dest_rel.trim_end_matches('/'))
    } else {
        dest_rel.to_string()
    };
    let target_rel = target_rel.trim_start_matches('/').to_string();
    let parent = Path::new(&target_rel)
        .parent()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    make_dirs(
        req.dest_root,
        &format!("/{parent}"),
        Owner { uid: 0, gid: 0 },
        new_dir_mode(req),
    )?;
    let parent_path = resolve_in_root(req.dest_root, Path::new(&parent), true);
    let name = Path::new(&target_rel)
        .file_name()
        .ok_or_else(|| CopyError::Invalid(format!("invalid destination {:?}", req.dest)))?;
    Ok(parent_path.join(name))
}

/// The mode of directories a copy creates: an octal `--chmod`'s (as
/// BuildKit: `COPY --chmod=777 f /parent/f` makes `/parent` 0777), else
/// 0755.
fn new_dir_mode(req: &CopyRequest<'_>) -> u32 {
    match req.chmod.map(Chmod::parse) {
        Some(Ok(Chmod::Octal(mode))) => mode,
        _ => 0o755,
    }
}

/// `mkdir -p` inside the root; new directories get `owner` and `mode`.
fn make_dirs(root: &Path, dir: &str, owner: Owner, mode: u32) -> Result<(), CopyError> {
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

/// What a new file is filled from.
enum Data<'a> {
    /// A file of this many bytes (its size when it was stat'ed).
    File(&'a File, u64),
    /// Bytes in memory (a heredoc).
    Bytes(&'a [u8]),
}

/// Creates `target` as a file with `data`, its owner, mode and mtime. An
/// existing file or link there is replaced; an existing directory is
/// replaced when `replace_dir` (a file copied over a directory inside a
/// directory copy), else refused.
fn write_file_from(
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
                fs::remove_dir_all(target).map_err(io_err("replacing", target))?;
            } else {
                fs::remove_file(target).map_err(io_err("replacing", target))?;
            }
            create().map_err(io_err("creating", target))?
        }
        Err(e) => return Err(io_err("creating", target)(e)),
    };
    match data {
        Data::File(src, len) => send_file(src, &out, len),
        Data::Bytes(bytes) => (&out).write_all(bytes),
    }
    .map_err(io_err("writing", target))?;
    // Owner, mode and time through the open file: no more path lookups.
    std::os::unix::fs::fchown(&out, Some(owner.uid), Some(owner.gid))
        .map_err(io_err("changing owner of", target))?;
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
fn send_file(src: &File, dst: &File, len: u64) -> io::Result<()> {
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
fn process_umask() -> u32 {
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
fn set_mtime(target: &Path, meta: &fs::Metadata) {
    if let Ok(t) = meta.modified() {
        let _ = File::open(target).and_then(|f| f.set_modified(t));
    }
}

/// Where a directory walk is: `rel` from the source root (what
/// `.dockerignore` matches), `exclude_rel` from the copy's source (what
/// `--exclude` matches).
#[derive(Clone, Copy)]
struct TreeWalk<'a> {
    rel: &'a str,
    exclude_rel: &'a str,
}

/// `parent/name`, or `name` under the root.
fn join_rel(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_string()
    } else {
        format!("{parent}/{name}")
    }
}

/// What stays the same over a directory copy: the request, its
/// `--exclude` patterns, the owner and the `--chmod` of every entry.
#[derive(Clone, Copy)]
struct TreeCopy<'a> {
    req: &'a CopyRequest<'a>,
    excludes: &'a PatternMatcher,
    owner: Owner,
    chmod: Option<&'a Chmod>,
    links: &'a HardLinks,
}

/// Copies the contents of `src_dir` into `dest_dir`, links as links.
fn copy_tree(
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
fn copy_entry(
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
    if req
        .ignore
        .is_some_and(|m| m.matches_or_parent_matches(&child_rel).unwrap_or(false))
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
        // Devices, fifos and sockets in a context are not copied.
        return Ok(0);
    }
    Ok(1)
}

fn remove_any(path: &Path) -> Result<(), CopyError> {
    let r = if fs::symlink_metadata(path).is_ok_and(|m| m.is_dir()) {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    r.map_err(io_err("replacing", path))
}

/// A tar archive (plain, gzip, zstd, bzip2 or xz), told by content as
/// BuildKit does: what the (decompressed) start holds must be a tar header.
fn is_archive(path: &Path) -> Result<bool, CopyError> {
    let mut inner = [0u8; 512];
    let inner_len = match cache::layer::decompress(archive_reader(path)?) {
        Ok(mut d) => read_up_to(&mut d, &mut inner),
        Err(_) => 0,
    };
    // ustar magic at offset 257.
    Ok(inner_len >= 263 && &inner[257..262] == b"ustar")
}

/// The file, or for xz its decompressed content (the other compressions
/// are undone by `cache::layer::decompress`).
fn archive_reader(path: &Path) -> Result<Box<dyn Read + Send>, CopyError> {
    let mut file = File::open(path).map_err(io_err("opening", path))?;
    let mut magic = [0u8; 6];
    let n = read_up_to(&mut file, &mut magic);
    io::Seek::rewind(&mut file).map_err(io_err("reading", path))?;
    if n < 6 || magic != cache::layer::XZ_MAGIC {
        return Ok(Box::new(file));
    }
    Ok(cache::layer::xz_decoder(file))
}

fn read_up_to(r: &mut dyn Read, buf: &mut [u8]) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
    }
    n
}

/// A checksum of exactly what [`copy`] would read from `root` for these
/// sources: each selected entry's path, type, mode, owner, size, link
/// target and content (not its mtime). It is the COPY/ADD cache key's view
/// of the context; any change to a selected file changes it, a change to
/// an ignored or unselected file does not.
pub fn content_digest(
    root: &Path,
    ignore: Option<&PatternMatcher>,
    sources: &[String],
    excludes: &[String],
    stat: Option<&StatCache<'_>>,
) -> Result<String, CopyError> {
    use sha2::{Digest as _, Sha256};
    let mut fresh = Vec::new();
    let excludes = PatternMatcher::new(excludes).map_err(|e| CopyError::Invalid(e.to_string()))?;
    let mut h = Sha256::new();
    // As in the copy: .dockerignore by path from the root, --exclude by
    // path below each source.
    let skip = |at: TreeWalk<'_>| {
        ignore.is_some_and(|m| m.matches_or_parent_matches(at.rel).unwrap_or(false))
            || (!at.exclude_rel.is_empty()
                && excludes
                    .matches_or_parent_matches(at.exclude_rel)
                    .unwrap_or(false))
    };
    struct Walk<'a> {
        root: &'a Path,
        skip: &'a (dyn Fn(TreeWalk<'_>) -> bool + Sync),
        stat: Option<&'a StatCache<'a>>,
        /// The stat cache's records below `root`.
        known: Option<std::sync::Arc<Known>>,
    }
    fn entry(
        h: &mut Sha256,
        w: &Walk<'_>,
        fresh: &mut Vec<(Vec<u8>, FileStamp, String)>,
        at: TreeWalk<'_>,
        follow: bool,
        listed: Option<(PathBuf, fs::Metadata)>,
    ) -> Result<(), CopyError> {
        let rel = at.rel;
        let root = w.root;
        // Below a source the parent is resolved already and the directory
        // listing gives each entry's stat relative to it (fstatat): no path
        // walk per entry.
        let (path, meta) = match listed {
            Some(l) => l,
            None => {
                let path = resolve_in_root(root, Path::new(rel), follow);
                let Ok(meta) = (if follow {
                    fs::metadata(&path)
                } else {
                    fs::symlink_metadata(&path)
                }) else {
                    return Ok(());
                };
                (path, meta)
            }
        };
        // Formatted straight into the hash (no string per entry).
        io::Write::write_fmt(
            h,
            format_args!(
                "{rel}\0{:o}\0{}\0{}\0{}\0",
                meta.mode(),
                meta.uid(),
                meta.gid(),
                if meta.is_file() { meta.len() } else { 0 }
            ),
        )
        .expect("hashing cannot fail");
        if meta.file_type().is_symlink() {
            h.update(
                fs::read_link(&path)
                    .map_err(io_err("reading", &path))?
                    .as_os_str()
                    .as_encoded_bytes(),
            );
        } else if meta.is_file() {
            let stamp = FileStamp::of(&meta);
            let cached = w
                .known
                .as_ref()
                .and_then(|k| k.get(path.as_os_str().as_encoded_bytes()))
                .filter(|(s, _)| *s == stamp);
            match cached {
                Some((_, d)) => h.update(d.as_bytes()),
                None => {
                    let mut f = File::open(&path).map_err(io_err("opening", &path))?;
                    let mut fh = Sha256::new();
                    io::copy(&mut f, &mut fh).map_err(io_err("reading", &path))?;
                    let d: String = fh.finalize().iter().map(|b| format!("{b:02x}")).collect();
                    h.update(d.as_bytes());
                    if w.stat.is_some_and(|c| c.settled(stamp)) {
                        fresh.push((path.as_os_str().as_encoded_bytes().to_vec(), stamp, d));
                    }
                }
            }
        } else if meta.is_dir() {
            use rayon::prelude::*;
            let mut entries: Vec<(String, fs::DirEntry)> = fs::read_dir(&path)
                .map_err(io_err("reading", &path))?
                .flatten()
                .map(|e| (e.file_name().to_string_lossy().into_owned(), e))
                .collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            // The entries are stat'ed and hashed in parallel (a context
            // walk is syscall-bound), each into a digest of its own; the
            // directory's hash takes them in name order.
            let parts = entries
                .par_iter()
                .map(|(name, e)| -> Result<_, CopyError> {
                    let child_rel = join_rel(rel, name);
                    let child_exclude_rel = join_rel(at.exclude_rel, name);
                    let child = TreeWalk {
                        rel: &child_rel,
                        exclude_rel: &child_exclude_rel,
                    };
                    if (w.skip)(child) {
                        return Ok(None);
                    }
                    // Gone since the listing: nothing to hash.
                    let Ok(child_meta) = e.metadata() else {
                        return Ok(None);
                    };
                    let mut sub = Sha256::new();
                    let mut sub_fresh = Vec::new();
                    entry(
                        &mut sub,
                        w,
                        &mut sub_fresh,
                        child,
                        false,
                        Some((e.path(), child_meta)),
                    )?;
                    Ok(Some((sub.finalize(), sub_fresh)))
                })
                .collect::<Result<Vec<_>, _>>()?;
            for (digest, sub_fresh) in parts.into_iter().flatten() {
                h.update(digest);
                fresh.extend(sub_fresh);
            }
        }
        Ok(())
    }
    let walk = Walk {
        root,
        skip: &skip,
        stat,
        known: stat.map(|c| c.under(root)),
    };
    for src in sources {
        let clean = frontend::glob::clean(&format!("/{src}"));
        let rel = clean.trim_start_matches('/').to_string();
        let selected = if has_glob(&rel) {
            expand_glob(root, &rel)?
        } else {
            vec![rel]
        };
        for s in selected {
            let at = TreeWalk {
                rel: &s,
                exclude_rel: "",
            };
            if !skip(at) {
                entry(&mut h, &walk, &mut fresh, at, true, None)?;
            }
        }
    }
    if let Some(c) = stat {
        c.store(&fresh);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Hard links in place of copies for a copy that ran before with the same
/// sources, destination, options and parent (its *identity*; the content
/// is not part of it): each file whose source has the inode, size, mtime
/// and ctime it had when the earlier result copied it (ctime moves on any
/// write, moby/buildkit#2592) is linked from the earlier result's committed
/// changes into this snapshot's overlay upper directory. Its owner, mode
/// and mtime are the same, as they follow from the same source stamp and
/// options. A link costs no inode and no data copy: a 20,000-file context
/// with one change is linked, not rewritten.
///
/// A file is recorded only when its source had settled (changed more than
/// two seconds before the copy), as the stat cache does: a later write in
/// the same timestamp tick could otherwise keep its stamp.
#[derive(Debug)]
pub struct Reuse {
    /// The earlier result: destination path (from the rootfs) -> the
    /// stamp of the source it was copied from.
    earlier: std::collections::HashMap<Vec<u8>, FileStamp>,
    /// The earlier result's committed changes.
    earlier_fs: PathBuf,
    /// This copy's overlay upper directory.
    upper: PathBuf,
    settled_before_ns: i64,
    /// What this copy wrote or linked: destination path -> source stamp.
    wrote: std::sync::Mutex<Vec<(Vec<u8>, FileStamp)>>,
    /// Directories of the earlier result checked to hold no symlink on
    /// the way (one of its own copies may have put a link where a
    /// directory was): true when plain.
    plain_dirs: std::sync::Mutex<std::collections::HashMap<PathBuf, bool>>,
}

/// How long before it is recorded a file must have last changed (stat
/// cache, copy manifests): a write in the same timestamp tick as the
/// recorded stamp could otherwise go unseen.
const SETTLE_NS: i64 = 2_000_000_000;

/// Unix time now, in nanoseconds.
fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// The manifest format's first byte.
const MANIFEST_V1: u8 = 1;

impl Reuse {
    /// Reuse into `upper` from the `earlier` result (its committed changes
    /// and the manifest [`Reuse::manifest`] made of it), or none.
    pub fn new(upper: PathBuf, earlier: Option<(PathBuf, Vec<u8>)>) -> Reuse {
        let (earlier_fs, manifest) = earlier.unwrap_or_default();
        Reuse {
            earlier: decode_manifest(&manifest),
            earlier_fs,
            upper,
            settled_before_ns: now_ns() - SETTLE_NS,
            wrote: std::sync::Mutex::new(Vec::new()),
            plain_dirs: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// The files this copy wrote, to find them again the next time.
    pub fn manifest(&self) -> Vec<u8> {
        let wrote = self.wrote.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::with_capacity(1 + wrote.len() * 64);
        out.push(MANIFEST_V1);
        for (path, s) in wrote.iter() {
            out.extend_from_slice(&(path.len() as u32).to_le_bytes());
            out.extend_from_slice(path);
            out.extend_from_slice(&s.ino.to_le_bytes());
            out.extend_from_slice(&s.size.to_le_bytes());
            out.extend_from_slice(&s.mtime_ns.to_le_bytes());
            out.extend_from_slice(&s.ctime_ns.to_le_bytes());
        }
        out
    }

    /// Records that `rel` was written from a source with `stamp`.
    fn wrote(&self, rel: &Path, stamp: FileStamp) {
        if stamp.changed_before(self.settled_before_ns) {
            let path = rel.as_os_str().as_encoded_bytes().to_vec();
            self.wrote
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((path, stamp));
        }
    }

    /// Links `rel` from the earlier result when its source is unchanged
    /// (`merged` is the same path through the mount); false: copy it.
    fn link(&self, rel: &Path, stamp: FileStamp, merged: &Path) -> bool {
        if self.earlier.get(rel.as_os_str().as_encoded_bytes()) != Some(&stamp) {
            return false;
        }
        if !self.plain_dir(rel.parent().unwrap_or(Path::new(""))) {
            return false;
        }
        let from = self.earlier_fs.join(rel);
        // What the earlier result holds there must still be that file.
        match fs::symlink_metadata(&from) {
            Ok(m) if m.is_file() && m.len() == stamp.size => {}
            _ => return false,
        }
        let to = self.upper.join(rel);
        let linked = match fs::hard_link(&from, &to) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // The directory is only in a lower layer so far: a file made
                // and removed through the mount copies it up, as writing
                // the file there would have.
                merged.parent().is_some_and(copy_up) && fs::hard_link(&from, &to).is_ok()
            }
            // Something is there already, too many links, another
            // filesystem: copied instead.
            other => other.is_ok(),
        };
        if linked {
            self.wrote(rel, stamp);
        }
        linked
    }

    /// Whether `dir` (relative) is a directory of the earlier result with
    /// no symlink on the way to it.
    fn plain_dir(&self, dir: &Path) -> bool {
        let mut plain = self.plain_dirs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(&known) = plain.get(dir) {
            return known;
        }
        let parent_plain = match dir.parent() {
            Some(p) if !dir.as_os_str().is_empty() => {
                drop(plain);
                let p = self.plain_dir(p);
                plain = self.plain_dirs.lock().unwrap_or_else(|e| e.into_inner());
                p
            }
            _ => true,
        };
        let this = parent_plain
            && fs::symlink_metadata(self.earlier_fs.join(dir)).is_ok_and(|m| m.is_dir());
        plain.insert(dir.to_path_buf(), this);
        this
    }
}

/// Copies directory `dir` (seen through an overlay mount) up into the upper
/// layer by creating and removing a file in it.
fn copy_up(dir: &Path) -> bool {
    static PROBES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = PROBES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let probe = dir.join(format!(".rbuild-copy-up-{}-{n}", std::process::id()));
    let made = OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&probe)
        .is_ok();
    made && fs::remove_file(&probe).is_ok()
}

/// A manifest made by [`Reuse::manifest`]; empty when it is not one.
fn decode_manifest(bytes: &[u8]) -> std::collections::HashMap<Vec<u8>, FileStamp> {
    let mut out = std::collections::HashMap::new();
    let Some((&MANIFEST_V1, mut rest)) = bytes.split_first() else {
        return out;
    };
    let u64_at = |b: &[u8], i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
    while rest.len() >= 4 {
        let len = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes")) as usize;
        let Some(entry) = rest.get(4..4 + len + 32) else {
            break;
        };
        let stamp = FileStamp {
            ino: u64_at(entry, len),
            size: u64_at(entry, len + 8),
            mtime_ns: u64_at(entry, len + 16) as i64,
            ctime_ns: u64_at(entry, len + 24) as i64,
        };
        out.insert(entry[..len].to_vec(), stamp);
        rest = &rest[4 + len + 32..];
    }
    out
}

/// What the stat cache knows of the files below one directory: for each
/// path, in order, its stamp and hex digest. The paths share one buffer
/// and the records are fixed-size: reading thousands makes a few
/// allocations, not two a file (on a step's fresh thread each few small
/// ones grew its heap by a page, an mprotect that stalled the other
/// threads' page faults and thread starts: ~2 ms of a no-op rebuild).
#[derive(Debug, Default)]
struct Known {
    paths: Vec<u8>,
    /// By path.
    records: Vec<KnownFile>,
}

/// One file of [`Known`].
#[derive(Debug)]
struct KnownFile {
    /// Where its path is in [`Known::paths`].
    path: std::ops::Range<usize>,
    stamp: FileStamp,
    /// The content digest, hex.
    digest: [u8; 64],
}

impl Known {
    fn push(&mut self, path: &[u8], stamp: FileStamp, digest: &str) {
        // A digest that is not 64 hex digits is not used: the file is
        // hashed again.
        let Ok(digest) = <[u8; 64]>::try_from(digest.as_bytes()) else {
            return;
        };
        let start = self.paths.len();
        self.paths.extend_from_slice(path);
        self.records.push(KnownFile {
            path: start..self.paths.len(),
            stamp,
            digest,
        });
    }

    fn path_of(&self, file: &KnownFile) -> &[u8] {
        &self.paths[file.path.clone()]
    }

    /// The stamp and digest recorded for `path`.
    fn get(&self, path: &[u8]) -> Option<(FileStamp, &str)> {
        let i = self
            .records
            .binary_search_by(|f| self.path_of(f).cmp(path))
            .ok()?;
        let file = &self.records[i];
        Some((file.stamp, std::str::from_utf8(&file.digest).ok()?))
    }
}

/// The stat cache as COPY/ADD hashing uses it: a file's content digest is
/// reused while its inode, size, mtime and ctime are unchanged (ctime moves
/// on every write, even when mtime is put back: moby/buildkit#2592). A file
/// changed less than two seconds before it was hashed is not recorded, as
/// a write in the same timestamp tick could go unseen.
pub struct StatCache<'a> {
    index: &'a cache::index::CacheIndex,
    /// Digests are kept per context and absolute path.
    context: &'a str,
    /// How long ago a file must have changed for its digest to be kept.
    settle_ns: i64,
    /// The records below each context directory walked, read in one query
    /// on first use (one query per file cost 30 µs: 0.6 s on a 20,000-file
    /// context; reading every directory's records cost more with each
    /// project built).
    known: std::sync::Mutex<std::collections::HashMap<PathBuf, std::sync::Arc<Known>>>,
}

/// The stat cache records of `context` below `root`; none when the index
/// fails (that only costs a rehash).
fn read_known(index: &cache::index::CacheIndex, context: &str, root: &Path) -> Known {
    let mut known = Known::default();
    let read = index.stat_under_each(context, root.as_os_str().as_encoded_bytes(), |p, s, d| {
        known.push(p, s, d)
    });
    // In path order from the query; out of order (never expected), they
    // are dropped: a rehash is safe, a binary search in disorder is not.
    let sorted = known
        .records
        .windows(2)
        .all(|w| known.path_of(&w[0]) < known.path_of(&w[1]));
    if read.is_err() || !sorted {
        return Known::default();
    }
    known
}

impl<'a> StatCache<'a> {
    /// The stat cache of `index` for files under the context named `context`.
    pub fn new(index: &'a cache::index::CacheIndex, context: &'a str) -> StatCache<'a> {
        StatCache {
            index,
            context,
            settle_ns: SETTLE_NS,
            known: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// Reads the records below `root` now, on a database connection of
    /// its own (the build's other steps keep theirs meanwhile): the step
    /// that loads the build context does this, in parallel with the steps
    /// before the first COPY, which then finds them read.
    pub fn preload(&self, root: &Path) {
        let Ok(reader) = self.index.reader() else {
            return;
        };
        let records = std::sync::Arc::new(read_known(&reader, self.context, root));
        self.known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(root.to_path_buf())
            .or_insert(records);
    }

    /// The records of the files below `root` (read once per build).
    fn under(&self, root: &Path) -> std::sync::Arc<Known> {
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(records) = known.get(root) {
            return std::sync::Arc::clone(records);
        }
        let records = std::sync::Arc::new(read_known(self.index, self.context, root));
        known.insert(root.to_path_buf(), std::sync::Arc::clone(&records));
        records
    }

    fn settled(&self, stamp: FileStamp) -> bool {
        stamp.changed_before(now_ns() - self.settle_ns)
    }

    fn store(&self, entries: &[(Vec<u8>, FileStamp, String)]) {
        if !entries.is_empty() {
            let _ = self.index.stat_store(self.context, entries);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("rbuild-copy-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(p.join("ctx")).unwrap();
        p
    }

    fn stamp(path: &Path) -> FileStamp {
        FileStamp::of(&fs::metadata(path).unwrap())
    }

    #[test]
    fn known_finds_every_recorded_path_and_no_other() {
        let stamp = |n| FileStamp {
            ino: n,
            size: n,
            mtime_ns: 0,
            ctime_ns: 0,
        };
        let mut known = Known::default();
        let paths: Vec<String> = (0..50).map(|i| format!("/ctx/d{:02}/f", i * 2)).collect();
        for (i, p) in paths.iter().enumerate() {
            known.push(p.as_bytes(), stamp(i as u64), &format!("{i:064x}"));
        }
        known.push(b"/ctx/short-digest", stamp(99), "abc");
        for (i, p) in paths.iter().enumerate() {
            let hex = format!("{i:064x}");
            assert_eq!(
                known.get(p.as_bytes()),
                Some((stamp(i as u64), hex.as_str()))
            );
        }
        assert_eq!(known.get(b"/ctx/d01/f"), None);
        assert_eq!(
            known.get(b"/ctx/short-digest"),
            None,
            "not a digest: not kept"
        );
    }

    #[test]
    fn stat_cache_reuses_digests_until_any_stamp_field_moves() {
        let dir = temp("stat");
        let index = cache::index::CacheIndex::open(&dir.join("index.db")).unwrap();
        let ctx = dir.join("ctx");
        let file = ctx.join("a.txt");
        fs::write(&file, "payload\n").unwrap();
        let sources = ["a.txt".to_string()];
        let real = content_digest(&ctx, None, &sources, &[], None).unwrap();
        // A recorded digest for the file's exact stamp is used, not the content.
        let path = file.as_os_str().as_encoded_bytes().to_vec();
        let fake = "0".repeat(64);
        index
            .stat_store("t", &[(path.clone(), stamp(&file), fake)])
            .unwrap();
        let stat = StatCache::new(&index, "t");
        let cached = content_digest(&ctx, None, &sources, &[], Some(&stat)).unwrap();
        assert_ne!(cached, real, "the recorded digest was not used");
        // Same size and mtime, new content (moby/buildkit#2592): ctime moved.
        let mtime = fs::metadata(&file).unwrap().modified().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        fs::write(&file, "PAYLOAD\n").unwrap();
        File::options()
            .write(true)
            .open(&file)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        let after = content_digest(&ctx, None, &sources, &[], Some(&stat)).unwrap();
        assert_eq!(
            after,
            content_digest(&ctx, None, &sources, &[], None).unwrap()
        );
        assert_ne!(after, real);
        // A freshly changed file is not recorded; a settled one is.
        assert_eq!(index.stat_lookup("t", &path, stamp(&file)).unwrap(), None);
        let settled = StatCache {
            settle_ns: 0,
            ..StatCache::new(&index, "t")
        };
        std::thread::sleep(std::time::Duration::from_millis(20));
        content_digest(&ctx, None, &sources, &[], Some(&settled)).unwrap();
        let kept = index.stat_lookup("t", &path, stamp(&file)).unwrap();
        use sha2::{Digest as _, Sha256};
        let want: String = Sha256::digest(b"PAYLOAD\n")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(kept, Some(want));
        let _ = fs::remove_dir_all(&dir);
    }
}
