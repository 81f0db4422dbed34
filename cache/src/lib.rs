//! rbuild's content store. It speaks in digests, paths and tar, never in
//! RUN or stage, and depends on no other rbuild crate.
//!
//! - [`Digest`]: the content address every blob, layer and config is known by.
//! - [`blob::BlobStore`]: sha256 blobs in an OCI image layout, written
//!   atomically and verified on read.
//! - [`spec`]: image-spec types (descriptor, manifest, index, config with
//!   every Docker field) with deterministic JSON.
//! - [`layer`]: deterministic layer tars (gzip, zstd, none) and safe unpack;
//!   [`snapshot`]: overlay or copy snapshots; [`index`]: the SQLite cache
//!   index; [`gc`]: disk usage and prune; [`lock`]: file locks.
//! - [`direct::DirectWriter`]: large writes around the page cache (blobs,
//!   export archives); [`PathError`]: the filesystem failure every module's
//!   error carries; [`tree::remove_tree`]: removal of a tree however deep.

pub mod blob;
mod digest;
pub mod direct;
pub mod gc;
pub mod index;
pub mod layer;
pub mod lock;
mod path_error;
pub mod snapshot;
pub mod spec;
pub mod tree;

pub use digest::{Digest, DigestError};
pub use path_error::PathError;

/// The xattr that marks an overlay directory opaque here:
/// `trusted.overlay.opaque` as the host's root, `user.overlay.opaque` in a
/// user namespace (whose overlay mounts say `userxattr`: `trusted.*` needs
/// the host's CAP_SYS_ADMIN).
pub fn overlay_opaque_xattr() -> &'static str {
    if in_user_namespace() {
        "user.overlay.opaque"
    } else {
        "trusted.overlay.opaque"
    }
}

/// Whether `path` is a directory marked opaque in any form: the kernel's
/// (`trusted.` or, in a user namespace, `user.overlay.opaque`) or
/// fuse-overlayfs's (`user.fuseoverlayfs.opaque`, with a marker file).
pub fn is_overlay_opaque(path: &std::path::Path) -> bool {
    [
        "trusted.overlay.opaque",
        "user.overlay.opaque",
        "user.fuseoverlayfs.opaque",
    ]
    .iter()
    .any(|n| matches!(xattr::get(path, n), Ok(Some(v)) if v == b"y"))
}

/// The file fuse-overlayfs leaves in an opaque directory beside its xattr
/// (the OCI name of an opaque marker: never a file of a layer).
pub const OPAQUE_MARKER: &str = ".wh..wh..opq";

/// Whether xattr `name` is overlayfs's own bookkeeping (kernel or
/// fuse-overlayfs): never copied, never in a layer.
pub fn is_overlay_xattr(name: &[u8]) -> bool {
    name.starts_with(b"trusted.overlay.")
        || name.starts_with(b"user.overlay.")
        || name.starts_with(b"user.fuseoverlayfs.")
}

/// Whether this process is in a user namespace other than the host's
/// (whose uid map is the whole identity map): an ordinary user's rbuild,
/// where device nodes can't be made and overlayfs can't rename lower
/// directories.
/// Read once: a process does not change its user namespace.
pub fn in_user_namespace() -> bool {
    static IN_NAMESPACE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *IN_NAMESPACE.get_or_init(|| {
        std::fs::read_to_string("/proc/self/uid_map")
            .is_ok_and(|m| m.split_whitespace().collect::<Vec<_>>() != ["0", "0", "4294967295"])
    })
}
