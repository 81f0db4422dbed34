//! Snapshots with both backends: prepare, write, commit, stack, import,
//! flatten long chains, and clean up after a killed process.

mod common;

use common::{Tmp, is_root};
use std::fs;
use std::path::Path;

use cache::blob::BlobStore;
use cache::layer::LayerOptions;
use cache::snapshot::{Backend, Snapshotter};

fn listing(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            if p.is_dir() && !p.is_symlink() {
                out.push(format!("{rel}/"));
                walk(root, &p, out);
            } else {
                out.push(format!(
                    "{rel}={}",
                    fs::read_to_string(&p).unwrap_or_default()
                ));
            }
        }
    }
    walk(root, root, &mut out);
    out.sort();
    out
}

fn stack_and_commit(backend: Backend) {
    let t = Tmp::new("snap", &format!("{backend:?}"));
    let store = BlobStore::open(&t.0.join("store")).unwrap();
    let snaps = Snapshotter::open_with_backend(&t.0.join("snaps"), backend).unwrap();

    let m = snaps.prepare(None).unwrap();
    fs::create_dir_all(m.root().join("etc/conf.d")).unwrap();
    fs::write(m.root().join("etc/keep"), "k").unwrap();
    fs::write(m.root().join("etc/remove"), "r").unwrap();
    fs::write(m.root().join("etc/conf.d/old"), "o").unwrap();
    let (s1, l1) = m.commit(&store, &LayerOptions::default()).unwrap();

    let m = snaps.prepare(Some(&s1.id)).unwrap();
    assert_eq!(fs::read_to_string(m.root().join("etc/keep")).unwrap(), "k");
    fs::remove_file(m.root().join("etc/remove")).unwrap();
    fs::remove_dir_all(m.root().join("etc/conf.d")).unwrap();
    fs::create_dir(m.root().join("etc/conf.d")).unwrap();
    fs::write(m.root().join("etc/conf.d/new"), "n").unwrap();
    fs::write(m.root().join("etc/keep"), "changed").unwrap();
    let (s2, l2) = m.commit(&store, &LayerOptions::default()).unwrap();
    assert_ne!(l1.diff_id, l2.diff_id);

    let want = vec![
        "etc/",
        "etc/conf.d/",
        "etc/conf.d/new=n",
        "etc/keep=changed",
    ];
    let out = t.0.join("materialized");
    snaps.materialize(&s2.id, &out).unwrap();
    assert_eq!(listing(&out), want, "{backend:?}");

    // The same view through a new mutable snapshot on top.
    let m = snaps.prepare(Some(&s2.id)).unwrap();
    assert_eq!(listing(&m.root()), want, "{backend:?}");
    m.discard().unwrap();

    // Importing the two layers gives the same filesystem.
    let i1 = snaps
        .import(
            None,
            store
                .open_verified(&l1.descriptor.digest.parse().unwrap())
                .unwrap(),
        )
        .unwrap();
    let i2 = snaps
        .import(
            Some(&i1.id),
            store
                .open_verified(&l2.descriptor.digest.parse().unwrap())
                .unwrap(),
        )
        .unwrap();
    let out2 = t.0.join("imported");
    snaps.materialize(&i2.id, &out2).unwrap();
    assert_eq!(listing(&out2), want, "{backend:?}");
    assert_eq!(snaps.list().unwrap().len(), 4);
}

#[test]
fn copy_backend_stacks_and_commits() {
    stack_and_commit(Backend::Copy);
}

#[test]
fn overlay_backend_stacks_and_commits() {
    if !is_root() {
        eprintln!("skipped: overlay mounts need root");
        return;
    }
    stack_and_commit(Backend::Overlay);
}

/// A step's size counts what its snapshot holds alone: a file linked in
/// from a committed snapshot (a COPY rerun's unchanged file) is not
/// counted again; a file linked twice within the step counts once.
#[test]
fn step_size_counts_linked_files_once() {
    if !is_root() {
        eprintln!("skipped: overlay mounts need root");
        return;
    }
    let t = Tmp::new("snap", "linked");
    let store = BlobStore::open(&t.0.join("store")).unwrap();
    let snaps = Snapshotter::open_with_backend(&t.0.join("snaps"), Backend::Overlay).unwrap();
    let options = LayerOptions::default();
    let m = snaps.prepare(None).unwrap();
    fs::write(m.root().join("big"), vec![7u8; 1 << 20]).unwrap();
    let (first, _, first_size) = m.commit_lazy(&store, &options).unwrap();
    assert!(first_size >= 1 << 20, "{first_size}");

    let m = snaps.prepare(Some(&first.id)).unwrap();
    let upper = m.upper().unwrap();
    let committed = snaps.changes_of(&first.id).unwrap().join("big");
    assert!(committed.exists(), "{}", committed.display());
    fs::hard_link(&committed, upper.join("reused")).unwrap();
    fs::write(upper.join("own"), vec![1u8; 1 << 19]).unwrap();
    fs::hard_link(upper.join("own"), upper.join("own-again")).unwrap();
    let (_, _, size) = m.commit_lazy(&store, &options).unwrap();
    assert_eq!(size, 3 * 512 + (1 << 19));
}

#[test]
fn long_chains_mount_by_fd_and_longer_ones_are_flattened() {
    if !is_root() {
        eprintln!("skipped: overlay mounts need root");
        return;
    }
    let t = Tmp::new("snap", "chain");
    // A long root path makes every lowerdir long.
    let deep = t.0.join("x".repeat(100)).join("y".repeat(100));
    let store = BlobStore::open(&t.0.join("store")).unwrap();
    let snaps = Snapshotter::open_with_backend(&deep, Backend::Overlay).unwrap();
    let mut parent: Option<String> = None;
    let options_of = |root: &Path| -> String {
        let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
        let at = format!(" {} ", root.display());
        info.lines()
            .find(|l| l.contains(&at))
            .expect("mounted")
            .to_string()
    };
    for i in 0..260 {
        let m = snaps.prepare(parent.as_deref()).unwrap();
        if i == 40 {
            // 40 lowerdirs of ~300 bytes: named by open directories, not
            // flattened (a copy of the whole chain per step).
            assert!(options_of(&m.root()).contains("lowerdir=/proc/self/fd/"));
            assert_eq!(fs::read_to_string(m.root().join("f0")).unwrap(), "0");
        }
        fs::write(m.root().join(format!("f{i}")), i.to_string()).unwrap();
        let (s, _) = m
            .commit(
                &store,
                &LayerOptions {
                    compression: cache::layer::Compression::Uncompressed,
                    ..LayerOptions::default()
                },
            )
            .unwrap();
        parent = Some(s.id);
    }
    // 260 layers are more than one mount's options take even so: flattened.
    let m = snaps.prepare(parent.as_deref()).unwrap();
    assert!(!options_of(&m.root()).contains("lowerdir=/proc/self/fd/"));
    assert_eq!(fs::read_to_string(m.root().join("f0")).unwrap(), "0");
    assert_eq!(fs::read_to_string(m.root().join("f259")).unwrap(), "259");
}

#[test]
fn killed_process_leftovers_are_cleaned() {
    if !is_root() {
        eprintln!("skipped: overlay mounts need root");
        return;
    }
    let t = Tmp::new("snap", "stale");
    let root = t.0.join("snaps");
    let snaps = Snapshotter::open_with_backend(&root, Backend::Overlay).unwrap();
    let m = snaps.prepare(None).unwrap();
    let merged = m.root();
    // What a killed process leaves: an active snapshot, mounted, whose lock
    // nobody holds.
    let stale = root.join("active/999999-stale");
    for d in ["upper", "work", "merged", "lower"] {
        fs::create_dir_all(stale.join(d)).unwrap();
    }
    fs::write(stale.join("lock"), "").unwrap();
    let status = std::process::Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o"])
        .arg(format!(
            "lowerdir={},upperdir={},workdir={}",
            stale.join("lower").display(),
            stale.join("upper").display(),
            stale.join("work").display()
        ))
        .arg(stale.join("merged"))
        .status()
        .unwrap();
    assert!(status.success());
    // Reopening cleans the stale one and keeps the live one.
    Snapshotter::open_with_backend(&root, Backend::Overlay).unwrap();
    assert!(!stale.exists());
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains("999999-stale"), "stale mount left behind");
    assert!(
        mounts.contains(&merged.display().to_string()),
        "live mount removed"
    );
    drop(m);
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&merged.display().to_string()),
        "mount left after drop"
    );
}

#[test]
fn the_backend_is_chosen_once_and_kept() {
    let t = Tmp::new("snap", "backend");
    let root = t.0.join("snaps");
    let first = Snapshotter::open(&root).unwrap().backend();
    let record = root.join("backend");
    assert_eq!(fs::read_to_string(&record).unwrap(), first.name());
    // A later open takes the record, not a new test mount: a store made
    // with copies stays with copies where overlay would work.
    fs::write(&record, "copy").unwrap();
    assert_eq!(Snapshotter::open(&root).unwrap().backend(), Backend::Copy);
    // A record torn by a crash is made again.
    fs::write(&record, "").unwrap();
    assert_eq!(Snapshotter::open(&root).unwrap().backend(), first);
    assert_eq!(fs::read_to_string(&record).unwrap(), first.name());
    if is_root() {
        assert_eq!(first, Backend::Overlay, "overlay works here as root");
    }
}
