//! Stages: what a Dockerfile's instructions mean for one build.
//!
//! [`plan`] splits the typed instructions into global ARGs and [`Stage`]s,
//! evaluates the global ARGs (predefined platform args, `--build-arg`
//! overrides, defaults that refer to earlier ARGs), expands each FROM with
//! them, resolves every stage's base (scratch, an earlier stage, a named
//! context or an image) and every `COPY --from` / `RUN --mount from=`
//! source, prepends ONBUILD triggers of a base stage, finds the `--target`
//! and the stages it needs. [`StageEnv`] is the per-stage variable scope
//! (ENV growth, ARG scoping, WORKDIR) that expansion of each instruction
//! uses; the graph compiler and the builder both walk it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use crate::instructions::{self, Instruction, InstructionError, Kind};
use crate::parser::{self, Dockerfile};
use crate::shell::{Expansion, Lex};
use crate::span::Span;

/// A platform, `os/arch[/variant]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Platform {
    /// `linux`.
    pub os: String,
    /// `amd64`.
    pub architecture: String,
    /// `v8`, or empty.
    pub variant: String,
}

impl Plan {
    /// The platform stage `index` is for: its `FROM --platform`, else the
    /// target platform.
    pub fn stage_platform(&self, index: usize) -> Platform {
        self.stages
            .get(index)
            .and_then(|s| s.platform.clone())
            .unwrap_or_else(|| self.platform.clone())
    }

    /// Proxy variables given as build args: RUN sees them without an ARG,
    /// but they stay out of history and cache keys.
    pub fn proxy_env(&self) -> Vec<(String, String)> {
        PROXY_ARGS
            .iter()
            .filter_map(|k| self.build_args.get(*k).map(|v| (k.to_string(), v.clone())))
            .collect()
    }
}

impl Platform {
    /// The platform rbuild runs on and builds for.
    pub fn host() -> Platform {
        Platform {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: String::new(),
        }
    }

    /// Parses `os[/arch[/variant]]` or a bare architecture, normalising
    /// aliases as containerd does (`x86_64` is `amd64`, `aarch64` is `arm64`).
    pub fn parse(s: &str) -> Result<Platform, String> {
        let lower = s.to_lowercase();
        let parts: Vec<&str> = lower.split('/').collect();
        let known_os = |o: &str| {
            matches!(
                o,
                "linux"
                    | "windows"
                    | "darwin"
                    | "freebsd"
                    | "netbsd"
                    | "openbsd"
                    | "solaris"
                    | "illumos"
                    | "aix"
            )
        };
        let (os, arch, variant) = match parts.as_slice() {
            [one] if known_os(one) => (*one, "amd64", ""),
            [one] => ("linux", *one, ""),
            [os, arch] => (*os, *arch, ""),
            [os, arch, variant] => (*os, *arch, *variant),
            _ => {
                return Err(format!(
                    "{}: unknown operating system or architecture: invalid argument",
                    s
                ));
            }
        };
        if !known_os(os) || arch.is_empty() {
            return Err(format!(
                "{}: unknown operating system or architecture: invalid argument",
                s
            ));
        }
        let (arch, variant) = match (arch, variant) {
            ("x86_64" | "x86-64" | "amd64", v) => ("amd64", if v == "v1" { "" } else { v }),
            ("aarch64" | "arm64", "8" | "v8") => ("arm64", ""),
            ("aarch64" | "arm64", v) => ("arm64", v),
            ("armhf", _) => ("arm", "v7"),
            ("armel", _) => ("arm", "v6"),
            ("arm", "") => ("arm", "v7"),
            ("arm", "5" | "6" | "7" | "8") => ("arm", ""),
            ("i386" | "i686" | "386", v) => ("386", v),
            (a, v) => (a, v),
        };
        Ok(Platform {
            os: os.to_string(),
            architecture: arch.to_string(),
            variant: variant.to_string(),
        })
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if !self.variant.is_empty() {
            write!(f, "/{}", self.variant)?;
        }
        Ok(())
    }
}

/// Proxy variables: usable in RUN without `ARG`, never in history or cache keys.
pub const PROXY_ARGS: [&str; 10] = [
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "FTP_PROXY",
    "ftp_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
];

/// What the command line says about a build.
#[derive(Debug, Clone, Default)]
pub struct PlanOptions {
    /// `--target`; default the last stage.
    pub target: Option<String>,
    /// `--build-arg NAME=VALUE`.
    pub build_args: BTreeMap<String, String>,
    /// Names given with `--build-context`.
    pub named_contexts: BTreeSet<String>,
    /// Target platform; default the host's.
    pub platform: Option<Platform>,
    /// `--add-host` entries for every RUN's `/etc/hosts`.
    pub extra_hosts: Vec<crate::hosts::ExtraHost>,
    /// `--ulimit`s of every RUN.
    pub ulimits: Vec<crate::limits::Ulimit>,
    /// `--shm-size`: the size of every RUN's `/dev/shm`.
    pub shm_size: Option<crate::limits::ShmSize>,
}

/// Where a stage starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Base {
    /// `FROM scratch`.
    Scratch,
    /// An earlier stage, by index.
    Stage(usize),
    /// A `--build-context` name.
    Context(String),
    /// An image reference.
    Image(String),
}

/// Where a `COPY --from` or `RUN --mount from=` reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A stage, by index.
    Stage(usize),
    /// A `--build-context` name.
    Context(String),
    /// An image reference.
    Image(String),
}

/// One use of another stage, context or image inside a stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dependency {
    /// What is used.
    pub source: Source,
    /// Index of the instruction (in [`Stage::instructions`]) that uses it.
    pub instruction: usize,
    /// That instruction's span.
    pub span: Span,
}

/// A build stage.
#[derive(Debug, Clone)]
pub struct Stage {
    /// Position in the file (0-based).
    pub index: usize,
    /// The `AS` name, lower case.
    pub name: Option<String>,
    /// The FROM word as written.
    pub base_name: String,
    /// The FROM word expanded with the global ARGs.
    pub base_expanded: String,
    /// What the stage starts from.
    pub base: Base,
    /// `--platform`, expanded and parsed.
    pub platform: Option<Platform>,
    /// The FROM instruction's span.
    pub span: Span,
    /// The stage's instructions after FROM; ONBUILD triggers of a base
    /// stage come first.
    pub instructions: Vec<Instruction>,
    /// How many of `instructions` are inherited ONBUILD triggers.
    pub onbuild_triggers: usize,
    /// Other stages, contexts and images used by COPY --from and mounts.
    pub dependencies: Vec<Dependency>,
}

impl Stage {
    /// The name BuildKit shows in progress: the `AS` name or `stage-N`.
    pub fn display_name(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("stage-{}", self.index))
    }
}

/// A build's stages, resolved.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The Dockerfile's escape character.
    pub escape: char,
    /// Global ARGs after evaluation, in declaration order (predefined first).
    pub global_args: Vec<(String, String)>,
    /// Build arguments from the command line.
    pub build_args: BTreeMap<String, String>,
    /// All stages of the file.
    pub stages: Vec<Stage>,
    /// The stage to build.
    pub target: usize,
    /// The stages the target needs (itself included), in file order.
    pub needed: Vec<usize>,
    /// The target platform.
    pub platform: Platform,
    /// Names given with `--build-context`.
    pub named_contexts: BTreeSet<String>,
    /// `SOURCE_DATE_EPOCH` (a `--build-arg` or a global ARG), seconds.
    pub source_date_epoch: Option<i64>,
    /// RUN's hostname when a build arg sets one (BuildKit's default is
    /// `buildkitsandbox`).
    pub hostname: Option<String>,
    /// `--add-host` entries for every RUN's `/etc/hosts`.
    pub extra_hosts: Vec<crate::hosts::ExtraHost>,
    /// `--ulimit`s of every RUN.
    pub ulimits: Vec<crate::limits::Ulimit>,
    /// `--shm-size`: the size of every RUN's `/dev/shm`.
    pub shm_size: Option<crate::limits::ShmSize>,
}

/// Why a Dockerfile cannot be planned; names the span at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// An instruction that does not convert.
    #[error(transparent)]
    Instruction(#[from] InstructionError),
    /// Something wrong at a place in the file.
    #[error("{}: {message}", span.start())]
    At {
        /// What.
        message: String,
        /// Where.
        span: Span,
    },
    /// Something wrong with the options (`--target`, `--platform`).
    #[error("{0}")]
    Options(String),
}

impl PlanError {
    pub(crate) fn at(span: &Span, message: impl Into<String>) -> PlanError {
        PlanError::At {
            message: message.into(),
            span: span.clone(),
        }
    }

    /// The span at fault, when there is one.
    pub fn span(&self) -> Option<&Span> {
        match self {
            PlanError::Instruction(e) => Some(&e.span),
            PlanError::At { span, .. } => Some(span),
            PlanError::Options(_) => None,
        }
    }
}

/// BuildKit's `system.DefaultPathEnv` for Linux: the `PATH` of every stage
/// whose base sets none (`FROM scratch` among them).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Names in the order they were first set, each with its latest value,
/// found by name without a scan (a stage of 10,000 ENV or ARG lines made
/// every lookup a walk of all of them).
#[derive(Debug, Clone)]
pub struct Ordered<V> {
    entries: Vec<(String, V)>,
    index: HashMap<String, usize>,
}

impl<V> Default for Ordered<V> {
    fn default() -> Self {
        Ordered {
            entries: Vec::new(),
            index: HashMap::new(),
        }
    }
}

impl<V: PartialEq> PartialEq for Ordered<V> {
    fn eq(&self, other: &Self) -> bool {
        self.entries == other.entries
    }
}

impl<V: Eq> Eq for Ordered<V> {}

impl<V> Ordered<V> {
    /// Sets `key`, keeping its position when it exists.
    pub fn insert(&mut self, key: &str, value: V) {
        match self.index.get(key) {
            Some(&i) => self.entries[i].1 = value,
            None => {
                self.index.insert(key.to_string(), self.entries.len());
                self.entries.push((key.to_string(), value));
            }
        }
    }

    /// The value of `key`.
    pub fn value(&self, key: &str) -> Option<&V> {
        self.index.get(key).map(|&i| &self.entries[i].1)
    }

    /// The entries in order.
    pub fn entries(&self) -> &[(String, V)] {
        &self.entries
    }

    /// The entries in order.
    pub fn iter(&self) -> std::slice::Iter<'_, (String, V)> {
        self.entries.iter()
    }
}

/// An ordered environment where a later entry replaces an earlier one.
pub type EnvList = Ordered<String>;

impl EnvList {
    /// Sets `key`, keeping its position when it exists.
    pub fn set(&mut self, key: &str, value: &str) {
        self.insert(key, value.to_string());
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.value(key).map(String::as_str)
    }

    /// `KEY=VALUE` strings, as an image config's Env.
    pub fn to_strings(&self) -> Vec<String> {
        self.entries
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect()
    }
}

impl crate::shell::Env for EnvList {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.get(name)
    }
}

/// The variables in scope at one point of a stage: the image's ENV (from
/// the base image and ENV instructions) and the stage's ARG values, as
/// BuildKit's `getEnv(state)` sees them.
#[derive(Debug, Clone, Default)]
pub struct StageEnv {
    /// What expansion sees: ENV and ARG values, later ones winning.
    pub scope: EnvList,
    /// The image config's Env (ENV only, no ARG values).
    pub image_env: EnvList,
    /// ARGs declared in the stage so far, with their values.
    pub args: Ordered<Option<String>>,
    /// The working directory, absolute.
    pub workdir: String,
}

impl StageEnv {
    /// The scope of a stage whose base image has `env` and `workdir`; with
    /// [`DEFAULT_PATH`] added when the base sets no `PATH` (BuildKit makes
    /// sure every stage has one: its steps run with it, words expand with
    /// it and the image's config keeps it).
    pub fn new(env: &[(String, String)], workdir: &str) -> StageEnv {
        let mut image_env = EnvList::default();
        for (k, v) in env {
            image_env.set(k, v);
        }
        if image_env.get("PATH").is_none() {
            image_env.set("PATH", DEFAULT_PATH);
        }
        StageEnv {
            scope: image_env.clone(),
            image_env,
            args: Ordered::default(),
            workdir: if workdir.is_empty() {
                "/".into()
            } else {
                workdir.into()
            },
        }
    }

    /// Expands one word in this scope.
    pub fn expand(&self, lex: &Lex, word: &str) -> Result<String, String> {
        lex.process_word(word, &self.scope)
            .map_err(|e| e.to_string())
    }

    /// Expands one word and reports which variables it used.
    pub fn expand_with_matches(&self, lex: &Lex, word: &str) -> Result<Expansion, String> {
        lex.process(word, &self.scope).map_err(|e| e.to_string())
    }

    /// Applies `ENV k=v ...`: each value sees the environment before this
    /// instruction (BuildKit expands the whole instruction first).
    pub fn apply_env(
        &mut self,
        lex: &Lex,
        pairs: &[instructions::KeyValue],
    ) -> Result<Vec<(String, String)>, String> {
        let mut expanded = Vec::new();
        for kv in pairs {
            expanded.push((self.expand(lex, &kv.key)?, self.expand(lex, &kv.value)?));
        }
        for (k, v) in &expanded {
            self.scope.set(k, v);
            self.image_env.set(k, v);
        }
        Ok(expanded)
    }

    /// Applies `ARG name[=default] ...` as BuildKit's `dispatchArg`: a
    /// `--build-arg` wins, then the default (expanded), then a global ARG of
    /// the same name; the value joins the scope (not the image's Env).
    pub fn apply_arg(
        &mut self,
        lex: &Lex,
        defs: &[instructions::ArgDef],
        build_args: &BTreeMap<String, String>,
        global_args: &EnvList,
    ) -> Result<Vec<(String, Option<String>)>, String> {
        let mut out = Vec::new();
        for def in defs {
            let value = if let Some(v) = build_args.get(&def.key) {
                Some(v.clone())
            } else if let Some(default) = &def.value {
                Some(self.expand(lex, default)?)
            } else {
                global_args.get(&def.key).map(str::to_string)
            };
            if let Some(v) = &value {
                self.scope.set(&def.key, v);
            }
            // A redeclared ARG keeps its first place (BuildKit's RUN history).
            self.args.insert(&def.key, value.clone());
            out.push((def.key.clone(), value));
        }
        Ok(out)
    }

    /// Applies `WORKDIR`: relative paths resolve against the current one.
    pub fn apply_workdir(&mut self, lex: &Lex, path: &str) -> Result<String, String> {
        let path = self.expand(lex, path)?;
        self.workdir = resolve_path(&self.workdir, &path);
        Ok(self.workdir.clone())
    }
}

/// `path` made absolute against `dir`, cleaned (Go's `path.Join` + `Clean`).
pub fn resolve_path(dir: &str, path: &str) -> String {
    if path.starts_with('/') {
        crate::glob::clean(path)
    } else {
        crate::glob::clean(&format!("{dir}/{path}"))
    }
}

/// The global arguments BuildKit defines before any ARG.
fn predefined_args(
    platform: &Platform,
    build_args: &BTreeMap<String, String>,
    target: &str,
) -> EnvList {
    let host = Platform::host();
    let target = if target.is_empty() { "default" } else { target };
    let mut env = EnvList::default();
    for (k, v) in [
        ("BUILDPLATFORM", host.to_string()),
        ("BUILDOS", host.os.clone()),
        ("BUILDOSVERSION", String::new()),
        ("BUILDARCH", host.architecture.clone()),
        ("BUILDVARIANT", host.variant.clone()),
        ("TARGETPLATFORM", platform.to_string()),
        ("TARGETOS", platform.os.clone()),
        ("TARGETOSVERSION", String::new()),
        ("TARGETARCH", platform.architecture.clone()),
        ("TARGETVARIANT", platform.variant.clone()),
        ("TARGETSTAGE", target.to_string()),
    ] {
        let v = build_args.get(k).cloned().unwrap_or(v);
        env.set(k, &v);
    }
    env
}

/// The scope FROM lines see: BuildKit's predefined args, then the ARGs
/// before the first FROM (a build arg wins over a default).
pub fn global_args(
    all: &[Instruction],
    escape: char,
    options: &PlanOptions,
) -> Result<EnvList, PlanError> {
    let meta: Vec<Instruction> = all
        .iter()
        .take_while(|i| !matches!(i.kind, Kind::From(_)))
        .filter(|i| matches!(i.kind, Kind::Arg(_)))
        .cloned()
        .collect();
    let Some(last_from) = all.iter().rev().find(|i| matches!(i.kind, Kind::From(_))) else {
        return Err(PlanError::Options(
            "dockerfile contains no stages to build".into(),
        ));
    };
    global_scope(&meta, last_from, &Lex::new(escape), options)
}

fn global_scope(
    meta_args: &[Instruction],
    last_from: &Instruction,
    lex: &Lex,
    options: &PlanOptions,
) -> Result<EnvList, PlanError> {
    let platform = options.platform.clone().unwrap_or_else(Platform::host);
    let last_name = match &last_from.kind {
        Kind::From(f) => f.name.clone().unwrap_or_default(),
        _ => String::new(),
    };
    let target_name = options.target.clone().unwrap_or(last_name);
    let mut global = predefined_args(&platform, &options.build_args, &target_name);
    for ins in meta_args {
        let Kind::Arg(defs) = &ins.kind else { continue };
        for def in defs {
            let value = match options.build_args.get(&def.key) {
                Some(v) => Some(v.clone()),
                None => match &def.value {
                    Some(d) => Some(
                        lex.process_word(d, &global)
                            .map_err(|e| PlanError::at(&ins.span, e.to_string()))?,
                    ),
                    None => None,
                },
            };
            if let Some(v) = value {
                global.set(&def.key, &v);
            }
        }
    }
    Ok(global)
}

/// Plans the build of a parsed Dockerfile.
pub fn plan(df: &Dockerfile, options: &PlanOptions) -> Result<Plan, PlanError> {
    let instructions = instructions::parse(df)?;
    plan_instructions(df.escape, instructions, options)
}

fn plan_instructions(
    escape: char,
    all: Vec<Instruction>,
    options: &PlanOptions,
) -> Result<Plan, PlanError> {
    let lex = Lex::new(escape);

    // Global ARGs come before the first FROM; anything else there is an error.
    let mut meta_args: Vec<Instruction> = Vec::new();
    let mut raw_stages: Vec<(Instruction, Vec<Instruction>)> = Vec::new();
    for ins in all {
        match (&ins.kind, raw_stages.last_mut()) {
            (Kind::From(_), _) => raw_stages.push((ins, Vec::new())),
            (Kind::Arg(_), None) => meta_args.push(ins),
            (_, None) => {
                return Err(PlanError::at(
                    &ins.span,
                    "no build stage in current context",
                ));
            }
            (_, Some((_, body))) => body.push(ins),
        }
    }
    if raw_stages.is_empty() {
        return Err(PlanError::Options(
            "dockerfile contains no stages to build".into(),
        ));
    }

    let platform = options.platform.clone().unwrap_or_else(Platform::host);
    let global = global_scope(
        &meta_args,
        &raw_stages.last().expect("non-empty").0,
        &lex,
        options,
    )?;

    // SOURCE_DATE_EPOCH: a build arg, else a non-empty global ARG. Only a
    // number of seconds is understood (BuildKit's `context` value needs a
    // git or HTTP context).
    let epoch_value = options
        .build_args
        .get("SOURCE_DATE_EPOCH")
        .cloned()
        .or_else(|| {
            global
                .get("SOURCE_DATE_EPOCH")
                .filter(|v| !v.is_empty())
                .map(str::to_string)
        });
    let source_date_epoch = match epoch_value {
        None => None,
        Some(v) => Some(
            v.parse::<i64>()
                .map_err(|_| PlanError::Options(format!("invalid SOURCE_DATE_EPOCH: {v}")))?,
        ),
    };

    // Stages, their names and bases (a base is only an earlier stage).
    let mut stages: Vec<Stage> = Vec::new();
    let mut by_name: BTreeMap<String, usize> = BTreeMap::new();
    for (index, (from_ins, body)) in raw_stages.into_iter().enumerate() {
        let Kind::From(from) = &from_ins.kind else {
            unreachable!("stages start with FROM")
        };
        let span = from_ins.span.clone();
        let expanded = lex
            .process_word(&from.image, &global)
            .map_err(|e| PlanError::at(&span, e.to_string()))?;
        if expanded.is_empty() {
            return Err(PlanError::at(
                &span,
                format!("base name ({}) should not be blank", from.image),
            ));
        }
        let stage_platform = match &from.platform {
            None => None,
            Some(p) => {
                let e = lex.process(p, &global).map_err(|e| {
                    PlanError::at(
                        &span,
                        format!("failed to process arguments for platform {p}: {e}"),
                    )
                })?;
                // BuildKit's wrapSuggestAny: the first unmatched variable
                // near a global ARG's name gets a did-you-mean.
                let keys: Vec<&str> = global.iter().map(|(k, _)| k.as_str()).collect();
                let suggest = |message: String| {
                    e.unmatched
                        .iter()
                        .find_map(|u| crate::instructions::search(u, &keys, true))
                        .map_or(message.clone(), |m| {
                            format!("{message} (did you mean {m}?)")
                        })
                };
                let v = e.result.clone();
                if v.is_empty() {
                    return Err(PlanError::at(
                        &span,
                        suggest(format!("empty platform value from expression {p}")),
                    ));
                }
                Some(Platform::parse(&v).map_err(|err| {
                    PlanError::at(
                        &span,
                        suggest(format!("failed to parse platform {p}: {err}")),
                    )
                })?)
            }
        };
        let base = if let Some(name) = from
            .name
            .as_ref()
            .filter(|n| options.named_contexts.contains(*n))
        {
            Base::Context(name.clone())
        } else if let Some(&i) = by_name.get(&expanded.to_lowercase()) {
            Base::Stage(i)
        } else if options.named_contexts.contains(&expanded) {
            Base::Context(expanded.clone())
        } else if expanded == "scratch" {
            Base::Scratch
        } else {
            Base::Image(expanded.clone())
        };
        if let Some(name) = &from.name {
            by_name.insert(name.clone(), index);
        }
        stages.push(Stage {
            index,
            name: from.name.clone(),
            base_name: from.image.clone(),
            base_expanded: expanded,
            base,
            platform: stage_platform,
            span,
            instructions: body,
            onbuild_triggers: 0,
            dependencies: Vec::new(),
        });
    }

    // ONBUILD triggers of a base stage run first in the stages built on it.
    for i in 0..stages.len() {
        let Base::Stage(b) = stages[i].base else {
            continue;
        };
        let mut triggers = Vec::new();
        for ins in &stages[b].instructions[stages[b].onbuild_triggers..] {
            if let Kind::OnBuild(ob) = &ins.kind {
                triggers.push(parse_trigger(&ob.expression, &stages[i].span)?);
            }
        }
        let n = triggers.len();
        if n > 0 {
            triggers.extend(std::mem::take(&mut stages[i].instructions));
            stages[i].instructions = triggers;
            stages[i].onbuild_triggers = n;
        }
    }

    let target = match &options.target {
        None => stages.len() - 1,
        Some(t) => *by_name.get(&t.to_lowercase()).ok_or_else(|| {
            let names: Vec<&str> = stages.iter().filter_map(|s| s.name.as_deref()).collect();
            PlanError::Options(instructions::suggest(
                format!(
                    "target stage {} could not be found",
                    crate::quote::go_quote(t)
                ),
                t,
                &names,
                true,
            ))
        })?,
    };

    // Dependencies: COPY --from and RUN --mount from=.
    let names = by_name.clone();
    for stage in &mut stages {
        let mut deps = Vec::new();
        for (n, ins) in stage.instructions.iter().enumerate() {
            for from in sources_of(ins) {
                let source = resolve_source(&lex, &from, &names, options, &ins.span)?;
                deps.push(Dependency {
                    source,
                    instruction: n,
                    span: ins.span.clone(),
                });
            }
        }
        stage.dependencies = deps;
    }
    for stage in &stages {
        for dep in &stage.dependencies {
            if let Source::Stage(s) = dep.source {
                if s >= stages.len() {
                    return Err(PlanError::at(&dep.span, format!("invalid stage index {s}")));
                }
                if s == stage.index {
                    return Err(PlanError::at(
                        &dep.span,
                        format!(
                            "circular dependency detected on stage: {}",
                            stage.display_name()
                        ),
                    ));
                }
            }
        }
    }

    let mut needed = BTreeSet::new();
    let mut todo = vec![target];
    while let Some(s) = todo.pop() {
        if !needed.insert(s) {
            continue;
        }
        if let Base::Stage(b) = stages[s].base {
            todo.push(b);
        }
        for dep in &stages[s].dependencies {
            if let Source::Stage(d) = dep.source {
                todo.push(d);
            }
        }
    }
    // A stage can only use stages defined before it.
    for &s in &needed {
        for dep in &stages[s].dependencies {
            if let Source::Stage(d) = dep.source
                && d > s
            {
                let what = match &stages[s].instructions[dep.instruction].kind {
                    Kind::Run(run) => {
                        // BuildKit names the --from word and the mount target.
                        let (from, target) = run
                            .mounts
                            .iter()
                            .filter_map(|m| instructions::mount::csv_fields(m).ok())
                            .map(|fields| {
                                let get = |keys: &[&str]| {
                                    fields.iter().find_map(|f| {
                                        let (k, v) = f.split_once('=')?;
                                        keys.contains(&k.to_lowercase().as_str())
                                            .then(|| v.to_string())
                                    })
                                };
                                (get(&["from"]), get(&["target", "dst", "destination"]))
                            })
                            .find(|(f, _)| f.is_some())
                            .unwrap_or_default();
                        format!(
                            "cannot mount from stage {} to {}, stage needs to be defined before current command",
                            crate::quote::go_quote(&from.unwrap_or_default()),
                            crate::quote::go_quote(&target.unwrap_or_default())
                        )
                    }
                    _ => format!(
                        "cannot copy from stage {}, it needs to be defined before current stage {}",
                        crate::quote::go_quote(&stages[d].display_name()),
                        crate::quote::go_quote(&stages[s].display_name())
                    ),
                };
                return Err(PlanError::at(&dep.span, what));
            }
        }
    }

    Ok(Plan {
        escape,
        global_args: global.entries().to_vec(),
        build_args: options.build_args.clone(),
        stages,
        target,
        needed: needed.into_iter().collect(),
        platform,
        named_contexts: options.named_contexts.clone(),
        source_date_epoch,
        hostname: options
            .build_args
            .get(crate::hosts::HOSTNAME_ARG)
            .filter(|h| !h.is_empty())
            .cloned(),
        extra_hosts: options.extra_hosts.clone(),
        ulimits: options.ulimits.clone(),
        shm_size: options.shm_size,
    })
}

/// Parses an ONBUILD trigger; errors point at the inheriting FROM.
pub fn parse_trigger(expression: &str, span: &Span) -> Result<Instruction, PlanError> {
    let df = parser::parse(&span.file, expression).map_err(|e| PlanError::at(span, e.message))?;
    if df.nodes.len() != 1 {
        return Err(PlanError::at(
            span,
            "onbuild trigger should be a single expression",
        ));
    }
    let mut ins =
        instructions::parse_node(&df.nodes[0]).map_err(|e| PlanError::at(span, e.message))?;
    ins.span = span.clone();
    Ok(ins)
}

/// The `--from` words of an instruction (COPY, and RUN mounts).
fn sources_of(ins: &Instruction) -> Vec<String> {
    match &ins.kind {
        Kind::Copy(c) => c.from.iter().cloned().collect(),
        Kind::Run(r) => r
            .mounts
            .iter()
            .filter_map(|m| {
                let fields = instructions::mount::csv_fields(m).ok()?;
                fields.into_iter().find_map(|f| {
                    let (k, v) = f.split_once('=')?;
                    k.eq_ignore_ascii_case("from").then(|| v.to_string())
                })
            })
            .collect(),
        _ => Vec::new(),
    }
}

pub(crate) fn resolve_source(
    lex: &Lex,
    from: &str,
    names: &BTreeMap<String, usize>,
    options: &PlanOptions,
    span: &Span,
) -> Result<Source, PlanError> {
    let unexpanded = lex
        .process_word(from, &EnvList::default())
        .map_err(|e| PlanError::at(span, e.to_string()))?;
    if unexpanded != from {
        return Err(PlanError::at(
            span,
            "variable expansion is not supported for --from, define a new stage with FROM using ARG from global scope as a workaround",
        ));
    }
    if let Ok(index) = from.parse::<i64>() {
        if index < 0 {
            return Err(PlanError::at(span, format!("invalid stage index {index}")));
        }
        return Ok(Source::Stage(index as usize));
    }
    if let Some(&i) = names.get(&from.to_lowercase()) {
        return Ok(Source::Stage(i));
    }
    if options.named_contexts.contains(from) {
        return Ok(Source::Context(from.to_string()));
    }
    Ok(Source::Image(from.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan_of(src: &str, opts: PlanOptions) -> Result<Plan, PlanError> {
        plan(&parser::parse("Dockerfile", src).unwrap(), &opts)
    }

    #[test]
    fn global_args_in_from_and_target_pruning() {
        let src = "ARG BASE=alpine\nARG TAG=${BASE}-3\nFROM $BASE:$TAG AS a\nFROM scratch AS b\nCOPY --from=a / /\nFROM scratch AS c\n";
        let p = plan_of(
            src,
            PlanOptions {
                target: Some("b".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(p.stages[0].base, Base::Image("alpine:alpine-3".into()));
        assert_eq!(p.target, 1);
        assert_eq!(p.needed, vec![0, 1]);
        let mut args = BTreeMap::new();
        args.insert("BASE".to_string(), "debian".to_string());
        let p = plan_of(
            src,
            PlanOptions {
                build_args: args,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(p.stages[0].base_expanded, "debian:debian-3");
        assert_eq!(p.needed, vec![2]);
    }

    #[test]
    fn errors_name_the_line() {
        let e = plan_of("FROM a AS x\nCOPY --from=x / /\n", PlanOptions::default()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "Dockerfile:2:1: circular dependency detected on stage: x"
        );
        let e = plan_of(
            "FROM a AS x\nCOPY --from=y / /\nFROM b AS y\n",
            PlanOptions {
                target: Some("x".into()),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(
            e.to_string().contains(
                "cannot copy from stage \"y\", it needs to be defined before current stage \"x\""
            ),
            "{e}"
        );
        let e = plan_of(
            "FROM a AS x\nRUN --mount=from=y,target=/m true\nFROM b AS y\n",
            PlanOptions {
                target: Some("x".into()),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("cannot mount from stage \"y\" to \"/m\", stage needs to be defined before current command"),
            "{e}"
        );
        let e = plan_of(
            "FROM a\n",
            PlanOptions {
                target: Some("bulid".into()),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "target stage \"bulid\" could not be found");
        let e = plan_of(
            "FROM a AS build\n",
            PlanOptions {
                target: Some("bulid".into()),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "target stage \"bulid\" could not be found (did you mean build?)"
        );
        let e = plan_of("RUN x\nFROM a\n", PlanOptions::default()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "Dockerfile:1:1: no build stage in current context"
        );
        let e = plan_of("ARG X\nFROM $X\n", PlanOptions::default()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "Dockerfile:2:1: base name ($X) should not be blank"
        );
        let e = plan_of("FROM a\nCOPY --from=$X a b\n", PlanOptions::default()).unwrap_err();
        assert!(
            e.to_string()
                .contains("variable expansion is not supported for --from"),
            "{e}"
        );
    }

    #[test]
    fn onbuild_of_base_stage_runs_first() {
        let p = plan_of("FROM scratch AS base\nONBUILD COPY --from=tools /t /t\nFROM scratch AS tools\nFROM base\nRUN x\n", PlanOptions::default()).unwrap();
        let s = &p.stages[2];
        assert_eq!(s.onbuild_triggers, 1);
        assert!(matches!(s.instructions[0].kind, Kind::Copy(_)));
        assert_eq!(s.dependencies[0].source, Source::Stage(1));
        assert_eq!(p.needed, vec![0, 1, 2]);
    }

    #[test]
    fn stage_env_scoping() {
        let lex = Lex::new('\\');
        let mut env = StageEnv::new(&[("PATH".into(), "/bin".into())], "");
        let kv = |k: &str, v: &str| instructions::KeyValue {
            key: k.into(),
            value: v.into(),
            legacy: false,
        };
        env.apply_env(&lex, &[kv("A", "1"), kv("B", "$A"), kv("PATH", "$PATH:/x")])
            .unwrap();
        assert_eq!(env.image_env.get("B"), Some(""));
        assert_eq!(env.image_env.get("PATH"), Some("/bin:/x"));
        let mut global = EnvList::default();
        global.set("G", "g");
        let defs = vec![
            instructions::ArgDef {
                key: "G".into(),
                value: None,
            },
            instructions::ArgDef {
                key: "V".into(),
                value: Some("${A}.0".into()),
            },
        ];
        env.apply_arg(&lex, &defs, &BTreeMap::new(), &global)
            .unwrap();
        assert_eq!(env.scope.get("G"), Some("g"));
        assert_eq!(env.scope.get("V"), Some("1.0"));
        assert_eq!(env.image_env.get("V"), None);
        assert_eq!(env.apply_workdir(&lex, "app/../src").unwrap(), "/src");
        assert_eq!(env.apply_workdir(&lex, "$A").unwrap(), "/src/1");
    }

    #[test]
    fn source_date_epoch_and_proxies() {
        let mut args = BTreeMap::new();
        args.insert("SOURCE_DATE_EPOCH".to_string(), "1700000000".to_string());
        args.insert("HTTPS_PROXY".to_string(), "http://proxy:3128".to_string());
        let p = plan_of(
            "FROM scratch\n",
            PlanOptions {
                build_args: args,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(p.source_date_epoch, Some(1_700_000_000));
        assert_eq!(
            p.proxy_env(),
            vec![("HTTPS_PROXY".to_string(), "http://proxy:3128".to_string())]
        );
        let p = plan_of(
            "ARG SOURCE_DATE_EPOCH=42\nFROM scratch\n",
            PlanOptions::default(),
        )
        .unwrap();
        assert_eq!(p.source_date_epoch, Some(42));
        let mut args = BTreeMap::new();
        args.insert(
            "SOURCE_DATE_EPOCH".to_string(),
            "not-a-timestamp".to_string(),
        );
        let e = plan_of(
            "FROM scratch\n",
            PlanOptions {
                build_args: args,
                ..Default::default()
            },
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "invalid SOURCE_DATE_EPOCH: not-a-timestamp");
    }

    #[test]
    fn platforms() {
        assert_eq!(
            Platform::parse("linux/x86_64").unwrap().to_string(),
            "linux/amd64"
        );
        assert_eq!(
            Platform::parse("linux/arm64/v8").unwrap().to_string(),
            "linux/arm64"
        );
        assert_eq!(Platform::parse("arm64").unwrap().to_string(), "linux/arm64");
        assert!(Platform::parse("plan9/x").is_err());
    }
}
