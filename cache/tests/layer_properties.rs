//! The layer writer over random trees: whatever the tree, a layer written
//! from it and unpacked again gives back every path, type, mode, owner,
//! size, content, link target, device number and hard link. Sizes cluster
//! around the tar block (512 bytes) and the writer's 1 MiB chunk, where a
//! stream that ends a buffer exactly once failed (issue 12: a Debian root
//! filesystem could not be written).

mod common;

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use common::tree::{describe, mknod};
use common::{Tmp, is_root};
use proptest::prelude::*;

use cache::blob::BlobStore;
use cache::layer::{Compression, DiffSource, LayerOptions, UnpackOptions, unpack, write_layer};

/// The writer's chunk (`layer::write::CHUNK`).
const CHUNK: u64 = 1 << 20;

#[derive(Debug, Clone)]
enum Kind {
    File {
        size: u64,
        mode: u32,
    },
    Dir {
        mode: u32,
    },
    Symlink {
        target: String,
    },
    /// A hard link to the n-th file made so far (modulo their number).
    HardLink {
        to: usize,
    },
    Char {
        major: u32,
        minor: u32,
    },
    Fifo,
}

#[derive(Debug, Clone)]
struct Entry {
    /// Index of the parent among the directories made so far (modulo).
    parent: usize,
    name: String,
    kind: Kind,
    owner: (u32, u32),
}

fn size() -> impl Strategy<Value = u64> {
    prop_oneof![
        0u64..2048,
        // Around a tar block.
        (1u64..64, -1i64..=1).prop_map(|(k, d)| (k * 512).saturating_add_signed(d)),
        // Around the writer's chunk, once or twice.
        (1u64..=2, 0u64..8, -1i64..=1)
            .prop_map(|(c, k, d)| (c * CHUNK - k * 512).saturating_add_signed(d)),
        // Around the sizes its first buffer grows through (64 KiB doubling).
        (0u32..4, 0u64..4, -1i64..=1)
            .prop_map(|(g, k, d)| (((64 << 10) << g) - k * 512).saturating_add_signed(d)),
    ]
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-z0-9._-]{1,12}",
        // Long names: over the 100 bytes of a ustar name, up to NAME_MAX.
        1 => "[a-z]{90,255}",
    ]
    .prop_filter("not . or ..", |n| n != "." && n != "..")
}

fn kind() -> impl Strategy<Value = Kind> {
    prop_oneof![
        6 => (size(), prop_oneof![Just(0o644u32), Just(0o755), Just(0o4755), Just(0o600)])
            .prop_map(|(size, mode)| Kind::File { size, mode }),
        3 => prop_oneof![Just(0o755u32), Just(0o700), Just(0o1777)].prop_map(|mode| Kind::Dir { mode }),
        2 => prop_oneof!["[a-z/.]{1,40}", "/[a-z]{1,20}", "[a-z]{200,300}"]
            .prop_map(|target| Kind::Symlink { target }),
        2 => any::<usize>().prop_map(|to| Kind::HardLink { to }),
        1 => (0u32..300, 0u32..1100).prop_map(|(major, minor)| Kind::Char { major, minor }),
        1 => Just(Kind::Fifo),
    ]
}

fn entry() -> impl Strategy<Value = Entry> {
    (
        any::<usize>(),
        name(),
        kind(),
        prop_oneof![Just((0u32, 0u32)), Just((1000, 1000)), Just((65534, 42))],
    )
        .prop_map(|(parent, name, kind, owner)| Entry {
            parent,
            name,
            kind,
            owner,
        })
}

/// Makes the entries under `root`; names already taken are skipped.
fn make(root: &Path, entries: &[Entry]) {
    let mut dirs: Vec<PathBuf> = vec![root.to_path_buf()];
    let mut files: Vec<PathBuf> = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let parent = &dirs[e.parent % dirs.len()];
        let path = parent.join(&e.name);
        if fs::symlink_metadata(&path).is_ok() {
            continue;
        }
        match &e.kind {
            Kind::File { size, mode } => {
                // Content that differs per file and per offset.
                let data: Vec<u8> = (0..*size)
                    .map(|n| (n as u8).wrapping_mul(31).wrapping_add(i as u8))
                    .collect();
                fs::write(&path, data).unwrap();
                fs::set_permissions(&path, fs::Permissions::from_mode(*mode)).unwrap();
                files.push(path.clone());
            }
            Kind::Dir { mode } => {
                fs::create_dir(&path).unwrap();
                fs::set_permissions(&path, fs::Permissions::from_mode(*mode)).unwrap();
                dirs.push(path.clone());
            }
            Kind::Symlink { target } => symlink(target, &path).unwrap(),
            Kind::HardLink { to } => {
                if files.is_empty() {
                    continue;
                }
                fs::hard_link(&files[to % files.len()], &path).unwrap();
            }
            Kind::Char { major, minor } => {
                if !is_root() {
                    continue;
                }
                mknod(&path, libc::S_IFCHR, *major, *minor);
            }
            Kind::Fifo => {
                let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
                // SAFETY: valid path.
                assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o640) }, 0);
            }
        }
        if is_root() && !matches!(e.kind, Kind::HardLink { .. }) {
            let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
            // SAFETY: valid path; lchown does not follow a symlink.
            assert_eq!(unsafe { libc::lchown(c.as_ptr(), e.owner.0, e.owner.1) }, 0);
            // chown clears setuid: set the mode again.
            if let Kind::File { mode, .. } | Kind::Dir { mode } = e.kind {
                fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            }
        }
    }
}

/// Writes a layer of `src`, unpacks it and compares.
fn round_trip(t: &Path, src: &Path, compression: Compression) {
    let store = BlobStore::open(&t.join("store")).unwrap();
    let options = LayerOptions {
        compression,
        threads: 2,
        ..LayerOptions::default()
    };
    let layer = write_layer(&store, &DiffSource::Full { root: src }, &options)
        .unwrap_or_else(|e| panic!("writing the layer of {}: {e}", src.display()));
    let dest = t.join("dest");
    let _ = fs::remove_dir_all(&dest);
    let reader = store
        .open_verified(&layer.descriptor.digest.parse().unwrap())
        .unwrap();
    unpack(reader, &dest, &UnpackOptions::default()).unwrap();
    assert_eq!(describe(src), describe(&dest), "{compression:?}");
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(48),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_trees_round_trip(
        entries in proptest::collection::vec(entry(), 1..24),
        compression in prop_oneof![
            Just(Compression::Uncompressed),
            Just(Compression::Gzip),
            Just(Compression::Zstd),
        ],
    ) {
        let t = Tmp::new("layer-prop", "tree");
        let src = t.0.join("src");
        fs::create_dir(&src).unwrap();
        make(&src, &entries);
        round_trip(&t.0, &src, compression);
    }
}

/// A file whose data ends exactly where the writer's buffer is full (each
/// size its first buffer grows through, the first or second chunk): one of
/// these sizes puts the end of `b`'s data on the boundary, whatever the
/// header layout.
#[test]
fn data_ending_on_a_chunk_boundary() {
    // The first buffer's sizes as it grows (64 KiB to 512 KiB), then whole
    // chunks.
    let ends = [1u64 << 16, 1 << 17, 1 << 18, 1 << 19, CHUNK, 2 * CHUNK];
    for (i, end) in ends.into_iter().enumerate() {
        for blocks in 1..=8 {
            let chunks = i;
            let t = Tmp::new("layer-prop", &format!("boundary-{chunks}-{blocks}"));
            let src = t.0.join("src");
            fs::create_dir(&src).unwrap();
            fs::write(src.join("a"), b"x").unwrap();
            fs::write(src.join("b"), vec![9u8; (end - blocks * 512) as usize]).unwrap();
            fs::write(src.join("c"), b"after").unwrap();
            round_trip(&t.0, &src, Compression::Gzip);
        }
    }
}

/// One change a step makes to its root.
#[derive(Debug, Clone)]
enum Change {
    Write {
        path: usize,
        data: u8,
    },
    Touch {
        path: usize,
    },
    Chmod {
        path: usize,
        mode: u32,
    },
    Remove {
        path: usize,
    },
    /// `rm -rf` a directory and make it again with one new file (overlay
    /// makes it opaque).
    Recreate {
        path: usize,
    },
    MakeDir {
        path: usize,
    },
    Symlink {
        path: usize,
    },
    /// Made and removed again (a mount stub).
    Stub {
        path: usize,
    },
}

/// Paths the changes pick from: some exist below, some do not.
const PATHS: &[&str] = &[
    "a", "b", "d", "d/x", "d/y", "d/e", "d/e/z", "d/e/w", "f", "f/q", "g", "g/h", "g/h/i",
];

fn change() -> impl Strategy<Value = Change> {
    let p = 0..PATHS.len();
    prop_oneof![
        (p.clone(), any::<u8>()).prop_map(|(path, data)| Change::Write { path, data }),
        p.clone().prop_map(|path| Change::Touch { path }),
        (
            p.clone(),
            prop_oneof![Just(0o700u32), Just(0o755), Just(0o644), Just(0o600)]
        )
            .prop_map(|(path, mode)| Change::Chmod { path, mode }),
        p.clone().prop_map(|path| Change::Remove { path }),
        p.clone().prop_map(|path| Change::Recreate { path }),
        p.clone().prop_map(|path| Change::MakeDir { path }),
        p.clone().prop_map(|path| Change::Symlink { path }),
        p.prop_map(|path| Change::Stub { path }),
    ]
}

/// Applies `change` under `root`; one that does not apply is skipped.
fn apply(root: &Path, change: &Change) {
    let at = |i: usize| root.join(PATHS[i]);
    let _ = match change {
        Change::Write { path, data } => {
            let p = at(*path);
            let _ = fs::create_dir_all(p.parent().unwrap());
            fs::write(&p, vec![*data; usize::from(*data) % 7 + 1])
        }
        Change::Touch { path } => fs::File::options()
            .write(true)
            .open(at(*path))
            .and_then(|f| {
                f.set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000))
            }),
        Change::Chmod { path, mode } => {
            fs::set_permissions(at(*path), fs::Permissions::from_mode(*mode))
        }
        Change::Remove { path } => {
            let p = at(*path);
            if p.is_dir() && !p.is_symlink() {
                fs::remove_dir_all(&p)
            } else {
                fs::remove_file(&p)
            }
        }
        Change::Recreate { path } => {
            let p = at(*path);
            if p.is_dir() && !p.is_symlink() {
                fs::remove_dir_all(&p)
                    .and_then(|()| fs::create_dir(&p))
                    .and_then(|()| fs::write(p.join("new"), b"n"))
            } else {
                Ok(())
            }
        }
        Change::MakeDir { path } => fs::create_dir_all(at(*path)),
        Change::Symlink { path } => symlink("target/of/link", at(*path)),
        Change::Stub { path } => {
            let p = at(*path);
            match fs::symlink_metadata(&p) {
                Ok(_) => Ok(()),
                Err(_) => fs::write(&p, b"").and_then(|()| fs::remove_file(&p)),
            }
        }
    };
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(48),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Six steps of random changes on real snapshots (overlay, and the
    /// copy backend's tree comparison): the layers they write, unpacked one
    /// over the other, give each step's tree. From the fifth step on, the
    /// overlay layers are diffed against a merged view of the four or more
    /// below (before, against the layers one by one).
    #[test]
    fn overlay_layers_rebuild_each_steps_tree(
        steps in proptest::collection::vec(proptest::collection::vec(change(), 1..8), 6),
    ) {
        if !is_root() {
            return Ok(());
        }
        use cache::snapshot::{Backend, Snapshotter};
        for backend in [Backend::Overlay, Backend::Copy] {
        let t = Tmp::new("layer-prop", &format!("{backend:?}"));
        let store = BlobStore::open(&t.0.join("store")).unwrap();
        let snaps = Snapshotter::open_with_backend(&t.0.join("snaps"), backend).unwrap();
        let unpacked = t.0.join("unpacked");
        fs::create_dir(&unpacked).unwrap();
        let mut parent: Option<String> = None;
        for (i, changes) in steps.iter().enumerate() {
            let m = snaps.prepare(parent.as_deref()).unwrap();
            let root = m.root();
            if i == 0 {
                for p in ["d/e", "g/h"] {
                    fs::create_dir_all(root.join(p)).unwrap();
                }
                for p in ["a", "d/x", "d/e/z", "g/h/i"] {
                    fs::write(root.join(p), p).unwrap();
                }
            }
            for c in changes {
                apply(&root, c);
            }
            let want = describe(&root);
            let (snap, _) = m.commit(&store, &LayerOptions::default()).unwrap();
            let layer = snaps.layer(&snap.id, &store, &LayerOptions::default()).unwrap();
            let reader = store
                .open_verified(&layer.descriptor.digest.parse().unwrap())
                .unwrap();
            unpack(reader, &unpacked, &UnpackOptions::default()).unwrap();
            prop_assert_eq!(&describe(&unpacked), &want, "{:?} step {} of {:?}", backend, i, steps);
            parent = Some(snap.id);
        }
        }
    }
}
