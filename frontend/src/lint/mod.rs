//! Build checks: BuildKit's lint rules over a parsed Dockerfile, its typed
//! instructions and its stage plan. One finding type, the rules as values
//! ([`rules`]), the `check=` settings ([`config`]); the checks that read
//! the file alone live here, those that follow each stage's variables in
//! [`stages`]. Nothing here runs anything.

pub mod config;
mod from;
pub mod rules;
mod stages;

use crate::graph::ImageConfigs;
use crate::ignore::PatternMatcher;
use crate::instructions::{Instruction, Kind};
use crate::parser::Dockerfile;
use crate::span::Span;
use crate::stage::{Plan, PlanError};

pub use config::{CheckConfig, ConfigError};
pub use rules::Rule;

/// The build arg that takes the place of the `# check=` directive.
pub const CHECK_BUILD_ARG: &str = "BUILDKIT_DOCKERFILE_CHECK";

/// One warning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The rule.
    pub rule: &'static Rule,
    /// What it says here.
    pub message: String,
    /// The instruction at fault.
    pub span: Span,
}

impl Finding {
    /// `Rule: message (line N)`, as BuildKit's short form.
    pub fn short(&self) -> String {
        format!(
            "{}: {} (line {})",
            self.rule.name, self.message, self.span.start_line
        )
    }
}

/// What the checks found.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The warnings, in the order found.
    pub findings: Vec<Finding>,
    /// `error=true`: findings fail the build.
    pub error_on_findings: bool,
    /// The stages would hold too much to follow (the checks stopped there).
    pub too_large: Option<PlanError>,
}

impl Report {
    /// BuildKit's `lint violation found for rules: A, B` when findings are
    /// errors and there are some.
    pub fn violation(&self) -> Option<String> {
        if !self.error_on_findings || self.findings.is_empty() {
            return None;
        }
        let mut names: Vec<&str> = Vec::new();
        for f in &self.findings {
            if !names.contains(&f.rule.name) {
                names.push(f.rule.name);
            }
        }
        Some(format!(
            "lint violation found for rules: {}",
            names.join(", ")
        ))
    }

    /// The findings sorted as BuildKit prints them (by line, stable).
    pub fn sorted(&self) -> Vec<&Finding> {
        let mut out: Vec<&Finding> = self.findings.iter().collect();
        out.sort_by_key(|f| f.span.start_line);
        out
    }
}

/// Collects findings under a config.
pub(crate) struct Linter {
    config: CheckConfig,
    findings: Vec<Finding>,
}

impl Linter {
    fn new(config: CheckConfig) -> Linter {
        Linter {
            config,
            findings: Vec::new(),
        }
    }

    /// Reports `rule` at `span` unless the config, with the instruction's
    /// own `check=` comment, turns it off.
    pub(crate) fn report(
        &mut self,
        rule: &'static Rule,
        span: &Span,
        comments: &[String],
        message: String,
    ) {
        if self.config.with_comments(comments).enabled(rule) {
            self.findings.push(Finding {
                rule,
                message,
                span: span.clone(),
            });
        }
    }
}

/// What the checks look at besides the file.
pub struct LintOptions<'a> {
    /// Base image configs (their ENV and SHELL).
    pub images: &'a dyn ImageConfigs,
    /// The context's `.dockerignore`, for CopyIgnoredFile.
    pub ignore: Option<&'a PatternMatcher>,
    /// Every stage (`rbuild check`), not only those the target needs (a
    /// build lints what it builds).
    pub all_stages: bool,
    /// The build's options (build args, target, platform): the FROM
    /// checks read the global scope from them when the file does not plan.
    pub build: &'a crate::stage::PlanOptions,
}

/// The settings: the `BUILDKIT_DOCKERFILE_CHECK` build arg when given,
/// else the file's `# check=` directive.
pub fn config_for(
    df: &Dockerfile,
    build_args: &std::collections::BTreeMap<String, String>,
) -> Result<CheckConfig, ConfigError> {
    match build_args.get(CHECK_BUILD_ARG) {
        Some(v) => CheckConfig::parse(v),
        None => CheckConfig::parse(df.directive("check").unwrap_or("")),
    }
}

/// Runs every check: those of the file's text, instructions and FROM lines
/// always, those that follow the stages when `plan` is given (it is not
/// when the file does not plan: the error is the caller's to report, after
/// the warnings found before it).
pub fn lint(
    df: &Dockerfile,
    instructions: &[Instruction],
    plan: Option<&Plan>,
    config: CheckConfig,
    options: &LintOptions,
) -> Report {
    let error_on_findings = config.error;
    let mut linter = Linter::new(config);
    file_checks(df, instructions, &mut linter);
    let too_large = stages::check(df.escape, instructions, plan, options, &mut linter).err();
    Report {
        findings: linter.findings,
        error_on_findings,
        too_large,
    }
}

/// The keyword as written (`From`, `run`).
fn keyword(ins: &Instruction) -> &str {
    ins.original.split_whitespace().next().unwrap_or("")
}

fn is_consistent_case(s: &str) -> bool {
    s == s.to_lowercase() || s == s.to_uppercase()
}

/// Checks of the text and the instructions alone, over every stage.
fn file_checks(df: &Dockerfile, all: &[Instruction], linter: &mut Linter) {
    for w in &df.warnings {
        if w.rule != rules::NO_EMPTY_CONTINUATION.name {
            continue;
        }
        if let Some(ins) = all
            .iter()
            .find(|i| i.span.start_line <= w.line && w.line <= i.span.end_line)
        {
            linter.report(
                &rules::NO_EMPTY_CONTINUATION,
                &ins.span,
                &ins.comments,
                "Empty continuation line".into(),
            );
        }
    }
    for ins in all {
        match &ins.kind {
            Kind::Maintainer(_) => linter.report(
                &rules::MAINTAINER_DEPRECATED,
                &ins.span,
                &ins.comments,
                "Maintainer instruction is deprecated in favor of using label".into(),
            ),
            Kind::From(from) => {
                if let Some(name) = &from.name_as_written
                    && *name != name.to_lowercase()
                {
                    linter.report(
                        &rules::STAGE_NAME_CASING,
                        &ins.span,
                        &ins.comments,
                        format!("Stage name '{name}' should be lowercase"),
                    );
                }
                let cmd = keyword(ins);
                if let Some(as_word) = &from.as_word
                    && is_consistent_case(cmd)
                {
                    let want_lower = cmd == cmd.to_lowercase();
                    let ok = if want_lower {
                        *as_word == as_word.to_lowercase()
                    } else {
                        *as_word == as_word.to_uppercase()
                    };
                    if !ok {
                        linter.report(
                            &rules::FROM_AS_CASING,
                            &ins.span,
                            &ins.comments,
                            format!("'{as_word}' and '{cmd}' keywords' casing do not match"),
                        );
                    }
                }
                if let Some(name) = &from.name {
                    definition_description(linter, ins, "FROM", &[name.as_str()]);
                }
            }
            Kind::Arg(defs) => {
                let keys: Vec<&str> = defs.iter().map(|d| d.key.as_str()).collect();
                definition_description(linter, ins, "ARG", &keys);
            }
            _ => {}
        }
    }
    stage_names(all, linter);
    instruction_casing(all, linter);
}

/// InvalidDefinitionDescription: the comment right above a named stage or
/// an ARG must start with its name.
fn definition_description(linter: &mut Linter, ins: &Instruction, what: &str, keys: &[&str]) {
    let (Some(last), Some(first)) = (ins.comments.last(), keys.first()) else {
        return;
    };
    let word = last.split(' ').next().unwrap_or("");
    if keys.contains(&word) {
        return;
    }
    let example = if keys.len() > 1 { "<arg_key>" } else { first };
    linter.report(
        &rules::INVALID_DEFINITION_DESCRIPTION,
        &ins.span,
        &ins.comments,
        format!("Comment for {what} should follow the format: `# {example} <description>`"),
    );
}

/// The instructions of the stages (each FROM and what follows it), meta
/// ARGs left out.
fn stage_instructions(all: &[Instruction]) -> &[Instruction] {
    let first_from = all
        .iter()
        .position(|i| matches!(i.kind, Kind::From(_)))
        .unwrap_or(all.len());
    &all[first_from..]
}

/// ReservedStageName and DuplicateStageName.
fn stage_names(all: &[Instruction], linter: &mut Linter) {
    let mut seen = std::collections::BTreeSet::new();
    for ins in all {
        let Kind::From(from) = &ins.kind else {
            continue;
        };
        let Some(name) = &from.name else { continue };
        if name == "context" || name == "scratch" {
            linter.report(
                &rules::RESERVED_STAGE_NAME,
                &ins.span,
                &ins.comments,
                format!(
                    "Stage name should not use the same name as reserved stage {}",
                    crate::quote::go_quote(name)
                ),
            );
        }
        if !seen.insert(name.clone()) {
            linter.report(
                &rules::DUPLICATE_STAGE_NAME,
                &ins.span,
                &ins.comments,
                format!(
                    "Duplicate stage name {}, stage names should be unique",
                    crate::quote::go_quote(name)
                ),
            );
        }
    }
}

/// ConsistentInstructionCasing: each keyword in the majority's case.
fn instruction_casing(all: &[Instruction], linter: &mut Linter) {
    let stages = stage_instructions(all);
    let (mut lower, mut upper) = (0, 0);
    for ins in stages {
        let k = keyword(ins);
        if is_consistent_case(k) {
            if k == k.to_lowercase() {
                lower += 1;
            } else {
                upper += 1;
            }
        }
    }
    let majority_lower = lower > upper;
    for ins in stages {
        let k = keyword(ins);
        let wrong = if majority_lower {
            (k != k.to_lowercase()).then_some("lowercase")
        } else {
            (k != k.to_uppercase()).then_some("uppercase")
        };
        if let Some(case) = wrong {
            linter.report(
                &rules::CONSISTENT_INSTRUCTION_CASING,
                &ins.span,
                &ins.comments,
                format!("Command '{k}' should match the case of the command majority ({case})"),
            );
        }
    }
}
