use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = with_build_default(std::env::args_os().collect());
    // An ordinary user's build runs in a user namespace of its own: this
    // process starts it and waits (before any thread starts).
    if needs_root_inside(&args) {
        let state = builder::commands::store::state_root(None);
        match builder::rootless::reexec(&args, state) {
            Ok(Some(code)) => return ExitCode::from(code.clamp(0, 255) as u8),
            Ok(None) => {}
            Err(e) => {
                eprintln!("error: running as an ordinary user: {e:#}");
                return ExitCode::from(1);
            }
        }
    }
    builder::interrupt::install();
    let cli = builder::cli::Cli::parse_from(args);
    match builder::commands::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // A step ended by the interrupt's cleanup fails the build: the
            // handler reports and exits (128+signal), not this error.
            builder::interrupt::wait_if_interrupted();
            eprintln!("{}", builder::commands::render_error(&err));
            ExitCode::from(1)
        }
    }
}

/// Where the words after rbuild's global options (`--root DIR`) start.
fn after_global_options(args: &[std::ffi::OsString]) -> usize {
    let mut i = 1;
    while i < args.len() {
        let a = args[i].to_string_lossy();
        if a == "--root" {
            i += 2;
        } else if a.starts_with("--root=") {
            i += 1;
        } else {
            break;
        }
    }
    i
}

/// `rbuild -t app:1 .` means `rbuild build -t app:1 .`: insert `build` when
/// the first word after the global options is no subcommand.
fn with_build_default(mut args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let i = after_global_options(&args);
    let Some(a) = args.get(i).map(|a| a.to_string_lossy().into_owned()) else {
        return args;
    };
    if a == "-h" || a == "--help" || a == "-V" || a == "--version" || is_subcommand(&a) {
        return args;
    }
    args.insert(i, "build".into());
    args
}

/// Whether the command works on images or the state (what an ordinary
/// user's rbuild does inside its user namespace); the frontend's commands,
/// the credential ones and help run as they are.
fn needs_root_inside(args: &[std::ffi::OsString]) -> bool {
    let Some(word) = args.get(after_global_options(args)) else {
        return false;
    };
    let word = word.to_string_lossy();
    !word.starts_with('-')
        && !matches!(
            word.as_ref(),
            "debug" | "graph" | "check" | "login" | "logout" | "help"
        )
}

/// A subcommand name clap knows (so the list never drifts from cli.rs).
fn is_subcommand(word: &str) -> bool {
    use clap::CommandFactory;
    word == "help"
        || builder::cli::Cli::command()
            .get_subcommands()
            .any(|c| c.get_name() == word)
}
