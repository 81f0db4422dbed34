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
use cache::layer::Compression;
use cache::spec::{Descriptor, Index, Manifest, media, to_canonical_json};

/// What an output writes (`type=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind {
    /// The local image store (with `name=` tags).
    Image,
    /// A registry (needs the registry client).
    Registry,
    /// An OCI archive or layout directory.
    Oci,
    /// A `docker load` archive.
    Docker,
    /// The final filesystem as a directory.
    Local,
    /// The final filesystem as a tar.
    Tar,
    /// Nothing but the caches `--cache-to` names (the image stays in the
    /// local store, as every build's does).
    CacheOnly,
}

impl OutputKind {
    /// The `type=` word.
    pub fn name(self) -> &'static str {
        match self {
            OutputKind::Image => "image",
            OutputKind::Registry => "registry",
            OutputKind::Oci => "oci",
            OutputKind::Docker => "docker",
            OutputKind::Local => "local",
            OutputKind::Tar => "tar",
            OutputKind::CacheOnly => "cacheonly",
        }
    }

    /// Whether it writes to `dest=`.
    fn needs_dest(self) -> bool {
        !matches!(
            self,
            OutputKind::Image | OutputKind::Registry | OutputKind::CacheOnly
        )
    }
}

impl std::fmt::Display for OutputKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for OutputKind {
    type Err = String;

    fn from_str(s: &str) -> Result<OutputKind, String> {
        Ok(match s {
            "image" => OutputKind::Image,
            "registry" => OutputKind::Registry,
            "oci" => OutputKind::Oci,
            "docker" => OutputKind::Docker,
            "local" => OutputKind::Local,
            "tar" => OutputKind::Tar,
            "cacheonly" => OutputKind::CacheOnly,
            other => {
                return Err(format!(
                    "unknown type {other:?} (image, registry, oci, docker, local, tar, cacheonly)"
                ));
            }
        })
    }
}

/// A parsed `-o` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// `type=`.
    pub kind: OutputKind,
    /// `dest=`.
    pub dest: Option<String>,
    /// `tar=false` (oci: a layout directory).
    pub tar: bool,
    /// `oci-mediatypes=`.
    pub oci_media_types: Option<bool>,
    /// `name=`.
    pub names: Vec<String>,
    /// `compression=`.
    pub compression: Option<Compression>,
    /// `push=true`.
    pub push: bool,
    /// `compression-level=`.
    pub compression_level: Option<i32>,
    /// `rewrite-timestamp=true`: new layers' file times clamped to
    /// SOURCE_DATE_EPOCH.
    pub rewrite_timestamp: bool,
    /// `force-compression=true`: base-image layers are re-encoded too.
    pub force_compression: bool,
    /// `annotation[-TYPE][PLATFORM].KEY=VALUE` options.
    pub annotations: crate::annotations::Annotations,
}

impl Output {
    /// An output of `kind` to `dest` with every option at its default.
    pub fn new(kind: OutputKind, dest: Option<&str>) -> Output {
        Output {
            kind,
            dest: dest.map(str::to_string),
            tar: true,
            oci_media_types: None,
            names: Vec::new(),
            compression: None,
            push: false,
            compression_level: None,
            rewrite_timestamp: false,
            force_compression: false,
            annotations: Default::default(),
        }
    }
}

/// Parses `type=oci,dest=out.tar,...`.
pub fn parse_output(spec: &str) -> anyhow::Result<Output> {
    if !spec.contains('=') {
        // buildx: a bare path means type=local.
        return Ok(Output::new(OutputKind::Local, Some(spec)));
    }
    let mut kind = None;
    let mut out = Output::new(OutputKind::Image, None);
    for field in spec.split(',') {
        let (k, v) = field.split_once('=').unwrap_or((field, ""));
        let bool_value = |v: &str| match v {
            "true" | "" => Ok(true),
            "false" => Ok(false),
            _ => bail!("--output {spec}: {k} must be true or false"),
        };
        match k {
            "type" => {
                kind = Some(
                    v.parse::<OutputKind>()
                        .map_err(|e| anyhow::anyhow!("--output {spec}: {e}"))?,
                )
            }
            "dest" => out.dest = Some(v.to_string()),
            "tar" => out.tar = bool_value(v)?,
            "oci-mediatypes" => out.oci_media_types = Some(bool_value(v)?),
            "name" => out
                .names
                .extend(v.split(';').filter(|n| !n.is_empty()).map(str::to_string)),
            "compression" => {
                out.compression = Some(
                    v.parse()
                        .map_err(|e: String| anyhow::anyhow!("--output {spec}: {e}"))?,
                )
            }
            "push" => out.push = bool_value(v)?,
            "compression-level" => out.compression_level = Some(
                v.parse()
                    .ok()
                    .filter(|l| (0..=22).contains(l))
                    .ok_or_else(|| {
                        anyhow::anyhow!(
                            "--output {spec}: compression-level must be 0-9 (gzip) or 0-22 (zstd)"
                        )
                    })?,
            ),
            "rewrite-timestamp" => out.rewrite_timestamp = bool_value(v)?,
            "force-compression" => out.force_compression = bool_value(v)?,
            other if out.annotations.add_output_option(other, v)? => {}
            other => bail!("--output {spec}: unknown option {other:?}"),
        }
    }
    out.kind = kind.ok_or_else(|| anyhow::anyhow!("--output {spec}: type= is required"))?;
    if out.kind.needs_dest() && out.dest.is_none() {
        bail!("--output {spec}: dest= is required for type={}", out.kind);
    }
    Ok(out)
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
            let _ = fs::remove_dir_all(&old);
            return Ok(());
        }
        fs::rename(&self.tmp, &self.dest)
            .with_context(|| format!("writing {}", self.dest.display()))
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if self.tmp.is_dir() {
            let _ = fs::remove_dir_all(&self.tmp);
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
        let _ = fs::remove_dir_all(pending.tmp.join("blobs/.tmp"));
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
    fn outputs_parse_like_buildx() {
        let o = parse_output("type=oci,dest=out.tar").unwrap();
        assert_eq!(
            (o.kind, o.dest.as_deref(), o.tar),
            (OutputKind::Oci, Some("out.tar"), true)
        );
        let o = parse_output("type=oci,dest=dir,tar=false").unwrap();
        assert!(!o.tar);
        assert_eq!(parse_output("out").unwrap().kind, OutputKind::Local);
        assert!(parse_output("type=docker").is_err());
        assert!(parse_output("type=nope,dest=x").is_err());
        assert!(parse_output("dest=x").is_err());
        let o = parse_output("type=oci,dest=x,compression=zstd").unwrap();
        assert_eq!(o.compression, Some(Compression::Zstd));
        let e = parse_output("type=oci,dest=x,compression=lz4").unwrap_err();
        assert!(e.to_string().contains("compression"), "{e}");
        assert_eq!(docker_tag("demo:1"), "demo:1");
        assert_eq!(docker_tag("ghcr.io/a/b:2"), "ghcr.io/a/b:2");
    }
}
