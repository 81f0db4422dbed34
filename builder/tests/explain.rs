//! `rbuild explain` / `build --explain`: for each step, hit, or the first
//! input that differs from its latest build: a build arg, an ENV, a context
//! file's content, a file added, the ignore file, the Dockerfile line, the
//! parent, `--no-cache-filter`; a secret's value is no input.

mod common;

use std::path::Path;

use common::{is_root, rbuild, tmp};

const DOCKERFILE: &str = "FROM scratch AS base
COPY busybox /bin/busybox
RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]
FROM base
ARG VERSION=1
ENV MODE=fast
RUN echo $VERSION $MODE > /v
COPY src/ /src/
RUN --mount=type=secret,id=token cat /src/* > /all
";

/// `rbuild explain` with `flags`: its report lines (stderr, `#` lines
/// with `: hit` or `: miss:`).
fn explain(root: &Path, ctx: &Path, flags: &[&str]) -> Vec<String> {
    let mut args = vec!["explain", "-q"];
    args.extend_from_slice(flags);
    let secret = format!("id=token,src={}", ctx.join("../token").display());
    args.extend_from_slice(&["--secret", &secret]);
    args.push(ctx.to_str().unwrap());
    let o = rbuild(root, &args);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{err}");
    err.lines()
        .filter(|l| l.starts_with('#') && (l.contains(": hit") || l.contains(": miss")))
        .map(str::to_string)
        .collect()
}

/// The outcome of the step whose name contains `step`.
fn outcome<'a>(lines: &'a [String], step: &str) -> &'a str {
    let line = lines
        .iter()
        .find(|l| l.contains(step))
        .unwrap_or_else(|| panic!("no line for {step}: {lines:#?}"));
    let at = line.find(": hit").or_else(|| line.find(": miss")).unwrap();
    &line[at + 2..]
}

#[test]
fn explain_names_what_changed() {
    if !is_root() {
        eprintln!("skipped: building needs root (overlay, namespaces)");
        return;
    }
    let t = tmp("explain");
    let ctx = t.0.join("ctx");
    std::fs::create_dir_all(ctx.join("src")).unwrap();
    std::fs::copy("/bin/busybox", ctx.join("busybox")).unwrap();
    std::fs::write(ctx.join("Dockerfile"), DOCKERFILE).unwrap();
    std::fs::write(ctx.join("src/a.txt"), "a\n").unwrap();
    std::fs::write(t.0.join("token"), "secret-1").unwrap();
    let root = t.0.join("state");
    let run = "RUN echo $VERSION $MODE > /v";
    let copy = "COPY src/ /src/";
    let cat = "RUN --mount=type=secret,id=token cat /src/* > /all";

    let first = explain(&root, &ctx, &[]);
    assert_eq!(first.len(), 5, "{first:#?}");
    assert!(
        first
            .iter()
            .all(|l| l.ends_with("miss: no earlier build of this step"))
    );
    assert!(
        first[0].starts_with("#1 [base 1/2] COPY busybox /bin/busybox: "),
        "{first:#?}"
    );

    let again = explain(&root, &ctx, &[]);
    assert!(again.iter().all(|l| l.ends_with(": hit")), "{again:#?}");

    // A build arg, and what follows the step it changed.
    let arg = explain(&root, &ctx, &["--build-arg", "VERSION=2"]);
    assert_eq!(outcome(&arg, "COPY busybox"), "hit");
    assert_eq!(
        outcome(&arg, run),
        "miss: build arg or env VERSION changed (1 -> 2)"
    );
    assert_eq!(outcome(&arg, copy), "miss: parent changed (step #3 ran)");

    // A context file's content; a file added; the ignore file.
    std::fs::write(ctx.join("src/a.txt"), "changed\n").unwrap();
    let content = explain(&root, &ctx, &["--build-arg", "VERSION=2"]);
    assert_eq!(outcome(&content, run), "hit");
    assert_eq!(
        outcome(&content, copy),
        "miss: 1 file changed: src/a.txt (changed)"
    );
    std::fs::write(ctx.join("src/b.txt"), "b\n").unwrap();
    let added = explain(&root, &ctx, &["--build-arg", "VERSION=2"]);
    assert_eq!(
        outcome(&added, copy),
        "miss: 1 file changed: src/b.txt (added)"
    );
    // (Ignoring b.txt would give back the tree built two steps ago: a hit.)
    std::fs::write(ctx.join(".dockerignore"), "src/a.txt\n").unwrap();
    let ignored = explain(&root, &ctx, &["--build-arg", "VERSION=2"]);
    assert_eq!(
        outcome(&ignored, copy),
        "miss: 1 file changed: src/a.txt (removed)"
    );

    // A secret's value is no input (as BuildKit).
    std::fs::write(t.0.join("token"), "secret-2").unwrap();
    let secret = explain(&root, &ctx, &["--build-arg", "VERSION=2"]);
    assert_eq!(outcome(&secret, cat), "hit");
    assert!(secret.iter().all(|l| l.ends_with(": hit")), "{secret:#?}");

    // An ENV, and a line of the Dockerfile edited.
    let edited = DOCKERFILE.replace("ENV MODE=fast", "ENV MODE=slow");
    std::fs::write(ctx.join("Dockerfile"), &edited).unwrap();
    let env = explain(&root, &ctx, &["--build-arg", "VERSION=2"]);
    assert_eq!(
        outcome(&env, run),
        "miss: build arg or env MODE changed (fast -> slow)"
    );
    let edited = edited.replace("> /all", "> /everything");
    std::fs::write(ctx.join("Dockerfile"), &edited).unwrap();
    let line = explain(&root, &ctx, &["--build-arg", "VERSION=2"]);
    assert_eq!(outcome(&line, copy), "hit");
    assert!(
        outcome(&line, "/everything").starts_with("miss: command changed ("),
        "{line:#?}"
    );

    // For tools: one JSON object a step.
    let o = rbuild(
        &root,
        &[
            "explain",
            "--progress",
            "quiet",
            "--format",
            "json",
            "--build-arg",
            "VERSION=3",
            "--secret",
            &format!("id=token,src={}", t.0.join("token").display()),
            ctx.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let steps: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(steps.len(), 5, "{steps:#?}");
    assert_eq!(steps[0]["cached"], true);
    assert_eq!(steps[2]["step"], 3);
    assert_eq!(steps[2]["cached"], false);
    assert_eq!(
        steps[2]["reason"],
        "build arg or env VERSION changed (2 -> 3)"
    );

    // --no-cache-filter runs the stage's steps.
    let filtered = explain(
        &root,
        &ctx,
        &["--build-arg", "VERSION=2", "--no-cache-filter", "base"],
    );
    assert_eq!(outcome(&filtered, "COPY busybox"), "miss: --no-cache");

    // The base image rebuilt with other content.
    let base = t.0.join("base");
    std::fs::create_dir_all(&base).unwrap();
    std::fs::copy("/bin/busybox", base.join("busybox")).unwrap();
    let build_base = |marker: &str| {
        std::fs::write(
            base.join("Dockerfile"),
            format!("FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"touch\", \"/{marker}\"]\n"),
        )
        .unwrap();
        let o = rbuild(
            &root,
            &[
                "build",
                "-q",
                "-t",
                "explain-base:1",
                base.to_str().unwrap(),
            ],
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    let on_base = t.0.join("on-base");
    std::fs::create_dir_all(&on_base).unwrap();
    std::fs::write(
        on_base.join("Dockerfile"),
        "FROM explain-base:1\nRUN [\"/bin/busybox\", \"touch\", \"/on-top\"]\n",
    )
    .unwrap();
    build_base("one");
    explain(&root, &on_base, &[]);
    build_base("two");
    let rebased = explain(&root, &on_base, &[]);
    assert!(
        outcome(&rebased, "/on-top").starts_with("miss: base image changed (sha256:"),
        "{rebased:#?}"
    );
}
