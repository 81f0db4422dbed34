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

use std::collections::{BTreeMap, BTreeSet};

use crate::instructions::{Instruction, InstructionError};
use crate::span::Span;

mod budget;
mod env;
mod planner;
mod platform;

pub use budget::{Budget, ENTRY_OVERHEAD, MAX_HELD, STRING_OVERHEAD, entry_bytes};
pub use env::{DEFAULT_PATH, EnvList, Ordered, StageEnv, resolve_path};
pub(crate) use planner::resolve_source;
pub use planner::{global_args, parse_trigger, plan};
pub use platform::Platform;

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
    /// `--build-context` names of images (`docker-image://`,
    /// `oci-layout://`): they resolve as images, and replace a stage of
    /// their name.
    pub image_contexts: BTreeSet<String>,
    /// `--build-context NAME=docker-image://scratch`: an empty filesystem,
    /// as `scratch` is.
    pub scratch_contexts: BTreeSet<String>,
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
    /// Names of `--build-context NAME=docker-image://scratch`.
    pub scratch_contexts: BTreeSet<String>,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instructions::{self, Kind};
    use crate::parser;
    use crate::shell::Lex;

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
