//! The resource settings a build gives every RUN: `--ulimit NAME=SOFT[:HARD]`
//! and `--shm-size SIZE`, as buildx reads them (go-units' `ParseUlimit` and
//! `RAMInBytes`). Like the hostname they are part of each RUN's definition
//! (BuildKit's ExecOp meta and its `/dev/shm` tmpfs mount), so they count
//! in its cache key. The sandbox applies them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The names `--ulimit` takes (go-units' table), each an `RLIMIT_*`.
pub const ULIMIT_NAMES: [&str; 15] = [
    "core",
    "cpu",
    "data",
    "fsize",
    "locks",
    "memlock",
    "msgqueue",
    "nice",
    "nofile",
    "nproc",
    "rss",
    "rtprio",
    "rttime",
    "sigpending",
    "stack",
];

/// One `--ulimit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ulimit {
    /// One of [`ULIMIT_NAMES`].
    pub name: String,
    /// Soft limit; -1 is unlimited.
    pub soft: i64,
    /// Hard limit; -1 is unlimited.
    pub hard: i64,
}

/// A refused `--ulimit` or `--shm-size`, in go-units' words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    /// Not `NAME=VALUE`.
    #[error("invalid ulimit argument: {0}")]
    Argument(String),
    /// An unknown name.
    #[error("invalid ulimit type: {0}")]
    Type(String),
    /// A value that is no integer, or more than `soft:hard`.
    #[error("invalid ulimit value {0:?}: expected SOFT[:HARD], integers")]
    Value(String),
    /// soft above hard.
    #[error("ulimit soft limit must be less than or equal to hard limit: {0} > {1}")]
    Order(i64, i64),
    /// A size that does not parse.
    #[error("invalid size: {0:?}")]
    Size(String),
}

impl FromStr for Ulimit {
    type Err = LimitError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let (name, limits) = value
            .split_once('=')
            .ok_or_else(|| LimitError::Argument(value.to_string()))?;
        if !ULIMIT_NAMES.contains(&name) {
            return Err(LimitError::Type(name.to_string()));
        }
        let int = |s: &str| {
            s.parse::<i64>()
                .map_err(|_| LimitError::Value(limits.to_string()))
        };
        let (soft, hard) = match limits.split(':').collect::<Vec<_>>()[..] {
            [soft] => (int(soft)?, int(soft)?),
            [soft, hard] => (int(soft)?, int(hard)?),
            _ => return Err(LimitError::Value(limits.to_string())),
        };
        if hard != -1 && soft > hard {
            return Err(LimitError::Order(soft, hard));
        }
        Ok(Ulimit {
            name: name.to_string(),
            soft,
            hard,
        })
    }
}

impl fmt::Display for Ulimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}:{}", self.name, self.soft, self.hard)
    }
}

/// `--shm-size`: bytes, from `64m`, `1.5g`, `65536` (binary units, as
/// go-units' `RAMInBytes`: b, k, m, g, t, p, with an optional `b`/`ib`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShmSize(pub u64);

impl FromStr for ShmSize {
    type Err = LimitError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let bad = || LimitError::Size(value.to_string());
        let lower = value.trim().to_ascii_lowercase();
        let split = lower
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(lower.len());
        let (number, unit) = lower.split_at(split);
        let number: f64 = number.parse().map_err(|_| bad())?;
        let unit = unit.trim();
        let unit = unit
            .strip_suffix("ib")
            .or_else(|| unit.strip_suffix('b'))
            .unwrap_or(unit);
        let shift = match unit {
            "" => 0,
            "k" => 10,
            "m" => 20,
            "g" => 30,
            "t" => 40,
            "p" => 50,
            _ => return Err(bad()),
        };
        Ok(ShmSize((number * (1u64 << shift) as f64) as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ulimits_as_go_units_reads_them() {
        let u: Ulimit = "nofile=1024:2048".parse().unwrap();
        assert_eq!((u.soft, u.hard), (1024, 2048));
        let u: Ulimit = "nproc=64".parse().unwrap();
        assert_eq!((u.soft, u.hard), (64, 64));
        let u: Ulimit = "core=0:-1".parse().unwrap();
        assert_eq!((u.soft, u.hard), (0, -1));
        assert_eq!(
            "nofile".parse::<Ulimit>(),
            Err(LimitError::Argument("nofile".into()))
        );
        assert_eq!(
            "files=1".parse::<Ulimit>(),
            Err(LimitError::Type("files".into()))
        );
        assert!(matches!(
            "nofile=a".parse::<Ulimit>(),
            Err(LimitError::Value(_))
        ));
        assert!(matches!(
            "nofile=1:2:3".parse::<Ulimit>(),
            Err(LimitError::Value(_))
        ));
        assert_eq!(
            "nofile=10:5".parse::<Ulimit>(),
            Err(LimitError::Order(10, 5))
        );
    }

    #[test]
    fn sizes_in_binary_units() {
        for (v, want) in [
            ("65536", 65536),
            ("64m", 64 << 20),
            ("64M", 64 << 20),
            ("1g", 1 << 30),
            ("1.5k", 1536),
            ("2mb", 2 << 20),
            ("2MiB", 2 << 20),
        ] {
            assert_eq!(v.parse::<ShmSize>(), Ok(ShmSize(want)), "{v}");
        }
        assert!("big".parse::<ShmSize>().is_err());
        assert!("1x".parse::<ShmSize>().is_err());
    }
}
