//! `USER` resolution against a root filesystem's `/etc/passwd` and
//! `/etc/group`: `name`, `uid`, `name:group`, `uid:gid`. Without a group,
//! the user's primary group and the groups that list the user apply. The
//! primary group always leads the supplementary groups (CVE-2023-25173).
//! File operations resolve an owner by other rules ([`file_owner`]).
//! The files are read inside the root: a symlinked `/etc/passwd` resolves
//! there, never on the host.

use std::path::Path;

/// A resolved user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Supplementary groups.
    pub additional_gids: Vec<u32>,
    /// Home directory (for `HOME`), `/` when unknown.
    pub home: String,
}

struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

/// The name of user `uid` in `rootfs`'s `/etc/passwd`, if it has one.
pub fn name_of(rootfs: &Path, uid: u32) -> Option<String> {
    passwd(rootfs)
        .into_iter()
        .find(|e| e.uid == uid)
        .map(|e| e.name)
}

/// `rel` (`etc/passwd`) of `rootfs`, read with its symlinks resolved
/// inside the root; empty when it is not there.
fn read_in_root(rootfs: &Path, rel: &str) -> String {
    let path = cache::layer::resolve_in_root(rootfs, Path::new(rel), true);
    std::fs::read_to_string(path).unwrap_or_default()
}

fn passwd(rootfs: &Path) -> Vec<PasswdEntry> {
    let text = read_in_root(rootfs, "etc/passwd");
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 7 {
                return None;
            }
            Some(PasswdEntry {
                name: f[0].to_string(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                home: f[5].to_string(),
            })
        })
        .collect()
}

fn groups(rootfs: &Path) -> Vec<(String, u32, Vec<String>)> {
    let text = read_in_root(rootfs, "etc/group");
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 4 {
                return None;
            }
            let members = f[3]
                .split(',')
                .filter(|m| !m.is_empty())
                .map(str::to_string)
                .collect();
            Some((f[0].to_string(), f[2].parse().ok()?, members))
        })
        .collect()
}

/// The owner a file operation gives (`COPY`/`ADD --chown=spec`, the
/// directories `WORKDIR` makes under `USER spec`), resolved in `rootfs` as
/// BuildKit's ChownOpt is, which is not as RUN's user: an id stands for
/// its group too (`1000` is 1000:1000 whatever passwd says), `root` is 0;
/// a user name gives its passwd entry's uid and primary group, a group
/// name its gid. A name that is not there (or no file) is 0 for a user
/// and leaves the user's group for a group, without an error.
pub fn file_owner(rootfs: &Path, spec: &str) -> (u32, u32) {
    // Go's ParseInt(s, 10, 32), and "root"; a negative id wraps as it
    // does when BuildKit passes it to chown.
    let id = |s: &str| -> Option<u32> {
        if s == "root" {
            return Some(0);
        }
        s.parse::<i32>().ok().map(|n| n as u32)
    };
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let (uid, mut gid) = match id(user) {
        Some(n) => (n, n),
        None => passwd(rootfs)
            .into_iter()
            .find(|e| e.name == user)
            .map_or((0, 0), |e| (e.uid, e.gid)),
    };
    if let Some(g) = group {
        match id(g) {
            Some(n) => gid = n,
            None => {
                if let Some((_, n, _)) = groups(rootfs).into_iter().find(|(name, ..)| name == g) {
                    gid = n;
                }
            }
        }
    }
    (uid, gid)
}

/// Resolves `spec` (empty means root) in `rootfs`.
pub fn resolve(rootfs: &Path, spec: &str) -> Result<User, String> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let user = if user.is_empty() { "0" } else { user };
    let entries = passwd(rootfs);
    let entry = match user.parse::<u32>() {
        Ok(uid) => entries.iter().find(|e| e.uid == uid),
        Err(_) => Some(entries.iter().find(|e| e.name == user).ok_or_else(|| {
            format!("unable to find user {user}: no matching entries in passwd file")
        })?),
    };
    let uid = match entry {
        Some(e) => e.uid,
        None => user.parse().expect("numeric, or found above"),
    };
    let name = entry.map(|e| e.name.clone());
    // runc looks HOME up by uid (the first entry with it), else "/".
    let home = entries
        .iter()
        .find(|e| e.uid == uid)
        .map_or_else(|| "/".to_string(), |e| e.home.clone());
    let all_groups = groups(rootfs);
    match group {
        Some(g) => {
            let gid = match g.parse::<u32>() {
                Ok(gid) => gid,
                Err(_) => all_groups
                    .iter()
                    .find(|(n, _, _)| n == g)
                    .map(|(_, gid, _)| *gid)
                    .ok_or_else(|| {
                        format!("unable to find group {g}: no matching entries in group file")
                    })?,
            };
            Ok(User {
                uid,
                gid,
                additional_gids: vec![gid],
                home,
            })
        }
        None => {
            let gid = entry.map_or(0, |e| e.gid);
            let mut additional: Vec<u32> = match &name {
                Some(n) => all_groups
                    .iter()
                    .filter(|(_, gid2, members)| members.contains(n) && *gid2 != gid)
                    .map(|(_, g, _)| *g)
                    .collect(),
                None => Vec::new(),
            };
            additional.sort_unstable();
            additional.dedup();
            // The primary group is a supplementary group too
            // (CVE-2023-25173, as containerd and BuildKit).
            additional.insert(0, gid);
            Ok(User {
                uid,
                gid,
                additional_gids: additional,
                home,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A root with root and app (1000, primary group 1001) in passwd and
    /// `group` as its group file.
    fn fake_root(name: &str, group: &str) -> std::path::PathBuf {
        let root = std::env::temp_dir().join(format!("rbuild-{name}-{}", std::process::id()));
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(
            root.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(root.join("etc/group"), group).unwrap();
        root
    }

    /// BuildKit's ChownOpt rules, as Docker's BuildKit gave them for the
    /// same passwd and group (app is 1000 with primary group 1001).
    #[test]
    fn file_owners_as_buildkit_resolves_them() {
        let root = fake_root("owner", "root:x:0:\napp:x:1001:\ngrp:x:2000:\n");
        for (spec, want) in [
            ("1000", (1000, 1000)),
            ("app", (1000, 1001)),
            ("app:grp", (1000, 2000)),
            ("1000:grp", (1000, 2000)),
            ("app:nosuchgrp", (1000, 1001)),
            ("root:1", (0, 1)),
            ("nosuch", (0, 0)),
            (":grp", (0, 2000)),
            ("nosuch:grp", (0, 2000)),
            ("5:6", (5, 6)),
        ] {
            assert_eq!(file_owner(&root, spec), want, "{spec}");
        }
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn resolves_names_ids_and_groups() {
        let root = fake_root(
            "user",
            "root:x:0:\napp:x:1001:\nwheel:x:10:app\ndocker:x:999:app,other\n",
        );
        assert_eq!(
            resolve(&root, "").unwrap(),
            User {
                uid: 0,
                gid: 0,
                additional_gids: vec![0],
                home: "/root".into()
            }
        );
        assert_eq!(
            resolve(&root, "app").unwrap(),
            User {
                uid: 1000,
                gid: 1001,
                additional_gids: vec![1001, 10, 999],
                home: "/home/app".into()
            }
        );
        assert_eq!(resolve(&root, "app:wheel").unwrap().gid, 10);
        assert_eq!(
            resolve(&root, "1000:5").unwrap(),
            User {
                uid: 1000,
                gid: 5,
                additional_gids: vec![5],
                home: "/home/app".into()
            }
        );
        assert_eq!(
            resolve(&root, "4242").unwrap(),
            User {
                uid: 4242,
                gid: 0,
                additional_gids: vec![0],
                home: "/".into()
            }
        );
        assert_eq!(
            resolve(&root, "nobody").unwrap_err(),
            "unable to find user nobody: no matching entries in passwd file"
        );
        assert!(
            resolve(&root, "app:nogroup")
                .unwrap_err()
                .contains("unable to find group nogroup")
        );
        std::fs::remove_dir_all(&root).unwrap();
    }
}
