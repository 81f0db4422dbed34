//! Helpers shared by the cache integration tests.

use std::fs;
use std::path::PathBuf;

/// Whether the tests run as root (overlay mounts, device nodes, owners).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A fresh temporary directory, removed on drop.
pub struct Tmp(pub PathBuf);

impl Tmp {
    /// `rbuild-<group>-<name>-<pid>` under the system temp dir.
    pub fn new(group: &str, name: &str) -> Tmp {
        let p = std::env::temp_dir().join(format!("rbuild-{group}-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        Tmp(p)
    }
}

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[allow(dead_code)] // used by the layer tests only
pub mod tree;
