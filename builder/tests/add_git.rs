//! `ADD <git url>` against `git daemon` on 127.0.0.1: a branch, a tag, a
//! commit, a subdirectory, `--keep-git-dir`, modes 0644/0755; a rebuild
//! with no new commit is a hit, a new commit a miss; `--checksum` and a
//! missing ref are errors that say so.

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use common::registry::free_port;
use common::{is_root, rbuild, tmp};

fn git(dir: &Path, args: &[&str]) -> String {
    let o = Command::new("git")
        .args([
            "-c",
            "user.email=t@example.com",
            "-c",
            "user.name=t",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git runs (.ci/run installs it)");
    assert!(
        o.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// Pushes `work`'s main branch to the repository `serve` serves from `dir`.
fn publish(dir: &Path, work: &Path) {
    let served = dir.join("served/repo.git");
    git(work, &["push", "-q", served.to_str().unwrap(), "main"]);
}

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A repository with a commit on `main` tagged `v1`, served by git daemon.
fn serve(dir: &Path) -> (Daemon, String, PathBuf) {
    let work = dir.join("work");
    std::fs::create_dir_all(work.join("sub")).unwrap();
    git(&work, &["init", "-q"]);
    std::fs::write(work.join("sub/a.txt"), "one\n").unwrap();
    std::fs::write(work.join("run.sh"), "#!/bin/sh\necho run\n").unwrap();
    std::fs::set_permissions(work.join("run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    git(&work, &["add", "."]);
    git(&work, &["commit", "-qm", "one"]);
    git(&work, &["tag", "-a", "v1", "-m", "v1"]);
    let served = dir.join("served");
    std::fs::create_dir_all(&served).unwrap();
    git(dir, &["clone", "-q", "--bare", "work", "served/repo.git"]);
    let port = free_port();
    // The daemon itself, not the `git` wrapper that would leave it behind
    // (holding the test's output open) when killed.
    let exec_path = git(dir, &["--exec-path"]);
    let child = Command::new(Path::new(&exec_path).join("git-daemon"))
        .args(["--reuseaddr", "--export-all", "--listen=127.0.0.1"])
        .arg(format!("--port={port}"))
        .arg(format!("--base-path={}", served.display()))
        .arg(&served)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "git daemon did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    (
        Daemon(child),
        format!("git://127.0.0.1:{port}/repo.git"),
        work,
    )
}

fn build(root: &Path, dir: &Path, dockerfile: &str) -> (std::process::Output, PathBuf) {
    let ctx = dir.join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(ctx.join("Dockerfile"), dockerfile).unwrap();
    let out = dir.join("out");
    let _ = std::fs::remove_dir_all(&out);
    (common::build_into(root, &ctx, &out), out)
}

fn ok(o: &std::process::Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn add_from_git() {
    if !is_root() {
        eprintln!("skipped: building needs root");
        return;
    }
    let t = tmp("add-git");
    let (_daemon, url, work) = serve(&t.0);
    let commit = git(&work, &["rev-parse", "HEAD"]);
    let root = t.0.join("root");
    let df = format!(
        "FROM scratch\nADD {url}#main /branch\nADD {url}#v1:sub /tag-sub\nADD {url}#{commit} /commit\nADD --keep-git-dir=true {url}#main /with-git\n"
    );
    let (o, out) = build(&root, &t.0, &df);
    ok(&o);
    assert_eq!(
        std::fs::read_to_string(out.join("branch/sub/a.txt")).unwrap(),
        "one\n"
    );
    let mode = |p: &str| std::fs::metadata(out.join(p)).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode("branch/run.sh"), 0o755);
    assert_eq!(mode("branch/sub/a.txt"), 0o644);
    assert!(!out.join("branch/.git").exists());
    assert_eq!(
        std::fs::read_to_string(out.join("tag-sub/a.txt")).unwrap(),
        "one\n"
    );
    assert!(out.join("commit/run.sh").is_file());
    assert!(out.join("with-git/.git").is_dir());

    // No new commit: a hit.
    let (o, _) = build(&root, &t.0, &df);
    let err = ok(&o);
    assert_eq!(err.matches(" CACHED").count(), 4, "{err}");

    // A new commit on main: the branch misses, the tag and commit hit.
    std::fs::write(work.join("sub/a.txt"), "two\n").unwrap();
    git(&work, &["commit", "-qam", "two"]);
    publish(&t.0, &work);
    let (o, out) = build(&root, &t.0, &df);
    let err = ok(&o);
    assert_eq!(
        std::fs::read_to_string(out.join("branch/sub/a.txt")).unwrap(),
        "two\n"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("tag-sub/a.txt")).unwrap(),
        "one\n"
    );
    // The first step changed, so every step after it ran again.
    assert_eq!(err.matches(" CACHED").count(), 0, "{err}");

    // --checksum is a commit prefix; a missing ref says so.
    let (o, _) = build(
        &root,
        &t.0,
        &format!("FROM scratch\nADD --checksum=0000 {url}#v1 /x\n"),
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("expected checksum to match"));
    let (o, _) = build(
        &root,
        &t.0,
        &format!(
            "FROM scratch\nADD --checksum={} {url}#v1 /x\n",
            &commit[..10]
        ),
    );
    ok(&o);
    // Two repositories and a local file in one ADD, each copied in turn.
    std::fs::create_dir_all(t.0.join("ctx")).unwrap();
    std::fs::write(t.0.join("ctx/local.txt"), "local\n").unwrap();
    let (o, out) = build(
        &root,
        &t.0,
        &format!(
            "FROM scratch\nADD {url}#v1:sub local.txt {url}#main /many/\n\
             ADD --exclude=*.sh {url}#main /no-scripts\n"
        ),
    );
    ok(&o);
    let read = |p: &str| std::fs::read_to_string(out.join(p)).unwrap();
    assert_eq!(read("many/a.txt"), "one\n");
    assert_eq!(read("many/local.txt"), "local\n");
    assert_eq!(read("many/sub/a.txt"), "two\n");
    assert!(out.join("many/run.sh").is_file() && !out.join("many/.git").exists());
    // --exclude matches inside the repository.
    assert!(out.join("no-scripts/sub/a.txt").is_file());
    assert!(!out.join("no-scripts/run.sh").exists());
    let (o, _) = build(
        &root,
        &t.0,
        &format!("FROM scratch\nADD --keep-git-dir=false {url}?ref=main&keep-git-dir=true /x\n"),
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("inconsistent keep-git-dir configuration"));
    let (o, _) = build(&root, &t.0, &format!("FROM scratch\nADD {url}#nope /x\n"));
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("does not contain ref nope") && err.contains("Dockerfile:2"),
        "{err}"
    );
}

#[test]
fn git_urls_as_build_contexts() {
    if !is_root() {
        eprintln!("skipped: building needs root");
        return;
    }
    let t = tmp("git-context");
    let (_daemon, url, work) = serve(&t.0);
    // A Dockerfile in the repository's subdirectory, another at its root.
    std::fs::write(
        work.join("sub/Dockerfile"),
        "FROM scratch\nCOPY a.txt /in-sub\n",
    )
    .unwrap();
    std::fs::write(
        work.join("Build.Dockerfile"),
        "FROM scratch\nCOPY sub/a.txt /named-f\nCOPY --from=extra run.sh /extra\n",
    )
    .unwrap();
    std::fs::write(
        work.join("Git.Dockerfile"),
        "FROM scratch\nCOPY .git/HEAD /head\n",
    )
    .unwrap();
    git(&work, &["add", "."]);
    git(&work, &["commit", "-qm", "dockerfiles"]);
    publish(&t.0, &work);
    let root = t.0.join("root");
    let out = t.0.join("out");
    let o = rbuild(
        &root,
        &[
            "build",
            "-q",
            "-o",
            &format!("type=local,dest={}", out.display()),
            &format!("{url}#main:sub"),
        ],
    );
    ok(&o);
    assert_eq!(
        std::fs::read_to_string(out.join("in-sub")).unwrap(),
        "one\n"
    );
    // The checks read the fetched context's Dockerfile.
    let o = rbuild(&root, &["build", "--check", &format!("{url}#main:sub")]);
    let err = ok(&o);
    assert!(err.contains("Check complete, no warnings found."), "{err}");

    // -f inside the repository, and a named context from git too.
    let out2 = t.0.join("out2");
    let o = rbuild(
        &root,
        &[
            "build",
            "-q",
            "-f",
            "Build.Dockerfile",
            "--build-context",
            &format!("extra={url}#v1"),
            "-o",
            &format!("type=local,dest={}", out2.display()),
            &format!("{url}#main"),
        ],
    );
    ok(&o);
    assert_eq!(
        std::fs::read_to_string(out2.join("named-f")).unwrap(),
        "one\n"
    );
    assert!(out2.join("extra").is_file());

    // .git is gone from a context unless BUILDKIT_CONTEXT_KEEP_GIT_DIR
    // (Go's boolean words) or the URL's keep-git-dir keeps it.
    let head_with = |extra: &[&str], url: &str| {
        let out = t.0.join("out3");
        let _ = std::fs::remove_dir_all(&out);
        let dest = format!("type=local,dest={}", out.display());
        let mut args = vec!["build", "-q", "-f", "Git.Dockerfile", "-o", &dest];
        args.extend_from_slice(extra);
        args.push(url);
        let o = rbuild(&root, &args);
        (o, std::fs::read_to_string(out.join("head")).ok())
    };
    let main = format!("{url}#main");
    let (o, head) = head_with(&[], &main);
    assert_eq!(o.status.code(), Some(1), "{head:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(".git/HEAD") && err.contains("not found"),
        "{err}"
    );
    let commit = git(&work, &["rev-parse", "HEAD"]);
    for extra in [
        &["--build-arg", "BUILDKIT_CONTEXT_KEEP_GIT_DIR=1"][..],
        &["--build-arg", "BUILDKIT_CONTEXT_KEEP_GIT_DIR=true"][..],
    ] {
        let (o, head) = head_with(extra, &main);
        ok(&o);
        assert_eq!(head.as_deref().map(str::trim), Some(commit.as_str()));
    }
    let (o, head) = head_with(&[], &format!("{url}?ref=main&keep-git-dir=true"));
    ok(&o);
    assert_eq!(head.as_deref().map(str::trim), Some(commit.as_str()));
}

#[test]
fn a_private_repository_over_http_with_a_token_secret() {
    if !is_root() {
        eprintln!("skipped: building needs root");
        return;
    }
    use base64::Engine as _;
    let t = tmp("git-private");
    let (_daemon, _url, work) = serve(&t.0);
    // The same bare repository, over smart HTTP, for one token only.
    let token = "t0ken-for-the-test";
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("x-access-token:{token}"));
    let srv = common::git_http::GitHttp::start(&t.0.join("served"), &format!("basic {basic}"));
    let url = format!("{}/repo.git", srv.base);
    let df = format!("FROM scratch\nADD {url}#main /src\n");
    let root = t.0.join("root");

    let (o, _) = build(&root, &t.0, &df);
    assert_eq!(o.status.code(), Some(1), "no credentials: refused");
    assert!(srv.refused.load(std::sync::atomic::Ordering::SeqCst) > 0);

    // BuildKit's secret for a host: GIT_AUTH_TOKEN.<host:port>.
    let host = srv.base.trim_start_matches("http://").to_string();
    let ctx = t.0.join("ctx");
    let out = t.0.join("out");
    let o = common::rbuild_env(
        &root,
        &[
            "build",
            "--progress=plain",
            "--secret",
            &format!("id=GIT_AUTH_TOKEN.{host},env=THE_TOKEN"),
            "-o",
            &format!("type=local,dest={}", out.display()),
            ctx.to_str().unwrap(),
        ],
        &[("THE_TOKEN", token)],
    );
    let err = ok(&o);
    assert_eq!(
        std::fs::read_to_string(out.join("src/sub/a.txt")).unwrap(),
        "one\n"
    );
    assert!(!err.contains(token), "{err}");

    // The private repository as the build context, with the host-less
    // secret name.
    std::fs::write(
        work.join("Dockerfile"),
        "FROM scratch\nCOPY sub/a.txt /ctx-a\n",
    )
    .unwrap();
    git(&work, &["add", "."]);
    git(&work, &["commit", "-qm", "dockerfile"]);
    publish(&t.0, &work);
    let out2 = t.0.join("out2");
    let o = common::rbuild_env(
        &root,
        &[
            "build",
            "-q",
            "--secret",
            "id=GIT_AUTH_TOKEN,env=THE_TOKEN",
            "-o",
            &format!("type=local,dest={}", out2.display()),
            &format!("{url}#main"),
        ],
        &[("THE_TOKEN", token)],
    );
    ok(&o);
    assert_eq!(
        std::fs::read_to_string(out2.join("ctx-a")).unwrap(),
        "one\n"
    );
}

#[test]
fn a_private_repository_over_ssh_with_the_agent() {
    if !is_root() {
        eprintln!("skipped: building and sshd need root");
        return;
    }
    let t = tmp("git-ssh");
    let (_daemon, _url, _work) = serve(&t.0);
    let sshd = common::sshd::Sshd::start(&t.0.join("sshd"));
    let url = format!(
        "ssh://root@127.0.0.1:{}{}",
        sshd.port,
        t.0.join("served/repo.git").display()
    );
    let df = format!("FROM scratch\nADD {url}#main /src\n");
    let root = t.0.join("root");
    // Without an agent: refused.
    let (o, _) = build(&root, &t.0, &df);
    assert_eq!(o.status.code(), Some(1));
    // `--ssh default=KEY`: a private agent of the build holds the key.
    let out = t.0.join("out");
    let o = rbuild(
        &root,
        &[
            "build",
            "-q",
            "--ssh",
            &format!("default={}", sshd.key.display()),
            "-o",
            &format!("type=local,dest={}", out.display()),
            t.0.join("ctx").to_str().unwrap(),
        ],
    );
    ok(&o);
    assert_eq!(
        std::fs::read_to_string(out.join("src/sub/a.txt")).unwrap(),
        "one\n"
    );
}

#[test]
fn submodules_are_checked_out() {
    if !is_root() {
        eprintln!("skipped: building needs root");
        return;
    }
    let t = tmp("git-submodule");
    let (_daemon, url, work) = serve(&t.0);
    // A second repository, served by the same daemon, as a submodule.
    let lib = t.0.join("lib-work");
    std::fs::create_dir_all(&lib).unwrap();
    git(&lib, &["init", "-q"]);
    std::fs::write(lib.join("lib.txt"), "from the submodule\n").unwrap();
    git(&lib, &["add", "."]);
    git(&lib, &["commit", "-qm", "lib"]);
    git(
        &t.0,
        &["clone", "-q", "--bare", "lib-work", "served/lib.git"],
    );
    let lib_url = url.replace("repo.git", "lib.git");
    git(&work, &["submodule", "-q", "add", &lib_url, "lib"]);
    git(&work, &["commit", "-qm", "with a submodule"]);
    publish(&t.0, &work);
    let (o, out) = build(
        &t.0.join("root"),
        &t.0,
        &format!("FROM scratch\nADD {url}#main /src\n"),
    );
    ok(&o);
    assert_eq!(
        std::fs::read_to_string(out.join("src/lib/lib.txt")).unwrap(),
        "from the submodule\n"
    );
    assert!(!out.join("src/.git").exists());
}

#[test]
fn a_subdir_that_is_a_symlink_is_refused() {
    if !is_root() {
        eprintln!("skipped: building needs root");
        return;
    }
    let t = tmp("git-evil-subdir");
    let (_daemon, url, work) = serve(&t.0);
    std::os::unix::fs::symlink("/etc", work.join("evil")).unwrap();
    git(&work, &["add", "."]);
    git(&work, &["commit", "-qm", "a link out"]);
    publish(&t.0, &work);
    let (o, out) = build(
        &t.0.join("root"),
        &t.0,
        &format!("FROM scratch\nADD {url}#main:evil /x\n"),
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("invalid subdir"));
    assert!(!out.join("x/passwd").exists());
}

#[test]
fn lfs_files_stay_pointers_and_user_config_is_not_read() {
    if !is_root() {
        eprintln!("skipped: building needs root");
        return;
    }
    let t = tmp("git-lfs");
    let (_daemon, url, work) = serve(&t.0);
    let pointer = "version https://git-lfs.github.com/spec/v1\n\
                   oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\n\
                   size 12345\n";
    std::fs::write(
        work.join(".gitattributes"),
        "*.bin filter=lfs diff=lfs merge=lfs -text\n",
    )
    .unwrap();
    std::fs::write(work.join("big.bin"), pointer).unwrap();
    git(&work, &["add", "."]);
    git(&work, &["commit", "-qm", "lfs"]);
    publish(&t.0, &work);
    // The user's git config has an LFS smudge filter (as `git lfs install`
    // writes one) that would rewrite the file, and a rule that would send
    // the fetch elsewhere: BuildKit reads neither.
    let home = t.0.join("home");
    std::fs::create_dir_all(&home).unwrap();
    std::fs::write(
        home.join(".gitconfig"),
        "[filter \"lfs\"]\n\tsmudge = sed s/oid/SMUDGED/\n\trequired = true\n\
         [url \"git://127.0.0.1:1/\"]\n\tinsteadOf = git://\n",
    )
    .unwrap();
    let ctx = t.0.join("ctx");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        format!("FROM scratch\nADD {url}#main /src\n"),
    )
    .unwrap();
    let out = t.0.join("out");
    let o = common::rbuild_env(
        &t.0.join("root"),
        &[
            "build",
            "-q",
            "-o",
            &format!("type=local,dest={}", out.display()),
            ctx.to_str().unwrap(),
        ],
        &[("HOME", home.to_str().unwrap())],
    );
    ok(&o);
    assert_eq!(
        std::fs::read_to_string(out.join("src/big.bin")).unwrap(),
        pointer
    );
}
