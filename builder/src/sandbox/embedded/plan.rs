//! The parent's half: a [`Plan`] of everything the child will do, made
//! from the step's spec before the clone (every path, mount, device node
//! and argument as a C string, the capabilities, ids and candidates on
//! `PATH`), so the child only reads it.

use std::ffi::CString;
use std::fs;
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;

use libc::{c_char, c_ulong};

use super::walk::Walk;
use crate::sandbox::cgroup::StepCgroup;
use crate::sandbox::{
    Access, DEFAULT_CAPS, MASKED_PATHS, Mount, Network, Prepared, READONLY_PATHS, RunSpec,
};

/// The highest capability this kernel knows.
pub(super) fn last_cap() -> u32 {
    static LAST: OnceLock<u32> = OnceLock::new();
    *LAST.get_or_init(|| {
        fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(40)
    })
}

/// `nosuid,nodev,noexec`.
pub(super) const SEALED: c_ulong = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;

/// A path inside the root, opened one component at a time, each resolved
/// by the kernel inside the root (`RESOLVE_IN_ROOT`) and created where
/// missing (directories, or an empty file for the last when `file`).
pub(super) struct Target {
    /// `a`, `a/b`, `a/b/c`: what to open from the root for each component.
    pub(super) prefixes: Vec<CString>,
    /// `a`, `b`, `c`: what to create in the directory before, if missing.
    pub(super) names: Vec<CString>,
    /// The last component is a file.
    pub(super) file: bool,
}

impl Target {
    /// `rel` (relative to the root, symlinks already followed) as a target.
    pub(super) fn new(rel: &Path, file: bool) -> Result<Target, String> {
        let mut prefix = PathBuf::new();
        let (mut prefixes, mut names) = (Vec::new(), Vec::new());
        for c in rel.components() {
            if let Component::Normal(name) = c {
                prefix.push(name);
                prefixes.push(c_path(&prefix)?);
                names.push(c_path(Path::new(name))?);
            }
        }
        Ok(Target {
            prefixes,
            names,
            file,
        })
    }
}

/// One thing the child does before `pivot_root`.
pub(super) enum Op {
    /// `mount(2)` onto the target (created when missing), then, when
    /// `remount` isn't 0, a bind remount of the new mount adding those flags
    /// (a bind mount takes `MS_RDONLY`, `MS_NOSUID`... only so).
    Mount {
        target: Target,
        source: Option<CString>,
        fstype: Option<CString>,
        flags: c_ulong,
        data: Option<CString>,
        remount: c_ulong,
    },
    /// cgroup2, read-only, when the step got its cgroup namespace; left
    /// out where that or the mount is refused (the step runs without it).
    Cgroup2(Target),
    /// sysfs read-only or, where that is refused, the host's `/sys` bound
    /// read-only.
    Sysfs(Target),
    /// A character device `name` in `dir`, mode 0666 whatever the umask;
    /// where devices can't be made (in a user namespace: rootless), the
    /// host's device `host` bound onto an empty file, as rootless runc does.
    Device {
        dir: Target,
        name: CString,
        host: CString,
        major: u32,
        minor: u32,
    },
    /// A symlink `name` in `dir`, best effort.
    Symlink {
        dir: Target,
        name: CString,
        content: CString,
    },
    /// runc's masked path: an empty read-only tmpfs on a directory,
    /// `/dev/null` on anything else, nothing when missing.
    Mask(Target),
    /// runc's read-only path: bound onto itself read-only when present.
    ReadOnly(Target),
}

/// An [`Op`] with what a failure reports.
pub(super) struct Step {
    pub(super) what: CString,
    pub(super) op: Op,
}

/// Everything the child does, made by the parent.
pub(super) struct Plan {
    /// How paths below the root are opened.
    pub(super) walk: Walk,
    /// Become fds 0, 1 and 2.
    pub(super) stdio: [RawFd; 3],
    /// Where setup errors go (close-on-exec).
    pub(super) report: RawFd,
    pub(super) root: CString,
    pub(super) steps: Vec<Step>,
    pub(super) hostname: CString,
    pub(super) loopback: bool,
    /// The step's cgroup to join (its `cgroup.procs`), and then a cgroup
    /// namespace of its own (see [`crate::sandbox::cgroup`]).
    pub(super) cgroup_procs: Option<CString>,
    pub(super) workdir: Target,
    pub(super) workdir_what: CString,
    /// Capabilities to drop from the bounding set.
    pub(super) drop_caps: Vec<c_ulong>,
    /// The supplementary groups; None where the user namespace refuses
    /// setgroups (an ordinary user's with only its own ids).
    pub(super) groups: Option<Vec<libc::gid_t>>,
    pub(super) uid: libc::uid_t,
    pub(super) gid: libc::gid_t,
    /// The capability set for root (none: keep what root has).
    pub(super) caps: Option<u64>,
    /// `--ulimit`s, set before the privileges go (raising a hard limit
    /// needs CAP_SYS_RESOURCE).
    pub(super) rlimits: Vec<(libc::__rlimit_resource_t, libc::rlimit)>,
    pub(super) rlimits_what: CString,
    pub(super) seccomp: bool,
    /// Where the command may be, in order; only executable regular files
    /// count when `search`.
    pub(super) programs: Vec<(CString, CString)>,
    pub(super) search: bool,
    pub(super) not_found: CString,
    pub(super) _strings: Vec<CString>,
    pub(super) argv: Vec<*const c_char>,
    pub(super) envp: Vec<*const c_char>,
}

pub(super) fn c_str(s: &str) -> Result<CString, String> {
    CString::new(s).map_err(|_| format!("a NUL byte in {s:?}"))
}

pub(super) fn c_path(p: &Path) -> Result<CString, String> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| format!("a NUL byte in {}", p.display()))
}

/// A null-terminated array of pointers into `strings`.
pub(super) fn pointers(strings: &[CString]) -> Vec<*const c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain([std::ptr::null()])
        .collect()
}

impl Plan {
    pub(super) fn new(
        spec: &RunSpec,
        prepared: &Prepared,
        cgroup: Option<&StepCgroup>,
        stdio: [RawFd; 3],
        report: RawFd,
    ) -> Result<Plan, String> {
        let root = &spec.rootfs;
        let inside = |target: &str| prepared.inside(root, target);
        let what = |s: String| c_str(&s);
        let mut steps = Vec::new();
        let mount = |target: &Path,
                     file: bool,
                     source: Option<&str>,
                     fstype: Option<&str>,
                     flags: c_ulong,
                     data: Option<&str>,
                     remount: c_ulong|
         -> Result<Step, String> {
            Ok(Step {
                what: what(format!(
                    "mounting {} on /{}",
                    source.or(fstype).unwrap_or("-"),
                    target.display()
                ))?,
                op: Op::Mount {
                    target: Target::new(target, file)?,
                    source: source.map(c_str).transpose()?,
                    fstype: fstype.map(c_str).transpose()?,
                    flags,
                    data: data.map(c_str).transpose()?,
                    remount,
                },
            })
        };

        // The step's own mounts. As BuildKit's dedupMounts, one at a place
        // the runtime mounts something (or an earlier mount of the step)
        // takes that one's place, and the last asked for a place wins.
        let last = crate::sandbox::last_mount_at(&prepared.mounts);
        let user_mount = |m: &Mount| -> Result<Step, String> {
            let target = inside(m.target());
            match m {
                Mount::Bind {
                    source,
                    access,
                    target: _,
                } => mount(
                    &target,
                    !source.is_dir(),
                    Some(&source.display().to_string()),
                    None,
                    libc::MS_BIND | libc::MS_REC,
                    None,
                    match access {
                        Access::ReadWrite => 0,
                        Access::ReadOnly => libc::MS_RDONLY,
                        Access::Sealed => libc::MS_RDONLY | SEALED,
                    },
                ),
                // BuildKit's tmpfs mount options: nosuid (and a size).
                Mount::Tmpfs { size, target: _ } => mount(
                    &target,
                    false,
                    Some("tmpfs"),
                    Some("tmpfs"),
                    libc::MS_NOSUID,
                    (*size > 0).then(|| format!("size={size}")).as_deref(),
                    0,
                ),
            }
        };
        let replaced = |place: &str| last.get(Path::new(place)).map(|&i| &prepared.mounts[i]);
        // The runtime's own mount at `place`, unless the step mounts
        // something there.
        let runtime = |place: &str, ours: Result<Step, String>| match replaced(place) {
            Some(m) => user_mount(m),
            None => ours,
        };

        let proc_dir = inside("/proc");
        steps.push(runtime(
            "/proc",
            mount(
                &proc_dir,
                false,
                Some("proc"),
                Some("proc"),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                None,
                0,
            ),
        )?);

        // /dev as runc makes it: a tmpfs with the standard nodes, devpts,
        // shm; runc makes no nodes in a /dev bound from elsewhere.
        let dev = inside("/dev");
        steps.push(runtime(
            "/dev",
            mount(
                &dev,
                false,
                Some("tmpfs"),
                Some("tmpfs"),
                libc::MS_NOSUID | libc::MS_STRICTATIME,
                Some("mode=755,size=65536k"),
                0,
            ),
        )?);
        let dev_nodes = !matches!(replaced("/dev"), Some(Mount::Bind { .. }));
        for (name, major, minor) in [
            ("null", 1, 3),
            ("zero", 1, 5),
            ("full", 1, 7),
            ("random", 1, 8),
            ("urandom", 1, 9),
            ("tty", 5, 0),
        ]
        .into_iter()
        .filter(|_| dev_nodes)
        {
            steps.push(Step {
                what: what(format!("creating /{}", dev.join(name).display()))?,
                op: Op::Device {
                    dir: Target::new(&dev, false)?,
                    name: c_str(name)?,
                    host: c_str(&format!("/dev/{name}"))?,
                    major,
                    minor,
                },
            });
        }
        steps.push(runtime(
            "/dev/pts",
            mount(
                &dev.join("pts"),
                false,
                Some("devpts"),
                Some("devpts"),
                libc::MS_NOSUID | libc::MS_NOEXEC,
                // The tty group, where this user namespace has it (an
                // ordinary user's without subordinate ids has only its own).
                Some(if crate::sandbox::tty_group_mapped() {
                    "newinstance,ptmxmode=0666,mode=0620,gid=5"
                } else {
                    "newinstance,ptmxmode=0666,mode=0620"
                }),
                0,
            ),
        )?);
        steps.push(runtime(
            "/dev/shm",
            mount(
                &dev.join("shm"),
                false,
                Some("shm"),
                Some("tmpfs"),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                Some("mode=1777,size=65536k"),
                0,
            ),
        )?);
        // POSIX message queues of the step's IPC namespace, as in runc's
        // default spec.
        steps.push(runtime(
            "/dev/mqueue",
            mount(
                &dev.join("mqueue"),
                false,
                Some("mqueue"),
                Some("mqueue"),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                None,
                0,
            ),
        )?);
        for (link, content) in [
            ("ptmx", "pts/ptmx"),
            ("fd", "/proc/self/fd"),
            ("stdin", "/proc/self/fd/0"),
            ("stdout", "/proc/self/fd/1"),
            ("stderr", "/proc/self/fd/2"),
        ]
        .into_iter()
        .filter(|_| dev_nodes)
        {
            steps.push(Step {
                what: what(format!("creating /{}", dev.join(link).display()))?,
                op: Op::Symlink {
                    dir: Target::new(&dev, false)?,
                    name: c_str(link)?,
                    content: c_str(content)?,
                },
            });
        }

        let sys = inside("/sys");
        steps.push(runtime(
            "/sys",
            Ok(Step {
                what: what(format!("mounting sysfs on /{}", sys.display()))?,
                op: Op::Sysfs(Target::new(&sys, false)?),
            }),
        )?);

        // With a cgroup of its own (cgroup v2), the step's cgroup namespace
        // and cgroup2 at /sys/fs/cgroup, read-only (see
        // [`crate::sandbox::cgroup`]); where the kernel refuses either, the
        // directory stays as sysfs has it. A step's own mount there
        // takes its place; one on /sys brings its own.
        let cgroup = cgroup.filter(|_| replaced("/sys").is_none());
        let cgroups = sys.join("fs/cgroup");
        match (replaced("/sys/fs/cgroup"), cgroup) {
            (Some(m), _) => steps.push(user_mount(m)?),
            (None, Some(_)) => steps.push(Step {
                what: what(format!("mounting cgroup2 on /{}", cgroups.display()))?,
                op: Op::Cgroup2(Target::new(&cgroups, false)?),
            }),
            (None, None) => {}
        }

        // The rest at the place each was first asked for.
        let mut placed: std::collections::HashSet<PathBuf> = crate::sandbox::RUNTIME_MOUNTS
            .iter()
            .map(PathBuf::from)
            .collect();
        for m in &prepared.mounts {
            let place = crate::sandbox::mount_place(m);
            if placed.insert(place.clone()) {
                steps.push(user_mount(&prepared.mounts[last[&place]])?);
            }
        }

        if !spec.insecure {
            // Inside /proc and /sys as mounted: textually below them.
            let below = |p: &str| {
                let p = p.trim_start_matches('/');
                match p.split_once('/') {
                    Some(("proc", rest)) => proc_dir.join(rest),
                    Some(("sys", rest)) => sys.join(rest),
                    _ => PathBuf::from(p),
                }
            };
            for p in MASKED_PATHS {
                steps.push(Step {
                    what: what(format!("masking {p}"))?,
                    op: Op::Mask(Target::new(&below(p), true)?),
                });
            }
            for p in READONLY_PATHS {
                steps.push(Step {
                    what: what(format!("making {p} read-only"))?,
                    op: Op::ReadOnly(Target::new(&below(p), true)?),
                });
            }
        }

        let cwd = if spec.cwd.is_empty() { "/" } else { &spec.cwd };
        let drop_caps = if spec.insecure {
            Vec::new()
        } else {
            (0..=last_cap())
                .filter(|c| !DEFAULT_CAPS.contains(c))
                .map(c_ulong::from)
                .collect()
        };
        let caps = (spec.uid == 0 && !spec.insecure)
            .then(|| DEFAULT_CAPS.iter().fold(0u64, |m, c| m | (1u64 << c)));
        if !spec.insecure {
            crate::sandbox::seccomp::prepare();
        }

        let Some(arg0) = spec.args.first() else {
            return Err("no command to run".into());
        };
        let search = !arg0.contains('/');
        let programs: Vec<PathBuf> = if search {
            let path_var = spec
                .env
                .iter()
                .find_map(|e| e.strip_prefix("PATH="))
                .unwrap_or(crate::sandbox::env::DEFAULT_PATH);
            path_var
                .split(':')
                .map(|d| Path::new(d).join(arg0))
                .collect()
        } else {
            vec![PathBuf::from(arg0)]
        };
        let programs = programs
            .iter()
            .map(|p| Ok((c_path(p)?, what(format!("exec {}", p.display()))?)))
            .collect::<Result<_, String>>()?;

        let args: Vec<CString> = spec
            .args
            .iter()
            .map(|a| c_str(a))
            .collect::<Result<_, _>>()?;
        let env: Vec<CString> = spec
            .env
            .iter()
            .map(|e| c_str(e))
            .collect::<Result<_, _>>()?;
        let (argv, envp) = (pointers(&args), pointers(&env));
        Ok(Plan {
            walk: Walk::here(),
            stdio,
            report,
            root: c_path(root)?,
            steps,
            hostname: c_str(&spec.hostname)?,
            loopback: spec.network == Network::None,
            cgroup_procs: cgroup.map(|c| c.procs().to_owned()),
            workdir: Target::new(&inside(cwd), false)?,
            workdir_what: what(format!("entering the working directory {cwd}"))?,
            drop_caps,
            groups: crate::sandbox::setgroups_allowed().then(|| spec.additional_gids.clone()),
            uid: spec.uid,
            gid: spec.gid,
            caps,
            rlimits: spec
                .rlimits
                .iter()
                .map(|u| {
                    let resource = crate::sandbox::rlimit_resource(&u.name)
                        .ok_or_else(|| format!("unknown ulimit {}", u.name))?;
                    let limit = libc::rlimit {
                        rlim_cur: crate::sandbox::rlimit_value(u.soft),
                        rlim_max: crate::sandbox::rlimit_value(u.hard),
                    };
                    Ok((resource, limit))
                })
                .collect::<Result<_, String>>()?,
            rlimits_what: what(format!(
                "setting the resource limits {}",
                spec.rlimits
                    .iter()
                    .map(|u| u.to_string())
                    .collect::<Vec<_>>()
                    .join(" ")
            ))?,
            seccomp: !spec.insecure,
            programs,
            search,
            not_found: what(format!(
                "exec: \"{arg0}\": executable file not found in $PATH"
            ))?,
            _strings: args.into_iter().chain(env).collect(),
            argv,
            envp,
        })
    }
}
