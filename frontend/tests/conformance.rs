//! BuildKit's own test data (../shared/conformance), run against our frontend.
//!
//! Every set is read from the corpus beside the checkout (override with
//! `RBUILD_CONFORMANCE=DIR`). Each test collects all failing cases and
//! reports them together; a missing corpus is a failure, not a skip.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use frontend::ignore::{PatternMatcher, read_ignore_file};
use frontend::parser::{self, JsonArrayError};
use frontend::shell::Lex;
use serde_json::Value;

fn corpus() -> PathBuf {
    if let Ok(dir) = std::env::var("RBUILD_CONFORMANCE") {
        return PathBuf::from(dir);
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/conformance");
    assert!(
        dir.is_dir(),
        "conformance corpus not found at {} (set RBUILD_CONFORMANCE)",
        dir.display()
    );
    dir
}

/// Both the main set and its `more/` twin.
fn sets(rel: &str) -> Vec<PathBuf> {
    let root = corpus();
    let found: Vec<PathBuf> = [root.join(rel), root.join("more").join(rel)]
        .into_iter()
        .filter(|p| p.exists())
        .collect();
    assert!(!found.is_empty(), "no conformance set {rel}");
    found
}

fn cases(rel: &str) -> Vec<Value> {
    let mut out = Vec::new();
    for path in sets(rel) {
        let doc: Value = serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
        out.extend(doc["cases"].as_array().unwrap().iter().cloned());
    }
    assert!(!out.is_empty(), "{rel} has no cases");
    out
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or(&Vec::new())
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

fn report(name: &str, total: usize, failures: Vec<String>) {
    assert!(total > 0, "{name}: no cases ran");
    assert!(
        failures.is_empty(),
        "{name}: {} of {total} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn parser_dumps() {
    let mut total = 0;
    let mut failures = Vec::new();
    for dir in sets("parser") {
        for entry in fs::read_dir(&dir).unwrap() {
            let case = entry.unwrap().path();
            let text = fs::read(case.join("Dockerfile")).unwrap();
            let expected = fs::read_to_string(case.join("result")).unwrap();
            total += 1;
            match parser::parse("Dockerfile", &String::from_utf8_lossy(&text)) {
                Ok(df) if df.dump() == expected => {}
                Ok(df) => failures.push(format!(
                    "{}: dump differs\n--- expected\n{expected}--- got\n{}",
                    case.display(),
                    df.dump()
                )),
                Err(e) => failures.push(format!("{}: {e}", case.display())),
            }
        }
    }
    report("parser", total, failures);
}

#[test]
fn parser_negative() {
    let mut total = 0;
    let mut failures = Vec::new();
    for dir in sets("parser-negative") {
        for entry in fs::read_dir(&dir).unwrap() {
            let case = entry.unwrap().path();
            let text = fs::read_to_string(case.join("Dockerfile")).unwrap();
            total += 1;
            if let Ok(df) = parser::parse("Dockerfile", &text) {
                failures.push(format!("{}: parsed: {}", case.display(), df.dump()));
            }
        }
    }
    report("parser-negative", total, failures);
}

/// Lines of a line-based test file, as BuildKit's tests read them.
fn test_lines(path: &Path) -> Vec<String> {
    fs::read_to_string(path)
        .unwrap()
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l).to_string())
        .collect()
}

#[test]
fn env_var_test() {
    let env: BTreeMap<String, String> = [
        ("PWD", "/home"),
        ("SHELL", "bash"),
        ("KOREAN", "한국어"),
        ("NULL", ""),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let lex = Lex::new('\\');
    let mut total = 0;
    let mut failures = Vec::new();
    for path in sets("shell/envVarTest") {
        for line in test_lines(&path) {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = line.split('|').map(str::trim).collect();
            assert_eq!(fields.len(), 3, "bad test line {line:?}");
            // Windows-only lines test case-insensitive names, a Windows platform rule.
            if fields[0] == "W" {
                continue;
            }
            total += 1;
            let got = lex.process_word(fields[1], &env);
            match (fields[2], got) {
                ("error", Err(_)) => {}
                ("error", Ok(v)) => failures.push(format!("{line}: expected error, got {v:?}")),
                (want, Ok(v)) if v == want => {}
                (want, got) => failures.push(format!("{line}: want {want:?}, got {got:?}")),
            }
        }
    }
    report("envVarTest", total, failures);
}

#[test]
fn words_test() {
    let lex = Lex::new('\\');
    let mut total = 0;
    let mut failures = Vec::new();
    for path in sets("shell/wordsTest") {
        // Each file is read on its own, with its own growing environment.
        let mut env: Vec<(String, String)> = Vec::new();
        for line in test_lines(&path) {
            if line.starts_with('#') || line.is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix("ENV") {
                let (k, v) = rest.trim_start().split_once('=').unwrap();
                env.push((k.to_string(), v.to_string()));
                continue;
            }
            let (input, expected) = line.split_once('|').unwrap();
            let input = input.trim();
            let expected = expected.trim_start();
            total += 1;
            match (expected, lex.process_words(input, &env)) {
                ("error", Err(_)) => {}
                (want, Ok(words))
                    if want != "error" && words == want.split(',').collect::<Vec<_>>() => {}
                (want, got) => failures.push(format!("{line}: want {want:?}, got {got:?}")),
            }
        }
    }
    report("wordsTest", total, failures);
}

#[test]
fn process_word_json() {
    let lex = Lex::new('\\');
    let all = cases("shell/process-word.json");
    let mut failures = Vec::new();
    for case in &all {
        let env: BTreeMap<String, String> = case["envs"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
            .collect();
        let input = case["input"].as_str().unwrap();
        let id = case["id"].as_str().unwrap();
        match lex.process(input, &env) {
            Err(e) if case["expected_error"] == true => {
                if let Some(want) = case["expected_error_contains"].as_str()
                    && !e.to_string().contains(want)
                {
                    failures.push(format!("{id}: error {e} lacks {want:?}"));
                }
            }
            Err(e) => failures.push(format!("{id}: unexpected error {e}")),
            Ok(got) if case["expected_error"] == true => {
                failures.push(format!("{id}: expected error, got {:?}", got.result))
            }
            Ok(got) => {
                if got.result != case["expected"].as_str().unwrap() {
                    failures.push(format!("{id}: got {:?}", got.result));
                }
                if case.get("expected_matched").is_some() {
                    let matched: Vec<String> = got.matched.into_iter().collect();
                    let unmatched: Vec<String> = got.unmatched.into_iter().collect();
                    if matched != strs(&case["expected_matched"])
                        || unmatched != strs(&case["expected_unmatched"])
                    {
                        failures.push(format!("{id}: matched {matched:?} unmatched {unmatched:?}"));
                    }
                }
            }
        }
    }
    report("process-word.json", all.len(), failures);
}

#[test]
fn patternmatcher_json() {
    let all = cases("dockerignore/patternmatcher.json");
    let mut failures = Vec::new();
    for case in &all {
        let id = case["id"].as_str().unwrap();
        let patterns = strs(&case["patterns"]);
        let path = case["path"].as_str().unwrap();
        let result =
            PatternMatcher::new(&patterns).and_then(|pm| match case["function"].as_str() {
                Some("Matches") => pm.matches(path),
                Some("MatchesOrParentMatches") => pm.matches_or_parent_matches(path),
                other => panic!("{id}: unknown function {other:?}"),
            });
        let want_err = case["expected_error"] == true;
        match result {
            Err(_) if want_err => {}
            Ok(m) if !want_err && m == case["expected_match"].as_bool().unwrap() => {}
            got => failures.push(format!("{id} {patterns:?} {path:?}: got {got:?}")),
        }
    }
    report("patternmatcher.json", all.len(), failures);
}

#[test]
fn ignorefile_json() {
    let all = cases("dockerignore/ignorefile.json");
    let mut failures = Vec::new();
    for case in &all {
        let got = read_ignore_file(case["content"].as_str().unwrap());
        if got != strs(&case["expected_patterns"]) {
            failures.push(format!("{}: got {got:?}", case["id"]));
        }
    }
    report("ignorefile.json", all.len(), failures);
}

#[test]
fn heredoc_extract() {
    let all = cases("parser-facts/heredoc-extract.json");
    let mut failures = Vec::new();
    for case in &all {
        let id = case["id"].as_str().unwrap();
        let df = match parser::parse("Dockerfile", case["dockerfile"].as_str().unwrap()) {
            Ok(df) => df,
            Err(e) => {
                failures.push(format!("{id}: {e}"));
                continue;
            }
        };
        let got: Vec<Value> = df.nodes[1..]
            .iter()
            .map(|n| {
                if n.heredocs.is_empty() {
                    Value::Null
                } else {
                    serde_json::to_value(
                        n.heredocs
                            .iter()
                            .map(|h| {
                                serde_json::json!({
                                    "name": h.name, "content": h.content, "expand": h.expand,
                                    "chomp": h.chomp, "file_descriptor": h.file_descriptor,
                                })
                            })
                            .collect::<Vec<_>>(),
                    )
                    .unwrap()
                }
            })
            .collect();
        if Value::Array(got.clone()) != case["expected_heredocs"] {
            failures.push(format!("{id}: got {}", Value::Array(got)));
        }
    }
    report("heredoc-extract.json", all.len(), failures);
}

#[test]
fn heredoc_syntax() {
    let all = cases("parser-facts/heredoc-syntax.json");
    let mut failures = Vec::new();
    for case in &all {
        let id = case["id"].as_str().unwrap();
        let ok = match case["kind"].as_str().unwrap() {
            "word" => {
                let got = parser::parse_heredoc(case["word"].as_str().unwrap());
                match (case["expected"].as_str().unwrap(), got) {
                    ("heredoc", Ok(Some(h))) => h.name == case["expected_name"].as_str().unwrap(),
                    ("error", Err(_)) => true,
                    ("not-heredoc", Ok(None)) => true,
                    _ => false,
                }
            }
            // Upstream compares only the heredocs it finds with the expected
            // names at the same index. BuildKit finds none in `RUN <<- EOF`
            // (the lexer splits `<<-` from `EOF`), which that check accepts;
            // we compare the same way so as to stay BuildKit-exact.
            "line" => {
                parser::heredocs_from_line(case["line"].as_str().unwrap()).is_ok_and(|docs| {
                    let want = strs(&case["expected_names"]);
                    docs.len() <= want.len() && docs.iter().zip(&want).all(|(d, w)| &d.name == w)
                })
            }
            "chomp" => {
                parser::chomp(case["content"].as_str().unwrap())
                    == case["expected"].as_str().unwrap()
            }
            other => panic!("{id}: unknown kind {other}"),
        };
        if !ok {
            failures.push(id.to_string());
        }
    }
    report("heredoc-syntax.json", all.len(), failures);
}

#[test]
fn json_arrays() {
    let all = cases("parser-facts/json-arrays.json");
    let mut failures = Vec::new();
    for case in &all {
        let got = parser::parse_json_array(case["input"].as_str().unwrap());
        let ok = match (&case["expected"], got) {
            (Value::Null, Err(JsonArrayError::NotArray | JsonArrayError::NotStringArray)) => true,
            (want @ Value::Array(_), Ok(words)) => strs(want) == words,
            _ => false,
        };
        if !ok {
            failures.push(case["id"].to_string());
        }
    }
    report("json-arrays.json", all.len(), failures);
}

#[test]
fn directives() {
    let all = cases("parser-facts/directives.json");
    let mut failures = Vec::new();
    for case in &all {
        let id = case["id"].as_str().unwrap();
        let input = case["input"].as_str().unwrap();
        let ok = match case["kind"].as_str().unwrap() {
            "directives" => {
                let got = parser::DirectiveParser::default().parse_all(input).unwrap();
                let got: Vec<Value> = got
                    .iter()
                    .map(|d| serde_json::json!({"name": d.name, "value": d.value}))
                    .collect();
                Value::Array(got) == case["expected"]
            }
            kind => {
                let found = if kind == "detect-syntax" {
                    parser::detect_syntax(input)
                } else {
                    parser::parse_directive(case["directive"].as_str().unwrap(), input)
                };
                match (case["expected_found"].as_bool().unwrap(), found) {
                    (false, None) => true,
                    (true, Some(f)) => {
                        let want = |key: &str, got: &str| {
                            case.get(key).is_none_or(|w| w.as_str() == Some(got))
                        };
                        want("expected_ref", &f.reference)
                            && want("expected_value", &f.reference)
                            && want("expected_cmdline", &f.value)
                            && case
                                .get("expected_line")
                                .is_none_or(|l| l.as_u64() == Some(f.line as u64))
                    }
                    _ => false,
                }
            }
        };
        if !ok {
            failures.push(id.to_string());
        }
    }
    report("directives.json", all.len(), failures);
}

#[test]
fn parser_misc() {
    let all = cases("parser-facts/parser-misc.json");
    let mut failures = Vec::new();
    for case in &all {
        let id = case["id"].as_str().unwrap();
        match case["kind"].as_str().unwrap() {
            "line-numbers" => {
                let df = parser::parse("Dockerfile", case["dockerfile"].as_str().unwrap()).unwrap();
                let got: Vec<Value> = df
                    .nodes
                    .iter()
                    .map(|n| serde_json::json!([n.span.start_line, n.span.end_line]))
                    .collect();
                let root = serde_json::json!([
                    df.nodes.first().unwrap().span.start_line,
                    df.nodes.last().unwrap().span.end_line
                ]);
                if Value::Array(got) != case["expected_instruction_lines"]
                    || root != case["expected_root_lines"]
                {
                    failures.push(format!("{id}: lines differ"));
                }
            }
            "warnings" => {
                let df = parser::parse("Dockerfile", case["dockerfile"].as_str().unwrap()).unwrap();
                let count = case["expected_warning_count"].as_u64().unwrap() as usize;
                let contain_ok = case["expected_warnings_contain"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .zip(&df.warnings)
                    .all(|(want, w)| strs(want).iter().all(|s| w.message.contains(s.as_str())));
                if df.warnings.len() != count || !contain_ok {
                    failures.push(format!("{id}: warnings {:?}", df.warnings));
                }
            }
            "line-too-long" => {
                let fill = &case["fill"];
                let filler = fill["char"]
                    .as_str()
                    .unwrap()
                    .repeat(fill["count"].as_u64().unwrap() as usize);
                let text = case["dockerfile_template"]
                    .as_str()
                    .unwrap()
                    .replace("%s", &filler);
                match parser::parse("Dockerfile", &text) {
                    Err(e) if e.message == case["expected_error"].as_str().unwrap() => {}
                    other => failures.push(format!("{id}: got {:?}", other.map(|d| d.dump()))),
                }
            }
            other => panic!("{id}: unknown kind {other}"),
        }
    }
    report("parser-misc.json", all.len(), failures);
}

#[test]
fn words_json() {
    let all = cases("parser-facts/words.json");
    let mut failures = Vec::new();
    for case in &all {
        let got = parser::parse_words(case["input"].as_str().unwrap(), '\\');
        if got != strs(&case["expected"]) {
            failures.push(format!("{}: got {got:?}", case["id"]));
        }
    }
    report("words.json", all.len(), failures);
}

#[test]
fn real_world_dockerfiles_parse_and_round_trip() {
    let dir = corpus().join("real-world");
    let mut total = 0;
    let mut failures = Vec::new();
    for entry in fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("Dockerfile") {
            continue;
        }
        total += 1;
        let text = String::from_utf8_lossy(&fs::read(&path).unwrap()).into_owned();
        let df = match parser::parse("Dockerfile", &text) {
            Ok(df) => df,
            Err(e) => {
                failures.push(format!("{}: {}", path.display(), e.render()));
                continue;
            }
        };
        // Typed instructions: every file converts, except jq templates
        // (docker-library's `{{ ... }}` files), which BuildKit rejects too.
        let template = text.lines().any(|l| l.starts_with("{{"));
        match (frontend::instructions::parse(&df), template) {
            (Ok(_), false) => {}
            (Err(e), true) if e.message.starts_with("unknown instruction: {{") => {}
            (Ok(_), true) => failures.push(format!("{}: template converted", path.display())),
            (Err(e), _) => failures.push(format!("{}: {e}", path.display())),
        }
        // The build graph compiles (images unresolved: no network here).
        if !template {
            // A global ARG without default used in FROM needs --build-arg, as
            // in BuildKit: give each one a value.
            let mut options = frontend::stage::PlanOptions::default();
            for node in df.nodes.iter().take_while(|n| n.keyword() != "from") {
                for word in node.args.iter().filter(|w| !w.contains('=')) {
                    options
                        .build_args
                        .insert(word.clone(), "example.com/placeholder:1".into());
                }
            }
            let compiled = frontend::stage::plan(&df, &options)
                .and_then(|p| frontend::graph::compile(&p, &frontend::graph::NoImages));
            if let Err(e) = compiled {
                failures.push(format!("{}: graph: {e}", path.display()));
            }
        }
        // Printing and parsing again gives the same instructions.
        let printed = frontend::print::print(&df);
        match parser::parse("Dockerfile", &printed) {
            Ok(again) if again.dump() == df.dump() => {}
            Ok(again) => failures.push(format!(
                "{}: round trip differs\n{}\n---\n{}",
                path.display(),
                df.dump(),
                again.dump()
            )),
            Err(e) => failures.push(format!(
                "{}: reprint does not parse: {e}\n{printed}",
                path.display()
            )),
        }
    }
    assert!(total >= 200, "only {total} real-world files found");
    report("real-world", total, failures);
}

fn first_instruction(dockerfile: &str) -> Result<frontend::instructions::Instruction, String> {
    let df = parser::parse("Dockerfile", dockerfile).map_err(|e| format!("parse: {e}"))?;
    frontend::instructions::parse_node(&df.nodes[0]).map_err(|e| e.message)
}

#[test]
fn instruction_errors() {
    let all = cases("instructions/errors.json");
    let mut failures = Vec::new();
    for case in &all {
        let id = case["id"].as_str().unwrap();
        let want = case["expected_error"].as_str().unwrap();
        match first_instruction(case["dockerfile"].as_str().unwrap()) {
            Err(e) if e.starts_with("parse: ") => {
                failures.push(format!("{id}: must parse, got {e}"))
            }
            Err(e) => {
                let ok = match case["match"].as_str().unwrap() {
                    "exact" => e == want,
                    _ => e.contains(want),
                };
                if !ok {
                    failures.push(format!("{id}: got {e:?}"));
                }
            }
            Ok(i) => failures.push(format!("{id}: no error, got {:?}", i.kind)),
        }
    }
    report("instructions/errors.json", all.len(), failures);
}

#[test]
fn heredoc_commands() {
    use frontend::instructions::Kind;
    let all = cases("instructions/heredoc-commands.json");
    let mut failures = Vec::new();
    for case in &all {
        let id = case["id"].as_str().unwrap();
        let got = match first_instruction(case["dockerfile"].as_str().unwrap()) {
            Ok(i) => i.kind,
            Err(e) => {
                failures.push(format!("{id}: {e}"));
                continue;
            }
        };
        let ok = match got {
            Kind::Copy(c) => {
                let contents: Vec<Value> = c
                    .files
                    .contents
                    .iter()
                    .map(
                        |s| serde_json::json!({"path": s.path, "data": s.data, "expand": s.expand}),
                    )
                    .collect();
                c.files.dest == case["expected_dest"].as_str().unwrap()
                    && c.files.sources == strs(&case["expected_source_paths"])
                    && Value::Array(contents) == case["expected_source_contents"]
            }
            Kind::Run(r) => {
                let files: Vec<Value> = r
                    .command
                    .files
                    .iter()
                    .map(|f| serde_json::json!({"name": f.name, "data": f.data, "chomp": f.chomp}))
                    .collect();
                r.command.prepend_shell == case["expected_prepend_shell"].as_bool().unwrap()
                    && r.command.args == strs(&case["expected_cmdline"])
                    && Value::Array(files) == case["expected_files"]
            }
            other => {
                failures.push(format!("{id}: unexpected {other:?}"));
                continue;
            }
        };
        if !ok {
            failures.push(id.to_string());
        }
    }
    report("heredoc-commands.json", all.len(), failures);
}

#[test]
fn expose_ports() {
    use frontend::instructions::expose::{ExposeFindings, parse_port, parse_ports};
    let all = cases("instructions/expose-ports.json");
    let mut failures = Vec::new();
    for case in &all {
        let id = case["id"].as_str().unwrap();
        let mut findings = ExposeFindings::default();
        let got = match case["kind"].as_str().unwrap() {
            "one" => parse_port(case["spec"].as_str().unwrap(), &mut findings),
            _ => parse_ports(&strs(&case["specs"]), &mut findings),
        };
        let ok = match (&case.get("expected_error"), &got) {
            (Some(Value::String(want)), Err(e)) => e == want,
            (Some(Value::Bool(true)), Err(_)) => true,
            (None, Ok(ports)) => *ports == strs(&case["expected"]),
            _ => false,
        };
        if !ok {
            failures.push(format!("{id}: got {got:?}"));
        }
    }
    report("expose-ports.json", all.len(), failures);
}

#[test]
fn git_refs() {
    use frontend::gitref::{GitRefError, fragment_format, parse_git_ref};
    let all = cases("git-ref/git-ref.json");
    let mut failures = Vec::new();
    for case in &all {
        let id = case["id"].as_str().unwrap();
        let r = case["ref"].as_str().unwrap();
        let ok = match case["kind"].as_str().unwrap() {
            "parse" => match (parse_git_ref(r), &case["expected"]) {
                (Err(e), Value::Null) => case["expected_error_contains"]
                    .as_str()
                    .is_none_or(|want| matches!(&e, GitRefError::Invalid { message, .. } if message.contains(want))),
                (Ok(g), want @ Value::Object(_)) => {
                    let got = serde_json::json!({
                        "remote": g.remote, "short_name": g.short_name, "ref": g.ref_name,
                        "subdir": g.subdir, "unencrypted_tcp": g.unencrypted_tcp,
                        "indistinguishable_from_local": g.indistinguishable_from_local,
                        "mtime": g.mtime, "checksum": g.checksum, "fetch_by_commit": g.fetch_by_commit,
                    });
                    &got == want
                }
                _ => false,
            },
            "fragment-format" => {
                let got = fragment_format(r, case["keep_subdir"].as_bool().unwrap());
                let want = case["expected"].as_str().unwrap();
                match (got, case["expected_ok"].as_bool().unwrap()) {
                    (Some(g), true) => g == want,
                    (None, false) => want == r,
                    _ => false,
                }
            }
            other => panic!("{id}: unknown kind {other}"),
        };
        if !ok {
            failures.push(format!("{id}: got {:?}", parse_git_ref(r)));
        }
    }
    report("git-ref.json", all.len(), failures);
}
