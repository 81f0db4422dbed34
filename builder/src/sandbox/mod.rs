//! The RUN sandbox: runs one command in a root filesystem, isolated from
//! the host, and streams its output.
//!
//! [`Runtime`] is the seam the scheduler uses (a fake can stand in for it in
//! tests that run without root). [`embedded::Embedded`] is the default: no
//! other program needed; it re-executes the rbuild binary as a helper that
//! enters new mount, PID, UTS and IPC namespaces (and a network namespace
//! with only loopback for `--network=none`), builds `/proc`, `/dev`, `/sys`
//! and `/etc/hosts`/`/etc/resolv.conf` the way runc and BuildKit do,
//! `pivot_root`s into the snapshot, drops to Docker's default capability set
//! with `no_new_privs`, switches user, installs Docker's default seccomp
//! profile ([`seccomp`]) and runs the command. Every process
//! of the step dies with it: they live in the step's PID namespace.

#[cfg(target_os = "linux")]
pub mod embedded;
#[cfg(target_os = "linux")]
pub mod seccomp;
pub mod user;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The network a command sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Network {
    /// The host's network (buildkitd without CNI).
    Host,
    /// A namespace with only loopback.
    None,
}

/// A filesystem mounted into the sandbox besides the root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mount {
    /// A directory or file of the host bound in.
    Bind {
        /// Host path.
        source: PathBuf,
        /// Absolute path inside.
        target: String,
        /// Read-only.
        readonly: bool,
    },
    /// An empty tmpfs.
    Tmpfs {
        /// Absolute path inside.
        target: String,
        /// Size limit in bytes (0: the kernel's default).
        size: u64,
    },
}

/// Everything needed to run one command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunSpec {
    /// The root filesystem (a mounted snapshot).
    pub rootfs: PathBuf,
    /// argv; `args[0]` is looked up in the command's `PATH` if it has no `/`.
    pub args: Vec<String>,
    /// `KEY=VALUE` environment.
    pub env: Vec<String>,
    /// Working directory inside (created when missing).
    pub cwd: String,
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Supplementary groups.
    pub additional_gids: Vec<u32>,
    /// Hostname (BuildKit: `buildkitsandbox`).
    pub hostname: String,
    /// Network.
    pub network: Network,
    /// `--security=insecure`: all capabilities, no masked paths.
    pub insecure: bool,
    /// Extra mounts, in order.
    pub mounts: Vec<Mount>,
    /// Content of `/etc/hosts`.
    pub hosts: String,
    /// Content of `/etc/resolv.conf`.
    pub resolv_conf: String,
}

/// Which stream a chunk of output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// stdout.
    Stdout,
    /// stderr.
    Stderr,
}

/// Sandbox failures (not the command's own exit status).
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// Starting or talking to the helper failed.
    #[error("starting the sandbox for `{command}`")]
    Spawn {
        /// The command.
        command: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The helper could not set the sandbox up.
    #[error("setting up the sandbox: {0}")]
    Setup(String),
}

/// Asks running commands to stop: set once (when a sibling step fails),
/// seen by every run that shares it. Cloning shares the flag.
#[derive(Debug, Clone, Default)]
pub struct Cancel(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Cancel {
    /// Stops every run that watches this flag.
    pub fn cancel(&self) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether [`Cancel::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Runs commands in a root filesystem.
pub trait Runtime: Send + Sync {
    /// Runs `spec`, handing output chunks to `output` as they come, and
    /// returns the command's exit code (128+signal when killed). When
    /// `cancel` is set the command and everything it started are killed.
    fn run(
        &self,
        spec: &RunSpec,
        cancel: &Cancel,
        output: &mut dyn FnMut(Stream, &[u8]),
    ) -> Result<i32, SandboxError>;
}

/// The `/etc/hosts` BuildKit gives a build container.
pub fn default_hosts(hostname: &str) -> String {
    format!("127.0.0.1\tlocalhost {hostname}\n::1\tlocalhost ip6-localhost ip6-loopback\n")
}

/// `/etc/resolv.conf` for the sandbox: the host's, without loopback
/// nameservers (which would not answer inside a network namespace), or
/// public resolvers when nothing is left, as BuildKit does.
pub fn resolv_conf(host: &str, network: Network) -> String {
    let mut out = String::new();
    let mut servers = 0;
    for line in host.lines() {
        let t = line.trim();
        if let Some(ns) = t.strip_prefix("nameserver") {
            let ns = ns.trim();
            let loopback = ns.starts_with("127.") || ns == "::1";
            // Only the host network shares the host's loopback.
            if loopback && network == Network::None {
                continue;
            }
            servers += 1;
        }
        out.push_str(line);
        out.push('\n');
    }
    if servers == 0 {
        out.push_str("nameserver 8.8.8.8\nnameserver 8.8.4.4\n");
    }
    out
}
