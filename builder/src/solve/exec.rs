//! RUN: its cache key, its mounts (binds, caches, tmpfs, secrets, SSH
//! agents, heredoc files), its environment, and the sandbox run.

use super::*;

/// RUN: its cache key (command, env, user, workdir, mounts, network,
/// security; proxy args excluded), then the sandbox on a new snapshot.
pub(super) fn run_exec(
    ctx: &Ctx<'_>,
    step: &Step<'_>,
    base: Option<Done>,
    done: &BTreeMap<NodeIndex, Arc<Done>>,
    exec: &frontend::graph::ExecOp,
) -> anyhow::Result<Done> {
    let Ctx {
        store,
        runtime,
        options,
        progress,
        ref host_resolv,
        ref cancel,
        ref secret_dir,
        ref stat,
        ..
    } = *ctx;
    let Step { op, skip_cache, .. } = *step;
    let where_ = |e: anyhow::Error| step.locate(e);
    let (id, started) = progress.start(&op.name);
    let mut d = base.ok_or_else(|| anyhow!("RUN without a parent"))?;
    if exec.security == Security::Insecure && !options.allow_insecure {
        return Err(where_(anyhow!(
            "RUN --security=insecure needs --allow security.insecure"
        )));
    }
    // The host network is the default here too, but asking for
    // it is an entitlement, as in BuildKit.
    if exec.network == frontend::instructions::Network::Host && !options.allow_network_host {
        return Err(where_(anyhow!(
            "RUN --network=host needs --allow network.host (entitlement network.host is not allowed)"
        )));
    }
    // Per mount with `from=`: a bind keys on the content of the
    // mounted path (as BuildKit: a change elsewhere in the source
    // stage keeps the step cached), others on the source's key.
    // A bind of the context or of a named directory context keys on the
    // content it shows (with the source's ignore file).
    let local_of = |m: &frontend::instructions::Mount, src: &Option<NodeIndex>| {
        local_bind_source(ctx, m, *src)
    };
    let from_keys: Vec<Option<String>> = exec
        .mounts
        .iter()
        .zip(&exec.mount_sources)
        .map(|(m, src)| -> anyhow::Result<Option<String>> {
            if m.from.is_none() || local_of(m, src).is_some() {
                return Ok(None);
            }
            let Some(source) = src.and_then(|n| done.get(&n)) else {
                return Ok(None);
            };
            if m.mount_type == MountType::Bind {
                let path = m.source.as_deref().unwrap_or("/");
                let digest = snapshot_path_digest(store, source.snapshot.as_deref(), path)?;
                return Ok(Some(format!("content {digest}")));
            }
            Ok(source.key.clone())
        })
        .collect::<anyhow::Result<_>>()
        .map_err(where_)?;
    let context_binds: Vec<String> = exec
        .mounts
        .iter()
        .zip(&exec.mount_sources)
        .filter_map(|(m, src)| Some((m, local_of(m, src)?)))
        .map(|(m, (root, ignore)): (_, (PathBuf, _))| {
            crate::copy::content_digest(
                &root,
                ignore,
                &[m.source.clone().unwrap_or_default()],
                &[],
                Some(stat),
            )
        })
        .collect::<Result<_, _>>()
        .map_err(|e| where_(e.into()))?;
    let key = step_key(serde_json::json!({
        "v": 1, "layers": layer_key(options), "op": "exec", "parent": d.key, "exec": exec,
        "mount_sources": from_keys, "context_binds": context_binds,
    }));
    let record = cached_step(
        ctx,
        &key,
        skip_cache,
        d.snapshot.as_deref(),
        (id, started),
        |m| {
            let root = m.root();
            let user =
                crate::sandbox::user::resolve(&root, &exec.user).map_err(|e| where_(anyhow!(e)))?;
            let mut mounts = Vec::new();
            // Heredocs run as files (`RUN <<EOF` with a shebang):
            // written outside the root, bound in read-only.
            let inline_dir = if exec.inline_files.is_empty() {
                None
            } else {
                Some(
                    crate::tempdir::TempDir::new("inline")
                        .context("making a directory for RUN heredocs")
                        .map_err(where_)?,
                )
            };
            for (i, file) in exec.inline_files.iter().enumerate() {
                let dir = inline_dir.as_ref().expect("made above");
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
                    .with_context(|| format!("writing the heredoc {}", file.path))
                    .map_err(where_)?;
                mounts.push(Mount::Bind {
                    source: host,
                    target: file.path.clone(),
                    readonly: true,
                });
            }
            let mut views = Vec::new();
            let mut local_binds = Vec::new();
            // Cache-mount locks (sharing=locked|private), held for the run.
            let mut locks = Vec::new();
            // Empty caches of a --no-cache step, removed after it.
            let mut scratch_caches = Vec::new();
            let mut secret_env = Vec::new();
            let mut secret_files = Vec::new();
            let mut agents = Vec::new();
            for (mount, source) in exec.mounts.iter().zip(&exec.mount_sources) {
                if mount.mount_type == MountType::Ssh {
                    let id = mount.id.clone().unwrap_or_else(|| "default".into());
                    let Some(agent) = options.ssh.get(&id) else {
                        if mount.required {
                            return Err(where_(anyhow!(
                                "ssh agent {id}: not found (pass it with --ssh {id}=SOCKET)"
                            )));
                        }
                        continue;
                    };
                    let dir = secret_dir
                        .as_ref()
                        .ok_or_else(|| anyhow!("ssh {id}: no socket directory"))?;
                    let proxy = crate::ssh::AgentProxy::start(
                        dir.path(),
                        agent,
                        mount.uid.unwrap_or(0),
                        mount.gid.unwrap_or(0),
                        mount.mode.unwrap_or(0o600),
                    )
                    .with_context(|| format!("forwarding ssh agent {id}"))
                    .map_err(where_)?;
                    let target = mount
                        .target
                        .clone()
                        .unwrap_or_else(|| format!("/run/buildkit/ssh_agent.{}", agents.len()));
                    if agents.is_empty() {
                        secret_env.push(format!("SSH_AUTH_SOCK={target}"));
                    }
                    mounts.push(Mount::Bind {
                        source: proxy.path().to_path_buf(),
                        target,
                        readonly: false,
                    });
                    agents.push(proxy);
                    continue;
                }
                if mount.mount_type == MountType::Secret {
                    let Some((id, value)) = secret_for(mount, &options.secrets) else {
                        if mount.required {
                            let id = secret_id(mount);
                            return Err(where_(anyhow!(
                                "secret {id}: not found (pass it with --secret id={id},src=PATH)"
                            )));
                        }
                        continue;
                    };
                    if let Some(var) = &mount.env {
                        secret_env.push(format!("{var}={}", String::from_utf8_lossy(value)));
                    }
                    if let Some(target) = &mount.target {
                        let dir = secret_dir
                            .as_ref()
                            .ok_or_else(|| anyhow!("secret {id}: no secret directory"))?;
                        let file = dir.write(
                            value,
                            mount.uid.unwrap_or(0),
                            mount.gid.unwrap_or(0),
                            mount.mode.unwrap_or(0o400),
                        )?;
                        mounts.push(Mount::Bind {
                            source: file.path().to_path_buf(),
                            target: target.clone(),
                            readonly: true,
                        });
                        secret_files.push(file);
                    }
                    continue;
                }
                let target = mount
                    .target
                    .clone()
                    .ok_or_else(|| where_(anyhow!("mount without a target")))?;
                match mount.mount_type {
                    MountType::Tmpfs => mounts.push(Mount::Tmpfs {
                        target,
                        size: mount.size_limit.unwrap_or(0).max(0) as u64,
                    }),
                    MountType::Cache => {
                        let id = mount.id.clone().unwrap_or_default();
                        let owner =
                            (mount.uid.is_some() || mount.gid.is_some() || mount.mode.is_some())
                                .then(|| {
                                    (
                                        mount.uid.unwrap_or(0),
                                        mount.gid.unwrap_or(0),
                                        mount.mode.unwrap_or(0o755),
                                    )
                                });
                        let dir = if skip_cache {
                            // --no-cache (and --no-cache-filter) give the
                            // step an empty cache of its own, dropped
                            // after it (moby/buildkit#5305): the shared
                            // cache keeps what earlier builds left.
                            let fresh = crate::tempdir::TempDir::new("cache")
                                .context("making an empty cache mount")
                                .map_err(where_)?;
                            give_new_cache(&fresh.path, owner)
                                .context("setting up an empty cache mount")
                                .map_err(where_)?;
                            let path = fresh.path.clone();
                            scratch_caches.push(fresh);
                            path
                        } else {
                            let (dir, lock) = cache_mount_dir(
                                &store.root.join("cache-mounts"),
                                &id,
                                mount.sharing.unwrap_or(Sharing::Shared),
                                owner,
                            )?;
                            locks.extend(lock);
                            dir
                        };
                        if mount.from.is_some() {
                            let base = source
                                .and_then(|n| done.get(&n))
                                .ok_or_else(|| where_(anyhow!("cache mount base not built")))?;
                            seed_cache_mount(
                                store,
                                &dir,
                                base.snapshot.as_deref(),
                                mount.source.as_deref().unwrap_or("/"),
                            )
                            .map_err(where_)?;
                        }
                        // `source=` mounts a directory of the cache.
                        let dir = match mount.source.as_deref() {
                            Some(sub) if mount.from.is_none() => {
                                cache_subdir(&dir, sub).map_err(where_)?
                            }
                            _ => dir,
                        };
                        mounts.push(Mount::Bind {
                            source: dir,
                            target,
                            readonly: mount.read_only,
                        });
                    }
                    MountType::Bind if local_of(mount, source).is_some() => {
                        let (root, ignore) = local_of(mount, source).expect("matched");
                        let bind = crate::bind::local_bind(
                            &store.snapshots,
                            &root,
                            ignore,
                            mount.source.as_deref().unwrap_or(""),
                            mount.read_only,
                        )
                        .map_err(where_)?;
                        mounts.push(Mount::Bind {
                            source: bind.source.clone(),
                            target,
                            readonly: mount.read_only,
                        });
                        local_binds.push(bind);
                    }
                    MountType::Bind => {
                        let source_root = if mount.from.is_some() {
                            let input_done = source
                                .and_then(|n| done.get(&n))
                                .ok_or_else(|| where_(anyhow!("mount source not built")))?;
                            let view = store.snapshots.prepare(input_done.snapshot.as_deref())?;
                            let r = view.root();
                            views.push(view);
                            r
                        } else {
                            options.context.to_path_buf()
                        };
                        let src = cache::layer::resolve_in_root(
                            &source_root,
                            Path::new(
                                mount
                                    .source
                                    .as_deref()
                                    .unwrap_or("")
                                    .trim_start_matches('/'),
                            ),
                            true,
                        );
                        mounts.push(Mount::Bind {
                            source: src,
                            target,
                            readonly: mount.read_only,
                        });
                    }
                    MountType::Secret => unreachable!("handled above"),
                    MountType::Ssh => unreachable!("handled above"),
                }
            }
            let env = crate::sandbox::env::process_env(
                &exec.env,
                &options.proxy_env,
                secret_env,
                &user.home,
            );
            let network = match exec.network {
                frontend::instructions::Network::None => Network::None,
                _ => options.network,
            };
            let spec = RunSpec {
                rootfs: root.clone(),
                args: exec.args.clone(),
                env,
                cwd: exec.workdir.clone(),
                uid: user.uid,
                gid: user.gid,
                additional_gids: user.additional_gids,
                hostname: "buildkitsandbox".into(),
                network,
                insecure: exec.security == Security::Insecure,
                mounts,
                hosts: default_hosts("buildkitsandbox"),
                resolv_conf: resolv_conf(host_resolv, network),
            };
            let mut log: Vec<u8> = Vec::new();
            // Secret values are masked before the output goes anywhere.
            let masker = crate::mask::Masker::global();
            let (mut out_mask, mut err_mask) = (masker.stream(), masker.stream());
            let mut show = |stream: Stream, chunk: &[u8]| {
                if chunk.is_empty() {
                    return;
                }
                if log.len() < LOG_CAP {
                    log.extend_from_slice(chunk);
                }
                progress.log(id, stream, chunk, started);
            };
            let ran = runtime.run(&spec, cancel, &mut |stream: Stream, chunk: &[u8]| {
                let masked = match stream {
                    Stream::Stdout => out_mask.push(chunk),
                    Stream::Stderr => err_mask.push(chunk),
                };
                show(stream, &masked);
            });
            show(Stream::Stdout, &out_mask.finish());
            show(Stream::Stderr, &err_mask.finish());
            let code = ran.map_err(|e| where_(e.into()))?;
            drop(views);
            drop(locks);
            drop(secret_files);
            drop(agents);
            if cancel.is_cancelled() {
                progress.canceled(id);
                bail!("canceled: another step failed");
            }
            if code != 0 {
                progress.error(
                    id,
                    &format!("process did not complete successfully: exit code: {code}"),
                );
                let _ = std::io::stderr().flush();
                let cmd = exec.args.join(" ");
                let output = String::from_utf8_lossy(&log).into_owned();
                let tail: String = output
                    .lines()
                    .rev()
                    .take(20)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n");
                return Err(where_(anyhow!(
                    "process \"{cmd}\" did not complete successfully: exit code: {code}\n{tail}"
                )));
            }
            Ok(())
        },
    )?;
    let diff = d.take_step(record, &key);
    d.image.run(exec, diff.as_deref());
    Ok(d)
}

/// The local directory a bind mount shows, with its ignore file: the
/// build context (no `from=`), or a named directory context.
pub(super) fn local_bind_source<'c>(
    ctx: &'c Ctx<'_>,
    mount: &frontend::instructions::Mount,
    source: Option<NodeIndex>,
) -> Option<(PathBuf, Option<&'c PatternMatcher>)> {
    if mount.mount_type != MountType::Bind {
        return None;
    }
    let options = ctx.options;
    if mount.from.is_none() {
        return Some((options.context.to_path_buf(), options.ignore.as_ref()));
    }
    match &ctx.graph.graph[source?].kind {
        OpKind::Context { name } if name == "context" => {
            Some((options.context.to_path_buf(), options.ignore.as_ref()))
        }
        OpKind::Context { name } => options
            .named_contexts
            .get(name)
            .map(|(dir, ignore)| (dir.clone(), ignore.as_ref())),
        _ => None,
    }
}

/// The directory of a cache mount and the lock that keeps it while the
/// step runs. `shared` (the default) lets any number of steps use it at
/// once; `locked` waits until no other step holds it; `private` takes the
/// first copy no other step holds (`ID`, `ID.1`, `ID.2`, ...), as BuildKit
/// makes a new one when the mount is in use.
pub(super) fn cache_mount_dir(
    root: &Path,
    id: &str,
    sharing: Sharing,
    new_owner: Option<(u32, u32, u32)>,
) -> anyhow::Result<(PathBuf, Option<std::fs::File>)> {
    std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
    let name = hex_name(id);
    let (dir, lock) = match sharing {
        Sharing::Shared => (root.join(&name), None),
        Sharing::Locked => {
            let lock = cache::lock::lock_exclusive(&root.join(format!("{name}.lock")))?;
            (root.join(&name), Some(lock))
        }
        Sharing::Private => {
            let mut n = 0usize;
            loop {
                let instance = if n == 0 {
                    name.clone()
                } else {
                    format!("{name}.{n}")
                };
                if let Some(lock) =
                    cache::lock::try_lock_exclusive(&root.join(format!("{instance}.lock")))?
                {
                    break (root.join(instance), Some(lock));
                }
                n += 1;
            }
        }
    };
    if !dir.exists() {
        // A new cache starts with the mount's owner and mode; later uses
        // keep whatever the steps left.
        // A name of this call's own: two steps of one build may make the
        // same cache at once.
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = PathBuf::from(format!("{}.new-{}-{n}", dir.display(), std::process::id()));
        std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        give_new_cache(&tmp, new_owner)?;
        // Another build may have made it meanwhile: theirs stays.
        if std::fs::rename(&tmp, &dir).is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
    }
    Ok((dir, lock))
}

/// Gives a new cache directory the mount's uid, gid and mode, when the
/// mount names any of them (BuildKit makes a new cache from a scratch
/// directory with them).
pub(super) fn give_new_cache(dir: &Path, owner: Option<(u32, u32, u32)>) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some((uid, gid, mode)) = owner {
        std::os::unix::fs::chown(dir, Some(uid), Some(gid))
            .with_context(|| format!("changing the owner of {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("changing the mode of {}", dir.display()))?;
    }
    Ok(())
}

/// `source=` of a cache mount: a directory inside the cache, made when
/// missing. A step may have left symlinks in the cache, so every existing
/// component must be a real directory: a link (to `/etc`, say) would bind
/// a host path into the sandbox (moby/buildkit testCacheMountSourceEscape).
pub(super) fn cache_subdir(cache: &Path, source: &str) -> anyhow::Result<PathBuf> {
    let mut dir = cache.to_path_buf();
    for c in Path::new(source).components() {
        match c {
            std::path::Component::Normal(name) => dir.push(name),
            std::path::Component::RootDir | std::path::Component::CurDir => continue,
            _ => bail!("cache mount source {source:?} leaves the cache"),
        }
        match std::fs::symlink_metadata(&dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => bail!(
                "cache mount source {source:?}: {} is not a directory (a link out of the cache is refused)",
                dir.display()
            ),
            Err(_) => {
                std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?
            }
        }
    }
    Ok(dir)
}

/// A cache mount with `from=`: an empty cache starts as a copy of the base
/// stage's `source` directory (BuildKit: "a base of the cache mount").
/// Seeding holds a lock so two steps do not fill one cache at once.
pub(super) fn seed_cache_mount(
    store: &Store,
    dir: &Path,
    base: Option<&str>,
    source: &str,
) -> anyhow::Result<()> {
    let _lock = cache::lock::lock_exclusive(&dir.with_extension("seed-lock"))?;
    let empty = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .next()
        .is_none();
    if !empty {
        return Ok(());
    }
    let view = store.snapshots.prepare(base)?;
    copy(&CopyRequest::plain(
        &view.root(),
        &[source.to_string()],
        "/",
        dir,
    ))
    .with_context(|| format!("seeding the cache mount from {source}"))?;
    Ok(())
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

/// A cache-mount id as a directory name.
pub(super) fn hex_name(id: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    for b in id.bytes() {
        let _ = write!(out, "{b:02x}");
    }
    if out.is_empty() { "00".into() } else { out }
}
