//! The build flags checked before anything is opened or built: outputs,
//! caches, entitlements, labels, annotations and attestations.

use std::collections::BTreeMap;

use anyhow::{Context, bail};
use cache::layer::Compression;

use crate::cli::BuildArgs;
use crate::commands::image::check_tag;
use crate::export::OutputKind;

/// The flags that are checked before anything is opened or built.
pub(super) struct Flags {
    pub(super) cache_to: Vec<crate::shared_cache::CacheTo>,
    pub(super) cache_from: Vec<crate::shared_cache::CacheFrom>,
    pub(super) outputs: Vec<crate::export::Output>,
    /// `--compression`: the layer format of outputs that name none.
    pub(super) default_compression: Compression,
    pub(super) rewrite_timestamp: bool,
    pub(super) allow_insecure: bool,
    pub(super) allow_network_host: bool,
    pub(super) labels: BTreeMap<String, String>,
    /// `--annotation`s and the outputs' `annotation.*` options.
    pub(super) annotations: crate::annotations::Annotations,
    /// Whether every output keeps OCI media types (annotations other than
    /// the manifest's need them).
    pub(super) oci_media_types: bool,
}

/// Reads and checks the output, cache, entitlement and label flags.
pub(super) fn flags(args: &BuildArgs) -> anyhow::Result<Flags> {
    let cache_to: Vec<crate::shared_cache::CacheTo> = args
        .cache_to
        .iter()
        .map(|s| crate::shared_cache::CacheTo::parse(s))
        .collect::<anyhow::Result<_>>()?;
    let cache_from: Vec<crate::shared_cache::CacheFrom> = args
        .cache_from
        .iter()
        .map(|s| crate::shared_cache::CacheFrom::parse(s))
        .collect::<anyhow::Result<_>>()?;
    let mut outputs: Vec<crate::export::Output> = args
        .outputs
        .iter()
        .map(|o| crate::export::parse_output(o))
        .collect::<anyhow::Result<_>>()?;
    // `--push` is `-o type=image,push=true` with the -t names.
    if args.push {
        let mut o = crate::export::Output::new(OutputKind::Image, None);
        o.push = true;
        outputs.push(o);
    }
    for o in &mut outputs {
        if o.kind == OutputKind::Registry {
            o.push = true;
        }
        if o.push && o.kind == OutputKind::Image && o.names.is_empty() {
            o.names = args.tags.clone();
        }
        if o.push && o.names.is_empty() {
            bail!(
                "--push / --output push=true: name the image with -t or name= (a name is needed to push to a registry)"
            );
        }
    }
    // Every name an image gets is a reference as Docker reads it.
    for name in args
        .tags
        .iter()
        .chain(outputs.iter().flat_map(|o| &o.names))
    {
        check_tag(name)?;
    }
    // Layer compression is an export's concern: `--compression` is the
    // default for the outputs that name none.
    let default_compression: Compression = args.compression.into();
    for o in &outputs {
        let format = crate::export::LayerFormat::of(o, default_compression)
            .with_context(|| format!("--output type={}", o.kind))?;
        if let Some(level) = format.level
            && level > 9
            && format.compression != Compression::Zstd
        {
            bail!(
                "--output compression-level={level}: {:?} levels are 0-9",
                format.compression
            );
        }
    }
    // buildx's attestation flags: turning them off is what rbuild does.
    let attests = crate::attest::requests(
        &args.attest,
        args.provenance.as_deref(),
        args.sbom.as_deref(),
    )?;
    if let Some(a) = attests.iter().find(|a| !a.disabled) {
        bail!(
            "--attest type={0}: rbuild makes no {0} attestations yet (build without: --{0}=false)",
            a.kind
        );
    }
    let rewrite_timestamp = outputs.iter().any(|o| o.rewrite_timestamp);
    let allow_insecure = args.allow.iter().any(|a| a == "security.insecure");
    let allow_network_host = args.allow.iter().any(|a| a == "network.host");
    if let Some(bad) = args
        .allow
        .iter()
        .find(|a| *a != "security.insecure" && *a != "network.host")
    {
        bail!("--allow {bad}: unknown entitlement (security.insecure, network.host)");
    }
    if allow_insecure && crate::rootless::inside() {
        bail!(
            "--allow security.insecure needs root: an ordinary user's steps run in a user namespace, where they can't have the host's privileges"
        );
    }
    let mut labels = BTreeMap::new();
    for l in &args.labels {
        let Some((k, v)) = l.split_once('=') else {
            bail!("--label {l:?} is not K=V")
        };
        labels.insert(k.to_string(), v.to_string());
    }
    let mut annotations = crate::annotations::Annotations::default();
    for a in &args.annotations {
        annotations.add_flag(a)?;
    }
    for o in &outputs {
        annotations.0.extend(o.annotations.0.iter().cloned());
    }
    let oci_media_types = outputs.iter().all(|o| {
        crate::export::LayerFormat::of(o, default_compression)
            .is_ok_and(|f| crate::export::oci_media_types(o, f))
    });

    Ok(Flags {
        cache_to,
        cache_from,
        outputs,
        default_compression,
        rewrite_timestamp,
        allow_insecure,
        allow_network_host,
        labels,
        annotations,
        oci_media_types,
    })
}
