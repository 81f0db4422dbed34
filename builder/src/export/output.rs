//! `-o`/`--output` specs: what an output writes and where, parsed as
//! buildx's CSV.

use anyhow::bail;
use cache::layer::Compression;

/// What an output writes (`type=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind {
    /// The local image store (with `name=` tags).
    Image,
    /// A registry (needs the registry client).
    Registry,
    /// An OCI archive or layout directory.
    Oci,
    /// A `docker load` archive.
    Docker,
    /// The final filesystem as a directory.
    Local,
    /// The final filesystem as a tar.
    Tar,
    /// Nothing but the caches `--cache-to` names (the image stays in the
    /// local store, as every build's does).
    CacheOnly,
}

impl OutputKind {
    /// The `type=` word.
    pub fn name(self) -> &'static str {
        match self {
            OutputKind::Image => "image",
            OutputKind::Registry => "registry",
            OutputKind::Oci => "oci",
            OutputKind::Docker => "docker",
            OutputKind::Local => "local",
            OutputKind::Tar => "tar",
            OutputKind::CacheOnly => "cacheonly",
        }
    }

    /// Whether it writes to `dest=`.
    fn needs_dest(self) -> bool {
        !matches!(
            self,
            OutputKind::Image | OutputKind::Registry | OutputKind::CacheOnly
        )
    }
}

impl std::fmt::Display for OutputKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for OutputKind {
    type Err = String;

    fn from_str(s: &str) -> Result<OutputKind, String> {
        Ok(match s {
            "image" => OutputKind::Image,
            "registry" => OutputKind::Registry,
            "oci" => OutputKind::Oci,
            "docker" => OutputKind::Docker,
            "local" => OutputKind::Local,
            "tar" => OutputKind::Tar,
            "cacheonly" => OutputKind::CacheOnly,
            other => {
                return Err(format!(
                    "unknown type {other:?} (image, registry, oci, docker, local, tar, cacheonly)"
                ));
            }
        })
    }
}

/// A parsed `-o` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// `type=`.
    pub kind: OutputKind,
    /// `dest=`.
    pub dest: Option<String>,
    /// `tar=false` (oci: a layout directory).
    pub tar: bool,
    /// `oci-mediatypes=`.
    pub oci_media_types: Option<bool>,
    /// `name=`.
    pub names: Vec<String>,
    /// `compression=`.
    pub compression: Option<Compression>,
    /// `push=true`.
    pub push: bool,
    /// `compression-level=`.
    pub compression_level: Option<i32>,
    /// `rewrite-timestamp=true`: new layers' file times clamped to
    /// SOURCE_DATE_EPOCH.
    pub rewrite_timestamp: bool,
    /// `force-compression=true`: base-image layers are re-encoded too.
    pub force_compression: bool,
    /// `annotation[-TYPE][PLATFORM].KEY=VALUE` options.
    pub annotations: crate::annotations::Annotations,
}

impl Output {
    /// An output of `kind` to `dest` with every option at its default.
    pub fn new(kind: OutputKind, dest: Option<&str>) -> Output {
        Output {
            kind,
            dest: dest.map(str::to_string),
            tar: true,
            oci_media_types: None,
            names: Vec::new(),
            compression: None,
            push: false,
            compression_level: None,
            rewrite_timestamp: false,
            force_compression: false,
            annotations: Default::default(),
        }
    }
}

/// Parses `type=oci,dest=out.tar,...`.
pub fn parse_output(spec: &str) -> anyhow::Result<Output> {
    if !spec.contains('=') {
        // buildx: a bare path means type=local.
        return Ok(Output::new(OutputKind::Local, Some(spec)));
    }
    let mut kind = None;
    let mut out = Output::new(OutputKind::Image, None);
    let pairs = frontend::csv::pairs(spec).map_err(|e| anyhow::anyhow!("--output {spec}: {e}"))?;
    for (k, v) in &pairs {
        let (k, v) = (k.as_str(), v.as_deref().unwrap_or(""));
        let bool_value = |v: &str| match v {
            "true" | "" => Ok(true),
            "false" => Ok(false),
            _ => bail!("--output {spec}: {k} must be true or false"),
        };
        match k {
            "type" => {
                kind = Some(
                    v.parse::<OutputKind>()
                        .map_err(|e| anyhow::anyhow!("--output {spec}: {e}"))?,
                )
            }
            "dest" => out.dest = Some(v.to_string()),
            "tar" => out.tar = bool_value(v)?,
            "oci-mediatypes" => out.oci_media_types = Some(bool_value(v)?),
            "name" => out
                .names
                .extend(v.split(';').filter(|n| !n.is_empty()).map(str::to_string)),
            "compression" => {
                out.compression = Some(
                    v.parse()
                        .map_err(|e: String| anyhow::anyhow!("--output {spec}: {e}"))?,
                )
            }
            "push" => out.push = bool_value(v)?,
            "compression-level" => out.compression_level = Some(
                v.parse()
                    .ok()
                    .filter(|l| (0..=22).contains(l))
                    .ok_or_else(|| {
                        anyhow::anyhow!(
                            "--output {spec}: compression-level must be 0-9 (gzip) or 0-22 (zstd)"
                        )
                    })?,
            ),
            "rewrite-timestamp" => out.rewrite_timestamp = bool_value(v)?,
            "force-compression" => out.force_compression = bool_value(v)?,
            other if out.annotations.add_output_option(other, v)? => {}
            other => bail!("--output {spec}: unknown option {other:?}"),
        }
    }
    out.kind = kind.ok_or_else(|| anyhow::anyhow!("--output {spec}: type= is required"))?;
    if out.kind.needs_dest() && out.dest.is_none() {
        bail!("--output {spec}: dest= is required for type={}", out.kind);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_parse_like_buildx() {
        let o = parse_output("type=oci,dest=out.tar").unwrap();
        assert_eq!(
            (o.kind, o.dest.as_deref(), o.tar),
            (OutputKind::Oci, Some("out.tar"), true)
        );
        let o = parse_output("type=oci,dest=dir,tar=false").unwrap();
        assert!(!o.tar);
        assert_eq!(parse_output("out").unwrap().kind, OutputKind::Local);
        assert!(parse_output("type=docker").is_err());
        assert!(parse_output("type=nope,dest=x").is_err());
        assert!(parse_output("dest=x").is_err());
        let o = parse_output("type=oci,dest=x,compression=zstd").unwrap();
        assert_eq!(o.compression, Some(Compression::Zstd));
        let e = parse_output("type=oci,dest=x,compression=lz4").unwrap_err();
        assert!(e.to_string().contains("compression"), "{e}");
        // Fields as CSV: a comma inside a quoted field.
        let o = parse_output("type=local,\"dest=a,b\"").unwrap();
        assert_eq!(o.dest.as_deref(), Some("a,b"));
        assert!(parse_output("type=local,dest=\"a").is_err());
    }
}
