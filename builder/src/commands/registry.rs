//! `rbuild pull`, `rbuild push`, `rbuild login`, `rbuild logout`.

use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};

use crate::cli::LoginArgs;
use crate::commands::store::state_root;
use crate::progress::{Progress, ProgressFormat};
use crate::registry::hosts::Settings;
use crate::registry::reference::DEFAULT_DOMAIN;
use crate::registry::transfer::{Lines, StepReport, Transfer};
use crate::registry::{Registry, auth};

fn open(root: Option<PathBuf>) -> anyhow::Result<(PathBuf, cache::gc::Store, Registry)> {
    let root = state_root(root);
    let store = super::store::open_state(&root)?;
    let registry = Registry::new(Settings::load(&root)?)?;
    Ok((root, store, registry))
}

/// How `rbuild pull`/`push` show blobs moving: a live step with a byte bar
/// per blob on a terminal, else a line per blob (and every few seconds).
fn reporter(verb: &'static str, reference: &str) -> (Option<StepReport>, Arc<dyn Transfer>) {
    if std::io::stderr().is_terminal() {
        let progress = Arc::new(Progress::new(ProgressFormat::Tty));
        let (report, transfer) = StepReport::start(progress, &format!("{verb} {reference}"), true);
        return (Some(report), transfer);
    }
    (None, Arc::new(Lines::new(verb)))
}

pub fn pull(
    root: Option<PathBuf>,
    reference: &str,
    platform: Option<&frontend::stage::Platform>,
) -> anyhow::Result<()> {
    let (_, store, registry) = open(root)?;
    let (report, transfer) = reporter("pulling", reference);
    let platform = platform
        .cloned()
        .unwrap_or_else(frontend::stage::Platform::host);
    let img = crate::publish::pull_image(
        &registry,
        &store.blobs,
        reference,
        &platform,
        true,
        &transfer,
    );
    if let Some(r) = report {
        r.end(img.as_ref().err());
    }
    let img = img?;
    eprintln!("Digest: {}", img.manifest.digest);
    println!("{}", crate::images::normalize(&img.reference));
    Ok(())
}

pub fn push(
    root: Option<PathBuf>,
    reference: &str,
    platform: Option<&frontend::stage::Platform>,
) -> anyhow::Result<()> {
    let (_, store, registry) = open(root)?;
    let img = crate::images::find(&store.blobs, reference)?.ok_or_else(|| {
        anyhow::anyhow!("image {reference} is not in the local store (see `rbuild images`)")
    })?;
    let manifest = crate::commands::image::local_image(&store, &img, platform)?;
    let (report, transfer) = reporter("pushing", reference);
    let format = crate::export::LayerFormat {
        compression: cache::layer::Compression::Gzip,
        level: None,
        force: false,
    };
    let pushed = crate::publish::push_image(
        &registry, &store, &manifest, reference, format, true, &transfer,
    );
    if let Some(r) = report {
        r.end(pushed.as_ref().err());
    }
    let pushed = pushed?;
    println!(
        "{}: digest: {} size: {}",
        crate::images::normalize(reference),
        pushed.digest,
        pushed.size
    );
    Ok(())
}

/// The registry a `login`/`logout` argument names (`docker.io` for Docker
/// Hub under any of its names).
fn server_domain(server: Option<&str>) -> String {
    let s = server.unwrap_or(DEFAULT_DOMAIN);
    let s = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
        .unwrap_or(s);
    let host = s.split('/').next().unwrap_or(s);
    match host {
        "index.docker.io" | "registry-1.docker.io" | "docker.io" => DEFAULT_DOMAIN.into(),
        h => h.to_string(),
    }
}

pub fn login(root: Option<PathBuf>, args: LoginArgs) -> anyhow::Result<()> {
    let domain = server_domain(args.server.as_deref());
    let tty = std::io::stdin().is_terminal();
    let username = match args.username {
        Some(u) => u,
        None if tty && !args.password_stdin => prompt("Username: ")?,
        None => bail!("rbuild login {domain}: give a user name with -u (stdin is not a terminal)"),
    };
    let password = match (args.password, args.password_stdin) {
        (Some(_), true) => bail!("--password and --password-stdin are mutually exclusive"),
        (Some(p), false) => {
            eprintln!("WARNING! Using --password via the CLI is insecure. Use --password-stdin.");
            p
        }
        (None, true) => {
            let mut p = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut p)
                .context("reading the password from stdin")?;
            p.trim_end_matches(['\n', '\r']).to_string()
        }
        (None, false) if tty => read_password("Password: ")?,
        (None, false) => {
            bail!(
                "rbuild login {domain}: give the password with --password-stdin (stdin is not a terminal)"
            )
        }
    };
    if username.is_empty() || password.is_empty() {
        bail!("rbuild login {domain}: the user name and password must not be empty");
    }
    let root = state_root(root);
    let registry = Registry::new(Settings::load(&root)?)?;
    registry
        .check_login(&domain, &username, &password)
        .with_context(|| format!("logging in to {domain}"))?;
    let place = auth::store(&domain, &username, &password)?;
    eprintln!("Credentials kept in {place}");
    println!("Login Succeeded");
    Ok(())
}

pub fn logout(server: Option<&str>) -> anyhow::Result<()> {
    let domain = server_domain(server);
    if auth::erase(&domain)? {
        println!(
            "Removing login credentials for {}",
            auth::config_key(&domain)
        );
    } else {
        println!("Not logged in to {domain}");
    }
    Ok(())
}

fn prompt(text: &str) -> anyhow::Result<String> {
    eprint!("{text}");
    std::io::stderr().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim().to_string())
}

/// Reads a line from the terminal with echo off.
fn read_password(text: &str) -> anyhow::Result<String> {
    use nix::sys::termios::{LocalFlags, SetArg, tcgetattr, tcsetattr};
    let stdin = std::io::stdin();
    let saved = tcgetattr(&stdin).context("reading the terminal settings")?;
    let mut quiet = saved.clone();
    quiet.local_flags.remove(LocalFlags::ECHO);
    tcsetattr(&stdin, SetArg::TCSANOW, &quiet).context("turning echo off")?;
    let line = prompt(text);
    let _ = tcsetattr(&stdin, SetArg::TCSANOW, &saved);
    eprintln!();
    line
}

#[cfg(test)]
mod tests {
    use super::server_domain;

    #[test]
    fn docker_hub_names() {
        for s in [
            None,
            Some("docker.io"),
            Some("https://index.docker.io/v1/"),
            Some("registry-1.docker.io"),
        ] {
            assert_eq!(server_domain(s), "docker.io");
        }
        assert_eq!(
            server_domain(Some("http://127.0.0.1:5000/")),
            "127.0.0.1:5000"
        );
    }
}
