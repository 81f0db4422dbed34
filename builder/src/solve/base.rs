//! Base images: their layers as snapshots, the image found (or pulled) by
//! the build's [`crate::resolver::Resolver`].

use super::*;

/// Imports an image's layers as snapshots (once per chain id).
pub(super) fn import_image(
    store: &Store,
    images: &crate::resolver::Resolver<'_>,
    reference: &str,
    epoch: Option<i64>,
) -> anyhow::Result<Done> {
    let img = images.resolve(reference)?;
    let (manifest, config) = crate::images::read(&store.blobs, &img)?;
    let mut parent: Option<String> = None;
    let mut diff_ids: Vec<cache::Digest> = Vec::new();
    for (layer, diff_id) in manifest.layers.iter().zip(&config.rootfs.diff_ids) {
        diff_ids.push(diff_id.parse()?);
        let chain = cache::layer::chain_id(&diff_ids)
            .expect("at least one")
            .to_string();
        if let Some(snap) = store.index.snapshot_for_chain(&chain)?
            && store.snapshots.get(&snap).is_ok()
        {
            parent = Some(snap);
            continue;
        }
        let blob = store.blobs.open_verified(&layer.digest.parse()?)?;
        let snap = store.snapshots.import(parent.as_deref(), blob)?;
        store.index.set_snapshot_for_chain(&chain, &snap.id)?;
        parent = Some(snap.id);
    }
    // Times from here on: SOURCE_DATE_EPOCH when set (BuildKit stamps the
    // image and every new history entry with it); else the base's until a
    // step has one, so a cached rebuild keeps its image id.
    let created = epoch.map(rfc3339).or_else(|| config.created.clone());
    Ok(Done {
        snapshot: parent,
        layers: manifest.layers,
        image: ImageState::new(Some(config.clone()), created),
        key: Some(format!("image {}", img.manifest.digest)),
    })
}
