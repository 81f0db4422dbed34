//! The context side of a no-op rebuild: the content key of `COPY src/`
//! over 3,000 files in 60 directories whose digests the stat cache holds
//! (a stat walk, no file read), and the stat cache's read of the
//! context's records. `cargo bench -p builder --bench context`.

use std::path::Path;
use std::time::{Duration, Instant};

use builder::copy::{StatCache, content_digest};
use cache::index::CacheIndex;

fn main() {
    let dir = std::env::temp_dir().join(format!("rbuild-bench-context-{}", std::process::id()));
    let ctx = dir.join("ctx");
    for d in 0..60 {
        let sub = ctx.join(format!("src/d{d:02}"));
        std::fs::create_dir_all(&sub).unwrap();
        for f in 0..50 {
            std::fs::write(
                sub.join(format!("f{f:03}.txt")),
                format!("{d} {f}\n").repeat(20),
            )
            .unwrap();
        }
    }
    let index = CacheIndex::open(&dir.join("index.db")).unwrap();
    let sources = ["src/".to_string()];
    // Files are recorded once they have settled (two seconds).
    std::thread::sleep(Duration::from_millis(2100));
    let walk = || {
        let stat = StatCache::new(&index, "bench");
        let t = Instant::now();
        let key = content_digest(&ctx, None, &sources, &[], Some(&stat)).unwrap();
        (t.elapsed(), key)
    };
    let (first, key) = walk();
    let runs: usize = std::env::var("RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(200);
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let (t, k) = walk();
            assert_eq!(k, key);
            t
        })
        .collect();
    times.sort();
    println!(
        "content key, 3,000 files: first (hashing) {:.2} ms, cached median {:.2} ms, min {:.2} ms",
        ms(first),
        ms(times[runs / 2]),
        ms(times[0])
    );
    let mut reads: Vec<Duration> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(
                index
                    .stat_under("bench", ctx.as_os_str().as_encoded_bytes())
                    .unwrap(),
            );
            t.elapsed()
        })
        .collect();
    reads.sort();
    println!(
        "stat cache read of 3,000 records: median {:.2} ms",
        ms(reads[runs / 2])
    );
    let _ = std::fs::remove_dir_all(Path::new(&dir));
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
