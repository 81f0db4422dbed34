//! `RUN --mount=...` options, as BuildKit's `commands_runmount.go`: CSV
//! fields `key=value`, every type's options and defaults, and its errors.

use std::sync::OnceLock;

use regex::Regex;

use super::suggest;

/// What a mount provides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MountType {
    /// A directory of the context, a stage or an image (read-only by default).
    Bind,
    /// A persistent cache directory.
    Cache,
    /// An empty tmpfs.
    Tmpfs,
    /// A secret file (or env variable).
    Secret,
    /// An SSH agent socket.
    Ssh,
}

impl MountType {
    fn parse(s: &str) -> Option<MountType> {
        Some(match s {
            "bind" => MountType::Bind,
            "cache" => MountType::Cache,
            "tmpfs" => MountType::Tmpfs,
            "secret" => MountType::Secret,
            "ssh" => MountType::Ssh,
            _ => return None,
        })
    }

    /// The lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            MountType::Bind => "bind",
            MountType::Cache => "cache",
            MountType::Tmpfs => "tmpfs",
            MountType::Secret => "secret",
            MountType::Ssh => "ssh",
        }
    }
}

/// How concurrent builds share a cache mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Sharing {
    /// Everyone uses it at once (the default).
    Shared,
    /// Each concurrent user gets its own copy.
    Private,
    /// One user at a time.
    Locked,
}

/// One `--mount`, with BuildKit's defaults applied.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Mount {
    /// `type=` (default bind).
    pub mount_type: MountType,
    /// `from=`: a stage, named context or image.
    pub from: Option<String>,
    /// `source=`/`src=`.
    pub source: Option<String>,
    /// `target=`/`dst=`/`destination=`.
    pub target: Option<String>,
    /// `ro`/`readonly`; bind and secret/ssh default to read-only.
    pub read_only: bool,
    /// tmpfs `size=`, bytes.
    pub size_limit: Option<i64>,
    /// `id=`.
    pub id: Option<String>,
    /// cache `sharing=`.
    pub sharing: Option<Sharing>,
    /// secret/ssh `required`.
    pub required: bool,
    /// secret `env=`.
    pub env: Option<String>,
    /// `mode=` (octal).
    pub mode: Option<u32>,
    /// `uid=`.
    pub uid: Option<u32>,
    /// `gid=`.
    pub gid: Option<u32>,
}

impl Mount {
    /// Cache: `id` defaults to the target. Secret: `id` defaults to the
    /// target's base name and the target to `/run/secrets/<id>`. SSH: `id`
    /// defaults to `default`.
    pub fn effective_id(&self) -> Option<String> {
        if let Some(id) = &self.id {
            return Some(id.clone());
        }
        match self.mount_type {
            MountType::Cache => self.target.as_deref().map(crate::glob::clean),
            MountType::Secret => self
                .target
                .as_deref()
                .map(|t| t.rsplit('/').next().unwrap_or(t).to_string()),
            MountType::Ssh => Some("default".into()),
            _ => None,
        }
    }
}

/// docker/go-units `RAMInBytes`: `64m`, `1.5g`, `100` (binary multiples).
fn ram_in_bytes(s: &str) -> Option<i64> {
    static RE: OnceLock<Regex> = OnceLock::new();
    let re = RE.get_or_init(|| {
        Regex::new(r"^([0-9]+(?:\.[0-9]+)*) ?([kKmMgGtTpP])?[iI]?[bB]?$").expect("valid regex")
    });
    let caps = re.captures(s)?;
    let n: f64 = caps[1].parse().ok()?;
    let mult: f64 = match caps
        .get(2)
        .map(|m| m.as_str().to_ascii_lowercase())
        .as_deref()
    {
        None => 1.0,
        Some("k") => 1024.0,
        Some("m") => 1024f64.powi(2),
        Some("g") => 1024f64.powi(3),
        Some("t") => 1024f64.powi(4),
        Some("p") => 1024f64.powi(5),
        Some(_) => return None,
    };
    Some((n * mult) as i64)
}

const ALL_KEYS: [&str; 19] = [
    "type",
    "from",
    "source",
    "target",
    "readonly",
    "id",
    "sharing",
    "required",
    "size",
    "mode",
    "uid",
    "gid",
    "src",
    "dst",
    "destination",
    "ro",
    "rw",
    "readwrite",
    "env",
];

/// The check BuildKit runs when the instruction is parsed, before any
/// expansion: the CSV reads, and `from` uses no variables.
pub(crate) fn precheck(value: &str) -> Result<(), String> {
    let fields =
        crate::csv::fields(value).map_err(|e| format!("failed to parse csv mounts: {e}"))?;
    for field in fields {
        if let Some((key, value)) = field.split_once('=')
            && key.eq_ignore_ascii_case("from")
            && let Some(idx) = value.find('$')
            && idx != value.len() - 1
        {
            return Err(format!(
                "'{}' doesn't support variable expansion, define alias stage instead",
                key.to_lowercase()
            ));
        }
    }
    Ok(())
}

/// Parses one `--mount` value, expanding each value with `expand`.
pub fn parse_mount(
    value: &str,
    expand: &mut dyn FnMut(&str) -> Result<String, String>,
) -> Result<Mount, String> {
    let fields =
        crate::csv::fields(value).map_err(|e| format!("failed to parse csv mounts: {e}"))?;
    let mut m = Mount {
        mount_type: MountType::Bind,
        from: None,
        source: None,
        target: None,
        read_only: false,
        size_limit: None,
        id: None,
        sharing: None,
        required: false,
        env: None,
        mode: None,
        uid: None,
        gid: None,
    };
    let mut ro_auto = true;
    for field in &fields {
        let (key, value) = match field.split_once('=') {
            Some((k, v)) => (k.to_lowercase(), Some(v)),
            None => (field.to_lowercase(), None),
        };
        let Some(value) = value else {
            match key.as_str() {
                "readonly" | "ro" => {
                    m.read_only = true;
                    ro_auto = false;
                }
                "readwrite" | "rw" => {
                    m.read_only = false;
                    ro_auto = false;
                }
                "required" if matches!(m.mount_type, MountType::Secret | MountType::Ssh) => {
                    m.required = true;
                }
                "required" => {
                    return Err(format!(
                        "unexpected key '{key}' for mount type '{}'",
                        m.mount_type.as_str()
                    ));
                }
                _ => return Err(format!("invalid field '{field}' must be a key=value pair")),
            }
            continue;
        };
        let value = expand(value)?;
        let bad_value = || format!("invalid value for {key}: {value}");
        match key.as_str() {
            "type" => {
                m.mount_type = MountType::parse(&value.to_lowercase()).ok_or_else(|| {
                    suggest(
                        format!("unsupported mount type {}", crate::quote::go_quote(&value)),
                        &value,
                        &["bind", "cache", "tmpfs", "secret", "ssh"],
                        true,
                    )
                })?;
            }
            "from" => m.from = Some(value),
            "source" | "src" => m.source = Some(value),
            "target" | "dst" | "destination" => m.target = Some(value),
            "readonly" | "ro" => {
                m.read_only = crate::parse_go_bool(&value).ok_or_else(bad_value)?;
                ro_auto = false;
            }
            "readwrite" | "rw" => {
                m.read_only = !crate::parse_go_bool(&value).ok_or_else(bad_value)?;
                ro_auto = false;
            }
            "required" => {
                if !matches!(m.mount_type, MountType::Secret | MountType::Ssh) {
                    return Err(format!(
                        "unexpected key '{key}' for mount type '{}'",
                        m.mount_type.as_str()
                    ));
                }
                m.required = crate::parse_go_bool(&value).ok_or_else(bad_value)?;
            }
            "size" => {
                if m.mount_type != MountType::Tmpfs {
                    return Err(format!(
                        "unexpected key '{key}' for mount type '{}'",
                        m.mount_type.as_str()
                    ));
                }
                m.size_limit = Some(ram_in_bytes(&value).ok_or_else(bad_value)?);
            }
            "id" => m.id = Some(value),
            "sharing" => {
                m.sharing = Some(match value.to_lowercase().as_str() {
                    "shared" => Sharing::Shared,
                    "private" => Sharing::Private,
                    "locked" => Sharing::Locked,
                    _ => {
                        return Err(suggest(
                            format!(
                                "unsupported sharing value {}",
                                crate::quote::go_quote(&value)
                            ),
                            &value,
                            &["shared", "private", "locked"],
                            true,
                        ));
                    }
                });
            }
            "mode" => {
                let mode = u32::from_str_radix(&value, 8)
                    .map_err(|_| format!("invalid value {value} for mode"))?;
                m.mode = Some(mode);
            }
            "uid" => {
                m.uid = Some(
                    value
                        .parse()
                        .map_err(|_| format!("invalid value {value} for uid"))?,
                )
            }
            "gid" => {
                m.gid = Some(
                    value
                        .parse()
                        .map_err(|_| format!("invalid value {value} for gid"))?,
                )
            }
            "env" => m.env = Some(value),
            _ => {
                return Err(suggest(
                    format!("unexpected key '{key}' in '{field}'"),
                    &key,
                    &ALL_KEYS,
                    true,
                ));
            }
        }
    }

    let file_info_allowed = matches!(
        m.mount_type,
        MountType::Secret | MountType::Ssh | MountType::Cache
    );
    if !file_info_allowed {
        let t = m.mount_type.as_str();
        if m.mode.is_some() {
            return Err(format!("mode not allowed for \"{t}\" type mounts"));
        }
        if m.uid.is_some() {
            return Err(format!("uid not allowed for \"{t}\" type mounts"));
        }
        if m.gid.is_some() {
            return Err(format!("gid not allowed for \"{t}\" type mounts"));
        }
    }
    if ro_auto {
        m.read_only = !matches!(m.mount_type, MountType::Cache | MountType::Tmpfs);
    }
    if m.mount_type == MountType::Secret {
        if m.from.is_some() {
            return Err("secret mount should not have a from".into());
        }
        if m.sharing.is_some() {
            return Err("secret mount should not define sharing".into());
        }
        if m.source.is_none() && m.target.is_none() && m.id.is_none() {
            return Err("invalid secret mount. one of source, target required".into());
        }
        if m.source.is_some() && m.id.is_some() {
            return Err("both source and id can't be set".into());
        }
    }
    if m.sharing.is_some() && m.mount_type != MountType::Cache {
        return Err(format!(
            "invalid cache sharing set for {} mount",
            m.mount_type.as_str()
        ));
    }
    if m.mount_type == MountType::Secret && m.target.is_none() && m.env.is_none() {
        let id = m
            .effective_id()
            .or_else(|| m.source.clone())
            .unwrap_or_default();
        m.target = Some(format!("/run/secrets/{id}"));
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Mount, String> {
        parse_mount(s, &mut |v| Ok(v.to_string()))
    }

    #[test]
    fn defaults() {
        let m = parse("target=/src").unwrap();
        assert_eq!((m.mount_type, m.read_only), (MountType::Bind, true));
        let m = parse("type=cache,target=/root/.cache,sharing=locked").unwrap();
        assert_eq!((m.read_only, m.sharing), (false, Some(Sharing::Locked)));
        assert_eq!(m.effective_id().as_deref(), Some("/root/.cache"));
        let m = parse("type=secret,id=tok").unwrap();
        assert_eq!(m.target.as_deref(), Some("/run/secrets/tok"));
        let m = parse("type=tmpfs,target=/t,size=64m").unwrap();
        assert_eq!(m.size_limit, Some(64 << 20));
        let m = parse("type=ssh,required").unwrap();
        assert!(m.required && m.read_only);
        assert_eq!(m.effective_id().as_deref(), Some("default"));
    }

    #[test]
    fn errors_as_buildkit() {
        assert_eq!(
            parse("type=bnd").unwrap_err(),
            "unsupported mount type \"bnd\" (did you mean bind?)"
        );
        assert_eq!(
            parse("target=/x,mode=0700").unwrap_err(),
            "mode not allowed for \"bind\" type mounts"
        );
        assert_eq!(
            parse("type=cache,foo=bar").unwrap_err(),
            "unexpected key 'foo' in 'foo=bar' (did you mean from?)"
        );
        assert_eq!(
            parse("type=cache,zzzzz=bar").unwrap_err(),
            "unexpected key 'zzzzz' in 'zzzzz=bar'"
        );
        assert_eq!(
            parse("type=cache,required").unwrap_err(),
            "unexpected key 'required' for mount type 'cache'"
        );
        assert_eq!(
            parse("type=secret").unwrap_err(),
            "invalid secret mount. one of source, target required"
        );
        assert_eq!(
            parse("type=bind,sharing=locked").unwrap_err(),
            "invalid cache sharing set for bind mount"
        );
        assert_eq!(
            precheck("from=$X,target=/a").unwrap_err(),
            "'from' doesn't support variable expansion, define alias stage instead"
        );
        assert!(precheck("from=a$,target=/a").is_ok());
    }
}
