//! `RUN --mount=type=bind` of a local source (the build context, or a named
//! directory context): the step sees what BuildKit would have transferred,
//! the source without what its ignore file excludes, and what it writes
//! (`rw`) never reaches the user's files.

use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow};
use cache::snapshot::{MutableSnapshot, Snapshotter};
use frontend::ignore::{MatchInfo, PatternMatcher};

use crate::tempdir::TempDir;

/// What a local bind mount binds, and what must live as long as the step.
pub struct LocalBind {
    /// The host path to bind into the sandbox.
    pub source: PathBuf,
    /// The view behind `source`, if any.
    _view: Option<MutableSnapshot>,
    /// The copy behind `source`, if any.
    _copy: Option<TempDir>,
}

/// The bind of `source` (a path in `root`, symlinks followed inside it) for
/// a mount that is `readonly` or not.
pub fn local_bind(
    snapshots: &Snapshotter,
    root: &Path,
    ignore: Option<&PatternMatcher>,
    source: &str,
    readonly: bool,
) -> anyhow::Result<LocalBind> {
    let src = cache::layer::resolve_in_root(root, Path::new(source.trim_start_matches('/')), true);
    let rel = src
        .strip_prefix(root)
        .unwrap_or(Path::new(""))
        .to_path_buf();
    let rel_str = rel.to_string_lossy().into_owned();
    let excluded = !rel_str.is_empty()
        && ignore.is_some_and(|m| m.matches_or_parent_matches(&rel_str).unwrap_or(false));
    let meta = std::fs::metadata(&src)
        .ok()
        .filter(|_| !excluded)
        .ok_or_else(|| anyhow!("bind mount source {source}: not found in the build context"))?;
    if !meta.is_dir() {
        if readonly {
            return Ok(LocalBind {
                source: src,
                _view: None,
                _copy: None,
            });
        }
        let copy = TempDir::new("bind").context("making a copy of a bind mount source")?;
        let file = copy.path.join("file");
        std::fs::copy(&src, &file).with_context(|| format!("copying {}", src.display()))?;
        return Ok(LocalBind {
            source: file,
            _view: None,
            _copy: Some(copy),
        });
    }
    let hidden = match ignore {
        Some(m) => {
            // What the patterns say of the source's own directories.
            let mut info = MatchInfo::default();
            let mut above = PathBuf::new();
            for c in rel.components() {
                above.push(c);
                info = m.matches_with_parents(&above.to_string_lossy(), &info)?.1;
            }
            let mut hidden = Vec::new();
            hidden_under(&src, &rel, Path::new(""), &info, m, &mut hidden)?;
            hidden
        }
        None => Vec::new(),
    };
    if hidden.is_empty() && readonly {
        return Ok(LocalBind {
            source: src,
            _view: None,
            _copy: None,
        });
    }
    let view = snapshots
        .view(&src, &hidden)
        .with_context(|| format!("making a view of {}", src.display()))?;
    Ok(LocalBind {
        source: view.root(),
        _view: Some(view),
        _copy: None,
    })
}

/// Appends to `hidden` the entries below `dir` (the source, `prefix` from
/// the context root; `rel` from the source) that `ignore` excludes, as a
/// context walk leaves them out: an excluded directory whole, unless a `!`
/// pattern may re-include something in it. Returns whether anything below
/// `dir` stays.
fn hidden_under(
    dir: &Path,
    prefix: &Path,
    rel: &Path,
    parent: &MatchInfo,
    ignore: &PatternMatcher,
    hidden: &mut Vec<PathBuf>,
) -> anyhow::Result<bool> {
    let full = dir.join(rel);
    let mut kept = false;
    let mut entries: Vec<_> = std::fs::read_dir(&full)
        .with_context(|| format!("reading {}", full.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("reading {}", full.display()))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let child = rel.join(e.file_name());
        let in_context = prefix.join(&child);
        let name = in_context.to_string_lossy();
        let (excluded, info) = ignore.matches_with_parents(&name, parent)?;
        let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
        if is_dir && (!excluded || ignore.may_include_under(&name)) {
            let before = hidden.len();
            let inside = hidden_under(dir, prefix, &child, &info, ignore, hidden)?;
            if excluded && !inside {
                // Nothing re-included: the directory goes whole.
                hidden.truncate(before);
                hidden.push(child);
            } else {
                kept = true;
            }
        } else if excluded {
            hidden.push(child);
        } else {
            kept = true;
        }
    }
    Ok(kept)
}
