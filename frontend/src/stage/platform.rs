//! [`Platform`]: `os/arch[/variant]`, parsed and printed as BuildKit's
//! platforms package does.

use std::fmt;

/// A platform, `os/arch[/variant]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Platform {
    /// `linux`.
    pub os: String,
    /// `amd64`.
    pub architecture: String,
    /// `v8`, or empty.
    pub variant: String,
}

impl Platform {
    /// The platform rbuild runs on and builds for.
    pub fn host() -> Platform {
        Platform {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: String::new(),
        }
    }

    /// Parses `os[/arch[/variant]]` or a bare architecture, normalising
    /// aliases as containerd does (`x86_64` is `amd64`, `aarch64` is `arm64`).
    pub fn parse(s: &str) -> Result<Platform, String> {
        let lower = s.to_lowercase();
        let parts: Vec<&str> = lower.split('/').collect();
        let known_os = |o: &str| {
            matches!(
                o,
                "linux"
                    | "windows"
                    | "darwin"
                    | "freebsd"
                    | "netbsd"
                    | "openbsd"
                    | "solaris"
                    | "illumos"
                    | "aix"
            )
        };
        let (os, arch, variant) = match parts.as_slice() {
            [one] if known_os(one) => (*one, "amd64", ""),
            [one] => ("linux", *one, ""),
            [os, arch] => (*os, *arch, ""),
            [os, arch, variant] => (*os, *arch, *variant),
            _ => {
                return Err(format!(
                    "{}: unknown operating system or architecture: invalid argument",
                    s
                ));
            }
        };
        if !known_os(os) || arch.is_empty() {
            return Err(format!(
                "{}: unknown operating system or architecture: invalid argument",
                s
            ));
        }
        let (arch, variant) = match (arch, variant) {
            ("x86_64" | "x86-64" | "amd64", v) => ("amd64", if v == "v1" { "" } else { v }),
            ("aarch64" | "arm64", "8" | "v8") => ("arm64", ""),
            ("aarch64" | "arm64", v) => ("arm64", v),
            ("armhf", _) => ("arm", "v7"),
            ("armel", _) => ("arm", "v6"),
            ("arm", "") => ("arm", "v7"),
            ("arm", "5" | "6" | "7" | "8") => ("arm", ""),
            ("i386" | "i686" | "386", v) => ("386", v),
            (a, v) => (a, v),
        };
        Ok(Platform {
            os: os.to_string(),
            architecture: arch.to_string(),
            variant: variant.to_string(),
        })
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if !self.variant.is_empty() {
            write!(f, "/{}", self.variant)?;
        }
        Ok(())
    }
}
