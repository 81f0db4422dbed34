//! The checks of the FROM lines against the global ARGs, every stage
//! (UndefinedArgInFrom, RedundantTargetPlatform,
//! FromPlatformFlagConstDisallowed, InvalidDefaultArgInFrom).

use std::collections::BTreeSet;

use super::stages::PREDEFINED;
use super::{Linter, rules};
use crate::instructions::{self, Instruction, Kind};
use crate::shell::Lex;
use crate::stage::EnvList;

/// FROM's image and `--platform` against the global ARGs, every stage.
pub(super) fn from_checks(
    froms: &[&Instruction],
    meta_args: &[&instructions::ArgDef],
    global: &EnvList,
    lex: &Lex,
    linter: &mut Linter,
) {
    let mut declared: Vec<String> = global.iter().map(|(k, _)| k.clone()).collect();
    declared.extend(meta_args.iter().map(|a| a.key.clone()));
    declared.sort();
    declared.dedup();
    let undefined = |linter: &mut Linter, ins: &Instruction, unmatched: &BTreeSet<String>| {
        for arg in unmatched {
            if declared.contains(arg) {
                continue;
            }
            let suggest = crate::instructions::search(arg, &declared, true);
            let mut msg = format!("FROM argument '{arg}' is not declared");
            if let Some(s) = suggest {
                msg.push_str(&format!(" (did you mean {s}?)"));
            }
            linter.report(&rules::UNDEFINED_ARG_IN_FROM, &ins.span, &ins.comments, msg);
        }
    };
    for ins in froms {
        let Kind::From(from) = &ins.kind else {
            continue;
        };
        if let Ok(e) = lex.process(&from.image, global) {
            undefined(linter, ins, &e.unmatched);
        }
        let Some(platform) = &from.platform else {
            continue;
        };
        let Ok(e) = lex.process(platform, global) else {
            continue;
        };
        undefined(linter, ins, &e.unmatched);
        if e.matched.len() == 1
            && e.unmatched.is_empty()
            && e.matched.contains("TARGETPLATFORM")
            && global.get("TARGETPLATFORM") == Some(e.result.as_str())
        {
            linter.report(
                &rules::REDUNDANT_TARGET_PLATFORM,
                &ins.span,
                &ins.comments,
                format!(
                    "Setting platform to predefined {platform} in FROM is redundant as this is the default behavior"
                ),
            );
        }
        if e.matched.is_empty()
            && e.unmatched.is_empty()
            && let Ok(p) = crate::stage::Platform::parse(&e.result)
        {
            let name = from.name.as_deref().unwrap_or("");
            if !name.contains(&p.os) && !name.contains(&p.architecture) {
                linter.report(
                    &rules::FROM_PLATFORM_FLAG_CONST_DISALLOWED,
                    &ins.span,
                    &ins.comments,
                    format!(
                        "FROM --platform flag should not use constant value {}",
                        crate::quote::go_quote(&e.result)
                    ),
                );
            }
        }
    }
}

/// InvalidDefaultArgInFrom: with the ARG defaults alone (no build args),
/// each FROM must still name an image.
pub(super) fn default_arg_checks(
    froms: &[&Instruction],
    meta_args: &[&instructions::ArgDef],
    global: &EnvList,
    lex: &Lex,
    linter: &mut Linter,
) {
    let mut env = EnvList::default();
    for k in PREDEFINED {
        if let Some(v) = global.get(k) {
            env.set(k, v);
        }
    }
    for def in meta_args {
        if let Some(default) = &def.value {
            let Ok(v) = lex.process_word(default, &env) else {
                return;
            };
            env.set(&def.key, &v);
        }
    }
    for ins in froms {
        let Kind::From(from) = &ins.kind else {
            continue;
        };
        let Ok(name) = lex.process_word(&from.image, &env) else {
            return;
        };
        if crate::reference::Reference::parse(&name).is_err() {
            linter.report(
                &rules::INVALID_DEFAULT_ARG_IN_FROM,
                &ins.span,
                &ins.comments,
                format!(
                    "Default value for ARG {} results in empty or invalid base image name",
                    from.image
                ),
            );
        }
    }
}
