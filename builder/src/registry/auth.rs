//! Registry credentials and challenges: Docker's `config.json` (`auths`
//! with base64 `auth` or `identitytoken`, `credsStore`, `credHelpers` run as
//! `docker-credential-NAME`), written back by `rbuild login`/`logout` the
//! way docker does; and the `WWW-Authenticate` challenges a registry answers
//! with (Basic, and Bearer with its token endpoint).

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{Context, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Map, Value};

use super::hosts::DOCKER_HUB_AUTH_KEY;
use super::reference::DEFAULT_DOMAIN;

/// A user's credentials for one registry, and where they came from.
#[derive(Clone)]
pub struct Credentials {
    /// The user name (`<token>` with an identity token).
    pub username: String,
    /// The password, or the identity (refresh) token.
    pub secret: String,
    /// Set when `secret` is an OAuth refresh token (`identitytoken`).
    pub identity_token: bool,
    /// Which source gave them, for messages (never the secret).
    pub source: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// `Basic base64(user:secret)`.
    pub fn basic_header(&self) -> String {
        format!(
            "Basic {}",
            B64.encode(format!("{}:{}", self.username, self.secret))
        )
    }
}

/// Docker's config file: `$DOCKER_CONFIG/config.json`, else
/// `~/.docker/config.json`.
pub fn docker_config_path() -> PathBuf {
    match std::env::var_os("DOCKER_CONFIG") {
        Some(d) => PathBuf::from(d).join("config.json"),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
            .join(".docker/config.json"),
    }
}

/// The key a registry's credentials are kept under (`docker.io` is kept
/// as Docker Hub's old index URL).
pub fn config_key(domain: &str) -> &str {
    if domain == DEFAULT_DOMAIN {
        DOCKER_HUB_AUTH_KEY
    } else {
        domain
    }
}

fn read_config() -> anyhow::Result<(PathBuf, Map<String, Value>)> {
    let path = docker_config_path();
    let map = match std::fs::read(&path) {
        Ok(bytes) => match serde_json::from_slice(&bytes) {
            Ok(Value::Object(m)) => m,
            Ok(_) => bail!("{}: not a JSON object", path.display()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Map::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    Ok((path, map))
}

/// `host` of an `auths` key: `https://host/v1/` -> `host`.
fn key_host(key: &str) -> &str {
    let k = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    k.split('/').next().unwrap_or(k)
}

/// The credential helper for `domain`, if the config names one.
fn helper_for(config: &Map<String, Value>, domain: &str) -> Option<String> {
    let key = config_key(domain);
    config
        .get("credHelpers")
        .and_then(Value::as_object)
        .and_then(|h| h.get(domain).or_else(|| h.get(key)))
        .or_else(|| config.get("credsStore"))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// The credentials for `domain`, if any source has them.
pub fn lookup(domain: &str) -> anyhow::Result<Option<Credentials>> {
    let (path, config) = read_config()?;
    if let Some(helper) = helper_for(&config, domain) {
        return helper_get(&helper, config_key(domain));
    }
    let Some(auths) = config.get("auths").and_then(Value::as_object) else {
        return Ok(None);
    };
    let wanted = key_host(config_key(domain));
    let Some(entry) = auths
        .get(config_key(domain))
        .or_else(|| {
            auths
                .iter()
                .find(|(k, _)| key_host(k) == wanted)
                .map(|(_, v)| v)
        })
        .and_then(Value::as_object)
    else {
        return Ok(None);
    };
    let source = format!("{} (auths.{})", path.display(), config_key(domain));
    if let Some(token) = entry
        .get("identitytoken")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
    {
        return Ok(Some(Credentials {
            username: "<token>".into(),
            secret: token.to_string(),
            identity_token: true,
            source,
        }));
    }
    let Some(auth) = entry.get("auth").and_then(Value::as_str) else {
        return Ok(None);
    };
    let decoded = B64
        .decode(auth.trim())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .with_context(|| format!("{source}: `auth` is not base64 of user:password"))?;
    let Some((username, secret)) = decoded.split_once(':') else {
        bail!("{source}: `auth` is not base64 of user:password");
    };
    Ok(Some(Credentials {
        username: username.to_string(),
        secret: secret.to_string(),
        identity_token: false,
        source,
    }))
}

fn helper_program(helper: &str) -> String {
    format!("docker-credential-{helper}")
}

/// `docker-credential-NAME get`, the server URL on stdin.
fn helper_get(helper: &str, server: &str) -> anyhow::Result<Option<Credentials>> {
    let program = helper_program(helper);
    let out = run_helper(&program, "get", server)?;
    if !out.status.success() {
        let msg = String::from_utf8_lossy(&out.stdout);
        // Docker's helpers say so when they have nothing for the server.
        if msg.contains("credentials not found") {
            return Ok(None);
        }
        bail!(
            "credential helper {program} get {server}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let v: Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("credential helper {program}: output is not JSON"))?;
    let field = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let username = field("Username");
    Ok(Some(Credentials {
        identity_token: username == "<token>",
        username,
        secret: field("Secret"),
        source: format!("credential helper {program}"),
    }))
}

fn run_helper(program: &str, verb: &str, input: &str) -> anyhow::Result<std::process::Output> {
    let mut child = Command::new(program)
        .arg(verb)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running the credential helper {program}"))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(input.as_bytes())
        .with_context(|| format!("writing to the credential helper {program}"))?;
    child
        .wait_with_output()
        .with_context(|| format!("running the credential helper {program}"))
}

/// Keeps `creds` for `domain` where docker would: the helper the config
/// names, else `auths` in the config file. Returns where they went.
pub fn store(domain: &str, username: &str, secret: &str) -> anyhow::Result<String> {
    let (path, mut config) = read_config()?;
    let key = config_key(domain);
    if let Some(helper) = helper_for(&config, domain) {
        let program = helper_program(&helper);
        let input = serde_json::json!({"ServerURL": key, "Username": username, "Secret": secret});
        let out = run_helper(&program, "store", &input.to_string())?;
        if !out.status.success() {
            bail!(
                "credential helper {program} store {key}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        return Ok(format!("credential helper {program}"));
    }
    let auths = config
        .entry("auths")
        .or_insert_with(|| Value::Object(Map::new()));
    let Value::Object(auths) = auths else {
        bail!("{}: `auths` is not an object", path.display());
    };
    auths.insert(
        key.to_string(),
        serde_json::json!({"auth": B64.encode(format!("{username}:{secret}"))}),
    );
    write_config(&path, &config)?;
    Ok(path.display().to_string())
}

/// Forgets `domain`'s credentials; false when there were none.
pub fn erase(domain: &str) -> anyhow::Result<bool> {
    let (path, mut config) = read_config()?;
    let key = config_key(domain);
    let mut removed = false;
    if let Some(Value::Object(auths)) = config.get_mut("auths") {
        let wanted = key_host(key).to_string();
        let before = auths.len();
        auths.retain(|k, _| key_host(k) != wanted);
        removed = auths.len() != before;
    }
    if removed {
        write_config(&path, &config)?;
    }
    if let Some(helper) = helper_for(&config, domain) {
        let program = helper_program(&helper);
        let out = run_helper(&program, "erase", key)?;
        removed |= out.status.success();
    }
    Ok(removed)
}

/// Writes the config atomically, readable by its owner only (it holds
/// passwords).
fn write_config(path: &std::path::Path, config: &Map<String, Value>) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let dir = path.parent().expect("config path has a directory");
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(format!(".config.json.{}", std::process::id()));
    let mut bytes = serde_json::to_vec_pretty(config).expect("JSON value");
    bytes.push(b'\n');
    let result = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(&bytes).and_then(|()| f.sync_all()))
        .and_then(|()| std::fs::rename(&tmp, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("writing {}", path.display()))
}

/// What a registry asks for in `WWW-Authenticate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    /// Nothing: anonymous access.
    None,
    /// HTTP Basic.
    Basic,
    /// A token from `realm` for `service` and the scopes asked.
    Bearer {
        /// The token endpoint.
        realm: String,
        /// The `service` parameter, if given.
        service: Option<String>,
    },
}

/// Parses `WWW-Authenticate` (the first Basic or Bearer challenge).
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let params = parse_params(rest);
    let get = |k: &str| {
        params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.clone())
    };
    Some(Challenge::Bearer {
        realm: get("realm")?,
        service: get("service"),
    })
}

/// `k="v", k2=v2` (quoted strings with `\` escapes).
fn parse_params(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let name: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if name.is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.peek().copied() {
                if c == ',' {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        out.push((name.trim().to_string(), value.trim().to_string()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into())
            })
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="basic-realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(
            parse_challenge(r#"bearer realm=http://x/t, error="a\"b""#),
            Some(Challenge::Bearer {
                realm: "http://x/t".into(),
                service: None
            })
        );
        assert_eq!(parse_challenge("Negotiate"), None);
        assert_eq!(parse_challenge(r#"Bearer service="s""#), None);
    }

    #[test]
    fn auth_keys() {
        assert_eq!(config_key("docker.io"), DOCKER_HUB_AUTH_KEY);
        assert_eq!(key_host(DOCKER_HUB_AUTH_KEY), "index.docker.io");
        assert_eq!(key_host("http://127.0.0.1:5000"), "127.0.0.1:5000");
        assert_eq!(key_host("reg.example"), "reg.example");
    }
}
