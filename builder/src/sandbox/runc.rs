//! The `runc` runtime (`--runtime runc`): the same step as the embedded
//! runtime, run by the standard OCI runtime from a generated bundle.
//!
//! [`config`] turns a [`RunSpec`] into runc's `config.json` (oci-spec's
//! runtime types) with what BuildKit's runc executor gives a step: the
//! default mounts, PID/IPC/UTS/mount namespaces (and a network namespace,
//! which runc gives a loopback, for `Network::None`), Docker's capability
//! set and seccomp profile, runc's masked and read-only paths, no
//! `no_new_privs` and no resource limits of its own (BuildKit's
//! `WithNewPrivileges`, rlimits reset); `--security=insecure` gets every
//! capability and neither masks nor filter. [`Runc::run`] writes the bundle, runs `runc run` with a
//! private state directory, streams the output and, on cancel, kills and
//! deletes the container.

use std::fs;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use oci_spec::runtime::{
    Capabilities, Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxDeviceCgroupBuilder,
    LinuxNamespaceBuilder, LinuxNamespaceType, LinuxResourcesBuilder, LinuxSeccomp,
    Mount as OciMount, MountBuilder, PosixRlimit, PosixRlimitBuilder, PosixRlimitType,
    ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
};

use super::{
    Access, Cancel, DEFAULT_CAPS, EtcFiles, MASKED_PATHS, Mount, Network, Prepared, READONLY_PATHS,
    RunSpec, Runtime, SandboxError, Stream, exit_code, stream_output, wait,
};

/// Capability names by number (linux/capability.h).
const CAP_NAMES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// Runs steps through a `runc` binary.
#[derive(Debug, Clone)]
pub struct Runc {
    /// The runc binary.
    pub binary: PathBuf,
    /// runc's `--root`: its state directory, private to rbuild.
    pub state: PathBuf,
    etc: std::sync::Arc<EtcFiles>,
}

impl Runc {
    /// Finds `runc` in `PATH`; its state goes under `state`.
    pub fn find(state: &Path) -> Result<Runc, SandboxError> {
        let binary = super::find_program("runc").ok_or_else(|| {
            SandboxError::Setup(
                "--runtime runc: no `runc` in PATH (install it, e.g. apt-get install runc, \
                     or use the default embedded runtime)"
                    .into(),
            )
        })?;
        Ok(Runc {
            binary,
            state: state.to_path_buf(),
            etc: Default::default(),
        })
    }

    /// Kills every process of container `id`.
    fn kill(&self, id: &str) {
        let _ = self
            .command()
            .args(["kill", "--all", id, "KILL"])
            .stderr(Stdio::null())
            .status();
    }

    /// Kills and removes container `id` (nothing if it is gone).
    fn delete(&self, id: &str) {
        let _ = self
            .command()
            .args(["delete", "--force", id])
            .stderr(Stdio::null())
            .status();
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--root").arg(&self.state);
        cmd
    }
}

/// Builds runc's config.json for `spec` with `mounts` (the spec's own
/// after `/etc/hosts` and `/etc/resolv.conf`).
pub fn config(spec: &RunSpec, mounts: &[Mount]) -> Result<Spec, String> {
    let err = |e: oci_spec::OciSpecError| e.to_string();
    let names: Vec<&str> = if spec.insecure {
        // Every capability rbuild itself may pass on (as the embedded
        // runtime keeps them): asking for more fails.
        let bounding = own_bounding_set();
        (0..CAP_NAMES.len())
            .filter(|c| bounding & (1u64 << c) != 0)
            .map(|c| CAP_NAMES[c])
            .collect()
    } else {
        DEFAULT_CAPS
            .iter()
            .map(|c| CAP_NAMES[*c as usize])
            .collect()
    };
    let caps = names
        .into_iter()
        .map(capability)
        .collect::<Result<Capabilities, _>>()?;
    let process = ProcessBuilder::default()
        .terminal(false)
        .user(
            UserBuilder::default()
                .uid(spec.uid)
                .gid(spec.gid)
                .additional_gids(spec.additional_gids.clone())
                .build()
                .map_err(err)?,
        )
        .args(spec.args.clone())
        .env(spec.env.clone())
        .cwd(if spec.cwd.is_empty() { "/" } else { &spec.cwd })
        .capabilities(
            LinuxCapabilitiesBuilder::default()
                .bounding(caps.clone())
                .effective(caps.clone())
                .permitted(caps)
                // oci-spec's default would give these two a set of their
                // own (AUDIT_WRITE, KILL, NET_BIND_SERVICE); BuildKit's are
                // empty.
                .inheritable(Capabilities::new())
                .ambient(Capabilities::new())
                .build()
                .map_err(err)?,
        )
        .no_new_privileges(false)
        // oci-spec's default is RLIMIT_NOFILE 1024; BuildKit resets the
        // list, so a step has rbuild's limits, as with the embedded runtime,
        // unless `--ulimit` sets some.
        .rlimits(rlimits(&spec.rlimits)?)
        .build()
        .map_err(err)?;

    let mut all_mounts = default_mounts().map_err(err)?;
    for m in mounts {
        all_mounts.push(match m {
            Mount::Bind {
                source,
                target,
                access,
            } => {
                let options: &[&str] = match access {
                    Access::ReadWrite => &["rbind"],
                    Access::ReadOnly => &["rbind", "ro"],
                    Access::Sealed => &["nosuid", "noexec", "nodev", "rbind", "ro"],
                };
                let options: Vec<String> = options.iter().map(|o| o.to_string()).collect();
                MountBuilder::default()
                    .destination(target)
                    .typ("bind")
                    .source(source)
                    .options(options)
                    .build()
                    .map_err(err)?
            }
            Mount::Tmpfs { target, size } => {
                // BuildKit's tmpfs mount options: nosuid (and a size).
                let mut options = vec!["nosuid".to_string()];
                if *size > 0 {
                    options.push(format!("size={size}"));
                }
                MountBuilder::default()
                    .destination(target)
                    .typ("tmpfs")
                    .source("tmpfs")
                    .options(options)
                    .build()
                    .map_err(err)?
            }
        });
    }
    // BuildKit's dedupMounts: one mount a destination, the last one asked
    // for, where the first one stood (a step's /dev/shm replaces runc's).
    let mut at: std::collections::HashMap<PathBuf, usize> = std::collections::HashMap::new();
    let mut deduped: Vec<OciMount> = Vec::with_capacity(all_mounts.len());
    for m in all_mounts {
        let place = super::place(m.destination());
        match at.get(&place) {
            Some(&i) => deduped[i] = m,
            None => {
                at.insert(place, deduped.len());
                deduped.push(m);
            }
        }
    }
    let all_mounts = deduped;

    let mut namespaces = Vec::new();
    let mut types = vec![
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
    ];
    if spec.network == Network::None {
        types.push(LinuxNamespaceType::Network);
    }
    // BuildKit's: a cgroup namespace where cgroup v2 is unified.
    if super::cgroup::host_unified() && !crate::rootless::inside() {
        types.push(LinuxNamespaceType::Cgroup);
    }
    for typ in types {
        namespaces.push(
            LinuxNamespaceBuilder::default()
                .typ(typ)
                .build()
                .map_err(err)?,
        );
    }
    let strings = |paths: &[&str]| paths.iter().map(|p| p.to_string()).collect::<Vec<_>>();
    let mut linux = LinuxBuilder::default().namespaces(namespaces);
    // Rootless runc has no cgroup to set (device nodes can't be made in a
    // user namespace anyway).
    if !crate::rootless::inside() {
        linux = linux.resources(
            LinuxResourcesBuilder::default()
                // Deny every device; runc allows its default set on top.
                .devices(vec![
                    LinuxDeviceCgroupBuilder::default()
                        .allow(false)
                        .access("rwm")
                        .build()
                        .map_err(err)?,
                ])
                .build()
                .map_err(err)?,
        );
    }
    if !spec.insecure {
        linux = linux
            .masked_paths(strings(&MASKED_PATHS))
            .readonly_paths(strings(&READONLY_PATHS));
        if let Some(profile) = super::seccomp::oci_profile() {
            let seccomp: LinuxSeccomp =
                serde_json::from_value(profile).map_err(|e| e.to_string())?;
            linux = linux.seccomp(seccomp);
        }
    }
    SpecBuilder::default()
        .version("1.0.2")
        .root(
            RootBuilder::default()
                .path(&spec.rootfs)
                .readonly(false)
                .build()
                .map_err(err)?,
        )
        .hostname(spec.hostname.clone())
        .process(process)
        .mounts(all_mounts)
        .linux(linux.build().map_err(err)?)
        .build()
        .map_err(err)
}

/// This process's capability bounding set (CapBnd in /proc/self/status).
fn own_bounding_set() -> u64 {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("CapBnd:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

fn capability(name: &str) -> Result<Capability, String> {
    serde_json::from_value(serde_json::Value::String(format!("CAP_{name}")))
        .map_err(|e| format!("capability {name}: {e}"))
}

/// runc's `process.rlimits` for `--ulimit`s (`RLIMIT_NOFILE`, ...).
fn rlimits(ulimits: &[frontend::limits::Ulimit]) -> Result<Vec<PosixRlimit>, String> {
    ulimits
        .iter()
        .map(|u| {
            let typ: PosixRlimitType = format!("RLIMIT_{}", u.name.to_ascii_uppercase())
                .parse()
                .map_err(|_| format!("unknown ulimit {}", u.name))?;
            PosixRlimitBuilder::default()
                .typ(typ)
                .soft(super::rlimit_value(u.soft))
                .hard(super::rlimit_value(u.hard))
                .build()
                .map_err(|e| e.to_string())
        })
        .collect()
}

/// The mounts every step gets, as in runc's and containerd's default spec.
fn default_mounts() -> Result<Vec<OciMount>, oci_spec::OciSpecError> {
    let mount = |dest: &str, typ: &str, source: &str, options: &[&str]| {
        MountBuilder::default()
            .destination(dest)
            .typ(typ)
            .source(source)
            .options(options.iter().map(|o| o.to_string()).collect::<Vec<_>>())
            .build()
    };
    // In a user namespace (an ordinary user's rbuild) runc is rootless:
    // devpts takes the tty group only where it is mapped, and sysfs can't
    // be mounted anew (the network namespace is not the user namespace's
    // own): the host's is bound read-only, as `runc spec --rootless` does.
    let rootless = crate::rootless::inside();
    let devpts: &[&str] = if super::tty_group_mapped() {
        &[
            "nosuid",
            "noexec",
            "newinstance",
            "ptmxmode=0666",
            "mode=0620",
            "gid=5",
        ]
    } else {
        &[
            "nosuid",
            "noexec",
            "newinstance",
            "ptmxmode=0666",
            "mode=0620",
        ]
    };
    let mut mounts = vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
        mount("/dev/pts", "devpts", "devpts", devpts)?,
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        )?,
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        )?,
    ];
    if rootless {
        mounts.push(mount(
            "/sys",
            "none",
            "/sys",
            &["rbind", "nosuid", "noexec", "nodev", "ro"],
        )?);
        return Ok(mounts);
    }
    // A new sysfs instance, read-only, as in runc's default spec (a bind of
    // the host's would bring the host's cgroup mounts along, writable).
    mounts.push(mount(
        "/sys",
        "sysfs",
        "sysfs",
        &["nosuid", "noexec", "nodev", "ro"],
    )?);
    // BuildKit's withCGroup: runc shows the container's own cgroups there.
    mounts.push(mount(
        "/sys/fs/cgroup",
        "cgroup",
        "cgroup",
        &["ro", "nosuid", "noexec", "nodev"],
    )?);
    Ok(mounts)
}

impl Runtime for Runc {
    fn run(
        &self,
        spec: &RunSpec,
        cancel: &Cancel,
        output: &mut dyn FnMut(Stream, &[u8]),
    ) -> Result<i32, SandboxError> {
        let spawn_err = super::spawn_error(spec);
        let prepared = Prepared::new(spec, &self.etc).map_err(spawn_err)?;
        let bundle = crate::tempdir::TempDir::new("runc").map_err(spawn_err)?;
        let id = container_id();
        let mut config = config(spec, &prepared.mounts).map_err(SandboxError::Setup)?;
        // `--cgroup-parent`: runc makes the container's cgroups there, as
        // BuildKit asks it to (`PARENT/buildkit/ID`).
        if let (Some(parent), Some(linux)) = (&spec.cgroup_parent, config.linux_mut()) {
            linux.set_cgroups_path(Some(PathBuf::from(format!("/{parent}/buildkit/{id}"))));
        }
        config
            .save(bundle.path.join("config.json"))
            .map_err(|e| SandboxError::Setup(format!("writing runc's config.json: {e}")))?;
        fs::create_dir_all(&self.state).map_err(spawn_err)?;
        let log = bundle.path.join("runc.log");
        let mut child = self
            .command()
            .arg("--log")
            .arg(&log)
            .args(["--log-format", "json", "run", "--bundle"])
            .arg(&bundle.path)
            .arg(&id)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(spawn_err)?;
        // The container is not runc's child to take down with it: an
        // interrupted rbuild kills and removes it itself.
        let on_interrupt = {
            let (runc, id) = (self.clone(), id.clone());
            crate::interrupt::on_interrupt(move || runc.delete(&id))
        };
        let pipes = [
            child.stdout.take().map(OwnedFd::from),
            child.stderr.take().map(OwnedFd::from),
        ];
        let streamed = stream_output(pipes, cancel, output, || self.kill(&id));
        if streamed.is_err() {
            self.kill(&id);
        }
        let status = wait(child.id() as libc::pid_t, cancel, || self.kill(&id))
            .and_then(|status| streamed.map(|()| status));
        // `runc run` removes the container when it ends; a killed or
        // failed one may be left.
        self.delete(&id);
        drop(on_interrupt);
        let status = status.map_err(spawn_err)?;
        drop(prepared);
        if let Some(message) = setup_error(&log) {
            return Err(SandboxError::Setup(message));
        }
        Ok(exit_code(status))
    }
}

/// A container id unique on this machine for this run.
fn container_id() -> String {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("rbuild-{}-{n}", std::process::id())
}

/// The error runc logged when it could not start the command (a command's
/// own failure logs nothing), without runc's prefixes.
fn setup_error(log: &Path) -> Option<String> {
    let text = fs::read_to_string(log).ok()?;
    let message = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["level"] == "error")
        .filter_map(|v| v["msg"].as_str().map(str::to_string))
        .next_back()?;
    let message = message
        .trim_start_matches("runc run failed: ")
        .trim_start_matches("unable to start container process: ")
        .to_string();
    Some(message)
}
