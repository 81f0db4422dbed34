//! The checks that follow each stage as BuildKit dispatches it (the FROM
//! lines' own are `from.rs`'s): each instruction against the variables in
//! scope at that point (UndefinedVar), the stage's SHELL, WORKDIR and
//! earlier CMD/ENTRYPOINT/HEALTHCHECK, and the `.dockerignore`.

use std::collections::{BTreeMap, BTreeSet};

use super::from::{default_arg_checks, from_checks};
use super::{LintOptions, Linter, rules};
use crate::instructions::{self, Instruction, Kind};
use crate::shell::Lex;
use crate::stage::{Base, Budget, EnvList, Plan, PlanError, StageEnv, entry_bytes};

/// The args BuildKit defines before any ARG (its `defaultArgs`).
pub(super) const PREDEFINED: [&str; 11] = [
    "BUILDPLATFORM",
    "BUILDOS",
    "BUILDOSVERSION",
    "BUILDARCH",
    "BUILDVARIANT",
    "TARGETPLATFORM",
    "TARGETOS",
    "TARGETOSVERSION",
    "TARGETARCH",
    "TARGETVARIANT",
    "TARGETSTAGE",
];

/// ARGs that never join a stage's environment (BuildKit's `nonEnvArgs`).
const NON_ENV_ARGS: [&str; 2] = ["BUILDKIT_SBOM_SCAN_CONTEXT", "BUILDKIT_SBOM_SCAN_STAGE"];

/// Follows the stages; an error when they would hold too much of
/// variables (see [`Budget`]).
pub(super) fn check(
    escape: char,
    all: &[Instruction],
    plan: Option<&Plan>,
    options: &LintOptions,
    linter: &mut Linter,
) -> Result<(), PlanError> {
    let lex = Lex::new(escape);
    let froms: Vec<&Instruction> = all
        .iter()
        .filter(|i| matches!(i.kind, Kind::From(_)))
        .collect();
    let meta_args: Vec<&instructions::ArgDef> = all
        .iter()
        .take_while(|i| !matches!(i.kind, Kind::From(_)))
        .filter_map(|i| match &i.kind {
            Kind::Arg(defs) => Some(defs),
            _ => None,
        })
        .flatten()
        .collect();
    let global = match plan {
        Some(p) => EnvList::from_entries(&p.global_args),
        None => match crate::stage::global_args(all, escape, options.build) {
            Ok(g) => g,
            Err(_) => return Ok(()),
        },
    };
    from_checks(&froms, &meta_args, &global, &lex, linter);
    default_arg_checks(&froms, &meta_args, &global, &lex, linter);
    let Some(plan) = plan else { return Ok(()) };
    let mut held = Budget::default();

    let wanted: BTreeSet<usize> = if options.all_stages {
        (0..plan.stages.len()).collect()
    } else {
        plan.needed.iter().copied().collect()
    };
    let mut finished: BTreeMap<usize, StageState> = BTreeMap::new();
    for (index, stage) in plan.stages.iter().enumerate() {
        if !wanted.contains(&index) {
            continue;
        }
        let start = match &stage.base {
            Base::Stage(b) => match finished.get(b) {
                Some(s) => {
                    held.hold(s.env.held_bytes(), &stage.span)?;
                    s.for_child()
                }
                None => continue,
            },
            Base::Image(r) => {
                let want = &plan.stage_platform(index);
                let cfg = options.images.config(r, want).unwrap_or_default();
                if let (Some(actual), Some(from)) = (&cfg.platform, froms.get(index))
                    && (actual.os != want.os || actual.architecture != want.architecture)
                {
                    linter.report(
                        &rules::INVALID_BASE_IMAGE_PLATFORM,
                        &from.span,
                        &from.comments,
                        format!(
                            "Base image {r} was pulled with platform {}, expected {} for current build",
                            crate::quote::go_quote(&actual.to_string()),
                            crate::quote::go_quote(&want.to_string())
                        ),
                    );
                }
                StageState {
                    env: StageEnv::new(&cfg.env, &cfg.workdir),
                    shell_set: !cfg.shell.is_empty(),
                    workdir_set: false,
                    used: Used::default(),
                }
            }
            Base::Scratch | Base::Context(_) => StageState {
                env: StageEnv::new(&[], "/"),
                shell_set: false,
                workdir_set: false,
                used: Used::default(),
            },
        };
        let mut walk = Walk {
            lex: &lex,
            plan,
            global: &global,
            options,
            linter,
            state: start,
            held: &mut held,
        };
        for ins in &stage.instructions {
            walk.instruction(ins)?;
        }
        finished.insert(index, walk.state);
    }
    Ok(())
}

/// Where each of CMD, ENTRYPOINT and HEALTHCHECK was last set in the stage.
#[derive(Clone, Default)]
struct Used {
    cmd: Option<Instruction>,
    entrypoint: Option<Instruction>,
    healthcheck: Option<Instruction>,
}

/// A stage's state as the checks follow it.
#[derive(Clone)]
struct StageState {
    env: StageEnv,
    /// A SHELL is in effect (the base image's or an instruction's).
    shell_set: bool,
    /// An absolute WORKDIR was set in this build.
    workdir_set: bool,
    used: Used,
}

impl StageState {
    /// The state a stage `FROM` this one starts with.
    fn for_child(&self) -> StageState {
        StageState {
            used: Used::default(),
            ..self.clone()
        }
    }
}

struct Walk<'a, 'l> {
    lex: &'a Lex,
    plan: &'a Plan,
    global: &'a EnvList,
    options: &'a LintOptions<'a>,
    linter: &'l mut Linter,
    state: StageState,
    held: &'l mut Budget,
}

impl Walk<'_, '_> {
    /// Expands `word` as the instruction would, collecting the variables
    /// no ENV or ARG defines.
    fn expand(&self, word: &str, unmatched: &mut BTreeSet<String>) -> String {
        match self.state.env.expand_with_matches(self.lex, word) {
            Ok(e) => {
                unmatched.extend(e.unmatched);
                e.result
            }
            Err(_) => word.to_string(),
        }
    }

    /// UndefinedVar for what `unmatched` holds, less the stage's ARGs.
    fn undefined(&mut self, ins: &Instruction, unmatched: BTreeSet<String>) {
        let keys: Vec<&str> = self
            .state
            .env
            .scope
            .iter()
            .map(|(k, _)| k.as_str())
            .collect();
        for var in unmatched {
            if self.state.env.args.value(&var).is_some() || NON_ENV_ARGS.contains(&var.as_str()) {
                continue;
            }
            let mut msg = format!("Usage of undefined variable '${var}'");
            if let Some(s) = crate::instructions::search(&var, &keys, true) {
                msg.push_str(&format!(" (did you mean ${s}?)"));
            }
            self.linter
                .report(&rules::UNDEFINED_VAR, &ins.span, &ins.comments, msg);
        }
    }

    fn report(&mut self, rule: &'static rules::Rule, ins: &Instruction, message: String) {
        self.linter.report(rule, &ins.span, &ins.comments, message);
    }

    fn instruction(&mut self, ins: &Instruction) -> Result<(), PlanError> {
        let mut unmatched = BTreeSet::new();
        match &ins.kind {
            Kind::Env(pairs) | Kind::Label(pairs) => {
                let is_env = matches!(ins.kind, Kind::Env(_));
                let mut expanded = Vec::new();
                for kv in pairs {
                    let k = self.expand(&kv.key, &mut unmatched);
                    let v = self.expand(&kv.value, &mut unmatched);
                    expanded.push((k, v));
                }
                self.undefined(ins, unmatched);
                let name = if is_env { "ENV" } else { "LABEL" };
                if pairs.iter().any(|kv| kv.legacy) {
                    self.report(
                        &rules::LEGACY_KEY_VALUE_FORMAT,
                        ins,
                        format!(
                            "\"{name} key=value\" should be used instead of legacy \"{name} key value\" format"
                        ),
                    );
                }
                if is_env {
                    let bytes = expanded.iter().map(|(k, v)| 2 * entry_bytes(k, v)).sum();
                    self.held.hold(bytes, &ins.span)?;
                    for (k, v) in &expanded {
                        self.secret_key(ins, "ENV", k);
                        self.state.env.scope.set(k, v);
                        self.state.env.image_env.set(k, v);
                    }
                }
            }
            Kind::Arg(defs) => {
                for def in defs {
                    self.secret_key(ins, "ARG", &def.key);
                    if def.value.is_some() && !self.plan.build_args.contains_key(&def.key) {
                        let mut u = BTreeSet::new();
                        self.expand(def.value.as_deref().unwrap_or(""), &mut u);
                        self.undefined(ins, u);
                    }
                }
                if let Ok(args) =
                    self.state
                        .env
                        .apply_arg(self.lex, defs, &self.plan.build_args, self.global)
                {
                    let bytes = args
                        .iter()
                        .map(|(k, v)| 2 * entry_bytes(k, v.as_deref().unwrap_or("")))
                        .sum();
                    self.held.hold(bytes, &ins.span)?;
                }
            }
            Kind::Copy(c) => {
                for w in [&c.chown, &c.chmod].into_iter().flatten() {
                    self.expand(w, &mut unmatched);
                }
                let sources = self.sources(&c.files, &mut unmatched);
                self.undefined(ins, unmatched);
                if c.from.is_none() {
                    self.ignored_sources(ins, "Copy", &sources);
                }
            }
            Kind::Add(a) => {
                for w in [&a.chown, &a.chmod, &a.checksum].into_iter().flatten() {
                    self.expand(w, &mut unmatched);
                }
                let sources = self.sources(&a.files, &mut unmatched);
                self.undefined(ins, unmatched);
                self.ignored_sources(ins, "Add", &sources);
            }
            Kind::Workdir(path) => {
                let p = self.expand(path, &mut unmatched);
                self.undefined(ins, unmatched);
                if !self.state.workdir_set && !p.starts_with('/') {
                    self.report(
                        &rules::WORKDIR_RELATIVE_PATH,
                        ins,
                        format!(
                            "Relative workdir {} can have unexpected results if the base image changes",
                            crate::quote::go_quote(&p)
                        ),
                    );
                }
                self.state.workdir_set = true;
                let _ = self.state.env.apply_workdir(self.lex, path);
            }
            Kind::User(w) | Kind::StopSignal(w) => {
                self.expand(w, &mut unmatched);
                self.undefined(ins, unmatched);
            }
            Kind::Volume(words) => {
                for w in words {
                    self.expand(w, &mut unmatched);
                }
                self.undefined(ins, unmatched);
            }
            Kind::Run(run) => {
                for m in &run.mounts {
                    let _ =
                        instructions::parse_mount(m, &mut |v| Ok(self.expand(v, &mut unmatched)));
                }
                self.undefined(ins, unmatched);
            }
            Kind::Expose(words) => {
                for w in words {
                    let Ok(ports) = self.state.env.expand(self.lex, w) else {
                        continue;
                    };
                    for port in ports.split_whitespace() {
                        self.expose(ins, port);
                    }
                }
            }
            Kind::Cmd(cl) | Kind::Entrypoint(cl) => {
                let name = ins.kind.name();
                let previous = if matches!(ins.kind, Kind::Cmd(_)) {
                    self.state.used.cmd.replace(ins.clone())
                } else {
                    self.state.used.entrypoint.replace(ins.clone())
                };
                self.multiple(name, previous);
                if cl.prepend_shell && !self.state.shell_set {
                    self.report(
                        &rules::JSON_ARGS_RECOMMENDED,
                        ins,
                        format!(
                            "JSON arguments recommended for {name} to prevent unintended behavior related to OS signals"
                        ),
                    );
                }
            }
            Kind::Healthcheck(_) => {
                let previous = self.state.used.healthcheck.replace(ins.clone());
                self.multiple("HEALTHCHECK", previous);
            }
            Kind::Shell(_) => self.state.shell_set = true,
            Kind::From(_) | Kind::OnBuild(_) | Kind::Maintainer(_) => {}
        }
        Ok(())
    }

    /// MultipleInstructionsDisallowed, at the earlier one (the one that
    /// has no effect).
    fn multiple(&mut self, name: &str, previous: Option<Instruction>) {
        if let Some(prev) = previous {
            self.report(
                &rules::MULTIPLE_INSTRUCTIONS_DISALLOWED,
                &prev,
                format!(
                    "Multiple {name} instructions should not be used in the same stage because only the last one will be used"
                ),
            );
        }
    }

    fn sources(
        &self,
        files: &instructions::SourcesAndDest,
        unmatched: &mut BTreeSet<String>,
    ) -> Vec<String> {
        let sources: Vec<String> = files
            .sources
            .iter()
            .map(|s| self.expand(s, unmatched))
            .collect();
        self.expand(&files.dest, unmatched);
        // Heredoc bodies with an unquoted delimiter expand too, quotes kept
        // (BuildKit's ExpandRaw).
        let mut raw = Lex::new('\\');
        raw.skip_process_quotes = true;
        for c in files.contents.iter().filter(|c| c.expand) {
            if let Ok(e) = self.state.env.expand_with_matches(&raw, &c.data) {
                unmatched.extend(e.unmatched);
            }
        }
        sources
    }

    /// SecretsUsedInArgOrEnv: a name with a secret-like word (and none of
    /// the words that mark it harmless).
    fn secret_key(&mut self, ins: &Instruction, what: &str, key: &str) {
        const DENY: [&str; 10] = [
            "apikey",
            "auth",
            "credential",
            "credentials",
            "key",
            "password",
            "pword",
            "passwd",
            "secret",
            "token",
        ];
        const ALLOW: [&str; 3] = ["public", "file", "version"];
        // Every `_`-separated part has `_` or an end on both sides.
        let lower = key.to_lowercase();
        let has = |words: &[&str]| lower.split('_').any(|p| words.contains(&p));
        if has(&DENY) && !has(&ALLOW) {
            self.report(
                &rules::SECRETS_USED_IN_ARG_OR_ENV,
                ins,
                format!(
                    "Do not use ARG or ENV instructions for sensitive data ({what} {})",
                    crate::quote::go_quote(key)
                ),
            );
        }
    }

    /// ExposeProtoCasing and ExposeInvalidFormat, per port as written.
    fn expose(&mut self, ins: &Instruction, port: &str) {
        let mut found = instructions::expose::ExposeFindings::default();
        if instructions::expose::check_port(port, &mut found).is_err() {
            return;
        }
        if found.proto_casing {
            self.report(
                &rules::EXPOSE_PROTO_CASING,
                ins,
                format!("Defined protocol '{port}' in EXPOSE instruction should be lowercase"),
            );
        }
        if found.invalid_format {
            self.report(
                &rules::EXPOSE_INVALID_FORMAT,
                ins,
                format!(
                    "EXPOSE instruction should not define an IP address or host-port mapping, found '{port}'"
                ),
            );
        }
    }

    /// CopyIgnoredFile: a source the `.dockerignore` excludes (not judged
    /// when the file has exclusions: a negation may bring a file back).
    fn ignored_sources(&mut self, ins: &Instruction, cmd: &str, sources: &[String]) {
        let Some(matcher) = self.options.ignore else {
            return;
        };
        if matcher.has_exclusions() {
            return;
        }
        for src in sources {
            if src.contains("://") || src.starts_with("git@") {
                continue;
            }
            let clean = crate::glob::clean(src);
            let clean = clean.trim_start_matches('/');
            let clean = if clean.is_empty() { "." } else { clean };
            if clean == "." {
                let all = matcher
                    .patterns()
                    .iter()
                    .any(|p| !p.is_exclusion() && matches!(p.as_str(), "*" | "**" | "**/*"));
                if !all {
                    continue;
                }
            }
            if matcher.matches_or_parent_matches(clean).unwrap_or(false) {
                self.report(
                    &rules::COPY_IGNORED_FILE,
                    ins,
                    format!(
                        "Attempting to {cmd} file {} that is excluded by .dockerignore",
                        crate::quote::go_quote(clean)
                    ),
                );
            }
        }
    }
}
