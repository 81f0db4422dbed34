//! Per-step RUN start overhead: `RUN true` in a busybox root, many times,
//! with the embedded runtime (goal: <= 5 ms) and, when installed, runc.
//! Needs root and busybox-static. `cargo bench -p builder --bench sandbox`.

use std::os::unix::fs::symlink;
use std::time::Instant;

use builder::sandbox::embedded::Embedded;
use builder::sandbox::runc::Runc;
use builder::sandbox::{Network, RunSpec, Runtime};

fn main() {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: the sandbox needs root");
        return;
    }
    let root = std::env::temp_dir().join(format!("rbuild-bench-sandbox-{}", std::process::id()));
    // The directories an image has (busybox's bench base too), so that a
    // run makes no mount-point stubs but /etc/hosts and /etc/resolv.conf.
    for dir in ["bin", "etc", "proc", "dev", "sys", "tmp"] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    symlink("busybox", root.join("bin/true")).unwrap();
    let runtime = Embedded::default();
    let spec = RunSpec::new(root.clone(), vec!["/bin/true".into()]);
    let runc = Runc::find(&root.with_extension("runc")).ok();
    let mut runtimes: Vec<(&str, &dyn Runtime)> = vec![("embedded", &runtime)];
    if let Some(runc) = &runc {
        runtimes.push(("runc", runc));
    }
    for ((label, network), (name, runtime)) in [
        ("host network", Network::Host),
        ("network none", Network::None),
    ]
    .into_iter()
    .flat_map(|n| runtimes.iter().map(move |r| (n, *r)))
    {
        let spec = RunSpec {
            network,
            ..spec.clone()
        };
        let n = 200;
        let mut times: Vec<f64> = (0..n)
            .map(|_| {
                let t = Instant::now();
                assert_eq!(
                    runtime
                        .run(&spec, &Default::default(), &mut |_, _| {})
                        .unwrap(),
                    0
                );
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        times.sort_by(f64::total_cmp);
        println!(
            "RUN true, {name} ({label}): median {:.2} ms, p90 {:.2} ms",
            times[n / 2],
            times[n * 9 / 10]
        );
    }
    let _ = std::fs::remove_dir_all(&root);
    let _ = std::fs::remove_dir_all(root.with_extension("runc"));
}
