//! Build checks through the binary: `rbuild check` (text and JSON), the
//! exit status of `error=true` and of files that do not parse, `build
//! --check`, the warnings a build prints at its end, a build that
//! `error=true` stops before any step, and every real-world Dockerfile of
//! the conformance corpus (warning counts against a golden file).

mod common;

use std::path::{Path, PathBuf};

use common::{rbuild, tmp};

fn write(dir: &Path, dockerfile: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("Dockerfile"), dockerfile).unwrap();
    std::fs::write(dir.join("file.txt"), "x\n").unwrap();
    dir.to_path_buf()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json(o: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stdout)))
}

const WARNS: &str = "FROM scratch as base\nMAINTAINER me\nCOPY file.txt /\n";

#[test]
fn check_prints_warnings_as_text_and_json() {
    let t = tmp("check-text");
    let ctx = write(&t.0.join("ctx"), WARNS);
    let root = t.0.join("root");
    let o = rbuild(&root, &["check", ctx.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("WARN: FromAsCasing: 'as' and 'FROM' keywords' casing do not match (line 1)"),
        "{err}"
    );
    assert!(err.contains("   1 | >>> FROM scratch as base"), "{err}");
    assert!(
        err.contains("https://docs.docker.com/go/dockerfile/rule/maintainer-deprecated/"),
        "{err}"
    );
    assert!(err.contains("2 warnings have been found"), "{err}");

    let o = rbuild(&root, &["check", "--format", "json", ctx.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0));
    let v = json(&o);
    assert_eq!(v["error"], serde_json::Value::Null);
    let rules: Vec<(&str, u64)> = v["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| (w["rule"].as_str().unwrap(), w["line"].as_u64().unwrap()))
        .collect();
    assert_eq!(rules, [("FromAsCasing", 1), ("MaintainerDeprecated", 2)]);
}

#[test]
fn errors_set_the_exit_status() {
    let t = tmp("check-error");
    let root = t.0.join("root");
    let ctx = write(&t.0.join("a"), &format!("# check=error=true\n{WARNS}"));
    let o = rbuild(&root, &["check", "--format", "json", ctx.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        json(&o)["error"],
        "lint violation found for rules: FromAsCasing, MaintainerDeprecated"
    );
    // The build arg takes the directive's place.
    let o = rbuild(
        &root,
        &[
            "check",
            "--build-arg",
            "BUILDKIT_DOCKERFILE_CHECK=skip=all",
            ctx.to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));

    let ctx = write(&t.0.join("b"), "FROM scratch\nFORM busybox\n");
    let o = rbuild(&root, &["check", "--format", "json", ctx.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let e = json(&o)["error"].as_str().unwrap().to_string();
    assert!(e.contains("unknown instruction: FORM"), "{e}");
    let ctx = write(&t.0.join("c"), "# check=skip\nFROM scratch\n");
    let o = rbuild(&root, &["check", ctx.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("invalid check option"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn builds_lint_what_they_build() {
    if !common::is_root() {
        eprintln!("skipped: building needs root");
        return;
    }
    let t = tmp("check-build");
    let root = t.0.join("root");
    let ctx = write(&t.0.join("ctx"), WARNS);
    // --check builds nothing.
    let o = rbuild(
        &root,
        &["build", "--check", "-t", "x:1", ctx.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).contains("WARN: MaintainerDeprecated"));
    assert!(!String::from_utf8_lossy(&rbuild(&root, &["images"]).stdout).contains("x:1"));

    // A build lists them at its end.
    let o = rbuild(
        &root,
        &[
            "build",
            "--progress=plain",
            "-t",
            "x:1",
            ctx.to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains(" 2 warnings found"), "{err}");
    assert!(
        err.contains(" - MaintainerDeprecated: Maintainer instruction is deprecated in favor of using label (line 2)"),
        "{err}"
    );

    // error=true stops it before any step runs, at the first finding.
    let o = rbuild(
        &root,
        &[
            "build",
            "--progress=plain",
            "--build-arg",
            "BUILDKIT_DOCKERFILE_CHECK=error=true",
            "-t",
            "y:1",
            ctx.to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains("lint violation found for rules: FromAsCasing, MaintainerDeprecated"),
        "{err}"
    );
    assert!(err.contains("Dockerfile:1:1"), "{err}");
    assert!(!err.contains("] COPY"), "no step ran: {err}");
    assert!(!String::from_utf8_lossy(&rbuild(&root, &["images"]).stdout).contains("y:1"));
}

fn corpus() -> PathBuf {
    std::env::var_os("RBUILD_CONFORMANCE")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/conformance"))
}

#[test]
fn every_real_world_dockerfile_checks_without_a_panic() {
    let t = tmp("check-corpus");
    let root = t.0.join("root");
    let ctx = t.0.join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    let mut files: Vec<PathBuf> = std::fs::read_dir(corpus().join("real-world"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "Dockerfile"))
        .collect();
    files.sort();
    assert!(files.len() > 200);
    let mut lines = String::new();
    for f in &files {
        let o = rbuild(
            &root,
            &[
                "check",
                "--format",
                "json",
                "-f",
                f.to_str().unwrap(),
                ctx.to_str().unwrap(),
            ],
        );
        assert!(
            matches!(o.status.code(), Some(0 | 1)) && !stderr(&o).contains("panicked"),
            "{}: {}",
            f.display(),
            stderr(&o)
        );
        let v = json(&o);
        let mut counts = std::collections::BTreeMap::<String, usize>::new();
        for w in v["warnings"].as_array().unwrap() {
            *counts
                .entry(w["rule"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
        let counts: Vec<String> = counts.iter().map(|(r, n)| format!("{r}={n}")).collect();
        lines.push_str(&format!(
            "{} {}{}\n",
            f.file_name().unwrap().to_str().unwrap(),
            if counts.is_empty() {
                "-".into()
            } else {
                counts.join(",")
            },
            if v["error"].is_null() { "" } else { " error" }
        ));
    }
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/lint-real-world.golden");
    if std::env::var_os("RBUILD_BLESS").is_some() {
        std::fs::write(&golden, &lines).unwrap();
    }
    let want = std::fs::read_to_string(&golden).unwrap_or_default();
    assert!(
        want == lines,
        "warning counts differ from {} (RBUILD_BLESS=1 rewrites it)",
        golden.display()
    );
}

/// BuildKit's instruction error cases (`instructions/errors.json`): each
/// file fails `rbuild check` with BuildKit's message, exit status 1.
#[test]
fn instruction_error_cases_fail_the_check() {
    let t = tmp("check-errors");
    let root = t.0.join("root");
    let cases: serde_json::Value =
        serde_json::from_slice(&std::fs::read(corpus().join("instructions/errors.json")).unwrap())
            .unwrap();
    let mut failures = Vec::new();
    for (i, case) in cases["cases"].as_array().unwrap().iter().enumerate() {
        let ctx = write(
            &t.0.join(i.to_string()),
            case["dockerfile"].as_str().unwrap(),
        );
        let o = rbuild(&root, &["check", "--format", "json", ctx.to_str().unwrap()]);
        let v = json(&o);
        let error = v["error"].as_str().unwrap_or("").to_string();
        let want = case["expected_error"].as_str().unwrap();
        // The message follows the `file:line:col: ` it is located at.
        let message = error.splitn(4, ": ").last().unwrap_or("").to_string();
        let ok = match case["match"].as_str().unwrap() {
            "exact" => message == want || error.ends_with(&format!(": {want}")),
            _ => error.contains(want),
        };
        if !ok || o.status.code() != Some(1) {
            failures.push(format!(
                "{}: exit {:?}, error {error:?}",
                case["id"],
                o.status.code()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// What fails the target's build fails its check, after the warnings, as
/// BuildKit reports its conversion's error as the check's: a word that
/// does not expand; with the ARG given as a build arg (its default is then
/// not expanded), the check passes.
#[test]
fn what_fails_the_build_fails_the_check() {
    let t = tmp("check-build-error");
    let root = t.0.join("root");
    let ctx = write(
        &t.0.join("ctx"),
        "FROM scratch\nARG X=${Y:?unset}\nENV A=$X\nLABEL l=$Z\n",
    );
    let ctx = ctx.to_str().unwrap();
    let o = rbuild(&root, &["check", "--format", "json", ctx]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let v = json(&o);
    assert_eq!(
        v["error"].as_str().unwrap(),
        format!("{ctx}/Dockerfile:2:1: failed to process \"${{Y:?unset}}\": Y: unset")
    );
    assert_eq!(v["warnings"][0]["rule"], "UndefinedVar");
    let o = rbuild(&root, &["build", "--call=check", ctx]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("\nerror: "), "{}", stderr(&o));
    let o = rbuild(
        &root,
        &["check", "--format", "json", "--build-arg", "X=x", ctx],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(json(&o)["error"].is_null());
}
