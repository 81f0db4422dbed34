//! `rbuild build`: flags to options, the context, the build, the outputs.

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use cache::gc::Store;
use frontend::graph::compile;
use frontend::ignore::ignore_file_for;

use crate::cli::{BuildArgs, ExplainFormat, NetworkMode, ProgressMode, RuntimeKind};
use crate::commands::store::state_root;
use crate::export::OutputKind;
use crate::sandbox::Network;
use crate::sandbox::Runtime;
use crate::sandbox::embedded::Embedded;
use crate::sandbox::runc::Runc;
use crate::shared_cache::spec::Location;
use crate::solve::{BuildOptions, Progress, ProgressFormat, build};
use frontend::stage::Platform;

use super::inputs::{cgroup_parent, named_contexts, no_cache_stages, read_ignore};
use super::outputs;

pub(super) fn not_yet(flag: &str) -> anyhow::Error {
    anyhow::anyhow!("{flag} is not supported yet")
}

pub fn run(root: Option<PathBuf>, args: BuildArgs) -> anyhow::Result<()> {
    let super::flags::Flags {
        mut cache_to,
        cache_from,
        outputs,
        default_compression,
        rewrite_timestamp,
        allow_insecure,
        allow_network_host,
        labels,
        annotations,
        oci_media_types,
    } = super::flags::flags(&args)?;

    let store_root = state_root(root);
    let store = super::store::open_state(&store_root)?;
    crate::interrupt::set_snapshot_root(store_root.join("snapshots"));

    let secrets = crate::secrets::read_specs(&args.secret)?;
    // Their values never show in a log, an error or the metadata file.
    crate::mask::Masker::new(secrets.values().map(Vec::as_slice)).install();
    // Registries' and downloads' settings (certs.d, config.toml).
    let settings = crate::registry::hosts::Settings::load(&store_root)?;
    // The private agents (key files) live as long as the build.
    let (ssh, _private_agents) = crate::ssh::read_specs(&args.ssh)?;
    // A context that is no directory (a git or http(s) URL, a tar archive
    // on stdin) becomes one of this build's own (a private repository
    // with the build's GIT_AUTH_* secrets or its --ssh default agent).
    let spec = args.context.to_string_lossy().into_owned();
    let remote_context = if args.context == Path::new("-") {
        crate::remote::context::from_stdin()?
    } else if crate::remote::context::is_remote(&spec) {
        let keep_git_dir = crate::dockerfile::build_args(&args.graph.build_args)?
            .get(crate::remote::context::KEEP_GIT_DIR_ARG)
            .and_then(|v| frontend::parse_go_bool(v))
            .unwrap_or(false);
        Some(crate::remote::context::materialize(
            &spec,
            keep_git_dir,
            &store,
            &secrets,
            &ssh,
            &settings,
        )?)
    } else {
        None
    };
    // `rbuild build -` with no archive: the Dockerfile came on stdin and
    // the context is empty (a directory of ours for the build's life).
    let stdin_dockerfile = args.context == Path::new("-") && remote_context.is_none();
    let empty_context = stdin_dockerfile
        .then(|| crate::tempdir::TempDir::new("empty-context"))
        .transpose()
        .context("making an empty build context")?;
    let context = match (&remote_context, &empty_context) {
        (Some(m), _) => m.root.clone(),
        (None, Some(dir)) => dir.path.clone(),
        (None, None) => args.context.clone(),
    };
    if !context.is_dir() {
        bail!("build context {} is not a directory", context.display());
    }
    // The solver walks the context by absolute path: the stat cache keeps
    // files that way and reads one context directory's records (`.` would
    // be every project's `.`). Messages keep the path as it was given.
    let context_dir = std::path::absolute(&context)
        .with_context(|| format!("build context {}", context.display()))?;
    let mut graph_args = args.graph;
    if stdin_dockerfile {
        graph_args.file = Some(PathBuf::from("-"));
    }
    if let Some(m) = &remote_context {
        // `-f` names a file inside such a context; a URL of a plain file
        // is the Dockerfile itself. Messages name it as it is named there,
        // not by our temporary copy.
        let (file, name) = match (&graph_args.file, &m.dockerfile) {
            (Some(f), _) if f.is_relative() => {
                (Some(m.root.join(f)), Some(f.display().to_string()))
            }
            (None, Some(df)) => (Some(df.clone()), Some("Dockerfile".to_string())),
            (None, None) => {
                let name = crate::dockerfile::default_name(&m.root);
                (Some(m.root.join(name)), Some(name.to_string()))
            }
            (f, _) => (f.clone(), None),
        };
        graph_args.file = file;
        graph_args.file_name = name;
    }
    let call = args
        .call
        .as_deref()
        .map(super::call::Call::parse)
        .transpose()?;
    if args.check || call.as_ref().is_some_and(|c| c.name == "check") {
        // The checks of the file in this context (a fetched one too).
        let checked = crate::commands::check::check_file(Some(store_root), &graph_args, &context)?;
        let format = if call.as_ref().is_some_and(|c| c.json) {
            crate::cli::CheckFormat::Json
        } else {
            crate::cli::CheckFormat::Text
        };
        return crate::commands::check::print(&checked, format);
    }
    if let Some(call) = call.filter(|c| c.name == "outline" || c.name == "targets") {
        return super::call::run(&call, &context, &graph_args);
    }
    let loaded = crate::dockerfile::load(&context, &graph_args)?;

    let ignore = {
        let dockerfile_path = if loaded.path == Path::new("-") {
            context.join("Dockerfile")
        } else {
            loaded.path.clone()
        };
        read_ignore(ignore_file_for(&context, &dockerfile_path))?
    };
    let quiet = args.quiet || args.progress == ProgressMode::Quiet;
    let progress_format = match args.progress {
        _ if quiet => ProgressFormat::Quiet,
        ProgressMode::Rawjson => ProgressFormat::RawJson,
        // The live view needs a terminal; elsewhere it would draw nothing.
        ProgressMode::Tty | ProgressMode::Auto if std::io::stderr().is_terminal() => {
            ProgressFormat::Tty
        }
        _ => ProgressFormat::Plain,
    };
    // Started now: base images resolve (and their blobs come) before the
    // build's steps, and show as steps of their own.
    let progress = std::sync::Arc::new(Progress::new(progress_format));
    let transfer: std::sync::Arc<dyn crate::registry::transfer::Transfer> = if quiet {
        std::sync::Arc::new(crate::registry::transfer::Silent)
    } else {
        std::sync::Arc::new(crate::registry::transfer::Steps::new(
            progress.clone(),
            "pull",
        ))
    };
    let mut images =
        crate::resolver::Resolver::new(&store.blobs, settings, args.pull, transfer.clone());
    // Remote named contexts' directories are kept for the build's life.
    let platforms = graph_args.target_platforms();
    let switches = crate::dockerfile::ArgSwitches::of(&loaded.options.build_args, platforms.len())?;
    if switches.inline_cache && !cache_to.iter().any(|c| c.location == Location::Inline) {
        cache_to.push(crate::shared_cache::CacheTo::parse("type=inline")?);
    }
    let (named_contexts, _remote_named) = named_contexts(
        &graph_args.build_contexts,
        &platforms,
        &mut images,
        &store,
        (&secrets, &ssh),
    )?;
    // The build checks of what this build builds (for the first
    // platform); with `error=true` a finding fails the build before any
    // step runs.
    let first_graph = compile(&loaded.plan, &images);
    // A base image that could not be resolved fails the build here, with
    // the registry's answer.
    if let Some(e) = images.take_failure(&loaded.plan) {
        return Err(e);
    }
    let mut first_graph = Some(first_graph?);
    let lint = {
        let instructions = frontend::instructions::parse(&loaded.dockerfile)?;
        let config = frontend::lint::config_for(&loaded.dockerfile, &loaded.plan.build_args)?;
        frontend::lint::lint(
            &loaded.dockerfile,
            &instructions,
            Some(&loaded.plan),
            config,
            &frontend::lint::LintOptions {
                images: &images,
                ignore: ignore.as_ref(),
                all_stages: false,
                build: &loaded.options,
            },
        )
    };
    if let Some(e) = lint.too_large.clone() {
        return Err(e.into());
    }
    if let Some(violation) = lint.violation() {
        let first = &lint.sorted()[0];
        return Err(anyhow::Error::new(frontend::stage::PlanError::At {
            span: first.span.clone(),
            message: violation,
        }));
    }
    let network = match args.network {
        NetworkMode::None => Network::None,
        NetworkMode::Default | NetworkMode::Host => Network::Host,
    };
    let cgroup_parent = cgroup_parent(args.cgroup_parent.as_deref(), args.runtime)?;
    // A cache that can't be read is a warning: the build goes on.
    let imports = crate::shared_cache::Imports::load(&cache_from, &images, &|w| {
        if !quiet {
            eprintln!("WARNING: {w}");
        }
    });
    let cache_export = cache_to.iter().map(|c| c.mode).max_by_key(|m| {
        // max gathers everything min would.
        matches!(m, crate::shared_cache::Mode::Max)
    });
    let multi = switches.multi_platform;
    annotations.check(&platforms, multi, oci_media_types)?;
    let mut options = BuildOptions {
        cancel: Default::default(),
        cache_imports: (!imports.is_empty()).then_some(&imports),
        cache_export,
        transfer: transfer.clone(),
        needs_files: outputs
            .iter()
            .any(|o| matches!(o.kind, OutputKind::Local | OutputKind::Tar)),
        context: &context_dir,
        ignore,
        named_contexts,
        images: &images,
        // Several platforms' images are tagged as one index.
        tags: if multi { Vec::new() } else { args.tags.clone() },
        network,
        cgroup_parent,
        allow_insecure,
        allow_network_host,
        epoch: loaded.plan.source_date_epoch,
        proxy_env: loaded.plan.proxy_env(),
        no_cache: args.no_cache,
        no_cache_stages: no_cache_stages(&loaded.plan, &args.no_cache_filter),
        secrets,
        ssh,
        rewrite_timestamp,
        labels,
        annotations: &annotations,
        index: multi,
        dockerfile: if loaded.path == Path::new("-") {
            format!("{}\n-", context_dir.display())
        } else {
            std::path::absolute(&loaded.path)
                .unwrap_or_else(|_| loaded.path.clone())
                .display()
                .to_string()
        },
        explain: args.explain,
    };
    let runtime: Box<dyn Runtime> = if args.runtime == RuntimeKind::Runc {
        Box::new(Runc::find(&store_root.join("runc"))?)
    } else {
        Box::new(Embedded::default())
    };
    // One build of the graph per platform, side by side: a step two of them
    // share (a `FROM --platform=$BUILDPLATFORM` stage's) is made once, the
    // other waiting on its key's lock and then finding it in the cache.
    let mut graphs = Vec::new();
    for platform in &platforms {
        let mut graph = match first_graph.take() {
            Some(g) => g,
            None => {
                let plan = loaded.for_platform(platform)?;
                let graph = compile(&plan, &images);
                if let Some(e) = images.take_failure(&plan) {
                    return Err(e);
                }
                graph?
            }
        };
        if multi {
            graph.name_platform();
        }
        graphs.push((platform.clone(), graph));
    }
    // A failure in one stops the others (they share `options.cancel`).
    let results: Vec<anyhow::Result<crate::solve::Built>> = std::thread::scope(|s| {
        let (store, options, progress, runtime) = (&store, &options, &progress, runtime.as_ref());
        let handles: Vec<_> = graphs
            .iter()
            .map(|(_, graph)| s.spawn(move || build(store, graph, runtime, options, progress)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a build panicked")))
            })
            .collect()
    });
    // The failure to tell is the one that stopped the others (theirs
    // say they were canceled).
    if results.iter().any(Result::is_err) {
        progress.finish();
        let canceled = |e: &anyhow::Error| e.chain().any(|c| c.is::<crate::solve::Canceled>());
        let mut errors: Vec<anyhow::Error> = results.into_iter().filter_map(Result::err).collect();
        let first = errors.iter().position(|e| !canceled(e)).unwrap_or(0);
        return Err(errors.swap_remove(first));
    }
    let mut builds: Vec<_> = graphs
        .into_iter()
        .zip(results)
        .map(|((platform, graph), built)| (platform, graph, built.expect("no failure")))
        .collect();
    progress.finish();
    for (_, graph, built) in &mut builds {
        if args.explain {
            if args.explain_format == ExplainFormat::Json {
                print!("{}", crate::solve::explain::report_json(&built.explained));
            } else {
                eprint!("{}", crate::solve::explain::report(&built.explained));
            }
        }
        if args.verify {
            let tags = std::mem::take(&mut options.tags);
            verify(
                (&store, graph, runtime.as_ref()),
                &mut options,
                progress_format,
                built,
            )?;
            options.tags = tags;
        }
        // `--cache-to type=inline`: the records go into the image's config
        // (BuildKit's `moby.buildkit.cache.v0`), which makes it another image.
        if cache_to.iter().any(|c| c.location == Location::Inline) {
            with_inline_cache(&store, built, &options.tags)?;
        }
    }
    let mut names: Vec<String> = args.tags.clone();
    for o in &outputs {
        names.extend(o.names.iter().cloned());
    }
    let built: Vec<(Platform, crate::solve::Built)> =
        builds.into_iter().map(|(p, _, b)| (p, b)).collect();
    let result = outputs::Result::of(&store, built, (multi, &annotations), &args.tags)?;
    outputs::export_caches(
        &store,
        &result.builds,
        &cache_to,
        (&images, &transfer),
        quiet,
    )?;
    let pushed = outputs::write(
        &store,
        &result,
        &outputs,
        (&names, default_compression),
        (&images, &transfer),
        (progress_format, &progress),
    )?;
    if let Some(f) = &args.iidfile {
        write_file(f, result.image_id.as_bytes())?;
    }
    if let Some(f) = &args.metadata_file {
        // What was pushed, when something was: its manifest has the
        // layers compressed for the registry.
        let manifest = pushed.as_ref().unwrap_or(&result.manifest);
        let mut meta = serde_json::json!({
            "containerimage.digest": manifest.digest,
            "containerimage.descriptor": manifest,
            "image.name": args.tags.join(","),
        });
        // An index has no config of its own.
        if !multi {
            meta["containerimage.config.digest"] = result.image_id.clone().into();
        }
        let text = crate::mask::Masker::global().mask_str(&serde_json::to_string_pretty(&meta)?);
        write_file(f, text.as_bytes())?;
    }
    if quiet {
        println!("{}", result.image_id);
    } else {
        print_lint_summary(&lint);
        let what = if multi { "image index" } else { "image" };
        eprintln!("writing {what} {} done", result.image_id);
        let masker = crate::mask::Masker::global();
        for t in &args.tags {
            let name = masker.mask_str(&crate::images::normalize(t));
            eprintln!("naming to {name} done");
        }
    }
    Ok(())
}

/// `--verify`: the same build again without the cache (stored under no
/// tag), compared with `built`; an error names what differs.
fn verify(
    (store, graph, runtime): (&Store, &frontend::graph::BuildGraph, &dyn Runtime),
    options: &mut BuildOptions<'_>,
    progress_format: ProgressFormat,
    built: &crate::solve::Built,
) -> anyhow::Result<()> {
    let quiet = progress_format == ProgressFormat::Quiet;
    // The same build without the cache, stored under no tag.
    if !quiet {
        eprintln!("verify: building again without the cache");
    }
    options.no_cache = true;
    options.tags.clear();
    options.explain = false;
    let progress = Progress::new(progress_format);
    let again = build(store, graph, runtime, options, &progress);
    progress.finish();
    let again = again.context("verify: the second build failed")?;
    let differ = crate::verify::differences(&store.blobs, &built.manifest, &again.manifest)?;
    if !differ.is_empty() {
        bail!(
            "the image is not reproducible: a second build gave {} (first {})\n{}",
            again.image_id,
            built.image_id,
            differ.join("\n")
        );
    }
    if !quiet {
        eprintln!("verify: reproducible, {}", built.image_id);
    }
    Ok(())
}

/// `built` made another image whose config holds its cache records
/// (BuildKit's `moby.buildkit.cache.v0`), stored under `tags`; unchanged
/// when none of its records is the image's own.
fn with_inline_cache(
    store: &Store,
    built: &mut crate::solve::Built,
    tags: &[String],
) -> anyhow::Result<()> {
    let Some(inline) = crate::shared_cache::export::inline_cache(
        &built.cache_records,
        &built.config.rootfs.diff_ids,
    ) else {
        return Ok(());
    };
    let manifest: cache::spec::Manifest =
        serde_json::from_slice(&store.blobs.read(&built.manifest.digest.parse()?)?)?;
    built.config.extra.insert(
        crate::shared_cache::INLINE_FIELD.to_string(),
        serde_json::Value::String(inline),
    );
    let (id, desc) = crate::images::store(
        &store.blobs,
        &built.config,
        manifest.layers,
        manifest.annotations,
        tags,
    )?;
    built.image_id = id.to_string();
    built.manifest = desc;
    Ok(())
}

/// BuildKit's end-of-build list: `N warnings found`, one line each.
fn print_lint_summary(lint: &frontend::lint::Report) {
    let found = lint.sorted();
    if found.is_empty() {
        return;
    }
    let noun = if found.len() == 1 {
        "warning"
    } else {
        "warnings"
    };
    eprintln!(
        "\n {} {noun} found (use `rbuild check` to see the lines):",
        found.len()
    );
    for f in found {
        eprintln!(" - {}", f.short());
    }
}

/// Writes through a temp file and rename: never half-written.
fn write_file(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    // Its own name: builds started together may write the same file.
    let tmp = path.with_extension(format!("rbuild-tmp-{}", std::process::id()));
    std::fs::write(&tmp, data).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}
