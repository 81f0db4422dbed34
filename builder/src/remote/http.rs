//! `ADD https://...`: a URL's content downloaded into the content store as
//! BuildKit's HTTP source does it: named after the URL path's last part
//! (`__unnamed__` when it has none), mtime from `Last-Modified` (else the
//! Unix epoch), checked against `--checksum` before anything is kept; a
//! rebuild revalidates with `If-None-Match`/`If-Modified-Since` (a 304
//! downloads nothing), and with `--checksum` whose content is stored it
//! asks nothing at all. What each URL gave is kept in `ROOT/http-cache/`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use cache::Digest;
use cache::gc::Store;
use futures_util::StreamExt as _;
use reqwest::StatusCode;
use reqwest::header::{ETAG, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED};
use serde::{Deserialize, Serialize};
use std::io::Write as _;

/// A URL's content in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fetched {
    /// The URL.
    pub url: String,
    /// sha256 of the content.
    pub digest: String,
    /// Bytes.
    pub size: u64,
    /// The file name it gets.
    pub name: String,
    /// Its mtime, seconds since the epoch.
    pub mtime: i64,
    /// The validators a rebuild sends back.
    #[serde(default)]
    etag: Option<String>,
    #[serde(default)]
    last_modified: Option<String>,
}

/// Whether an ADD source is a remote URL (BuildKit's `isHTTPSource`).
pub fn is_http(source: &str) -> bool {
    source.starts_with("http://") || source.starts_with("https://")
}

/// The file name BuildKit gives a URL's content: the path's last part.
pub fn file_name(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let path = rest.find('/').map_or("", |i| &rest[i..]);
    let path = path.split(['?', '#']).next().unwrap_or("");
    // BuildKit's SafeFileName: never a name that leaves the directory.
    match path.trim_end_matches('/').rsplit('/').next() {
        Some(base) if !base.is_empty() && base != "." && base != ".." => base.to_string(),
        _ => "__unnamed__".into(),
    }
}

fn meta_path(root: &Path, url: &str) -> PathBuf {
    use sha2::{Digest as _, Sha256};
    let hex: String = Sha256::digest(url.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    root.join("http-cache").join(format!("{hex}.json"))
}

fn read_meta(root: &Path, url: &str) -> Option<Fetched> {
    serde_json::from_slice(&std::fs::read(meta_path(root, url)).ok()?).ok()
}

fn write_meta(root: &Path, f: &Fetched) -> anyhow::Result<()> {
    let path = meta_path(root, &f.url);
    let dir = path.parent().expect("under http-cache");
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // Steps of one build may write the same URL's record at once: each
    // write its own temporary file.
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp-{}-{n}", std::process::id()));
    std::fs::write(&tmp, serde_json::to_vec(f)?)
        .and_then(|()| std::fs::rename(&tmp, &path))
        .with_context(|| format!("writing {}", path.display()))
}

/// The content of `url` in `store` (TLS as for registries: `settings`,
/// proxies from the build args): from the store when `checksum` names
/// stored content this URL gave before, revalidated when it was fetched
/// before, else downloaded. A `checksum` mismatch is an error naming both
/// digests, and nothing is kept.
pub fn fetch(
    store: &Store,
    url: &str,
    checksum: Option<&str>,
    authorization: Option<&str>,
    (proxies, settings): (&[(String, String)], &crate::registry::hosts::Settings),
) -> anyhow::Result<Fetched> {
    let checksum: Option<Digest> = checksum
        .map(|c| {
            c.parse()
                .map_err(|e| anyhow::anyhow!("--checksum {c}: invalid checksum digest format: {e}"))
        })
        .transpose()?;
    let known = read_meta(&store.root, url).filter(|m| {
        m.digest
            .parse::<Digest>()
            .is_ok_and(|d| store.blobs.contains(&d))
    });
    if let (Some(want), Some(m)) = (&checksum, &known)
        && m.digest == want.to_string()
    {
        return Ok(m.clone());
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the HTTP client")?;
    let fetched = runtime.block_on(download(
        store,
        url,
        checksum.as_ref(),
        (known.as_ref(), authorization),
        (proxies, settings),
    ))?;
    write_meta(&store.root, &fetched)?;
    Ok(fetched)
}

/// The proxy build args (`HTTP_PROXY`, `HTTPS_PROXY`, `NO_PROXY`, either
/// case) as the download client's proxies, as BuildKit uses them for ADD.
fn with_proxies(
    mut b: reqwest::ClientBuilder,
    proxies: &[(String, String)],
) -> anyhow::Result<reqwest::ClientBuilder> {
    let get = |name: &str| {
        proxies
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    };
    let no_proxy = get("NO_PROXY").and_then(reqwest::NoProxy::from_string);
    for name in ["HTTP_PROXY", "HTTPS_PROXY"] {
        let Some(url) = get(name) else { continue };
        let proxy = if name == "HTTP_PROXY" {
            reqwest::Proxy::http(url)
        } else {
            reqwest::Proxy::https(url)
        }
        .with_context(|| format!("the build arg {name}={url}"))?;
        b = b.proxy(proxy.no_proxy(no_proxy.clone()));
    }
    Ok(b)
}

async fn download(
    store: &Store,
    url: &str,
    checksum: Option<&Digest>,
    (known, authorization): (Option<&Fetched>, Option<&str>),
    (proxies, settings): (&[(String, String)], &crate::registry::hosts::Settings),
) -> anyhow::Result<Fetched> {
    let authority = super::authority(url).unwrap_or_default();
    let builder = settings.client_builder(&authority)?;
    let client = with_proxies(builder, proxies)?
        .build()
        .context("making the HTTP client")?;
    let mut req = client.get(url);
    if let Some(a) = authorization {
        req = req.header(reqwest::header::AUTHORIZATION, a);
    }
    if let Some(k) = known {
        if let Some(etag) = &k.etag {
            req = req.header(IF_NONE_MATCH, etag);
        }
        if let Some(lm) = &k.last_modified {
            req = req.header(IF_MODIFIED_SINCE, lm);
        }
    }
    let resp = crate::registry::client::retry(|| {
        req.try_clone().expect("a body-less request clones").send()
    })
    .await
    .with_context(|| format!("downloading {url}"))?;
    let status = resp.status();
    if status == StatusCode::NOT_MODIFIED
        && let Some(k) = known
    {
        return Ok(k.clone());
    }
    if !status.is_success() {
        bail!("downloading {url}: HTTP {status}");
    }
    let header = |name| {
        resp.headers()
            .get(name)
            .and_then(|v: &reqwest::header::HeaderValue| v.to_str().ok())
            .map(str::to_string)
    };
    let etag = header(ETAG);
    let last_modified = header(LAST_MODIFIED);
    let mtime = last_modified
        .as_deref()
        .and_then(parse_http_date)
        .unwrap_or(0);
    let mut writer = store.blobs.writer()?;
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.with_context(|| format!("downloading {url}"))?;
        writer.write_all(&chunk).context("storing the download")?;
    }
    let size = writer.size();
    let (digest, size) = match checksum {
        Some(want) => writer.commit(Some((want, size))).map_err(|e| {
            anyhow::anyhow!("{url}: the content does not match --checksum={want}: {e}")
        })?,
        None => writer.commit(None)?,
    };
    Ok(Fetched {
        url: url.to_string(),
        digest: digest.to_string(),
        size,
        name: file_name(url),
        mtime,
        etag,
        last_modified,
    })
}

/// The `Authorization` a download of `url` sends, from the build secrets
/// BuildKit reads for it: `HTTP_AUTH_HEADER_<host>` (the header's whole
/// value) or `HTTP_AUTH_TOKEN_<host>` (a bearer token).
pub fn auth_header(url: &str, secrets: &crate::secrets::Secrets) -> Option<String> {
    let host = super::host(url)?;
    super::secret_text(secrets, &format!("HTTP_AUTH_HEADER_{host}")).or_else(|| {
        super::secret_text(secrets, &format!("HTTP_AUTH_TOKEN_{host}"))
            .map(|t| format!("Bearer {t}"))
    })
}

/// An HTTP date (`Wed, 21 Oct 2015 07:28:00 GMT`, RFC 7231's preferred
/// form) as seconds since the epoch.
pub fn parse_http_date(s: &str) -> Option<i64> {
    let parts: Vec<&str> = s.split_whitespace().collect();
    let [_, day, month, year, time, "GMT"] = parts.as_slice() else {
        return None;
    };
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| m == month)? as i64
        + 1;
    let (day, year): (i64, i64) = (day.parse().ok()?, year.parse().ok()?);
    let hms: Vec<i64> = time
        .split(':')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let [h, m, sec] = hms.as_slice() else {
        return None;
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + m * 60 + sec)
}

/// Writes each fetched file into `dir` under its name, mode 0600, with its
/// mtime: the source tree an ADD copies from.
pub fn stage(store: &Store, files: &[Fetched], dir: &Path) -> anyhow::Result<Vec<String>> {
    use std::os::unix::fs::PermissionsExt as _;
    let mut names = Vec::new();
    for f in files {
        let path = dir.join(&f.name);
        let mut src = store.blobs.open_verified(&f.digest.parse()?)?;
        let mut out =
            std::fs::File::create(&path).with_context(|| format!("writing {}", path.display()))?;
        std::io::copy(&mut src, &mut out).with_context(|| format!("writing {}", path.display()))?;
        out.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        let t = std::time::UNIX_EPOCH + Duration::from_secs(f.mtime.max(0) as u64);
        out.set_times(std::fs::FileTimes::new().set_accessed(t).set_modified(t))?;
        names.push(f.name.clone());
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_urls_record_written_by_many_steps_at_once() {
        let root = std::env::temp_dir().join(format!("rbuild-http-meta-{}", std::process::id()));
        let f = Fetched {
            url: "http://127.0.0.1:1/download".into(),
            digest: format!("sha256:{}", "a".repeat(64)),
            size: 1,
            name: "download".into(),
            mtime: 0,
            etag: Some("\"e\"".into()),
            last_modified: None,
        };
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| s.spawn(|| (0..50).try_for_each(|_| write_meta(&root, &f))))
                .collect();
            for h in handles {
                h.join().unwrap().unwrap();
            }
        });
        assert_eq!(
            read_meta(&root, &f.url).unwrap().etag.as_deref(),
            Some("\"e\"")
        );
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn names_and_dates() {
        assert_eq!(
            file_name("https://x.org/a/b/tool.tar.gz?x=1"),
            "tool.tar.gz"
        );
        assert_eq!(file_name("https://x.org/"), "__unnamed__");
        assert_eq!(file_name("http://x.org"), "__unnamed__");
        assert_eq!(file_name("http://x.org/dir/"), "dir");
        assert_eq!(file_name("http://x.org/a/.."), "__unnamed__");
        assert_eq!(file_name("http://x.org/.."), "__unnamed__");
        assert_eq!(
            parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(1_445_412_480)
        );
        assert_eq!(parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(parse_http_date("yesterday"), None);
    }
}
