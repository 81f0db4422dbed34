//! Reading a layer or archive whatever its compression: gzip, zstd, bzip2
//! or plain, found from the first bytes; xz through a decoder thread.

use std::io::{self, BufRead, BufReader, Read};

/// A reader of `reader`'s content, decompressed by its first bytes: gzip,
/// zstd, bzip2, or as it is (layers are gzip, zstd or plain; ADD also
/// takes bzip2 archives).
pub fn decompress<'a>(reader: impl Read + 'a) -> io::Result<Box<dyn Read + 'a>> {
    let mut buffered = BufReader::with_capacity(1 << 20, reader);
    let head = buffered.fill_buf()?.to_vec();
    Ok(if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(super::gunzip::GzipReader::new(buffered))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(zstd::stream::read::Decoder::with_buffer(buffered)?)
    } else if head.starts_with(b"BZh") {
        Box::new(bzip2::bufread::MultiBzDecoder::new(buffered))
    } else {
        Box::new(buffered)
    })
}

/// The first bytes of an xz stream.
pub const XZ_MAGIC: [u8; 6] = [0xfd, b'7', b'z', b'X', b'Z', 0x00];

/// xz-decompressed `reader`. lzma-rs (pure Rust, no C build) decodes only
/// into a `Write`, so a thread decodes and hands chunks over; nothing is
/// held whole. Not in [`decompress`]: the thread needs an owned reader,
/// and layers are never xz.
pub fn xz_decoder(reader: impl Read + Send + 'static) -> Box<dyn Read + Send> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<io::Result<Vec<u8>>>(4);
    std::thread::spawn(move || {
        struct Sink(std::sync::mpsc::SyncSender<io::Result<Vec<u8>>>);
        impl io::Write for Sink {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                self.0
                    .send(Ok(buf.to_vec()))
                    .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "reader gone"))?;
                Ok(buf.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut input = BufReader::with_capacity(1 << 20, reader);
        let mut sink = io::BufWriter::with_capacity(1 << 20, Sink(tx.clone()));
        let done = lzma_rs::xz_decompress(&mut input, &mut sink)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("xz: {e}")))
            .and_then(|()| io::Write::flush(&mut sink));
        drop(sink);
        if let Err(e) = done {
            let _ = tx.send(Err(e));
        }
    });
    Box::new(ChannelReader {
        rx,
        chunk: Vec::new(),
        pos: 0,
    })
}

/// Reads the chunks the decompression thread sends.
pub(super) struct ChannelReader {
    pub(super) rx: std::sync::mpsc::Receiver<io::Result<Vec<u8>>>,
    pub(super) chunk: Vec<u8>,
    pub(super) pos: usize,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.chunk.len() {
            match self.rx.recv() {
                Ok(Ok(chunk)) => {
                    self.chunk = chunk;
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(0), // the sender finished
            }
        }
        let n = buf.len().min(self.chunk.len() - self.pos);
        buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}
