//! Several processes on one store: a writer killed with SIGKILL at random
//! points leaves a store that verifies clean, and two writers at once lose
//! nothing. The children are this test binary run again with an
//! environment variable that selects their role.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use cache::blob::BlobStore;
use cache::index::{CacheIndex, CacheKey, Record};
use cache::spec::{Descriptor, media};

const ROLE: &str = "RBUILD_TEST_ROLE";
const ROOT: &str = "RBUILD_TEST_ROOT";

fn spawn(role: &str, root: &Path, test: &str) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(ROLE, role)
        .env(ROOT, root)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

/// Pseudo-random numbers without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn key_for(tag: &str, i: u64) -> CacheKey {
    let mut hex = String::new();
    for b in format!("{tag}-{i}").bytes() {
        hex.push_str(&format!("{b:02x}"));
    }
    CacheKey::new(&format!("{hex:0>64}")[..64]).unwrap()
}

/// Child: writes blobs, records and tags until killed (or `count` rounds).
fn writer(root: &Path, tag: &str, count: Option<u64>) {
    let store = BlobStore::open(&root.join("content")).unwrap();
    let index = CacheIndex::open(&root.join("index.db")).unwrap();
    let mut rng = Rng(std::process::id() as u64 | 1);
    let mut i = 0;
    while count.is_none_or(|c| i < c) {
        let size = (rng.next() % 300_000) as usize;
        let unique: Vec<u8> = (0..size).map(|j| (j as u64 ^ rng.next()) as u8).collect();
        let (d, _) = store.put(&unique[..], None).unwrap();
        let shared = store
            .put_bytes(format!("shared content {}", i % 5).as_bytes())
            .unwrap();
        index
            .put(&Record {
                key: key_for(tag, i),
                result: format!("{{\"i\":{i}}}"),
                snapshot: None,
                blobs: vec![d.to_string(), shared.to_string()],
                size: size as u64,
                created: i as i64,
                last_used: i as i64,
            })
            .unwrap();
        store
            .update_index(|idx| {
                let mut desc = Descriptor::new(media::OCI_MANIFEST, &d, size as u64);
                desc.annotations = Some(
                    [(
                        "org.opencontainers.image.ref.name".to_string(),
                        format!("{tag}-{i}"),
                    )]
                    .into(),
                );
                idx.manifests.push(desc);
            })
            .unwrap();
        i += 1;
    }
}

#[test]
fn child_role() {
    // Runs only as a child of the tests below.
    let (Ok(role), Ok(root)) = (std::env::var(ROLE), std::env::var(ROOT)) else {
        return;
    };
    match role.as_str() {
        "crash" => writer(Path::new(&root), "crash", None),
        tag => writer(Path::new(&root), tag, Some(40)),
    }
}

fn temp(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("rbuild-proc-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).unwrap();
    p
}

#[test]
fn sigkill_at_random_points_leaves_a_clean_store() {
    if std::env::var(ROLE).is_ok() {
        return;
    }
    let root = temp("crash");
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..25 {
        let mut child = spawn("crash", &root, "child_role");
        std::thread::sleep(Duration::from_millis(20 + rng.next() % 200));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }
    // Opening cleans temp files; everything left verifies.
    let store = BlobStore::open(&root.join("content")).unwrap();
    let tmp_left = std::fs::read_dir(root.join("content/blobs/.tmp"))
        .unwrap()
        .count();
    assert_eq!(
        tmp_left, 0,
        "temp files of killed writers survived a reopen"
    );
    assert!(
        store.verify_all().unwrap().is_empty(),
        "corrupt blobs after kills"
    );
    let idx = store.read_index().unwrap();
    for m in &idx.manifests {
        assert!(
            store.contains(&m.digest.parse().unwrap()),
            "index.json names a missing blob"
        );
    }
    let index = CacheIndex::open(&root.join("index.db")).unwrap();
    let records = index.records().unwrap();
    assert!(!records.is_empty(), "the writer never got a record in");
    for r in &records {
        for b in &r.blobs {
            assert!(
                store.contains(&b.parse().unwrap()),
                "a committed record references a missing blob"
            );
        }
    }
    // And the store still takes writes.
    let d = store.put_bytes(b"after the crashes").unwrap();
    assert_eq!(store.read(&d).unwrap(), b"after the crashes");
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn two_writers_at_once_lose_nothing() {
    if std::env::var(ROLE).is_ok() {
        return;
    }
    let root = temp("pair");
    let a = spawn("alpha", &root, "child_role");
    let b = spawn("beta", &root, "child_role");
    for mut c in [a, b] {
        assert!(c.wait().unwrap().success(), "a writer failed");
    }
    let store = BlobStore::open(&root.join("content")).unwrap();
    assert!(store.verify_all().unwrap().is_empty());
    let tags: Vec<String> = store
        .read_index()
        .unwrap()
        .manifests
        .iter()
        .filter_map(|m| {
            m.annotations
                .as_ref()?
                .get("org.opencontainers.image.ref.name")
                .cloned()
        })
        .collect();
    assert_eq!(tags.len(), 80, "index.json lost updates");
    let index = CacheIndex::open(&root.join("index.db")).unwrap();
    assert_eq!(index.records().unwrap().len(), 80, "records lost");
    for tag in ["alpha", "beta"] {
        for i in 0..40 {
            assert!(
                index.get(&key_for(tag, i)).unwrap().is_some(),
                "{tag}-{i} missing"
            );
        }
    }
    std::fs::remove_dir_all(&root).unwrap();
}
