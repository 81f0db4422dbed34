//! The child: everything here runs in the clone'd process while it shares
//! rbuild's memory, and does what the [`Plan`] says with system calls on
//! the plan's data and its own stack only (see the parent module).

use std::ffi::{CStr, CString};

use libc::{c_char, c_int, c_ulong, c_void};

use super::plan::{Op, Plan, SEALED, Step, Target};
use super::walk::{Root, errno, fd_path, open_target};

/// Where the child starts.
pub(super) extern "C" fn child_entry(arg: *mut c_void) -> c_int {
    // SAFETY: `start` passes a Plan that stays alive and unchanged while
    // the child runs (the thread that owns it is suspended until the child
    // execs or exits).
    let plan = unsafe { &*arg.cast_const().cast::<Plan>() };
    // SAFETY: we are that child.
    unsafe { child(plan) }
}

/// Reports `what` (and errno, when not 0) to the parent and exits.
pub(super) unsafe fn fail(plan: &Plan, what: &CStr, errno: c_int) -> ! {
    let bytes = errno.to_ne_bytes();
    // SAFETY: writes of our own buffers to our own fd, then _exit.
    unsafe {
        libc::write(plan.report, bytes.as_ptr().cast(), bytes.len());
        let what = what.to_bytes();
        libc::write(plan.report, what.as_ptr().cast(), what.len());
        libc::_exit(125)
    }
}

/// mount(2) with a source and a target given as paths or fds.
pub(super) unsafe fn mount_at(
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

pub(super) fn ptr(s: &Option<CString>) -> *const c_char {
    s.as_ref().map_or(std::ptr::null(), |s| s.as_ptr())
}

/// Bind-remounts the mount now at `target` (opened anew: an fd from before
/// the mount refers to what is under it) adding the flags `add`, keeping
/// its nosuid/nodev/noexec and atime flags as runc does (a remount without
/// them would drop them, or fail where they are locked).
pub(super) unsafe fn remount(root: Root, target: &Target, add: c_ulong) -> c_int {
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

/// Runs one step; fails the child on error. `cgroupns`: the step is in
/// its cgroup namespace.
pub(super) unsafe fn apply(plan: &Plan, root: Root, step: &Step, cgroupns: bool) {
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
            Op::Cgroup2(target) => {
                if !cgroupns {
                    return;
                }
                let fd = open_target(root, target, false);
                if fd >= 0 {
                    let cgroup2 = c"cgroup2".as_ptr();
                    let flags = libc::MS_RDONLY | SEALED;
                    mount_at(c"cgroup".as_ptr(), fd, cgroup2, flags, std::ptr::null());
                    libc::close(fd);
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
pub(super) unsafe fn child(plan: &Plan) -> ! {
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
        // Into the step's own cgroup, and a cgroup namespace rooted there;
        // where the kernel refuses, the step runs in rbuild's, without.
        let mut cgroupns = false;
        if let Some(procs) = &plan.cgroup_procs {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd >= 0 {
                cgroupns = libc::write(fd, c"0".as_ptr().cast(), 1) == 1
                    && libc::unshare(libc::CLONE_NEWCGROUP) == 0;
                libc::close(fd);
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
            apply(plan, root_dir, step, cgroupns);
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
pub(super) unsafe fn loopback_up(plan: &Plan) {
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
pub(super) unsafe fn drop_privileges(plan: &Plan) {
    // SAFETY: seccomp/prctl/setgroups/setgid/setuid/capset with valid
    // arguments.
    unsafe {
        if plan.seccomp
            && let Err(e) = crate::sandbox::seccomp::install()
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
pub(super) unsafe fn set_caps(plan: &Plan, mask: u64) {
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
