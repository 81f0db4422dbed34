//! `rbuild check` and `rbuild build --check`: the build checks over every
//! stage of the Dockerfile, as text (each warning with the lines it points
//! at and its rule's page) or JSON; exit 1 when the file does not parse or
//! plan, or a check set to error (`# check=error=true`) fires.

use std::path::{Path, PathBuf};

use cache::blob::BlobStore;
use frontend::graph::{BaseConfig, ImageConfigs};
use frontend::lint::{self, LintOptions, Report};

use crate::cli::{BuildGraphArgs, CheckArgs, CheckFormat};
use crate::commands::store::state_root;

/// Base configs from the local image store only: checking pulls nothing.
struct LocalConfigs(Option<BlobStore>);

impl ImageConfigs for LocalConfigs {
    fn config(&self, reference: &str, platform: &frontend::stage::Platform) -> Option<BaseConfig> {
        let blobs = self.0.as_ref()?;
        let top = crate::images::find(blobs, reference).ok()??;
        // An image for another platform is read: the check says so.
        let img = match crate::images::select(blobs, &top, platform).ok()? {
            crate::images::Selected::Image(img) => img,
            crate::images::Selected::Other(_) => top,
            crate::images::Selected::NotLocal(_) => return None,
        };
        let (_, cfg) = crate::images::read(blobs, &img).ok()?;
        Some(crate::resolver::base_config(cfg))
    }
}

/// What checking a file gave: the findings, the error that stops it (a
/// parse or plan error, or findings set to be errors), and the text the
/// findings point into.
pub struct Checked {
    /// The findings.
    pub report: Report,
    /// Why the file fails, if it does.
    pub error: Option<String>,
    /// The file name and text, for snippets.
    pub source: Option<(String, String)>,
}

/// Runs the checks over every stage of the Dockerfile `args` names.
pub fn check_file(
    root: Option<PathBuf>,
    args: &BuildGraphArgs,
    context: &Path,
) -> anyhow::Result<Checked> {
    let crate::dockerfile::Source { path, name, text } =
        crate::dockerfile::read_source(context, args)?;
    let failed = |e: String| Checked {
        report: Report::default(),
        error: Some(e),
        source: Some((name.clone(), text.clone())),
    };
    let df = match frontend::parse(&name, &text) {
        Ok(df) => df,
        Err(e) => return Ok(failed(e.to_string())),
    };
    let instructions = match frontend::instructions::parse(&df) {
        Ok(i) => i,
        Err(e) => return Ok(failed(e.to_string())),
    };
    let options = crate::dockerfile::plan_options(args)?;
    let config = match lint::config_for(&df, &options.build_args) {
        Ok(c) => c,
        Err(e) => return Ok(failed(e.to_string())),
    };
    let plan = frontend::stage::plan(&df, &options);
    let ignore =
        crate::commands::inputs::read_ignore(frontend::ignore::ignore_file_for(context, &path))?;
    let store = BlobStore::open_existing(&state_root(root).join("content")).ok();
    let images = LocalConfigs(store);
    let report = lint::lint(
        &df,
        &instructions,
        plan.as_ref().ok(),
        config,
        &LintOptions {
            images: &images,
            ignore: ignore.as_ref(),
            all_stages: true,
            build: &options,
        },
    );
    // What fails the build of the target fails its check too (BuildKit
    // reports its conversion's error as the check's): a word that does not
    // expand, a stage that would hold too much.
    let error = match (&plan, &report.too_large) {
        (Err(e), _) | (Ok(_), Some(e)) => Some(e.to_string()),
        (Ok(plan), None) => match frontend::graph::compile(plan, &images) {
            Err(e) => Some(e.to_string()),
            Ok(_) => report.violation(),
        },
    };
    Ok(Checked {
        report,
        error,
        source: Some((name, text)),
    })
}

/// The findings as text: `WARN: Rule: message (line N)`, the lines, the
/// rule's page.
pub fn render_text(checked: &Checked) -> String {
    let mut out = String::new();
    for f in checked.report.sorted() {
        out.push_str(&format!("WARN: {}\n", f.short()));
        if let Some((name, text)) = &checked.source {
            out.push_str(&frontend::span::render_source(name, text, &f.span));
        }
        if let Some(url) = f.rule.url {
            out.push_str(url);
            out.push('\n');
        }
        out.push('\n');
    }
    out
}

/// `{"warnings":[{"rule","line","message",...}],"error":...}`.
pub fn render_json(checked: &Checked) -> String {
    let warnings: Vec<serde_json::Value> = checked
        .report
        .sorted()
        .iter()
        .map(|f| {
            serde_json::json!({
                "rule": f.rule.name,
                "line": f.span.start_line,
                "message": f.message,
                "description": f.rule.description,
                "url": f.rule.url,
            })
        })
        .collect();
    let out = serde_json::json!({"warnings": warnings, "error": checked.error});
    format!("{}\n", serde_json::to_string_pretty(&out).expect("JSON"))
}

/// Prints `checked` in `format`; an error when the file fails.
pub fn print(checked: &Checked, format: CheckFormat) -> anyhow::Result<()> {
    match format {
        CheckFormat::Json => print!("{}", render_json(checked)),
        CheckFormat::Text => {
            let n = checked.report.findings.len();
            eprint!("{}", render_text(checked));
            if checked.error.is_none() {
                eprintln!(
                    "Check complete, {}",
                    match n {
                        0 => "no warnings found.".to_string(),
                        1 => "1 warning has been found!".to_string(),
                        n => format!("{n} warnings have been found!"),
                    }
                );
            }
        }
    }
    match &checked.error {
        Some(e) => Err(anyhow::anyhow!("{e}")),
        None => Ok(()),
    }
}

pub fn run(root: Option<PathBuf>, args: CheckArgs) -> anyhow::Result<()> {
    let checked = check_file(root, &args.build, &args.context)?;
    print(&checked, args.format)
}
