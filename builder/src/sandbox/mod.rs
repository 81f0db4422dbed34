//! The RUN sandbox: runs one command in a root filesystem, isolated from
//! the host, and streams its output.
//!
//! [`Runtime`] is the seam the scheduler uses (a fake can stand in for it in
//! tests that run without root). [`embedded::Embedded`] is the default: no
//! other program needed; it starts the step's first process with clone(2)
//! in new mount, PID, UTS and IPC namespaces (and a network namespace
//! with only loopback for `--network=none`; where cgroup v2 is unified, a
//! cgroup of its own and a cgroup namespace, [`cgroup`]), builds `/proc`,
//! `/dev`, `/sys` and `/etc/hosts`/`/etc/resolv.conf` the way runc and
//! BuildKit do,
//! `pivot_root`s into the snapshot, installs Docker's default seccomp
//! profile ([`seccomp`]), drops to Docker's default capability set,
//! switches user and runs the command (without `no_new_privs`, as BuildKit:
//! setuid programs work). Every process
//! of the step dies with it: they live in the step's PID namespace.

pub(crate) mod cgroup;
#[cfg(target_os = "linux")]
pub mod embedded;
pub mod env;
mod etc;
mod process;
pub mod runc;
#[cfg(target_os = "linux")]
pub mod seccomp;
pub mod user;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub(crate) use etc::EtcFiles;
pub use etc::{default_hosts, hosts_file, resolv_conf};
pub use process::Cancel;
pub(crate) use process::{exit_code, stream_output, wait};

use crate::tempdir::TempDir;

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
        /// What the step may do with it.
        access: Access,
    },
    /// An empty tmpfs.
    Tmpfs {
        /// Absolute path inside.
        target: String,
        /// Size limit in bytes (0: the kernel's default).
        size: u64,
    },
}

/// What a step may do with a bind mount: BuildKit's mount options for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Access {
    /// `rbind`: cache mounts, `rw` binds, the ssh agent's socket.
    ReadWrite,
    /// `rbind,ro`.
    ReadOnly,
    /// `rbind,ro,nosuid,nodev,noexec`: BuildKit's options for `/etc/hosts`,
    /// `/etc/resolv.conf` and secret files (a secret can't be run).
    Sealed,
}

impl Access {
    /// [`Access::ReadOnly`] or [`Access::ReadWrite`].
    pub fn read_only(read_only: bool) -> Access {
        if read_only {
            Access::ReadOnly
        } else {
            Access::ReadWrite
        }
    }
}

/// The `RLIMIT_*` resource a `--ulimit` name stands for (the names
/// [`frontend::limits::ULIMIT_NAMES`] lists).
#[cfg(target_os = "linux")]
pub fn rlimit_resource(name: &str) -> Option<libc::__rlimit_resource_t> {
    Some(match name {
        "core" => libc::RLIMIT_CORE,
        "cpu" => libc::RLIMIT_CPU,
        "data" => libc::RLIMIT_DATA,
        "fsize" => libc::RLIMIT_FSIZE,
        "locks" => libc::RLIMIT_LOCKS,
        "memlock" => libc::RLIMIT_MEMLOCK,
        "msgqueue" => libc::RLIMIT_MSGQUEUE,
        "nice" => libc::RLIMIT_NICE,
        "nofile" => libc::RLIMIT_NOFILE,
        "nproc" => libc::RLIMIT_NPROC,
        "rss" => libc::RLIMIT_RSS,
        "rtprio" => libc::RLIMIT_RTPRIO,
        "rttime" => libc::RLIMIT_RTTIME,
        "sigpending" => libc::RLIMIT_SIGPENDING,
        "stack" => libc::RLIMIT_STACK,
        _ => return None,
    })
}

/// A limit's value for setrlimit: -1 (and any negative) is unlimited, as
/// BuildKit's uint64 conversion makes it.
pub fn rlimit_value(v: i64) -> u64 {
    if v < 0 { u64::MAX } else { v as u64 }
}

/// BuildKit's hostname for RUN.
pub const DEFAULT_HOSTNAME: &str = "buildkitsandbox";

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
    /// Resource limits (`--ulimit`); none keeps rbuild's own, as BuildKit
    /// keeps its daemon's.
    pub rlimits: Vec<frontend::limits::Ulimit>,
    /// `--cgroup-parent`: the step's cgroup goes below this one (as
    /// BuildKit's, `PARENT/buildkit/ID`), whose limits then apply to it.
    pub cgroup_parent: Option<String>,
}

impl RunSpec {
    /// `args` as root in `/` of `rootfs` on the host network, with
    /// BuildKit's hostname and `/etc/hosts`, no environment, mounts or
    /// resolvers: the fields a caller does not set.
    pub fn new(rootfs: PathBuf, args: Vec<String>) -> RunSpec {
        RunSpec {
            rootfs,
            args,
            env: Vec::new(),
            cwd: "/".into(),
            uid: 0,
            gid: 0,
            additional_gids: Vec::new(),
            hostname: DEFAULT_HOSTNAME.into(),
            network: Network::Host,
            insecure: false,
            mounts: Vec::new(),
            hosts: default_hosts(DEFAULT_HOSTNAME),
            resolv_conf: String::new(),
            rlimits: Vec::new(),
            cgroup_parent: None,
        }
    }
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
    /// Starting the command (or its runtime) failed.
    #[error("starting the sandbox for `{command}`")]
    Spawn {
        /// The command.
        command: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The sandbox could not be set up around the command.
    #[error("setting up the sandbox: {0}")]
    Setup(String),
}

/// Whether the tty group (gid 5, devpts' `gid=`) exists in this process's
/// user namespace (an ordinary user's without subordinate ids has only
/// its own gid). Read once: a process keeps its namespace.
pub(crate) fn tty_group_mapped() -> bool {
    static MAPPED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *MAPPED.get_or_init(|| {
        let Ok(map) = std::fs::read_to_string("/proc/self/gid_map") else {
            return true;
        };
        map.lines().any(|l| {
            let f: Vec<u64> = l
                .split_whitespace()
                .filter_map(|w| w.parse().ok())
                .collect();
            matches!(f.as_slice(), [inside, _, count] if (*inside..inside + count).contains(&5))
        })
    })
}

/// Whether this process's user namespace allows setgroups (one made by
/// an ordinary user without newgidmap has it denied). Read once.
pub(crate) fn setgroups_allowed() -> bool {
    static ALLOWED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ALLOWED.get_or_init(|| {
        std::fs::read_to_string("/proc/self/setgroups").map_or(true, |s| s.trim() != "deny")
    })
}

/// `program` in `PATH`, if it is there.
pub fn find_program(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
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

/// Docker's default capabilities (runc's default spec), by number
/// (linux/capability.h): CHOWN, DAC_OVERRIDE, FOWNER, FSETID, KILL, SETGID,
/// SETUID, SETPCAP, NET_BIND_SERVICE, NET_RAW, SYS_CHROOT, MKNOD,
/// AUDIT_WRITE, SETFCAP.
pub const DEFAULT_CAPS: [u32; 14] = [0, 1, 3, 4, 5, 6, 7, 8, 10, 13, 18, 27, 29, 31];

/// Paths runc masks by default (an empty read-only tmpfs or /dev/null).
pub const MASKED_PATHS: [&str; 9] = [
    "/proc/acpi",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
];

/// Paths runc makes read-only by default.
pub const READONLY_PATHS: [&str; 6] = [
    "/proc/asound",
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// The runtime's own mount points, made (0755, root's) where the root has
/// none.
const RUNTIME_DIRS: [&str; 3] = ["/proc", "/dev", "/sys"];

/// What a run needs besides the command, made before it starts and undone
/// when dropped: `/etc/hosts` and `/etc/resolv.conf` (from the runtime's
/// [`EtcFiles`]), bound in ahead of the spec's own mounts, and the
/// mount-point stubs that the run will create in the root and that must not
/// end up in a layer.
pub(crate) struct Prepared {
    /// Every mount of the run: the two files, then the spec's.
    pub mounts: Vec<Mount>,
    /// Each mount target and `/proc`, `/dev`, `/sys` as [`inside`] the
    /// root: resolved once, for the stubs and for a runtime's own use.
    resolved: Vec<(String, PathBuf)>,
    stubs: Vec<PathBuf>,
    _etc: std::sync::Arc<TempDir>,
}

/// How a runtime reports an I/O failure around starting `spec`.
pub(crate) fn spawn_error(spec: &RunSpec) -> impl Fn(io::Error) -> SandboxError + Copy + '_ {
    move |source| SandboxError::Spawn {
        command: spec.args.join(" "),
        source,
    }
}

impl Prepared {
    pub(crate) fn new(spec: &RunSpec, etc: &EtcFiles) -> io::Result<Prepared> {
        let etc = etc.get(&spec.hosts, &spec.resolv_conf)?;
        let mut mounts = vec![
            Mount::Bind {
                source: etc.path.join("hosts"),
                target: "/etc/hosts".into(),
                access: Access::Sealed,
            },
            Mount::Bind {
                source: etc.path.join("resolv.conf"),
                target: "/etc/resolv.conf".into(),
                access: Access::Sealed,
            },
        ];
        mounts.extend(spec.mounts.iter().cloned());
        let resolved: Vec<(String, PathBuf)> = mounts
            .iter()
            .map(Mount::target)
            .chain(RUNTIME_DIRS)
            .map(|t| (t.to_string(), inside(&spec.rootfs, t)))
            .collect();
        // Only the mounts' stubs are removed (BuildKit's MountStubsCleaner:
        // /etc/hosts, /etc/resolv.conf and the step's mounts). `/proc`,
        // `/dev` and `/sys`, made by the runtime where the root has none,
        // stay and are part of the step's layer, as runc leaves them in
        // BuildKit; so does a working directory made for the step.
        let stubs = resolved[..mounts.len()]
            .iter()
            .filter_map(|(_, rel)| missing_stub(&spec.rootfs, rel))
            .collect();
        Ok(Prepared {
            mounts,
            resolved,
            stubs,
            _etc: etc,
        })
    }

    /// `target` [`inside`] the root, as resolved when prepared where it was.
    pub(crate) fn inside(&self, rootfs: &Path, target: &str) -> PathBuf {
        match self.resolved.iter().find(|(t, _)| t == target) {
            Some((_, rel)) => rel.clone(),
            None => inside(rootfs, target),
        }
    }
}

impl Drop for Prepared {
    fn drop(&mut self) {
        for stub in &self.stubs {
            remove_empty_stub(stub);
        }
    }
}

impl Mount {
    /// The absolute path inside the sandbox.
    pub fn target(&self) -> &str {
        match self {
            Mount::Bind { target, .. } | Mount::Tmpfs { target, .. } => target,
        }
    }
}

/// Where the runtimes mount their own filesystems (runc's default spec, as
/// BuildKit keeps it): a step's mount at one of these takes its place.
pub(crate) const RUNTIME_MOUNTS: [&str; 7] = [
    "/proc",
    "/dev",
    "/dev/pts",
    "/dev/shm",
    "/dev/mqueue",
    "/sys",
    "/sys/fs/cgroup",
];

/// A mount target as the place it takes: `/dev/shm/` and `/dev/./shm`
/// are `/dev/shm`.
pub(crate) fn place(target: &Path) -> PathBuf {
    target.components().collect()
}

/// A mount's [`place`].
pub(crate) fn mount_place(m: &Mount) -> PathBuf {
    place(Path::new(m.target()))
}

/// For each place, the index of the last of `mounts` there: BuildKit's
/// dedupMounts keeps one mount a place, the last one asked for, where the
/// first one stood.
pub(crate) fn last_mount_at(mounts: &[Mount]) -> std::collections::HashMap<PathBuf, usize> {
    mounts
        .iter()
        .enumerate()
        .map(|(i, m)| (mount_place(m), i))
        .collect()
}

/// `target` (absolute in the sandbox) as a path relative to `rootfs`, with
/// the image's symlinks followed inside it (the runtimes open it there
/// again, inside the root).
pub(crate) fn inside(rootfs: &Path, target: &str) -> PathBuf {
    let resolved =
        cache::layer::resolve_in_root(rootfs, Path::new(target.trim_start_matches('/')), true);
    resolved
        .strip_prefix(rootfs)
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// The first component of `rel` (relative to `rootfs`, symlinks followed)
/// that does not exist yet: a mount stub to remove after the run, as
/// BuildKit does, so that mount points never end up in a layer.
fn missing_stub(rootfs: &Path, rel: &Path) -> Option<PathBuf> {
    let mut path = rootfs.to_path_buf();
    for c in rel.components() {
        path.push(c);
        if fs::symlink_metadata(&path).is_err() {
            return Some(path);
        }
    }
    None
}

/// Removes `path` if it is (only) empty files and directories.
fn remove_empty_stub(path: &Path) {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return;
    };
    if meta.is_dir() {
        if let Ok(entries) = fs::read_dir(path) {
            for e in entries.flatten() {
                remove_empty_stub(&e.path());
            }
        }
        let _ = fs::remove_dir(path);
    } else if meta.is_file() && meta.len() == 0 {
        let _ = fs::remove_file(path);
    }
}
