//! [`plan`]: global ARGs, each stage's base and sources, ONBUILD
//! triggers, the target and the stages it needs.

use std::collections::{BTreeMap, BTreeSet};

use super::*;
use crate::instructions::{self, Instruction, Kind};
use crate::parser::{self, Dockerfile};
use crate::shell::Lex;
use crate::span::Span;

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
    // Each default may build on the one before (`ARG A2=${A1}x`): what
    // they hold together is bounded as a stage's variables are.
    let mut held = Budget::default();
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
                held.hold(entry_bytes(&def.key, &v), &ins.span)?;
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
        // A `--build-context` of a stage's name takes the whole stage's
        // place, as BuildKit's: its base is the context and its own
        // instructions don't run.
        let replaced = from.name.as_ref().and_then(|n| {
            if options.named_contexts.contains(n) {
                Some(Base::Context(n.clone()))
            } else if options.scratch_contexts.contains(n) {
                Some(Base::Scratch)
            } else if options.image_contexts.contains(n) {
                Some(Base::Image(n.clone()))
            } else {
                None
            }
        });
        let mut body = body;
        let base = if let Some(base) = replaced {
            body.clear();
            base
        } else if let Some(&i) = by_name.get(&expanded.to_lowercase()) {
            Base::Stage(i)
        } else if options.named_contexts.contains(&expanded) {
            Base::Context(expanded.clone())
        } else if expanded == "scratch" || options.scratch_contexts.contains(&expanded) {
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
                let source =
                    resolve_source(&lex, &from, &names, &options.named_contexts, &ins.span)?;
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
                            .filter_map(|m| crate::csv::fields(m).ok())
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
        scratch_contexts: options.scratch_contexts.clone(),
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
                let fields = crate::csv::fields(m).ok()?;
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
    named_contexts: &BTreeSet<String>,
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
    if named_contexts.contains(from) {
        return Ok(Source::Context(from.to_string()));
    }
    Ok(Source::Image(from.to_string()))
}
