//! Reading the Dockerfile of a build and planning it: the `-f`/CONTEXT
//! defaults, `--build-arg` values from the environment, named contexts.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use frontend::parser::Dockerfile;
use frontend::stage::{Plan, PlanOptions};

use crate::cli::BuildGraphArgs;

/// The texts of the Dockerfiles this process parsed, by the name their
/// spans carry: an error's snippet comes from the text that was parsed
/// (stdin's too), never from reading a path again.
static SOURCES: std::sync::Mutex<Vec<(String, std::sync::Arc<str>)>> =
    std::sync::Mutex::new(Vec::new());

/// Keeps `text` as the source named `name`.
pub fn remember_source(name: &str, text: &str) {
    let mut sources = SOURCES.lock().unwrap_or_else(|e| e.into_inner());
    sources.retain(|(n, _)| n != name);
    sources.push((name.to_string(), text.into()));
}

/// The text parsed under `name`, if this process parsed one.
pub fn source(name: &str) -> Option<std::sync::Arc<str>> {
    let sources = SOURCES.lock().unwrap_or_else(|e| e.into_inner());
    sources
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, text)| text.clone())
}

/// A Dockerfile read and planned.
pub struct Loaded {
    /// Where it was read from (`-` for stdin).
    pub path: PathBuf,
    /// The parse.
    pub dockerfile: Dockerfile,
    /// The stages, resolved.
    pub plan: Plan,
    /// The options it was planned with.
    pub options: PlanOptions,
}

/// `--build-arg NAME=VALUE` or `NAME` (value from the environment; skipped
/// when unset, as buildx does); `SOURCE_DATE_EPOCH` from the environment
/// when no `--build-arg` sets it (buildx passes it on the same way).
pub fn build_args(args: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = flag_build_args(args)?;
    if !out.contains_key("SOURCE_DATE_EPOCH")
        && let Ok(epoch) = std::env::var("SOURCE_DATE_EPOCH")
        && !epoch.is_empty()
    {
        out.insert("SOURCE_DATE_EPOCH".to_string(), epoch);
    }
    Ok(out)
}

fn flag_build_args(args: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for arg in args {
        match arg.split_once('=') {
            Some(("", _)) => bail!("--build-arg `{arg}` has an empty name"),
            Some((k, v)) => {
                out.insert(k.to_string(), v.to_string());
            }
            None => {
                if let Ok(v) = std::env::var(arg) {
                    out.insert(arg.clone(), v);
                }
            }
        }
    }
    Ok(out)
}

/// `--build-context NAME=SRC`: the names of directory contexts. Image
/// contexts (`docker-image://`, `oci-layout://`) are not named contexts for
/// the planner: `FROM NAME` and `--from=NAME` resolve them as images.
pub fn named_contexts(specs: &[String]) -> anyhow::Result<BTreeSet<String>> {
    let mut out = BTreeSet::new();
    for spec in specs {
        match spec.split_once('=') {
            Some((name, src)) if !name.is_empty() && !src.is_empty() => {
                // Image contexts resolve as images; directories and URLs
                // (git, archives) are contexts.
                if !is_image_context(src) {
                    out.insert(name.to_string());
                }
            }
            _ => bail!("--build-context `{spec}` is not NAME=SRC"),
        }
    }
    Ok(out)
}

/// `--build-context NAME=docker-image://scratch`: BuildKit's empty
/// filesystem, no image to pull.
pub const SCRATCH_CONTEXT: &str = "docker-image://scratch";

/// Whether a `--build-context` source is an image (`docker-image://`,
/// `oci-layout://`): those resolve as images, not as contexts.
fn is_image_context(src: &str) -> bool {
    src.starts_with("docker-image://") || src.starts_with("oci-layout://")
}

/// `--build-context NAME=SRC`: the names of image contexts other than
/// [`SCRATCH_CONTEXT`], or (`scratch`) of those that are it.
pub fn image_contexts(specs: &[String], scratch: bool) -> BTreeSet<String> {
    specs
        .iter()
        .filter_map(|spec| spec.split_once('='))
        .filter(|(_, src)| (*src == SCRATCH_CONTEXT) == scratch && is_image_context(src))
        .map(|(name, _)| name.to_string())
        .collect()
}

/// BuildKit's switches that come as build args: `BUILDKIT_INLINE_CACHE`
/// (buildx adds an inline cache export) and `BUILDKIT_MULTI_PLATFORM` (the
/// Dockerfile frontend makes an index, and names steps by platform, even
/// for one platform).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArgSwitches {
    /// Export the cache inline, as `--cache-to type=inline`.
    pub inline_cache: bool,
    /// The result is an index.
    pub multi_platform: bool,
}

impl ArgSwitches {
    /// The switches of `build_args` for a build of `platforms` platforms.
    /// As buildx, an inline-cache value that is no boolean is off; as the
    /// frontend, a multi-platform one is an error, and so is turning it
    /// off for several platforms.
    pub fn of(build_args: &BTreeMap<String, String>, platforms: usize) -> anyhow::Result<Self> {
        let inline_cache = build_args
            .get("BUILDKIT_INLINE_CACHE")
            .and_then(|v| frontend::parse_go_bool(v))
            .unwrap_or(false);
        let multi_platform = match build_args.get("BUILDKIT_MULTI_PLATFORM") {
            None => platforms > 1,
            Some(v) if v.is_empty() => platforms > 1,
            Some(v) => match frontend::parse_go_bool(v) {
                None => bail!(
                    "--build-arg BUILDKIT_MULTI_PLATFORM={v}: invalid boolean value for multi-platform"
                ),
                Some(false) if platforms > 1 => bail!(
                    "--build-arg BUILDKIT_MULTI_PLATFORM={v}: conflicting config: returning multiple target platforms is not allowed"
                ),
                Some(b) => b,
            },
        };
        Ok(ArgSwitches {
            inline_cache,
            multi_platform,
        })
    }
}

/// A Dockerfile's text as read for a build.
pub struct Source {
    /// Where it was read from (`-` for stdin).
    pub path: PathBuf,
    /// The name its spans and messages carry.
    pub name: String,
    /// The text (kept for error snippets under `name`).
    pub text: String,
}

/// The Dockerfile's name in `context` when `-f` names none: `Dockerfile`,
/// or `dockerfile` where only that exists.
pub fn default_name(context: &Path) -> &'static str {
    if !context.join("Dockerfile").exists() && context.join("dockerfile").exists() {
        "dockerfile"
    } else {
        "Dockerfile"
    }
}

/// Reads `-f` (default `CONTEXT/Dockerfile`, or `CONTEXT/dockerfile` when
/// only that exists, as BuildKit) and keeps its text for error snippets.
pub fn read_source(context: &Path, args: &BuildGraphArgs) -> anyhow::Result<Source> {
    let path = args
        .file
        .clone()
        .unwrap_or_else(|| context.join(default_name(context)));
    // The context's own Dockerfile (the default, or any in a fetched
    // context) is only read when it is a regular file.
    let text = read_dockerfile(&path, args.file.is_none() || args.file_name.is_some())?;
    let name = if let Some(name) = &args.file_name {
        name.clone()
    } else if path == Path::new("-") {
        "Dockerfile".to_string()
    } else {
        path.display().to_string()
    };
    remember_source(&name, &text);
    Ok(Source { path, name, text })
}

/// `--ulimit`s with one per name, the last given (Docker's UlimitOpt keeps
/// them by name).
fn last_of_each(ulimits: &[frontend::limits::Ulimit]) -> Vec<frontend::limits::Ulimit> {
    let mut out: Vec<frontend::limits::Ulimit> = Vec::new();
    for u in ulimits {
        match out.iter_mut().find(|o| o.name == u.name) {
            Some(o) => *o = u.clone(),
            None => out.push(u.clone()),
        }
    }
    out
}

/// The planner's options from the build flags (for the first platform
/// `--platform` names: [`Loaded::for_platform`] plans for the others).
pub fn plan_options(args: &BuildGraphArgs) -> anyhow::Result<PlanOptions> {
    Ok(PlanOptions {
        target: args.target.clone(),
        build_args: build_args(&args.build_args)?,
        named_contexts: named_contexts(&args.build_contexts)?,
        image_contexts: image_contexts(&args.build_contexts, false),
        scratch_contexts: image_contexts(&args.build_contexts, true),
        platform: args.platforms.first().cloned(),
        extra_hosts: args.add_hosts.clone(),
        ulimits: last_of_each(&args.ulimits),
        shm_size: args.shm_size,
    })
}

impl Loaded {
    /// The plan of the same file and flags for `platform`.
    pub fn for_platform(
        &self,
        platform: &frontend::stage::Platform,
    ) -> anyhow::Result<frontend::stage::Plan> {
        let options = PlanOptions {
            platform: Some(platform.clone()),
            ..self.options.clone()
        };
        frontend::stage::plan(&self.dockerfile, &options)
            .with_context(|| format!("planning {} for {platform}", self.path.display()))
    }
}

/// Reads the Dockerfile ([`read_source`]) and plans it with the flags.
pub fn load(context: &Path, args: &BuildGraphArgs) -> anyhow::Result<Loaded> {
    let Source { path, name, text } = read_source(context, args)?;
    let dockerfile = frontend::parse(&name, &text)?;
    let options = plan_options(args)?;
    let plan =
        frontend::stage::plan(&dockerfile, &options).with_context(|| format!("planning {name}"))?;
    Ok(Loaded {
        path,
        dockerfile,
        plan,
        options,
    })
}

/// Stdin when it was read already (to tell a context archive from a
/// Dockerfile): `-` reads this.
static STDIN: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();

/// Keeps what stdin held, for [`read_dockerfile`] of `-`.
pub fn set_stdin(bytes: Vec<u8>) {
    let _ = STDIN.set(bytes);
}

/// Opens a file that a build context holds (its Dockerfile, an ignore
/// file) for reading, when it is a regular file: a fifo there would wait
/// for a writer for good and a device could stream without end, so it is
/// opened without blocking and refused. (A `-f` the user names may be a
/// pipe: `-f <(...)`.)
pub fn open_context_file(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    Ok(file)
}

/// Reads a Dockerfile from a path or `-` (stdin); invalid UTF-8 is
/// replaced. One the context holds (`in_context`) must be a regular file.
pub fn read_dockerfile(path: &Path, in_context: bool) -> anyhow::Result<String> {
    if path == Path::new("-")
        && let Some(bytes) = STDIN.get()
    {
        if bytes.len() as u64 > MAX_DOCKERFILE {
            anyhow::bail!(
                "the Dockerfile from stdin: larger than {} MiB, too large to build",
                MAX_DOCKERFILE >> 20
            );
        }
        return Ok(String::from_utf8_lossy(bytes).into_owned());
    }
    let mut bytes = Vec::new();
    let read = if path == Path::new("-") {
        std::io::stdin()
            .take(MAX_DOCKERFILE + 1)
            .read_to_end(&mut bytes)
            .context("reading the Dockerfile from stdin")?
    } else {
        let open = if in_context {
            open_context_file(path)
        } else {
            std::fs::File::open(path)
        };
        open.and_then(|f| f.take(MAX_DOCKERFILE + 1).read_to_end(&mut bytes))
            .with_context(|| format!("reading {}", path.display()))?
    };
    if read as u64 > MAX_DOCKERFILE {
        anyhow::bail!(
            "{}: larger than {} MiB, too large to build",
            if path == Path::new("-") {
                "the Dockerfile from stdin".to_string()
            } else {
                path.display().to_string()
            },
            MAX_DOCKERFILE >> 20
        );
    }
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// The largest Dockerfile read (BuildKit's scanner takes lines up to 64 KiB;
/// a file is a few hundred of them).
const MAX_DOCKERFILE: u64 = 16 << 20;
