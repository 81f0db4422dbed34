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
    /// Print the build graph that `build` would run, without running it
    Graph(GraphArgs),
    /// Look inside the frontend: parse, expand words, match .dockerignore
    #[command(subcommand)]
    Debug(DebugCommand),
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
    /// Target platform (only the host's, linux/amd64, for now)
    #[arg(long, value_parser = parse_platform)]
    pub platform: Option<frontend::stage::Platform>,
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

fn parse_platform(s: &str) -> Result<frontend::stage::Platform, String> {
    let p = frontend::stage::Platform::parse(s)?;
    if p != frontend::stage::Platform::host() {
        return Err(format!(
            "building for {p} is not supported yet; rbuild builds for linux/amd64"
        ));
    }
    Ok(p)
}
