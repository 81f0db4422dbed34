//! The solver's side of a cache that travels ([`crate::shared_cache`]): a
//! step the local index misses but an imported cache has is taken from it
//! (its layer fetched, verified and unpacked on the parent's snapshot),
//! and a build's records are gathered for `--cache-to`.

use super::*;
use crate::shared_cache::{CacheRecord, Mode};

/// A step this build made or found: its key and the key it built on.
pub(super) struct Seen {
    key: String,
    parent: Option<String>,
}

/// Notes that this build made or found `key` (made from `inputs`).
pub(super) fn saw(ctx: &Ctx<'_>, key: &cache::index::CacheKey, inputs: &str) {
    if ctx.options.cache_export.is_none() {
        return;
    }
    let parent = serde_json::from_str::<serde_json::Value>(inputs)
        .ok()
        .and_then(|v| v["parent"].as_str().map(str::to_string));
    ctx.seen
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(Seen {
            key: key.as_str().to_string(),
            parent,
        });
}

/// The record of `key` from an imported cache, made local: its layer
/// fetched into the store and unpacked on `parent`. None when no cache
/// has it or it can't be had (a warning; the step then runs).
pub(super) fn imported_hit(
    ctx: &Ctx<'_>,
    key: &cache::index::CacheKey,
    parent: &Snap,
) -> Option<StepRecord> {
    let imports = ctx.options.cache_imports?;
    let record = imports.get(key.as_str())?;
    let made = (|| -> anyhow::Result<StepRecord> {
        let parent = parent.get(ctx)?;
        let parent = parent.as_deref();
        let snapshot = match &record.layer {
            Some((layer, _)) => {
                imports.fetch_layer(
                    key.as_str(),
                    &ctx.store.blobs,
                    ctx.options.images,
                    &ctx.options.transfer,
                )?;
                let blob = ctx.store.blobs.open_verified(&layer.digest.parse()?)?;
                ctx.store.snapshots.import(parent, blob)?
            }
            None => {
                let m = ctx.store.snapshots.prepare(parent)?;
                m.commit_lazy(&ctx.store.blobs, &ctx.layer_options)?.0
            }
        };
        let step = StepRecord {
            snapshot: snapshot.id,
            layer: record.layer.as_ref().map(|(d, _)| d.clone()),
            diff_id: record.layer.as_ref().map(|(_, d)| d.clone()),
            created: record.created.clone(),
            pending: false,
            pending_size: 0,
            imported: true,
        };
        record::record(ctx.store, key, &step)?;
        Ok(step)
    })();
    match made {
        Ok(step) => Some(step),
        Err(e) => {
            ctx.progress.warn(&format!(
                "the imported cache of step {} could not be used, running it: {e:#}",
                key.as_str()
            ));
            None
        }
    }
}

/// The records `--cache-to` exports: every step of the build (`max`), or
/// those of the result's chain (`min`); pending layers written first.
pub(super) fn export_records(ctx: &Ctx<'_>, target: &Done) -> anyhow::Result<Vec<CacheRecord>> {
    let Some(mode) = ctx.options.cache_export else {
        return Ok(Vec::new());
    };
    let seen = std::mem::take(&mut *ctx.seen.lock().unwrap_or_else(|e| e.into_inner()));
    let keys: Vec<String> = match mode {
        Mode::Max => seen.iter().map(|s| s.key.clone()).collect(),
        Mode::Min => {
            let parents: BTreeMap<&str, Option<&str>> = seen
                .iter()
                .map(|s| (s.key.as_str(), s.parent.as_deref()))
                .collect();
            // Layers not yet written name their step (a `--link` step
            // is not its parent's child by key).
            let in_image: std::collections::BTreeSet<&str> =
                target.layers.iter().map(|l| l.digest.as_str()).collect();
            let mut chain = std::collections::BTreeSet::new();
            let mut at = target.key.as_deref();
            while let Some(k) = at {
                if !parents.contains_key(k) || !chain.insert(k.to_string()) {
                    break;
                }
                at = parents[k];
            }
            seen.iter()
                .filter(|s| {
                    chain.contains(&s.key)
                        || in_image.contains(format!("pending:{}", s.key).as_str())
                })
                .map(|s| s.key.clone())
                .collect()
        }
    };
    let mut out = Vec::new();
    let mut done = std::collections::BTreeSet::new();
    for key in keys {
        if !done.insert(key.clone()) {
            continue;
        }
        let Some(step) = lookup(ctx.store, &cache::index::CacheKey::new(&key)?)? else {
            continue;
        };
        let layer = if step.pending {
            write_pending_layer(ctx, &key)?
        } else {
            step.layer.clone().zip(step.diff_id.clone())
        };
        out.push(CacheRecord {
            key,
            layer,
            created: step.created,
        });
    }
    Ok(out)
}
