//! `rbuild build --verify`: a second build without the cache, compared.
//! With SOURCE_DATE_EPOCH and rewrite-timestamp the project's test
//! Dockerfiles are reproducible; a step that writes something new each
//! time is reported with its file named.

mod common;

use common::{context, is_root, rbuild_env, tmp};

fn verify(root: &std::path::Path, ctx: &std::path::Path, env: &[(&str, &str)]) -> (bool, String) {
    let o = rbuild_env(
        root,
        &[
            "build",
            "--progress",
            "plain",
            "--verify",
            "-o",
            "type=image,name=verified:1,rewrite-timestamp=true",
            ctx.to_str().unwrap(),
        ],
        env,
    );
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn test_dockerfiles_are_reproducible() {
    if !is_root() {
        eprintln!("skipped: building needs root (overlay, namespaces)");
        return;
    }
    for case in ["busybox", "reproducible", "parallel"] {
        let t = tmp(&format!("verify-{case}"));
        let ctx = context(&t, case);
        let (ok, err) = verify(
            &t.0.join("state"),
            &ctx,
            &[("SOURCE_DATE_EPOCH", "1700000000")],
        );
        assert!(ok, "{case}: {err}");
        assert!(
            err.contains("verify: reproducible, sha256:"),
            "{case}: {err}"
        );
    }
}

#[test]
fn what_is_not_reproducible_is_named() {
    if !is_root() {
        eprintln!("skipped: building needs root (overlay, namespaces)");
        return;
    }
    let t = tmp("verify-not");
    let ctx = t.0.join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::copy("/bin/busybox", ctx.join("busybox")).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n\
         RUN echo stable > /stable && cat /proc/sys/kernel/random/uuid > /stamp\n",
    )
    .unwrap();
    let root = t.0.join("state");
    let (ok, err) = verify(&root, &ctx, &[("SOURCE_DATE_EPOCH", "1700000000")]);
    assert!(!ok, "{err}");
    let error = &err[err
        .find("error: the image is not reproducible")
        .expect(&err)..];
    assert!(error.contains("layer 3 differs"), "{error}");
    assert!(error.contains("\n  stamp: content"), "{error}");
    assert!(!error.contains("stable"), "{error}");
    assert!(!error.contains("config:"), "{error}");
    // Without SOURCE_DATE_EPOCH too (and the times may differ as well).
    let (ok, err) = verify(&root, &ctx, &[]);
    assert!(!ok, "{err}");
    assert!(
        err.contains("error: the image is not reproducible"),
        "{err}"
    );
}
