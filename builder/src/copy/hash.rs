//! The content key of a copy from a local directory: a digest of exactly
//! what the copy would read, with the stat cache sparing rehashes.

use super::*;

/// A checksum of exactly what [`copy`] would read from `root` for these
/// sources: each selected entry's path, type, mode, owner, size, link
/// target, content and file capabilities (not its mtime). It is the COPY/ADD cache key's view
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
        !super::sent::sent(ignore, root, at.rel)
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
                    // Capabilities go with the file into the layer (a
                    // change to them changes its ctime: the stat cache
                    // rehashes). A file without keeps its plain digest.
                    if let Some(caps) = cache::layer::capabilities(&f) {
                        fh.update(b"\0security.capability\0");
                        fh.update(&caps);
                    }
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
        let rel = clean_rel(src);
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
