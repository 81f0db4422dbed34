//! ADD's local archives: told by their first bytes, read through the
//! matching decompressor.

use super::*;

/// A tar archive (plain, gzip, zstd, bzip2 or xz), told by content as
/// BuildKit does: what the (decompressed) start holds must be a tar header.
pub(crate) fn is_archive(path: &Path) -> Result<bool, CopyError> {
    let mut inner = [0u8; 512];
    let inner_len = match cache::layer::decompress(archive_reader(path)?) {
        Ok(mut d) => read_up_to(&mut d, &mut inner),
        Err(_) => 0,
    };
    // ustar magic at offset 257.
    Ok(inner_len >= 263 && &inner[257..262] == b"ustar")
}

/// The file, or for xz its decompressed content (the other compressions
/// are undone by `cache::layer::decompress`).
pub(crate) fn archive_reader(path: &Path) -> Result<Box<dyn Read + Send>, CopyError> {
    let mut file = File::open(path).map_err(io_err("opening", path))?;
    let mut magic = [0u8; 6];
    let n = read_up_to(&mut file, &mut magic);
    io::Seek::rewind(&mut file).map_err(io_err("reading", path))?;
    if n < 6 || magic != cache::layer::XZ_MAGIC {
        return Ok(Box::new(file));
    }
    Ok(cache::layer::xz_decoder(file))
}

pub(super) fn read_up_to(r: &mut dyn Read, buf: &mut [u8]) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
    }
    n
}
