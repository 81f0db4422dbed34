//! Image-spec types (OCI image spec and Docker image manifest v2 schema 2)
//! with deterministic JSON: struct fields in the order Go writes them, maps
//! as `BTreeMap`, and unknown fields kept (`extra`) so a base image's config
//! survives a round trip. `oci-spec`'s types drop `Healthcheck`, `OnBuild`,
//! `Shell` and `ArgsEscaped` and serialise maps in random order, which a
//! content-addressed store cannot have.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// OCI media types.
pub mod media {
    /// `oci-layout` version.
    pub const OCI_LAYOUT_VERSION: &str = "1.0.0";
    /// OCI image index.
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    /// OCI image manifest.
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    /// OCI image config.
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    /// OCI layer, uncompressed.
    pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
    /// OCI layer, gzip.
    pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    /// OCI layer, zstd.
    pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
    /// Docker manifest list.
    pub const DOCKER_MANIFEST_LIST: &str =
        "application/vnd.docker.distribution.manifest.list.v2+json";
    /// Docker manifest v2 schema 2.
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    /// Docker image config.
    pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
    /// Docker layer (gzip).
    pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
    /// Docker layer, uncompressed.
    pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
    /// Docker layer, zstd (as BuildKit writes it).
    pub const DOCKER_LAYER_ZSTD: &str = "application/vnd.docker.image.rootfs.diff.tar.zstd";
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// A platform as it appears in descriptors and configs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    /// `amd64`.
    pub architecture: String,
    /// `linux`.
    pub os: String,
    /// `os.version`.
    #[serde(
        rename = "os.version",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub os_version: Option<String>,
    /// `os.features`.
    #[serde(
        rename = "os.features",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub os_features: Option<Vec<String>>,
    /// `variant`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

/// A content descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Descriptor {
    /// What the blob is.
    #[serde(rename = "mediaType")]
    pub media_type: String,
    /// Its digest (`sha256:...`).
    pub digest: String,
    /// Its size in bytes.
    pub size: u64,
    /// Alternative locations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urls: Option<Vec<String>>,
    /// Annotations (sorted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    /// Embedded data (base64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    /// Platform of a manifest in an index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    /// Artifact type.
    #[serde(
        rename = "artifactType",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub artifact_type: Option<String>,
}

impl Descriptor {
    /// A descriptor with no optional fields.
    pub fn new(media_type: &str, digest: &crate::Digest, size: u64) -> Descriptor {
        Descriptor {
            media_type: media_type.to_string(),
            digest: digest.to_string(),
            size,
            urls: None,
            annotations: None,
            data: None,
            platform: None,
            artifact_type: None,
        }
    }
}

/// An image manifest (OCI or Docker v2s2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always 2.
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    /// OCI or Docker manifest type.
    #[serde(rename = "mediaType", default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// Artifact type.
    #[serde(
        rename = "artifactType",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub artifact_type: Option<String>,
    /// The config blob.
    pub config: Descriptor,
    /// Layers, bottom first.
    pub layers: Vec<Descriptor>,
    /// Subject (referrers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Descriptor>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// An image index (OCI) or manifest list (Docker).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Index {
    /// Always 2.
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    /// Index or manifest-list type.
    #[serde(rename = "mediaType", default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The manifests.
    pub manifests: Vec<Descriptor>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

impl Default for Index {
    fn default() -> Index {
        Index {
            schema_version: 2,
            media_type: Some(media::OCI_INDEX.to_string()),
            manifests: Vec::new(),
            annotations: None,
        }
    }
}

/// HEALTHCHECK in a config; durations in nanoseconds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthConfig {
    /// `["NONE"]`, `["CMD", ...]` or `["CMD-SHELL", "..."]`.
    #[serde(rename = "Test", default, skip_serializing_if = "Option::is_none")]
    pub test: Option<Vec<String>>,
    /// Interval.
    #[serde(rename = "Interval", default, skip_serializing_if = "is_zero")]
    pub interval: i64,
    /// Timeout.
    #[serde(rename = "Timeout", default, skip_serializing_if = "is_zero")]
    pub timeout: i64,
    /// Start period.
    #[serde(rename = "StartPeriod", default, skip_serializing_if = "is_zero")]
    pub start_period: i64,
    /// Start interval.
    #[serde(rename = "StartInterval", default, skip_serializing_if = "is_zero")]
    pub start_interval: i64,
    /// Retries.
    #[serde(rename = "Retries", default, skip_serializing_if = "is_zero_i32")]
    pub retries: i32,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

fn is_zero_i32(v: &i32) -> bool {
    *v == 0
}

/// The runtime part of an image config, with every field Docker and
/// BuildKit write, in Go's order. Unknown fields are kept in `extra`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerConfig {
    /// `User`.
    #[serde(rename = "User", default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// `ExposedPorts`: `"80/tcp": {}`.
    #[serde(
        rename = "ExposedPorts",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub exposed_ports: Option<BTreeMap<String, Value>>,
    /// `Env`: `KEY=VALUE`.
    #[serde(rename = "Env", default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    /// `Entrypoint`.
    #[serde(
        rename = "Entrypoint",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub entrypoint: Option<Vec<String>>,
    /// `Cmd`.
    #[serde(rename = "Cmd", default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    /// `Volumes`: `"/data": {}`.
    #[serde(rename = "Volumes", default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<BTreeMap<String, Value>>,
    /// `WorkingDir`.
    #[serde(
        rename = "WorkingDir",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub working_dir: Option<String>,
    /// `Labels`.
    #[serde(rename = "Labels", default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    /// `StopSignal`.
    #[serde(
        rename = "StopSignal",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub stop_signal: Option<String>,
    /// `ArgsEscaped` (Windows shell-form quirk BuildKit still sets).
    #[serde(rename = "ArgsEscaped", default, skip_serializing_if = "is_false")]
    pub args_escaped: bool,
    /// `Healthcheck`.
    #[serde(
        rename = "Healthcheck",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub healthcheck: Option<HealthConfig>,
    /// `OnBuild` triggers.
    #[serde(rename = "OnBuild", default, skip_serializing_if = "Option::is_none")]
    pub on_build: Option<Vec<String>>,
    /// `Shell`.
    #[serde(rename = "Shell", default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<Vec<String>>,
    /// Any other field (Docker's Hostname, Tty, ...), kept as read.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// `rootfs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootFs {
    /// Always `layers`.
    #[serde(rename = "type")]
    pub fs_type: String,
    /// Uncompressed layer digests, bottom first.
    pub diff_ids: Vec<String>,
}

impl Default for RootFs {
    fn default() -> RootFs {
        RootFs {
            fs_type: "layers".into(),
            diff_ids: Vec::new(),
        }
    }
}

/// One history entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    /// RFC 3339 time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// The instruction, as BuildKit words it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    /// Author.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// Comment (`buildkit.dockerfile.v0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// No layer for this step.
    #[serde(default, skip_serializing_if = "is_false")]
    pub empty_layer: bool,
}

/// An image config blob.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// RFC 3339 creation time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// Author (MAINTAINER).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// Platform fields, inline as Go writes them.
    #[serde(flatten)]
    pub platform: Platform,
    /// Runtime config.
    #[serde(default)]
    pub config: ContainerConfig,
    /// Layers.
    #[serde(default)]
    pub rootfs: RootFs,
    /// History.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<History>,
    /// Any other top-level field, kept as read.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// Deterministic JSON bytes of a spec value (compact, fixed field order).
pub fn to_canonical_json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("spec types always serialise")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_round_trips_every_docker_field() {
        let raw = r#"{"created":"2024-01-01T00:00:00Z","architecture":"amd64","os":"linux","config":{"User":"app","ExposedPorts":{"80/tcp":{}},"Env":["PATH=/bin"],"Entrypoint":["/e"],"Cmd":["c"],"Volumes":{"/data":{}},"WorkingDir":"/w","Labels":{"b":"2","a":"1"},"StopSignal":"SIGTERM","ArgsEscaped":true,"Healthcheck":{"Test":["CMD-SHELL","true"],"Interval":30000000000,"Retries":3},"OnBuild":["RUN x"],"Shell":["/bin/bash","-c"],"Hostname":"h","Tty":false},"rootfs":{"type":"layers","diff_ids":["sha256:00"]},"history":[{"created_by":"RUN x","empty_layer":true}],"container":"abc","moby.buildkit.buildinfo.v1":"e30="}"#;
        let cfg: ImageConfig = serde_json::from_str(raw).unwrap();
        assert_eq!(cfg.config.healthcheck.as_ref().unwrap().retries, 3);
        assert_eq!(
            cfg.config.shell.as_deref(),
            Some(&["/bin/bash".to_string(), "-c".to_string()][..])
        );
        assert!(cfg.config.args_escaped);
        assert_eq!(cfg.config.extra["Hostname"], "h");
        assert_eq!(cfg.extra["moby.buildkit.buildinfo.v1"], "e30=");
        let out = to_canonical_json(&cfg);
        let again: ImageConfig = serde_json::from_slice(&out).unwrap();
        assert_eq!(again, cfg);
        // Same bytes every time, labels sorted.
        assert_eq!(to_canonical_json(&again), out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains(r#""Labels":{"a":"1","b":"2"}"#), "{text}");
        assert!(text.starts_with(r#"{"created":"2024-01-01T00:00:00Z","architecture":"amd64","os":"linux","config":{"User":"app""#), "{text}");
    }

    #[test]
    fn manifest_and_index() {
        let d = Descriptor::new(
            media::OCI_CONFIG,
            &format!("sha256:{}", "a".repeat(64)).parse().unwrap(),
            7,
        );
        let m = Manifest {
            schema_version: 2,
            media_type: Some(media::OCI_MANIFEST.into()),
            artifact_type: None,
            config: d.clone(),
            layers: vec![],
            subject: None,
            annotations: None,
        };
        let text = String::from_utf8(to_canonical_json(&m)).unwrap();
        assert_eq!(
            text,
            format!(
                r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"{}","digest":"sha256:{}","size":7}},"layers":[]}}"#,
                media::OCI_MANIFEST,
                media::OCI_CONFIG,
                "a".repeat(64)
            )
        );
        let idx: Index =
            serde_json::from_str(&String::from_utf8(to_canonical_json(&Index::default())).unwrap())
                .unwrap();
        assert_eq!(idx, Index::default());
    }
}
