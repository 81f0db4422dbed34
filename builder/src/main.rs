use std::process::ExitCode;

use clap::Parser;

/// The stack of the thread a command runs on and of every thread it
/// starts (rayon's workers and the solver's among them). Walks of a tree
/// recurse once per directory level, about 3 KiB a level: a context or a
/// step's result nested a thousand directories deep overflowed the default
/// 2 MiB and aborted rbuild. Walks go by path, so they end at PATH_MAX
/// (~2,000 levels, ~6 MiB of stack); this is ten times that. Only what a
/// thread touches is ever backed by memory.
const THREAD_STACK: usize = 64 << 20;

fn main() -> ExitCode {
    if std::env::var_os("RUST_MIN_STACK").is_none() {
        // SAFETY: no other thread runs yet (this is the first statement of
        // main), so nothing reads the environment concurrently.
        unsafe { std::env::set_var("RUST_MIN_STACK", THREAD_STACK.to_string()) };
    }
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
    // The main thread's stack is the 8 MiB the shell's limit gives it; the
    // command runs on one of THREAD_STACK (the solver runs a step on the
    // thread that drives it when nothing else is ready).
    // Where no such thread can be had (an address-space limit), the
    // command runs here.
    let cli = std::sync::Arc::new(std::sync::Mutex::new(Some(cli)));
    let take = |slot: &std::sync::Mutex<Option<builder::cli::Cli>>| {
        slot.lock()
            .ok()
            .and_then(|mut c| c.take())
            .expect("the command line, taken once")
    };
    let shared = cli.clone();
    let outcome = match std::thread::Builder::new()
        .name("rbuild".into())
        .stack_size(THREAD_STACK)
        .spawn(move || builder::commands::run(take(&shared)))
    {
        Ok(thread) => thread
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
        Err(_) => builder::commands::run(take(&cli)),
    };
    match outcome {
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
