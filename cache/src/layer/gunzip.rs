//! Reading gzip streams: whole members with libdeflate while they fit in a
//! block, flate2's streaming decoder for the rest.
//!
//! The layers [`super::pgzip`] writes are runs of members of 1 MiB of tar
//! each. libdeflate decodes a whole member from one buffer into another at
//! ~2x the speed of zlib-rs's streaming inflate (and checks its CRC with
//! the same pass), which is most of the CPU an unpack spends outside the
//! kernel. A member that does not fit (a gzip tool's single member of a
//! whole layer), anything that is not a member header, and damaged data go
//! to `flate2::bufread::MultiGzDecoder` from that member on, so the stream
//! is read exactly as before, with its errors.

use std::io::{self, BufReader, Chain, Cursor, Read};
use std::ptr::NonNull;

use flate2::bufread::MultiGzDecoder;

/// The largest member output decoded in one piece (the block size of the
/// members `pgzip` writes).
const MEMBER_OUT: usize = 1 << 20;

/// Compressed bytes kept ahead of each attempt: a member of `MEMBER_OUT`
/// stored uncompressed, plus the largest header (64 KiB of extra field and
/// a file name).
const WINDOW: usize = 2 * MEMBER_OUT + (128 << 10);

/// The read-ahead buffer: what is left is moved to its front once every
/// three windows or so.
const BUFFER: usize = 4 * WINDOW;

/// A libdeflate decompressor.
struct Inflater(NonNull<libdeflate_sys::libdeflate_decompressor>);

// SAFETY: a libdeflate decompressor holds no thread-local state; it is only
// used through `&mut self`.
unsafe impl Send for Inflater {}

impl Inflater {
    fn new() -> Inflater {
        // SAFETY: no preconditions; NULL means out of memory.
        let p = unsafe { libdeflate_sys::libdeflate_alloc_decompressor() };
        Inflater(NonNull::new(p).expect("libdeflate: out of memory"))
    }

    /// Decodes the gzip member at the start of `input` into `out`: the
    /// compressed and decoded lengths, or `None` when it does not decode
    /// there (too large for `out`, cut short, damaged).
    fn member(&mut self, input: &[u8], out: &mut [u8]) -> Option<(usize, usize)> {
        let (mut used, mut made) = (0usize, 0usize);
        // SAFETY: the pointers and lengths describe live, exclusive buffers;
        // libdeflate reads at most `input.len()` and writes at most
        // `out.len()` bytes.
        let result = unsafe {
            libdeflate_sys::libdeflate_gzip_decompress_ex(
                self.0.as_ptr(),
                input.as_ptr().cast(),
                input.len(),
                out.as_mut_ptr().cast(),
                out.len(),
                &mut used,
                &mut made,
            )
        };
        (result == libdeflate_sys::libdeflate_result_LIBDEFLATE_SUCCESS).then_some((used, made))
    }
}

impl Drop for Inflater {
    fn drop(&mut self) {
        // SAFETY: allocated by libdeflate_alloc_decompressor, freed once.
        unsafe { libdeflate_sys::libdeflate_free_decompressor(self.0.as_ptr()) }
    }
}

/// The stream decoded a member at a time.
struct Members<R> {
    source: R,
    inflater: Inflater,
    /// Compressed bytes read ahead; `input[start..end]` is not decoded yet.
    input: Vec<u8>,
    start: usize,
    end: usize,
    eof: bool,
    out: Vec<u8>,
    pos: usize,
    len: usize,
}

/// flate2's decoder over the read-ahead bytes and the rest of the source.
type Stream<R> = MultiGzDecoder<BufReader<Chain<Cursor<Vec<u8>>, R>>>;

enum State<R> {
    Members(Members<R>),
    Stream(Box<Stream<R>>),
}

/// A reader of the decompressed content of a gzip stream of any number of
/// members (see the module documentation).
pub struct GzipReader<R: Read> {
    state: Option<State<R>>,
}

impl<R: Read> GzipReader<R> {
    /// Decompresses `source`.
    pub fn new(source: R) -> GzipReader<R> {
        GzipReader {
            state: Some(State::Members(Members {
                source,
                inflater: Inflater::new(),
                input: vec![0; BUFFER],
                start: 0,
                end: 0,
                eof: false,
                out: vec![0; MEMBER_OUT],
                pos: 0,
                len: 0,
            })),
        }
    }
}

impl<R: Read> Members<R> {
    /// Reads until `WINDOW` bytes are ahead or the source ends.
    fn fill(&mut self) -> io::Result<()> {
        if self.eof || self.end - self.start >= WINDOW {
            return Ok(());
        }
        if BUFFER - self.start < WINDOW {
            self.input.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        while !self.eof && self.end - self.start < WINDOW {
            match self.source.read(&mut self.input[self.end..]) {
                Ok(0) => self.eof = true,
                Ok(n) => self.end += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Decodes the next member into `out`: `Ok(true)` when one was decoded
    /// (perhaps empty), `Ok(false)` at the end of the stream, `Err(())` when
    /// the rest must go to the streaming decoder.
    fn next_member(&mut self) -> io::Result<Result<bool, ()>> {
        self.fill()?;
        let ahead = &self.input[self.start..self.end];
        if ahead.is_empty() {
            return Ok(Ok(false));
        }
        if !ahead.starts_with(&[0x1f, 0x8b, 0x08]) {
            return Ok(Err(()));
        }
        match self.inflater.member(ahead, &mut self.out) {
            Some((used, made)) => {
                self.start += used;
                self.pos = 0;
                self.len = made;
                Ok(Ok(true))
            }
            None => Ok(Err(())),
        }
    }

    /// The streaming decoder over what is left.
    fn into_stream(self) -> Stream<R> {
        let ahead = self.input[self.start..self.end].to_vec();
        let rest = Cursor::new(ahead).chain(self.source);
        MultiGzDecoder::new(BufReader::with_capacity(1 << 20, rest))
    }
}

impl<R: Read> Read for GzipReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.state.as_mut().expect("always set between calls") {
                State::Stream(stream) => return stream.read(buf),
                State::Members(m) => {
                    if m.pos < m.len {
                        let n = buf.len().min(m.len - m.pos);
                        buf[..n].copy_from_slice(&m.out[m.pos..m.pos + n]);
                        m.pos += n;
                        return Ok(n);
                    }
                    match m.next_member()? {
                        Ok(true) => continue,
                        Ok(false) => return Ok(0),
                        Err(()) => {
                            let Some(State::Members(m)) = self.state.take() else {
                                unreachable!("matched above")
                            };
                            self.state = Some(State::Stream(Box::new(m.into_stream())));
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::pgzip::sample;
    use super::*;
    use std::io::Write;

    fn read_all(bytes: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        // Small reads, to cross member boundaries inside a read.
        let mut r = GzipReader::new(bytes);
        let mut buf = [0u8; 70_001];
        loop {
            match r.read(&mut buf)? {
                0 => return Ok(out),
                n => out.extend_from_slice(&buf[..n]),
            }
        }
    }

    fn single_member(data: &[u8]) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
        gz.write_all(data).unwrap();
        gz.finish().unwrap()
    }

    #[test]
    fn block_members_and_single_members_read_back() {
        for len in [0, 1, MEMBER_OUT, MEMBER_OUT + 1, 3 * MEMBER_OUT + 777] {
            let input = sample(len);
            let mut gz = super::super::pgzip::ParallelGzip::new(Vec::new(), 6, 2).unwrap();
            gz.write_all(&input).unwrap();
            let blocks = gz.finish().unwrap();
            assert_eq!(read_all(&blocks).unwrap(), input, "pgzip, {len} bytes");
            // One member of everything: libdeflate gives way to flate2.
            assert_eq!(
                read_all(&single_member(&input)).unwrap(),
                input,
                "single, {len}"
            );
            // Block members followed by a large member.
            let mut mixed = blocks.clone();
            mixed.extend(single_member(&input));
            let mut twice = input.clone();
            twice.extend(&input);
            assert_eq!(read_all(&mixed).unwrap(), twice, "mixed, {len}");
        }
    }

    #[test]
    fn damage_and_trailing_bytes_fail_as_the_streaming_decoder_does() {
        let input = sample(3 * MEMBER_OUT);
        let mut gz = super::super::pgzip::ParallelGzip::new(Vec::new(), 6, 1).unwrap();
        gz.write_all(&input).unwrap();
        let good = gz.finish().unwrap();
        let mut flipped = good.clone();
        let at = good.len() / 2;
        flipped[at] ^= 0x40;
        assert!(read_all(&flipped).is_err());
        let cut = &good[..good.len() - 5];
        assert!(read_all(cut).is_err());
        let mut trailing = good.clone();
        trailing.extend_from_slice(b"not gzip");
        let mut want = Vec::new();
        let streamed = MultiGzDecoder::new(&trailing[..]).read_to_end(&mut want);
        assert_eq!(read_all(&trailing).is_err(), streamed.is_err());
    }
}
