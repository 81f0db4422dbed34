//! rbuild's content store. It speaks in digests, paths and tar, never in
//! RUN or stage, and depends on no other rbuild crate.
//!
//! So far it owns [`Digest`], the content address every blob, layer and
//! config is known by. The blob store, layers, snapshots and the cache index
//! build on it.

mod digest;

pub use digest::{Digest, DigestError};
