//! How the child opens paths below the root: one component at a time,
//! resolved by the kernel inside the root (`RESOLVE_IN_ROOT`) or, before
//! Linux 5.6, with `O_NOFOLLOW` from the directory before; made where
//! missing. Async-signal-safe: system calls and the stack only.

use std::ffi::CStr;
use std::sync::OnceLock;

use libc::{c_char, c_int};

use super::plan::Target;

pub(super) fn errno() -> c_int {
    // SAFETY: errno is the calling thread's.
    unsafe { *libc::__errno_location() }
}

/// `/proc/self/fd/N` for `fd`, in `buf`.
pub(super) fn fd_path(fd: c_int, buf: &mut [u8; 32]) -> *const c_char {
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
pub(super) enum Walk {
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
    pub(super) fn here() -> Walk {
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
pub(super) struct Root {
    pub(super) fd: c_int,
    pub(super) walk: Walk,
}

/// openat2(2) of `path` below `root` with `RESOLVE_IN_ROOT`.
pub(super) unsafe fn open_in_root(root: c_int, path: &CStr, flags: c_int) -> c_int {
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
pub(super) unsafe fn open_target(root: Root, target: &Target, create: bool) -> c_int {
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

#[cfg(test)]
mod tests {
    use std::ffi::CString;
    use std::fs;
    use std::os::unix::ffi::OsStrExt;
    use std::path::{Path, PathBuf};

    use super::*;

    #[test]
    fn fd_paths_render() {
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
