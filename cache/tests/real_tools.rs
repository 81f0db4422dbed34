//! Layers against real OCI tools: umoci makes an image from a busybox
//! rootfs and we unpack its layer; we write a layer and image into our store
//! (an OCI layout) and umoci unpacks it and skopeo copies it. Files, modes,
//! owners, links and xattrs must come out the same. Needs `umoci`, `skopeo`
//! and `busybox` (Debian's busybox-static), which .ci/run installs.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

use cache::blob::BlobStore;
use cache::layer::{DiffSource, LayerOptions, UnpackOptions, unpack, write_layer};
use cache::spec::{
    ContainerConfig, Descriptor, ImageConfig, Manifest, Platform, RootFs, media, to_canonical_json,
};

struct Tmp(PathBuf);

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn tmp(name: &str) -> Tmp {
    let p = std::env::temp_dir().join(format!("rbuild-tools-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&p);
    fs::create_dir_all(&p).unwrap();
    Tmp(p)
}

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (is it installed? .ci/run installs it)"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A busybox rootfs with the kinds of entries layers must carry.
fn busybox_rootfs(root: &Path) {
    for d in ["bin", "etc", "tmp", "usr/sbin"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    fs::copy("/bin/busybox", root.join("bin/busybox")).expect("busybox-static is installed");
    for applet in ["sh", "ls", "cat"] {
        symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
    )
    .unwrap();
    fs::hard_link(root.join("etc/passwd"), root.join("etc/passwd-link")).unwrap();
    fs::write(root.join("usr/sbin/suid"), "#!/bin/sh\n").unwrap();
    std::os::unix::fs::chown(root.join("usr/sbin/suid"), Some(1000), Some(1000)).unwrap();
    fs::set_permissions(
        root.join("usr/sbin/suid"),
        fs::Permissions::from_mode(0o4755),
    )
    .unwrap();
    fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
    // File capabilities (the one attribute layers keep): cap_net_raw.
    xattr::set(root.join("etc/passwd"), "security.capability", &CAP).unwrap();
}

const CAP: [u8; 20] = [
    1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
];

fn describe(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let m = fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let what = if m.is_file() {
                format!("{} bytes nlink={}", m.len(), m.nlink())
            } else if m.file_type().is_symlink() {
                format!("-> {}", fs::read_link(&p).unwrap().display())
            } else {
                String::new()
            };
            let xattr = if m.file_type().is_symlink() {
                None
            } else {
                xattr::get(&p, "security.capability").unwrap()
            };
            out.insert(
                rel,
                format!("{:o} {}:{} {what} {xattr:?}", m.mode(), m.uid(), m.gid()),
            );
            if m.is_dir() {
                walk(root, &p, out);
            }
        }
    }
    walk(root, root, &mut out);
    // The fixture really has what the comparison is about.
    assert!(
        out["usr/sbin/suid"].starts_with("104755 1000:1000"),
        "{out:?}"
    );
    assert!(
        out["etc/passwd"].contains("nlink=2")
            && out["etc/passwd"].contains(&format!("Some({:?})", CAP)),
        "{out:?}"
    );
    assert!(out["bin/sh"].contains("-> busybox"), "{out:?}");
    assert!(out["tmp"].starts_with("41777"), "{out:?}");
    out
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&fs::read(path).unwrap()).unwrap()
}

#[test]
fn layers_made_by_umoci_unpack_identically() {
    let t = tmp("umoci");
    let src = t.0.join("src");
    busybox_rootfs(&src);
    let layout = t.0.join("layout");
    let bundle = t.0.join("bundle");
    run(Command::new("umoci")
        .args(["init", "--layout"])
        .arg(&layout));
    run(Command::new("umoci")
        .args(["new", "--image"])
        .arg(format!("{}:base", layout.display())));
    run(Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:base", layout.display()))
        .arg(&bundle));
    run(Command::new("cp")
        .args(["-a"])
        .arg(format!("{}/.", src.display()))
        .arg(bundle.join("rootfs")));
    run(Command::new("umoci")
        .args(["repack", "--image"])
        .arg(format!("{}:base", layout.display()))
        .arg(&bundle));

    // Find the layer through index.json -> manifest.
    let index = json(&layout.join("index.json"));
    let manifest_digest = index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_string();
    let manifest = json(&layout.join("blobs/sha256").join(&manifest_digest));
    let layers = manifest["layers"].as_array().unwrap();
    let dest = t.0.join("ours");
    for l in layers {
        let hex = l["digest"].as_str().unwrap().trim_start_matches("sha256:");
        let file = fs::File::open(layout.join("blobs/sha256").join(hex)).unwrap();
        unpack(file, &dest, &UnpackOptions::default()).unwrap();
    }
    assert_eq!(describe(&src), describe(&dest));
}

#[test]
fn our_layers_are_read_by_umoci_and_skopeo() {
    let t = tmp("ours");
    let src = t.0.join("src");
    busybox_rootfs(&src);
    let layout = t.0.join("store");
    let store = BlobStore::open(&layout).unwrap();
    let layer = write_layer(
        &store,
        &DiffSource::Full { root: &src },
        &LayerOptions::default(),
    )
    .unwrap();
    let config = ImageConfig {
        created: Some("2024-01-01T00:00:00Z".into()),
        platform: Platform {
            architecture: "amd64".into(),
            os: "linux".into(),
            ..Platform::default()
        },
        config: ContainerConfig {
            cmd: Some(vec!["/bin/sh".into()]),
            ..ContainerConfig::default()
        },
        rootfs: RootFs {
            fs_type: "layers".into(),
            diff_ids: vec![layer.diff_id.to_string()],
        },
        ..ImageConfig::default()
    };
    let config_bytes = to_canonical_json(&config);
    let config_digest = store.put_bytes(&config_bytes).unwrap();
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(media::OCI_MANIFEST.into()),
        artifact_type: None,
        config: Descriptor::new(media::OCI_CONFIG, &config_digest, config_bytes.len() as u64),
        layers: vec![layer.descriptor.clone()],
        subject: None,
        annotations: None,
    };
    let manifest_bytes = to_canonical_json(&manifest);
    let manifest_digest = store.put_bytes(&manifest_bytes).unwrap();
    store
        .update_index(|idx| {
            let mut d = Descriptor::new(
                media::OCI_MANIFEST,
                &manifest_digest,
                manifest_bytes.len() as u64,
            );
            d.annotations = Some(
                [(
                    "org.opencontainers.image.ref.name".to_string(),
                    "test".to_string(),
                )]
                .into(),
            );
            idx.manifests.push(d);
        })
        .unwrap();

    let bundle = t.0.join("bundle");
    run(Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:test", layout.display()))
        .arg(&bundle));
    assert_eq!(describe(&src), describe(&bundle.join("rootfs")));

    // skopeo checks every digest while copying.
    let copied = t.0.join("copied");
    run(Command::new("skopeo")
        .args(["copy"])
        .arg(format!("oci:{}:test", layout.display()))
        .arg(format!("dir:{}", copied.display())));
    let out = Command::new("skopeo")
        .args(["inspect", "--config"])
        .arg(format!("oci:{}:test", layout.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let inspected: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        inspected["rootfs"]["diff_ids"][0],
        layer.diff_id.to_string()
    );
}
