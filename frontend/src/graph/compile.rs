//! [`compile`]: the stages the target needs, instruction by instruction,
//! into the ops and edges of a [`BuildGraph`], each instruction's words
//! expanded in its stage's scope.

use std::collections::BTreeMap;

use petgraph::stable_graph::{NodeIndex, StableDiGraph};

use super::commands::{expand_heredoc, health, run_command, with_shell};
use super::*;
use crate::instructions::expose::{ExposeFindings, parse_ports};
use crate::instructions::{self, Healthcheck, Kind};
use crate::shell::Lex;
use crate::span::Span;
use crate::stage::{
    Base, Budget, EnvList, Plan, PlanError, STRING_OVERHEAD, Source, StageEnv, parse_trigger,
};

/// The graph being built, with what each compiled stage left.
struct Compiler<'a> {
    plan: &'a Plan,
    lex: Lex,
    graph: StableDiGraph<Op, Edge>,
    sources: BTreeMap<String, NodeIndex>,
    stage_results: BTreeMap<usize, NodeIndex>,
    stage_envs: BTreeMap<usize, StageEnv>,
    stage_meta: BTreeMap<usize, (String, Vec<String>)>,
    /// What the steps hold of variables and labels.
    held: Budget,
    /// The global ARGs, which a stage's `ARG name` takes a value from.
    global: EnvList,
    /// Instructions compiled so far, base images' triggers among them.
    steps: usize,
    /// The stages by name, what a `--from` is resolved against with the
    /// named contexts, as the planner did (made once: a file of thousands
    /// of stages each copying from another made it for each).
    stage_names: BTreeMap<String, usize>,
}

/// The most instructions a build compiles: as many as a Dockerfile may
/// have ([`crate::parser::MAX_INSTRUCTIONS`]), ONBUILD triggers of its base
/// images included.
pub const MAX_STEPS: usize = crate::parser::MAX_INSTRUCTIONS;

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
        held: Budget::default(),
        global: EnvList::from_entries(&plan.global_args),
        steps: 0,
        stage_names: plan
            .stages
            .iter()
            .filter_map(|s| s.name.clone().map(|n| (n, s.index)))
            .collect(),
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
            // `scratch` (and a context that is it) is the empty filesystem.
            Source::Image(r) if r == "scratch" || self.plan.scratch_contexts.contains(r) => (
                FileSource::Image(r.clone()),
                self.source_node("scratch".into(), OpKind::Scratch, "scratch".into()),
            ),
            Source::Image(r) => (FileSource::Image(r.clone()), self.image_node(r, None)),
        }
    }

    /// Resolves a `--from` word as the planner did.
    fn resolve(&mut self, from: &str, span: &Span) -> Result<(FileSource, NodeIndex), PlanError> {
        let source = crate::stage::resolve_source(
            &self.lex,
            from,
            &self.stage_names,
            &self.plan.named_contexts,
            span,
        )?;
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
                self.held
                    .hold(self.stage_envs[b].held_bytes(), &stage.span)?;
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
                // The image's variables are this stage's to hold.
                let env = StageEnv::new(&cfg.env, &cfg.workdir);
                self.held.hold(env.held_bytes(), &stage.span)?;
                (n, env, cfg.user, cfg.shell, cfg.onbuild)
            }
        };
        if shell.is_empty() {
            shell = vec!["/bin/sh".into(), "-c".into()];
        }
        // The base image's own ONBUILD triggers run first. They count with
        // the file's instructions: an image's config may hold millions.
        self.steps += image_triggers.len() + stage.instructions.len();
        if self.steps > MAX_STEPS {
            return Err(err(
                &stage.span,
                format!(
                    "more than {MAX_STEPS} instructions with the base images' ONBUILD \
                     triggers: the Dockerfile is too large to build"
                ),
            ));
        }
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
                    self.held.hold(
                        run_env.iter().map(|e| e.len() + STRING_OVERHEAD).sum(),
                        &span,
                    )?;
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
                            env.apply_arg(lex, defs, &self.plan.build_args, &self.global)
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
                    self.held.hold(change.held_bytes(), &span)?;
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
