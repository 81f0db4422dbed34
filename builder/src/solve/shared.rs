//! The solver's side of a cache that travels ([`crate::shared_cache`]): a
//! step the local index misses but an imported cache has is taken from it
//! lazily (its layer fetched, verified and unpacked on the parent's files
//! only when a step or an output needs them), and a build's records are
//! gathered for `--cache-to`.

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
    lock(&ctx.seen).push(Seen {
        key: key.as_str().to_string(),
        parent,
    });
}

/// An imported cache's record of `key` as this step's outcome: nothing
/// is fetched yet. Its files are made ([`LazyImported::get`]) when a step
/// or an output needs them, and its layer fetched when the image or an
/// export does. None when no cache has it, or this build found it unusable.
pub(super) fn imported_hit(
    ctx: &Ctx<'_>,
    key: &cache::index::CacheKey,
    parent: &Snap,
) -> Option<Taken> {
    let imports = ctx.options.cache_imports?;
    if rejected(ctx, key) {
        return None;
    }
    let record = imports.get(key.as_str())?;
    lock(&ctx.imported_hits).insert(
        key.as_str().to_string(),
        record.layer.as_ref().map(|(l, _)| l.digest.clone()),
    );
    Some(Taken {
        snapshot: Snap::lazy(Lazy::Imported(LazyImported::new(key, parent))),
        layer: record.layer.as_ref().map(|(d, _)| d.clone()),
        diff: record.layer.as_ref().map(|(_, d)| d.clone()),
        created: record.created.clone(),
    })
}

/// Whether this build found the imported record of `key` unusable.
pub(super) fn rejected(ctx: &Ctx<'_>, key: &cache::index::CacheKey) -> bool {
    lock(ctx.rejected).contains(key.as_str())
}

/// An imported cache hit's files: its layer fetched (unless the store
/// has it), verified and unpacked on its parent's files the first time
/// they are needed, then recorded in the local cache.
pub(super) struct LazyImported {
    key: cache::index::CacheKey,
    parent: Snap,
    made: std::sync::Mutex<Option<String>>,
}

impl LazyImported {
    pub(super) fn new(key: &cache::index::CacheKey, parent: &Snap) -> LazyImported {
        LazyImported {
            key: key.clone(),
            parent: parent.clone(),
            made: std::sync::Mutex::new(None),
        }
    }

    pub(super) fn get(&self, ctx: &Ctx<'_>) -> anyhow::Result<Option<String>> {
        let mut made = lock(&self.made);
        if let Some(id) = &*made {
            return Ok(Some(id.clone()));
        }
        // The parent's own failure names the parent's step.
        let parent = self.parent.get(ctx)?;
        let id =
            make_local(ctx, &self.key, parent.as_deref()).map_err(|e| unusable(&self.key, e))?;
        *made = Some(id.clone());
        Ok(Some(id))
    }
}

/// The imported record of `key` (from an imported cache, or recorded
/// unmade by an earlier build) made a local one on `parent`'s files: its
/// layer fetched into the store unless there (verified) and unpacked.
/// Returns the snapshot.
fn make_local(
    ctx: &Ctx<'_>,
    key: &cache::index::CacheKey,
    parent: Option<&str>,
) -> anyhow::Result<String> {
    let _lock = ctx.store.index.lock_key(key)?;
    let local = ctx
        .store
        .using_record(key.as_str(), || lookup(ctx.store, key))??;
    let record = match local {
        // Another build may have made it meanwhile.
        Some(step) if !step.unmade => return Ok(step.snapshot),
        Some(step) => CacheRecord {
            key: key.as_str().to_string(),
            layer: step.layer.zip(step.diff_id),
            created: step.created,
        },
        None => ctx
            .options
            .cache_imports
            .and_then(|i| i.get(key.as_str()))
            .cloned()
            .ok_or_else(|| anyhow!("no imported record"))?,
    };
    // Kept from any prune while this build lives.
    let snapshot = match &record.layer {
        Some((layer, _)) => {
            let digest = layer.digest.parse()?;
            if !ctx.store.blobs.contains(&digest) {
                fetch_layer(ctx, key.as_str())?;
            }
            let blob = ctx.store.blobs.open_verified(&digest)?;
            ctx.store.import_snapshot(parent, blob)?
        }
        None => {
            let m = ctx.store.snapshots.prepare(parent)?;
            ctx.store
                .making_snapshot(
                    || m.commit_lazy(&ctx.store.blobs, &ctx.layer_options),
                    |(snap, _, _)| &snap.id,
                )?
                .0
        }
    };
    let step = StepRecord {
        snapshot: snapshot.id,
        ..imported_record(&record, false)
    };
    ctx.store
        .using_record(key.as_str(), || record::record(ctx.store, key, &step))??;
    Ok(step.snapshot)
}

/// The local record of an imported one: made (its snapshot then set by
/// the caller) or not.
fn imported_record(record: &CacheRecord, unmade: bool) -> StepRecord {
    StepRecord {
        snapshot: String::new(),
        layer: record.layer.as_ref().map(|(d, _)| d.clone()),
        diff_id: record.layer.as_ref().map(|(_, d)| d.clone()),
        created: record.created.clone(),
        pending: false,
        pending_size: 0,
        imported: true,
        unmade,
    }
}

/// Imported hits of this build whose files were never made but whose
/// layer is in the store now (or which have none) are kept in the local
/// cache as unmade records: a later build, with or without the import,
/// finds them and makes their files only if it needs them.
pub(super) fn record_unmade_hits(ctx: &Ctx<'_>) -> anyhow::Result<()> {
    let Some(imports) = ctx.options.cache_imports else {
        return Ok(());
    };
    let hits = lock(&ctx.imported_hits).clone();
    for (key, layer) in hits {
        let here = match &layer {
            Some(d) => ctx.store.blobs.contains(&d.parse()?),
            None => true,
        };
        let (Some(record), true) = (imports.get(&key), here) else {
            continue;
        };
        let key = cache::index::CacheKey::new(&key)?;
        let _lock = ctx.store.index.lock_key(&key)?;
        if lookup(ctx.store, &key)?.is_none() {
            record::record(ctx.store, &key, &imported_record(record, true))?;
        }
    }
    Ok(())
}

/// Brings the layer of imported record `key` into the store; a layer
/// from a registry notes its repository there, so that a push to that
/// registry mounts it rather than uploading it again.
fn fetch_layer(ctx: &Ctx<'_>, key: &str) -> anyhow::Result<()> {
    let imports = ctx
        .options
        .cache_imports
        .ok_or_else(|| anyhow!("no imported cache"))?;
    imports.fetch_layer(
        key,
        &ctx.store.blobs,
        ctx.options.images,
        &transfer_here(ctx),
    )?;
    if let (Some(source), Some((layer, _))) = (
        imports.registry_source(key),
        imports.get(key).and_then(|r| r.layer.as_ref()),
    ) {
        // Only a mount lost if it fails.
        let _ = ctx.store.index.set_blob_source(&layer.digest, &source);
    }
    Ok(())
}

/// An imported cache hit that turned out unusable when its layer was
/// needed (gone from the registry, corrupt, unreachable): the build runs
/// again without it ([`super::build`]), its step then runs.
#[derive(Debug, thiserror::Error)]
#[error("the imported cache of step {key} could not be used: {cause}")]
pub(super) struct ImportUnusable {
    pub(super) key: String,
    cause: String,
}

fn unusable(key: &cache::index::CacheKey, e: anyhow::Error) -> anyhow::Error {
    anyhow::Error::new(ImportUnusable {
        key: key.as_str().to_string(),
        cause: format!("{e:#}"),
    })
}

/// Brings into the store the layers of `layers` that imported hits stand
/// for (the image's, for the store and its exports), a few at a time.
pub(super) fn fetch_imported_layers(ctx: &Ctx<'_>, layers: &[Descriptor]) -> anyhow::Result<()> {
    let imported: BTreeMap<String, String> = lock(&ctx.imported_hits)
        .iter()
        .filter_map(|(key, layer)| Some((layer.clone()?, key.clone())))
        .collect();
    let wanted: Vec<&String> = layers
        .iter()
        .filter(|l| !l.digest.parse().is_ok_and(|d| ctx.store.blobs.contains(&d)))
        .filter_map(|l| imported.get(&l.digest))
        .collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let workers = wanted.len().min(4);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                s.spawn(|| -> anyhow::Result<()> {
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(key) = wanted.get(i) else {
                            return Ok(());
                        };
                        fetch_layer(ctx, key).map_err(|e| {
                            unusable(&cache::index::CacheKey::new(key).expect("a key"), e)
                        })?;
                    }
                })
            })
            .collect();
        handles.into_iter().try_for_each(|h| {
            h.join()
                .unwrap_or_else(|_| Err(anyhow!("a download panicked")))
        })
    })
}

/// The records `--cache-to` exports: every step of the build with `max`
/// (else none), and the keys of those `min` exports (the result's chain,
/// also the only records gathered when no export asks for `max`); pending
/// layers are written first.
pub(super) fn export_records(
    ctx: &Ctx<'_>,
    target: &Done,
) -> anyhow::Result<(Vec<CacheRecord>, std::collections::BTreeSet<String>)> {
    let Some(mode) = ctx.options.cache_export else {
        return Ok(Default::default());
    };
    let seen = std::mem::take(&mut *lock(&ctx.seen));
    let parents: BTreeMap<&str, Option<&str>> = seen
        .iter()
        .map(|s| (s.key.as_str(), s.parent.as_deref()))
        .collect();
    // Layers not yet written name their step (a `--link` step is not its
    // parent's child by key).
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
    let min: std::collections::BTreeSet<String> = seen
        .iter()
        .filter(|s| {
            chain.contains(&s.key) || in_image.contains(format!("pending:{}", s.key).as_str())
        })
        .map(|s| s.key.clone())
        .collect();
    let keys: Vec<String> = match mode {
        Mode::Max => seen.iter().map(|s| s.key.clone()).collect(),
        Mode::Min => seen
            .iter()
            .filter(|s| min.contains(&s.key))
            .map(|s| s.key.clone())
            .collect(),
    };
    let mut out = Vec::new();
    let mut done = std::collections::BTreeSet::new();
    for key in keys {
        if !done.insert(key.clone()) {
            continue;
        }
        let Some(step) = lookup(ctx.store, &cache::index::CacheKey::new(&key)?)? else {
            // An imported hit never made local: its layer comes now.
            if let Some(record) = ctx.options.cache_imports.and_then(|i| i.get(&key)) {
                fetch_layer(ctx, &key)
                    .map_err(|e| unusable(&cache::index::CacheKey::new(&key).expect("a key"), e))?;
                out.push(record.clone());
            }
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
    Ok((out, min))
}
