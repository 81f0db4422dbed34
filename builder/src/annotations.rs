//! OCI annotations a build puts on its image: `--annotation` (buildx's
//! `[TYPE[PLATFORM][,TYPE...]:]KEY=VALUE`) and the image outputs'
//! `annotation[-TYPE][PLATFORM].KEY=VALUE` options, placed as BuildKit's
//! image writer places them: on each platform's manifest (no type), on its
//! descriptor, on a multi-platform build's index and on the index's
//! descriptor.

use std::collections::BTreeMap;

use anyhow::{Context, bail};
use frontend::stage::Platform;

/// Where an annotation goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The image manifest (the default).
    Manifest,
    /// The manifest's descriptor (in the index, or a layout's index.json).
    ManifestDescriptor,
    /// The index of a multi-platform build.
    Index,
    /// The index's descriptor (a layout's index.json).
    IndexDescriptor,
}

impl Target {
    fn parse(word: &str) -> Option<Target> {
        Some(match word {
            "manifest" => Target::Manifest,
            "manifest-descriptor" => Target::ManifestDescriptor,
            "index" => Target::Index,
            "index-descriptor" => Target::IndexDescriptor,
            _ => return None,
        })
    }
}

/// One annotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Annotation {
    /// Where it goes.
    pub target: Target,
    /// Only that platform's manifest (or its descriptor).
    pub platform: Option<Platform>,
    /// The key.
    pub key: String,
    /// The value.
    pub value: String,
}

/// A build's annotations, in the order given (a later one of a key wins).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Annotations(pub Vec<Annotation>);

/// `TYPE` or `TYPE[PLATFORM]`, the platform as buildx's pattern allows it.
fn type_and_platform(word: &str) -> Option<(&str, Option<&str>)> {
    let (typ, platform) = match word.split_once('[') {
        Some((t, rest)) => (t, Some(rest.strip_suffix(']')?)),
        None => (word, None),
    };
    let ok_type = !typ.is_empty() && typ.chars().all(|c| c.is_ascii_lowercase() || c == '-');
    let ok_platform = platform.is_none_or(|p| {
        !p.is_empty()
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '/' | '-'))
    });
    (ok_type && ok_platform).then_some((typ, platform))
}

fn platform(p: &str, spec: &str) -> anyhow::Result<Platform> {
    Platform::parse(p).map_err(|e| anyhow::anyhow!("{spec}: invalid platform {p:?}: {e}"))
}

impl Annotations {
    /// Adds one `--annotation` value.
    pub fn add_flag(&mut self, spec: &str) -> anyhow::Result<()> {
        let flag = format!("--annotation {spec}");
        let Some((k, value)) = spec.split_once('=') else {
            bail!("{flag}: invalid annotation {spec:?}, expected key=value");
        };
        let Some((types, key)) = k.split_once(':') else {
            self.0.push(Annotation {
                target: Target::Manifest,
                platform: None,
                key: k.to_string(),
                value: value.to_string(),
            });
            return Ok(());
        };
        for word in types.split(',') {
            let (typ, p) = type_and_platform(word).with_context(|| {
                format!(
                    "{flag}: invalid annotation type {word:?}, expected type and optional platform in square brackets"
                )
            })?;
            let target = Target::parse(typ)
                .with_context(|| format!("{flag}: unknown annotation type {typ:?}"))?;
            self.0.push(Annotation {
                target,
                platform: p.map(|p| platform(p, &flag)).transpose()?,
                key: key.to_string(),
                value: value.to_string(),
            });
        }
        Ok(())
    }

    /// Adds an output option when it is an annotation
    /// (`annotation-index.KEY`); false when it is some other option.
    pub fn add_output_option(&mut self, key: &str, value: &str) -> anyhow::Result<bool> {
        let Some(rest) = key.strip_prefix("annotation") else {
            return Ok(false);
        };
        let what = format!("--output {key}={value}");
        let (head, name) = rest
            .split_once('.')
            .filter(|(_, name)| !name.is_empty())
            .with_context(|| format!("{what}: expected annotation[-TYPE][PLATFORM].KEY"))?;
        let (target, p) = match head.strip_prefix('-') {
            None if head.is_empty() => (Target::Manifest, None),
            None => {
                let p = head
                    .strip_prefix('[')
                    .and_then(|h| h.strip_suffix(']'))
                    .with_context(|| format!("{what}: expected annotation[-TYPE][PLATFORM].KEY"))?;
                (Target::Manifest, Some(p))
            }
            Some(typed) => {
                let (typ, p) = type_and_platform(typed)
                    .with_context(|| format!("{what}: expected annotation[-TYPE][PLATFORM].KEY"))?;
                let target = Target::parse(typ)
                    .with_context(|| format!("{what}: unrecognized annotation type {typ}"))?;
                (target, p)
            }
        };
        self.0.push(Annotation {
            target,
            platform: p.map(|p| platform(p, &what)).transpose()?,
            key: name.to_string(),
            value: value.to_string(),
        });
        Ok(true)
    }

    /// Whether there are any.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// BuildKit's refusals, before anything is built: a platform the build
    /// does not make, index annotations without an index, descriptor and
    /// index annotations with Docker media types.
    pub fn check(&self, platforms: &[Platform], index: bool, oci: bool) -> anyhow::Result<()> {
        for a in &self.0 {
            if let Some(p) = &a.platform
                && !platforms.contains(p)
            {
                bail!(
                    "--annotation {}: invalid annotation: no platform {p} found in source",
                    a.key
                );
            }
            let needs_index = matches!(a.target, Target::Index | Target::IndexDescriptor);
            if needs_index && !index {
                bail!(
                    "--annotation {}: index annotations not supported for single platform export",
                    a.key
                );
            }
            if !oci && a.target != Target::Manifest {
                bail!(
                    "--annotation {}: cannot export annotations with \"oci-mediatypes=false\"",
                    a.key
                );
            }
        }
        Ok(())
    }

    /// The annotations of `target` for `platform`'s image: those of no
    /// platform, and (in an index) those of that one; none when empty.
    pub fn of(
        &self,
        target: Target,
        platform: Option<&Platform>,
    ) -> Option<BTreeMap<String, String>> {
        let map: BTreeMap<String, String> = self
            .0
            .iter()
            .filter(|a| a.target == target)
            .filter(|a| a.platform.is_none() || a.platform.as_ref() == platform)
            .map(|a| (a.key.clone(), a.value.clone()))
            .collect();
        (!map.is_empty()).then_some(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn amd64() -> Platform {
        Platform::parse("linux/amd64").unwrap()
    }

    #[test]
    fn buildx_and_exporter_forms() {
        let mut a = Annotations::default();
        a.add_flag("org.opencontainers.image.title=app").unwrap();
        a.add_flag("index,manifest:desc=both").unwrap();
        a.add_flag("manifest[linux/amd64]:only=amd").unwrap();
        assert!(
            a.add_output_option("annotation-index-descriptor.d", "x")
                .unwrap()
        );
        assert!(!a.add_output_option("name", "x").unwrap());
        let m = a.of(Target::Manifest, Some(&amd64())).unwrap();
        assert_eq!(m["org.opencontainers.image.title"], "app");
        assert_eq!(m["desc"], "both");
        assert_eq!(m["only"], "amd");
        let single = a.of(Target::Manifest, None).unwrap();
        assert!(!single.contains_key("only"));
        assert_eq!(a.of(Target::Index, None).unwrap()["desc"], "both");
        assert_eq!(a.of(Target::IndexDescriptor, None).unwrap()["d"], "x");
        assert!(a.of(Target::ManifestDescriptor, None).is_none());
    }

    #[test]
    fn refusals() {
        let mut a = Annotations::default();
        assert!(a.add_flag("novalue").is_err());
        assert!(a.add_flag("blob:k=v").is_err());
        assert!(a.add_flag("Manifest:k=v").is_err());
        assert!(a.add_output_option("annotation-blob.k", "v").is_err());
        assert!(a.add_output_option("annotation.", "v").is_err());
        a.add_flag("index:k=v").unwrap();
        let one = [amd64()];
        let err = a.check(&one, false, true).unwrap_err().to_string();
        assert!(err.contains("index annotations not supported"), "{err}");
        a.check(&one, true, true).unwrap();
        assert!(a.check(&one, true, false).is_err());
        let mut p = Annotations::default();
        p.add_flag("manifest[linux/arm64]:k=v").unwrap();
        let err = p.check(&one, false, true).unwrap_err().to_string();
        assert!(err.contains("no platform linux/arm64 found"), "{err}");
    }
}
