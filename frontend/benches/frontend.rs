//! Frontend throughput: parsing the real-world corpus and expanding words.
//!
//! `cargo bench -p frontend` (release build). Reports MB/s and lines/s for
//! parsing every `../shared/conformance/real-world` Dockerfile together
//! (goal: >= 20 MB/s), the same through typed instructions and the build
//! graph, and words/s for BuildKit-style expansion (goal: >= 1M words/s).
//! Each figure is the median of several rounds.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

use frontend::graph::{NoImages, compile};
use frontend::shell::Lex;
use frontend::stage::{PlanOptions, plan};

fn median_of(rounds: usize, mut f: impl FnMut()) -> Duration {
    let mut times: Vec<Duration> = (0..rounds)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    times.sort();
    times[rounds / 2]
}

fn main() {
    let dir = std::env::var("RBUILD_CONFORMANCE")
        .map(|d| Path::new(&d).join("real-world"))
        .unwrap_or_else(|_| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/conformance/real-world")
        });
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| {
            let p = e.ok()?.path();
            if p.extension()? != "Dockerfile" {
                return None;
            }
            Some(String::from_utf8_lossy(&std::fs::read(p).ok()?).into_owned())
        })
        .collect();
    files.sort();
    let bytes: usize = files.iter().map(String::len).sum();
    let lines: usize = files.iter().map(|f| f.lines().count()).sum();
    println!(
        "corpus: {} files, {} lines, {:.2} MB",
        files.len(),
        lines,
        bytes as f64 / 1e6
    );

    // Parse: repeat the corpus so one round takes long enough to time.
    let reps = 20;
    let t = median_of(7, || {
        for _ in 0..reps {
            for f in &files {
                let _ = black_box(frontend::parse("Dockerfile", black_box(f)));
            }
        }
    });
    let secs = t.as_secs_f64() / reps as f64;
    println!(
        "parse:                {:>8.1} MB/s  {:>10.0} lines/s",
        bytes as f64 / 1e6 / secs,
        lines as f64 / secs
    );

    let parsed: Vec<_> = files
        .iter()
        .filter_map(|f| frontend::parse("Dockerfile", f).ok())
        .collect();
    let t = median_of(7, || {
        for _ in 0..reps {
            for df in &parsed {
                if let Ok(p) = plan(black_box(df), &PlanOptions::default()) {
                    let _ = black_box(compile(&p, &NoImages));
                }
            }
        }
    });
    let secs = t.as_secs_f64() / reps as f64;
    println!(
        "plan + graph:         {:>8.1} MB/s  {:>10.0} lines/s",
        bytes as f64 / 1e6 / secs,
        lines as f64 / secs
    );

    // Expansion: a mix of plain words, variables, modifiers and quotes.
    let env: BTreeMap<String, String> = [
        ("VERSION", "1.2.3"),
        ("PREFIX", "/usr/local"),
        ("TARGETARCH", "amd64"),
        ("EMPTY", ""),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let words = [
        "/usr/src/app",
        "$PREFIX/bin",
        "${VERSION%.*}",
        "app-${VERSION}-${TARGETARCH}.tar.gz",
        "\"quoted $VERSION\"",
        "${EMPTY:-default}",
        "${PREFIX/usr/opt}",
        "plain",
    ];
    let lex = Lex::new('\\');
    let n = 200_000;
    let t = median_of(5, || {
        for i in 0..n {
            let _ = black_box(lex.process_word(black_box(words[i % words.len()]), &env));
        }
    });
    println!(
        "expand (ProcessWord): {:>8.2} M words/s",
        n as f64 / 1e6 / t.as_secs_f64()
    );
    let t = median_of(5, || {
        for i in 0..n {
            let _ = black_box(lex.process_words(black_box(words[i % words.len()]), &env));
        }
    });
    println!(
        "expand (ProcessWords):{:>8.2} M words/s",
        n as f64 / 1e6 / t.as_secs_f64()
    );
}
