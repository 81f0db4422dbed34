//! Writing layers: a tree (or the difference between two trees, or an
//! overlayfs upper directory) as a deterministic OCI layer tar, compressed
//! and stored in one streaming pass.
//!
//! Determinism: entries are written in sorted path order with headers built
//! by [`TarWriter`] (GNU format, no uname/gname, zero atime/ctime, mtimes
//! as found or clamped to SOURCE_DATE_EPOCH), so the same tree always gives
//! the same diff_id and, for a compression and level, the same blob digest.
//! Here: what a layer is made of, the sinks the tar streams through (the
//! diff_id hash, the compression thread, the blob) and the conversions.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::diff::{KnownDirs, Lower};
use super::tar_writer::TarWriter;
use super::{Compression, Layer, LayerError};
use crate::Digest;
use crate::blob::{BlobStore, BlobWriter};
use crate::spec::Descriptor;

/// What a layer is made of.
#[derive(Debug, Clone)]
pub enum DiffSource<'a> {
    /// Everything under `root` (a base layer, a `COPY --link` result).
    Full {
        /// The tree.
        root: &'a Path,
    },
    /// An overlayfs upper directory: char 0/0 devices are deletions and
    /// `trusted.overlay.opaque=y` directories hide what is below.
    Overlay {
        /// The upper directory.
        upper: &'a Path,
        /// The layers below it, top first, in the same form (what changed
        /// is told from what merely was copied up).
        lowers: &'a [PathBuf],
        /// What their directories are, when the caller keeps it across
        /// layers (they never change).
        known: Option<&'a KnownDirs>,
    },
    /// What changed from `lower` to `upper` (both full trees): new and
    /// changed entries, and whiteouts for removed ones.
    Compare {
        /// The parent tree.
        lower: &'a Path,
        /// The new tree.
        upper: &'a Path,
    },
}

/// How to write a layer.
#[derive(Debug, Clone)]
pub struct LayerOptions {
    /// Compression of the blob.
    pub compression: Compression,
    /// Compression level (gzip 0-9, zstd 1-22); `None` for the default.
    pub level: Option<i32>,
    /// OCI (true) or Docker media types.
    pub oci_media_types: bool,
    /// Clamp file mtimes to this (SOURCE_DATE_EPOCH with rewrite-timestamp).
    pub clamp_mtime: Option<i64>,
    /// Threads for compression.
    pub threads: usize,
}

impl Default for LayerOptions {
    fn default() -> Self {
        LayerOptions {
            compression: Compression::Gzip,
            level: None,
            oci_media_types: true,
            clamp_mtime: None,
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

/// A writer that hashes what passes through (the diff_id of the tar).
struct HashWriter<W> {
    inner: W,
    hasher: Sha256,
    size: u64,
    enabled: bool,
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        if self.enabled {
            self.hasher.update(&buf[..n]);
        }
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<W: TarSink> TarSink for HashWriter<W> {
    fn read_from(&mut self, file: &mut File, max: usize) -> io::Result<&[u8]> {
        let data = self.inner.read_from(file, max)?;
        if self.enabled {
            self.hasher.update(data);
        }
        self.size += data.len() as u64;
        Ok(data)
    }
}

/// Where a [`TarWriter`] writes: a `Write` that can also take file data
/// straight from the file into a buffer of its own, one copy fewer than
/// reading into a buffer and writing that.
pub(crate) trait TarSink: Write {
    /// Reads at most `max` (> 0) bytes of `file` into the stream: the bytes
    /// read, empty at the end of the file.
    fn read_from(&mut self, file: &mut File, max: usize) -> io::Result<&[u8]>;
}

/// A [`TarSink`] over any writer: file data is read into a buffer (large
/// reads: `io::copy` into a plain writer reads 8 KiB at a time) and written.
struct Staged<W> {
    inner: W,
    buf: Vec<u8>,
}

impl<W: Write> Write for Staged<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<W: Write> TarSink for Staged<W> {
    fn read_from(&mut self, file: &mut File, max: usize) -> io::Result<&[u8]> {
        let want = max.min(self.buf.len());
        let n = io::Read::read(file, &mut self.buf[..want])?;
        self.inner.write_all(&self.buf[..n])?;
        Ok(&self.buf[..n])
    }
}

/// The compressor in the middle of the pipeline.
enum Compressor {
    None(BlobWriter),
    Gzip(super::pgzip::ParallelGzip<BlobWriter>),
    Zstd(zstd::stream::write::Encoder<'static, BlobWriter>),
}

impl Write for Compressor {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Compressor::None(w) => w.write(buf),
            Compressor::Gzip(w) => w.write(buf),
            Compressor::Zstd(w) => w.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Compressor::None(w) => w.flush(),
            Compressor::Gzip(w) => w.flush(),
            Compressor::Zstd(w) => w.flush(),
        }
    }
}

impl Compressor {
    fn new(blob: BlobWriter, options: &LayerOptions) -> io::Result<Compressor> {
        Ok(match options.compression {
            Compression::Uncompressed => Compressor::None(blob),
            Compression::Gzip => {
                let level = options.level.unwrap_or(6).clamp(0, 9) as u32;
                Compressor::Gzip(super::pgzip::ParallelGzip::new(
                    blob,
                    level,
                    options.threads,
                )?)
            }
            Compression::Zstd => {
                let mut enc = zstd::stream::write::Encoder::new(blob, options.level.unwrap_or(3))?;
                // Always in worker mode, even with one thread: zstd's
                // output is the same for any number of workers, but not
                // between worker mode and none.
                enc.multithread(options.threads.max(1) as u32)?;
                Compressor::Zstd(enc)
            }
        })
    }

    fn finish(self) -> io::Result<BlobWriter> {
        match self {
            Compressor::None(w) => Ok(w),
            Compressor::Gzip(w) => w.finish(),
            Compressor::Zstd(w) => w.finish(),
        }
    }
}

/// Writes a layer from `source` into `store`.
pub fn write_layer(
    store: &BlobStore,
    source: &DiffSource<'_>,
    options: &LayerOptions,
) -> Result<Layer, LayerError> {
    let blob = store.writer()?;
    let compressor = Compressor::new(blob, options)
        .map_err(|e| LayerError::io("compressing", Path::new("-"), e))?;
    // The tar is built (and hashed) here while another thread compresses
    // and stores it: on two cores the halves overlap. Uncompressed, the blob
    // writer's own hash is the diff_id, so the tar is hashed once.
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(8);
        let (spent_tx, spent) = std::sync::mpsc::sync_channel::<Vec<u8>>(10);
        let back = scope.spawn(move || -> io::Result<BlobWriter> {
            let mut compressor = compressor;
            for chunk in rx {
                compressor.write_all(&chunk)?;
                let _ = spent_tx.try_send(chunk);
            }
            compressor.finish()
        });
        let hashing = HashWriter {
            inner: ChannelWriter {
                tx: Some(tx),
                spent,
                buf: vec![0; FIRST],
                len: 0,
            },
            hasher: Sha256::new(),
            size: 0,
            enabled: options.compression != Compression::Uncompressed,
        };
        let mut tar = TarWriter::new(hashing, options.clamp_mtime);
        let walked = match source {
            DiffSource::Full { root } => tar.write_tree(root, Path::new("")),
            DiffSource::Overlay {
                upper,
                lowers,
                known,
            } => {
                let lowers: Vec<&Path> = lowers.iter().map(PathBuf::as_path).collect();
                tar.write_overlay(upper, &Lower::new(&lowers, *known), Path::new(""))
            }
            DiffSource::Compare { lower, upper } => {
                tar.write_compare(&Lower::new(&[lower], None), upper, Path::new(""))
            }
        };
        let finished = walked.and_then(|()| tar.finish());
        // Closing the channel (also on error) lets the thread end.
        let (hashing, closed) = match finished {
            Ok(mut h) => {
                let closed = h.inner.close();
                (Some(h), closed)
            }
            Err(e) => return Err(e),
        };
        let compressed = back.join().map_err(|_| {
            LayerError::io(
                "compressing",
                Path::new("-"),
                io::Error::other("the compression thread panicked"),
            )
        })?;
        let hashing = hashing.expect("set above");
        closed.map_err(|e| LayerError::io("writing", Path::new("layer"), e))?;
        let blob = compressed.map_err(|e| LayerError::io("compressing", Path::new("-"), e))?;
        let uncompressed_size = hashing.size;
        let tar_hash = hashing.enabled.then(|| Digest::of_sha256(hashing.hasher));
        let (digest, size) = blob.commit(None)?;
        let diff_id = tar_hash.unwrap_or_else(|| digest.clone());
        let media_type = super::media_type(options.compression, options.oci_media_types);
        Ok(Layer {
            diff_id,
            descriptor: Descriptor::new(media_type, &digest, size),
            uncompressed_size,
        })
    })
}

/// Re-encodes layer blob `source` (any compression, found by content) with
/// `options.compression` and level into a new blob of `store`, streaming:
/// decompress, compress, hash. The layer's diff_id does not change.
pub fn convert_layer(
    store: &BlobStore,
    source: &Descriptor,
    options: &LayerOptions,
) -> Result<Descriptor, LayerError> {
    let digest: Digest = source.digest.parse().map_err(|e| {
        LayerError::io(
            "reading",
            Path::new(&source.digest),
            io::Error::other(format!("{e}")),
        )
    })?;
    let blob = store.open_verified(&digest)?;
    let mut tar = super::decompress(blob)
        .map_err(|e| LayerError::io("decompressing", Path::new(&source.digest), e))?;
    let writer = store.writer()?;
    let mut compressor = Compressor::new(writer, options)
        .map_err(|e| LayerError::io("compressing", Path::new(&source.digest), e))?;
    io::copy(&mut tar, &mut compressor)
        .map_err(|e| LayerError::io("converting", Path::new(&source.digest), e))?;
    let blob = compressor
        .finish()
        .map_err(|e| LayerError::io("compressing", Path::new(&source.digest), e))?;
    let (digest, size) = blob.commit(None)?;
    let media_type = super::media_type(options.compression, options.oci_media_types);
    Ok(Descriptor::new(media_type, &digest, size))
}

/// Size of the chunks handed to the compression thread.
const CHUNK: usize = 1 << 20;
/// A layer's first buffer, grown towards [`CHUNK`] as the tar does: most
/// layers of a build are small, and a chunk cleared for each (and one more
/// at its end) cost 512 page faults apiece (30 ms over the 31 layers of
/// the many-steps bench).
const FIRST: usize = 64 << 10;

/// Collects bytes into chunks for the compression thread.
struct ChannelWriter {
    tx: Option<std::sync::mpsc::SyncSender<Vec<u8>>>,
    /// Chunks the compression thread is done with, to fill again (fresh
    /// ones cost a page fault every 4 KiB).
    spent: std::sync::mpsc::Receiver<Vec<u8>>,
    /// Up to `CHUNK` bytes long (grown from `FIRST`); `buf[..len]` is filled.
    buf: Vec<u8>,
    len: usize,
}

impl ChannelWriter {
    /// Room to fill in the buffer: it grows (doubling, up to a chunk) when
    /// full below a chunk.
    fn room(&mut self) -> usize {
        if self.len == self.buf.len() && self.buf.len() < CHUNK {
            let grown = (self.buf.len() * 2).clamp(FIRST, CHUNK);
            self.buf.resize(grown, 0);
        }
        self.buf.len() - self.len
    }

    fn send(&mut self) -> io::Result<()> {
        if self.len == 0 {
            return Ok(());
        }
        let mut next = self.spent.try_recv().unwrap_or_default();
        next.resize(CHUNK, 0);
        let mut chunk = std::mem::replace(&mut self.buf, next);
        chunk.truncate(std::mem::take(&mut self.len));
        match &self.tx {
            Some(tx) => tx
                .send(chunk)
                .map_err(|_| io::Error::other("the compression thread stopped")),
            None => Err(io::Error::other("layer writer already closed")),
        }
    }

    /// Sends what is left (no fresh buffer is needed after it).
    fn close(&mut self) -> io::Result<()> {
        let r = match (&self.tx, self.len) {
            (_, 0) => Ok(()),
            (Some(tx), len) => {
                let mut chunk = std::mem::take(&mut self.buf);
                chunk.truncate(len);
                self.len = 0;
                tx.send(chunk)
                    .map_err(|_| io::Error::other("the compression thread stopped"))
            }
            (None, _) => Err(io::Error::other("layer writer already closed")),
        };
        self.tx = None;
        r
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        // `read_from` may leave the buffer full: a write that took nothing
        // would read as the end of the stream (`write_all` fails).
        if self.len == CHUNK && !data.is_empty() {
            self.send()?;
        }
        let n = data.len().min(self.room());
        self.buf[self.len..self.len + n].copy_from_slice(&data[..n]);
        self.len += n;
        if self.len == CHUNK {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl TarSink for ChannelWriter {
    fn read_from(&mut self, file: &mut File, max: usize) -> io::Result<&[u8]> {
        if self.len == CHUNK {
            self.send()?;
        }
        let start = self.len;
        let end = start + max.min(self.room());
        let n = io::Read::read(file, &mut self.buf[start..end])?;
        self.len += n;
        Ok(&self.buf[start..start + n])
    }
}

/// Writes the whole tree under `root` as one deterministic tar (no
/// compression) to `out`: the `tar` exporter's format.
pub fn write_tree_tar<W: Write>(
    root: &Path,
    out: W,
    clamp_mtime: Option<i64>,
) -> Result<W, LayerError> {
    let staged = Staged {
        inner: out,
        buf: vec![0; 256 << 10],
    };
    let mut tar = TarWriter::new(staged, clamp_mtime);
    tar.write_tree(root, Path::new(""))?;
    Ok(tar.finish()?.inner)
}
