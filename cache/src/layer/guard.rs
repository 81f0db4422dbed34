//! [`TarGuard`]: a reader in front of the tar parser that follows the
//! archive's blocks and refuses, before they are read, metadata entries the
//! parser would hold whole in memory: PAX headers and GNU long names or
//! links over 1 MiB (Go's `archive/tar`, so containerd and BuildKit, stop
//! there: "header field too long"), and GNU sparse maps of more extension
//! blocks than that. The `tar` crate reads each of them into one buffer of
//! its declared size, so a few MiB of gzip declaring gigabytes of PAX
//! header made gigabytes of memory.

use std::io::{self, Read};

/// The most a PAX header, GNU long name or long link may be (Go's
/// `maxSpecialFileSize`), and the most the extension blocks of one GNU
/// sparse map may be.
pub const MAX_SPECIAL: u64 = 1 << 20;

const BLOCK: usize = 512;

/// Where the guard is in the archive.
enum State {
    /// Reading a header block (`filled` bytes of it so far).
    Header { filled: usize },
    /// Reading a GNU sparse map's extension blocks (`blocks` so far).
    SparseExtension {
        filled: usize,
        blocks: u64,
        data: u64,
    },
    /// Passing `remaining` bytes of entry data and padding.
    Skip { remaining: u64 },
    /// Collecting a PAX header's records (for the next entry's `size`),
    /// then `padding` bytes.
    Pax { remaining: u64, padding: u64 },
}

/// Follows a tar stream as it is read; see the module's doc.
pub struct TarGuard<R> {
    inner: R,
    state: State,
    block: [u8; BLOCK],
    /// The records of the PAX header being read.
    pax: Vec<u8>,
    /// The size the last PAX header gave the next entry.
    next_size: Option<u64>,
}

impl<R: Read> TarGuard<R> {
    /// A guard reading from `inner`.
    pub fn new(inner: R) -> TarGuard<R> {
        TarGuard {
            inner,
            state: State::Header { filled: 0 },
            block: [0; BLOCK],
            pax: Vec::new(),
            next_size: None,
        }
    }

    fn observe(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            match &mut self.state {
                State::Header { filled } | State::SparseExtension { filled, .. } => {
                    let take = (BLOCK - *filled).min(bytes.len());
                    self.block[*filled..*filled + take].copy_from_slice(&bytes[..take]);
                    *filled += take;
                    bytes = &bytes[take..];
                    if *filled == BLOCK {
                        self.on_block()?;
                    }
                }
                State::Skip { remaining } => {
                    let take = (*remaining).min(bytes.len() as u64);
                    *remaining -= take;
                    bytes = &bytes[take as usize..];
                    if *remaining == 0 {
                        self.state = State::Header { filled: 0 };
                    }
                }
                State::Pax { remaining, padding } => {
                    let take = (*remaining).min(bytes.len() as u64);
                    self.pax.extend_from_slice(&bytes[..take as usize]);
                    *remaining -= take;
                    bytes = &bytes[take as usize..];
                    if *remaining == 0 {
                        let padding = *padding;
                        self.next_size = pax_size(&self.pax);
                        self.pax.clear();
                        self.state = if padding == 0 {
                            State::Header { filled: 0 }
                        } else {
                            State::Skip { remaining: padding }
                        };
                    }
                }
            }
        }
        Ok(())
    }

    /// A whole header (or sparse extension) block has been read.
    fn on_block(&mut self) -> io::Result<()> {
        if let State::SparseExtension { blocks, data, .. } = self.state {
            let blocks = blocks + 1;
            if blocks * BLOCK as u64 > MAX_SPECIAL {
                return Err(too_long("GNU sparse map", blocks * BLOCK as u64));
            }
            // The last extension block says so (byte 504).
            self.state = if self.block[504] != 0 {
                State::SparseExtension {
                    filled: 0,
                    blocks,
                    data,
                }
            } else {
                skip(data)
            };
            return Ok(());
        }
        if self.block.iter().all(|&b| b == 0) {
            // End-of-archive blocks, or padding the parser skips.
            self.state = State::Header { filled: 0 };
            return Ok(());
        }
        let kind = self.block[156];
        let header_size = field_size(&self.block[124..136])
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "tar header: bad size"))?;
        let special = matches!(kind, b'x' | b'g' | b'L' | b'K');
        let size = if special {
            header_size
        } else {
            self.next_size.take().unwrap_or(header_size)
        };
        if special && size > MAX_SPECIAL {
            let what = match kind {
                b'x' | b'g' => "PAX header",
                b'L' => "GNU long name",
                _ => "GNU long link",
            };
            return Err(too_long(what, size));
        }
        self.state = match kind {
            b'x' if size > 0 => State::Pax {
                remaining: size,
                padding: padded(size) - size,
            },
            // A GNU sparse entry's map goes on in extension blocks while
            // its header says so (byte 482), before its data.
            b'S' if self.block[482] != 0 => State::SparseExtension {
                filled: 0,
                blocks: 0,
                data: padded(size),
            },
            _ => skip(padded(size)),
        };
        Ok(())
    }
}

impl<R: Read> Read for TarGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.observe(&buf[..n])?;
        Ok(n)
    }
}

fn skip(bytes: u64) -> State {
    if bytes == 0 {
        State::Header { filled: 0 }
    } else {
        State::Skip { remaining: bytes }
    }
}

fn padded(size: u64) -> u64 {
    size.div_ceil(BLOCK as u64) * BLOCK as u64
}

fn too_long(what: &str, size: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "tar {what} of {size} bytes: header field too long (more than {} MiB)",
            MAX_SPECIAL >> 20
        ),
    )
}

/// A header's size field: octal digits (NUL or space ended), or GNU's
/// base-256 with the high bit of the first byte set.
fn field_size(field: &[u8]) -> Option<u64> {
    if field[0] & 0x80 != 0 {
        let mut n: u64 = u64::from(field[0] & 0x7f);
        for &b in &field[1..] {
            n = n.checked_mul(256)?.checked_add(u64::from(b))?;
        }
        return Some(n);
    }
    let digits: Vec<u8> = field
        .iter()
        .copied()
        .skip_while(|&b| b == b' ' || b == 0)
        .take_while(|&b| (b'0'..=b'7').contains(&b))
        .collect();
    if digits.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(std::str::from_utf8(&digits).ok()?, 8).ok()
}

/// The `size` record of PAX header data (`LEN size=N\n` records).
fn pax_size(data: &[u8]) -> Option<u64> {
    let mut rest = data;
    let mut size = None;
    while !rest.is_empty() {
        let space = rest.iter().position(|&b| b == b' ')?;
        let len: usize = std::str::from_utf8(&rest[..space]).ok()?.parse().ok()?;
        if len <= space || len > rest.len() {
            return size;
        }
        let record = &rest[space + 1..len];
        let record = record.strip_suffix(b"\n").unwrap_or(record);
        if let Some(value) = record.strip_prefix(b"size=") {
            size = std::str::from_utf8(value).ok()?.parse().ok();
        }
        rest = &rest[len..];
    }
    size
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(name: &str, size: u64, kind: u8) -> Vec<u8> {
        let mut h = tar::Header::new_ustar();
        h.set_path(name).unwrap();
        h.set_size(size);
        h.set_entry_type(tar::EntryType::new(kind));
        h.set_mode(0o644);
        h.set_cksum();
        h.as_bytes().to_vec()
    }

    /// Reads `data` through the guard in odd-sized reads.
    fn read_all(data: &[u8]) -> io::Result<Vec<u8>> {
        let mut guard = TarGuard::new(data);
        let mut out = Vec::new();
        let mut buf = [0u8; 333];
        loop {
            match guard.read(&mut buf)? {
                0 => return Ok(out),
                n => out.extend_from_slice(&buf[..n]),
            }
        }
    }

    #[test]
    fn ordinary_archives_pass_unchanged() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(700);
        h.set_mode(0o644);
        b.append_data(&mut h, "a".repeat(300), &vec![7u8; 700][..])
            .unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_size(3);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_pax_extensions([("SCHILY.xattr.user.x", &b"v"[..])])
            .unwrap();
        b.append_data(&mut h, "b", &b"abc"[..]).unwrap();
        let tar = b.into_inner().unwrap();
        assert_eq!(read_all(&tar).unwrap(), tar);
        let mut names = Vec::new();
        for e in tar::Archive::new(TarGuard::new(&tar[..]))
            .entries()
            .unwrap()
        {
            names.push(e.unwrap().path().unwrap().display().to_string());
        }
        assert_eq!(names, ["a".repeat(300), "b".into()]);
    }

    #[test]
    fn oversized_metadata_entries_are_refused_unread() {
        for kind in [b'x', b'g', b'L', b'K'] {
            let mut tar = header("meta", MAX_SPECIAL + 1, kind);
            tar.extend(vec![0u8; 4096]);
            let err = read_all(&tar).unwrap_err();
            assert!(err.to_string().contains("header field too long"), "{err}");
        }
        // Within the limit, a PAX size carries over to the next entry's data.
        let record = b"16 size=1048576\n";
        let mut tar = header("pax", record.len() as u64, b'x');
        tar.extend(record);
        tar.extend(vec![0u8; BLOCK - record.len()]);
        tar.extend(header("big", 0, b'0'));
        tar.extend(vec![1u8; 1 << 20]);
        tar.extend(header("after", MAX_SPECIAL + 1, b'L'));
        let err = read_all(&tar).unwrap_err();
        assert!(err.to_string().contains("GNU long name"), "{err}");
    }
}
