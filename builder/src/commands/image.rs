//! `rbuild images`, `inspect`, `tag`, `rmi`, `save`: the local image store.

use std::path::PathBuf;

use anyhow::Context;
use cache::gc::Store;
use cache::layer::Compression;

use crate::commands::store::{human, state_root};
use crate::export::OutputKind;

pub fn images(root: Option<PathBuf>) -> anyhow::Result<()> {
    let store_root = state_root(root);
    let store = cache::blob::BlobStore::open(&store_root.join("content"))?;
    println!(
        "{:<40} {:<20} {:>10}  PLATFORMS",
        "REPOSITORY:TAG", "IMAGE ID", "SIZE"
    );
    for top in crate::images::list(&store)? {
        // An index is shown by its own digest, with the platforms the
        // store holds images of and their layers' size.
        let index = crate::images::is_index(&top.manifest.media_type);
        let mut size = 0;
        let mut platforms = Vec::new();
        let mut id = top.manifest.digest.clone();
        for (platform, img) in crate::images::platform_images(&store, &top)? {
            let (manifest, config) = crate::images::read(&store, &img)?;
            size += manifest.layers.iter().map(|l| l.size).sum::<u64>();
            if !index {
                id = manifest.config.digest.clone();
            }
            let p = platform.or_else(|| {
                (!config.platform.os.is_empty()).then(|| crate::platform::of_spec(&config.platform))
            });
            platforms.extend(p.map(|p| p.to_string()));
        }
        let id: String = id.trim_start_matches("sha256:").chars().take(12).collect();
        println!(
            "{:<40} {:<20} {:>10}  {}",
            top.reference,
            id,
            human(size),
            platforms.join(",")
        );
    }
    Ok(())
}

fn open_store(root: Option<PathBuf>) -> anyhow::Result<Store> {
    super::store::open_state(&state_root(root))
}

fn find(store: &Store, reference: &str) -> anyhow::Result<crate::images::StoredImage> {
    crate::images::find(&store.blobs, reference)?.ok_or_else(|| {
        anyhow::anyhow!("image {reference} not found in the local store (see `rbuild images`)")
    })
}

pub fn inspect(
    root: Option<PathBuf>,
    reference: &str,
    platform: Option<&frontend::stage::Platform>,
) -> anyhow::Result<()> {
    let store = open_store(root)?;
    let top = find(&store, reference)?;
    let img = match platform {
        Some(p) => crate::images::for_platform(&store.blobs, &top, p)?,
        None if crate::images::is_index(&top.manifest.media_type) => {
            // The index, and which of its images the store holds.
            let index = crate::images::read_index(&store.blobs, &top)?;
            let platforms: Vec<serde_json::Value> = index
                .manifests
                .iter()
                .map(|m| {
                    serde_json::json!({
                        "Platform": m.platform.as_ref().map(|p| crate::platform::of_spec(p).to_string()),
                        "Digest": m.digest,
                        "Local": m.digest.parse().is_ok_and(|d| store.blobs.contains(&d)),
                    })
                })
                .collect();
            let out = serde_json::json!({
                "Name": top.reference,
                "Id": top.manifest.digest,
                "Digest": top.manifest.digest,
                "Index": index,
                "Platforms": platforms,
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
            return Ok(());
        }
        None => top,
    };
    let (manifest, config) = crate::images::read(&store.blobs, &img)?;
    let out = serde_json::json!({
        "Name": img.reference,
        "Id": manifest.config.digest,
        "Digest": img.manifest.digest,
        "Manifest": manifest,
        "Config": config,
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

/// `name` as an image's name: an error as buildx words it when it is not a
/// reference.
pub(crate) fn check_tag(name: &str) -> anyhow::Result<()> {
    crate::registry::Reference::parse(name)
        .map(|_| ())
        .map_err(|e| anyhow::anyhow!("invalid tag {name:?}: {e}"))
}

pub fn tag(root: Option<PathBuf>, source: &str, target: &str) -> anyhow::Result<()> {
    check_tag(target)?;
    let store = open_store(root)?;
    let img = find(&store, source)?;
    crate::images::tag_manifest(&store.blobs, &img.manifest, target)
}

pub fn rmi(root: Option<PathBuf>, references: &[String]) -> anyhow::Result<()> {
    let store = open_store(root)?;
    for r in references {
        let img = find(&store, r)?;
        store.blobs.update_index(|idx| {
            idx.manifests.retain(|d| {
                d.annotations
                    .as_ref()
                    .and_then(|a| a.get(crate::images::REF_NAME))
                    != Some(&img.reference)
            });
        })?;
        println!("Untagged: {}", img.reference);
    }
    Ok(())
}

/// `platform`'s image of `img`, or what of `img` the store holds
/// ([`crate::images::local_part`]) with a warning naming the platforms of
/// its index left out.
pub(crate) fn local_image(
    store: &Store,
    img: &crate::images::StoredImage,
    platform: Option<&frontend::stage::Platform>,
) -> anyhow::Result<cache::spec::Descriptor> {
    if let Some(p) = platform {
        let mut one = crate::images::for_platform(&store.blobs, img, p)?.manifest;
        one.platform = None;
        return Ok(one);
    }
    let (manifest, left_out) = crate::images::local_part(&store.blobs, img)?;
    if !left_out.is_empty() {
        eprintln!(
            "WARNING: {}: the images for {} are not in the local store; left out (pull them with --platform to keep them)",
            img.reference,
            left_out.join(", ")
        );
    }
    Ok(manifest)
}

pub fn save(
    root: Option<PathBuf>,
    output: &str,
    format: &str,
    references: &[String],
    platform: Option<&frontend::stage::Platform>,
) -> anyhow::Result<()> {
    if references.len() > 1 {
        anyhow::bail!("saving several images in one archive is not supported yet");
    }
    let store_root = state_root(root.clone());
    let store = open_store(root)?;
    let img = find(&store, &references[0])?;
    let manifest = local_image(&store, &img, platform)?;
    // A base pulled for a build may still lack layers nobody unpacked.
    let registry = std::cell::OnceCell::new();
    crate::publish::fetch_image_layers(
        || match registry.get() {
            Some(r) => Ok(r),
            None => {
                let r = crate::registry::Registry::new(crate::registry::hosts::Settings::load(
                    &store_root,
                )?)?;
                Ok(registry.get_or_init(|| r))
            }
        },
        &store,
        &manifest,
        &(std::sync::Arc::new(crate::registry::transfer::Silent)
            as std::sync::Arc<dyn crate::registry::transfer::Transfer>),
    )?;
    let kind: OutputKind = format.parse().map_err(anyhow::Error::msg)?;
    let out = crate::export::Output::new(kind, Some(output));
    let format = crate::export::LayerFormat {
        compression: Compression::Gzip,
        level: None,
        force: false,
    };
    crate::export::export_image(
        &store,
        &manifest,
        &out,
        std::slice::from_ref(&img.reference),
        format,
    )
    .with_context(|| format!("writing {output}"))
}
