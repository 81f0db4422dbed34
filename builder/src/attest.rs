//! buildx's attestation flags: `--attest type=T[,disabled=true][,K=V...]`
//! and the shorthands `--provenance VALUE` / `--sbom VALUE` (a boolean, or
//! the attributes of that type), read as buildx reads them: the last one
//! of a type wins. What rbuild makes of them is the caller's concern.

use std::collections::BTreeMap;

use anyhow::{Context, bail};

/// One attestation request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attest {
    /// `provenance`, `sbom`, ...
    pub kind: String,
    /// `disabled=true` (`--provenance=false`).
    pub disabled: bool,
    /// The other attributes (`mode=max`, `generator=...`).
    pub attrs: BTreeMap<String, String>,
}

impl Attest {
    /// Parses one `--attest` value (comma-separated `key=value` fields,
    /// a `type=` among them).
    pub fn parse(spec: &str) -> anyhow::Result<Attest> {
        let mut kind = None;
        let mut disabled = false;
        let mut attrs = BTreeMap::new();
        let pairs =
            frontend::csv::pairs(spec).map_err(|e| anyhow::anyhow!("--attest {spec}: {e}"))?;
        for (key, value) in &pairs {
            let Some(value) = value else {
                bail!("--attest {spec}: invalid value {key}");
            };
            match key.trim().to_ascii_lowercase().as_str() {
                "type" => kind = Some(value.to_string()),
                "disabled" => {
                    disabled = frontend::parse_go_bool(value)
                        .with_context(|| format!("--attest {spec}: invalid value {key}={value}"))?;
                }
                _ => {
                    attrs.insert(key.to_string(), value.to_string());
                }
            }
        }
        match kind {
            Some(kind) if !kind.is_empty() => Ok(Attest {
                kind,
                disabled,
                attrs,
            }),
            _ => bail!("--attest {spec}: attestation type not specified"),
        }
    }

    /// buildx's shorthand: `--provenance true|false|ATTRS` is `--attest
    /// type=provenance,disabled=!BOOL` or `type=provenance,ATTRS`.
    pub fn shorthand(kind: &str, value: &str) -> anyhow::Result<Attest> {
        let spec = match frontend::parse_go_bool(value) {
            Some(b) => format!("type={kind},disabled={}", !b),
            None => format!("type={kind},{value}"),
        };
        Attest::parse(&spec).with_context(|| format!("--{kind} {value}"))
    }
}

/// The requests of the flags, one per type (the last given wins).
pub fn requests(
    attest: &[String],
    provenance: Option<&str>,
    sbom: Option<&str>,
) -> anyhow::Result<Vec<Attest>> {
    let mut all = attest
        .iter()
        .map(|s| Attest::parse(s))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if let Some(v) = provenance.filter(|v| !v.is_empty()) {
        all.push(Attest::shorthand("provenance", v)?);
    }
    if let Some(v) = sbom.filter(|v| !v.is_empty()) {
        all.push(Attest::shorthand("sbom", v)?);
    }
    let mut by_kind: Vec<Attest> = Vec::new();
    for a in all {
        match by_kind.iter_mut().find(|b| b.kind == a.kind) {
            Some(b) => *b = a,
            None => by_kind.push(a),
        }
    }
    Ok(by_kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buildx_forms() {
        let off = requests(&[], Some("false"), Some("0")).unwrap();
        assert!(off.iter().all(|a| a.disabled), "{off:?}");
        assert_eq!(off.len(), 2);
        let max = requests(&[], Some("mode=max"), None).unwrap();
        assert_eq!(max[0].kind, "provenance");
        assert!(!max[0].disabled);
        assert_eq!(max[0].attrs["mode"], "max");
        // The last of a type wins.
        let last = requests(&["type=provenance,mode=max".into()], Some("false"), None).unwrap();
        assert_eq!(last.len(), 1);
        assert!(last[0].disabled);
        assert!(Attest::parse("mode=max").is_err());
        assert!(Attest::parse("type=sbom,disabled=maybe").is_err());
        assert!(Attest::parse("type=sbom,novalue").is_err());
    }
}
