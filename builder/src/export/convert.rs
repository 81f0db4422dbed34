//! An image's layers in the compression and media types an export asks
//! for: converted once per format and stored.

use anyhow::Context;
use cache::blob::BlobStore;
use cache::gc::Store;
use cache::layer::Compression;
use cache::spec::{Descriptor, Index, Manifest, media, to_canonical_json};

use super::*;

/// Whether `out`'s manifest gets OCI media types: as asked, by default
/// except for `type=docker`; zstd layers have no Docker media type that
/// readers take, so they force OCI ones (as BuildKit does).
pub fn oci_media_types(out: &Output, format: LayerFormat) -> bool {
    format.compression == Compression::Zstd
        || out
            .oci_media_types
            .unwrap_or(out.kind != OutputKind::Docker)
}

/// `manifest` with OCI media types, or converted to Docker's (stored).
pub fn with_media_types(
    blobs: &BlobStore,
    manifest: &Descriptor,
    oci: bool,
) -> anyhow::Result<Descriptor> {
    Ok(manifest_for(blobs, manifest, oci)?.0)
}

/// The compression an export wants for its layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerFormat {
    /// gzip, zstd or none.
    pub compression: Compression,
    /// `compression-level=`.
    pub level: Option<i32>,
    /// `force-compression=true`.
    pub force: bool,
}

impl LayerFormat {
    /// `out`'s format, `default` (`--compression`) when it names none.
    pub fn of(out: &Output, default: Compression) -> anyhow::Result<LayerFormat> {
        Ok(LayerFormat {
            compression: out.compression.unwrap_or(default),
            level: out.compression_level,
            force: out.force_compression,
        })
    }

    /// Names the format in the conversion table.
    fn key(&self) -> String {
        format!("{:?} level {:?}", self.compression, self.level)
    }
}

/// The compression a layer media type says.
fn compression_of(media_type: &str) -> Compression {
    if media_type.ends_with("gzip") {
        Compression::Gzip
    } else if media_type.ends_with("zstd") {
        Compression::Zstd
    } else {
        Compression::Uncompressed
    }
}

/// The image `manifest` with its layers in `format`, stored. Layers rbuild
/// made are kept uncompressed in the store and compressed here; layers of a
/// base image keep their compression unless `force-compression` is set or
/// the export asks for uncompressed layers, as BuildKit treats existing
/// blobs. Each conversion is recorded, so a layer is compressed once per
/// format, not once per export.
pub fn converted_manifest(
    store: &Store,
    manifest: &Descriptor,
    format: LayerFormat,
) -> anyhow::Result<Descriptor> {
    let blobs = &store.blobs;
    let mut m: Manifest = serde_json::from_slice(&blobs.read(&manifest.digest.parse()?)?)?;
    let mut changed = false;
    for layer in &mut m.layers {
        let have = compression_of(&layer.media_type);
        let wanted = format.compression;
        let convert = (have != wanted
            && (have == Compression::Uncompressed
                || wanted == Compression::Uncompressed
                || format.force))
            || (format.force && format.level.is_some());
        if !convert {
            continue;
        }
        let converted = converted_layer(store, layer, format)?;
        *layer = Descriptor {
            annotations: layer.annotations.clone(),
            ..converted
        };
        changed = true;
    }
    if !changed {
        return Ok(manifest.clone());
    }
    let bytes = to_canonical_json(&m);
    let digest = blobs.put_bytes(&bytes)?;
    Ok(Descriptor::new(
        media::OCI_MANIFEST,
        &digest,
        bytes.len() as u64,
    ))
}

/// `layer` compressed as `format` asks, stored; each conversion is
/// recorded in the index, so a layer is compressed once per format.
pub fn converted_layer(
    store: &Store,
    layer: &Descriptor,
    format: LayerFormat,
) -> anyhow::Result<Descriptor> {
    let blobs = &store.blobs;
    let key = format.key();
    let known = store
        .index
        .conversion(&layer.digest, &key)?
        .filter(|(d, _, _)| d.parse().is_ok_and(|d| blobs.contains(&d)));
    if let Some((digest, size, media_type)) = known {
        return Ok(Descriptor::new(&media_type, &digest.parse()?, size));
    }
    let options = cache::layer::LayerOptions {
        compression: format.compression,
        level: format.level,
        ..cache::layer::LayerOptions::default()
    };
    let d = cache::layer::convert_layer(blobs, layer, &options)
        .with_context(|| format!("compressing layer {}", layer.digest))?;
    store
        .index
        .set_conversion(&layer.digest, &key, (&d.digest, d.size, &d.media_type))?;
    Ok(d)
}

/// The image `top` (one image, or an index of images) with its layers in
/// `format` and OCI or Docker media types, stored; an index keeps each
/// entry's platform.
pub fn converted_image(
    store: &Store,
    top: &Descriptor,
    format: LayerFormat,
    oci: bool,
) -> anyhow::Result<Descriptor> {
    let blobs = &store.blobs;
    if !crate::images::is_index(&top.media_type) {
        let converted = converted_manifest(store, top, format)?;
        return with_media_types(blobs, &converted, oci);
    }
    let mut index: Index = serde_json::from_slice(&blobs.read(&top.digest.parse()?)?)?;
    for entry in &mut index.manifests {
        let converted = converted_manifest(store, entry, format)?;
        let d = with_media_types(blobs, &converted, oci)?;
        *entry = Descriptor {
            platform: entry.platform.take(),
            annotations: entry.annotations.take(),
            ..d
        };
    }
    let media_type = if oci {
        media::OCI_INDEX
    } else {
        media::DOCKER_MANIFEST_LIST
    };
    index.media_type = Some(media_type.into());
    let bytes = to_canonical_json(&index);
    let digest = blobs.put_bytes(&bytes)?;
    Ok(Descriptor::new(media_type, &digest, bytes.len() as u64))
}
