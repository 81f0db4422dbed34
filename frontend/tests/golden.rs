//! Golden files under `testdata/`: the parse of each `testdata/parse/<case>`
//! (`ast.txt`: BuildKit's dump, then each node's span) and the rendered error
//! of each `testdata/parse-errors/<case>` (`error.txt`). `RBUILD_BLESS=1`
//! rewrites the expected files.

use std::fs;
use std::path::{Path, PathBuf};

fn testdata(dir: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../testdata")
        .join(dir);
    let mut cases: Vec<PathBuf> = fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("Dockerfile").is_file())
        .collect();
    cases.sort();
    assert!(!cases.is_empty(), "no cases in {}", root.display());
    cases
}

fn check(path: &Path, got: &str, failures: &mut Vec<String>) {
    if std::env::var_os("RBUILD_BLESS").is_some() {
        fs::write(path, got).unwrap();
        return;
    }
    match fs::read_to_string(path) {
        Ok(want) if want == got => {}
        Ok(want) => failures.push(format!(
            "{}:\n--- want\n{want}\n--- got\n{got}",
            path.display()
        )),
        Err(e) => failures.push(format!("{}: {e} (run with RBUILD_BLESS=1)", path.display())),
    }
}

#[test]
fn parse_golden() {
    let mut failures = Vec::new();
    for case in testdata("parse") {
        let text = fs::read_to_string(case.join("Dockerfile")).unwrap();
        let df = frontend::parse("Dockerfile", &text)
            .unwrap_or_else(|e| panic!("{}: {}", case.display(), e.render()));
        let mut got = df.dump();
        got.push_str("--- spans\n");
        for node in &df.nodes {
            let s = &node.span;
            got.push_str(&format!(
                "{}:{}-{}:{} {}\n",
                s.start_line,
                s.start_column,
                s.end_line,
                s.end_column,
                node.keyword()
            ));
        }
        for w in &df.warnings {
            got.push_str(&format!(
                "warning {} line {}: {}\n",
                w.rule, w.line, w.message
            ));
        }
        check(&case.join("ast.txt"), &got, &mut failures);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn parse_error_golden() {
    let mut failures = Vec::new();
    for case in testdata("parse-errors") {
        let text = fs::read_to_string(case.join("Dockerfile")).unwrap();
        // Errors of every frontend stage: parse, instructions, plan, graph.
        let got = match frontend::parse("Dockerfile", &text) {
            Err(e) => format!("{}\n", e.render()),
            Ok(df) => {
                let options = frontend::stage::PlanOptions {
                    target: fs::read_to_string(case.join("target"))
                        .ok()
                        .map(|t| t.trim().to_string()),
                    ..Default::default()
                };
                match frontend::stage::plan(&df, &options)
                    .and_then(|p| frontend::graph::compile(&p, &frontend::graph::NoImages))
                {
                    Ok(_) => format!("no error:\n{}", df.dump()),
                    Err(e) => {
                        let line = e.span().and_then(|s| {
                            text.lines()
                                .nth(s.start_line - 1)
                                .map(|l| (s.start(), l.to_string()))
                        });
                        match line {
                            Some((loc, l)) => format!(
                                "{}\n",
                                frontend::span::render_snippet(&e.to_string(), &loc, &l)
                            ),
                            None => format!("{e}\n"),
                        }
                    }
                }
            }
        };
        check(&case.join("error.txt"), &got, &mut failures);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn graph_golden() {
    let mut failures = Vec::new();
    for case in testdata("graph") {
        let text = fs::read_to_string(case.join("Dockerfile")).unwrap();
        let df = frontend::parse("Dockerfile", &text).unwrap();
        let options = frontend::stage::PlanOptions {
            target: fs::read_to_string(case.join("target"))
                .ok()
                .map(|t| t.trim().to_string()),
            ..Default::default()
        };
        let plan = frontend::stage::plan(&df, &options)
            .unwrap_or_else(|e| panic!("{}: {e}", case.display()));
        let graph = frontend::graph::compile(&plan, &frontend::graph::NoImages).unwrap();
        check(&case.join("graph.dot"), &graph.to_dot(), &mut failures);
        let json = serde_json::to_string_pretty(&graph.to_json()).unwrap() + "\n";
        check(&case.join("graph.json"), &json, &mut failures);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
