//! Image assembly: the config and history a build gives its image, as
//! BuildKit's dispatch writes them.
//!
//! [`ImageState`] starts from the base image's config (or an empty one) and
//! takes each step of a stage in order: config-only changes
//! ([`ConfigChange`]) set fields and add an `empty_layer` history entry;
//! RUN, COPY/ADD and WORKDIR add a layer and a history entry worded as
//! BuildKit words it (`RUN |1 V=1 /bin/sh -c make # buildkit`, `COPY
//! --chown=1 a /b # buildkit`, `CMD ["/app"]`, ...). ONBUILD triggers of the
//! base do not carry over; ENTRYPOINT resets an inherited CMD; CMD sets
//! ArgsEscaped as BuildKit does.

use std::time::Duration;

use cache::spec::{ContainerConfig, HealthConfig, History, ImageConfig, Platform};
use frontend::graph::{ConfigChange, ExecOp, FileOp};
use frontend::quote::go_quote;

/// The comment BuildKit puts on every history entry.
pub const HISTORY_COMMENT: &str = "buildkit.dockerfile.v0";

/// An image being assembled.
#[derive(Debug, Clone)]
pub struct ImageState {
    /// The config so far.
    pub config: ImageConfig,
    /// Whether this stage set CMD (ENTRYPOINT keeps it then).
    cmd_set: bool,
    /// History time: SOURCE_DATE_EPOCH or the build's start, RFC 3339.
    created: Option<String>,
    /// Where each name is in the config's Env (made with the state, kept
    /// by `add_env`, the only writer of Env): an ENV finds its entry without
    /// a scan (10,000 ENV lines were 10^8 comparisons).
    env_index: std::collections::HashMap<String, usize>,
}

/// The name of an Env entry `NAME=value`.
fn env_name(entry: &str) -> &str {
    entry.split_once('=').map_or(entry, |(k, _)| k)
}

/// `%q` of a string list, as Go prints `[]string` with `%q`.
fn go_quote_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| go_quote(s)).collect();
    format!("[{}]", quoted.join(" "))
}

/// `%v` of a string list: `[a b c]`.
fn go_list(items: &[String]) -> String {
    format!("[{}]", items.join(" "))
}

/// Go's `time.Duration.String()`.
pub fn go_duration(ns: i64) -> String {
    if ns == 0 {
        return "0s".into();
    }
    let neg = ns < 0;
    let u = ns.unsigned_abs();
    let sign = if neg { "-" } else { "" };
    let frac = |value: u64, scale: u64| -> String {
        let whole = value / scale;
        let rest = value % scale;
        if rest == 0 {
            return whole.to_string();
        }
        let digits = scale.to_string().len() - 1;
        let f = format!("{rest:0digits$}");
        format!("{whole}.{}", f.trim_end_matches('0'))
    };
    if u < 1_000 {
        return format!("{sign}{u}ns");
    }
    if u < 1_000_000 {
        return format!("{sign}{}µs", frac(u, 1_000));
    }
    if u < 1_000_000_000 {
        return format!("{sign}{}ms", frac(u, 1_000_000));
    }
    let d = Duration::from_nanos(u);
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    let sub = u % 1_000_000_000;
    let seconds = frac(s * 1_000_000_000 + sub, 1_000_000_000);
    match (h, m) {
        (0, 0) => format!("{sign}{seconds}s"),
        (0, m) => format!("{sign}{m}m{seconds}s"),
        (h, m) => format!("{sign}{h}h{m}m{seconds}s"),
    }
}

/// Go's `signal.ParseSignal` acceptance: a number, `SIGNAME` or `NAME`.
fn valid_signal(s: &str) -> bool {
    const NAMES: [&str; 31] = [
        "HUP", "INT", "QUIT", "ILL", "TRAP", "ABRT", "BUS", "FPE", "KILL", "USR1", "SEGV", "USR2",
        "PIPE", "ALRM", "TERM", "STKFLT", "CHLD", "CONT", "STOP", "TSTP", "TTIN", "TTOU", "URG",
        "XCPU", "XFSZ", "VTALRM", "PROF", "WINCH", "IO", "PWR", "SYS",
    ];
    if let Ok(n) = s.parse::<u32>() {
        return n > 0 && n < 65;
    }
    let name = s.strip_prefix("SIG").unwrap_or(s);
    NAMES.contains(&name) || name.starts_with("RTMIN") || name.starts_with("RTMAX")
}

impl ImageState {
    /// Starts from a base image's config, or an empty linux/amd64 one.
    pub fn new(base: Option<ImageConfig>, created: Option<String>) -> ImageState {
        let mut config = base.unwrap_or_else(|| ImageConfig {
            platform: Platform {
                architecture: "amd64".into(),
                os: "linux".into(),
                ..Platform::default()
            },
            // BuildKit's emptyImage: PATH and WorkingDir "/".
            config: ContainerConfig {
                env: Some(vec![format!("PATH={}", frontend::stage::DEFAULT_PATH)]),
                working_dir: Some("/".into()),
                ..ContainerConfig::default()
            },
            ..ImageConfig::default()
        });
        // Triggers of the base image ran in this stage; they do not carry over.
        config.config.on_build = None;
        // Every stage has a PATH (BuildKit adds its default to a base
        // image's Env that has none, as the frontend's stage scope does).
        let env = config.config.env.get_or_insert_with(Vec::new);
        if !env.iter().any(|e| e.starts_with("PATH=")) {
            env.push(format!("PATH={}", frontend::stage::DEFAULT_PATH));
        }
        let env_index = env
            .iter()
            .enumerate()
            .map(|(i, e)| (env_name(e).to_string(), i))
            .collect();
        ImageState {
            config,
            cmd_set: false,
            env_index,
            created,
        }
    }

    /// The platform the image is for (os, architecture, variant).
    pub fn set_platform(&mut self, platform: &frontend::stage::Platform) {
        let p = &mut self.config.platform;
        p.os = platform.os.clone();
        p.architecture = platform.architecture.clone();
        p.variant = (!platform.variant.is_empty()).then(|| platform.variant.clone());
    }

    /// The time the next history entries get (a step's, from its cache record).
    pub fn set_created(&mut self, created: Option<String>) {
        if created.is_some() {
            self.created = created;
        }
    }

    /// The time of the latest step (the image's creation time).
    pub fn created(&self) -> Option<&str> {
        self.created.as_deref()
    }

    fn history(&mut self, created_by: String, layer: bool) {
        self.config.history.push(History {
            created: self.created.clone(),
            created_by: Some(created_by),
            author: None,
            comment: Some(HISTORY_COMMENT.into()),
            empty_layer: !layer,
        });
    }

    /// Sets (or replaces) `KEY` in Env, keeping its position.
    fn add_env(&mut self, key: &str, value: &str) {
        let env = self.config.config.env.get_or_insert_with(Vec::new);
        let item = format!("{key}={value}");
        match self.env_index.get(key) {
            Some(&i) => env[i] = item,
            None => {
                self.env_index.insert(key.to_string(), env.len());
                env.push(item);
            }
        }
    }

    /// Applies a config-only step. Errors are BuildKit's (a bad STOPSIGNAL).
    pub fn apply(&mut self, change: &ConfigChange) -> Result<(), String> {
        match change {
            ConfigChange::Env(pairs) => {
                let mut msg = String::from("ENV");
                for (k, v) in pairs {
                    self.add_env(k, v);
                    msg.push_str(&format!(" {k}={v}"));
                }
                self.history(msg, false);
            }
            ConfigChange::Label(pairs) => {
                let mut msg = String::from("LABEL");
                let labels = self
                    .config
                    .config
                    .labels
                    .get_or_insert_with(Default::default);
                for (k, v) in pairs {
                    labels.insert(k.clone(), v.clone());
                    msg.push_str(&format!(" {k}={v}"));
                }
                self.history(msg, false);
            }
            ConfigChange::Arg(args) => {
                let words: Vec<String> = args
                    .iter()
                    .map(|(k, v)| match v {
                        Some(v) => format!("{k}={v}"),
                        None => k.clone(),
                    })
                    .collect();
                self.history(format!("ARG {}", words.join(" ")), false);
            }
            ConfigChange::Cmd(args) => {
                self.config.config.cmd = Some(args.clone());
                self.config.config.args_escaped = true;
                self.cmd_set = true;
                self.history(format!("CMD {}", go_quote_list(args)), false);
            }
            ConfigChange::Entrypoint(args) => {
                self.config.config.entrypoint = Some(args.clone());
                if !self.cmd_set {
                    self.config.config.cmd = None;
                }
                self.history(format!("ENTRYPOINT {}", go_quote_list(args)), false);
            }
            ConfigChange::Expose(ports) => {
                let exposed = self
                    .config
                    .config
                    .exposed_ports
                    .get_or_insert_with(Default::default);
                for p in ports {
                    exposed.insert(p.clone(), serde_json::json!({}));
                }
                self.history(format!("EXPOSE {}", go_list(ports)), false);
            }
            ConfigChange::Volume(paths) => {
                let volumes = self
                    .config
                    .config
                    .volumes
                    .get_or_insert_with(Default::default);
                for p in paths {
                    if p.is_empty() {
                        return Err("VOLUME specified can not be an empty string".into());
                    }
                    volumes.insert(p.clone(), serde_json::json!({}));
                }
                self.history(format!("VOLUME {}", go_list(paths)), false);
            }
            ConfigChange::User(user) => {
                self.config.config.user = Some(user.clone());
                self.history(format!("USER {user}"), false);
            }
            ConfigChange::Stopsignal(sig) => {
                if !valid_signal(sig) {
                    return Err(format!("Invalid signal: {sig}"));
                }
                self.config.config.stop_signal = Some(sig.clone());
                self.history(format!("STOPSIGNAL {sig}"), false);
            }
            ConfigChange::Healthcheck(h) => {
                let config = match h {
                    None => HealthConfig {
                        test: Some(vec!["NONE".into()]),
                        ..HealthConfig::default()
                    },
                    Some(h) => HealthConfig {
                        test: Some(h.test.clone()),
                        interval: h.interval,
                        timeout: h.timeout,
                        start_period: h.start_period,
                        start_interval: h.start_interval,
                        retries: h.retries,
                    },
                };
                let msg = format!(
                    "HEALTHCHECK {{Test:{} Interval:{} Timeout:{} StartPeriod:{} StartInterval:{} Retries:{}}}",
                    go_list(config.test.as_deref().unwrap_or_default()),
                    go_duration(config.interval),
                    go_duration(config.timeout),
                    go_duration(config.start_period),
                    go_duration(config.start_interval),
                    config.retries
                );
                self.config.config.healthcheck = Some(config);
                self.history(msg, false);
            }
            ConfigChange::Shell(shell) => {
                self.config.config.shell = Some(shell.clone());
                self.history(format!("SHELL {}", go_list(shell)), false);
            }
            ConfigChange::Onbuild(expr) => {
                // BuildKit records no history for ONBUILD.
                self.config
                    .config
                    .on_build
                    .get_or_insert_with(Vec::new)
                    .push(expr.clone());
            }
            ConfigChange::Maintainer(m) => {
                self.config.author = Some(m.clone());
                self.history(format!("MAINTAINER {m}"), false);
            }
        }
        Ok(())
    }

    /// A layer the stage starts from that no instruction made (a local
    /// directory as a base): a history entry of its own, as BuildKit's
    /// exporter adds for layers without one.
    pub fn base_layer(&mut self, diff_id: Option<&str>) {
        if let Some(d) = diff_id {
            self.config.history.push(History {
                created: self.created.clone(),
                created_by: None,
                author: None,
                comment: None,
                empty_layer: false,
            });
            self.config.rootfs.diff_ids.push(d.to_string());
        }
    }

    /// Records a RUN and its layer.
    pub fn run(&mut self, exec: &ExecOp, diff_id: Option<&str>) {
        let mut words: Vec<String> = Vec::new();
        if !exec.build_args.is_empty() {
            words.push(format!("|{}", exec.build_args.len()));
            words.extend(exec.build_args.iter().map(|(k, v)| format!("{k}={v}")));
        }
        words.extend(exec.args.iter().cloned());
        self.history(
            format!("RUN {} # buildkit", words.join(" ")),
            diff_id.is_some(),
        );
        if let Some(d) = diff_id {
            self.config.rootfs.diff_ids.push(d.to_string());
        }
    }

    /// Records a COPY/ADD and its layer.
    pub fn copy(&mut self, file: &FileOp, diff_id: Option<&str>) {
        let mut msg = String::from(if file.add { "ADD" } else { "COPY" });
        if file.parents {
            msg.push_str(" --parents");
        }
        if let Some(c) = &file.chown {
            msg.push_str(&format!(" --chown={c}"));
        }
        if let Some(c) = &file.chmod {
            msg.push_str(&format!(" --chmod={c}"));
        }
        for s in &file.sources {
            msg.push(' ');
            msg.push_str(s);
        }
        for (name, _) in &file.contents {
            msg.push_str(&format!(" <<{name}"));
        }
        msg.push(' ');
        msg.push_str(&file.dest_written);
        self.history(format!("{msg} # buildkit"), diff_id.is_some());
        if let Some(d) = diff_id {
            self.config.rootfs.diff_ids.push(d.to_string());
        }
    }

    /// Records a WORKDIR (a layer unless the path is `/`).
    pub fn workdir(&mut self, path: &str, diff_id: Option<&str>) {
        self.config.config.working_dir = Some(path.to_string());
        self.history(format!("WORKDIR {path}"), path != "/");
        if let Some(d) = diff_id {
            self.config.rootfs.diff_ids.push(d.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use frontend::graph::HealthcheckValue;
    use frontend::instructions::{Network, Security};

    #[test]
    fn durations_like_go() {
        assert_eq!(go_duration(0), "0s");
        assert_eq!(go_duration(30_000_000_000), "30s");
        assert_eq!(go_duration(300_000_000_000), "5m0s");
        assert_eq!(go_duration(1_500_000_000), "1.5s");
        assert_eq!(go_duration(3_723_000_000_000), "1h2m3s");
        assert_eq!(go_duration(500_000_000), "500ms");
        assert_eq!(go_duration(1_500), "1.5µs");
    }

    #[test]
    fn history_as_buildkit_words_it() {
        let mut img = ImageState::new(None, Some("2024-01-01T00:00:00Z".into()));
        img.apply(&ConfigChange::Env(vec![
            ("A".into(), "1".into()),
            ("PATH".into(), "/x:/bin".into()),
        ]))
        .unwrap();
        img.apply(&ConfigChange::Cmd(vec![
            "/bin/sh".into(),
            "-c".into(),
            "echo hi".into(),
        ]))
        .unwrap();
        img.apply(&ConfigChange::Entrypoint(vec!["/entry".into()]))
            .unwrap();
        img.apply(&ConfigChange::Expose(vec![
            "80/tcp".into(),
            "53/udp".into(),
        ]))
        .unwrap();
        img.apply(&ConfigChange::Healthcheck(Some(HealthcheckValue {
            test: vec!["CMD-SHELL".into(), "curl -f http://localhost/".into()],
            interval: 300_000_000_000,
            timeout: 3_000_000_000,
            start_period: 0,
            start_interval: 0,
            retries: 3,
        })))
        .unwrap();
        img.apply(&ConfigChange::Onbuild("RUN echo later".into()))
            .unwrap();
        let exec = ExecOp {
            args: vec!["/bin/sh".into(), "-c".into(), "make".into()],
            env: vec![],
            workdir: "/".into(),
            user: String::new(),
            mounts: vec![],
            network: Network::Default,
            security: Security::Sandbox,
            inline_files: vec![],
            hostname: None,
            extra_hosts: vec![],
            ulimits: vec![],
            shm_size: None,
            mount_sources: vec![],
            build_args: vec![("V".into(), "1".into())],
        };
        img.run(&exec, Some("sha256:aa"));
        let by: Vec<&str> = img
            .config
            .history
            .iter()
            .map(|h| h.created_by.as_deref().unwrap())
            .collect();
        assert_eq!(
            by,
            vec![
                "ENV A=1 PATH=/x:/bin",
                "CMD [\"/bin/sh\" \"-c\" \"echo hi\"]",
                "ENTRYPOINT [\"/entry\"]",
                "EXPOSE [80/tcp 53/udp]",
                "HEALTHCHECK {Test:[CMD-SHELL curl -f http://localhost/] Interval:5m0s Timeout:3s StartPeriod:0s StartInterval:0s Retries:3}",
                "RUN |1 V=1 /bin/sh -c make # buildkit",
            ]
        );
        assert!(img.config.history[..5].iter().all(|h| h.empty_layer));
        assert!(!img.config.history[5].empty_layer);
        let c = &img.config.config;
        assert_eq!(
            c.env.as_deref().unwrap(),
            ["PATH=/x:/bin".to_string(), "A=1".to_string()]
        );
        // CMD set in this stage survives ENTRYPOINT; ArgsEscaped as BuildKit.
        assert!(c.cmd.is_some() && c.args_escaped);
        assert_eq!(
            c.on_build.as_deref().unwrap(),
            ["RUN echo later".to_string()]
        );
        assert_eq!(img.config.rootfs.diff_ids, vec!["sha256:aa"]);
        assert_eq!(
            img.apply(&ConfigChange::Stopsignal("SIGNOPE".into()))
                .unwrap_err(),
            "Invalid signal: SIGNOPE"
        );
    }

    #[test]
    fn entrypoint_resets_an_inherited_cmd_and_onbuild_does_not_carry_over() {
        let mut base = ImageState::new(None, None);
        base.apply(&ConfigChange::Cmd(vec!["sh".into()])).unwrap();
        base.apply(&ConfigChange::Onbuild("RUN x".into())).unwrap();
        let mut child = ImageState::new(Some(base.config.clone()), None);
        assert!(child.config.config.on_build.is_none());
        child
            .apply(&ConfigChange::Entrypoint(vec!["/e".into()]))
            .unwrap();
        assert!(child.config.config.cmd.is_none());
    }
}
