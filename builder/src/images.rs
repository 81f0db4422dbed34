//! The local image store: images are manifests in the content store's
//! `index.json`, tagged with `org.opencontainers.image.ref.name` (the tag as
//! given) and `io.containerd.image.name` (the full name), so `skopeo`,
//! `umoci` and `oras` see them as `oci:<root>/content:<tag>`.

use anyhow::{Context, bail};
use cache::Digest;
use cache::blob::BlobStore;
use cache::spec::{Descriptor, ImageConfig, Index, Manifest, media, to_canonical_json};
use frontend::stage::Platform;

/// Annotation holding the tag.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// Annotation holding the full image name.
pub const FULL_NAME: &str = "io.containerd.image.name";

/// Annotation naming the repository an image was pulled from
/// (`docker.io/library/debian`): where its blobs can be mounted from.
pub const SOURCE: &str = "io.rbuild.image.source";

/// `alpine` -> `docker.io/library/alpine:latest`, as docker names images
/// (a name that is no reference stays as it is).
pub fn normalize(reference: &str) -> String {
    match crate::registry::Reference::parse(reference) {
        Ok(r) => r.with_default_tag().to_string(),
        Err(_) => reference.to_string(),
    }
}

/// A stored image.
#[derive(Debug, Clone)]
pub struct StoredImage {
    /// The tag as given.
    pub reference: String,
    /// The manifest descriptor.
    pub manifest: Descriptor,
}

/// Every tagged image.
pub fn list(blobs: &BlobStore) -> anyhow::Result<Vec<StoredImage>> {
    let index = blobs.read_index()?;
    Ok(index
        .manifests
        .into_iter()
        .filter_map(|d| {
            let reference = d.annotations.as_ref()?.get(REF_NAME)?.clone();
            Some(StoredImage {
                reference,
                manifest: d,
            })
        })
        .collect())
}

/// The image tagged `reference` (as given or normalised).
pub fn find(blobs: &BlobStore, reference: &str) -> anyhow::Result<Option<StoredImage>> {
    let wanted = normalize(reference);
    Ok(list(blobs)?.into_iter().find(|img| {
        img.reference == reference
            || img
                .manifest
                .annotations
                .as_ref()
                .and_then(|a| a.get(FULL_NAME))
                .is_some_and(|n| *n == wanted)
    }))
}

/// Whether `media_type` is an index's (OCI's, or Docker's manifest list).
pub fn is_index(media_type: &str) -> bool {
    media_type == media::OCI_INDEX || media_type == media::DOCKER_MANIFEST_LIST
}

/// What a stored image holds for a platform.
#[derive(Debug)]
pub enum Selected {
    /// The image for it: the stored one, or its index's entry.
    Image(StoredImage),
    /// Its index names an image for it that is not in the store.
    NotLocal(Descriptor),
    /// One image, for another platform.
    Other(Platform),
}

/// The image `image` holds for `platform`: an index's entry for it, or a
/// single image whose config is for it (or names no platform).
pub fn select(
    blobs: &BlobStore,
    image: &StoredImage,
    platform: &Platform,
) -> anyhow::Result<Selected> {
    if !is_index(&image.manifest.media_type) {
        let (_, config) = read(blobs, image)?;
        let p = &config.platform;
        if p.os.is_empty() {
            return Ok(Selected::Image(image.clone()));
        }
        let have = crate::platform::of_spec(p);
        return Ok(match crate::platform::rank(&have, platform) {
            Some(_) => Selected::Image(image.clone()),
            None => Selected::Other(have),
        });
    }
    let index = read_index(blobs, image)?;
    let entry = crate::platform::choose(&index, platform)
        .with_context(|| image.reference.clone())?
        .clone();
    if !blobs.contains(&entry.digest.parse()?) {
        return Ok(Selected::NotLocal(entry));
    }
    Ok(Selected::Image(StoredImage {
        reference: image.reference.clone(),
        manifest: entry,
    }))
}

/// The index `image` is, verified.
pub fn read_index(blobs: &BlobStore, image: &StoredImage) -> anyhow::Result<Index> {
    serde_json::from_slice(&blobs.read(&image.manifest.digest.parse()?)?)
        .with_context(|| format!("reading the index of {}", image.reference))
}

/// The images `image` holds in the store, with their platforms from its
/// index (none for a single image): itself, or its index's entries that
/// are here.
pub fn platform_images(
    blobs: &BlobStore,
    image: &StoredImage,
) -> anyhow::Result<Vec<(Option<Platform>, StoredImage)>> {
    if !is_index(&image.manifest.media_type) {
        return Ok(vec![(None, image.clone())]);
    }
    let mut out = Vec::new();
    for entry in read_index(blobs, image)?.manifests {
        if is_index(&entry.media_type) || !blobs.contains(&entry.digest.parse()?) {
            continue;
        }
        let platform = entry.platform.as_ref().map(crate::platform::of_spec);
        out.push((
            platform,
            StoredImage {
                reference: image.reference.clone(),
                manifest: entry,
            },
        ));
    }
    Ok(out)
}

/// The image `image` holds for `platform` in the store, or an error that
/// says why there is none.
pub fn for_platform(
    blobs: &BlobStore,
    image: &StoredImage,
    platform: &Platform,
) -> anyhow::Result<StoredImage> {
    select(blobs, image, platform)?.image(image, platform)
}

impl Selected {
    /// The image selected from `top` for `platform`, or an error that says
    /// why there is none.
    pub fn image(self, top: &StoredImage, platform: &Platform) -> anyhow::Result<StoredImage> {
        match self {
            Selected::Image(img) => Ok(img),
            Selected::NotLocal(_) => bail!(
                "{}: its image for {platform} is not in the local store (pull it with --platform {platform})",
                top.reference
            ),
            Selected::Other(have) => bail!("{} is for {have}, not {platform}", top.reference),
        }
    }
}

/// What of `image` the store holds, to save or push: the image, or the
/// index when all its images are here; else the one image of it that is
/// (a tag pulled for one platform), or a new index of those that are.
/// Returns it and the platforms left out.
pub fn local_part(
    blobs: &BlobStore,
    image: &StoredImage,
) -> anyhow::Result<(Descriptor, Vec<String>)> {
    if !is_index(&image.manifest.media_type) {
        return Ok((image.manifest.clone(), Vec::new()));
    }
    let index = read_index(blobs, image)?;
    let (here, missing): (Vec<Descriptor>, Vec<Descriptor>) = index
        .manifests
        .iter()
        .cloned()
        .partition(|m| m.digest.parse().is_ok_and(|d| blobs.contains(&d)));
    let left_out: Vec<String> = missing
        .iter()
        .map(|m| {
            m.platform
                .as_ref()
                .map_or("(no platform)".to_string(), |p| {
                    crate::platform::of_spec(p).to_string()
                })
        })
        .collect();
    match here.as_slice() {
        _ if missing.is_empty() => Ok((image.manifest.clone(), left_out)),
        [] => bail!(
            "{}: none of its index's images is in the local store",
            image.reference
        ),
        [one] => {
            let mut one = one.clone();
            one.platform = None;
            Ok((one, left_out))
        }
        _ => {
            let part = Index {
                manifests: here,
                ..index
            };
            let bytes = to_canonical_json(&part);
            let digest = blobs.put_bytes(&bytes)?;
            let media_type = part.media_type.as_deref().unwrap_or(media::OCI_INDEX);
            Ok((
                Descriptor::new(media_type, &digest, bytes.len() as u64),
                left_out,
            ))
        }
    }
}

/// One image of a stored image or index: its descriptor, its manifest's
/// bytes as stored, and the manifest.
pub struct ImageManifest {
    /// The descriptor (an index's entry, with its platform).
    pub descriptor: Descriptor,
    /// The manifest's bytes (what a push sends).
    pub bytes: Vec<u8>,
    /// The manifest.
    pub manifest: Manifest,
}

/// The images `top` is, read from the store: itself, or each entry of the
/// index it is; an entry that is not in the store is an error naming its
/// platform.
pub fn image_manifests(blobs: &BlobStore, top: &Descriptor) -> anyhow::Result<Vec<ImageManifest>> {
    let read = |d: &Descriptor| -> anyhow::Result<Vec<u8>> {
        let digest: Digest = d.digest.parse()?;
        if !blobs.contains(&digest) {
            let platform = d.platform.as_ref().map(crate::platform::of_spec);
            bail!(
                "the image for {} of index {} is not in the local store (pull it with --platform)",
                platform.map_or("an unnamed platform".to_string(), |p| p.to_string()),
                top.digest
            );
        }
        Ok(blobs.read(&digest)?)
    };
    let entries = if is_index(&top.media_type) {
        serde_json::from_slice::<Index>(&read(top)?)
            .with_context(|| format!("reading the index {}", top.digest))?
            .manifests
    } else {
        vec![top.clone()]
    };
    entries
        .into_iter()
        .map(|descriptor| {
            let bytes = read(&descriptor)?;
            let manifest = serde_json::from_slice(&bytes)
                .with_context(|| format!("reading the manifest {}", descriptor.digest))?;
            Ok(ImageManifest {
                descriptor,
                bytes,
                manifest,
            })
        })
        .collect()
}

/// Reads an image's manifest and config, verified.
pub fn read(blobs: &BlobStore, image: &StoredImage) -> anyhow::Result<(Manifest, ImageConfig)> {
    if is_index(&image.manifest.media_type) {
        bail!(
            "{} is an index of images for several platforms: choose one (--platform)",
            image.reference
        );
    }
    let digest: Digest = image.manifest.digest.parse()?;
    let manifest: Manifest = serde_json::from_slice(&blobs.read(&digest)?)
        .with_context(|| format!("reading the manifest of {}", image.reference))?;
    let config: ImageConfig =
        serde_json::from_slice(&blobs.read(&manifest.config.digest.parse()?)?)
            .with_context(|| format!("reading the config of {}", image.reference))?;
    Ok((manifest, config))
}

/// Stores config and manifest for `layers` and tags the image; returns
/// (config digest = image id, manifest descriptor).
pub fn store(
    blobs: &BlobStore,
    config: &ImageConfig,
    layers: Vec<Descriptor>,
    annotations: Option<std::collections::BTreeMap<String, String>>,
    tags: &[String],
) -> anyhow::Result<(Digest, Descriptor)> {
    let config_bytes = to_canonical_json(config);
    let config_digest = blobs.put_bytes(&config_bytes)?;
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(media::OCI_MANIFEST.into()),
        artifact_type: None,
        config: Descriptor::new(media::OCI_CONFIG, &config_digest, config_bytes.len() as u64),
        layers,
        subject: None,
        annotations,
    };
    let manifest_bytes = to_canonical_json(&manifest);
    let manifest_digest = blobs.put_bytes(&manifest_bytes)?;
    let desc = Descriptor::new(
        media::OCI_MANIFEST,
        &manifest_digest,
        manifest_bytes.len() as u64,
    );
    for tag in tags {
        tag_manifest(blobs, &desc, tag)?;
    }
    Ok((config_digest, desc))
}

/// Points `tag` at a manifest (replacing what it named before).
pub fn tag_manifest(blobs: &BlobStore, manifest: &Descriptor, tag: &str) -> anyhow::Result<()> {
    if tag.is_empty() || tag.contains(char::is_whitespace) {
        bail!("invalid tag {tag:?}");
    }
    let full = normalize(tag);
    let mut d = manifest.clone();
    // Other annotations (where it was pulled from) go with the image.
    let mut annotations = d.annotations.take().unwrap_or_default();
    annotations.insert(REF_NAME.to_string(), tag.to_string());
    annotations.insert(FULL_NAME.to_string(), full);
    d.annotations = Some(annotations);
    blobs.update_index(|idx| {
        let named = |m: &Descriptor| {
            m.annotations
                .as_ref()
                .and_then(|a| a.get(REF_NAME))
                .is_some_and(|r| r == tag)
        };
        // Retagging keeps the entry's place: an unchanged tag leaves
        // index.json as it was (and unwritten).
        match idx.manifests.iter().position(named) {
            Some(i) => {
                idx.manifests[i] = d;
                // Any later entry under the same tag goes.
                let mut at = 0;
                idx.manifests.retain(|m| {
                    at += 1;
                    at - 1 <= i || !named(m)
                });
            }
            None => idx.manifests.push(d),
        }
    })?;
    Ok(())
}

/// Images given by `--build-context NAME=docker-image://REF` or
/// `NAME=oci-layout://PATH[:TAG|@DIGEST]`, by NAME.
pub type Aliases = std::collections::BTreeMap<String, StoredImage>;

/// Copies the image `PATH[:TAG|@DIGEST]` of an OCI layout into the store
/// (digests verified) and returns it: an index with the images of it the
/// layout holds.
pub fn import_oci_layout(blobs: &BlobStore, spec: &str) -> anyhow::Result<StoredImage> {
    let (path, selector) = if let Some((p, d)) = spec.rsplit_once('@') {
        (p, Some(("digest", d)))
    } else {
        match spec
            .rsplit_once(':')
            .filter(|(_, t)| !t.contains('/') && !t.is_empty())
        {
            Some((p, t)) => (p, Some(("tag", t))),
            None => (spec, None),
        }
    };
    let layout = BlobStore::open_existing(std::path::Path::new(path))
        .with_context(|| format!("opening the OCI layout {path}"))?;
    let index = layout.read_index()?;
    let desc = match selector {
        Some(("digest", d)) => index.manifests.iter().find(|m| m.digest == d).cloned(),
        Some((_, tag)) => index
            .manifests
            .iter()
            .find(|m| {
                m.annotations
                    .as_ref()
                    .and_then(|a| a.get(REF_NAME))
                    .is_some_and(|r| r == tag)
            })
            .cloned(),
        None if index.manifests.len() == 1 => index.manifests.first().cloned(),
        None => bail!("the OCI layout {path} holds several images: name one with :TAG or @DIGEST"),
    }
    .ok_or_else(|| anyhow::anyhow!("no image {spec} in the OCI layout"))?;
    let copy = |d: &Descriptor| -> anyhow::Result<()> {
        let digest: Digest = d.digest.parse()?;
        if !blobs.contains(&digest) {
            blobs.put(layout.open_verified(&digest)?, Some((&digest, d.size)))?;
        }
        Ok(())
    };
    // An index comes with the images of it the layout holds.
    let manifests = if is_index(&desc.media_type) {
        copy(&desc)?;
        let idx: Index = serde_json::from_slice(&blobs.read(&desc.digest.parse()?)?)?;
        idx.manifests
            .into_iter()
            .filter(|m| !is_index(&m.media_type))
            .filter(|m| m.digest.parse().is_ok_and(|d| layout.contains(&d)))
            .collect()
    } else {
        vec![desc.clone()]
    };
    for m in &manifests {
        copy(m)?;
        let manifest: Manifest = serde_json::from_slice(&blobs.read(&m.digest.parse()?)?)?;
        copy(&manifest.config)?;
        for l in &manifest.layers {
            copy(l)?;
        }
    }
    Ok(StoredImage {
        reference: spec.to_string(),
        manifest: desc,
    })
}

#[cfg(test)]
mod tests {
    use super::normalize;

    #[test]
    fn names_like_docker() {
        assert_eq!(normalize("alpine"), "docker.io/library/alpine:latest");
        assert_eq!(normalize("alpine:3"), "docker.io/library/alpine:3");
        assert_eq!(normalize("me/app:1"), "docker.io/me/app:1");
        assert_eq!(normalize("localhost:5000/app"), "localhost:5000/app:latest");
        let digest = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(
            normalize(&format!("ghcr.io/o/a:v@{digest}")),
            format!("ghcr.io/o/a:v@{digest}")
        );
        assert_eq!(normalize("index.docker.io/x"), "docker.io/library/x:latest");
        assert_eq!(normalize("not a reference"), "not a reference");
    }
}
