//! What a step sees at `/sys/fs/cgroup`. BuildKit's spec mounts cgroups
//! there read-only and, where cgroup v2 is unified, gives the step a
//! cgroup namespace of its own: the step sees its own cgroup as the root
//! and `0::/` in /proc/self/cgroup. So does the embedded runtime: with
//! cgroup v2 alone, each step joins a cgroup of its own ([`StepCgroup`],
//! below rbuild's, as runc makes one for each container), roots a cgroup
//! namespace there and finds cgroup2 mounted read-only.
//!
//! With cgroup v1 (or v1 beside v2, "hybrid"), runc binds the container's
//! own cgroup directory of each hierarchy, which it creates for the
//! container; the embedded runtime makes no cgroup of its own for a step,
//! and rbuild's is often a hierarchy's root, whose tree names every cgroup
//! of the host: the directory stays empty there, as sysfs has it.

use std::ffi::{CStr, CString};
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// Whether steps get a cgroup namespace and cgroup2 at /sys/fs/cgroup:
/// where cgroup v2 is unified, or where `RBUILD_CGROUP_VIEW=unified` asks
/// for it on a hybrid host (its v2 hierarchy); `RBUILD_CGROUP_VIEW=none`
/// turns it off.
pub(crate) fn unified() -> bool {
    static UNIFIED: OnceLock<bool> = OnceLock::new();
    *UNIFIED.get_or_init(|| match std::env::var("RBUILD_CGROUP_VIEW").as_deref() {
        Ok("none") => false,
        Ok("unified") => unified_mount().is_some(),
        _ => host_unified(),
    })
}

/// Whether the host runs cgroup v2 alone (BuildKit's
/// `cgroupV2NamespaceSupported`).
pub(crate) fn host_unified() -> bool {
    Path::new("/sys/fs/cgroup/cgroup.subtree_control").exists()
}

/// Where the unified hierarchy is mounted: /sys/fs/cgroup or, beside v1,
/// its `unified` (looked for once).
fn unified_mount() -> Option<&'static Path> {
    static MOUNT: OnceLock<Option<&'static Path>> = OnceLock::new();
    *MOUNT.get_or_init(|| {
        ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
            .into_iter()
            .map(Path::new)
            .find(|m| m.join("cgroup.controllers").exists())
    })
}

/// This process's directory in the unified hierarchy (`0::/path` in
/// /proc/self/cgroup).
fn own_dir() -> Option<&'static Path> {
    static OWN: OnceLock<Option<PathBuf>> = OnceLock::new();
    OWN.get_or_init(|| {
        let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        let path = cgroups.lines().find_map(|l| l.strip_prefix("0::"))?;
        Some(unified_mount()?.join(path.trim_start_matches('/')))
    })
    .as_deref()
}

/// A cgroup of one step's own below rbuild's, as runc makes one for each
/// container: the step joins it and roots its cgroup namespace there, so
/// it sees its own processes' cgroup and nothing of the host's. Removed
/// when dropped (the step's processes are gone by then).
#[derive(Debug)]
pub(crate) struct StepCgroup {
    dir: PathBuf,
    procs: CString,
}

impl StepCgroup {
    /// A new one, where steps get the unified view and the directory can
    /// be made (not in an ordinary user's rbuild, nor where the cgroup
    /// file system is read-only, as in most containers): below rbuild's
    /// own cgroup, or below `parent` (`--cgroup-parent`, as BuildKit's
    /// `PARENT/buildkit/ID`). Without a parent, a cgroup that can't be made
    /// leaves the step without one; the parent asked for must be usable.
    pub(crate) fn new(parent: Option<&str>) -> Result<Option<StepCgroup>, String> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        if !unified() || crate::rootless::inside() {
            return match parent {
                None => Ok(None),
                Some(p) => Err(format!(
                    "--cgroup-parent {p}: no cgroup v2 to place the step in"
                )),
            };
        }
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("rbuild-{}-{n}", std::process::id());
        let dir = match (parent, own_dir()) {
            (None, Some(own)) => own.join(name),
            (None, None) => return Ok(None),
            (Some(p), _) => {
                let Some(mount) = unified_mount() else {
                    return Err(format!("--cgroup-parent {p}: no cgroup v2 mount"));
                };
                let base = mount.join(p).join("buildkit");
                std::fs::create_dir_all(&base)
                    .map_err(|e| format!("--cgroup-parent {p}: making {}: {e}", base.display()))?;
                base.join(name)
            }
        };
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(_) if parent.is_none() => return Ok(None),
            Err(e) => return Err(format!("making the step's cgroup {}: {e}", dir.display())),
        }
        let procs = CString::new(dir.join("cgroup.procs").into_os_string().into_vec())
            .map_err(|e| e.to_string())?;
        Ok(Some(StepCgroup { dir, procs }))
    }

    /// Its `cgroup.procs`, which a process joins by writing `0` to.
    pub(crate) fn procs(&self) -> &CStr {
        &self.procs
    }
}

impl Drop for StepCgroup {
    fn drop(&mut self) {
        // The kernel may take a moment to let the last exiting process go.
        for _ in 0..100 {
            match std::fs::remove_dir(&self.dir) {
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                _ => return,
            }
        }
    }
}
