//! Typed instructions, as BuildKit's `frontend/dockerfile/instructions`.
//!
//! [`parse_node`] turns a parser [`Node`] into an [`Instruction`]: every flag
//! of the current stable reference is declared per instruction and checked
//! (unknown flags, missing values, bad booleans), argument counts are
//! checked, heredoc sources and RUN heredoc files are attached. Words are not
//! expanded here: that needs the stage's environment ([`crate::stage`]).

pub mod chmod;
mod duration;
pub mod expose;
mod flags;
pub mod mount;

use std::fmt;

pub use duration::parse_go_duration;
pub use mount::{Mount, MountType, Sharing, parse_mount};

use crate::parser::{Dockerfile, Node, chomp, parse_heredoc};
use crate::span::{Location, Span};
use flags::Flags;

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

const INSTRUCTION_NAMES: [&str; 18] = [
    "ADD",
    "ARG",
    "CMD",
    "COPY",
    "ENTRYPOINT",
    "ENV",
    "EXPOSE",
    "FROM",
    "HEALTHCHECK",
    "LABEL",
    "MAINTAINER",
    "ONBUILD",
    "RUN",
    "SHELL",
    "STOPSIGNAL",
    "USER",
    "VOLUME",
    "WORKDIR",
];

/// Adds BuildKit's ` (did you mean X?)` when an option is within edit
/// distance 2 of `value`.
pub(crate) fn suggest(
    message: String,
    value: &str,
    options: &[&str],
    case_sensitive: bool,
) -> String {
    match search(value, options, case_sensitive) {
        Some(m) => format!("{message} (did you mean {m}?)"),
        None => message,
    }
}

/// BuildKit's `suggest.Search`: the first option nearest to `value` within
/// edit distance 2, none when one equals it; case-insensitive search gives
/// the option in `value`'s case.
pub(crate) fn search<S: AsRef<str>>(
    value: &str,
    options: &[S],
    case_sensitive: bool,
) -> Option<String> {
    let fold = |s: &str| {
        if case_sensitive {
            s.to_string()
        } else {
            s.to_lowercase()
        }
    };
    let val = fold(value);
    let mut best: Option<String> = None;
    let mut min = 3;
    for opt in options {
        let o = fold(opt.as_ref());
        if o == val {
            return None;
        }
        let d = levenshtein(&val, &o);
        if d < min {
            min = d;
            best = Some(if case_sensitive {
                o
            } else if value == value.to_lowercase() {
                o.to_lowercase()
            } else if value == value.to_uppercase() {
                o.to_uppercase()
            } else {
                o
            });
        }
    }
    best
}

fn levenshtein(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Every instruction of a parsed file, in order.
pub fn parse(df: &Dockerfile) -> Result<Vec<Instruction>, InstructionError> {
    df.nodes.iter().map(parse_node).collect()
}

/// The arguments of a node as BuildKit's `nodeArgs`: an ONBUILD's trigger
/// keyword followed by its words.
fn node_args(node: &Node) -> Vec<String> {
    match &node.trigger {
        Some(t) => {
            let mut out = vec![t.cmd.clone()];
            out.extend(node_args(t));
            out
        }
        None => node.args.clone(),
    }
}

/// Turns one parsed node into a typed instruction.
pub fn parse_node(node: &Node) -> Result<Instruction, InstructionError> {
    let err = |message: String| InstructionError {
        message,
        span: node.span.clone(),
    };
    let kind = parse_kind(node).map_err(err)?;
    Ok(Instruction {
        kind,
        span: node.span.clone(),
        original: node.original.clone(),
        comments: node.comments.clone(),
    })
}

fn at_least_one(cmd: &str) -> String {
    format!("{cmd} requires at least one argument")
}

fn exactly_one(cmd: &str) -> String {
    format!("{cmd} requires exactly one argument")
}

fn parse_kind(node: &Node) -> Result<Kind, String> {
    let args = node_args(node);
    let flags = Flags::new(&node.flags);
    let keyword = node.keyword();
    Ok(match keyword.as_str() {
        "env" | "label" => {
            flags.parse()?;
            let name = keyword.to_uppercase();
            if args.is_empty() {
                return Err(at_least_one(&name));
            }
            if !args.len().is_multiple_of(3) {
                return Err(format!("Bad input to {name}, too many arguments"));
            }
            let mut pairs = Vec::new();
            for chunk in args.chunks(3) {
                if chunk[0].is_empty() {
                    return Err(format!("{name} names can not be blank"));
                }
                pairs.push(KeyValue {
                    key: chunk[0].clone(),
                    value: chunk[1].clone(),
                    legacy: chunk[2].is_empty(),
                });
            }
            if keyword == "env" {
                Kind::Env(pairs)
            } else {
                Kind::Label(pairs)
            }
        }
        "maintainer" => {
            if args.len() != 1 {
                return Err(exactly_one("MAINTAINER"));
            }
            flags.parse()?;
            Kind::Maintainer(args[0].clone())
        }
        "add" => {
            if args.len() < 2 {
                return Err(no_destination("ADD"));
            }
            let f = flags
                .string("chown", "")
                .string("chmod", "")
                .bool("link", false)
                .bool("keep-git-dir", false)
                .string("checksum", "")
                .bool("unpack", false)
                .strings("exclude")
                .parse()?;
            Kind::Add(Add {
                files: sources_and_dest(node, &args, "ADD")?,
                chown: f.opt_string("chown").filter(|s| !s.is_empty()),
                chmod: f.opt_string("chmod").filter(|s| !s.is_empty()),
                link: f.get_bool("link"),
                keep_git_dir: f.opt_bool("keep-git-dir"),
                checksum: f.opt_string("checksum").filter(|s| !s.is_empty()),
                unpack: f.opt_bool("unpack"),
                excludes: f.get_strings("exclude"),
            })
        }
        "copy" => {
            if args.len() < 2 {
                return Err(no_destination("COPY"));
            }
            let f = flags
                .string("chown", "")
                .string("from", "")
                .string("chmod", "")
                .bool("link", false)
                .strings("exclude")
                .bool("parents", false)
                .parse()?;
            let from = f.opt_string("from").filter(|s| !s.is_empty());
            Kind::Copy(Copy {
                files: sources_and_dest(node, &args, "COPY")?,
                from,
                chown: f.opt_string("chown").filter(|s| !s.is_empty()),
                chmod: f.opt_string("chmod").filter(|s| !s.is_empty()),
                link: f.get_bool("link"),
                parents: f.get_bool("parents"),
                excludes: f.get_strings("exclude"),
            })
        }
        "from" => {
            let (name, as_word) = match args.len() {
                3 if args[1].eq_ignore_ascii_case("as") => {
                    let name = args[2].to_lowercase();
                    if !valid_stage_name(&name) {
                        return Err(format!(
                            "invalid name for build stage: {}, name can't start with a number or contain symbols",
                            crate::quote::go_quote(&args[2])
                        ));
                    }
                    (Some(name), Some(args[1].clone()))
                }
                1 => (None, None),
                _ => return Err("FROM requires either one or three arguments".into()),
            };
            let f = flags.string("platform", "").parse()?;
            Kind::From(From {
                image: args[0].clone(),
                name_as_written: name.as_ref().map(|_| args[2].clone()),
                name,
                as_word,
                platform: f.opt_string("platform").filter(|s| !s.is_empty()),
            })
        }
        "onbuild" => {
            if args.is_empty() {
                return Err(at_least_one("ONBUILD"));
            }
            flags.parse()?;
            let trigger = args[0].trim().to_uppercase();
            match trigger.as_str() {
                "ONBUILD" => {
                    return Err("Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed".into());
                }
                "MAINTAINER" | "FROM" => {
                    return Err(format!("{trigger} isn't allowed as an ONBUILD trigger"));
                }
                _ => {}
            }
            let mut expression = strip_onbuild(&node.original).to_string();
            for doc in &node.heredocs {
                expression.push('\n');
                expression.push_str(&doc.content);
                expression.push_str(&doc.name);
            }
            Kind::OnBuild(OnBuild { expression })
        }
        "workdir" => {
            if args.len() != 1 {
                return Err(exactly_one("WORKDIR"));
            }
            flags.parse()?;
            Kind::Workdir(args[0].clone())
        }
        "run" => {
            let f = flags
                .strings("mount")
                .string("network", "default")
                .string("security", "sandbox")
                .parse()?;
            let mounts = f.get_strings("mount");
            for m in &mounts {
                mount::precheck(m)?;
            }
            let network = match f.get_string("network").as_str() {
                "default" => Network::Default,
                "none" => Network::None,
                "host" => Network::Host,
                other => {
                    return Err(format!(
                        "invalid network mode {}",
                        crate::quote::go_quote(other)
                    ));
                }
            };
            let security = match f.get_string("security").as_str() {
                "sandbox" => Security::Sandbox,
                "insecure" => Security::Insecure,
                other => {
                    return Err(format!(
                        "security {} is not valid",
                        crate::quote::go_quote(other)
                    ));
                }
            };
            Kind::Run(Run {
                command: command_line(node, &args),
                mounts,
                network,
                security,
            })
        }
        "cmd" => {
            flags.parse()?;
            Kind::Cmd(command_line(node, &args))
        }
        "entrypoint" => {
            flags.parse()?;
            Kind::Entrypoint(command_line(node, &args))
        }
        "healthcheck" => parse_healthcheck(node, &args, flags)?,
        "expose" => {
            if args.is_empty() {
                return Err(at_least_one("EXPOSE"));
            }
            flags.parse()?;
            let mut ports = args;
            ports.sort();
            Kind::Expose(ports)
        }
        "user" => {
            if args.len() != 1 {
                return Err(exactly_one("USER"));
            }
            flags.parse()?;
            Kind::User(args[0].clone())
        }
        "volume" => {
            if args.is_empty() {
                return Err(at_least_one("VOLUME"));
            }
            flags.parse()?;
            let mut volumes = Vec::new();
            for v in args {
                let v = v.trim();
                if v.is_empty() {
                    return Err("VOLUME specified can not be an empty string".into());
                }
                volumes.push(v.to_string());
            }
            Kind::Volume(volumes)
        }
        "stopsignal" => {
            // BuildKit declares no flags here and never checks them.
            if args.len() != 1 {
                return Err(exactly_one("STOPSIGNAL"));
            }
            Kind::StopSignal(args[0].clone())
        }
        "arg" => {
            if args.is_empty() {
                return Err(at_least_one("ARG"));
            }
            let mut defs = Vec::new();
            for arg in args {
                match arg.split_once('=') {
                    Some(("", _)) => return Err("ARG names can not be blank".into()),
                    Some((k, v)) => defs.push(ArgDef {
                        key: k.to_string(),
                        value: Some(v.to_string()),
                    }),
                    None => defs.push(ArgDef {
                        key: arg,
                        value: None,
                    }),
                }
            }
            Kind::Arg(defs)
        }
        "shell" => {
            flags.parse()?;
            if args.is_empty() {
                return Err(at_least_one("SHELL"));
            }
            if !node.json {
                return Err(format!(
                    "SHELL requires the arguments to be in JSON form: {}",
                    node.original
                ));
            }
            Kind::Shell(args)
        }
        _ => {
            return Err(suggest(
                format!("unknown instruction: {}", node.cmd),
                &node.cmd,
                &INSTRUCTION_NAMES,
                false,
            ));
        }
    })
}

fn no_destination(cmd: &str) -> String {
    format!(
        "{cmd} requires at least two arguments, but only one was provided. Destination could not be determined"
    )
}

fn valid_stage_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'))
}

/// `original` without its leading `ONBUILD` keyword (case-insensitive).
fn strip_onbuild(original: &str) -> &str {
    let s = original.trim_start();
    if s.len() >= 7 && s[..7].eq_ignore_ascii_case("onbuild") {
        s[7..].trim_start()
    } else {
        s
    }
}

fn sources_and_dest(node: &Node, args: &[String], cmd: &str) -> Result<SourcesAndDest, String> {
    let (dest, srcs) = args.split_last().expect("at least two arguments checked");
    if matches!(parse_heredoc(dest), Ok(Some(_))) {
        return Err(format!("{cmd} cannot accept a heredoc as a destination"));
    }
    let mut sources = Vec::new();
    let mut contents = Vec::new();
    for src in srcs {
        match parse_heredoc(src) {
            Ok(Some(doc)) => {
                let body = node
                    .heredocs
                    .iter()
                    .find(|h| h.name == doc.name)
                    .map(|h| h.content.clone())
                    .unwrap_or_default();
                contents.push(SourceContent {
                    data: if doc.chomp { chomp(&body) } else { body },
                    path: doc.name,
                    expand: doc.expand,
                });
            }
            _ => sources.push(src.clone()),
        }
    }
    Ok(SourcesAndDest {
        dest: dest.clone(),
        sources,
        contents,
    })
}

/// BuildKit's `handleJSONArgs`: exec form keeps the words; shell form is
/// one string (the words joined by spaces).
fn command_line(node: &Node, args: &[String]) -> CommandLine {
    let args = if node.json || args.is_empty() {
        args.to_vec()
    } else {
        vec![args.join(" ")]
    };
    CommandLine {
        args,
        prepend_shell: !node.json,
        files: node
            .heredocs
            .iter()
            .map(|h| InlineFile {
                name: h.name.clone(),
                data: h.content.clone(),
                chomp: h.chomp,
            })
            .collect(),
    }
}

fn parse_healthcheck(node: &Node, args: &[String], flags: Flags<'_>) -> Result<Kind, String> {
    if args.is_empty() {
        return Err(at_least_one("HEALTHCHECK"));
    }
    let typ = args[0].to_uppercase();
    let rest = &args[1..];
    if typ == "NONE" {
        if !rest.is_empty() {
            return Err("HEALTHCHECK NONE takes no arguments".into());
        }
        return Ok(Kind::Healthcheck(Healthcheck::None));
    }
    let f = flags
        .string("interval", "")
        .string("timeout", "")
        .string("start-period", "")
        .string("start-interval", "")
        .string("retries", "")
        .parse()?;
    if typ != "CMD" {
        return Err(format!(
            "Unknown type {} in HEALTHCHECK (try CMD)",
            crate::quote::go_quote(&typ)
        ));
    }
    let cmd = command_line(node, rest).args;
    if cmd.is_empty() {
        return Err("Missing command after HEALTHCHECK CMD".into());
    }
    let mut test = vec![if node.json {
        "CMD".to_string()
    } else {
        "CMD-SHELL".to_string()
    }];
    test.extend(cmd);
    let interval = |name: &'static str| -> Result<i64, String> {
        let v = f.get_string(name);
        if v.is_empty() {
            return Ok(0);
        }
        let d = parse_go_duration(&v)?;
        if d != 0 && d < 1_000_000 {
            return Err(format!("Interval \"{name}\" cannot be less than 1ms"));
        }
        Ok(d)
    };
    let retries = match f.get_string("retries").as_str() {
        "" => 0,
        v => {
            let n: i64 = v
                .parse()
                .ok()
                .filter(|n: &i64| i32::try_from(*n).is_ok())
                .ok_or_else(|| {
                    format!(
                        "strconv.ParseInt: parsing {}: invalid syntax",
                        crate::quote::go_quote(v)
                    )
                })?;
            if n < 0 {
                return Err(format!("--retries cannot be negative ({n})"));
            }
            n as i32
        }
    };
    Ok(Kind::Healthcheck(Healthcheck::Check(HealthConfig {
        test,
        interval: interval("interval")?,
        timeout: interval("timeout")?,
        start_period: interval("start-period")?,
        start_interval: interval("start-interval")?,
        retries,
    })))
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
