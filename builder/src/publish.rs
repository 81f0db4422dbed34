//! Moving images between the local store and registries: a pull tagged
//! in the store with where it came from, and a push of a stored image
//! with its layers compressed and media types as the output asks (blobs
//! mounted from repositories local images were pulled from).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use anyhow::Context;
use cache::blob::BlobStore;
use cache::gc::Store;
use cache::spec::{Descriptor, Manifest};
use frontend::stage::Platform;

use crate::export::LayerFormat;
use crate::images::{self, SOURCE, StoredImage};
use crate::registry::transfer::Transfer;
use crate::registry::{Reference, Registry};

/// Pulls `reference`'s image for `platform` into `blobs` and tags it there
/// under the name given (with `:latest` when it names no tag or digest):
/// the index it came through when there is one (the images of other
/// platforms join it when they are pulled), else the image. Returns what
/// the tag names.
pub fn pull_image(
    registry: &Registry,
    blobs: &BlobStore,
    reference: &str,
    platform: &Platform,
    with_layers: bool,
    transfer: &Arc<dyn Transfer>,
) -> anyhow::Result<StoredImage> {
    let given = Reference::parse(reference).with_context(|| format!("pulling {reference}"))?;
    let name = if given.tag.is_none() && given.digest.is_none() {
        format!("{reference}:latest")
    } else {
        reference.to_string()
    };
    let parsed = given.with_default_tag();
    let pulled = registry
        .pull(blobs, &parsed, platform, with_layers, transfer)
        .with_context(|| format!("pulling {parsed}"))?;
    let mut desc = pulled.index.unwrap_or(pulled.manifest);
    desc.annotations = Some(BTreeMap::from([(SOURCE.to_string(), pulled.source)]));
    images::tag_manifest(blobs, &desc, &name)?;
    let mut image = images::find(blobs, &name)?.expect("just tagged");
    image.reference = name;
    Ok(image)
}

/// Where each blob of a local image was pulled from (`domain/path`), by
/// digest.
fn blob_sources(store: &Store) -> HashMap<String, String> {
    mount_sources(store, "")
}

/// Fetches the layers of `layers` the store lacks from the repositories
/// their images were pulled from (a base image is pulled without its
/// layers until a step or an output needs them).
pub fn fetch_missing<'r>(
    registry: &impl Fn() -> anyhow::Result<&'r Registry>,
    store: &Store,
    layers: &[Descriptor],
    transfer: &Arc<dyn Transfer>,
) -> anyhow::Result<()> {
    let blobs = &store.blobs;
    let missing: Vec<&Descriptor> = layers
        .iter()
        .filter(|d| !d.digest.parse().is_ok_and(|g| blobs.contains(&g)))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let sources = blob_sources(store);
    for d in missing {
        let Some(source) = sources.get(&d.digest) else {
            anyhow::bail!(
                "layer {} is not in the local store and no image it came from names a registry",
                d.digest
            );
        };
        let reference = Reference::parse(source)?;
        registry()?
            .fetch_blob(blobs, &reference, d, transfer)
            .with_context(|| format!("fetching layer {} from {source}", d.digest))?;
    }
    Ok(())
}

/// Blobs of `domain`'s repositories that local images were pulled from
/// (or that were fetched from there without an image: imported cache
/// layers), by digest: the pushes' cross-repository mount sources (every
/// registry's, as `domain/path`, when `domain` is empty).
pub fn mount_sources(store: &Store, domain: &str) -> HashMap<String, String> {
    let blobs = &store.blobs;
    let mut out = HashMap::new();
    let prefix = if domain.is_empty() {
        String::new()
    } else {
        format!("{domain}/")
    };

    for top in images::list(blobs).unwrap_or_default() {
        let Some(repo) = top
            .manifest
            .annotations
            .as_ref()
            .and_then(|a| a.get(SOURCE))
            .and_then(|s| s.strip_prefix(&prefix))
        else {
            continue;
        };
        for (_, img) in images::platform_images(blobs, &top).unwrap_or_default() {
            let Ok(digest) = img.manifest.digest.parse() else {
                continue;
            };
            let Ok(m) = blobs
                .read(&digest)
                .map_err(anyhow::Error::from)
                .and_then(|b| Ok(serde_json::from_slice::<Manifest>(&b)?))
            else {
                continue;
            };
            for l in m.layers.iter().chain([&m.config]) {
                out.entry(l.digest.clone())
                    .or_insert_with(|| repo.to_string());
            }
        }
    }
    // Then blobs fetched without an image (imported cache layers).
    for (digest, source) in store.index.blob_sources().unwrap_or_default() {
        if let Some(repo) = source.strip_prefix(&prefix) {
            out.entry(digest).or_insert_with(|| repo.to_string());
        }
    }
    out
}

/// The layers of the image `manifest` (or of each image of an index) the
/// store lacks, fetched (see [`fetch_missing`]): before anything reads
/// them all. An index's image that is not in the store is an error.
pub fn fetch_image_layers<'r>(
    registry: impl Fn() -> anyhow::Result<&'r Registry>,
    store: &Store,
    manifest: &Descriptor,
    transfer: &Arc<dyn Transfer>,
) -> anyhow::Result<()> {
    for image in images::image_manifests(&store.blobs, manifest)? {
        fetch_missing(&registry, store, &image.manifest.layers, transfer)?;
    }
    Ok(())
}

/// Pushes the image `manifest` of the store as `target`, its layers
/// compressed as `format` asks (the store keeps rbuild's own layers
/// uncompressed) and with OCI or Docker media types; returns the manifest
/// pushed.
pub fn push_image(
    registry: &Registry,
    store: &Store,
    manifest: &Descriptor,
    target: &str,
    format: LayerFormat,
    oci_media_types: bool,
    transfer: &Arc<dyn Transfer>,
) -> anyhow::Result<Descriptor> {
    let reference = Reference::parse(target)
        .with_context(|| format!("pushing {target}"))?
        .with_default_tag();
    fetch_image_layers(|| Ok(registry), store, manifest, transfer)
        .with_context(|| format!("pushing {reference}"))?;
    let pushed = crate::export::converted_image(store, manifest, format, oci_media_types)
        .with_context(|| format!("pushing {reference}"))?;
    let mounts = mount_sources(store, &reference.domain);
    registry
        .push(&store.blobs, &pushed, &reference, &mounts, transfer)
        .with_context(|| format!("pushing {reference}"))?;
    Ok(pushed)
}
