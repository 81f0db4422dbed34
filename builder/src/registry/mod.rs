//! Registries: image references as Docker parses them, and the
//! distribution client (pull, push, login) on reqwest and tokio. The async
//! part stays in here: [`Registry`] gives the rest of rbuild blocking calls
//! on a runtime of its own.

pub mod auth;
pub mod client;
pub mod hosts;
pub mod pull;
pub mod push;
pub mod transfer;

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Context;
use cache::blob::BlobStore;
use cache::spec::{Descriptor, Manifest};

/// References live in the frontend (FROM names are checked there too).
pub use frontend::reference;
pub use reference::Reference;

use client::Client;
use hosts::{Endpoint, Settings};
use transfer::Transfer;

/// An image pulled into the content store.
pub struct Pulled {
    /// The image manifest (for the platform asked for).
    pub manifest: Descriptor,
    /// The index it was chosen from, when the reference names one (kept:
    /// the same tag holds the images of other platforms pulled later).
    pub index: Option<Descriptor>,
    /// Where it came from (`domain/path`), for cross-repository mounts.
    pub source: String,
}

/// The registry client with blocking calls.
pub struct Registry {
    runtime: tokio::runtime::Runtime,
    client: Client,
}

impl Registry {
    /// A client with `settings` (see [`hosts`]).
    pub fn new(settings: Settings) -> anyhow::Result<Registry> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("rbuild-registry")
            .enable_all()
            .build()
            .context("starting the registry client's runtime")?;
        Ok(Registry {
            runtime,
            client: Client::new(settings),
        })
    }

    /// The settings it uses.
    pub fn settings(&self) -> &Settings {
        self.client.settings()
    }

    /// Resolves `reference` (a mirror first when the settings name one) to
    /// `platform`'s manifest, and stores the manifest, its config and
    /// (`with_layers`) its layers, each verified. The manifest is stored
    /// after them, and the index it came through (if any) last. Without layers, a build fetches them when a step needs
    /// the files ([`crate::publish::fetch_missing`]).
    pub fn pull(
        &self,
        blobs: &BlobStore,
        reference: &Reference,
        platform: &frontend::stage::Platform,
        with_layers: bool,
        transfer: &Arc<dyn Transfer>,
    ) -> anyhow::Result<Pulled> {
        let endpoints = self.settings().pull_endpoints(&reference.domain);
        self.runtime.block_on(async {
            let resolved = pull::resolve(&self.client, &endpoints, reference, platform).await?;
            let ep = &resolved.endpoint;
            let config = &resolved.parsed.config;
            pull::small_enough(reference, config)?;
            pull::fetch_blob(&self.client, ep, reference, blobs, config, transfer).await?;
            let layers: &[Descriptor] = if with_layers {
                &resolved.parsed.layers
            } else {
                &[]
            };
            {
                use futures_util::{StreamExt as _, TryStreamExt as _};
                // The first failure ends the pull.
                futures_util::stream::iter(layers)
                    .map(|d| pull::fetch_blob(&self.client, ep, reference, blobs, d, transfer))
                    .buffer_unordered(push::PARALLEL)
                    .try_collect::<()>()
                    .await?;
            }
            blobs.put_bytes(&resolved.manifest.bytes)?;
            if let Some(index) = &resolved.index {
                blobs.put_bytes(&index.bytes)?;
            }
            Ok(Pulled {
                manifest: resolved.manifest.descriptor,
                index: resolved.index.map(|i| i.descriptor),
                source: reference.name(),
            })
        })
    }

    /// Pushes the image `manifest` (from `blobs`) as `reference`: blobs the
    /// registry lacks (mounted from `mount_from`'s repositories when they
    /// hold them), then the manifest under the reference's tag or digest.
    /// An index goes after its images, each pushed by digest.
    pub fn push(
        &self,
        blobs: &BlobStore,
        manifest: &Descriptor,
        reference: &Reference,
        mount_from: &HashMap<String, String>,
        transfer: &Arc<dyn Transfer>,
    ) -> anyhow::Result<()> {
        let images = crate::images::image_manifests(blobs, manifest)?;
        let bytes = blobs
            .read(&manifest.digest.parse()?)
            .with_context(|| format!("reading the manifest {}", manifest.digest))?;
        let ep = Endpoint::origin(&reference.domain);
        let target = push::Target {
            endpoint: &ep,
            reference,
            mount_from,
        };
        let tag = reference
            .digest
            .clone()
            .or_else(|| reference.tag.clone())
            .unwrap_or_else(|| "latest".into());
        self.runtime.block_on(async {
            for image in &images {
                let m = &image.manifest;
                let mut descs = vec![m.config.clone()];
                descs.extend(m.layers.iter().cloned());
                push::push_blobs(&self.client, &target, blobs, &descs, transfer).await?;
                let desc = &image.descriptor;
                if desc.digest != manifest.digest {
                    push::push_manifest(
                        &self.client,
                        &target,
                        desc,
                        image.bytes.clone(),
                        &desc.digest,
                    )
                    .await?;
                }
            }
            push::push_manifest(&self.client, &target, manifest, bytes, &tag).await
        })
    }

    /// The image manifest `reference` names (an index resolved to the
    /// build platform), verified.
    pub fn fetch_manifest(&self, reference: &Reference) -> anyhow::Result<Manifest> {
        let endpoints = self.settings().pull_endpoints(&reference.domain);
        self.runtime.block_on(async {
            let host = frontend::stage::Platform::host();
            let resolved = pull::resolve(&self.client, &endpoints, reference, &host).await?;
            Ok(resolved.parsed)
        })
    }

    /// A small blob (a config) of `reference`'s repository, verified,
    /// read into memory.
    pub fn fetch_small_blob(
        &self,
        reference: &Reference,
        desc: &Descriptor,
    ) -> anyhow::Result<Vec<u8>> {
        pull::small_enough(reference, desc)?;
        let tmp = crate::tempdir::TempDir::new("small-blob")?;
        let blobs = BlobStore::open(&tmp.path)?;
        self.fetch_blob(
            &blobs,
            reference,
            desc,
            &(Arc::new(transfer::Silent) as Arc<dyn Transfer>),
        )?;
        Ok(blobs.read(&desc.digest.parse()?)?)
    }

    /// Downloads the blob `desc` of `reference`'s repository into `blobs`
    /// (verified; nothing stored on a mismatch), from a mirror when one
    /// has it.
    pub fn fetch_blob(
        &self,
        blobs: &BlobStore,
        reference: &Reference,
        desc: &Descriptor,
        transfer: &Arc<dyn Transfer>,
    ) -> anyhow::Result<()> {
        // Mirrors first, as for the manifest; the domain's own host last.
        let endpoints = self.settings().pull_endpoints(&reference.domain);
        self.runtime.block_on(async {
            let mut failed = Vec::new();
            for ep in &endpoints {
                match pull::fetch_blob(&self.client, ep, reference, blobs, desc, transfer).await {
                    Ok(()) => return Ok(()),
                    Err(e) if ep.is_mirror_of(&reference.domain) => failed.push(format!("{e:#}")),
                    Err(e) if failed.is_empty() => return Err(e),
                    Err(e) => {
                        return Err(e.context(format!("mirrors failed too: {}", failed.join("; "))));
                    }
                }
            }
            unreachable!("the domain's own host is the last endpoint")
        })
    }

    /// Checks `username`/`secret` against `domain` as `docker login` does
    /// (Basic on `/v2/`, or a token from the Bearer realm).
    pub fn check_login(&self, domain: &str, username: &str, secret: &str) -> anyhow::Result<()> {
        self.client.set_credentials(
            domain,
            auth::Credentials {
                username: username.to_string(),
                secret: secret.to_string(),
                identity_token: false,
                source: "the given user name and password".into(),
            },
        );
        let ep = Endpoint::origin(domain);
        self.runtime.block_on(self.client.check_login(&ep))
    }
}
