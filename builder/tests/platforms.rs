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
    let ctx = arch_context(&t.0);
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

/// The cross-compiling pattern: a `FROM --platform=$BUILDPLATFORM` stage
/// (host busybox) that writes `uname -m` and then the target's
/// `$TARGETARCH`, copied into the target's image.
fn cross_context(dir: &Path) -> PathBuf {
    let ctx = dir.join("ctx");
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
    ctx
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
    let ctx = cross_context(&t.0);
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

/// A Dockerfile whose image holds the busybox of its target platform and
/// what `uname -m` says there (`/arch`): each platform's RUN steps run for
/// it (arm64's through QEMU).
fn arch_context(dir: &Path) -> PathBuf {
    let ctx = dir.join("ctx");
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
    ctx
}

fn skopeo(args: &[&str]) -> String {
    let o = Command::new("skopeo").args(args).output().unwrap();
    assert!(
        o.status.success(),
        "skopeo {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The architectures of an index's entries, in order.
fn index_arches(index: &serde_json::Value) -> Vec<String> {
    index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["platform"]["architecture"].as_str().unwrap().to_string())
        .collect()
}

/// Builds `ctx` (its RUN writes `uname -m` to `/again`) on `root` for
/// amd64 and arm64 into `out`: each platform's directory says its own.
fn assert_each_platform_ran(root: &Path, ctx: &Path, out: &Path) {
    ok(&rbuild(
        root,
        &[
            "build",
            "-q",
            "--platform",
            "linux/amd64,linux/arm64",
            "-o",
            &format!("type=local,dest={}", out.display()),
            ctx.to_str().unwrap(),
        ],
    ));
    let again = |p: &str| std::fs::read_to_string(out.join(p).join("again")).unwrap();
    assert_eq!(
        (again("linux_arm64"), again("linux_amd64")),
        ("aarch64\n".into(), "x86_64\n".into())
    );
}

/// `--platform linux/amd64,linux/arm64`: one build gives an image index
/// (in the store, an OCI archive and layout read by skopeo and umoci, one
/// directory per platform in a files output); `FROM` it resolves each
/// platform's image; docker's archive is refused; pushed to a registry,
/// the index is pulled back per platform, and a build for both platforms
/// on an empty root takes each platform's image from the registry's index.
#[test]
fn two_platforms_in_one_build_give_an_index() {
    if !is_root() {
        eprintln!("skipped: building (and registering an emulator) needs root");
        return;
    }
    let _binfmt = BINFMT.lock().unwrap_or_else(|e| e.into_inner());
    let t = tmp("platform-multi");
    let ctx = arch_context(&t.0);
    let root = t.0.join("root");
    let (files, archive, layout) = (t.0.join("files"), t.0.join("multi.tar"), t.0.join("layout"));
    let meta = t.0.join("meta.json");
    let err = ok(&rbuild(
        &root,
        &[
            "build",
            "--progress=plain",
            "--platform",
            "linux/amd64,linux/arm64",
            "-t",
            "multi:1",
            "--metadata-file",
            meta.to_str().unwrap(),
            "-o",
            &format!("type=local,dest={}", files.display()),
            "-o",
            &format!("type=oci,dest={}", archive.display()),
            "-o",
            &format!("type=oci,tar=false,dest={}", layout.display()),
            ctx.to_str().unwrap(),
        ],
    ));
    // Steps are named with their platform, as BuildKit names them.
    assert!(
        err.contains("[linux/amd64 2/3] RUN [\"/bin/busybox\"")
            && err.contains("[linux/arm64 3/3] RUN uname -m"),
        "{err}"
    );
    let read = |p: &str| std::fs::read_to_string(files.join(p)).unwrap();
    assert_eq!(read("linux_amd64/arch"), "x86_64\n");
    assert_eq!(read("linux_arm64/arch"), "aarch64\n");
    assert_eq!(read("linux_arm64/targetarch"), "arm64\n");

    // The store: one tag, an index of both.
    let images = String::from_utf8_lossy(&rbuild(&root, &["images"]).stdout).into_owned();
    let line = images.lines().find(|l| l.starts_with("multi:1")).unwrap();
    assert!(line.ends_with("linux/amd64,linux/arm64"), "{images}");
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&meta).unwrap()).unwrap();
    let whole: serde_json::Value =
        serde_json::from_slice(&rbuild(&root, &["inspect", "multi:1"]).stdout).unwrap();
    assert_eq!(meta["containerimage.digest"], whole["Digest"]);
    assert_eq!(
        meta["containerimage.descriptor"]["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
    let arm: serde_json::Value = serde_json::from_slice(
        &rbuild(&root, &["inspect", "--platform", "linux/arm64", "multi:1"]).stdout,
    )
    .unwrap();
    assert_eq!(arm["Config"]["architecture"], "arm64");

    // Real readers: skopeo reads the archive's index and each platform's
    // image; umoci unpacks the layout's arm64 image.
    let arc = format!("oci-archive:{}", archive.display());
    let raw: serde_json::Value =
        serde_json::from_str(&skopeo(&["inspect", "--raw", &arc])).unwrap();
    assert_eq!(index_arches(&raw), ["amd64", "arm64"]);
    let arm: serde_json::Value =
        serde_json::from_str(&skopeo(&["--override-arch", "arm64", "inspect", &arc])).unwrap();
    assert_eq!(arm["Architecture"], "arm64");
    let amd: serde_json::Value = serde_json::from_str(&skopeo(&["inspect", &arc])).unwrap();
    assert_eq!(amd["Architecture"], "amd64");
    let dir_layout = t.0.join("arm-layout");
    skopeo(&[
        "--override-arch",
        "arm64",
        "copy",
        &format!("oci:{}:1", layout.display()),
        &format!("oci:{}:arm", dir_layout.display()),
    ]);
    let bundle = t.0.join("bundle");
    let o = Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:arm", dir_layout.display()))
        .arg(&bundle)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        std::fs::read_to_string(bundle.join("rootfs/arch")).unwrap(),
        "aarch64\n"
    );

    // FROM the index: each platform's build starts from its own image.
    let child = t.0.join("child");
    std::fs::create_dir_all(&child).unwrap();
    std::fs::write(
        child.join("Dockerfile"),
        "FROM multi:1\nRUN cat /arch > /again\n",
    )
    .unwrap();
    assert_each_platform_ran(&root, &child, &t.0.join("child-files"));

    // docker's archive holds one platform's image.
    let o = rbuild(
        &root,
        &[
            "build",
            "-q",
            "--platform",
            "linux/amd64,linux/arm64",
            "-o",
            &format!("type=docker,dest={}", t.0.join("d.tar").display()),
            ctx.to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("type=docker") && err.contains("one platform"),
        "{err}"
    );
    assert!(!t.0.join("d.tar").exists());
    // One platform of the index, saved for docker load.
    let one = t.0.join("arm-docker.tar");
    ok(&rbuild(
        &root,
        &[
            "save",
            "--platform",
            "linux/arm64",
            "--format",
            "docker",
            "-o",
            one.to_str().unwrap(),
            "multi:1",
        ],
    ));
    let arm: serde_json::Value = serde_json::from_str(&skopeo(&[
        "inspect",
        &format!("docker-archive:{}", one.display()),
    ]))
    .unwrap();
    assert_eq!(arm["Architecture"], "arm64");
    // With Docker's media types: a manifest list of Docker manifests.
    let listed = t.0.join("list.tar");
    ok(&rbuild(
        &root,
        &[
            "build",
            "-q",
            "--platform",
            "linux/amd64,linux/arm64",
            "-o",
            &format!("type=oci,dest={},oci-mediatypes=false", listed.display()),
            ctx.to_str().unwrap(),
        ],
    ));
    let raw: serde_json::Value = serde_json::from_str(&skopeo(&[
        "inspect",
        "--raw",
        &format!("oci-archive:{}", listed.display()),
    ]))
    .unwrap();
    assert_eq!(
        raw["mediaType"],
        "application/vnd.docker.distribution.manifest.list.v2+json"
    );
    assert_eq!(index_arches(&raw), ["amd64", "arm64"]);
    assert_eq!(
        raw["manifests"][1]["mediaType"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );

    // Pushed: the registry has the index; pulled back one platform at a
    // time; a build for both on an empty root resolves each from it.
    let reg = common::registry::Registry::start(&t.0.join("reg"), Default::default());
    let name = format!("{}/multi/app:1", reg.addr);
    ok(&rbuild(
        &root,
        &[
            "build",
            "-q",
            "--platform",
            "linux/amd64,linux/arm64",
            "-t",
            &name,
            "--push",
            ctx.to_str().unwrap(),
        ],
    ));
    let raw: serde_json::Value = serde_json::from_str(&skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{name}"),
    ]))
    .unwrap();
    assert_eq!(index_arches(&raw), ["amd64", "arm64"]);
    let fresh = t.0.join("fresh");
    ok(&rbuild(
        &fresh,
        &["pull", "--platform", "linux/arm64", &name],
    ));
    let whole: serde_json::Value =
        serde_json::from_slice(&rbuild(&fresh, &["inspect", &name]).stdout).unwrap();
    let local: Vec<(String, bool)> = whole["Platforms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["Platform"].as_str().unwrap().to_string(),
                p["Local"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        local,
        [
            ("linux/amd64".to_string(), false),
            ("linux/arm64".to_string(), true)
        ]
    );
    // Saved or pushed now, the tag gives the image the store holds (the
    // index's other platform is left out, with a warning).
    let saved = t.0.join("arm.tar");
    let o = rbuild(
        &fresh,
        &[
            "save",
            "--format",
            "oci",
            "-o",
            saved.to_str().unwrap(),
            &name,
        ],
    );
    let err = ok(&o);
    assert!(
        err.contains("WARNING") && err.contains("linux/amd64"),
        "{err}"
    );
    let arc = format!("oci-archive:{}", saved.display());
    let raw: serde_json::Value =
        serde_json::from_str(&skopeo(&["inspect", "--raw", &arc])).unwrap();
    assert_eq!(
        raw["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    let arm: serde_json::Value = serde_json::from_str(&skopeo(&["inspect", &arc])).unwrap();
    assert_eq!(arm["Architecture"], "arm64");
    // One platform of a whole index, pushed alone.
    let amd_only = format!("{}/multi/amd-only:1", reg.addr);
    ok(&rbuild(&root, &["tag", "multi:1", &amd_only]));
    ok(&rbuild(
        &root,
        &["push", "--platform", "linux/amd64", &amd_only],
    ));
    let raw: serde_json::Value = serde_json::from_str(&skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{amd_only}"),
    ]))
    .unwrap();
    assert_eq!(
        raw["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    let copy = format!("{}/multi/arm-only:1", reg.addr);
    ok(&rbuild(&fresh, &["tag", &name, &copy]));
    ok(&rbuild(&fresh, &["push", &copy]));
    let arm: serde_json::Value = serde_json::from_str(&skopeo(&[
        "inspect",
        "--tls-verify=false",
        &format!("docker://{copy}"),
    ]))
    .unwrap();
    assert_eq!(arm["Architecture"], "arm64");
    ok(&rbuild(&fresh, &["pull", &name]));
    let amd: serde_json::Value = serde_json::from_slice(
        &rbuild(&fresh, &["inspect", "--platform", "linux/amd64", &name]).stdout,
    )
    .unwrap();
    assert_eq!(amd["Config"]["architecture"], "amd64");

    let empty = t.0.join("empty");
    std::fs::write(
        child.join("Dockerfile"),
        format!("FROM {name}\nRUN cat /arch > /again\n"),
    )
    .unwrap();
    assert_each_platform_ran(&empty, &child, &t.0.join("from-registry"));
}

/// The cross-compiling pattern in one build for two platforms: the
/// `FROM --platform=$BUILDPLATFORM` stage's steps that do not read the
/// target run once (the arm64 build finds them in the cache), the step
/// that reads it runs for each, and nothing needs an emulator.
#[test]
fn a_build_platform_stage_runs_once_for_two_platforms() {
    if !is_root() {
        eprintln!("skipped: building needs root");
        return;
    }
    let _binfmt = BINFMT.lock().unwrap_or_else(|e| e.into_inner());
    let t = tmp("platform-cross-multi");
    let ctx = cross_context(&t.0);
    let handler = Path::new("/proc/sys/fs/binfmt_misc/qemu-aarch64");
    if handler.exists() {
        std::fs::write(handler, "-1").unwrap();
    }
    let out = t.0.join("out");
    let err = ok(&rbuild(
        &t.0.join("root"),
        &[
            "build",
            "--progress=plain",
            "--platform",
            "linux/amd64,linux/arm64",
            "-o",
            &format!("type=local,dest={}", out.display()),
            ctx.to_str().unwrap(),
        ],
    ));
    assert!(!handler.exists(), "no emulator was registered");
    let read = |p: &str| std::fs::read_to_string(out.join(p)).unwrap();
    assert_eq!(read("linux_amd64/target"), "for amd64\n");
    assert_eq!(read("linux_arm64/target"), "for arm64\n");
    assert_eq!(read("linux_arm64/build-arch"), "x86_64\n");
    // The build stage is named for the platform it runs on and the one it
    // builds for; its three target-free steps ran once.
    assert!(
        err.contains("[linux/amd64->arm64 build 4/4] RUN echo"),
        "{err}"
    );
    let cached: Vec<&str> = err.lines().filter(|l| l.ends_with(" CACHED")).collect();
    assert_eq!(cached.len(), 3, "{err}");
    let runs = err
        .lines()
        .filter(|l| l.contains("RUN echo \"for $TARGETARCH\"") && !l.contains("CACHED"))
        .filter(|l| {
            l.split_whitespace()
                .nth(1)
                .is_some_and(|w| w.starts_with('['))
        })
        .count();
    assert_eq!(runs, 2, "{err}");
}

/// A step that fails in one platform's build stops the others' running
/// steps: the build ends at once with that step's error (not another
/// platform's "canceled").
#[test]
fn a_failure_in_one_platform_stops_the_others() {
    if !is_root() {
        eprintln!("skipped: building needs root");
        return;
    }
    let _binfmt = BINFMT.lock().unwrap_or_else(|e| e.into_inner());
    let t = tmp("platform-fail");
    let ctx = arch_context(&t.0);
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM scratch\nARG TARGETARCH\nCOPY busybox-$TARGETARCH /bin/busybox\n\
         RUN [\"/bin/busybox\",\"--install\",\"-s\",\"/bin\"]\n\
         RUN if [ \"$TARGETARCH\" = arm64 ]; then exit 3; else sleep 30; fi\n",
    )
    .unwrap();
    let started = std::time::Instant::now();
    let o = rbuild(
        &t.0.join("root"),
        &[
            "build",
            "--progress=plain",
            "--platform",
            "linux/amd64,linux/arm64",
            ctx.to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "the amd64 sleep was not stopped"
    );
    let err = String::from_utf8_lossy(&o.stderr);
    let last = err.lines().rfind(|l| l.starts_with("error:")).unwrap_or("");
    assert!(
        last.contains("Dockerfile:5") && !last.contains("canceled"),
        "{err}"
    );
    assert!(err.contains("exit code: 3"), "{err}");
}

/// `--build-arg BUILDKIT_MULTI_PLATFORM=1` with one platform: an index of
/// one image (skopeo reads it as an index), steps named by platform, a
/// files output in the platform's directory, as BuildKit's frontend does;
/// a value that is no boolean, or turning it off for two platforms, fails.
#[test]
fn the_multi_platform_build_arg_gives_an_index_of_one() {
    if !is_root() {
        eprintln!("skipped: building needs root");
        return;
    }
    let t = tmp("multi-platform-arg");
    let ctx = t.0.join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::copy("/bin/busybox", ctx.join("busybox")).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"uname\", \"-m\"]\n",
    )
    .unwrap();
    let root = t.0.join("root");
    let layout = t.0.join("layout");
    let files = t.0.join("files");
    let arg = ["--build-arg", "BUILDKIT_MULTI_PLATFORM=1"];
    let mut args = vec!["build", "--progress", "plain", "-t", "one:1"];
    args.extend(arg);
    let oci = format!("type=oci,dest={},tar=false", layout.display());
    let local = format!("type=local,dest={}", files.display());
    args.extend(["-o", &oci, "-o", &local, ctx.to_str().unwrap()]);
    let log = ok(&rbuild(&root, &args));
    assert!(log.contains("[linux/amd64 2/2] RUN"), "{log}");
    assert!(log.contains("writing image index sha256:"), "{log}");
    let raw = skopeo(&["inspect", "--raw", &format!("oci:{}", layout.display())]);
    let index: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(index_arches(&index), ["amd64"], "{raw}");
    assert!(files.join("linux_amd64/bin/busybox").is_file());
    let inspect = rbuild(&root, &["inspect", "one:1"]);
    let v: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    assert!(v.to_string().contains("\"linux/amd64\""), "{v}");

    for (value, platforms, want) in [
        (
            "yes",
            "linux/amd64",
            "invalid boolean value for multi-platform",
        ),
        (
            "0",
            "linux/amd64,linux/arm64",
            "returning multiple target platforms is not allowed",
        ),
    ] {
        let set = format!("BUILDKIT_MULTI_PLATFORM={value}");
        let o = rbuild(
            &root,
            &[
                "build",
                "--build-arg",
                &set,
                "--platform",
                platforms,
                ctx.to_str().unwrap(),
            ],
        );
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(
            err.contains(&format!("error: --build-arg {set}: ")) && err.contains(want),
            "{err}"
        );
    }
}

/// `--annotation` as buildx passes it and BuildKit's image writer places
/// it: on the manifest (no type; a `[platform]` one only on that
/// platform's), on its descriptor, on the index and on the index's
/// descriptor; skopeo reads them from the OCI layout. BuildKit's refusals:
/// index annotations without an index, a platform not built, descriptor
/// annotations with Docker media types.
#[test]
fn annotations_go_where_buildkit_puts_them() {
    let t = tmp("annotations");
    let ctx = t.0.join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(ctx.join("f"), "f").unwrap();
    std::fs::write(ctx.join("Dockerfile"), "FROM scratch\nCOPY f /f\n").unwrap();
    let root = t.0.join("root");
    let build = |extra: &[&str], layout: &Path| {
        let oci = format!("type=oci,dest={},tar=false,name=ann:1", layout.display());
        let mut args = vec!["build", "-q", "-o", &oci];
        args.extend(extra);
        args.push(ctx.to_str().unwrap());
        rbuild(&root, &args)
    };
    let json = |s: &str| serde_json::from_str::<serde_json::Value>(s).unwrap();

    let one = t.0.join("one");
    ok(&build(
        &[
            "--annotation",
            "org.opencontainers.image.title=app",
            "--annotation",
            "manifest-descriptor:d=1",
        ],
        &one,
    ));
    let m = json(&skopeo(&[
        "inspect",
        "--raw",
        &format!("oci:{}:1", one.display()),
    ]));
    assert_eq!(m["annotations"]["org.opencontainers.image.title"], "app");
    let top = json(&std::fs::read_to_string(one.join("index.json")).unwrap());
    assert_eq!(top["manifests"][0]["annotations"]["d"], "1", "{top}");

    let two = t.0.join("two");
    ok(&build(
        &[
            "--platform",
            "linux/amd64,linux/arm64",
            "--annotation",
            "index,manifest:desc=both",
            "--annotation",
            "manifest[linux/arm64]:only=arm",
            "--annotation",
            "manifest-descriptor[linux/amd64]:md=amd",
            "--annotation",
            "index-descriptor:top=1",
        ],
        &two,
    ));
    let top = json(&std::fs::read_to_string(two.join("index.json")).unwrap());
    assert_eq!(top["manifests"][0]["annotations"]["top"], "1", "{top}");
    let index = json(&skopeo(&[
        "inspect",
        "--raw",
        &format!("oci:{}:1", two.display()),
    ]));
    assert_eq!(index["annotations"]["desc"], "both", "{index}");
    assert_eq!(index_arches(&index), ["amd64", "arm64"]);
    assert_eq!(index["manifests"][0]["annotations"]["md"], "amd", "{index}");
    assert!(index["manifests"][1]["annotations"].is_null(), "{index}");
    for (arch, only) in [("amd64", None), ("arm64", Some("arm"))] {
        let m = json(&skopeo(&[
            "--override-arch",
            arch,
            "inspect",
            "--raw",
            &format!("oci:{}:1", two.display()),
        ]));
        let m = if m["manifests"].is_array() {
            // skopeo --raw gives the index; read the entry's blob.
            let i = if arch == "amd64" { 0 } else { 1 };
            let digest = m["manifests"][i]["digest"].as_str().unwrap().to_string();
            json(
                &std::fs::read_to_string(
                    two.join("blobs/sha256")
                        .join(digest.trim_start_matches("sha256:")),
                )
                .unwrap(),
            )
        } else {
            m
        };
        assert_eq!(m["annotations"]["desc"], "both", "{arch}: {m}");
        assert_eq!(m["annotations"]["only"].as_str(), only, "{arch}: {m}");
    }

    for (extra, want) in [
        (
            vec!["--annotation", "index:k=v"],
            "index annotations not supported for single platform export",
        ),
        (
            vec!["--annotation", "manifest[linux/arm64]:k=v"],
            "no platform linux/arm64 found in source",
        ),
        (
            vec!["--annotation", "blob:k=v"],
            "unknown annotation type \"blob\"",
        ),
    ] {
        let o = build(&extra, &t.0.join("refused"));
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(err.contains(want), "{err}");
        assert!(!t.0.join("refused").exists());
    }
}
