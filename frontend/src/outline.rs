//! BuildKit's `frontend.outline` and `frontend.targets` subrequests (buildx
//! `--call=outline`, `--call=targets`): what a build of the target takes
//! (the build args its stages use, with values and descriptions; the
//! secrets and ssh ids its RUN steps mount) and the stages a file has.
//! Ported in behaviour from dockerfile2llb's outline capture: a stage uses
//! the global args its FROM expands and the ARGs it declares, and a used
//! global arg uses the args its default refers to.

use std::collections::{BTreeMap, BTreeSet};

use crate::instructions::{self, Instruction, Kind, MountType};
use crate::parser::Dockerfile;
use crate::shell::Lex;
use crate::span::Span;
use crate::stage::{Base, Budget, EnvList, Plan, PlanError, PlanOptions, entry_bytes};

/// A build arg the target uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutlineArg {
    /// Its name.
    pub name: String,
    /// From a `# NAME description` comment right above its ARG.
    pub description: String,
    /// Its value for this build (a build arg, else the default).
    pub value: String,
    /// The ARG instruction.
    pub span: Span,
}

/// A secret or ssh id the target's RUN steps mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Needed {
    /// The id.
    pub name: String,
    /// `required` on the mount.
    pub required: bool,
    /// The first RUN that mounts it.
    pub span: Span,
}

/// What a build of the target takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outline {
    /// The target stage's name.
    pub name: String,
    /// From a `# NAME description` comment right above its FROM.
    pub description: String,
    /// Build args, by line.
    pub args: Vec<OutlineArg>,
    /// Secret ids, by line.
    pub secrets: Vec<Needed>,
    /// SSH ids, by line.
    pub ssh: Vec<Needed>,
}

/// One stage, as `--call=targets` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The `AS` name (lower case), empty for none.
    pub name: String,
    /// The last stage: what a build without `--target` makes.
    pub default: bool,
    /// From a `# NAME description` comment right above its FROM.
    pub description: String,
    /// The FROM word as written.
    pub base: String,
    /// `--platform` as written.
    pub platform: String,
    /// The FROM instruction.
    pub span: Span,
}

/// BuildKit's doc comment: the text after `NAME ` in a comment line right
/// above the instruction.
fn doc_comment(comments: &[String], name: &str) -> String {
    if name.is_empty() {
        return String::new();
    }
    let prefix = format!("{name} ");
    comments
        .iter()
        .find_map(|c| c.strip_prefix(&prefix))
        .unwrap_or_default()
        .to_string()
}

/// The stages of `df` in order.
pub fn targets(df: &Dockerfile) -> Result<Vec<Target>, PlanError> {
    let all = instructions::parse(df)?;
    let froms: Vec<&Instruction> = all
        .iter()
        .filter(|i| matches!(i.kind, Kind::From(_)))
        .collect();
    Ok(froms
        .iter()
        .enumerate()
        .map(|(i, ins)| {
            let Kind::From(from) = &ins.kind else {
                unreachable!("filtered")
            };
            let name = from.name.clone().unwrap_or_default();
            Target {
                description: doc_comment(&ins.comments, &name),
                name,
                default: i + 1 == froms.len(),
                base: from.image.clone(),
                platform: from.platform.clone().unwrap_or_default(),
                span: ins.span.clone(),
            }
        })
        .collect())
}

/// What one arg's value came from.
#[derive(Debug, Clone)]
struct ArgInfo {
    arg: OutlineArg,
    /// The args its default refers to (global args only).
    deps: BTreeSet<String>,
}

impl ArgInfo {
    /// `key` as the ARG `ins` defines it, with its value for this build.
    fn new(ins: &Instruction, key: &str, value: Option<String>, deps: BTreeSet<String>) -> Self {
        ArgInfo {
            arg: OutlineArg {
                name: key.to_string(),
                description: doc_comment(&ins.comments, key),
                value: value.unwrap_or_default(),
                span: ins.span.clone(),
            },
            deps,
        }
    }
}

/// The global scope of `plan` (declared and predefined args) as an
/// environment to expand in.
fn global_env(plan: &Plan) -> EnvList {
    let mut env = EnvList::default();
    for (k, v) in &plan.global_args {
        env.set(k, v);
    }
    env
}

/// A stage's capture: the args it declares (over the global ones), those
/// it uses, what it mounts.
#[derive(Debug, Clone, Default)]
struct Capture {
    own: BTreeMap<String, ArgInfo>,
    used: BTreeSet<String>,
    secrets: Vec<Needed>,
    ssh: Vec<Needed>,
}

impl Capture {
    /// What the stage knows of arg `k`: its own ARG, else the global one.
    fn info<'a>(&'a self, k: &str, globals: &'a BTreeMap<String, ArgInfo>) -> Option<&'a ArgInfo> {
        self.own.get(k).or_else(|| globals.get(k))
    }

    /// The used args, with those their defaults refer to.
    fn used_args(&self, globals: &BTreeMap<String, ArgInfo>) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let mut pending: Vec<String> = self.used.iter().cloned().collect();
        while let Some(k) = pending.pop() {
            if !out.insert(k.clone()) {
                continue;
            }
            if let Some(info) = self.info(&k, globals) {
                pending.extend(info.deps.iter().cloned());
            }
        }
        out
    }
}

/// The outline of a build of `df` with `options` (its target, build args).
pub fn outline(df: &Dockerfile, options: &PlanOptions) -> Result<Outline, PlanError> {
    let plan = crate::stage::plan(df, options)?;
    let all = instructions::parse(df)?;
    let lex = Lex::new(df.escape);
    let global_env = global_env(&plan);

    // The global args: their values and the args their defaults use.
    let mut globals: BTreeMap<String, ArgInfo> = BTreeMap::new();
    let mut env = EnvList::default();
    for (k, v) in plan.global_args.iter() {
        // The predefined ones (platforms, proxies) are there to refer to.
        if !all.iter().any(|i| declares(i, k)) {
            env.set(k, v);
        }
    }
    for ins in all.iter().take_while(|i| !matches!(i.kind, Kind::From(_))) {
        let Kind::Arg(defs) = &ins.kind else { continue };
        for def in defs {
            let mut deps = BTreeSet::new();
            let value = match (options.build_args.get(&def.key), &def.value) {
                (Some(v), _) => Some(v.clone()),
                (None, Some(d)) => {
                    let e = lex
                        .process(d, &env)
                        .map_err(|e| PlanError::at(&ins.span, e.to_string()))?;
                    deps = e.matched;
                    if deps.remove(&def.key)
                        && let Some(old) = globals.get(&def.key)
                    {
                        deps.extend(old.deps.iter().cloned());
                    }
                    Some(e.result)
                }
                (None, None) => None,
            };
            if let Some(v) = &value {
                env.set(&def.key, v);
            }
            globals.insert(def.key.clone(), ArgInfo::new(ins, &def.key, value, deps));
        }
    }

    // Stages in order, each built on an earlier one's final variables.
    let mut captures: BTreeMap<usize, Capture> = BTreeMap::new();
    let mut envs: BTreeMap<usize, EnvList> = BTreeMap::new();
    let mut held = Budget::default();
    for &index in &plan.needed {
        let stage = &plan.stages[index];
        let mut c = Capture::default();
        // The global args FROM refers to (name and platform).
        let from = all
            .iter()
            .find(|i| i.span == stage.span)
            .and_then(|i| match &i.kind {
                Kind::From(f) => Some(f),
                _ => None,
            });
        if let Some(f) = from {
            for word in std::iter::once(&f.image).chain(f.platform.as_ref()) {
                if let Ok(e) = lex.process(word, &global_env) {
                    c.used.extend(e.matched);
                }
            }
        }
        let mut env = EnvList::default();
        if let Base::Stage(b) = stage.base
            && let Some(base) = envs.get(&b)
        {
            held.hold(base.held_bytes(), &stage.span)?;
            env = base.clone();
        }
        capture_stage(
            &mut c,
            &mut env,
            &mut held,
            stage,
            &lex,
            options,
            &global_env,
        )?;
        captures.insert(index, c);
        envs.insert(index, env);
    }

    // The target first, then the stages it builds on, then the others it
    // uses; an arg or id is reported for the first stage that has it.
    let target = &plan.stages[plan.target];
    let mut order = vec![plan.target];
    let mut at = target;
    while let Base::Stage(b) = at.base {
        order.push(b);
        at = &plan.stages[b];
    }
    for &n in &plan.needed {
        if !order.contains(&n) {
            order.push(n);
        }
    }
    let mut visited = BTreeSet::new();
    let mut args = Vec::new();
    let (mut secrets, mut ssh): (Vec<Needed>, Vec<Needed>) = (Vec::new(), Vec::new());
    let (mut seen_secrets, mut seen_ssh) = (BTreeSet::new(), BTreeSet::new());
    for n in order {
        let c = &captures[&n];
        for k in c.used_args(&globals) {
            if let Some(info) = c.info(&k, &globals)
                && visited.insert(k.clone())
            {
                args.push(info.arg.clone());
            }
        }
        for s in &c.secrets {
            if seen_secrets.insert(s.name.clone()) {
                secrets.push(s.clone());
            }
        }
        for s in &c.ssh {
            if seen_ssh.insert(s.name.clone()) {
                ssh.push(s.clone());
            }
        }
    }
    args.sort_by_key(|a| a.span.start_line);
    secrets.sort_by_key(|s| s.span.start_line);
    ssh.sort_by_key(|s| s.span.start_line);
    let name = target.name.clone().unwrap_or_default();
    let from = all.iter().find(|i| i.span == target.span);
    Ok(Outline {
        description: from
            .map(|f| doc_comment(&f.comments, &name))
            .unwrap_or_default(),
        name,
        args,
        secrets,
        ssh,
    })
}

/// Whether `ins` declares `key` as a global ARG.
fn declares(ins: &Instruction, key: &str) -> bool {
    matches!(&ins.kind, Kind::Arg(defs) if defs.iter().any(|d| d.key == key))
}

/// Walks `stage`'s instructions: its ARGs (recorded unless they only take
/// a global's value), ENVs (for later defaults) and mounted ids.
fn capture_stage(
    c: &mut Capture,
    env: &mut EnvList,
    held: &mut Budget,
    stage: &crate::stage::Stage,
    lex: &Lex,
    options: &PlanOptions,
    global: &EnvList,
) -> Result<(), PlanError> {
    for ins in &stage.instructions {
        match &ins.kind {
            Kind::Arg(defs) => {
                for def in defs {
                    let given = options.build_args.get(&def.key);
                    let value = match (given, &def.value) {
                        (Some(v), _) => Some(v.clone()),
                        (None, Some(d)) => Some(
                            lex.process_word(d, &*env)
                                .map_err(|e| PlanError::at(&ins.span, e.to_string()))?,
                        ),
                        (None, None) => None,
                    };
                    let inherited = value.is_none().then(|| global.get(&def.key)).flatten();
                    match inherited {
                        // Only the global's value: the global is what counts.
                        Some(v) => {
                            held.hold(entry_bytes(&def.key, v), &ins.span)?;
                            env.set(&def.key, v)
                        }
                        None => {
                            if let Some(v) = &value {
                                held.hold(entry_bytes(&def.key, v), &ins.span)?;
                                env.set(&def.key, v);
                            }
                            c.own.insert(
                                def.key.clone(),
                                ArgInfo::new(ins, &def.key, value, BTreeSet::new()),
                            );
                        }
                    }
                    c.used.insert(def.key.clone());
                }
            }
            Kind::Env(pairs) => {
                for kv in pairs {
                    if let Ok(v) = lex.process_word(&kv.value, &*env) {
                        held.hold(entry_bytes(&kv.key, &v), &ins.span)?;
                        env.set(&kv.key, &v);
                    }
                }
            }
            Kind::Run(run) => {
                for m in &run.mounts {
                    let Ok(mount) = instructions::parse_mount(m, &mut |v| {
                        lex.process_word(v, &*env).map_err(|e| e.to_string())
                    }) else {
                        continue;
                    };
                    match mount.mount_type {
                        MountType::Secret => {
                            // BuildKit's order: source=, id=, the target's name.
                            let id = mount
                                .source
                                .clone()
                                .filter(|s| !s.is_empty())
                                .or_else(|| mount.id.clone().filter(|i| !i.is_empty()))
                                .or_else(|| {
                                    mount.target.as_deref().map(|t| {
                                        t.rsplit('/').next().unwrap_or_default().to_string()
                                    })
                                });
                            if let Some(id) = id
                                && !c.secrets.iter().any(|s| s.name == id)
                            {
                                c.secrets.push(Needed {
                                    name: id,
                                    required: mount.required,
                                    span: ins.span.clone(),
                                });
                            }
                        }
                        MountType::Ssh => {
                            let id = mount
                                .id
                                .clone()
                                .filter(|i| !i.is_empty())
                                .unwrap_or_else(|| "default".into());
                            if !c.ssh.iter().any(|s| s.name == id) {
                                c.ssh.push(Needed {
                                    name: id,
                                    required: mount.required,
                                    span: ins.span.clone(),
                                });
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}
