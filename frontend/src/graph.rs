//! The build graph: what a build runs, as a petgraph of [`Op`]s.
//!
//! [`compile`] walks the stages the target needs (see [`crate::stage`]) in
//! file order and turns each instruction into an op with its words expanded
//! in the stage's scope: sources (scratch, images, the build context, named
//! contexts), execs (RUN), file ops (COPY/ADD, WORKDIR), merges (COPY
//! --link puts its layer on the parent instead of depending on it) and
//! config-only changes (ENV, LABEL, CMD, ...). Edges say which op's result
//! another op reads. Nothing here runs anything; the builder solves the
//! graph.

use std::collections::BTreeMap;
use std::fmt::Write;

use petgraph::Direction;
use petgraph::stable_graph::{NodeIndex, StableDiGraph};
use petgraph::visit::{EdgeRef, IntoEdgeReferences};
use serde::Serialize;
use serde_json::json;

use crate::instructions::expose::{ExposeFindings, parse_ports};
use crate::instructions::{
    self, HealthConfig, Healthcheck, Kind, Mount, Network, Security, SourceContent,
};
use crate::shell::Lex;
use crate::span::Span;
use crate::stage::{Base, EnvList, Plan, PlanError, Source, StageEnv, parse_trigger};

/// What the base image of a stage brings (from its config).
#[derive(Debug, Clone, Default)]
pub struct BaseConfig {
    /// `Env`.
    pub env: Vec<(String, String)>,
    /// `WorkingDir`.
    pub workdir: String,
    /// `User`.
    pub user: String,
    /// `Shell`.
    pub shell: Vec<String>,
    /// `OnBuild` triggers.
    pub onbuild: Vec<String>,
    /// The platform the image is for, when its config says.
    pub platform: Option<crate::stage::Platform>,
}

/// Looks up image configs for FROM lines; the builder backs it with its
/// image store. Without one, images are assumed to bring nothing.
pub trait ImageConfigs {
    /// The config of `reference`'s image for `platform`, if known.
    fn config(&self, reference: &str, platform: &crate::stage::Platform) -> Option<BaseConfig>;
}

/// No image store: every image is empty.
pub struct NoImages;

impl ImageConfigs for NoImages {
    fn config(&self, _: &str, _: &crate::stage::Platform) -> Option<BaseConfig> {
        None
    }
}

/// A RUN, expanded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExecOp {
    /// The argv (shell form already wrapped in the stage's SHELL).
    pub args: Vec<String>,
    /// Environment: the image's ENV and the stage's ARG values.
    pub env: Vec<String>,
    /// Working directory.
    pub workdir: String,
    /// `USER`, unresolved (`name[:group]` or ids); empty is root.
    pub user: String,
    /// `--mount`s, expanded.
    pub mounts: Vec<Mount>,
    /// `--network`.
    pub network: Network,
    /// `--security`.
    pub security: Security,
    /// The stage's ARGs in declaration order (a base stage's first) with
    /// their values: BuildKit prefixes RUN's history with them.
    pub build_args: Vec<(String, String)>,
    /// Files the command needs mounted read-only: a heredoc with a
    /// shebang becomes an executable `/dev/pipes/<name>`.
    pub inline_files: Vec<InlineFile>,
    /// The sandbox's hostname when the build sets one (else BuildKit's
    /// `buildkitsandbox`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// `--add-host` entries for `/etc/hosts`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub extra_hosts: Vec<crate::hosts::ExtraHost>,
    /// `--ulimit`s.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ulimits: Vec<crate::limits::Ulimit>,
    /// `--shm-size`: a `/dev/shm` of this size.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shm_size: Option<crate::limits::ShmSize>,
    /// Per mount, the node it reads from (`from=`, or the context for a
    /// bind without one); the same nodes are the op's `Mount` inputs.
    #[serde(skip)]
    pub mount_sources: Vec<Option<NodeIndex>>,
}

/// A file made from a RUN heredoc, mounted for the command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InlineFile {
    /// Absolute path inside the sandbox.
    pub path: String,
    /// Content.
    pub data: String,
    /// Permission bits.
    pub mode: u32,
}

/// RUN's argv and inline files, as BuildKit's `dispatchRun` makes them from
/// heredocs: one heredoc alone runs its body with the shell, or (with a
/// shebang) as an executable file; anything else is passed to the shell
/// with the bodies put back in place. Returns the progress-name suffix.
fn run_command(
    command: &instructions::CommandLine,
    shell: &[String],
) -> Result<(Vec<String>, Vec<InlineFile>, String), String> {
    let mut args = command.args.clone();
    let mut inline = Vec::new();
    let mut suffix = String::new();
    if !command.files.is_empty() {
        if args.len() != 1 || !command.prepend_shell {
            return Err(format!("parsing produced an invalid run command: {args:?}"));
        }
        if matches!(crate::parser::parse_heredoc(&args[0]), Ok(Some(_))) {
            let file = &command.files[0];
            let data = if file.chomp {
                crate::parser::chomp(&file.data)
            } else {
                file.data.clone()
            };
            if data.starts_with("#!") {
                let path = format!("/dev/pipes/{}", file.name);
                inline.push(InlineFile {
                    path: path.clone(),
                    data,
                    mode: 0o755,
                });
                args = vec![path];
            } else {
                args = vec![data];
            }
            suffix = format!(" ({})", summarize_heredoc(&file.data));
        } else {
            let mut full = args[0].clone();
            for f in &command.files {
                full.push('\n');
                full.push_str(&f.data);
                full.push_str(&f.name);
            }
            args = vec![full];
        }
    }
    if command.prepend_shell {
        let mut full = shell.to_vec();
        full.extend(args);
        args = full;
    }
    Ok((args, inline, suffix))
}

/// The first line of a heredoc, with `...` when there are more.
fn summarize_heredoc(doc: &str) -> String {
    let doc = doc.trim().replace("\r\n", "\n");
    let mut lines = doc.split('\n');
    let first = lines.next().unwrap_or_default().to_string();
    if lines.next().is_some() {
        format!("{first}...")
    } else {
        first
    }
}

/// Where a file op reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", content = "name", rename_all = "lowercase")]
pub enum FileSource {
    /// The main build context.
    Context,
    /// A named `--build-context`.
    Named(String),
    /// A stage's result.
    Stage(usize),
    /// An image.
    Image(String),
}

/// A COPY or ADD, expanded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileOp {
    /// ADD (archives, URLs, git) rather than COPY.
    pub add: bool,
    /// Source paths or URLs.
    pub sources: Vec<String>,
    /// Heredoc files `(name, data)`.
    pub contents: Vec<(String, String)>,
    /// Destination, absolute; a trailing `/` is kept (it means a directory).
    pub dest: String,
    /// The destination as written (expanded, not resolved): history uses it.
    pub dest_written: String,
    /// Where the sources are read.
    pub from: FileSource,
    /// `--chown`, expanded.
    pub chown: Option<String>,
    /// `--chmod`, expanded.
    pub chmod: Option<String>,
    /// `--link`.
    pub link: bool,
    /// `--parents`.
    pub parents: bool,
    /// `--exclude` patterns, expanded.
    pub excludes: Vec<String>,
    /// ADD `--keep-git-dir`.
    pub keep_git_dir: Option<bool>,
    /// ADD `--checksum`, expanded.
    pub checksum: Option<String>,
    /// ADD `--unpack`.
    pub unpack: Option<bool>,
}

/// An image-config change that makes no layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "instruction", content = "value", rename_all = "UPPERCASE")]
pub enum ConfigChange {
    /// `ENV`, expanded pairs.
    Env(Vec<(String, String)>),
    /// `LABEL`, expanded pairs.
    Label(Vec<(String, String)>),
    /// `ARG`, values as resolved.
    Arg(Vec<(String, Option<String>)>),
    /// `CMD`.
    Cmd(Vec<String>),
    /// `ENTRYPOINT`.
    Entrypoint(Vec<String>),
    /// `EXPOSE`: `port/proto` keys.
    Expose(Vec<String>),
    /// `VOLUME` paths.
    Volume(Vec<String>),
    /// `USER`.
    User(String),
    /// `STOPSIGNAL`.
    Stopsignal(String),
    /// `HEALTHCHECK`: the test (empty for NONE) and timings in ns.
    Healthcheck(Option<HealthcheckValue>),
    /// `SHELL`.
    Shell(Vec<String>),
    /// `ONBUILD` expression.
    Onbuild(String),
    /// `MAINTAINER`.
    Maintainer(String),
}

/// `HEALTHCHECK CMD ...` in the config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthcheckValue {
    /// `["CMD", ...]` or `["CMD-SHELL", "..."]`.
    pub test: Vec<String>,
    /// Nanoseconds.
    pub interval: i64,
    /// Nanoseconds.
    pub timeout: i64,
    /// Nanoseconds.
    pub start_period: i64,
    /// Nanoseconds.
    pub start_interval: i64,
    /// Retries.
    pub retries: i32,
}

/// What an op does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum OpKind {
    /// An empty filesystem.
    Scratch,
    /// An image's filesystem.
    Image {
        /// The reference.
        reference: String,
        /// `FROM --platform`.
        platform: Option<String>,
    },
    /// The main build context (`name` = "context") or a named one.
    Context {
        /// The name.
        name: String,
    },
    /// RUN.
    Exec(ExecOp),
    /// COPY/ADD.
    File(FileOp),
    /// WORKDIR: make the directory.
    Mkdir {
        /// Absolute path.
        path: String,
    },
    /// `COPY --link`: the copy's layer put on top of the parent.
    Merge,
    /// A config-only change.
    Config(ConfigChange),
}

/// One vertex of the graph.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Op {
    /// What it does.
    #[serde(flatten)]
    pub kind: OpKind,
    /// The progress name, as BuildKit shows it (`[build 2/4] RUN make`).
    pub name: String,
    /// The stage it belongs to, if any.
    pub stage: Option<usize>,
    /// The Dockerfile instruction it comes from.
    #[serde(skip)]
    pub span: Option<Span>,
}

/// How one op uses another's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Edge {
    /// The filesystem this op starts from.
    Parent,
    /// Files copied from it.
    Source,
    /// Mounted into a RUN.
    Mount,
    /// A layer merged onto the parent (`--link`).
    Layer,
}

/// The stages' ops, in a graph.
#[derive(Debug, Clone)]
pub struct BuildGraph {
    /// Ops and edges (edge from input to user).
    pub graph: StableDiGraph<Op, Edge>,
    /// The last op of each compiled stage, by stage index.
    pub stage_results: BTreeMap<usize, NodeIndex>,
    /// The target stage's last op.
    pub target: NodeIndex,
    /// Final scope of each compiled stage (image Env, workdir).
    pub stage_envs: BTreeMap<usize, StageEnv>,
    /// The platform each compiled stage is for: its `FROM --platform`,
    /// else the target platform. Its steps run for it (emulated when it
    /// is not the host's) and its results are keyed with it.
    pub stage_platforms: BTreeMap<usize, crate::stage::Platform>,
    /// The target platform (`--platform`, else the host's).
    pub platform: crate::stage::Platform,
}

struct Compiler<'a> {
    plan: &'a Plan,
    lex: Lex,
    graph: StableDiGraph<Op, Edge>,
    sources: BTreeMap<String, NodeIndex>,
    stage_results: BTreeMap<usize, NodeIndex>,
    stage_envs: BTreeMap<usize, StageEnv>,
    stage_meta: BTreeMap<usize, (String, Vec<String>)>,
    /// Bytes of environment the RUN steps carry so far (each has all of
    /// its stage's variables): bounded by [`MAX_RUN_ENV`].
    run_env_bytes: usize,
}

/// The most environment all RUN steps of a build may carry together. A
/// file of many ENV lines each followed by a RUN makes it grow with the
/// square of its length; past this it is refused, not run out of memory.
pub const MAX_RUN_ENV: usize = 128 << 20;

/// Compiles the stages the plan's target needs.
pub fn compile(plan: &Plan, images: &dyn ImageConfigs) -> Result<BuildGraph, PlanError> {
    let mut c = Compiler {
        plan,
        lex: Lex::new(plan.escape),
        graph: StableDiGraph::new(),
        sources: BTreeMap::new(),
        stage_results: BTreeMap::new(),
        stage_envs: BTreeMap::new(),
        stage_meta: BTreeMap::new(),
        run_env_bytes: 0,
    };
    let single = plan.stages.len() == 1;
    for &s in &plan.needed {
        c.compile_stage(s, single, images)?;
    }
    let target = c.stage_results[&plan.target];
    let stage_platforms = c
        .stage_results
        .keys()
        .map(|&i| (i, plan.stage_platform(i)))
        .collect();
    Ok(BuildGraph {
        graph: c.graph,
        stage_results: c.stage_results,
        target,
        stage_envs: c.stage_envs,
        stage_platforms,
        platform: plan.platform.clone(),
    })
}

fn err(span: &Span, message: impl Into<String>) -> PlanError {
    PlanError::At {
        message: message.into(),
        span: span.clone(),
    }
}

impl Compiler<'_> {
    fn source_node(&mut self, key: String, kind: OpKind, name: String) -> NodeIndex {
        if let Some(&n) = self.sources.get(&key) {
            return n;
        }
        let n = self.graph.add_node(Op {
            kind,
            name,
            stage: None,
            span: None,
        });
        self.sources.insert(key, n);
        n
    }

    fn context_node(&mut self, name: &str) -> NodeIndex {
        let label = if name == "context" {
            "[internal] load build context".to_string()
        } else {
            format!("[context {name}] load from client")
        };
        self.source_node(
            format!("context:{name}"),
            OpKind::Context {
                name: name.to_string(),
            },
            label,
        )
    }

    fn image_node(&mut self, reference: &str, platform: Option<String>) -> NodeIndex {
        self.source_node(
            format!("image:{reference}"),
            OpKind::Image {
                reference: reference.to_string(),
                platform,
            },
            format!("[internal] load metadata for {reference}"),
        )
    }

    fn file_source(&mut self, source: &Source) -> (FileSource, NodeIndex) {
        match source {
            Source::Stage(s) => (FileSource::Stage(*s), self.stage_results[s]),
            Source::Context(n) => (FileSource::Named(n.clone()), self.context_node(n)),
            Source::Image(r) => (FileSource::Image(r.clone()), self.image_node(r, None)),
        }
    }

    /// Resolves a `--from` word as the planner did.
    fn resolve(&mut self, from: &str, span: &Span) -> Result<(FileSource, NodeIndex), PlanError> {
        let names: BTreeMap<String, usize> = self
            .plan
            .stages
            .iter()
            .filter_map(|s| s.name.clone().map(|n| (n, s.index)))
            .collect();
        let options = crate::stage::PlanOptions {
            named_contexts: self.plan.named_contexts.clone(),
            ..Default::default()
        };
        let source = crate::stage::resolve_source(&self.lex, from, &names, &options, span)?;
        if let Source::Stage(s) = source
            && !self.stage_results.contains_key(&s)
        {
            return Err(err(
                span,
                format!(
                    "stage {} is used here but is not built before this instruction",
                    self.plan
                        .stages
                        .get(s)
                        .map_or(s.to_string(), |st| st.display_name())
                ),
            ));
        }
        Ok(self.file_source(&source))
    }

    fn compile_stage(
        &mut self,
        index: usize,
        single: bool,
        images: &dyn ImageConfigs,
    ) -> Result<(), PlanError> {
        let stage = &self.plan.stages[index];
        let stage_name = if single {
            String::new()
        } else {
            stage.display_name()
        };

        // Where the stage starts, and the scope it inherits.
        let (mut parent, mut env, mut user, mut shell, image_triggers) = match &stage.base {
            Base::Scratch => {
                let n = self.source_node("scratch".into(), OpKind::Scratch, "scratch".into());
                (
                    n,
                    StageEnv::new(&[], "/"),
                    String::new(),
                    Vec::new(),
                    Vec::new(),
                )
            }
            Base::Stage(b) => {
                let (user, shell) = self.stage_meta[b].clone();
                (
                    self.stage_results[b],
                    self.stage_envs[b].clone(),
                    user,
                    shell,
                    Vec::new(),
                )
            }
            Base::Context(name) => (
                self.context_node(name),
                StageEnv::new(&[], "/"),
                String::new(),
                Vec::new(),
                Vec::new(),
            ),
            Base::Image(reference) => {
                let platform = stage.platform.as_ref().map(|p| p.to_string());
                let n = self.image_node(reference, platform);
                let cfg = images
                    .config(reference, &self.plan.stage_platform(index))
                    .unwrap_or_default();
                (
                    n,
                    StageEnv::new(&cfg.env, &cfg.workdir),
                    cfg.user,
                    cfg.shell,
                    cfg.onbuild,
                )
            }
        };
        if shell.is_empty() {
            shell = vec!["/bin/sh".into(), "-c".into()];
        }
        // The base image's own ONBUILD triggers run first.
        let mut body = Vec::new();
        for t in &image_triggers {
            body.push(parse_trigger(t, &stage.span)?);
        }
        body.extend(stage.instructions.iter().cloned());

        // BuildKit numbers FROM (when it pulls something) and the
        // instructions that make a layer.
        let from_counts = !matches!(stage.base, Base::Scratch | Base::Stage(_));
        let total = usize::from(from_counts)
            + body
                .iter()
                .filter(|i| {
                    matches!(
                        i.kind,
                        Kind::Run(_) | Kind::Copy(_) | Kind::Add(_) | Kind::Workdir(_)
                    )
                })
                .count();
        let width = total.to_string().len();
        let mut counter = 0;
        let mut name = |text: &str| {
            if total == 0 {
                return text.to_string();
            }
            counter += 1;
            let prefix = if stage_name.is_empty() {
                String::new()
            } else {
                format!("{stage_name} ")
            };
            format!("[{prefix}{counter:>width$}/{total}] {text}")
        };
        if from_counts {
            let n = name(&format!("FROM {}", stage.base_expanded));
            self.graph[parent].name = n;
        }

        let global = EnvList::from_entries(&self.plan.global_args);
        for ins in &body {
            let span = ins.span.clone();
            let text = ins.original.trim().to_string();
            let bad = |e: String| err(&span, e);
            let lex = &self.lex.clone();
            let op = |kind: OpKind, name: String| Op {
                kind,
                name,
                stage: Some(index),
                span: Some(span.clone()),
            };
            match &ins.kind {
                Kind::From(_) => unreachable!("FROM starts a stage"),
                Kind::Run(run) => {
                    let mut mounts = Vec::new();
                    let mut mount_inputs = Vec::new();
                    for m in &run.mounts {
                        let mut mount = instructions::parse_mount(m, &mut |v| env.expand(lex, v))
                            .map_err(&bad)?;
                        if mount.mount_type == instructions::MountType::Cache {
                            // BuildKit's persistent id: namespace "/" id (or target).
                            let ns = self
                                .plan
                                .build_args
                                .get("BUILDKIT_CACHE_MOUNT_NS")
                                .cloned()
                                .unwrap_or_default();
                            mount.id = mount.effective_id().map(|id| format!("{ns}/{id}"));
                        }
                        mount_inputs.push(mount.from.clone());
                        mounts.push(mount);
                    }
                    let (args, inline_files, suffix) =
                        run_command(&run.command, &shell).map_err(&bad)?;
                    let run_env = env.scope.to_strings();
                    self.run_env_bytes += run_env.iter().map(|e| e.len() + 24).sum::<usize>();
                    if self.run_env_bytes > MAX_RUN_ENV {
                        return Err(bad(format!(
                            "the RUN steps up to here carry over {} MiB of environment \
                             ({} variables in this one): the Dockerfile is too large to build",
                            MAX_RUN_ENV >> 20,
                            run_env.len()
                        )));
                    }
                    let exec = ExecOp {
                        args,
                        env: run_env,
                        workdir: env.workdir.clone(),
                        user: user.clone(),
                        mounts: mounts.clone(),
                        network: run.network,
                        security: run.security,
                        inline_files,
                        hostname: self.plan.hostname.clone(),
                        extra_hosts: self.plan.extra_hosts.clone(),
                        ulimits: self.plan.ulimits.clone(),
                        shm_size: self.plan.shm_size,
                        mount_sources: Vec::new(),
                        build_args: env
                            .args
                            .iter()
                            .map(|(k, v)| {
                                let value = env.scope.get(k).map(str::to_string);
                                (k.clone(), value.or_else(|| v.clone()).unwrap_or_default())
                            })
                            .collect(),
                    };
                    let n = self
                        .graph
                        .add_node(op(OpKind::Exec(exec), name(&format!("{text}{suffix}"))));
                    self.graph.add_edge(parent, n, Edge::Parent);
                    let mut sources = Vec::new();
                    for (mount, from) in mounts.iter().zip(mount_inputs) {
                        let input = match (&from, mount.mount_type) {
                            (Some(f), _) => Some(self.resolve(f, &span)?.1),
                            (None, instructions::MountType::Bind) => {
                                Some(self.context_node("context"))
                            }
                            (None, _) => None,
                        };
                        if let Some(input) = input {
                            self.graph.add_edge(input, n, Edge::Mount);
                        }
                        sources.push(input);
                    }
                    if let OpKind::Exec(e) = &mut self.graph[n].kind {
                        e.mount_sources = sources;
                    }
                    parent = n;
                }
                Kind::Copy(_) | Kind::Add(_) => {
                    let (
                        files,
                        add,
                        from,
                        chown,
                        chmod,
                        link,
                        parents,
                        excludes,
                        keep_git_dir,
                        checksum,
                        unpack,
                    ) = match &ins.kind {
                        Kind::Copy(c) => (
                            &c.files,
                            false,
                            c.from.clone(),
                            &c.chown,
                            &c.chmod,
                            c.link,
                            c.parents,
                            &c.excludes,
                            None,
                            None,
                            None,
                        ),
                        Kind::Add(a) => (
                            &a.files,
                            true,
                            None,
                            &a.chown,
                            &a.chmod,
                            a.link,
                            false,
                            &a.excludes,
                            a.keep_git_dir,
                            a.checksum.clone(),
                            a.unpack,
                        ),
                        _ => unreachable!(),
                    };
                    let expand_opt =
                        |v: &Option<String>| v.as_ref().map(|s| env.expand(lex, s)).transpose();
                    let mut sources = Vec::new();
                    for s in &files.sources {
                        sources.push(env.expand(lex, s).map_err(&bad)?);
                    }
                    let contents = files
                        .contents
                        .iter()
                        .map(|c| expand_heredoc(c, &env))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(&bad)?;
                    let dest_word = env.expand(lex, &files.dest).map_err(&bad)?;
                    let mut dest = crate::stage::resolve_path(&env.workdir, &dest_word);
                    // `.`, empty and `dir/` name a directory (BuildKit adds
                    // the slash), which matters where it does not exist yet
                    // (`COPY --link f .` starts from scratch).
                    let names_dir =
                        dest_word.is_empty() || dest_word == "." || dest_word.ends_with('/');
                    if names_dir && !dest.ends_with('/') {
                        dest.push('/');
                    }
                    // Heredoc-only copies read nothing.
                    let (from_source, input) = match &from {
                        Some(f) => {
                            let (s, n) = self.resolve(f, &span)?;
                            (s, Some(n))
                        }
                        None if files.sources.is_empty() => (FileSource::Context, None),
                        None => (FileSource::Context, Some(self.context_node("context"))),
                    };
                    let chmod = expand_opt(chmod).map_err(&bad)?;
                    if let Some(c) = &chmod {
                        instructions::chmod::Chmod::parse(c).map_err(&bad)?;
                    }
                    let checksum = expand_opt(&checksum).map_err(&bad)?;
                    if checksum.is_some() {
                        if sources.len() != 1 {
                            return Err(bad(
                                "checksum can't be specified for multiple sources".into()
                            ));
                        }
                        let src = &sources[0];
                        let http = src.starts_with("http://") || src.starts_with("https://");
                        if !http && crate::gitref::parse_git_ref(src).is_err() {
                            return Err(bad("checksum requires HTTP(S) or Git sources".into()));
                        }
                    }
                    let file_op = FileOp {
                        add,
                        sources,
                        contents,
                        dest,
                        dest_written: dest_word.clone(),
                        from: from_source,
                        chown: expand_opt(chown).map_err(&bad)?,
                        chmod: chmod.clone(),
                        link,
                        parents,
                        excludes: excludes
                            .iter()
                            .map(|e| env.expand(lex, e))
                            .collect::<Result<_, _>>()
                            .map_err(&bad)?,
                        keep_git_dir,
                        checksum,
                        unpack,
                    };
                    let label = name(&text);
                    // BuildKit merges a --link copy only without --chmod.
                    if link && chmod.is_none() {
                        // The copy is made on an empty tree, then merged.
                        let n = self
                            .graph
                            .add_node(op(OpKind::File(file_op), label.clone()));
                        if let Some(input) = input {
                            self.graph.add_edge(input, n, Edge::Source);
                        }
                        let m = self
                            .graph
                            .add_node(op(OpKind::Merge, format!("{label} (merge)")));
                        self.graph.add_edge(parent, m, Edge::Parent);
                        self.graph.add_edge(n, m, Edge::Layer);
                        parent = m;
                    } else {
                        let n = self.graph.add_node(op(OpKind::File(file_op), label));
                        self.graph.add_edge(parent, n, Edge::Parent);
                        if let Some(input) = input {
                            self.graph.add_edge(input, n, Edge::Source);
                        }
                        parent = n;
                    }
                }
                Kind::Workdir(path) => {
                    let path = env.apply_workdir(lex, path).map_err(&bad)?;
                    let n = self.graph.add_node(op(OpKind::Mkdir { path }, name(&text)));
                    self.graph.add_edge(parent, n, Edge::Parent);
                    parent = n;
                }
                other => {
                    let change = match other {
                        Kind::Env(pairs) => {
                            ConfigChange::Env(env.apply_env(lex, pairs).map_err(&bad)?)
                        }
                        Kind::Label(pairs) => ConfigChange::Label(
                            pairs
                                .iter()
                                .map(|kv| {
                                    Ok((env.expand(lex, &kv.key)?, env.expand(lex, &kv.value)?))
                                })
                                .collect::<Result<_, String>>()
                                .map_err(&bad)?,
                        ),
                        Kind::Arg(defs) => ConfigChange::Arg(
                            env.apply_arg(lex, defs, &self.plan.build_args, &global)
                                .map_err(&bad)?,
                        ),
                        Kind::Cmd(c) => ConfigChange::Cmd(with_shell(&shell, c)),
                        Kind::Entrypoint(c) => ConfigChange::Entrypoint(with_shell(&shell, c)),
                        Kind::Expose(specs) => {
                            let mut words = Vec::new();
                            for s in specs {
                                words.extend(
                                    lex.process_words(s, &env.scope)
                                        .map_err(|e| bad(e.to_string()))?,
                                );
                            }
                            let mut lint = ExposeFindings::default();
                            let ports = parse_ports(&words, &mut lint).map_err(&bad)?;
                            ConfigChange::Expose(ports)
                        }
                        Kind::Volume(v) => ConfigChange::Volume(
                            v.iter()
                                .map(|p| env.expand(lex, p))
                                .collect::<Result<_, _>>()
                                .map_err(&bad)?,
                        ),
                        Kind::User(u) => {
                            user = env.expand(lex, u).map_err(&bad)?;
                            ConfigChange::User(user.clone())
                        }
                        Kind::StopSignal(s) => {
                            ConfigChange::Stopsignal(env.expand(lex, s).map_err(&bad)?)
                        }
                        Kind::Healthcheck(Healthcheck::None) => ConfigChange::Healthcheck(None),
                        Kind::Healthcheck(Healthcheck::Check(h)) => {
                            ConfigChange::Healthcheck(Some(health(h)))
                        }
                        Kind::Shell(s) => {
                            shell = s.clone();
                            ConfigChange::Shell(s.clone())
                        }
                        Kind::OnBuild(o) => ConfigChange::Onbuild(o.expression.clone()),
                        Kind::Maintainer(m) => ConfigChange::Maintainer(m.clone()),
                        Kind::From(_)
                        | Kind::Run(_)
                        | Kind::Copy(_)
                        | Kind::Add(_)
                        | Kind::Workdir(_) => {
                            unreachable!("handled above")
                        }
                    };
                    let n = self
                        .graph
                        .add_node(op(OpKind::Config(change), text.clone()));
                    self.graph.add_edge(parent, n, Edge::Parent);
                    parent = n;
                }
            }
        }
        self.stage_results.insert(index, parent);
        self.stage_envs.insert(index, env);
        self.stage_meta.insert(index, (user, shell));
        Ok(())
    }
}

/// Heredoc sources of COPY/ADD: expanded (quotes kept) unless the delimiter was quoted.
fn expand_heredoc(c: &SourceContent, env: &StageEnv) -> Result<(String, String), String> {
    if !c.expand {
        return Ok((c.path.clone(), c.data.clone()));
    }
    let mut lex = Lex::new('\\');
    lex.skip_process_quotes = true;
    Ok((c.path.clone(), env.expand(&lex, &c.data)?))
}

fn with_shell(shell: &[String], c: &instructions::CommandLine) -> Vec<String> {
    if c.prepend_shell && !c.args.is_empty() {
        let mut out = shell.to_vec();
        out.extend(c.args.iter().cloned());
        out
    } else {
        c.args.clone()
    }
}

fn health(h: &HealthConfig) -> HealthcheckValue {
    HealthcheckValue {
        test: h.test.clone(),
        interval: h.interval,
        timeout: h.timeout,
        start_period: h.start_period,
        start_interval: h.start_interval,
        retries: h.retries,
    }
}

impl EnvList {
    /// An environment from ordered pairs.
    pub fn from_entries(entries: &[(String, String)]) -> EnvList {
        let mut env = EnvList::default();
        for (k, v) in entries {
            env.set(k, v);
        }
        env
    }
}

impl BuildGraph {
    /// Names each step as BuildKit does in a build for several platforms:
    /// with the platform its stage is for, and the target's after `->`
    /// when they differ (`[linux/arm64 build 2/4] RUN make`, `[linux/amd64->arm64
    /// tools 1/2] COPY`, `[linux/arm64 internal] load metadata for ...`).
    pub fn name_platform(&mut self) {
        let target = self.platform.clone();
        for op in self.graph.node_weights_mut() {
            let platform = match (&op.kind, op.stage) {
                (
                    OpKind::Image {
                        platform: Some(p), ..
                    },
                    _,
                ) => crate::stage::Platform::parse(p).unwrap_or_else(|_| target.clone()),
                (OpKind::Image { .. }, _) => target.clone(),
                (_, Some(s)) => self
                    .stage_platforms
                    .get(&s)
                    .cloned()
                    .unwrap_or_else(|| target.clone()),
                (_, None) => continue,
            };
            let Some(rest) = op.name.strip_prefix('[') else {
                continue;
            };
            let shown = if platform == target {
                platform.to_string()
            } else if platform.os == target.os {
                let arch = target.to_string();
                let arch = arch.split_once('/').map_or(arch.as_str(), |(_, a)| a);
                format!("{platform}->{arch}")
            } else {
                format!("{platform}->{target}")
            };
            op.name = format!("[{shown} {rest}");
        }
    }

    /// Nodes in an order where every op comes after its inputs.
    pub fn topological(&self) -> Vec<NodeIndex> {
        petgraph::algo::toposort(&self.graph, None).expect("the build graph has no cycles")
    }

    /// The graph as JSON: `{"nodes": [...], "edges": [...], "target": n}`.
    pub fn to_json(&self) -> serde_json::Value {
        let order = self.topological();
        let ids: BTreeMap<NodeIndex, usize> =
            order.iter().enumerate().map(|(i, n)| (*n, i)).collect();
        let nodes: Vec<serde_json::Value> = order
            .iter()
            .map(|n| {
                let op = &self.graph[*n];
                let mut v = serde_json::to_value(op).expect("ops serialize");
                v["id"] = json!(ids[n]);
                if let Some(s) = &op.span {
                    v["line"] = json!(s.start_line);
                }
                v
            })
            .collect();
        let mut edges: Vec<serde_json::Value> = (&self.graph)
            .edge_references()
            .map(|e| json!({"from": ids[&e.source()], "to": ids[&e.target()], "kind": e.weight()}))
            .collect();
        edges.sort_by_key(|e| (e["to"].as_u64(), e["from"].as_u64()));
        json!({"nodes": nodes, "edges": edges, "target": ids[&self.target]})
    }

    /// The graph in Graphviz DOT.
    pub fn to_dot(&self) -> String {
        let order = self.topological();
        let ids: BTreeMap<NodeIndex, usize> =
            order.iter().enumerate().map(|(i, n)| (*n, i)).collect();
        let mut out = String::from(
            "digraph build {\n  rankdir=TB;\n  node [shape=box, fontname=\"monospace\"];\n",
        );
        for n in &order {
            let op = &self.graph[*n];
            let shape = match op.kind {
                OpKind::Scratch | OpKind::Image { .. } | OpKind::Context { .. } => {
                    ", shape=ellipse"
                }
                OpKind::Config(_) => ", style=dashed",
                _ => "",
            };
            let peripheries = if *n == self.target {
                ", peripheries=2"
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "  n{} [label={}{shape}{peripheries}];",
                ids[n],
                dot_quote(&op.name)
            );
        }
        let mut edges: Vec<(usize, usize, Edge)> = (&self.graph)
            .edge_references()
            .map(|e| (ids[&e.source()], ids[&e.target()], *e.weight()))
            .collect();
        edges.sort_by_key(|(f, t, _)| (*t, *f));
        for (f, t, kind) in edges {
            let style = match kind {
                Edge::Parent => "",
                Edge::Source => " [style=bold, label=\"copy\"]",
                Edge::Mount => " [style=dotted, label=\"mount\"]",
                Edge::Layer => " [style=bold, label=\"layer\"]",
            };
            let _ = writeln!(out, "  n{f} -> n{t}{style};");
        }
        out.push_str("}\n");
        out
    }

    /// The ops a node reads from, with the edge kind.
    pub fn inputs(&self, n: NodeIndex) -> Vec<(NodeIndex, Edge)> {
        let mut v: Vec<(NodeIndex, Edge)> = self
            .graph
            .edges_directed(n, Direction::Incoming)
            .map(|e| (e.source(), *e.weight()))
            .collect();
        v.sort_by_key(|(i, _)| i.index());
        v
    }
}

fn dot_quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stage::{PlanOptions, plan};

    fn graph_of(src: &str, target: Option<&str>) -> BuildGraph {
        let df = crate::parser::parse("Dockerfile", src).unwrap();
        let p = plan(
            &df,
            &PlanOptions {
                target: target.map(str::to_string),
                ..Default::default()
            },
        )
        .unwrap();
        compile(&p, &NoImages).unwrap()
    }

    #[test]
    fn multistage_edges_and_pruning() {
        let g = graph_of(
            "FROM alpine AS build\nWORKDIR /src\nRUN make\nFROM scratch AS unused\nRUN nope\nFROM scratch\nCOPY --from=build /src/app /app\nCMD [\"/app\"]\n",
            None,
        );
        let names: Vec<String> = g
            .topological()
            .iter()
            .map(|n| g.graph[*n].name.clone())
            .collect();
        assert!(
            names.contains(&"[build 1/3] FROM alpine".to_string()),
            "{names:?}"
        );
        assert!(
            names.contains(&"[build 3/3] RUN make".to_string()),
            "{names:?}"
        );
        assert!(
            names.contains(&"[stage-2 1/1] COPY --from=build /src/app /app".to_string()),
            "{names:?}"
        );
        assert!(!names.iter().any(|n| n.contains("nope")));
        let copy = g
            .topological()
            .into_iter()
            .find(|n| matches!(g.graph[*n].kind, OpKind::File(_)))
            .unwrap();
        let inputs = g.inputs(copy);
        assert_eq!(inputs.len(), 2);
        assert!(
            inputs
                .iter()
                .any(|(i, e)| *e == Edge::Source && g.graph[*i].name.contains("RUN make"))
        );
    }

    #[test]
    fn run_heredocs_as_buildkit() {
        let g = graph_of(
            "FROM scratch\nRUN <<EOF\necho a\necho b\nEOF\nRUN <<-EOF\n\t#!/usr/bin/env python3\n\tprint(1)\nEOF\nRUN <<A cat > /a && <<B cat > /b\n1\nA\n2\nB\n",
            None,
        );
        let execs: Vec<(&ExecOp, &str)> = g
            .topological()
            .into_iter()
            .filter_map(|n| match &g.graph[n].kind {
                OpKind::Exec(e) => Some((e, g.graph[n].name.as_str())),
                _ => None,
            })
            .collect();
        assert_eq!(execs[0].0.args, vec!["/bin/sh", "-c", "echo a\necho b\n"]);
        assert_eq!(execs[0].1, "[1/3] RUN <<EOF (echo a...)");
        assert_eq!(execs[1].0.args, vec!["/bin/sh", "-c", "/dev/pipes/EOF"]);
        assert_eq!(
            execs[1].0.inline_files[0].data,
            "#!/usr/bin/env python3\nprint(1)\n"
        );
        assert_eq!(execs[1].0.inline_files[0].mode, 0o755);
        assert_eq!(
            execs[2].0.args,
            vec!["/bin/sh", "-c", "<<A cat > /a && <<B cat > /b\n1\nA\n2\nB"]
        );
    }

    #[test]
    fn link_makes_a_merge() {
        let g = graph_of("FROM scratch\nCOPY --link a /a\n", None);
        let merge = g.target;
        assert_eq!(g.graph[merge].kind, OpKind::Merge);
        let kinds: Vec<Edge> = g.inputs(merge).into_iter().map(|(_, e)| e).collect();
        assert!(kinds.contains(&Edge::Parent) && kinds.contains(&Edge::Layer));
    }

    #[test]
    fn expansion_in_stage_scope() {
        let g = graph_of(
            "FROM scratch\nARG V=1\nENV DIR=/opt/app-$V\nWORKDIR $DIR\nCOPY a* ./sub/\nRUN --mount=type=cache,target=$DIR/cache echo\nEXPOSE 80 ${V}000/udp\n",
            None,
        );
        let ops: Vec<&Op> = g.topological().iter().map(|n| &g.graph[*n]).collect();
        let copy = ops
            .iter()
            .find_map(|o| match &o.kind {
                OpKind::File(f) => Some(f),
                _ => None,
            })
            .unwrap();
        assert_eq!(copy.dest, "/opt/app-1/sub/");
        let exec = ops
            .iter()
            .find_map(|o| match &o.kind {
                OpKind::Exec(e) => Some(e),
                _ => None,
            })
            .unwrap();
        assert_eq!(exec.mounts[0].target.as_deref(), Some("/opt/app-1/cache"));
        assert_eq!(exec.mounts[0].id.as_deref(), Some("//opt/app-1/cache"));
        assert_eq!(exec.args, vec!["/bin/sh", "-c", "echo"]);
        assert!(
            exec.env.contains(&"V=1".to_string())
                && exec.env.contains(&"DIR=/opt/app-1".to_string())
        );
        assert_eq!(exec.workdir, "/opt/app-1");
        let expose = ops
            .iter()
            .find_map(|o| match &o.kind {
                OpKind::Config(ConfigChange::Expose(p)) => Some(p),
                _ => None,
            })
            .unwrap();
        assert_eq!(expose, &vec!["1000/udp".to_string(), "80/tcp".to_string()]);
    }
}
