//! Docker's default seccomp profile, as it applies to a build step with
//! Docker's default capabilities on x86_64 (the profile's rules that
//! depend on capabilities outside that set, or on other architectures, fall
//! away; those for `CAP_SYS_CHROOT`, which the set has, stay).
//!
//! One table serves both runtimes: [`install`] applies it as a BPF program
//! for the embedded runtime (compiled here once per process: a binary search
//! over system call numbers), [`oci_profile`] writes it as the
//! `linux.seccomp` section of runc's config.json. Anything not listed fails
//! with `EPERM`; `clone3` fails with `ENOSYS` so that libc falls back to
//! `clone`, whose namespace flags are refused. Only the native x86_64 ABI
//! is allowed: a 32-bit (i386 or x32) system call ends the process.
//! `--security=insecure` runs without a filter, as BuildKit does.

use serde_json::{Value, json};

/// When a listed system call is allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum When {
    /// Always.
    Always,
    /// When the first argument is one of these values.
    Arg0In(&'static [u64]),
    /// When the first argument is not this value.
    Arg0Ne(u64),
    /// When the first argument has none of these bits.
    Arg0Without(u64),
}

/// `personality(2)` values the profile allows: PER_LINUX, PER_LINUX32,
/// UNAME26, UNAME26|PER_LINUX32, and the query 0xffffffff.
const PERSONALITIES: &[u64] = &[0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

/// AF_VSOCK: the only socket family the profile refuses.
const AF_VSOCK: u64 = 40;

/// The clone flags that create namespaces (CLONE_NEWNS, NEWCGROUP, NEWUTS,
/// NEWIPC, NEWUSER, NEWPID, NEWNET), refused without CAP_SYS_ADMIN.
const CLONE_NAMESPACE_FLAGS: u64 = 0x7e02_0000;

macro_rules! syscalls {
    ($when:expr; $($name:ident),* $(,)?) => {
        &[$((stringify!($name), libc::$name as i64, $when)),*]
    };
}

/// The allowed system calls of x86_64 with their numbers. The names are
/// libc's `SYS_` constants (see [`name`]), so a name the target lacks fails
/// to compile.
#[cfg(target_arch = "x86_64")]
const ALLOWED: &[(&str, i64, When)] = {
    syscalls![When::Always;
        SYS_accept, SYS_accept4, SYS_access, SYS_adjtimex, SYS_alarm, SYS_bind, SYS_brk,
        SYS_capget, SYS_capset, SYS_chdir, SYS_chmod, SYS_chown, SYS_clock_adjtime,
        SYS_clock_getres, SYS_clock_gettime, SYS_clock_nanosleep, SYS_close, SYS_close_range,
        SYS_connect, SYS_copy_file_range, SYS_creat, SYS_dup, SYS_dup2, SYS_dup3,
        SYS_epoll_create, SYS_epoll_create1, SYS_epoll_ctl, SYS_epoll_ctl_old,
        SYS_epoll_pwait, SYS_epoll_pwait2, SYS_epoll_wait, SYS_epoll_wait_old, SYS_eventfd,
        SYS_eventfd2, SYS_execve, SYS_execveat, SYS_exit, SYS_exit_group, SYS_faccessat,
        SYS_faccessat2, SYS_fadvise64, SYS_fallocate, SYS_fanotify_mark, SYS_fchdir,
        SYS_fchmod, SYS_fchmodat, SYS_fchown, SYS_fchownat, SYS_fcntl, SYS_fdatasync,
        SYS_fgetxattr, SYS_flistxattr, SYS_flock, SYS_fork, SYS_fremovexattr, SYS_fsetxattr,
        SYS_fstat, SYS_fstatfs, SYS_fsync, SYS_ftruncate, SYS_futex, SYS_futex_waitv,
        SYS_futimesat, SYS_getcpu, SYS_getcwd, SYS_getdents, SYS_getdents64, SYS_getegid,
        SYS_geteuid, SYS_getgid, SYS_getgroups, SYS_getitimer, SYS_getpeername, SYS_getpgid,
        SYS_getpgrp, SYS_getpid, SYS_getppid, SYS_getpriority, SYS_getrandom, SYS_getresgid,
        SYS_getresuid, SYS_getrlimit, SYS_get_robust_list, SYS_getrusage, SYS_getsid,
        SYS_getsockname, SYS_getsockopt, SYS_get_thread_area, SYS_gettid, SYS_gettimeofday,
        SYS_getuid, SYS_getxattr, SYS_inotify_add_watch, SYS_inotify_init,
        SYS_inotify_init1, SYS_inotify_rm_watch, SYS_io_cancel, SYS_ioctl, SYS_io_destroy,
        SYS_io_getevents, SYS_ioprio_get, SYS_ioprio_set, SYS_io_setup,
        SYS_io_submit, SYS_io_uring_enter, SYS_io_uring_register, SYS_io_uring_setup,
        SYS_kill, SYS_landlock_add_rule, SYS_landlock_create_ruleset,
        SYS_landlock_restrict_self, SYS_lchown, SYS_lgetxattr, SYS_link, SYS_linkat,
        SYS_listen, SYS_listxattr, SYS_llistxattr, SYS_lremovexattr, SYS_lseek,
        SYS_lsetxattr, SYS_lstat, SYS_madvise, SYS_membarrier, SYS_memfd_create,
        SYS_memfd_secret, SYS_mincore, SYS_mkdir, SYS_mkdirat, SYS_mknod, SYS_mknodat,
        SYS_mlock, SYS_mlock2, SYS_mlockall, SYS_mmap, SYS_mprotect, SYS_mq_getsetattr,
        SYS_mq_notify, SYS_mq_open, SYS_mq_timedreceive, SYS_mq_timedsend, SYS_mq_unlink,
        SYS_mremap, SYS_msgctl, SYS_msgget, SYS_msgrcv, SYS_msgsnd, SYS_msync, SYS_munlock,
        SYS_munlockall, SYS_munmap, SYS_name_to_handle_at, SYS_nanosleep, SYS_newfstatat,
        SYS_open, SYS_openat, SYS_openat2, SYS_pause, SYS_pidfd_open, SYS_pidfd_send_signal,
        SYS_pipe, SYS_pipe2, SYS_pkey_alloc, SYS_pkey_free, SYS_pkey_mprotect, SYS_poll,
        SYS_ppoll, SYS_prctl, SYS_pread64, SYS_preadv, SYS_preadv2, SYS_prlimit64,
        SYS_process_mrelease, SYS_pselect6, SYS_pwrite64, SYS_pwritev, SYS_pwritev2,
        SYS_read, SYS_readahead, SYS_readlink, SYS_readlinkat, SYS_readv, SYS_recvfrom,
        SYS_recvmmsg, SYS_recvmsg, SYS_remap_file_pages, SYS_removexattr, SYS_rename,
        SYS_renameat, SYS_renameat2, SYS_restart_syscall, SYS_rmdir, SYS_rseq,
        SYS_rt_sigaction, SYS_rt_sigpending, SYS_rt_sigprocmask, SYS_rt_sigqueueinfo,
        SYS_rt_sigreturn, SYS_rt_sigsuspend, SYS_rt_sigtimedwait, SYS_rt_tgsigqueueinfo,
        SYS_sched_getaffinity, SYS_sched_getattr, SYS_sched_getparam,
        SYS_sched_get_priority_max, SYS_sched_get_priority_min, SYS_sched_getscheduler,
        SYS_sched_rr_get_interval, SYS_sched_setaffinity, SYS_sched_setattr,
        SYS_sched_setparam, SYS_sched_setscheduler, SYS_sched_yield, SYS_seccomp,
        SYS_select, SYS_semctl, SYS_semget, SYS_semop, SYS_semtimedop, SYS_sendfile,
        SYS_sendmmsg, SYS_sendmsg, SYS_sendto, SYS_setfsgid, SYS_setfsuid, SYS_setgid,
        SYS_setgroups, SYS_setitimer, SYS_setpgid, SYS_setpriority, SYS_setregid,
        SYS_setresgid, SYS_setresuid, SYS_setreuid, SYS_setrlimit, SYS_set_robust_list,
        SYS_setsid, SYS_setsockopt, SYS_set_thread_area, SYS_set_tid_address, SYS_setuid,
        SYS_setxattr, SYS_shmat, SYS_shmctl, SYS_shmdt, SYS_shmget, SYS_shutdown,
        SYS_sigaltstack, SYS_signalfd, SYS_signalfd4, SYS_socketpair, SYS_splice, SYS_stat,
        SYS_statfs, SYS_statx, SYS_symlink, SYS_symlinkat, SYS_sync, SYS_sync_file_range,
        SYS_syncfs, SYS_sysinfo, SYS_tee, SYS_tgkill, SYS_time, SYS_timer_create,
        SYS_timer_delete, SYS_timer_getoverrun, SYS_timer_gettime, SYS_timer_settime,
        SYS_timerfd_create, SYS_timerfd_gettime, SYS_timerfd_settime, SYS_times, SYS_tkill,
        SYS_truncate, SYS_umask, SYS_uname, SYS_unlink, SYS_unlinkat, SYS_utime,
        SYS_utimensat, SYS_utimes, SYS_vfork, SYS_vmsplice, SYS_wait4, SYS_waitid,
        SYS_write, SYS_writev,
        // Allowed from kernel 4.8 on (older kernels let ptrace bypass seccomp).
        SYS_process_vm_readv, SYS_process_vm_writev, SYS_ptrace,
        // x86 only.
        SYS_arch_prctl, SYS_modify_ldt,
        // CAP_SYS_CHROOT is in the default set.
        SYS_chroot,
    ]
};

/// Allowed system calls that libc has no constant for.
#[cfg(target_arch = "x86_64")]
const ALLOWED_UNNAMED: &[(&str, i64, When)] = &[("io_pgetevents", 333, When::Always)];

/// The conditional rules (see [`When`]).
#[cfg(target_arch = "x86_64")]
const CONDITIONAL: &[(&str, i64, When)] = &[
    ("socket", libc::SYS_socket, When::Arg0Ne(AF_VSOCK)),
    (
        "personality",
        libc::SYS_personality,
        When::Arg0In(PERSONALITIES),
    ),
    (
        "clone",
        libc::SYS_clone,
        When::Arg0Without(CLONE_NAMESPACE_FLAGS),
    ),
];

/// `clone3` cannot be checked for namespace flags (they sit in memory), so
/// it fails with ENOSYS and libc falls back to `clone`.
#[cfg(target_arch = "x86_64")]
const ENOSYS: &[(&str, i64)] = &[("clone3", libc::SYS_clone3)];

/// A system call's name without libc's `SYS_` prefix.
fn name(constant: &str) -> &str {
    constant.strip_prefix("SYS_").unwrap_or(constant)
}

/// Every rule, allowed then conditional.
#[cfg(target_arch = "x86_64")]
fn rules() -> impl Iterator<Item = &'static (&'static str, i64, When)> {
    ALLOWED.iter().chain(ALLOWED_UNNAMED).chain(CONDITIONAL)
}

/// What the filter answers for one system call number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    /// Not listed: `EPERM`.
    Refuse,
    /// Allowed, or allowed when its first argument passes (see [`When`]).
    Allow(When),
    /// `ENOSYS` (see [`ENOSYS`]).
    Enosys,
}

/// `AUDIT_ARCH_X86_64` (linux/audit.h): the `arch` a native call reports.
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;

/// The x32 ABI's bit in the system call number.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// Offsets into `struct seccomp_data`: nr, arch, then the arguments.
const NR: u32 = 0;
const ARCH: u32 = 4;
const ARG0_LOW: u32 = 16;
const ARG0_HIGH: u32 = 20;

const RET_ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
const RET_EPERM: u32 = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;
const RET_ENOSYS: u32 = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;
const RET_KILL: u32 = libc::SECCOMP_RET_KILL_PROCESS;

fn insn(code: u32, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    }
}

fn load(offset: u32) -> libc::sock_filter {
    insn(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, offset, 0, 0)
}

fn ret(action: u32) -> libc::sock_filter {
    insn(libc::BPF_RET | libc::BPF_K, action, 0, 0)
}

/// A conditional jump on the accumulator: `jt`/`jf` instructions ahead.
fn jump(op: u32, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    insn(libc::BPF_JMP | op | libc::BPF_K, k, jt, jf)
}

/// The profile as one classic BPF program: the architecture check, then a
/// binary search over ranges of system call numbers with one answer each.
/// A system call costs about twenty instructions, where a list of
/// comparisons costs hundreds, and the kernel's per-number action cache is
/// computed from the program at install time in a fraction of the time.
#[cfg(target_arch = "x86_64")]
fn compile() -> Vec<libc::sock_filter> {
    let mut actions: std::collections::BTreeMap<u32, Action> = rules()
        .map(|(_, nr, when)| (*nr as u32, Action::Allow(*when)))
        .collect();
    actions.extend(ENOSYS.iter().map(|(_, nr)| (*nr as u32, Action::Enosys)));
    // Ranges [start, next start) of equal answers, from 0 on; a condition
    // is a range of its own.
    let end = actions.keys().last().map_or(0, |nr| nr + 1);
    let mut ranges: Vec<(u32, Action)> = Vec::new();
    for nr in 0..=end {
        let action = actions.get(&nr).copied().unwrap_or(Action::Refuse);
        let conditional = matches!(action, Action::Allow(w) if w != When::Always);
        if conditional || ranges.last().is_none_or(|(_, last)| *last != action) {
            ranges.push((nr, action));
        }
    }
    let mut program = vec![
        load(ARCH),
        jump(libc::BPF_JEQ, AUDIT_ARCH_X86_64, 1, 0),
        ret(RET_KILL),
        load(NR),
        jump(libc::BPF_JGE, X32_SYSCALL_BIT, 0, 1),
        ret(RET_KILL),
    ];
    search(&ranges, &mut program);
    program
}

/// Appends the decision for `ranges` (the number is in the accumulator):
/// `nr >= middle start` jumps over the lower half's code.
fn search(ranges: &[(u32, Action)], program: &mut Vec<libc::sock_filter>) {
    if let [(_, action)] = ranges {
        answer(*action, program);
        return;
    }
    let (lower, upper) = ranges.split_at(ranges.len() / 2);
    program.push(jump(libc::BPF_JGE, upper[0].0, 0, 1));
    let ja = program.len();
    program.push(insn(libc::BPF_JMP | libc::BPF_JA, 0, 0, 0));
    search(lower, program);
    program[ja].k = (program.len() - ja - 1) as u32;
    search(upper, program);
}

/// Appends the answer for one range; conditions look at the first argument
/// (both halves: the profile compares 64-bit values).
fn answer(action: Action, program: &mut Vec<libc::sock_filter>) {
    match action {
        Action::Refuse => program.push(ret(RET_EPERM)),
        Action::Enosys => program.push(ret(RET_ENOSYS)),
        Action::Allow(When::Always) => program.push(ret(RET_ALLOW)),
        Action::Allow(When::Arg0Ne(value)) => program.extend([
            load(ARG0_HIGH),
            jump(libc::BPF_JEQ, (value >> 32) as u32, 0, 3),
            load(ARG0_LOW),
            jump(libc::BPF_JEQ, value as u32, 0, 1),
            ret(RET_EPERM),
            ret(RET_ALLOW),
        ]),
        Action::Allow(When::Arg0In(values)) => {
            assert!(values.len() < 250 && values.iter().all(|v| v >> 32 == 0));
            let n = values.len() as u8;
            program.extend([load(ARG0_HIGH), jump(libc::BPF_JEQ, 0, 0, n + 1)]);
            program.push(load(ARG0_LOW));
            for (i, v) in values.iter().enumerate() {
                program.push(jump(libc::BPF_JEQ, *v as u32, n - i as u8, 0));
            }
            program.extend([ret(RET_EPERM), ret(RET_ALLOW)]);
        }
        Action::Allow(When::Arg0Without(mask)) => {
            assert!(mask >> 32 == 0);
            program.extend([
                load(ARG0_LOW),
                jump(libc::BPF_JSET, mask as u32, 0, 1),
                ret(RET_EPERM),
                ret(RET_ALLOW),
            ]);
        }
    }
}

/// The compiled profile, made once per process.
#[cfg(target_arch = "x86_64")]
fn program() -> &'static [libc::sock_filter] {
    static PROGRAM: std::sync::OnceLock<Vec<libc::sock_filter>> = std::sync::OnceLock::new();
    PROGRAM.get_or_init(compile)
}

/// Compiles the profile now, so that [`install`] only applies it.
#[cfg(target_arch = "x86_64")]
pub fn prepare() {
    program();
}

/// Applies the profile to the calling thread; the caller has
/// CAP_SYS_ADMIN (or has set `no_new_privs`) and called [`prepare`]. Everything the thread runs after
/// this (the exec included) must be allowed by the profile. Makes one
/// system call and allocates nothing (safe in a child of a threaded process).
#[cfg(target_arch = "x86_64")]
pub fn install() -> Result<(), i32> {
    let filter = program();
    let fprog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr().cast_mut(),
    };
    // SAFETY: fprog points at a program that lives for the process.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0,
            &fprog as *const libc::sock_fprog,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    }
}

/// Other architectures run without a filter for now.
#[cfg(not(target_arch = "x86_64"))]
pub fn prepare() {}

/// Other architectures run without a filter for now.
#[cfg(not(target_arch = "x86_64"))]
pub fn install() -> Result<(), i32> {
    Ok(())
}

/// The profile as runc's `linux.seccomp` (OCI runtime spec), or `None` on
/// an architecture without a table.
pub fn oci_profile() -> Option<Value> {
    #[cfg(target_arch = "x86_64")]
    {
        let names: Vec<&str> = ALLOWED
            .iter()
            .chain(ALLOWED_UNNAMED)
            .map(|(n, ..)| name(n))
            .collect();
        let mut syscalls = vec![json!({"names": names, "action": "SCMP_ACT_ALLOW"})];
        let arg0 = |value: u64, op: &str| json!([{"index": 0, "value": value, "op": op}]);
        for (n, _, when) in CONDITIONAL {
            let args: Vec<Value> = match *when {
                When::Always => vec![json!([])],
                When::Arg0In(values) => values.iter().map(|v| arg0(*v, "SCMP_CMP_EQ")).collect(),
                When::Arg0Ne(v) => vec![arg0(v, "SCMP_CMP_NE")],
                When::Arg0Without(mask) => vec![json!([{
                    "index": 0, "value": mask, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"
                }])],
            };
            for args in args {
                syscalls.push(json!({"names": [n], "action": "SCMP_ACT_ALLOW", "args": args}));
            }
        }
        for (n, _) in ENOSYS {
            syscalls.push(json!({
                "names": [n], "action": "SCMP_ACT_ERRNO", "errnoRet": libc::ENOSYS
            }));
        }
        Some(json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "defaultErrnoRet": libc::EPERM,
            "architectures": ["SCMP_ARCH_X86_64"],
            "syscalls": syscalls,
        }))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        None
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_numbers_match_names() {
        let mut seen = std::collections::HashSet::new();
        for (constant, nr, _) in rules() {
            assert!(seen.insert(name(constant)), "{constant} listed twice");
            assert!(*nr >= 0);
        }
        for refused in [
            "clone3", "unshare", "setns", "mount", "keyctl", "bpf", "reboot",
        ] {
            assert!(!seen.contains(refused), "{refused} must not be allowed");
        }
        assert_eq!(
            seen.len(),
            ALLOWED.len() + ALLOWED_UNNAMED.len() + CONDITIONAL.len()
        );
    }

    /// Runs `program` on one system call as the kernel would (the
    /// instructions `compile` emits), returning the answer and the number
    /// of instructions run.
    fn evaluate(program: &[libc::sock_filter], arch: u32, nr: u32, arg0: u64) -> (u32, usize) {
        let field = |offset| match offset {
            NR => nr,
            ARCH => arch,
            ARG0_LOW => arg0 as u32,
            ARG0_HIGH => (arg0 >> 32) as u32,
            other => panic!("load of offset {other}"),
        };
        let (mut pc, mut acc, mut steps) = (0usize, 0u32, 0);
        loop {
            let insn = program[pc];
            steps += 1;
            let code = u32::from(insn.code);
            match code & 0x07 {
                libc::BPF_LD => acc = field(insn.k),
                libc::BPF_RET => return (insn.k, steps),
                libc::BPF_JMP => {
                    let taken = match code & 0xf0 {
                        libc::BPF_JA => {
                            pc += insn.k as usize + 1;
                            continue;
                        }
                        libc::BPF_JEQ => acc == insn.k,
                        libc::BPF_JGE => acc >= insn.k,
                        libc::BPF_JSET => acc & insn.k != 0,
                        op => panic!("jump op {op:#x}"),
                    };
                    pc += 1 + usize::from(if taken { insn.jt } else { insn.jf });
                    continue;
                }
                class => panic!("class {class:#x}"),
            }
            pc += 1;
        }
    }

    #[test]
    fn compiled_filter_answers_like_the_table() {
        let program = compile();
        let run = |nr: i64, arg0: u64| evaluate(&program, AUDIT_ARCH_X86_64, nr as u32, arg0).0;
        let mut longest = 0;
        for nr in 0..1024u32 {
            let (answer, steps) = evaluate(&program, AUDIT_ARCH_X86_64, nr, 0);
            longest = longest.max(steps);
            let expected = match rules().find(|(_, n, _)| *n as u32 == nr) {
                Some((_, _, When::Always)) => RET_ALLOW,
                Some(_) => continue,
                None if nr == libc::SYS_clone3 as u32 => RET_ENOSYS,
                None => RET_EPERM,
            };
            assert_eq!(answer, expected, "system call {nr}");
        }
        assert!(longest <= 32, "{longest} instructions for one call");
        assert!(program.len() < 400, "{} instructions", program.len());
        for refused in [libc::SYS_unshare, libc::SYS_mount, libc::SYS_setns, 1000] {
            assert_eq!(run(refused, 0), RET_EPERM, "{refused}");
        }
        // socket: every family but AF_VSOCK, compared on all 64 bits.
        assert_eq!(run(libc::SYS_socket, libc::AF_INET as u64), RET_ALLOW);
        assert_eq!(run(libc::SYS_socket, AF_VSOCK), RET_EPERM);
        assert_eq!(run(libc::SYS_socket, AF_VSOCK | 1 << 32), RET_ALLOW);
        for value in PERSONALITIES {
            assert_eq!(run(libc::SYS_personality, *value), RET_ALLOW, "{value:#x}");
        }
        for value in [0x1, 0x8 | 1 << 32, 0x0040_0000] {
            assert_eq!(run(libc::SYS_personality, value), RET_EPERM, "{value:#x}");
        }
        assert_eq!(run(libc::SYS_clone, libc::SIGCHLD as u64), RET_ALLOW);
        for flag in [libc::CLONE_NEWUSER, libc::CLONE_NEWNS, libc::CLONE_NEWNET] {
            let flags = (flag | libc::SIGCHLD) as u64;
            assert_eq!(run(libc::SYS_clone, flags), RET_EPERM, "{flag:#x}");
        }
        // Only the native ABI: i386 and x32 calls end the process.
        const AUDIT_ARCH_I386: u32 = 0x4000_0003;
        assert_eq!(evaluate(&program, AUDIT_ARCH_I386, 1, 0).0, RET_KILL);
        let x32_write = X32_SYSCALL_BIT | libc::SYS_write as u32;
        assert_eq!(
            evaluate(&program, AUDIT_ARCH_X86_64, x32_write, 0).0,
            RET_KILL
        );
    }

    #[test]
    fn oci_profile_lists_each_personality_as_its_own_rule() {
        let profile = oci_profile().unwrap();
        let rules = profile["syscalls"].as_array().unwrap();
        let personality = rules
            .iter()
            .filter(|r| r["names"][0] == "personality")
            .count();
        assert_eq!(personality, PERSONALITIES.len());
        assert!(rules[0]["names"].as_array().unwrap().len() > 250);
    }
}
