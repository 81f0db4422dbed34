//! Base images: their configs for the graph compiler and their layers as
//! snapshots (the local store and build-context aliases).

use super::*;

/// Base image configs from the local image store (and build-context
/// aliases), for graph compilation.
pub struct LocalImages<'a>(pub &'a Store, pub &'a crate::images::Aliases);

impl ImageConfigs for LocalImages<'_> {
    fn config(&self, reference: &str) -> Option<frontend::graph::BaseConfig> {
        let img = crate::images::find_with(&self.0.blobs, self.1, reference).ok()??;
        let (_, cfg) = crate::images::read(&self.0.blobs, &img).ok()?;
        let c = cfg.config;
        Some(frontend::graph::BaseConfig {
            env: c
                .env
                .unwrap_or_default()
                .iter()
                .map(|e| {
                    let (k, v) = e.split_once('=').unwrap_or((e, ""));
                    (k.to_string(), v.to_string())
                })
                .collect(),
            workdir: c.working_dir.unwrap_or_default(),
            user: c.user.unwrap_or_default(),
            shell: c.shell.unwrap_or_default(),
            onbuild: c.on_build.unwrap_or_default(),
        })
    }
}

/// Imports a local image's layers as snapshots (once per chain id).
pub(super) fn import_image(
    store: &Store,
    aliases: &crate::images::Aliases,
    reference: &str,
    epoch: Option<i64>,
) -> anyhow::Result<Done> {
    let Some(img) = crate::images::find_with(&store.blobs, aliases, reference)? else {
        bail!(
            "image {reference} is not in the local image store (pulling from a registry is not supported yet; see `rbuild images`)"
        );
    };
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
