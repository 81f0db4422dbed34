//! What a build leaves: its image (one platform's, or an index of
//! several), the caches it exports, and its outputs (tags, pushes,
//! archives, files).

use std::collections::BTreeSet;

use anyhow::Context;
use cache::gc::Store;
use cache::layer::Compression;
use cache::spec::{Descriptor, Index, media, to_canonical_json};
use frontend::stage::Platform;

use crate::export::OutputKind;
use crate::registry::transfer::StepReport;
use crate::solve::{Built, Progress, ProgressFormat};

/// The image a build made: one platform's, or the index of several.
pub struct Result {
    /// The image's manifest, or the index's.
    pub manifest: Descriptor,
    /// The image id (config digest), or the index's digest.
    pub image_id: String,
    /// Each platform's build (one when no index).
    pub builds: Vec<Built>,
    /// Their platforms, with `builds`: `None` when there is one.
    platforms: Vec<Option<Platform>>,
}

impl Result {
    /// The result of `built`: the one image, or (`index`, always for
    /// several) an index of the platforms' images (tagged `tags`; the
    /// images alone are not), with the descriptor and index `annotations`.
    pub fn of(
        store: &Store,
        built: Vec<(Platform, Built)>,
        (index, annotations): (bool, &crate::annotations::Annotations),
        tags: &[String],
    ) -> anyhow::Result<Result> {
        use crate::annotations::Target;
        if built.len() == 1 && !index {
            let (_, b) = built.into_iter().next().expect("one");
            return Ok(Result {
                manifest: Descriptor {
                    annotations: annotations.of(Target::ManifestDescriptor, None),
                    ..b.manifest.clone()
                },
                image_id: b.image_id.clone(),
                builds: vec![b],
                platforms: vec![None],
            });
        }
        let index = Index {
            manifests: built
                .iter()
                .map(|(p, b)| Descriptor {
                    platform: Some(crate::platform::to_spec(p)),
                    annotations: annotations.of(Target::ManifestDescriptor, Some(p)),
                    ..b.manifest.clone()
                })
                .collect(),
            annotations: annotations.of(Target::Index, None),
            ..Index::default()
        };
        let bytes = to_canonical_json(&index);
        let digest = store.blobs.put_bytes(&bytes)?;
        let manifest = Descriptor {
            annotations: annotations.of(Target::IndexDescriptor, None),
            ..Descriptor::new(media::OCI_INDEX, &digest, bytes.len() as u64)
        };
        for tag in tags {
            crate::images::tag_manifest(&store.blobs, &manifest, tag)?;
        }
        let (platforms, builds) = built.into_iter().map(|(p, b)| (Some(p), b)).unzip();
        Ok(Result {
            image_id: digest.to_string(),
            manifest,
            builds,
            platforms,
        })
    }

    /// The files of each platform's result and the directory they go to
    /// in a files output (`linux_arm64`, as BuildKit names them; the top
    /// for one platform).
    fn files(&self) -> Vec<(String, Option<String>)> {
        self.platforms
            .iter()
            .zip(&self.builds)
            .map(|(p, b)| {
                (
                    p.as_ref()
                        .map(crate::platform::dir_name)
                        .unwrap_or_default(),
                    b.snapshot.clone(),
                )
            })
            .collect()
    }
}

/// Each `--cache-to`, with its own mode's records; a failure fails the
/// build unless the export says `ignore-error=true`.
pub fn export_caches(
    store: &Store,
    builds: &[crate::solve::Built],
    cache_to: &[crate::shared_cache::CacheTo],
    (images, transfer): (
        &crate::resolver::Resolver<'_>,
        &std::sync::Arc<dyn crate::registry::transfer::Transfer>,
    ),
    quiet: bool,
) -> anyhow::Result<()> {
    for to in cache_to {
        // Each export takes its own mode's records, of every platform's
        // build (a step they share once).
        let mut seen = BTreeSet::new();
        let records: Vec<_> = builds
            .iter()
            .flat_map(|b| {
                b.cache_records.iter().filter(|r| match to.mode {
                    crate::shared_cache::Mode::Max => true,
                    crate::shared_cache::Mode::Min => b.cache_min.contains(&r.key),
                })
            })
            .filter(|r| seen.insert(r.key.clone()))
            .cloned()
            .collect();
        let mut mounts: Vec<_> = builds.iter().flat_map(|b| b.cache_mounts.clone()).collect();
        mounts.sort();
        mounts.dedup();
        let exported =
            crate::shared_cache::export::export(store, &records, &mounts, to, images, transfer);
        match exported {
            Ok(()) => {}
            Err(e) if to.ignore_error => {
                if !quiet {
                    eprintln!("WARNING: exporting the cache failed (ignore-error=true): {e:#}");
                }
            }
            Err(e) => return Err(e.context("exporting the build cache")),
        }
    }
    Ok(())
}

/// Writes every output of `built` (tags, pushes, archives, files);
/// returns the manifest last pushed, as the registry has it.
pub fn write(
    store: &Store,
    built: &Result,
    outputs: &[crate::export::Output],
    (names, default_compression): (&[String], Compression),
    (images, transfer): (
        &crate::resolver::Resolver<'_>,
        &std::sync::Arc<dyn crate::registry::transfer::Transfer>,
    ),
    (progress_format, progress): (ProgressFormat, &std::sync::Arc<Progress>),
) -> anyhow::Result<Option<cache::spec::Descriptor>> {
    let quiet = progress_format == ProgressFormat::Quiet;
    let mut pushed = None;
    for o in outputs {
        let dest = o.dest.as_deref().unwrap_or("");
        match o.kind {
            OutputKind::Image | OutputKind::Registry => {
                for n in &o.names {
                    crate::images::tag_manifest(&store.blobs, &built.manifest, n)?;
                }
                if o.push {
                    let format = crate::export::LayerFormat::of(o, default_compression)?;
                    for n in &o.names {
                        let (report, transfer) = StepReport::after_build(
                            progress_format,
                            progress,
                            &format!("pushing {}", crate::images::normalize(n)),
                        );
                        let desc = images.registry().and_then(|r| {
                            crate::publish::push_image(
                                r,
                                store,
                                &built.manifest,
                                n,
                                format,
                                crate::export::oci_media_types(o, format),
                                &transfer,
                            )
                        });
                        if let Some(r) = report {
                            r.end(desc.as_ref().err());
                        }
                        let desc = desc?;
                        if !quiet {
                            eprintln!(
                                "pushing {} with digest {} done",
                                crate::images::normalize(n),
                                desc.digest
                            );
                        }
                        pushed = Some(desc);
                    }
                }
            }
            OutputKind::Oci | OutputKind::Docker => {
                // Base layers a cached build never unpacked.
                crate::publish::fetch_image_layers(
                    || images.registry(),
                    store,
                    &built.manifest,
                    transfer,
                )?;
                let format = crate::export::LayerFormat::of(o, default_compression)?;
                crate::export::export_image(store, &built.manifest, o, names, format)
                    .with_context(|| format!("exporting to {dest}"))?
            }
            OutputKind::Local => crate::export::export_local(store, &built.files(), dest)
                .with_context(|| format!("exporting to {dest}"))?,
            OutputKind::Tar => crate::export::export_tar(store, &built.files(), dest)
                .with_context(|| format!("exporting to {dest}"))?,
            OutputKind::CacheOnly => {}
        }
    }
    Ok(pushed)
}
