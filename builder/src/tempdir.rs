//! Temporary directories of a build (sandbox files, copies, exports):
//! removed when dropped and when rbuild is interrupted.

use std::fs;
use std::io;
use std::path::PathBuf;

/// A directory under the system's temporary directory, removed on drop
/// and when rbuild is interrupted.
pub(crate) struct TempDir {
    pub path: PathBuf,
    _hook: crate::interrupt::HookGuard,
}

impl TempDir {
    pub(crate) fn new(what: &str) -> io::Result<TempDir> {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p =
            std::env::temp_dir().join(format!("rbuild-sandbox-{what}-{}-{n}", std::process::id()));
        fs::create_dir_all(&p)?;
        let path = p.clone();
        let hook = crate::interrupt::on_interrupt(move || {
            let _ = cache::tree::remove_tree(path);
        });
        Ok(TempDir {
            path: p,
            _hook: hook,
        })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = cache::tree::remove_tree(&self.path);
    }
}
