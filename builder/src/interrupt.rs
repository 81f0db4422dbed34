//! Ctrl-C and SIGTERM during a build: the steps die and no mount stays.
//!
//! [`install`] blocks SIGINT, SIGTERM and SIGHUP in the main thread before
//! any other thread starts (so every thread inherits the mask) and waits
//! for them on a thread of its own. On a signal it unmounts and removes this
//! process's active snapshots and exits with 128+signal; each step's PID 1
//! dies with rbuild (PR_SET_PDEATHSIG), and with it every process of the
//! step (PID namespaces). What else must not outlive rbuild (a
//! runc container, a temporary directory) registers a hook with
//! [`on_interrupt`]; the handler runs the hooks first.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use nix::sys::signal::{SigSet, Signal};

static SNAPSHOT_ROOT: OnceLock<PathBuf> = OnceLock::new();

/// Set when a signal arrived; the handler exits the process.
static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

type Hook = Box<dyn FnOnce() + Send>;

/// Hooks by registration number.
static HOOKS: Mutex<BTreeMap<u64, Hook>> = Mutex::new(BTreeMap::new());

/// Keeps a hook registered; dropping it unregisters the hook unrun.
#[must_use = "the hook is unregistered when this is dropped"]
pub struct HookGuard(u64);

impl Drop for HookGuard {
    fn drop(&mut self) {
        if let Ok(mut hooks) = HOOKS.lock() {
            hooks.remove(&self.0);
        }
    }
}

/// Runs `hook` if rbuild is interrupted while the guard lives.
pub fn on_interrupt(hook: impl FnOnce() + Send + 'static) -> HookGuard {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if let Ok(mut hooks) = HOOKS.lock() {
        hooks.insert(n, Box::new(hook));
    }
    HookGuard(n)
}

/// Tells the handler where this build's snapshots are.
pub fn set_snapshot_root(root: PathBuf) {
    let _ = SNAPSHOT_ROOT.set(root);
}

/// Installs the handler. Call first in `main`, before other threads exist.
pub fn install() {
    let mut set = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(s);
    }
    if set.thread_block().is_err() {
        return;
    }
    std::thread::spawn(move || {
        let Ok(sig) = set.wait() else { return };
        INTERRUPTED.store(true, std::sync::atomic::Ordering::SeqCst);
        let hooks = HOOKS
            .lock()
            .map(|mut h| std::mem::take(&mut *h))
            .unwrap_or_default();
        for hook in hooks.into_values() {
            hook();
        }
        if let Some(root) = SNAPSHOT_ROOT.get() {
            cache::snapshot::abandon_own(root);
        }
        crate::secrets::remove_own();
        eprintln!("error: interrupted by {sig}");
        std::process::exit(128 + sig as i32);
    });
}

/// Blocks for good once a signal has arrived: the handler is cleaning up
/// and will exit the process.
pub fn wait_if_interrupted() {
    if INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst) {
        loop {
            std::thread::park();
        }
    }
}
