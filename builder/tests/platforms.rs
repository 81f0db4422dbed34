//! Building for another architecture than the host's: `--platform
//! linux/arm64` with Debian's static busybox for arm64, its RUN steps run
//! through QEMU registered in binfmt_misc (rbuild registers Debian's
//! qemu-user-static handler when none is); the image says arm64; the same
//! Dockerfile for amd64 shares no step with it; a base image for the
//! wrong platform is refused.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{is_root, rbuild, tmp};

/// Debian's static busybox for arm64 (`busybox-static:arm64`): kept under
/// /var/cache (.ci/run fetches it), fetched from Debian's archive here
/// when it is not.
fn busybox_arm64() -> PathBuf {
    let cache = Path::new("/var/cache/rbuild-tests/busybox-arm64");
    if cache.is_file() {
        return cache.to_path_buf();
    }
    let dir = cache
        .parent()
        .unwrap()
        .join(format!("fetch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sh = format!(
        "set -e; dpkg --add-architecture arm64; apt-get update -qq; \
         cd {0}; apt-get download -qq busybox-static:arm64; dpkg-deb -x busybox-static_*_arm64.deb x; \
         mv x/bin/busybox {1}",
        dir.display(),
        cache.display()
    );
    let o = Command::new("sh").args(["-c", &sh]).output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        o.status.success() && cache.is_file(),
        "fetching busybox-static:arm64: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    cache.to_path_buf()
}

/// The arm64 handler in binfmt_misc is the host's: the tests that remove
/// it take turns.
static BINFMT: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn ok(o: &std::process::Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn config(root: &Path, image: &str) -> serde_json::Value {
    let o = rbuild(root, &["inspect", image]);
    serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["Config"].clone()
}

#[test]
fn an_arm64_image_built_on_amd64_through_its_emulator() {
    if !is_root() {
        eprintln!("skipped: building (and registering an emulator) needs root");
        return;
    }
    let _binfmt = BINFMT.lock().unwrap_or_else(|e| e.into_inner());
    // The handler goes first when a run before registered it: rbuild
    // registers it again (binfmt_misc mounted, Debian's description read).
    let handler = Path::new("/proc/sys/fs/binfmt_misc/qemu-aarch64");
    if handler.exists() {
        std::fs::write(handler, "-1").unwrap();
    }
    let t = tmp("platform-arm64");
    let ctx = t.0.join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::copy(busybox_arm64(), ctx.join("busybox-arm64")).unwrap();
    std::fs::copy("/bin/busybox", ctx.join("busybox-amd64")).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM scratch\nARG TARGETARCH\nCOPY busybox-$TARGETARCH /bin/busybox\n\
         RUN [\"/bin/busybox\",\"--install\",\"-s\",\"/bin\"]\n\
         RUN uname -m > /arch && echo $TARGETARCH > /targetarch\n",
    )
    .unwrap();
    let root = t.0.join("root");
    let build = |platform: &str, tag: &str| {
        let out = t.0.join(tag);
        ok(&rbuild(
            &root,
            &[
                "build",
                "--progress=plain",
                "--platform",
                platform,
                "-t",
                tag,
                ctx.to_str().unwrap(),
            ],
        ));
        let o = rbuild(
            &root,
            &[
                "build",
                "-q",
                "--platform",
                platform,
                "-o",
                &format!("type=local,dest={}", out.display()),
                ctx.to_str().unwrap(),
            ],
        );
        ok(&o);
        let read = |f: &str| std::fs::read_to_string(out.join(f)).unwrap();
        (read("arch"), read("targetarch"))
    };
    assert_eq!(
        build("linux/arm64", "arm:1"),
        ("aarch64\n".into(), "arm64\n".into())
    );
    let c = config(&root, "arm:1");
    assert_eq!(
        (c["architecture"].as_str(), c["os"].as_str()),
        (Some("arm64"), Some("linux"))
    );
    // The emulator is registered with the fix-binary flag.
    let handler = std::fs::read_to_string("/proc/sys/fs/binfmt_misc/qemu-aarch64").unwrap();
    assert!(
        handler.starts_with("enabled")
            && handler
                .lines()
                .any(|l| l.starts_with("flags:") && l.contains('F')),
        "{handler}"
    );

    // The same Dockerfile for amd64 on the same root: nothing shared.
    let err = ok(&rbuild(
        &root,
        &[
            "build",
            "--progress=plain",
            "--platform",
            "linux/amd64",
            "-t",
            "amd:1",
            ctx.to_str().unwrap(),
        ],
    ));
    assert!(!err.contains("CACHED"), "{err}");
    assert_eq!(
        build("linux/amd64", "amd:1"),
        ("x86_64\n".into(), "amd64\n".into())
    );
    assert_eq!(config(&root, "amd:1")["architecture"], "amd64");

    // A build of `dir` for `platform` that must fail: its message.
    let fails = |platform: &str, dir: &Path| {
        let args = ["build", "-q", "--platform", platform, dir.to_str().unwrap()];
        let o = rbuild(&root, &args);
        assert_eq!(o.status.code(), Some(1));
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    // A base from the store for that platform is fine; one for another
    // is refused, naming both.
    let child = t.0.join("child");
    std::fs::create_dir_all(&child).unwrap();
    std::fs::write(
        child.join("Dockerfile"),
        "FROM arm:1\nRUN cat /arch > /again\n",
    )
    .unwrap();
    ok(&rbuild(
        &root,
        &[
            "build",
            "-q",
            "--platform",
            "linux/arm64",
            child.to_str().unwrap(),
        ],
    ));
    std::fs::write(child.join("Dockerfile"), "FROM amd:1\nRUN true\n").unwrap();
    let err = fails("linux/arm64", &child);
    assert!(
        err.contains("amd:1") && err.contains("linux/amd64") && err.contains("linux/arm64"),
        "{err}"
    );

    // An architecture no emulator is known for: a clear error.
    std::fs::copy("/bin/busybox", ctx.join("busybox-sparc64")).unwrap();
    let err = fails("linux/sparc64", &ctx);
    assert!(
        err.contains("linux/sparc64") && err.contains("emulator"),
        "{err}"
    );
}

/// The cross-compiling pattern: a stage `FROM --platform=$BUILDPLATFORM`
/// runs natively whatever the target (no emulator: the test removes it
/// while it builds for arm64), sees the target in `$TARGETARCH`, and its
/// steps that do not use the target are shared between the builds for two
/// platforms (the second finds them in the cache).
#[test]
fn a_build_platform_stage_runs_natively_and_is_shared() {
    if !is_root() {
        eprintln!("skipped: building needs root");
        return;
    }
    let _binfmt = BINFMT.lock().unwrap_or_else(|e| e.into_inner());
    let t = tmp("platform-cross");
    let ctx = t.0.join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::copy("/bin/busybox", ctx.join("busybox")).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM --platform=$BUILDPLATFORM scratch AS build\n\
         COPY busybox /bin/busybox\n\
         RUN [\"/bin/busybox\",\"--install\",\"-s\",\"/bin\"]\n\
         RUN uname -m > /build-arch\n\
         ARG TARGETARCH\n\
         RUN echo \"for $TARGETARCH\" > /target\n\
         FROM scratch\n\
         COPY --from=build /build-arch /target /\n",
    )
    .unwrap();
    let root = t.0.join("root");
    let build = |platform: &str| {
        let out = t.0.join(platform.replace('/', "_"));
        let o = rbuild(
            &root,
            &[
                "build",
                "--progress=plain",
                "--platform",
                platform,
                "-o",
                &format!("type=local,dest={}", out.display()),
                ctx.to_str().unwrap(),
            ],
        );
        let err = ok(&o);
        let read = |f: &str| std::fs::read_to_string(out.join(f)).unwrap();
        (read("build-arch"), read("target"), err)
    };
    let (arch, target, _) = build("linux/amd64");
    assert_eq!(
        (arch.as_str(), target.as_str()),
        ("x86_64\n", "for amd64\n")
    );
    // No arm64 emulator while the arm64 build runs: nothing in it needs one.
    let handler = Path::new("/proc/sys/fs/binfmt_misc/qemu-aarch64");
    if handler.exists() {
        std::fs::write(handler, "-1").unwrap();
    }
    let (arch, target, err) = build("linux/arm64");
    assert_eq!(
        (arch.as_str(), target.as_str()),
        ("x86_64\n", "for arm64\n")
    );
    assert!(!handler.exists(), "no emulator was registered");
    // The build stage's steps up to the one that reads TARGETARCH came
    // from the amd64 build: COPY, the busybox install, uname.
    let cached = err.lines().filter(|l| l.ends_with(" CACHED")).count();
    assert_eq!(cached, 3, "{err}");
    assert!(
        err.contains("RUN echo \"for $TARGETARCH\" > /target"),
        "{err}"
    );
}
