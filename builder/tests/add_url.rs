//! `ADD <url>` against an HTTP server of the test's own: name, mode and
//! mtime as BuildKit gives them, revalidation (a 304 is a hit with no
//! download), a changed file misses, `--checksum` (a hit asks nothing; a
//! mismatch names both digests and keeps nothing), redirects, a 404,
//! archives unpacked only with `--unpack=true`.

mod common;

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use common::http_server::HttpServer;
use common::{is_root, tmp};

const MODIFIED: &str = "Wed, 21 Oct 2015 07:28:00 GMT";

fn dockerfile(dir: &Path, text: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("Dockerfile"), text).unwrap();
    dir.to_path_buf()
}

use common::build_into as build;

fn ok(o: &std::process::Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{:x}", sha2::Sha256::digest(bytes))
}

#[test]
fn add_url_files_and_their_cache() {
    if !is_root() {
        eprintln!("skipped: building needs root");
        return;
    }
    let t = tmp("add-url");
    let srv = HttpServer::start();
    srv.file("/tools/tool.txt", b"version 1\n", "v1", MODIFIED);
    srv.redirect("/latest", "/tools/tool.txt");
    let ctx = dockerfile(
        &t.0.join("ctx"),
        &format!(
            "FROM scratch\nADD {0}/tools/tool.txt /dl/\nADD {0}/latest /renamed\n",
            srv.base
        ),
    );
    let root = t.0.join("root");
    let out = t.0.join("out");
    ok(&build(&root, &ctx, &out));
    let file = out.join("dl/tool.txt");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "version 1\n");
    let m = std::fs::metadata(&file).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o600);
    assert_eq!(m.mtime(), 1_445_412_480, "Last-Modified");
    assert_eq!(m.uid(), 0);
    assert_eq!(
        std::fs::read_to_string(out.join("renamed")).unwrap(),
        "version 1\n"
    );

    // Unchanged: revalidated with a 304, every step from the cache.
    let err = ok(&build(&root, &ctx, &out));
    assert_eq!(err.matches(" CACHED").count(), 2, "{err}");
    assert!(srv.requests("/tools/tool.txt").contains(&304));

    // Changed on the server: a miss and the new content.
    srv.file("/tools/tool.txt", b"version 2\n", "v2", MODIFIED);
    let err = ok(&build(&root, &ctx, &out));
    assert_eq!(err.matches(" CACHED").count(), 0, "{err}");
    assert_eq!(
        std::fs::read_to_string(out.join("dl/tool.txt")).unwrap(),
        "version 2\n"
    );

    // A 404 names the URL and the line.
    let bad = dockerfile(
        &t.0.join("bad"),
        &format!("FROM scratch\nADD {}/nothing /x\n", srv.base),
    );
    let o = build(&root, &bad, &out);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("/nothing") && err.contains("404") && err.contains("Dockerfile:2"),
        "{err}"
    );
}

#[test]
fn add_url_checksum() {
    if !is_root() {
        eprintln!("skipped: building needs root");
        return;
    }
    let t = tmp("add-url-checksum");
    let srv = HttpServer::start();
    let body = b"pinned release\n";
    srv.file("/release.txt", body, "r1", MODIFIED);
    let good = sha256(body);
    let ctx = dockerfile(
        &t.0.join("ctx"),
        &format!(
            "FROM scratch\nADD --checksum={good} {}/release.txt /\n",
            srv.base
        ),
    );
    let root = t.0.join("root");
    let out = t.0.join("out");
    ok(&build(&root, &ctx, &out));
    let asked = srv.requests("/release.txt").len();
    // With a checksum whose content is stored, a rebuild asks nothing.
    let err = ok(&build(&root, &ctx, &out));
    assert!(err.contains("CACHED"), "{err}");
    assert_eq!(srv.requests("/release.txt").len(), asked);

    // A wrong checksum: an error naming both digests, nothing kept.
    let wrong = sha256(b"something else");
    let bad = dockerfile(
        &t.0.join("bad"),
        &format!(
            "FROM scratch\nADD --checksum={wrong} {}/release.txt /\n",
            srv.base
        ),
    );
    let fresh = t.0.join("fresh");
    let o = build(&fresh, &bad, &out);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&wrong) && err.contains(&good) && err.contains("/release.txt"),
        "{err}"
    );
    let hex = good.strip_prefix("sha256:").unwrap();
    assert!(!fresh.join("content/blobs/sha256").join(hex).exists());
}

#[test]
fn add_url_archives_unpack_only_when_asked() {
    if !is_root() {
        eprintln!("skipped: building needs root");
        return;
    }
    let t = tmp("add-url-tar");
    let srv = HttpServer::start();
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::default(),
    ));
    let mut h = tar::Header::new_gnu();
    h.set_size(6);
    h.set_mode(0o644);
    h.set_cksum();
    tar.append_data(&mut h, "hello.txt", &b"hello\n"[..])
        .unwrap();
    let gz = tar.into_inner().unwrap().finish().unwrap();
    srv.file("/a.tar.gz", &gz, "t1", MODIFIED);
    let ctx = dockerfile(
        &t.0.join("ctx"),
        &format!(
            "FROM scratch\nADD {0}/a.tar.gz /kept/\nADD --unpack=true {0}/a.tar.gz /unpacked/\n",
            srv.base
        ),
    );
    let out = t.0.join("out");
    ok(&build(&t.0.join("root"), &ctx, &out));
    assert_eq!(std::fs::read(out.join("kept/a.tar.gz")).unwrap(), gz);
    assert_eq!(
        std::fs::read_to_string(out.join("unpacked/hello.txt")).unwrap(),
        "hello\n"
    );
}

#[test]
fn archives_and_files_as_build_contexts() {
    if !is_root() {
        eprintln!("skipped: building needs root");
        return;
    }
    let t = tmp("url-context");
    let srv = HttpServer::start();
    // A context as a gzip tarball: Dockerfile and a file.
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::default(),
    ));
    for (name, body) in [
        (
            "Dockerfile",
            &b"FROM scratch\nCOPY x.txt /x\nCOPY . /all/\n"[..],
        ),
        ("x.txt", &b"from the tarball\n"[..]),
        // The context's own ignore file applies as in a directory.
        (".dockerignore", &b"secret.txt\n"[..]),
        ("secret.txt", &b"never copied\n"[..]),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(&mut h, name, body).unwrap();
    }
    let gz = tar.into_inner().unwrap().finish().unwrap();
    srv.file("/ctx.tar.gz", &gz, "c1", MODIFIED);
    srv.file(
        "/Dockerfile",
        b"FROM scratch\nLABEL from=url\n",
        "d1",
        MODIFIED,
    );
    let root = t.0.join("root");
    let out = t.0.join("out");
    let o = common::rbuild(
        &root,
        &[
            "build",
            "-q",
            "-o",
            &format!("type=local,dest={}", out.display()),
            &format!("{}/ctx.tar.gz", srv.base),
        ],
    );
    ok(&o);
    assert_eq!(
        std::fs::read_to_string(out.join("x")).unwrap(),
        "from the tarball\n"
    );
    assert!(out.join("all/x.txt").is_file());
    assert!(
        !out.join("all/secret.txt").exists(),
        ".dockerignore of the fetched context"
    );

    // A URL of a plain file is the Dockerfile, with an empty context.
    let o = common::rbuild(
        &root,
        &[
            "build",
            "-q",
            "-t",
            "fromurl:1",
            &format!("{}/Dockerfile", srv.base),
        ],
    );
    ok(&o);
    let inspect = common::rbuild(&root, &["inspect", "fromurl:1"]);
    assert!(String::from_utf8_lossy(&inspect.stdout).contains("\"from\": \"url\""));

    // The same tarball on stdin is a context too.
    let out2 = t.0.join("out2");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_rbuild"))
        .args(["--root", root.to_str().unwrap(), "build", "-q", "-o"])
        .arg(format!("type=local,dest={}", out2.display()))
        .arg("-")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), &gz).unwrap();
    ok(&child.wait_with_output().unwrap());
    assert_eq!(
        std::fs::read_to_string(out2.join("x")).unwrap(),
        "from the tarball\n"
    );

    // A failing step of a fetched Dockerfile is named as it is named in
    // its context (BuildKit's `Dockerfile:2`, `-f`'s path), never by the
    // temporary copy rbuild builds from.
    let mut tar = tar::Builder::new(Vec::new());
    for (name, body) in [
        ("Dockerfile", &b"FROM scratch\nCOPY nope /x\n"[..]),
        ("sub/Other", &b"FROM scratch\nLABEL a=b\nCOPY gone /x\n"[..]),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(&mut h, name, body).unwrap();
    }
    let bad = tar.into_inner().unwrap();
    srv.file("/bad.tar", &bad, "b1", MODIFIED);
    srv.file(
        "/BadDockerfile",
        b"FROM scratch\nCOPY nope /x\n",
        "b2",
        MODIFIED,
    );
    let named = |args: &[&str], stdin: Option<&[u8]>, want: &str| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_rbuild"));
        cmd.args(["--root", root.to_str().unwrap(), "build"])
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let mut input = child.stdin.take().unwrap();
        std::io::Write::write_all(&mut input, stdin.unwrap_or_default()).unwrap();
        drop(input);
        let o = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(&format!("error: {want}:")), "{args:?}: {err}");
        assert!(
            !err.contains("rbuild-"),
            "{args:?} names a temporary path: {err}"
        );
    };
    let url = format!("{}/bad.tar", srv.base);
    named(&[&url], None, "Dockerfile:2:1");
    named(&["-f", "sub/Other", &url], None, "sub/Other:3:1");
    named(
        &[&format!("{}/BadDockerfile", srv.base)],
        None,
        "Dockerfile:2:1",
    );
    named(&["-"], Some(&bad), "Dockerfile:2:1");
}

#[test]
fn add_url_with_a_token_secret() {
    if !is_root() {
        eprintln!("skipped: building needs root");
        return;
    }
    let t = tmp("add-url-auth");
    let srv = HttpServer::start();
    srv.protected("/private.txt", b"private data\n", "Bearer s3cr3t-t0ken");
    let ctx = dockerfile(
        &t.0.join("ctx"),
        &format!("FROM scratch\nADD {}/private.txt /p\n", srv.base),
    );
    let root = t.0.join("root");
    let out = t.0.join("out");
    let o = build(&root, &ctx, &out);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("401"));

    // BuildKit's secret name: HTTP_AUTH_TOKEN_<host>.
    let o = common::rbuild_env(
        &root,
        &[
            "build",
            "--progress=plain",
            "--secret",
            "id=HTTP_AUTH_TOKEN_127.0.0.1,env=THE_TOKEN",
            "-t",
            "priv:1",
            "-o",
            &format!("type=local,dest={}", out.display()),
            ctx.to_str().unwrap(),
        ],
        &[("THE_TOKEN", "s3cr3t-t0ken")],
    );
    let err = ok(&o);
    assert_eq!(
        std::fs::read_to_string(out.join("p")).unwrap(),
        "private data\n"
    );
    assert!(!err.contains("s3cr3t-t0ken"), "{err}");
}

#[test]
fn add_url_through_the_proxy_build_args() {
    if !is_root() {
        eprintln!("skipped: building needs root");
        return;
    }
    let t = tmp("add-url-proxy");
    // The fixture answers as a forward proxy for a host that does not exist.
    let srv = HttpServer::start();
    srv.file("/via-proxy.txt", b"proxied\n", "p1", MODIFIED);
    let ctx = dockerfile(
        &t.0.join("ctx"),
        "FROM scratch\nADD http://rbuild-test.invalid/via-proxy.txt /p\n",
    );
    let root = t.0.join("root");
    let out = t.0.join("out");
    let run = |extra: &[&str]| {
        let mut args = vec!["build", "-q", "-o"];
        let dest = format!("type=local,dest={}", out.display());
        args.push(&dest);
        args.extend_from_slice(extra);
        args.push(ctx.to_str().unwrap());
        common::rbuild(&root, &args)
    };
    let proxy = format!("HTTP_PROXY={}", srv.base);
    ok(&run(&["--build-arg", &proxy]));
    assert_eq!(std::fs::read_to_string(out.join("p")).unwrap(), "proxied\n");
    assert_eq!(srv.requests("/via-proxy.txt"), [200]);
    // NO_PROXY sends it straight to the host, which does not resolve.
    let o = run(&[
        "--no-cache",
        "--build-arg",
        &proxy,
        "--build-arg",
        "NO_PROXY=rbuild-test.invalid",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(srv.requests("/via-proxy.txt").len(), 1);
}

#[test]
fn add_mixes_urls_and_local_files() {
    if !is_root() {
        eprintln!("skipped: building needs root");
        return;
    }
    let t = tmp("add-url-mixed");
    let srv = HttpServer::start();
    srv.file("/a.txt", b"from the server\n", "a1", MODIFIED);
    srv.file("/same.txt", b"server copy\n", "s1", MODIFIED);
    let ctx = dockerfile(
        &t.0.join("ctx"),
        &format!(
            "FROM scratch\n\
             ADD --chmod=0640 {0}/a.txt local.txt {0}/same.txt /mixed/\n\
             ADD same.txt {0}/same.txt /later-wins/\n\
             COPY local.txt /dir/\n\
             ADD {0}/a.txt local.txt /dir\n",
            srv.base
        ),
    );
    std::fs::write(ctx.join("local.txt"), "local 1\n").unwrap();
    std::fs::write(ctx.join("same.txt"), "local copy\n").unwrap();
    let root = t.0.join("root");
    let out = t.0.join("out");
    ok(&build(&root, &ctx, &out));
    let read = |p: &str| std::fs::read_to_string(out.join(p)).unwrap();
    let mode = |p: &str| std::fs::metadata(out.join(p)).unwrap().mode() & 0o7777;
    assert_eq!(read("mixed/a.txt"), "from the server\n");
    assert_eq!(read("mixed/local.txt"), "local 1\n");
    assert_eq!(read("mixed/same.txt"), "server copy\n");
    assert_eq!(mode("mixed/a.txt"), 0o640);
    assert_eq!(mode("mixed/local.txt"), 0o640);
    // Each source copied in the order written: the URL's file wins.
    assert_eq!(read("later-wins/same.txt"), "server copy\n");
    // An existing directory takes several sources without a trailing /.
    assert_eq!(read("dir/a.txt"), "from the server\n");
    assert_eq!(mode("dir/a.txt"), 0o600);

    // Nothing changed: every step a hit; a local source changed: a miss.
    let err = ok(&build(&root, &ctx, &out));
    assert_eq!(err.matches(" CACHED").count(), 4, "{err}");
    std::fs::write(ctx.join("local.txt"), "local 2\n").unwrap();
    let err = ok(&build(&root, &ctx, &out));
    assert_eq!(read("mixed/local.txt"), "local 2\n");
    assert_eq!(err.matches(" CACHED").count(), 0, "{err}");

    // Several sources into a path that is no directory: refused.
    let bad = dockerfile(
        &t.0.join("bad"),
        &format!("FROM scratch\nADD {}/a.txt local.txt /file\n", srv.base),
    );
    std::fs::write(bad.join("local.txt"), "x\n").unwrap();
    let o = build(&root, &bad, &out);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("destination must be a directory") && err.contains("Dockerfile:2"),
        "{err}"
    );
}

/// BuildKit's frontend names a downloaded file from the URL's path (or
/// `__unnamed__`) and passes that name on, so a `Content-Disposition` name
/// is not used. `--link` and `--chown` work as for local files; `--exclude`
/// matches below a source, so a downloaded file (a source itself) is kept,
/// as BuildKit's copier keeps it.
#[test]
fn add_url_names_links_owners_and_excludes() {
    if !is_root() {
        eprintln!("skipped: building needs root");
        return;
    }
    let t = tmp("add-url-names");
    let srv = HttpServer::start();
    srv.attachment("/download", b"attached\n", "release-1.0.tar.gz");
    srv.attachment("/", b"root\n", "index.txt");
    srv.file("/skip.log", b"log\n", "l1", MODIFIED);
    let ctx = dockerfile(
        &t.0.join("ctx"),
        &format!(
            "FROM scratch\n\
             ADD {0}/download {0}/ /named/\n\
             ADD --link --chown=7:8 {0}/download /linked/\n\
             ADD --exclude=*.log {0}/skip.log {0}/download /excluded/\n",
            srv.base
        ),
    );
    let root = t.0.join("root");
    let out = t.0.join("out");
    ok(&build(&root, &ctx, &out));
    let read = |p: &str| std::fs::read_to_string(out.join(p)).unwrap();
    assert_eq!(read("named/download"), "attached\n");
    assert_eq!(read("named/__unnamed__"), "root\n");
    assert!(!out.join("named/release-1.0.tar.gz").exists());
    let m = std::fs::metadata(out.join("linked/download")).unwrap();
    assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (7, 8, 0o600));
    assert!(out.join("excluded/download").is_file());
    assert!(out.join("excluded/skip.log").is_file());
}
