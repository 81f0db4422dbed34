//! Secret values kept out of everything rbuild prints or writes about a
//! build: step logs in every progress mode, error messages, the metadata
//! file. The values of `--secret` are registered once; a step's output is
//! masked as a stream (a value split between two reads is still found).
//! Values shorter than [`MIN_LEN`] bytes are not masked: hiding every `a`
//! of a log would destroy it, and such a value is no secret anyway.

use std::sync::OnceLock;

/// What a masked value becomes.
pub const MASK: &[u8] = b"****";

/// Shortest value masked.
pub const MIN_LEN: usize = 4;

/// The values to mask, longest first.
#[derive(Debug, Default)]
pub struct Masker {
    needles: Vec<Vec<u8>>,
    longest: usize,
}

static MASKER: OnceLock<Masker> = OnceLock::new();

impl Masker {
    /// Masks `values`: each whole, and each line of a value of several
    /// lines (a key printed in part).
    pub fn new<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Masker {
        let mut needles: Vec<Vec<u8>> = Vec::new();
        for v in values {
            needles.push(v.to_vec());
            needles.push(v.trim_ascii_end().to_vec());
            if v.contains(&b'\n') {
                needles.extend(v.split(|b| *b == b'\n').map(|l| l.trim_ascii().to_vec()));
            }
        }
        needles.retain(|n| n.len() >= MIN_LEN);
        needles.sort_by(|a, b| b.len().cmp(&a.len()).then(a.cmp(b)));
        needles.dedup();
        let longest = needles.first().map_or(0, Vec::len);
        Masker { needles, longest }
    }

    /// Registers the process's masker (once; later calls are ignored).
    pub fn install(self) {
        let _ = MASKER.set(self);
    }

    /// The process's masker (empty when none was installed).
    pub fn global() -> &'static Masker {
        MASKER.get_or_init(Masker::default)
    }

    /// `text` with every value masked.
    pub fn mask(&self, text: &[u8]) -> Vec<u8> {
        let mut stream = self.stream();
        let mut out = stream.push(text);
        out.extend(stream.finish());
        out
    }

    /// `text` with every value masked.
    pub fn mask_str(&self, text: &str) -> String {
        if self.needles.is_empty() {
            return text.to_string();
        }
        String::from_utf8_lossy(&self.mask(text.as_bytes())).into_owned()
    }

    /// A stream of output to mask piece by piece.
    pub fn stream(&self) -> MaskStream<'_> {
        MaskStream {
            masker: self,
            held: Vec::new(),
        }
    }
}

/// Output masked as it comes: the last bytes of a piece, which may begin a
/// value the next piece ends, are held back until then (or [`finish`]).
///
/// [`finish`]: MaskStream::finish
pub struct MaskStream<'a> {
    masker: &'a Masker,
    held: Vec<u8>,
}

impl MaskStream<'_> {
    /// The masked output that `chunk` makes ready.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        if self.masker.needles.is_empty() {
            return chunk.to_vec();
        }
        self.held.extend_from_slice(chunk);
        self.drain(false)
    }

    /// The rest, at the end of the output.
    pub fn finish(&mut self) -> Vec<u8> {
        self.drain(true)
    }

    fn drain(&mut self, all: bool) -> Vec<u8> {
        let buf = &self.held;
        // Held back: the longest end of `buf` that begins a value. Below
        // `safe`, any value that starts is whole in `buf`.
        let safe = if all {
            buf.len()
        } else {
            let longest = (self.masker.longest - 1).min(buf.len());
            let held = (1..=longest)
                .rev()
                .find(|&k| {
                    let tail = &buf[buf.len() - k..];
                    self.masker
                        .needles
                        .iter()
                        .any(|n| n.len() > k && n.starts_with(tail))
                })
                .unwrap_or(0);
            buf.len() - held
        };
        let mut out = Vec::with_capacity(safe);
        let mut i = 0;
        while i < safe {
            match self.masker.needles.iter().find(|n| buf[i..].starts_with(n)) {
                Some(n) => {
                    out.extend_from_slice(MASK);
                    i += n.len();
                }
                None => {
                    out.push(buf[i]);
                    i += 1;
                }
            }
        }
        self.held.drain(..i.min(self.held.len()));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_values_split_between_pieces() {
        let m = Masker::new([b"hunter2-secret".as_slice(), b"ab".as_slice()]);
        let text = b"x hunter2-secret y hunter2-secret\nab";
        for cut in 0..text.len() {
            let mut s = m.stream();
            let mut out = s.push(&text[..cut]);
            out.extend(s.push(&text[cut..]));
            out.extend(s.finish());
            assert_eq!(out, b"x **** y ****\nab", "cut at {cut}");
        }
        assert_eq!(m.mask_str("no secret"), "no secret");
    }

    #[test]
    fn lines_of_a_long_value_are_masked_alone() {
        let key = b"-----BEGIN KEY-----\nAAAABBBBCCCC\n-----END KEY-----\n";
        let m = Masker::new([key.as_slice()]);
        assert_eq!(m.mask_str("line: AAAABBBBCCCC"), "line: ****");
        assert_eq!(m.mask_str(std::str::from_utf8(key).unwrap()), "****",);
    }

    #[test]
    fn nothing_to_mask_passes_through() {
        let m = Masker::default();
        let mut s = m.stream();
        assert_eq!(s.push(b"abc"), b"abc");
        assert!(s.finish().is_empty());
    }
}
