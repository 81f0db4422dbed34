//! Per-registry settings: mirrors, insecure hosts, CA and client
//! certificates, as Docker reads `/etc/docker/certs.d/HOST[:PORT]/` and in
//! the spirit of buildkitd.toml's `[registry."docker.io"]`.
//!
//! Settings come from `ROOT/config.toml`, then `~/.config/rbuild/config.toml`
//! (the user's file wins for a host both name):
//!
//! ```toml
//! certs_d = "/etc/docker/certs.d"          # where per-host certificates live
//! [registry."docker.io"]
//! mirrors = ["mirror.example:5000"]        # tried in order before the host
//! [registry."reg.internal:5000"]
//! insecure = true                          # unverified TLS, then plain HTTP
//! ca = ["/etc/ssl/internal-ca.pem"]        # extra roots for this host
//! ```

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;

use super::reference::DEFAULT_DOMAIN;

/// Docker Hub's API host (references say `docker.io`).
pub const DOCKER_HUB_API: &str = "registry-1.docker.io";
/// The key Docker Hub's credentials are kept under in Docker's config.
pub const DOCKER_HUB_AUTH_KEY: &str = "https://index.docker.io/v1/";

/// One host's settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    /// Hosts tried first, in order, for pulls.
    #[serde(default)]
    pub mirrors: Vec<String>,
    /// TLS without verification, then plain HTTP.
    #[serde(default)]
    pub insecure: bool,
    /// Extra CA certificates (PEM files).
    #[serde(default)]
    pub ca: Vec<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    certs_d: Option<PathBuf>,
    #[serde(default)]
    registry: BTreeMap<String, HostConfig>,
}

/// Every host's settings.
#[derive(Debug, Clone)]
pub struct Settings {
    hosts: BTreeMap<String, HostConfig>,
    certs_d: PathBuf,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            hosts: BTreeMap::new(),
            certs_d: PathBuf::from("/etc/docker/certs.d"),
        }
    }
}

impl Settings {
    /// Reads `ROOT/config.toml` and the user's `~/.config/rbuild/config.toml`.
    pub fn load(root: &Path) -> anyhow::Result<Settings> {
        let mut settings = Settings::default();
        let user = std::env::var_os("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
            .map(|d| d.join("rbuild/config.toml"));
        for path in std::iter::once(root.join("config.toml")).chain(user) {
            let text = match std::fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
            };
            let file: File =
                toml::from_str(&text).with_context(|| format!("reading {}", path.display()))?;
            if let Some(d) = file.certs_d {
                settings.certs_d = d;
            }
            settings.hosts.extend(file.registry);
        }
        Ok(settings)
    }

    /// The settings of `domain` (a reference's domain, e.g. `docker.io`).
    pub fn host(&self, domain: &str) -> HostConfig {
        self.hosts.get(domain).cloned().unwrap_or_default()
    }

    /// Hosts to pull `domain`'s images from, mirrors first.
    pub fn pull_endpoints(&self, domain: &str) -> Vec<Endpoint> {
        let mut out: Vec<Endpoint> = self
            .host(domain)
            .mirrors
            .iter()
            .map(|m| Endpoint::mirror(m))
            .collect();
        out.push(Endpoint::origin(domain));
        out
    }

    /// The directory of `authority`'s certificates (`ca.crt`, `*.cert`/`*.key`).
    pub fn certs_dir(&self, authority: &str) -> PathBuf {
        self.certs_d.join(authority)
    }

    /// Whether `authority` may be reached over plain HTTP (after HTTPS
    /// fails): loopback hosts, as Docker and BuildKit allow, and hosts
    /// marked insecure.
    pub fn allows_http(&self, authority: &str) -> bool {
        self.insecure(authority) || is_loopback(authority)
    }

    /// Whether `authority` is marked insecure (under its own name or as a
    /// mirror that is).
    pub fn insecure(&self, authority: &str) -> bool {
        self.hosts.get(authority).is_some_and(|h| h.insecure)
    }

    /// An HTTP client builder for `authority` (`host[:port]`): system
    /// roots (not for a loopback authority), certs.d's `*.crt`, the settings' CA files, a client
    /// certificate (`*.cert` with its `.key`), no verification for hosts
    /// marked insecure. Registries and `ADD <url>` downloads share it.
    pub fn client_builder(&self, authority: &str) -> anyhow::Result<reqwest::ClientBuilder> {
        let mut b = reqwest::Client::builder()
            .user_agent(concat!("rbuild/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(std::time::Duration::from_secs(30))
            .read_timeout(std::time::Duration::from_secs(120))
            .redirect(reqwest::redirect::Policy::limited(10));
        let dir = self.certs_dir(authority);
        let mut cas = self.ca_files(authority);
        let mut certs = Vec::new();
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                let p = e.path();
                match p.extension().and_then(|x| x.to_str()) {
                    Some("crt") => cas.push(p),
                    Some("cert") => certs.push(p),
                    _ => {}
                }
            }
        }
        for ca in &cas {
            let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem)
                .with_context(|| format!("{}: not a PEM certificate", ca.display()))?
            {
                b = b.add_root_certificate(cert);
            }
        }
        // Docker's pairing: `client.cert` goes with `client.key`.
        certs.sort();
        if let Some(cert) = certs.first() {
            let key = cert.with_extension("key");
            let mut pem =
                std::fs::read(cert).with_context(|| format!("reading {}", cert.display()))?;
            pem.extend(
                std::fs::read(&key).with_context(|| {
                    format!("reading {} (for {})", key.display(), cert.display())
                })?,
            );
            b = b.identity(
                reqwest::Identity::from_pem(&pem)
                    .with_context(|| format!("client certificate {}", cert.display()))?,
            );
        }
        if self.insecure(authority) {
            b = b.danger_accept_invalid_certs(true);
        }
        // No public CA certifies a loopback name: the system's roots (read
        // and parsed for every client, 10-40 ms) can't verify one; its CA
        // comes from certs.d or the settings.
        if is_loopback(authority) {
            b = b.tls_built_in_root_certs(false);
        }
        Ok(b)
    }

    /// Extra roots for `authority`, from the settings file.
    pub fn ca_files(&self, authority: &str) -> Vec<PathBuf> {
        self.hosts
            .get(authority)
            .map(|h| h.ca.clone())
            .unwrap_or_default()
    }
}

/// Where requests go: the host serving a reference's domain.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// The reference's domain (`docker.io`): whose credentials apply.
    pub domain: String,
    /// `host[:port]` requests go to (`registry-1.docker.io`, a mirror).
    pub authority: String,
}

impl Endpoint {
    /// The domain's own host.
    pub fn origin(domain: &str) -> Endpoint {
        let authority = if domain == DEFAULT_DOMAIN {
            DOCKER_HUB_API.to_string()
        } else {
            domain.to_string()
        };
        Endpoint {
            domain: domain.to_string(),
            authority,
        }
    }

    /// A mirror of `domain`: its own credentials, as a host of its own.
    fn mirror(mirror: &str) -> Endpoint {
        let authority = mirror
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        Endpoint {
            domain: authority.clone(),
            authority,
        }
    }

    /// Whether this is a mirror rather than the domain's own host.
    pub fn is_mirror_of(&self, domain: &str) -> bool {
        self.domain != domain
    }
}

/// `localhost`, 127.0.0.0/8 and ::1, with or without a port.
pub fn is_loopback(authority: &str) -> bool {
    let host = match authority.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    host == "localhost"
        || host
            .parse::<IpAddr>()
            .is_ok_and(|ip: IpAddr| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for h in [
            "localhost",
            "localhost:5000",
            "127.0.0.1:5000",
            "127.1.2.3",
            "[::1]:5000",
        ] {
            assert!(is_loopback(h), "{h}");
        }
        for h in [
            "docker.io",
            "10.0.0.1:5000",
            "localhost.example:5000",
            "[::2]:1",
        ] {
            assert!(!is_loopback(h), "{h}");
        }
    }

    #[test]
    fn docker_hub_goes_to_its_api_host() {
        assert_eq!(Endpoint::origin("docker.io").authority, DOCKER_HUB_API);
        assert_eq!(Endpoint::origin("ghcr.io").authority, "ghcr.io");
    }

    #[test]
    fn settings_file_mirrors_and_insecure() {
        let dir = crate::tempdir::TempDir::new("settings-test").unwrap();
        std::fs::write(
            dir.path.join("config.toml"),
            "certs_d = \"/x/certs.d\"\n[registry.\"docker.io\"]\nmirrors = [\"127.0.0.1:5000\"]\n[registry.\"reg:1\"]\ninsecure = true\n",
        )
        .unwrap();
        let s = Settings::load(&dir.path).unwrap();
        let eps = s.pull_endpoints("docker.io");
        assert_eq!(eps.len(), 2);
        assert_eq!(eps[0].authority, "127.0.0.1:5000");
        assert!(eps[0].is_mirror_of("docker.io"));
        assert_eq!(eps[1].authority, DOCKER_HUB_API);
        assert!(s.allows_http("reg:1") && !s.allows_http("reg:2"));
        assert_eq!(s.certs_dir("reg:1"), Path::new("/x/certs.d/reg:1"));
        std::fs::write(dir.path.join("config.toml"), "[registry.x]\nmirors = []\n").unwrap();
        let err = format!("{:#}", Settings::load(&dir.path).unwrap_err());
        assert!(
            err.contains("config.toml") && err.contains("mirors"),
            "{err}"
        );
    }
}
