//! Which paths of a local context a build sees: what BuildKit's context
//! transfer sends given the ignore file. A path that is not ignored is
//! sent; an ignored directory is sent as the parent of anything below it a
//! `!` pattern re-includes ([`PatternMatcher::may_include_under`] says
//! where that can be; `RUN --mount=type=bind` views follow the same rule).

use std::fs;
use std::path::Path;

use frontend::ignore::PatternMatcher;

/// Whether `rel` (relative to `root`, slash-separated, not resolved
/// through symlinks) is sent.
pub(crate) fn sent(ignore: Option<&PatternMatcher>, root: &Path, rel: &str) -> bool {
    let Some(m) = ignore else {
        return true;
    };
    if rel.is_empty() || !m.matches_or_parent_matches(rel).unwrap_or(false) {
        return true;
    }
    if !m.may_include_under(rel) {
        return false;
    }
    let path = root.join(rel);
    if !fs::symlink_metadata(&path).is_ok_and(|meta| meta.is_dir()) {
        return false;
    }
    let Ok(entries) = fs::read_dir(&path) else {
        return false;
    };
    entries.flatten().any(|e| {
        sent(
            ignore,
            root,
            &format!("{rel}/{}", e.file_name().to_string_lossy()),
        )
    })
}
