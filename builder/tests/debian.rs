//! The official Debian image's recipe on a real root filesystem:
//! `debootstrap --variant=minbase bookworm` from Debian's mirror, tarred,
//! and `FROM scratch` / `ADD rootfs.tar /` / `CMD ["bash"]`. The image's
//! layer, unpacked by umoci, must hold the source tree exactly (every path,
//! type, mode, owner, size, mtime, link target, device number and hard
//! link), and a step on top runs Debian's own tools. Needs root,
//! debootstrap, umoci and the network to deb.debian.org (.ci/run installs
//! the packages).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::registry::{Options, Registry};
use common::{is_root, rbuild, tmp};

/// Each path's line of what must survive.
type Entries = BTreeMap<Vec<u8>, String>;

/// The names of each multiply-linked file.
type LinkGroups = BTreeSet<Vec<Vec<u8>>>;

/// Every entry under `root` as a line of what must survive, and the groups
/// of names of each multiply-linked file.
fn describe(root: &Path) -> (Entries, LinkGroups) {
    let mut entries = BTreeMap::new();
    let mut links: BTreeMap<(u64, u64), Vec<Vec<u8>>> = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let path = e.unwrap().path();
            let m = std::fs::symlink_metadata(&path).unwrap();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .as_os_str()
                .as_bytes()
                .to_vec();
            let ft = m.file_type();
            let (kind, extra) = if ft.is_dir() {
                stack.push(path.clone());
                ('d', String::new())
            } else if ft.is_symlink() {
                let target = std::fs::read_link(&path).unwrap();
                (
                    'l',
                    String::from_utf8_lossy(target.as_os_str().as_bytes()).into_owned(),
                )
            } else if ft.is_char_device() || ft.is_block_device() {
                let kind = if ft.is_char_device() { 'c' } else { 'b' };
                (
                    kind,
                    format!("{}:{}", libc::major(m.rdev()), libc::minor(m.rdev())),
                )
            } else if ft.is_fifo() {
                ('p', String::new())
            } else {
                if m.nlink() > 1 {
                    links
                        .entry((m.dev(), m.ino()))
                        .or_default()
                        .push(rel.clone());
                }
                ('f', m.len().to_string())
            };
            // A directory's mtime changes as entries are made in it; files
            // keep the archive's.
            let mtime = if ft.is_dir() { 0 } else { m.mtime() };
            entries.insert(
                rel,
                format!(
                    "{kind} {:o} {}:{} {mtime} {extra}",
                    m.mode() & 0o7777,
                    m.uid(),
                    m.gid()
                ),
            );
        }
    }
    let groups = links
        .into_values()
        .map(|mut names| {
            names.sort();
            names
        })
        .collect();
    (entries, groups)
}

/// A minbase bookworm tree, made once per target directory (debootstrap
/// takes about half a minute).
fn debootstrap() -> PathBuf {
    // The tests of this file share one tree: one makes it, the others wait.
    static ONCE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = ONCE.lock().unwrap_or_else(|e| e.into_inner());
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("debootstrap-bookworm-minbase");
    let done = dir.with_extension("done");
    if done.exists() {
        return dir.join("rootfs");
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let out = Command::new("debootstrap")
        .args(["--variant=minbase", "bookworm"])
        .arg(dir.join("rootfs"))
        .arg("http://deb.debian.org/debian")
        .output()
        .expect("debootstrap is installed (.ci/run)");
    assert!(
        out.status.success(),
        "debootstrap: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(&done, "").unwrap();
    dir.join("rootfs")
}

/// `rootfs` as a tar archive at `dest` (what the official recipe ADDs).
fn tar(rootfs: &Path, dest: &Path) {
    let st = Command::new("tar")
        .arg("-C")
        .arg(rootfs)
        .arg("-cf")
        .arg(dest)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
}

/// `rootfs` as the official image's recipe builds it, tagged `name` in
/// the state root `root`.
fn build_debian(rootfs: &Path, dir: &Path, root: &Path, name: &str) {
    let ctx = dir.join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    tar(rootfs, &ctx.join("rootfs.tar"));
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM scratch\nADD rootfs.tar /\nCMD [\"bash\"]\n",
    )
    .unwrap();
    let o = rbuild(root, &["build", "-q", "-t", name, ctx.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn debian_rootfs_image_is_exact() {
    if !is_root() {
        eprintln!("skipped: debootstrap and building need root");
        return;
    }
    let rootfs = debootstrap();
    let t = tmp("debian");
    let root = t.0.join("state");
    build_debian(&rootfs, &t.0, &root, "debian:rbuild");

    // umoci reads the image from the store and unpacks its layer.
    let bundle = t.0.join("bundle");
    let out = Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:debian:rbuild", root.join("content").display()))
        .arg(&bundle)
        .output()
        .expect("umoci is installed (.ci/run)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (want, want_links) = describe(&rootfs);
    let (got, got_links) = describe(&bundle.join("rootfs"));
    assert!(want.len() > 5000, "a real tree: {} entries", want.len());
    let differ: Vec<String> = want
        .iter()
        .filter(|(p, d)| got.get(*p) != Some(d))
        .map(|(p, d)| format!("{}: {d} -> {:?}", String::from_utf8_lossy(p), got.get(p)))
        .chain(
            got.keys()
                .filter(|p| !want.contains_key(*p))
                .map(|p| format!("{}: extra", String::from_utf8_lossy(p))),
        )
        .take(20)
        .collect();
    assert!(differ.is_empty(), "{}", differ.join("\n"));
    assert_eq!(want_links, got_links, "hard links");

    // Debian's own tools run on it.
    let next = t.0.join("next");
    std::fs::create_dir_all(&next).unwrap();
    std::fs::write(
        next.join("Dockerfile"),
        "FROM debian:rbuild\nRUN dpkg -l | grep -c '^ii' > /packages && dpkg --verify dpkg coreutils > /verify 2>&1 && id -un > /user\n",
    )
    .unwrap();
    let out_dir = t.0.join("out");
    let o = rbuild(
        &root,
        &[
            "build",
            "-q",
            "-o",
            &format!("type=local,dest={}", out_dir.display()),
            next.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let packages: usize = std::fs::read_to_string(out_dir.join("packages"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(packages > 50, "{packages} packages installed");
    assert_eq!(std::fs::read_to_string(out_dir.join("verify")).unwrap(), "");
    assert_eq!(
        std::fs::read_to_string(out_dir.join("user")).unwrap(),
        "root\n"
    );
}

/// The chain a user runs: a Debian base in a registry, reached as
/// `debian:bookworm` through a docker.io mirror; docker-library's
/// buildpack-deps `curl` Dockerfile built on it (apt-get from Debian's
/// mirror), pushed, and read back by skopeo.
#[test]
fn buildpack_deps_curl_from_a_registry_base() {
    if !is_root() {
        eprintln!("skipped: debootstrap and building need root");
        return;
    }
    let rootfs = debootstrap();
    let t = tmp("debian-chain");
    let reg = Registry::start(&t.0.join("reg"), Options::default());
    let root = t.0.join("state");
    let base = format!("{}/library/debian:bookworm", reg.addr);
    build_debian(&rootfs, &t.0, &root, &base);
    let o = rbuild(&root, &["push", &base]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let fresh = t.0.join("fresh");
    std::fs::create_dir_all(&fresh).unwrap();
    std::fs::write(
        fresh.join("config.toml"),
        format!("[registry.\"docker.io\"]\nmirrors = [\"{}\"]\n", reg.addr),
    )
    .unwrap();
    let app = t.0.join("app");
    std::fs::create_dir_all(&app).unwrap();
    let dockerfile = Path::new(env!("CARGO_MANIFEST_DIR")).join(
        "../../shared/conformance/real-world/docker-library__buildpack-deps__debian__bookworm__curl__Dockerfile.Dockerfile",
    );
    let conformance = std::env::var_os("RBUILD_CONFORMANCE")
        .map(PathBuf::from)
        .map(|d| {
            d.join("real-world/docker-library__buildpack-deps__debian__bookworm__curl__Dockerfile.Dockerfile")
        })
        .unwrap_or(dockerfile);
    std::fs::copy(&conformance, app.join("Dockerfile"))
        .unwrap_or_else(|e| panic!("{}: {e}", conformance.display()));
    let name = format!("{}/app/buildpack-deps:bookworm-curl", reg.addr);
    let o = rbuild(
        &fresh,
        &["build", "-q", "--push", "-t", &name, app.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let layout = t.0.join("pulled");
    let o = Command::new("skopeo")
        .args(["copy", "--src-tls-verify=false"])
        .arg(format!("docker://{name}"))
        .arg(format!("oci:{}:x", layout.display()))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let bundle = t.0.join("bundle");
    let o = Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:x", layout.display()))
        .arg(&bundle)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for tool in [
        "usr/bin/curl",
        "usr/bin/wget",
        "usr/bin/gpg",
        "usr/bin/sq",
        "etc/ssl/certs/ca-certificates.crt",
    ] {
        assert!(bundle.join("rootfs").join(tool).exists(), "{tool}");
    }
    // The base layer is the registry's, shared, not a copy.
    let layers = |n: &str| -> Vec<serde_json::Value> {
        let o = Command::new("skopeo")
            .args(["inspect", "--tls-verify=false"])
            .arg(format!("docker://{n}"))
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v["Layers"].as_array().unwrap().clone()
    };
    let (base_layers, app_layers) = (layers(&base), layers(&name));
    assert_eq!(app_layers.len(), base_layers.len() + 1);
    assert_eq!(app_layers[0], base_layers[0]);
}

/// An ordinary user builds the official recipe itself (its own store, in
/// its user namespace) and installs a package with apt-get on it: `_apt`
/// keeps its own files, a cache mount and a secret work, the secret is in
/// no exported file, `USER app` then `RUN sudo` works (setuid programs gain
/// their owner, as in BuildKit), and skopeo reads the OCI archive the user
/// exports.
#[test]
fn an_ordinary_user_installs_a_package_on_debian() {
    if !is_root() {
        eprintln!("skipped: making the test's user needs root");
        return;
    }
    let rootfs = debootstrap();
    let name = "rbuild-rootless";
    let uid = common::users::user(name, true);
    let t = tmp("debian-rootless");
    let ctx = t.0.join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    tar(&rootfs, &ctx.join("rootfs.tar"));
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM scratch\nADD rootfs.tar /\n\
         RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends hello sudo >/dev/null \
         && stat -c '%u %U' /var/cache/apt/archives/partial > /partial && hello > /hello \
         && useradd -m app && echo 'app ALL=(ALL) NOPASSWD:ALL' > /etc/sudoers.d/app\n\
         RUN --mount=type=cache,target=/cache echo kept > /cache/x && cat /cache/x > /cached\n\
         RUN --mount=type=secret,id=tok test \"$(cat /run/secrets/tok)\" = s3cret-value && echo ok > /secret\n\
         USER app\nRUN sudo sh -c 'id -u > /sudo'\n",
    )
    .unwrap();
    std::fs::write(t.0.join("tok"), "s3cret-value").unwrap();
    let exe = common::users::hand_over(&t.0, uid);
    let home = t.0.join("home");
    let secret = format!("id=tok,src={}", t.0.join("tok").display());
    // The user's build with output `output`; it must succeed.
    let build = |output: String| {
        let args = [
            "build",
            "-q",
            "--secret",
            &secret,
            "-o",
            &output,
            ctx.to_str().unwrap(),
        ];
        let o = common::users::as_user(name, &exe, &home, &args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    let out = t.0.join("out");
    build(format!("type=local,dest={}", out.display()));
    let read = |f: &str| std::fs::read_to_string(out.join(f)).unwrap();
    assert_eq!(read("partial"), "42 _apt\n");
    assert_eq!(read("hello"), "Hello, world!\n");
    assert_eq!(read("cached"), "kept\n");
    assert_eq!(read("secret"), "ok\n");
    assert_eq!(read("sudo"), "0\n");
    let grep = Command::new("grep")
        .args(["-r", "-l", "s3cret-value"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        grep.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&grep.stdout)
    );

    // An OCI archive of the image, read by skopeo.
    let archive = t.0.join("image.tar");
    build(format!("type=oci,dest={}", archive.display()));
    // And as an OCI layout directory, unpacked by umoci: _apt's directory
    // is still _apt's in the image.
    let layout = t.0.join("layout");
    build(format!(
        "type=oci,dest={},tar=false,name=deb:1",
        layout.display()
    ));
    let unpacked = t.0.join("unpacked");
    let u = Command::new("umoci")
        .args(["raw", "unpack", "--image"])
        .arg(format!("{}:1", layout.display()))
        .arg(&unpacked)
        .output()
        .expect("umoci is installed (.ci/run)");
    assert!(u.status.success(), "{}", String::from_utf8_lossy(&u.stderr));
    let partial = std::fs::metadata(unpacked.join("var/cache/apt/archives/partial")).unwrap();
    assert_eq!((partial.uid(), partial.mode() & 0o7777), (42, 0o700));
    let inspect = Command::new("skopeo")
        .arg("inspect")
        .arg(format!("oci-archive:{}", archive.display()))
        .output()
        .unwrap();
    assert!(
        inspect.status.success(),
        "{}",
        String::from_utf8_lossy(&inspect.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    assert_eq!(v["Layers"].as_array().unwrap().len(), 5);
}
