//! Running as an ordinary user: rbuild starts itself again inside a user
//! namespace of its own (and a mount namespace), where the user's uid is 0
//! and the user's subordinate ids (`/etc/subuid`, `/etc/subgid`, mapped
//! with `newuidmap`/`newgidmap`) are 1 and up, so files owned by other
//! users in images keep their owners. Without subordinate ids only the
//! user's own id is mapped (a warning says other owners become root's).
//! The state stays the user's (`$XDG_DATA_HOME/rbuild`).

use std::ffi::{CString, OsString};
use std::os::unix::ffi::OsStrExt as _;
use std::path::PathBuf;

use anyhow::{Context, bail};

/// Set in the namespace's rbuild: the state root the user's rbuild chose.
pub const STATE_ROOT_ENV: &str = "RBUILD_ROOTLESS_STATE";

/// Whether this process is the rbuild started inside the namespace.
pub fn inside() -> bool {
    std::env::var_os(STATE_ROOT_ENV).is_some()
}

/// A range of subordinate ids: first id, how many.
type Range = (u32, u32);

/// Runs this rbuild again inside a user and mount namespace when started
/// by an ordinary user (and not yet inside one); returns its exit code
/// then. None: go on in this process (root, or already inside).
///
/// Must run before any thread starts: it forks.
pub fn reexec(args: &[OsString], state_root: PathBuf) -> anyhow::Result<Option<i32>> {
    // SAFETY: no preconditions.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    if uid == 0 || inside() {
        return Ok(None);
    }
    let user = crate::sandbox::user::name_of(std::path::Path::new("/"), uid)
        .unwrap_or_else(|| uid.to_string());
    let subuid = subordinate("/etc/subuid", &user, uid);
    let subgid = subordinate("/etc/subgid", &user, uid);
    let on_path = |p: &str| crate::sandbox::find_program(p).is_some();
    let mapped =
        subuid.is_some() && subgid.is_some() && on_path("newuidmap") && on_path("newgidmap");
    if !mapped {
        eprintln!(
            "WARNING: no subordinate ids for {user} in /etc/subuid and /etc/subgid (or no newuidmap): \
             files of other owners in images become root's"
        );
    }
    let exe = CString::new("/proc/self/exe").expect("no NUL");
    let argv: Vec<CString> = args
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect::<Result<_, _>>()
        .context("an argument holds a NUL byte")?;
    // SAFETY: the environment is changed before the fork, with no other
    // thread running (the caller's contract).
    unsafe { std::env::set_var(STATE_ROOT_ENV, &state_root) };
    let (to_child, from_parent) = pipe()?;
    let (to_parent, from_child) = pipe()?;
    // SAFETY: single-threaded here; the child only makes system calls and
    // execs.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        bail!("fork: {}", std::io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: the parent's ends are not the child's.
        unsafe {
            libc::close(to_child);
            libc::close(from_child);
        }
        child(&exe, &argv, from_parent, to_parent);
    }
    // SAFETY: closing our copies of the child's ends.
    unsafe {
        libc::close(from_parent);
        libc::close(to_parent);
    }
    let ready = read_byte(from_child);
    let maps = if !ready {
        Err(anyhow::anyhow!(
            "the namespace could not be made (user namespaces disabled?)"
        ))
    } else if mapped {
        map_with_helpers(pid, (uid, gid), subuid.unwrap(), subgid.unwrap())
    } else {
        map_single(pid, uid, gid)
    };
    let go: u8 = if maps.is_ok() { 1 } else { 0 };
    // SAFETY: a valid fd and one byte.
    unsafe {
        libc::write(to_child, [go].as_ptr().cast(), 1);
        libc::close(to_child);
    }
    // Ctrl-C reaches the child too (one process group): it cleans up and
    // ends; this process only waits for it.
    // SAFETY: ignoring two signals for the parent alone.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGTERM, libc::SIG_IGN);
    }
    let mut status = 0;
    // SAFETY: waiting for our child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    maps?;
    Ok(Some(if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    }))
}

/// The child: a new user namespace, told to the parent; once mapped, root
/// in it, a private mount namespace, then rbuild again. Never returns.
fn child(exe: &CString, argv: &[CString], from_parent: i32, to_parent: i32) -> ! {
    // SAFETY: system calls only; the vectors were made before the fork.
    unsafe {
        let ok = libc::unshare(libc::CLONE_NEWUSER) == 0;
        libc::write(to_parent, [u8::from(ok)].as_ptr().cast(), 1);
        if !ok || !read_byte(from_parent) {
            libc::_exit(1);
        }
        if libc::setresgid(0, 0, 0) != 0
            || libc::setresuid(0, 0, 0) != 0
            || libc::unshare(libc::CLONE_NEWNS) != 0
        {
            libc::_exit(1);
        }
        // Mounts made in here stay in here.
        let root = c"/";
        libc::mount(
            std::ptr::null(),
            root.as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        );
        let mut ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
        ptrs.push(std::ptr::null());
        libc::execv(exe.as_ptr(), ptrs.as_ptr());
        libc::_exit(127);
    }
}

/// uid 0 = the user, 1.. = the subordinate range (and the same for gids),
/// through the setuid helpers of Debian's `uidmap`.
fn map_with_helpers(
    pid: i32,
    (uid, gid): (u32, u32),
    subuid: Range,
    subgid: Range,
) -> anyhow::Result<()> {
    for (helper, own, (first, count)) in [("newuidmap", uid, subuid), ("newgidmap", gid, subgid)] {
        let status = std::process::Command::new(helper)
            .arg(pid.to_string())
            .args(["0", &own.to_string(), "1"])
            .args(["1", &first.to_string(), &count.to_string()])
            .status()
            .with_context(|| format!("running {helper}"))?;
        if !status.success() {
            bail!("{helper} failed ({status}): check /etc/subuid and /etc/subgid");
        }
    }
    Ok(())
}

/// Only the user's own ids: uid and gid 0 in the namespace.
fn map_single(pid: i32, uid: u32, gid: u32) -> anyhow::Result<()> {
    let proc = PathBuf::from(format!("/proc/{pid}"));
    std::fs::write(proc.join("uid_map"), format!("0 {uid} 1\n")).context("writing uid_map")?;
    std::fs::write(proc.join("setgroups"), "deny").context("writing setgroups")?;
    std::fs::write(proc.join("gid_map"), format!("0 {gid} 1\n")).context("writing gid_map")?;
    Ok(())
}

/// The first range `/etc/subuid`-style `file` gives `user` (by name or uid).
fn subordinate(file: &str, user: &str, uid: u32) -> Option<Range> {
    let text = std::fs::read_to_string(file).ok()?;
    text.lines().find_map(|l| {
        let mut f = l.split(':');
        let (who, first, count) = (f.next()?, f.next()?, f.next()?);
        if who != user && who != uid.to_string() {
            return None;
        }
        Some((first.trim().parse().ok()?, count.trim().parse().ok()?))
    })
}

fn pipe() -> anyhow::Result<(i32, i32)> {
    let mut fds = [0; 2];
    // SAFETY: a two-int array for the call.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        bail!("pipe: {}", std::io::Error::last_os_error());
    }
    Ok((fds[1], fds[0]))
}

/// One byte from `fd`: whether it said yes.
fn read_byte(fd: i32) -> bool {
    let mut b = [0u8; 1];
    // SAFETY: a one-byte buffer.
    let n = unsafe { libc::read(fd, b.as_mut_ptr().cast(), 1) };
    n == 1 && b[0] == 1
}
