//! Drives the real `rbuild` binary: the debug commands of ../shared/CLI.md,
//! their output formats and exit codes.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn rbuild(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rbuild"))
        .args(args)
        .output()
        .expect("run rbuild")
}

fn rbuild_stdin(args: &[&str], stdin: &str) -> Output {
    rbuild_stdin_in(Path::new("."), args, stdin)
}

/// `rbuild ARGS` run in `dir` with `stdin` as its input.
fn rbuild_stdin_in(dir: &Path, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_rbuild"))
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run rbuild");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

fn testdata(rel: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata")
        .join(rel)
        .display()
        .to_string()
}

#[test]
fn debug_parse_dump_matches_buildkit_corpus() {
    let case = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/conformance/parser/escape-with-syntax");
    let out = rbuild(&["debug", "parse", case.join("Dockerfile").to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        std::fs::read_to_string(case.join("result")).unwrap()
    );
}

#[test]
fn debug_parse_json() {
    let out = rbuild(&[
        "debug",
        "parse",
        "--format",
        "json",
        &testdata("parse/multistage/Dockerfile"),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let nodes: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let run = &nodes[8];
    assert_eq!(run["cmd"], "run");
    assert_eq!(run["flags"][0], "--mount=type=cache,target=/root/.cache");
    assert_eq!(
        (run["start_line"].as_u64(), run["end_line"].as_u64()),
        (Some(12), Some(13))
    );
    assert_eq!(run["json"], false);
    let hc = &nodes[13];
    assert_eq!(
        (hc["cmd"].as_str(), hc["sub_cmd"].as_str()),
        (Some("healthcheck"), Some("cmd"))
    );
    assert_eq!(hc["json"], true);
    assert_eq!(hc["value"][1], "wget");
}

#[test]
fn debug_parse_onbuild_json_uses_trigger() {
    let out = rbuild_stdin(
        &["debug", "parse", "--format", "json", "-"],
        "FROM a\nONBUILD COPY --from=b x y\n",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let nodes: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(nodes[1]["sub_cmd"], "copy");
    assert_eq!(nodes[1]["value"], serde_json::json!(["x", "y"]));
    assert_eq!(nodes[1]["original"], "ONBUILD COPY --from=b x y");
}

/// BuildKit's parseSubCommand gives an ONBUILD with nothing after it no
/// trigger node: its dump is `(onbuild)`; its JSON value is the empty rest
/// of the line, `[""]` (issue 12, point 6). An unknown trigger is
/// parseIgnore's empty node, `[""]` too.
#[test]
fn debug_parse_onbuild_without_a_trigger() {
    let text = "FROM a\nONBUILD\nONBUILD frob x\n";
    let out = rbuild_stdin(&["debug", "parse", "-"], text);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        "(from \"a\")\n(onbuild)\n(onbuild (frob \"\"))\n"
    );
    let out = rbuild_stdin(&["debug", "parse", "--format", "json", "-"], text);
    let nodes: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(
        (&nodes[1]["sub_cmd"], &nodes[1]["value"]),
        (&serde_json::json!(""), &serde_json::json!([""]))
    );
    assert_eq!(
        (&nodes[2]["sub_cmd"], &nodes[2]["value"]),
        (&serde_json::json!("frob"), &serde_json::json!([""]))
    );
}

#[test]
fn debug_parse_error_names_line_and_exits_1() {
    let out = rbuild_stdin(&["debug", "parse", "-"], "FROM a\nRUN <<EOF\nnever ends\n");
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.starts_with("error: Dockerfile:2:1: unterminated heredoc"),
        "{err}"
    );
    assert!(err.contains(" 2 | RUN <<EOF"), "{err}");
}

#[test]
fn debug_expand_word_and_words() {
    let out = rbuild(&[
        "debug",
        "expand",
        "--env",
        "V=1.2.3",
        "--",
        "${V%.*}-${ARCH:-amd64}",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out).trim(),
        r#"{"result":"1.2-amd64","matched":["V"],"unmatched":["ARCH"]}"#
    );
    let out = rbuild(&[
        "debug",
        "expand",
        "--words",
        "--env",
        "A=x  y",
        "--",
        "-a $A \"$A\"",
    ]);
    assert_eq!(
        stdout(&out).trim(),
        r#"{"words":["-a","x","y","x  y"],"matched":["A"],"unmatched":[]}"#
    );
    let out = rbuild(&["debug", "expand", "--escape", "`", "--", "a`$b"]);
    assert_eq!(
        stdout(&out).trim(),
        r#"{"result":"a$b","matched":[],"unmatched":[]}"#
    );
}

#[test]
fn debug_expand_error_exits_1() {
    let out = rbuild(&["debug", "expand", "--", "${X:?must be set}"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("X: must be set"), "{}", stderr(&out));
}

#[test]
fn debug_ignore_patterns_and_file() {
    let dir = std::env::temp_dir().join(format!("rbuild-ignore-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(".dockerignore");
    std::fs::write(&file, "\u{FEFF}# comment\n/docs\n*.tmp\n").unwrap();
    let out = rbuild(&[
        "debug",
        "ignore",
        "--file",
        file.to_str().unwrap(),
        "--pattern",
        "!docs/keep.md",
        "docs/a.md",
        "docs/keep.md",
        "x.tmp",
        "src/x.tmp",
        "src/main.rs",
    ]);
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        stdout(&out),
        // Not gitignore: `*.tmp` matches at the top only.
        "ignored\tdocs/a.md\nincluded\tdocs/keep.md\nignored\tx.tmp\nincluded\tsrc/x.tmp\nincluded\tsrc/main.rs\n"
    );
}

#[test]
fn debug_ignore_bad_pattern_exits_1() {
    let out = rbuild(&["debug", "ignore", "--pattern", "a[", "x"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).starts_with("error:"), "{}", stderr(&out));
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(
        rbuild(&["debug", "parse", "--format", "yaml", "x"])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(
        rbuild(&["debug", "expand", "--escape", "x", "w"])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(rbuild(&["--no-such-flag", "."]).status.code(), Some(2));
    // The short form: an unknown word is a build context that does not exist.
    assert_eq!(rbuild(&["no-such-context"]).status.code(), Some(1));
}

#[test]
fn graph_json_prunes_to_target() {
    let dir = std::env::temp_dir().join(format!("rbuild-graph-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("Dockerfile"),
        "FROM scratch AS a\nCOPY x /x\nFROM scratch AS b\nCOPY --from=a /x /y\nFROM scratch AS unused\nRUN never\n",
    )
    .unwrap();
    let out = rbuild(&[
        "graph",
        "--format",
        "json",
        "--target",
        "b",
        dir.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let graph: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let names: Vec<&str> = graph["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"[b 1/1] COPY --from=a /x /y"), "{names:?}");
    assert!(!names.iter().any(|n| n.contains("never")), "{names:?}");
    let target = graph["target"].as_u64().unwrap();
    assert_eq!(
        graph["nodes"][target as usize]["name"],
        "[b 1/1] COPY --from=a /x /y"
    );

    let out = rbuild(&["graph", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with("digraph build {"),
        "{}",
        stdout(&out)
    );
    assert!(stdout(&out).contains("RUN never"));

    // Errors name the Dockerfile line and show it.
    std::fs::write(
        dir.join("Dockerfile"),
        "FROM scratch AS a\nCOPY --from=a /x /y\n",
    )
    .unwrap();
    let out = rbuild(&["graph", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("Dockerfile:2:1: circular dependency detected on stage: a"),
        "{err}"
    );
    assert!(err.contains("   2 | >>> COPY --from=a /x /y"), "{err}");

    let out = rbuild(&["graph", "--target", "nope", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("target stage \"nope\" could not be found"),
        "{}",
        stderr(&out)
    );

    let out = rbuild(&[
        "graph",
        "--platform",
        "linux/amd64,linux/arm64",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("several platforms") && stderr(&out).contains("linux/arm64"),
        "{}",
        stderr(&out)
    );

    let out = rbuild(&[
        "graph",
        "-f",
        dir.join("missing").to_str().unwrap(),
        dir.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("missing"), "{}", stderr(&out));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn graph_build_args_and_stdin_dockerfile() {
    let out = rbuild_stdin(
        &[
            "graph",
            "--format",
            "json",
            "--build-arg",
            "BASE=busybox:1",
            "-f",
            "-",
            ".",
        ],
        "ARG BASE\nFROM $BASE\nRUN true\n",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("\"reference\": \"busybox:1\""),
        "{}",
        stdout(&out)
    );
}

/// `rbuild build -` builds the Dockerfile from stdin with an empty
/// context; no build leaves a directory behind for it.
#[test]
fn stdin_build_has_an_empty_context_and_leaves_nothing() {
    let dir = std::env::temp_dir().join(format!("rbuild-stdin-build-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("ctx")).unwrap();
    let root = dir.join("root");
    let empty_contexts = || -> std::collections::BTreeSet<String> {
        std::fs::read_dir(std::env::temp_dir())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("empty-context"))
            // Another test's rbuild may be running right now: only a
            // directory whose process has ended is left behind.
            .filter(|n| {
                let pid = n
                    .rsplit("empty-context-")
                    .next()
                    .and_then(|rest| rest.split('-').next());
                !pid.is_some_and(|p| std::path::Path::new("/proc").join(p).exists())
            })
            .collect()
    };
    for (context, dockerfile) in [
        ("-", "FROM scratch\nENV FROM_STDIN=1\n"),
        (
            dir.join("ctx").to_str().unwrap(),
            "FROM scratch\nENV FROM_DIR=1\n",
        ),
    ] {
        let dest = dir.join("out");
        let before = empty_contexts();
        let output = format!("type=local,dest={}", dest.display());
        let root = root.to_str().unwrap();
        let args = [
            "build",
            "--root",
            root,
            "--progress",
            "plain",
            "-o",
            &output,
            "-f",
            "-",
            context,
        ];
        let out = rbuild_stdin(&args, dockerfile);
        assert!(out.status.success(), "{context}: {}", stderr(&out));
        assert!(dest.is_dir(), "{context}");
        let left: Vec<_> = empty_contexts().difference(&before).cloned().collect();
        assert!(left.is_empty(), "{context}: {left:?} left behind");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn debug_ignore_bad_pattern_names_file_line() {
    let dir = std::env::temp_dir().join(format!("rbuild-badign-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(".dockerignore");
    std::fs::write(&file, "# ok\nnode_modules\n[z-a]\n").unwrap();
    let out = rbuild(&["debug", "ignore", "--file", file.to_str().unwrap(), "x"]);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains(".dockerignore:3:1: syntax error in pattern `[z-a]`"),
        "{err}"
    );
}

#[test]
fn du_prune_verify_on_a_state_root() {
    let root = std::env::temp_dir().join(format!("rbuild-state-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let r = root.to_str().unwrap();
    let out = rbuild(&["--root", r, "du"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("Total:"), "{}", stdout(&out));
    // A blob whose content does not match its name.
    let blob = root.join("content/blobs/sha256").join("a".repeat(64));
    std::fs::write(&blob, b"not what the name says").unwrap();
    let out = rbuild(&["--root", r, "verify"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&format!("sha256:{}", "a".repeat(64))),
        "{}",
        stderr(&out)
    );
    // RBUILD_ROOT works like --root.
    let out = Command::new(env!("CARGO_BIN_EXE_rbuild"))
        .arg("du")
        .env("RBUILD_ROOT", r)
        .output()
        .unwrap();
    assert!(stdout(&out).contains("Total:\t\t22B"), "{}", stdout(&out));
    let out = rbuild(&["--root", r, "prune", "--filter", "until=24h"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = rbuild(&["--root", r, "prune", "--filter", "since=1h"]);
    assert_eq!(out.status.code(), Some(2));
    std::fs::remove_dir_all(&root).unwrap();
}

/// Error snippets come from the text that was parsed: a Dockerfile from
/// stdin shows its own lines, not those of a `./Dockerfile` in the working
/// directory, for a planning error and for a step that fails.
#[test]
fn stdin_errors_show_the_parsed_text() {
    let dir = std::env::temp_dir().join(format!("rbuild-stdin-snippet-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("Dockerfile"),
        "FROM scratch\nCOPY from-the-working-directory /\nCOPY another /\n",
    )
    .unwrap();
    let root = dir.join("root");
    let run = |args: &[&str], stdin: &str| {
        let mut all = vec!["--root", root.to_str().unwrap()];
        all.extend_from_slice(args);
        rbuild_stdin_in(&dir, &all, stdin)
    };
    let out = run(&["build", "-"], "FROM scratch\nRUN --bad-flag x\n");
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("   2 | >>> RUN --bad-flag x\n"), "{err}");
    assert!(!err.contains("working-directory"), "{err}");
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let out = run(
            &["build", "--progress", "plain", "-f", "-", "."],
            "FROM scratch\n\nCOPY not-in-the-context /x\n",
        );
        assert_eq!(out.status.code(), Some(1));
        let err = stderr(&out);
        assert!(
            err.contains("   3 | >>> COPY not-in-the-context /x\n"),
            "{err}"
        );
        assert!(!err.contains("working-directory"), "{err}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A Dockerfile too large to build is refused with an error that says so:
/// over 16 MiB, over 100,000 instructions, a word that expands past 1 MiB
/// (each `ARG An=$B$B` doubles), or steps that would hold too much of
/// variables and labels (ENV and RUN lines interleaved: each RUN has all
/// the variables before it; many ENV or LABEL lines of one long value;
/// stages each built on the last; global ARGs each a longer copy of the
/// last) -- never an out-of-memory kill.
#[test]
fn too_large_dockerfiles_are_refused() {
    let dir = std::env::temp_dir().join(format!("rbuild-too-large-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let cases = [
        (
            "huge",
            format!("FROM scratch\nRUN echo {}\n", "a".repeat(17 << 20)),
            "larger than 16 MiB, too large to build",
        ),
        (
            "many",
            format!("FROM scratch\n{}", "ENV a=b\n".repeat(100_000)),
            ":100001:1: more than 100000 instructions: the Dockerfile is too large to build",
        ),
        (
            "interleaved",
            format!(
                "FROM scratch\n{}",
                (0..20_000)
                    .map(|i| format!("ENV V{i}={i}\nRUN true\n"))
                    .collect::<String>()
            ),
            "hold over 128 MiB of variables and labels",
        ),
        (
            "doubling",
            format!(
                "FROM scratch\nARG A0=xxxxxxxxxxxxxxxx\n{}",
                (1..=40)
                    .map(|i| format!("ARG A{i}=${{A{}}}${{A{}}}\n", i - 1, i - 1))
                    .collect::<String>()
            ),
            ":19:1: failed to process \"${A16}${A16}\": expands to more than 1 MiB",
        ),
        (
            "wide",
            format!(
                "FROM scratch\nARG X={}\nARG A=$X$X$X$X$X$X$X$X\n{}",
                "x".repeat(60_000),
                (0..3_000)
                    .map(|i| format!("LABEL l{i}=$A\nENV E{i}=$A\n"))
                    .collect::<String>()
            ),
            "hold over 128 MiB of variables and labels",
        ),
        (
            "stages",
            format!(
                "FROM scratch AS s0\nARG X={}\nENV A=$X$X$X$X$X$X$X$X\n{}",
                "x".repeat(60_000),
                (1..3_000)
                    .map(|i| format!("FROM s{} AS s{i}\n", i - 1))
                    .collect::<String>()
            ),
            "hold over 128 MiB of variables and labels",
        ),
        (
            "globals",
            format!(
                "ARG A0=x\n{}FROM scratch\n",
                (1..20_000)
                    .map(|i| format!("ARG A{i}=${{A{}}}x\n", i - 1))
                    .collect::<String>()
            ),
            "hold over 128 MiB of variables and labels",
        ),
    ];
    for (i, (name, text, message)) in cases.into_iter().enumerate() {
        let file = dir.join(name);
        std::fs::write(&file, text).unwrap();
        let (file, dir) = (file.to_str().unwrap(), dir.to_str().unwrap());
        // The checks and the outline follow the stages too (they carry no
        // RUN environment: the first three cases are the graph's alone).
        let mut commands = vec![vec!["graph", "-f", file, dir]];
        if i >= 3 {
            commands.push(vec!["check", "-f", file, dir]);
            commands.push(vec!["build", "--call=outline", "-f", file, dir]);
        }
        for args in commands {
            let out = rbuild(&args);
            assert_eq!(out.status.code(), Some(1), "{name} {args:?}");
            let err = stderr(&out);
            // The checks' warnings come first.
            let error = err.find("error: ").map(|at| &err[at..]).unwrap_or("");
            assert!(error.contains(message), "{name} {args:?}: {err}");
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// EXPOSE keeps each port once, as BuildKit's port set: the whole range
/// written thousands of times on a line is 65,535 ports (327 million were
/// made and kept before, gigabytes).
#[test]
fn repeated_expose_ranges_are_one_set() {
    let dir = std::env::temp_dir().join(format!("rbuild-expose-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let ranges = vec!["1-65535"; 5000].join(" ");
    std::fs::write(
        dir.join("Dockerfile"),
        format!("FROM scratch\nEXPOSE {ranges}\n"),
    )
    .unwrap();
    for command in ["graph", "check"] {
        let child = Command::new(env!("CARGO_BIN_EXE_rbuild"))
            .args([command, dir.to_str().unwrap()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = common::output_within(child, 120, command);
        assert!(out.status.success(), "{command}: {}", stderr(&out));
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A context's own Dockerfile that is a fifo is refused, not waited on
/// for good; a Dockerfile the user pipes in with `-f` is read; an ignore
/// file past 16 MiB is refused, not read whole, and one of more wildcard
/// patterns than are read, not compiled whole.
#[test]
fn fifo_dockerfiles_in_a_context_are_refused() {
    let dir = std::env::temp_dir().join(format!("rbuild-fifo-df-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("Dockerfile");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let child = Command::new(env!("CARGO_BIN_EXE_rbuild"))
        .args(["graph", dir.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = common::output_within(child, 30, "rbuild waited on a fifo Dockerfile");
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("Dockerfile") && err.contains("not a regular file"),
        "{err}"
    );

    let out = rbuild_stdin(
        &[
            "graph",
            "--format",
            "json",
            "-f",
            "/dev/stdin",
            dir.to_str().unwrap(),
        ],
        "FROM scratch\nLABEL piped=yes\n",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("piped"));

    std::fs::remove_file(&fifo).unwrap();
    std::fs::write(&fifo, "FROM scratch\n").unwrap();
    std::fs::write(dir.join(".dockerignore"), "a".repeat(17 << 20)).unwrap();
    let out = rbuild(&["check", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(".dockerignore: larger than 16 MiB"),
        "{}",
        stderr(&out)
    );
    // Within the size, more wildcard patterns than are read (each a
    // regex tried on every path): refused at the first past the limit;
    // as many plain names are read.
    let many = |f: &dyn Fn(usize) -> String| (0..10_001).map(f).collect::<Vec<_>>().join("\n");
    std::fs::write(
        dir.join(".dockerignore"),
        many(&|i| format!("**/d{i}/*.t{i}")),
    )
    .unwrap();
    let out = rbuild(&["check", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(
            ".dockerignore\n  Caused by: more than 10000 patterns with wildcards (the one past it: `**/d10000/*.t10000`)"
        ),
        "{}",
        stderr(&out)
    );
    std::fs::write(dir.join(".dockerignore"), many(&|i| format!("d{i}/f{i}"))).unwrap();
    let out = rbuild(&["check", dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// An image's name is a reference as Docker reads it: a bad `-t`, `-o
/// name=` or `rbuild tag` target is an error naming it, before anything
/// is built.
#[test]
fn bad_image_names_are_refused() {
    let dir = std::env::temp_dir().join(format!("rbuild-bad-tags-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("Dockerfile"), "FROM scratch\n").unwrap();
    let root = dir.join("root");
    let (r, d) = (root.to_str().unwrap(), dir.to_str().unwrap());
    for (args, message) in [
        (
            vec!["--root", r, "build", "-t", "MyApp:1", d],
            "error: invalid tag \"MyApp:1\": invalid reference format: repository name (library/MyApp) must be lowercase",
        ),
        (
            vec!["--root", r, "build", "-o", "type=image,name=app:-x", d],
            "error: invalid tag \"app:-x\": invalid reference format: bad tag \"-x\"",
        ),
        (
            vec!["--root", r, "tag", "busybox", "a..b"],
            "error: invalid tag \"a..b\": invalid reference format",
        ),
    ] {
        let out = rbuild(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(stderr(&out).contains(message), "{args:?}: {}", stderr(&out));
    }
    assert!(!root.exists(), "nothing made for a refused name");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// buildx's flags a CI script carries over: `--load` (the image is in
/// rbuild's store anyway), `--provenance=false`, `--sbom=false` and a
/// disabled `--attest` build as without them; an attestation asked for is
/// refused, naming the flag to turn it off, and nothing is built.
#[test]
fn buildx_attestation_and_load_flags() {
    let dir = std::env::temp_dir().join(format!("rbuild-attest-flags-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let root = dir.join("root");
    let root_arg = root.to_str().unwrap();
    let df = "FROM scratch\nENV A=1\n";
    // A fixed time: the image of a file with no step that runs takes the
    // build's, and two builds may fall in two seconds.
    let epoch = "SOURCE_DATE_EPOCH=1700000000";
    let plain = rbuild_stdin(
        &["--root", root_arg, "build", "-q", "--build-arg", epoch, "-"],
        df,
    );
    assert!(plain.status.success(), "{}", stderr(&plain));
    let off = rbuild_stdin(
        &[
            "--root",
            root_arg,
            "build",
            "-q",
            "--build-arg",
            epoch,
            "--load",
            "--provenance=false",
            "--sbom",
            "0",
            "--attest",
            "type=provenance,disabled=true",
            "-",
        ],
        df,
    );
    assert!(off.status.success(), "{}", stderr(&off));
    assert_eq!(stdout(&off), stdout(&plain), "the same image");
    // `--progress none`, BUILDKIT_PROGRESS for the default, and an output
    // of nothing but caches.
    let none = rbuild_stdin(
        &["--root", root_arg, "build", "--progress", "none", "-"],
        df,
    );
    assert!(
        none.status.success() && stderr(&none).is_empty(),
        "{}",
        stderr(&none)
    );
    let mut env_plain = Command::new(env!("CARGO_BIN_EXE_rbuild"));
    env_plain
        .args(["--root", root_arg, "build", "-o", "type=cacheonly", "-"])
        .env("BUILDKIT_PROGRESS", "quiet")
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = env_plain.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(df.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).is_empty(), "quiet progress: {}", stderr(&o));
    assert_eq!(stdout(&o), stdout(&plain), "quiet prints the image id");
    for (flags, want) in [
        (
            vec!["--provenance=mode=max"],
            "error: --attest type=provenance: rbuild makes no provenance attestations yet (build without: --provenance=false)",
        ),
        (
            vec!["--sbom=true"],
            "error: --attest type=sbom: rbuild makes no sbom attestations yet (build without: --sbom=false)",
        ),
        (
            vec!["--attest", "mode=max"],
            "error: --attest mode=max: attestation type not specified",
        ),
    ] {
        let mut args = vec!["--root", root_arg, "build", "-q"];
        args.extend(flags);
        args.push("-");
        let o = rbuild_stdin(&args, df);
        assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
        assert!(stderr(&o).contains(want), "{}", stderr(&o));
        assert!(stdout(&o).is_empty());
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
