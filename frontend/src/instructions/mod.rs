//! Typed instructions, as BuildKit's `frontend/dockerfile/instructions`.
//!
//! [`parse_node`] turns a parser [`Node`](crate::parser::Node) into an
//! [`Instruction`]: every flag of the current stable reference is declared
//! per instruction and checked (unknown flags, missing values, bad
//! booleans), argument counts are checked, heredoc sources and RUN heredoc
//! files are attached. Words are not expanded here: that needs the stage's
//! environment ([`crate::stage`]).

pub mod chmod;
mod duration;
pub mod expose;
mod flags;
pub mod mount;
mod parse;
mod suggest;

use std::fmt;

pub use duration::parse_go_duration;
pub use mount::{Mount, MountType, Sharing, parse_mount};
pub use parse::{parse, parse_node};
pub(crate) use suggest::{search, suggest};

use crate::span::{Location, Span};

/// An instruction that cannot be used, with BuildKit's message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct InstructionError {
    /// What is wrong.
    pub message: String,
    /// The instruction at fault.
    pub span: Span,
}

impl fmt::Display for InstructionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.span.start(), self.message)
    }
}

impl InstructionError {
    /// Where, as `file:line:col`.
    pub fn location(&self) -> Location {
        self.span.start()
    }
}

/// One instruction with its place in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instruction {
    /// What it says.
    pub kind: Kind,
    /// Where it is.
    pub span: Span,
    /// The instruction line as written (continuations joined).
    pub original: String,
    /// Comment lines right above it.
    pub comments: Vec<String>,
}

/// The 18 instructions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// `FROM [--platform=P] image [AS name]`
    From(From),
    /// `RUN`
    Run(Run),
    /// `CMD`
    Cmd(CommandLine),
    /// `ENTRYPOINT`
    Entrypoint(CommandLine),
    /// `COPY`
    Copy(Copy),
    /// `ADD`
    Add(Add),
    /// `ENV k=v ...`
    Env(Vec<KeyValue>),
    /// `LABEL k=v ...`
    Label(Vec<KeyValue>),
    /// `ARG name[=default] ...`
    Arg(Vec<ArgDef>),
    /// `WORKDIR path`
    Workdir(String),
    /// `USER user[:group]`
    User(String),
    /// `EXPOSE spec ...` (unexpanded words, sorted as BuildKit sorts them)
    Expose(Vec<String>),
    /// `VOLUME path ...`
    Volume(Vec<String>),
    /// `STOPSIGNAL sig`
    StopSignal(String),
    /// `HEALTHCHECK`
    Healthcheck(Healthcheck),
    /// `SHELL ["exe", "arg"]`
    Shell(Vec<String>),
    /// `ONBUILD <instruction>`
    OnBuild(OnBuild),
    /// `MAINTAINER name` (deprecated)
    Maintainer(String),
}

impl Kind {
    /// The upper-case keyword.
    pub fn name(&self) -> &'static str {
        match self {
            Kind::From(_) => "FROM",
            Kind::Run(_) => "RUN",
            Kind::Cmd(_) => "CMD",
            Kind::Entrypoint(_) => "ENTRYPOINT",
            Kind::Copy(_) => "COPY",
            Kind::Add(_) => "ADD",
            Kind::Env(_) => "ENV",
            Kind::Label(_) => "LABEL",
            Kind::Arg(_) => "ARG",
            Kind::Workdir(_) => "WORKDIR",
            Kind::User(_) => "USER",
            Kind::Expose(_) => "EXPOSE",
            Kind::Volume(_) => "VOLUME",
            Kind::StopSignal(_) => "STOPSIGNAL",
            Kind::Healthcheck(_) => "HEALTHCHECK",
            Kind::Shell(_) => "SHELL",
            Kind::OnBuild(_) => "ONBUILD",
            Kind::Maintainer(_) => "MAINTAINER",
        }
    }
}

/// `FROM`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct From {
    /// The image reference, stage name or `scratch`, unexpanded.
    pub image: String,
    /// The stage name after `AS`, lower-cased.
    pub name: Option<String>,
    /// The stage name as written (for the StageNameCasing check).
    pub name_as_written: Option<String>,
    /// The `AS` word as written (for FromAsCasing).
    pub as_word: Option<String>,
    /// `--platform`, unexpanded.
    pub platform: Option<String>,
}

/// A command in exec or shell form, with heredoc files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandLine {
    /// Exec form: the argv. Shell form: one string.
    pub args: Vec<String>,
    /// Shell form: run through the stage's SHELL.
    pub prepend_shell: bool,
    /// Heredoc bodies that RUN gives to the shell.
    pub files: Vec<InlineFile>,
}

/// A heredoc body attached to RUN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InlineFile {
    /// The delimiter.
    pub name: String,
    /// The body, not yet chomped.
    pub data: String,
    /// `<<-`.
    pub chomp: bool,
}

/// `RUN --network`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Network {
    /// The build's default (host network without CNI).
    Default,
    /// Loopback only.
    None,
    /// The host's network (an entitlement).
    Host,
}

/// `RUN --security`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Security {
    /// The normal sandbox.
    Sandbox,
    /// All capabilities (an entitlement).
    Insecure,
}

/// `RUN`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    /// The command.
    pub command: CommandLine,
    /// `--mount` values, unexpanded (see [`parse_mount`]).
    pub mounts: Vec<String>,
    /// `--network`.
    pub network: Network,
    /// `--security`.
    pub security: Security,
}

/// A file made from a heredoc, as a COPY/ADD source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceContent {
    /// The heredoc name, which is the file name.
    pub path: String,
    /// The body (chomped for `<<-`).
    pub data: String,
    /// Whether build variables are expanded in it.
    pub expand: bool,
}

/// Sources and destination of COPY/ADD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourcesAndDest {
    /// The last argument.
    pub dest: String,
    /// Path (or URL) sources, unexpanded.
    pub sources: Vec<String>,
    /// Heredoc sources.
    pub contents: Vec<SourceContent>,
}

/// `COPY`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copy {
    /// What and where.
    pub files: SourcesAndDest,
    /// `--from` (never expanded).
    pub from: Option<String>,
    /// `--chown`.
    pub chown: Option<String>,
    /// `--chmod`.
    pub chmod: Option<String>,
    /// `--link`.
    pub link: bool,
    /// `--parents`.
    pub parents: bool,
    /// `--exclude`, repeatable.
    pub excludes: Vec<String>,
}

/// `ADD`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Add {
    /// What and where.
    pub files: SourcesAndDest,
    /// `--chown`.
    pub chown: Option<String>,
    /// `--chmod`.
    pub chmod: Option<String>,
    /// `--link`.
    pub link: bool,
    /// `--keep-git-dir`, when given.
    pub keep_git_dir: Option<bool>,
    /// `--checksum`.
    pub checksum: Option<String>,
    /// `--unpack`, when given.
    pub unpack: Option<bool>,
    /// `--exclude`, repeatable.
    pub excludes: Vec<String>,
}

/// One `k=v` of ENV or LABEL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The name, unexpanded.
    pub key: String,
    /// The value, unexpanded.
    pub value: String,
    /// Written in the legacy `ENV k v` form.
    pub legacy: bool,
}

/// One name of ARG.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgDef {
    /// The name.
    pub key: String,
    /// The default, unexpanded.
    pub value: Option<String>,
}

/// `HEALTHCHECK`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Healthcheck {
    /// `HEALTHCHECK NONE`: disable the base image's check.
    None,
    /// `HEALTHCHECK [flags] CMD ...`.
    Check(HealthConfig),
}

/// A health check with BuildKit's zero defaults (0 = inherit/docker default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthConfig {
    /// `["CMD", ...]` (exec form) or `["CMD-SHELL", "..."]`.
    pub test: Vec<String>,
    /// `--interval`, nanoseconds.
    pub interval: i64,
    /// `--timeout`, nanoseconds.
    pub timeout: i64,
    /// `--start-period`, nanoseconds.
    pub start_period: i64,
    /// `--start-interval`, nanoseconds.
    pub start_interval: i64,
    /// `--retries`.
    pub retries: i32,
}

/// `ONBUILD`: kept as text, parsed again in the stage that inherits it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnBuild {
    /// The trigger with its heredoc bodies, as BuildKit stores it in the image.
    pub expression: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(src: &str) -> Result<Kind, String> {
        let df = crate::parser::parse("Dockerfile", src).map_err(|e| e.message)?;
        parse_node(&df.nodes[0])
            .map(|i| i.kind)
            .map_err(|e| e.message)
    }

    #[test]
    fn flag_errors() {
        assert_eq!(
            one("COPY --chwon=1 a b").unwrap_err(),
            "unknown flag: --chwon (did you mean chown?)"
        );
        assert_eq!(
            one("COPY --from a b").unwrap_err(),
            "missing a value on flag: --from"
        );
        assert_eq!(
            one("COPY --link=maybe a b").unwrap_err(),
            "expecting boolean value for flag --link, not: maybe"
        );
        assert_eq!(
            one("COPY --from=a --from=b a b").unwrap_err(),
            "duplicate flag specified: --from"
        );
        assert_eq!(
            one("RUN --network=bridge true").unwrap_err(),
            "invalid network mode \"bridge\""
        );
        assert_eq!(
            one("FORM alpine").unwrap_err(),
            "unknown instruction: FORM (did you mean FROM?)"
        );
        assert!(
            one("SHELL /bin/sh -c")
                .unwrap_err()
                .starts_with("SHELL requires the arguments to be in JSON form")
        );
        assert_eq!(
            one("FROM a AS 1x").unwrap_err(),
            "invalid name for build stage: \"1x\", name can't start with a number or contain symbols"
        );
    }

    #[test]
    fn copy_flags() {
        let Kind::Copy(c) =
            one("COPY --link --chmod=755 --exclude=*.md --exclude=x --parents a/./b c /d/")
                .unwrap()
        else {
            panic!()
        };
        assert!(c.link && c.parents);
        assert_eq!(c.chmod.as_deref(), Some("755"));
        assert_eq!(c.excludes, vec!["*.md", "x"]);
        assert_eq!(c.files.sources, vec!["a/./b", "c"]);
        assert_eq!(c.files.dest, "/d/");
    }

    #[test]
    fn healthcheck() {
        let Kind::Healthcheck(Healthcheck::Check(h)) =
            one("HEALTHCHECK --interval=5s --retries=3 CMD curl -f http://x/").unwrap()
        else {
            panic!()
        };
        assert_eq!(h.test, vec!["CMD-SHELL", "curl -f http://x/"]);
        assert_eq!((h.interval, h.retries), (5_000_000_000, 3));
        assert_eq!(
            one("HEALTHCHECK NONE").unwrap(),
            Kind::Healthcheck(Healthcheck::None)
        );
        assert_eq!(
            one("HEALTHCHECK --interval=1us CMD x").unwrap_err(),
            "Interval \"interval\" cannot be less than 1ms"
        );
        assert_eq!(
            one("HEALTHCHECK FOO x").unwrap_err(),
            "Unknown type \"FOO\" in HEALTHCHECK (try CMD)"
        );
    }

    #[test]
    fn onbuild_expression_keeps_heredoc() {
        let Kind::OnBuild(o) = one("onbuild RUN <<EOF\necho hi\nEOF\n").unwrap() else {
            panic!()
        };
        assert_eq!(o.expression, "RUN <<EOF\necho hi\nEOF");
    }
}
