//! Docker's default seccomp profile, as it applies to a build step with
//! Docker's default capabilities on x86_64 (the profile's rules that
//! depend on capabilities outside that set, or on other architectures, fall
//! away; those for `CAP_SYS_CHROOT`, which the set has, stay).
//!
//! One table serves both runtimes: [`install`] compiles it to BPF for the
//! embedded runtime (with `seccompiler`), [`oci_profile`] writes it as the
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

/// Compiles the profile and applies it to the calling thread; the caller
/// has set `no_new_privs`. Everything the thread runs after this (the exec
/// included) must be allowed by the profile.
#[cfg(target_arch = "x86_64")]
pub fn install() -> Result<(), String> {
    use std::collections::BTreeMap;

    use seccompiler::{
        BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
        SeccompRule, TargetArch,
    };

    let cond = |op, value| {
        SeccompCondition::new(0, SeccompCmpArgLen::Qword, op, value)
            .and_then(|c| SeccompRule::new(vec![c]))
            .map_err(|e| e.to_string())
    };
    let mut allowed: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for (_, nr, when) in rules() {
        let rules = match *when {
            When::Always => Vec::new(),
            When::Arg0In(values) => values
                .iter()
                .map(|v| cond(SeccompCmpOp::Eq, *v))
                .collect::<Result<_, _>>()?,
            When::Arg0Ne(v) => vec![cond(SeccompCmpOp::Ne, v)?],
            When::Arg0Without(mask) => vec![cond(SeccompCmpOp::MaskedEq(mask), 0)?],
        };
        allowed.insert(*nr, rules);
    }
    let enosys: BTreeMap<i64, Vec<SeccompRule>> =
        ENOSYS.iter().map(|(_, nr)| (*nr, Vec::new())).collect();
    let compile = |rules, mismatch, matched| -> Result<BpfProgram, String> {
        SeccompFilter::new(rules, mismatch, matched, TargetArch::x86_64)
            .and_then(BpfProgram::try_from)
            .map_err(|e| e.to_string())
    };
    let main = compile(
        allowed,
        SeccompAction::Errno(libc::EPERM as u32),
        SeccompAction::Allow,
    )?;
    // Both filters answer clone3 with an errno; the kernel then takes the
    // last installed one's, so ENOSYS goes second.
    let clone3 = compile(
        enosys,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
    )?;
    for program in [main, clone3] {
        seccompiler::apply_filter(&program).map_err(|e| format!("installing seccomp: {e}"))?;
    }
    Ok(())
}

/// Other architectures run without a filter for now.
#[cfg(not(target_arch = "x86_64"))]
pub fn install() -> Result<(), String> {
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
