//! Writing a cache: each record's layer compressed (gzip, once per layer),
//! a config listing the records in BuildKit's `cacheconfig.v0` shape, and
//! an OCI manifest over both, into an OCI layout directory (tagged in its
//! index.json) or pushed to a registry.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Context;
use cache::blob::BlobStore;
use cache::gc::Store;
use cache::layer::Compression;
use cache::spec::{Descriptor, Manifest, media, to_canonical_json};
use serde_json::json;

use super::spec::{CacheTo, Location};
use super::{CACHE_CONFIG, CACHE_MOUNT, CacheRecord, UNCOMPRESSED};
use crate::export::LayerFormat;
use crate::registry::transfer::Transfer;

/// Each cache mount's directory as a gzip tar in `store`, annotated with
/// its id.
fn cache_mount_blobs(
    store: &Store,
    mounts: &[(String, std::path::PathBuf)],
) -> anyhow::Result<Vec<Descriptor>> {
    let mut out = Vec::new();
    for (id, dir) in mounts {
        let writer = store.blobs.writer()?;
        let gz = flate2::write::GzEncoder::new(writer, flate2::Compression::fast());
        let gz = cache::layer::write_tree_tar(dir, gz, None)
            .with_context(|| format!("reading the cache mount {id} ({})", dir.display()))?;
        let (digest, size) = gz.finish()?.commit(None)?;
        let mut d = Descriptor::new(media::OCI_LAYER_GZIP, &digest, size);
        d.annotations = Some(BTreeMap::from([(CACHE_MOUNT.to_string(), id.clone())]));
        out.push(d);
    }
    Ok(out)
}

/// The manifest of `records` (and the cache mounts' blobs), stored in
/// `store` with its config and (compressed) layers; returns its descriptor.
fn write_manifest(
    store: &Store,
    records: &[CacheRecord],
    mounts: Vec<Descriptor>,
) -> anyhow::Result<Descriptor> {
    let gzip = LayerFormat {
        compression: Compression::Gzip,
        level: None,
        force: false,
    };
    let mut layers: Vec<Descriptor> = Vec::new();
    let mut index_of: BTreeMap<String, usize> = BTreeMap::new();
    let mut config_layers = Vec::new();
    let mut config_records = Vec::new();
    for r in records {
        let Some((layer, diff_id)) = &r.layer else {
            config_records.push(json!({
                "digest": format!("sha256:{}", r.key),
                "createdAt": r.created,
            }));
            continue;
        };
        let stored =
            if layer.media_type == media::OCI_LAYER || layer.media_type == media::DOCKER_LAYER {
                crate::export::converted_layer(store, layer, gzip)?
            } else {
                layer.clone()
            };
        let i = *index_of.entry(stored.digest.clone()).or_insert_with(|| {
            let mut d = stored.clone();
            d.annotations = Some(BTreeMap::from([(
                UNCOMPRESSED.to_string(),
                diff_id.clone(),
            )]));
            layers.push(d);
            config_layers.push(json!({"blob": stored.digest, "parent": -1}));
            layers.len() - 1
        });
        config_records.push(json!({
            "digest": format!("sha256:{}", r.key),
            "layers": [{"layer": i, "createdAt": r.created}],
        }));
    }
    let mount_list: Vec<serde_json::Value> = mounts
        .iter()
        .map(|d| {
            let id = d.annotations.as_ref().and_then(|a| a.get(CACHE_MOUNT));
            json!({"id": id, "blob": d.digest})
        })
        .collect();
    layers.extend(mounts);
    let config = json!({
        "layers": config_layers,
        "records": config_records,
        "rbuild.cacheMounts": mount_list,
    });
    let config_bytes = serde_json::to_vec(&config)?;
    let config_digest = store.blobs.put_bytes(&config_bytes)?;
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(media::OCI_MANIFEST.into()),
        artifact_type: None,
        config: Descriptor::new(CACHE_CONFIG, &config_digest, config_bytes.len() as u64),
        layers,
        subject: None,
        annotations: None,
    };
    let bytes = to_canonical_json(&manifest);
    let digest = store.blobs.put_bytes(&bytes)?;
    Ok(Descriptor::new(
        media::OCI_MANIFEST,
        &digest,
        bytes.len() as u64,
    ))
}

/// Writes `records` where `to` says.
pub fn export(
    store: &Store,
    records: &[CacheRecord],
    cache_mounts: &[(String, std::path::PathBuf)],
    to: &CacheTo,
    images: &crate::resolver::Resolver<'_>,
    transfer: &Arc<dyn Transfer>,
) -> anyhow::Result<()> {
    if to.location == Location::Inline {
        // Written into the image's config when it is made.
        return Ok(());
    }
    let mounts = if to.cache_mounts {
        cache_mount_blobs(store, cache_mounts)?
    } else {
        Vec::new()
    };
    let manifest = write_manifest(store, records, mounts)?;
    match &to.location {
        Location::Inline => Ok(()),
        Location::Local { dir, tag } => to_layout(store, &manifest, dir, tag)
            .with_context(|| format!("--cache-to type=local,dest={dir}")),
        Location::Registry(reference) => {
            let parsed = crate::registry::Reference::parse(reference)
                .with_context(|| format!("--cache-to ref={reference}"))?
                .with_default_tag();
            images
                .registry()?
                .push(
                    &store.blobs,
                    &manifest,
                    &parsed,
                    &crate::publish::mount_sources(store, &parsed.domain),
                    transfer,
                )
                .with_context(|| format!("--cache-to ref={reference}"))
        }
    }
}

/// The inline cache of an image (BuildKit's `moby.buildkit.cache.v0`
/// config field: base64 of the JSON list of records, as BuildKit's
/// `json.Marshal` of a byte slice gives): the records whose layers are the
/// image's own, each naming its top layer by position in the image (the
/// layers below it are its parents, as BuildKit reads an inline cache).
/// None when no record is.
pub fn inline_cache(records: &[CacheRecord], diff_ids: &[String]) -> Option<String> {
    use base64::Engine as _;
    let mut out = Vec::new();
    for r in records {
        match &r.layer {
            Some((_, diff_id)) => {
                let Some(i) = diff_ids.iter().position(|d| d == diff_id) else {
                    continue;
                };
                out.push(json!({
                    "digest": format!("sha256:{}", r.key),
                    "layers": [{"layer": i, "createdAt": r.created}],
                }));
            }
            None => out.push(json!({
                "digest": format!("sha256:{}", r.key),
                "createdAt": r.created,
            })),
        }
    }
    if out.is_empty() {
        return None;
    }
    Some(base64::engine::general_purpose::STANDARD.encode(json!(out).to_string()))
}

/// Copies the manifest and what it names into the OCI layout `dir`, and
/// points `tag` at it in the layout's index.json.
fn to_layout(store: &Store, manifest: &Descriptor, dir: &str, tag: &str) -> anyhow::Result<()> {
    let layout = BlobStore::open(std::path::Path::new(dir))?;
    let m: Manifest = serde_json::from_slice(&store.blobs.read(&manifest.digest.parse()?)?)?;
    for d in std::iter::once(&m.config)
        .chain(&m.layers)
        .chain(std::iter::once(manifest))
    {
        let digest = d.digest.parse()?;
        if !layout.contains(&digest) {
            layout.put(store.blobs.open_verified(&digest)?, Some((&digest, d.size)))?;
        }
    }
    let mut entry = manifest.clone();
    entry.annotations = Some(BTreeMap::from([(
        crate::images::REF_NAME.to_string(),
        tag.to_string(),
    )]));
    layout.update_index(|idx| {
        idx.manifests.retain(|d| {
            d.annotations
                .as_ref()
                .and_then(|a| a.get(crate::images::REF_NAME))
                .is_none_or(|t| t != tag)
        });
        idx.manifests.push(entry);
    })?;
    // The store's own bookkeeping is not part of an OCI layout.
    let _ = std::fs::remove_dir_all(std::path::Path::new(dir).join("blobs/.tmp"));
    let _ = std::fs::remove_file(std::path::Path::new(dir).join("index.json.lock"));
    Ok(())
}
