//! What an ADD brings from elsewhere: its URLs (downloaded) and git
//! repositories (resolved to a commit), beside the local sources it may
//! also name. As BuildKit's frontend, every source is copied on its own,
//! in the order written, into the same destination.

use super::file::copy_into;
use super::*;
use crate::remote::git::{Access, Resolved};
use crate::remote::http::Fetched;

/// One source of an ADD that names a URL or a repository.
enum Part {
    /// A URL, downloaded.
    Http(Fetched),
    /// A git repository at a commit.
    Git(Resolved),
    /// Local paths written next to each other (the context, a named
    /// context or the `--from` stage), copied as COPY/ADD copy them.
    Local(Vec<String>),
}

/// The sources of an ADD with at least one URL or repository.
pub(super) struct Remote {
    parts: Vec<Part>,
}

/// Where an ADD's local sources are read: a directory with its ignore
/// file, or else a stage's result.
pub(super) type LocalSource<'a> = (
    Option<&'a (PathBuf, Option<&'a PatternMatcher>)>,
    Option<&'a Done>,
);

impl Remote {
    /// The URLs fetched (or revalidated) and the repositories resolved of
    /// `file`; None when it names neither (or is a COPY).
    pub(super) fn of(
        store: &Store,
        file: &frontend::graph::FileOp,
        options: &BuildOptions<'_>,
    ) -> anyhow::Result<Option<Remote>> {
        if !file.add {
            return Ok(None);
        }
        let mut parts: Vec<Part> = Vec::new();
        for s in &file.sources {
            let part = match crate::remote::classify(s)? {
                crate::remote::Kind::Git(r) => {
                    if let (Some(flag), Some(url)) = (file.keep_git_dir, r.keep_git_dir)
                        && flag != url
                    {
                        bail!("inconsistent keep-git-dir configuration");
                    }
                    let access = Access::for_remote(&r.remote, &options.secrets, &options.ssh);
                    let resolved =
                        crate::remote::git::resolve(&r, file.checksum.as_deref(), &access)?;
                    Part::Git(Resolved {
                        keep_git_dir: file.keep_git_dir.unwrap_or(resolved.keep_git_dir),
                        ..resolved
                    })
                }
                crate::remote::Kind::Http => {
                    let auth = crate::remote::http::auth_header(s, &options.secrets);
                    Part::Http(crate::remote::http::fetch(
                        store,
                        s,
                        file.checksum.as_deref(),
                        auth.as_deref(),
                        (&options.proxy_env, options.images.settings()),
                    )?)
                }
                crate::remote::Kind::Local => {
                    if let Some(Part::Local(run)) = parts.last_mut() {
                        run.push(s.clone());
                        continue;
                    }
                    Part::Local(vec![s.clone()])
                }
            };
            parts.push(part);
        }
        if parts.iter().all(|p| matches!(p, Part::Local(_))) {
            return Ok(None);
        }
        Ok(Some(Remote { parts }))
    }

    /// What the cache key holds: per source, the content (digest, name,
    /// mtime) or the commit, never a server's validators; local sources
    /// by `local_key` of their paths.
    pub(super) fn key(
        &self,
        local_key: impl Fn(&[String]) -> anyhow::Result<Option<String>>,
    ) -> anyhow::Result<String> {
        let http = |f: &Fetched| serde_json::json!([&f.url, &f.digest, &f.name, f.mtime]);
        let inputs = match self.parts.as_slice() {
            // The forms keys had before an ADD could mix its sources.
            [Part::Git(r)] => serde_json::json!({"git": r}),
            parts if parts.iter().all(|p| matches!(p, Part::Http(_))) => {
                let files: Vec<_> = parts
                    .iter()
                    .filter_map(|p| match p {
                        Part::Http(f) => Some(http(f)),
                        _ => None,
                    })
                    .collect();
                serde_json::json!({ "http": files })
            }
            parts => {
                let mut each = Vec::new();
                for p in parts {
                    each.push(match p {
                        Part::Http(f) => serde_json::json!({ "http": http(f) }),
                        Part::Git(r) => serde_json::json!({ "git": r }),
                        Part::Local(paths) => {
                            serde_json::json!({ "local": paths, "content": local_key(paths)? })
                        }
                    });
                }
                serde_json::json!({ "mixed": each })
            }
        };
        Ok(step_key(inputs).as_str().to_string())
    }

    /// Fills `m` with every source in order: downloaded files (0600, their
    /// mtimes; archives unpacked only with `--unpack=true`), checkouts
    /// (never unpacked), and local sources as ADD copies them.
    pub(super) fn copy(
        &self,
        ctx: &Ctx<'_>,
        m: &cache::snapshot::MutableSnapshot,
        file: &frontend::graph::FileOp,
        (local, source): LocalSource<'_>,
    ) -> anyhow::Result<()> {
        let dest = destination(file, &m.root())?;
        let copy_tree = |root: &Path, names: &[String], add: bool| {
            copy(&CopyRequest {
                chown: file.chown.as_deref(),
                chmod: file.chmod.as_deref(),
                excludes: &file.excludes,
                add,
                unpack: if add { file.unpack } else { Some(false) },
                ..CopyRequest::plain(root, names, &dest, &m.root())
            })
        };
        for part in &self.parts {
            match part {
                Part::Http(f) => {
                    let dir = crate::tempdir::TempDir::new("add-url")?;
                    let names =
                        crate::remote::http::stage(ctx.store, std::slice::from_ref(f), &dir.path)?;
                    copy_tree(&dir.path, &names, file.unpack == Some(true))?;
                }
                Part::Git(r) => {
                    let dir = crate::tempdir::TempDir::new("add-git")?;
                    let access =
                        Access::for_remote(&r.remote, &ctx.options.secrets, &ctx.options.ssh);
                    let sub = crate::remote::git::checkout(r, &dir.path, &access)?;
                    copy_tree(&sub, &[".".to_string()], false)?;
                }
                Part::Local(paths) => {
                    let part = frontend::graph::FileOp {
                        sources: paths.clone(),
                        contents: Vec::new(),
                        dest: dest.clone(),
                        ..file.clone()
                    };
                    copy_into(ctx, m, &part, local, source, None)?;
                }
            }
        }
        if !file.contents.is_empty() {
            let part = frontend::graph::FileOp {
                sources: Vec::new(),
                dest: dest.clone(),
                ..file.clone()
            };
            copy_into(ctx, m, &part, local, source, None)?;
        }
        Ok(())
    }
}

/// The destination every source of `file` is copied to: as written for
/// one source; for several, a directory (written with a trailing `/`, or
/// one that exists), as a copy of several sources checks.
fn destination(file: &frontend::graph::FileOp, root: &Path) -> anyhow::Result<String> {
    let several = file.sources.len() + file.contents.len() > 1;
    if !several || file.dest.ends_with('/') {
        return Ok(file.dest.clone());
    }
    let existing =
        cache::layer::resolve_in_root(root, Path::new(file.dest.trim_start_matches('/')), true);
    if !existing.is_dir() {
        bail!(
            "When using COPY with more than one source file, the destination must be a directory and end with a /"
        );
    }
    Ok(format!("{}/", file.dest))
}
