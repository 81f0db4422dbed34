//! Helpers shared by the build tests: a temporary directory, a context
//! made from a testdata Dockerfile with busybox, and the rbuild binary.

#![allow(dead_code)] // each test crate uses its own subset

use std::path::{Path, PathBuf};
use std::process::Command;

/// A directory removed on drop.
pub struct Tmp(pub PathBuf);

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn tmp(name: &str) -> Tmp {
    let p = std::env::temp_dir().join(format!("rbuild-build-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).unwrap();
    // Run as an ordinary user, rbuild writes its state and outputs here.
    if let Some(user) = test_user() {
        hand_to_user(&p, &user);
    }
    Tmp(p)
}

/// `RBUILD_TEST_USER`: the ordinary user the tests run rbuild as (the
/// rootless run of a test file: `.ci/run` runs build.rs so a second time;
/// the user is made with subordinate ids when missing).
pub fn test_user() -> Option<String> {
    static USER: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    USER.get_or_init(|| {
        let name = std::env::var("RBUILD_TEST_USER")
            .ok()
            .filter(|u| !u.is_empty())?;
        users::user(&name, true);
        Some(name)
    })
    .clone()
}

pub fn is_root() -> bool {
    // SAFETY: no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A context with busybox and the testdata Dockerfile of `case`.
pub fn context(t: &Tmp, case: &str) -> PathBuf {
    let ctx = t.0.join("context");
    std::fs::create_dir_all(ctx.join("data")).unwrap();
    std::fs::copy("/bin/busybox", ctx.join("busybox"))
        .expect("busybox-static is installed (.ci/run)");
    std::fs::write(ctx.join("data/file.txt"), "payload\n").unwrap();
    std::fs::write(ctx.join("data/secret.key"), "never copied\n").unwrap();
    std::fs::write(ctx.join(".dockerignore"), "data/*.key\n").unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata/build")
        .join(case)
        .join("Dockerfile");
    std::fs::copy(src, ctx.join("Dockerfile")).unwrap();
    ctx
}

pub fn rbuild(root: &Path, args: &[&str]) -> std::process::Output {
    rbuild_env(root, args, &[])
}

/// `rbuild --root ROOT ARGS...` on a pseudo-terminal (`script`), as on a
/// user's terminal; what it drew, after checking it succeeded.
pub fn on_terminal(root: &Path, args: &str) -> String {
    let cmd = format!(
        "{} --root {} {args}",
        env!("CARGO_BIN_EXE_rbuild"),
        root.display()
    );
    let out = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .output()
        .expect("script (bsdutils) is installed");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}");
    text
}

/// `rbuild --root ROOT ARGS...` with extra environment variables.
pub fn rbuild_env(root: &Path, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    rbuild_command(root)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

/// `rbuild --root ROOT`, to add arguments to: as `RBUILD_TEST_USER` when
/// set (through runuser, with the user's home, and the test's directory
/// handed to the user first: what it made there is the user's to read).
pub fn rbuild_command(root: &Path) -> Command {
    let mut cmd = match test_user() {
        Some(user) => {
            hand_to_user(root, &user);
            let mut c = Command::new("runuser");
            c.args(["-u", &user, "--", "env", &format!("HOME=/home/{user}")])
                .arg(env!("CARGO_BIN_EXE_rbuild"));
            c
        }
        None => Command::new(env!("CARGO_BIN_EXE_rbuild")),
    };
    cmd.arg("--root").arg(root);
    cmd
}

/// `program`, run as `RBUILD_TEST_USER` when set (a helper rbuild must
/// be able to talk to, as an ssh-agent that only answers its own user).
pub fn as_test_user(program: &str) -> Command {
    match test_user() {
        Some(user) => {
            let mut c = Command::new("runuser");
            c.args(["-u", &user, "--", program]);
            c
        }
        None => Command::new(program),
    }
}

/// The test directory `path` is in (from [`tmp`]) and its directories
/// and unreadable files owned by `user` (modes kept: a chown clears
/// set-id bits).
fn hand_to_user(path: &Path, user: &str) {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    fn walk(p: &Path, (uid, gid): (u32, u32)) {
        let Ok(meta) = std::fs::symlink_metadata(p) else {
            return;
        };
        // A state root's files keep their owners (subordinate ids).
        if p.join("index.db").exists() {
            return;
        }
        // Directories (rbuild writes in them) and what others can't read
        // are the user's; other files stay as they are (a chown is a
        // change of ctime, which the stat cache sees).
        let hidden = !meta.is_dir() && !meta.file_type().is_symlink() && meta.mode() & 0o004 == 0;
        if (meta.is_dir() || hidden) && (meta.uid(), meta.gid()) != (uid, gid) {
            std::os::unix::fs::lchown(p, Some(uid), Some(gid)).unwrap();
            if !meta.file_type().is_symlink() && meta.mode() & 0o7000 != 0 {
                let mode = std::fs::Permissions::from_mode(meta.mode() & 0o7777);
                std::fs::set_permissions(p, mode).unwrap();
            }
        }
        if meta.is_dir() {
            for e in std::fs::read_dir(p).unwrap().flatten() {
                walk(&e.path(), (uid, gid));
            }
        }
    }
    let base = std::env::temp_dir();
    let Some(first) = path.strip_prefix(&base).ok().and_then(|r| r.iter().next()) else {
        return;
    };
    let id = |flag: &str| -> u32 {
        let o = Command::new("id").args([flag, user]).output().unwrap();
        String::from_utf8_lossy(&o.stdout).trim().parse().unwrap()
    };
    walk(&base.join(first), (id("-u"), id("-g")));
}

/// The uid exported files get: the test user's when the tests run rbuild
/// as one (a local export is the user's), else `None` (the image's).
pub fn export_owner() -> Option<u32> {
    let user = test_user()?;
    let o = Command::new("id").args(["-u", &user]).output().unwrap();
    String::from_utf8_lossy(&o.stdout).trim().parse().ok()
}

/// `rbuild build -q -o type=local,dest=OUT CONTEXT` on state root `root`;
/// it must succeed.
pub fn build_local(root: &Path, ctx: &Path, out: &Path) {
    let o = rbuild(
        root,
        &[
            "build",
            "-q",
            "-o",
            &format!("type=local,dest={}", out.display()),
            ctx.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}
pub mod fault_proxy;
pub mod http_server;
pub mod registry;
pub mod token_server;

/// `rbuild build --progress=plain -o type=local,dest=OUT CONTEXT` on state
/// root `root`, whatever its outcome.
pub fn build_into(root: &Path, ctx: &Path, out: &Path) -> std::process::Output {
    rbuild(
        root,
        &[
            "build",
            "--progress=plain",
            "-o",
            &format!("type=local,dest={}", out.display()),
            ctx.to_str().unwrap(),
        ],
    )
}
pub mod git_http;
pub mod sshd;
pub mod users;

/// The output of `child`, or a panic saying `hang` once `secs` seconds
/// pass (the child is killed): for builds that must end whatever their
/// input, so a regression fails the test instead of hanging the suite.
pub fn output_within(
    mut child: std::process::Child,
    secs: u64,
    hang: &str,
) -> std::process::Output {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("{hang}");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}
