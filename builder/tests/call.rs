//! `rbuild build --call=outline|targets[,format=json]` against the cases of
//! BuildKit's own tests (testOutlineArgs, testOutlineSecrets,
//! testOutlineRecursiveArgs, testTargetsList): the same names, values,
//! descriptions, lines and order. Nothing is built.

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;
use serde_json::Value;

fn context(name: &str, dockerfile: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rbuild-call-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("Dockerfile"), dockerfile).unwrap();
    dir
}

fn call(dir: &Path, args: &[&str]) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_rbuild"))
        .args(["--root", dir.join("root").to_str().unwrap(), "build"])
        .args(args)
        .arg(dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

fn json(dir: &Path, args: &[&str]) -> Value {
    serde_json::from_str(&call(dir, args)).unwrap()
}

fn line(v: &Value) -> u64 {
    v["location"]["ranges"][0]["start"]["line"]
        .as_u64()
        .unwrap()
}

/// (name, value, description, line) of each arg.
fn args(o: &Value) -> Vec<(String, String, String, u64)> {
    o["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            let s = |k: &str| a[k].as_str().unwrap_or_default().to_string();
            (s("name"), s("value"), s("description"), line(a))
        })
        .collect()
}

const OUTLINE_ARGS: &str = r#"
ARG inherited=box
ARG inherited2=box2
ARG unused=abc${inherited2}
# sfx is a suffix
ARG sfx="usy${inherited}"

FROM b${sfx} AS first
# this is not assigned to anything
ARG FOO=123
# BAR is a number
ARG BAR=456
RUN true

FROM alpine${unused} AS second
ARG BAZ
RUN true

FROM scratch AS third
ARG ABC=a
# check=skip=all
ARG password
# alternate_password will show up in the outline
# check=skip=all
ARG alternate_password

# target defines build target
FROM third AS target
COPY --from=first /etc/passwd /

FROM second
"#;

#[test]
fn outline_lists_the_args_the_target_uses() {
    let dir = context("outline-args", OUTLINE_ARGS);
    let flags = ["--target", "target", "--build-arg", "BAR=678"];
    let mut with_json = vec!["--call", "outline,format=json"];
    with_json.extend(flags);
    let o = json(&dir, &with_json);
    assert_eq!(o["name"], "target");
    assert_eq!(o["description"], "defines build target");
    let source = base64::engine::general_purpose::STANDARD
        .decode(o["sources"][0].as_str().unwrap())
        .unwrap();
    assert_eq!(source, OUTLINE_ARGS.as_bytes());
    let s = |v: &str| v.to_string();
    assert_eq!(
        args(&o),
        vec![
            (s("inherited"), s("box"), s(""), 2),
            (s("sfx"), s("usybox"), s("is a suffix"), 6),
            (s("FOO"), s("123"), s(""), 10),
            (s("BAR"), s("678"), s("is a number"), 12),
            (s("ABC"), s("a"), s(""), 20),
            (s("password"), s(""), s(""), 22),
            (
                s("alternate_password"),
                s(""),
                s("will show up in the outline"),
                25
            ),
        ]
    );
    // The text form is BuildKit's printer: tabwriter tables, blank lines.
    let mut text = vec!["--call", "outline"];
    text.extend(flags);
    let out = call(&dir, &text);
    assert!(
        out.starts_with(
            "TARGET:      target\nDESCRIPTION: defines build target\n\n\
             BUILD ARG            VALUE    DESCRIPTION\n\
             inherited            box      \n\
             sfx                  usybox   is a suffix\n"
        ),
        "{out}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn outline_resolves_args_that_refer_to_each_other() {
    let dir = context(
        "outline-recursive",
        "\nARG FOO=123\nARG ABC=abc\nARG DEF=def\nARG FOO=${FOO}${ABC}\nARG BAR=${FOO}456\n\
         ARG FOO=${FOO}456${BAR}\nFROM scratch\nARG FOO\nARG INFOO=123\nARG INBAR=${INFOO}456\n\
         ARG INFOO=${INFOO}456${INBAR}\n",
    );
    let o = json(&dir, &["--call", "outline,format=json"]);
    let got: Vec<(String, String)> = args(&o).into_iter().map(|(n, v, _, _)| (n, v)).collect();
    let want = [
        ("ABC", "abc"),
        ("BAR", "123abc456"),
        ("FOO", "123abc456123abc456"),
        ("INBAR", "123456"),
        ("INFOO", "123456123456"),
    ];
    assert_eq!(
        got,
        want.map(|(n, v)| (n.to_string(), v.to_string())).to_vec()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn outline_lists_secrets_and_ssh_ids() {
    let dir = context(
        "outline-secrets",
        "FROM busybox AS first\n\
         RUN --mount=type=secret,target=/etc/passwd,required=true --mount=type=ssh true\n\
         FROM alpine AS second\n\
         RUN --mount=type=secret,id=unused --mount=type=ssh,id=ssh2 true\n\
         FROM scratch AS third\nARG BAR\nRUN --mount=type=secret,id=second${BAR} true\n\
         FROM third AS target\nCOPY --from=first /foo /\n\
         RUN --mount=type=ssh,id=ssh3,required true\nFROM second\n",
    );
    let o = json(
        &dir,
        &[
            "--call",
            "outline,format=json",
            "--target",
            "target",
            "--build-arg",
            "BAR=678",
        ],
    );
    let ids = |k: &str| -> Vec<(String, bool, u64)> {
        o[k].as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["name"].as_str().unwrap().to_string(),
                    s["required"].as_bool().unwrap_or(false),
                    line(s),
                )
            })
            .collect()
    };
    assert_eq!(
        ids("secrets"),
        [("passwd".into(), true, 2), ("second678".into(), false, 7)]
    );
    assert_eq!(
        ids("ssh"),
        [("default".into(), false, 2), ("ssh3".into(), true, 10)]
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn targets_lists_the_stages() {
    let dockerfile = "\n# build defines stage for compiling the binary\nFROM alpine AS build\nRUN true\n\n\
                      FROM busybox as second\nRUN false\n\nFROM alpine\nRUN false\n\n\
                      # binary returns the compiled binary\nFROM second AS binary\n";
    let dir = context("targets", dockerfile);
    let o = json(&dir, &["--call", "targets,format=json"]);
    let targets: Vec<(String, String, String, bool, u64)> = o["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let s = |k: &str| t[k].as_str().unwrap_or_default().to_string();
            (
                s("name"),
                s("base"),
                s("description"),
                t["default"].as_bool().unwrap_or(false),
                line(t),
            )
        })
        .collect();
    let s = |v: &str| v.to_string();
    assert_eq!(
        targets,
        vec![
            (
                s("build"),
                s("alpine"),
                s("defines stage for compiling the binary"),
                false,
                3
            ),
            (s("second"), s("busybox"), s(""), false, 6),
            (s(""), s("alpine"), s(""), false, 9),
            (
                s("binary"),
                s("second"),
                s("returns the compiled binary"),
                true,
                13
            ),
        ]
    );
    assert_eq!(
        call(&dir, &["--call", "targets"]),
        "TARGET           DESCRIPTION\n\
         build            defines stage for compiling the binary\n\
         second           \n                 \n\
         binary (default) returns the compiled binary\n"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
