//! A cache that travels: two state roots as two machines, one exporting
//! with `--cache-to`, the other (empty) importing with `--cache-from`, in
//! an OCI layout directory and in a real registry (docker-registry on
//! 127.0.0.1); mode=min against mode=max; a changed file; a missing cache
//! and a corrupt blob, which are warnings.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::registry::{Options, Registry};
use common::{is_root, rbuild, tmp};

const DOCKERFILE: &str = "FROM scratch AS base
COPY busybox /bin/busybox
RUN [\"/bin/busybox\",\"--install\",\"-s\",\"/bin\"]
FROM base AS build
RUN echo built > /artifact && echo work > /build-only
FROM base
COPY data.txt /data.txt
COPY --from=build /artifact /artifact
RUN cat /data.txt /artifact > /both
";

fn context(dir: &Path) -> PathBuf {
    let ctx = dir.join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::copy("/bin/busybox", ctx.join("busybox")).unwrap();
    std::fs::write(ctx.join("data.txt"), "hello\n").unwrap();
    std::fs::write(ctx.join("Dockerfile"), DOCKERFILE).unwrap();
    ctx
}

fn ok(o: &Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Builds `ctx` on `root` with `extra` flags; returns (steps that ran by
/// name, cached count, stderr).
fn build(root: &Path, ctx: &Path, extra: &[&str]) -> (Vec<String>, usize, String) {
    let mut args = vec!["build", "--progress=plain", "-t", "app:1"];
    args.extend_from_slice(extra);
    args.push(ctx.to_str().unwrap());
    let err = ok(&rbuild(root, &args));
    // `#N [name] ...` then `#N DONE` for a step that ran.
    let mut names = std::collections::BTreeMap::new();
    let mut ran = Vec::new();
    let mut cached = 0;
    for line in err.lines() {
        let Some((num, rest)) = line.split_once(' ') else {
            continue;
        };
        if rest.starts_with('[') {
            names.insert(num.to_string(), rest.to_string());
        } else if rest.starts_with("DONE") {
            // Downloads show as `[internal] pull ...` steps: not the
            // Dockerfile's.
            let name = names.get(num).cloned().unwrap_or_default();
            if !name.starts_with("[internal]") {
                ran.push(name);
            }
        } else if rest == "CACHED" {
            cached += 1;
        }
    }
    (ran, cached, err)
}

/// The layer digests of the cache in the OCI layout `dir`.
fn layout_layers(dir: &Path) -> Vec<String> {
    let read = |d: &str| -> serde_json::Value {
        let hex = d.strip_prefix("sha256:").unwrap();
        serde_json::from_slice(&std::fs::read(dir.join("blobs/sha256").join(hex)).unwrap()).unwrap()
    };
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    let manifest = read(index["manifests"][0]["digest"].as_str().unwrap());
    manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect()
}

fn image_id(root: &Path) -> serde_json::Value {
    let o = rbuild(root, &["inspect", "app:1"]);
    serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()["Id"].clone()
}

#[test]
fn local_cache_mode_max_and_min() {
    if !is_root() {
        eprintln!("skipped: RUN needs root");
        return;
    }
    let t = tmp("cache-local");
    let ctx = context(&t.0);
    let dir = t.0.join("cache");
    let (a, b) = (t.0.join("a"), t.0.join("b"));
    let to = format!("type=local,dest={},mode=max", dir.display());
    let (ran, _, _) = build(&a, &ctx, &["--cache-to", &to]);
    assert_eq!(ran.len(), 6, "{ran:?}");
    assert!(dir.join("index.json").is_file() && !dir.join("index.json.lock").exists());

    // An empty root, the context at another path with other mtimes and
    // inodes (keys hold content only): every step from the cache, the
    // same image.
    let moved = t.0.join("elsewhere");
    std::fs::create_dir_all(&moved).unwrap();
    for f in ["busybox", "data.txt", "Dockerfile"] {
        std::fs::copy(ctx.join(f), moved.join(f)).unwrap();
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(3600);
        std::fs::File::options()
            .write(true)
            .open(moved.join(f))
            .unwrap()
            .set_modified(later)
            .unwrap();
    }
    let from = format!("type=local,src={}", dir.display());
    let (ran, cached, _) = build(&b, &moved, &["--cache-from", &from]);
    assert!(ran.is_empty(), "{ran:?}");
    assert_eq!(cached, 6);
    assert_eq!(image_id(&a), image_id(&b));
    // Import is lazy: of the cache's layers only the image's came (the
    // build stage's does not), and no step's files were made.
    let inspect =
        serde_json::from_slice::<serde_json::Value>(&rbuild(&b, &["inspect", "app:1"]).stdout)
            .unwrap();
    let in_image: Vec<&str> = inspect["Manifest"]["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap())
        .collect();
    let cached = layout_layers(&dir);
    assert_eq!(cached.len(), in_image.len() + 1, "{cached:?} {in_image:?}");
    for l in &cached {
        let hex = l.strip_prefix("sha256:").unwrap();
        let here = b.join("content/blobs/sha256").join(hex).exists();
        assert_eq!(here, in_image.contains(&l.as_str()), "{l}");
    }
    // The hits whose layers came are kept as local records whose files
    // are made when needed (the build stage's is not: its layer never came).
    let du = String::from_utf8_lossy(&rbuild(&b, &["du"]).stdout).into_owned();
    assert!(
        du.contains("imported") && du.contains("in 5 records"),
        "{du}"
    );
    // So a build without the import finds them: only the build stage runs
    // (the copy from it is then a hit again).
    let (ran, _, _) = build(&b, &moved, &[]);
    assert_eq!(
        ran,
        ["[build 1/1] RUN echo built > /artifact && echo work > /build-only"]
    );
    // An output of files makes the result's chain: the two base steps and
    // the final stage's three, their layers unpacked.
    let files = t.0.join("files");
    let o = rbuild(
        &b,
        &[
            "build",
            "--cache-from",
            &from,
            "-o",
            &format!("type=local,dest={}", files.display()),
            moved.to_str().unwrap(),
        ],
    );
    ok(&o);
    assert_eq!(
        std::fs::read_to_string(files.join("both")).unwrap(),
        "hello\nbuilt\n"
    );
    // `rbuild du` tells imported records apart; prune removes them.
    let du = String::from_utf8_lossy(&rbuild(&b, &["du"]).stdout).into_owned();
    assert!(
        du.contains("imported") && du.contains("in 5 records"),
        "{du}"
    );
    let du = String::from_utf8_lossy(&rbuild(&a, &["du"]).stdout).into_owned();
    assert!(!du.contains("imported"), "{du}");
    ok(&rbuild(&b, &["prune", "--all"]));
    let du = String::from_utf8_lossy(&rbuild(&b, &["du"]).stdout).into_owned();
    assert!(!du.contains("Imported:"), "{du}");
    let out = t.0.join("out");
    common::build_local(&b, &ctx, &out);
    assert_eq!(
        std::fs::read_to_string(out.join("both")).unwrap(),
        "hello\nbuilt\n"
    );

    // One file changes: only the steps after it run.
    std::fs::write(ctx.join("data.txt"), "changed\n").unwrap();
    let (ran, _, _) = build(&t.0.join("c"), &ctx, &["--cache-from", &from]);
    assert_eq!(ran.len(), 3, "{ran:?}");
    assert!(ran.iter().all(|r| r.starts_with("[stage-2")), "{ran:?}");
    std::fs::write(ctx.join("data.txt"), "hello\n").unwrap();

    // mode=min: the result's chain only; the build stage runs again. One
    // build exports both modes, each with its own records.
    let min_dir = t.0.join("cache-min");
    let max_dir = t.0.join("cache-max");
    let to_min = format!("type=local,dest={},mode=min", min_dir.display());
    let to_max = format!("type=local,dest={},mode=max", max_dir.display());
    build(&a, &ctx, &["--cache-to", &to_min, "--cache-to", &to_max]);
    let from = format!("type=local,src={}", max_dir.display());
    let (ran, cached, _) = build(&t.0.join("e"), &ctx, &["--cache-from", &from]);
    assert!(ran.is_empty(), "{ran:?}");
    assert_eq!(cached, 6);
    let from = format!("type=local,src={}", min_dir.display());
    let (ran, cached, _) = build(&t.0.join("d"), &ctx, &["--cache-from", &from]);
    assert_eq!(
        ran,
        ["[build 1/1] RUN echo built > /artifact && echo work > /build-only"],
        "{cached}"
    );
}

#[test]
fn registry_cache_between_two_roots() {
    if !is_root() {
        eprintln!("skipped: RUN needs root");
        return;
    }
    let t = tmp("cache-registry");
    let reg = Registry::start(&t.0.join("reg"), Options::default());
    let ctx = context(&t.0);
    let cache_ref = format!("{}/app:buildcache", reg.addr);
    let (a, b) = (t.0.join("a"), t.0.join("b"));
    build(
        &a,
        &ctx,
        &[
            "--cache-to",
            &format!("type=registry,ref={cache_ref},mode=max"),
        ],
    );
    let raw = Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{cache_ref}"))
        .output()
        .unwrap();
    let m: serde_json::Value = serde_json::from_slice(&raw.stdout).unwrap();
    assert_eq!(
        m["config"]["mediaType"],
        "application/vnd.buildkit.cacheconfig.v0"
    );
    // The config as BuildKit's CacheConfig: layers by blob, records whose
    // results (`layers`) index them.
    let raw = Command::new("skopeo")
        .args(["inspect", "--config", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{cache_ref}"))
        .output()
        .unwrap();
    let config: serde_json::Value = serde_json::from_slice(&raw.stdout).unwrap();
    let blobs = config["layers"].as_array().unwrap();
    assert_eq!(blobs.len(), m["layers"].as_array().unwrap().len());
    for (b, l) in blobs.iter().zip(m["layers"].as_array().unwrap()) {
        assert_eq!(b["blob"], l["digest"]);
    }
    let results: Vec<u64> = config["records"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| r["layers"].as_array().cloned().unwrap_or_default())
        .map(|res| res["layer"].as_u64().unwrap())
        .collect();
    assert_eq!(results.len(), 6, "{config}");
    assert!(results.iter().all(|&i| i < blobs.len() as u64));

    let (ran, cached, _) = build(&b, &ctx, &["--cache-from", &cache_ref]);
    assert!(ran.is_empty(), "{ran:?}");
    assert_eq!(cached, 6);
    assert_eq!(image_id(&a), image_id(&b));
    // Lazy: the image's layers were downloaded once each, the build
    // stage's never.
    let in_image =
        serde_json::from_slice::<serde_json::Value>(&rbuild(&b, &["inspect", "app:1"]).stdout)
            .unwrap()["Manifest"]["layers"]
            .clone();
    let in_image: Vec<&str> = in_image
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap())
        .collect();
    let cached_layers = m["layers"].as_array().unwrap();
    assert_eq!(cached_layers.len(), in_image.len() + 1);
    for l in cached_layers {
        let digest = l["digest"].as_str().unwrap();
        let gets = reg.requests(&format!("GET /v2/app/blobs/{digest}"));
        assert_eq!(gets, usize::from(in_image.contains(&digest)), "{digest}");
    }

    // Pushed to the same registry, the imported layers are mounted from
    // the cache's repository, not uploaded: only the config's bytes go up.
    let pushed = format!("{}/pushed/app:1", reg.addr);
    ok(&rbuild(&b, &["tag", "app:1", &pushed]));
    ok(&rbuild(&b, &["push", &pushed]));
    assert_eq!(
        reg.requests("PATCH /v2/pushed/app/blobs/uploads/"),
        1,
        "{}",
        reg.log()
    );
    assert_eq!(
        reg.requests("POST /v2/pushed/app/blobs/uploads/?mount="),
        in_image.len(),
        "{}",
        reg.log()
    );
    ok(&Command::new("skopeo")
        .args(["inspect", "--tls-verify=false"])
        .arg(format!("docker://{pushed}"))
        .output()
        .unwrap());

    // A layer kept from the import that is corrupt in the local store by
    // the time a later build (without the import) needs its files: a
    // warning, and that build runs the step.
    let biggest_in_image = in_image
        .iter()
        .copied()
        .max_by_key(|d| {
            let hex = d.strip_prefix("sha256:").unwrap();
            std::fs::metadata(b.join("content/blobs/sha256").join(hex))
                .map(|m| m.len())
                .unwrap_or(0)
        })
        .unwrap()
        .to_string();
    let local = b
        .join("content/blobs/sha256")
        .join(biggest_in_image.strip_prefix("sha256:").unwrap());
    let mut bytes = std::fs::read(&local).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&local, bytes).unwrap();
    let files = t.0.join("files");
    let o = rbuild(
        &b,
        &[
            "build",
            "--progress=plain",
            "-o",
            &format!("type=local,dest={}", files.display()),
            ctx.to_str().unwrap(),
        ],
    );
    let err = ok(&o);
    assert!(
        err.contains("could not be used") && err.contains("building again without it"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(files.join("both")).unwrap(),
        "hello\nbuilt\n"
    );

    // A missing cache is a warning; the build goes on.
    let (ran, _, err) = build(
        &t.0.join("c"),
        &ctx,
        &["--cache-from", &format!("{}/nothing:here", reg.addr)],
    );
    assert_eq!(ran.len(), 6);
    assert!(
        err.contains("WARNING: importing cache") && err.contains("not found"),
        "{err}"
    );

    // A corrupt layer in the registry: caught by its digest when the image
    // needs it; the build runs again without that record and its step runs.
    let biggest = common::registry::biggest_layer(&m);
    let path = reg.blob_path(&biggest);
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();
    let d = t.0.join("d");
    let (ran, _, err) = build(&d, &ctx, &["--cache-from", &cache_ref]);
    assert!(
        err.contains("could not be used")
            && err.contains(&biggest)
            && err.contains("building again without it"),
        "{err}"
    );
    assert!(!ran.is_empty(), "the step whose layer was corrupt ran");
    let hex = biggest.strip_prefix("sha256:").unwrap();
    assert!(!d.join("content/blobs/sha256").join(hex).exists());
}

#[test]
fn inline_cache_in_a_pushed_image() {
    if !is_root() {
        eprintln!("skipped: RUN needs root");
        return;
    }
    let t = tmp("cache-inline");
    let reg = Registry::start(&t.0.join("reg"), Options::default());
    let ctx = context(&t.0);
    // The flag, and the build arg Docker's documentation gives for it
    // (buildx turns it into the same export).
    for (name, flags) in [
        ("flag", ["--cache-to", "type=inline"]),
        ("arg", ["--build-arg", "BUILDKIT_INLINE_CACHE=1"]),
    ] {
        let image = format!("{}/app:inline-{name}", reg.addr);
        let a = t.0.join(format!("a-{name}"));
        let mut args = vec!["build", "-q", "--push", "-t", &image];
        args.extend(flags);
        args.push(ctx.to_str().unwrap());
        ok(&rbuild(&a, &args));
        let config = Command::new("skopeo")
            .args(["inspect", "--config", "--raw", "--tls-verify=false"])
            .arg(format!("docker://{image}"))
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&config.stdout).unwrap();
        // BuildKit's form: base64 of the JSON list of its CacheRecords, each
        // result's `layer` an index into the image's layers.
        use base64::Engine as _;
        let inline = base64::engine::general_purpose::STANDARD
            .decode(v["moby.buildkit.cache.v0"].as_str().unwrap())
            .unwrap();
        let records: Vec<serde_json::Value> = serde_json::from_slice(&inline).unwrap();
        let n_layers = v["rootfs"]["diff_ids"].as_array().unwrap().len() as u64;
        let mut with_layer = 0;
        for r in &records {
            assert!(r["digest"].as_str().unwrap().starts_with("sha256:"), "{r}");
            for res in r["layers"].as_array().into_iter().flatten() {
                assert!(res["layer"].as_u64().unwrap() < n_layers, "{r}");
                assert!(res["createdAt"].is_string(), "{r}");
                with_layer += 1;
            }
        }
        assert_eq!(with_layer, n_layers, "{name}: {records:?}");

        // An empty root with the image as its cache: the result's own steps
        // hit (the builder stage is not in the image, so it runs).
        let (ran, cached, _) = build(
            &t.0.join(format!("b-{name}")),
            &ctx,
            &["--cache-from", &image],
        );
        assert_eq!(
            ran,
            ["[build 1/1] RUN echo built > /artifact && echo work > /build-only"],
            "{name}: {cached}"
        );
        assert_eq!(cached, 5, "{name}");
    }
}

#[test]
fn cache_mounts_travel() {
    if !is_root() {
        eprintln!("skipped: RUN needs root");
        return;
    }
    let t = tmp("cache-mounts");
    let ctx = t.0.join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::copy("/bin/busybox", ctx.join("busybox")).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        "FROM scratch\nCOPY busybox /bin/busybox\nARG V=1\nRUN --mount=type=cache,target=/cache,id=pkgs [\"/bin/busybox\",\"sh\",\"-c\",\"[ -f /cache/pkg ] || /bin/busybox echo filled-by-$V > /cache/pkg; /bin/busybox cat /cache/pkg > /seen\"]\n",
    )
    .unwrap();
    let dir = t.0.join("cache");
    let seen = |root: &Path, extra: &[&str]| -> String {
        let out = root.join("out");
        let dest = format!("type=local,dest={}", out.display());
        let mut args = vec!["build", "-q", "-o", &dest];
        args.extend_from_slice(extra);
        args.push(ctx.to_str().unwrap());
        ok(&rbuild(root, &args));
        std::fs::read_to_string(out.join("seen")).unwrap()
    };
    let to = format!("type=local,dest={},cache-mounts=true", dir.display());
    assert_eq!(seen(&t.0.join("a"), &["--cache-to", &to]), "filled-by-1\n");
    // Another machine, a step the layer cache misses (another V): the
    // mount holds what the first machine left.
    let from = format!("type=local,src={}", dir.display());
    assert_eq!(
        seen(
            &t.0.join("b"),
            &["--build-arg", "V=2", "--cache-from", &from]
        ),
        "filled-by-1\n"
    );
    // Without the import it starts empty.
    assert_eq!(
        seen(&t.0.join("c"), &["--build-arg", "V=2"]),
        "filled-by-2\n"
    );
}
