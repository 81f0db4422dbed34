//! [`StageEnv`]: a stage's variable scope (ENV growth, ARG scoping,
//! WORKDIR) in insertion order with lookups by name.

use std::collections::{BTreeMap, HashMap};

use super::entry_bytes;
use crate::instructions;
use crate::shell::{Expansion, Lex};

/// BuildKit's `system.DefaultPathEnv` for Linux: the `PATH` of every stage
/// whose base sets none (`FROM scratch` among them).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Names in the order they were first set, each with its latest value,
/// found by name without a scan (a stage of 10,000 ENV or ARG lines made
/// every lookup a walk of all of them).
#[derive(Debug, Clone)]
pub struct Ordered<V> {
    entries: Vec<(String, V)>,
    index: HashMap<String, usize>,
}

impl<V> Default for Ordered<V> {
    fn default() -> Self {
        Ordered {
            entries: Vec::new(),
            index: HashMap::new(),
        }
    }
}

impl<V: PartialEq> PartialEq for Ordered<V> {
    fn eq(&self, other: &Self) -> bool {
        self.entries == other.entries
    }
}

impl<V: Eq> Eq for Ordered<V> {}

impl<V> Ordered<V> {
    /// Sets `key`, keeping its position when it exists.
    pub fn insert(&mut self, key: &str, value: V) {
        match self.index.get(key) {
            Some(&i) => self.entries[i].1 = value,
            None => {
                self.index.insert(key.to_string(), self.entries.len());
                self.entries.push((key.to_string(), value));
            }
        }
    }

    /// The value of `key`.
    pub fn value(&self, key: &str) -> Option<&V> {
        self.index.get(key).map(|&i| &self.entries[i].1)
    }

    /// The entries in order.
    pub fn entries(&self) -> &[(String, V)] {
        &self.entries
    }

    /// The entries in order.
    pub fn iter(&self) -> std::slice::Iter<'_, (String, V)> {
        self.entries.iter()
    }
}

/// An ordered environment where a later entry replaces an earlier one.
pub type EnvList = Ordered<String>;

impl EnvList {
    /// Sets `key`, keeping its position when it exists.
    pub fn set(&mut self, key: &str, value: &str) {
        self.insert(key, value.to_string());
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.value(key).map(String::as_str)
    }

    /// `KEY=VALUE` strings, as an image config's Env.
    pub fn to_strings(&self) -> Vec<String> {
        self.entries
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect()
    }
}

impl EnvList {
    /// An environment from ordered pairs.
    pub fn from_entries(entries: &[(String, String)]) -> EnvList {
        let mut env = EnvList::default();
        for (k, v) in entries {
            env.set(k, v);
        }
        env
    }

    /// About how many bytes it holds (see [`super::Budget`]).
    pub fn held_bytes(&self) -> usize {
        self.iter().map(|(k, v)| entry_bytes(k, v)).sum()
    }
}

impl crate::shell::Env for EnvList {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.get(name)
    }
}

/// The variables in scope at one point of a stage: the image's ENV (from
/// the base image and ENV instructions) and the stage's ARG values, as
/// BuildKit's `getEnv(state)` sees them.
#[derive(Debug, Clone, Default)]
pub struct StageEnv {
    /// What expansion sees: ENV and ARG values, later ones winning.
    pub scope: EnvList,
    /// The image config's Env (ENV only, no ARG values).
    pub image_env: EnvList,
    /// ARGs declared in the stage so far, with their values.
    pub args: Ordered<Option<String>>,
    /// The working directory, absolute.
    pub workdir: String,
}

impl StageEnv {
    /// The scope of a stage whose base image has `env` and `workdir`; with
    /// [`DEFAULT_PATH`] added when the base sets no `PATH` (BuildKit makes
    /// sure every stage has one: its steps run with it, words expand with
    /// it and the image's config keeps it).
    pub fn new(env: &[(String, String)], workdir: &str) -> StageEnv {
        let mut image_env = EnvList::default();
        for (k, v) in env {
            image_env.set(k, v);
        }
        if image_env.get("PATH").is_none() {
            image_env.set("PATH", DEFAULT_PATH);
        }
        StageEnv {
            scope: image_env.clone(),
            image_env,
            args: Ordered::default(),
            workdir: if workdir.is_empty() {
                "/".into()
            } else {
                workdir.into()
            },
        }
    }

    /// About how many bytes the scope holds (what a stage built on this
    /// one copies).
    pub fn held_bytes(&self) -> usize {
        self.scope.held_bytes()
            + self.image_env.held_bytes()
            + self
                .args
                .iter()
                .map(|(k, v)| entry_bytes(k, v.as_deref().unwrap_or("")))
                .sum::<usize>()
    }

    /// Expands one word in this scope.
    pub fn expand(&self, lex: &Lex, word: &str) -> Result<String, String> {
        lex.process_word(word, &self.scope)
            .map_err(|e| e.to_string())
    }

    /// Expands one word and reports which variables it used.
    pub fn expand_with_matches(&self, lex: &Lex, word: &str) -> Result<Expansion, String> {
        lex.process(word, &self.scope).map_err(|e| e.to_string())
    }

    /// Applies `ENV k=v ...`: each value sees the environment before this
    /// instruction (BuildKit expands the whole instruction first).
    pub fn apply_env(
        &mut self,
        lex: &Lex,
        pairs: &[instructions::KeyValue],
    ) -> Result<Vec<(String, String)>, String> {
        let mut expanded = Vec::new();
        for kv in pairs {
            expanded.push((self.expand(lex, &kv.key)?, self.expand(lex, &kv.value)?));
        }
        for (k, v) in &expanded {
            self.scope.set(k, v);
            self.image_env.set(k, v);
        }
        Ok(expanded)
    }

    /// Applies `ARG name[=default] ...` as BuildKit's `dispatchArg`: a
    /// `--build-arg` wins, then the default (expanded), then a global ARG of
    /// the same name; the value joins the scope (not the image's Env).
    pub fn apply_arg(
        &mut self,
        lex: &Lex,
        defs: &[instructions::ArgDef],
        build_args: &BTreeMap<String, String>,
        global_args: &EnvList,
    ) -> Result<Vec<(String, Option<String>)>, String> {
        let mut out = Vec::new();
        for def in defs {
            let value = if let Some(v) = build_args.get(&def.key) {
                Some(v.clone())
            } else if let Some(default) = &def.value {
                Some(self.expand(lex, default)?)
            } else {
                global_args.get(&def.key).map(str::to_string)
            };
            if let Some(v) = &value {
                self.scope.set(&def.key, v);
            }
            // A redeclared ARG keeps its first place (BuildKit's RUN history).
            self.args.insert(&def.key, value.clone());
            out.push((def.key.clone(), value));
        }
        Ok(out)
    }

    /// Applies `WORKDIR`: relative paths resolve against the current one.
    pub fn apply_workdir(&mut self, lex: &Lex, path: &str) -> Result<String, String> {
        let path = self.expand(lex, path)?;
        self.workdir = resolve_path(&self.workdir, &path);
        Ok(self.workdir.clone())
    }
}

/// `path` made absolute against `dir`, cleaned (Go's `path.Join` + `Clean`).
pub fn resolve_path(dir: &str, path: &str) -> String {
    if path.starts_with('/') {
        crate::glob::clean(path)
    } else {
        crate::glob::clean(&format!("{dir}/{path}"))
    }
}
