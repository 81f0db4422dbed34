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
//!
//! Beside the copy: `hash` (a copy's content key), `stat` (the stat cache
//! of context digests), `reuse` (a rerun links unchanged files), `write`
//! (one file written) and `archive` (ADD's local archives).

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

mod archive;
mod hash;
mod reuse;
mod sent;
mod stat;
mod tree;
mod write;

pub(crate) use self::archive::{archive_reader, is_archive};
pub use self::hash::content_digest;
pub use self::reuse::Reuse;
use self::reuse::{SETTLE_NS, now_ns};
use self::stat::Known;
pub use self::stat::StatCache;
use self::tree::{TreeCopy, TreeWalk, copy_tree, special};
use self::write::*;

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
    /// Without `--chown`, entries keep their owners: another stage's or an
    /// image's files. A local context's are root's (buildx sends them with
    /// their ids reset), so this is false for those.
    pub keep_owners: bool,
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
            keep_owners: false,
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
    /// An archive ADD extracts could not be (a hostile or broken one).
    #[error("extracting {archive}")]
    Extract {
        /// The archive, as the source names it.
        archive: String,
        /// Why.
        #[source]
        source: cache::layer::LayerError,
    },
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> CopyError + use<> {
    let at = PathError::at(action, path);
    move |source| at(source).into()
}

fn has_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// The names in directory `dir`, sorted; None when it can't be read.
fn sorted_names(dir: &Path) -> Option<Vec<String>> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    Some(names)
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
            let Some(names) = sorted_names(&dir) else {
                continue;
            };
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

impl Owner {
    const ROOT: Owner = Owner { uid: 0, gid: 0 };

    /// An entry's owner: `fixed` (`--chown`), else its own when `keep`
    /// (BuildKit's copy keeps a stage's owners), else root.
    fn of(fixed: Option<Owner>, keep: bool, meta: &fs::Metadata) -> Owner {
        fixed.unwrap_or(if keep {
            Owner {
                uid: meta.uid(),
                gid: meta.gid(),
            }
        } else {
            Owner::ROOT
        })
    }
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
    let fixed = req.chown.map(|spec| {
        let (uid, gid) = crate::sandbox::user::file_owner(req.dest_root, spec);
        Owner { uid, gid }
    });
    // Directories the copy makes are the --chown owner's, else root's.
    let owner = fixed.unwrap_or(Owner::ROOT);
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
        let rel = clean_rel(src);
        if has_glob(&rel) {
            wildcard = true;
            selected.extend(expand_glob(req.source_root, &rel)?);
        } else {
            let path = resolve_in_root(req.source_root, Path::new(&rel), true);
            let ignored = !sent::sent(req.ignore, req.source_root, &rel);
            if ignored || fs::symlink_metadata(&path).is_err() {
                return Err(CopyError::NotFound(format!("/{rel}")));
            }
            selected.push(rel);
        }
    }
    selected.retain(|p| sent::sent(req.ignore, req.source_root, p));
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
        make_dirs(req.dest_root, &dir, owner, 0o755)?;
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
        let target = dest_path(req, name, owner)?;
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
                owner: fixed,
                chmod: chmod.as_ref(),
                links,
            };
            n += copy_tree(&src, &dest_dir, walk, tree)?;
            continue;
        }
        if req.add && req.unpack != Some(false) && meta.is_file() && is_archive(&src)? {
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
            let stats = cache::layer::unpack(archive_reader(&src)?, &dest_dir, &options).map_err(
                |source| CopyError::Extract {
                    archive: rel.to_string(),
                    source,
                },
            )?;
            n += stats.entries;
            continue;
        }
        let base = Path::new(rel)
            .file_name()
            .map(|b| b.to_string_lossy().into_owned())
            .unwrap_or_default();
        let target = dest_path(req, &base, owner)?;
        if !meta.is_file() {
            // A fifo, device or socket named as a source is made again,
            // never read (a fifo would wait for a writer for good, a
            // device could stream without end).
            special(&target, &meta, Owner::of(fixed, req.keep_owners, &meta))?;
            n += 1;
            continue;
        }
        links.copy_or_link(&meta, &target, || {
            let file = File::open(&src).map_err(io_err("opening", &src))?;
            write_file_from(
                Data::File(&file, meta.len()),
                &target,
                meta.mode() & 0o7777,
                Owner::of(fixed, req.keep_owners, &meta),
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
    let ignored = |rel: &str| !sent::sent(req.ignore, req.source_root, rel);
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
        // As BuildKit's convert_copy: the part before the first `/./` (the
        // whole root without one) is the directory copied from, itself
        // perhaps a wildcard; the part after is an include pattern below
        // it (`**` spans directories), and the path it keeps.
        let (pivot, pattern) = src.split_once("/./").unwrap_or(("", src));
        let (pivot, pattern) = (clean_rel(pivot), clean_rel(pattern));
        let wildcards = has_glob(&pivot) || has_glob(&pattern);
        let pivots = if has_glob(&pivot) {
            expand_glob(req.source_root, &pivot)?
        } else {
            vec![pivot]
        };
        let mut found = Vec::new();
        for p in &pivots {
            for kept in matches_below(req.source_root, p, &pattern)? {
                found.push((join_rel(p, &kept), kept));
            }
        }
        // A plain path must be there (BuildKit's RequiredPaths); a pattern
        // may match nothing.
        if found.is_empty() && !wildcards {
            found.push((join_rel(&pivots[0], &pattern), pattern.clone()));
        }
        for (m, kept) in &found {
            let kept = kept.as_str();
            if (ignored(m) && wildcards) || excluded(kept) {
                continue;
            }
            let path = resolve_in_root(req.source_root, Path::new(m), true);
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
                    sources: std::slice::from_ref(m),
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

/// The paths below `dir` (relative to the root) that `pattern` matches
/// with `.dockerignore` semantics (`*` within a name, `**` across
/// directories), relative to `dir`: the first match on each path, whose
/// copy takes what is under it. The walk starts at the pattern's leading
/// plain names. A pattern without wildcards is the one path, if present.
fn matches_below(root: &Path, dir: &str, pattern: &str) -> Result<Vec<String>, CopyError> {
    if !has_glob(pattern) {
        let whole = join_rel(dir, pattern);
        let present = fs::symlink_metadata(resolve_in_root(root, Path::new(&whole), true)).is_ok();
        return Ok(if present {
            vec![pattern.to_string()]
        } else {
            Vec::new()
        });
    }
    let matcher = PatternMatcher::new(&[pattern])
        .map_err(|e| CopyError::Invalid(format!("invalid pattern {pattern:?}: {e}")))?;
    let plain: Vec<&str> = pattern.split('/').take_while(|c| !has_glob(c)).collect();
    let start = plain.join("/");
    let mut found = Vec::new();
    let mut todo = vec![start];
    while let Some(rel) = todo.pop() {
        let path = resolve_in_root(root, Path::new(&join_rel(dir, &rel)), false);
        let Some(names) = sorted_names(&path) else {
            continue;
        };
        for name in names.into_iter().rev() {
            let child = join_rel(&rel, &name);
            if matcher.matches(&child).unwrap_or(false) {
                found.push(child);
            } else if fs::symlink_metadata(path.join(&name)).is_ok_and(|m| m.is_dir()) {
                todo.push(child);
            }
        }
    }
    found.sort();
    Ok(found)
}

/// Where a single file named `base` goes; the directories made on the
/// way are `owner`'s (BuildKit chowns every directory a copy creates).
fn dest_path(req: &CopyRequest<'_>, base: &str, owner: Owner) -> Result<PathBuf, CopyError> {
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
        owner,
        new_dir_mode(req),
    )?;
    let parent_path = resolve_in_root(req.dest_root, Path::new(&parent), true);
    let name = Path::new(&target_rel)
        .file_name()
        .ok_or_else(|| CopyError::Invalid(format!("invalid destination {:?}", req.dest)))?;
    if !into_dir {
        // The destination as named is resolved whole, its last symlink
        // too (fsutil's RootPath of the copy's dst): `COPY f /link` with
        // /link -> /file writes /file and keeps the link. Entries below a
        // copied directory replace what is in their way instead.
        let resolved = resolve_in_root(req.dest_root, Path::new(&target_rel), true);
        // Still a link: the chain loops (RootPath's "too many links").
        if fs::symlink_metadata(&resolved).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(CopyError::Invalid(format!(
                "cannot copy to {}: too many levels of symbolic links",
                req.dest
            )));
        }
        return Ok(resolved);
    }
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

/// `parent/name`, or `name` under the root.
/// A source path cleaned as if rooted, without its leading `/` (`./a/../b`
/// is `b`, `/` is empty).
fn clean_rel(path: &str) -> String {
    frontend::glob::clean(&format!("/{path}"))
        .trim_start_matches('/')
        .to_string()
}

fn join_rel(parent: &str, name: &str) -> String {
    match (parent.is_empty(), name.is_empty()) {
        (true, _) => name.to_string(),
        (_, true) => parent.to_string(),
        _ => format!("{parent}/{name}"),
    }
}

/// Removes whatever is at `path`, a directory with its contents.
fn remove_any(path: &Path) -> Result<(), CopyError> {
    let r = if fs::symlink_metadata(path).is_ok_and(|m| m.is_dir()) {
        cache::tree::remove_tree(path)
    } else {
        fs::remove_file(path)
    };
    r.map_err(io_err("replacing", path))
}
