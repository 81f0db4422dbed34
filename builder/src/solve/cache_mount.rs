//! Cache mounts (`RUN --mount=type=cache`): their directories under the
//! state root, shared, locked or private; a new one's owner and mode; a
//! `source=` directory inside; seeding from a stage (`from=`).

use super::*;

/// The directory of a cache mount (a new one filled by `seed`) and the
/// lock that keeps it while the
/// step runs. `shared` (the default) lets any number of steps use it at
/// once; `locked` waits until no other step holds it; `private` takes the
/// first copy no other step holds (`ID`, `ID.1`, `ID.2`, ...), as BuildKit
/// makes a new one when the mount is in use.
pub(super) fn cache_mount_dir(
    root: &Path,
    id: &str,
    sharing: Sharing,
    new_owner: Option<(u32, u32, u32)>,
    seed: &dyn Fn(&Path),
) -> anyhow::Result<(PathBuf, Option<std::fs::File>)> {
    std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
    let name = hex_name(id);
    let (dir, lock) = match sharing {
        Sharing::Shared => (root.join(&name), None),
        Sharing::Locked => {
            let lock = cache::lock::lock_exclusive(&root.join(format!("{name}.lock")))?;
            (root.join(&name), Some(lock))
        }
        Sharing::Private => {
            let mut n = 0usize;
            loop {
                let instance = if n == 0 {
                    name.clone()
                } else {
                    format!("{name}.{n}")
                };
                if let Some(lock) =
                    cache::lock::try_lock_exclusive(&root.join(format!("{instance}.lock")))?
                {
                    break (root.join(instance), Some(lock));
                }
                n += 1;
            }
        }
    };
    if !dir.exists() {
        // A new cache starts with the mount's owner and mode; later uses
        // keep whatever the steps left.
        // A name of this call's own: two steps of one build may make the
        // same cache at once.
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = PathBuf::from(format!("{}.new-{}-{n}", dir.display(), std::process::id()));
        std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        give_new_cache(&tmp, new_owner)?;
        // An imported cache may hold this mount's contents.
        seed(&tmp);
        // Another build may have made it meanwhile: theirs stays.
        if std::fs::rename(&tmp, &dir).is_err() {
            let _ = cache::tree::remove_tree(&tmp);
        }
    }
    Ok((dir, lock))
}

/// Gives a new cache directory the mount's uid, gid and mode, when the
/// mount names any of them (BuildKit makes a new cache from a scratch
/// directory with them).
pub(super) fn give_new_cache(dir: &Path, owner: Option<(u32, u32, u32)>) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some((uid, gid, mode)) = owner {
        std::os::unix::fs::chown(dir, Some(uid), Some(gid))
            .with_context(|| format!("changing the owner of {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("changing the mode of {}", dir.display()))?;
    }
    Ok(())
}

/// `source=` of a cache mount: a directory inside the cache, made when
/// missing. A step may have left symlinks in the cache, so every existing
/// component must be a real directory: a link (to `/etc`, say) would bind
/// a host path into the sandbox (moby/buildkit testCacheMountSourceEscape).
pub(super) fn cache_subdir(cache: &Path, source: &str) -> anyhow::Result<PathBuf> {
    let mut dir = cache.to_path_buf();
    for c in Path::new(source).components() {
        match c {
            std::path::Component::Normal(name) => dir.push(name),
            std::path::Component::RootDir | std::path::Component::CurDir => continue,
            _ => bail!("cache mount source {source:?} leaves the cache"),
        }
        match std::fs::symlink_metadata(&dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => bail!(
                "cache mount source {source:?}: {} is not a directory (a link out of the cache is refused)",
                dir.display()
            ),
            Err(_) => {
                std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?
            }
        }
    }
    Ok(dir)
}

/// A cache mount with `from=`: an empty cache starts as a copy of the base
/// stage's `source` directory (BuildKit: "a base of the cache mount").
/// Seeding holds a lock so two steps do not fill one cache at once.
pub(super) fn seed_cache_mount(
    store: &Store,
    dir: &Path,
    base: Option<&str>,
    source: &str,
) -> anyhow::Result<()> {
    let _lock = cache::lock::lock_exclusive(&dir.with_extension("seed-lock"))?;
    let empty = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .next()
        .is_none();
    if !empty {
        return Ok(());
    }
    let view = store.snapshots.prepare(base)?;
    copy(&CopyRequest::plain(
        &view.root(),
        &[source.to_string()],
        "/",
        dir,
    ))
    .with_context(|| format!("seeding the cache mount from {source}"))?;
    Ok(())
}

/// A cache-mount id as a directory name.
pub(super) fn hex_name(id: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    for b in id.bytes() {
        let _ = write!(out, "{b:02x}");
    }
    if out.is_empty() { "00".into() } else { out }
}
