//! What `# check=skip=A,B;error=true;experimental=C` (the directive, the
//! `BUILDKIT_DOCKERFILE_CHECK` build arg, or a comment right above one
//! instruction) turns on and off, as BuildKit's `linter.ParseLintOptions`.

use std::collections::BTreeSet;

use super::rules::Rule;

/// The checks' settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckConfig {
    /// `skip=all`
    pub skip_all: bool,
    /// `skip=A,B`
    pub skip: BTreeSet<String>,
    /// `experimental=all`
    pub experimental_all: bool,
    /// `experimental=A,B`
    pub experimental: BTreeSet<String>,
    /// `error=true`: a finding fails the build.
    pub error: bool,
}

/// A `check=` value that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("failed to parse check options: {0}")]
pub struct ConfigError(pub String);

impl CheckConfig {
    /// Parses `skip=...;error=...;experimental=...` (at most three parts).
    pub fn parse(text: &str) -> Result<CheckConfig, ConfigError> {
        let mut config = CheckConfig::default();
        let text = text.trim();
        if text.is_empty() {
            return Ok(config);
        }
        let list =
            |v: &str| -> BTreeSet<String> { v.split(',').map(|r| r.trim().to_string()).collect() };
        // Go's SplitN(s, ";", 3): the third part keeps any later `;`.
        for part in text.splitn(3, ';') {
            let Some((k, v)) = part.split_once('=') else {
                return Err(ConfigError(format!("invalid check option {part:?}")));
            };
            let v = v.trim();
            match k.trim() {
                "skip" if v == "all" => config.skip_all = true,
                "skip" => config.skip = list(v),
                "experimental" if v == "all" => config.experimental_all = true,
                "experimental" => config.experimental = list(v),
                "error" => {
                    config.error = crate::parse_go_bool(v).ok_or_else(|| {
                        ConfigError(format!("invalid boolean {v:?} in check option {part:?}"))
                    })?;
                }
                other => return Err(ConfigError(format!("invalid check option {other:?}"))),
            }
        }
        Ok(config)
    }

    /// This config with `other`'s skips and experimental rules added (a
    /// comment can silence a rule for one instruction, never turn one on
    /// that the file silenced).
    pub fn merged(&self, other: &CheckConfig) -> CheckConfig {
        let mut out = self.clone();
        out.skip_all |= other.skip_all;
        out.skip.extend(other.skip.iter().cloned());
        out.experimental_all |= other.experimental_all;
        out.experimental.extend(other.experimental.iter().cloned());
        out
    }

    /// With the first `check=` comment of `comments` merged in (a comment
    /// that does not parse changes nothing).
    pub fn with_comments(&self, comments: &[String]) -> CheckConfig {
        for c in comments {
            let Some((name, value)) = c.split_once('=') else {
                continue;
            };
            if !name.trim().eq_ignore_ascii_case("check") {
                continue;
            }
            let value = value.trim().split(' ').next().unwrap_or("");
            return match CheckConfig::parse(value) {
                Ok(other) => self.merged(&other),
                Err(_) => self.clone(),
            };
        }
        self.clone()
    }

    /// Whether `rule` reports under this config.
    pub fn enabled(&self, rule: &Rule) -> bool {
        if rule.experimental {
            self.experimental_all || self.experimental.contains(rule.name)
        } else {
            !self.skip_all && !self.skip.contains(rule.name)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lint::rules;

    #[test]
    fn parses_buildkit_forms() {
        let c = CheckConfig::parse("skip=JSONArgsRecommended, StageNameCasing;error=true").unwrap();
        assert!(c.error);
        assert!(!c.enabled(&rules::JSON_ARGS_RECOMMENDED));
        assert!(!c.enabled(&rules::STAGE_NAME_CASING));
        assert!(c.enabled(&rules::FROM_AS_CASING));
        assert!(!c.enabled(&rules::INVALID_DEFINITION_DESCRIPTION));
        let c = CheckConfig::parse("skip=all;experimental=all").unwrap();
        assert!(!c.enabled(&rules::FROM_AS_CASING));
        assert!(c.enabled(&rules::INVALID_DEFINITION_DESCRIPTION));
        assert!(CheckConfig::parse("error=maybe").is_err());
        assert!(CheckConfig::parse("skip").is_err());
        assert!(CheckConfig::parse("sikp=all").is_err());
        assert_eq!(CheckConfig::parse("  ").unwrap(), CheckConfig::default());
    }

    #[test]
    fn comments_add_skips_only() {
        let file = CheckConfig::parse("skip=FromAsCasing").unwrap();
        let c = file.with_comments(&["check=skip=UndefinedVar more words".into()]);
        assert!(!c.enabled(&rules::UNDEFINED_VAR));
        assert!(!c.enabled(&rules::FROM_AS_CASING));
        let c = file.with_comments(&["just a comment".into(), "check=bad".into()]);
        assert_eq!(c, file);
    }
}
