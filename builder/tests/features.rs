//! Dockerfile features end to end (testdata/build/features): the files a
//! build makes, the layers that carry them (whiteouts, opaque directories,
//! hard links, special modes) and the image config and history, as BuildKit
//! makes them; `--target` builds only what the target needs.

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use common::{context, is_root, rbuild, tmp};
use serde_json::{Value, json};

/// One tar entry of a layer: type, mode, link target.
#[derive(Debug, PartialEq)]
struct Entry {
    kind: tar::EntryType,
    mode: u32,
    link: Option<String>,
}

/// A layer blob of the store, by path, decompressed by its media type.
fn layer_entries(root: &Path, layer: &Value) -> BTreeMap<String, Entry> {
    let digest = layer["digest"].as_str().unwrap();
    let blob = root
        .join("content/blobs/sha256")
        .join(digest.trim_start_matches("sha256:"));
    let file = std::fs::File::open(blob).unwrap();
    let media = layer["mediaType"].as_str().unwrap();
    let reader: Box<dyn Read> = if media.ends_with("gzip") {
        Box::new(flate2::read::GzDecoder::new(file))
    } else if media.ends_with("zstd") {
        Box::new(zstd::Decoder::new(file).unwrap())
    } else {
        Box::new(file)
    };
    let mut out = BTreeMap::new();
    for e in tar::Archive::new(reader).entries().unwrap() {
        let e = e.unwrap();
        let h = e.header();
        out.insert(
            e.path().unwrap().to_string_lossy().into_owned(),
            Entry {
                kind: h.entry_type(),
                mode: h.mode().unwrap(),
                link: e
                    .link_name()
                    .unwrap()
                    .map(|l| l.to_string_lossy().into_owned()),
            },
        );
    }
    out
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn dockerfile_features_end_to_end() {
    if !is_root() {
        eprintln!("skipped: building needs root (overlay, namespaces)");
        return;
    }
    let t = tmp("features");
    let ctx = context(&t, "features");
    std::fs::write(ctx.join("data/notes.txt"), "notes\n").unwrap();
    std::fs::write(ctx.join("data/debug.log"), "noise\n").unwrap();
    let root = t.0.join("state");
    let ctx_arg = ctx.to_str().unwrap();
    let build = rbuild(
        &root,
        &[
            "build",
            "--progress",
            "plain",
            "--build-arg",
            "LOCAL=cli",
            "-t",
            "features:1",
            ctx_arg,
        ],
    );
    let log = stderr(&build);
    assert!(build.status.success(), "{log}");
    // The stage nothing needs never ran.
    assert!(!log.contains("[broken"), "{log}");
    // ONBUILD of base ran first in parent, named as written.
    assert!(
        log.contains("[parent 1/2] RUN echo triggered > /onbuild.txt"),
        "{log}"
    );

    // The files, with owners and modes (a local export as root keeps them).
    let out = t.0.join("out");
    let export = rbuild(
        &root,
        &[
            "build",
            "-q",
            "--build-arg",
            "LOCAL=cli",
            "-o",
            &format!("type=local,dest={}", out.display()),
            ctx_arg,
        ],
    );
    assert!(export.status.success(), "{}", stderr(&export));
    let read =
        |p: &str| std::fs::read_to_string(out.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
    // ARG scoping: the global needs `ARG GLOBAL` in the stage, the other
    // global is not seen; the build arg beats the default; ENV sees ARG.
    assert_eq!(read("args.txt"), "global-default cli cli []\n");
    assert_eq!(read("onbuild.txt"), "triggered\n");
    assert_eq!(read("heredoc-run.txt"), "heredoc-run\n");
    assert_eq!(read("heredoc-sh.txt"), "indented cli\n");
    // An unquoted COPY heredoc expands; a quoted one keeps the text.
    assert_eq!(read("etc/app.conf"), "name=demo\n");
    assert_eq!(read("literal.txt"), "$APP_NAME\n");
    assert_eq!(read("shell.txt"), "shell /bin/sh\n");
    assert_eq!(read("from-stage.txt"), "keep\n");
    assert!(!out.join("gone").exists());
    let opaque: Vec<_> = std::fs::read_dir(out.join("opaque"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(opaque, ["new"]);
    let meta = |p: &str| std::fs::symlink_metadata(out.join(p)).unwrap();
    let copied = meta("copied/file.txt");
    assert_eq!(
        (copied.uid(), copied.gid(), copied.mode() & 0o7777),
        (1000, 50, 0o640),
        "--chown=app:staff --chmod=640"
    );
    assert_eq!(meta("copied/exec.txt").mode() & 0o7777, 0o754, "u+x,g+x");
    assert_eq!(meta("setuid").mode() & 0o7777, 0o4755);
    assert_eq!(meta("shared").mode() & 0o7777, 0o2775);
    assert_eq!(meta("tmp").mode() & 0o7777, 0o1777);
    assert_eq!(meta("hl-a").ino(), meta("hl-b").ino(), "hard link kept");
    let names = |d: &str| {
        let mut v: Vec<String> = std::fs::read_dir(out.join(d))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    // .dockerignore (data/*.key) holds everywhere; --exclude matches below
    // the source; the glob takes only .txt.
    assert_eq!(names("linked"), ["debug.log", "file.txt", "notes.txt"]);
    assert_eq!(names("excluded"), ["file.txt", "notes.txt"]);
    assert_eq!(names("globbed"), ["file.txt", "notes.txt"]);

    // The image config as BuildKit writes it.
    let inspect = rbuild(&root, &["inspect", "features:1"]);
    let image: Value = serde_json::from_slice(&inspect.stdout).unwrap();
    let config = &image["Config"]["config"];
    assert_eq!(config["User"], "app:app");
    assert_eq!(config["WorkingDir"], "/home/app");
    assert_eq!(
        config["Env"],
        json!([
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "FROM_ENV=cli",
            "APP_NAME=demo"
        ])
    );
    // ENTRYPOINT drops the CMD set before it; the later CMD stays.
    assert_eq!(config["Entrypoint"], json!(["/bin/sh", "-c"]));
    assert_eq!(config["Cmd"], json!(["echo hi"]));
    assert_eq!(config["ArgsEscaped"], true);
    assert_eq!(
        config["ExposedPorts"],
        json!({"53/udp": {}, "8080/tcp": {}})
    );
    assert_eq!(config["Volumes"], json!({"/data": {}}));
    assert_eq!(config["Labels"], json!({"b": "2", "org.example.a": "1"}));
    assert_eq!(config["StopSignal"], "SIGQUIT");
    assert_eq!(
        config["Healthcheck"],
        json!({"Test": ["CMD", "true"], "Interval": 30_000_000_000u64,
               "Timeout": 5_000_000_000u64, "Retries": 3})
    );
    assert_eq!(config["Shell"], json!(["/bin/sh", "-e", "-c"]));
    assert!(
        config.get("OnBuild").is_none(),
        "base ONBUILD ran, not kept"
    );

    let history = image["Config"]["history"].as_array().unwrap();
    let by = |needle: &str| {
        history
            .iter()
            .find(|h| h["created_by"].as_str().unwrap().starts_with(needle))
            .unwrap_or_else(|| panic!("no history entry {needle:?}: {history:#?}"))
    };
    for (entry, empty) in [
        ("ARG GLOBAL=global-default", true),
        ("ARG LOCAL=cli", true),
        ("ENV FROM_ENV=cli", true),
        (
            "RUN |2 GLOBAL=global-default LOCAL=cli /bin/sh -c echo \"$GLOBAL",
            false,
        ),
        (
            "RUN /bin/sh -c echo triggered > /onbuild.txt # buildkit",
            false,
        ),
        (
            "RUN |2 GLOBAL=global-default LOCAL=cli /bin/sh -e -c echo",
            false,
        ),
        ("SHELL [/bin/sh -e -c]", true),
        (
            "COPY --chown=app:staff --chmod=640 data/file.txt /copied/ # buildkit",
            false,
        ),
        ("COPY <<EOF /etc/app.conf # buildkit", false),
        ("COPY /keep.txt /from-stage.txt # buildkit", false),
        ("EXPOSE [53/udp 8080/tcp]", true),
        ("VOLUME [/data]", true),
        ("STOPSIGNAL SIGQUIT", true),
        ("USER app:app", true),
        ("WORKDIR /home/app", false),
        ("ENTRYPOINT [\"/bin/sh\" \"-c\"]", true),
        ("CMD [\"echo hi\"]", true),
    ] {
        let h = by(entry);
        assert_eq!(
            h["empty_layer"].as_bool().unwrap_or(false),
            empty,
            "{entry}"
        );
        assert_eq!(h["comment"], "buildkit.dockerfile.v0");
    }
    // One layer per non-empty history entry, in order.
    let layered: Vec<&Value> = history
        .iter()
        .filter(|h| !h["empty_layer"].as_bool().unwrap_or(false))
        .collect();
    let layers = image["Manifest"]["layers"].as_array().unwrap();
    assert_eq!(layered.len(), layers.len());
    assert_eq!(
        image["Config"]["rootfs"]["diff_ids"]
            .as_array()
            .unwrap()
            .len(),
        layers.len()
    );
    let layer_of = |needle: &str| {
        let i = layered
            .iter()
            .position(|h| h["created_by"].as_str().unwrap().contains(needle))
            .unwrap();
        layer_entries(&root, &layers[i])
    };
    // `rm -rf /gone /opaque && mkdir /opaque`: a whiteout, and the
    // directory overlayfs made opaque written as its changes against what
    // it hid (a whiteout for what is gone), as BuildKit's overlay differ
    // writes it.
    let removal = layer_of("rm -rf /gone /opaque");
    assert!(removal.contains_key(".wh.gone"), "{removal:#?}");
    assert!(removal.contains_key("opaque/.wh.old"), "{removal:#?}");
    assert!(!removal.contains_key("opaque/.wh..wh..opq"), "{removal:#?}");
    assert!(removal.contains_key("opaque/new"), "{removal:#?}");
    assert!(!removal.keys().any(|k| k.starts_with("gone/")));
    let links = layer_of("ln /hl-a /hl-b");
    assert_eq!(links["hl-a"].kind, tar::EntryType::Regular);
    assert_eq!(links["hl-b"].kind, tar::EntryType::Link);
    assert_eq!(links["hl-b"].link.as_deref(), Some("hl-a"));
    assert_eq!(links["setuid"].mode, 0o4755);
    assert_eq!(links["shared/"].mode, 0o2775);

    // --target builds only the target's stages (and no later ones).
    let args_out = t.0.join("args-out");
    let target = rbuild(
        &root,
        &[
            "build",
            "--progress",
            "plain",
            "--target",
            "args",
            "-o",
            &format!("type=local,dest={}", args_out.display()),
            ctx_arg,
        ],
    );
    let log = stderr(&target);
    assert!(target.status.success(), "{log}");
    assert!(!log.contains("[final") && !log.contains("[broken"), "{log}");
    assert_eq!(
        std::fs::read_to_string(args_out.join("args.txt")).unwrap(),
        "global-default local-default local-default []\n"
    );
    assert!(args_out.join("opaque/old").exists());
    assert!(!args_out.join("heredoc-run.txt").exists());
    // A stage that is needed and fails does fail the build, naming it.
    let broken = rbuild(&root, &["build", "--target", "broken", ctx_arg]);
    assert_eq!(broken.status.code(), Some(1));
    assert!(
        stderr(&broken).contains("Dockerfile:20:1: [broken 2/2] RUN"),
        "{}",
        stderr(&broken)
    );
}
