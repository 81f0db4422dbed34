//! Base images: the image found (or pulled) by the build's
//! [`crate::resolver::Resolver`], its layers unpacked as snapshots the
//! first time a step needs them; and [`Snap`], a filesystem state that
//! may be made late (a base image's, an imported cache hit's).

use super::*;

/// A filesystem state: made, or not yet: a base image's layers or an
/// imported cache hit (fetched and unpacked the first time a step or an
/// output needs the files; a build whose steps all come from the cache
/// never does).
#[derive(Clone, Default)]
pub(super) struct Snap {
    ready: Option<String>,
    lazy: Option<Arc<Lazy>>,
}

/// What a [`Snap`] not made yet is made from.
pub(super) enum Lazy {
    /// A base image's layers.
    Base(LazyBase),
    /// A step's layer in an imported cache, on its parent's state.
    Imported(super::shared::LazyImported),
}

impl Snap {
    /// A made snapshot (None: the empty filesystem).
    pub(super) fn ready(id: Option<String>) -> Snap {
        Snap {
            ready: id,
            lazy: None,
        }
    }

    /// A state made from `lazy` when first needed.
    pub(super) fn lazy(lazy: Lazy) -> Snap {
        Snap {
            ready: None,
            lazy: Some(Arc::new(lazy)),
        }
    }

    /// The snapshot, made now if it is not yet.
    pub(super) fn get(&self, ctx: &Ctx<'_>) -> anyhow::Result<Option<String>> {
        match self.lazy.as_deref() {
            Some(Lazy::Base(base)) => base.get(ctx),
            Some(Lazy::Imported(hit)) => hit.get(ctx),
            None => Ok(self.ready.clone()),
        }
    }

    /// The snapshot if it is made (a step that ran made it).
    pub(super) fn made(&self) -> Option<&str> {
        self.ready.as_deref()
    }
}

/// A base image's layers, unpacked once on first use.
pub(super) struct LazyBase {
    reference: String,
    layers: Vec<Descriptor>,
    diff_ids: Vec<String>,
    made: std::sync::Mutex<Option<Option<String>>>,
}

impl LazyBase {
    fn get(&self, ctx: &Ctx<'_>) -> anyhow::Result<Option<String>> {
        let mut made = lock(&self.made);
        if let Some(id) = &*made {
            return Ok(id.clone());
        }
        let store = ctx.store;
        let images = ctx.options.images;
        crate::publish::fetch_missing(
            &|| images.registry(),
            store,
            &self.layers,
            &transfer_here(ctx),
        )
        .with_context(|| format!("fetching the layers of {}", self.reference))?;
        let mut parent: Option<String> = None;
        let mut diff_ids: Vec<cache::Digest> = Vec::new();
        for (layer, diff_id) in self.layers.iter().zip(&self.diff_ids) {
            diff_ids.push(diff_id.parse()?);
            let chain = cache::layer::chain_id(&diff_ids)
                .expect("at least one")
                .to_string();
            if let Some(snap) = existing(store, &chain)? {
                parent = Some(snap);
                continue;
            }
            let blob = store.blobs.open_verified(&layer.digest.parse()?)?;
            // Kept by this build's lease until the chain's entry keeps it.
            let snap = store.import_snapshot(parent.as_deref(), blob)?;
            store.index.set_snapshot_for_chain(&chain, &snap.id)?;
            parent = Some(snap.id);
        }
        *made = Some(parent.clone());
        Ok(parent)
    }
}

/// The snapshot of layer chain `chain`, if one is made and still there.
fn existing(store: &Store, chain: &str) -> anyhow::Result<Option<String>> {
    Ok(store
        .index
        .snapshot_for_chain(chain)?
        .filter(|snap| store.snapshots.get(snap).is_ok()))
}

/// An image as a stage's start: its config now, its layers' snapshot when
/// a step needs the files (made already when every layer's is).
pub(super) fn import_image(
    store: &Store,
    images: &crate::resolver::Resolver<'_>,
    (reference, platform): (&str, &frontend::stage::Platform),
    epoch: Option<i64>,
) -> anyhow::Result<Done> {
    let img = images.resolve(reference, platform)?;
    let (manifest, config) = crate::images::read(&store.blobs, &img)?;
    let mut digests: Vec<cache::Digest> = Vec::new();
    for d in &config.rootfs.diff_ids {
        digests.push(d.parse()?);
    }
    let top = match cache::layer::chain_id(&digests) {
        None => Some(None),
        Some(chain) => existing(store, &chain.to_string())?.map(Some),
    };
    let snapshot = match top {
        Some(id) => Snap::ready(id),
        None => Snap::lazy(Lazy::Base(LazyBase {
            reference: reference.to_string(),
            layers: manifest.layers.clone(),
            diff_ids: config.rootfs.diff_ids.clone(),
            made: std::sync::Mutex::new(None),
        })),
    };
    // Times from here on: SOURCE_DATE_EPOCH when set (BuildKit stamps the
    // image and every new history entry with it); else the base's until a
    // step has one, so a cached rebuild keeps its image id.
    let created = epoch.map(rfc3339).or_else(|| config.created.clone());
    Ok(Done {
        snapshot,
        layers: manifest.layers,
        image: ImageState::new(Some(config.clone()), created),
        key: Some(format!("image {}", img.manifest.digest)),
    })
}
