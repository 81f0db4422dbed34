//! rbuild: a daemonless Dockerfile image builder.
//!
//! ```text
//!              builder (this crate: the `rbuild` binary, solver, sandbox,
//!              /     \  exporters, registry client)
//!         frontend   cache
//!   (Dockerfile ->   (digests, blobs, layers,
//!    build graph)     snapshots, cache index)
//! ```
//!
//! `frontend` and `cache` depend on no rbuild crate; this crate joins them.
//! [`cli`] defines the command line of `../shared/CLI.md`; [`commands`] runs
//! each command.

pub mod annotations;
pub mod attest;
pub mod bind;
pub mod changes;
pub mod cli;
pub mod commands;
pub mod copy;
pub mod dockerfile;
pub mod emulation;
pub mod export;
pub mod image;
pub mod images;
pub mod interrupt;
pub mod mask;
pub mod platform;
pub mod progress;
pub mod publish;
pub mod registry;
pub mod remote;
pub mod resolver;
pub mod rootless;
pub mod sandbox;
pub mod secrets;
pub mod shared_cache;
pub mod solve;
pub mod ssh;
pub mod tempdir;
pub mod tty;
pub mod verify;
