//! Property tests: the frontend never panics on any input, and printing a
//! parsed file then parsing it again gives the same instructions.

use frontend::graph::{NoImages, compile};
use frontend::ignore::{PatternMatcher, read_ignore_file};
use frontend::shell::Lex;
use frontend::stage::{PlanOptions, plan};
use proptest::prelude::*;
use std::collections::BTreeMap;

/// Dockerfile-like text: keywords, flags, quotes, escapes, heredocs,
/// continuations and variables, mixed with arbitrary characters.
fn dockerfile_text() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        Just("FROM ".to_string()),
        Just("RUN ".to_string()),
        Just("COPY ".to_string()),
        Just("ADD ".to_string()),
        Just("ENV ".to_string()),
        Just("ARG ".to_string()),
        Just("LABEL ".to_string()),
        Just("ONBUILD ".to_string()),
        Just("HEALTHCHECK ".to_string()),
        Just("CMD ".to_string()),
        Just("SHELL ".to_string()),
        Just("EXPOSE ".to_string()),
        Just("WORKDIR ".to_string()),
        Just("USER ".to_string()),
        Just("VOLUME ".to_string()),
        Just(" AS ".to_string()),
        Just("--from=".to_string()),
        Just("--mount=type=cache,target=".to_string()),
        Just("--link ".to_string()),
        Just("<<EOF".to_string()),
        Just("<<-'EOF'".to_string()),
        Just("3<<EOF".to_string()),
        Just("EOF".to_string()),
        Just("\n".to_string()),
        Just("\\\n".to_string()),
        Just("`\n".to_string()),
        Just("# escape=`\n".to_string()),
        Just("# syntax=x\n".to_string()),
        Just("# comment\n".to_string()),
        Just("[\"a\", \"b\"]".to_string()),
        Just("[\"a\", 1]".to_string()),
        Just("${A:-x}".to_string()),
        Just("${A#*}".to_string()),
        Just("${A/x/y}".to_string()),
        Just("$A".to_string()),
        Just("\"".to_string()),
        Just("'".to_string()),
        Just("=".to_string()),
        Just(" ".to_string()),
        Just("\t".to_string()),
        Just("scratch".to_string()),
        Just("/dst/".to_string()),
        "[a-z0-9./*?]{0,6}".prop_map(|s| s),
        any::<char>().prop_map(|c| c.to_string()),
    ];
    prop::collection::vec(token, 0..60).prop_map(|t| t.concat())
}

fn word_text() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        Just("$".to_string()),
        Just("{".to_string()),
        Just("}".to_string()),
        Just(":".to_string()),
        Just("-".to_string()),
        Just("+".to_string()),
        Just("?".to_string()),
        Just("#".to_string()),
        Just("%".to_string()),
        Just("/".to_string()),
        Just("*".to_string()),
        Just("\\".to_string()),
        Just("`".to_string()),
        Just("'".to_string()),
        Just("\"".to_string()),
        Just(" ".to_string()),
        Just("<<".to_string()),
        Just("A".to_string()),
        Just("EMPTY".to_string()),
        Just("1".to_string()),
        any::<char>().prop_map(|c| c.to_string()),
    ];
    prop::collection::vec(token, 0..40).prop_map(|t| t.concat())
}

fn env() -> BTreeMap<String, String> {
    [("A", "a b*c"), ("EMPTY", "")]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(3000),
        ..ProptestConfig::default()
    })]

    #[test]
    fn parser_never_panics_and_reprints_stably(text in dockerfile_text()) {
        if let Ok(df) = frontend::parse("Dockerfile", &text) {
            let printed = frontend::print::print(&df);
            let again = frontend::parse("Dockerfile", &printed);
            prop_assert!(again.is_ok(), "reprint failed: {:?}\n{}", again.err(), printed);
            prop_assert_eq!(again.unwrap().dump(), df.dump());
            // Later stages never panic either.
            if let Ok(p) = plan(&df, &PlanOptions::default()) {
                let _ = compile(&p, &NoImages);
            }
        }
    }

    #[test]
    fn arbitrary_text_never_panics(text in ".{0,300}") {
        if let Ok(df) = frontend::parse("Dockerfile", &text) {
            let _ = frontend::instructions::parse(&df);
        }
    }

    #[test]
    fn expander_never_panics(word in word_text(), backtick in any::<bool>()) {
        let lex = Lex::new(if backtick { '`' } else { '\\' });
        let env = env();
        let one = lex.process_word(&word, &env);
        let many = lex.process_words(&word, &env);
        // Both forms fail on the same inputs.
        prop_assert_eq!(one.is_err(), many.is_err());
    }

    #[test]
    fn ignore_patterns_never_panic(patterns in prop::collection::vec("[!a-z*?/.\\[\\]\\\\^-]{0,8}", 0..5), path in "[a-z/.]{0,12}") {
        let text = patterns.join("\n");
        let read = read_ignore_file(&text);
        if let Ok(pm) = PatternMatcher::new(&read) {
            let _ = pm.matches_or_parent_matches(&path);
            let _ = pm.may_include_under(&path);
        }
    }
}
