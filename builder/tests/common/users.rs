//! TEST FIXTURE: ordinary users for the rootless tests: made with
//! `useradd`, with or without subordinate ids in /etc/subuid and
//! /etc/subgid, and rbuild run as them with `runuser`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// /etc/subuid and /etc/subgid are rewritten by one test at a time.
static SUBIDS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A user `name` (made when missing), with the subordinate ids
/// 400000-465535 unless `ranges` is false; its uid.
pub fn user(name: &str, ranges: bool) -> u32 {
    let _files = SUBIDS.lock().unwrap_or_else(|e| e.into_inner());
    let exists = Command::new("id")
        .arg(name)
        .output()
        .unwrap()
        .status
        .success();
    if !exists {
        let o = Command::new("useradd")
            .args(["-m", "-s", "/bin/sh", name])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    for file in ["/etc/subuid", "/etc/subgid"] {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        let mut lines: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with(&format!("{name}:")))
            .collect();
        let entry = format!("{name}:400000:65536");
        if ranges {
            lines.push(&entry);
        }
        std::fs::write(file, lines.join("\n") + "\n").unwrap();
    }
    let id = Command::new("id").args(["-u", name]).output().unwrap();
    String::from_utf8_lossy(&id.stdout).trim().parse().unwrap()
}

/// The rbuild binary copied into `dir`, and `dir` (with what is in it)
/// given to `uid`: what the user runs and writes.
pub fn hand_over(dir: &Path, uid: u32) -> PathBuf {
    let exe = dir.join("rbuild");
    std::fs::copy(env!("CARGO_BIN_EXE_rbuild"), &exe).unwrap();
    std::fs::create_dir_all(dir.join("home")).unwrap();
    let o = Command::new("chown")
        .args(["-R", &format!("{uid}:{uid}")])
        .arg(dir)
        .output()
        .unwrap();
    assert!(o.status.success());
    exe
}

/// `exe ARGS...` as user `name` with home `home` (its state under it),
/// SOURCE_DATE_EPOCH set.
pub fn as_user(name: &str, exe: &Path, home: &Path, args: &[&str]) -> Output {
    as_user_env(name, exe, home, args, &[])
}

/// [`as_user`] with more environment variables.
pub fn as_user_env(
    name: &str,
    exe: &Path,
    home: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> Output {
    Command::new("runuser")
        .args(["-u", name, "--", "env"])
        .arg(format!("HOME={}", home.display()))
        .arg("XDG_DATA_HOME=")
        .arg("SOURCE_DATE_EPOCH=1700000000")
        .args(env.iter().map(|(k, v)| format!("{k}={v}")))
        .arg(exe)
        .args(args)
        .output()
        .expect("runuser (util-linux) runs")
}
