//! `rbuild build --verify`: is the image reproducible? The build runs
//! again with `--no-cache` and the two images are compared: the same image
//! id, or a report naming the config fields that differ, the first layer
//! that differs and the files in it that differ (and how: content, mode,
//! owner, mtime, xattrs, link target, type).

use std::collections::BTreeMap;
use std::io::Read;

use crate::changes::{Change, changes};
use anyhow::Context;
use cache::blob::BlobStore;
use cache::spec::{Descriptor, Manifest};
use serde_json::Value;

/// How one tar entry looks, for the comparison.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    kind: u8,
    mode: u32,
    owner: (u64, u64),
    mtime: u64,
    link: Option<Vec<u8>>,
    xattrs: Vec<(String, Vec<u8>)>,
    /// sha256 of the data.
    content: String,
}

/// What differs between two builds' images (`first` and `second`, their
/// manifest descriptors), in lines; empty when they are the same.
pub fn differences(
    blobs: &BlobStore,
    first: &Descriptor,
    second: &Descriptor,
) -> anyhow::Result<Vec<String>> {
    if first.digest == second.digest {
        return Ok(Vec::new());
    }
    let (m1, m2) = (manifest(blobs, first)?, manifest(blobs, second)?);
    let mut out = Vec::new();
    let (c1, c2) = (config(blobs, &m1)?, config(blobs, &m2)?);
    if let (Some(a), Some(b)) = (c1.as_object(), c2.as_object()) {
        for (field, v) in b {
            if field == "rootfs" {
                continue;
            }
            if a.get(field) != Some(v) {
                out.push(format!("config: {field} differs"));
            }
        }
    }
    for (i, (l1, l2)) in m1.layers.iter().zip(&m2.layers).enumerate() {
        if l1.digest == l2.digest {
            continue;
        }
        out.push(format!(
            "layer {} differs ({} / {})",
            i + 1,
            l1.digest,
            l2.digest
        ));
        let (e1, e2) = (entries(blobs, l1)?, entries(blobs, l2)?);
        let mut files: Vec<String> = changes(&e1, &e2)
            .into_iter()
            .map(|c| match c {
                Change::Added(path) => format!("  {path}: only in the second build"),
                Change::Changed(path, a, b) => format!("  {path}: {}", how(a, b)),
                Change::Removed(path) => format!("  {path}: only in the first build"),
            })
            .collect();
        if files.is_empty() {
            files.push("  the same files, in another order or encoding".into());
        }
        let more = files.len().saturating_sub(20);
        out.extend(files.into_iter().take(20));
        if more > 0 {
            out.push(format!("  and {more} more"));
        }
        // The first layer that differs; later ones follow from it.
        break;
    }
    if m1.layers.len() != m2.layers.len() {
        out.push(format!(
            "{} layers against {}",
            m1.layers.len(),
            m2.layers.len()
        ));
    }
    if out.is_empty() {
        out.push("the manifests differ".into());
    }
    Ok(out)
}

/// Which aspects of an entry differ.
fn how(a: &Entry, b: &Entry) -> String {
    let aspects = [
        ("type", a.kind != b.kind),
        ("content", a.content != b.content),
        ("mode", a.mode != b.mode),
        ("owner", a.owner != b.owner),
        ("mtime", a.mtime != b.mtime),
        ("link target", a.link != b.link),
        ("xattrs", a.xattrs != b.xattrs),
    ];
    let differ: Vec<&str> = aspects
        .iter()
        .filter(|(_, differs)| *differs)
        .map(|(name, _)| *name)
        .collect();
    differ.join(", ")
}

fn manifest(blobs: &BlobStore, desc: &Descriptor) -> anyhow::Result<Manifest> {
    let bytes = blobs.read(&desc.digest.parse()?)?;
    serde_json::from_slice(&bytes).with_context(|| format!("reading manifest {}", desc.digest))
}

fn config(blobs: &BlobStore, m: &Manifest) -> anyhow::Result<Value> {
    let bytes = blobs.read(&m.config.digest.parse()?)?;
    Ok(serde_json::from_slice(&bytes)?)
}

/// A layer's entries by path (data hashed as it streams).
fn entries(blobs: &BlobStore, layer: &Descriptor) -> anyhow::Result<BTreeMap<String, Entry>> {
    use sha2::{Digest as _, Sha256};
    let reader = blobs.open_verified(&layer.digest.parse()?)?;
    let mut archive = tar::Archive::new(cache::layer::TarGuard::new(cache::layer::decompress(
        reader,
    )?));
    let mut out = BTreeMap::new();
    for e in archive.entries()? {
        let mut e = e?;
        let path = String::from_utf8_lossy(&e.path_bytes()).into_owned();
        let h = e.header().clone();
        let link = e.link_name_bytes().map(|l| l.into_owned());
        let mut xattrs = Vec::new();
        if let Some(pax) = e.pax_extensions()? {
            for ext in pax.flatten() {
                if let Ok(k) = ext.key()
                    && k.starts_with("SCHILY.xattr.")
                {
                    xattrs.push((k.to_string(), ext.value_bytes().to_vec()));
                }
            }
        }
        xattrs.sort();
        let mut hasher = Sha256::new();
        let mut buf = [0u8; 64 << 10];
        loop {
            let n = e.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        out.insert(
            path,
            Entry {
                kind: h.entry_type().as_byte(),
                mode: h.mode().unwrap_or(0),
                owner: (h.uid().unwrap_or(0), h.gid().unwrap_or(0)),
                mtime: h.mtime().unwrap_or(0),
                link,
                xattrs,
                content: cache::Digest::of_sha256(hasher).to_string(),
            },
        );
    }
    Ok(out)
}
