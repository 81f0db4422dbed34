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
    Tmp(p)
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
    Command::new(env!("CARGO_BIN_EXE_rbuild"))
        .arg("--root")
        .arg(root)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap()
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
