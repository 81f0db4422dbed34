//! Layers end to end: write a tree with every kind of entry, unpack it, and
//! compare; determinism; overlay and compare diffs with whiteouts; hostile
//! archives crafted byte by byte.

mod common;

use common::tree::{describe, mknod};
use common::{Tmp, is_root};
use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::Path;

use cache::blob::BlobStore;
use cache::layer::{
    Compression, DiffSource, LayerError, LayerOptions, UnpackOptions, unpack, write_layer,
};

/// A tree with regular files, dirs, symlinks, hard links, a fifo, modes with
/// setuid/sticky, owners, file capabilities, a long name and a non-UTF-8
/// name.
fn make_tree(root: &Path) {
    fs::create_dir_all(root.join("usr/bin")).unwrap();
    fs::create_dir_all(root.join("tmp")).unwrap();
    fs::write(root.join("usr/bin/tool"), b"#!/bin/sh\necho tool\n").unwrap();
    fs::set_permissions(
        root.join("usr/bin/tool"),
        fs::Permissions::from_mode(0o4755),
    )
    .unwrap();
    fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
    fs::write(root.join("data.bin"), vec![7u8; 300_000]).unwrap();
    fs::hard_link(root.join("data.bin"), root.join("usr/data-link.bin")).unwrap();
    symlink("usr/bin/tool", root.join("tool-link")).unwrap();
    symlink("/nonexistent/absolute", root.join("dangling")).unwrap();
    let long = "d".repeat(120);
    fs::create_dir_all(root.join(&long)).unwrap();
    fs::write(root.join(&long).join("f".repeat(150)), b"long").unwrap();
    fs::write(root.join(OsStr::from_bytes(b"latin1-\xe9t\xe9")), b"bytes").unwrap();
    let fifo = std::ffi::CString::new(root.join("pipe").as_os_str().as_bytes()).unwrap();
    // SAFETY: valid path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    if is_root() {
        std::os::unix::fs::chown(root.join("data.bin"), Some(1000), Some(1001)).unwrap();
        mknod(&root.join("null"), libc::S_IFCHR, 1, 3);
        xattr::set(
            root.join("usr/bin/tool"),
            "security.capability",
            &[1, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        )
        .unwrap();
        // chown/setxattr cleared setuid: set it again.
        fs::set_permissions(
            root.join("usr/bin/tool"),
            fs::Permissions::from_mode(0o4755),
        )
        .unwrap();
    }
}

#[test]
fn full_tree_round_trips_with_every_compression() {
    let t = Tmp::new("layers", "roundtrip");
    let src = t.0.join("src");
    make_tree(&src);
    let store = BlobStore::open(&t.0.join("store")).unwrap();
    let mut diff_ids = Vec::new();
    for compression in [
        Compression::Uncompressed,
        Compression::Gzip,
        Compression::Zstd,
    ] {
        let mut digests = Vec::new();
        for threads in [1, 2, 3] {
            let options = LayerOptions {
                compression,
                threads,
                ..LayerOptions::default()
            };
            let layer = write_layer(&store, &DiffSource::Full { root: &src }, &options).unwrap();
            diff_ids.push(layer.diff_id.clone());
            let dest = t.0.join(format!("out-{compression:?}-{threads}"));
            let reader = store
                .open_verified(&layer.descriptor.digest.parse().unwrap())
                .unwrap();
            unpack(reader, &dest, &UnpackOptions::default()).unwrap();
            assert_eq!(
                describe(&src),
                describe(&dest),
                "{compression:?} threads={threads}"
            );
            // The same tree gives the same blob again.
            let again = write_layer(&store, &DiffSource::Full { root: &src }, &options).unwrap();
            assert_eq!(
                again, layer,
                "{compression:?} threads={threads} is not deterministic"
            );
            digests.push(layer.descriptor.digest);
        }
        // Nor does the blob depend on the machine's number of cores.
        assert!(
            digests.windows(2).all(|w| w[0] == w[1]),
            "{compression:?}: {digests:?}"
        );
    }
    // One tar, whatever the compression.
    assert!(diff_ids.windows(2).all(|w| w[0] == w[1]), "{diff_ids:?}");
}

#[test]
fn clamped_mtimes() {
    let t = Tmp::new("layers", "clamp");
    let src = t.0.join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), b"x").unwrap();
    let store = BlobStore::open(&t.0.join("store")).unwrap();
    let options = LayerOptions {
        clamp_mtime: Some(1_000_000),
        ..LayerOptions::default()
    };
    let layer = write_layer(&store, &DiffSource::Full { root: &src }, &options).unwrap();
    let dest = t.0.join("dest");
    unpack(
        store
            .open_verified(&layer.descriptor.digest.parse().unwrap())
            .unwrap(),
        &dest,
        &UnpackOptions::default(),
    )
    .unwrap();
    assert_eq!(fs::metadata(dest.join("f")).unwrap().mtime(), 1_000_000);
}

/// A layer keeps a file's capabilities and no other extended attribute
/// (containerd's and Docker's writers keep just that one, so BuildKit's
/// layers do): `user.*` attributes of the tree are left out.
#[test]
fn only_file_capabilities_are_kept_as_xattrs() {
    let t = Tmp::new("layers", "xattrs");
    let src = t.0.join("src");
    fs::create_dir_all(src.join("dir")).unwrap();
    fs::write(src.join("ping"), b"x").unwrap();
    fs::write(src.join("noted"), b"y").unwrap();
    xattr::set(src.join("noted"), "user.note", b"hello").unwrap();
    xattr::set(src.join("dir"), "user.note", b"hello").unwrap();
    let cap = [
        1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    if is_root() {
        xattr::set(src.join("ping"), "security.capability", &cap).unwrap();
    }
    let store = BlobStore::open(&t.0.join("store")).unwrap();
    let layer = write_layer(
        &store,
        &DiffSource::Full { root: &src },
        &LayerOptions::default(),
    )
    .unwrap();
    let r = store
        .open_verified(&layer.descriptor.digest.parse().unwrap())
        .unwrap();
    let mut a = tar::Archive::new(flate2::read::GzDecoder::new(r));
    let mut records = Vec::new();
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().display().to_string();
        if let Some(pax) = e.pax_extensions().unwrap() {
            for ext in pax {
                let ext = ext.unwrap();
                records.push((
                    name.clone(),
                    ext.key().unwrap().to_string(),
                    ext.value_bytes().to_vec(),
                ));
            }
        }
    }
    let want: Vec<(String, String, Vec<u8>)> = if is_root() {
        vec![(
            "ping".into(),
            "SCHILY.xattr.security.capability".into(),
            cap.to_vec(),
        )]
    } else {
        Vec::new()
    };
    assert_eq!(records, want);
}

fn tar_names(store: &BlobStore, digest: &str) -> Vec<String> {
    let r = store.open_verified(&digest.parse().unwrap()).unwrap();
    let mut a = tar::Archive::new(flate2::read::GzDecoder::new(r));
    a.entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect()
}

fn mtime(path: &Path) -> std::time::SystemTime {
    fs::metadata(path).unwrap().modified().unwrap()
}

/// Sets the mtime of a file or directory.
fn set_mtime(path: &Path, time: std::time::SystemTime) {
    fs::File::open(path).unwrap().set_modified(time).unwrap();
}

#[test]
fn compare_diff_writes_changes_and_whiteouts() {
    let t = Tmp::new("layers", "compare");
    let lower = t.0.join("lower");
    let upper = t.0.join("upper");
    for d in [&lower, &upper] {
        fs::create_dir_all(d.join("keep")).unwrap();
        fs::write(d.join("keep/same"), b"same").unwrap();
        fs::create_dir_all(d.join("dir")).unwrap();
    }
    fs::write(lower.join("gone"), b"x").unwrap();
    fs::write(lower.join("dir/old"), b"x").unwrap();
    fs::write(lower.join("changed"), b"before").unwrap();
    fs::write(upper.join("changed"), b"after!").unwrap();
    fs::write(upper.join("new"), b"new").unwrap();
    for p in ["keep/same", "keep", "dir", ""] {
        set_mtime(&upper.join(p), mtime(&lower.join(p)));
    }
    let store = BlobStore::open(&t.0.join("store")).unwrap();
    let layer = write_layer(
        &store,
        &DiffSource::Compare {
            lower: &lower,
            upper: &upper,
        },
        &LayerOptions::default(),
    )
    .unwrap();
    let names = tar_names(&store, &layer.descriptor.digest);
    // `dir` is unchanged but holds a change: it is written before it, as
    // BuildKit includes parents; `keep` (unchanged, nothing changed in it)
    // is not.
    assert_eq!(
        names,
        vec!["changed", "dir/", "dir/.wh.old", ".wh.gone", "new"]
    );
    // Applying the diff on the lower tree gives the upper tree.
    let applied = t.0.join("applied");
    unpack(
        store.open_verified(&store.put_bytes(&[]).unwrap()).unwrap(),
        &applied,
        &UnpackOptions::default(),
    )
    .unwrap();
    let full = write_layer(
        &store,
        &DiffSource::Full { root: &lower },
        &LayerOptions::default(),
    )
    .unwrap();
    unpack(
        store
            .open_verified(&full.descriptor.digest.parse().unwrap())
            .unwrap(),
        &applied,
        &UnpackOptions::default(),
    )
    .unwrap();
    unpack(
        store
            .open_verified(&layer.descriptor.digest.parse().unwrap())
            .unwrap(),
        &applied,
        &UnpackOptions::default(),
    )
    .unwrap();
    let mut got: Vec<String> = describe(&applied)
        .keys()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect();
    got.sort();
    assert_eq!(got, vec!["changed", "dir", "keep", "keep/same", "new"]);
    assert_eq!(fs::read(applied.join("changed")).unwrap(), b"after!");
}

#[test]
fn overlay_upper_whiteouts_and_opaque_dirs() {
    if !is_root() {
        eprintln!("skipped: char 0/0 devices and trusted.* xattrs need root");
        return;
    }
    let t = Tmp::new("layers", "overlay");
    // Two committed layers below, in overlay form.
    let bottom = t.0.join("bottom");
    fs::create_dir_all(bottom.join("etc/replaced")).unwrap();
    fs::write(bottom.join("etc/replaced/old.conf"), b"o").unwrap();
    fs::write(bottom.join("etc/kept"), b"k").unwrap();
    fs::write(bottom.join("etc/gone-below"), b"g").unwrap();
    let top = t.0.join("top");
    fs::create_dir_all(top.join("etc")).unwrap();
    fs::write(top.join("etc/deleted"), b"d").unwrap();
    mknod(&top.join("etc/gone-below"), libc::S_IFCHR, 0, 0);
    // The step: deletes a file of the top layer, one the top layer had
    // deleted already (overlay leaves a whiteout: nothing to write), and
    // one that never existed; replaces a directory (opaque); etc itself
    // only copied up.
    let upper = t.0.join("upper");
    fs::create_dir_all(upper.join("etc/replaced")).unwrap();
    fs::write(upper.join("etc/replaced/new.conf"), b"n").unwrap();
    xattr::set(upper.join("etc/replaced"), "trusted.overlay.opaque", b"y").unwrap();
    for gone in ["deleted", "gone-below", "never"] {
        mknod(&upper.join("etc").join(gone), libc::S_IFCHR, 0, 0);
    }
    let store = BlobStore::open(&t.0.join("store")).unwrap();
    let lowers = [top.clone(), bottom.clone()];
    let layer = write_layer(
        &store,
        &DiffSource::Overlay {
            upper: &upper,
            lowers: &lowers,
            known: None,
        },
        &LayerOptions::default(),
    )
    .unwrap();
    let names = tar_names(&store, &layer.descriptor.digest);
    // The opaque directory is written as its changes against what it
    // hides, as BuildKit's overlay differ does; unchanged directories only
    // as the parents of changes.
    assert_eq!(
        names,
        vec![
            "etc/",
            "etc/.wh.deleted",
            "etc/replaced/",
            "etc/replaced/new.conf",
            "etc/replaced/.wh.old.conf"
        ]
    );

    // Applying it on the merged lower tree gives the merged upper tree.
    let base = t.0.join("base");
    fs::create_dir_all(base.join("etc/replaced")).unwrap();
    fs::write(base.join("etc/deleted"), b"d").unwrap();
    fs::write(base.join("etc/replaced/old.conf"), b"o").unwrap();
    fs::write(base.join("etc/kept"), b"k").unwrap();
    let stats = unpack(
        store
            .open_verified(&layer.descriptor.digest.parse().unwrap())
            .unwrap(),
        &base,
        &UnpackOptions::default(),
    )
    .unwrap();
    assert_eq!(stats.whiteouts, 2);
    assert!(!base.join("etc/deleted").exists());
    assert!(!base.join("etc/replaced/old.conf").exists());
    assert!(base.join("etc/replaced/new.conf").exists());
    assert!(base.join("etc/kept").exists());
    // No overlay attributes leak into the layer.
    assert!(
        xattr::get(base.join("etc/replaced"), "trusted.overlay.opaque")
            .unwrap()
            .is_none()
    );
}

/// A step that only copied directories up (a mount stub made and removed,
/// `chmod` to the same mode) and rewrote a file unchanged changes nothing:
/// its layer is an empty tar, as BuildKit's.
#[test]
fn copied_up_but_unchanged_is_no_change() {
    let t = Tmp::new("layers", "copied-up");
    let lower = t.0.join("lower");
    fs::create_dir_all(lower.join("root/deep")).unwrap();
    fs::write(lower.join("root/deep/f"), b"same").unwrap();
    let upper = t.0.join("upper");
    fs::create_dir_all(upper.join("root/deep")).unwrap();
    fs::write(upper.join("root/deep/f"), b"same").unwrap();
    set_mtime(
        &upper.join("root/deep/f"),
        mtime(&lower.join("root/deep/f")),
    );
    let store = BlobStore::open(&t.0.join("store")).unwrap();
    let lowers = [lower.clone()];
    for source in [
        DiffSource::Overlay {
            upper: &upper,
            lowers: &lowers,
            known: None,
        },
        DiffSource::Compare {
            lower: &lower,
            upper: &upper,
        },
    ] {
        let layer = write_layer(&store, &source, &LayerOptions::default()).unwrap();
        assert_eq!(layer.uncompressed_size, 1024, "{source:?}");
    }
    // The same content with another mtime is a change (with its parents).
    set_mtime(&upper.join("root/deep/f"), std::time::UNIX_EPOCH);
    let layer = write_layer(
        &store,
        &DiffSource::Overlay {
            upper: &upper,
            lowers: &lowers,
            known: None,
        },
        &LayerOptions::default(),
    )
    .unwrap();
    assert_eq!(
        tar_names(&store, &layer.descriptor.digest),
        vec!["root/", "root/deep/", "root/deep/f"]
    );
}

/// A tar entry with a raw name (no checks), as a hostile archive has it.
fn raw_entry(
    out: &mut Vec<u8>,
    name: &[u8],
    kind: tar::EntryType,
    link: &[u8],
    data: &[u8],
    size: Option<u64>,
) {
    let mut h = tar::Header::new_gnu();
    h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name);
    h.as_gnu_mut().unwrap().linkname[..link.len()].copy_from_slice(link);
    h.set_entry_type(kind);
    h.set_mode(0o644);
    h.set_size(size.unwrap_or(data.len() as u64));
    h.set_cksum();
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
}

fn finish(mut out: Vec<u8>) -> Vec<u8> {
    out.extend_from_slice(&[0u8; 1024]);
    out
}

#[test]
fn hostile_archives_are_refused_or_neutralised() {
    let t = Tmp::new("layers", "hostile");
    let outside = t.0.join("outside");
    fs::create_dir_all(&outside).unwrap();
    let root = t.0.join("root");

    // `..` that climbs out is refused.
    let mut a = Vec::new();
    raw_entry(
        &mut a,
        b"../outside/pwned",
        tar::EntryType::Regular,
        b"",
        b"x",
        None,
    );
    let err = unpack(&finish(a)[..], &root, &UnpackOptions::default()).unwrap_err();
    assert!(matches!(err, LayerError::Hostile { .. }), "{err}");
    assert!(!outside.join("pwned").exists());

    // An absolute name lands inside the root.
    let mut a = Vec::new();
    raw_entry(
        &mut a,
        b"/etc/abs",
        tar::EntryType::Regular,
        b"",
        b"x",
        None,
    );
    unpack(&finish(a)[..], &root, &UnpackOptions::default()).unwrap();
    assert!(root.join("etc/abs").is_file());

    // A symlink to the host, then an entry through it: stays in the root.
    let mut a = Vec::new();
    let target = outside.as_os_str().as_bytes().to_vec();
    raw_entry(
        &mut a,
        b"escape",
        tar::EntryType::Symlink,
        &target,
        b"",
        None,
    );
    raw_entry(
        &mut a,
        b"escape/through",
        tar::EntryType::Regular,
        b"",
        b"x",
        None,
    );
    raw_entry(
        &mut a,
        b"up",
        tar::EntryType::Symlink,
        b"../../../../../../..",
        b"",
        None,
    );
    raw_entry(
        &mut a,
        b"up/tmp/through-up",
        tar::EntryType::Regular,
        b"",
        b"x",
        None,
    );
    unpack(&finish(a)[..], &root, &UnpackOptions::default()).unwrap();
    assert!(!outside.join("through").exists());
    assert!(
        root.join(outside.strip_prefix("/").unwrap())
            .join("through")
            .is_file()
    );
    assert!(root.join("tmp/through-up").is_file());
    assert!(!Path::new("/tmp/through-up").exists());

    // A file written at a symlink's name replaces the link, never follows it.
    fs::write(outside.join("victim"), b"safe").unwrap();
    let mut a = Vec::new();
    let victim = outside.join("victim").as_os_str().as_bytes().to_vec();
    raw_entry(
        &mut a,
        b"link-to-victim",
        tar::EntryType::Symlink,
        &victim,
        b"",
        None,
    );
    raw_entry(
        &mut a,
        b"link-to-victim",
        tar::EntryType::Regular,
        b"",
        b"overwritten",
        None,
    );
    unpack(&finish(a)[..], &root, &UnpackOptions::default()).unwrap();
    assert_eq!(fs::read(outside.join("victim")).unwrap(), b"safe");
    assert_eq!(
        fs::read(root.join("link-to-victim")).unwrap(),
        b"overwritten"
    );

    // A hard link out of the root is refused.
    let mut a = Vec::new();
    raw_entry(
        &mut a,
        b"hard",
        tar::EntryType::Link,
        b"../../../../etc/passwd",
        b"",
        None,
    );
    let err = unpack(&finish(a)[..], &root, &UnpackOptions::default()).unwrap_err();
    assert!(matches!(err, LayerError::Hostile { .. }), "{err}");
    // ... and one whose target goes through a symlink to the host links
    // (if anything) inside the root.
    let mut a = Vec::new();
    fs::write(outside.join("secret"), b"s").unwrap();
    raw_entry(
        &mut a,
        b"hard2",
        tar::EntryType::Link,
        b"escape/secret",
        b"",
        None,
    );
    let r = unpack(&finish(a)[..], &root, &UnpackOptions::default());
    assert!(r.is_err(), "linked a host file: {r:?}");

    // Device nodes are skipped when not allowed.
    let mut a = Vec::new();
    raw_entry(&mut a, b"dev/sda", tar::EntryType::Block, b"", b"", None);
    let stats = unpack(
        &finish(a)[..],
        &root,
        &UnpackOptions {
            same_owner: false,
            devices: false,
            overlay_whiteouts: false,
            owner: None,
        },
    )
    .unwrap();
    assert_eq!(stats.skipped_devices, 1);
    assert!(!root.join("dev/sda").exists());

    // An absurd size is refused before anything is read.
    let mut a = Vec::new();
    raw_entry(
        &mut a,
        b"huge",
        tar::EntryType::Regular,
        b"",
        b"",
        Some(1 << 45),
    );
    let err = unpack(&finish(a)[..], &root, &UnpackOptions::default()).unwrap_err();
    assert!(matches!(err, LayerError::Hostile { .. }), "{err}");
    assert!(!root.join("huge").exists());
}

#[test]
fn corrupt_blob_cannot_be_unpacked() {
    let t = Tmp::new("layers", "corrupt");
    let src = t.0.join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), b"content").unwrap();
    let store = BlobStore::open(&t.0.join("store")).unwrap();
    let layer = write_layer(
        &store,
        &DiffSource::Full { root: &src },
        &LayerOptions {
            compression: Compression::Uncompressed,
            ..LayerOptions::default()
        },
    )
    .unwrap();
    let digest = layer.descriptor.digest.parse().unwrap();
    let mut data = fs::read(store.path(&digest)).unwrap();
    let pos = data.windows(7).position(|w| w == b"content").unwrap();
    data[pos] = b'X';
    fs::File::create(store.path(&digest))
        .unwrap()
        .write_all(&data)
        .unwrap();
    let err = unpack(
        store.open_verified(&digest).unwrap(),
        &t.0.join("dest"),
        &UnpackOptions::default(),
    );
    assert!(err.is_err(), "a corrupt blob was unpacked");
}
