//! The build checks, rule by rule: each `testdata/lint/RULE/` has a
//! `bad.Dockerfile` whose findings of RULE must be exactly `expected`
//! (`LINE: message` per line) and a `good.Dockerfile` where RULE stays
//! quiet (an optional `dockerignore` is the context's `.dockerignore`,
//! an optional `build-args` holds `NAME=VALUE` lines).
//! Then the `check=` controls.

use std::path::{Path, PathBuf};

use frontend::graph::NoImages;
use frontend::ignore::{PatternMatcher, read_ignore_file};
use frontend::lint::{self, LintOptions, Report, rules};
use frontend::stage::PlanOptions;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/lint")
}

fn run(text: &str, ignore: Option<&PatternMatcher>, build_args: &[(&str, &str)]) -> Report {
    let df = frontend::parse("Dockerfile", text).unwrap();
    let instructions = frontend::instructions::parse(&df).unwrap();
    let options = PlanOptions {
        build_args: build_args
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..PlanOptions::default()
    };
    // A file that does not plan still gets the warnings found before.
    let plan = frontend::stage::plan(&df, &options).ok();
    let config = lint::config_for(&df, &options.build_args).unwrap();
    lint::lint(
        &df,
        &instructions,
        plan.as_ref(),
        config,
        &LintOptions {
            images: &NoImages,
            ignore,
            all_stages: true,
            build: &options,
        },
    )
}

fn lines_of(report: &Report, rule: &str) -> Vec<String> {
    report
        .sorted()
        .iter()
        .filter(|f| f.rule.name == rule)
        .map(|f| format!("{}: {}", f.span.start_line, f.message))
        .collect()
}

#[test]
fn every_rule_fires_on_its_bad_file_only() {
    let mut failures = Vec::new();
    let mut seen = Vec::new();
    for entry in std::fs::read_dir(dir()).unwrap() {
        let path = entry.unwrap().path();
        let rule = path.file_name().unwrap().to_str().unwrap().to_string();
        assert!(rules::by_name(&rule).is_some(), "{rule} is not a rule");
        let ignore = std::fs::read_to_string(path.join("dockerignore"))
            .ok()
            .map(|t| PatternMatcher::new(&read_ignore_file(&t)).unwrap());
        let read = |f: &str| std::fs::read_to_string(path.join(f)).unwrap();
        let args_text = std::fs::read_to_string(path.join("build-args")).unwrap_or_default();
        let args: Vec<(&str, &str)> = args_text
            .lines()
            .filter_map(|l| l.split_once('='))
            .collect();
        let bad = run(&read("bad.Dockerfile"), ignore.as_ref(), &args);
        let want: Vec<String> = read("expected").lines().map(str::to_string).collect();
        let got = lines_of(&bad, &rule);
        if got != want {
            failures.push(format!("{rule} bad: got {got:#?}\nwant {want:#?}"));
        }
        let good = run(&read("good.Dockerfile"), ignore.as_ref(), &args);
        let got = lines_of(&good, &rule);
        if !got.is_empty() {
            failures.push(format!("{rule} good: got {got:#?}"));
        }
        seen.push(rule);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    // Every rule BuildKit can report without a registry has a case.
    for r in rules::ALL {
        if r.name != "InvalidBaseImagePlatform" {
            assert!(seen.iter().any(|s| s == r.name), "no case for {}", r.name);
        }
    }
}

const TWO_RULES: &str = "FROM busybox as base\nMAINTAINER me\n";

#[test]
fn skip_error_and_the_build_arg() {
    let names = |r: &Report| -> Vec<&str> { r.findings.iter().map(|f| f.rule.name).collect() };
    let r = run(TWO_RULES, None, &[]);
    assert_eq!(names(&r), ["FromAsCasing", "MaintainerDeprecated"]);
    assert_eq!(r.violation(), None);

    let r = run(
        &format!("# check=skip=MaintainerDeprecated\n{TWO_RULES}"),
        None,
        &[],
    );
    assert_eq!(names(&r), ["FromAsCasing"]);
    let r = run(&format!("# check=skip=all\n{TWO_RULES}"), None, &[]);
    assert!(r.findings.is_empty());

    let r = run(&format!("# check=error=true\n{TWO_RULES}"), None, &[]);
    assert_eq!(
        r.violation().as_deref(),
        Some("lint violation found for rules: FromAsCasing, MaintainerDeprecated")
    );
    // The build arg takes the directive's place: it can drop error=true.
    let r = run(
        &format!("# check=error=true\n{TWO_RULES}"),
        None,
        &[("BUILDKIT_DOCKERFILE_CHECK", "skip=FromAsCasing")],
    );
    assert_eq!(names(&r), ["MaintainerDeprecated"]);
    assert_eq!(r.violation(), None);

    // A comment right above one instruction silences a rule there only.
    let r = run(
        "FROM busybox\n# check=skip=MaintainerDeprecated\nMAINTAINER a\nMAINTAINER b\n",
        None,
        &[],
    );
    let lines: Vec<usize> = r.findings.iter().map(|f| f.span.start_line).collect();
    assert_eq!(lines, [4]);

    // Experimental rules are off unless named.
    let text = "# stage description\nFROM busybox AS build\n";
    assert!(run(text, None, &[]).findings.is_empty());
    let r = run(
        text,
        None,
        &[("BUILDKIT_DOCKERFILE_CHECK", "experimental=all")],
    );
    assert_eq!(names(&r), ["InvalidDefinitionDescription"]);
}

#[test]
fn a_build_lints_only_the_stages_it_builds() {
    let text = "FROM busybox AS unused\nENV A 1\nFROM busybox AS used\nENV B 2\n";
    let df = frontend::parse("Dockerfile", text).unwrap();
    let instructions = frontend::instructions::parse(&df).unwrap();
    let options = PlanOptions::default();
    let plan = frontend::stage::plan(&df, &options).unwrap();
    let lint_with = |all_stages| {
        lint::lint(
            &df,
            &instructions,
            Some(&plan),
            lint::CheckConfig::default(),
            &LintOptions {
                images: &NoImages,
                ignore: None,
                all_stages,
                build: &options,
            },
        )
    };
    assert_eq!(lines_of(&lint_with(false), "LegacyKeyValueFormat").len(), 1);
    assert_eq!(lines_of(&lint_with(true), "LegacyKeyValueFormat").len(), 2);
}

/// Images whose configs say they are for linux/arm64.
struct Arm64Images;

impl frontend::graph::ImageConfigs for Arm64Images {
    fn config(
        &self,
        reference: &str,
        _: &frontend::stage::Platform,
    ) -> Option<frontend::graph::BaseConfig> {
        (reference == "arm-only").then(|| frontend::graph::BaseConfig {
            platform: Some(frontend::stage::Platform::parse("linux/arm64/v8").unwrap()),
            ..Default::default()
        })
    }
}

#[test]
fn a_base_image_for_another_platform() {
    let text = "FROM arm-only\nFROM busybox\n";
    let df = frontend::parse("Dockerfile", text).unwrap();
    let instructions = frontend::instructions::parse(&df).unwrap();
    let options = PlanOptions::default();
    let plan = frontend::stage::plan(&df, &options).unwrap();
    let report = lint::lint(
        &df,
        &instructions,
        Some(&plan),
        lint::CheckConfig::default(),
        &LintOptions {
            images: &Arm64Images,
            ignore: None,
            all_stages: true,
            build: &options,
        },
    );
    assert_eq!(
        lines_of(&report, "InvalidBaseImagePlatform"),
        [
            "1: Base image arm-only was pulled with platform \"linux/arm64\", expected \"linux/amd64\" for current build"
        ]
    );
}

#[test]
fn copy_ignored_file_is_experimental() {
    let ignore = PatternMatcher::new(&["*.key"]).unwrap();
    let text = "FROM busybox\nCOPY a.key /\n";
    assert!(run(text, Some(&ignore), &[]).findings.is_empty());
    let r = run(
        text,
        Some(&ignore),
        &[("BUILDKIT_DOCKERFILE_CHECK", "experimental=CopyIgnoredFile")],
    );
    assert_eq!(
        lines_of(&r, "CopyIgnoredFile"),
        ["2: Attempting to Copy file \"a.key\" that is excluded by .dockerignore"]
    );
}
