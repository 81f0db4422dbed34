//! Step records and their cache keys: what the index keeps for a
//! snapshot-making step (snapshot, layer or a placeholder for it, time),
//! the key a step is found under, and the layers written late for the
//! image a build produces.

use super::*;

/// What a snapshot-making step left, as the cache index records it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(super) struct StepRecord {
    pub(super) snapshot: String,
    pub(super) layer: Option<Descriptor>,
    pub(super) diff_id: Option<String>,
    pub(super) created: String,
    /// The step changed files but its layer tar is not written yet: only
    /// the layers of the image a build produces are ([`resolve_layers`]);
    /// a stage that only feeds `COPY --from` never needs its tars.
    #[serde(default)]
    pub(super) pending: bool,
    /// Bytes of a pending step's changes (its snapshot), for disk usage.
    #[serde(default)]
    pub(super) pending_size: u64,
    /// Taken from an imported cache (`--cache-from`), not made here:
    /// `rbuild du` lists these apart.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(super) imported: bool,
    /// Its files are not made (`snapshot` is empty): an imported hit
    /// whose layer is in the store, unpacked on its parent's files when a
    /// step or an output needs them.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(super) unmade: bool,
}

/// The media type of a layer placeholder; its digest is
/// `pending:<cache key>`, and it stands in the image's diff_ids too until
/// [`resolve_layers`] writes the layer.
pub(super) const PENDING_LAYER: &str = "application/vnd.rbuild.layer.pending";

impl StepRecord {
    /// The layer as an image takes it: the written one, or a placeholder.
    pub(super) fn layer_ref(&self, key: &cache::index::CacheKey) -> Option<Descriptor> {
        if self.pending {
            return Some(Descriptor {
                media_type: PENDING_LAYER.into(),
                digest: format!("pending:{}", key.as_str()),
                size: 0,
                urls: None,
                annotations: None,
                data: None,
                platform: None,
                artifact_type: None,
            });
        }
        self.layer.clone()
    }

    /// The diff_id as an image takes it: the real one, or the placeholder.
    pub(super) fn diff_ref(&self, key: &cache::index::CacheKey) -> Option<String> {
        if self.pending {
            return Some(format!("pending:{}", key.as_str()));
        }
        self.diff_id.clone()
    }
}

/// A snapshot-making step's outcome as the build goes on from it: its
/// files (made, or an imported hit's made when needed), layer (or a
/// placeholder), diff_id (or placeholder) and time.
pub(super) struct Taken {
    pub(super) snapshot: Snap,
    pub(super) layer: Option<Descriptor>,
    pub(super) diff: Option<String>,
    pub(super) created: String,
}

impl Taken {
    /// A local record's outcome; the files of an unmade one are made on
    /// `parent`'s when needed.
    pub(super) fn of(step: StepRecord, key: &cache::index::CacheKey, parent: &Snap) -> Taken {
        Taken {
            layer: step.layer_ref(key),
            diff: step.diff_ref(key),
            snapshot: if step.unmade {
                Snap::lazy(Lazy::Imported(LazyImported::new(key, parent)))
            } else {
                Snap::ready(Some(step.snapshot))
            },
            created: step.created,
        }
    }
}

thread_local! {
    /// The progress number of the step this thread is running.
    static STEP: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// While alive, the calling thread runs step `id` ([`transfer_here`]).
pub(super) struct WithinStep(Option<usize>);

impl WithinStep {
    pub(super) fn enter(id: usize) -> WithinStep {
        WithinStep(STEP.with(|s| s.replace(Some(id))))
    }
}

impl Drop for WithinStep {
    fn drop(&mut self) {
        STEP.with(|s| s.set(self.0));
    }
}

/// Where a download made now reports: inside the step this thread runs
/// (byte counts under it, as BuildKit shows a pull under FROM), else as
/// a step of its own.
pub(super) fn transfer_here(ctx: &Ctx<'_>) -> Arc<dyn crate::registry::transfer::Transfer> {
    STEP.with(|s| s.get())
        .and_then(|step| ctx.options.transfer.within(step))
        .unwrap_or_else(|| ctx.options.transfer.clone())
}

/// sha256 of the versioned key inputs (canonical JSON).
pub(super) fn step_key(inputs: serde_json::Value) -> cache::index::CacheKey {
    use sha2::{Digest as _, Sha256};
    let bytes = serde_json::to_vec(&inputs).expect("key inputs serialise");
    let hex: String = Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    cache::index::CacheKey::new(&hex).expect("sha256 hex is a key")
}

/// A usable cache record: its snapshot and layer blob are still there.
pub(super) fn lookup(
    store: &Store,
    key: &cache::index::CacheKey,
) -> anyhow::Result<Option<StepRecord>> {
    let Some(rec) = store.index.get(key)? else {
        return Ok(None);
    };
    let Ok(step) = serde_json::from_str::<StepRecord>(&rec.result) else {
        return Ok(None);
    };
    if !step.unmade && store.snapshots.get(&step.snapshot).is_err() {
        return Ok(None);
    }
    if let Some(l) = &step.layer
        && !store.blobs.contains(&l.digest.parse()?)
    {
        return Ok(None);
    }
    Ok(Some(step))
}

pub(super) fn record(
    store: &Store,
    key: &cache::index::CacheKey,
    step: &StepRecord,
) -> anyhow::Result<()> {
    let now = cache::index::now();
    store.index.put(&cache::index::Record {
        key: key.clone(),
        result: serde_json::to_string(step)?,
        snapshot: (!step.unmade).then(|| step.snapshot.clone()),
        blobs: step.layer.iter().map(|l| l.digest.clone()).collect(),
        size: step.layer.as_ref().map_or(step.pending_size, |l| l.size),
        created: now,
        last_used: now,
    })?;
    Ok(())
}

/// What of the layer options changes a layer's bytes: part of every key.
pub(super) fn layer_key(options: &BuildOptions<'_>) -> String {
    // `diff2`: layers hold what BuildKit's differs count as changed (steps
    // recorded before wrote copied-up directories and .wh..opq).
    format!(
        "uncompressed diff2 clamp {:?}",
        options.epoch.filter(|_| options.rewrite_timestamp)
    )
}

/// A snapshot-making step: its record from the cache index under `key`
/// (unless `skip_cache`; or an imported cache's, made when needed), else
/// `run` fills a new snapshot on `parent`, which
/// is committed and recorded. The key's lock is held throughout: a step
/// another build is making is waited for, then taken from the cache.
pub(super) fn cached_step(
    ctx: &Ctx<'_>,
    step: &Step<'_>,
    (key, inputs): (&cache::index::CacheKey, &str),
    parent: &Snap,
    (id, started): (usize, Instant),
    run: impl FnOnce(&cache::snapshot::MutableSnapshot) -> anyhow::Result<()>,
) -> anyhow::Result<Taken> {
    // Downloads this step waits for show inside it.
    let _within = WithinStep::enter(id);
    let _lock = ctx.store.index.lock_key(key)?;
    let found = if step.skip_cache {
        None
    } else {
        // Kept from any prune while this build lives.
        ctx.store
            .using_record(key.as_str(), || lookup(ctx.store, key))??
            // An unmade record this build found unusable runs instead.
            .filter(|r| !(r.unmade && rejected(ctx, key)))
            .map(|r| Taken::of(r, key, parent))
            .or_else(|| imported_hit(ctx, key, parent))
    };
    if let Some(taken) = found {
        note_step(ctx, step, key, inputs, (id, true))?;
        saw(ctx, key, inputs);
        ctx.progress.cached(id);
        return Ok(taken);
    }
    note_step(ctx, step, key, inputs, (id, false))?;
    // The parent's files are needed now (a base image's layers unpack).
    let parent = parent.get(ctx)?;
    let m = ctx.store.snapshots.prepare(parent.as_deref())?;
    run(&m)?;
    let (snap, layer, changed) = ctx.store.making_snapshot(
        || m.commit_lazy(&ctx.store.blobs, &ctx.layer_options),
        |(snap, _, _)| &snap.id,
    )?;
    let step = match layer {
        Some(layer) => new_step(snap.id, &layer, ctx.options.epoch),
        None => StepRecord {
            snapshot: snap.id,
            layer: None,
            diff_id: None,
            created: rfc3339(ctx.options.epoch.unwrap_or_else(cache::index::now)),
            pending: changed > 0,
            pending_size: changed,
            imported: false,
            unmade: false,
        },
    };
    ctx.store
        .using_record(key.as_str(), || record(ctx.store, key, &step))??;
    saw(ctx, key, inputs);
    ctx.progress.done(id, started);
    Ok(Taken::of(step, key, &Snap::default()))
}

/// A new step's record: its snapshot, its layer (unless empty) and when it
/// was made (SOURCE_DATE_EPOCH when set).
pub(super) fn new_step(
    snapshot: String,
    layer: &cache::layer::Layer,
    epoch: Option<i64>,
) -> StepRecord {
    let diff_id = non_empty(layer);
    StepRecord {
        snapshot,
        layer: diff_id.as_ref().map(|_| layer.descriptor.clone()),
        diff_id,
        created: rfc3339(epoch.unwrap_or_else(cache::index::now)),
        pending: false,
        pending_size: 0,
        imported: false,
        unmade: false,
    }
}

/// Writes the pending layer of the step recorded under `key` (once: under
/// the key's lock, another build may have written it meanwhile) and
/// returns its descriptor and diff_id. An empty tar means no layer.
pub(super) fn write_pending_layer(
    ctx: &Ctx<'_>,
    key: &str,
) -> anyhow::Result<Option<(Descriptor, String)>> {
    let key = cache::index::CacheKey::new(key)?;
    let _lock = ctx.store.index.lock_key(&key)?;
    let step = lookup(ctx.store, &key)?
        .ok_or_else(|| anyhow!("the record of a pending layer ({}) is gone", key.as_str()))?;
    if !step.pending {
        return Ok(step.layer.zip(step.diff_id));
    }
    let layer = ctx
        .store
        .snapshots
        .layer(&step.snapshot, &ctx.store.blobs, &ctx.layer_options)?;
    let done = new_step(step.snapshot, &layer, None);
    let written = StepRecord {
        created: step.created,
        ..done
    };
    record(ctx.store, &key, &written)?;
    Ok(written.layer.zip(written.diff_id))
}

/// A history entry's `created_by` as the instruction a user wrote: BuildKit
/// writes RUN as `RUN /bin/sh -c CMD # buildkit`.
fn step_words(created_by: &str) -> String {
    if created_by.is_empty() {
        return "a step".into();
    }
    let words = created_by.trim_end_matches(" # buildkit");
    match words.strip_prefix("RUN /bin/sh -c ") {
        Some(cmd) => format!("RUN {cmd}"),
        None => words.to_string(),
    }
}

/// Writes the pending layers of an image (the target's) and puts the real
/// descriptors and diff_ids in place of the placeholders.
pub(super) fn resolve_layers(
    ctx: &Ctx<'_>,
    layers: &mut Vec<Descriptor>,
    config: &mut cache::spec::ImageConfig,
) -> anyhow::Result<()> {
    let mut resolved: BTreeMap<String, Option<(Descriptor, String)>> = BTreeMap::new();
    // The step each layer is from, for messages: history entries with a
    // layer pair with the layers in order.
    let mut made_by = config
        .history
        .iter()
        .filter(|h| !h.empty_layer)
        .map(|h| h.created_by.as_deref().unwrap_or_default());
    for l in layers.iter() {
        let step = made_by.next().unwrap_or_default();
        if let Some(key) = l.digest.strip_prefix("pending:")
            && !resolved.contains_key(&l.digest)
        {
            let layer = write_pending_layer(ctx, key)
                .with_context(|| format!("writing the layer of {}", step_words(step)))?;
            resolved.insert(l.digest.clone(), layer);
        }
    }
    if resolved.is_empty() {
        return Ok(());
    }
    let mut out = Vec::with_capacity(layers.len());
    for l in layers.drain(..) {
        match resolved.get(&l.digest) {
            Some(Some((d, _))) => out.push(d.clone()),
            Some(None) => {}
            None => out.push(l),
        }
    }
    *layers = out;
    // A step whose changes came to an empty tar adds no layer: its history
    // entry says so (history entries with a layer pair with diff_ids in
    // order).
    let mut diff_ids_in_order = config.rootfs.diff_ids.iter();
    for h in config.history.iter_mut().filter(|h| !h.empty_layer) {
        match diff_ids_in_order.next() {
            Some(d) if matches!(resolved.get(d), Some(None)) => h.empty_layer = true,
            Some(_) => {}
            None => break,
        }
    }
    let diff_ids = std::mem::take(&mut config.rootfs.diff_ids);
    config.rootfs.diff_ids = diff_ids
        .into_iter()
        .filter_map(|d| match resolved.get(&d) {
            Some(Some((_, diff_id))) => Some(diff_id.clone()),
            Some(None) => None,
            None => Some(d),
        })
        .collect();
    Ok(())
}

/// An empty tar (two zero blocks) is no layer.
pub(super) fn non_empty(layer: &cache::layer::Layer) -> Option<String> {
    (layer.uncompressed_size > 1024).then(|| layer.diff_id.to_string())
}
