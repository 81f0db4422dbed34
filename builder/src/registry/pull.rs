//! Pulling: a reference to its manifest (an index resolved to the build
//! platform), and blobs streamed into the content store, each verified
//! against its digest before it is kept; a dropped download resumes with
//! `Range` where it stopped.

use std::io::Write as _;
use std::sync::Arc;

use anyhow::{Context, bail};
use cache::Digest;
use cache::blob::BlobStore;
use cache::spec::{Descriptor, Index, Manifest, media};
use futures_util::StreamExt as _;
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, CONTENT_TYPE, RANGE};
use sha2::{Digest as _, Sha256};

use super::client::{Access, Client, Scope, body_within, retryable_error, status_error};
use super::hosts::Endpoint;
use super::reference::Reference;
use super::transfer::Transfer;
use frontend::stage::Platform;

/// Every manifest type we read, as the Accept header lists them.
const MANIFEST_TYPES: &str = "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

/// Times a download may resume after its connection drops.
const RESUMES: u32 = 5;

/// The largest manifest or index taken from a registry: containerd's
/// resolver limit (`MaxManifestSize`, 4 × 1048 × 1048 bytes), which
/// BuildKit pulls through. A larger answer is refused, never read whole.
pub const MAX_MANIFEST_SIZE: usize = 4 * 1048 * 1048;

/// Refuses, before fetching it, a blob to be read whole (a config) that
/// its manifest says is over [`cache::blob::MAX_SMALL_BLOB`]: it could not
/// be read once stored.
pub fn small_enough(reference: &Reference, desc: &Descriptor) -> anyhow::Result<()> {
    if desc.size > cache::blob::MAX_SMALL_BLOB {
        anyhow::bail!(
            "{reference}: rejecting config {}: {} bytes, larger than {} MiB",
            desc.digest,
            desc.size,
            cache::blob::MAX_SMALL_BLOB >> 20
        );
    }
    Ok(())
}

/// A manifest as fetched: bytes verified against their digest.
pub struct Fetched {
    /// Its descriptor (media type, digest, size).
    pub descriptor: Descriptor,
    /// The bytes as served.
    pub bytes: Vec<u8>,
}

/// An image reference resolved on a registry.
pub struct Resolved {
    /// The host that answered (a mirror or the domain's own).
    pub endpoint: Endpoint,
    /// The image manifest for the platform asked for.
    pub manifest: Fetched,
    /// The index it was chosen from, when the reference names one.
    pub index: Option<Fetched>,
    /// The parsed image manifest.
    pub parsed: Manifest,
}

/// The scope pulling `reference` needs.
pub fn pull_scope(reference: &Reference) -> Scope {
    Scope {
        repository: reference.path.clone(),
        access: Access::Pull,
    }
}

/// Fetches and verifies the manifest `tag_or_digest` of `reference`.
async fn fetch_manifest(
    client: &Client,
    ep: &Endpoint,
    reference: &Reference,
    tag_or_digest: &str,
) -> anyhow::Result<Fetched> {
    let scope = [pull_scope(reference)];
    let path = &reference.path;
    let mut resumes = 0;
    let (header_type, claimed, bytes) = loop {
        let resp = client
            .send(ep, &scope, |http, base| {
                http.get(format!("{base}/v2/{path}/manifests/{tag_or_digest}"))
                    .header(ACCEPT, MANIFEST_TYPES)
            })
            .await?;
        if !resp.status().is_success() {
            let status = resp.status();
            let msg = status_error(resp).await;
            if status == StatusCode::NOT_FOUND {
                bail!("{reference}: not found on {} ({msg})", ep.authority);
            }
            bail!(
                "{reference}: GET manifest {tag_or_digest} from {}: {msg}",
                ep.authority
            );
        }
        let header = |name| {
            resp.headers()
                .get(name)
                .and_then(|v: &reqwest::header::HeaderValue| v.to_str().ok())
                .map(str::to_string)
        };
        let header_type = header(CONTENT_TYPE.as_str())
            .map(|s| s.split(';').next().unwrap_or(&s).trim().to_string());
        let claimed = header("docker-content-digest");
        match body_within(resp, MAX_MANIFEST_SIZE).await {
            Ok(Some(b)) => break (header_type, claimed, b),
            Ok(None) => bail!(
                "{reference}: rejecting manifest {tag_or_digest} from {}: larger than {MAX_MANIFEST_SIZE} bytes",
                ep.authority
            ),
            // Cut short: ask again.
            Err(e) if retryable_error(&e) && resumes < RESUMES => resumes += 1,
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "{reference}: reading manifest {tag_or_digest} from {}",
                        ep.authority
                    )
                });
            }
        }
    };
    let digest = Digest::of_sha256(Sha256::new_with_prefix(&bytes));
    // The bytes must be what was asked for by digest, and what the
    // registry says they are.
    for want in [
        tag_or_digest
            .starts_with("sha256:")
            .then_some(tag_or_digest),
        claimed.as_deref(),
    ]
    .into_iter()
    .flatten()
    {
        if want.starts_with("sha256:") && want != digest.to_string() {
            bail!(
                "{reference}: the manifest from {} has digest {digest}, not {want}; nothing was stored",
                ep.authority
            );
        }
    }
    let media_type = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| {
            v.get("mediaType")
                .and_then(|m| m.as_str())
                .map(str::to_string)
        })
        .or(header_type)
        .with_context(|| format!("{reference}: the manifest names no media type"))?;
    Ok(Fetched {
        descriptor: Descriptor::new(&media_type, &digest, bytes.len() as u64),
        bytes: bytes.to_vec(),
    })
}

/// Resolves `reference` on the first of `endpoints` that has it: its
/// manifest, through its index to `platform`'s when it names one.
pub async fn resolve(
    client: &Client,
    endpoints: &[Endpoint],
    reference: &Reference,
    platform: &Platform,
) -> anyhow::Result<Resolved> {
    let mut errors = Vec::new();
    for ep in endpoints {
        match resolve_on(client, ep, reference, platform).await {
            Ok(r) => return Ok(r),
            // A mirror that fails is passed over, as BuildKit does.
            Err(e) if ep.is_mirror_of(&reference.domain) => errors.push(format!("{e:#}")),
            Err(e) => {
                return Err(match errors.is_empty() {
                    true => e,
                    false => e.context(format!("mirrors failed too: {}", errors.join("; "))),
                });
            }
        }
    }
    unreachable!("the domain's own host is the last endpoint")
}

async fn resolve_on(
    client: &Client,
    ep: &Endpoint,
    reference: &Reference,
    platform: &Platform,
) -> anyhow::Result<Resolved> {
    let wanted = reference
        .digest
        .clone()
        .or_else(|| reference.tag.clone())
        .unwrap_or_else(|| "latest".into());
    let first = fetch_manifest(client, ep, reference, &wanted).await?;
    let (manifest, index) = if crate::images::is_index(&first.descriptor.media_type) {
        let idx: Index = serde_json::from_slice(&first.bytes)
            .with_context(|| format!("{reference}: reading its index"))?;
        let chosen =
            crate::platform::choose(&idx, platform).with_context(|| format!("{reference}"))?;
        let manifest = fetch_manifest(client, ep, reference, &chosen.digest).await?;
        (manifest, Some(first))
    } else {
        (first, None)
    };
    match manifest.descriptor.media_type.as_str() {
        media::OCI_MANIFEST | media::DOCKER_MANIFEST => {}
        "application/vnd.docker.distribution.manifest.v1+json"
        | "application/vnd.docker.distribution.manifest.v1+prettyjws" => bail!(
            "{reference}: the registry serves a schema 1 manifest, which rbuild (like BuildKit) does not read"
        ),
        other => bail!("{reference}: {other} is not an image manifest"),
    }
    let parsed: Manifest = serde_json::from_slice(&manifest.bytes)
        .with_context(|| format!("{reference}: reading its manifest"))?;
    Ok(Resolved {
        endpoint: ep.clone(),
        manifest,
        index,
        parsed,
    })
}

/// Downloads `desc` into `blobs` unless it is there: streamed, resumed
/// after a dropped connection, and kept only when its digest and size
/// match.
pub async fn fetch_blob(
    client: &Client,
    ep: &Endpoint,
    reference: &Reference,
    blobs: &BlobStore,
    desc: &Descriptor,
    transfer: &Arc<dyn Transfer>,
) -> anyhow::Result<()> {
    let digest: Digest = desc
        .digest
        .parse()
        .with_context(|| format!("{reference}: bad digest {}", desc.digest))?;
    if blobs.contains(&digest) {
        transfer.done(&desc.digest, desc.size, true);
        return Ok(());
    }
    transfer.start(&desc.digest, desc.size);
    let scope = [pull_scope(reference)];
    let path = &reference.path;
    let mut writer = blobs.writer()?;
    let mut resumes = 0;
    'request: loop {
        let offset = writer.size();
        let resp = client
            .send(ep, &scope, |http, base| {
                let req = http.get(format!("{base}/v2/{path}/blobs/{digest}"));
                if offset > 0 {
                    req.header(RANGE, format!("bytes={offset}-"))
                } else {
                    req
                }
            })
            .await?;
        match resp.status() {
            StatusCode::PARTIAL_CONTENT if offset > 0 => {}
            StatusCode::OK if offset > 0 => {
                // No ranges here: start again.
                writer = blobs.writer()?;
            }
            StatusCode::OK => {}
            _ => {
                let msg = status_error(resp).await;
                bail!(
                    "{reference}: GET blob {digest} from {}: {msg}",
                    ep.authority
                );
            }
        }
        let mut body = resp.bytes_stream();
        while let Some(chunk) = body.next().await {
            match chunk {
                Ok(bytes) => {
                    writer
                        .write_all(&bytes)
                        .with_context(|| format!("storing blob {digest}"))?;
                    transfer.progress(&desc.digest, writer.size());
                    if writer.size() > desc.size {
                        bail!(
                            "{reference}: blob {digest} from {} is longer than its {} bytes; nothing was stored",
                            ep.authority,
                            desc.size
                        );
                    }
                }
                Err(e) if retryable_error(&e) && resumes < RESUMES => {
                    resumes += 1;
                    continue 'request;
                }
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!("{reference}: reading blob {digest} from {}", ep.authority)
                    });
                }
            }
        }
        break;
    }
    writer.commit(Some((&digest, desc.size))).with_context(|| {
        format!(
            "{reference}: blob from {} does not match its digest; nothing was stored",
            ep.authority
        )
    })?;
    transfer.done(&desc.digest, desc.size, false);
    Ok(())
}
