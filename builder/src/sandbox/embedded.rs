//! The embedded runtime: namespaces, mounts and `pivot_root` done here,
//! with no runc, no helper process and no other program.
//!
//! [`Embedded::run`] first turns the [`RunSpec`] into a [`Plan`]: every
//! path, mount, device node and argument as a C string, the step's
//! capabilities and ids, the command's candidates on `PATH`, the seccomp
//! program compiled. Then `clone(2)` starts the step's PID 1 in new mount,
//! UTS, IPC and PID namespaces (and a network namespace for
//! `Network::None`) the way `posix_spawn` starts a process: sharing this
//! process's memory (`CLONE_VM`), with the calling thread suspended
//! (`CLONE_VFORK`) until the child has exec'd the command or exited.
//!
//! The child ([`child`]) only reads the plan and makes system calls. It
//! allocates nothing, takes no lock, writes no memory but its own stack,
//! and calls no libc function that touches process-wide state (`setuid` and
//! `setgroups` go straight to the kernel, not through glibc's all-threads
//! broadcast), so whatever rbuild's other threads are doing cannot leave
//! it anything half-done. Every path inside the root is opened by the
//! kernel with `RESOLVE_IN_ROOT` one component at a time (created where
//! missing; before Linux 5.6, with `O_NOFOLLOW` from the directory before,
//! see [`Walk`]) and mounted onto through `/proc/self/fd`, as runc does: no
//! symlink in the image leads a mount outside it. Setup errors travel back
//! on a close-on-exec pipe (errno and the plan's description of the step),
//! so a command's own exit status (even 125 or 127) is never mistaken for
//! one. (A re-executed helper process did this before: its exec, dynamic
//! loading and exit were 2-3 ms of every RUN.)

use std::ffi::{CStr, CString};
use std::fs;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;

use libc::{c_char, c_int, c_ulong, c_void};

use super::{
    Access, Cancel, DEFAULT_CAPS, EtcFiles, MASKED_PATHS, Mount, Network, Prepared, READONLY_PATHS,
    RunSpec, Runtime, SandboxError, Stream, exit_code, stream_output, wait,
};

/// The default runtime.
#[derive(Debug, Clone, Default)]
pub struct Embedded {
    etc: std::sync::Arc<EtcFiles>,
}

/// The highest capability this kernel knows.
fn last_cap() -> u32 {
    static LAST: OnceLock<u32> = OnceLock::new();
    *LAST.get_or_init(|| {
        fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(40)
    })
}

/// The child's stack while it shares our memory (its frames are small and
/// it calls nothing deep), above one guard page.
const CHILD_STACK: usize = 256 * 1024;
const GUARD: usize = 4096;

impl Runtime for Embedded {
    fn run(
        &self,
        spec: &RunSpec,
        cancel: &Cancel,
        output: &mut dyn FnMut(Stream, &[u8]),
    ) -> Result<i32, SandboxError> {
        let spawn_err = super::spawn_error(spec);
        let prepared = Prepared::new(spec, &self.etc).map_err(spawn_err)?;
        // Rust's runtime keeps fds 0-2 open, so none of these is below 3
        // and the child's dup2 onto 0-2 cannot overwrite one of them.
        let pipe = || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io::Error::from);
        let (out_read, out_write) = pipe().map_err(spawn_err)?;
        let (err_read, err_write) = pipe().map_err(spawn_err)?;
        let (report_read, report_write) = pipe().map_err(spawn_err)?;
        let null = fs::File::open("/dev/null").map_err(spawn_err)?;
        let plan = Plan::new(
            spec,
            &prepared,
            [
                null.as_raw_fd(),
                out_write.as_raw_fd(),
                err_write.as_raw_fd(),
            ],
            report_write.as_raw_fd(),
        )
        .map_err(SandboxError::Setup)?;
        let pid = start(&plan, spec.network).map_err(spawn_err)?;
        drop((out_write, err_write, report_write, null));

        // The child has exec'd the command (the pipe closed with nothing in
        // it) or failed and exited.
        let mut report = Vec::new();
        let read = fs::File::from(report_read).read_to_end(&mut report);
        // SAFETY: kill(2) on our own child, not reaped before `wait`.
        let kill = || unsafe {
            libc::kill(pid, libc::SIGKILL);
        };
        let streamed = if report.is_empty() {
            stream_output([Some(out_read), Some(err_read)], cancel, output, kill)
        } else {
            Ok(())
        };
        if streamed.is_err() {
            kill();
        }
        // Both streams closed: PID 1 is ending (or closed them and runs on,
        // still stoppable). When it ends, the namespace and everything in
        // it go with it.
        let status = wait(pid, cancel, kill).map_err(spawn_err)?;
        drop(prepared);
        read.map_err(spawn_err)?;
        if !report.is_empty() {
            return Err(SandboxError::Setup(render_report(&report)));
        }
        streamed.map_err(spawn_err)?;
        Ok(exit_code(status))
    }
}

/// A child's report: its errno (native endian) and what it was doing.
fn render_report(report: &[u8]) -> String {
    let (errno, what) = report.split_at(report.len().min(4));
    let errno = <[u8; 4]>::try_from(errno).map_or(0, i32::from_ne_bytes);
    let what = String::from_utf8_lossy(what);
    if errno == 0 {
        what.into_owned()
    } else {
        format!("{what}: {}", io::Error::from_raw_os_error(errno))
    }
}

/// Starts the child on a stack of its own, sharing this process's memory,
/// with this thread suspended until the child execs or exits; returns its
/// pid (it is PID 1 of its namespace).
fn start(plan: &Plan, network: Network) -> io::Result<libc::pid_t> {
    let mut flags = libc::CLONE_VM
        | libc::CLONE_VFORK
        | libc::CLONE_NEWNS
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWPID
        | libc::SIGCHLD;
    if network == Network::None {
        flags |= libc::CLONE_NEWNET;
    }
    let size = GUARD + CHILD_STACK;
    // SAFETY: a fresh private mapping; nothing else refers to it.
    let stack = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
            -1,
            0,
        )
    };
    if stack == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the lowest page of our own mapping becomes the guard; the
    // mapping is unmapped below once the child no longer runs on it.
    // Every signal is blocked around clone so that no handler of rbuild's
    // runs on the child's stack; the child sets its own mask before exec.
    let (pid, err) = unsafe {
        libc::mprotect(stack, GUARD, libc::PROT_NONE);
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        let pid = libc::clone(
            child_entry,
            stack.cast::<u8>().add(size).cast(),
            flags,
            (plan as *const Plan).cast_mut().cast(),
        );
        let err = io::Error::last_os_error();
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        libc::munmap(stack, size);
        (pid, err)
    };
    if pid < 0 {
        if err.raw_os_error() == Some(libc::EPERM) {
            return Err(io::Error::new(
                err.kind(),
                format!("creating the step's namespaces: {err} (the embedded runtime needs root)"),
            ));
        }
        return Err(err);
    }
    Ok(pid)
}

/// A path inside the root, opened one component at a time, each resolved
/// by the kernel inside the root (`RESOLVE_IN_ROOT`) and created where
/// missing (directories, or an empty file for the last when `file`).
struct Target {
    /// `a`, `a/b`, `a/b/c`: what to open from the root for each component.
    prefixes: Vec<CString>,
    /// `a`, `b`, `c`: what to create in the directory before, if missing.
    names: Vec<CString>,
    /// The last component is a file.
    file: bool,
}

impl Target {
    /// `rel` (relative to the root, symlinks already followed) as a target.
    fn new(rel: &Path, file: bool) -> Result<Target, String> {
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
enum Op {
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
struct Step {
    what: CString,
    op: Op,
}

/// Everything the child does, made by the parent.
struct Plan {
    /// How paths below the root are opened.
    walk: Walk,
    /// Become fds 0, 1 and 2.
    stdio: [RawFd; 3],
    /// Where setup errors go (close-on-exec).
    report: RawFd,
    root: CString,
    steps: Vec<Step>,
    hostname: CString,
    loopback: bool,
    workdir: Target,
    workdir_what: CString,
    /// Capabilities to drop from the bounding set.
    drop_caps: Vec<c_ulong>,
    /// The supplementary groups; None where the user namespace refuses
    /// setgroups (an ordinary user's with only its own ids).
    groups: Option<Vec<libc::gid_t>>,
    uid: libc::uid_t,
    gid: libc::gid_t,
    /// The capability set for root (none: keep what root has).
    caps: Option<u64>,
    /// `--ulimit`s, set before the privileges go (raising a hard limit
    /// needs CAP_SYS_RESOURCE).
    rlimits: Vec<(libc::__rlimit_resource_t, libc::rlimit)>,
    rlimits_what: CString,
    seccomp: bool,
    /// Where the command may be, in order; only executable regular files
    /// count when `search`.
    programs: Vec<(CString, CString)>,
    search: bool,
    not_found: CString,
    _strings: Vec<CString>,
    argv: Vec<*const c_char>,
    envp: Vec<*const c_char>,
}

fn c_str(s: &str) -> Result<CString, String> {
    CString::new(s).map_err(|_| format!("a NUL byte in {s:?}"))
}

fn c_path(p: &Path) -> Result<CString, String> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| format!("a NUL byte in {}", p.display()))
}

/// A null-terminated array of pointers into `strings`.
fn pointers(strings: &[CString]) -> Vec<*const c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain([std::ptr::null()])
        .collect()
}

impl Plan {
    fn new(
        spec: &RunSpec,
        prepared: &Prepared,
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

        let proc_dir = inside("/proc");
        steps.push(mount(
            &proc_dir,
            false,
            Some("proc"),
            Some("proc"),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            None,
            0,
        )?);

        // /dev as runc makes it: a tmpfs with the standard nodes, devpts, shm.
        let dev = inside("/dev");
        steps.push(mount(
            &dev,
            false,
            Some("tmpfs"),
            Some("tmpfs"),
            libc::MS_NOSUID | libc::MS_STRICTATIME,
            Some("mode=755,size=65536k"),
            0,
        )?);
        for (name, major, minor) in [
            ("null", 1, 3),
            ("zero", 1, 5),
            ("full", 1, 7),
            ("random", 1, 8),
            ("urandom", 1, 9),
            ("tty", 5, 0),
        ] {
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
        steps.push(mount(
            &dev.join("pts"),
            false,
            Some("devpts"),
            Some("devpts"),
            libc::MS_NOSUID | libc::MS_NOEXEC,
            // The tty group, where this user namespace has it (an ordinary
            // user's without subordinate ids has only its own gid).
            Some(if super::tty_group_mapped() {
                "newinstance,ptmxmode=0666,mode=0620,gid=5"
            } else {
                "newinstance,ptmxmode=0666,mode=0620"
            }),
            0,
        )?);
        steps.push(mount(
            &dev.join("shm"),
            false,
            Some("shm"),
            Some("tmpfs"),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            Some("mode=1777,size=65536k"),
            0,
        )?);
        // POSIX message queues of the step's IPC namespace, as in runc's
        // default spec.
        steps.push(mount(
            &dev.join("mqueue"),
            false,
            Some("mqueue"),
            Some("mqueue"),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            None,
            0,
        )?);
        for (link, content) in [
            ("ptmx", "pts/ptmx"),
            ("fd", "/proc/self/fd"),
            ("stdin", "/proc/self/fd/0"),
            ("stdout", "/proc/self/fd/1"),
            ("stderr", "/proc/self/fd/2"),
        ] {
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
        steps.push(Step {
            what: what(format!("mounting sysfs on /{}", sys.display()))?,
            op: Op::Sysfs(Target::new(&sys, false)?),
        });

        for m in &prepared.mounts {
            let target = inside(m.target());
            steps.push(match m {
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
                )?,
                // BuildKit's tmpfs mount options: nosuid (and a size).
                Mount::Tmpfs { size, target: _ } => mount(
                    &target,
                    false,
                    Some("tmpfs"),
                    Some("tmpfs"),
                    libc::MS_NOSUID,
                    (*size > 0).then(|| format!("size={size}")).as_deref(),
                    0,
                )?,
            });
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
            super::seccomp::prepare();
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
                .unwrap_or(super::env::DEFAULT_PATH);
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
            workdir: Target::new(&inside(cwd), false)?,
            workdir_what: what(format!("entering the working directory {cwd}"))?,
            drop_caps,
            groups: super::setgroups_allowed().then(|| spec.additional_gids.clone()),
            uid: spec.uid,
            gid: spec.gid,
            caps,
            rlimits: spec
                .rlimits
                .iter()
                .map(|u| {
                    let resource = super::rlimit_resource(&u.name)
                        .ok_or_else(|| format!("unknown ulimit {}", u.name))?;
                    let limit = libc::rlimit {
                        rlim_cur: super::rlimit_value(u.soft),
                        rlim_max: super::rlimit_value(u.hard),
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

// ---------------------------------------------------------------------------
// The child. Everything below runs in the clone'd child while it shares
// rbuild's memory: system calls on the plan's data and the stack only.

/// Where the child starts.
extern "C" fn child_entry(arg: *mut c_void) -> c_int {
    // SAFETY: `start` passes a Plan that stays alive and unchanged while
    // the child runs (the thread that owns it is suspended until the child
    // execs or exits).
    let plan = unsafe { &*arg.cast_const().cast::<Plan>() };
    // SAFETY: we are that child.
    unsafe { child(plan) }
}

fn errno() -> c_int {
    // SAFETY: errno is the calling thread's.
    unsafe { *libc::__errno_location() }
}

/// Reports `what` (and errno, when not 0) to the parent and exits.
unsafe fn fail(plan: &Plan, what: &CStr, errno: c_int) -> ! {
    let bytes = errno.to_ne_bytes();
    // SAFETY: writes of our own buffers to our own fd, then _exit.
    unsafe {
        libc::write(plan.report, bytes.as_ptr().cast(), bytes.len());
        let what = what.to_bytes();
        libc::write(plan.report, what.as_ptr().cast(), what.len());
        libc::_exit(125)
    }
}

/// `/proc/self/fd/N` for `fd`, in `buf`.
fn fd_path(fd: c_int, buf: &mut [u8; 32]) -> *const c_char {
    const PREFIX: &[u8] = b"/proc/self/fd/";
    buf[..PREFIX.len()].copy_from_slice(PREFIX);
    let mut digits = [0u8; 10];
    let (mut n, mut len) = (fd.unsigned_abs(), 0);
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for i in 0..len {
        buf[PREFIX.len() + i] = digits[len - 1 - i];
    }
    buf[PREFIX.len() + len] = 0;
    buf.as_ptr().cast()
}

/// How the child opens paths inside the root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Walk {
    /// openat2 with `RESOLVE_IN_ROOT` from the root (Linux 5.6 on): a
    /// symlink met on the way is followed inside the root.
    InRoot,
    /// openat with `O_NOFOLLOW` from the directory before (older kernels,
    /// or a seccomp filter around rbuild that refuses openat2): a symlink
    /// met is refused. The plan's paths had the image's symlinks followed
    /// inside the root already, so only one made since would be met.
    NoFollow,
}

impl Walk {
    /// What this kernel offers, found once.
    fn here() -> Walk {
        static WALK: OnceLock<Walk> = OnceLock::new();
        *WALK.get_or_init(|| {
            // SAFETY: openat2 of "/" as O_PATH; the fd is closed.
            let fd = unsafe { open_in_root(libc::AT_FDCWD, c"/", libc::O_PATH) };
            if fd >= 0 {
                // SAFETY: our own fd.
                unsafe { libc::close(fd) };
                Walk::InRoot
            } else if matches!(errno(), libc::ENOSYS | libc::EPERM) {
                Walk::NoFollow
            } else {
                Walk::InRoot
            }
        })
    }
}

/// The root directory the child works in, and how it walks below it.
#[derive(Debug, Clone, Copy)]
struct Root {
    fd: c_int,
    walk: Walk,
}

/// openat2(2) of `path` below `root` with `RESOLVE_IN_ROOT`.
unsafe fn open_in_root(root: c_int, path: &CStr, flags: c_int) -> c_int {
    /// struct open_how (linux/openat2.h); libc's cannot be built here.
    #[repr(C)]
    struct OpenHow {
        flags: u64,
        mode: u64,
        resolve: u64,
    }
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve: libc::RESOLVE_IN_ROOT,
    };
    // SAFETY: valid path and open_how for the call.
    unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root,
            path.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        ) as c_int
    }
}

/// Opens `target` below `root` (`O_PATH`), creating what is missing when
/// `create`; returns the fd, or -1 with errno set. The root itself for an
/// empty target.
unsafe fn open_target(root: Root, target: &Target, create: bool) -> c_int {
    // SAFETY: system calls on fds we own and the target's C strings.
    unsafe {
        let mut dir = libc::fcntl(root.fd, libc::F_DUPFD_CLOEXEC, 3);
        let n = target.names.len();
        for i in 0..n {
            let last = i + 1 == n;
            let file = last && target.file;
            let flags = if file {
                libc::O_PATH
            } else {
                libc::O_PATH | libc::O_DIRECTORY
            };
            let open = || match root.walk {
                Walk::InRoot => open_in_root(root.fd, &target.prefixes[i], flags),
                Walk::NoFollow => {
                    let name = target.names[i].as_ptr();
                    let fd = libc::openat(dir, name, flags | libc::O_NOFOLLOW | libc::O_CLOEXEC);
                    // O_PATH|O_NOFOLLOW opens a symlink itself: refuse it.
                    let mut st: libc::stat = std::mem::zeroed();
                    if fd >= 0
                        && libc::fstat(fd, &mut st) == 0
                        && st.st_mode & libc::S_IFMT == libc::S_IFLNK
                    {
                        libc::close(fd);
                        *libc::__errno_location() = libc::ELOOP;
                        return -1;
                    }
                    fd
                }
            };
            let mut fd = open();
            if fd < 0 && errno() == libc::ENOENT && create {
                let name = target.names[i].as_ptr();
                let made = if file {
                    let f = libc::openat(
                        dir,
                        name,
                        libc::O_WRONLY | libc::O_CREAT | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                        0o666,
                    );
                    if f >= 0 {
                        libc::close(f);
                    }
                    f
                } else {
                    libc::mkdirat(dir, name, 0o777)
                };
                if made < 0 && errno() != libc::EEXIST {
                    let e = errno();
                    libc::close(dir);
                    *libc::__errno_location() = e;
                    return -1;
                }
                fd = open();
            }
            let e = errno();
            libc::close(dir);
            if fd < 0 {
                *libc::__errno_location() = e;
                return -1;
            }
            dir = fd;
        }
        dir
    }
}

/// mount(2) with a source and a target given as paths or fds.
unsafe fn mount_at(
    source: *const c_char,
    target_fd: c_int,
    fstype: *const c_char,
    flags: c_ulong,
    data: *const c_char,
) -> c_int {
    let mut buf = [0u8; 32];
    let target = fd_path(target_fd, &mut buf);
    // SAFETY: NUL-terminated strings or null, as mount(2) takes them.
    unsafe { libc::mount(source, target, fstype, flags, data.cast()) }
}

fn ptr(s: &Option<CString>) -> *const c_char {
    s.as_ref().map_or(std::ptr::null(), |s| s.as_ptr())
}

/// `nosuid,nodev,noexec`.
const SEALED: c_ulong = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;

/// Bind-remounts the mount now at `target` (opened anew: an fd from before
/// the mount refers to what is under it) adding the flags `add`, keeping
/// its nosuid/nodev/noexec and atime flags as runc does (a remount without
/// them would drop them, or fail where they are locked).
unsafe fn remount(root: Root, target: &Target, add: c_ulong) -> c_int {
    // SAFETY: as open_target and mount_at; fstatvfs fills a zeroed struct
    // (glibc takes the flags from the kernel's statfs: no allocation).
    unsafe {
        let fd = open_target(root, target, false);
        if fd < 0 {
            return -1;
        }
        let mut st: libc::statvfs = std::mem::zeroed();
        let kept = if libc::fstatvfs(fd, &mut st) == 0 {
            // ST_* and MS_* agree for these bits.
            st.f_flag as c_ulong
                & (libc::MS_NOSUID
                    | libc::MS_NODEV
                    | libc::MS_NOEXEC
                    | libc::MS_NOATIME
                    | libc::MS_NODIRATIME
                    | libc::MS_RELATIME)
        } else {
            0
        };
        let rc = mount_at(
            std::ptr::null(),
            fd,
            std::ptr::null(),
            libc::MS_BIND | libc::MS_REMOUNT | libc::MS_REC | kept | add,
            std::ptr::null(),
        );
        let e = errno();
        libc::close(fd);
        *libc::__errno_location() = e;
        rc
    }
}

/// Runs one step; fails the child on error.
unsafe fn apply(plan: &Plan, root: Root, step: &Step) {
    // SAFETY: system calls on the plan's strings and fds we own.
    unsafe {
        let failed = |plan: &Plan| -> ! { fail(plan, &step.what, errno()) };
        match &step.op {
            Op::Mount {
                target,
                source,
                fstype,
                flags,
                data,
                remount: add,
            } => {
                let fd = open_target(root, target, true);
                if fd < 0 {
                    failed(plan);
                }
                let rc = mount_at(ptr(source), fd, ptr(fstype), *flags, ptr(data));
                libc::close(fd);
                if rc < 0 || (*add != 0 && remount(root, target, *add) < 0) {
                    failed(plan);
                }
            }
            Op::Sysfs(target) => {
                let fd = open_target(root, target, true);
                if fd < 0 {
                    failed(plan);
                }
                let ro = libc::MS_RDONLY | SEALED;
                let sysfs = c"sysfs".as_ptr();
                let rc = mount_at(sysfs, fd, sysfs, ro, std::ptr::null());
                let rc = if rc < 0 {
                    let bound = mount_at(
                        c"/sys".as_ptr(),
                        fd,
                        std::ptr::null(),
                        libc::MS_BIND | libc::MS_REC,
                        std::ptr::null(),
                    );
                    if bound < 0 {
                        bound
                    } else {
                        remount(root, target, ro)
                    }
                } else {
                    rc
                };
                libc::close(fd);
                if rc < 0 {
                    failed(plan);
                }
            }
            Op::Device {
                dir,
                name,
                host,
                major,
                minor,
            } => {
                let dir = open_target(root, dir, false);
                if dir < 0 {
                    failed(plan);
                }
                let name = name.as_ptr();
                let dev = libc::makedev(*major, *minor);
                if libc::mknodat(dir, name, libc::S_IFCHR | 0o666, dev) == 0 {
                    libc::fchmodat(dir, name, 0o666, 0);
                } else if *libc::__errno_location() == libc::EPERM {
                    let file = libc::openat(
                        dir,
                        name,
                        libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW,
                        0o666,
                    );
                    if file < 0
                        || mount_at(
                            host.as_ptr(),
                            file,
                            std::ptr::null(),
                            libc::MS_BIND,
                            std::ptr::null(),
                        ) < 0
                    {
                        failed(plan);
                    }
                    libc::close(file);
                } else {
                    failed(plan);
                }
                libc::close(dir);
            }
            Op::Symlink { dir, name, content } => {
                let dir = open_target(root, dir, false);
                if dir >= 0 {
                    libc::symlinkat(content.as_ptr(), dir, name.as_ptr());
                    libc::close(dir);
                }
            }
            Op::Mask(target) => {
                let fd = open_target(root, target, false);
                if fd < 0 {
                    return;
                }
                let mut st: libc::stat = std::mem::zeroed();
                let rc = if libc::fstat(fd, &mut st) < 0 {
                    -1
                } else if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
                    let tmpfs = c"tmpfs".as_ptr();
                    mount_at(tmpfs, fd, tmpfs, libc::MS_RDONLY, std::ptr::null())
                } else {
                    let null = c"/dev/null".as_ptr();
                    mount_at(null, fd, std::ptr::null(), libc::MS_BIND, std::ptr::null())
                };
                libc::close(fd);
                if rc < 0 {
                    failed(plan);
                }
            }
            Op::ReadOnly(target) => {
                let fd = open_target(root, target, false);
                if fd < 0 {
                    return;
                }
                let mut buf = [0u8; 32];
                let path = fd_path(fd, &mut buf);
                let flags = libc::MS_BIND | libc::MS_REC;
                let rc = mount_at(path, fd, std::ptr::null(), flags, std::ptr::null());
                libc::close(fd);
                if rc < 0 || remount(root, target, libc::MS_RDONLY) < 0 {
                    failed(plan);
                }
            }
        }
    }
}

/// The step's PID 1: builds the root filesystem and execs the command.
unsafe fn child(plan: &Plan) -> ! {
    // SAFETY: system calls on the plan's data and our own stack; see the
    // module's doc for why nothing else may run here.
    unsafe {
        // Die with the thread that started us (it waits for us).
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        // runc's default umask for the command and for the mount points it
        // makes (0755 directories), whatever rbuild was started with.
        libc::umask(0o022);
        for (i, fd) in plan.stdio.iter().enumerate() {
            if libc::dup2(*fd, i as c_int) < 0 {
                fail(plan, c"setting up stdio", errno());
            }
        }
        // The command sees 0-2 only (the report pipe is close-on-exec: its
        // closing tells the parent the exec happened).
        libc::syscall(
            libc::SYS_close_range,
            3,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        );

        let slash = c"/".as_ptr();
        let null = std::ptr::null();
        if libc::mount(
            null,
            slash,
            null,
            libc::MS_REC | libc::MS_PRIVATE,
            null.cast(),
        ) < 0
        {
            fail(plan, c"making the mounts private", errno());
        }
        let root = plan.root.as_ptr();
        if libc::mount(root, root, null, libc::MS_BIND | libc::MS_REC, null.cast()) < 0 {
            fail(plan, &plan.root, errno());
        }
        let root_fd = libc::open(root, libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC);
        if root_fd < 0 {
            fail(plan, &plan.root, errno());
        }
        let root_dir = Root {
            fd: root_fd,
            walk: plan.walk,
        };
        for step in &plan.steps {
            apply(plan, root_dir, step);
        }
        libc::close(root_fd);

        let dot = c".".as_ptr();
        if libc::chdir(root) < 0
            || libc::syscall(libc::SYS_pivot_root, dot, dot) < 0
            || libc::umount2(dot, libc::MNT_DETACH) < 0
            || libc::chdir(slash) < 0
        {
            fail(plan, c"pivot_root into the root filesystem", errno());
        }
        let host = plan.hostname.to_bytes();
        if libc::sethostname(host.as_ptr().cast(), host.len()) < 0 {
            fail(plan, c"setting the hostname", errno());
        }
        if plan.loopback {
            loopback_up(plan);
        }
        let new_root = libc::open(slash, libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC);
        let new_root = Root {
            fd: new_root,
            walk: plan.walk,
        };
        let cwd = open_target(new_root, &plan.workdir, true);
        if cwd < 0 || libc::fchdir(cwd) < 0 {
            fail(plan, &plan.workdir_what, errno());
        }
        libc::close(cwd);
        libc::close(new_root.fd);

        for (resource, limit) in &plan.rlimits {
            if libc::setrlimit(*resource, limit) < 0 {
                fail(plan, &plan.rlimits_what, errno());
            }
        }
        drop_privileges(plan);

        // The command starts with default signal handling and nothing
        // blocked (rbuild ignores SIGPIPE and blocks SIGINT/TERM/HUP).
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = libc::SIG_DFL;
        for sig in 1..=libc::SIGRTMAX() {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::sigaction(sig, &action, std::ptr::null_mut());
            }
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());

        for (program, what) in &plan.programs {
            if plan.search {
                let mut st: libc::stat = std::mem::zeroed();
                if libc::stat(program.as_ptr(), &mut st) < 0
                    || st.st_mode & libc::S_IFMT != libc::S_IFREG
                    || st.st_mode & 0o111 == 0
                {
                    continue;
                }
            }
            libc::execve(program.as_ptr(), plan.argv.as_ptr(), plan.envp.as_ptr());
            fail(plan, what, errno());
        }
        fail(plan, &plan.not_found, 0)
    }
}

/// Brings `lo` up in the new network namespace.
unsafe fn loopback_up(plan: &Plan) {
    // SAFETY: socket/ioctl on a zeroed ifreq naming "lo".
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            fail(plan, c"creating a socket for lo", errno());
        }
        let mut req: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo".iter().enumerate() {
            req.ifr_name[i] = *b as c_char;
        }
        if libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req) < 0 {
            fail(plan, c"reading lo's flags", errno());
        }
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        if libc::ioctl(fd, libc::SIOCSIFFLAGS, &req) < 0 {
            fail(plan, c"bringing lo up", errno());
        }
        libc::close(fd);
    }
}

/// Docker's seccomp profile (none for `--security=insecure`), Docker's
/// capability set (all of them for `--security=insecure`) and the step's
/// user. No `no_new_privs`: as in BuildKit (`oci.WithNewPrivileges`), a
/// setuid program of the image gains its owner's ids (`sudo`, `su`), within
/// the step's capability bounds. Without `no_new_privs` the kernel takes a
/// filter only from a process with CAP_SYS_ADMIN, so the profile goes
/// first (runc's order); it allows the calls that follow. The id changes
/// are raw system calls: glibc's wrappers would signal every thread of
/// rbuild to change theirs too.
unsafe fn drop_privileges(plan: &Plan) {
    // SAFETY: seccomp/prctl/setgroups/setgid/setuid/capset with valid
    // arguments.
    unsafe {
        if plan.seccomp
            && let Err(e) = super::seccomp::install()
        {
            fail(plan, c"installing seccomp", e);
        }
        for cap in &plan.drop_caps {
            libc::prctl(libc::PR_CAPBSET_DROP, *cap, 0, 0, 0);
        }
        if let Some(groups) = &plan.groups
            && libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) < 0
        {
            fail(plan, c"setgroups", errno());
        }
        if libc::syscall(libc::SYS_setgid, plan.gid) < 0 {
            fail(plan, c"setgid", errno());
        }
        if libc::syscall(libc::SYS_setuid, plan.uid) < 0 {
            fail(plan, c"setuid", errno());
        }
        if let Some(mask) = plan.caps {
            set_caps(plan, mask);
        }
    }
}

/// capset(2) with the same set as effective and permitted, none
/// inheritable (as runc since 1.1: an inheritable set would pass the
/// capabilities on through programs with inheritable file capabilities).
unsafe fn set_caps(plan: &Plan, mask: u64) {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let header = Header {
        version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
        pid: 0,
    };
    let half = |bits: u32| Data {
        effective: bits,
        permitted: bits,
        inheritable: 0,
    };
    let data = [half(mask as u32), half((mask >> 32) as u32)];
    // SAFETY: header and data are valid for capset's v3 layout.
    if unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) } != 0 {
        // SAFETY: as fail.
        unsafe { fail(plan, c"capset", errno()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fd_paths_and_reports_render() {
        let mut buf = [0u8; 32];
        for (fd, text) in [
            (0, "/proc/self/fd/0"),
            (3, "/proc/self/fd/3"),
            (1234, "/proc/self/fd/1234"),
        ] {
            // SAFETY: fd_path returns a pointer into buf, NUL-terminated.
            let got = unsafe { CStr::from_ptr(fd_path(fd, &mut buf)) };
            assert_eq!(got.to_str().unwrap(), text);
        }
        let mut report = libc::ENOENT.to_ne_bytes().to_vec();
        report.extend_from_slice(b"creating /dev/null");
        assert!(render_report(&report).starts_with("creating /dev/null: No such file"));
        let mut report = 0i32.to_ne_bytes().to_vec();
        report.extend_from_slice(b"exec: \"x\": executable file not found in $PATH");
        assert_eq!(
            render_report(&report),
            "exec: \"x\": executable file not found in $PATH"
        );
    }

    /// Opens `rel` below `dir` the way the child does; the fd's path or
    /// the errno.
    fn open_below(dir: &Path, walk: Walk, rel: &str, file: bool) -> Result<PathBuf, i32> {
        let dir = CString::new(dir.as_os_str().as_bytes()).unwrap();
        // SAFETY: open/open_target/close on our own fds; readlink of
        // /proc/self/fd is only read.
        unsafe {
            let fd = libc::open(dir.as_ptr(), libc::O_PATH | libc::O_DIRECTORY);
            assert!(fd >= 0);
            let root = Root { fd, walk };
            let target = Target::new(Path::new(rel), file).unwrap();
            let opened = open_target(root, &target, true);
            let result = if opened < 0 {
                Err(errno())
            } else {
                let path = fs::read_link(format!("/proc/self/fd/{opened}")).unwrap();
                libc::close(opened);
                Ok(path)
            };
            libc::close(fd);
            result
        }
    }

    #[test]
    fn paths_below_the_root_never_leave_it() {
        let t = std::env::temp_dir().join(format!("rbuild-walk-{}", std::process::id()));
        let _ = fs::remove_dir_all(&t);
        let (root, outside) = (t.join("root"), t.join("outside"));
        fs::create_dir_all(root.join("a")).unwrap();
        fs::create_dir_all(&outside).unwrap();
        // An absolute link (to the root's own /a, not the host's) and links
        // that point out of the root.
        std::os::unix::fs::symlink("/a", root.join("abs")).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("host")).unwrap();
        std::os::unix::fs::symlink("../../outside/f", root.join("a/up")).unwrap();

        // Missing directories and files are made; both walks agree.
        for walk in [Walk::InRoot, Walk::NoFollow] {
            let dir = open_below(&root, walk, "a/new/deeper", false).unwrap();
            assert_eq!(dir, root.join("a/new/deeper"), "{walk:?}");
            let file = open_below(&root, walk, "a/new/file", true).unwrap();
            assert_eq!(file, root.join("a/new/file"), "{walk:?}");
            assert!(root.join("a/new/file").is_file());
            fs::remove_dir_all(root.join("a/new")).unwrap();
        }
        // Followed inside the root ...
        let via = open_below(&root, Walk::InRoot, "abs/x", false).unwrap();
        assert_eq!(via, root.join("a/x"));
        // (a link to a directory the root does not have leads nowhere: the
        // plan resolves such paths beforehand, so the walk makes them)
        let via = open_below(&root, Walk::InRoot, "host/x", false);
        assert_eq!(via, Err(libc::ENOENT));
        let resolved = outside.strip_prefix("/").unwrap().join("x");
        let via = open_below(&root, Walk::InRoot, resolved.to_str().unwrap(), false);
        assert_eq!(via.unwrap(), root.join(&resolved));
        // ... or refused.
        for rel in ["abs/y", "host/y"] {
            assert!(
                open_below(&root, Walk::NoFollow, rel, false).is_err(),
                "{rel}"
            );
        }
        assert_eq!(
            open_below(&root, Walk::NoFollow, "a/up", true),
            Err(libc::ELOOP)
        );
        // Nothing was made outside.
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 0);
        let _ = fs::remove_dir_all(&t);
    }

    #[test]
    fn targets_split_into_prefixes_and_names() {
        let t = Target::new(Path::new("a/b/c"), true).unwrap();
        let strs = |v: &[CString]| {
            v.iter()
                .map(|s| s.to_str().unwrap().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(strs(&t.prefixes), ["a", "a/b", "a/b/c"]);
        assert_eq!(strs(&t.names), ["a", "b", "c"]);
        assert!(t.file);
        assert!(Target::new(Path::new(""), false).unwrap().names.is_empty());
    }
}
