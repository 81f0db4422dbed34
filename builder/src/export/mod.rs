//! Exporters (`-o`): the image as an OCI archive or layout directory, a
//! `docker load` archive, the final filesystem as a directory or a tar.
//!
//! Everything is written next to its destination under a temporary name and
//! renamed into place at the end, so a failed export leaves nothing
//! half-written; `dest=-` streams a tar to stdout.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use cache::blob::BlobStore;
use cache::gc::Store;
use cache::spec::{Descriptor, Index, Manifest, media, to_canonical_json};

mod convert;
mod output;

pub use convert::*;
pub use output::*;

fn index_for(desc: &Descriptor, names: &[String]) -> Index {
    let mut d = desc.clone();
    if let Some(name) = names.first() {
        // The descriptor's own annotations (`--annotation
        // manifest-descriptor:` or `index-descriptor:`) stay beside the names.
        let mut ann = d.annotations.take().unwrap_or_default();
        ann.insert(
            crate::images::FULL_NAME.to_string(),
            crate::images::normalize(name),
        );
        // The tag part names the image inside the archive (oci-archive:f.tar:tag).
        let tag = name
            .rsplit_once(':')
            .filter(|(_, t)| !t.contains('/'))
            .map_or("latest", |(_, t)| t);
        ann.insert(crate::images::REF_NAME.to_string(), tag.to_string());
        d.annotations = Some(ann);
    }
    Index {
        manifests: vec![d],
        ..Index::default()
    }
}

/// Where a file export is written until it is complete.
struct Pending {
    tmp: PathBuf,
    dest: PathBuf,
}

impl Pending {
    fn new(dest: &Path) -> Pending {
        let name = dest
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "out".into());
        let tmp = dest.with_file_name(format!(".{name}.rbuild-{}", std::process::id()));
        Pending {
            tmp,
            dest: dest.to_path_buf(),
        }
    }

    fn commit(self) -> anyhow::Result<()> {
        if self.dest.is_dir() && self.tmp.is_dir() {
            // Replace a directory export.
            let old = self
                .dest
                .with_file_name(format!(".old-{}", std::process::id()));
            fs::rename(&self.dest, &old)
                .with_context(|| format!("replacing {}", self.dest.display()))?;
            fs::rename(&self.tmp, &self.dest)
                .with_context(|| format!("writing {}", self.dest.display()))?;
            let _ = cache::tree::remove_tree(&old);
            return Ok(());
        }
        fs::rename(&self.tmp, &self.dest)
            .with_context(|| format!("writing {}", self.dest.display()))
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if self.tmp.is_dir() {
            let _ = cache::tree::remove_tree(&self.tmp);
        } else {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Runs `write` against the destination file or stdout (`-`), atomically.
fn to_file(
    dest: &str,
    write: impl FnOnce(&mut dyn Write) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    if dest == "-" {
        let stdout = io::stdout();
        let mut lock = stdout.lock();
        write(&mut lock)?;
        lock.flush()?;
        return Ok(());
    }
    let pending = Pending::new(Path::new(dest));
    {
        // A leftover of a killed run with our pid would stop create_new.
        let _ = fs::remove_file(&pending.tmp);
        // Around the page cache, as blobs are (see cache::direct): an
        // archive is written once and rarely read back here.
        let mut f = cache::direct::DirectWriter::create_new(&pending.tmp)
            .with_context(|| format!("creating {}", pending.tmp.display()))?;
        write(&mut f)?;
        f.finish()
            .and_then(|f| f.sync_all())
            .with_context(|| format!("writing {}", pending.tmp.display()))?;
    }
    pending.commit()
}

fn tar_entry(
    tar: &mut tar::Builder<&mut dyn Write>,
    path: &str,
    data: &mut dyn io::Read,
    size: u64,
) -> anyhow::Result<()> {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_size(size);
    h.set_mtime(0);
    tar.append_data(&mut h, path, data)?;
    Ok(())
}

fn blob_entry(
    tar: &mut tar::Builder<&mut dyn Write>,
    blobs: &BlobStore,
    digest: &str,
) -> anyhow::Result<()> {
    let d = digest.parse()?;
    let size = blobs.size(&d)?;
    let mut r = blobs.open_verified(&d)?;
    tar_entry(tar, &format!("blobs/sha256/{}", d.hex()), &mut r, size)
}

/// The manifest to export: the stored one, or a Docker v2s2 copy.
fn manifest_for(
    blobs: &BlobStore,
    manifest: &Descriptor,
    oci: bool,
) -> anyhow::Result<(Descriptor, Manifest, Vec<u8>)> {
    let bytes = blobs.read(&manifest.digest.parse()?)?;
    let mut m: Manifest = serde_json::from_slice(&bytes)?;
    if oci {
        return Ok((manifest.clone(), m, bytes));
    }
    m.media_type = Some(media::DOCKER_MANIFEST.into());
    m.config.media_type = media::DOCKER_CONFIG.into();
    for l in &mut m.layers {
        l.media_type = match l.media_type.as_str() {
            media::OCI_LAYER_GZIP => media::DOCKER_LAYER_GZIP.into(),
            media::OCI_LAYER => media::DOCKER_LAYER.into(),
            media::OCI_LAYER_ZSTD => media::DOCKER_LAYER_ZSTD.into(),
            other => other.into(),
        };
    }
    let bytes = to_canonical_json(&m);
    let digest = blobs.put_bytes(&bytes)?;
    Ok((
        Descriptor::new(media::DOCKER_MANIFEST, &digest, bytes.len() as u64),
        m,
        bytes,
    ))
}

/// The blobs of the image `top` in the order an archive lists them: the
/// index (if it is one), then each manifest, its config and its layers,
/// each once; with the manifests.
fn image_blobs(
    blobs: &BlobStore,
    top: &Descriptor,
) -> anyhow::Result<(Vec<String>, Vec<Manifest>)> {
    let images = crate::images::image_manifests(blobs, top)?;
    let mut order = vec![top.digest.clone()];
    if crate::images::is_index(&top.media_type) {
        order.extend(images.iter().map(|i| i.descriptor.digest.clone()));
    }
    let mut manifests = Vec::new();
    for i in images {
        order.push(i.manifest.config.digest.clone());
        order.extend(i.manifest.layers.iter().map(|l| l.digest.clone()));
        manifests.push(i.manifest);
    }
    let mut seen = std::collections::BTreeSet::new();
    order.retain(|d| seen.insert(d.clone()));
    Ok((order, manifests))
}

/// `type=oci` and `type=docker`: the image (or index) as an archive (or
/// layout dir), its layers in `format`.
pub fn export_image(
    store: &Store,
    manifest: &Descriptor,
    out: &Output,
    names: &[String],
    format: LayerFormat,
) -> anyhow::Result<()> {
    let blobs = &store.blobs;
    let docker = out.kind == OutputKind::Docker;
    if docker && crate::images::is_index(&manifest.media_type) {
        bail!(
            "type=docker holds the image of one platform (docker load reads no index): build one --platform for it, or use type=oci"
        );
    }
    let oci = oci_media_types(out, format);
    let desc = Descriptor {
        annotations: manifest.annotations.clone(),
        ..converted_image(store, manifest, format, oci)?
    };
    let (order, manifests) = image_blobs(blobs, &desc)?;
    let index = index_for(&desc, names);
    let dest = out.dest.as_deref().expect("checked when parsing");
    if !out.tar {
        if docker {
            bail!("type=docker with tar=false is not a format docker reads");
        }
        let pending = Pending::new(Path::new(dest));
        let layout = BlobStore::open(&pending.tmp)?;
        for d in &order {
            let digest = d.parse()?;
            layout.put(
                blobs.open_verified(&digest)?,
                Some((&digest, blobs.size(&digest)?)),
            )?;
        }
        layout.update_index(|i| *i = index.clone())?;
        // The store's own bookkeeping is not part of an OCI layout.
        let _ = cache::tree::remove_tree(pending.tmp.join("blobs/.tmp"));
        let _ = fs::remove_file(pending.tmp.join("index.json.lock"));
        return pending.commit();
    }
    to_file(dest, |w| {
        let mut tar = tar::Builder::new(w);
        let layout = format!(
            "{{\"imageLayoutVersion\":\"{}\"}}",
            media::OCI_LAYOUT_VERSION
        );
        tar_entry(
            &mut tar,
            "oci-layout",
            &mut layout.as_bytes(),
            layout.len() as u64,
        )?;
        let index_bytes = to_canonical_json(&index);
        tar_entry(
            &mut tar,
            "index.json",
            &mut index_bytes.as_slice(),
            index_bytes.len() as u64,
        )?;
        for d in &order {
            blob_entry(&mut tar, blobs, d)?;
        }
        if docker {
            let m = &manifests[0];
            // docker load's own index.
            let repo_tags: Vec<String> = names.iter().map(|n| docker_tag(n)).collect();
            let manifest_json = serde_json::json!([{
                "Config": format!("blobs/sha256/{}", m.config.digest.trim_start_matches("sha256:")),
                "RepoTags": repo_tags,
                "Layers": m.layers.iter().map(|l| format!("blobs/sha256/{}", l.digest.trim_start_matches("sha256:"))).collect::<Vec<_>>(),
            }]);
            let bytes = serde_json::to_vec(&manifest_json)?;
            tar_entry(
                &mut tar,
                "manifest.json",
                &mut bytes.as_slice(),
                bytes.len() as u64,
            )?;
        }
        tar.finish()?;
        Ok(())
    })
}

/// `docker.io/library/demo:1` -> `demo:1`, as docker shows tags.
fn docker_tag(name: &str) -> String {
    let full = crate::images::normalize(name);
    full.strip_prefix("docker.io/library/")
        .or_else(|| full.strip_prefix("docker.io/"))
        .unwrap_or(&full)
        .to_string()
}

/// `type=local`: the final filesystem as a directory; `files` holds each
/// platform's snapshot and the directory it goes to (`""`: the top).
pub fn export_local(
    store: &Store,
    files: &[(String, Option<String>)],
    dest: &str,
) -> anyhow::Result<()> {
    let pending = Pending::new(Path::new(dest));
    fs::create_dir_all(&pending.tmp)?;
    materialize_all(store, files, &pending.tmp)?;
    // An ordinary user's files are the user's (root in its namespace), as
    // BuildKit's client writes them; the image keeps the owners.
    if crate::rootless::inside() {
        own_all(&pending.tmp)?;
    }
    pending.commit()
}

/// Each of `files` made under `dir` (in its subdirectory, if it names one).
fn materialize_all(
    store: &Store,
    files: &[(String, Option<String>)],
    dir: &Path,
) -> anyhow::Result<()> {
    for (sub, snapshot) in files {
        let target = dir.join(sub);
        fs::create_dir_all(&target)?;
        if let Some(s) = snapshot {
            store.snapshots.materialize(s, &target)?;
        }
    }
    Ok(())
}

/// Every entry under `dir` owned by this process's root, modes kept (a
/// change of owner clears set-id bits).
fn own_all(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    for e in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = e?.path();
        let meta = fs::symlink_metadata(&path)?;
        std::os::unix::fs::lchown(&path, Some(0), Some(0))
            .with_context(|| format!("changing the owner of {}", path.display()))?;
        if meta.is_dir() {
            own_all(&path)?;
        }
        if !meta.file_type().is_symlink() {
            fs::set_permissions(&path, fs::Permissions::from_mode(meta.mode() & 0o7777))?;
        }
    }
    Ok(())
}

/// `type=tar`: the final filesystem as one tar (each platform's in its
/// directory, as [`export_local`]).
pub fn export_tar(
    store: &Store,
    files: &[(String, Option<String>)],
    dest: &str,
) -> anyhow::Result<()> {
    // Removed when done, failed or interrupted.
    let scratch = crate::tempdir::TempDir::new("export")?;
    materialize_all(store, files, &scratch.path)?;
    to_file(dest, |w| {
        cache::layer::write_tree_tar(&scratch.path, w, None)?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_tags_keep_their_names() {
        assert_eq!(docker_tag("demo:1"), "demo:1");
        assert_eq!(docker_tag("ghcr.io/a/b:2"), "ghcr.io/a/b:2");
    }
}
