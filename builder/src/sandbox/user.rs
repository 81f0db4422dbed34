//! `USER` resolution against a root filesystem's `/etc/passwd` and
//! `/etc/group`: `name`, `uid`, `name:group`, `uid:gid`. Without a group,
//! the user's primary group and the groups that list the user apply. The
//! primary group always leads the supplementary groups (CVE-2023-25173).

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

fn passwd(rootfs: &Path) -> Vec<PasswdEntry> {
    let text = std::fs::read_to_string(rootfs.join("etc/passwd")).unwrap_or_default();
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
    let text = std::fs::read_to_string(rootfs.join("etc/group")).unwrap_or_default();
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

    #[test]
    fn resolves_names_ids_and_groups() {
        let root = std::env::temp_dir().join(format!("rbuild-user-{}", std::process::id()));
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(
            root.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(
            root.join("etc/group"),
            "root:x:0:\napp:x:1001:\nwheel:x:10:app\ndocker:x:999:app,other\n",
        )
        .unwrap();
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
