//! The sandbox's `/etc/hosts` and `/etc/resolv.conf`: their contents as
//! BuildKit makes them, and the files bound into each step, one per
//! distinct content for a whole build.

use std::fs;
use std::io;

use super::Network;
use crate::tempdir::TempDir;

/// The `/etc/hosts` BuildKit gives a build container.
pub fn default_hosts(hostname: &str) -> String {
    format!("127.0.0.1\tlocalhost {hostname}\n::1\tlocalhost ip6-localhost ip6-loopback\n")
}

/// `/etc/hosts` with `extra` entries after BuildKit's two lines, one
/// `IP<TAB>HOST` line each, in the order given (BuildKit's makeHostsFile).
pub fn hosts_file(hostname: &str, extra: &[frontend::hosts::ExtraHost]) -> String {
    let mut hosts = default_hosts(hostname);
    for entry in extra {
        hosts.push_str(&format!("{entry}\n"));
    }
    hosts
}

/// `/etc/resolv.conf` for the sandbox: the host's, without loopback
/// nameservers (which would not answer inside a network namespace), or
/// public resolvers when nothing is left, as BuildKit does.
pub fn resolv_conf(host: &str, network: Network) -> String {
    let mut out = String::new();
    let mut servers = 0;
    for line in host.lines() {
        let t = line.trim();
        if let Some(ns) = t.strip_prefix("nameserver") {
            let ns = ns.trim();
            let loopback = ns.starts_with("127.") || ns == "::1";
            // Only the host network shares the host's loopback.
            if loopback && network == Network::None {
                continue;
            }
            servers += 1;
        }
        out.push_str(line);
        out.push('\n');
    }
    if servers == 0 {
        out.push_str("nameserver 8.8.8.8\nnameserver 8.8.4.4\n");
    }
    out
}

/// The `/etc/hosts` and `/etc/resolv.conf` files runs bind in (read-only),
/// a directory per distinct pair of contents, kept as long as the runtime
/// that owns this (one build): writing and removing them around every RUN
/// cost a directory, two files and their removal each time.
#[derive(Default)]
pub(crate) struct EtcFiles(std::sync::Mutex<Vec<(String, String, std::sync::Arc<TempDir>)>>);

impl std::fmt::Debug for EtcFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EtcFiles")
    }
}

impl EtcFiles {
    /// The directory holding `hosts` and `resolv.conf` with these contents.
    pub(super) fn get(
        &self,
        hosts: &str,
        resolv_conf: &str,
    ) -> io::Result<std::sync::Arc<TempDir>> {
        let mut dirs = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((.., dir)) = dirs.iter().find(|(h, r, _)| h == hosts && r == resolv_conf) {
            return Ok(dir.clone());
        }
        let dir = TempDir::new("etc")?;
        fs::write(dir.path.join("hosts"), hosts)?;
        fs::write(dir.path.join("resolv.conf"), resolv_conf)?;
        let dir = std::sync::Arc::new(dir);
        dirs.push((hosts.to_string(), resolv_conf.to_string(), dir.clone()));
        Ok(dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etc_files_are_shared_by_content_and_removed_with_their_owner() {
        let etc = EtcFiles::default();
        let a = etc.get("hosts a\n", "nameserver 192.0.2.1\n").unwrap();
        let again = etc.get("hosts a\n", "nameserver 192.0.2.1\n").unwrap();
        let b = etc.get("hosts a\n", "nameserver 192.0.2.2\n").unwrap();
        assert_eq!(a.path, again.path);
        assert_ne!(a.path, b.path);
        assert_eq!(
            fs::read_to_string(b.path.join("resolv.conf")).unwrap(),
            "nameserver 192.0.2.2\n"
        );
        assert_eq!(
            fs::read_to_string(a.path.join("hosts")).unwrap(),
            "hosts a\n"
        );
        let paths = [a.path.clone(), b.path.clone()];
        drop((a, again, b, etc));
        for p in paths {
            assert!(!p.exists(), "{} left behind", p.display());
        }
    }
}
