//! The build graph: what a build runs, as a petgraph of [`Op`]s.
//!
//! [`compile`] walks the stages the target needs (see [`crate::stage`]) in
//! file order and turns each instruction into an op with its words expanded
//! in the stage's scope: sources (scratch, images, the build context, named
//! contexts), execs (RUN), file ops (COPY/ADD, WORKDIR), merges (COPY
//! --link puts its layer on the parent instead of depending on it) and
//! config-only changes (ENV, LABEL, CMD, ...). Edges say which op's result
//! another op reads. Nothing here runs anything; the builder solves the
//! graph.

use std::collections::BTreeMap;
use std::fmt::Write;

use petgraph::Direction;
use petgraph::stable_graph::{NodeIndex, StableDiGraph};
use petgraph::visit::{EdgeRef, IntoEdgeReferences};
use serde::Serialize;
use serde_json::json;

use crate::instructions::{Mount, Network, Security};
use crate::span::Span;
use crate::stage::StageEnv;

mod commands;
mod compile;
pub use compile::compile;

/// What the base image of a stage brings (from its config).
#[derive(Debug, Clone, Default)]
pub struct BaseConfig {
    /// `Env`.
    pub env: Vec<(String, String)>,
    /// `WorkingDir`.
    pub workdir: String,
    /// `User`.
    pub user: String,
    /// `Shell`.
    pub shell: Vec<String>,
    /// `OnBuild` triggers.
    pub onbuild: Vec<String>,
    /// The platform the image is for, when its config says.
    pub platform: Option<crate::stage::Platform>,
}

/// Looks up image configs for FROM lines; the builder backs it with its
/// image store. Without one, images are assumed to bring nothing.
pub trait ImageConfigs {
    /// The config of `reference`'s image for `platform`, if known.
    fn config(&self, reference: &str, platform: &crate::stage::Platform) -> Option<BaseConfig>;
}

/// No image store: every image is empty.
pub struct NoImages;

impl ImageConfigs for NoImages {
    fn config(&self, _: &str, _: &crate::stage::Platform) -> Option<BaseConfig> {
        None
    }
}

/// A RUN, expanded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExecOp {
    /// The argv (shell form already wrapped in the stage's SHELL).
    pub args: Vec<String>,
    /// Environment: the image's ENV and the stage's ARG values.
    pub env: Vec<String>,
    /// Working directory.
    pub workdir: String,
    /// `USER`, unresolved (`name[:group]` or ids); empty is root.
    pub user: String,
    /// `--mount`s, expanded.
    pub mounts: Vec<Mount>,
    /// `--network`.
    pub network: Network,
    /// `--security`.
    pub security: Security,
    /// The stage's ARGs in declaration order (a base stage's first) with
    /// their values: BuildKit prefixes RUN's history with them.
    pub build_args: Vec<(String, String)>,
    /// Files the command needs mounted read-only: a heredoc with a
    /// shebang becomes an executable `/dev/pipes/<name>`.
    pub inline_files: Vec<InlineFile>,
    /// The sandbox's hostname when the build sets one (else BuildKit's
    /// `buildkitsandbox`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// `--add-host` entries for `/etc/hosts`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub extra_hosts: Vec<crate::hosts::ExtraHost>,
    /// `--ulimit`s.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ulimits: Vec<crate::limits::Ulimit>,
    /// `--shm-size`: a `/dev/shm` of this size.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shm_size: Option<crate::limits::ShmSize>,
    /// Per mount, the node it reads from (`from=`, or the context for a
    /// bind without one); the same nodes are the op's `Mount` inputs.
    #[serde(skip)]
    pub mount_sources: Vec<Option<NodeIndex>>,
}

/// A file made from a RUN heredoc, mounted for the command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InlineFile {
    /// Absolute path inside the sandbox.
    pub path: String,
    /// Content.
    pub data: String,
    /// Permission bits.
    pub mode: u32,
}

/// Where a file op reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", content = "name", rename_all = "lowercase")]
pub enum FileSource {
    /// The main build context.
    Context,
    /// A named `--build-context`.
    Named(String),
    /// A stage's result.
    Stage(usize),
    /// An image.
    Image(String),
}

/// A COPY or ADD, expanded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileOp {
    /// ADD (archives, URLs, git) rather than COPY.
    pub add: bool,
    /// Source paths or URLs.
    pub sources: Vec<String>,
    /// Heredoc files `(name, data)`.
    pub contents: Vec<(String, String)>,
    /// Destination, absolute; a trailing `/` is kept (it means a directory).
    pub dest: String,
    /// The destination as written (expanded, not resolved): history uses it.
    pub dest_written: String,
    /// Where the sources are read.
    pub from: FileSource,
    /// `--chown`, expanded.
    pub chown: Option<String>,
    /// `--chmod`, expanded.
    pub chmod: Option<String>,
    /// `--link`.
    pub link: bool,
    /// `--parents`.
    pub parents: bool,
    /// `--exclude` patterns, expanded.
    pub excludes: Vec<String>,
    /// ADD `--keep-git-dir`.
    pub keep_git_dir: Option<bool>,
    /// ADD `--checksum`, expanded.
    pub checksum: Option<String>,
    /// ADD `--unpack`.
    pub unpack: Option<bool>,
}

/// An image-config change that makes no layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "instruction", content = "value", rename_all = "UPPERCASE")]
pub enum ConfigChange {
    /// `ENV`, expanded pairs.
    Env(Vec<(String, String)>),
    /// `LABEL`, expanded pairs.
    Label(Vec<(String, String)>),
    /// `ARG`, values as resolved.
    Arg(Vec<(String, Option<String>)>),
    /// `CMD`.
    Cmd(Vec<String>),
    /// `ENTRYPOINT`.
    Entrypoint(Vec<String>),
    /// `EXPOSE`: `port/proto` keys.
    Expose(Vec<String>),
    /// `VOLUME` paths.
    Volume(Vec<String>),
    /// `USER`.
    User(String),
    /// `STOPSIGNAL`.
    Stopsignal(String),
    /// `HEALTHCHECK`: the test (empty for NONE) and timings in ns.
    Healthcheck(Option<HealthcheckValue>),
    /// `SHELL`.
    Shell(Vec<String>),
    /// `ONBUILD` expression.
    Onbuild(String),
    /// `MAINTAINER`.
    Maintainer(String),
}

impl ConfigChange {
    /// About how many bytes the change holds in the image: its words twice
    /// (the config and the history's `created_by`).
    pub fn held_bytes(&self) -> usize {
        let pairs = |p: &[(String, String)]| p.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
        let words = |w: &[String]| w.iter().map(|w| w.len() + 1).sum();
        let one: usize = match self {
            ConfigChange::Env(p) | ConfigChange::Label(p) => pairs(p),
            ConfigChange::Arg(a) => a
                .iter()
                .map(|(k, v)| k.len() + v.as_ref().map_or(0, String::len) + 2)
                .sum(),
            ConfigChange::Cmd(w)
            | ConfigChange::Entrypoint(w)
            | ConfigChange::Expose(w)
            | ConfigChange::Volume(w)
            | ConfigChange::Shell(w) => words(w),
            ConfigChange::Healthcheck(h) => h.as_ref().map_or(0, |h| words(&h.test)),
            ConfigChange::User(s)
            | ConfigChange::Stopsignal(s)
            | ConfigChange::Onbuild(s)
            | ConfigChange::Maintainer(s) => s.len(),
        };
        2 * one
    }
}

/// `HEALTHCHECK CMD ...` in the config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthcheckValue {
    /// `["CMD", ...]` or `["CMD-SHELL", "..."]`.
    pub test: Vec<String>,
    /// Nanoseconds.
    pub interval: i64,
    /// Nanoseconds.
    pub timeout: i64,
    /// Nanoseconds.
    pub start_period: i64,
    /// Nanoseconds.
    pub start_interval: i64,
    /// Retries.
    pub retries: i32,
}

/// What an op does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum OpKind {
    /// An empty filesystem.
    Scratch,
    /// An image's filesystem.
    Image {
        /// The reference.
        reference: String,
        /// `FROM --platform`.
        platform: Option<String>,
    },
    /// The main build context (`name` = "context") or a named one.
    Context {
        /// The name.
        name: String,
    },
    /// RUN.
    Exec(ExecOp),
    /// COPY/ADD.
    File(FileOp),
    /// WORKDIR: make the directory.
    Mkdir {
        /// Absolute path.
        path: String,
    },
    /// `COPY --link`: the copy's layer put on top of the parent.
    Merge,
    /// A config-only change.
    Config(ConfigChange),
}

/// One vertex of the graph.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Op {
    /// What it does.
    #[serde(flatten)]
    pub kind: OpKind,
    /// The progress name, as BuildKit shows it (`[build 2/4] RUN make`).
    pub name: String,
    /// The stage it belongs to, if any.
    pub stage: Option<usize>,
    /// The Dockerfile instruction it comes from.
    #[serde(skip)]
    pub span: Option<Span>,
}

/// How one op uses another's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Edge {
    /// The filesystem this op starts from.
    Parent,
    /// Files copied from it.
    Source,
    /// Mounted into a RUN.
    Mount,
    /// A layer merged onto the parent (`--link`).
    Layer,
}

/// The stages' ops, in a graph.
#[derive(Debug, Clone)]
pub struct BuildGraph {
    /// Ops and edges (edge from input to user).
    pub graph: StableDiGraph<Op, Edge>,
    /// The last op of each compiled stage, by stage index.
    pub stage_results: BTreeMap<usize, NodeIndex>,
    /// The target stage's last op.
    pub target: NodeIndex,
    /// Final scope of each compiled stage (image Env, workdir).
    pub stage_envs: BTreeMap<usize, StageEnv>,
    /// The platform each compiled stage is for: its `FROM --platform`,
    /// else the target platform. Its steps run for it (emulated when it
    /// is not the host's) and its results are keyed with it.
    pub stage_platforms: BTreeMap<usize, crate::stage::Platform>,
    /// The target platform (`--platform`, else the host's).
    pub platform: crate::stage::Platform,
}

impl BuildGraph {
    /// Names each step as BuildKit does in a build for several platforms:
    /// with the platform its stage is for, and the target's after `->`
    /// when they differ (`[linux/arm64 build 2/4] RUN make`, `[linux/amd64->arm64
    /// tools 1/2] COPY`, `[linux/arm64 internal] load metadata for ...`).
    pub fn name_platform(&mut self) {
        let target = self.platform.clone();
        for op in self.graph.node_weights_mut() {
            let platform = match (&op.kind, op.stage) {
                (
                    OpKind::Image {
                        platform: Some(p), ..
                    },
                    _,
                ) => crate::stage::Platform::parse(p).unwrap_or_else(|_| target.clone()),
                (OpKind::Image { .. }, _) => target.clone(),
                (_, Some(s)) => self
                    .stage_platforms
                    .get(&s)
                    .cloned()
                    .unwrap_or_else(|| target.clone()),
                (_, None) => continue,
            };
            let Some(rest) = op.name.strip_prefix('[') else {
                continue;
            };
            let shown = if platform == target {
                platform.to_string()
            } else if platform.os == target.os {
                let arch = target.to_string();
                let arch = arch.split_once('/').map_or(arch.as_str(), |(_, a)| a);
                format!("{platform}->{arch}")
            } else {
                format!("{platform}->{target}")
            };
            op.name = format!("[{shown} {rest}");
        }
    }

    /// Nodes in an order where every op comes after its inputs.
    pub fn topological(&self) -> Vec<NodeIndex> {
        petgraph::algo::toposort(&self.graph, None).expect("the build graph has no cycles")
    }

    /// The graph as JSON: `{"nodes": [...], "edges": [...], "target": n}`.
    pub fn to_json(&self) -> serde_json::Value {
        let order = self.topological();
        let ids: BTreeMap<NodeIndex, usize> =
            order.iter().enumerate().map(|(i, n)| (*n, i)).collect();
        let nodes: Vec<serde_json::Value> = order
            .iter()
            .map(|n| {
                let op = &self.graph[*n];
                let mut v = serde_json::to_value(op).expect("ops serialize");
                v["id"] = json!(ids[n]);
                if let Some(s) = &op.span {
                    v["line"] = json!(s.start_line);
                }
                v
            })
            .collect();
        let mut edges: Vec<serde_json::Value> = (&self.graph)
            .edge_references()
            .map(|e| json!({"from": ids[&e.source()], "to": ids[&e.target()], "kind": e.weight()}))
            .collect();
        edges.sort_by_key(|e| (e["to"].as_u64(), e["from"].as_u64()));
        json!({"nodes": nodes, "edges": edges, "target": ids[&self.target]})
    }

    /// The graph in Graphviz DOT.
    pub fn to_dot(&self) -> String {
        let order = self.topological();
        let ids: BTreeMap<NodeIndex, usize> =
            order.iter().enumerate().map(|(i, n)| (*n, i)).collect();
        let mut out = String::from(
            "digraph build {\n  rankdir=TB;\n  node [shape=box, fontname=\"monospace\"];\n",
        );
        for n in &order {
            let op = &self.graph[*n];
            let shape = match op.kind {
                OpKind::Scratch | OpKind::Image { .. } | OpKind::Context { .. } => {
                    ", shape=ellipse"
                }
                OpKind::Config(_) => ", style=dashed",
                _ => "",
            };
            let peripheries = if *n == self.target {
                ", peripheries=2"
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "  n{} [label={}{shape}{peripheries}];",
                ids[n],
                dot_quote(&op.name)
            );
        }
        let mut edges: Vec<(usize, usize, Edge)> = (&self.graph)
            .edge_references()
            .map(|e| (ids[&e.source()], ids[&e.target()], *e.weight()))
            .collect();
        edges.sort_by_key(|(f, t, _)| (*t, *f));
        for (f, t, kind) in edges {
            let style = match kind {
                Edge::Parent => "",
                Edge::Source => " [style=bold, label=\"copy\"]",
                Edge::Mount => " [style=dotted, label=\"mount\"]",
                Edge::Layer => " [style=bold, label=\"layer\"]",
            };
            let _ = writeln!(out, "  n{f} -> n{t}{style};");
        }
        out.push_str("}\n");
        out
    }

    /// The ops a node reads from, with the edge kind.
    pub fn inputs(&self, n: NodeIndex) -> Vec<(NodeIndex, Edge)> {
        let mut v: Vec<(NodeIndex, Edge)> = self
            .graph
            .edges_directed(n, Direction::Incoming)
            .map(|e| (e.source(), *e.weight()))
            .collect();
        v.sort_by_key(|(i, _)| i.index());
        v
    }
}

fn dot_quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stage::{PlanOptions, plan};

    fn graph_of(src: &str, target: Option<&str>) -> BuildGraph {
        let df = crate::parser::parse("Dockerfile", src).unwrap();
        let p = plan(
            &df,
            &PlanOptions {
                target: target.map(str::to_string),
                ..Default::default()
            },
        )
        .unwrap();
        compile(&p, &NoImages).unwrap()
    }

    #[test]
    fn multistage_edges_and_pruning() {
        let g = graph_of(
            "FROM alpine AS build\nWORKDIR /src\nRUN make\nFROM scratch AS unused\nRUN nope\nFROM scratch\nCOPY --from=build /src/app /app\nCMD [\"/app\"]\n",
            None,
        );
        let names: Vec<String> = g
            .topological()
            .iter()
            .map(|n| g.graph[*n].name.clone())
            .collect();
        assert!(
            names.contains(&"[build 1/3] FROM alpine".to_string()),
            "{names:?}"
        );
        assert!(
            names.contains(&"[build 3/3] RUN make".to_string()),
            "{names:?}"
        );
        assert!(
            names.contains(&"[stage-2 1/1] COPY --from=build /src/app /app".to_string()),
            "{names:?}"
        );
        assert!(!names.iter().any(|n| n.contains("nope")));
        let copy = g
            .topological()
            .into_iter()
            .find(|n| matches!(g.graph[*n].kind, OpKind::File(_)))
            .unwrap();
        let inputs = g.inputs(copy);
        assert_eq!(inputs.len(), 2);
        assert!(
            inputs
                .iter()
                .any(|(i, e)| *e == Edge::Source && g.graph[*i].name.contains("RUN make"))
        );
    }

    #[test]
    fn run_heredocs_as_buildkit() {
        let g = graph_of(
            "FROM scratch\nRUN <<EOF\necho a\necho b\nEOF\nRUN <<-EOF\n\t#!/usr/bin/env python3\n\tprint(1)\nEOF\nRUN <<A cat > /a && <<B cat > /b\n1\nA\n2\nB\n",
            None,
        );
        let execs: Vec<(&ExecOp, &str)> = g
            .topological()
            .into_iter()
            .filter_map(|n| match &g.graph[n].kind {
                OpKind::Exec(e) => Some((e, g.graph[n].name.as_str())),
                _ => None,
            })
            .collect();
        assert_eq!(execs[0].0.args, vec!["/bin/sh", "-c", "echo a\necho b\n"]);
        assert_eq!(execs[0].1, "[1/3] RUN <<EOF (echo a...)");
        assert_eq!(execs[1].0.args, vec!["/bin/sh", "-c", "/dev/pipes/EOF"]);
        assert_eq!(
            execs[1].0.inline_files[0].data,
            "#!/usr/bin/env python3\nprint(1)\n"
        );
        assert_eq!(execs[1].0.inline_files[0].mode, 0o755);
        assert_eq!(
            execs[2].0.args,
            vec!["/bin/sh", "-c", "<<A cat > /a && <<B cat > /b\n1\nA\n2\nB"]
        );
    }

    #[test]
    fn link_makes_a_merge() {
        let g = graph_of("FROM scratch\nCOPY --link a /a\n", None);
        let merge = g.target;
        assert_eq!(g.graph[merge].kind, OpKind::Merge);
        let kinds: Vec<Edge> = g.inputs(merge).into_iter().map(|(_, e)| e).collect();
        assert!(kinds.contains(&Edge::Parent) && kinds.contains(&Edge::Layer));
    }

    #[test]
    fn expansion_in_stage_scope() {
        let g = graph_of(
            "FROM scratch\nARG V=1\nENV DIR=/opt/app-$V\nWORKDIR $DIR\nCOPY a* ./sub/\nRUN --mount=type=cache,target=$DIR/cache echo\nEXPOSE 80 ${V}000/udp\n",
            None,
        );
        let ops: Vec<&Op> = g.topological().iter().map(|n| &g.graph[*n]).collect();
        let copy = ops
            .iter()
            .find_map(|o| match &o.kind {
                OpKind::File(f) => Some(f),
                _ => None,
            })
            .unwrap();
        assert_eq!(copy.dest, "/opt/app-1/sub/");
        let exec = ops
            .iter()
            .find_map(|o| match &o.kind {
                OpKind::Exec(e) => Some(e),
                _ => None,
            })
            .unwrap();
        assert_eq!(exec.mounts[0].target.as_deref(), Some("/opt/app-1/cache"));
        assert_eq!(exec.mounts[0].id.as_deref(), Some("//opt/app-1/cache"));
        assert_eq!(exec.args, vec!["/bin/sh", "-c", "echo"]);
        assert!(
            exec.env.contains(&"V=1".to_string())
                && exec.env.contains(&"DIR=/opt/app-1".to_string())
        );
        assert_eq!(exec.workdir, "/opt/app-1");
        let expose = ops
            .iter()
            .find_map(|o| match &o.kind {
                OpKind::Config(ConfigChange::Expose(p)) => Some(p),
                _ => None,
            })
            .unwrap();
        assert_eq!(expose, &vec!["1000/udp".to_string(), "80/tcp".to_string()]);
    }
}
