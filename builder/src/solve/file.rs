//! COPY/ADD, WORKDIR's directories and a named directory context as a
//! base: the runners that fill a snapshot with files (an ADD's URLs and
//! repositories: [`super::add_remote`]).

use super::add_remote::Remote;
use super::*;

/// Whether some COPY/ADD of `graph` reads the build context.
pub(super) fn copies_from_context(graph: &BuildGraph) -> bool {
    graph
        .graph
        .node_weights()
        .any(|op| matches!(&op.kind, OpKind::File(f) if matches!(f.from, FileSource::Context)))
}

/// A named directory context as a stage's base (`FROM NAME`): its files
/// (its ignore file applied) as the first layer, keyed on their content.
pub(super) fn run_context_base(
    ctx: &Ctx<'_>,
    step: &Step<'_>,
    dir: &Path,
    ignore: Option<&PatternMatcher>,
) -> anyhow::Result<Done> {
    let where_ = |e: anyhow::Error| step.locate(e);
    let (id, started) = ctx.progress.start(&step.op.name);
    let all = [".".to_string()];
    let content = crate::copy::content_digest(dir, ignore, &all, &[], Some(&ctx.stat))
        .map_err(|e| where_(e.into()))?;
    let layers = layer_key(ctx.options);
    let inputs = Inputs::ContextBase(ContextBaseInputs {
        common: Common::new(&layers, None),
        content: &content,
    });
    let (key, inputs) = inputs.keyed();
    let record = cached_step(
        ctx,
        step,
        (&key, &inputs),
        &Snap::default(),
        (id, started),
        |m| {
            let root = m.root();
            copy(&CopyRequest {
                ignore,
                ..CopyRequest::plain(dir, &all, "/", &root)
            })
            .map_err(|e| where_(e.into()))?;
            Ok(())
        },
    )?;
    let mut d = Done {
        snapshot: Snap::default(),
        image: ImageState::new(None, ctx.options.epoch.map(rfc3339)),
        layers: Vec::new(),
        key: None,
    };
    let diff = d.take_step(record, &key);
    d.image.base_layer(diff.as_deref());
    Ok(d)
}

/// WORKDIR's directory: made (owned by the stage's USER) on a new
/// snapshot of the parent, unless the cache has it.
pub(super) fn run_mkdir(
    ctx: &Ctx<'_>,
    step: &Step<'_>,
    base: Option<Done>,
    path: &str,
) -> anyhow::Result<Done> {
    let Ctx {
        options, progress, ..
    } = *ctx;
    let Step { op, .. } = *step;
    let where_ = |e: anyhow::Error| step.locate(e);
    let (id, started) = progress.start(&op.name);
    let mut d = base.ok_or_else(|| anyhow!("WORKDIR without a parent"))?;
    // The directories WORKDIR creates belong to the current USER.
    let user = d.image.config.config.user.clone().unwrap_or_default();
    let layers = layer_key(options);
    let inputs = Inputs::Mkdir(MkdirInputs {
        common: Common::new(&layers, d.key.as_deref()).on(&step.platform(ctx.graph)),
        path,
        user: &user,
        epoch: options.epoch,
    });
    let (key, inputs) = inputs.keyed();
    let record = cached_step(
        ctx,
        step,
        (&key, &inputs),
        &d.snapshot,
        (id, started),
        |m| {
            let root = m.root();
            let mut missing = Vec::new();
            let mut prefix = PathBuf::new();
            for c in Path::new(path.trim_start_matches('/')).components() {
                prefix.push(c);
                let dir = cache::layer::resolve_in_root(&root, &prefix, true);
                if std::fs::symlink_metadata(&dir).is_err() {
                    missing.push(dir);
                }
            }
            let dir =
                cache::layer::resolve_in_root(&root, Path::new(path.trim_start_matches('/')), true);
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("creating {path}"))
                .map_err(where_)?;
            if !user.is_empty() && !missing.is_empty() {
                // BuildKit's mkdir with the USER as its ChownOpt.
                let (uid, gid) = crate::sandbox::user::file_owner(&root, &user);
                for dir in &missing {
                    std::os::unix::fs::lchown(dir, Some(uid), Some(gid))
                        .with_context(|| format!("changing the owner of {path}"))
                        .map_err(where_)?;
                }
            }
            // With SOURCE_DATE_EPOCH the new directories carry
            // its time (BuildKit: mkdir's created time), so the
            // layer is the same on every build.
            if let Some(epoch) = options.epoch {
                let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(epoch.max(0) as u64);
                let times = std::fs::FileTimes::new().set_accessed(t).set_modified(t);
                for dir in missing.iter().rev() {
                    std::fs::File::open(dir)
                        .and_then(|f| f.set_times(times))
                        .with_context(|| format!("setting the time of {path}"))
                        .map_err(where_)?;
                }
            }
            Ok(())
        },
    )?;
    let diff = d.take_step(record, &key);
    d.image.workdir(path, diff.as_deref());
    Ok(d)
}

/// COPY and ADD: the key from the sources' content digest, then the
/// copy into a new snapshot (or an empty one for `--link`).
pub(super) fn run_file(
    ctx: &Ctx<'_>,
    step: &Step<'_>,
    base: Option<Done>,
    done: &BTreeMap<NodeIndex, Arc<Done>>,
    file: &frontend::graph::FileOp,
) -> anyhow::Result<Done> {
    let Ctx {
        store,
        options,
        progress,
        ref stat,
        ..
    } = *ctx;
    let Step { op, ref inputs, .. } = *step;
    let where_ = |e: anyhow::Error| step.locate(e);
    let (id, started) = progress.start(&op.name);
    // A --link copy starts from nothing; the merge adds it on top.
    let mut d = match base {
        Some(b) => b,
        None => Done {
            snapshot: Snap::default(),
            image: ImageState::new(None, None),
            layers: Vec::new(),
            key: None,
        },
    };
    let source_node = inputs
        .iter()
        .find(|(_, e)| *e == Edge::Source)
        .map(|(n, _)| *n);
    // --parents excludes by path from the pivot, not from each
    // source: the key then hashes excluded files too (a spare
    // miss at worst, never a missed change).
    let key_excludes: &[String] = if file.parents { &[] } else { &file.excludes };
    // A local source: the build context or a named directory context,
    // with its .dockerignore.
    let local = match &file.from {
        FileSource::Context => Some((options.context.to_path_buf(), options.ignore.as_ref())),
        FileSource::Named(name) => options
            .named_contexts
            .get(name)
            .map(|(dir, ignore)| (dir.clone(), ignore.as_ref())),
        FileSource::Stage(_) | FileSource::Image(_) => None,
    };
    // The content key of local sources (all of them, or those an ADD
    // names beside URLs and repositories).
    let local_key = |sources: &[String]| -> anyhow::Result<Option<String>> {
        Ok(match &local {
            Some((root, ignore)) => Some(crate::copy::content_digest(
                root,
                *ignore,
                sources,
                key_excludes,
                Some(stat),
            )?),
            None => source_node
                .and_then(|n| done.get(&n))
                .and_then(|d| d.key.clone()),
        })
    };
    // ADD of URLs and repositories: each downloaded (or revalidated) or
    // resolved now; the key holds what each gave (content, name, mtime;
    // the commit), not the URL's validators.
    let remote = Remote::of(ctx.store, file, ctx.options).map_err(where_)?;
    let source_key = match &remote {
        Some(r) => Some(r.key(|s| local_key(s)).map_err(where_)?),
        None => local_key(&file.sources).map_err(where_)?,
    };
    let link = file.link && file.chmod.is_none();
    // A --link copy does not depend on its parent.
    let parent_key = if link { None } else { d.key.clone() };
    let layers = layer_key(options);
    let inputs = Inputs::File(FileInputs::of(
        Common::new(&layers, parent_key.as_deref()).on(&step.platform(ctx.graph)),
        file,
        source_key.as_deref(),
    ));
    let (key, inputs) = inputs.keyed();
    // What the copy is apart from the content of its sources: the key of
    // its latest result, whose unchanged files a rerun links (local
    // sources; ADD may extract archives, whose entries have no stamps).
    let identity = local.as_ref().filter(|_| !file.add).map(|(root, _)| {
        step_key(serde_json::json!({
            "v": 1, "reuse": "file", "layers": layer_key(options),
            "parent": parent_key, "file": file, "root": root,
        }))
    });
    let mut manifest = None;
    let record = cached_step(
        ctx,
        step,
        (&key, &inputs),
        &d.snapshot,
        (id, started),
        |m| {
            let source = source_node.and_then(|n| done.get(&n)).map(|d| &**d);
            manifest = match &remote {
                Some(r) => r
                    .copy(ctx, m, file, (local.as_ref(), source))
                    .map(|()| None),
                None => copy_into(ctx, m, file, local.as_ref(), source, identity.as_ref()),
            }
            .map_err(where_)?;
            Ok(())
        },
    )?;
    if let Some(made) = record.snapshot.made() {
        note_copy(ctx, id, made)?;
        // A failing index costs only the links of the next run.
        if let (Some(identity), Some(manifest)) = (&identity, manifest) {
            let _ = store.index.reuse_put(identity.as_str(), made, &manifest);
        }
    }
    if link {
        // The merge records history; this op keeps only its layer.
        d.layers.clear();
        d.image = ImageState::new(None, None);
    }
    let diff = d.take_step(record, &key);
    d.image.copy(file, diff.as_deref());
    Ok(d)
}

/// Fills `m` with what `file` copies from `local` (a directory and its
/// ignore file) or else from `source` (a stage's or image's snapshot);
/// unchanged files of the latest result of copy `identity` are linked.
/// Returns the manifest of what was written, for the next run's links.
pub(super) fn copy_into(
    ctx: &Ctx<'_>,
    m: &cache::snapshot::MutableSnapshot,
    file: &frontend::graph::FileOp,
    local: Option<&(PathBuf, Option<&PatternMatcher>)>,
    source: Option<&Done>,
    identity: Option<&cache::index::CacheKey>,
) -> anyhow::Result<Option<Vec<u8>>> {
    let store = ctx.store;
    let reuse = identity.zip(m.upper()).map(|(identity, upper)| {
        let earlier = store.index.reuse_get(identity.as_str()).ok().flatten();
        let earlier = earlier.and_then(|(snapshot, manifest)| {
            Some((store.snapshots.changes_of(&snapshot)?, manifest))
        });
        crate::copy::Reuse::new(upper, earlier)
    });
    let mut view = None;
    let (source_root, ignore) = match (local, &file.from) {
        (Some((root, ignore)), _) => (root.clone(), *ignore),
        (None, FileSource::Named(name)) => {
            bail!("build context {name:?} is not a directory context");
        }
        (None, _) => {
            let s = source.ok_or_else(|| anyhow!("copy source not built"))?;
            let v = store.snapshots.prepare(s.snapshot.get(ctx)?.as_deref())?;
            let r = v.root();
            view = Some(v);
            (r, None)
        }
    };
    copy(&CopyRequest {
        source_root: &source_root,
        ignore,
        sources: &file.sources,
        contents: &file.contents,
        dest: &file.dest,
        dest_root: &m.root(),
        chown: file.chown.as_deref(),
        chmod: file.chmod.as_deref(),
        excludes: &file.excludes,
        add: file.add,
        unpack: file.unpack,
        parents: file.parents,
        reuse: reuse.as_ref(),
        keep_owners: local.is_none(),
    })?;
    drop(view);
    Ok(reuse.map(|r| r.manifest()))
}

/// The stat-cache "context" under which mounted-content digests are kept.
pub(super) const SNAPSHOT_CONTENT: &str = "snapshot-content";

/// The content digest of `path` in a committed snapshot (the source of a
/// `RUN --mount=from=` bind). Committed snapshots never change and their
/// ids are never reused, so the digest is kept in the index under the
/// snapshot id and computed once, through a read-only view.
pub(super) fn snapshot_path_digest(
    store: &Store,
    snapshot: Option<&str>,
    path: &str,
) -> anyhow::Result<String> {
    let Some(snap) = snapshot else {
        return Ok("scratch".into());
    };
    let memo = format!("{snap}:{path}").into_bytes();
    let stamp = cache::index::FileStamp {
        ino: 0,
        size: 0,
        mtime_ns: 0,
        ctime_ns: 0,
    };
    if let Some(d) = store.index.stat_lookup(SNAPSHOT_CONTENT, &memo, stamp)? {
        return Ok(d);
    }
    let view = store.snapshots.prepare(Some(snap))?;
    let digest = crate::copy::content_digest(&view.root(), None, &[path.to_string()], &[], None);
    let _ = view.discard();
    let digest = digest?;
    store
        .index
        .stat_store(SNAPSHOT_CONTENT, &[(memo, stamp, digest.clone())])?;
    Ok(digest)
}
