//! Content-addressed blob store in OCI image-layout form: `oci-layout`,
//! `index.json` and `blobs/sha256/<hex>`, so skopeo, umoci and oras read it
//! as it is.
//!
//! [`BlobStore::writer`] streams into a temp file under `blobs/.tmp` while
//! hashing; [`BlobWriter::commit`] checks the expected digest and size,
//! fsyncs and renames into place. A writer holds an exclusive lock on its
//! temp file, so [`BlobStore::open`] can remove what killed writers left
//! behind without touching another live process's work. Reads verify on
//! demand ([`BlobStore::open_verified`], [`BlobStore::verify`]): a blob whose
//! content does not hash to its name is reported, never returned.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest as _, Sha256};

use crate::direct::DirectWriter;
use crate::spec::{Index, media, to_canonical_json};
use crate::{Digest, PathError};

/// The most a blob read whole into memory may be: far above any manifest
/// (containerd refuses those past 4 MiB) or config a build makes (its
/// variables and labels are bounded at 128 MiB), far below what would
/// exhaust memory.
pub const MAX_SMALL_BLOB: u64 = 256 << 20;

/// Blob store failures; each names the blob or path.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// Reading or writing a path failed.
    #[error(transparent)]
    Io(#[from] PathError),
    /// Content did not match the digest it was expected to have.
    #[error("blob {expected} is corrupt: content hashes to {actual}")]
    DigestMismatch {
        /// The digest the content should have.
        expected: String,
        /// What it hashes to.
        actual: String,
    },
    /// Content had another size than expected.
    #[error("blob {digest}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        /// The blob.
        digest: String,
        /// Expected size.
        expected: u64,
        /// Actual size.
        actual: u64,
    },
    /// No such blob.
    #[error("blob {0} not found")]
    NotFound(String),
    /// A blob read whole (a manifest, an index, a config) is larger than
    /// [`MAX_SMALL_BLOB`].
    #[error("blob {digest} is {size} bytes, larger than the {} MiB a manifest or config may be", MAX_SMALL_BLOB >> 20)]
    TooLarge {
        /// The blob.
        digest: String,
        /// Its size.
        size: u64,
    },
    /// `index.json` does not parse.
    #[error("{path} is not a valid OCI index")]
    BadIndex {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// A directory to read as an OCI layout has no `oci-layout` file.
    #[error("{0} is not an OCI image layout (it has no oci-layout file)")]
    NotLayout(PathBuf),
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> BlobError + use<> {
    let at = PathError::at(action, path);
    move |source| at(source).into()
}

/// The store.
#[derive(Debug, Clone)]
pub struct BlobStore {
    root: PathBuf,
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl BlobStore {
    /// Opens (creating if needed) an OCI layout at `root`, removing temp
    /// files of writers that died.
    pub fn open(root: &Path) -> Result<BlobStore, BlobError> {
        let store = BlobStore {
            root: root.to_path_buf(),
        };
        for dir in [store.blob_dir(), store.tmp_dir()] {
            fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;
        }
        let layout = root.join("oci-layout");
        if !layout.exists() {
            let body = format!(
                "{{\"imageLayoutVersion\":\"{}\"}}",
                media::OCI_LAYOUT_VERSION
            );
            write_atomic(&layout, body.as_bytes())?;
        }
        store.clean_stale_temp_files()?;
        Ok(store)
    }

    /// Opens an OCI layout made elsewhere (a build context, say) for
    /// reading: it creates, locks and cleans nothing there, so a read-only
    /// layout works and another tool's writers are left alone.
    pub fn open_existing(root: &Path) -> Result<BlobStore, BlobError> {
        if !root.join("oci-layout").is_file() {
            return Err(BlobError::NotLayout(root.to_path_buf()));
        }
        Ok(BlobStore {
            root: root.to_path_buf(),
        })
    }

    /// The layout directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn blob_dir(&self) -> PathBuf {
        self.root.join("blobs").join("sha256")
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join("blobs").join(".tmp")
    }

    /// Where a blob lives (whether or not it exists).
    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.root
            .join("blobs")
            .join(digest.algorithm())
            .join(digest.hex())
    }

    /// Whether the blob is present (not verified).
    pub fn contains(&self, digest: &Digest) -> bool {
        self.path(digest).is_file()
    }

    /// Size of a present blob.
    pub fn size(&self, digest: &Digest) -> Result<u64, BlobError> {
        let path = self.path(digest);
        match fs::metadata(&path) {
            Ok(m) => Ok(m.len()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(BlobError::NotFound(digest.to_string()))
            }
            Err(e) => Err(io_err("reading", &path)(e)),
        }
    }

    fn clean_stale_temp_files(&self) -> Result<(), BlobError> {
        // index.json (created when missing) and its temp files: only under
        // the index lock, which a live writer holds while its temp file exists.
        let lock_path = self.root.join("index.json.lock");
        let lock =
            crate::lock::lock_exclusive(&lock_path).map_err(io_err("locking", &lock_path))?;
        let index = self.root.join("index.json");
        if !index.exists() {
            write_atomic(&index, &to_canonical_json(&Index::default()))?;
        }
        for entry in fs::read_dir(&self.root)
            .map_err(io_err("reading", &self.root))?
            .flatten()
        {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(".index.json.") && name.ends_with(".tmp") {
                let _ = fs::remove_file(entry.path());
            }
        }
        drop(lock);

        let dir = self.tmp_dir();
        let entries = fs::read_dir(&dir).map_err(io_err("reading", &dir))?;
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(file) = File::open(&path) else {
                continue;
            };
            // A live writer holds the lock; only orphans can be locked here.
            if file.try_lock().is_ok() {
                let _ = fs::remove_file(&path);
            }
        }
        Ok(())
    }

    /// A writer for a new blob.
    pub fn writer(&self) -> Result<BlobWriter, BlobError> {
        let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = self
            .tmp_dir()
            .join(format!("{}-{n}-{nanos}", std::process::id()));
        let file = DirectWriter::create_new(&path).map_err(io_err("creating", &path))?;
        file.file().lock().map_err(io_err("locking", &path))?;
        Ok(BlobWriter {
            store: self.clone(),
            file: Some(file),
            path,
            hasher: Sha256::new(),
            size: 0,
        })
    }

    /// Streams `reader` into a blob; checks `expected` (digest, size) when given.
    pub fn put(
        &self,
        mut reader: impl Read,
        expected: Option<(&Digest, u64)>,
    ) -> Result<(Digest, u64), BlobError> {
        let mut w = self.writer()?;
        let tmp = w.path.clone();
        io::copy(&mut reader, &mut w).map_err(io_err("writing", &tmp))?;
        w.commit(expected)
    }

    /// Stores bytes (configs, manifests). A blob already there is not
    /// written again (a no-op rebuild re-stores its config and manifest).
    pub fn put_bytes(&self, data: &[u8]) -> Result<Digest, BlobError> {
        let digest = Digest::of_sha256(Sha256::new_with_prefix(data));
        if self.contains(&digest) {
            return Ok(digest);
        }
        Ok(self.put(data, None)?.0)
    }

    /// Opens a blob for reading; the reader fails at the end if the content
    /// does not hash to `digest`.
    pub fn open_verified(&self, digest: &Digest) -> Result<VerifyingReader<File>, BlobError> {
        let path = self.path(digest);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(BlobError::NotFound(digest.to_string()));
            }
            Err(e) => return Err(io_err("opening", &path)(e)),
        };
        Ok(VerifyingReader {
            inner: file,
            hasher: Sha256::new(),
            expected: digest.clone(),
            done: false,
        })
    }

    /// Reads a whole small blob (a manifest, an index, a config) and checks
    /// it; one over [`MAX_SMALL_BLOB`] is refused, not read into memory.
    pub fn read(&self, digest: &Digest) -> Result<Vec<u8>, BlobError> {
        let mut r = self.open_verified(digest)?;
        let size = r
            .inner
            .metadata()
            .map_err(io_err("reading", &self.path(digest)))?
            .len();
        if size > MAX_SMALL_BLOB {
            return Err(BlobError::TooLarge {
                digest: digest.to_string(),
                size,
            });
        }
        let mut out = Vec::with_capacity(size as usize);
        match r.read_to_end(&mut out) {
            Ok(_) => Ok(out),
            Err(e) => Err(unwrap_verify_error(e, &self.path(digest))),
        }
    }

    /// Rehashes a blob.
    pub fn verify(&self, digest: &Digest) -> Result<(), BlobError> {
        let mut r = self.open_verified(digest)?;
        match io::copy(&mut r, &mut io::sink()) {
            Ok(_) => Ok(()),
            Err(e) => Err(unwrap_verify_error(e, &self.path(digest))),
        }
    }

    /// Every blob present, with its size.
    pub fn list(&self) -> Result<Vec<(Digest, u64)>, BlobError> {
        let dir = self.blob_dir();
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_err("reading", &dir))? {
            let entry = entry.map_err(io_err("reading", &dir))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let Ok(digest) = format!("sha256:{name}").parse::<Digest>() else {
                continue;
            };
            let len = entry
                .metadata()
                .map_err(io_err("reading", &entry.path()))?
                .len();
            out.push((digest, len));
        }
        out.sort();
        Ok(out)
    }

    /// Rehashes every blob; returns the corrupt ones (and removes nothing).
    pub fn verify_all(&self) -> Result<Vec<(Digest, BlobError)>, BlobError> {
        let mut bad = Vec::new();
        for (digest, _) in self.list()? {
            match self.verify(&digest) {
                Ok(()) => {}
                Err(e @ BlobError::DigestMismatch { .. }) => bad.push((digest, e)),
                Err(e) => return Err(e),
            }
        }
        Ok(bad)
    }

    /// Removes a blob; absent is fine.
    pub fn delete(&self, digest: &Digest) -> Result<(), BlobError> {
        let path = self.path(digest);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("removing", &path)(e)),
        }
    }

    /// Reads `index.json`.
    pub fn read_index(&self) -> Result<Index, BlobError> {
        let path = self.root.join("index.json");
        let data = fs::read(&path).map_err(io_err("reading", &path))?;
        serde_json::from_slice(&data).map_err(|source| BlobError::BadIndex { path, source })
    }

    /// Changes `index.json` under an exclusive lock (read, change, write
    /// atomically), so two processes never lose each other's tags.
    pub fn update_index<T>(&self, change: impl FnOnce(&mut Index) -> T) -> Result<T, BlobError> {
        let lock_path = self.root.join("index.json.lock");
        let _lock =
            crate::lock::lock_exclusive(&lock_path).map_err(io_err("locking", &lock_path))?;
        let mut index = self.read_index()?;
        let before = to_canonical_json(&index);
        let out = change(&mut index);
        let after = to_canonical_json(&index);
        // Unchanged (a tag pointed where it already pointed): no rewrite.
        if after != before {
            write_atomic(&self.root.join("index.json"), &after)?;
        }
        Ok(out)
    }
}

fn unwrap_verify_error(e: io::Error, path: &Path) -> BlobError {
    if e.get_ref().is_some_and(|inner| inner.is::<VerifyFailed>()) {
        let failed = e
            .into_inner()
            .and_then(|b| b.downcast::<VerifyFailed>().ok())
            .expect("checked above");
        return BlobError::DigestMismatch {
            expected: failed.expected,
            actual: failed.actual,
        };
    }
    io_err("reading", path)(e)
}

/// Writes `data` to `path` through a temp file, fsync and rename.
pub(crate) fn write_atomic(path: &Path, data: &[u8]) -> Result<(), BlobError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!(
        ".{}.{}-{n}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id()
    ));
    let result = (|| {
        let mut f = File::create(&tmp).map_err(io_err("creating", &tmp))?;
        f.write_all(data).map_err(io_err("writing", &tmp))?;
        f.sync_all().map_err(io_err("syncing", &tmp))?;
        fs::rename(&tmp, path).map_err(io_err("renaming into", path))?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn sync_dir(dir: &Path) -> Result<(), BlobError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("syncing", dir))
}

/// A blob being written. Dropped without [`BlobWriter::commit`], it leaves nothing.
pub struct BlobWriter {
    store: BlobStore,
    /// Around the page cache: see [`crate::direct`].
    file: Option<DirectWriter>,
    path: PathBuf,
    hasher: Sha256,
    size: u64,
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let file = self.file.as_mut().expect("writer used after commit");
        let n = file.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.as_mut().map_or(Ok(()), |f| f.flush())
    }
}

impl BlobWriter {
    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Checks, syncs and moves the blob into place; returns its digest and size.
    pub fn commit(mut self, expected: Option<(&Digest, u64)>) -> Result<(Digest, u64), BlobError> {
        let file = self.file.take().expect("commit once");
        let file = file.finish().map_err(io_err("writing", &self.path))?;
        let digest = Digest::of_sha256(self.hasher.clone());
        if let Some((want, size)) = expected {
            if &digest != want {
                return Err(BlobError::DigestMismatch {
                    expected: want.to_string(),
                    actual: digest.to_string(),
                });
            }
            if size != self.size {
                return Err(BlobError::SizeMismatch {
                    digest: digest.to_string(),
                    expected: size,
                    actual: self.size,
                });
            }
        }
        let target = self.store.path(&digest);
        if !target.exists() {
            file.sync_all().map_err(io_err("syncing", &self.path))?;
            fs::rename(&self.path, &target).map_err(io_err("renaming into", &target))?;
            sync_dir(target.parent().expect("blob path has a parent"))?;
        }
        Ok((digest, self.size))
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        // Committed: the temp file was renamed (or is a duplicate); either
        // way nothing of ours may stay in .tmp.
        let _ = fs::remove_file(&self.path);
    }
}

#[derive(Debug)]
struct VerifyFailed {
    expected: String,
    actual: String,
}

impl std::fmt::Display for VerifyFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "blob {} is corrupt: content hashes to {}",
            self.expected, self.actual
        )
    }
}

impl std::error::Error for VerifyFailed {}

/// Hashes what it reads and fails at the end when the digest differs.
pub struct VerifyingReader<R> {
    inner: R,
    hasher: Sha256,
    expected: Digest,
    done: bool,
}

impl<R: Read> Read for VerifyingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n > 0 {
            self.hasher.update(&buf[..n]);
        } else if !buf.is_empty() && !self.done {
            self.done = true;
            let hex: String = self
                .hasher
                .clone()
                .finalize()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            if hex != self.expected.hex() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    VerifyFailed {
                        expected: self.expected.to_string(),
                        actual: format!("sha256:{hex}"),
                    },
                ));
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_root(name: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("rbuild-blob-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        p
    }

    /// A blob past the limit (here a sparse file where one should be) is
    /// refused by its size, never read into memory.
    #[test]
    fn oversized_small_blobs_are_refused_unread() {
        let root = temp_root("oversized");
        let store = BlobStore::open(&root).unwrap();
        let d: Digest = format!("sha256:{}", "b".repeat(64)).parse().unwrap();
        let f = File::create(store.path(&d)).unwrap();
        f.set_len(MAX_SMALL_BLOB + 1).unwrap();
        match store.read(&d) {
            Err(BlobError::TooLarge { size, .. }) => assert_eq!(size, MAX_SMALL_BLOB + 1),
            other => panic!("{other:?}"),
        }
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn put_get_verify() {
        let root = temp_root("basic");
        let store = BlobStore::open(&root).unwrap();
        let d = store.put_bytes(b"hello").unwrap();
        assert_eq!(
            d.to_string(),
            "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(store.read(&d).unwrap(), b"hello");
        assert!(root.join("oci-layout").is_file());
        assert_eq!(store.read_index().unwrap(), Index::default());
        // The same content twice is one blob.
        assert_eq!(store.put_bytes(b"hello").unwrap(), d);
        assert_eq!(store.list().unwrap().len(), 1);
        assert_eq!(fs::read_dir(store.tmp_dir()).unwrap().count(), 0);
        // A wrong expectation stores nothing.
        let other: Digest = format!("sha256:{}", "0".repeat(64)).parse().unwrap();
        assert!(matches!(
            store.put(&b"x"[..], Some((&other, 1))),
            Err(BlobError::DigestMismatch { .. })
        ));
        assert!(matches!(
            store.put(&b"hello"[..], Some((&d, 4))),
            Err(BlobError::SizeMismatch { .. })
        ));
        assert_eq!(store.list().unwrap().len(), 1);
        assert_eq!(fs::read_dir(store.tmp_dir()).unwrap().count(), 0);
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn an_existing_layout_is_read_without_a_change() {
        let root = temp_root("existing");
        assert!(matches!(
            BlobStore::open_existing(&root),
            Err(BlobError::NotLayout(_))
        ));
        let store = BlobStore::open(&root).unwrap();
        let digest = store.put_bytes(b"config").unwrap();
        fs::remove_dir(store.tmp_dir()).unwrap();
        fs::remove_file(root.join("index.json.lock")).unwrap();
        let listing = || {
            let mut names: Vec<_> = walk_names(&root);
            names.sort();
            names
        };
        let before = listing();
        let layout = BlobStore::open_existing(&root).unwrap();
        assert_eq!(layout.read(&digest).unwrap(), b"config");
        assert!(layout.read_index().unwrap().manifests.is_empty());
        assert_eq!(listing(), before);
        fs::remove_dir_all(&root).unwrap();
    }

    fn walk_names(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        for e in fs::read_dir(dir).unwrap().flatten() {
            out.push(e.path().display().to_string());
            if e.path().is_dir() {
                out.extend(walk_names(&e.path()));
            }
        }
        out
    }

    #[test]
    fn corrupt_blob_is_reported_never_returned() {
        let root = temp_root("corrupt");
        let store = BlobStore::open(&root).unwrap();
        let d = store.put_bytes(b"config").unwrap();
        fs::write(store.path(&d), b"tampered").unwrap();
        assert!(matches!(
            store.read(&d),
            Err(BlobError::DigestMismatch { .. })
        ));
        let bad = store.verify_all().unwrap();
        assert_eq!(bad.len(), 1);
        assert_eq!(bad[0].0, d);
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn orphaned_temp_files_are_removed_at_open_but_live_ones_kept() {
        let root = temp_root("orphan");
        let store = BlobStore::open(&root).unwrap();
        fs::write(store.tmp_dir().join("dead-writer"), b"partial").unwrap();
        let mut live = store.writer().unwrap();
        live.write_all(b"in progress").unwrap();
        BlobStore::open(&root).unwrap();
        let left: Vec<_> = fs::read_dir(store.tmp_dir())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left.len(), 1, "{left:?}");
        let (d, n) = live.commit(None).unwrap();
        assert_eq!(n, 11);
        assert!(store.contains(&d));
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn index_updates_are_atomic() {
        let root = temp_root("index");
        let store = BlobStore::open(&root).unwrap();
        let d = store.put_bytes(b"m").unwrap();
        store
            .update_index(|idx| {
                idx.manifests
                    .push(crate::spec::Descriptor::new(media::OCI_MANIFEST, &d, 1))
            })
            .unwrap();
        assert_eq!(store.read_index().unwrap().manifests.len(), 1);
        fs::remove_dir_all(&root).unwrap();
    }
}
