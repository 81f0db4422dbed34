//! Ctrl-C and SIGTERM during a build: the steps die and no mount stays.
//!
//! [`install`] blocks SIGINT, SIGTERM and SIGHUP in the main thread before
//! any other thread starts (so every thread inherits the mask) and waits
//! for them on a thread of its own. On a signal it unmounts and removes this
//! process's active snapshots and exits with 128+signal; the sandbox
//! helpers die with rbuild (PR_SET_PDEATHSIG), and with them every process
//! of their steps (PID namespaces).

use std::path::PathBuf;
use std::sync::OnceLock;

use nix::sys::signal::{SigSet, Signal};

static SNAPSHOT_ROOT: OnceLock<PathBuf> = OnceLock::new();

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
        if let Some(root) = SNAPSHOT_ROOT.get() {
            cache::snapshot::abandon_own(root);
        }
        crate::secrets::remove_own();
        eprintln!("error: interrupted by {sig}");
        std::process::exit(128 + sig as i32);
    });
}

/// Unblocks the signals again (in a child that execs something else).
pub fn unblock() {
    let mut set = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(s);
    }
    let _ = set.thread_unblock();
}
