//! What the build flags name, made ready for a build: `--build-context`
//! directories and images, ignore files, the `--cgroup-parent` and the
//! stages of `--no-cache-filter`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read as _;
use std::path::PathBuf;

use anyhow::{Context, bail};
use cache::gc::Store;
use frontend::ignore::{PatternMatcher, read_ignore_file};

use super::build::not_yet;
use crate::cli::RuntimeKind;

/// Named directory contexts by name, with their ignore files.
pub(super) type NamedDirs = BTreeMap<String, (PathBuf, Option<PatternMatcher>)>;

/// Directories of `--build-context NAME=...`, each with its ignore file
/// (remote ones fetched: they are returned to keep them for the build's
/// life); image contexts (`docker-image://`, `oci-layout://`) become
/// aliases of `images`.
pub(super) fn named_contexts(
    specs: &[String],
    platforms: &[frontend::stage::Platform],
    images: &mut crate::resolver::Resolver<'_>,
    store: &Store,
    (secrets, ssh): (&crate::secrets::Secrets, &crate::ssh::Agents),
) -> anyhow::Result<(NamedDirs, Vec<crate::remote::context::Materialized>)> {
    let mut named_contexts = BTreeMap::new();
    let mut remote_named = Vec::new();
    for spec in specs {
        let (name, src) = spec.split_once('=').expect("checked when planning");
        if let Some(path) = src.strip_prefix("oci-layout://") {
            let img = crate::images::import_oci_layout(&store.blobs, path)
                .with_context(|| format!("--build-context {spec}"))?;
            images.alias(name, img);
        } else if src == crate::dockerfile::SCRATCH_CONTEXT {
            // The empty filesystem: the planner has it as `scratch`.
        } else if let Some(reference) = src.strip_prefix("docker-image://") {
            // The image of each platform built; the alias names what the
            // store's tag holds (an index with them, or the one image).
            let mut img = None;
            for p in platforms {
                img = Some(
                    images
                        .resolve(reference, p)
                        .with_context(|| format!("--build-context {spec}"))?,
                );
            }
            let img = img.expect("at least one platform");
            let top = crate::images::find(&store.blobs, reference)?
                .filter(|t| crate::images::is_index(&t.manifest.media_type))
                .unwrap_or(img);
            images.alias(name, top);
        } else if crate::remote::context::is_remote(src) {
            let m = crate::remote::context::materialize(
                src,
                false,
                store,
                secrets,
                ssh,
                images.settings(),
            )
            .with_context(|| format!("--build-context {spec}"))?;
            let ignore = read_ignore(Some(m.root.join(".dockerignore")).filter(|f| f.is_file()))?;
            named_contexts.insert(name.to_string(), (m.root.clone(), ignore));
            remote_named.push(m);
        } else if src.contains("://") {
            return Err(not_yet(&format!("--build-context {spec}")));
        } else {
            // A named directory context has its own .dockerignore.
            let dir =
                std::path::absolute(src).with_context(|| format!("--build-context {spec}"))?;
            let ignore = read_ignore(Some(dir.join(".dockerignore")).filter(|f| f.is_file()))?;
            named_contexts.insert(name.to_string(), (dir, ignore));
        }
    }
    Ok((named_contexts, remote_named))
}

/// The largest ignore file read: its patterns are compiled and tried on
/// every path of the context.
const MAX_IGNORE_FILE: u64 = 16 << 20;

/// The patterns of an ignore file, if there is one.
pub(crate) fn read_ignore(file: Option<PathBuf>) -> anyhow::Result<Option<PatternMatcher>> {
    let Some(f) = file else { return Ok(None) };
    let mut text = Vec::new();
    crate::dockerfile::open_context_file(&f)
        .and_then(|file| file.take(MAX_IGNORE_FILE + 1).read_to_end(&mut text))
        .with_context(|| format!("reading {}", f.display()))?;
    if text.len() as u64 > MAX_IGNORE_FILE {
        bail!(
            "reading {}: larger than {} MiB",
            f.display(),
            MAX_IGNORE_FILE >> 20
        );
    }
    let matcher = PatternMatcher::new(&read_ignore_file(&String::from_utf8_lossy(&text)))
        .with_context(|| format!("reading {}", f.display()))?;
    Ok(Some(matcher))
}

/// `--cgroup-parent`, checked against what the runtime can do with it: a
/// path in the cgroup hierarchy (BuildKit's systemd `SLICE:PREFIX:` form
/// needs systemd's cgroup driver, which rbuild does not drive), as root;
/// the embedded runtime places steps in cgroups only where cgroup v2 is
/// unified.
pub(super) fn cgroup_parent(
    parent: Option<&str>,
    runtime: RuntimeKind,
) -> anyhow::Result<Option<String>> {
    let Some(given) = parent else {
        return Ok(None);
    };
    let path = given.trim_matches('/');
    if path.is_empty()
        || path
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
    {
        bail!("--cgroup-parent {given}: not a cgroup path (like `builds` or `ci/limited`)");
    }
    if path.ends_with(':') {
        bail!("--cgroup-parent {given}: systemd slices are not supported; give a cgroup path");
    }
    if crate::rootless::inside() {
        bail!("--cgroup-parent {given}: an ordinary user's rbuild can't place steps in cgroups");
    }
    if runtime == RuntimeKind::Embedded && !crate::sandbox::cgroup::unified() {
        bail!(
            "--cgroup-parent {given}: the embedded runtime places steps in cgroups only where \
             cgroup v2 is unified, and this host runs cgroup v1; use --runtime runc"
        );
    }
    Ok(Some(path.to_string()))
}

/// The stages `--no-cache-filter` names (by `AS` name, any case, as
/// BuildKit matches them). A name that is no stage of the file is a
/// warning: BuildKit ignores it silently, which hides typos.
pub(super) fn no_cache_stages(plan: &frontend::stage::Plan, names: &[String]) -> BTreeSet<usize> {
    let mut stages = BTreeSet::new();
    for name in names {
        let found: Vec<usize> = plan
            .stages
            .iter()
            .filter(|s| {
                s.name
                    .as_deref()
                    .is_some_and(|n| n.eq_ignore_ascii_case(name))
            })
            .map(|s| s.index)
            .collect();
        if found.is_empty() {
            eprintln!("warning: --no-cache-filter {name}: no stage has that name");
        }
        stages.extend(found);
    }
    stages
}
