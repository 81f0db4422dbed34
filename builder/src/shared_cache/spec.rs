//! `--cache-to` and `--cache-from` as buildx reads them:
//! `type=registry,ref=REF[,mode=min|max][,ignore-error=true]`,
//! `type=local,dest=DIR[,tag=T][,mode=...]` / `type=local,src=DIR[,tag=T]`,
//! and a bare `REF` for `type=registry,ref=REF`.

use anyhow::bail;

/// What a cache export holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The steps of the result's own chain.
    Min,
    /// Every step the build made or found, every stage.
    Max,
}

/// Where a cache goes or comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// An OCI layout directory, under a tag of its index.
    Local {
        /// The directory.
        dir: String,
        /// The tag (`latest` by default).
        tag: String,
    },
    /// A registry reference.
    Registry(String),
    /// In the image's own config (`--cache-to type=inline`), read back
    /// with `--cache-from` the image's reference.
    Inline,
}

/// A parsed `--cache-to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheTo {
    /// Where.
    pub location: Location,
    /// min (default) or max.
    pub mode: Mode,
    /// A failed export is a warning, not a failed build.
    pub ignore_error: bool,
    /// `cache-mounts=true`: the contents of the build's `RUN
    /// --mount=type=cache` directories travel too.
    pub cache_mounts: bool,
}

/// A parsed `--cache-from`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheFrom {
    /// Where.
    pub location: Location,
}

fn fields(flag: &str, spec: &str) -> anyhow::Result<Vec<(String, String)>> {
    if !spec.contains('=') {
        // buildx: a bare value is a registry reference.
        return Ok(vec![
            ("type".into(), "registry".into()),
            ("ref".into(), spec.into()),
        ]);
    }
    Ok(frontend::csv::key_values(spec)
        .map_err(|e| anyhow::anyhow!("{flag} {spec}: {e}"))?
        .into_iter()
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect())
}

fn location(
    flag: &str,
    spec: &str,
    f: &[(String, String)],
    dir_key: &str,
) -> anyhow::Result<Location> {
    let get = |k: &str| f.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    match get("type").as_deref() {
        Some("registry") => match get("ref") {
            Some(r) if !r.is_empty() => Ok(Location::Registry(r)),
            _ => bail!("{flag} {spec}: type=registry needs ref=REF"),
        },
        Some("local") => match get(dir_key) {
            Some(d) if !d.is_empty() => Ok(Location::Local {
                dir: d,
                tag: get("tag").unwrap_or_else(|| "latest".into()),
            }),
            _ => bail!("{flag} {spec}: type=local needs {dir_key}=DIR"),
        },
        Some("inline") if dir_key == "dest" => Ok(Location::Inline),
        Some("inline") => {
            bail!("{flag} {spec}: an inline cache is read with type=registry,ref=IMAGE")
        }
        Some(t @ ("gha" | "s3" | "azblob")) => {
            bail!("{flag} {spec}: type={t} is not supported yet (registry, local and inline are)")
        }
        Some(t) => bail!("{flag} {spec}: unknown cache type {t:?} (registry, local)"),
        None => bail!("{flag} {spec}: type= is missing"),
    }
}

impl CacheTo {
    /// Parses one `--cache-to`.
    pub fn parse(spec: &str) -> anyhow::Result<CacheTo> {
        let f = fields("--cache-to", spec)?;
        let location = location("--cache-to", spec, &f, "dest")?;
        let mut out = CacheTo {
            location,
            mode: Mode::Min,
            ignore_error: false,
            cache_mounts: false,
        };
        for (k, v) in &f {
            match k.as_str() {
                "type" | "ref" | "dest" | "tag" => {}
                "mode" => {
                    out.mode = match v.as_str() {
                        "min" => Mode::Min,
                        "max" => Mode::Max,
                        _ => bail!("--cache-to {spec}: mode must be min or max"),
                    }
                }
                "ignore-error" => out.ignore_error = v == "true",
                "cache-mounts" => out.cache_mounts = v == "true",
                // Accepted as buildx does; the layout is always an OCI
                // image manifest with gzip layers.
                "compression" | "compression-level" | "force-compression" | "oci-mediatypes"
                | "image-manifest" => {}
                other => bail!("--cache-to {spec}: unknown option {other:?}"),
            }
        }
        Ok(out)
    }
}

impl CacheFrom {
    /// Parses one `--cache-from`.
    pub fn parse(spec: &str) -> anyhow::Result<CacheFrom> {
        let f = fields("--cache-from", spec)?;
        let location = location("--cache-from", spec, &f, "src")?;
        for (k, _) in &f {
            if !matches!(k.as_str(), "type" | "ref" | "src" | "tag" | "digest") {
                bail!("--cache-from {spec}: unknown option {k:?}");
            }
        }
        Ok(CacheFrom { location })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buildx_forms() {
        let t = CacheTo::parse("type=registry,ref=r:5000/app:cache,mode=max").unwrap();
        assert_eq!(t.location, Location::Registry("r:5000/app:cache".into()));
        assert_eq!(t.mode, Mode::Max);
        let t = CacheTo::parse("type=local,dest=/tmp/c").unwrap();
        assert_eq!(
            t.location,
            Location::Local {
                dir: "/tmp/c".into(),
                tag: "latest".into()
            }
        );
        assert_eq!(t.mode, Mode::Min);
        assert_eq!(
            CacheFrom::parse("r/app:cache").unwrap().location,
            Location::Registry("r/app:cache".into())
        );
        for bad in [
            "type=local",
            "type=registry",
            "type=s3,ref=x",
            "type=local,dest=d,mode=all",
        ] {
            assert!(CacheTo::parse(bad).is_err(), "{bad}");
        }
        assert!(CacheFrom::parse("type=local,src=d,bogus=1").is_err());
        assert_eq!(
            CacheFrom::parse("type=local,\"src=/c,d\"")
                .unwrap()
                .location,
            Location::Local {
                dir: "/c,d".into(),
                tag: "latest".into()
            }
        );
    }
}
