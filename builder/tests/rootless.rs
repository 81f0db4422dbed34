//! An ordinary user's build: rbuild starts itself in a user namespace of
//! its own (the user's subordinate ids mapped with newuidmap/newgidmap),
//! RUN steps run there (devices bound from the host), owners other than
//! the user's are kept in the layers, the image is the one root builds,
//! the state is the user's and exported files belong to the user. Without
//! subordinate ids the build works with a warning.

mod common;

use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::process::{Command, Output};

use common::users::{as_user, as_user_env, hand_over, user};
use common::{is_root, rbuild, tmp};

const DOCKERFILE: &str = "FROM scratch
COPY busybox /bin/busybox
RUN [\"/bin/busybox\",\"--install\",\"-s\",\"/bin\"]
RUN mkdir -p /a && echo x > /a/f && echo y > /gone
COPY --chown=1000:1000 Dockerfile /owned
RUN rm /gone && chown 33:33 /a/f && ls -ln /a /owned > /ls
RUN mkdir -p /d/sub /e && echo old > /d/sub/old && echo e > /e/f
RUN rm -rf /d/sub && mkdir /d/sub && echo new > /d/sub/new && mv /e /e2
";

fn ok(o: &Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// The names in `dir`.
fn names_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// A directory the user owns, with the binary and a context in it.
fn workspace(t: &Path, uid: u32) -> (std::path::PathBuf, std::path::PathBuf) {
    let ctx = t.join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::copy("/bin/busybox", ctx.join("busybox")).unwrap();
    std::fs::write(ctx.join("Dockerfile"), DOCKERFILE).unwrap();
    (hand_over(t, uid), ctx)
}

#[test]
fn an_ordinary_user_builds_with_the_owners_kept() {
    if !is_root() {
        eprintln!("skipped: making the test's users needs root");
        return;
    }
    let name = "rbuild-rootless";
    let uid = user(name, true);
    let t = tmp("rootless");
    let (exe, ctx) = workspace(&t.0, uid);
    let home = t.0.join("home");
    let image = [
        "build",
        "-q",
        "--output",
        "type=image,name=rootless:1,rewrite-timestamp=true",
        ctx.to_str().unwrap(),
    ];
    let id = ok(&as_user(name, &exe, &home, &image));
    // The state is the user's own.
    let db = home.join(".local/share/rbuild/index.db");
    assert_eq!(std::fs::metadata(&db).unwrap().uid(), uid);
    // Root builds the same image.
    let o = Command::new(env!("CARGO_BIN_EXE_rbuild"))
        .arg("--root")
        .arg(t.0.join("root"))
        .args(image)
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .output()
        .unwrap();
    assert_eq!(ok(&o), id);

    // The layers keep the owners (1000 from COPY --chown, 33 from chown);
    // the exported files are the user's.
    let out = t.0.join("out");
    ok(&as_user(
        name,
        &exe,
        &home,
        &[
            "build",
            "-q",
            "-o",
            &format!("type=local,dest={}", out.display()),
            ctx.to_str().unwrap(),
        ],
    ));
    let ls = std::fs::read_to_string(out.join("ls")).unwrap();
    assert!(ls.contains(" 1000     1000 "), "{ls}");
    assert!(ls.contains(" 33       33 "), "{ls}");
    for f in ["ls", "owned", "a/f", "bin/busybox"] {
        assert_eq!(
            std::fs::symlink_metadata(out.join(f)).unwrap().uid(),
            uid,
            "{f}"
        );
    }
    assert!(!out.join("gone").exists());
    // A directory made again hides what was below (an opaque directory),
    // a directory of a lower layer moves (copied up where overlayfs in a
    // user namespace refuses the rename).
    let names = |d: &str| names_in(&out.join(d));
    assert_eq!(names("d/sub"), ["new"]);
    assert_eq!(names("e2"), ["f"]);
    assert!(!out.join("e").exists());
    // Overlay snapshots as root's are (userxattr in the user namespace),
    // not copies.
    let backend = |root: &Path| std::fs::read_to_string(root.join("snapshots/backend")).unwrap();
    assert_eq!(
        backend(&home.join(".local/share/rbuild")),
        backend(&t.0.join("root"))
    );
    // What can't work for an ordinary user says so.
    let o = as_user(
        name,
        &exe,
        &home,
        &[
            "build",
            "--allow",
            "security.insecure",
            ctx.to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("security.insecure needs root"), "{err}");
    let _ = rbuild(&t.0.join("root"), &["prune", "--all"]);
}

#[test]
fn without_subordinate_ids_the_build_warns_and_works() {
    if !is_root() {
        eprintln!("skipped: making the test's users needs root");
        return;
    }
    let name = "rbuild-single";
    let uid = user(name, false);
    let t = tmp("rootless-single");
    let (exe, ctx) = workspace(&t.0, uid);
    // Only the user's own ids exist in its namespace: no other owners.
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\",\"--install\",\"-s\",\"/bin\"]\nRUN id -u > /uid\n",
    )
    .unwrap();
    let out = t.0.join("out");
    let o = as_user(
        name,
        &exe,
        &t.0.join("home"),
        &[
            "build",
            "-q",
            "-o",
            &format!("type=local,dest={}", out.display()),
            ctx.to_str().unwrap(),
        ],
    );
    ok(&o);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("WARNING: no subordinate ids"), "{err}");
    assert_eq!(std::fs::read_to_string(out.join("uid")).unwrap(), "0\n");
    assert_eq!(std::fs::metadata(out.join("uid")).unwrap().uid(), uid);
}

/// Where the kernel's overlayfs can't be mounted in a user namespace
/// (before Linux 5.11), fuse-overlayfs mounts the same snapshots: forced
/// here, the user's build gives root's image (whiteouts, an opaque
/// directory, a moved directory, owners) and its files.
#[test]
fn fuse_overlayfs_snapshots_give_roots_image() {
    if !is_root() {
        eprintln!("skipped: making the test's users needs root");
        return;
    }
    use std::os::unix::fs::PermissionsExt as _;
    // Debian's udev rule makes /dev/fuse 0666; this machine's may be 0600.
    let fuse = Path::new("/dev/fuse");
    let mode = std::fs::metadata(fuse).unwrap().permissions().mode();
    if mode & 0o006 != 0o006 {
        std::fs::set_permissions(fuse, std::fs::Permissions::from_mode(0o666)).unwrap();
    }
    let name = "rbuild-rootless";
    let uid = user(name, true);
    let t = tmp("rootless-fuse");
    let (exe, ctx) = workspace(&t.0, uid);
    let home = t.0.join("home");
    let out = t.0.join("out");
    let image = [
        "build",
        "-q",
        "--output",
        "type=image,name=fuse:1,rewrite-timestamp=true",
        "-o",
        &format!("type=local,dest={}", out.display()),
        ctx.to_str().unwrap(),
    ];
    let env = [("RBUILD_SNAPSHOTTER", "fuse-overlayfs")];
    let id = ok(&as_user_env(name, &exe, &home, &image, &env));
    let store = home.join(".local/share/rbuild");
    assert_eq!(
        std::fs::read_to_string(store.join("snapshots/backend")).unwrap(),
        "fuse-overlayfs"
    );
    let o = Command::new(env!("CARGO_BIN_EXE_rbuild"))
        .arg("--root")
        .arg(t.0.join("root"))
        .args(&image[..4])
        .arg(ctx.to_str().unwrap())
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .output()
        .unwrap();
    assert_eq!(ok(&o), id);
    let ls = std::fs::read_to_string(out.join("ls")).unwrap();
    assert!(
        ls.contains(" 1000     1000 ") && ls.contains(" 33       33 "),
        "{ls}"
    );
    let names = |d: &str| names_in(&out.join(d));
    assert_eq!(names("d/sub"), ["new"]);
    assert_eq!(names("e2"), ["f"]);
    assert!(!out.join("gone").exists() && !out.join("e").exists());
    // A rebuild on the same store gives the same image.
    assert_eq!(ok(&as_user_env(name, &exe, &home, &image, &env)), id);
}
