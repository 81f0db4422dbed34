//! What building side by side with BuildKit found (issue 12), where the
//! behaviour cases of `behaviours.rs` can't reach: the layers a step
//! writes, rbuild started with another umask, SOURCE_DATE_EPOCH from the
//! environment, concurrent builds on one state root.

mod common;

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{is_root, rbuild_env, tmp};
use serde_json::Value;

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A context with busybox and `dockerfile`.
fn context(dir: &Path, dockerfile: &str) -> PathBuf {
    let ctx = dir.join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::copy("/bin/busybox", ctx.join("busybox")).expect("busybox-static (.ci/run)");
    std::fs::write(ctx.join("Dockerfile"), dockerfile).unwrap();
    ctx
}

/// A context whose Dockerfile installs busybox's applets, then `steps`.
fn busybox_context(dir: &Path, steps: &str) -> PathBuf {
    context(
        dir,
        &format!(
            "FROM scratch\nCOPY busybox /bin/busybox\n\
             RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n{steps}"
        ),
    )
}

/// `rbuild build --no-cache --progress plain --runtime RUNTIME` on a root
/// of that runtime's own under `dir`, with `RBUILD_CGROUP_VIEW=view`.
fn runtime_build(dir: &Path, runtime: &str, view: &str) -> Command {
    let mut c = common::rbuild_command(&dir.join(format!("root-{runtime}")));
    c.args([
        "build",
        "--no-cache",
        "--progress",
        "plain",
        "--runtime",
        runtime,
    ])
    .env("RBUILD_CGROUP_VIEW", view);
    c
}

fn read_json(p: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

fn blob(layout: &Path, digest: &str) -> PathBuf {
    layout
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
}

/// A layer's entries: name -> (type, mode, uid, gid).
type Entries = BTreeMap<String, (char, u32, u64, u64)>;

/// An OCI layout's (first) image: its config, and each layer's entries
/// with the history entry that made it.
struct Image {
    config: Value,
    layers: Vec<(String, Entries)>,
}

fn image(layout: &Path) -> Image {
    let index = read_json(&layout.join("index.json"));
    let manifest = read_json(&blob(
        layout,
        index["manifests"][0]["digest"].as_str().unwrap(),
    ));
    let config = read_json(&blob(
        layout,
        manifest["config"]["digest"].as_str().unwrap(),
    ));
    let made_by: Vec<String> = config["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| !h["empty_layer"].as_bool().unwrap_or(false))
        .map(|h| h["created_by"].as_str().unwrap_or("").to_string())
        .collect();
    let layers = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .zip(made_by)
        .map(|(l, by)| {
            let file = std::fs::File::open(blob(layout, l["digest"].as_str().unwrap())).unwrap();
            let mut entries = BTreeMap::new();
            let mut archive = tar::Archive::new(flate2::read::MultiGzDecoder::new(file));
            for e in archive.entries().unwrap() {
                let e = e.unwrap();
                let h = e.header();
                let kind = match h.entry_type() {
                    tar::EntryType::Directory => 'd',
                    tar::EntryType::Symlink => 'l',
                    tar::EntryType::Link => 'h',
                    _ => 'f',
                };
                entries.insert(
                    e.path().unwrap().display().to_string(),
                    (kind, h.mode().unwrap(), h.uid().unwrap(), h.gid().unwrap()),
                );
            }
            (by, entries)
        })
        .collect();
    Image { config, layers }
}

/// `rbuild build` to an OCI layout directory, with rbuild's umask set.
fn build_layout(root: &Path, ctx: &Path, layout: &Path, umask: u32) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rbuild"));
    cmd.arg("--root")
        .arg(root)
        .args(["build", "-q", "-o"])
        .arg(format!("type=oci,dest={},tar=false", layout.display()))
        .arg(ctx);
    // SAFETY: umask is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            libc::umask(umask);
            Ok(())
        });
    }
    cmd.output().unwrap()
}

/// A RUN on a root without /dev, /proc, /sys: its layer holds them (0755,
/// root's), as runc makes them and BuildKit keeps them; the stubs of
/// /etc/hosts, /etc/resolv.conf and of the step's mounts are gone; files
/// the step makes have the modes of umask 0022 whatever rbuild's umask;
/// a step that changed nothing but mount stubs adds no layer.
#[test]
fn run_layers_hold_what_buildkits_do() {
    if !is_root() {
        eprintln!("skipped: building needs root (overlay, namespaces)");
        return;
    }
    let t = tmp("exact-layers");
    let ctx = context(
        &t.0,
        "FROM scratch\n\
         COPY busybox /bin/busybox\n\
         RUN [\"/bin/busybox\", \"sh\", \"-c\", \"/bin/busybox mkdir /made && /bin/busybox touch /made/f\"]\n\
         RUN [\"/bin/busybox\", \"mkdir\", \"-p\", \"/root/keep\"]\n\
         RUN --mount=type=tmpfs,target=/root/.cache --mount=type=tmpfs,target=/srv/x/y [\"/bin/busybox\", \"true\"]\n",
    );
    let layout = t.0.join("layout");
    let o = build_layout(&t.0.join("state"), &ctx, &layout, 0o077);
    assert!(o.status.success(), "{}", text(&o));
    let img = image(&layout);
    let (by, first_run) = &img.layers[1];
    assert!(by.contains("mkdir /made"), "{by}");
    for dir in ["dev/", "proc/", "sys/"] {
        assert_eq!(
            first_run.get(dir),
            Some(&('d', 0o755, 0, 0)),
            "{dir} in {first_run:?}"
        );
    }
    assert_eq!(first_run.get("made/"), Some(&('d', 0o755, 0, 0)));
    assert_eq!(first_run.get("made/f"), Some(&('f', 0o644, 0, 0)));
    assert!(
        !first_run.keys().any(|k| k.starts_with("etc")),
        "{first_run:?}"
    );
    // The second RUN: its own directory only, the runtime's are there.
    let (_, second) = &img.layers[2];
    assert_eq!(
        second.keys().collect::<Vec<_>>(),
        ["root/", "root/keep/"],
        "{second:?}"
    );
    // The third only made and removed mount stubs (/root/.cache in an
    // existing directory, /srv/x/y in new ones): no layer, and history
    // says so.
    assert_eq!(img.layers.len(), 3, "{:?}", img.layers);
    let history = img.config["history"].as_array().unwrap();
    let last = history.last().unwrap();
    assert!(
        last["created_by"].as_str().unwrap().contains("true"),
        "{last}"
    );
    assert_eq!(last["empty_layer"], Value::Bool(true), "{last}");
}

/// SOURCE_DATE_EPOCH from the environment (as buildx reads it) with
/// rewrite-timestamp: the same image from fresh roots a second apart and
/// from four builds started together on one root.
#[test]
fn source_date_epoch_from_the_environment() {
    if !is_root() {
        eprintln!("skipped: building needs root (overlay, namespaces)");
        return;
    }
    let t = tmp("exact-sde");
    let ctx = context(
        &t.0,
        "FROM scratch\n\
         COPY busybox /bin/busybox\n\
         RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n\
         RUN mkdir /out && echo hello > /out/a.txt\n",
    );
    let env = [("SOURCE_DATE_EPOCH", "1700000000")];
    let build = |root: &Path, name: &str| {
        let layout = t.0.join(name);
        let o = rbuild_env(
            root,
            &[
                "build",
                "-q",
                "--no-cache",
                "-o",
                &format!(
                    "type=oci,dest={},tar=false,rewrite-timestamp=true",
                    layout.display()
                ),
                ctx.to_str().unwrap(),
            ],
            &env,
        );
        assert!(o.status.success(), "{}", text(&o));
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    let first = build(&t.0.join("root-a"), "a");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let second = build(&t.0.join("root-b"), "b");
    assert_eq!(first, second, "fresh roots a second apart");
    let created = image(&t.0.join("a")).config["created"].clone();
    assert_eq!(created, Value::String("2023-11-14T22:13:20Z".into()));

    let shared = t.0.join("root-shared");
    let ids: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let shared = &shared;
                let build = &build;
                s.spawn(move || build(shared, &format!("together-{i}")))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(ids.iter().all(|id| *id == first), "{first} vs {ids:?}");
    // A --build-arg wins over the environment.
    let o = rbuild_env(
        &t.0.join("root-a"),
        &[
            "build",
            "-q",
            "--build-arg",
            "SOURCE_DATE_EPOCH=1600000000",
            "-t",
            "sde:arg",
            ctx.to_str().unwrap(),
        ],
        &env,
    );
    assert!(o.status.success(), "{}", text(&o));
    let inspect = rbuild_env(&t.0.join("root-a"), &["inspect", "sde:arg"], &[]);
    let config: Value = serde_json::from_slice(&inspect.stdout).unwrap();
    assert_eq!(
        config["Config"]["created"],
        Value::String("2020-09-13T12:26:40Z".into()),
        "{config}"
    );
}

/// A secret a step prints is masked in every progress mode (rawjson's
/// base64 data too), in the error of a failing step and in the metadata
/// file, also when the output splits it between two writes.
#[test]
fn secrets_are_masked_everywhere() {
    if !is_root() {
        eprintln!("skipped: building needs root (overlay, namespaces)");
        return;
    }
    use base64::Engine as _;
    let t = tmp("exact-mask");
    let secret = "hunter2-secret-value";
    let ctx = context(
        &t.0,
        "FROM scratch\n\
         COPY busybox /bin/busybox\n\
         RUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n\
         ARG FAIL=0\n\
         RUN --mount=type=secret,id=s,env=TOKEN,target=/run/secrets/s cat /run/secrets/s; echo; \
         printf '%s' \"$TOKEN\" | head -c 7; sleep 0.2; printf '%s\\n' \"$TOKEN\" | tail -c +8; \
         echo \"$TOKEN\" >&2; test $FAIL = 0\n",
    );
    std::fs::write(ctx.join("s"), secret).unwrap();
    let root = t.0.join("state");
    let run = |progress: &str, fail: &str| {
        let meta = t.0.join(format!("meta-{progress}-{fail}.json"));
        let o = rbuild_env(
            &root,
            &[
                "build",
                "--no-cache",
                "--progress",
                progress,
                "--build-arg",
                &format!("FAIL={fail}"),
                "--secret",
                &format!("id=s,src={}", ctx.join("s").display()),
                "--metadata-file",
                meta.to_str().unwrap(),
                "-t",
                &format!("{secret}:1"),
                ctx.to_str().unwrap(),
            ],
            &[],
        );
        (o, std::fs::read_to_string(meta).unwrap_or_default())
    };
    for progress in ["plain", "rawjson"] {
        let (o, meta) = run(progress, "0");
        assert!(o.status.success(), "{}", text(&o));
        let mut all = text(&o);
        if progress == "rawjson" {
            for line in String::from_utf8_lossy(&o.stderr).lines() {
                let Ok(event) = serde_json::from_str::<Value>(line) else {
                    continue;
                };
                for log in event["logs"].as_array().into_iter().flatten() {
                    let data = base64::engine::general_purpose::STANDARD
                        .decode(log["data"].as_str().unwrap())
                        .unwrap();
                    all.push_str(&String::from_utf8_lossy(&data));
                }
            }
        }
        assert!(!all.contains(secret), "{progress}: {all}");
        assert!(!all.contains("hunter2"), "{progress}: {all}");
        // Three lines of the step, and the tag named at the end.
        assert_eq!(all.matches("****").count(), 4, "{progress}: {all}");
        assert!(meta.contains("\"image.name\": \"****:1\""), "{meta}");
    }
    let (o, _) = run("plain", "1");
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    let error = &err[err.find("error:").expect("an error")..];
    assert!(error.contains("****"), "{error}");
    assert!(!err.contains("hunter2"), "{err}");
}

/// A stage of 10,000 ENV lines, 10,000 LABEL lines or 10,000 chained ARGs
/// builds at a cost linear in its length (it took minutes and 8-10 GB when
/// every step copied the whole config): generous bounds, far below what a
/// quadratic cost takes and far above what a linear one does (about 0.2 s
/// and 45 MB each here in a debug build).
#[test]
fn big_dockerfiles_cost_linear() {
    if !is_root() {
        eprintln!("skipped: building needs root (overlay, namespaces)");
        return;
    }
    let t = tmp("exact-big");
    let n = 10_000;
    let cases = [
        (
            "env",
            (0..n)
                .map(|i| format!("ENV V{i}={i}\n"))
                .collect::<String>(),
        ),
        (
            "label",
            (0..n).map(|i| format!("LABEL l{i}=\"v\"\n")).collect(),
        ),
        (
            "arg",
            std::iter::once("ARG A0=x\n".to_string())
                .chain((1..n).map(|i| format!("ARG A{i}=${{A{}:-x}}\n", i - 1)))
                .collect(),
        ),
    ];
    for (name, body) in cases {
        let dir = t.0.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("Dockerfile"), format!("FROM scratch\n{body}")).unwrap();
        #[allow(clippy::zombie_processes)] // reaped by wait4 below
        let mut child = Command::new(env!("CARGO_BIN_EXE_rbuild"))
            .arg("--root")
            .arg(t.0.join("state"))
            .args(["build", "-q", "-t", &format!("big:{name}")])
            .arg(&dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id() as libc::pid_t;
        let started = std::time::Instant::now();
        // A quadratic build would run for minutes: stop it at the bound.
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let watchdog = std::thread::spawn(move || {
            if done_rx
                .recv_timeout(std::time::Duration::from_secs(60))
                .is_err()
            {
                // SAFETY: signalling our own child.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        });
        let mut status = 0;
        // SAFETY: a zeroed rusage is valid; waiting for our own child.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        let _ = done_tx.send(());
        watchdog.join().unwrap();
        let elapsed = started.elapsed();
        let mut err = String::new();
        use std::io::Read as _;
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        assert_eq!(waited, pid);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "{name}: status {status} after {elapsed:?}: {err}"
        );
        let peak_mb = usage.ru_maxrss / 1024;
        assert!(peak_mb < 500, "{name}: {peak_mb} MB peak");
        eprintln!("{name}: {elapsed:?}, {peak_mb} MB peak");
    }
    let inspect = rbuild_env(&t.0.join("state"), &["inspect", "big:env"], &[]);
    let config: Value = serde_json::from_slice(&inspect.stdout).unwrap();
    assert_eq!(
        config["Config"]["config"]["Env"].as_array().map(Vec::len),
        Some(n + 1),
        "PATH and every V"
    );
    assert_eq!(
        config["Config"]["history"].as_array().map(Vec::len),
        Some(n)
    );
}

/// A fifo or device named as a COPY/ADD source is made again, as the
/// context transfer and fsutil's copy make it in BuildKit, never read: a
/// fifo opened waits for a writer for good (the build hung), a device such
/// as /dev/zero streams without end.
#[test]
fn special_files_as_sources_are_made_not_read() {
    if !is_root() {
        eprintln!("skipped: building needs root");
        return;
    }
    let t = tmp("special-sources");
    let ctx = context(
        &t.0,
        "FROM scratch AS a\nCOPY fifo /x\nADD fifo /y\nADD zero /z\nFROM a\nCOPY --from=a /x /again\n",
    );
    for (name, kind) in [("fifo", "p"), ("zero", "c")] {
        let mut mknod = Command::new("mknod");
        mknod.arg(ctx.join(name)).arg(kind);
        if kind == "c" {
            mknod.args(["1", "5"]);
        }
        assert!(mknod.status().unwrap().success());
    }
    let out = t.0.join("out");
    let child = common::rbuild_command(&t.0.join("root"))
        .args(["build", "-q", "-o"])
        .arg(format!("type=local,dest={}", out.display()))
        .arg(&ctx)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let o = common::output_within(child, 60, "the build hung on a special file");
    assert!(o.status.success(), "{}", text(&o));
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    for name in ["x", "y", "again"] {
        let m = std::fs::symlink_metadata(out.join(name)).unwrap();
        assert!(m.file_type().is_fifo(), "/{name} is no fifo");
    }
    let z = std::fs::symlink_metadata(out.join("z")).unwrap();
    assert!(z.file_type().is_char_device(), "/z is no device");
    assert_eq!(z.rdev(), libc::makedev(1, 5));
}

/// Trees nested deeper than any default thread stack holds when walked
/// one frame a level: a context 1,500 directories deep is copied (it
/// aborted rbuild with a stack overflow from about 700 levels), and a
/// step that nests deeper than paths reach fails naming the step, never
/// aborting.
#[test]
fn deeply_nested_trees_are_walked_or_refused() {
    if !is_root() {
        eprintln!("skipped: building needs root");
        return;
    }
    let t = tmp("deep-trees");
    let ctx = context(
        &t.0,
        "FROM scratch\nCOPY busybox /bin/busybox\nCOPY deep /c/\nRUN [\"/bin/busybox\", \"sh\", \"-c\", \"/bin/busybox find /c | /bin/busybox wc -l\"]\n",
    );
    let mut dir = ctx.join("deep");
    for _ in 0..1500 {
        dir.push("d");
    }
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("f"), "x").unwrap();
    let root = t.0.join("root");
    let o = rbuild_env(
        &root,
        &["build", "--progress=plain", ctx.to_str().unwrap()],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains(" 1502\n"), "{}", text(&o));

    // A step's own tree 30,000 levels deep (made with relative chdirs, as
    // no path reaches its bottom; deeper than the open-file limit): its
    // layer can't be read by path, as in BuildKit, and the failure names
    // the step; the snapshot holding it can still be removed.
    std::fs::remove_dir_all(ctx.join("deep")).unwrap();
    let src = t.0.join("deepmk.c");
    std::fs::write(
        &src,
        "#include <stdlib.h>\n#include <sys/stat.h>\n#include <unistd.h>\n\
         int main(int c, char **v) { int n = atoi(v[1]);\n\
         for (int i = 0; i < n; i++) { if (mkdir(\"d\", 0755) || chdir(\"d\")) return 1; }\n\
         return 0; }\n",
    )
    .unwrap();
    let cc = Command::new("cc")
        .args(["-static", "-O2", "-o"])
        .arg(ctx.join("deepmk"))
        .arg(&src)
        .status()
        .expect("cc (build-essential, .ci/run)");
    assert!(cc.success());
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM scratch\nCOPY deepmk /deepmk\nRUN [\"/deepmk\", \"30000\"]\n",
    )
    .unwrap();
    let o = rbuild_env(
        &root,
        &["build", "--progress=plain", ctx.to_str().unwrap()],
        &[],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("error: writing the layer of RUN /deepmk 30000\n"),
        "{}",
        text(&o)
    );
    let o = rbuild_env(&root, &["prune", "--all"], &[]);
    assert!(o.status.success(), "{}", text(&o));
    for snapshot in std::fs::read_dir(root.join("snapshots/committed")).unwrap() {
        let deep = snapshot.unwrap().path().join("fs/d");
        assert!(!deep.exists(), "{} left after prune --all", deep.display());
    }
}

/// `rbuild prune --all` while a build runs keeps what that build found
/// and made: the build finished with "the record of a pending layer is
/// gone" (and the snapshots under its running step could go, a `COPY
/// --link` merge's first: no record keeps one) before each build kept its
/// records and new snapshots in a lease.
#[test]
fn prune_during_a_build_keeps_what_it_uses() {
    if !is_root() {
        eprintln!("skipped: building needs root");
        return;
    }
    use std::io::BufRead as _;
    let t = tmp("prune-during-build");
    let ctx = context(
        &t.0,
        "FROM scratch\nCOPY busybox /bin/busybox\n\
         RUN [\"/bin/busybox\", \"sh\", \"-c\", \"echo one > /one\"]\n\
         COPY --link Dockerfile /linked\n\
         RUN [\"/bin/busybox\", \"sh\", \"-c\", \"/bin/busybox sleep 2; /bin/busybox cat /one\"]\n\
         RUN [\"/bin/busybox\", \"sh\", \"-c\", \"/bin/busybox cat /one /linked > /two\"]\n",
    );
    let root = t.0.join("root");
    let out = t.0.join("out");
    let mut build = common::rbuild_command(&root)
        .args(["build", "--progress=plain", "-o"])
        .arg(format!("type=local,dest={}", out.display()))
        .arg(&ctx)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut log = String::new();
    let mut lines = std::io::BufReader::new(build.stderr.take().unwrap()).lines();
    // Prune once the sleeping step runs: the steps before it are recorded.
    for line in lines.by_ref() {
        let line = line.unwrap();
        log.push_str(&line);
        log.push('\n');
        if line.contains("sleep 2") {
            break;
        }
    }
    let pruned = rbuild_env(&root, &["prune", "--all"], &[]);
    assert!(pruned.status.success(), "{}", text(&pruned));
    for line in lines {
        log.push_str(&line.unwrap());
        log.push('\n');
    }
    assert!(build.wait().unwrap().success(), "{log}");
    let two = std::fs::read_to_string(out.join("two")).unwrap();
    assert!(two.starts_with("one\nFROM scratch"), "{two}");
}

/// A cache index SQLite can't read (a disk fault, a torn copy) is moved
/// aside with a warning and an empty one started: every command on the
/// state directory failed with "database disk image is malformed".
#[test]
fn an_unreadable_cache_index_is_started_anew() {
    if !is_root() {
        eprintln!("skipped: building needs root");
        return;
    }
    let t = tmp("corrupt-index");
    let ctx = context(
        &t.0,
        "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"touch\", \"/x\"]\n",
    );
    let root = t.0.join("root");
    let build = || {
        rbuild_env(
            &root,
            &["build", "--progress=plain", ctx.to_str().unwrap()],
            &[],
        )
    };
    let o = build();
    assert!(o.status.success(), "{}", text(&o));
    let index = root.join("index.db");
    let cut = std::fs::read(&index).unwrap()[..100].to_vec();
    std::fs::write(&index, &cut).unwrap();
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", index.display()));
    }
    let o = build();
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("WARNING: the cache index of") && text(&o).contains("was unreadable"),
        "{}",
        text(&o)
    );
    let aside: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("index.db.corrupt-")
        })
        .collect();
    assert_eq!(aside.len(), 1);
    assert_eq!(std::fs::read(aside[0].path()).unwrap(), cut);
    // The new index works: the next build finds its steps, no warning.
    let o = build();
    assert!(o.status.success(), "{}", text(&o));
    assert!(!text(&o).contains("WARNING"), "{}", text(&o));
    assert!(text(&o).contains("CACHED"), "{}", text(&o));
}

/// /sys/fs/cgroup as BuildKit's spec has it (cgroups mounted read-only,
/// laid out by runc, and a cgroup namespace where v2 is unified). The
/// embedded runtime with the unified view (this host's own where it runs
/// cgroup v2 alone; asked for with `RBUILD_CGROUP_VIEW=unified` on a
/// hybrid one): each step in a cgroup of its own, the root of its
/// namespace, cgroup2 read-only, the cgroup gone after the build. runc:
/// a read-only mount there. A step's own mount at /sys/fs/cgroup replaces
/// the runtime's, in both runtimes.
#[test]
fn cgroups_are_shown_as_buildkit_shows_them() {
    if !is_root() {
        eprintln!("skipped: building needs root");
        return;
    }
    let t = tmp("cgroups");
    let ctx = busybox_context(
        &t.0,
        "RUN --mount=type=tmpfs,target=/mnt grep ' /sys/fs/cgroup' /proc/mounts | cut -d' ' -f2-4 > /mnt/m; \
         cat /mnt/m; tail -1 /proc/self/cgroup; \
         echo procs $(cat /sys/fs/cgroup/cgroup.procs 2>/dev/null | grep -cx 0); \
         mkdir /sys/fs/cgroup/memory/x /sys/fs/cgroup/x 2>/dev/null || echo read-only\n\
         RUN --mount=type=tmpfs,target=/sys/fs/cgroup grep -c ' /sys/fs/cgroup' /proc/mounts\n",
    );
    let unified_host = Path::new("/sys/fs/cgroup/cgroup.subtree_control").exists();
    let unified_mount = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .into_iter()
        .find(|m| Path::new(m).join("cgroup.controllers").exists())
        .expect("a cgroup2 hierarchy");
    let build = |runtime: &str, view: &str| {
        let child = runtime_build(&t.0, runtime, view)
            .arg(&ctx)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        let o = common::output_within(child, 120, "a build with cgroups hung");
        assert!(o.status.success(), "{}", text(&o));
        // What the two RUN steps printed.
        let log: Vec<String> = String::from_utf8_lossy(&o.stderr)
            .lines()
            .filter_map(|l| {
                let (step, rest) = l.strip_prefix('#')?.split_once(' ')?;
                let (time, line) = rest.split_once(' ')?;
                (step.parse::<u32>().ok()? >= 3 && time.parse::<f64>().is_ok())
                    .then(|| line.to_string())
            })
            .collect();
        // The step's cgroups are gone.
        let left: Vec<_> = std::fs::read_dir(unified_mount)
            .unwrap()
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with(&format!("rbuild-{pid}-"))
            })
            .collect();
        assert!(left.is_empty(), "{left:?}");
        log
    };
    assert_eq!(
        build("embedded", "unified"),
        [
            "/sys/fs/cgroup cgroup2 ro,nosuid,nodev,noexec,relatime",
            "0::/",
            "procs 0",
            "read-only",
            "1"
        ]
    );
    if !unified_host {
        // cgroup v1 here: the embedded runtime makes no cgroup of a step's
        // own and shows none of the host's.
        assert_eq!(build("embedded", ""), ["0::/", "procs 0", "read-only", "1"]);
    }
    let runc = build("runc", "");
    assert!(
        runc[0].starts_with(if unified_host {
            "/sys/fs/cgroup cgroup2 ro,"
        } else {
            "/sys/fs/cgroup tmpfs rw,nosuid,nodev,noexec"
        }),
        "{runc:?}"
    );
    assert!(runc.iter().any(|l| l == "read-only"), "{runc:?}");
    assert_eq!(runc.last().map(String::as_str), Some("1"), "{runc:?}");
}

/// A base image's ONBUILD triggers count with the file's instructions
/// (an image config may hold millions): a build past 100,000 of them is
/// refused at the FROM that passes it, never run out of memory.
#[test]
fn onbuild_triggers_count_as_instructions() {
    if !is_root() {
        eprintln!("skipped: building needs root");
        return;
    }
    let t = tmp("many-triggers");
    let root = t.0.join("root");
    let triggers: String = (0..60_000)
        .map(|i| format!("ONBUILD LABEL l{i}=v\n"))
        .collect();
    let base = context(&t.0.join("base"), &format!("FROM scratch\n{triggers}"));
    let o = rbuild_env(
        &root,
        &["build", "-q", "-t", "triggers:1", base.to_str().unwrap()],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    // One stage on it: 60,000 triggers run.
    let one = context(&t.0.join("one"), "FROM triggers:1\nLABEL done=1\n");
    let o = rbuild_env(&root, &["build", "-q", one.to_str().unwrap()], &[]);
    assert!(o.status.success(), "{}", text(&o));
    // Two: 120,000.
    let two = context(
        &t.0.join("two"),
        "FROM triggers:1 AS one\nFROM triggers:1 AS two\nCOPY --from=one / /x\n",
    );
    let o = rbuild_env(&root, &["build", "-q", two.to_str().unwrap()], &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains(
            "Dockerfile:2:1: more than 100000 instructions with the base images' ONBUILD triggers: \
             the Dockerfile is too large to build"
        ),
        "{}",
        text(&o)
    );
}

/// `--cgroup-parent P` (BuildKit's testCgroupParent): RUN steps run in a
/// cgroup below P (`P/buildkit/ID`), so P's limits hold them: with
/// `pids.max` 10 a step can't start a dozen processes. runc does it on
/// cgroup v1 and v2; the embedded runtime where v2 is unified (on a v1
/// host it says to use runc; asked for the unified view on a hybrid host
/// it places the step below P in the v2 hierarchy).
#[test]
fn cgroup_parent_limits_hold_run_steps() {
    if !is_root() {
        eprintln!("skipped: building needs root");
        return;
    }
    let t = tmp("cgroup-parent");
    let ctx = busybox_context(
        &t.0,
        "RUN (for i in $(seq 1 12); do sleep 1 & done) 2>&1 | head -1; tail -1 /proc/self/cgroup\n",
    );
    let parent = format!("rbuild-test-{}", std::process::id());
    let unified_host = Path::new("/sys/fs/cgroup/cgroup.subtree_control").exists();
    // Where pids.max goes: the v1 pids hierarchy, or v2 with the pids
    // controller enabled for the root's children.
    let pids = if unified_host {
        let _ = std::fs::write("/sys/fs/cgroup/cgroup.subtree_control", "+pids");
        PathBuf::from("/sys/fs/cgroup")
    } else {
        PathBuf::from("/sys/fs/cgroup/pids")
    };
    let limited = pids.join(&parent);
    std::fs::create_dir_all(&limited).unwrap();
    std::fs::write(limited.join("pids.max"), "10").unwrap();
    let build = |runtime: &str, view: &str| {
        runtime_build(&t.0, runtime, view)
            .args(["--cgroup-parent", &parent])
            .arg(&ctx)
            .output()
            .unwrap()
    };
    let o = build("runc", "");
    let log = text(&o);
    assert!(o.status.success(), "{log}");
    assert!(
        log.contains("can't fork: Resource temporarily unavailable"),
        "{log}"
    );
    if unified_host {
        let o = build("embedded", "");
        assert!(o.status.success(), "{}", text(&o));
        assert!(
            text(&o).contains("can't fork: Resource temporarily unavailable"),
            "{}",
            text(&o)
        );
        // cgroupns: the step doesn't see the parent's name.
        assert!(text(&o).contains(" 0::/\n"), "{}", text(&o));
    } else {
        let o = build("embedded", "");
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        assert!(
            text(&o).contains(&format!(
                "error: --cgroup-parent {parent}: the embedded runtime places steps in cgroups \
                 only where cgroup v2 is unified, and this host runs cgroup v1; use --runtime runc"
            )),
            "{}",
            text(&o)
        );
        // The v2 hierarchy beside v1: the step's cgroup below the parent,
        // gone after the step.
        let o = build("embedded", "unified");
        assert!(o.status.success(), "{}", text(&o));
        let v2 = Path::new("/sys/fs/cgroup/unified")
            .join(&parent)
            .join("buildkit");
        let steps: Vec<_> = std::fs::read_dir(&v2)
            .unwrap()
            .flatten()
            .filter(|e| e.file_type().unwrap().is_dir())
            .collect();
        assert!(steps.is_empty(), "{steps:?}");
        let _ = std::fs::remove_dir(&v2);
        let _ = std::fs::remove_dir(v2.parent().unwrap());
    }
    let _ = std::fs::remove_dir(limited.join("buildkit"));
    std::fs::remove_dir(&limited).unwrap();
}

/// A hostile archive: a few KiB of gzip declaring a PAX header of 64 MiB
/// (gigabytes cost the same few KiB) was read whole into memory by the tar
/// parser. ADD refuses it at its header, as Go's archive/tar does past
/// 1 MiB, naming the archive and why.
#[test]
fn oversized_tar_headers_are_refused_unread() {
    if !is_root() {
        eprintln!("skipped: building needs root");
        return;
    }
    use std::io::Write;
    let t = tmp("pax-bomb");
    let ctx = context(&t.0, "FROM scratch\nADD evil.tar.gz /\n");
    let mut header = tar::Header::new_ustar();
    header.set_path("././@PaxHeader").unwrap();
    header.set_size(64 << 20);
    header.set_entry_type(tar::EntryType::XHeader);
    header.set_cksum();
    let file = std::fs::File::create(ctx.join("evil.tar.gz")).unwrap();
    let mut gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
    gz.write_all(header.as_bytes()).unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..64 {
        gz.write_all(&zeros).unwrap();
    }
    gz.finish().unwrap();
    let o = rbuild_env(
        &t.0.join("root"),
        &["build", "-q", ctx.to_str().unwrap()],
        &[],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains(
            "Caused by: extracting evil.tar.gz\n  Caused by: reading layer\n  \
             Caused by: tar PAX header of 67108864 bytes: header field too long (more than 1 MiB)"
        ),
        "{}",
        text(&o)
    );
}
