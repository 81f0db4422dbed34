//! Reading caches: each `--cache-from`'s manifest and config (the records)
//! at the start of a build, first source first; a record's layer is
//! fetched (and verified) only when a step hits it. A cache that can't be
//! read is a warning, as in BuildKit: the build goes on without it.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{Context, bail};
use cache::blob::BlobStore;
use cache::spec::{Descriptor, Manifest};

use super::spec::{CacheFrom, Location};
use super::{CACHE_CONFIG, CACHE_MOUNT, CacheRecord, INLINE_FIELD, UNCOMPRESSED};
use crate::registry::Reference;
use crate::registry::transfer::Transfer;

/// Where an imported record's layer is.
enum Source {
    Layout(BlobStore),
    Registry(Reference),
}

/// The records of every `--cache-from`.
#[derive(Default)]
pub struct Imports {
    records: HashMap<String, (CacheRecord, usize)>,
    /// Cache mount contents by mount id.
    mounts: HashMap<String, (Descriptor, usize)>,
    sources: Vec<Source>,
}

impl Imports {
    /// Reads each cache; one that fails is reported through `warn`.
    pub fn load(
        froms: &[CacheFrom],
        images: &crate::resolver::Resolver<'_>,
        warn: &dyn Fn(String),
    ) -> Imports {
        let mut out = Imports::default();
        for from in froms {
            match read(from, images) {
                Ok((source, records, mounts)) => {
                    let i = out.sources.len();
                    out.sources.push(source);
                    for r in records {
                        // The first source with a key wins.
                        out.records.entry(r.key.clone()).or_insert((r, i));
                    }
                    for (id, d) in mounts {
                        out.mounts.entry(id).or_insert((d, i));
                    }
                }
                Err(e) => warn(format!("importing cache {}: {e:#}", describe(from))),
            }
        }
        out
    }

    /// How many records were read.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether none were.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The record of `key`, if a cache has it.
    pub fn get(&self, key: &str) -> Option<&CacheRecord> {
        self.records.get(key).map(|(r, _)| r)
    }

    /// Fills the new cache mount directory `dir` with what an imported
    /// cache holds for mount `id`; false when none holds any.
    pub fn seed_cache_mount(
        &self,
        id: &str,
        dir: &std::path::Path,
        blobs: &BlobStore,
        images: &crate::resolver::Resolver<'_>,
        transfer: &Arc<dyn Transfer>,
    ) -> anyhow::Result<bool> {
        let Some((desc, source)) = self.mounts.get(id) else {
            return Ok(false);
        };
        self.fetch(*source, desc, blobs, images, transfer)?;
        let blob = blobs.open_verified(&desc.digest.parse()?)?;
        // No device nodes from a cache someone else wrote: the directory
        // is bind-mounted into RUN steps.
        let options = cache::layer::UnpackOptions {
            devices: false,
            ..cache::layer::UnpackOptions::default()
        };
        cache::layer::unpack(blob, dir, &options)
            .with_context(|| format!("unpacking the imported cache mount {id}"))?;
        Ok(true)
    }

    fn fetch(
        &self,
        source: usize,
        desc: &Descriptor,
        blobs: &BlobStore,
        images: &crate::resolver::Resolver<'_>,
        transfer: &Arc<dyn Transfer>,
    ) -> anyhow::Result<()> {
        let digest = desc.digest.parse()?;
        if blobs.contains(&digest) {
            return Ok(());
        }
        match &self.sources[source] {
            Source::Layout(layout) => {
                blobs.put(layout.open_verified(&digest)?, Some((&digest, desc.size)))?;
            }
            Source::Registry(reference) => {
                images
                    .registry()?
                    .fetch_blob(blobs, reference, desc, transfer)?;
            }
        }
        Ok(())
    }

    /// The repository (`domain/path`) the layer of `key`'s record comes
    /// from, when a registry holds it.
    pub fn registry_source(&self, key: &str) -> Option<String> {
        let (_, source) = self.records.get(key)?;
        match &self.sources[*source] {
            Source::Registry(r) => Some(format!("{}/{}", r.domain, r.path)),
            Source::Layout(_) => None,
        }
    }

    /// Brings the layer of `key`'s record into `blobs` (verified).
    pub fn fetch_layer(
        &self,
        key: &str,
        blobs: &BlobStore,
        images: &crate::resolver::Resolver<'_>,
        transfer: &Arc<dyn Transfer>,
    ) -> anyhow::Result<()> {
        let Some((record, source)) = self.records.get(key) else {
            bail!("no imported record {key}");
        };
        let Some((layer, _)) = &record.layer else {
            return Ok(());
        };
        self.fetch(*source, layer, blobs, images, transfer)
    }
}

fn describe(from: &CacheFrom) -> String {
    match &from.location {
        Location::Local { dir, tag } => format!("type=local,src={dir},tag={tag}"),
        Location::Registry(r) => format!("type=registry,ref={r}"),
        Location::Inline => "type=inline".into(),
    }
}

/// The cache mounts a cache holds: (id, blob).
type Mounts = Vec<(String, Descriptor)>;

/// The blobs of cache mounts a manifest lists.
fn mounts_of(manifest: &Manifest) -> Mounts {
    manifest
        .layers
        .iter()
        .filter_map(|d| {
            let id = d.annotations.as_ref()?.get(CACHE_MOUNT)?.clone();
            Some((id, d.clone()))
        })
        .collect()
}

/// A cache's source, records and cache mounts.
fn read(
    from: &CacheFrom,
    images: &crate::resolver::Resolver<'_>,
) -> anyhow::Result<(Source, Vec<CacheRecord>, Mounts)> {
    match &from.location {
        Location::Local { dir, tag } => {
            let layout = BlobStore::open_existing(std::path::Path::new(dir))
                .with_context(|| format!("opening the OCI layout {dir}"))?;
            let index = layout.read_index()?;
            let desc = index
                .manifests
                .iter()
                .find(|d| {
                    d.annotations
                        .as_ref()
                        .and_then(|a| a.get(crate::images::REF_NAME))
                        .is_some_and(|t| t == tag)
                })
                .with_context(|| format!("no cache tagged {tag:?} in {dir}"))?;
            let manifest: Manifest = serde_json::from_slice(&layout.read(&desc.digest.parse()?)?)?;
            let config = layout.read(&manifest.config.digest.parse()?)?;
            let records = records(&manifest, &config)?;
            Ok((Source::Layout(layout), records, mounts_of(&manifest)))
        }
        Location::Registry(reference) => {
            let parsed = Reference::parse(reference)?.with_default_tag();
            let registry = images.registry()?;
            let manifest = registry.fetch_manifest(&parsed)?;
            let config = registry.fetch_small_blob(&parsed, &manifest.config)?;
            let records = if manifest.config.media_type == CACHE_CONFIG {
                records(&manifest, &config)?
            } else {
                inline_records(&manifest, &config)?
            };
            Ok((Source::Registry(parsed), records, mounts_of(&manifest)))
        }
        Location::Inline => bail!("an inline cache is read from its image's reference"),
    }
}

/// The records an image carries in its config (`--cache-to type=inline`):
/// layer `i` of a record is the image's layer `i`.
fn inline_records(manifest: &Manifest, config: &[u8]) -> anyhow::Result<Vec<CacheRecord>> {
    use base64::Engine as _;
    let image: cache::spec::ImageConfig =
        serde_json::from_slice(config).context("reading the image config")?;
    let Some(encoded) = image.extra.get(INLINE_FIELD).and_then(|v| v.as_str()) else {
        bail!(
            "not a build cache: a {} with no {INLINE_FIELD} in its config",
            manifest.config.media_type
        );
    };
    let cache = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .context("reading the inline cache")?;
    let diff_ids = &image.rootfs.diff_ids;
    parse_records(&cache, &|i| {
        Some((manifest.layers.get(i)?.clone(), diff_ids.get(i)?.clone()))
    })
}

/// The records a cache config lists, their layers described by the
/// manifest (digest, media type, size, diff_id).
fn records(manifest: &Manifest, config: &[u8]) -> anyhow::Result<Vec<CacheRecord>> {
    if manifest.config.media_type != CACHE_CONFIG {
        bail!(
            "not a build cache: its config is {}, not {CACHE_CONFIG}",
            manifest.config.media_type
        );
    }
    let v: serde_json::Value =
        serde_json::from_slice(config).context("reading the cache config")?;
    let blobs: Vec<&str> = v["layers"]
        .as_array()
        .map(|a| a.iter().filter_map(|l| l["blob"].as_str()).collect())
        .unwrap_or_default();
    let by_digest: HashMap<&str, &Descriptor> = manifest
        .layers
        .iter()
        .map(|d| (d.digest.as_str(), d))
        .collect();
    parse_records(config, &|i| {
        let desc = blobs.get(i).and_then(|b| by_digest.get(b))?;
        let diff_id = desc.annotations.as_ref()?.get(UNCOMPRESSED)?;
        let mut d = (*desc).clone();
        d.annotations = None;
        Some((d, diff_id.clone()))
    })
}

/// The records of a cache config; `layer_at` gives the layer (and its
/// diff_id) a result's index names.
fn parse_records(
    config: &[u8],
    layer_at: &dyn Fn(usize) -> Option<(Descriptor, String)>,
) -> anyhow::Result<Vec<CacheRecord>> {
    let v: serde_json::Value =
        serde_json::from_slice(config).context("reading the cache config")?;
    // A cache config holds `records`; an inline cache is the list alone.
    let records = match &v {
        serde_json::Value::Array(a) => Some(a),
        v => v["records"].as_array(),
    };
    let mut out = Vec::new();
    for r in records.into_iter().flatten() {
        // Records of other builders (BuildKit's own keys) never match ours.
        let Some(key) = r["digest"].as_str().and_then(|d| d.strip_prefix("sha256:")) else {
            continue;
        };
        // BuildKit's field is `layers`; caches of earlier rbuild builds
        // named it `results`.
        let result = r["layers"]
            .as_array()
            .or_else(|| r["results"].as_array())
            .and_then(|a| a.first());
        let layer = match result.and_then(|res| res["layer"].as_u64()) {
            Some(i) => match layer_at(i as usize) {
                Some(l) => Some(l),
                None => continue,
            },
            None => None,
        };
        let created = result
            .and_then(|res| res["createdAt"].as_str())
            .or_else(|| r["createdAt"].as_str())
            .unwrap_or_default()
            .to_string();
        out.push(CacheRecord {
            key: key.to_string(),
            layer,
            created,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(i: usize) -> Option<(Descriptor, String)> {
        let d: Descriptor = serde_json::from_value(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": format!("sha256:{:064x}", i),
            "size": 1,
        }))
        .unwrap();
        (i < 2).then(|| (d, format!("sha256:{:064x}", i + 100)))
    }

    #[test]
    fn records_in_buildkits_forms_and_earlier_rbuilds() {
        let key = "a".repeat(64);
        let other = "b".repeat(64);
        // BuildKit's CacheConfig, its inline list, and the `results` name
        // caches of earlier rbuild builds used.
        let config = serde_json::json!({"records": [
            {"digest": format!("sha256:{key}"), "layers": [{"layer": 1, "createdAt": "t1"}]},
            {"digest": format!("sha256:{other}"), "createdAt": "t0"},
        ]});
        let inline = serde_json::json!([
            {"digest": format!("sha256:{key}"), "layers": [{"layer": 1, "createdAt": "t1"}]},
        ]);
        let earlier = serde_json::json!({"records": [
            {"digest": format!("sha256:{key}"), "results": [{"layer": 1, "createdAt": "t1"}]},
        ]});
        for v in [&config, &inline, &earlier] {
            let r = parse_records(v.to_string().as_bytes(), &layer).unwrap();
            assert_eq!(r[0].key, key);
            assert_eq!(r[0].created, "t1");
            assert_eq!(
                r[0].layer.as_ref().unwrap().1,
                format!("sha256:{:064x}", 101)
            );
        }
        let r = parse_records(config.to_string().as_bytes(), &layer).unwrap();
        assert_eq!((r[1].layer.is_none(), r[1].created.as_str()), (true, "t0"));
        // A result naming a layer the image has not: the record is left out.
        let out_of_range = serde_json::json!([
            {"digest": format!("sha256:{key}"), "layers": [{"layer": 7, "createdAt": "t"}]},
        ]);
        assert!(
            parse_records(out_of_range.to_string().as_bytes(), &layer)
                .unwrap()
                .is_empty()
        );
    }
}
