//! Git URLs for `ADD <git>` and git build contexts, as BuildKit's
//! `dfgitutil/git_ref.go` reads them: `https://host/repo.git#ref:subdir`,
//! `git@host:repo.git`, `git://`, `github.com/owner/repo`, and the query
//! form (`?ref=`, `?tag=`, `?branch=`, `?subdir=`, `?checksum=`, ...).

use std::collections::BTreeMap;
use std::sync::OnceLock;

use regex::Regex;
use serde::Serialize;

/// A parsed git reference.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GitRef {
    /// The URL to clone, without fragment and query.
    pub remote: String,
    /// The repository name (last path element without `.git`).
    pub short_name: String,
    /// Branch, tag, commit or full ref; empty for the default branch.
    pub ref_name: String,
    /// Directory inside the repository.
    pub subdir: String,
    /// The expected commit (`?checksum=` / `?commit=`).
    pub checksum: String,
    /// `github.com/...` without a scheme (deprecated form).
    pub indistinguishable_from_local: bool,
    /// `http://` or `git://`.
    pub unencrypted_tcp: bool,
    /// `?keep-git-dir=`.
    pub keep_git_dir: Option<bool>,
    /// `?submodules=`.
    pub submodules: Option<bool>,
    /// `?mtime=checkout|commit`.
    pub mtime: String,
    /// `?fetch-by-commit`.
    pub fetch_by_commit: bool,
}

/// Why a string is not a usable git reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GitRefError {
    /// Not a git URL at all (a local path, an unknown scheme, a plain HTTP URL).
    #[error("`{0}` is not a git URL")]
    NotGit(String),
    /// A git URL with a bad query.
    #[error("invalid git URL `{url}`: {message}")]
    Invalid {
        /// The URL.
        url: String,
        /// BuildKit's message.
        message: String,
    },
}

struct Url {
    scheme: String,
    remote: String,
    path: String,
    query: String,
    fragment: String,
}

/// Splits `scheme://authority/path?query#fragment`.
fn split_url(s: &str) -> Url {
    let (rest, fragment) = s.split_once('#').unwrap_or((s, ""));
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (scheme, after) = rest.split_once("://").unwrap_or(("", rest));
    let path = if scheme.is_empty() {
        after.to_string()
    } else {
        after
            .find('/')
            .map(|i| after[i..].to_string())
            .unwrap_or_default()
    };
    Url {
        scheme: scheme.to_lowercase(),
        remote: rest.to_string(),
        path,
        query: query.to_string(),
        fragment: fragment.to_string(),
    }
}

fn scp_regex() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(r"^([a-zA-Z0-9-_]+)@([a-zA-Z0-9-.]+):(.*?)(?:\?(.*?))?(?:#(.*))?$")
            .expect("valid regex")
    })
}

fn proto_regex() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(r"^[a-zA-Z0-9]+://").expect("valid regex"))
}

/// `ref:subdir` of a fragment; the subdir is cleaned.
fn parse_fragment(fragment: &str) -> (String, String) {
    if fragment.is_empty() {
        return (String::new(), String::new());
    }
    let (r, subdir) = fragment.split_once(':').unwrap_or((fragment, ""));
    let subdir = crate::glob::clean(&format!("/{subdir}"));
    (r.to_string(), subdir.trim_start_matches('/').to_string())
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Go's `url.ParseQuery` into key -> values.
fn parse_query(query: &str) -> Result<BTreeMap<String, Vec<String>>, String> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for part in query.split('&').filter(|p| !p.is_empty()) {
        if part.contains(';') {
            return Err("invalid semicolon separator in query".into());
        }
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        let k = percent_decode(k).ok_or_else(|| format!("invalid URL escape in {k:?}"))?;
        let v = percent_decode(v).ok_or_else(|| format!("invalid URL escape in {v:?}"))?;
        out.entry(k).or_default().push(v);
    }
    Ok(out)
}

/// Parses a git reference. `Err(NotGit)` means the string is something
/// else (a path or a plain URL); `Err(Invalid)` a git URL with a bad query.
pub fn parse_git_ref(s: &str) -> Result<GitRef, GitRefError> {
    let not_git = || GitRefError::NotGit(s.to_string());
    if s.starts_with("./") || s.starts_with("../") {
        return Err(not_git());
    }
    let mut res = GitRef::default();
    let (remote, query, fragment);
    if let Some(rest) = s.strip_prefix("github.com/") {
        res.indistinguishable_from_local = true;
        let url = split_url(rest);
        remote = format!("github.com/{}", url.remote);
        query = url.query;
        fragment = url.fragment;
    } else if let Some(proto) = proto_regex().find(s) {
        let scheme = proto.as_str().trim_end_matches("://").to_lowercase();
        if !matches!(scheme.as_str(), "http" | "https" | "ssh" | "git") {
            return Err(not_git());
        }
        let url = split_url(s);
        if matches!(scheme.as_str(), "http" | "git") {
            res.unencrypted_tcp = true;
        }
        if matches!(scheme.as_str(), "http" | "https") && !url.path.ends_with(".git") {
            return Err(not_git());
        }
        remote = format!(
            "{}://{}",
            url.scheme,
            url.remote.split_once("://").map_or("", |(_, r)| r)
        );
        query = url.query;
        fragment = url.fragment;
    } else if let Some(caps) = scp_regex().captures(s) {
        remote = format!("{}@{}:{}", &caps[1], &caps[2], &caps[3]);
        query = caps.get(4).map_or("", |m| m.as_str()).to_string();
        fragment = caps.get(5).map_or("", |m| m.as_str()).to_string();
    } else {
        return Err(not_git());
    }
    res.remote = remote;
    (res.ref_name, res.subdir) = parse_fragment(&fragment);
    let last = res.remote.rsplit('/').next().unwrap_or_default();
    res.short_name = last.strip_suffix(".git").unwrap_or(last).to_string();
    let invalid = |message: String| GitRefError::Invalid {
        url: s.to_string(),
        message,
    };
    let query = parse_query(&query).map_err(invalid)?;
    res.load_query(query).map_err(invalid)?;
    Ok(res)
}

impl GitRef {
    fn load_query(&mut self, query: BTreeMap<String, Vec<String>>) -> Result<(), String> {
        let (mut tag, mut branch) = (String::new(), String::new());
        for (k, v) in query {
            if v.len() > 1 {
                return Err(format!(
                    "query {} has multiple values",
                    crate::quote::go_quote(&k)
                ));
            }
            let value = v.into_iter().next().filter(|s| !s.is_empty());
            let flag_like = matches!(
                k.as_str(),
                "submodules" | "keep-git-dir" | "fetch-by-commit"
            );
            if value.is_none() && !flag_like {
                return Err(format!("query {} has no value", crate::quote::go_quote(&k)));
            }
            let v = value.clone().unwrap_or_default();
            let q = crate::quote::go_quote;
            let bool_value = |what: &str| match &value {
                None => Ok(true),
                Some(s) => {
                    crate::parse_go_bool(s).ok_or_else(|| format!("invalid {what} value: {}", q(s)))
                }
            };
            match k.as_str() {
                "ref" => {
                    if !self.ref_name.is_empty() && self.ref_name != v {
                        return Err(format!("ref conflicts: {} vs {}", q(&self.ref_name), q(&v)));
                    }
                    self.ref_name = v;
                }
                "tag" => tag = v,
                "branch" => branch = v,
                "subdir" => {
                    if !self.subdir.is_empty() && self.subdir != v {
                        return Err(format!(
                            "subdir conflicts: {} vs {}",
                            q(&self.subdir),
                            q(&v)
                        ));
                    }
                    self.subdir = v;
                }
                "checksum" | "commit" => self.checksum = v,
                "keep-git-dir" => self.keep_git_dir = Some(bool_value("keep-git-dir")?),
                "submodules" => self.submodules = Some(bool_value("submodules")?),
                "mtime" => match v.as_str() {
                    "checkout" | "commit" => self.mtime = v,
                    _ => {
                        return Err(format!(
                            "invalid mtime value: {} (must be \"checkout\" or \"commit\")",
                            q(&v)
                        ));
                    }
                },
                "fetch-by-commit" => self.fetch_by_commit = bool_value("fetch-by-commit")?,
                _ => return Err(format!("unexpected query {}", q(&k))),
            }
        }
        if !tag.is_empty() {
            if !tag.starts_with("refs/tags/") {
                tag = format!("refs/tags/{tag}");
            }
            if !self.ref_name.is_empty() && self.ref_name != tag {
                return Err(format!(
                    "ref conflicts: {} vs {}",
                    crate::quote::go_quote(&self.ref_name),
                    crate::quote::go_quote(&tag)
                ));
            }
            self.ref_name = tag.clone();
        }
        if !branch.is_empty() {
            if !tag.is_empty() {
                return Err("branch conflicts with tag".into());
            }
            if !branch.starts_with("refs/heads/") {
                branch = format!("refs/heads/{branch}");
            }
            if !self.ref_name.is_empty() && self.ref_name != branch {
                return Err(format!(
                    "ref conflicts: {} vs {}",
                    crate::quote::go_quote(&self.ref_name),
                    crate::quote::go_quote(&branch)
                ));
            }
            self.ref_name = branch;
        }
        Ok(())
    }
}

/// The reference rewritten as `remote#ref[:subdir]`; `None` when it is not
/// a valid git reference.
pub fn fragment_format(s: &str, with_subdir: bool) -> Option<String> {
    let r = parse_git_ref(s).ok()?;
    let mut out = r.remote;
    let subdir = if with_subdir {
        crate::glob::clean(&format!("/{}", r.subdir))
            .trim_start_matches('/')
            .to_string()
    } else {
        String::new()
    };
    if !r.ref_name.is_empty() || !subdir.is_empty() {
        out.push('#');
        out.push_str(&r.ref_name);
        if !subdir.is_empty() {
            out.push(':');
            out.push_str(&subdir);
        }
    }
    Some(out)
}
