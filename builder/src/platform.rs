//! Platforms as images name them: the OCI descriptor's `platform` matched
//! against a build's (`linux/arm64`), and an index's entry chosen for one,
//! as containerd's matcher does (variants normalised: `arm64/v8` is
//! `arm64`, `arm` is `arm/v7`, `amd64/v1` is `amd64`).

use anyhow::bail;
use cache::spec::{Descriptor, Index};
use frontend::stage::Platform;

/// `p` in the form the frontend parses (`os/arch[/variant]`, normalised).
pub fn of_spec(p: &cache::spec::Platform) -> Platform {
    let text = match p.variant.as_deref().filter(|v| !v.is_empty()) {
        Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
        None => format!("{}/{}", p.os, p.architecture),
    };
    Platform::parse(&text).unwrap_or(Platform {
        os: p.os.clone(),
        architecture: p.architecture.clone(),
        variant: p.variant.clone().unwrap_or_default(),
    })
}

/// `p` as an OCI descriptor's `platform`.
pub fn to_spec(p: &Platform) -> cache::spec::Platform {
    cache::spec::Platform {
        architecture: p.architecture.clone(),
        os: p.os.clone(),
        os_version: None,
        os_features: None,
        variant: (!p.variant.is_empty()).then(|| p.variant.clone()),
    }
}

/// How well an image for `have` suits `wanted`: 0 the same platform, 1
/// another variant of it when `wanted` names none (`amd64/v3` for
/// `amd64`), `None` not at all.
pub fn rank(have: &Platform, wanted: &Platform) -> Option<u8> {
    if have.os != wanted.os || have.architecture != wanted.architecture {
        return None;
    }
    if have.variant == wanted.variant {
        Some(0)
    } else if wanted.variant.is_empty() {
        Some(1)
    } else {
        None
    }
}

/// The entry of `idx` for `wanted` (the best ranked, the first of equals).
pub fn choose<'i>(idx: &'i Index, wanted: &Platform) -> anyhow::Result<&'i Descriptor> {
    let best = idx
        .manifests
        .iter()
        .filter_map(|d| Some((rank(&of_spec(d.platform.as_ref()?), wanted)?, d)))
        .min_by_key(|(r, _)| *r);
    if let Some((_, d)) = best {
        return Ok(d);
    }
    let have: Vec<String> = idx
        .manifests
        .iter()
        .filter_map(|d| d.platform.as_ref())
        .map(|p| of_spec(p).to_string())
        .collect();
    bail!(
        "no image for {wanted} in its index (it has {})",
        if have.is_empty() {
            "no platforms".to_string()
        } else {
            have.join(", ")
        }
    )
}

/// BuildKit's directory name for a platform's files in a multi-platform
/// local or tar export (`linux_arm64`, `linux_arm_v7`).
pub fn dir_name(p: &Platform) -> String {
    p.to_string().replace('/', "_")
}

#[cfg(test)]
mod tests {
    use super::*;
    use cache::spec::media;

    fn entry(arch: &str, variant: Option<&str>, digest: &str) -> Descriptor {
        let mut d = Descriptor::new(media::OCI_MANIFEST, &digest.parse().unwrap(), 1);
        d.platform = Some(cache::spec::Platform {
            architecture: arch.into(),
            os: "linux".into(),
            os_version: None,
            os_features: None,
            variant: variant.map(str::to_string),
        });
        d
    }

    #[test]
    fn chooses_like_containerd() {
        let a = format!("sha256:{}", "a".repeat(64));
        let b = format!("sha256:{}", "b".repeat(64));
        let c = format!("sha256:{}", "c".repeat(64));
        let d = format!("sha256:{}", "d".repeat(64));
        let idx = Index {
            schema_version: 2,
            media_type: Some(media::OCI_INDEX.into()),
            manifests: vec![
                entry("arm64", Some("v8"), &a),
                entry("amd64", Some("v3"), &b),
                entry("amd64", None, &c),
                entry("arm", Some("v7"), &d),
            ],
            annotations: None,
        };
        let p = |s: &str| Platform::parse(s).unwrap();
        assert_eq!(choose(&idx, &p("linux/amd64")).unwrap().digest, c);
        assert_eq!(choose(&idx, &p("linux/amd64/v3")).unwrap().digest, b);
        assert_eq!(choose(&idx, &p("linux/arm64")).unwrap().digest, a);
        assert_eq!(choose(&idx, &p("linux/arm")).unwrap().digest, d);
        let err = choose(&idx, &p("linux/s390x")).unwrap_err().to_string();
        assert!(
            err.contains("linux/arm64, linux/amd64/v3, linux/amd64, linux/arm/v7"),
            "{err}"
        );
        let only_v3 = Index {
            manifests: vec![entry("amd64", Some("v3"), &b)],
            ..idx
        };
        assert_eq!(choose(&only_v3, &p("linux/amd64")).unwrap().digest, b);
        assert_eq!(dir_name(&p("linux/arm/v7")), "linux_arm_v7");
    }
}
