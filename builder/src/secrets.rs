//! Build secrets (`--secret`, `RUN --mount=type=secret`): their values,
//! read once from a file or an environment variable, and the files a RUN
//! sees them in. Those files live on tmpfs (`/dev/shm`) in a directory
//! only root can enter, exist only while their step runs, and are removed
//! on Ctrl-C too. A secret's value is never part of a cache key, a layer,
//! the image config or the progress output.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read as _, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, bail};

/// Secret values by id.
pub type Secrets = BTreeMap<String, Vec<u8>>;

/// The largest secret (BuildKit's `MaxSecretSize`, 500 KiB).
pub const MAX_SECRET_SIZE: u64 = 500 * 1024;

/// Reads the `--secret` specs as buildx does: `id=ID` with `src=PATH`
/// (also `source=`), or `env=VAR`, or `type=file|env`; with neither, an
/// environment variable named ID if there is one, else a file named ID.
pub fn read_specs(specs: &[String]) -> anyhow::Result<Secrets> {
    let mut out = Secrets::new();
    for spec in specs {
        let (mut id, mut file, mut env, mut typ) = (None, None, None, None);
        let pairs =
            frontend::csv::key_values(spec).map_err(|e| anyhow::anyhow!("--secret {spec}: {e}"))?;
        for (k, v) in &pairs {
            match k.to_ascii_lowercase().as_str() {
                "id" => id = Some(v.to_string()),
                "src" | "source" => file = Some(v.to_string()),
                "env" => env = Some(v.to_string()),
                "type" => typ = Some(v.to_string()),
                _ => bail!("--secret {spec}: unknown key {k:?} (id, src, env, type)"),
            }
        }
        match typ.as_deref() {
            None | Some("file") => {}
            Some("env") => {
                if env.is_none() {
                    env = file.take();
                }
            }
            Some(t) => bail!("--secret {spec}: unknown type {t:?} (file, env)"),
        }
        let Some(id) = id.or_else(|| file.clone()).or_else(|| env.clone()) else {
            bail!("--secret {spec}: no id");
        };
        if file.is_none() && env.is_none() {
            if std::env::var_os(&id).is_some() {
                env = Some(id.clone());
            } else {
                file = Some(id.clone());
            }
        }
        let value = match (file, env) {
            (Some(path), _) => {
                // Read no further than the limit: a path may be a device
                // or a pipe that never ends.
                let mut value = Vec::new();
                fs::File::open(&path)
                    .and_then(|f| f.take(MAX_SECRET_SIZE + 1).read_to_end(&mut value))
                    .with_context(|| format!("--secret {spec}: reading {path}"))?;
                value
            }
            (None, Some(var)) => std::env::var_os(&var)
                .with_context(|| format!("--secret {spec}: environment variable {var} is not set"))?
                .into_encoded_bytes(),
            (None, None) => unreachable!("one of them was set above"),
        };
        if value.len() as u64 > MAX_SECRET_SIZE {
            bail!(
                "--secret {spec}: secret {id} too big. max size {}KiB",
                MAX_SECRET_SIZE >> 10
            );
        }
        out.insert(id, value);
    }
    Ok(out)
}

/// The directory holding this process's secret files (and the SSH agent
/// proxy sockets of [`crate::ssh`]); removed when dropped.
pub struct SecretDir {
    path: PathBuf,
}

static SECRET_DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// Removes this process's secret files (the Ctrl-C handler calls it).
pub fn remove_own() {
    if let Some(p) = SECRET_DIR.get() {
        let _ = fs::remove_dir_all(p);
    }
}

impl SecretDir {
    /// A fresh directory under `/dev/shm`, mode 0700.
    pub fn create() -> anyhow::Result<SecretDir> {
        let shm = Path::new("/dev/shm");
        if !shm.is_dir() {
            bail!("secrets are kept on tmpfs, and /dev/shm is missing");
        }
        let path = shm.join(format!("rbuild-secrets-{}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        let _ = SECRET_DIR.set(path.clone());
        Ok(SecretDir { path })
    }

    /// The directory (agent proxy sockets go here too).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes one secret's file (owned by `uid:gid`, `mode`); it is
    /// removed when the returned guard drops.
    pub fn write(&self, value: &[u8], uid: u32, gid: u32, mode: u32) -> anyhow::Result<SecretFile> {
        static N: AtomicU64 = AtomicU64::new(0);
        let path = self
            .path
            .join(format!("s{}", N.fetch_add(1, Ordering::Relaxed)));
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        let file = SecretFile(path);
        f.write_all(value)
            .with_context(|| format!("writing {}", file.0.display()))?;
        std::os::unix::fs::fchown(&f, Some(uid), Some(gid))
            .with_context(|| format!("chown {}", file.0.display()))?;
        f.set_permissions(fs::Permissions::from_mode(mode & 0o7777))
            .with_context(|| format!("chmod {}", file.0.display()))?;
        Ok(file)
    }
}

impl Drop for SecretDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// One secret file; removed on drop.
pub struct SecretFile(PathBuf);

impl SecretFile {
    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for SecretFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}
