//! Layers: deterministic tar diffs of snapshots, compressed and stored in one
//! streaming pass ([`write_layer`]), and unpacking of layers onto a
//! directory with OCI whiteouts and hostile-archive protection ([`unpack`]).

mod diff;
pub use diff::KnownDirs;
mod decode;
mod guard;
mod gunzip;
mod paths;
mod pgzip;
mod tar_writer;
mod unpack;
mod write;

use std::io;
use std::path::{Path, PathBuf};

pub use decode::{XZ_MAGIC, decompress, xz_decoder};
pub use guard::{MAX_SPECIAL, TarGuard};
pub use paths::{resolve_in_root, set_times_nofollow};
pub use tar_writer::{CAPABILITY, capabilities, set_capabilities};
pub use unpack::{MAX_ENTRY_SIZE, UnpackOptions, UnpackStats, unpack};
pub use write::{DiffSource, LayerOptions, convert_layer, write_layer, write_tree_tar};

use crate::blob::BlobError;
use crate::spec::{Descriptor, media};
use crate::{Digest, PathError};

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Plain tar.
    Uncompressed,
    /// gzip (Docker's default).
    Gzip,
    /// zstd.
    Zstd,
}

impl std::str::FromStr for Compression {
    type Err = String;

    fn from_str(s: &str) -> Result<Compression, String> {
        match s {
            "uncompressed" => Ok(Compression::Uncompressed),
            "gzip" => Ok(Compression::Gzip),
            "zstd" => Ok(Compression::Zstd),
            _ => Err(format!(
                "unknown compression `{s}` (gzip, zstd or uncompressed)"
            )),
        }
    }
}

/// The media type of a layer blob.
pub fn media_type(compression: Compression, oci: bool) -> &'static str {
    match (compression, oci) {
        (Compression::Uncompressed, true) => media::OCI_LAYER,
        (Compression::Gzip, true) => media::OCI_LAYER_GZIP,
        (Compression::Zstd, true) => media::OCI_LAYER_ZSTD,
        (Compression::Uncompressed, false) => media::DOCKER_LAYER,
        (Compression::Gzip, false) => media::DOCKER_LAYER_GZIP,
        (Compression::Zstd, false) => media::DOCKER_LAYER_ZSTD,
    }
}

/// The chain id of a stack of layers (OCI image spec): the first diff_id,
/// then `sha256(parent_chain_id + " " + diff_id)` for each layer above.
pub fn chain_id(diff_ids: &[Digest]) -> Option<Digest> {
    use sha2::{Digest as _, Sha256};
    let mut it = diff_ids.iter();
    let mut chain = it.next()?.clone();
    for d in it {
        let mut h = Sha256::new();
        h.update(format!("{chain} {d}").as_bytes());
        chain = Digest::of_sha256(h);
    }
    Some(chain)
}

/// A stored layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    /// sha256 of the uncompressed tar (goes in the config's rootfs).
    pub diff_id: Digest,
    /// The compressed blob (goes in the manifest).
    pub descriptor: Descriptor,
    /// Size of the uncompressed tar.
    pub uncompressed_size: u64,
}

/// Layer failures; each names the path or entry.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// A filesystem operation failed.
    #[error(transparent)]
    Io(#[from] PathError),
    /// Storing the blob failed.
    #[error(transparent)]
    Blob(#[from] BlobError),
    /// A file changed while it was being read.
    #[error("{0} changed while the layer was written")]
    Changed(PathBuf),
    /// An archive entry that would escape or abuse the root.
    #[error("refusing layer entry `{entry}`: {reason}")]
    Hostile {
        /// The entry name.
        entry: String,
        /// Why.
        reason: &'static str,
    },
}

impl LayerError {
    pub(crate) fn io(action: &'static str, path: &Path, source: io::Error) -> LayerError {
        LayerError::Io(PathError::at(action, path)(source))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_as_the_image_spec() {
        let a: Digest = format!("sha256:{}", "a".repeat(64)).parse().unwrap();
        let b: Digest = format!("sha256:{}", "b".repeat(64)).parse().unwrap();
        assert_eq!(chain_id(&[]), None);
        assert_eq!(chain_id(std::slice::from_ref(&a)), Some(a.clone()));
        // sha256("sha256:aaa... sha256:bbb...")
        let expected = {
            use sha2::{Digest as _, Sha256};
            let h = Sha256::digest(format!("{a} {b}").as_bytes());
            format!(
                "sha256:{}",
                h.iter().map(|x| format!("{x:02x}")).collect::<String>()
            )
        };
        assert_eq!(chain_id(&[a, b]).unwrap().to_string(), expected);
    }
}
