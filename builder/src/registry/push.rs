//! Pushing: each blob HEADed first and skipped when the registry has it,
//! mounted from another repository of the same registry when one is known
//! to hold it, else uploaded as one streamed PATCH and a closing PUT; the
//! manifest last, by tag or by digest, its `Docker-Content-Digest` checked.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{Context, bail};
use cache::Digest;
use cache::blob::BlobStore;
use cache::spec::Descriptor;
use futures_util::{StreamExt as _, TryStreamExt as _};
use reqwest::StatusCode;
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, LOCATION};

use super::client::{Access, Client, Scope, status_error};
use super::hosts::Endpoint;
use super::reference::Reference;
use super::transfer::Transfer;

/// Blobs moved at once.
pub const PARALLEL: usize = 4;
/// Whole-upload attempts of one blob (a failed upload session is not
/// resumed: a new one starts).
const UPLOAD_ATTEMPTS: u32 = 3;

/// Where a push goes.
pub struct Target<'a> {
    /// The registry host.
    pub endpoint: &'a Endpoint,
    /// The reference pushed to.
    pub reference: &'a Reference,
    /// Repositories of the same registry known to hold a blob, by digest
    /// (for cross-repository mounts).
    pub mount_from: &'a HashMap<String, String>,
}

impl Target<'_> {
    fn scopes(&self, from: Option<&str>) -> Vec<Scope> {
        let mut s = vec![Scope {
            repository: self.reference.path.clone(),
            access: Access::Push,
        }];
        if let Some(repo) = from.filter(|r| *r != self.reference.path) {
            s.push(Scope {
                repository: repo.to_string(),
                access: Access::Pull,
            });
        }
        s
    }
}

/// `location` (absolute, or a path on the host) with `query` appended.
fn upload_url(base: &str, location: &str, query: &str) -> String {
    let url = if location.starts_with("http://") || location.starts_with("https://") {
        location.to_string()
    } else {
        format!("{base}{location}")
    };
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{query}")
}

/// Pushes the blobs `descs` (config, layers) that the registry lacks.
pub async fn push_blobs(
    client: &Client,
    target: &Target<'_>,
    blobs: &BlobStore,
    descs: &[Descriptor],
    transfer: &Arc<dyn Transfer>,
) -> anyhow::Result<()> {
    // The first failure ends the push (the others are dropped).
    futures_util::stream::iter(descs)
        .map(|d| push_blob(client, target, blobs, d, transfer))
        .buffer_unordered(PARALLEL)
        .try_collect()
        .await
}

async fn push_blob(
    client: &Client,
    target: &Target<'_>,
    blobs: &BlobStore,
    desc: &Descriptor,
    transfer: &Arc<dyn Transfer>,
) -> anyhow::Result<()> {
    let ep = target.endpoint;
    let repo = &target.reference.path;
    let digest: Digest = desc.digest.parse()?;
    let scopes = target.scopes(None);
    let head = client
        .send(ep, &scopes, |http, base| {
            http.head(format!("{base}/v2/{repo}/blobs/{digest}"))
        })
        .await?;
    if head.status().is_success() {
        transfer.done(&desc.digest, desc.size, true);
        return Ok(());
    }
    if head.status() != StatusCode::NOT_FOUND {
        bail!(
            "{}: HEAD blob {digest} on {}: {}",
            target.reference,
            ep.authority,
            status_error(head).await
        );
    }
    let path = blobs.path(&digest);
    if !path.is_file() {
        bail!(
            "{}: blob {digest} is not in the local store (run `rbuild verify`)",
            target.reference
        );
    }
    transfer.start(&desc.digest, desc.size);
    for attempt in 1.. {
        // The POST has its own retries: when it fails, the push does.
        let Some(session) = start_upload(client, target, desc).await? else {
            transfer.done(&desc.digest, desc.size, true);
            return Ok(());
        };
        // A session broken mid-blob can't be resumed: a new one starts.
        match send_blob(client, target, &path, desc, &digest, &session, transfer).await {
            Ok(()) => break,
            Err(e) if attempt >= UPLOAD_ATTEMPTS => return Err(e),
            Err(_) => continue,
        }
    }
    transfer.done(&desc.digest, desc.size, false);
    Ok(())
}

/// POST: a mount when a source is known (None when it mounted), else a
/// new upload session's location.
async fn start_upload(
    client: &Client,
    target: &Target<'_>,
    desc: &Descriptor,
) -> anyhow::Result<Option<String>> {
    let ep = target.endpoint;
    let repo = &target.reference.path;
    let name = target.reference;
    let from = target.mount_from.get(&desc.digest).map(String::as_str);
    let scopes = target.scopes(from);
    let start = client
        .send(ep, &scopes, |http, base| {
            let url = format!("{base}/v2/{repo}/blobs/uploads/");
            match from {
                Some(f) => http
                    .post(url)
                    .query(&[("mount", desc.digest.as_str()), ("from", f)]),
                None => http.post(url),
            }
            .header(CONTENT_LENGTH, 0)
        })
        .await?;
    match start.status() {
        StatusCode::CREATED if from.is_some() => return Ok(None),
        StatusCode::ACCEPTED => {}
        _ => bail!(
            "{name}: starting an upload on {}: {}",
            ep.authority,
            status_error(start).await
        ),
    }
    location(&start)
        .map(Some)
        .with_context(|| format!("{name}: upload on {}", ep.authority))
}

/// PATCH with the whole blob streamed, then PUT with the digest.
async fn send_blob(
    client: &Client,
    target: &Target<'_>,
    path: &std::path::Path,
    desc: &Descriptor,
    digest: &Digest,
    started_at: &str,
    transfer: &Arc<dyn Transfer>,
) -> anyhow::Result<()> {
    let ep = target.endpoint;
    let name = target.reference;
    let scopes = target.scopes(None);
    let base = client.base_url(ep).await?;
    let patch_url = upload_url(&base, started_at, "");
    let patch_url = patch_url.trim_end_matches(['?', '&']).to_string();
    let size = desc.size;
    let digest_s = desc.digest.clone();
    let patched = client
        .send_once(ep, &scopes, |http, _| {
            let body = match std::fs::File::open(path) {
                Ok(f) => file_body(f, digest_s.clone(), transfer.clone()),
                Err(e) => reqwest::Body::wrap_stream(futures_util::stream::once(async move {
                    Err::<Vec<u8>, std::io::Error>(e)
                })),
            };
            http.patch(&patch_url)
                .header(CONTENT_TYPE, "application/octet-stream")
                .header(CONTENT_LENGTH, size)
                .body(body)
        })
        .await
        .with_context(|| format!("{name}: uploading blob {digest} to {}", ep.authority))?;
    if patched.status() != StatusCode::ACCEPTED && patched.status() != StatusCode::NO_CONTENT {
        bail!(
            "{name}: uploading blob {digest} to {}: {}",
            ep.authority,
            status_error(patched).await
        );
    }
    let put_at = location(&patched).unwrap_or_else(|_| started_at.to_string());
    let put_url = upload_url(&base, &put_at, &format!("digest={digest}"));
    let put = client
        .send_once(ep, &scopes, |http, _| {
            http.put(&put_url).header(CONTENT_LENGTH, 0)
        })
        .await?;
    if put.status() != StatusCode::CREATED {
        bail!(
            "{name}: completing blob {digest} on {}: {}",
            ep.authority,
            status_error(put).await
        );
    }
    Ok(())
}

/// A blob file as a request body, read in 1 MiB pieces, progress told.
fn file_body(file: std::fs::File, digest: String, transfer: Arc<dyn Transfer>) -> reqwest::Body {
    let stream =
        tokio_util::io::ReaderStream::with_capacity(tokio::fs::File::from_std(file), 1 << 20);
    let mut sent = 0u64;
    reqwest::Body::wrap_stream(stream.map(move |chunk| {
        if let Ok(c) = &chunk {
            sent += c.len() as u64;
            transfer.progress(&digest, sent);
        }
        chunk
    }))
}

fn location(resp: &reqwest::Response) -> anyhow::Result<String> {
    resp.headers()
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .context("the registry gave no Location for the upload")
}

/// PUTs a manifest (its bytes as stored) under `tag_or_digest` unless a
/// HEAD shows the registry has it there; the digest the registry reports
/// is checked against ours.
pub async fn push_manifest(
    client: &Client,
    target: &Target<'_>,
    desc: &Descriptor,
    bytes: Vec<u8>,
    tag_or_digest: &str,
) -> anyhow::Result<()> {
    let ep = target.endpoint;
    let repo = &target.reference.path;
    let scopes = target.scopes(None);
    // Already there under that name: nothing to write.
    let head = client
        .send(ep, &scopes, |http, base| {
            http.head(format!("{base}/v2/{repo}/manifests/{tag_or_digest}"))
                .header(reqwest::header::ACCEPT, desc.media_type.as_str())
        })
        .await?;
    if head.status().is_success()
        && head
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            == Some(desc.digest.as_str())
    {
        return Ok(());
    }
    let resp = client
        .send(ep, &scopes, |http, base| {
            http.put(format!("{base}/v2/{repo}/manifests/{tag_or_digest}"))
                .header(CONTENT_TYPE, desc.media_type.as_str())
                .body(bytes.clone())
        })
        .await?;
    if resp.status() != StatusCode::CREATED {
        bail!(
            "{}: PUT manifest on {}: {}",
            target.reference,
            ep.authority,
            status_error(resp).await
        );
    }
    if let Some(d) = resp
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        && d != desc.digest
    {
        bail!(
            "{}: {} stored the manifest as {d}, not {}",
            target.reference,
            ep.authority,
            desc.digest
        );
    }
    Ok(())
}
