//! A real registry for the tests: Debian's `docker-registry` (distribution
//! 2.8) on 127.0.0.1 and a free port, storage in a temp directory, with
//! htpasswd Basic auth or TLS when asked. Stopped on drop.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How the registry is set up.
#[derive(Default)]
pub struct Options {
    /// Basic auth for this user and password (htpasswd, bcrypt).
    pub htpasswd: Option<(String, String)>,
    /// TLS with this certificate and key (PEM files).
    pub tls: Option<(PathBuf, PathBuf)>,
    /// With TLS: clients must show a certificate this CA signed.
    pub client_ca: Option<PathBuf>,
    /// Token auth: (realm, service, issuer, root certificate bundle).
    pub token: Option<(String, String, String, PathBuf)>,
}

/// A running registry.
pub struct Registry {
    /// Its state: config, storage, log.
    pub dir: PathBuf,
    /// `127.0.0.1:PORT`
    pub addr: String,
    child: Child,
    config: PathBuf,
}

/// A port nothing listens on now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Registry {
    /// Starts one serving HTTPS with a certificate of a new test CA (under
    /// `dir/pki`), its state under `dir/reg`.
    pub fn start_tls(dir: &Path) -> (Pki, Registry) {
        let pki = Pki::new(&dir.join("pki"));
        let reg = Registry::start(
            &dir.join("reg"),
            Options {
                tls: Some(pki.issue("server")),
                ..Options::default()
            },
        );
        (pki, reg)
    }

    /// Starts one with its state under `dir`.
    pub fn start(dir: &Path, options: Options) -> Registry {
        std::fs::create_dir_all(dir).unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let mut config = format!(
            "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n  secret: test-secret\n",
            dir.join("data").display()
        );
        if let Some((cert, key)) = &options.tls {
            config.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.display(),
                key.display()
            ));
            if let Some(ca) = &options.client_ca {
                config.push_str(&format!("    clientcas:\n      - {}\n", ca.display()));
            }
        }
        if let Some((user, pass)) = &options.htpasswd {
            let out = Command::new("htpasswd")
                .args(["-Bbn", user, pass])
                .output()
                .expect("htpasswd runs (apache2-utils, .ci/run installs it)");
            assert!(out.status.success());
            std::fs::write(dir.join("htpasswd"), out.stdout).unwrap();
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: test-realm\n    path: {}\n",
                dir.join("htpasswd").display()
            ));
        }
        if let Some((realm, service, issuer, bundle)) = &options.token {
            config.push_str(&format!(
                "auth:\n  token:\n    realm: {realm}\n    service: {service}\n    issuer: {issuer}\n    rootcertbundle: {}\n",
                bundle.display()
            ));
        }
        let config_path = dir.join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let child = spawn(dir, &config_path);
        let r = Registry {
            dir: dir.to_path_buf(),
            addr,
            child,
            config: config_path,
        };
        r.wait_up();
        r
    }

    fn wait_up(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(&self.addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "the registry did not come up: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("registry.log")).unwrap_or_default()
    }

    /// How many requests its access log has whose line contains `needle`
    /// (e.g. `GET /v2/app/blobs/sha256:...`).
    pub fn requests(&self, needle: &str) -> usize {
        self.log()
            .lines()
            .filter(|l| l.contains("HTTP/1.1\"") && l.contains(needle))
            .count()
    }

    /// Stops it (kill -9, as a crash would).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again on the same port and storage.
    pub fn restart(&mut self) {
        self.stop();
        self.child = spawn(&self.dir, &self.config);
        self.wait_up();
    }

    /// The file holding blob `digest` in its storage.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.dir
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

fn spawn(dir: &Path, config: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("registry.log"))
        .unwrap();
    Command::new("docker-registry")
        .arg("serve")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("docker-registry runs (.ci/run installs it)")
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A test CA and certificates it signs, made with `openssl`.
pub struct Pki {
    /// The directory holding them.
    pub dir: PathBuf,
}

impl Pki {
    /// A CA (`ca.crt`, `ca.key`) in `dir`.
    pub fn new(dir: &Path) -> Pki {
        std::fs::create_dir_all(dir).unwrap();
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-days",
                "2",
                "-subj",
                "/CN=rbuild test CA",
            ],
        );
        Pki {
            dir: dir.to_path_buf(),
        }
    }

    /// `NAME.crt`/`NAME.key` signed by the CA, for 127.0.0.1 and localhost
    /// (a server) or as a client.
    pub fn issue(&self, name: &str) -> (PathBuf, PathBuf) {
        let (crt, key, csr) = (
            format!("{name}.crt"),
            format!("{name}.key"),
            format!("{name}.csr"),
        );
        openssl(
            &self.dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                &format!("/CN={name}"),
            ],
        );
        let ext = self.dir.join(format!("{name}.ext"));
        std::fs::write(
            &ext,
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n",
        )
        .unwrap();
        openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &crt,
                "-days",
                "2",
                "-extfile",
                ext.to_str().unwrap(),
            ],
        );
        (self.dir.join(crt), self.dir.join(key))
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let o = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs (.ci/run installs it)");
    assert!(
        o.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The digest of the biggest layer an image manifest (JSON) lists.
pub fn biggest_layer(manifest: &serde_json::Value) -> String {
    manifest["layers"]
        .as_array()
        .expect("a manifest lists layers")
        .iter()
        .max_by_key(|l| l["size"].as_u64().unwrap_or(0))
        .expect("a layer")["digest"]
        .as_str()
        .expect("a digest")
        .to_string()
}
