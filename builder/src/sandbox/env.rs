//! The environment a step's process starts with, as BuildKit's exec op and
//! runc make it: the stage's Env, the proxy build args, BuildKit's default
//! `PATH` when none is set, the secrets' variables; then runc's rules (the
//! last of a repeated name wins, an empty `HOME` is dropped, and a missing
//! `HOME` comes from the user's `/etc/passwd` entry, else `/`).

/// BuildKit's `system.DefaultPathEnv` for Linux.
pub const DEFAULT_PATH: &str = frontend::stage::DEFAULT_PATH;

/// The process environment of a step. `home` is the user's home directory
/// from the root's `/etc/passwd` (`/` when the user has no entry).
pub fn process_env(
    config: &[String],
    proxy: &[(String, String)],
    secrets: Vec<String>,
    home: &str,
) -> Vec<String> {
    let mut env: Vec<String> = config.to_vec();
    env.extend(proxy.iter().map(|(k, v)| format!("{k}={v}")));
    // BuildKit's addDefaultEnvvar, before the secrets are added.
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.push(format!("PATH={DEFAULT_PATH}"));
    }
    env.extend(secrets);
    // runc's prepareEnv: keep the last of each name, in the order of those
    // last occurrences; an empty HOME counts as unset.
    let mut seen = std::collections::HashSet::new();
    let mut out: Vec<String> = Vec::with_capacity(env.len() + 1);
    for kv in env.into_iter().rev() {
        let Some((key, value)) = kv.split_once('=') else {
            continue;
        };
        if key.is_empty() || !seen.insert(key.to_string()) {
            continue;
        }
        if key == "HOME" && value.is_empty() {
            continue;
        }
        out.push(kv);
    }
    out.reverse();
    if !out.iter().any(|e| e.starts_with("HOME=")) {
        out.push(format!("HOME={home}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn default_path_and_home() {
        assert_eq!(
            process_env(&[], &[], Vec::new(), "/root"),
            strings(&[&format!("PATH={DEFAULT_PATH}"), "HOME=/root"])
        );
        // The stage's own PATH and HOME are kept; an empty HOME is replaced.
        assert_eq!(
            process_env(&strings(&["PATH=/bin", "HOME="]), &[], Vec::new(), "/"),
            strings(&["PATH=/bin", "HOME=/"])
        );
        assert_eq!(
            process_env(&strings(&["HOME=/srv", "A=1"]), &[], Vec::new(), "/root"),
            strings(&["HOME=/srv", "A=1", &format!("PATH={DEFAULT_PATH}")])
        );
    }

    #[test]
    fn the_last_of_a_name_wins() {
        let env = process_env(
            &strings(&["A=1", "PATH=/bin", "B=2"]),
            &[("http_proxy".into(), "http://p".into())],
            strings(&["A=secret"]),
            "/",
        );
        assert_eq!(
            env,
            strings(&[
                "PATH=/bin",
                "B=2",
                "http_proxy=http://p",
                "A=secret",
                "HOME=/"
            ])
        );
    }
}
