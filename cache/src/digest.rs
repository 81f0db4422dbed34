//! `Digest`: an OCI content address, `algorithm:hex`.

use std::fmt;
use std::str::FromStr;

/// A malformed digest string.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    /// No `:` between algorithm and hex.
    #[error("digest `{0}` has no algorithm (expected `sha256:<hex>`)")]
    MissingAlgorithm(String),
    /// An algorithm other than sha256/sha512.
    #[error("digest `{0}` uses an unsupported algorithm")]
    UnsupportedAlgorithm(String),
    /// Wrong length or characters other than lower-case hex.
    #[error("digest `{0}` is not lower-case hex of the right length")]
    BadHex(String),
}

/// A content digest: `sha256:` (or `sha512:`) and lower-case hex.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest {
    algorithm: &'static str,
    hex: String,
}

impl Digest {
    /// The digest a finished sha256 hash gives.
    pub fn of_sha256(hasher: sha2::Sha256) -> Digest {
        use sha2::Digest as _;
        let hex: String = hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Digest {
            algorithm: "sha256",
            hex,
        }
    }

    /// The algorithm name (`sha256`).
    pub fn algorithm(&self) -> &str {
        self.algorithm
    }

    /// The hex part, which names the blob file.
    pub fn hex(&self) -> &str {
        &self.hex
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Digest, DigestError> {
        let (algorithm, hex) = s
            .split_once(':')
            .ok_or_else(|| DigestError::MissingAlgorithm(s.to_string()))?;
        let (algorithm, len) = match algorithm {
            "sha256" => ("sha256", 64),
            "sha512" => ("sha512", 128),
            _ => return Err(DigestError::UnsupportedAlgorithm(s.to_string())),
        };
        let valid = hex.len() == len && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !valid {
            return Err(DigestError::BadHex(s.to_string()));
        }
        Ok(Digest {
            algorithm,
            hex: hex.to_string(),
        })
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm, self.hex)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let hex = "a".repeat(64);
        let d: Digest = format!("sha256:{hex}").parse().unwrap();
        assert_eq!(d.to_string(), format!("sha256:{hex}"));
        assert_eq!(d.hex(), hex);
        assert!("sha256:ABC".parse::<Digest>().is_err());
        assert!("md5:00".parse::<Digest>().is_err());
        assert!("nocolon".parse::<Digest>().is_err());
        assert!(
            format!("sha256:{}", "A".repeat(64))
                .parse::<Digest>()
                .is_err()
        );
    }
}
