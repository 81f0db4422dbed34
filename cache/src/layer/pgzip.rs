//! Parallel gzip with libdeflate: the stream is cut into 1 MiB blocks, each
//! compressed into a gzip member of its own on a pool of threads and written
//! in order.
//!
//! A gzip file may hold several members, read as one stream (RFC 1952 2.2;
//! Go's `gzip.Reader`, which docker, containerd and BuildKit use, reads all
//! of them, as do flate2's `MultiGzDecoder`, gzip(1) and umoci). libdeflate
//! compresses whole buffers only, ~1.5x faster than zlib-rs at level 6 with
//! a slightly better ratio on a rootfs (300 MB sample: 66 vs 43 MB/s, 0.479
//! vs 0.483), which is what lets two cores pass 120 MB/s (gzp with zlib-rs
//! stayed at 97-118). Blocks do not depend on each other, so the bytes are
//! the same whatever the number of threads: a layer's digest does not
//! depend on the machine's core count.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use libdeflater::{CompressionLvl, Compressor};

/// Uncompressed bytes per gzip member.
const BLOCK: usize = 1 << 20;

type Job = (u64, Vec<u8>);
type Done = (u64, io::Result<Vec<u8>>);

/// A gzip stream of independent members, compressed on `threads` threads.
pub struct ParallelGzip<W: Write> {
    inner: W,
    buf: Vec<u8>,
    /// Sequence number of the next block handed out.
    sent: u64,
    /// Sequence number of the next block to write.
    next: u64,
    /// Compressed blocks that arrived before their turn.
    ready: BTreeMap<u64, Vec<u8>>,
    pool: Option<Pool>,
    /// With one thread: compressed here, no pool.
    local: Option<Compressor>,
}

struct Pool {
    jobs: Option<SyncSender<Job>>,
    done: Receiver<Done>,
    threads: Vec<JoinHandle<()>>,
    /// Blocks handed out whose result has not come back.
    in_flight: usize,
    limit: usize,
}

fn compress(c: &mut Compressor, data: &[u8]) -> io::Result<Vec<u8>> {
    let mut out = vec![0u8; c.gzip_compress_bound(data.len())];
    let n = c
        .gzip_compress(data, &mut out)
        .map_err(|e| io::Error::other(format!("gzip: {e:?}")))?;
    out.truncate(n);
    Ok(out)
}

impl<W: Write> ParallelGzip<W> {
    /// Gzip `level` (0-9) into `inner` with `threads` threads.
    pub fn new(inner: W, level: u32, threads: usize) -> io::Result<ParallelGzip<W>> {
        let level = CompressionLvl::new(level.min(9) as i32)
            .map_err(|e| io::Error::other(format!("gzip level {level}: {e:?}")))?;
        let (pool, local) = if threads > 1 {
            (Some(Pool::start(level, threads)?), None)
        } else {
            (None, Some(Compressor::new(level)))
        };
        Ok(ParallelGzip {
            inner,
            buf: Vec::with_capacity(BLOCK),
            sent: 0,
            next: 0,
            ready: BTreeMap::new(),
            pool,
            local,
        })
    }

    /// Compresses (or hands out) the buffered block.
    fn ship(&mut self) -> io::Result<()> {
        let block = std::mem::replace(&mut self.buf, Vec::with_capacity(BLOCK));
        let seq = self.sent;
        self.sent += 1;
        match (&mut self.pool, &mut self.local) {
            (Some(pool), _) => {
                pool.send((seq, block))?;
                while pool.in_flight >= pool.limit {
                    let (seq, out) = pool.recv()?;
                    self.ready.insert(seq, out?);
                }
            }
            (None, Some(c)) => {
                let out = compress(c, &block)?;
                self.ready.insert(seq, out);
            }
            (None, None) => unreachable!("a pool or a local compressor"),
        }
        self.write_ready()
    }

    /// Writes the compressed blocks that are next in order.
    fn write_ready(&mut self) -> io::Result<()> {
        while let Some(out) = self.ready.remove(&self.next) {
            self.inner.write_all(&out)?;
            self.next += 1;
        }
        Ok(())
    }

    /// Compresses what is left, writes every member and returns `inner`.
    /// An empty stream still gets one (empty) member.
    pub fn finish(mut self) -> io::Result<W> {
        if !self.buf.is_empty() || self.sent == 0 {
            self.ship()?;
        }
        if let Some(pool) = self.pool.as_mut() {
            while pool.in_flight > 0 {
                let (seq, out) = pool.recv()?;
                self.ready.insert(seq, out?);
            }
        }
        self.write_ready()?;
        debug_assert_eq!(self.next, self.sent);
        self.inner.flush()?;
        drop(self.pool.take());
        Ok(self.inner)
    }
}

impl<W: Write> Write for ParallelGzip<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(BLOCK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == BLOCK {
            self.ship()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        // Members are whole blocks: nothing can be forced out early
        // without changing the bytes.
        Ok(())
    }
}

impl Pool {
    fn start(level: CompressionLvl, threads: usize) -> io::Result<Pool> {
        let (jobs, rx) = sync_channel::<Job>(threads);
        let rx = Arc::new(Mutex::new(rx));
        let (tx, done) = sync_channel::<Done>(threads * 2);
        let mut handles = Vec::with_capacity(threads);
        for i in 0..threads {
            let rx = Arc::clone(&rx);
            let tx = tx.clone();
            let handle = std::thread::Builder::new()
                .name(format!("gzip-{i}"))
                .spawn(move || {
                    let mut c = Compressor::new(level);
                    loop {
                        let job = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                        let Ok((seq, block)) = job else { return };
                        if tx.send((seq, compress(&mut c, &block))).is_err() {
                            return;
                        }
                    }
                })?;
            handles.push(handle);
        }
        Ok(Pool {
            jobs: Some(jobs),
            done,
            threads: handles,
            in_flight: 0,
            limit: threads * 2,
        })
    }

    fn send(&mut self, job: Job) -> io::Result<()> {
        let jobs = self.jobs.as_ref().expect("open until drop");
        jobs.send(job)
            .map_err(|_| io::Error::other("the gzip threads ended"))?;
        self.in_flight += 1;
        Ok(())
    }

    fn recv(&mut self) -> io::Result<Done> {
        let done = self
            .done
            .recv()
            .map_err(|_| io::Error::other("the gzip threads ended"))?;
        self.in_flight -= 1;
        Ok(done)
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // Closing the job queue ends the threads; results nobody will read
        // are drained first (in flight never exceeds the result queue, so
        // no thread is left blocked on a send).
        self.jobs.take();
        while self.done.try_recv().is_ok() {}
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Test bytes: compressible but not trivial (text-like with a counter).
#[cfg(test)]
pub(super) fn sample(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| b"layer tar bytes "[i % 16] ^ (i / 4096) as u8)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn gunzip(bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(bytes)
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    #[test]
    fn members_read_back_as_one_stream_and_do_not_depend_on_threads() {
        for len in [0, 1, BLOCK - 1, BLOCK, BLOCK + 1, 5 * BLOCK + 12345] {
            let input = sample(len);
            let mut outputs = Vec::new();
            for threads in [1, 2, 4] {
                let mut gz = ParallelGzip::new(Vec::new(), 6, threads).unwrap();
                for piece in input.chunks(300_007) {
                    gz.write_all(piece).unwrap();
                }
                let bytes = gz.finish().unwrap();
                assert_eq!(gunzip(&bytes), input, "length {len}, {threads} threads");
                outputs.push(bytes);
            }
            assert!(outputs.windows(2).all(|w| w[0] == w[1]), "length {len}");
        }
    }
}
