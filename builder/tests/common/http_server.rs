//! TEST FIXTURE: a small HTTP/1.1 server on 127.0.0.1 for `ADD <url>`:
//! files with an ETag and a Last-Modified (304 to a matching
//! `If-None-Match`), attachments, redirects, 404s. It records every request line with
//! its status, and its files can be changed while it runs.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

/// What a path answers.
#[derive(Clone)]
pub enum Route {
    /// A file: body, ETag, Last-Modified.
    File(Vec<u8>, String, String),
    /// A redirect to another path.
    Redirect(String),
    /// A file only for this `Authorization` (else 401).
    Protected(Vec<u8>, String),
    /// A file sent with `Content-Disposition: attachment; filename=NAME`.
    Attachment(Vec<u8>, String),
}

/// A running server.
pub struct HttpServer {
    /// `http://127.0.0.1:PORT`
    pub base: String,
    routes: Arc<Mutex<BTreeMap<String, Route>>>,
    log: Arc<Mutex<Vec<(String, u16)>>>,
}

impl HttpServer {
    /// Starts one with no routes (everything is 404).
    pub fn start() -> HttpServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let routes: Arc<Mutex<BTreeMap<String, Route>>> = Arc::default();
        let log: Arc<Mutex<Vec<(String, u16)>>> = Arc::default();
        let (r, l) = (routes.clone(), log.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let (r, l) = (r.clone(), l.clone());
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        let mut headers = BTreeMap::new();
                        loop {
                            let mut h = String::new();
                            if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                                break;
                            }
                            if let Some((k, v)) = h.split_once(':') {
                                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
                            }
                        }
                        let mut parts = line.split_whitespace();
                        let (method, path) =
                            (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                        // As a forward proxy: an absolute URI names the path.
                        let path = match path.strip_prefix("http://") {
                            Some(rest) => rest.find('/').map_or("/", |i| &rest[i..]),
                            None => path,
                        };
                        let route = r.lock().unwrap().get(path).cloned();
                        let (status, extra, body): (u16, String, Vec<u8>) = match route {
                            Some(Route::File(body, etag, modified)) => {
                                if headers.get("if-none-match") == Some(&etag) {
                                    (304, format!("ETag: {etag}\r\n"), Vec::new())
                                } else {
                                    (
                                        200,
                                        format!("ETag: {etag}\r\nLast-Modified: {modified}\r\n"),
                                        body,
                                    )
                                }
                            }
                            Some(Route::Redirect(to)) => {
                                (302, format!("Location: {to}\r\n"), Vec::new())
                            }
                            Some(Route::Protected(body, auth)) => {
                                if headers.get("authorization") == Some(&auth) {
                                    (200, String::new(), body)
                                } else {
                                    (401, String::new(), b"unauthorized".to_vec())
                                }
                            }
                            Some(Route::Attachment(body, name)) => (
                                200,
                                format!("Content-Disposition: attachment; filename=\"{name}\"\r\n"),
                                body,
                            ),
                            None => (404, String::new(), b"not found".to_vec()),
                        };
                        l.lock().unwrap().push((format!("{method} {path}"), status));
                        let reason = match status {
                            200 => "OK",
                            302 => "Found",
                            401 => "Unauthorized",
                            304 => "Not Modified",
                            _ => "Not Found",
                        };
                        let body = if method == "HEAD" { Vec::new() } else { body };
                        let head = format!(
                            "HTTP/1.1 {status} {reason}\r\n{extra}Content-Length: {}\r\n\r\n",
                            body.len()
                        );
                        if stream.write_all(head.as_bytes()).is_err()
                            || stream.write_all(&body).is_err()
                        {
                            return;
                        }
                    }
                });
            }
        });
        HttpServer { base, routes, log }
    }

    /// Serves `body` at `path` with this ETag and Last-Modified.
    pub fn file(&self, path: &str, body: &[u8], etag: &str, modified: &str) {
        self.routes.lock().unwrap().insert(
            path.to_string(),
            Route::File(body.to_vec(), format!("\"{etag}\""), modified.to_string()),
        );
    }

    /// Serves `body` at `path` only with `Authorization: authorization`.
    pub fn protected(&self, path: &str, body: &[u8], authorization: &str) {
        self.routes.lock().unwrap().insert(
            path.to_string(),
            Route::Protected(body.to_vec(), authorization.to_string()),
        );
    }

    /// Serves `body` at `path` as an attachment named `name`.
    pub fn attachment(&self, path: &str, body: &[u8], name: &str) {
        self.routes.lock().unwrap().insert(
            path.to_string(),
            Route::Attachment(body.to_vec(), name.to_string()),
        );
    }

    /// Redirects `path` to `to`.
    pub fn redirect(&self, path: &str, to: &str) {
        self.routes
            .lock()
            .unwrap()
            .insert(path.to_string(), Route::Redirect(to.to_string()));
    }

    /// Requests for `path` so far, with their statuses.
    pub fn requests(&self, path: &str) -> Vec<u16> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|(l, _)| l.ends_with(&format!(" {path}")))
            .map(|(_, s)| *s)
            .collect()
    }
}
