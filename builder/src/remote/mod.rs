//! Sources that are not on this machine: `ADD <url>` ([`http`]) and
//! `ADD <git url>` ([`git`]), and build contexts that are URLs or archives
//! ([`context`]).

pub mod context;
pub mod git;
pub mod http;

use frontend::gitref::{GitRef, GitRefError, parse_git_ref};

/// What an ADD source or a build context names.
pub enum Kind {
    /// A git repository (what parses as a git reference is git).
    Git(GitRef),
    /// An http(s) URL that is no git reference: a download.
    Http,
    /// Anything else: a local path.
    Local,
}

/// Tells `s` apart as BuildKit does; a git URL with a bad query is an
/// error.
pub fn classify(s: &str) -> Result<Kind, GitRefError> {
    match parse_git_ref(s) {
        Ok(r) => Ok(Kind::Git(r)),
        Err(GitRefError::NotGit(_)) if http::is_http(s) => Ok(Kind::Http),
        Err(GitRefError::NotGit(_)) => Ok(Kind::Local),
        Err(e) => Err(e),
    }
}

/// The `host[:port]` of an http(s) URL (the port when written), without
/// user info: whose TLS settings and `GIT_AUTH_*.<host>` secrets apply.
pub fn authority(url: &str) -> Option<String> {
    let u = reqwest::Url::parse(url).ok()?;
    let host = u.host_str()?;
    Some(match u.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    })
}

/// The host name of a URL, without port (`HTTP_AUTH_*_<host>` secrets).
pub fn host(url: &str) -> Option<String> {
    let u = reqwest::Url::parse(url).ok()?;
    Some(
        u.host_str()?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
    )
}

/// A build secret's value as text (trimmed), if the build has it.
pub fn secret_text(secrets: &crate::secrets::Secrets, id: &str) -> Option<String> {
    secrets
        .get(id)
        .map(|v| String::from_utf8_lossy(v).trim().to_string())
}
