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

#[test]
fn debian_rootfs_image_is_exact() {
    if !is_root() {
        eprintln!("skipped: debootstrap and building need root");
        return;
    }
    let rootfs = debootstrap();
    let t = tmp("debian");
    let ctx = t.0.join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    let st = Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .arg("-cf")
        .arg(ctx.join("rootfs.tar"))
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM scratch\nADD rootfs.tar /\nCMD [\"bash\"]\n",
    )
    .unwrap();
    let root = t.0.join("state");
    let o = rbuild(
        &root,
        &["build", "-q", "-t", "debian:rbuild", ctx.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

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
