//! The registry client against a real registry (Debian's docker-registry
//! on 127.0.0.1) and real clients (skopeo, umoci): push, pull, FROM a
//! registry image, Basic auth and login, corrupt blobs, indexes.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::registry::{Options, Pki, Registry};
use common::{is_root, rbuild, rbuild_env, tmp};

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A context with busybox, a data file and `dockerfile`.
fn context(dir: &Path, dockerfile: &str) -> PathBuf {
    let ctx = dir.join("ctx");
    std::fs::create_dir_all(ctx.join("data")).unwrap();
    std::fs::copy("/bin/busybox", ctx.join("busybox")).unwrap();
    std::fs::write(ctx.join("data/file.txt"), "payload\n").unwrap();
    std::fs::write(ctx.join("Dockerfile"), dockerfile).unwrap();
    ctx
}

const BASE: &str = "FROM scratch\nCOPY busybox /bin/busybox\nCOPY data/file.txt /data/\nENV A=1\nCMD [\"/bin/busybox\",\"true\"]\n";

/// Builds BASE as `name` in `root`.
fn build_base(dir: &Path, root: &Path, name: &str) {
    let ctx = context(dir, BASE);
    ok(&rbuild(
        root,
        &["build", "-q", "-t", name, ctx.to_str().unwrap()],
    ));
}

/// A registry started with `options`, a state root holding BASE as
/// `app:1`, and that image tagged `REGISTRY/repo` (the name returned).
fn with_image(
    test: &str,
    options: Options,
    repo: &str,
) -> (common::Tmp, Registry, PathBuf, String) {
    let t = tmp(test);
    let reg = Registry::start(&t.0.join("reg"), options);
    let root = t.0.join("root");
    build_base(&t.0, &root, "app:1");
    let name = format!("{}/{repo}", reg.addr);
    ok(&rbuild(&root, &["tag", "app:1", &name]));
    (t, reg, root, name)
}

/// What `skopeo inspect` says of the registry image `name`.
fn remote_inspect(name: &str) -> serde_json::Value {
    let text = ok(&skopeo(&[
        "inspect",
        "--tls-verify=false",
        &format!("docker://{name}"),
    ]));
    serde_json::from_str(&text).unwrap()
}

fn skopeo(args: &[&str]) -> Output {
    Command::new("skopeo")
        .args(args)
        .output()
        .expect("skopeo runs (.ci/run installs it)")
}

#[test]
fn push_is_read_by_skopeo_and_umoci_and_pulls_back() {
    let (t, reg, root, name) = with_image("reg-roundtrip", Options::default(), "team/app:1");
    let pushed = rbuild(&root, &["push", &name]);
    let out = ok(&pushed);
    let digest = out
        .split("digest: ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .expect("push prints the digest")
        .to_string();

    let inspect = ok(&skopeo(&[
        "inspect",
        "--tls-verify=false",
        &format!("docker://{name}"),
    ]));
    let v: serde_json::Value = serde_json::from_str(&inspect).unwrap();
    assert_eq!(v["Digest"], digest.as_str());
    assert!(
        v["Env"].as_array().unwrap().iter().any(|e| e == "A=1"),
        "{inspect}"
    );
    let layout = t.0.join("layout");
    ok(&skopeo(&[
        "copy",
        "--src-tls-verify=false",
        &format!("docker://{name}"),
        &format!("oci:{}:x", layout.display()),
    ]));
    let bundle = t.0.join("bundle");
    let o = Command::new("umoci")
        .args(["unpack", "--rootless", "--image"])
        .arg(format!("{}:x", layout.display()))
        .arg(&bundle)
        .output()
        .unwrap();
    ok(&o);
    assert_eq!(
        std::fs::read_to_string(bundle.join("rootfs/data/file.txt")).unwrap(),
        "payload\n"
    );

    // Pushed again: the registry has every blob and the manifest, so the
    // push is HEAD requests (after the ping) and nothing is written.
    let before = reg.requests("/v2/");
    let heads = reg.requests("\"HEAD /v2/team/app/");
    let again = rbuild(&root, &["push", &name]);
    ok(&again);
    let blobs = v["Layers"].as_array().unwrap().len() + 1;
    assert_eq!(reg.requests("\"HEAD /v2/team/app/") - heads, blobs + 1);
    assert_eq!(reg.requests("/v2/") - before, blobs + 2, "{}", reg.log());
    assert!(!stderr(&again).contains("done"), "{}", stderr(&again));

    // A fresh state root pulls it back, the same image.
    let fresh = t.0.join("fresh");
    let pulled = ok(&rbuild(&fresh, &["pull", &name]));
    assert_eq!(pulled.trim(), name);
    let a = ok(&rbuild(&root, &["inspect", &name]));
    let b = ok(&rbuild(&fresh, &["inspect", &name]));
    let id = |s: &str| serde_json::from_str::<serde_json::Value>(s).unwrap()["Id"].clone();
    assert_eq!(id(&a), id(&b));
    assert!(ok(&rbuild(&fresh, &["images"])).contains(&name));
}

#[test]
fn build_from_an_image_skopeo_pushed() {
    if !is_root() {
        eprintln!("skipped: RUN needs root");
        return;
    }
    let t = tmp("reg-from");
    let reg = Registry::start(&t.0.join("reg"), Options::default());
    let root = t.0.join("root");
    build_base(&t.0, &root, "base:1");
    let layout = t.0.join("layout");
    std::fs::create_dir_all(&layout).unwrap();
    ok(&rbuild(
        &root,
        &[
            "save",
            "-o",
            layout.join("base.tar").to_str().unwrap(),
            "base:1",
        ],
    ));
    std::fs::create_dir_all(layout.join("oci")).unwrap();
    ok(&Command::new("tar")
        .arg("-xf")
        .arg(layout.join("base.tar"))
        .arg("-C")
        .arg(layout.join("oci"))
        .output()
        .unwrap());
    let base = format!("{}/other/base:2", reg.addr);
    ok(&skopeo(&[
        "copy",
        "--dest-tls-verify=false",
        &format!("oci:{}", layout.join("oci").display()),
        &format!("docker://{base}"),
    ]));

    let dir = t.0.join("app");
    let ctx = context(
        &dir,
        &format!(
            "FROM {base}\nRUN [\"/bin/busybox\",\"sh\",\"-c\",\"echo $A > /env && cp /data/file.txt /copied\"]\n"
        ),
    );
    // A state root that has never seen the base: FROM pulls it.
    let fresh = t.0.join("fresh");
    let out = t.0.join("out");
    let dest = format!("type=local,dest={}", out.display());
    let build = |extra: &[&str]| {
        let mut args = vec!["build", "--progress=plain"];
        args.extend_from_slice(extra);
        args.extend(["-o", &dest, ctx.to_str().unwrap()]);
        let o = rbuild(&fresh, &args);
        ok(&o);
        o
    };
    build(&[]);
    assert_eq!(std::fs::read_to_string(out.join("env")).unwrap(), "1\n");
    assert_eq!(
        std::fs::read_to_string(out.join("copied")).unwrap(),
        "payload\n"
    );
    assert!(ok(&rbuild(&fresh, &["images"])).contains(&base));

    // Once pulled, a rebuild asks the registry nothing; --pull asks for
    // the manifest once and downloads no blob again.
    let manifests = || reg.requests("/v2/other/base/manifests/");
    let blobs = || reg.requests("GET /v2/other/base/blobs/");
    let (m0, b0) = (manifests(), blobs());
    build(&[]);
    assert_eq!((manifests(), blobs()), (m0, b0));
    let pulled = build(&["--pull"]);
    assert_eq!((manifests(), blobs()), (m0 + 1, b0), "{}", stderr(&pulled));
    assert!(stderr(&pulled).contains("CACHED"), "{}", stderr(&pulled));

    // COPY --from a registry image and a docker-image:// build context,
    // on a state root that has neither.
    let dir = t.0.join("copy");
    let ctx = context(
        &dir,
        &format!(
            "FROM scratch\nCOPY --from={base} /data/file.txt /a\nCOPY --from=named /bin/busybox /b\n"
        ),
    );
    let out = t.0.join("copied-out");
    ok(&rbuild(
        &t.0.join("fresh2"),
        &[
            "build",
            "-q",
            "--build-context",
            &format!("named=docker-image://{base}"),
            "-o",
            &format!("type=local,dest={}", out.display()),
            ctx.to_str().unwrap(),
        ],
    ));
    assert_eq!(std::fs::read_to_string(out.join("a")).unwrap(), "payload\n");
    assert!(out.join("b").is_file());
}

#[test]
fn basic_auth_login_and_logout() {
    let t = tmp("reg-basic");
    let reg = Registry::start(
        &t.0.join("reg"),
        Options {
            htpasswd: Some(("alice".into(), "s3cret".into())),
            ..Options::default()
        },
    );
    let root = t.0.join("root");
    build_base(&t.0, &root, "app:1");
    let name = format!("{}/app:1", reg.addr);
    ok(&rbuild(&root, &["tag", "app:1", &name]));
    let config = t.0.join("docker-config");
    let env = [("DOCKER_CONFIG", config.to_str().unwrap())];

    // No credentials: a clear refusal that says what to do.
    let o = rbuild_env(&root, &["push", &name], &env);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains(&reg.addr) && err.contains("rbuild login"),
        "{err}"
    );

    // A wrong password: login fails and stores nothing.
    let login = |pass: &str| {
        Command::new(env!("CARGO_BIN_EXE_rbuild"))
            .args(["--root", root.to_str().unwrap(), "login", "-u", "alice"])
            .arg("--password-stdin")
            .arg(&reg.addr)
            .env("DOCKER_CONFIG", &config)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write as _;
                c.stdin
                    .take()
                    .unwrap()
                    .write_all(format!("{pass}\n").as_bytes())?;
                c.wait_with_output()
            })
            .unwrap()
    };
    let o = login("wrong");
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains(&reg.addr), "{}", stderr(&o));
    assert!(!config.join("config.json").exists());

    let o = login("s3cret");
    assert!(ok(&o).contains("Login Succeeded"));
    let stored: serde_json::Value =
        serde_json::from_slice(&std::fs::read(config.join("config.json")).unwrap()).unwrap();
    assert!(stored["auths"][&reg.addr]["auth"].is_string(), "{stored}");

    ok(&rbuild_env(&root, &["push", &name], &env));
    let fresh = t.0.join("fresh");
    ok(&rbuild_env(&fresh, &["pull", &name], &env));

    // Stored credentials that are wrong: the error names where they came from.
    std::fs::write(
        config.join("config.json"),
        format!(
            "{{\"auths\":{{\"{}\":{{\"auth\":\"YWxpY2U6d3Jvbmc=\"}}}}}}",
            reg.addr
        ),
    )
    .unwrap();
    let o = rbuild_env(&t.0.join("fresh2"), &["pull", &name], &env);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains("config.json") && err.contains("401") && !err.contains("wrong"),
        "{err}"
    );

    let o = rbuild_env(&root, &["logout", &reg.addr], &env);
    assert!(ok(&o).contains("Removing login credentials"));
    let stored: serde_json::Value =
        serde_json::from_slice(&std::fs::read(config.join("config.json")).unwrap()).unwrap();
    assert!(stored["auths"].get(&reg.addr).is_none(), "{stored}");
}

#[test]
fn a_corrupt_blob_is_refused_and_nothing_is_stored() {
    let (t, reg, root, name) = with_image("reg-corrupt", Options::default(), "app:1");
    ok(&rbuild(&root, &["push", &name]));
    let inspect: serde_json::Value = remote_inspect(&name);
    let layer = inspect["Layers"][0].as_str().unwrap().to_string();
    // Same size, other bytes.
    let path = reg.blob_path(&layer);
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();

    let fresh = t.0.join("fresh");
    let o = rbuild(&fresh, &["pull", &name]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains(&layer) && err.contains(&name), "{err}");
    let hex = layer.strip_prefix("sha256:").unwrap();
    assert!(!fresh.join("content/blobs/sha256").join(hex).exists());
    assert!(!ok(&rbuild(&fresh, &["images"])).contains(&name));
}

#[test]
fn missing_images_and_bad_names_are_clear_errors() {
    let t = tmp("reg-missing");
    let reg = Registry::start(&t.0.join("reg"), Options::default());
    let root = t.0.join("root");
    let o = rbuild(&root, &["pull", &format!("{}/nothing:1", reg.addr)]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains("nothing:1") && err.contains("not found"),
        "{err}"
    );
    let o = rbuild(&root, &["pull", "me/Upper:1"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("must be lowercase"), "{}", stderr(&o));

    // A build names the instruction that wants the image: the FROM, or
    // the COPY --from that names an image, with its lines.
    let dir = t.0.join("app");
    let missing = format!("{}/nothing:1", reg.addr);
    for (dockerfile, line, instruction) in [
        (
            format!("FROM scratch AS ok\nFROM {missing}\nRUN true\n"),
            2,
            format!("FROM {missing}"),
        ),
        (
            format!("FROM scratch\nENV A=1\nCOPY --from={missing} /x /x\n"),
            3,
            format!("COPY --from={missing} /x /x"),
        ),
    ] {
        let ctx = context(&dir, &dockerfile);
        let o = rbuild(&root, &["build", ctx.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(1));
        let err = stderr(&o);
        let first = err
            .lines()
            .find(|l| l.starts_with("error: "))
            .unwrap_or_default();
        assert!(
            first.contains(&format!("Dockerfile:{line}:1: ")) && first.contains(&instruction),
            "{err}"
        );
        assert!(
            err.contains("nothing:1") && err.contains("not found"),
            "{err}"
        );
        assert!(err.contains(&format!(">>> {instruction}")), "{err}");
    }
}

#[test]
fn build_push_with_compression_and_media_types() {
    let t = tmp("reg-build-push");
    let reg = Registry::start(&t.0.join("reg"), Options::default());
    let root = t.0.join("root");
    let ctx = context(&t.0, BASE);
    let name = format!("{}/built/app:1", reg.addr);
    let meta = t.0.join("meta.json");
    ok(&rbuild(
        &root,
        &[
            "build",
            "--push",
            "-t",
            &name,
            "--metadata-file",
            meta.to_str().unwrap(),
            ctx.to_str().unwrap(),
        ],
    ));
    let meta: serde_json::Value = serde_json::from_slice(&std::fs::read(&meta).unwrap()).unwrap();
    let raw = |n: &str| -> serde_json::Value {
        serde_json::from_str(&ok(&skopeo(&[
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{n}"),
        ])))
        .unwrap()
    };
    let inspect: serde_json::Value = remote_inspect(&name);
    assert_eq!(inspect["Digest"], meta["containerimage.digest"]);
    let m = raw(&name);
    assert_eq!(m["mediaType"], "application/vnd.oci.image.manifest.v1+json");
    for l in m["layers"].as_array().unwrap() {
        assert_eq!(
            l["mediaType"],
            "application/vnd.oci.image.layer.v1.tar+gzip"
        );
    }

    // zstd layers through -o: they have no Docker media type, so the
    // manifest stays OCI even when Docker's are asked for (as BuildKit).
    let other = format!("{}/built/zstd:1", reg.addr);
    ok(&rbuild(
        &root,
        &[
            "build",
            "-q",
            "-o",
            &format!("type=image,name={other},push=true,compression=zstd,oci-mediatypes=false"),
            ctx.to_str().unwrap(),
        ],
    ));
    let m = raw(&other);
    assert_eq!(m["mediaType"], "application/vnd.oci.image.manifest.v1+json");
    for l in m["layers"].as_array().unwrap() {
        assert_eq!(
            l["mediaType"],
            "application/vnd.oci.image.layer.v1.tar+zstd"
        );
    }
    // Docker's media types with gzip.
    let docker = format!("{}/built/docker:1", reg.addr);
    ok(&rbuild(
        &root,
        &[
            "build",
            "-q",
            "-o",
            &format!("type=registry,name={docker},oci-mediatypes=false"),
            ctx.to_str().unwrap(),
        ],
    ));
    let m = raw(&docker);
    assert_eq!(
        m["mediaType"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    for l in m["layers"].as_array().unwrap() {
        assert_eq!(
            l["mediaType"],
            "application/vnd.docker.image.rootfs.diff.tar.gzip"
        );
    }
    // Real readers unpack both.
    for n in [&name, &other, &docker] {
        let layout = t.0.join(format!("layout-{}", n.len()));
        ok(&skopeo(&[
            "copy",
            "--src-tls-verify=false",
            &format!("docker://{n}"),
            &format!("oci:{}:x", layout.display()),
        ]));
    }
}

/// `ROOT/config.toml` with `text`.
fn settings(root: &Path, text: &str) {
    std::fs::create_dir_all(root).unwrap();
    std::fs::write(root.join("config.toml"), text).unwrap();
}

#[test]
fn tls_with_a_ca_and_client_certificate_from_certs_d() {
    let t = tmp("reg-tls");
    let pki = Pki::new(&t.0.join("pki"));
    let server = pki.issue("server");
    let reg = Registry::start(
        &t.0.join("reg"),
        Options {
            tls: Some(server),
            client_ca: Some(pki.dir.join("ca.crt")),
            ..Options::default()
        },
    );
    let root = t.0.join("root");
    build_base(&t.0, &root, "app:1");
    let name = format!("{}/app:1", reg.addr);
    ok(&rbuild(&root, &["tag", "app:1", &name]));

    // The CA is unknown: the TLS error, not a plain-HTTP retry, is told.
    let o = rbuild(&root, &["push", &name]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains(&reg.addr) && err.contains("HTTPS"), "{err}");

    // certs.d as Docker reads it: the CA, and a client certificate.
    let certs_d = t.0.join("certs.d");
    let host_dir = certs_d.join(&reg.addr);
    std::fs::create_dir_all(&host_dir).unwrap();
    std::fs::copy(pki.dir.join("ca.crt"), host_dir.join("ca.crt")).unwrap();
    let config = format!("certs_d = \"{}\"\n", certs_d.display());
    settings(&root, &config);
    let o = rbuild(&root, &["push", &name]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "the client certificate is required"
    );
    let (cert, key) = pki.issue("client");
    std::fs::copy(cert, host_dir.join("client.cert")).unwrap();
    std::fs::copy(key, host_dir.join("client.key")).unwrap();
    ok(&rbuild(&root, &["push", &name]));
    let fresh = t.0.join("fresh");
    settings(&fresh, &config);
    ok(&rbuild(&fresh, &["pull", &name]));
}

#[test]
fn a_mirror_serves_docker_hub_names() {
    if !is_root() {
        eprintln!("skipped: RUN needs root");
        return;
    }
    let t = tmp("reg-mirror");
    let reg = Registry::start(&t.0.join("reg"), Options::default());
    let root = t.0.join("root");
    build_base(&t.0, &root, "busybase:1");
    // As Docker Hub would name an official image.
    let on_mirror = format!("{}/library/busybase:1", reg.addr);
    ok(&rbuild(&root, &["tag", "busybase:1", &on_mirror]));
    ok(&rbuild(&root, &["push", &on_mirror]));

    let fresh = t.0.join("fresh");
    settings(
        &fresh,
        &format!("[registry.\"docker.io\"]\nmirrors = [\"{}\"]\n", reg.addr),
    );
    let dir = t.0.join("app");
    let ctx = context(
        &dir,
        "FROM busybase:1\nRUN [\"/bin/busybox\",\"test\",\"-f\",\"/data/file.txt\"]\n",
    );
    ok(&rbuild(
        &fresh,
        &["build", "-q", "-t", "app:2", ctx.to_str().unwrap()],
    ));
    assert!(ok(&rbuild(&fresh, &["images"])).contains("busybase:1"));
    assert!(reg.requests("GET /v2/library/busybase/manifests/1") >= 1);
}

#[test]
fn an_index_is_kept_resolves_to_linux_amd64_and_blobs_mount_across_repositories() {
    let t = tmp("reg-index");
    let reg = Registry::start(&t.0.join("reg"), Options::default());
    let root = t.0.join("root");
    build_base(&t.0, &root, "app:1");
    let amd64 = format!("{}/multi/app:amd64", reg.addr);
    ok(&rbuild(&root, &["tag", "app:1", &amd64]));
    ok(&rbuild(&root, &["push", &amd64]));
    let raw = |n: &str| -> (serde_json::Value, String) {
        let text = ok(&skopeo(&[
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{n}"),
        ]));
        (serde_json::from_str(&text).unwrap(), text)
    };
    let (manifest, text) = raw(&amd64);
    let digest = |bytes: &[u8]| {
        use sha2::Digest as _;
        format!("sha256:{:x}", sha2::Sha256::digest(bytes))
    };
    let amd64_digest = digest(text.as_bytes());
    // An index whose first entry is another platform (pointing at the same
    // manifest: only the platform field decides).
    let entry = |arch: &str, variant: Option<&str>| {
        let mut p = serde_json::json!({"architecture": arch, "os": "linux"});
        if let Some(v) = variant {
            p["variant"] = v.into();
        }
        serde_json::json!({
            "mediaType": manifest["mediaType"],
            "digest": amd64_digest,
            "size": text.len(),
            "platform": p,
        })
    };
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [entry("arm64", Some("v8")), entry("amd64", None)],
    });
    // skopeo copies an index from an OCI layout as it is.
    let layout = t.0.join("layout");
    ok(&skopeo(&[
        "copy",
        "--src-tls-verify=false",
        &format!("docker://{amd64}"),
        &format!("oci:{}:x", layout.display()),
    ]));
    let index_bytes = serde_json::to_vec(&index).unwrap();
    let index_digest = digest(&index_bytes);
    std::fs::write(
        layout
            .join("blobs/sha256")
            .join(index_digest.strip_prefix("sha256:").unwrap()),
        &index_bytes,
    )
    .unwrap();
    std::fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": "application/vnd.oci.image.index.v1+json",
                "digest": index_digest,
                "size": index_bytes.len(),
                "annotations": {"org.opencontainers.image.ref.name": "multi"},
            }],
        }))
        .unwrap(),
    )
    .unwrap();
    let multi = format!("{}/multi/app:both", reg.addr);
    ok(&skopeo(&[
        "copy",
        "--all",
        "--dest-tls-verify=false",
        &format!("oci:{}:multi", layout.display()),
        &format!("docker://{multi}"),
    ]));
    let fresh = t.0.join("fresh");
    ok(&rbuild(&fresh, &["pull", &multi]));
    // The tag keeps the index; its linux/amd64 image is the one pulled.
    let inspect = |args: &[&str]| -> serde_json::Value {
        serde_json::from_str(&ok(&rbuild(&fresh, args))).unwrap()
    };
    let whole = inspect(&["inspect", &multi]);
    assert_eq!(whole["Digest"], index_digest.as_str());
    let platforms: Vec<&str> = whole["Platforms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["Platform"].as_str().unwrap())
        .collect();
    assert_eq!(platforms, ["linux/arm64", "linux/amd64"]);
    let one = inspect(&["inspect", "--platform", "linux/amd64", &multi]);
    assert_eq!(one["Digest"], amd64_digest.as_str());
    assert!(ok(&rbuild(&fresh, &["images"])).contains("linux/amd64"));
    // By digest too.
    let by_digest = format!("{}/multi/app@{index_digest}", reg.addr);
    ok(&rbuild(&fresh, &["pull", &by_digest]));

    // Pushed to another repository of the same registry: its blobs are
    // mounted from the one they were pulled from, not uploaded.
    let copy = format!("{}/other/copy:1", reg.addr);
    ok(&rbuild(&fresh, &["tag", &multi, &copy]));
    let uploads = reg.requests("PATCH /v2/other/copy/blobs/uploads/");
    let o = rbuild(&fresh, &["push", &copy]);
    ok(&o);
    assert_eq!(reg.requests("PATCH /v2/other/copy/blobs/uploads/"), uploads);
    assert!(reg.requests("mount=sha256") >= 2, "{}", reg.log());
    ok(&skopeo(&[
        "inspect",
        "--tls-verify=false",
        &format!("docker://{copy}"),
    ]));
}

#[test]
fn bearer_tokens_from_a_token_endpoint() {
    use common::token_server::{ISSUER, SERVICE, TokenServer};
    let t = tmp("reg-token");
    let tokens = TokenServer::start(&t.0.join("token"), "bob", "hunter2");
    let reg = Registry::start(
        &t.0.join("reg"),
        Options {
            token: Some((
                tokens.realm.clone(),
                SERVICE.into(),
                ISSUER.into(),
                tokens.bundle.clone(),
            )),
            ..Options::default()
        },
    );
    let root = t.0.join("root");
    build_base(&t.0, &root, "app:1");
    let name = format!("{}/team/app:1", reg.addr);
    ok(&rbuild(&root, &["tag", "app:1", &name]));
    let config = t.0.join("docker-config");
    std::fs::create_dir_all(&config).unwrap();
    let env = [("DOCKER_CONFIG", config.to_str().unwrap())];

    // Anonymous: a token with no access, and the registry's refusal.
    let o = rbuild_env(&root, &["push", &name], &env);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains("401") && err.contains("no credentials"),
        "{err}"
    );

    let o = rbuild_env(
        &root,
        &["login", "-u", "bob", "-p", "hunter2", &reg.addr],
        &env,
    );
    ok(&o);
    // One token serves the whole push (config, layers, manifest).
    let before = tokens.issued();
    ok(&rbuild_env(&root, &["push", &name], &env));
    assert_eq!(tokens.issued() - before, 1);
    let before = tokens.issued();
    ok(&rbuild_env(&t.0.join("fresh"), &["pull", &name], &env));
    assert_eq!(tokens.issued() - before, 1);
    ok(&skopeo(&[
        "inspect",
        "--tls-verify=false",
        "--creds",
        "bob:hunter2",
        &format!("docker://{name}"),
    ]));
}

#[test]
fn retries_and_resumes_through_503s_and_resets() {
    use common::fault_proxy::{Fault, FaultProxy};
    use std::sync::atomic::Ordering;
    let t = tmp("reg-faults");
    let reg = Registry::start(&t.0.join("reg"), Options::default());
    let root = t.0.join("root");
    build_base(&t.0, &root, "app:1");
    let direct = format!("{}/app:1", reg.addr);
    ok(&rbuild(&root, &["tag", "app:1", &direct]));
    ok(&rbuild(&root, &["push", &direct]));

    let proxy = FaultProxy::start(
        &reg.addr,
        vec![
            Fault::CutAfter(300_000),
            Fault::Unavailable,
            Fault::CutAfter(300_000),
            Fault::CutAfter(300_000),
            Fault::Unavailable,
            Fault::CutAfter(300_000),
        ],
        2,
    );
    let fresh = t.0.join("fresh");
    let through = format!("{}/app:1", proxy.addr);
    let o = rbuild(&fresh, &["pull", &through]);
    ok(&o);
    let c = &proxy.counts;
    assert!(c.unavailable.load(Ordering::SeqCst) > 0);
    assert!(c.cut.load(Ordering::SeqCst) > 0);
    assert!(
        c.saw_range.load(Ordering::SeqCst),
        "a cut download resumes with Range: {}",
        stderr(&o)
    );
    let a = ok(&rbuild(&root, &["inspect", &direct]));
    let b = ok(&rbuild(&fresh, &["inspect", &through]));
    let id = |s: &str| serde_json::from_str::<serde_json::Value>(s).unwrap()["Id"].clone();
    assert_eq!(id(&a), id(&b));

    // A push through the same faults completes, and real readers read it.
    let pushed = format!("{}/other:1", proxy.addr);
    ok(&rbuild(&root, &["tag", "app:1", &pushed]));
    ok(&rbuild(&root, &["push", &pushed]));
    ok(&skopeo(&[
        "copy",
        "--src-tls-verify=false",
        &format!("docker://{}/other:1", reg.addr),
        &format!("oci:{}:x", t.0.join("check").display()),
    ]));
}

#[test]
fn a_registry_stopped_mid_push_gets_a_whole_image_from_the_next_push() {
    let t = tmp("reg-stop");
    let mut reg = Registry::start(&t.0.join("reg"), Options::default());
    let root = t.0.join("root");
    // A layer big enough that the push is still going when the registry dies.
    let ctx = context(
        &t.0,
        "FROM scratch\nCOPY big /big\nCOPY busybox /bin/busybox\n",
    );
    let mut big = std::fs::File::create(ctx.join("big")).unwrap();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut chunk = vec![0u8; 1 << 20];
    for _ in 0..48 {
        for b in chunk.iter_mut() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            *b = state as u8;
        }
        std::io::Write::write_all(&mut big, &chunk).unwrap();
    }
    drop(big);
    let name = format!("{}/big/app:1", reg.addr);
    ok(&rbuild(
        &root,
        &["build", "-q", "-t", &name, ctx.to_str().unwrap()],
    ));
    let push = Command::new(env!("CARGO_BIN_EXE_rbuild"))
        .args(["--root", root.to_str().unwrap(), "push", &name])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Stop it once an upload has started.
    let uploads = reg
        .dir
        .join("data/docker/registry/v2/repositories/big/app/_uploads");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !uploads.exists() {
        assert!(std::time::Instant::now() < deadline, "no upload started");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    reg.stop();
    let out = push.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains(&reg.addr), "{}", stderr(&out));

    reg.restart();
    ok(&rbuild(&root, &["push", &name]));
    let layout = t.0.join("check");
    ok(&skopeo(&[
        "copy",
        "--src-tls-verify=false",
        &format!("docker://{name}"),
        &format!("oci:{}:x", layout.display()),
    ]));
    let bundle = t.0.join("bundle");
    ok(&Command::new("umoci")
        .args(["unpack", "--rootless", "--image"])
        .arg(format!("{}:x", layout.display()))
        .arg(&bundle)
        .output()
        .unwrap());
    assert_eq!(
        std::fs::metadata(bundle.join("rootfs/big")).unwrap().len(),
        48 << 20
    );
}

#[test]
fn credentials_from_a_credential_helper() {
    let t = tmp("reg-helper");
    let reg = Registry::start(
        &t.0.join("reg"),
        Options {
            htpasswd: Some(("carol".into(), "pw-from-helper".into())),
            ..Options::default()
        },
    );
    let root = t.0.join("root");
    build_base(&t.0, &root, "app:1");
    let name = format!("{}/app:1", reg.addr);
    ok(&rbuild(&root, &["tag", "app:1", &name]));
    // A helper as docker runs them: `docker-credential-NAME get|store|erase`,
    // the server on stdin; this one keeps its secret in a file.
    let bin = t.0.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let store = t.0.join("helper-store");
    let helper = bin.join("docker-credential-rbuildtest");
    std::fs::write(
        &helper,
        format!(
            "#!/bin/sh\nread server\ncase \"$1\" in\nget) if [ -f {s} ]; then printf '{{\"ServerURL\":\"%s\",\"Username\":\"carol\",\"Secret\":\"%s\"}}' \"$server\" \"$(cat {s})\"; else echo 'credentials not found in native keychain'; exit 1; fi;;\nstore) printf '%s' \"$server\" | sed 's/.*\"Secret\":\"\\([^\"]*\\)\".*/\\1/' > {s};;\nerase) rm -f {s};;\nesac\n",
            s = store.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = t.0.join("docker-config");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(
        config.join("config.json"),
        "{\"credsStore\":\"rbuildtest\"}",
    )
    .unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let env = [
        ("DOCKER_CONFIG", config.to_str().unwrap()),
        ("PATH", path.as_str()),
    ];
    // Nothing stored yet: the helper says so, and the push is refused.
    let o = rbuild_env(&root, &["push", &name], &env);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));

    // login stores through the helper, not in config.json.
    let o = rbuild_env(
        &root,
        &["login", "-u", "carol", "-p", "pw-from-helper", &reg.addr],
        &env,
    );
    ok(&o);
    assert!(
        stderr(&o).contains("docker-credential-rbuildtest"),
        "{}",
        stderr(&o)
    );
    assert_eq!(std::fs::read_to_string(&store).unwrap(), "pw-from-helper");
    assert!(
        !std::fs::read_to_string(config.join("config.json"))
            .unwrap()
            .contains("auths")
    );
    ok(&rbuild_env(&root, &["push", &name], &env));
    ok(&rbuild_env(&root, &["logout", &reg.addr], &env));
    assert!(!store.exists());
}

#[test]
fn an_insecure_registry_skips_verification() {
    let t = tmp("reg-insecure");
    let (_pki, reg) = Registry::start_tls(&t.0);
    let root = t.0.join("root");
    build_base(&t.0, &root, "app:1");
    let name = format!("{}/app:1", reg.addr);
    ok(&rbuild(&root, &["tag", "app:1", &name]));
    assert_eq!(rbuild(&root, &["push", &name]).status.code(), Some(1));
    settings(
        &root,
        &format!("[registry.\"{}\"]\ninsecure = true\n", reg.addr),
    );
    ok(&rbuild(&root, &["push", &name]));
}

#[test]
fn base_layers_are_fetched_only_when_files_are_needed() {
    if !is_root() {
        eprintln!("skipped: building needs root");
        return;
    }
    let (t, reg, root, base) = with_image("reg-lazy", Options::default(), "lazy/base:1");
    ok(&rbuild(&root, &["push", &base]));
    let layers: Vec<String> = {
        let v: serde_json::Value = remote_inspect(&base);
        v["Layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l.as_str().unwrap().to_string())
            .collect()
    };
    // A stage that only sets config on the base: nothing reads its files.
    let dir = t.0.join("app");
    let ctx = context(
        &dir,
        &format!("FROM {base}\nENV MODE=lazy\nLABEL built=yes\n"),
    );
    let layer_gets = || {
        layers
            .iter()
            .map(|l| reg.requests(&format!("GET /v2/lazy/base/blobs/{l}")))
            .sum::<usize>()
    };
    let before = layer_gets();
    let b = t.0.join("b");
    let o = rbuild(
        &b,
        &["build", "-q", "-t", "lazy-app:1", ctx.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(layer_gets(), before, "no base layer was downloaded");
    assert!(reg.requests("GET /v2/lazy/base/manifests/1") >= 1);

    // An archive needs every layer: they come now.
    let tar = t.0.join("app.tar");
    ok(&rbuild(
        &b,
        &["save", "-o", tar.to_str().unwrap(), "lazy-app:1"],
    ));
    assert_eq!(layer_gets(), before + layers.len());
}

/// A base image's layers, fetched when a RUN needs its files, show as
/// statuses of that step with their bytes (BuildKit's `#N sha256:...
/// 1.02MB / 1.02MB 0.1s done`), in plain and in rawjson; not as steps.
#[test]
fn downloads_show_inside_the_step_that_needs_them() {
    let (t, _reg, root, name) = with_image("reg-status", Options::default(), "status/base:1");
    ok(&rbuild(&root, &["push", &name]));
    let v: serde_json::Value = remote_inspect(&name);
    let layers: Vec<String> = v["Layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap().to_string())
        .collect();
    let ctx = context(
        &t.0.join("app"),
        &format!("FROM {name}\nRUN [\"/bin/busybox\", \"true\"]\n"),
    );
    let o = rbuild(
        &t.0.join("plain"),
        &["build", "--progress=plain", ctx.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    let step = err
        .lines()
        .find_map(|l| l.strip_suffix(" [2/2] RUN [\"/bin/busybox\", \"true\"]"))
        .unwrap_or_else(|| panic!("{err}"));
    for l in &layers {
        assert!(
            err.lines()
                .any(|x| x.starts_with(&format!("{step} {l} ")) && x.ends_with(" done")),
            "{err}"
        );
        assert!(!err.contains(&format!("pull {l}")), "{err}");
    }

    // A push is a step of its own whose blobs are its statuses.
    let pushed = format!("{}/status/app:1", _reg.addr);
    let o = rbuild(
        &t.0.join("plain"),
        &[
            "build",
            "--progress=plain",
            "--push",
            "-t",
            &pushed,
            ctx.to_str().unwrap(),
        ],
    );
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    let step = err
        .lines()
        .find_map(|l| l.strip_suffix(&format!(" pushing {pushed}")))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(err.contains(&format!("{step} DONE")), "{err}");
    // The RUN's layer is new to the registry: its bytes show.
    assert!(
        err.lines()
            .any(|l| l.starts_with(&format!("{step} sha256:")) && l.ends_with(" done")),
        "{err}"
    );

    let o = rbuild(
        &t.0.join("rawjson"),
        &["build", "--progress=rawjson", ctx.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let events: Vec<serde_json::Value> = stderr(&o)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let vertex = events
        .iter()
        .flat_map(|e| e["vertexes"].as_array().cloned().unwrap_or_default())
        .find(|v| v["name"] == "[2/2] RUN [\"/bin/busybox\", \"true\"]")
        .unwrap()["digest"]
        .clone();
    for l in &layers {
        let done = events
            .iter()
            .flat_map(|e| e["statuses"].as_array().cloned().unwrap_or_default())
            .find(|s| s["id"] == l.as_str() && s["completed"].is_string())
            .unwrap_or_else(|| panic!("no completed status for {l}"));
        assert_eq!(done["vertex"], vertex);
        assert_eq!(done["current"], done["total"]);
        assert!(done["total"].as_u64().unwrap() > 0);
    }
}

/// On a terminal, a download under way is a byte bar under the step
/// that waits for it.
#[test]
fn downloads_show_as_bars_on_a_terminal() {
    use common::fault_proxy::{Fault, FaultProxy};
    let (t, reg, root, name) = with_image("reg-bars", Options::default(), "bars/base:1");
    ok(&rbuild(&root, &["push", &name]));
    // Through a slow link: the 1 MB layer takes over a second.
    let slow = FaultProxy::start(&reg.addr, vec![Fault::Slow(20)], 0);
    let image = name.replace(&reg.addr, &slow.addr);
    let ctx = context(
        &t.0.join("app"),
        &format!("FROM {image}\nRUN [\"/bin/busybox\", \"true\"]\n"),
    );
    let text = common::on_terminal(&t.0.join("tty"), &format!("build {}", ctx.display()));
    // The biggest layer (busybox) is the one a bar shows long enough.
    let manifest: serde_json::Value = serde_json::from_str(&ok(&skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{name}"),
    ])))
    .unwrap();
    let layer = common::registry::biggest_layer(&manifest);
    let bar = format!("sha256:{}", &layer["sha256:".len()..][..12]);
    // `sha256:cba602dfadb7  79.61 KiB / 998.13 KiB ███░░░` between
    // cursor moves.
    let has_bar = |text: &str| {
        text.split(&bar)
            .skip(1)
            .any(|rest| rest.split('\u{1b}').next().unwrap_or("").contains("KiB / "))
    };
    assert!(has_bar(&text), "{text}");
    assert!(text.contains("RUN [\"/bin/busybox\", \"true\"]"), "{text}");

    // `rbuild pull` on a terminal: a live step with the same bars.
    let text = common::on_terminal(&t.0.join("pull"), &format!("pull {image}"));
    assert!(has_bar(&text), "{text}");
    assert!(text.contains(&format!("=> [1] pulling {image}")), "{text}");
}

#[test]
fn add_url_downloads_trust_certs_d_as_registries_do() {
    if !is_root() {
        eprintln!("skipped: building needs root");
        return;
    }
    let t = tmp("add-url-tls");
    let (pki, reg) = Registry::start_tls(&t.0);
    // A real HTTPS server with a test CA: the registry's /v2/ is `{}`.
    let ctx = context(
        &t.0,
        &format!("FROM scratch\nADD https://{}/v2/ /api/\n", reg.addr),
    );
    let root = t.0.join("root");
    let o = rbuild(&root, &["build", "-q", ctx.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "an unknown CA is refused");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!("https://{}/v2/", reg.addr))
            && err.contains("Dockerfile:2")
            && err.contains("certificate"),
        "{err}"
    );
    let certs_d = t.0.join("certs.d");
    std::fs::create_dir_all(certs_d.join(&reg.addr)).unwrap();
    std::fs::copy(
        pki.dir.join("ca.crt"),
        certs_d.join(&reg.addr).join("ca.crt"),
    )
    .unwrap();
    settings(&root, &format!("certs_d = \"{}\"\n", certs_d.display()));
    let out = t.0.join("out");
    common::build_local(&root, &ctx, &out);
    assert_eq!(
        std::fs::read_to_string(out.join("api/v2")).unwrap().trim(),
        "{}"
    );
}

/// A registry that answers a manifest larger than containerd's limit (a
/// real registry refuses to store one: this one is hostile), or one whose
/// config is said to be huge, is refused with a clear error, the answer
/// never read whole into memory.
#[test]
fn oversized_registry_answers_are_refused() {
    let t = tmp("hostile-registry");
    let srv = common::http_server::HttpServer::start();
    srv.file("/v2/", b"{}", "p", "Mon, 01 Jan 2024 00:00:00 GMT");
    let huge = vec![b' '; 5 << 20];
    srv.file(
        "/v2/big/test/manifests/v1",
        &huge,
        "m",
        "Mon, 01 Jan 2024 00:00:00 GMT",
    );
    let host = srv.base.trim_start_matches("http://");
    let o = rbuild(&t.0.join("root"), &["pull", &format!("{host}/big/test:v1")]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("rejecting manifest v1")
            && stderr(&o).contains("larger than 4393216 bytes"),
        "{}",
        stderr(&o)
    );
    // A manifest whose config is said to be a GiB: refused before fetching
    // it (it could only be read whole).
    let config = "sha256:".to_string() + &"a".repeat(64);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 1u64 << 30},
        "layers": [],
    });
    srv.file(
        "/v2/big/test/manifests/v2",
        manifest.to_string().as_bytes(),
        "m2",
        "Mon, 01 Jan 2024 00:00:00 GMT",
    );
    let o = rbuild(&t.0.join("root"), &["pull", &format!("{host}/big/test:v2")]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!(
            "rejecting config {config}: 1073741824 bytes, larger than 256 MiB"
        )),
        "{}",
        stderr(&o)
    );
}
