//! The embedded runtime: namespaces, mounts and `pivot_root` done here,
//! with no runc or other program.
//!
//! The parent ([`Embedded::run`]) re-executes the rbuild binary as
//! `rbuild __sandbox`, writes the [`RunSpec`] as JSON to its stdin and
//! streams its stdout/stderr. The helper ([`helper_main`]) unshares mount,
//! UTS, IPC and PID namespaces (and the network namespace for
//! `Network::None`), forks the step's PID 1, which sets up the root
//! filesystem and execs the command. Setup errors travel back on fd 3, so a
//! command's own exit status (even 125 or 127) is never mistaken for one.

use std::ffi::CString;
use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, unshare};
use nix::sys::stat::{Mode, SFlag, makedev, mknod};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{
    ForkResult, Gid, Uid, chdir, execve, fork, pivot_root, setgid, setgroups, sethostname, setuid,
};

use super::{
    Cancel, DEFAULT_CAPS, MASKED_PATHS, Mount, Network, Prepared, READONLY_PATHS, RunSpec, Runtime,
    SandboxError, Stream, exit_code, stream_output,
};

/// The argument that makes rbuild act as the sandbox helper.
pub const HELPER_ARG: &str = "__sandbox";

/// The fd on which the helper reports setup errors.
const ERROR_FD: i32 = 3;

/// The highest capability this kernel knows.
fn last_cap() -> u32 {
    fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

/// The default runtime.
#[derive(Debug, Clone)]
pub struct Embedded {
    /// The rbuild binary to re-execute.
    pub helper: PathBuf,
}

impl Embedded {
    /// Re-executes the running binary.
    pub fn current() -> io::Result<Embedded> {
        Ok(Embedded {
            helper: std::env::current_exe()?,
        })
    }
}

impl Runtime for Embedded {
    fn run(
        &self,
        spec: &RunSpec,
        cancel: &Cancel,
        output: &mut dyn FnMut(Stream, &[u8]),
    ) -> Result<i32, SandboxError> {
        let spawn_err = super::spawn_error(spec);
        let prepared = Prepared::new(spec).map_err(spawn_err)?;
        let mut full = spec.clone();
        full.mounts = prepared.mounts.clone();

        // Close-on-exec: a helper spawned for a parallel step must not hold
        // this step's pipe open (its reader would wait for that step).
        let (err_read, err_write) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| spawn_err(e.into()))?;
        let err_fd = err_write.as_raw_fd();
        let mut cmd = Command::new(&self.helper);
        cmd.arg(HELPER_ARG)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: dup2 and fcntl are async-signal-safe; the closure touches
        // nothing else. dup2 leaves the copy without close-on-exec.
        unsafe {
            cmd.pre_exec(move || {
                let ok = if err_fd == ERROR_FD {
                    libc::fcntl(ERROR_FD, libc::F_SETFD, 0) >= 0
                } else {
                    libc::dup2(err_fd, ERROR_FD) >= 0
                };
                if !ok {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(spawn_err)?;
        drop(err_write);
        let json = serde_json::to_vec(&full).expect("specs serialise");
        let mut stdin = child.stdin.take().expect("piped");
        stdin.write_all(&json).map_err(spawn_err)?;
        drop(stdin);

        // The helper is the step's parent (PR_SET_PDEATHSIG) and the PID
        // namespace dies with its init: killing it ends the whole step.
        let status = stream_output(&mut child, cancel, output, |c| {
            let _ = c.kill();
        })
        .map_err(spawn_err)?;
        let mut setup_error = String::new();
        let _ = fs::File::from(err_read).read_to_string(&mut setup_error);
        drop(prepared);
        if !setup_error.is_empty() {
            return Err(SandboxError::Setup(setup_error.trim().to_string()));
        }
        Ok(exit_code(status))
    }
}

/// Reports a setup error to the parent and exits.
fn fail(what: impl std::fmt::Display) -> ! {
    // SAFETY: ERROR_FD was set up by the parent; we only write to it.
    let mut f = unsafe { fs::File::from_raw_fd(ERROR_FD) };
    let _ = writeln!(f, "{what}");
    std::process::exit(125);
}

/// Entry point of `rbuild __sandbox`: never returns.
pub fn helper_main() -> ! {
    // rbuild's main thread blocks these for its handler; the step must not
    // inherit that.
    crate::interrupt::unblock();
    let mut json = Vec::new();
    if let Err(e) = io::stdin().read_to_end(&mut json) {
        fail(format!("reading the run spec: {e}"));
    }
    let spec: RunSpec = match serde_json::from_slice(&json) {
        Ok(s) => s,
        Err(e) => fail(format!("reading the run spec: {e}")),
    };
    // The command reads nothing: stdin is /dev/null, as in BuildKit.
    match fs::File::open("/dev/null") {
        // SAFETY: dup2 onto fd 0 of this single-threaded process.
        Ok(null) => unsafe {
            libc::dup2(null.as_raw_fd(), 0);
        },
        Err(e) => fail(format!("opening /dev/null: {e}")),
    }
    // Die with rbuild.
    // SAFETY: prctl with constant arguments.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
    }
    let mut flags = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWPID;
    if spec.network == Network::None {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    if let Err(e) = unshare(flags) {
        fail(format!(
            "creating namespaces: {e} (rbuild needs root or user namespaces)"
        ));
    }
    // SAFETY: this process has one thread; the child only calls
    // async-signal-safe functions until exec... or at least nothing that
    // another thread could have left locked.
    match unsafe { fork() } {
        Err(e) => fail(format!("fork: {e}")),
        Ok(ForkResult::Child) => init(&spec),
        Ok(ForkResult::Parent { child }) => {
            // Forward termination to the step (PID 1 dies: all of it dies).
            for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
                // SAFETY: ignoring a signal in the helper; the child
                // receives kill from below when the helper is killed.
                unsafe {
                    libc::signal(sig, libc::SIG_IGN);
                }
            }
            loop {
                match waitpid(child, None) {
                    Ok(WaitStatus::Exited(_, code)) => std::process::exit(code),
                    Ok(WaitStatus::Signaled(_, sig, _)) => std::process::exit(128 + sig as i32),
                    Ok(_) => continue,
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => fail(format!("waiting for the step: {e}")),
                }
            }
        }
    }
}

fn mkdir_all(path: &Path) {
    if let Err(e) = fs::create_dir_all(path) {
        fail(format!("creating {}: {e}", path.display()));
    }
}

fn do_mount(
    source: Option<&str>,
    target: &Path,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) {
    if let Err(e) = mount(source, target, fstype, flags, data) {
        fail(format!(
            "mounting {} on {}: {e}",
            source.or(fstype).unwrap_or("-"),
            target.display()
        ));
    }
}

/// The step's PID 1: builds the root filesystem and execs the command.
fn init(spec: &RunSpec) -> ! {
    // SAFETY: prctl with constant arguments.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
    }
    let root = &spec.rootfs;
    do_mount(
        None,
        Path::new("/"),
        None,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None,
    );
    do_mount(
        Some(&root.display().to_string()),
        root,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None,
    );

    let proc_dir = root.join("proc");
    mkdir_all(&proc_dir);
    do_mount(
        Some("proc"),
        &proc_dir,
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None,
    );

    setup_dev(&root.join("dev"));

    let sys = root.join("sys");
    mkdir_all(&sys);
    let ro = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    if mount(Some("sysfs"), &sys, Some("sysfs"), ro, None::<&str>).is_err() {
        do_mount(
            Some("/sys"),
            &sys,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
        );
        do_mount(
            None,
            &sys,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_REC,
            None,
        );
    }

    for m in &spec.mounts {
        match m {
            Mount::Bind {
                source,
                target,
                readonly,
            } => {
                let dest = cache::layer::resolve_in_root(
                    root,
                    Path::new(target.trim_start_matches('/')),
                    true,
                );
                if source.is_dir() {
                    mkdir_all(&dest);
                } else {
                    if let Some(parent) = dest.parent() {
                        mkdir_all(parent);
                    }
                    if fs::symlink_metadata(&dest).is_err()
                        && let Err(e) = fs::File::create(&dest)
                    {
                        fail(format!("creating {}: {e}", dest.display()));
                    }
                }
                do_mount(
                    Some(&source.display().to_string()),
                    &dest,
                    None,
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    None,
                );
                if *readonly {
                    do_mount(
                        None,
                        &dest,
                        None,
                        MsFlags::MS_BIND
                            | MsFlags::MS_REMOUNT
                            | MsFlags::MS_RDONLY
                            | MsFlags::MS_REC,
                        None,
                    );
                }
            }
            Mount::Tmpfs { target, size } => {
                let dest = cache::layer::resolve_in_root(
                    root,
                    Path::new(target.trim_start_matches('/')),
                    true,
                );
                mkdir_all(&dest);
                let data = if *size > 0 {
                    format!("size={size}")
                } else {
                    String::new()
                };
                do_mount(
                    Some("tmpfs"),
                    &dest,
                    Some("tmpfs"),
                    MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                    Some(&data),
                );
            }
        }
    }

    if !spec.insecure {
        for p in MASKED_PATHS {
            let path = root.join(p.trim_start_matches('/'));
            match fs::metadata(&path) {
                Ok(m) if m.is_dir() => do_mount(
                    Some("tmpfs"),
                    &path,
                    Some("tmpfs"),
                    MsFlags::MS_RDONLY,
                    None,
                ),
                Ok(_) => do_mount(Some("/dev/null"), &path, None, MsFlags::MS_BIND, None),
                Err(_) => {}
            }
        }
        for p in READONLY_PATHS {
            let path = root.join(p.trim_start_matches('/'));
            if path.exists() {
                do_mount(
                    Some(&path.display().to_string()),
                    &path,
                    None,
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    None,
                );
                do_mount(
                    None,
                    &path,
                    None,
                    MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_REC,
                    None,
                );
            }
        }
    }

    if let Err(e) = chdir(root) {
        fail(format!("entering {}: {e}", root.display()));
    }
    if let Err(e) = pivot_root(".", ".") {
        fail(format!("pivot_root into {}: {e}", root.display()));
    }
    if let Err(e) = umount2(".", MntFlags::MNT_DETACH) {
        fail(format!("detaching the old root: {e}"));
    }
    let _ = chdir("/");
    if let Err(e) = sethostname(&spec.hostname) {
        fail(format!("setting the hostname: {e}"));
    }
    if spec.network == Network::None {
        loopback_up();
    }
    let cwd = if spec.cwd.is_empty() {
        "/"
    } else {
        spec.cwd.as_str()
    };
    mkdir_all(Path::new(cwd));
    if let Err(e) = chdir(cwd) {
        fail(format!("entering the working directory {cwd}: {e}"));
    }

    drop_privileges(spec);

    let path_var = spec
        .env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    let Some(arg0) = spec.args.first() else {
        fail("no command to run")
    };
    let program = if arg0.contains('/') {
        PathBuf::from(arg0)
    } else {
        match path_var
            .split(':')
            .map(|d| Path::new(d).join(arg0))
            .find(|p| is_executable(p))
        {
            Some(p) => p,
            None => fail(format!(
                "exec: \"{arg0}\": executable file not found in $PATH"
            )),
        }
    };
    let cstr = |s: &str| {
        CString::new(s).unwrap_or_else(|_| fail(format!("argument with a NUL byte: {s:?}")))
    };
    let argv: Vec<CString> = spec.args.iter().map(|a| cstr(a)).collect();
    let envp: Vec<CString> = spec.env.iter().map(|e| cstr(e)).collect();
    let program_c = cstr(&program.display().to_string());
    // Close the error channel on a successful exec.
    // SAFETY: fcntl on our own fd.
    unsafe {
        libc::fcntl(ERROR_FD, libc::F_SETFD, libc::FD_CLOEXEC);
    }
    match execve(&program_c, &argv, &envp) {
        Err(e) => fail(format!("exec {}: {e}", program.display())),
        Ok(never) => match never {},
    }
}

fn is_executable(p: &Path) -> bool {
    fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// `/dev` as runc makes it: a tmpfs with the standard nodes, devpts, shm.
fn setup_dev(dev: &Path) {
    mkdir_all(dev);
    do_mount(
        Some("tmpfs"),
        dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
        Some("mode=755,size=65536k"),
    );
    for (name, major, minor) in [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ] {
        let path = dev.join(name);
        if let Err(e) = mknod(
            &path,
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            makedev(major, minor),
        ) {
            fail(format!("creating {}: {e}", path.display()));
        }
        let _ = fs::set_permissions(&path, fs::Permissions::from_mode(0o666));
    }
    let pts = dev.join("pts");
    mkdir_all(&pts);
    do_mount(
        Some("devpts"),
        &pts,
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
    );
    let shm = dev.join("shm");
    mkdir_all(&shm);
    do_mount(
        Some("shm"),
        &shm,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=1777,size=65536k"),
    );
    for (link, target) in [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        let _ = std::os::unix::fs::symlink(target, dev.join(link));
    }
}

/// Brings `lo` up in a new network namespace.
fn loopback_up() {
    // SAFETY: plain socket/ioctl calls on a zeroed ifreq naming "lo".
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            fail("creating a socket for lo");
        }
        let _guard = OwnedFd::from_raw_fd(fd);
        let mut req: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo\0".iter().enumerate() {
            req.ifr_name[i] = *b as libc::c_char;
        }
        if libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req) < 0 {
            fail("reading lo's flags");
        }
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        if libc::ioctl(fd, libc::SIOCSIFFLAGS, &req) < 0 {
            fail("bringing lo up");
        }
    }
}

/// Docker's capability set (all of them for `--security=insecure`),
/// the step's user, `no_new_privs` and Docker's seccomp profile (none for
/// `--security=insecure`).
fn drop_privileges(spec: &RunSpec) {
    if !spec.insecure {
        for cap in 0..=last_cap() {
            if !DEFAULT_CAPS.contains(&cap) {
                // SAFETY: prctl with integer arguments.
                unsafe {
                    libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0);
                }
            }
        }
    }
    let gids: Vec<Gid> = spec
        .additional_gids
        .iter()
        .map(|g| Gid::from_raw(*g))
        .collect();
    if let Err(e) = setgroups(&gids) {
        fail(format!("setgroups: {e}"));
    }
    if let Err(e) = setgid(Gid::from_raw(spec.gid)) {
        fail(format!("setgid {}: {e}", spec.gid));
    }
    if let Err(e) = setuid(Uid::from_raw(spec.uid)) {
        fail(format!("setuid {}: {e}", spec.uid));
    }
    if spec.uid == 0 && !spec.insecure {
        let mask: u64 = DEFAULT_CAPS.iter().fold(0, |m, c| m | (1u64 << c));
        set_caps(mask);
    }
    // SAFETY: prctl with constant arguments.
    unsafe {
        libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
    }
    // Last: from here on only what the profile allows (stat, exec).
    if !spec.insecure
        && let Err(e) = super::seccomp::install()
    {
        fail(format!(
            "installing seccomp: {}",
            io::Error::from_raw_os_error(e)
        ));
    }
}

/// capset(2) with the same set as effective, permitted and inheritable.
fn set_caps(mask: u64) {
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
    let lo = Data {
        effective: mask as u32,
        permitted: mask as u32,
        inheritable: mask as u32,
    };
    let hi = Data {
        effective: (mask >> 32) as u32,
        permitted: (mask >> 32) as u32,
        inheritable: (mask >> 32) as u32,
    };
    let data = [lo, hi];
    // SAFETY: header and data are valid for capset's v3 layout.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) };
    if rc != 0 {
        fail(format!("capset: {}", io::Error::last_os_error()));
    }
}
