//! Cache keys from named inputs. Each snapshot-making op has a struct that
//! names every input its result depends on; the key is the sha256 of its
//! canonical JSON (fields in declaration order), and the same JSON is what
//! the index keeps beside the record, so that a later build can say which
//! input changed.
//!
//! Each `of` constructor takes its op apart field by field, without `..`:
//! a field added to an op does not compile until it is counted here or
//! named as deliberately left out (with the reason).

use serde::Serialize;

use frontend::graph::{ExecOp, FileOp, FileSource, InlineFile};
use frontend::hosts::ExtraHost;
use frontend::instructions::{Mount, Network, Security};
use frontend::limits::{ShmSize, Ulimit};

/// The format of the key inputs: a change to what a key is made of, or to
/// what a step makes of the same inputs, bumps it, so that old records are
/// not taken for new ones. 2: typed inputs (1 was whole ops serialised
/// with `json!`). 3: copies keep a stage's owners and special files,
/// resolve --chown as BuildKit, write through destination symlinks and
/// see re-included context files; RUN gains setuid (no no_new_privs).
/// 4: layers keep no extended attribute but file capabilities, COPY keeps
/// capabilities, `COPY --parents` reads its sources as BuildKit's.
const KEY_VERSION: u32 = 4;

/// What every key has: the format, the layer format and the state the op
/// starts from.
#[derive(Debug, Clone, Serialize)]
pub(super) struct Common<'a> {
    version: u32,
    /// What of the layer options changes a layer's bytes.
    pub layers: &'a str,
    /// The key of the state the op runs on (none: scratch, or `--link`).
    pub parent: Option<&'a str>,
    /// The platform the op runs for, when it is not the host's: the same
    /// step for two platforms (`RUN uname -m` on scratch) is two results.
    /// Left out for the host's, so keys made before it stay valid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
}

impl<'a> Common<'a> {
    /// The common inputs in the current format.
    pub fn new(layers: &'a str, parent: Option<&'a str>) -> Self {
        Common {
            version: KEY_VERSION,
            layers,
            parent,
            platform: None,
        }
    }

    /// The same, for an op of a stage built for `platform`.
    pub fn on(self, platform: &frontend::stage::Platform) -> Self {
        Common {
            platform: (*platform != frontend::stage::Platform::host())
                .then(|| platform.to_string()),
            ..self
        }
    }
}

/// The inputs of one op's key.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub(super) enum Inputs<'a> {
    Exec(ExecInputs<'a>),
    File(FileInputs<'a>),
    Mkdir(MkdirInputs<'a>),
    ContextBase(ContextBaseInputs<'a>),
}

/// A RUN.
#[derive(Debug, Clone, Serialize)]
pub(super) struct ExecInputs<'a> {
    #[serde(flatten)]
    pub common: Common<'a>,
    pub args: &'a [String],
    /// The stage's ENV and ARG values (proxy args are not in it).
    pub env: &'a [String],
    pub workdir: &'a str,
    pub user: &'a str,
    pub network: Network,
    pub security: Security,
    pub inline_files: &'a [InlineFile],
    /// Left out when unset, so keys made before the field stay valid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<&'a str>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub extra_hosts: &'a [ExtraHost],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub ulimits: &'a [Ulimit],
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shm_size: Option<ShmSize>,
    pub mounts: Vec<MountInputs<'a>>,
}

/// One `--mount` of a RUN and what its source holds.
#[derive(Debug, Clone, Serialize)]
pub(super) struct MountInputs<'a> {
    /// Every option of the mount counts.
    pub mount: &'a Mount,
    /// The content it shows (a bind of the context, a named context or a
    /// stage's path), or its source stage's key (cache `from=`).
    pub source: Option<String>,
}

impl<'a> ExecInputs<'a> {
    /// The inputs of `exec` on `common`; `sources` per mount (see
    /// [`MountInputs::source`]).
    pub fn of(common: Common<'a>, exec: &'a ExecOp, sources: Vec<Option<String>>) -> Self {
        let ExecOp {
            args,
            env,
            workdir,
            user,
            mounts,
            network,
            security,
            // History only: their values are in `env`.
            build_args: _,
            inline_files,
            hostname,
            extra_hosts,
            ulimits,
            shm_size,
            // Counted as each mount's source content, not as graph nodes.
            mount_sources: _,
        } = exec;
        ExecInputs {
            common,
            args,
            env,
            workdir,
            user,
            network: *network,
            security: *security,
            inline_files,
            hostname: hostname.as_deref(),
            extra_hosts,
            ulimits,
            shm_size: *shm_size,
            mounts: mounts
                .iter()
                .zip(sources)
                .map(|(mount, source)| MountInputs { mount, source })
                .collect(),
        }
    }
}

/// A COPY or ADD.
#[derive(Debug, Clone, Serialize)]
pub(super) struct FileInputs<'a> {
    #[serde(flatten)]
    pub common: Common<'a>,
    pub add: bool,
    pub sources: &'a [String],
    pub contents: &'a [(String, String)],
    pub dest: &'a str,
    pub from: &'a FileSource,
    pub chown: Option<&'a str>,
    pub chmod: Option<&'a str>,
    pub link: bool,
    pub parents: bool,
    pub excludes: &'a [String],
    pub keep_git_dir: Option<bool>,
    pub checksum: Option<&'a str>,
    pub unpack: Option<bool>,
    /// The digest of the selected source files (a local context), or the
    /// source stage's or image's key.
    pub source_content: Option<&'a str>,
}

impl<'a> FileInputs<'a> {
    /// The inputs of `file` on `common`, reading `source_content`.
    pub fn of(common: Common<'a>, file: &'a FileOp, source_content: Option<&'a str>) -> Self {
        let FileOp {
            add,
            sources,
            contents,
            dest,
            // History only: the resolved `dest` is what is written.
            dest_written: _,
            from,
            chown,
            chmod,
            link,
            parents,
            excludes,
            keep_git_dir,
            checksum,
            unpack,
        } = file;
        FileInputs {
            common,
            add: *add,
            sources,
            contents,
            dest,
            from,
            chown: chown.as_deref(),
            chmod: chmod.as_deref(),
            link: *link,
            parents: *parents,
            excludes,
            keep_git_dir: *keep_git_dir,
            checksum: checksum.as_deref(),
            unpack: *unpack,
            source_content,
        }
    }
}

/// WORKDIR's directories.
#[derive(Debug, Clone, Serialize)]
pub(super) struct MkdirInputs<'a> {
    #[serde(flatten)]
    pub common: Common<'a>,
    pub path: &'a str,
    /// The stage's USER: it owns the directories made.
    pub user: &'a str,
    /// SOURCE_DATE_EPOCH: the new directories' times.
    pub epoch: Option<i64>,
}

/// A named directory context as a stage's base.
#[derive(Debug, Clone, Serialize)]
pub(super) struct ContextBaseInputs<'a> {
    #[serde(flatten)]
    pub common: Common<'a>,
    /// The digest of its files (its ignore file applied).
    pub content: &'a str,
}

impl Inputs<'_> {
    /// The canonical JSON the key is the digest of.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("key inputs serialise")
    }

    /// The key: sha256 of [`Inputs::to_json`].
    #[cfg(test)]
    pub fn key(&self) -> cache::index::CacheKey {
        self.keyed().0
    }

    /// The key and the JSON it is the digest of.
    pub fn keyed(&self) -> (cache::index::CacheKey, String) {
        use sha2::{Digest as _, Sha256};
        let json = self.to_json();
        let hex: String = Sha256::digest(json.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        (
            cache::index::CacheKey::new(&hex).expect("sha256 hex is a key"),
            json,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A field's name and a change to it.
    type Change<T> = (&'static str, Box<dyn Fn(&mut T)>);

    fn exec() -> ExecOp {
        ExecOp {
            args: vec!["/bin/sh".into(), "-c".into(), "make".into()],
            env: vec!["PATH=/bin".into(), "V=1".into()],
            workdir: "/src".into(),
            user: String::new(),
            mounts: Vec::new(),
            network: Network::Default,
            security: Security::Sandbox,
            build_args: vec![("V".into(), "1".into())],
            inline_files: Vec::new(),
            hostname: None,
            extra_hosts: Vec::new(),
            ulimits: Vec::new(),
            shm_size: None,
            mount_sources: Vec::new(),
        }
    }

    fn common(parent: Option<&str>) -> Common<'_> {
        Common::new("uncompressed", parent)
    }

    fn exec_key(e: &ExecOp, parent: Option<&str>) -> cache::index::CacheKey {
        Inputs::Exec(ExecInputs::of(
            common(parent),
            e,
            vec![None; e.mounts.len()],
        ))
        .key()
    }

    /// Every counted field of a RUN changes its key; the fields left out
    /// (history only, graph plumbing) do not.
    #[test]
    fn each_exec_input_counts() {
        let base = exec();
        let key = exec_key(&base, Some("p"));
        assert_eq!(key, exec_key(&base, Some("p")), "deterministic");
        assert_ne!(key, exec_key(&base, Some("q")), "parent");
        let counted: Vec<Change<ExecOp>> = vec![
            ("args", Box::new(|e| e.args[2] = "make all".into())),
            ("env", Box::new(|e| e.env[1] = "V=2".into())),
            ("workdir", Box::new(|e| e.workdir = "/other".into())),
            ("user", Box::new(|e| e.user = "app".into())),
            ("network", Box::new(|e| e.network = Network::None)),
            ("security", Box::new(|e| e.security = Security::Insecure)),
            ("hostname", Box::new(|e| e.hostname = Some("box".into()))),
            (
                "extra_hosts",
                Box::new(|e| e.extra_hosts.push("db:10.0.0.2".parse().unwrap())),
            ),
            (
                "ulimits",
                Box::new(|e| e.ulimits.push("nofile=10:20".parse().unwrap())),
            ),
            (
                "shm_size",
                Box::new(|e| e.shm_size = Some(ShmSize(1 << 20))),
            ),
            (
                "inline_files",
                Box::new(|e| {
                    e.inline_files.push(InlineFile {
                        path: "/dev/pipes/EOF".into(),
                        data: "x".into(),
                        mode: 0o755,
                    })
                }),
            ),
            (
                "mounts",
                Box::new(|e| {
                    e.mounts.push(
                        frontend::instructions::parse_mount("type=tmpfs,target=/t", &mut |v| {
                            Ok(v.to_string())
                        })
                        .unwrap(),
                    );
                    e.mount_sources.push(None);
                }),
            ),
        ];
        for (field, change) in counted {
            let mut e = exec();
            change(&mut e);
            assert_ne!(exec_key(&e, Some("p")), key, "{field} must count");
        }
        let mut e = exec();
        e.build_args = vec![("V".into(), "other".into())];
        assert_eq!(exec_key(&e, Some("p")), key, "build_args are history only");
    }

    /// The same for COPY: the destination as written is history only.
    #[test]
    fn each_file_input_counts() {
        let file = FileOp {
            add: false,
            sources: vec!["a".into()],
            contents: Vec::new(),
            dest: "/x/".into(),
            dest_written: "x/".into(),
            from: FileSource::Context,
            chown: None,
            chmod: None,
            link: false,
            parents: false,
            excludes: Vec::new(),
            keep_git_dir: None,
            checksum: None,
            unpack: None,
        };
        let key_of = |f: &FileOp, content: &str| {
            Inputs::File(FileInputs::of(common(Some("p")), f, Some(content))).key()
        };
        let key = key_of(&file, "sha256:a");
        assert_ne!(key_of(&file, "sha256:b"), key, "source content");
        let counted: Vec<Change<FileOp>> = vec![
            ("add", Box::new(|f| f.add = true)),
            ("sources", Box::new(|f| f.sources.push("b".into()))),
            (
                "contents",
                Box::new(|f| f.contents.push(("n".into(), "d".into()))),
            ),
            ("dest", Box::new(|f| f.dest = "/y/".into())),
            ("from", Box::new(|f| f.from = FileSource::Stage(0))),
            ("chown", Box::new(|f| f.chown = Some("1:1".into()))),
            ("chmod", Box::new(|f| f.chmod = Some("600".into()))),
            ("link", Box::new(|f| f.link = true)),
            ("parents", Box::new(|f| f.parents = true)),
            ("excludes", Box::new(|f| f.excludes.push("*.log".into()))),
            ("keep_git_dir", Box::new(|f| f.keep_git_dir = Some(true))),
            (
                "checksum",
                Box::new(|f| f.checksum = Some("sha256:0".into())),
            ),
            ("unpack", Box::new(|f| f.unpack = Some(false))),
        ];
        for (field, change) in counted {
            let mut f = file.clone();
            change(&mut f);
            assert_ne!(key_of(&f, "sha256:a"), key, "{field} must count");
        }
        let mut f = file.clone();
        f.dest_written = "/x/".into();
        assert_eq!(key_of(&f, "sha256:a"), key, "dest_written is history only");
    }
}
