//! Store throughput: the layer pipeline on a 1 GiB tree of mixed files
//! (uncompressed, gzip level 6, zstd level 3), its peak memory, sha256,
//! unpacking a 1 GiB gzip layer, and the cache index.
//!
//! `cargo bench -p cache` (release). The tree is copied once from this
//! machine's /usr under `$RBUILD_BENCH_DIR` (default the system temp dir)
//! and reused.
//! Goals on a 2-core machine: zstd-3 >= 300 MB/s, gzip-6 >= 120 MB/s,
//! uncompressed >= 800 MB/s, peak RSS < 150 MB, sha256 >= 1.3 GB/s,
//! gzip unpack >= 250 MB/s, 10k lookups + 1k commits < 1 s.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use cache::blob::BlobStore;
use cache::index::{CacheIndex, CacheKey, Record};
use cache::layer::{Compression, DiffSource, LayerOptions, UnpackOptions, unpack, write_layer};
use cache::snapshot::Snapshotter;
use sha2::{Digest as _, Sha256};

/// About 1 GiB of real files: copies of this machine's /usr/share,
/// /usr/bin and /usr/lib (in that order) until the budget is reached, the
/// mix of text, binaries and compressed data a root filesystem has.
fn make_tree(root: &Path) {
    let done = root.join(".complete-v3");
    if done.exists() {
        return;
    }
    let _ = fs::remove_dir_all(root);
    let mut total: u64 = 0;
    for src in ["/usr/share", "/usr/bin", "/usr/lib"] {
        copy_until(
            Path::new(src),
            &root.join(src.trim_start_matches('/')),
            &mut total,
            1 << 30,
        );
    }
    assert!(
        total > 900 << 20,
        "only {total} bytes of files under /usr to copy"
    );
    fs::write(done, b"").unwrap();
}

fn copy_until(src: &Path, dest: &Path, total: &mut u64, budget: u64) {
    let Ok(entries) = fs::read_dir(src) else {
        return;
    };
    fs::create_dir_all(dest).unwrap();
    let mut names: Vec<_> = entries.flatten().map(|e| e.file_name()).collect();
    names.sort();
    for name in names {
        if *total >= budget {
            return;
        }
        let (s, d) = (src.join(&name), dest.join(&name));
        let Ok(meta) = fs::symlink_metadata(&s) else {
            continue;
        };
        if meta.is_dir() {
            copy_until(&s, &d, total, budget);
        } else if meta.file_type().is_symlink() {
            if let Ok(t) = fs::read_link(&s) {
                let _ = std::os::unix::fs::symlink(t, &d);
            }
        } else if meta.is_file() && fs::copy(&s, &d).is_ok() {
            *total += meta.len();
        }
    }
}

fn reset_peak_rss() {
    let _ = fs::write("/proc/self/clear_refs", "5");
}

fn peak_rss_mb() -> f64 {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn main() {
    let base = std::env::var_os("RBUILD_BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from);
    let tree = base.join("rbuild-bench-tree");
    let t = Instant::now();
    make_tree(&tree);
    println!(
        "tree ready in {:.1}s ({})",
        t.elapsed().as_secs_f64(),
        tree.display()
    );
    let store_dir = base.join(format!("rbuild-bench-store-{}", std::process::id()));
    let store = BlobStore::open(&store_dir).unwrap();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());

    // Warm the page cache so that the figures measure the pipeline, not the disk.
    let _ = write_layer(
        &store,
        &DiffSource::Full { root: &tree },
        &LayerOptions {
            compression: Compression::Uncompressed,
            threads,
            ..LayerOptions::default()
        },
    );

    let mut gzip_digest = None;
    for (name, compression, level) in [
        ("uncompressed", Compression::Uncompressed, None),
        ("gzip-6", Compression::Gzip, Some(6)),
        ("zstd-3", Compression::Zstd, Some(3)),
    ] {
        reset_peak_rss();
        let options = LayerOptions {
            compression,
            level,
            threads,
            ..LayerOptions::default()
        };
        let t = Instant::now();
        let layer = write_layer(&store, &DiffSource::Full { root: &tree }, &options).unwrap();
        let secs = t.elapsed().as_secs_f64();
        println!(
            "layer {name:<13} {:>7.0} MB/s  ratio {:.3}  peak RSS {:>5.1} MB",
            layer.uncompressed_size as f64 / 1e6 / secs,
            layer.descriptor.size as f64 / layer.uncompressed_size as f64,
            peak_rss_mb()
        );
        if compression == Compression::Gzip {
            gzip_digest = Some((layer.descriptor.digest.clone(), layer.uncompressed_size));
        }
    }

    // sha256 of 1 GiB in memory.
    let buf = vec![0x5au8; 1 << 30];
    let t = Instant::now();
    let mut h = Sha256::new();
    for chunk in buf.chunks(1 << 20) {
        h.update(chunk);
    }
    std::hint::black_box(h.finalize());
    println!(
        "sha256                {:>7.0} MB/s",
        (1u64 << 30) as f64 / 1e6 / t.elapsed().as_secs_f64()
    );
    drop(buf);

    // Unpack the gzip layer: onto the store's disk as a build does (a base
    // layer imported as a committed snapshot), and (as root) onto a fresh
    // tmpfs, which shows our cost without the filesystem's (ext4's inode
    // allocator dominates on a disk that has seen many deletions).
    let (digest, size) = gzip_digest.unwrap();
    let snaps_dir = base.join(format!("rbuild-bench-snaps-{}", std::process::id()));
    let snaps = Snapshotter::open(&snaps_dir).unwrap();
    let t = Instant::now();
    let reader = store.open_verified(&digest.parse().unwrap()).unwrap();
    snaps.import(None, reader).unwrap();
    println!(
        "unpack gzip (disk)    {:>7.0} MB/s (of tar, snapshot import)",
        size as f64 / 1e6 / t.elapsed().as_secs_f64()
    );
    let _ = fs::remove_dir_all(&snaps_dir);
    let dest = base.join(format!("rbuild-bench-unpack-{}", std::process::id()));
    fs::create_dir_all(&dest).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=3g", "tmpfs"])
        .arg(&dest)
        .status()
        .is_ok_and(|s| s.success());
    if mounted {
        let t = Instant::now();
        let reader = store.open_verified(&digest.parse().unwrap()).unwrap();
        unpack(reader, &dest.join("root"), &UnpackOptions::default()).unwrap();
        println!(
            "unpack gzip (tmpfs)   {:>7.0} MB/s (of tar)",
            size as f64 / 1e6 / t.elapsed().as_secs_f64()
        );
        let _ = std::process::Command::new("umount").arg(&dest).status();
    }
    let _ = fs::remove_dir_all(&dest);

    // Index: 1k commits, 10k lookups.
    let index = CacheIndex::open(&store_dir.join("index.db")).unwrap();
    let t = Instant::now();
    for i in 0..1000u32 {
        index
            .put(&Record {
                key: CacheKey::new(&format!("{i:064x}")).unwrap(),
                result: "{\"layer\":\"sha256:...\"}".into(),
                snapshot: Some(i.to_string()),
                blobs: vec![format!("sha256:{i:064x}")],
                size: 1,
                created: 0,
                last_used: 0,
            })
            .unwrap();
    }
    let commits = t.elapsed();
    let t = Instant::now();
    for i in 0..10_000u32 {
        std::hint::black_box(
            index
                .get(&CacheKey::new(&format!("{:064x}", i % 2000)).unwrap())
                .unwrap(),
        );
    }
    let lookups = t.elapsed();
    println!(
        "index                 1k commits {:.0} ms, 10k lookups {:.0} ms",
        commits.as_secs_f64() * 1e3,
        lookups.as_secs_f64() * 1e3
    );
    let _ = fs::remove_dir_all(&store_dir);
}
