//! Why a step ran: each step's place in its Dockerfile (its identity) and
//! the key inputs of its latest build are kept in the index; when a step
//! misses the cache, the first input that differs from that build is named
//! (`env VERSION changed (1.2 -> 1.3)`, `command changed`, `source files
//! changed`, `parent changed`). Secrets are no input: changing one is no
//! miss, as in BuildKit.

use serde_json::Value;

use crate::changes::{Change, changes};

use super::*;

/// Where a step is: the Dockerfile, the stage and the step's place among
/// the stage's instructions (so an edit of the step itself is compared
/// with its own earlier build).
pub(super) fn identities(graph: &BuildGraph, dockerfile: &str) -> BTreeMap<NodeIndex, String> {
    let mut by_stage: BTreeMap<usize, Vec<(usize, NodeIndex)>> = BTreeMap::new();
    for n in graph.graph.node_indices() {
        let op = &graph.graph[n];
        if let (Some(stage), Some(span)) = (op.stage, &op.span) {
            by_stage
                .entry(stage)
                .or_default()
                .push((span.start_line, n));
        }
    }
    let mut out = BTreeMap::new();
    for (stage, mut nodes) in by_stage {
        nodes.sort();
        for (place, (_, n)) in nodes.into_iter().enumerate() {
            out.insert(n, format!("{dockerfile}\nstage {stage}\nstep {place}"));
        }
    }
    out
}

/// What a step's lookup found, for `--explain`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The cache had it.
    Hit,
    /// It ran, and why.
    Miss(String),
}

/// Records the inputs of a step about to be looked up or run and, when it
/// runs, says why: compared with the latest build of the same step.
pub(super) fn note_step(
    ctx: &Ctx<'_>,
    step: &Step<'_>,
    key: &cache::index::CacheKey,
    inputs: &str,
    (id, hit): (usize, bool),
) -> anyhow::Result<()> {
    let Some(identity) = ctx.identities.get(&step.node) else {
        return Ok(());
    };
    let earlier = ctx.store.index.inputs_get(identity)?;
    // A no-op rebuild writes nothing here.
    if earlier.as_ref().is_none_or(|(k, _)| k != key.as_str()) {
        ctx.store.index.inputs_put(identity, key, inputs)?;
    }
    if !ctx.options.explain {
        return Ok(());
    }
    // Which step made this key, for the steps that build on it.
    let mut made = lock(&ctx.made_by);
    made.insert(key.as_str().to_string(), (id, hit));
    let outcome = if hit {
        Outcome::Hit
    } else if step.skip_cache {
        Outcome::Miss("--no-cache".into())
    } else {
        if let Some((old_key, _)) = &earlier
            && old_key != key.as_str()
        {
            lock(&ctx.earlier).insert(id, old_key.clone());
        }
        let ran = |key: &str| made.get(key).filter(|(_, hit)| !hit).map(|(id, _)| *id);
        Outcome::Miss(match &earlier {
            None => "no earlier build of this step".into(),
            Some((_, before)) => why_with(before, inputs, &ran),
        })
    };
    drop(made);
    lock(&ctx.explained).push((id, step.op.name.clone(), outcome));
    Ok(())
}

/// With `--explain`, a copy step that ran because its source files
/// changed names the files: its result (`snapshot`) is compared with the
/// result of its latest build, when that is still in the cache (files the
/// rerun linked from it are the same file and cost nothing to compare).
pub(super) fn note_copy(ctx: &Ctx<'_>, id: usize, snapshot: &str) -> anyhow::Result<()> {
    if !ctx.options.explain {
        return Ok(());
    }
    let Some(earlier) = lock(&ctx.earlier).get(&id).cloned() else {
        return Ok(());
    };
    let Some(before) = cache::index::CacheKey::new(&earlier)
        .ok()
        .and_then(|k| lookup(ctx.store, &k).ok().flatten())
    else {
        return Ok(());
    };
    let snapshots = &ctx.store.snapshots;
    let (Some(old), Some(new)) = (
        snapshots.changes_of(&before.snapshot),
        snapshots.changes_of(snapshot),
    ) else {
        return Ok(());
    };
    let (old, new) = (listing(&old)?, listing(&new)?);
    let changed = files_changed(&old, &new);
    if changed.is_empty() {
        return Ok(());
    }
    let mut explained = lock(&ctx.explained);
    for (step_id, _, outcome) in explained.iter_mut() {
        if *step_id == id && *outcome == Outcome::Miss("source files changed".into()) {
            *outcome = Outcome::Miss(changed.clone());
        }
    }
    Ok(())
}

/// Every entry under `dir` with what identifies its state: type, mode,
/// owner, size, link target, and for a file its content's sha256 (shared
/// between names of one file: a linked file is read once).
fn listing(dir: &Path) -> anyhow::Result<Vec<(String, String)>> {
    use sha2::{Digest as _, Sha256};
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut seen: BTreeMap<(u64, u64), String> = BTreeMap::new();
    let mut todo = vec![PathBuf::new()];
    while let Some(rel) = todo.pop() {
        let full = dir.join(&rel);
        for e in std::fs::read_dir(&full)?.flatten() {
            let child = rel.join(e.file_name());
            let meta = e.metadata()?;
            let mut id = format!(
                "{:o} {}:{} {}",
                meta.mode(),
                meta.uid(),
                meta.gid(),
                if meta.is_file() { meta.len() } else { 0 }
            );
            if meta.is_dir() {
                todo.push(child.clone());
            } else if meta.file_type().is_symlink() {
                id.push_str(&std::fs::read_link(e.path())?.to_string_lossy());
            } else if meta.is_file() {
                let content = match seen.get(&(meta.dev(), meta.ino())) {
                    Some(c) => c.clone(),
                    None => {
                        let mut h = Sha256::new();
                        std::io::copy(&mut std::fs::File::open(e.path())?, &mut h)?;
                        let c = cache::Digest::of_sha256(h).to_string();
                        seen.insert((meta.dev(), meta.ino()), c.clone());
                        c
                    }
                };
                id.push(' ');
                id.push_str(&content);
            }
            out.push((child.to_string_lossy().into_owned(), id));
        }
    }
    out.sort();
    Ok(out)
}

/// `2 files changed: src/a.rs (changed), src/b.rs (added)`: the first
/// three by path, then how many more; empty when none differ.
fn files_changed(before: &[(String, String)], now: &[(String, String)]) -> String {
    let old: BTreeMap<&str, &str> = before
        .iter()
        .map(|(p, d)| (p.as_str(), d.as_str()))
        .collect();
    let new: BTreeMap<&str, &str> = now.iter().map(|(p, d)| (p.as_str(), d.as_str())).collect();
    let mut differ: Vec<String> = changes(&old, &new)
        .into_iter()
        .map(|c| match c {
            Change::Added(path) => format!("{path} (added)"),
            Change::Changed(path, ..) => format!("{path} (changed)"),
            Change::Removed(path) => format!("{path} (removed)"),
        })
        .collect();
    differ.sort();
    if differ.is_empty() {
        return String::new();
    }
    let n = differ.len();
    let mut text = format!(
        "{n} file{} changed: {}",
        if n == 1 { "" } else { "s" },
        differ
            .iter()
            .take(3)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ")
    );
    if n > 3 {
        text.push_str(&format!(" and {} more", n - 3));
    }
    text
}

/// The first input of `now` that differs from `before` (both the JSON of
/// [`Inputs`]), in words.
#[cfg(test)]
fn why(before: &str, now: &str) -> String {
    why_with(before, now, &|_| None)
}

/// [`why`], with the step that made a parent key (`#5`), when known.
pub(super) fn why_with(before: &str, now: &str, made_by: &dyn Fn(&str) -> Option<usize>) -> String {
    let (Ok(before), Ok(now)) = (
        serde_json::from_str::<Value>(before),
        serde_json::from_str::<Value>(now),
    ) else {
        return "the inputs could not be read".into();
    };
    let (Some(before), Some(now)) = (before.as_object(), now.as_object()) else {
        return "the inputs could not be read".into();
    };
    for (field, new) in now {
        let old = before.get(field).unwrap_or(&Value::Null);
        if old == new {
            continue;
        }
        return match field.as_str() {
            "op" => "the instruction changed".into(),
            "version" => "the cache key format changed (a new rbuild)".into(),
            "layers" => "the layer format changed (SOURCE_DATE_EPOCH or rewrite-timestamp)".into(),
            "parent" => match (old.as_str(), new.as_str()) {
                (Some(o), Some(n)) if o.starts_with("image ") && n.starts_with("image ") => {
                    format!(
                        "base image changed ({} -> {})",
                        short_digest(&o["image ".len()..]),
                        short_digest(&n["image ".len()..])
                    )
                }
                (_, Some(n)) if n.starts_with("image ") => "base image changed".into(),
                (_, n) => match n.and_then(made_by) {
                    Some(id) => format!("parent changed (step #{id} ran)"),
                    None => "parent changed (an earlier step ran)".into(),
                },
            },
            "env" => env_change(old, new),
            "args" => format!("command changed ({} -> {})", words(old), words(new)),
            "mounts" => mount_change(old, new),
            "source_content" | "content" => "source files changed".into(),
            other => format!("{other} changed ({} -> {})", short(old), short(new)),
        };
    }
    "its inputs are those of its latest build (that result was removed)".into()
}

/// The first variable whose value differs: ENV and ARG values alike.
fn env_change(old: &Value, new: &Value) -> String {
    let pairs = |v: &Value| -> Vec<(String, String)> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                (k.to_string(), v.to_string())
            })
            .collect()
    };
    let (old, new) = (pairs(old), pairs(new));
    let value = |list: &[(String, String)], k: &str| {
        list.iter()
            .find(|(name, _)| name == k)
            .map(|(_, v)| v.clone())
    };
    for (k, v) in &new {
        match value(&old, k) {
            Some(was) if was == *v => {}
            Some(was) => return format!("build arg or env {k} changed ({was} -> {v})"),
            None => return format!("build arg or env {k} added ({v})"),
        }
    }
    for (k, _) in &old {
        if value(&new, k).is_none() {
            return format!("build arg or env {k} removed");
        }
    }
    "the environment's order changed".into()
}

/// The first mount that differs, by target.
fn mount_change(old: &Value, new: &Value) -> String {
    let empty = Vec::new();
    let (old, new) = (
        old.as_array().unwrap_or(&empty),
        new.as_array().unwrap_or(&empty),
    );
    for (i, m) in new.iter().enumerate() {
        let target = m["mount"]["target"].as_str().unwrap_or("?");
        match old.get(i) {
            None => return format!("mount {target} added"),
            Some(o) if o["mount"] != m["mount"] => return format!("mount {target} changed"),
            Some(o) if o["source"] != m["source"] => {
                return format!("mount {target}: its source changed");
            }
            Some(_) => {}
        }
    }
    "a mount was removed".into()
}

/// `sha256:` and the first 12 hex digits.
fn short_digest(d: &str) -> String {
    d.chars().take("sha256:".len() + 12).collect()
}

fn words(v: &Value) -> String {
    let joined: Vec<&str> = v
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    short(&Value::String(joined.join(" ")))
}

/// A value in a line: strings bare, at most 60 characters.
fn short(v: &Value) -> String {
    let s = match v {
        Value::String(s) => s.clone(),
        Value::Null => "none".into(),
        other => other.to_string(),
    };
    if s.chars().count() > 60 {
        format!("{}...", s.chars().take(57).collect::<String>())
    } else {
        s
    }
}

/// The explained steps in the order of their numbers.
fn by_step(explained: &[(usize, String, Outcome)]) -> Vec<&(usize, String, Outcome)> {
    let mut sorted: Vec<_> = explained.iter().collect();
    sorted.sort_by_key(|(id, ..)| *id);
    sorted
}

/// `--explain --format json`: one object per step, by its number in the
/// progress output: `{"step": 3, "name": "...", "cached": false,
/// "reason": "..."}` (no reason for a hit).
pub fn report_json(explained: &[(usize, String, Outcome)]) -> String {
    let mut out = String::new();
    for (id, name, outcome) in by_step(explained) {
        let line = match outcome {
            Outcome::Hit => serde_json::json!({"step": id, "name": name, "cached": true}),
            Outcome::Miss(why) => {
                serde_json::json!({"step": id, "name": name, "cached": false, "reason": why})
            }
        };
        out.push_str(&line.to_string());
        out.push('\n');
    }
    out
}

/// The report of `--explain`: a line per step that can hit or miss, by
/// its number in the progress output.
pub fn report(explained: &[(usize, String, Outcome)]) -> String {
    let mut out = String::new();
    for (id, name, outcome) in by_step(explained) {
        let what = match outcome {
            Outcome::Hit => "hit".to_string(),
            Outcome::Miss(why) => format!("miss: {why}"),
        };
        out.push_str(&format!("#{id} {name}: {what}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_files_that_differ() {
        let files = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter()
                .map(|(p, d)| (p.to_string(), d.to_string()))
                .collect()
        };
        let before = files(&[("a", "1"), ("b", "1"), ("c", "1"), ("d", "1"), ("e", "1")]);
        assert_eq!(files_changed(&before, &before), "");
        let now = files(&[("a", "2"), ("c", "1"), ("d", "2"), ("e", "2"), ("f", "1")]);
        assert_eq!(
            files_changed(&before, &now),
            "5 files changed: a (changed), b (removed), d (changed) and 2 more"
        );
        assert_eq!(
            files_changed(&before[..1], &files(&[("a", "3")])),
            "1 file changed: a (changed)"
        );
    }

    #[test]
    fn names_the_first_input_that_differs() {
        let a = r#"{"op":"exec","version":2,"parent":"p","args":["sh","-c","make"],"env":["PATH=/bin","V=1"]}"#;
        let b = r#"{"op":"exec","version":2,"parent":"p","args":["sh","-c","make"],"env":["PATH=/bin","V=2"]}"#;
        assert_eq!(why(a, b), "build arg or env V changed (1 -> 2)");
        let c = r#"{"op":"exec","version":2,"parent":"q","args":["sh","-c","make"],"env":["PATH=/bin","V=2"]}"#;
        assert_eq!(why(b, c), "parent changed (an earlier step ran)");
        let d = r#"{"op":"exec","version":2,"parent":"p","args":["sh","-c","make all"],"env":["PATH=/bin","V=1"]}"#;
        assert_eq!(why(a, d), "command changed (sh -c make -> sh -c make all)");
        assert_eq!(
            why(a, a),
            "its inputs are those of its latest build (that result was removed)"
        );
    }
}
