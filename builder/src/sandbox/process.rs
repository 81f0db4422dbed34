//! A step's processes seen from outside: the cancel flag a failed sibling
//! step sets, streaming their output, waiting for the first one, its exit
//! code.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use super::Stream;

/// Asks running commands to stop: set once (when a sibling step fails),
/// seen by every run that shares it. Cloning shares the flag; a child
/// ([`Cancel::child`]) also sees its parent's.
#[derive(Debug, Clone, Default)]
pub struct Cancel {
    own: std::sync::Arc<std::sync::atomic::AtomicBool>,
    parent: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

impl Cancel {
    /// A flag of its own that is also set when `parent` is (one try of a
    /// build under the whole run's flag).
    pub fn child(parent: &Cancel) -> Cancel {
        Cancel {
            own: Default::default(),
            parent: Some(parent.own.clone()),
        }
    }

    /// Stops every run that watches this flag (not its parent's).
    pub fn cancel(&self) {
        self.own.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Whether [`Cancel::cancel`] was called on it or its parent.
    pub fn is_cancelled(&self) -> bool {
        self.own.load(std::sync::atomic::Ordering::SeqCst)
            || self
                .parent
                .as_ref()
                .is_some_and(|p| p.load(std::sync::atomic::Ordering::SeqCst))
    }
}

/// Streams a child's stdout and stderr (read ends of pipes) to `output`
/// as chunks arrive until both close, and calls `kill` once if `cancel` is
/// set meanwhile. Runs on the calling thread (poll(2), no reader threads).
pub(crate) fn stream_output(
    pipes: [Option<OwnedFd>; 2],
    cancel: &Cancel,
    output: &mut dyn FnMut(Stream, &[u8]),
    mut kill: impl FnMut(),
) -> io::Result<()> {
    let streams = [Stream::Stdout, Stream::Stderr];
    let mut pipes = pipes;
    let mut buf = vec![0u8; 64 * 1024];
    let mut killed = false;
    while pipes.iter().any(Option::is_some) {
        // A closed stream is a negative fd, which poll skips.
        let mut fds = pipes.each_ref().map(|p| libc::pollfd {
            fd: p.as_ref().map_or(-1, |p| p.as_raw_fd()),
            events: libc::POLLIN,
            revents: 0,
        });
        // SAFETY: poll on our own array of two pollfds.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), 2, 50) };
        if ready < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        for (i, fd) in fds.iter().enumerate() {
            if fd.revents == 0 {
                continue;
            }
            // SAFETY: read into our buffer from our own open fd.
            let n = unsafe { libc::read(fd.fd, buf.as_mut_ptr().cast(), buf.len()) };
            if n > 0 {
                output(streams[i], &buf[..n as usize]);
            } else if n == 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                pipes[i] = None;
            }
        }
        if !killed && cancel.is_cancelled() {
            kill();
            killed = true;
        }
    }
    Ok(())
}

/// Waits for `pid` to end, calling `kill` if `cancel` is set meanwhile.
pub(crate) fn wait(
    pid: libc::pid_t,
    cancel: &Cancel,
    mut kill: impl FnMut(),
) -> io::Result<ExitStatus> {
    // A pidfd turns readable when the child ends: poll it, looking at
    // `cancel` between polls. Without one (Linux < 5.3), wait blocking.
    // SAFETY: pidfd_open on our own child; the fd is closed below.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as libc::c_int;
    if pidfd >= 0 {
        let mut killed = false;
        loop {
            let mut fd = libc::pollfd {
                fd: pidfd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: poll on one pollfd of ours.
            let ready = unsafe { libc::poll(&mut fd, 1, 50) };
            if ready > 0
                || (ready < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted)
            {
                break;
            }
            if !killed && cancel.is_cancelled() {
                kill();
                killed = true;
            }
        }
        // SAFETY: our own fd.
        unsafe {
            libc::close(pidfd);
        }
    }
    loop {
        let mut status = 0;
        // SAFETY: waitpid on our own child with a valid status pointer.
        if unsafe { libc::waitpid(pid, &mut status, 0) } == pid {
            return Ok(ExitStatus::from_raw(status));
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// A command's exit code, 128+signal when a signal ended it.
pub(crate) fn exit_code(status: ExitStatus) -> i32 {
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}
