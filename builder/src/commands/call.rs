//! `rbuild build --call=outline|targets[,format=json|text]`: BuildKit's
//! frontend subrequests as buildx prints them, instead of a build. The text
//! forms are BuildKit's printers (Go tabwriter tables, to stdout); the JSON
//! forms its result.json (two-space indent, HTML characters escaped as Go
//! escapes them, the Dockerfile as base64 under `sources`).

use anyhow::bail;
use base64::Engine as _;
use serde_json::{Value, json};

/// A parsed `--call`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// build, check, outline or targets.
    pub name: String,
    /// `format=json` (else text).
    pub json: bool,
}

impl Call {
    /// Parses buildx's `NAME[,format=json|text]`.
    pub fn parse(spec: &str) -> anyhow::Result<Call> {
        let mut fields = spec.split(',');
        let name = fields.next().unwrap_or_default().trim().to_string();
        if !matches!(name.as_str(), "build" | "check" | "outline" | "targets") {
            bail!("--call {spec}: unknown function {name:?} (build, check, outline, targets)");
        }
        let mut json = false;
        for f in fields {
            match f.split_once('=') {
                Some(("format", "json")) => json = true,
                Some(("format", "text")) => json = false,
                Some(("ignorestatus", _)) => {}
                _ => bail!("--call {spec}: unknown option {f:?} (format=json|text)"),
            }
        }
        Ok(Call { name, json })
    }
}

/// Prints what `call` (outline or targets) asks of the Dockerfile of
/// `context` and the build flags.
pub fn run(
    call: &Call,
    context: &std::path::Path,
    args: &crate::cli::BuildGraphArgs,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let source = crate::dockerfile::read_source(context, args)?;
    let df = frontend::parse(&source.name, &source.text)?;
    let out = if call.name == "targets" {
        targets(&frontend::outline::targets(&df)?, &source.text, call.json)
    } else {
        let options = crate::dockerfile::plan_options(args)?;
        let o = frontend::outline::outline(&df, &options)
            .with_context(|| format!("planning {}", source.name))?;
        outline(&o, &source.text, call.json)
    };
    print!("{out}");
    Ok(())
}

/// A span as BuildKit's pb.Location: line ranges, no columns.
fn location(span: &frontend::Span) -> Value {
    json!({"ranges": [{"start": {"line": span.start_line}, "end": {"line": span.end_line}}]})
}

/// Go's json.MarshalIndent of `v`: two spaces, `<`, `>` and `&` escaped.
fn go_json(v: &Value) -> String {
    let text = serde_json::to_string_pretty(v).expect("JSON values serialize");
    text.replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
}

/// Go's text/tabwriter (minwidth 0, padding `pad`, spaces) over `rows`:
/// every cell but a row's last is padded to its column's widest plus `pad`.
fn tabwrite(rows: &[Vec<String>], pad: usize) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0; columns];
    for row in rows {
        for (j, cell) in row.iter().enumerate().take(row.len().saturating_sub(1)) {
            widths[j] = widths[j].max(cell.chars().count() + pad);
        }
    }
    let mut out = String::new();
    for row in rows {
        for (j, cell) in row.iter().enumerate() {
            out.push_str(cell);
            if j + 1 < row.len() {
                out.push_str(&" ".repeat(widths[j] - cell.chars().count()));
            }
        }
        out.push('\n');
    }
    out
}

fn sources(text: &str) -> Value {
    json!([base64::engine::general_purpose::STANDARD.encode(text)])
}

/// `--call=targets`.
pub fn targets(list: &[frontend::outline::Target], text: &str, as_json: bool) -> String {
    if as_json {
        let targets: Vec<Value> = list
            .iter()
            .map(|t| {
                let mut o = serde_json::Map::new();
                if !t.name.is_empty() {
                    o.insert("name".into(), t.name.clone().into());
                }
                if t.default {
                    o.insert("default".into(), true.into());
                }
                for (k, v) in [
                    ("description", &t.description),
                    ("base", &t.base),
                    ("platform", &t.platform),
                ] {
                    if !v.is_empty() {
                        o.insert(k.into(), v.clone().into());
                    }
                }
                o.insert("location".into(), location(&t.span));
                Value::Object(o)
            })
            .collect();
        return go_json(&json!({"targets": targets, "sources": sources(text)})) + "\n";
    }
    let mut rows = vec![vec!["TARGET".to_string(), "DESCRIPTION".to_string()]];
    for t in list {
        let name = match (t.name.is_empty(), t.default) {
            (true, true) => "(default)".to_string(),
            (false, true) => format!("{} (default)", t.name),
            _ => t.name.clone(),
        };
        rows.push(vec![name, t.description.clone()]);
    }
    tabwrite(&rows, 1)
}

/// `--call=outline`.
pub fn outline(o: &frontend::outline::Outline, text: &str, as_json: bool) -> String {
    if as_json {
        let mut out = serde_json::Map::new();
        if !o.name.is_empty() {
            out.insert("name".into(), o.name.clone().into());
        }
        if !o.description.is_empty() {
            out.insert("description".into(), o.description.clone().into());
        }
        if !o.args.is_empty() {
            let args: Vec<Value> = o
                .args
                .iter()
                .map(|a| {
                    let mut v = serde_json::Map::new();
                    v.insert("name".into(), a.name.clone().into());
                    if !a.description.is_empty() {
                        v.insert("description".into(), a.description.clone().into());
                    }
                    if !a.value.is_empty() {
                        v.insert("value".into(), a.value.clone().into());
                    }
                    v.insert("location".into(), location(&a.span));
                    Value::Object(v)
                })
                .collect();
            out.insert("args".into(), args.into());
        }
        for (key, list) in [("secrets", &o.secrets), ("ssh", &o.ssh)] {
            if list.is_empty() {
                continue;
            }
            let items: Vec<Value> = list
                .iter()
                .map(|s| {
                    let mut v = serde_json::Map::new();
                    v.insert("name".into(), s.name.clone().into());
                    if s.required {
                        v.insert("required".into(), true.into());
                    }
                    v.insert("location".into(), location(&s.span));
                    Value::Object(v)
                })
                .collect();
            out.insert(key.into(), items.into());
        }
        out.insert("sources".into(), sources(text));
        return go_json(&Value::Object(out)) + "\n";
    }
    let mut out = String::new();
    if !o.name.is_empty() || !o.description.is_empty() {
        let name = if o.name.is_empty() {
            "(default)"
        } else {
            &o.name
        };
        let mut rows = vec![vec!["TARGET:".to_string(), name.to_string()]];
        if !o.description.is_empty() {
            rows.push(vec!["DESCRIPTION:".into(), o.description.clone()]);
        }
        out.push_str(&tabwrite(&rows, 1));
        out.push('\n');
    }
    if !o.args.is_empty() {
        let mut rows = vec![vec![
            "BUILD ARG".to_string(),
            "VALUE".into(),
            "DESCRIPTION".into(),
        ]];
        for a in &o.args {
            rows.push(vec![a.name.clone(), a.value.clone(), a.description.clone()]);
        }
        out.push_str(&tabwrite(&rows, 3));
        out.push('\n');
    }
    for (title, list) in [("SECRET", &o.secrets), ("SSH", &o.ssh)] {
        if list.is_empty() {
            continue;
        }
        let mut rows = vec![vec![title.to_string(), "REQUIRED".into()]];
        for s in list {
            let required = if s.required { "true" } else { "" };
            rows.push(vec![s.name.clone(), required.into()]);
        }
        out.push_str(&tabwrite(&rows, 3));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tabwriter_pads_all_but_the_last_cell() {
        let rows = vec![
            vec!["TARGET".to_string(), "DESCRIPTION".to_string()],
            vec!["build (default)".to_string(), "".to_string()],
        ];
        assert_eq!(
            tabwrite(&rows, 1),
            "TARGET          DESCRIPTION\nbuild (default) \n"
        );
    }

    #[test]
    fn call_values() {
        assert_eq!(
            Call::parse("outline,format=json").unwrap(),
            Call {
                name: "outline".into(),
                json: true
            }
        );
        assert!(Call::parse("lint").is_err());
        assert!(Call::parse("targets,format=yaml").is_err());
    }
}
