//! The command line, as `../shared/CLI.md` fixes it: clap derive types only;
//! [`crate::commands`] runs them.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// A daemonless Dockerfile image builder.
#[derive(Debug, Parser)]
#[command(name = "rbuild", version, about, max_term_width = 100)]
pub struct Cli {
    /// State directory: content store, cache index, image store
    #[arg(long, global = true, env = "RBUILD_ROOT", value_name = "DIR")]
    pub root: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build an image from a Dockerfile (also `rbuild [OPTIONS] CONTEXT`)
    Build(Box<BuildArgs>),
    /// Build, and say for each step whether the cache had it and, if not,
    /// which input changed since its last build (`build --explain`)
    Explain(Box<BuildArgs>),
    /// List the images in the local store
    Images,
    /// Show an image's manifest and config
    Inspect {
        /// The image
        reference: String,
        /// Show that platform's image of an index (default: the index
        /// with its platforms)
        #[arg(long, value_parser = parse_one_platform)]
        platform: Option<frontend::stage::Platform>,
    },
    /// Give an image another name
    Tag {
        /// The image
        source: String,
        /// The new name
        target: String,
    },
    /// Remove image names (blobs go with `rbuild prune`)
    Rmi {
        /// Images to untag
        #[arg(required = true)]
        references: Vec<String>,
    },
    /// Write images from the store as a tar
    Save {
        /// The tar file (`-` for stdout)
        #[arg(short = 'o', long = "output", value_name = "FILE")]
        output: String,
        /// Archive format
        #[arg(long, default_value = "oci", value_parser = ["oci", "docker"])]
        format: String,
        /// The images (one for now)
        #[arg(required = true)]
        references: Vec<String>,
        /// Save that platform's image of an index (default: what the store
        /// holds of it)
        #[arg(long, value_parser = parse_one_platform)]
        platform: Option<frontend::stage::Platform>,
    },
    /// Pull an image from a registry into the local store
    Pull {
        /// The image (`debian:bookworm`, `host:5000/app@sha256:...`)
        reference: String,
        /// The platform whose image an index gives (default the host's)
        #[arg(long, value_parser = parse_one_platform)]
        platform: Option<frontend::stage::Platform>,
    },
    /// Push an image of the local store to its registry
    Push {
        /// The image, named with its registry (`host:5000/app:1`)
        reference: String,
        /// Push that platform's image of an index (default: what the store
        /// holds of it)
        #[arg(long, value_parser = parse_one_platform)]
        platform: Option<frontend::stage::Platform>,
    },
    /// Log in to a registry (credentials go where docker keeps them)
    Login(LoginArgs),
    /// Forget a registry's credentials
    Logout {
        /// The registry (default: Docker Hub)
        server: Option<String>,
    },
    /// Run the build checks (BuildKit's lint rules) and build nothing
    Check(CheckArgs),
    /// Print the build graph that `build` would run, without running it
    Graph(GraphArgs),
    /// Show cache disk usage
    Du(DuArgs),
    /// Remove build cache
    Prune(PruneArgs),
    /// Rehash every blob of the store and report corrupt ones
    Verify,
    /// Look inside the frontend: parse, expand words, match .dockerignore
    #[command(subcommand)]
    Debug(DebugCommand),
}

/// `rbuild login`
#[derive(Debug, Args)]
pub struct LoginArgs {
    /// User name
    #[arg(short = 'u', long)]
    pub username: Option<String>,
    /// Password (prefer --password-stdin: this one shows in `ps`)
    #[arg(short = 'p', long)]
    pub password: Option<String>,
    /// Read the password from stdin
    #[arg(long)]
    pub password_stdin: bool,
    /// The registry (default: Docker Hub)
    pub server: Option<String>,
}

/// `rbuild debug ...`
#[derive(Debug, Subcommand)]
pub enum DebugCommand {
    /// Parse a Dockerfile and print its instructions
    Parse(ParseArgs),
    /// Expand a word as BuildKit's shell lexer does
    Expand(ExpandArgs),
    /// Tell which paths .dockerignore patterns exclude
    Ignore(IgnoreArgs),
}

/// Output of `debug parse`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ParseFormat {
    /// BuildKit's `Node.Dump()` text
    Dump,
    /// One JSON object per instruction
    Json,
}

/// `rbuild debug parse`
#[derive(Debug, Args)]
pub struct ParseArgs {
    /// Output format
    #[arg(long, value_enum, default_value = "dump")]
    pub format: ParseFormat,
    /// The Dockerfile (`-` for stdin)
    pub file: PathBuf,
}

/// `rbuild debug expand`
#[derive(Debug, Args)]
pub struct ExpandArgs {
    /// A variable for the expansion, repeatable
    #[arg(long = "env", value_name = "NAME=VALUE")]
    pub env: Vec<String>,
    /// Escape character: `\` or a backtick
    #[arg(long, default_value = "\\", value_parser = parse_escape)]
    pub escape: char,
    /// Split into fields (ProcessWords) instead of one word
    #[arg(long)]
    pub words: bool,
    /// The word to expand
    #[arg(allow_hyphen_values = true)]
    pub word: String,
}

fn parse_escape(s: &str) -> Result<char, String> {
    match s {
        "\\" => Ok('\\'),
        "`" => Ok('`'),
        _ => Err(format!("escape must be `\\` or a backtick, not `{s}`")),
    }
}

/// `rbuild debug ignore`
#[derive(Debug, Args)]
pub struct IgnoreArgs {
    /// A pattern, repeatable; applied after those of --file
    #[arg(long = "pattern", value_name = "P")]
    pub patterns: Vec<String>,
    /// A .dockerignore file to read patterns from
    #[arg(long, value_name = "DOCKERIGNORE")]
    pub file: Option<PathBuf>,
    /// Paths relative to the context, `/`-separated
    #[arg(required = true)]
    pub paths: Vec<String>,
}

/// Output of `graph`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum GraphFormat {
    /// Graphviz
    Dot,
    /// Nodes and edges as JSON
    Json,
}

/// The build flags that decide which graph a build compiles.
#[derive(Debug, Args)]
pub struct BuildGraphArgs {
    /// Dockerfile; default CONTEXT/Dockerfile
    #[arg(short = 'f', long = "file", value_name = "PATH")]
    pub file: Option<PathBuf>,
    /// Build this stage; stages it does not need are left out
    #[arg(long)]
    pub target: Option<String>,
    /// Build argument, repeatable; without `=VALUE` it comes from the environment
    #[arg(long = "build-arg", value_name = "NAME[=VALUE]")]
    pub build_args: Vec<String>,
    /// Named build context, repeatable
    #[arg(long = "build-context", value_name = "NAME=SRC")]
    pub build_contexts: Vec<String>,
    /// Target platforms, comma-separated or repeated (another
    /// architecture's RUN steps are emulated; several give an image index)
    #[arg(long = "platform", value_parser = parse_platform, value_delimiter = ',')]
    pub platforms: Vec<frontend::stage::Platform>,
    /// A host-to-IP mapping for RUN's /etc/hosts (HOST:IP or HOST=IP),
    /// repeatable
    #[arg(long = "add-host", value_name = "HOST:IP")]
    pub add_hosts: Vec<frontend::hosts::ExtraHost>,
    /// A resource limit for RUN: NAME=SOFT[:HARD] (nofile, nproc, ...),
    /// repeatable
    #[arg(long = "ulimit", value_name = "NAME=SOFT[:HARD]")]
    pub ulimits: Vec<frontend::limits::Ulimit>,
    /// The size of RUN's /dev/shm (65536, 64m, 1g)
    #[arg(long = "shm-size", value_name = "SIZE")]
    pub shm_size: Option<frontend::limits::ShmSize>,
    /// How messages name the Dockerfile when `file` is a copy of ours (in
    /// a fetched context): its name inside that context, as BuildKit's.
    #[arg(skip)]
    pub file_name: Option<String>,
}

/// `rbuild graph`
#[derive(Debug, Args)]
pub struct GraphArgs {
    #[command(flatten)]
    pub build: BuildGraphArgs,
    /// Output format
    #[arg(long, value_enum, default_value = "dot")]
    pub format: GraphFormat,
    /// The build context directory
    pub context: PathBuf,
}

/// Output of `check`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CheckFormat {
    /// Warnings with the lines they point at
    Text,
    /// `{"warnings":[...],"error":null}`
    Json,
}

/// `rbuild check`
#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub build: BuildGraphArgs,
    /// Output format
    #[arg(long, value_enum, default_value = "text")]
    pub format: CheckFormat,
    /// The build context directory (for .dockerignore)
    #[arg(default_value = ".")]
    pub context: PathBuf,
}

fn parse_one_platform(s: &str) -> Result<frontend::stage::Platform, String> {
    if s.contains(',') {
        return Err(format!("{s}: one platform here"));
    }
    frontend::stage::Platform::parse(s)
}

fn parse_platform(s: &str) -> Result<frontend::stage::Platform, String> {
    frontend::stage::Platform::parse(s)
}

impl BuildGraphArgs {
    /// The platforms to build for, each once, in the order given (none:
    /// the host's).
    pub fn target_platforms(&self) -> Vec<frontend::stage::Platform> {
        let mut out: Vec<frontend::stage::Platform> = Vec::new();
        for p in &self.platforms {
            if !out.contains(p) {
                out.push(p.clone());
            }
        }
        if out.is_empty() {
            out.push(frontend::stage::Platform::host());
        }
        out
    }
}

/// `rbuild du`
#[derive(Debug, Args)]
pub struct DuArgs {
    /// Show every record
    #[arg(long)]
    pub verbose: bool,
}

/// `rbuild prune`
#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Remove all cache records, not only those matched by filters
    #[arg(short, long)]
    pub all: bool,
    /// Keep this much cache (e.g. 10GB, 512MB), dropping least recently used records
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub keep_storage: Option<u64>,
    /// `until=DURATION`: records not used for that long (e.g. until=24h)
    #[arg(long, value_name = "FILTER", value_parser = parse_until)]
    pub filter: Vec<std::time::Duration>,
}

/// A size like `10GB`, `512mb`, `1.5g` or a byte count (binary multiples).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("invalid size `{s}`"))?;
    let mult: f64 = match unit
        .trim()
        .to_ascii_lowercase()
        .trim_end_matches('b')
        .trim_end_matches('i')
    {
        "" => 1.0,
        "k" => 1024.0,
        "m" => 1024f64.powi(2),
        "g" => 1024f64.powi(3),
        "t" => 1024f64.powi(4),
        _ => return Err(format!("invalid size `{s}` (use B, KB, MB, GB or TB)")),
    };
    Ok((n * mult) as u64)
}

fn parse_until(s: &str) -> Result<std::time::Duration, String> {
    let Some(v) = s.strip_prefix("until=") else {
        return Err(format!("unsupported filter `{s}` (only until=DURATION)"));
    };
    let ns = frontend::instructions::parse_go_duration(v)?;
    if ns < 0 {
        return Err(format!("negative duration in `{s}`"));
    }
    Ok(std::time::Duration::from_nanos(ns as u64))
}

/// `--network` for RUN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NetworkMode {
    /// The host's network (buildkitd without CNI)
    Default,
    /// Loopback only
    None,
    /// The host's network, asked for (`RUN --network=host` needs the entitlement)
    Host,
}

/// `--runtime`: how RUN is sandboxed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RuntimeKind {
    /// rbuild's own sandbox (no other program)
    Embedded,
    /// The runc program
    Runc,
}

/// `--format` of `--explain`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExplainFormat {
    /// Lines on stderr
    Text,
    /// One JSON object a step, on stdout
    Json,
}

/// `--compression`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompressionArg {
    /// gzip (Docker's default)
    Gzip,
    /// zstd
    Zstd,
    /// No compression
    Uncompressed,
}

impl From<CompressionArg> for cache::layer::Compression {
    fn from(c: CompressionArg) -> Self {
        match c {
            CompressionArg::Gzip => cache::layer::Compression::Gzip,
            CompressionArg::Zstd => cache::layer::Compression::Zstd,
            CompressionArg::Uncompressed => cache::layer::Compression::Uncompressed,
        }
    }
}

/// Progress output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProgressMode {
    /// `tty` on a terminal, else `plain`
    Auto,
    /// Live view of the running steps (plain when stderr is no terminal)
    Tty,
    /// BuildKit's plain format
    Plain,
    /// JSON events, the shape of BuildKit's SolveStatus
    Rawjson,
    /// Nothing
    #[value(alias = "none")]
    Quiet,
}

/// `rbuild build`
#[derive(Debug, Args)]
pub struct BuildArgs {
    #[command(flatten)]
    pub graph: BuildGraphArgs,
    /// Name and tag for the image, repeatable
    #[arg(short = 't', long = "tag", value_name = "REF")]
    pub tags: Vec<String>,
    /// Add a label to the image, repeatable
    #[arg(long = "label", value_name = "K=V")]
    pub labels: Vec<String>,
    /// Add an OCI annotation: [TYPE[PLATFORM][,TYPE...]:]KEY=VALUE, TYPE
    /// manifest (default), manifest-descriptor, index or index-descriptor;
    /// repeatable
    #[arg(long = "annotation", value_name = "[TYPE:]KEY=VALUE")]
    pub annotations: Vec<String>,
    /// Progress output (default: $BUILDKIT_PROGRESS, else auto)
    #[arg(long, value_enum, env = "BUILDKIT_PROGRESS", default_value = "auto")]
    pub progress: ProgressMode,
    /// Print only the image id
    #[arg(short, long)]
    pub quiet: bool,
    /// Write the image id to this file
    #[arg(long, value_name = "FILE")]
    pub iidfile: Option<PathBuf>,
    /// Write build metadata (JSON) to this file
    #[arg(long, value_name = "FILE")]
    pub metadata_file: Option<PathBuf>,
    /// Do not use the cache
    #[arg(long)]
    pub no_cache: bool,
    /// Build a second time without the cache and compare: exit 1, naming
    /// what differs, when the image is not reproducible
    #[arg(long)]
    pub verify: bool,
    /// After the build, say for each step whether the cache had it and,
    /// if not, which input changed since its last build
    #[arg(long)]
    pub explain: bool,
    /// With --explain: `text` (lines on stderr) or `json` (one object a
    /// step, on stdout)
    #[arg(long = "format", value_name = "FORMAT", value_enum, default_value_t = ExplainFormat::Text)]
    pub explain_format: ExplainFormat,
    /// Do not use the cache for the steps of this stage (repeatable)
    #[arg(long, value_name = "STAGE", value_delimiter = ',')]
    pub no_cache_filter: Vec<String>,
    /// Network for RUN: default (the host's), none or host
    #[arg(long, value_enum, default_value_t = NetworkMode::Default)]
    pub network: NetworkMode,
    /// The cgroup RUN steps' cgroups go below (a path in the cgroup
    /// hierarchy); its limits apply to them
    #[arg(long = "cgroup-parent", value_name = "PATH")]
    pub cgroup_parent: Option<String>,
    /// Extra privileges: security.insecure
    #[arg(long, value_name = "ENTITLEMENT")]
    pub allow: Vec<String>,
    /// How RUN is sandboxed
    #[arg(long, value_enum, default_value_t = RuntimeKind::Embedded)]
    pub runtime: RuntimeKind,
    /// Output: type=image|registry|oci|docker|local|tar, with options
    #[arg(short = 'o', long = "output", value_name = "SPEC")]
    pub outputs: Vec<String>,
    /// Layer compression: gzip (default), zstd or uncompressed
    #[arg(long, value_enum, default_value_t = CompressionArg::Gzip)]
    pub compression: CompressionArg,
    /// Secrets for RUN --mount=type=secret: id=ID[,src=PATH|,env=VAR]
    #[arg(long, value_name = "SPEC")]
    pub secret: Vec<String>,
    /// SSH agent sockets for RUN --mount=type=ssh: default or ID=SOCKET
    #[arg(long, value_name = "SPEC")]
    pub ssh: Vec<String>,
    /// Cache import: type=registry,ref=REF | type=local,src=DIR | REF (repeatable)
    #[arg(long, value_name = "SPEC")]
    pub cache_from: Vec<String>,
    /// Cache export: type=registry,ref=REF | type=local,dest=DIR | type=inline [,mode=min|max][,cache-mounts=true]
    #[arg(long, value_name = "SPEC")]
    pub cache_to: Vec<String>,
    /// Push the image to its registry (same as -o type=image,push=true)
    #[arg(long)]
    pub push: bool,
    /// Keep the image in the local image store, as buildx loads it into
    /// Docker's: rbuild's store always has it (`rbuild save IMAGE |
    /// docker load` moves it to Docker)
    #[arg(long)]
    pub load: bool,
    /// Attestation: type=provenance|sbom[,disabled=true][,KEY=VALUE]
    /// (repeatable); rbuild makes none yet, so only disabled ones are taken
    #[arg(long, value_name = "SPEC")]
    pub attest: Vec<String>,
    /// Shorthand for --attest type=provenance: true, false or its options
    #[arg(long, value_name = "VALUE")]
    pub provenance: Option<String>,
    /// Shorthand for --attest type=sbom: true, false or its options
    #[arg(long, value_name = "VALUE")]
    pub sbom: Option<String>,
    /// Ask the registry again for every base image
    #[arg(long)]
    pub pull: bool,
    /// Run the build checks only and build nothing (as `rbuild check`)
    #[arg(long)]
    pub check: bool,
    /// What to do instead of building, as buildx: check, outline (the
    /// build args, secrets and ssh ids the target takes), targets (the
    /// stages), build (the default); `,format=json` for JSON
    #[arg(long, value_name = "NAME[,format=json]")]
    pub call: Option<String>,
    /// The build context directory, or - for a Dockerfile on stdin
    pub context: PathBuf,
}
