//! SSH agent forwarding (`--ssh`, `RUN --mount=type=ssh`): the host's agent
//! sockets by id, and a proxy socket per mount that a step connects to.
//! The proxy has the owner and mode the mount asks for (the host socket
//! keeps its own) and exists only while the step runs; each connection is
//! relayed byte for byte to the host agent, which never leaves the host.

use std::collections::BTreeMap;
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, bail};

/// Agent sockets by id.
pub type Agents = BTreeMap<String, PathBuf>;

/// Reads `--ssh` specs as buildx does: `default` (the agent in
/// `SSH_AUTH_SOCK`) or `ID=PATH`. Only agent sockets are taken: buildx also
/// loads key files into an agent of its own, which rbuild does not do.
pub fn read_specs(specs: &[String]) -> anyhow::Result<Agents> {
    let mut out = Agents::new();
    for spec in specs {
        let (id, path) = match spec.split_once('=') {
            Some((id, path)) => (id.to_string(), PathBuf::from(path)),
            None => {
                let sock = std::env::var_os("SSH_AUTH_SOCK").with_context(|| {
                    format!("--ssh {spec}: SSH_AUTH_SOCK is not set (give ID=SOCKET)")
                })?;
                (spec.clone(), PathBuf::from(sock))
            }
        };
        if path.as_os_str().to_string_lossy().contains(',') {
            bail!("--ssh {spec}: more than one path per id is not supported");
        }
        let meta = std::fs::metadata(&path)
            .with_context(|| format!("--ssh {spec}: reading {}", path.display()))?;
        if !meta.file_type().is_socket() {
            bail!(
                "--ssh {spec}: {} is not an agent socket (key files are not supported; add the key to ssh-agent and pass its socket)",
                path.display()
            );
        }
        out.insert(id, path);
    }
    Ok(out)
}

/// A proxy socket for one step; stops and removes itself when dropped.
pub struct AgentProxy {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl AgentProxy {
    /// Listens in `dir` on a new socket owned by `uid:gid` with `mode`, and
    /// relays every connection to `agent`.
    pub fn start(dir: &Path, agent: &Path, uid: u32, gid: u32, mode: u32) -> io::Result<Self> {
        static N: AtomicU64 = AtomicU64::new(0);
        let path = dir.join(format!("agent{}", N.fetch_add(1, Ordering::Relaxed)));
        let listener = UnixListener::bind(&path)?;
        std::os::unix::fs::chown(&path, Some(uid), Some(gid))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode & 0o777))?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let (agent, flag) = (agent.to_path_buf(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let _ = client.set_nonblocking(false);
                        if let Ok(upstream) = UnixStream::connect(&agent) {
                            relay(client, upstream);
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(_) => break,
                }
            }
        });
        Ok(AgentProxy {
            path,
            stop,
            thread: Some(thread),
        })
    }

    /// The socket to mount into the step.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Copies both ways on two threads; each ends when its side closes.
fn relay(client: UnixStream, upstream: UnixStream) {
    let (Ok(mut c2), Ok(mut u2)) = (client.try_clone(), upstream.try_clone()) else {
        return;
    };
    let (mut c, mut u) = (client, upstream);
    std::thread::spawn(move || {
        let _ = io::copy(&mut c, &mut u);
        let _ = u.shutdown(std::net::Shutdown::Write);
    });
    std::thread::spawn(move || {
        let _ = io::copy(&mut u2, &mut c2);
        let _ = c2.shutdown(std::net::Shutdown::Write);
    });
}

impl Drop for AgentProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}
