//! `ADD <git url>`: the ref resolved to a commit with `git ls-remote` (the
//! commit is what the cache key holds, so a rebuild whose ref still points
//! there is a hit after that one request), then a shallow fetch and
//! checkout into a directory, as BuildKit's git source does: files 0644 or
//! 0755 (umask 022), `.git` dropped unless `--keep-git-dir`, submodules
//! checked out, mtimes of the checkout unless `?mtime=commit`. The `git`
//! program runs with no user or system config and never prompts.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Context, bail};
use frontend::gitref::GitRef;

/// A git source resolved to a commit.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Resolved {
    /// The repository URL.
    pub remote: String,
    /// The ref as written (empty: the default branch).
    pub ref_name: String,
    /// The commit it points at.
    pub commit: String,
    /// The directory of the repository that is copied.
    pub subdir: String,
    /// Whether `.git` is kept.
    pub keep_git_dir: bool,
    /// `?mtime=`: `commit` gives every file the commit's time.
    pub mtime: String,
    /// Submodules are checked out (the default).
    pub submodules: bool,
}

/// What lets git into a private repository: an `Authorization` header
/// (http(s)) or an SSH agent (`git@host:...`, `ssh://`).
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// Sent with every http(s) request.
    pub header: Option<String>,
    /// The agent ssh asks for keys.
    pub ssh_agent: Option<std::path::PathBuf>,
}

impl Access {
    /// What the build gives for `remote`: its `GIT_AUTH_*` secrets for
    /// http(s) ([`auth_header`]), the `--ssh default` agent for ssh.
    pub fn for_remote(
        remote: &str,
        secrets: &crate::secrets::Secrets,
        agents: &crate::ssh::Agents,
    ) -> Access {
        let ssh = remote.starts_with("ssh://") || !remote.contains("://");
        Access {
            header: auth_header(remote, secrets),
            ssh_agent: ssh.then(|| agents.get("default").cloned()).flatten(),
        }
    }
}

/// The `Authorization` value for `remote` from the build secrets, in
/// BuildKit's order: `GIT_AUTH_HEADER.<host>`, `GIT_AUTH_TOKEN.<host>`,
/// `GIT_AUTH_HEADER`, `GIT_AUTH_TOKEN` (a token is sent as Basic
/// `x-access-token:TOKEN`). Only for http(s) remotes.
pub fn auth_header(remote: &str, secrets: &crate::secrets::Secrets) -> Option<String> {
    use base64::Engine as _;
    if !super::http::is_http(remote) {
        return None;
    }
    let host = super::authority(remote)?;
    let value = |id: &str| super::secret_text(secrets, id);
    let token = |t: String| {
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("x-access-token:{t}"));
        format!("basic {basic}")
    };
    value(&format!("GIT_AUTH_HEADER.{host}"))
        .or_else(|| value(&format!("GIT_AUTH_TOKEN.{host}")).map(token))
        .or_else(|| value("GIT_AUTH_HEADER"))
        .or_else(|| value("GIT_AUTH_TOKEN").map(token))
}

/// `git ARGS` isolated from the user's and the system's config.
fn git(dir: Option<&Path>, args: &[&str]) -> anyhow::Result<Output> {
    git_auth(dir, args, &Access::default())
}

/// `git ARGS` as [`git`], with `access` (the header through the
/// environment, never the command line).
fn git_auth(dir: Option<&Path>, args: &[&str], access: &Access) -> anyhow::Result<Output> {
    let home = std::env::temp_dir().join("rbuild-git-home");
    let _ = std::fs::create_dir_all(&home);
    let mut cmd = Command::new("git");
    cmd.env_clear();
    if let Some(d) = dir {
        cmd.current_dir(d);
    }
    // Checked-out files get 0644/0755 whatever rbuild's own umask is.
    // SAFETY: umask is async-signal-safe and cannot fail.
    unsafe {
        use std::os::unix::process::CommandExt as _;
        cmd.pre_exec(|| {
            libc::umask(0o022);
            Ok(())
        });
    }
    if let Some(sock) = &access.ssh_agent {
        cmd.env("SSH_AUTH_SOCK", sock);
    }
    if let Some(a) = &access.header {
        cmd.env("GIT_CONFIG_COUNT", "1")
            .env("GIT_CONFIG_KEY_0", "http.extraheader")
            .env("GIT_CONFIG_VALUE_0", format!("Authorization: {a}"));
    }
    let out = cmd
        .args([
            "-c",
            "protocol.file.allow=user",
            "-c",
            "advice.detachedHead=false",
        ])
        .args(args)
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", &home)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_TERMINAL_PROMPT", "0")
        // BuildKit's: no ssh config, any host key (no known_hosts kept).
        .env(
            "GIT_SSH_COMMAND",
            "ssh -F /dev/null -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o BatchMode=yes",
        )
        .env("LC_ALL", "C")
        .output()
        .context("running git (is it installed?)")?;
    Ok(out)
}

fn checked(out: Output, what: &str) -> anyhow::Result<String> {
    if !out.status.success() {
        bail!(
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr)
                .trim()
                .replace('\n', "; ")
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn is_commit(s: &str) -> bool {
    (s.len() == 40 || s.len() == 64) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Resolves `r` to a commit (one `git ls-remote`, none for a commit id);
/// `checksum` (`--checksum`, or the URL's own) must be a prefix of it.
pub fn resolve(r: &GitRef, checksum: Option<&str>, access: &Access) -> anyhow::Result<Resolved> {
    // The subdirectory stays inside the checkout.
    if std::path::Path::new(&r.subdir)
        .components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        bail!("git subdirectory {:?} leaves the repository", r.subdir);
    }
    let commit = if is_commit(&r.ref_name) {
        r.ref_name.to_lowercase()
    } else {
        let wanted = if r.ref_name.is_empty() {
            "HEAD"
        } else {
            &r.ref_name
        };
        // Every ref: a pattern would leave out an annotated tag's peeled
        // (`^{}`) line, which names its commit.
        let listing = checked(
            git_auth(None, &["ls-remote", "--", &r.remote], access)?,
            &format!("git ls-remote {}", r.remote),
        )?;
        pick(&listing, wanted)
            .with_context(|| format!("repository {} does not contain ref {wanted}", r.remote))?
    };
    for want in [
        checksum,
        (!r.checksum.is_empty()).then_some(r.checksum.as_str()),
    ]
    .into_iter()
    .flatten()
    {
        if !want.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!("invalid checksum {want}: expected hex commit hash");
        }
        if !commit.starts_with(&want.to_lowercase()) {
            bail!("expected checksum to match {want}, got {commit}");
        }
    }
    Ok(Resolved {
        remote: r.remote.clone(),
        ref_name: r.ref_name.clone(),
        commit,
        subdir: r.subdir.clone(),
        keep_git_dir: r.keep_git_dir.unwrap_or(false),
        mtime: r.mtime.clone(),
        submodules: r.submodules.unwrap_or(true),
    })
}

/// The commit `ls-remote` lists for `wanted`: a branch, then a tag (an
/// annotated tag's commit), then a full ref name.
fn pick(listing: &str, wanted: &str) -> Option<String> {
    let refs: Vec<(&str, &str)> = listing.lines().filter_map(|l| l.split_once('\t')).collect();
    let find = |name: &str| {
        refs.iter()
            .find(|(_, r)| *r == name)
            .map(|(c, _)| c.to_string())
    };
    if wanted == "HEAD" {
        return find("HEAD");
    }
    find(&format!("refs/heads/{wanted}"))
        .or_else(|| find(&format!("refs/tags/{wanted}^{{}}")))
        .or_else(|| find(&format!("refs/tags/{wanted}")))
        .or_else(|| find(wanted))
}

/// Checks `r` out into the empty directory `dir` (the whole repository);
/// returns its `subdir` (see [`subdir_of`]), what the caller copies.
pub fn checkout(r: &Resolved, dir: &Path, access: &Access) -> anyhow::Result<PathBuf> {
    let what = |step: &str| format!("git {step} {}#{}", r.remote, r.commit);
    checked(git(Some(dir), &["init", "-q"])?, &what("init"))?;
    checked(
        git(Some(dir), &["remote", "add", "origin", &r.remote])?,
        &what("remote add"),
    )?;
    // The ref's tip, shallow; a commit that is no tip needs the history.
    let target = if r.ref_name.is_empty() || is_commit(&r.ref_name) {
        r.commit.as_str()
    } else {
        r.ref_name.as_str()
    };
    let shallow = git_auth(
        Some(dir),
        &["fetch", "-q", "--depth=1", "--no-tags", "origin", target],
        access,
    )?;
    if !shallow.status.success() {
        checked(
            git_auth(Some(dir), &["fetch", "-q", "--tags", "origin"], access)?,
            &what("fetch"),
        )?;
    }
    checked(
        git(Some(dir), &["checkout", "-q", &r.commit])?,
        &what("checkout"),
    )?;
    if r.submodules && dir.join(".gitmodules").exists() {
        checked(
            git_auth(
                Some(dir),
                &["submodule", "update", "--init", "--recursive", "--depth=1"],
                access,
            )?,
            &what("submodule update"),
        )?;
    }
    if r.mtime == "commit" {
        let time = checked(
            git(Some(dir), &["log", "-1", "--format=%ct", &r.commit])?,
            &what("log"),
        )?;
        let secs: u64 = time.trim().parse().context("reading the commit time")?;
        set_mtimes(
            dir,
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs),
        )?;
    }
    if !r.keep_git_dir {
        std::fs::remove_dir_all(dir.join(".git"))
            .with_context(|| format!("removing {}", dir.join(".git").display()))?;
    }
    subdir_of(dir, &r.subdir).with_context(|| format!("{}#{}", r.remote, r.commit))
}

/// The directory `subdir` of the checkout `root`: every component a real
/// directory (BuildKit's validateDirsOnly), so that a symlink in the
/// repository can't point the copy at the host's files.
pub fn subdir_of(root: &Path, subdir: &str) -> anyhow::Result<PathBuf> {
    let mut dir = root.to_path_buf();
    for c in Path::new(subdir.trim_start_matches('/')).components() {
        match c {
            std::path::Component::Normal(name) => dir.push(name),
            std::path::Component::CurDir => continue,
            _ => bail!("invalid subdir {subdir:?}"),
        }
        let is_dir = std::fs::symlink_metadata(&dir).is_ok_and(|m| m.file_type().is_dir());
        if !is_dir {
            bail!(
                "invalid subdir {subdir:?}: {} is not a directory",
                dir.display()
            );
        }
    }
    Ok(dir)
}

/// Every entry under `dir` (not following links) gets mtime `t`.
fn set_mtimes(dir: &Path, t: std::time::SystemTime) -> anyhow::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let p = e.path();
        let ft = e.file_type()?;
        if ft.is_dir() {
            set_mtimes(&p, t)?;
        }
        if !ft.is_symlink() {
            std::fs::File::open(&p)
                .and_then(|f| f.set_times(std::fs::FileTimes::new().set_modified(t)))
                .with_context(|| format!("setting the time of {}", p.display()))?;
        }
    }
    std::fs::File::open(dir)?.set_times(std::fs::FileTimes::new().set_modified(t))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subdirectory_must_be_real_directories() {
        let t = std::env::temp_dir().join(format!("rbuild-subdir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&t);
        std::fs::create_dir_all(t.join("real/inner")).unwrap();
        std::os::unix::fs::symlink("/etc", t.join("link")).unwrap();
        assert_eq!(subdir_of(&t, "real/inner").unwrap(), t.join("real/inner"));
        assert_eq!(subdir_of(&t, "").unwrap(), t);
        assert!(subdir_of(&t, "link").is_err());
        assert!(subdir_of(&t, "real/missing").is_err());
        assert!(subdir_of(&t, "../x").is_err());
        let _ = std::fs::remove_dir_all(&t);
    }

    #[test]
    fn a_subdirectory_stays_inside() {
        let r = GitRef {
            remote: "git://127.0.0.1:1/r.git".into(),
            ref_name: "a".repeat(40),
            subdir: "../../etc".into(),
            ..GitRef::default()
        };
        let err = resolve(&r, None, &Access::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("leaves the repository"), "{err}");
    }

    #[test]
    fn picks_branches_tags_and_peeled_tags() {
        let listing = "aaa\tHEAD\nbbb\trefs/heads/main\nccc\trefs/tags/v1\nddd\trefs/tags/v1^{}\neee\trefs/tags/light\n";
        assert_eq!(pick(listing, "HEAD").as_deref(), Some("aaa"));
        assert_eq!(pick(listing, "main").as_deref(), Some("bbb"));
        assert_eq!(pick(listing, "v1").as_deref(), Some("ddd"));
        assert_eq!(pick(listing, "light").as_deref(), Some("eee"));
        assert_eq!(pick(listing, "refs/heads/main").as_deref(), Some("bbb"));
        assert_eq!(pick(listing, "nope"), None);
    }
}
