//! RUN: its cache key, the sandbox run and what a failure reports. The
//! mounts a step gets are [`super::mounts`]'.

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
    let options = ctx.options;
    let where_ = |e: anyhow::Error| step.locate(e);
    let (id, started) = ctx.progress.start(&step.op.name);
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
    let (key, inputs) = exec_key(ctx, step, &d, done, exec).map_err(where_)?;
    let record = cached_step(
        ctx,
        step,
        (&key, &inputs),
        &d.snapshot,
        (id, started),
        |m| {
            // Another architecture's step runs through its emulator.
            crate::emulation::ensure(&step.platform(ctx.graph)).map_err(where_)?;
            let root = m.root();
            let user =
                crate::sandbox::user::resolve(&root, &exec.user).map_err(|e| where_(anyhow!(e)))?;
            let mut mounts = StepMounts::prepare(ctx, step, exec, done).map_err(where_)?;
            // `--shm-size`: a /dev/shm of that size over the runtime's
            // (BuildKit adds it as a tmpfs mount of the step).
            if let Some(size) = exec.shm_size {
                mounts.mounts.push(Mount::Tmpfs {
                    target: "/dev/shm".into(),
                    size: size.0,
                });
            }
            let env = crate::sandbox::env::process_env(
                &exec.env,
                &options.proxy_env,
                std::mem::take(&mut mounts.env),
                &user.home,
            );
            let network = match exec.network {
                frontend::instructions::Network::None => Network::None,
                _ => options.network,
            };
            let hostname = exec.hostname.as_deref().unwrap_or(DEFAULT_HOSTNAME);
            let spec = RunSpec {
                rootfs: root.clone(),
                args: exec.args.clone(),
                env,
                cwd: exec.workdir.clone(),
                uid: user.uid,
                gid: user.gid,
                additional_gids: user.additional_gids,
                hostname: hostname.into(),
                network,
                insecure: exec.security == Security::Insecure,
                mounts: std::mem::take(&mut mounts.mounts),
                hosts: hosts_file(hostname, &exec.extra_hosts),
                resolv_conf: resolv_conf(&ctx.host_resolv, network),
                rlimits: exec.ulimits.clone(),
                cgroup_parent: options.cgroup_parent.clone(),
            };
            let ran = run_masked(ctx, &spec, id, started);
            drop(mounts);
            let (code, log) = ran.map_err(where_)?;
            if ctx.cancel.is_cancelled() {
                ctx.progress.canceled(id);
                return Err(anyhow::Error::new(Canceled));
            }
            if code != 0 {
                return Err(where_(failed(ctx, id, exec, code, &log)));
            }
            Ok(())
        },
    )?;
    let diff = d.take_step(record, &key);
    d.image.run(exec, diff.as_deref());
    Ok(d)
}

/// The key of a RUN on `d`. Per mount, what its source holds: a bind of
/// the context or of a named directory context keys on the content it
/// shows (with the source's ignore file); a bind of a stage on the content
/// of the mounted path (as BuildKit: a change elsewhere in the source
/// stage keeps the step cached); other mounts with `from=` on the source's
/// key.
fn exec_key(
    ctx: &Ctx<'_>,
    step: &Step<'_>,
    d: &Done,
    done: &BTreeMap<NodeIndex, Arc<Done>>,
    exec: &frontend::graph::ExecOp,
) -> anyhow::Result<(cache::index::CacheKey, String)> {
    let sources: Vec<Option<String>> = exec
        .mounts
        .iter()
        .zip(&exec.mount_sources)
        .map(|(m, src)| -> anyhow::Result<Option<String>> {
            if let Some((root, ignore)) = local_bind_source(ctx, m, *src) {
                let digest = crate::copy::content_digest(
                    &root,
                    ignore,
                    &[m.source.clone().unwrap_or_default()],
                    &[],
                    Some(&ctx.stat),
                )?;
                return Ok(Some(digest));
            }
            if m.from.is_none() {
                return Ok(None);
            }
            let Some(source) = src.and_then(|n| done.get(&n)) else {
                return Ok(None);
            };
            if m.mount_type == MountType::Bind {
                let path = m.source.as_deref().unwrap_or("/");
                let snap = source.snapshot.get(ctx)?;
                let digest = snapshot_path_digest(ctx.store, snap.as_deref(), path)?;
                return Ok(Some(format!("content {digest}")));
            }
            Ok(source.key.clone())
        })
        .collect::<anyhow::Result<_>>()?;
    let layers = layer_key(ctx.options);
    let common = Common::new(&layers, d.key.as_deref()).on(&step.platform(ctx.graph));
    Ok(Inputs::Exec(ExecInputs::of(common, exec, sources)).keyed())
}

/// Runs `spec` with its output, secret values masked, shown as step `id`'s
/// log; returns the exit code and the output kept for an error.
fn run_masked(
    ctx: &Ctx<'_>,
    spec: &RunSpec,
    id: usize,
    started: Instant,
) -> anyhow::Result<(i32, Vec<u8>)> {
    let mut log: Vec<u8> = Vec::new();
    let masker = crate::mask::Masker::global();
    let (mut out_mask, mut err_mask) = (masker.stream(), masker.stream());
    let mut show = |stream: Stream, chunk: &[u8]| {
        if chunk.is_empty() {
            return;
        }
        if log.len() < LOG_CAP {
            log.extend_from_slice(chunk);
        }
        ctx.progress.log(id, stream, chunk, started);
    };
    let ran = ctx
        .runtime
        .run(spec, &ctx.cancel, &mut |stream: Stream, chunk: &[u8]| {
            let masked = match stream {
                Stream::Stdout => out_mask.push(chunk),
                Stream::Stderr => err_mask.push(chunk),
            };
            show(stream, &masked);
        });
    show(Stream::Stdout, &out_mask.finish());
    show(Stream::Stderr, &err_mask.finish());
    Ok((ran?, log))
}

/// The error of a step that exited with `code`: BuildKit's words and the
/// last lines of its output.
fn failed(
    ctx: &Ctx<'_>,
    id: usize,
    exec: &frontend::graph::ExecOp,
    code: i32,
    log: &[u8],
) -> anyhow::Error {
    ctx.progress.error(
        id,
        &format!("process did not complete successfully: exit code: {code}"),
    );
    let _ = std::io::stderr().flush();
    let cmd = exec.args.join(" ");
    let output = String::from_utf8_lossy(log);
    let mut tail: Vec<&str> = output.lines().rev().take(20).collect();
    tail.reverse();
    anyhow!(
        "process \"{cmd}\" did not complete successfully: exit code: {code}\n{}",
        tail.join("\n")
    )
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

/// A step stopped because another failed (in this build, or in another
/// platform's build of the same run).
#[derive(Debug)]
pub struct Canceled;

impl std::fmt::Display for Canceled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("canceled: another step failed")
    }
}

impl std::error::Error for Canceled {}
