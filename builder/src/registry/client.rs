//! The distribution protocol's transport: one HTTP client per host (its
//! CA roots and client certificate from certs.d), HTTPS or, for loopback
//! and insecure hosts, plain HTTP after HTTPS fails; the `/v2/` ping that
//! tells which challenge the host uses; tokens fetched per scope and reused
//! until they expire; retries with backoff on 429, 5xx and dropped
//! connections.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use reqwest::header::{AUTHORIZATION, HeaderValue, WWW_AUTHENTICATE};
use reqwest::{RequestBuilder, Response, StatusCode};
use tokio::sync::OnceCell;

use super::auth::{self, Challenge, Credentials};
use super::hosts::{Endpoint, Settings};

/// Attempts at one request before its error is final.
const ATTEMPTS: u32 = 5;
/// The first wait between attempts (doubled each time).
const BACKOFF: Duration = Duration::from_millis(200);

/// What a request may do in a repository: the token scope's actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    /// `pull`
    Pull,
    /// `pull,push`
    Push,
}

/// A repository on a host, and the access a request needs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Scope {
    /// `library/debian`
    pub repository: String,
    /// pull or push
    pub access: Access,
}

impl Scope {
    fn token_scope(&self) -> String {
        let actions = match self.access {
            Access::Pull => "pull",
            Access::Push => "pull,push",
        };
        format!("repository:{}:{actions}", self.repository)
    }
}

/// A host as pinged: its base URL and challenge.
struct Host {
    http: reqwest::Client,
    base: String,
    challenge: Challenge,
}

/// A token and when to stop using it; behind an async lock, so requests
/// made at once for the same scopes wait for one token request.
type TokenSlot = Arc<tokio::sync::Mutex<Option<(String, Instant)>>>;
/// Tokens by (host, scopes).
type Tokens = HashMap<(String, Vec<String>), TokenSlot>;

/// The transport, shared by every pull and push of a process.
pub struct Client {
    settings: Settings,
    hosts: Mutex<HashMap<String, Arc<OnceCell<Arc<Host>>>>>,
    tokens: Mutex<Tokens>,
    credentials: Mutex<HashMap<String, Option<Credentials>>>,
}

impl Client {
    /// A client with these settings.
    pub fn new(settings: Settings) -> Client {
        Client {
            settings,
            hosts: Mutex::default(),
            tokens: Mutex::default(),
            credentials: Mutex::default(),
        }
    }

    /// The settings it was made with.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The credentials for `domain` (looked up once).
    fn credentials(&self, domain: &str) -> anyhow::Result<Option<Credentials>> {
        if let Some(c) = self.credentials.lock().expect("lock").get(domain) {
            return Ok(c.clone());
        }
        let c = auth::lookup(domain)?;
        self.credentials
            .lock()
            .expect("lock")
            .insert(domain.to_string(), c.clone());
        Ok(c)
    }

    /// Uses `creds` for `domain` instead of the stored ones (`rbuild login`).
    pub fn set_credentials(&self, domain: &str, creds: Credentials) {
        self.credentials
            .lock()
            .expect("lock")
            .insert(domain.to_string(), Some(creds));
    }

    /// The host behind `ep`, pinged once.
    async fn host(&self, ep: &Endpoint) -> anyhow::Result<Arc<Host>> {
        let cell = self
            .hosts
            .lock()
            .expect("lock")
            .entry(ep.authority.clone())
            .or_default()
            .clone();
        cell.get_or_try_init(|| self.ping(ep))
            .await
            .cloned()
            .with_context(|| format!("registry {}", ep.authority))
    }

    /// An HTTP client for `authority`: system roots, certs.d, the settings'
    /// CA files; no verification for hosts marked insecure.
    fn http_client(&self, authority: &str) -> anyhow::Result<reqwest::Client> {
        self.settings
            .client_builder(authority)?
            .build()
            .context("making the HTTP client")
    }

    /// `GET /v2/`: which scheme answers, and the challenge.
    async fn ping(&self, ep: &Endpoint) -> anyhow::Result<Arc<Host>> {
        let http = self.http_client(&ep.authority)?;
        let https = format!("https://{}", ep.authority);
        // Where plain HTTP may follow, HTTPS gets one try: a plain-HTTP
        // registry fails it at once, and retries would only wait.
        let first = if self.settings.allows_http(&ep.authority) {
            http.get(format!("{https}/v2/")).send().await
        } else {
            retry(|| http.get(format!("{https}/v2/")).send()).await
        };
        let (base, resp) = match first {
            Ok(r) => (https, r),
            Err(e) if self.settings.allows_http(&ep.authority) => {
                let plain = format!("http://{}", ep.authority);
                match retry(|| http.get(format!("{plain}/v2/")).send()).await {
                    // A TLS server answers plain HTTP with 400: the
                    // HTTPS error is the one to tell.
                    Ok(r) if is_registry_answer(&r) => (plain, r),
                    _ => return Err(e).context("GET /v2/ over HTTPS"),
                }
            }
            Err(e) => return Err(e).context("GET /v2/"),
        };
        let challenge = match resp.status() {
            s if s.is_success() => Challenge::None,
            StatusCode::UNAUTHORIZED => resp
                .headers()
                .get(WWW_AUTHENTICATE)
                .and_then(|h| h.to_str().ok())
                .and_then(auth::parse_challenge)
                .with_context(|| {
                    format!("{base}/v2/ answered 401 without a Basic or Bearer challenge")
                })?,
            s => bail!("{base}/v2/ answered HTTP {s}; is this a registry?"),
        };
        Ok(Arc::new(Host {
            http,
            base,
            challenge,
        }))
    }

    /// The `Authorization` header for `scopes` on `ep`, if one is needed.
    async fn authorization(
        &self,
        ep: &Endpoint,
        host: &Host,
        scopes: &[Scope],
    ) -> anyhow::Result<Option<String>> {
        match &host.challenge {
            Challenge::None => Ok(None),
            Challenge::Basic => match self.credentials(&ep.domain)? {
                Some(c) => Ok(Some(c.basic_header())),
                None => bail!(
                    "registry {} asks for a user name and password and none is stored for {} (run `rbuild login {}`)",
                    ep.authority,
                    ep.domain,
                    ep.domain
                ),
            },
            Challenge::Bearer { realm, service } => {
                let scope_strings: Vec<String> = scopes.iter().map(Scope::token_scope).collect();
                let key = (ep.authority.clone(), scope_strings.clone());
                let slot = self
                    .tokens
                    .lock()
                    .expect("lock")
                    .entry(key)
                    .or_default()
                    .clone();
                let mut slot = slot.lock().await;
                if let Some((token, until)) = slot.as_ref()
                    && Instant::now() < *until
                {
                    return Ok(Some(format!("Bearer {token}")));
                }
                let (token, lifetime) = self
                    .fetch_token(ep, host, realm, service.as_deref(), &scope_strings)
                    .await?;
                // A little early, so a token does not run out mid-request.
                let until = Instant::now() + lifetime.saturating_sub(Duration::from_secs(10));
                *slot = Some((token.clone(), until));
                Ok(Some(format!("Bearer {token}")))
            }
        }
    }

    /// The token flow: GET the realm with the scopes (Basic credentials
    /// when stored), or POST a refresh token for an identity token.
    async fn fetch_token(
        &self,
        ep: &Endpoint,
        host: &Host,
        realm: &str,
        service: Option<&str>,
        scopes: &[String],
    ) -> anyhow::Result<(String, Duration)> {
        let creds = self.credentials(&ep.domain)?;
        let mut query: Vec<(&str, &str)> = Vec::new();
        if let Some(s) = service {
            query.push(("service", s));
        }
        for s in scopes {
            query.push(("scope", s));
        }
        let resp = retry(|| {
            let req = match &creds {
                Some(c) if c.identity_token => {
                    let mut form = query.clone();
                    form.extend([
                        ("grant_type", "refresh_token"),
                        ("refresh_token", c.secret.as_str()),
                        ("client_id", "rbuild"),
                    ]);
                    host.http.post(realm).form(&form)
                }
                Some(c) => host
                    .http
                    .get(realm)
                    .query(&query)
                    .header(AUTHORIZATION, c.basic_header()),
                None => host.http.get(realm).query(&query),
            };
            req.send()
        })
        .await
        .with_context(|| format!("token endpoint {realm}"))?;
        let status = resp.status();
        if !status.is_success() {
            let tried = creds.as_ref().map_or_else(
                || "no credentials (anonymous)".to_string(),
                |c| format!("credentials from {}", c.source),
            );
            bail!(
                "registry {}: token endpoint {realm} refused {}: HTTP {status}; tried {tried}",
                ep.authority,
                scopes.join(" "),
            );
        }
        let body = body_within(resp, SMALL_ANSWER)
            .await
            .with_context(|| format!("token endpoint {realm}: reading the answer"))?
            .ok_or_else(|| {
                anyhow::anyhow!("token endpoint {realm}: an answer larger than 1 MiB")
            })?;
        let body: serde_json::Value = serde_json::from_slice(&body)
            .with_context(|| format!("token endpoint {realm}: the answer is not JSON"))?;
        let token = body
            .get("token")
            .or_else(|| body.get("access_token"))
            .and_then(|t| t.as_str())
            .filter(|t| !t.is_empty())
            .with_context(|| format!("token endpoint {realm}: no token in the answer"))?;
        // The spec's default lifetime is 60 seconds.
        let secs = body
            .get("expires_in")
            .and_then(|e| e.as_u64())
            .unwrap_or(60)
            .max(60);
        Ok((token.to_string(), Duration::from_secs(secs)))
    }

    /// Sends the request `make` builds (from the host's client and base
    /// URL), authorised for `scopes`, retried on 429, 5xx and dropped
    /// connections; a 401 with a token fetches a new one once. Other
    /// statuses are the caller's to read.
    pub async fn send(
        &self,
        ep: &Endpoint,
        scopes: &[Scope],
        make: impl Fn(&reqwest::Client, &str) -> RequestBuilder,
    ) -> anyhow::Result<Response> {
        self.send_with(ep, scopes, ATTEMPTS, make).await
    }

    /// [`Client::send`] without retries (a request that can't be repeated
    /// as it is, such as one part of an upload session).
    pub async fn send_once(
        &self,
        ep: &Endpoint,
        scopes: &[Scope],
        make: impl Fn(&reqwest::Client, &str) -> RequestBuilder,
    ) -> anyhow::Result<Response> {
        self.send_with(ep, scopes, 1, make).await
    }

    async fn send_with(
        &self,
        ep: &Endpoint,
        scopes: &[Scope],
        attempts: u32,
        make: impl Fn(&reqwest::Client, &str) -> RequestBuilder,
    ) -> anyhow::Result<Response> {
        let host = self.host(ep).await?;
        let mut refreshed = false;
        loop {
            let authz = self.authorization(ep, &host, scopes).await?;
            // A token from a hostile token endpoint may not be a header.
            let authz = authz
                .map(|a| HeaderValue::from_str(&a))
                .transpose()
                .with_context(|| {
                    format!("registry {}: the token is not a valid header", ep.authority)
                })?;
            let resp = retry_n(attempts, || {
                let http = host.http.clone();
                let request = make(&host.http, &host.base).build();
                let authz = authz.clone();
                let base = host.base.clone();
                async move {
                    let mut request = request?;
                    // Credentials go to the registry's own origin only (an
                    // upload location may point elsewhere).
                    if let Some(a) = authz
                        && same_origin(request.url(), &base)
                    {
                        request.headers_mut().insert(AUTHORIZATION, a);
                    }
                    http.execute(request).await
                }
            })
            .await
            .with_context(|| format!("registry {}", ep.authority))?;
            if resp.status() != StatusCode::UNAUTHORIZED {
                return Ok(resp);
            }
            if matches!(host.challenge, Challenge::Bearer { .. }) && !refreshed {
                // The token may have run out or lack a scope: one new one.
                refreshed = true;
                let strings: Vec<String> = scopes.iter().map(Scope::token_scope).collect();
                let slot = self
                    .tokens
                    .lock()
                    .expect("lock")
                    .get(&(ep.authority.clone(), strings))
                    .cloned();
                if let Some(slot) = slot {
                    *slot.lock().await = None;
                }
                continue;
            }
            let tried = match self.credentials(&ep.domain)? {
                Some(c) => format!("credentials from {}", c.source),
                None => "no credentials (anonymous)".into(),
            };
            bail!(
                "registry {} refused {}: HTTP 401 Unauthorized; tried {tried}",
                ep.authority,
                scopes
                    .iter()
                    .map(Scope::token_scope)
                    .collect::<Vec<_>>()
                    .join(" ")
            );
        }
    }

    /// Whether the credentials set for `ep`'s domain are accepted: Basic
    /// on `/v2/`, or a token from the Bearer realm (no scope, as `docker
    /// login` asks).
    pub async fn check_login(&self, ep: &Endpoint) -> anyhow::Result<()> {
        let host = self.host(ep).await?;
        match &host.challenge {
            Challenge::None => Ok(()),
            Challenge::Basic => {
                let authz = self.authorization(ep, &host, &[]).await?;
                let resp = retry(|| {
                    let mut req = host.http.get(format!("{}/v2/", host.base));
                    if let Some(a) = &authz {
                        req = req.header(AUTHORIZATION, a.as_str());
                    }
                    req.send()
                })
                .await
                .with_context(|| format!("registry {}", ep.authority))?;
                if !resp.status().is_success() {
                    bail!(
                        "registry {} refused the user name and password: {}",
                        ep.authority,
                        status_error(resp).await
                    );
                }
                Ok(())
            }
            Challenge::Bearer { realm, service } => self
                .fetch_token(ep, &host, realm, service.as_deref(), &[])
                .await
                .map(|_| ()),
        }
    }

    /// `base` for `ep` (after its ping): for Location headers.
    pub async fn base_url(&self, ep: &Endpoint) -> anyhow::Result<String> {
        Ok(self.host(ep).await?.base.clone())
    }
}

/// Whether `url` is on the origin `base` (`scheme://host[:port]`).
fn same_origin(url: &reqwest::Url, base: &str) -> bool {
    reqwest::Url::parse(base).is_ok_and(|b| {
        b.scheme() == url.scheme()
            && b.host_str() == url.host_str()
            && b.port_or_known_default() == url.port_or_known_default()
    })
}

/// Whether a plain-HTTP answer came from a registry (not a TLS server's
/// "client sent an HTTP request to an HTTPS server").
fn is_registry_answer(r: &Response) -> bool {
    r.headers().contains_key("docker-distribution-api-version")
        || matches!(r.status(), StatusCode::OK | StatusCode::UNAUTHORIZED)
}

/// Whether an answer is worth another try.
fn retryable_status(s: StatusCode) -> bool {
    s == StatusCode::TOO_MANY_REQUESTS
        || matches!(
            s,
            StatusCode::INTERNAL_SERVER_ERROR
                | StatusCode::BAD_GATEWAY
                | StatusCode::SERVICE_UNAVAILABLE
                | StatusCode::GATEWAY_TIMEOUT
        )
}

/// Whether a transport error is worth another try (resets, timeouts,
/// refused connections of a registry restarting, a body cut short).
pub fn retryable_error(e: &reqwest::Error) -> bool {
    (e.is_connect() || e.is_timeout() || e.is_request() || e.is_body() || e.is_decode())
        && !is_permanent(e)
}

/// A name that does not resolve, a certificate that is not trusted:
/// asking again in a second will not help.
fn is_permanent(e: &reqwest::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        let text = err.to_string();
        if text.contains("dns error")
            || text.contains("Name or service not known")
            || text.contains("invalid peer certificate")
        {
            return true;
        }
        source = err.source();
    }
    false
}

/// Runs `attempt` until it answers with a status that is not worth
/// retrying, at most [`ATTEMPTS`] times with doubling waits.
pub async fn retry<F, Fut>(attempt: F) -> Result<Response, reqwest::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Response, reqwest::Error>>,
{
    retry_n(ATTEMPTS, attempt).await
}

async fn retry_n<F, Fut>(attempts: u32, mut attempt: F) -> Result<Response, reqwest::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Response, reqwest::Error>>,
{
    let mut wait = BACKOFF;
    for n in 1.. {
        let last = n >= attempts;
        match attempt().await {
            Ok(r) if retryable_status(r.status()) && !last => {
                // Retry-After in seconds, bounded by our own backoff cap.
                let after = r
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok())
                    .map(|s| Duration::from_secs(s.min(10)));
                tokio::time::sleep(after.unwrap_or(wait)).await;
            }
            Err(e) if retryable_error(&e) && !last => tokio::time::sleep(wait).await,
            other => return other,
        }
        wait *= 2;
    }
    unreachable!("the last attempt returns")
}

/// What a body of at most `limit` bytes holds; `Ok(None)` when it is
/// longer (said by its Content-Length or found reading it), so a registry
/// can't make rbuild hold an answer of any size in memory.
pub async fn body_within(mut resp: Response, limit: usize) -> reqwest::Result<Option<Vec<u8>>> {
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Ok(None);
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        if body.len() + chunk.len() > limit {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

/// The most of an error answer or a token answer read (they are small).
const SMALL_ANSWER: usize = 1 << 20;

/// A registry's error answer as text: `HTTP 404 Not Found: MANIFEST_UNKNOWN
/// manifest unknown`, from the distribution spec's `errors` list.
pub async fn status_error(resp: Response) -> String {
    let status = resp.status();
    let body = body_within(resp, SMALL_ANSWER)
        .await
        .ok()
        .flatten()
        .unwrap_or_default();
    let details: Vec<String> = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("errors").and_then(|e| e.as_array()).cloned())
        .unwrap_or_default()
        .iter()
        .map(|e| {
            let field = |k| e.get(k).and_then(|v| v.as_str()).unwrap_or("");
            format!("{} {}", field("code"), field("message"))
                .trim()
                .to_string()
        })
        .filter(|s| !s.is_empty())
        .collect();
    if details.is_empty() {
        format!("HTTP {status}")
    } else {
        format!("HTTP {status}: {}", details.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_stay_on_their_origin() {
        let url = |u: &str| reqwest::Url::parse(u).unwrap();
        assert!(same_origin(
            &url("http://127.0.0.1:5000/v2/x"),
            "http://127.0.0.1:5000"
        ));
        assert!(same_origin(
            &url("https://r.example/v2/"),
            "https://r.example"
        ));
        assert!(same_origin(
            &url("https://r.example:443/v2/"),
            "https://r.example"
        ));
        assert!(!same_origin(
            &url("https://storage.example/upload"),
            "https://r.example"
        ));
        assert!(!same_origin(
            &url("http://r.example/v2/"),
            "https://r.example"
        ));
        assert!(!same_origin(
            &url("http://127.0.0.1:5001/v2/"),
            "http://127.0.0.1:5000"
        ));
    }
}
