//! `rbuild debug parse|expand|ignore`: the frontend on its own, so that it
//! can be checked from outside against BuildKit's behaviour.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, bail};
use frontend::ignore::{PatternMatcher, read_ignore_file_lines};
use frontend::parser::{self, Node};
use frontend::shell::Lex;
use serde_json::{Value, json};

use crate::cli::{DebugCommand, ExpandArgs, IgnoreArgs, ParseArgs, ParseFormat};

pub fn run(cmd: DebugCommand) -> anyhow::Result<()> {
    match cmd {
        DebugCommand::Parse(args) => parse(args),
        DebugCommand::Expand(args) => expand(args),
        DebugCommand::Ignore(args) => ignore(args),
    }
}

fn parse(args: ParseArgs) -> anyhow::Result<()> {
    let text = crate::dockerfile::read_dockerfile(&args.file, false)?;
    let name = if args.file == Path::new("-") {
        "Dockerfile".to_string()
    } else {
        args.file.display().to_string()
    };
    let df = parser::parse(&name, &text)?;
    match args.format {
        ParseFormat::Dump => print!("{}", df.dump()),
        ParseFormat::Json => {
            let nodes: Vec<Value> = df.nodes.iter().map(node_json).collect();
            println!("{}", serde_json::to_string_pretty(&nodes)?);
        }
    }
    Ok(())
}

/// One instruction as `debug parse --format json` prints it.
fn node_json(node: &Node) -> Value {
    // For ONBUILD the trigger gives sub_cmd, json and value; the flags stay
    // ONBUILD's own. An ONBUILD with nothing after it has no trigger node
    // (its dump is `(onbuild)`): its value is the empty rest of its line,
    // `[""]`, as the outside checks read BuildKit's parse. For HEALTHCHECK
    // the type word is the sub_cmd and stays first in value, as in the dump.
    let (sub_cmd, inner) = match (&node.trigger, node.keyword().as_str()) {
        (Some(trigger), _) => (trigger.keyword(), trigger.as_ref()),
        (None, "healthcheck") => (
            node.args
                .first()
                .map(|a| a.to_lowercase())
                .unwrap_or_default(),
            node,
        ),
        _ => (String::new(), node),
    };
    let value = match (&node.trigger, node.keyword().as_str()) {
        (None, "onbuild") => vec![String::new()],
        _ => inner.args.clone(),
    };
    json!({
        "cmd": node.keyword(),
        "sub_cmd": sub_cmd,
        "json": inner.json,
        "flags": node.flags,
        "value": value,
        "start_line": node.span.start_line,
        "end_line": node.span.end_line,
        "original": node.original,
    })
}

fn expand(args: ExpandArgs) -> anyhow::Result<()> {
    let mut env = BTreeMap::new();
    for pair in &args.env {
        let Some((name, value)) = pair.split_once('=') else {
            bail!("--env `{pair}` is not NAME=VALUE");
        };
        env.insert(name.to_string(), value.to_string());
    }
    let lex = Lex::new(args.escape);
    let expansion = lex.process(&args.word, &env)?;
    let mut out = serde_json::Map::new();
    if args.words {
        out.insert("words".into(), json!(expansion.words));
    } else {
        out.insert("result".into(), json!(expansion.result));
    }
    out.insert("matched".into(), json!(expansion.matched));
    out.insert("unmatched".into(), json!(expansion.unmatched));
    println!("{}", Value::Object(out));
    Ok(())
}

fn ignore(args: IgnoreArgs) -> anyhow::Result<()> {
    // Each pattern with where it came from, so a bad one can be named.
    let mut patterns: Vec<(String, String)> = Vec::new();
    if let Some(file) = &args.file {
        let text = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
        for (line, p) in read_ignore_file_lines(&String::from_utf8_lossy(&text)) {
            patterns.push((format!("{}:{line}:1", file.display()), p));
        }
    }
    for p in &args.patterns {
        patterns.push(("--pattern".to_string(), p.clone()));
    }
    for (origin, p) in &patterns {
        let bad = match PatternMatcher::new(std::slice::from_ref(p)) {
            Err(e) => Some(e.to_string()),
            Ok(one) if one.first_invalid().is_some() => {
                Some(format!("syntax error in pattern `{p}`"))
            }
            Ok(_) => None,
        };
        if let Some(message) = bad {
            bail!("{origin}: {message}");
        }
    }
    let list: Vec<&str> = patterns.iter().map(|(_, p)| p.as_str()).collect();
    let matcher = PatternMatcher::new(&list).context("reading the ignore patterns")?;
    let mut out = String::new();
    for path in &args.paths {
        let ignored = matcher
            .matches_or_parent_matches(path)
            .with_context(|| format!("matching `{path}`"))?;
        let verdict = if ignored { "ignored" } else { "included" };
        out.push_str(&format!("{verdict}\t{path}\n"));
    }
    print!("{out}");
    Ok(())
}
