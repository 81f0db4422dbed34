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
//! see [`walk`]) and mounted onto through `/proc/self/fd`, as runc does: no
//! symlink in the image leads a mount outside it. Setup errors travel back
//! on a close-on-exec pipe (errno and the plan's description of the step),
//! so a command's own exit status (even 125 or 127) is never mistaken for
//! one. (A re-executed helper process did this before: its exec, dynamic
//! loading and exit were 2-3 ms of every RUN.)

use std::fs;
use std::io::{self, Read};
use std::os::fd::AsRawFd;

mod child;
mod plan;
mod walk;

use super::cgroup::StepCgroup;
use super::{
    Cancel, EtcFiles, Network, Prepared, RunSpec, Runtime, SandboxError, Stream, exit_code,
    stream_output, wait,
};
use child::child_entry;
use plan::Plan;

/// The default runtime.
#[derive(Debug, Clone, Default)]
pub struct Embedded {
    etc: std::sync::Arc<EtcFiles>,
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
        let cgroup = StepCgroup::new(spec.cgroup_parent.as_deref()).map_err(SandboxError::Setup)?;
        let plan = Plan::new(
            spec,
            &prepared,
            cgroup.as_ref(),
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
        drop((prepared, cgroup));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_render() {
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
}
