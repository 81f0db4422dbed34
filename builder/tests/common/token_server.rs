//! TEST FIXTURE: a minimal token endpoint for the registry's `auth: token`
//! mode, so the Bearer flow runs against a real registry. It answers
//! `GET /token?service=S&scope=repository:NAME:ACTIONS` with a JWT
//! (RS256, signed by `openssl dgst`, the signing certificate in `x5c`) that
//! grants every asked action to one user (Basic auth), nothing to anonymous
//! callers, and a 401 to a wrong password. It counts the tokens it hands
//! out.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};

/// The issuer and service names the registry is configured with.
pub const ISSUER: &str = "rbuild-test-issuer";
/// The service name.
pub const SERVICE: &str = "rbuild-test-registry";

/// A running token endpoint.
pub struct TokenServer {
    /// `http://127.0.0.1:PORT/token`
    pub realm: String,
    /// The certificate bundle the registry trusts tokens by.
    pub bundle: PathBuf,
    /// Tokens handed out so far.
    pub issued: Arc<AtomicUsize>,
}

impl TokenServer {
    /// Starts one for `user`/`password`, keys made in `dir`.
    pub fn start(dir: &Path, user: &str, password: &str) -> TokenServer {
        std::fs::create_dir_all(dir).unwrap();
        let o = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "token.key",
                "-out",
                "token.crt",
                "-days",
                "2",
                "-subj",
                "/CN=rbuild test token signer",
            ])
            .current_dir(dir)
            .output()
            .expect("openssl runs");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let pem = std::fs::read_to_string(dir.join("token.crt")).unwrap();
        let der_b64: String = pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect::<Vec<_>>()
            .join("");
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let realm = format!("http://{}/token", listener.local_addr().unwrap());
        let issued = Arc::new(AtomicUsize::new(0));
        let counter = issued.clone();
        let key = dir.join("token.key");
        let expected = format!("Basic {}", STANDARD.encode(format!("{user}:{password}")));
        let user = user.to_string();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                let target = line.split_whitespace().nth(1).unwrap_or("").to_string();
                let mut authorization = None;
                let mut length = 0usize;
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                        break;
                    }
                    let (name, value) = h.split_once(':').unwrap_or((&h, ""));
                    match name.to_ascii_lowercase().as_str() {
                        "authorization" => authorization = Some(value.trim().to_string()),
                        "content-length" => length = value.trim().parse().unwrap_or(0),
                        _ => {}
                    }
                }
                let mut body = vec![0; length];
                let _ = reader.read_exact(&mut body);
                let (status, reply) = match authorization.as_deref() {
                    Some(a) if a == expected => {
                        counter.fetch_add(1, Ordering::SeqCst);
                        ("200 OK", token_reply(&key, &der_b64, &user, &target, true))
                    }
                    Some(_) => ("401 Unauthorized", "{\"details\":\"bad password\"}".into()),
                    None => {
                        counter.fetch_add(1, Ordering::SeqCst);
                        ("200 OK", token_reply(&key, &der_b64, "", &target, false))
                    }
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}",
                    reply.len()
                );
            }
        });
        TokenServer {
            realm,
            bundle: dir.join("token.crt"),
            issued,
        }
    }

    /// Tokens handed out so far.
    pub fn issued(&self) -> usize {
        self.issued.load(Ordering::SeqCst)
    }
}

/// `{"token": JWT, "expires_in": 300}` granting the scopes of `target`'s
/// query (all of them when `grant`, none otherwise).
fn token_reply(key: &Path, x5c: &str, user: &str, target: &str, grant: bool) -> String {
    let query = target.split_once('?').map_or("", |(_, q)| q);
    let mut access = Vec::new();
    for pair in query.split('&') {
        let Some(scope) = pair.strip_prefix("scope=") else {
            continue;
        };
        let scope = percent_decode(scope);
        let parts: Vec<&str> = scope.splitn(3, ':').collect();
        if parts.len() == 3 && grant {
            access.push(serde_json::json!({
                "type": parts[0],
                "name": parts[1],
                "actions": parts[2].split(',').collect::<Vec<_>>(),
            }));
        }
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "x5c": [x5c]});
    let claims = serde_json::json!({
        "iss": ISSUER,
        "sub": user,
        "aud": SERVICE,
        "exp": now + 300,
        "nbf": now - 10,
        "iat": now,
        "jti": format!("{now}-{}", access.len()),
        "access": access,
    });
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(key)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(signing_input.as_bytes())
        .unwrap();
    let signature = child.wait_with_output().unwrap().stdout;
    let jwt = format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature));
    serde_json::json!({"token": jwt, "expires_in": 300}).to_string()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 3 <= bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("00");
                out.push(u8::from_str_radix(hex, 16).unwrap_or(b'?'));
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
    String::from_utf8_lossy(&out).into_owned()
}
