//! What a RUN step mounts ([`StepMounts`]): heredoc files, SSH agents,
//! secrets, tmpfs, cache mounts, binds of the context, a named context or
//! a stage; and what must live as long as the step (views, locks, files).

use super::*;

/// A step's mounts and the environment its secrets and agents add; what
/// they need is dropped with it, after the step.
pub(super) struct StepMounts {
    /// The mounts, in order.
    pub(super) mounts: Vec<Mount>,
    /// `SSH_AUTH_SOCK` and the secrets' `env=` variables.
    pub(super) env: Vec<String>,
    inline_dir: Option<crate::tempdir::TempDir>,
    views: Vec<cache::snapshot::MutableSnapshot>,
    local_binds: Vec<crate::bind::LocalBind>,
    /// Cache-mount locks (sharing=locked|private), held for the run.
    locks: Vec<std::fs::File>,
    secret_files: Vec<crate::secrets::SecretFile>,
    agents: Vec<crate::ssh::AgentProxy>,
    /// The empty cache of a `sharing=private` step that skips the cache.
    private_caches: Vec<crate::tempdir::TempDir>,
}

impl StepMounts {
    /// Everything `exec` mounts; `done` holds the stages its mounts read.
    pub(super) fn prepare(
        ctx: &Ctx<'_>,
        step: &Step<'_>,
        exec: &frontend::graph::ExecOp,
        done: &BTreeMap<NodeIndex, Arc<Done>>,
    ) -> anyhow::Result<StepMounts> {
        let mut m = StepMounts {
            mounts: Vec::new(),
            env: Vec::new(),
            inline_dir: None,
            views: Vec::new(),
            local_binds: Vec::new(),
            locks: Vec::new(),
            secret_files: Vec::new(),
            agents: Vec::new(),
            private_caches: Vec::new(),
        };
        m.heredocs(exec)?;
        for (mount, source) in exec.mounts.iter().zip(&exec.mount_sources) {
            match mount.mount_type {
                MountType::Ssh => m.ssh(ctx, mount)?,
                MountType::Secret => m.secret(ctx, mount)?,
                MountType::Tmpfs => {
                    let target = target_of(mount)?;
                    m.mounts.push(Mount::Tmpfs {
                        target,
                        size: mount.size_limit.unwrap_or(0).max(0) as u64,
                    })
                }
                MountType::Cache => m.cache(ctx, step, mount, *source, done)?,
                MountType::Bind => m.bind(ctx, mount, *source, done)?,
            }
        }
        Ok(m)
    }

    /// Heredocs run as files (`RUN <<EOF` with a shebang): written outside
    /// the root, bound in read-only.
    fn heredocs(&mut self, exec: &frontend::graph::ExecOp) -> anyhow::Result<()> {
        if exec.inline_files.is_empty() {
            return Ok(());
        }
        let dir = crate::tempdir::TempDir::new("inline")
            .context("making a directory for RUN heredocs")?;
        for (i, file) in exec.inline_files.iter().enumerate() {
            let host = dir.path.join(i.to_string());
            std::fs::write(&host, &file.data)
                .and_then(|()| {
                    std::fs::set_permissions(
                        &host,
                        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(
                            file.mode,
                        ),
                    )
                })
                .with_context(|| format!("writing the heredoc {}", file.path))?;
            self.mounts.push(Mount::Bind {
                source: host,
                target: file.path.clone(),
                access: Access::ReadOnly,
            });
        }
        self.inline_dir = Some(dir);
        Ok(())
    }

    /// `type=ssh`: a proxy socket of the agent `--ssh` named.
    fn ssh(&mut self, ctx: &Ctx<'_>, mount: &frontend::instructions::Mount) -> anyhow::Result<()> {
        let id = mount.id.clone().unwrap_or_else(|| "default".into());
        let Some(agent) = ctx.options.ssh.get(&id) else {
            if mount.required {
                bail!("ssh agent {id}: not found (pass it with --ssh {id}=SOCKET)");
            }
            return Ok(());
        };
        let dir = ctx
            .secret_dir
            .as_ref()
            .ok_or_else(|| anyhow!("ssh {id}: no socket directory"))?;
        let proxy = crate::ssh::AgentProxy::start(
            dir.path(),
            agent,
            mount.uid.unwrap_or(0),
            mount.gid.unwrap_or(0),
            mount.mode.unwrap_or(0o600),
        )
        .with_context(|| format!("forwarding ssh agent {id}"))?;
        let target = mount
            .target
            .clone()
            .unwrap_or_else(|| format!("/run/buildkit/ssh_agent.{}", self.agents.len()));
        if self.agents.is_empty() {
            self.env.push(format!("SSH_AUTH_SOCK={target}"));
        }
        self.mounts.push(Mount::Bind {
            source: proxy.path().to_path_buf(),
            target,
            access: Access::ReadWrite,
        });
        self.agents.push(proxy);
        Ok(())
    }

    /// `type=secret`: a file (on tmpfs, outside the root) and/or `env=`.
    fn secret(
        &mut self,
        ctx: &Ctx<'_>,
        mount: &frontend::instructions::Mount,
    ) -> anyhow::Result<()> {
        let Some((id, value)) = secret_for(mount, &ctx.options.secrets) else {
            if mount.required {
                let id = secret_id(mount);
                bail!("secret {id}: not found (pass it with --secret id={id},src=PATH)");
            }
            return Ok(());
        };
        if let Some(var) = &mount.env {
            self.env
                .push(format!("{var}={}", String::from_utf8_lossy(value)));
        }
        if let Some(target) = &mount.target {
            let dir = ctx
                .secret_dir
                .as_ref()
                .ok_or_else(|| anyhow!("secret {id}: no secret directory"))?;
            let file = dir.write(
                value,
                mount.uid.unwrap_or(0),
                mount.gid.unwrap_or(0),
                mount.mode.unwrap_or(0o400),
            )?;
            self.mounts.push(Mount::Bind {
                source: file.path().to_path_buf(),
                target: target.clone(),
                access: Access::Sealed,
            });
            self.secret_files.push(file);
        }
        Ok(())
    }

    /// `type=cache`: the cache's directory (or, for a step that skips the
    /// cache, an empty one of its own), seeded from `from=` when new.
    fn cache(
        &mut self,
        ctx: &Ctx<'_>,
        step: &Step<'_>,
        mount: &frontend::instructions::Mount,
        source: Option<NodeIndex>,
        done: &BTreeMap<NodeIndex, Arc<Done>>,
    ) -> anyhow::Result<()> {
        let target = target_of(mount)?;
        let id = mount.id.clone().unwrap_or_default();
        let owner =
            (mount.uid.is_some() || mount.gid.is_some() || mount.mode.is_some()).then(|| {
                (
                    mount.uid.unwrap_or(0),
                    mount.gid.unwrap_or(0),
                    mount.mode.unwrap_or(0o755),
                )
            });
        let sharing = mount.sharing.unwrap_or(Sharing::Shared);
        let dir = if step.skip_cache {
            // --no-cache (and --no-cache-filter) steps start from an empty
            // cache (moby/buildkit#5305), one per id for the build's steps
            // that skip the cache (a private step has its own), dropped
            // when the build ends: the lasting cache keeps what earlier
            // builds left.
            let new = || -> anyhow::Result<crate::tempdir::TempDir> {
                let dir =
                    crate::tempdir::TempDir::new("cache").context("making an empty cache mount")?;
                give_new_cache(&dir.path, owner).context("setting up an empty cache mount")?;
                Ok(dir)
            };
            if sharing == Sharing::Private {
                let dir = new()?;
                let path = dir.path.clone();
                self.private_caches.push(dir);
                path
            } else {
                let path = {
                    let mut fresh = lock(&ctx.fresh_caches);
                    match fresh.get(&id) {
                        Some(dir) => dir.path.clone(),
                        None => {
                            let dir = new()?;
                            let path = dir.path.clone();
                            fresh.insert(id.clone(), dir);
                            path
                        }
                    }
                };
                if sharing == Sharing::Locked {
                    // flock on the directory itself: nothing left behind.
                    let held = std::fs::File::open(&path)
                        .and_then(|f| f.lock().map(|()| f))
                        .with_context(|| format!("locking {}", path.display()))?;
                    self.locks.push(held);
                }
                path
            }
        } else {
            let seed = |new: &Path| {
                let Some(imports) = ctx.options.cache_imports else {
                    return;
                };
                let seeded = imports.seed_cache_mount(
                    &id,
                    new,
                    &ctx.store.blobs,
                    ctx.options.images,
                    &transfer_here(ctx),
                );
                if let Err(e) = seeded {
                    ctx.progress
                        .warn(&format!("cache mount {id} starts empty: {e:#}"));
                }
            };
            let (dir, lock) = cache_mount_dir(
                &ctx.store.root.join("cache-mounts"),
                &id,
                sharing,
                owner,
                &seed,
            )?;
            self.locks.extend(lock);
            if ctx.options.cache_export.is_some() {
                super::lock(&ctx.cache_mounts).insert(id.clone(), dir.clone());
            }
            dir
        };
        if mount.from.is_some() {
            let base = source
                .and_then(|n| done.get(&n))
                .ok_or_else(|| anyhow!("cache mount base not built"))?;
            seed_cache_mount(
                ctx.store,
                &dir,
                base.snapshot.get(ctx)?.as_deref(),
                mount.source.as_deref().unwrap_or("/"),
            )?;
        }
        // `source=` mounts a directory of the cache.
        let dir = match mount.source.as_deref() {
            Some(sub) if mount.from.is_none() => cache_subdir(&dir, sub)?,
            _ => dir,
        };
        self.mounts.push(Mount::Bind {
            source: dir,
            target,
            access: Access::read_only(mount.read_only),
        });
        Ok(())
    }

    /// `type=bind`: of the context or a named directory context (a view
    /// with its ignore file applied), or of a stage (a view of its
    /// snapshot, so `rw` writes stay in the step).
    fn bind(
        &mut self,
        ctx: &Ctx<'_>,
        mount: &frontend::instructions::Mount,
        source: Option<NodeIndex>,
        done: &BTreeMap<NodeIndex, Arc<Done>>,
    ) -> anyhow::Result<()> {
        let target = target_of(mount)?;
        let path = mount.source.as_deref().unwrap_or("");
        if let Some((root, ignore)) = local_bind_source(ctx, mount, source) {
            let bind = crate::bind::local_bind(
                &ctx.store.snapshots,
                &root,
                ignore,
                path,
                mount.read_only,
            )?;
            self.mounts.push(Mount::Bind {
                source: bind.source.clone(),
                target,
                access: Access::read_only(mount.read_only),
            });
            self.local_binds.push(bind);
            return Ok(());
        }
        let input = source
            .and_then(|n| done.get(&n))
            .ok_or_else(|| anyhow!("mount source not built"))?;
        let view = ctx
            .store
            .snapshots
            .prepare(input.snapshot.get(ctx)?.as_deref())?;
        let src = cache::layer::resolve_in_root(
            &view.root(),
            Path::new(path.trim_start_matches('/')),
            true,
        );
        self.views.push(view);
        self.mounts.push(Mount::Bind {
            source: src,
            target,
            access: Access::read_only(mount.read_only),
        });
        Ok(())
    }
}

/// A mount's `target=`, which every kind but ssh and secret needs.
fn target_of(mount: &frontend::instructions::Mount) -> anyhow::Result<String> {
    mount
        .target
        .clone()
        .ok_or_else(|| anyhow!("mount without a target"))
}

/// A secret mount's id, as BuildKit picks it: `id=`, else `source=`, else
/// the target's base name.
pub(super) fn secret_id(mount: &frontend::instructions::Mount) -> String {
    mount
        .id
        .clone()
        .or_else(|| mount.source.clone())
        .or_else(|| {
            mount
                .target
                .as_deref()
                .map(|t| t.rsplit('/').next().unwrap_or(t).to_string())
        })
        .unwrap_or_default()
}

/// The secret a mount asks for, if it was given.
pub(super) fn secret_for<'s>(
    mount: &frontend::instructions::Mount,
    secrets: &'s crate::secrets::Secrets,
) -> Option<(String, &'s [u8])> {
    let id = secret_id(mount);
    let value = secrets.get(&id)?;
    Some((id, value.as_slice()))
}
