//! Running a build graph: each op of the target's stages, in dependency
//! order, on snapshots, with the sandbox for RUN and `copy` for COPY/ADD;
//! the target's image is assembled and stored under its tags.
//!
//! Ops run as soon as their inputs are done, several at a time
//! ([`schedule`]); each snapshot-making op has a content cache key (its
//! parent's key, the op, and the digest of the files it reads) and is
//! skipped when the cache index holds a result for that key.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, anyhow, bail};
use cache::gc::Store;
use cache::layer::{Compression, LayerOptions};
use cache::spec::{Descriptor, ImageConfig};
use frontend::graph::{BuildGraph, Edge, FileSource, OpKind};
use frontend::ignore::PatternMatcher;
use frontend::instructions::{MountType, Security, Sharing};
use petgraph::stable_graph::NodeIndex;

use crate::copy::{CopyRequest, copy};
use crate::image::ImageState;
use crate::sandbox::{
    Access, Cancel, DEFAULT_HOSTNAME, Mount, Network, RunSpec, Runtime, Stream, hosts_file,
    resolv_conf,
};

mod add_remote;
mod base;
mod cache_mount;
mod exec;
pub mod explain;
mod file;
mod keys;
mod mounts;
mod record;
mod schedule;
mod shared;

use self::base::*;
use self::cache_mount::*;
use self::exec::*;
use self::explain::*;
use self::file::*;
use self::keys::*;
use self::mounts::*;
use self::record::*;
use self::schedule::*;
use self::shared::*;
use crate::progress::{LOG_CAP, rfc3339};
pub use crate::progress::{Progress, ProgressFormat};
pub use exec::Canceled;

/// What a build needs besides the graph.
pub struct BuildOptions<'a> {
    /// The run's flag: set when the build fails (after any retry), it
    /// stops the steps of the other builds that share it (several
    /// platforms at once); each try of the build has a flag of its own
    /// under it.
    pub cancel: crate::sandbox::Cancel,
    /// The build context directory.
    pub context: &'a Path,
    /// `.dockerignore` of the context.
    pub ignore: Option<PatternMatcher>,
    /// `--build-context NAME=DIR`, with the directory's `.dockerignore`.
    pub named_contexts: BTreeMap<String, (PathBuf, Option<PatternMatcher>)>,
    /// Base images: build-context aliases, the local store, registries.
    pub images: &'a crate::resolver::Resolver<'a>,
    /// Tags to store the image under.
    pub tags: Vec<String>,
    /// RUN network.
    pub network: Network,
    /// `--cgroup-parent`: the cgroup RUN steps' cgroups go below (checked
    /// to be usable by the runtime when the options are made).
    pub cgroup_parent: Option<String>,
    /// `--allow security.insecure`.
    pub allow_insecure: bool,
    /// `--allow network.host`.
    pub allow_network_host: bool,
    /// `--label K=V`: added to the image's labels.
    pub labels: BTreeMap<String, String>,
    /// OCI annotations for the manifest ([`crate::annotations`]).
    pub annotations: &'a crate::annotations::Annotations,
    /// The result goes into an index (several platforms, or asked for):
    /// platform-specific annotations apply.
    pub index: bool,
    /// SOURCE_DATE_EPOCH, for config and history times.
    pub epoch: Option<i64>,
    /// Proxy variables for RUN (not recorded anywhere).
    pub proxy_env: Vec<(String, String)>,
    /// `--no-cache`: run every step (results are still recorded).
    pub no_cache: bool,
    /// `--secret` values by id.
    pub secrets: crate::secrets::Secrets,
    /// `--ssh` agent sockets by id.
    pub ssh: crate::ssh::Agents,
    /// `-o rewrite-timestamp=true`: file times in new layers clamped to
    /// SOURCE_DATE_EPOCH (`epoch`).
    pub rewrite_timestamp: bool,
    /// `--no-cache-filter`: run every step of these stages.
    pub no_cache_stages: std::collections::BTreeSet<usize>,
    /// The Dockerfile as its steps are known across builds (its absolute
    /// path; for stdin, the context's and `-`).
    pub dockerfile: String,
    /// `--explain`: say for each step whether it hit the cache, and why
    /// not.
    pub explain: bool,
    /// `--cache-from`: records a step may be taken from.
    pub cache_imports: Option<&'a crate::shared_cache::Imports>,
    /// `--cache-to`: which records to gather ([`Built::cache_records`]).
    pub cache_export: Option<crate::shared_cache::Mode>,
    /// Where downloads report (layers of imported caches).
    pub transfer: Arc<dyn crate::registry::transfer::Transfer>,
    /// An output reads the result's files (`type=local`, `type=tar`):
    /// [`Built::snapshot`] is made even when only a base image has it.
    pub needs_files: bool,
}

/// The stored image.
#[derive(Debug, Clone)]
pub struct Built {
    /// Config digest (the image id).
    pub image_id: String,
    /// Manifest descriptor.
    pub manifest: Descriptor,
    /// The config.
    pub config: ImageConfig,
    /// The target's final snapshot (None: empty filesystem, or not made:
    /// see [`BuildOptions::needs_files`]).
    pub snapshot: Option<String>,
    /// With `--explain`: each step's outcome, in the order they started.
    pub explained: Vec<(usize, String, Outcome)>,
    /// With `--cache-to`: the records to export (every step's when an
    /// export is `mode=max`).
    pub cache_records: Vec<crate::shared_cache::CacheRecord>,
    /// The keys of those records a `mode=min` export takes.
    pub cache_min: std::collections::BTreeSet<String>,
    /// With `--cache-to`: the cache mounts the build used (id, directory).
    pub cache_mounts: Vec<(String, PathBuf)>,
}

/// One op's result: a snapshot (None: empty) and its stage's image so far.
#[derive(Clone)]
struct Done {
    snapshot: Snap,
    image: ImageState,
    layers: Vec<Descriptor>,
    /// Cache key of the filesystem state (None: empty).
    key: Option<String>,
}

impl Done {
    /// Continues from a snapshot-making step recorded under `key`: its
    /// time, layer (or placeholder), snapshot and key. Returns the diff_id
    /// (or placeholder) for the step's history entry, which the caller
    /// writes as RUN, COPY or WORKDIR.
    fn take_step(&mut self, step: Taken, key: &cache::index::CacheKey) -> Option<String> {
        self.image.set_created(Some(step.created));
        self.layers.extend(step.layer);
        self.snapshot = step.snapshot;
        self.key = Some(key.as_str().to_string());
        step.diff
    }
}

/// `m` locked; a step that panicked while holding it leaves its data
/// usable (counters, maps of results), so the poison is ignored.
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What every step of one build shares.
struct Ctx<'a> {
    store: &'a Store,
    graph: &'a BuildGraph,
    runtime: &'a dyn Runtime,
    options: &'a BuildOptions<'a>,
    progress: &'a Progress,
    layer_options: LayerOptions,
    host_resolv: String,
    created: String,
    /// Set on the first failure: running steps are killed.
    cancel: Cancel,
    /// Where secret files are made (when there are secrets).
    secret_dir: Option<crate::secrets::SecretDir>,
    /// Context file digests, read from the index once per build.
    stat: crate::copy::StatCache<'a>,
    /// Each step's place in the Dockerfile ([`explain::identities`]).
    identities: BTreeMap<NodeIndex, String>,
    /// What `--explain` reports.
    explained: std::sync::Mutex<Vec<(usize, String, Outcome)>>,
    /// The key of the latest earlier build of each step that ran (by
    /// progress number), for `--explain`'s file names.
    earlier: std::sync::Mutex<BTreeMap<usize, String>>,
    /// The step (progress number) that made each key of this build, and
    /// whether it came from the cache.
    made_by: std::sync::Mutex<BTreeMap<String, (usize, bool)>>,
    /// The empty cache mounts of steps that skip the cache, by id.
    fresh_caches: std::sync::Mutex<BTreeMap<String, crate::tempdir::TempDir>>,
    /// With `--cache-to`: each step made or found.
    seen: std::sync::Mutex<Vec<Seen>>,
    /// With `--cache-to`: the cache mounts used, by id.
    cache_mounts: std::sync::Mutex<BTreeMap<String, PathBuf>>,
    /// Imported hits found unusable in an earlier try of this build.
    rejected: &'a std::sync::Mutex<std::collections::BTreeSet<String>>,
    /// This build's imported hits (key to layer digest): their layers
    /// are fetched only when the image or an export needs them.
    imported_hits: std::sync::Mutex<BTreeMap<String, Option<String>>>,
}

/// Runs the graph and stores the target image. An imported cache hit
/// whose layer turns out unusable when needed (gone, corrupt, the
/// registry unreachable) is a warning: the build runs again without it
/// (the steps done so far are in the local cache by then).
pub fn build(
    store: &Store,
    graph: &BuildGraph,
    runtime: &dyn Runtime,
    options: &BuildOptions<'_>,
    progress: &Progress,
) -> anyhow::Result<Built> {
    let rejected = std::sync::Mutex::default();
    loop {
        let e = match build_once(store, graph, runtime, options, progress, &rejected) {
            Ok(built) => return Ok(built),
            Err(e) => e,
        };
        let Some(bad) = e
            .chain()
            .find_map(|c| c.downcast_ref::<shared::ImportUnusable>())
        else {
            options.cancel.cancel();
            return Err(e);
        };
        let first = lock(&rejected).insert(bad.key.clone());
        if !first {
            options.cancel.cancel();
            return Err(e);
        }
        progress.warn(&format!("{bad}; building again without it"));
    }
}

fn build_once(
    store: &Store,
    graph: &BuildGraph,
    runtime: &dyn Runtime,
    options: &BuildOptions<'_>,
    progress: &Progress,
    rejected: &std::sync::Mutex<std::collections::BTreeSet<String>>,
) -> anyhow::Result<Built> {
    let ctx = Ctx {
        rejected,
        imported_hits: Default::default(),
        store,
        graph,
        runtime,
        options,
        progress,
        // Layers are stored uncompressed (as docker's image store keeps
        // them): a build never waits for compression, and an export
        // compresses each layer once for the format it asks for.
        layer_options: LayerOptions {
            compression: Compression::Uncompressed,
            clamp_mtime: options.epoch.filter(|_| options.rewrite_timestamp),
            ..LayerOptions::default()
        },
        host_resolv: std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
        created: rfc3339(options.epoch.unwrap_or_else(cache::index::now)),
        cancel: Cancel::child(&options.cancel),
        stat: crate::copy::StatCache::new(&store.index, "local"),
        identities: identities(graph, &options.dockerfile),
        explained: Default::default(),
        made_by: Default::default(),
        earlier: Default::default(),
        fresh_caches: Default::default(),
        seen: Default::default(),
        cache_mounts: Default::default(),
        secret_dir: if options.secrets.is_empty() && options.ssh.is_empty() {
            None
        } else {
            Some(crate::secrets::SecretDir::create()?)
        },
    };
    let done = schedule(graph, max_parallelism(), &ctx.cancel, |node, inputs| {
        run_node(&ctx, node, inputs)
    })?;
    let created = ctx.created.clone();
    let target = &done[&graph.target];
    let mut config = target.image.config.clone();
    let mut layers = target.layers.clone();
    resolve_layers(&ctx, &mut layers, &mut config)?;
    // The latest step's time: an unchanged rebuild gives the same image id.
    config.created = Some(target.image.created().map_or(created, str::to_string));
    // `--label`s join the Dockerfile's LABELs (and win).
    if !options.labels.is_empty() {
        config
            .config
            .labels
            .get_or_insert_with(Default::default)
            .extend(options.labels.clone());
    }
    // The image's layers that imported hits stand for: no other layer of
    // theirs is ever downloaded.
    fetch_imported_layers(&ctx, &layers)?;
    record_unmade_hits(&ctx)?;
    let annotated = options.index.then_some(&graph.platform);
    let (image_id, manifest) = crate::images::store(
        &store.blobs,
        &config,
        layers,
        options
            .annotations
            .of(crate::annotations::Target::Manifest, annotated),
        &options.tags,
    )?;
    let explained = std::mem::take(&mut *lock(&ctx.explained));
    let (cache_records, cache_min) = export_records(&ctx, target)?;
    let cache_mounts = std::mem::take(&mut *lock(&ctx.cache_mounts))
        .into_iter()
        .collect();
    Ok(Built {
        explained,
        cache_records,
        cache_min,
        cache_mounts,
        image_id: image_id.to_string(),
        manifest,
        config,
        // Made (a base image's layers unpacked) only for the outputs that
        // read the files.
        snapshot: if options.needs_files {
            target.snapshot.get(&ctx)?
        } else {
            None
        },
    })
}

/// The op a runner runs, its inputs, and whether the cache may answer.
struct Step<'g> {
    node: NodeIndex,
    op: &'g frontend::graph::Op,
    inputs: Vec<(NodeIndex, Edge)>,
    skip_cache: bool,
}

impl Step<'_> {
    /// The platform the op's stage is for (the host's for ops of no stage).
    fn platform(&self, graph: &BuildGraph) -> frontend::stage::Platform {
        self.op
            .stage
            .and_then(|s| graph.stage_platforms.get(&s).cloned())
            .unwrap_or_else(frontend::stage::Platform::host)
    }

    /// `e` with the op's Dockerfile position and name
    /// (`Dockerfile:3:1: [2/4] RUN ...`).
    fn locate(&self, e: anyhow::Error) -> anyhow::Error {
        match &self.op.span {
            Some(s) => e.context(StepLocation {
                span: s.clone(),
                name: self.op.name.clone(),
            }),
            None => e.context(self.op.name.clone()),
        }
    }
}

/// `e`, an image source's failure, at the instruction that uses the image
/// (`COPY --from=IMAGE`, `RUN --mount=from=IMAGE`): sources have no line of
/// their own, and BuildKit gives such an image the user's location too.
fn used_at(graph: &BuildGraph, source: NodeIndex, e: anyhow::Error) -> anyhow::Error {
    let user = graph
        .graph
        .neighbors_directed(source, petgraph::Direction::Outgoing)
        .filter_map(|n| {
            let op = &graph.graph[n];
            op.span.as_ref().map(|span| (span, &op.name))
        })
        .min_by_key(|(span, _)| (span.start_line, span.start_column));
    match user {
        Some((span, name)) => e.context(StepLocation {
            span: span.clone(),
            name: name.clone(),
        }),
        None => e,
    }
}

/// Where a failed step is in the Dockerfile: the context of its error,
/// which the error's report shows the line of.
#[derive(Debug, Clone)]
pub struct StepLocation {
    /// The instruction's range.
    pub span: frontend::Span,
    /// The step's name (`[2/4] RUN ...`).
    pub name: String,
}

impl std::fmt::Display for StepLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.span.start(), self.name)
    }
}

/// Runs one node: `done` holds the results of its inputs. RUN, COPY/ADD
/// and WORKDIR have runners of their own.
fn run_node(
    ctx: &Ctx<'_>,
    node: NodeIndex,
    mut done: BTreeMap<NodeIndex, Arc<Done>>,
) -> anyhow::Result<Done> {
    let Ctx {
        store,
        graph,
        options,
        progress,
        ..
    } = *ctx;
    let op = &graph.graph[node];
    let step = Step {
        node,
        op,
        inputs: graph.inputs(node),
        skip_cache: options.no_cache
            || op
                .stage
                .is_some_and(|s| options.no_cache_stages.contains(&s)),
    };
    let parent = step
        .inputs
        .iter()
        .find(|(_, e)| *e == Edge::Parent)
        .map(|(n, _)| *n);
    let where_ = |e: anyhow::Error| step.locate(e);
    let base = match parent {
        Some(p) => Some(take_parent(graph, &step, p, &mut done)?),
        None => None,
    };
    let result = match &op.kind {
        OpKind::Scratch => Done {
            snapshot: Snap::default(),
            // No time until a step has one: cached rebuilds stay identical.
            image: ImageState::new(None, options.epoch.map(rfc3339)),
            layers: Vec::new(),
            key: None,
        },
        OpKind::Context { name } => run_context(ctx, &step, name)?,
        OpKind::Image {
            reference,
            platform,
        } => {
            let (id, started) = progress.start(&op.name);
            let wanted = match platform {
                Some(p) => frontend::stage::Platform::parse(p).map_err(|e| where_(anyhow!(e)))?,
                None => graph.platform.clone(),
            };
            let d = import_image(store, options.images, (reference, &wanted), options.epoch)
                .map_err(|e| used_at(graph, node, where_(e)))?;
            progress.done(id, started);
            d
        }
        OpKind::Config(change) => {
            let mut d = base.ok_or_else(|| anyhow!("config step without a parent"))?;
            d.image.apply(change).map_err(|e| where_(anyhow!(e)))?;
            d
        }
        OpKind::Mkdir { path } => run_mkdir(ctx, &step, base, path)?,
        OpKind::Exec(exec) => run_exec(ctx, &step, base, &done, exec)?,
        OpKind::File(file) => run_file(ctx, &step, base, &done, file)?,
        OpKind::Merge => {
            let d = base.ok_or_else(|| anyhow!("merge without a parent"))?;
            run_merge(ctx, &step, d, &done)?
        }
    };
    Ok(result)
}

/// The state an op continues from: its parent's, taken over when no one
/// else holds it (the usual chain of steps), else copied; a new stage
/// starts a new image from it.
fn take_parent(
    graph: &BuildGraph,
    step: &Step<'_>,
    p: NodeIndex,
    done: &mut BTreeMap<NodeIndex, Arc<Done>>,
) -> anyhow::Result<Done> {
    let shared = step.inputs.iter().filter(|(n, _)| *n == p).count() > 1;
    let parent_done = if shared {
        done[&p].clone()
    } else {
        done.remove(&p)
            .ok_or_else(|| anyhow!("parent step not done"))?
    };
    let mut d = Arc::try_unwrap(parent_done).unwrap_or_else(|d| (*d).clone());
    if graph.graph[p].stage != step.op.stage {
        let since = d.image.created().map(str::to_string);
        d.image = ImageState::new(Some(d.image.config.clone()), since);
        // An empty image is for the stage's platform.
        if matches!(graph.graph[p].kind, OpKind::Scratch) {
            d.image.set_platform(&step.platform(graph));
        }
    }
    Ok(d)
}

/// A context node: nothing to run for the main context (the first COPY
/// from it finds its stat cache records read meanwhile); a named directory
/// context that is a stage's base (`FROM NAME`) becomes its first layer.
fn run_context(ctx: &Ctx<'_>, step: &Step<'_>, name: &str) -> anyhow::Result<Done> {
    let options = ctx.options;
    if name == "context" && copies_from_context(ctx.graph) {
        ctx.stat.preload(options.context);
    }
    // A filesystem where a stage starts from it, or is it (`FROM ctx`
    // and nothing more; a stage a context of its name replaces).
    let is_base = ctx
        .graph
        .graph
        .edges_directed(step.node, petgraph::Direction::Outgoing)
        .any(|e| *e.weight() == Edge::Parent)
        || ctx.graph.stage_results.values().any(|&n| n == step.node);
    Ok(match options.named_contexts.get(name) {
        Some((dir, ignore)) if is_base => run_context_base(ctx, step, dir, ignore.as_ref())?,
        _ => Done {
            snapshot: Snap::default(),
            image: ImageState::new(None, None),
            layers: Vec::new(),
            key: None,
        },
    })
}

/// `COPY --link`'s result put on top of its parent: the copy's layer (it
/// must exist) imported as a snapshot, with its history entry.
fn run_merge(
    ctx: &Ctx<'_>,
    step: &Step<'_>,
    mut d: Done,
    done: &BTreeMap<NodeIndex, Arc<Done>>,
) -> anyhow::Result<Done> {
    let store = ctx.store;
    let layer_node = step
        .inputs
        .iter()
        .find(|(_, e)| *e == Edge::Layer)
        .map(|(n, _)| *n)
        .ok_or_else(|| anyhow!("merge without a layer"))?;
    let l = &done[&layer_node];
    let mut layers = l.layers.clone();
    let mut config = l.image.config.clone();
    resolve_layers(ctx, &mut layers, &mut config)?;
    for desc in &layers {
        let blob = store.blobs.open_verified(&desc.digest.parse()?)?;
        let parent = d.snapshot.get(ctx)?;
        // No record keeps a merge's snapshot: this build's lease does.
        let snap = store.import_snapshot(parent.as_deref(), blob)?;
        d.snapshot = Snap::ready(Some(snap.id));
        d.layers.push(desc.clone());
    }
    d.key = Some(format!("merge {:?} {:?}", d.key, l.key));
    let rootfs = &config.rootfs.diff_ids;
    if let (Some(h), Some(diff)) = (config.history.last(), rootfs.last()) {
        d.image.config.history.push(h.clone());
        d.image.config.rootfs.diff_ids.push(diff.clone());
    }
    Ok(d)
}
