//! Every kind of Dockerfile error says where: `testdata/errors/<case>/`
//! holds a Dockerfile (and optional extra `args`), and `stderr.txt` is what
//! `rbuild build -q` prints, exit status 1: the message, its causes, and the
//! Dockerfile lines around the fault with the failing ones marked.
//! `RBUILD_BLESS=1` rewrites the golden files.

mod common;

use std::path::Path;
use std::process::Command;

use common::{is_root, tmp};

#[test]
fn errors_point_at_the_dockerfile_line() {
    if !is_root() {
        eprintln!("skipped: building needs root");
        return;
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/errors");
    let t = tmp("errors");
    let mut failures = Vec::new();
    let mut cases: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    cases.sort();
    for case in cases {
        let name = case.file_name().unwrap().to_str().unwrap().to_string();
        let ctx = t.0.join(&name);
        std::fs::create_dir_all(&ctx).unwrap();
        std::fs::copy(case.join("Dockerfile"), ctx.join("Dockerfile")).unwrap();
        std::fs::copy("/bin/busybox", ctx.join("busybox")).unwrap();
        std::fs::write(ctx.join("a"), "a\n").unwrap();
        std::fs::write(ctx.join("b"), "b\n").unwrap();
        let args = std::fs::read_to_string(case.join("args")).unwrap_or_default();
        let out = Command::new(env!("CARGO_BIN_EXE_rbuild"))
            .arg("--root")
            .arg(t.0.join("root"))
            .args(["build", "-q", "-f", "Dockerfile"])
            .args(args.split_whitespace())
            .arg(".")
            .current_dir(&ctx)
            .output()
            .unwrap();
        let got = String::from_utf8_lossy(&out.stderr).into_owned();
        if out.status.code() != Some(1) {
            failures.push(format!("{name}: exit {:?}\n{got}", out.status));
        }
        let golden = case.join("stderr.txt");
        if std::env::var_os("RBUILD_BLESS").is_some() {
            std::fs::write(&golden, &got).unwrap();
        }
        let want = std::fs::read_to_string(&golden).unwrap_or_default();
        if want != got {
            failures.push(format!("{name}:\n--- want\n{want}--- got\n{got}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
