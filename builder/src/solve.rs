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
use frontend::graph::{BuildGraph, Edge, FileSource, ImageConfigs, OpKind};
use frontend::ignore::PatternMatcher;
use frontend::instructions::{MountType, Security, Sharing};
use petgraph::stable_graph::NodeIndex;

use crate::copy::{CopyRequest, copy};
use crate::image::ImageState;
use crate::sandbox::{
    Cancel, Mount, Network, RunSpec, Runtime, Stream, default_hosts, resolv_conf,
};

/// Base image configs from the local image store (and build-context
/// aliases), for graph compilation.
pub struct LocalImages<'a>(pub &'a Store, pub &'a crate::images::Aliases);

impl ImageConfigs for LocalImages<'_> {
    fn config(&self, reference: &str) -> Option<frontend::graph::BaseConfig> {
        let img = crate::images::find_with(&self.0.blobs, self.1, reference).ok()??;
        let (_, cfg) = crate::images::read(&self.0.blobs, &img).ok()?;
        let c = cfg.config;
        Some(frontend::graph::BaseConfig {
            env: c
                .env
                .unwrap_or_default()
                .iter()
                .map(|e| {
                    let (k, v) = e.split_once('=').unwrap_or((e, ""));
                    (k.to_string(), v.to_string())
                })
                .collect(),
            workdir: c.working_dir.unwrap_or_default(),
            user: c.user.unwrap_or_default(),
            shell: c.shell.unwrap_or_default(),
            onbuild: c.on_build.unwrap_or_default(),
        })
    }
}

/// What a build needs besides the graph.
pub struct BuildOptions<'a> {
    /// The build context directory.
    pub context: &'a Path,
    /// `.dockerignore` of the context.
    pub ignore: Option<PatternMatcher>,
    /// `--build-context NAME=DIR`, with the directory's `.dockerignore`.
    pub named_contexts: BTreeMap<String, (PathBuf, Option<PatternMatcher>)>,
    /// `--build-context NAME=docker-image://|oci-layout://`: images by NAME.
    pub aliases: crate::images::Aliases,
    /// Tags to store the image under.
    pub tags: Vec<String>,
    /// RUN network.
    pub network: Network,
    /// `--allow security.insecure`.
    pub allow_insecure: bool,
    /// `--allow network.host`.
    pub allow_network_host: bool,
    /// `--label K=V`: added to the image's labels.
    pub labels: BTreeMap<String, String>,
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
    /// The target's final snapshot (None: empty filesystem).
    pub snapshot: Option<String>,
}

/// One op's result: a snapshot (None: empty) and its stage's image so far.
#[derive(Clone)]
struct Done {
    snapshot: Option<String>,
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
    fn take_step(&mut self, step: StepRecord, key: &cache::index::CacheKey) -> Option<String> {
        self.image.set_created(Some(step.created.clone()));
        self.layers.extend(step.layer_ref(key));
        let diff = step.diff_ref(key);
        self.snapshot = Some(step.snapshot);
        self.key = Some(key.as_str().to_string());
        diff
    }
}

/// What a snapshot-making step left, as the cache index records it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct StepRecord {
    snapshot: String,
    layer: Option<Descriptor>,
    diff_id: Option<String>,
    created: String,
    /// The step changed files but its layer tar is not written yet: only
    /// the layers of the image a build produces are ([`resolve_layers`]);
    /// a stage that only feeds `COPY --from` never needs its tars.
    #[serde(default)]
    pending: bool,
    /// Bytes of a pending step's changes (its snapshot), for disk usage.
    #[serde(default)]
    pending_size: u64,
}

/// The media type of a layer placeholder; its digest is
/// `pending:<cache key>`, and it stands in the image's diff_ids too until
/// [`resolve_layers`] writes the layer.
const PENDING_LAYER: &str = "application/vnd.rbuild.layer.pending";

impl StepRecord {
    /// The layer as an image takes it: the written one, or a placeholder.
    fn layer_ref(&self, key: &cache::index::CacheKey) -> Option<Descriptor> {
        if self.pending {
            return Some(Descriptor {
                media_type: PENDING_LAYER.into(),
                digest: format!("pending:{}", key.as_str()),
                size: 0,
                urls: None,
                annotations: None,
                data: None,
                platform: None,
                artifact_type: None,
            });
        }
        self.layer.clone()
    }

    /// The diff_id as an image takes it: the real one, or the placeholder.
    fn diff_ref(&self, key: &cache::index::CacheKey) -> Option<String> {
        if self.pending {
            return Some(format!("pending:{}", key.as_str()));
        }
        self.diff_id.clone()
    }
}

/// sha256 of the versioned key inputs (canonical JSON).
fn step_key(inputs: serde_json::Value) -> cache::index::CacheKey {
    use sha2::{Digest as _, Sha256};
    let bytes = serde_json::to_vec(&inputs).expect("key inputs serialise");
    let hex: String = Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    cache::index::CacheKey::new(&hex).expect("sha256 hex is a key")
}

/// A usable cache record: its snapshot and layer blob are still there.
fn lookup(store: &Store, key: &cache::index::CacheKey) -> anyhow::Result<Option<StepRecord>> {
    let Some(rec) = store.index.get(key)? else {
        return Ok(None);
    };
    let Ok(step) = serde_json::from_str::<StepRecord>(&rec.result) else {
        return Ok(None);
    };
    if store.snapshots.get(&step.snapshot).is_err() {
        return Ok(None);
    }
    if let Some(l) = &step.layer
        && !store.blobs.contains(&l.digest.parse()?)
    {
        return Ok(None);
    }
    Ok(Some(step))
}

fn record(store: &Store, key: &cache::index::CacheKey, step: &StepRecord) -> anyhow::Result<()> {
    let now = cache::index::now();
    store.index.put(&cache::index::Record {
        key: key.clone(),
        result: serde_json::to_string(step)?,
        snapshot: Some(step.snapshot.clone()),
        blobs: step.layer.iter().map(|l| l.digest.clone()).collect(),
        size: step.layer.as_ref().map_or(step.pending_size, |l| l.size),
        created: now,
        last_used: now,
    })?;
    Ok(())
}

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressFormat {
    /// BuildKit's plain format: `#N name`, `#N 0.123 log`, `#N DONE 1.2s`.
    Plain,
    /// One JSON object per line, the shape of BuildKit's SolveStatus.
    RawJson,
    /// The live view on a terminal ([`crate::tty`]).
    Tty,
    /// Nothing.
    Quiet,
}

/// Progress of the steps, on stderr.
/// Steps run in parallel, so the state sits behind a lock.
pub struct Progress {
    format: ProgressFormat,
    state: std::sync::Mutex<ProgressState>,
    tty: Option<crate::tty::TtyView>,
}

#[derive(Default)]
struct ProgressState {
    counter: usize,
    /// Bytes of log shown per step (BuildKit caps a step's log at 2 MiB).
    shown: BTreeMap<usize, usize>,
    /// Partial log line per step (plain).
    partial: BTreeMap<usize, Vec<u8>>,
    /// Vertex digest, name and start time per step.
    names: BTreeMap<usize, (String, String, String)>,
}

/// BuildKit's cap on a step's log output.
const LOG_CAP: usize = 2 << 20;

fn now_rfc3339_nanos() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let base = rfc3339(d.as_secs() as i64);
    format!("{}.{:09}Z", base.trim_end_matches('Z'), d.subsec_nanos())
}

/// Writes one progress line to stderr in one write: stderr is unbuffered,
/// and `eprintln!` writes every piece of its format on its own.
fn stderr_line(args: std::fmt::Arguments<'_>) {
    let mut text = args.to_string();
    text.push('\n');
    let _ = std::io::stderr().write_all(text.as_bytes());
}

impl Progress {
    /// Progress in `format`.
    pub fn new(format: ProgressFormat) -> Progress {
        Progress {
            format,
            state: std::sync::Mutex::new(ProgressState::default()),
            tty: (format == ProgressFormat::Tty).then(crate::tty::TtyView::start),
        }
    }

    /// Ends the live view (its last lines are drawn); other formats have
    /// nothing to end.
    pub fn finish(&self) {
        if let Some(t) = &self.tty {
            t.finish();
        }
    }

    fn tty(&self, event: crate::tty::Event) {
        if let Some(t) = &self.tty {
            t.send(event);
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, ProgressState> {
        // A panicking step leaves the state usable: it is only counters.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn emit(value: serde_json::Value) {
        stderr_line(format_args!("{value}"));
    }

    fn vertex(&self, id: usize, extra: serde_json::Value) -> serde_json::Value {
        let (digest, name, started) = self.state().names.get(&id).cloned().unwrap_or_default();
        let mut v =
            serde_json::json!({"digest": digest, "inputs": [], "name": name, "started": started});
        if let (Some(obj), Some(extra)) = (v.as_object_mut(), extra.as_object()) {
            for (k, val) in extra {
                obj.insert(k.clone(), val.clone());
            }
        }
        serde_json::json!({"vertexes": [v]})
    }

    fn start(&self, name: &str) -> (usize, Instant) {
        use sha2::{Digest as _, Sha256};
        let mut state = self.state();
        state.counter += 1;
        let id = state.counter;
        let digest = format!(
            "sha256:{}",
            Sha256::digest(format!("{id} {name}").as_bytes())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        );
        state
            .names
            .insert(id, (digest, name.to_string(), now_rfc3339_nanos()));
        drop(state);
        match self.format {
            ProgressFormat::Plain => stderr_line(format_args!("#{id} {name}")),
            ProgressFormat::RawJson => Self::emit(self.vertex(id, serde_json::json!({}))),
            ProgressFormat::Tty => self.tty(crate::tty::Event::Start {
                id,
                name: name.to_string(),
            }),
            ProgressFormat::Quiet => {}
        }
        (id, Instant::now())
    }

    fn cached(&self, id: usize) {
        match self.format {
            ProgressFormat::Plain => stderr_line(format_args!("#{id} CACHED")),
            ProgressFormat::RawJson => Self::emit(self.vertex(
                id,
                serde_json::json!({"cached": true, "completed": now_rfc3339_nanos()}),
            )),
            ProgressFormat::Tty => self.tty(crate::tty::Event::Cached { id }),
            ProgressFormat::Quiet => {}
        }
    }

    fn done(&self, id: usize, started: Instant) {
        match self.format {
            ProgressFormat::Plain => stderr_line(format_args!(
                "#{id} DONE {:.1}s",
                started.elapsed().as_secs_f64()
            )),
            ProgressFormat::RawJson => {
                Self::emit(self.vertex(id, serde_json::json!({"completed": now_rfc3339_nanos()})))
            }
            ProgressFormat::Tty => self.tty(crate::tty::Event::Done {
                id,
                secs: started.elapsed().as_secs_f64(),
            }),
            ProgressFormat::Quiet => {}
        }
    }

    fn canceled(&self, id: usize) {
        match self.format {
            ProgressFormat::Plain => stderr_line(format_args!("#{id} CANCELED")),
            ProgressFormat::RawJson => Self::emit(self.vertex(
                id,
                serde_json::json!({"completed": now_rfc3339_nanos(), "error": "context canceled"}),
            )),
            ProgressFormat::Tty => self.tty(crate::tty::Event::Canceled { id }),
            ProgressFormat::Quiet => {}
        }
    }

    fn error(&self, id: usize, message: &str) {
        match self.format {
            ProgressFormat::Plain => stderr_line(format_args!("#{id} ERROR: {message}")),
            ProgressFormat::RawJson => Self::emit(self.vertex(
                id,
                serde_json::json!({"completed": now_rfc3339_nanos(), "error": message}),
            )),
            ProgressFormat::Tty => self.tty(crate::tty::Event::Error {
                id,
                message: message.to_string(),
            }),
            ProgressFormat::Quiet => {}
        }
    }

    /// A chunk of a step's output: log lines (plain) or a log event (rawjson),
    /// up to BuildKit's 2 MiB per step, then one note that the log was clipped.
    fn log(&self, id: usize, stream: Stream, chunk: &[u8], started: Instant) {
        if self.format == ProgressFormat::Quiet {
            return;
        }
        let mut state = self.state();
        let state = &mut *state;
        let shown = state.shown.entry(id).or_insert(0);
        if *shown >= LOG_CAP {
            return;
        }
        let take = chunk.len().min(LOG_CAP - *shown);
        *shown += take;
        let clipped = *shown >= LOG_CAP;
        let chunk = &chunk[..take];
        match self.format {
            ProgressFormat::Plain | ProgressFormat::Tty => {
                let partial = state.partial.entry(id).or_default();
                for &b in chunk {
                    if b != b'\n' {
                        partial.push(b);
                        continue;
                    }
                    let line = String::from_utf8_lossy(partial).into_owned();
                    partial.clear();
                    if self.format == ProgressFormat::Plain {
                        stderr_line(format_args!(
                            "#{id} {:.3} {line}",
                            started.elapsed().as_secs_f64()
                        ));
                    } else {
                        self.tty(crate::tty::Event::Line { id, line });
                    }
                }
                if clipped && self.format == ProgressFormat::Plain {
                    stderr_line(format_args!(
                        "#{id} [output clipped, log limit 2MiB reached]"
                    ));
                }
            }
            ProgressFormat::RawJson => {
                use base64::Engine as _;
                let digest = state
                    .names
                    .get(&id)
                    .map(|n| n.0.clone())
                    .unwrap_or_default();
                let fd = if stream == Stream::Stdout { 1 } else { 2 };
                Self::emit(serde_json::json!({"logs": [{
                    "vertex": digest, "stream": fd,
                    "data": base64::engine::general_purpose::STANDARD.encode(chunk),
                    "timestamp": now_rfc3339_nanos(),
                }]}));
            }
            ProgressFormat::Quiet => {}
        }
    }
}

fn rfc3339(epoch: i64) -> String {
    // Days from civil (Howard Hinnant's algorithm), UTC.
    let days = epoch.div_euclid(86_400);
    let secs = epoch.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
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
}

/// How many steps run at once: `RBUILD_MAX_PARALLELISM`, else four per
/// CPU. More ready steps than CPUs is the point: three CPU-bound stages on
/// two cores take 3.3 s run together against 4.5 s two at a time (bench
/// parallel-stages); BuildKit sets no limit at all.
fn max_parallelism() -> usize {
    std::env::var("RBUILD_MAX_PARALLELISM")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or_else(|| 4 * std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Runs the graph and stores the target image.
pub fn build(
    store: &Store,
    graph: &BuildGraph,
    runtime: &dyn Runtime,
    options: &BuildOptions<'_>,
    progress: &Progress,
) -> anyhow::Result<Built> {
    let ctx = Ctx {
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
        cancel: Cancel::default(),
        stat: crate::copy::StatCache::new(&store.index, "local"),
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
    let (image_id, manifest) = crate::images::store(&store.blobs, &config, layers, &options.tags)?;
    Ok(Built {
        image_id: image_id.to_string(),
        manifest,
        config,
        snapshot: target.snapshot.clone(),
    })
}

/// Where a [`schedule`] is: the nodes done, the first failure, how many
/// inputs each node still waits for, and the nodes ready to run (by
/// topological position).
struct Progressed {
    done: BTreeMap<NodeIndex, Arc<Done>>,
    failure: Option<anyhow::Error>,
    waiting: BTreeMap<NodeIndex, usize>,
    ready: std::collections::BTreeSet<(usize, NodeIndex)>,
    /// How many dependents of a done node have not started yet: at 0 its
    /// result leaves `done` (its dependents hold it), so that a chain of
    /// steps hands one state down instead of keeping a copy per step.
    unstarted: BTreeMap<NodeIndex, usize>,
}

impl Progressed {
    /// Takes `node`'s result: its dependents that waited only for it
    /// become ready; a failure cancels the running nodes.
    fn finish(
        &mut self,
        node: NodeIndex,
        result: anyhow::Result<Done>,
        dependents: &BTreeMap<NodeIndex, Vec<NodeIndex>>,
        position: &BTreeMap<NodeIndex, usize>,
        cancel: &Cancel,
    ) {
        match result {
            Ok(d) => {
                self.done.insert(node, Arc::new(d));
                for &next in dependents.get(&node).map(Vec::as_slice).unwrap_or(&[]) {
                    let w = self.waiting.get_mut(&next).expect("every node is counted");
                    *w -= 1;
                    if *w == 0 {
                        self.ready.insert((position[&next], next));
                    }
                }
            }
            Err(e) => {
                cancel.cancel();
                self.failure.get_or_insert(e);
            }
        }
    }
}

/// Whether some COPY/ADD of `graph` reads the build context.
fn copies_from_context(graph: &BuildGraph) -> bool {
    graph
        .graph
        .node_weights()
        .any(|op| matches!(&op.kind, OpKind::File(f) if matches!(f.from, FileSource::Context)))
}

/// Runs every node of `graph` once its inputs are done, up to `limit` at a
/// time, each on a thread of its own (or on this one when it is the only
/// node that can run); `run` gets the node and its inputs' results. On the first failure no new node starts, `cancel` stops the
/// running ones, and the first error is returned.
fn schedule<F>(
    graph: &BuildGraph,
    limit: usize,
    cancel: &Cancel,
    run: F,
) -> anyhow::Result<BTreeMap<NodeIndex, Arc<Done>>>
where
    F: Fn(NodeIndex, BTreeMap<NodeIndex, Arc<Done>>) -> anyhow::Result<Done> + Sync,
{
    use std::collections::BTreeSet;
    let order = graph.topological();
    let position: BTreeMap<NodeIndex, usize> =
        order.iter().enumerate().map(|(i, n)| (*n, i)).collect();
    let mut waiting: BTreeMap<NodeIndex, usize> = BTreeMap::new();
    let mut dependents: BTreeMap<NodeIndex, Vec<NodeIndex>> = BTreeMap::new();
    // Ready nodes by topological position: a sequential run keeps its order.
    let mut ready: BTreeSet<(usize, NodeIndex)> = BTreeSet::new();
    for &node in &order {
        let inputs: BTreeSet<NodeIndex> = graph.inputs(node).into_iter().map(|(n, _)| n).collect();
        for &i in &inputs {
            dependents.entry(i).or_default().push(node);
        }
        waiting.insert(node, inputs.len());
        if inputs.is_empty() {
            ready.insert((position[&node], node));
        }
    }
    let unstarted = dependents.iter().map(|(n, d)| (*n, d.len())).collect();
    let mut state = Progressed {
        done: BTreeMap::new(),
        failure: None,
        waiting,
        ready,
        unstarted,
    };
    let run_caught = |node: NodeIndex, inputs: BTreeMap<NodeIndex, Arc<Done>>| {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(node, inputs)))
            .unwrap_or_else(|_| Err(anyhow!("internal error: a build step panicked")))
    };
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::channel::<(NodeIndex, anyhow::Result<Done>)>();
        let mut running = 0usize;
        loop {
            while state.failure.is_none() && running < limit {
                let Some((_, node)) = state.ready.pop_first() else {
                    break;
                };
                let inputs = take_inputs(&mut state, graph, node, graph.target);
                if running == 0 && state.ready.is_empty() {
                    // Everything left waits for this node: it runs here,
                    // without a thread start (on a VM, the wake-up of an
                    // idle CPU for it took up to 2 ms).
                    let result = run_caught(node, inputs);
                    state.finish(node, result, &dependents, &position, cancel);
                    continue;
                }
                let tx = tx.clone();
                let run_caught = &run_caught;
                running += 1;
                scope.spawn(move || {
                    let _ = tx.send((node, run_caught(node, inputs)));
                });
            }
            if running == 0 {
                break;
            }
            let (node, result) = rx.recv().expect("a running step reports back");
            running -= 1;
            state.finish(node, result, &dependents, &position, cancel);
        }
    });
    let Progressed { done, failure, .. } = state;
    match failure {
        Some(e) => Err(e),
        None => Ok(done),
    }
}

/// Inputs a node takes from `state` as it starts; an input whose last
/// dependent this is leaves `state.done` (unless it is `keep`).
fn take_inputs(
    state: &mut Progressed,
    graph: &BuildGraph,
    node: NodeIndex,
    keep: NodeIndex,
) -> BTreeMap<NodeIndex, Arc<Done>> {
    let mut inputs = BTreeMap::new();
    for (n, _) in graph.inputs(node) {
        if inputs.contains_key(&n) {
            continue;
        }
        let Some(d) = state.done.get(&n) else {
            continue;
        };
        inputs.insert(n, d.clone());
        let left = state.unstarted.get_mut(&n).expect("every input is counted");
        *left -= 1;
        if *left == 0 && n != keep {
            state.done.remove(&n);
        }
    }
    inputs
}

/// The op a runner runs, its inputs, and whether the cache may answer.
struct Step<'g> {
    op: &'g frontend::graph::Op,
    inputs: Vec<(NodeIndex, Edge)>,
    skip_cache: bool,
}

impl Step<'_> {
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
    // The state this op continues from; a new stage starts a new image.
    let base = match parent {
        Some(p) => {
            // The parent's state is taken over when no one else holds it
            // (the usual chain of steps), else copied.
            let shared = step.inputs.iter().filter(|(n, _)| *n == p).count() > 1;
            let parent_done = if shared {
                done[&p].clone()
            } else {
                done.remove(&p)
                    .ok_or_else(|| anyhow!("parent step not done"))?
            };
            let mut d = Arc::try_unwrap(parent_done).unwrap_or_else(|d| (*d).clone());
            if graph.graph[p].stage != op.stage {
                let since = d.image.created().map(str::to_string);
                d.image = ImageState::new(Some(d.image.config.clone()), since);
            }
            Some(d)
        }
        None => None,
    };
    let result = match &op.kind {
        OpKind::Scratch => Done {
            snapshot: None,
            // No time until a step has one: cached rebuilds stay identical.
            image: ImageState::new(None, options.epoch.map(rfc3339)),
            layers: Vec::new(),
            key: None,
        },
        OpKind::Context { name } => {
            // The first COPY from the context then finds its stat cache
            // records read, while the steps before it ran.
            if name == "context" && copies_from_context(graph) {
                ctx.stat.preload(options.context);
            }
            let is_base = graph
                .graph
                .edges_directed(node, petgraph::Direction::Outgoing)
                .any(|e| *e.weight() == Edge::Parent);
            match options.named_contexts.get(name) {
                // `FROM NAME` of a directory: its files are the stage's root.
                Some((dir, ignore)) if is_base => {
                    run_context_base(ctx, &step, dir, ignore.as_ref())?
                }
                _ => Done {
                    snapshot: None,
                    image: ImageState::new(None, None),
                    layers: Vec::new(),
                    key: None,
                },
            }
        }
        OpKind::Image { reference, .. } => {
            let (id, started) = progress.start(&op.name);
            let d =
                import_image(store, &options.aliases, reference, options.epoch).map_err(where_)?;
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
            let mut d = base.ok_or_else(|| anyhow!("merge without a parent"))?;
            let layer_node = step
                .inputs
                .iter()
                .find(|(_, e)| *e == Edge::Layer)
                .map(|(n, _)| *n)
                .ok_or_else(|| anyhow!("merge without a layer"))?;
            let l = &done[&layer_node];
            // The copy's layer is put on top of the parent: it must exist.
            let mut layers = l.layers.clone();
            let mut config = l.image.config.clone();
            resolve_layers(ctx, &mut layers, &mut config)?;
            for desc in &layers {
                let blob = store.blobs.open_verified(&desc.digest.parse()?)?;
                let snap = store.snapshots.import(d.snapshot.as_deref(), blob)?;
                d.snapshot = Some(snap.id);
                d.layers.push(desc.clone());
            }
            d.key = Some(format!("merge {:?} {:?}", d.key, l.key));
            let rootfs = &config.rootfs.diff_ids;
            if let (Some(h), Some(diff)) = (config.history.last(), rootfs.last()) {
                d.image.config.history.push(h.clone());
                d.image.config.rootfs.diff_ids.push(diff.clone());
            }
            d
        }
    };
    Ok(result)
}

/// A named directory context as a stage's base (`FROM NAME`): its files
/// (its ignore file applied) as the first layer, keyed on their content.
fn run_context_base(
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
    let key = step_key(serde_json::json!({
        "v": 1, "layers": layer_key(ctx.options), "op": "context-base", "content": content,
    }));
    let record = cached_step(ctx, &key, step.skip_cache, None, (id, started), |m| {
        let root = m.root();
        copy(&CopyRequest {
            ignore,
            ..CopyRequest::plain(dir, &all, "/", &root)
        })
        .map_err(|e| where_(e.into()))?;
        Ok(())
    })?;
    let mut d = Done {
        snapshot: None,
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
fn run_mkdir(
    ctx: &Ctx<'_>,
    step: &Step<'_>,
    base: Option<Done>,
    path: &str,
) -> anyhow::Result<Done> {
    let Ctx {
        options, progress, ..
    } = *ctx;
    let Step { op, skip_cache, .. } = *step;
    let where_ = |e: anyhow::Error| step.locate(e);
    let (id, started) = progress.start(&op.name);
    let mut d = base.ok_or_else(|| anyhow!("WORKDIR without a parent"))?;
    // The directories WORKDIR creates belong to the current USER.
    let user = d.image.config.config.user.clone().unwrap_or_default();
    let key = step_key(serde_json::json!({
        "v": 2, "layers": layer_key(options), "op": "mkdir",
        "parent": d.key, "path": path, "user": user, "epoch": options.epoch,
    }));
    let record = cached_step(
        ctx,
        &key,
        skip_cache,
        d.snapshot.as_deref(),
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
                let owner =
                    crate::sandbox::user::resolve(&root, &user).map_err(|e| where_(anyhow!(e)))?;
                for dir in &missing {
                    std::os::unix::fs::lchown(dir, Some(owner.uid), Some(owner.gid))
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

/// RUN: its cache key (command, env, user, workdir, mounts, network,
/// security; proxy args excluded), then the sandbox on a new snapshot.
fn run_exec(
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
                    crate::sandbox::TempDir::new("inline")
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
                            let fresh = crate::sandbox::TempDir::new("cache")
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

/// COPY and ADD: the key from the sources' content digest, then the
/// copy into a new snapshot (or an empty one for `--link`).
fn run_file(
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
    let Step {
        op,
        ref inputs,
        skip_cache,
        ..
    } = *step;
    let where_ = |e: anyhow::Error| step.locate(e);
    let (id, started) = progress.start(&op.name);
    // A --link copy starts from nothing; the merge adds it on top.
    let mut d = match base {
        Some(b) => b,
        None => Done {
            snapshot: None,
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
    let source_key = match &local {
        Some((root, ignore)) => Some(
            crate::copy::content_digest(root, *ignore, &file.sources, key_excludes, Some(stat))
                .map_err(|e| where_(e.into()))?,
        ),
        None => source_node
            .and_then(|n| done.get(&n))
            .and_then(|d| d.key.clone()),
    };
    let link = file.link && file.chmod.is_none();
    // A --link copy does not depend on its parent.
    let parent_key = if link { None } else { d.key.clone() };
    let key = step_key(serde_json::json!({
        "v": 1, "layers": layer_key(options), "op": "file", "parent": parent_key,
        "file": file, "source": source_key,
    }));
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
        &key,
        skip_cache,
        d.snapshot.as_deref(),
        (id, started),
        |m| {
            let reuse = identity.as_ref().zip(m.upper()).map(|(identity, upper)| {
                let earlier = store.index.reuse_get(identity.as_str()).ok().flatten();
                let earlier = earlier.and_then(|(snapshot, manifest)| {
                    Some((store.snapshots.changes_of(&snapshot)?, manifest))
                });
                crate::copy::Reuse::new(upper, earlier)
            });
            let mut view = None;
            let (source_root, ignore) = match (&local, &file.from) {
                (Some((root, ignore)), _) => (root.clone(), *ignore),
                (None, FileSource::Named(name)) => {
                    return Err(where_(anyhow!(
                        "build context {name:?} is not a directory context"
                    )));
                }
                (None, _) => {
                    let s = source_node
                        .and_then(|n| done.get(&n))
                        .ok_or_else(|| where_(anyhow!("copy source not built")))?;
                    let v = store.snapshots.prepare(s.snapshot.as_deref())?;
                    let r = v.root();
                    view = Some(v);
                    (r, None)
                }
            };
            for s in &file.sources {
                if s.contains("://") || s.starts_with("git@") {
                    return Err(where_(anyhow!(
                        "ADD from a URL or git ({s}) is not supported yet"
                    )));
                }
            }
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
            })
            .map_err(|e| where_(e.into()))?;
            drop(view);
            manifest = reuse.map(|r| r.manifest());
            Ok(())
        },
    )?;
    // A failing index costs only the links of the next run.
    if let (Some(identity), Some(manifest)) = (&identity, manifest) {
        let _ = store
            .index
            .reuse_put(identity.as_str(), &record.snapshot, &manifest);
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

/// The stat-cache "context" under which mounted-content digests are kept.
const SNAPSHOT_CONTENT: &str = "snapshot-content";

/// The content digest of `path` in a committed snapshot (the source of a
/// `RUN --mount=from=` bind). Committed snapshots never change and their
/// ids are never reused, so the digest is kept in the index under the
/// snapshot id and computed once, through a read-only view.
fn snapshot_path_digest(
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

/// What of the layer options changes a layer's bytes: part of every key.
fn layer_key(options: &BuildOptions<'_>) -> String {
    // `diff2`: layers hold what BuildKit's differs count as changed (steps
    // recorded before wrote copied-up directories and .wh..opq).
    format!(
        "uncompressed diff2 clamp {:?}",
        options.epoch.filter(|_| options.rewrite_timestamp)
    )
}

/// A snapshot-making step: its record from the cache index under `key`
/// (unless `skip_cache`), else `run` fills a new snapshot on `parent`, which
/// is committed and recorded. The key's lock is held throughout: a step
/// another build is making is waited for, then taken from the cache.
fn cached_step(
    ctx: &Ctx<'_>,
    key: &cache::index::CacheKey,
    skip_cache: bool,
    parent: Option<&str>,
    (id, started): (usize, Instant),
    run: impl FnOnce(&cache::snapshot::MutableSnapshot) -> anyhow::Result<()>,
) -> anyhow::Result<StepRecord> {
    let _lock = ctx.store.index.lock_key(key)?;
    if !skip_cache && let Some(step) = lookup(ctx.store, key)? {
        ctx.progress.cached(id);
        return Ok(step);
    }
    let m = ctx.store.snapshots.prepare(parent)?;
    run(&m)?;
    let (snap, layer, changed) = m.commit_lazy(&ctx.store.blobs, &ctx.layer_options)?;
    let step = match layer {
        Some(layer) => new_step(snap.id, &layer, ctx.options.epoch),
        None => StepRecord {
            snapshot: snap.id,
            layer: None,
            diff_id: None,
            created: rfc3339(ctx.options.epoch.unwrap_or_else(cache::index::now)),
            pending: changed > 0,
            pending_size: changed,
        },
    };
    record(ctx.store, key, &step)?;
    ctx.progress.done(id, started);
    Ok(step)
}

/// A new step's record: its snapshot, its layer (unless empty) and when it
/// was made (SOURCE_DATE_EPOCH when set).
fn new_step(snapshot: String, layer: &cache::layer::Layer, epoch: Option<i64>) -> StepRecord {
    let diff_id = non_empty(layer);
    StepRecord {
        snapshot,
        layer: diff_id.as_ref().map(|_| layer.descriptor.clone()),
        diff_id,
        created: rfc3339(epoch.unwrap_or_else(cache::index::now)),
        pending: false,
        pending_size: 0,
    }
}

/// Writes the pending layer of the step recorded under `key` (once: under
/// the key's lock, another build may have written it meanwhile) and
/// returns its descriptor and diff_id. An empty tar means no layer.
fn write_pending_layer(ctx: &Ctx<'_>, key: &str) -> anyhow::Result<Option<(Descriptor, String)>> {
    let key = cache::index::CacheKey::new(key)?;
    let _lock = ctx.store.index.lock_key(&key)?;
    let step = lookup(ctx.store, &key)?
        .ok_or_else(|| anyhow!("the record of a pending layer ({}) is gone", key.as_str()))?;
    if !step.pending {
        return Ok(step.layer.zip(step.diff_id));
    }
    let layer = ctx
        .store
        .snapshots
        .layer(&step.snapshot, &ctx.store.blobs, &ctx.layer_options)?;
    let done = new_step(step.snapshot, &layer, None);
    let written = StepRecord {
        created: step.created,
        ..done
    };
    record(ctx.store, &key, &written)?;
    Ok(written.layer.zip(written.diff_id))
}

/// Writes the pending layers of an image (the target's) and puts the real
/// descriptors and diff_ids in place of the placeholders.
fn resolve_layers(
    ctx: &Ctx<'_>,
    layers: &mut Vec<Descriptor>,
    config: &mut cache::spec::ImageConfig,
) -> anyhow::Result<()> {
    let mut resolved: BTreeMap<String, Option<(Descriptor, String)>> = BTreeMap::new();
    for l in layers.iter() {
        if let Some(key) = l.digest.strip_prefix("pending:")
            && !resolved.contains_key(&l.digest)
        {
            resolved.insert(l.digest.clone(), write_pending_layer(ctx, key)?);
        }
    }
    if resolved.is_empty() {
        return Ok(());
    }
    let mut out = Vec::with_capacity(layers.len());
    for l in layers.drain(..) {
        match resolved.get(&l.digest) {
            Some(Some((d, _))) => out.push(d.clone()),
            Some(None) => {}
            None => out.push(l),
        }
    }
    *layers = out;
    // A step whose changes came to an empty tar adds no layer: its history
    // entry says so (history entries with a layer pair with diff_ids in
    // order).
    let mut diff_ids_in_order = config.rootfs.diff_ids.iter();
    for h in config.history.iter_mut().filter(|h| !h.empty_layer) {
        match diff_ids_in_order.next() {
            Some(d) if matches!(resolved.get(d), Some(None)) => h.empty_layer = true,
            Some(_) => {}
            None => break,
        }
    }
    let diff_ids = std::mem::take(&mut config.rootfs.diff_ids);
    config.rootfs.diff_ids = diff_ids
        .into_iter()
        .filter_map(|d| match resolved.get(&d) {
            Some(Some((_, diff_id))) => Some(diff_id.clone()),
            Some(None) => None,
            None => Some(d),
        })
        .collect();
    Ok(())
}

/// The local directory a bind mount shows, with its ignore file: the
/// build context (no `from=`), or a named directory context.
fn local_bind_source<'c>(
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

/// An empty tar (two zero blocks) is no layer.
fn non_empty(layer: &cache::layer::Layer) -> Option<String> {
    (layer.uncompressed_size > 1024).then(|| layer.diff_id.to_string())
}

/// The directory of a cache mount and the lock that keeps it while the
/// step runs. `shared` (the default) lets any number of steps use it at
/// once; `locked` waits until no other step holds it; `private` takes the
/// first copy no other step holds (`ID`, `ID.1`, `ID.2`, ...), as BuildKit
/// makes a new one when the mount is in use.
fn cache_mount_dir(
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
fn give_new_cache(dir: &Path, owner: Option<(u32, u32, u32)>) -> anyhow::Result<()> {
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
fn cache_subdir(cache: &Path, source: &str) -> anyhow::Result<PathBuf> {
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
fn seed_cache_mount(
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
fn secret_id(mount: &frontend::instructions::Mount) -> String {
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
fn secret_for<'s>(
    mount: &frontend::instructions::Mount,
    secrets: &'s crate::secrets::Secrets,
) -> Option<(String, &'s [u8])> {
    let id = secret_id(mount);
    let value = secrets.get(&id)?;
    Some((id, value.as_slice()))
}

/// A cache-mount id as a directory name.
fn hex_name(id: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    for b in id.bytes() {
        let _ = write!(out, "{b:02x}");
    }
    if out.is_empty() { "00".into() } else { out }
}

/// Imports a local image's layers as snapshots (once per chain id).
fn import_image(
    store: &Store,
    aliases: &crate::images::Aliases,
    reference: &str,
    epoch: Option<i64>,
) -> anyhow::Result<Done> {
    let Some(img) = crate::images::find_with(&store.blobs, aliases, reference)? else {
        bail!(
            "image {reference} is not in the local image store (pulling from a registry is not supported yet; see `rbuild images`)"
        );
    };
    let (manifest, config) = crate::images::read(&store.blobs, &img)?;
    let mut parent: Option<String> = None;
    let mut diff_ids: Vec<cache::Digest> = Vec::new();
    for (layer, diff_id) in manifest.layers.iter().zip(&config.rootfs.diff_ids) {
        diff_ids.push(diff_id.parse()?);
        let chain = cache::layer::chain_id(&diff_ids)
            .expect("at least one")
            .to_string();
        if let Some(snap) = store.index.snapshot_for_chain(&chain)?
            && store.snapshots.get(&snap).is_ok()
        {
            parent = Some(snap);
            continue;
        }
        let blob = store.blobs.open_verified(&layer.digest.parse()?)?;
        let snap = store.snapshots.import(parent.as_deref(), blob)?;
        store.index.set_snapshot_for_chain(&chain, &snap.id)?;
        parent = Some(snap.id);
    }
    // Times from here on: SOURCE_DATE_EPOCH when set (BuildKit stamps the
    // image and every new history entry with it); else the base's until a
    // step has one, so a cached rebuild keeps its image id.
    let created = epoch.map(rfc3339).or_else(|| config.created.clone());
    Ok(Done {
        snapshot: parent,
        layers: manifest.layers,
        image: ImageState::new(Some(config.clone()), created),
        key: Some(format!("image {}", img.manifest.digest)),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_dates() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(super::rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }
}
