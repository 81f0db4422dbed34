//! Snapshots on disk: what a tree holds alone (its size for the cache's
//! accounting) and where the filesystem places new snapshot directories.

use std::fs;
use std::path::Path;

/// Bytes under `dir` that it holds alone: file sizes plus 512 per entry
/// (as a tar counts headers), never 0 for a directory with entries. A file
/// with several links counts once, and not at all when some of its links
/// are outside `dir` (a file a COPY rerun linked from an earlier result:
/// that result's size has it already).
pub(super) fn tree_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;

    /// Linked files: inode -> (size, links, links seen under `dir`).
    type Linked = std::collections::HashMap<(u64, u64), (u64, u64, u64)>;
    fn walk(dir: &Path, linked: &mut Linked) -> u64 {
        let mut total = 0;
        if let Ok(entries) = fs::read_dir(dir) {
            for e in entries.flatten() {
                total += 512;
                match e.metadata() {
                    Ok(m) if m.is_dir() => total += walk(&e.path(), linked),
                    Ok(m) if m.is_file() && m.nlink() > 1 => {
                        linked
                            .entry((m.dev(), m.ino()))
                            .or_insert((m.len(), m.nlink(), 0))
                            .2 += 1;
                    }
                    Ok(m) if m.is_file() => total += m.len(),
                    _ => {}
                }
            }
        }
        total
    }
    let mut linked = Linked::new();
    let total = walk(dir, &mut linked);
    let own = linked
        .values()
        .filter(|(_, links, seen)| seen >= links)
        .map(|(size, ..)| size);
    total + own.sum::<u64>()
}

/// Asks the filesystem to place each new subdirectory of `dir` where it
/// sees fit rather than near `dir` (ext4's "top of hierarchy" flag, `chattr
/// +T`: the Orlov allocator spreads them over block groups). Snapshots are
/// made and removed in bulk; without the flag the files of new snapshots
/// land in the block groups of just-deleted ones, where ext4 scans past
/// every recently freed inode (`recently_deleted`): a build right after a
/// prune or a removed state directory ran 2-4x slower on this machine
/// (noop-rebuild bench, 5.7-11.4 s against 2.3-3.0 s). Elsewhere the call
/// fails and nothing changes.
pub(super) fn spread_subdirectories(dir: &Path) {
    const FS_TOPDIR_FL: libc::c_int = 0x0002_0000;
    let Ok(f) = fs::File::open(dir) else { return };
    let fd = std::os::fd::AsRawFd::as_raw_fd(&f);
    let mut flags: libc::c_int = 0;
    // SAFETY: FS_IOC_GETFLAGS/SETFLAGS read and write one int at the
    // pointer, which is valid for both calls.
    unsafe {
        if libc::ioctl(fd, libc::FS_IOC_GETFLAGS, &mut flags) == 0 && flags & FS_TOPDIR_FL == 0 {
            flags |= FS_TOPDIR_FL;
            let _ = libc::ioctl(fd, libc::FS_IOC_SETFLAGS, &flags);
        }
    }
}
