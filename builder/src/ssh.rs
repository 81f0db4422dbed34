//! SSH agent forwarding (`--ssh`, `RUN --mount=type=ssh`): the host's agent
//! sockets by id (key files are loaded into a private agent of the build,
//! as buildx loads them into its own), and a proxy socket per mount that a
//! step connects to.
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
/// `SSH_AUTH_SOCK`) or `ID=PATH[,PATH...]`, each PATH an agent socket or a
/// private key file. Key files of an id are loaded into a private
/// `ssh-agent` of this build ([`PrivateAgent`]; keep the returned handles
/// alive while the build runs): the keys never enter the sandbox, only the
/// agent protocol does.
pub fn read_specs(specs: &[String]) -> anyhow::Result<(Agents, Vec<PrivateAgent>)> {
    let mut out = Agents::new();
    let mut private = Vec::new();
    for spec in specs {
        let (id, paths) = match spec.split_once('=') {
            Some((id, paths)) => (
                id.to_string(),
                paths.split(',').map(PathBuf::from).collect::<Vec<_>>(),
            ),
            None => {
                let sock = std::env::var_os("SSH_AUTH_SOCK").with_context(|| {
                    format!("--ssh {spec}: SSH_AUTH_SOCK is not set (give ID=SOCKET or ID=KEYFILE)")
                })?;
                (spec.clone(), vec![PathBuf::from(sock)])
            }
        };
        let mut sockets = Vec::new();
        let mut keys = Vec::new();
        for path in paths {
            let meta = std::fs::metadata(&path)
                .with_context(|| format!("--ssh {spec}: reading {}", path.display()))?;
            if meta.file_type().is_socket() {
                sockets.push(path);
            } else if meta.is_file() {
                keys.push(path);
            } else {
                bail!(
                    "--ssh {spec}: {} is neither an agent socket nor a key file",
                    path.display()
                );
            }
        }
        let socket = match (sockets.len(), keys.is_empty()) {
            (1, true) => sockets.remove(0),
            (0, false) => {
                let agent = PrivateAgent::start(&keys)
                    .with_context(|| format!("--ssh {spec}: loading the key files"))?;
                let socket = agent.socket.clone();
                private.push(agent);
                socket
            }
            _ => bail!("--ssh {spec}: give one agent socket or key files, not both"),
        };
        out.insert(id, socket);
    }
    Ok((out, private))
}

/// An `ssh-agent` of this build holding key files given with `--ssh`; it is
/// killed (and its socket removed) when dropped, when rbuild is
/// interrupted, and when rbuild dies (PR_SET_PDEATHSIG).
pub struct PrivateAgent {
    socket: PathBuf,
    child: std::process::Child,
    _dir: crate::tempdir::TempDir,
}

impl PrivateAgent {
    fn start(keys: &[PathBuf]) -> anyhow::Result<PrivateAgent> {
        use std::os::unix::process::CommandExt;
        let dir = crate::tempdir::TempDir::new("ssh").context("making the agent's directory")?;
        std::fs::set_permissions(&dir.path, std::fs::Permissions::from_mode(0o700))?;
        let socket = dir.path.join("agent.sock");
        let mut agent = std::process::Command::new("ssh-agent");
        agent
            .arg("-D")
            .arg("-a")
            .arg(&socket)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        // SAFETY: prctl with constant arguments, async-signal-safe.
        unsafe {
            agent.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = agent.spawn().context(
            "starting ssh-agent (key files need openssh-client's ssh-agent and ssh-add)",
        )?;
        let mut me = PrivateAgent {
            socket,
            child,
            _dir: dir,
        };
        for _ in 0..250 {
            if me.socket.exists() {
                break;
            }
            if let Ok(Some(status)) = me.child.try_wait() {
                bail!("ssh-agent exited ({status})");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if !me.socket.exists() {
            bail!("ssh-agent did not make its socket");
        }
        // No terminal, no askpass: a passphrase-protected key fails here.
        let added = std::process::Command::new("ssh-add")
            .arg("-q")
            .args(keys)
            .env("SSH_AUTH_SOCK", &me.socket)
            .env("SSH_ASKPASS_REQUIRE", "never")
            .env_remove("DISPLAY")
            .stdin(std::process::Stdio::null())
            .output()
            .context("running ssh-add")?;
        if !added.status.success() {
            let why = String::from_utf8_lossy(&added.stderr);
            me.stop();
            bail!(
                "ssh-add could not load {} ({}); passphrase-protected keys need an agent of your own: pass its socket",
                keys.iter()
                    .map(|k| k.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                why.trim()
            );
        }
        Ok(me)
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PrivateAgent {
    fn drop(&mut self) {
        self.stop();
    }
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
