//! A build cache that travels between machines: `--cache-to` writes the
//! records of a build's steps and their layers where another machine's
//! `--cache-from` reads them. The layout is BuildKit's (an OCI manifest
//! whose config is `application/vnd.buildkit.cacheconfig.v0`, the layers
//! as blobs, in an OCI layout directory or a registry); the records are
//! rbuild's own cache keys, which depend only on content and instructions.
//!
//! [`spec`] reads the flags, [`export`] writes, [`import`] reads a cache
//! and brings a hit's layer into the local store when a step needs it.

pub mod export;
pub mod import;
pub mod spec;

use cache::spec::Descriptor;

pub use import::Imports;
pub use spec::{CacheFrom, CacheTo, Mode};

/// The config media type of BuildKit's cache manifests.
pub const CACHE_CONFIG: &str = "application/vnd.buildkit.cacheconfig.v0";
/// The image config field of an inline cache (BuildKit's).
pub const INLINE_FIELD: &str = "moby.buildkit.cache.v0";
/// The annotation naming the cache mount a blob holds.
pub const CACHE_MOUNT: &str = "io.rbuild.cache-mount";
/// The annotation holding a layer's uncompressed digest (as containerd's).
pub const UNCOMPRESSED: &str = "containerd.io/uncompressed";

/// One step's result as it travels: its key, layer (none when the step
/// changed nothing) and time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheRecord {
    /// The step's cache key (64 hex digits).
    pub key: String,
    /// The layer (as stored) and its diff_id.
    pub layer: Option<(Descriptor, String)>,
    /// When the step's result was made (its history time).
    pub created: String,
}
