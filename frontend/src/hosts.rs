//! A RUN's name on the network, as the build options set it: the hostname
//! (`BUILDKIT_SANDBOX_HOSTNAME`, BuildKit's `hostname` option) and the
//! extra `/etc/hosts` entries of `--add-host`. Both are part of every
//! RUN's definition (BuildKit's ExecOp meta), so they count in its cache
//! key. The sandbox writes the files; this module only holds the values.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::Serialize;

/// The build arg that names the sandbox's host.
pub const HOSTNAME_ARG: &str = "BUILDKIT_SANDBOX_HOSTNAME";

/// One `--add-host` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExtraHost {
    /// The name, lower case (BuildKit lower-cases the option).
    pub host: String,
    /// Its address.
    pub ip: IpAddr,
}

/// Why an `--add-host` value is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExtraHostError {
    /// Not `HOST:IP` or `HOST=IP`.
    #[error("invalid host {0:?}: expected HOST:IP or HOST=IP")]
    Form(String),
    /// The address does not parse.
    #[error("invalid host {0:?}: {1:?} is not an IP address")]
    Address(String, String),
    /// Docker's `host-gateway` needs a bridge network, which RUN has not.
    #[error(
        "invalid host {0:?}: host-gateway is not supported (RUN shares the host's network: \
         use 127.0.0.1)"
    )]
    HostGateway(String),
}

impl FromStr for ExtraHost {
    type Err = ExtraHostError;

    /// buildx's forms: `HOST=IP`, else `HOST:IP` split at the first colon
    /// (so `h:::1` is `h` at `::1`); an address in brackets is unwrapped.
    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let (host, ip) = value
            .split_once('=')
            .or_else(|| value.split_once(':'))
            .filter(|(h, ip)| !h.is_empty() && !ip.is_empty())
            .ok_or_else(|| ExtraHostError::Form(value.to_string()))?;
        if ip == "host-gateway" {
            return Err(ExtraHostError::HostGateway(value.to_string()));
        }
        let bare = ip
            .strip_prefix('[')
            .and_then(|i| i.strip_suffix(']'))
            .unwrap_or(ip);
        let ip = bare
            .parse()
            .map_err(|_| ExtraHostError::Address(value.to_string(), ip.to_string()))?;
        Ok(ExtraHost {
            host: host.to_lowercase(),
            ip,
        })
    }
}

impl fmt::Display for ExtraHost {
    /// As `/etc/hosts` has it: `IP<TAB>HOST`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}\t{}", self.ip, self.host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: &str) -> Result<String, ExtraHostError> {
        v.parse::<ExtraHost>().map(|h| h.to_string())
    }

    #[test]
    fn buildx_forms() {
        assert_eq!(parse("db:10.0.0.2").unwrap(), "10.0.0.2\tdb");
        assert_eq!(parse("DB=10.0.0.2").unwrap(), "10.0.0.2\tdb");
        assert_eq!(parse("v6:::1").unwrap(), "::1\tv6");
        assert_eq!(parse("v6=[fe80::1]").unwrap(), "fe80::1\tv6");
        assert_eq!(parse("v4:[1.2.3.4]").unwrap(), "1.2.3.4\tv4");
    }

    #[test]
    fn refused() {
        assert!(matches!(parse("db"), Err(ExtraHostError::Form(_))));
        assert!(matches!(parse(":1.2.3.4"), Err(ExtraHostError::Form(_))));
        assert!(matches!(parse("db:"), Err(ExtraHostError::Form(_))));
        assert!(matches!(
            parse("db:example.com"),
            Err(ExtraHostError::Address(..))
        ));
        assert!(matches!(
            parse("gw:host-gateway"),
            Err(ExtraHostError::HostGateway(_))
        ));
    }
}
