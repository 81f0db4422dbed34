//! Image references as Docker parses them (distribution/reference's
//! `ParseNormalizedNamed`): `[domain/]path[:tag][@digest]`, the default
//! domain `docker.io` and its `library/` namespace for one-part names, a
//! domain told apart by a `.` or `:` or being `localhost` (or upper case),
//! lower-case repository paths, tags of at most 128 word characters, dots
//! and dashes, and names of at most 255 characters.

use std::fmt;

/// Docker Hub as references name it.
pub const DEFAULT_DOMAIN: &str = "docker.io";

/// Why a reference is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    /// Upper case in the repository path.
    #[error("invalid reference format: repository name ({0}) must be lowercase")]
    NotLowercase(String),
    /// The grammar does not match (the part that does not).
    #[error("invalid reference format: {0}")]
    Format(String),
    /// Over 255 characters of name.
    #[error("repository name must not be more than 255 characters")]
    TooLong,
    /// A 64-hex-digit name (it would read as an image id).
    #[error("invalid repository name ({0}), cannot specify 64-byte hexadecimal strings")]
    Identifier(String),
}

/// A parsed, normalised reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// `docker.io`, `ghcr.io`, `localhost:5000`, ...
    pub domain: String,
    /// `library/busybox`, `org/app`, ...
    pub path: String,
    /// The tag, if written.
    pub tag: Option<String>,
    /// The digest, if written.
    pub digest: Option<String>,
}

impl Reference {
    /// Parses `s` as Docker does, filling in the default domain and
    /// `library/` (no default tag: see [`Reference::with_default_tag`]).
    pub fn parse(s: &str) -> Result<Reference, ReferenceError> {
        if s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(ReferenceError::Identifier(s.to_string()));
        }
        let (name_tag, digest) = match s.split_once('@') {
            Some((n, d)) => (n, Some(d)),
            None => (s, None),
        };
        let (domain, remainder) = split_domain(name_tag);
        // The tag is after the last ':' of the remainder (the domain's
        // port is gone with the domain).
        let (path, tag) = match remainder.rsplit_once(':') {
            Some((p, t)) => (p, Some(t)),
            None => (remainder.as_str(), None),
        };
        if path.to_lowercase() != path {
            return Err(ReferenceError::NotLowercase(path.to_string()));
        }
        check_domain(&domain).map_err(ReferenceError::Format)?;
        check_path(path).map_err(ReferenceError::Format)?;
        if domain.len() + 1 + path.len() > 255 {
            return Err(ReferenceError::TooLong);
        }
        if let Some(t) = tag {
            check_tag(t).map_err(ReferenceError::Format)?;
        }
        if let Some(d) = digest {
            check_digest(d).map_err(ReferenceError::Format)?;
        }
        Ok(Reference {
            domain,
            path: path.to_string(),
            tag: tag.map(str::to_string),
            digest: digest.map(str::to_string),
        })
    }

    /// With `latest` as the tag when neither a tag nor a digest is written.
    pub fn with_default_tag(mut self) -> Reference {
        if self.tag.is_none() && self.digest.is_none() {
            self.tag = Some("latest".into());
        }
        self
    }

    /// `domain/path`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.domain, self.path)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// Docker's `splitDockerDomain`: the first component is a domain when it
/// has a `.` or `:`, is `localhost`, or has upper case; else Docker Hub.
fn split_domain(name: &str) -> (String, String) {
    let (mut domain, mut remainder) = match name.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.to_lowercase() != first =>
        {
            (first.to_string(), rest.to_string())
        }
        _ => (DEFAULT_DOMAIN.to_string(), name.to_string()),
    };
    if domain == "index.docker.io" {
        domain = DEFAULT_DOMAIN.to_string();
    }
    if domain == DEFAULT_DOMAIN && !remainder.contains('/') {
        remainder = format!("library/{remainder}");
    }
    (domain, remainder)
}

/// `host[:port]`: dot-separated components of letters, digits and inner
/// dashes (or a bracketed IPv6 address), then an optional numeric port.
fn check_domain(domain: &str) -> Result<(), String> {
    let (host, port) = if let Some(rest) = domain.strip_prefix('[') {
        let (v6, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("bad IPv6 address in {domain:?}"))?;
        if v6.is_empty() || !v6.chars().all(|c| c.is_ascii_hexdigit() || c == ':') {
            return Err(format!("bad IPv6 address in {domain:?}"));
        }
        (None, after.strip_prefix(':'))
    } else {
        match domain.split_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(domain), None),
        }
    };
    if let Some(host) = host {
        let ok = !host.is_empty()
            && host.split('.').all(|c| {
                !c.is_empty()
                    && c.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '-')
                    && !c.starts_with('-')
                    && !c.ends_with('-')
            });
        if !ok {
            return Err(format!("bad domain {domain:?}"));
        }
    }
    if let Some(port) = port
        && (port.is_empty() || !port.chars().all(|c| c.is_ascii_digit()))
    {
        return Err(format!("bad port in {domain:?}"));
    }
    Ok(())
}

/// Path components of lower-case letters and digits, joined inside by
/// `.`, `_`, `__` or dashes, separated by `/`.
fn check_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("empty repository name".into());
    }
    for component in path.split('/') {
        let bytes = component.as_bytes();
        let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
        let ok = !bytes.is_empty()
            && alnum(bytes[0])
            && alnum(bytes[bytes.len() - 1])
            && bytes
                .iter()
                .all(|&b| alnum(b) || matches!(b, b'.' | b'_' | b'-'))
            && !component.contains("..")
            && !component.contains("___")
            && !component.contains("._")
            && !component.contains("_.")
            && !component.contains("-.")
            && !component.contains(".-")
            && !component.contains("-_")
            && !component.contains("_-");
        if !ok {
            return Err(format!("bad path component {component:?}"));
        }
    }
    Ok(())
}

/// `[\w][\w.-]{0,127}`.
fn check_tag(tag: &str) -> Result<(), String> {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut chars = tag.chars();
    let ok = tag.len() <= 128
        && chars.next().is_some_and(word)
        && chars.all(|c| word(c) || c == '.' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!("bad tag {tag:?}"))
    }
}

/// `algorithm:hex`, with sha256's and sha512's lengths checked.
fn check_digest(digest: &str) -> Result<(), String> {
    let Some((algorithm, hex)) = digest.split_once(':') else {
        return Err(format!("invalid digest {digest:?}: no algorithm"));
    };
    let len = match algorithm {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => return Err(format!("unsupported digest algorithm in {digest:?}")),
    };
    if hex.len() == len && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        Ok(())
    } else {
        Err(format!("invalid checksum digest format in {digest:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full(s: &str) -> String {
        Reference::parse(s).unwrap().with_default_tag().to_string()
    }

    #[test]
    fn normalises_as_docker() {
        assert_eq!(full("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(full("busybox:1.36"), "docker.io/library/busybox:1.36");
        assert_eq!(full("me/app"), "docker.io/me/app:latest");
        assert_eq!(full("index.docker.io/me/app:v1"), "docker.io/me/app:v1");
        assert_eq!(
            full("docker.io/busybox"),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(full("localhost/app"), "localhost/app:latest");
        assert_eq!(full("localhost:5000/a/b:t"), "localhost:5000/a/b:t");
        assert_eq!(
            full("ghcr.io/o/a_b.c-d__e:v1.2-x_y"),
            "ghcr.io/o/a_b.c-d__e:v1.2-x_y"
        );
        assert_eq!(full("[::1]:5000/app"), "[::1]:5000/app:latest");
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            full(&format!("app@{d}")),
            format!("docker.io/library/app@{d}")
        );
        assert_eq!(
            full(&format!("app:1@{d}")),
            format!("docker.io/library/app:1@{d}")
        );
        // Upper case in the first component makes it a domain.
        assert_eq!(full("Registry.Example/app"), "Registry.Example/app:latest");
    }

    #[test]
    fn refuses_what_docker_refuses() {
        assert_eq!(
            Reference::parse("MyApp:1"),
            Err(ReferenceError::NotLowercase("library/MyApp".into()))
        );
        for bad in [
            "",
            "app:",
            ":tag",
            "app::1",
            "-app",
            "app-",
            "a..b",
            "a/-b",
            "app:-1",
            "app:.1",
            "host:port/app",
            "app@sha256:abc",
            "app@md5:0123",
            "a/b//c",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad:?} parsed");
        }
        assert!(Reference::parse(&format!("app:{}", "t".repeat(129))).is_err());
        assert!(Reference::parse(&format!("app:{}", "t".repeat(128))).is_ok());
        assert_eq!(
            Reference::parse(&format!("a/{}", "b".repeat(250))),
            Err(ReferenceError::TooLong)
        );
        assert!(matches!(
            Reference::parse(&"f".repeat(64)),
            Err(ReferenceError::Identifier(_))
        ));
    }
}
