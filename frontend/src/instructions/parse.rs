//! [`parse_node`]: a parser node to a typed [`Instruction`], with its
//! flags declared and checked and its argument count as BuildKit wants it.

use super::flags::Flags;
use super::*;
use crate::parser::{Dockerfile, Node, chomp, parse_heredoc};

/// Every instruction's name, for the hint after an unknown one.
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
