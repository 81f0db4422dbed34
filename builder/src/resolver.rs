//! The one answer to "what image is REF": build-context aliases, then the
//! local image store (unless `--pull`), then the registry, whose image is
//! pulled into the store and tagged there. The graph compiler asks it for
//! base configs and the solver for layers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use cache::blob::BlobStore;

use anyhow::bail;
use frontend::stage::Platform;

use crate::images::{self, Aliases, Selected, StoredImage};
use crate::publish::pull_image;
use crate::registry::Registry;
use crate::registry::hosts::Settings;
use crate::registry::transfer::Transfer;

/// Resolves base images for one build: each reference once.
pub struct Resolver<'a> {
    blobs: &'a BlobStore,
    aliases: Aliases,
    settings: Settings,
    /// Re-check every reference on its registry (`--pull`).
    always_pull: bool,
    registry: OnceLock<Registry>,
    resolved: Mutex<HashMap<(String, Platform), StoredImage>>,
    /// The first failure, for the caller of the infallible config lookup:
    /// the reference, and why.
    failure: Mutex<Option<(String, anyhow::Error)>>,
    transfer: Arc<dyn Transfer>,
}

impl<'a> Resolver<'a> {
    /// A resolver over the store `blobs`.
    pub fn new(
        blobs: &'a BlobStore,
        settings: Settings,
        always_pull: bool,
        transfer: Arc<dyn Transfer>,
    ) -> Resolver<'a> {
        Resolver {
            blobs,
            aliases: Aliases::new(),
            settings,
            always_pull,
            registry: OnceLock::new(),
            resolved: Mutex::default(),
            failure: Mutex::default(),
            transfer,
        }
    }

    /// Names `image` `name` for this build (`--build-context
    /// NAME=docker-image://REF|oci-layout://PATH`).
    pub fn alias(&mut self, name: &str, image: StoredImage) {
        self.aliases.insert(name.to_string(), image);
    }

    /// The registry settings (certs.d, config.toml) of this build.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The store images are resolved into.
    pub fn blobs(&self) -> &BlobStore {
        self.blobs
    }

    /// The registry client, made on first use.
    pub fn registry(&self) -> anyhow::Result<&Registry> {
        if let Some(r) = self.registry.get() {
            return Ok(r);
        }
        let r = Registry::new(self.settings.clone())?;
        Ok(self.registry.get_or_init(|| r))
    }

    /// The image `reference` names for `platform`: an alias's, the local
    /// store's (unless `--pull`), else pulled. A tag of the store that
    /// lacks the platform's image is pulled again from where it came from
    /// (its index gains the image); a local image for another platform is
    /// an error unless `platform` is the host's (a base image's platform is
    /// a warning in BuildKit; as before, the image is used).
    pub fn resolve(&self, reference: &str, platform: &Platform) -> anyhow::Result<StoredImage> {
        if let Some(img) = self.aliases.get(reference) {
            return match images::select(self.blobs, img, platform)? {
                Selected::Other(_) if *platform == Platform::host() => Ok(img.clone()),
                selected => selected.image(img, platform),
            };
        }
        let key = (reference.to_string(), platform.clone());
        if let Some(img) = self.resolved.lock().expect("lock").get(&key) {
            return Ok(img.clone());
        }
        let local = if self.always_pull {
            None
        } else {
            images::find(self.blobs, reference)?
        };
        // A tag pulled from a registry can be pulled again for `platform`.
        let pulled = |top: &StoredImage| {
            top.manifest
                .annotations
                .as_ref()
                .is_some_and(|a| a.contains_key(images::SOURCE))
        };
        let found = match &local {
            Some(top) => match images::select(self.blobs, top, platform)? {
                Selected::Image(img) => Some(img),
                Selected::Other(have) if !pulled(top) => {
                    if *platform != Platform::host() {
                        bail!(
                            "the local image {reference} is for {have}, not {platform}: build or pull it for {platform}"
                        );
                    }
                    Some(top.clone())
                }
                Selected::NotLocal(_) | Selected::Other(_) => None,
            },
            None => None,
        };
        let img = match found {
            Some(img) => img,
            // Manifest and config now; layers when a step needs the files.
            None => {
                let top = pull_image(
                    self.registry()?,
                    self.blobs,
                    reference,
                    platform,
                    false,
                    &self.transfer,
                )?;
                match images::select(self.blobs, &top, platform)? {
                    Selected::Image(img) => img,
                    // A registry's single image for another platform: used
                    // for the host's, as BuildKit does (with a warning there).
                    Selected::Other(_) if *platform == Platform::host() => top,
                    Selected::Other(have) => {
                        bail!("{reference} is an image for {have} only (no index with {platform})")
                    }
                    Selected::NotLocal(d) => bail!(
                        "{reference}: its image for {platform} ({}) was not stored",
                        d.digest
                    ),
                }
            }
        };
        self.resolved.lock().expect("lock").insert(key, img.clone());
        Ok(img)
    }

    /// The first resolution that failed during the config lookups of
    /// `plan`'s compilation, at the FROM that names the image.
    pub fn take_failure(&self, plan: &frontend::stage::Plan) -> Option<anyhow::Error> {
        let (reference, e) = self.failure.lock().expect("lock").take()?;
        let from = plan
            .needed
            .iter()
            .map(|&i| &plan.stages[i])
            .find(|s| matches!(&s.base, frontend::stage::Base::Image(r) if *r == reference));
        Some(match from {
            Some(stage) => e.context(crate::solve::StepLocation {
                span: stage.span.clone(),
                name: format!("FROM {reference}"),
            }),
            None => e,
        })
    }
}

impl frontend::graph::ImageConfigs for Resolver<'_> {
    fn config(&self, reference: &str, platform: &Platform) -> Option<frontend::graph::BaseConfig> {
        let read = self
            .resolve(reference, platform)
            .and_then(|img| images::read(self.blobs, &img));
        match read {
            Ok((_, cfg)) => Some(base_config(cfg)),
            Err(e) => {
                self.failure.lock().expect("lock").get_or_insert((
                    reference.to_string(),
                    e.context(format!("resolving the base image {reference}")),
                ));
                None
            }
        }
    }
}

/// What the graph compiler and the checks take from an image's config.
pub fn base_config(image: cache::spec::ImageConfig) -> frontend::graph::BaseConfig {
    let p = &image.platform;
    let platform = (!p.os.is_empty()).then(|| frontend::stage::Platform {
        os: p.os.clone(),
        architecture: p.architecture.clone(),
        variant: p.variant.clone().unwrap_or_default(),
    });
    let c = image.config;
    frontend::graph::BaseConfig {
        platform,
        env: c
            .env
            .unwrap_or_default()
            .iter()
            .map(|e| {
                let (k, v) = e.split_once('=').unwrap_or((e, ""));
                (k.to_string(), v.to_string())
            })
            .collect(),
        workdir: c.working_dir.unwrap_or_default(),
        user: c.user.unwrap_or_default(),
        shell: c.shell.unwrap_or_default(),
        onbuild: c.on_build.unwrap_or_default(),
    }
}
