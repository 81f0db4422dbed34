//! fuse-overlayfs mounts: the overlay backend's mounts where the kernel's
//! overlayfs can't be mounted (a user namespace on a kernel before 5.11).
//! The directories keep the kernel's form: fuse-overlayfs reads char 0/0
//! whiteouts and `user.overlay.opaque`, and marks the opaque directories
//! it makes with `user.fuseoverlayfs.opaque` (and a `.wh..wh..opq` file),
//! which the layer writer reads too.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The program, from Debian's `fuse-overlayfs` package.
const PROGRAM: &str = "fuse-overlayfs";

/// Mounts `lowers` (top first) under `upper` at `target`; fuse-overlayfs
/// serves it from a process of its own until it is unmounted.
pub(super) fn mount(
    target: &Path,
    lowers: &[PathBuf],
    upper: &Path,
    work: &Path,
) -> io::Result<()> {
    // Its options are split at `,` and its lower directories at `:`.
    let plain = |p: &Path| -> io::Result<String> {
        let s = p.to_str().unwrap_or_default();
        if s.is_empty() || s.contains([',', ':']) {
            return Err(io::Error::other(format!(
                "{}: a path fuse-overlayfs can't take (',' or ':' in it)",
                p.display()
            )));
        }
        Ok(s.to_string())
    };
    let lower: Vec<String> = lowers.iter().map(|l| plain(l)).collect::<io::Result<_>>()?;
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        plain(upper)?,
        plain(work)?
    );
    let out = Command::new(PROGRAM)
        .arg("-o")
        .arg(options)
        .arg(target)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "{PROGRAM} exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Whether a fuse-overlayfs mount works here (a test mount under `root`).
pub(super) fn works(root: &Path) -> bool {
    super::mount::probe(root, "fuse-probe", |merged, lower, upper, work| {
        mount(merged, &[lower], upper, work)
    })
}
