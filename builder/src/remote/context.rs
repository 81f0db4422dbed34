//! Build contexts that are not directories, told apart as buildx does: a
//! git URL (`https://host/repo.git#ref:subdir`, `git@host:repo.git`), an
//! http(s) URL of a tar archive (plain, gzip, zstd, bzip2, xz) or of a
//! single file (the Dockerfile, with an empty context), and a tar archive
//! on stdin. Each becomes a directory of this build's own; `-f` inside it
//! is read relative to it.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use cache::gc::Store;

use crate::tempdir::TempDir;

/// A context made into a directory for the build's life.
pub struct Materialized {
    /// Holds the files; removed on drop.
    _dir: TempDir,
    /// The context root (a git subdirectory, or the whole directory).
    pub root: PathBuf,
    /// The Dockerfile the source itself is, when it is one.
    pub dockerfile: Option<PathBuf>,
}

/// Whether `spec` names a context that is not a local directory.
pub fn is_remote(spec: &str) -> bool {
    !matches!(
        crate::remote::classify(spec),
        Ok(crate::remote::Kind::Local)
    )
}

/// Unpacks the archive `path` into `dir`, as a context: owners and
/// devices are not kept, nothing lands outside `dir`.
fn unpack(path: &Path, dir: &Path) -> anyhow::Result<()> {
    let options = cache::layer::UnpackOptions {
        same_owner: false,
        devices: false,
        ..cache::layer::UnpackOptions::default()
    };
    cache::layer::unpack(crate::copy::archive_reader(path)?, dir, &options)
        .with_context(|| format!("unpacking the context archive {}", path.display()))?;
    Ok(())
}

/// The build arg with which BuildKit keeps a git context's `.git`
/// directory (Go's boolean words; anything else is ignored, as there).
pub const KEEP_GIT_DIR_ARG: &str = "BUILDKIT_CONTEXT_KEEP_GIT_DIR";

/// The remote context `spec` (see [`is_remote`]) as a directory; a git
/// checkout keeps its `.git` when the URL asks (`?keep-git-dir=true`) or
/// `keep_git_dir` (the build arg [`KEEP_GIT_DIR_ARG`]) does.
pub fn materialize(
    spec: &str,
    keep_git_dir: bool,
    store: &Store,
    secrets: &crate::secrets::Secrets,
    agents: &crate::ssh::Agents,
    settings: &crate::registry::hosts::Settings,
) -> anyhow::Result<Materialized> {
    let dir = TempDir::new("context")?;
    let kind = crate::remote::classify(spec).with_context(|| format!("build context {spec}"))?;
    match kind {
        crate::remote::Kind::Git(r) => {
            let access = crate::remote::git::Access::for_remote(&r.remote, secrets, agents);
            let mut resolved = crate::remote::git::resolve(&r, None, &access)
                .with_context(|| format!("build context {spec}"))?;
            resolved.keep_git_dir |= keep_git_dir;
            let checkout = dir.path.join("repo");
            std::fs::create_dir_all(&checkout)?;
            let root = crate::remote::git::checkout(&resolved, &checkout, &access)
                .with_context(|| format!("build context {spec}"))?;
            return Ok(Materialized {
                _dir: dir,
                root,
                dockerfile: None,
            });
        }
        crate::remote::Kind::Http => {}
        crate::remote::Kind::Local => {
            bail!("build context {spec} is neither a directory nor a URL")
        }
    }
    let fetched = crate::remote::http::fetch(store, spec, None, None, (&[], settings))
        .with_context(|| format!("build context {spec}"))?;
    let downloaded = store.blobs.path(&fetched.digest.parse()?);
    let root = dir.path.join("ctx");
    std::fs::create_dir_all(&root)?;
    if crate::copy::is_archive(&downloaded)? {
        unpack(&downloaded, &root)?;
        Ok(Materialized {
            _dir: dir,
            root,
            dockerfile: None,
        })
    } else {
        // A plain file is the Dockerfile, and the context is empty.
        let file = dir.path.join("Dockerfile");
        std::fs::copy(&downloaded, &file).with_context(|| format!("build context {spec}"))?;
        Ok(Materialized {
            _dir: dir,
            root,
            dockerfile: Some(file),
        })
    }
}

/// Stdin for `rbuild build -`: a tar archive is the context (returned);
/// anything else is the Dockerfile (kept for `-f -`), with no context.
pub fn from_stdin() -> anyhow::Result<Option<Materialized>> {
    let dir = TempDir::new("stdin")?;
    let file = dir.path.join("stdin");
    {
        let mut out = std::fs::File::create(&file)?;
        std::io::copy(&mut std::io::stdin().lock(), &mut out).context("reading stdin")?;
    }
    if crate::copy::is_archive(&file)? {
        let root = dir.path.join("ctx");
        std::fs::create_dir_all(&root)?;
        unpack(&file, &root)?;
        let _ = std::fs::remove_file(&file);
        return Ok(Some(Materialized {
            _dir: dir,
            root,
            dockerfile: None,
        }));
    }
    crate::dockerfile::set_stdin(std::fs::read(&file)?);
    Ok(None)
}
