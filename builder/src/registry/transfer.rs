//! Progress of blob transfers: as steps or statuses of a build's progress,
//! and the plain-text lines `rbuild pull` and `rbuild push` print
//! (BuildKit's `sha256:... 12.58MB / 30.10MB 0.8s`).

use std::collections::HashMap;
use std::io::Write as _;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Told of each blob as it moves.
pub trait Transfer: Send + Sync {
    /// A blob of `size` bytes starts moving.
    fn start(&self, digest: &str, size: u64);
    /// `bytes` of it have moved so far.
    fn progress(&self, digest: &str, bytes: u64);
    /// It is there; `existed` when nothing had to move.
    fn done(&self, digest: &str, size: u64, existed: bool);
    /// The same reports shown inside build step `step` (a blob the step
    /// needs), when this reporter can; None: report as before.
    fn within(&self, step: usize) -> Option<std::sync::Arc<dyn Transfer>> {
        let _ = step;
        None
    }
}

/// Reports nothing.
pub struct Silent;

impl Transfer for Silent {
    fn start(&self, _: &str, _: u64) {}
    fn progress(&self, _: &str, _: u64) {}
    fn done(&self, _: &str, _: u64, _: bool) {}
}

/// Each blob moved as a step of the build's progress (`#N [internal] pull
/// sha256:... 1.02MB`, `#N DONE 0.3s`): the plain and rawjson formats
/// stay one event per line.
pub struct Steps {
    progress: std::sync::Arc<crate::progress::Progress>,
    verb: &'static str,
    open: Mutex<HashMap<String, (usize, Instant)>>,
}

impl Steps {
    /// Steps of `progress` named `[internal] VERB DIGEST SIZE`.
    pub fn new(progress: std::sync::Arc<crate::progress::Progress>, verb: &'static str) -> Steps {
        Steps {
            progress,
            verb,
            open: Mutex::default(),
        }
    }
}

impl Transfer for Steps {
    fn start(&self, digest: &str, size: u64) {
        let name = format!("[internal] {} {digest} {}", self.verb, human_bytes(size));
        let started = self.progress.start(&name);
        self.open
            .lock()
            .expect("lock")
            .insert(digest.to_string(), started);
    }

    fn progress(&self, _: &str, _: u64) {}

    fn done(&self, digest: &str, _: u64, _: bool) {
        // A blob that was there already never started.
        if let Some((id, started)) = self.open.lock().expect("lock").remove(digest) {
            self.progress.done(id, started);
        }
    }

    fn within(&self, step: usize) -> Option<std::sync::Arc<dyn Transfer>> {
        Some(InStep::shared(self.progress.clone(), step))
    }
}

/// A step of its own (`pushing REF`) whose blobs show as its statuses,
/// with their bytes: on a build's progress, or on a live view of its own
/// (`own`) that ends with it.
pub struct StepReport {
    progress: std::sync::Arc<crate::progress::Progress>,
    id: usize,
    started: Instant,
    own: bool,
}

impl StepReport {
    /// Starts step `name` on `progress`; the reporter to move blobs with.
    pub fn start(
        progress: std::sync::Arc<crate::progress::Progress>,
        name: &str,
        own: bool,
    ) -> (StepReport, std::sync::Arc<dyn Transfer>) {
        let (id, started) = progress.start(name);
        let transfer = InStep::shared(progress.clone(), id);
        let report = StepReport {
            progress,
            id,
            started,
            own,
        };
        (report, transfer)
    }

    /// A step after a build in `format` (a push): on the build's
    /// `progress`, or on a live view of its own when the build's (`Tty`)
    /// has ended; none when quiet.
    pub fn after_build(
        format: crate::progress::ProgressFormat,
        progress: &std::sync::Arc<crate::progress::Progress>,
        name: &str,
    ) -> (Option<StepReport>, std::sync::Arc<dyn Transfer>) {
        use crate::progress::{Progress, ProgressFormat};
        let (report, transfer) = match format {
            ProgressFormat::Quiet => return (None, std::sync::Arc::new(Silent)),
            ProgressFormat::Tty => {
                let own = std::sync::Arc::new(Progress::new(ProgressFormat::Tty));
                StepReport::start(own, name, true)
            }
            _ => StepReport::start(progress.clone(), name, false),
        };
        (Some(report), transfer)
    }

    /// Ends the step: done, or failed with `error`.
    pub fn end(self, error: Option<&anyhow::Error>) {
        match error {
            None => self.progress.done(self.id, self.started),
            Some(e) => self.progress.error(self.id, &format!("{e:#}")),
        }
        if self.own {
            self.progress.finish();
        }
    }
}

/// Each blob moved as a status of one build step, with its bytes
/// (BuildKit's `#3 sha256:... 12.58MB / 30.10MB 0.8s`, `... done`).
pub struct InStep {
    progress: std::sync::Arc<crate::progress::Progress>,
    step: usize,
    /// Started blobs: when, and their size.
    open: Mutex<HashMap<String, (Instant, u64)>>,
}

impl InStep {
    /// Reports as statuses of step `step` of `progress`.
    fn shared(
        progress: std::sync::Arc<crate::progress::Progress>,
        step: usize,
    ) -> std::sync::Arc<dyn Transfer> {
        std::sync::Arc::new(InStep {
            progress,
            step,
            open: Mutex::default(),
        })
    }

    fn report(&self, digest: &str, current: u64, completed: bool) {
        let open = self.open.lock().expect("lock");
        let Some(&(started, total)) = open.get(digest) else {
            return;
        };
        drop(open);
        self.progress.status(
            self.step,
            &crate::progress::Status {
                id: digest,
                current,
                total,
                started,
                completed,
            },
        );
    }
}

impl Transfer for InStep {
    fn start(&self, digest: &str, size: u64) {
        self.open
            .lock()
            .expect("lock")
            .insert(digest.to_string(), (Instant::now(), size));
        self.report(digest, 0, false);
    }

    fn progress(&self, digest: &str, bytes: u64) {
        self.report(digest, bytes, false);
    }

    fn done(&self, digest: &str, size: u64, _: bool) {
        // A blob that was there already never started: nothing to show.
        self.report(digest, size, true);
        self.open.lock().expect("lock").remove(digest);
    }
}

/// Lines on stderr: one when a blob starts, one every few seconds while it
/// moves, one when it is done.
pub struct Lines {
    verb: &'static str,
    started: Mutex<HashMap<String, (Instant, Instant)>>,
}

impl Lines {
    /// `verb` is what moving is called (`pulling`, `pushing`).
    pub fn new(verb: &'static str) -> Lines {
        Lines {
            verb,
            started: Mutex::default(),
        }
    }
}

/// The interval between progress lines of one blob.
const EVERY: Duration = Duration::from_secs(2);

fn short(digest: &str) -> &str {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    &hex[..hex.len().min(12)]
}

/// Bytes in BuildKit's units (decimal, two decimals).
pub fn human_bytes(n: u64) -> String {
    let n = n as f64;
    match n {
        n if n >= 1e9 => format!("{:.2}GB", n / 1e9),
        n if n >= 1e6 => format!("{:.2}MB", n / 1e6),
        n if n >= 1e3 => format!("{:.2}kB", n / 1e3),
        n => format!("{n}B"),
    }
}

impl Transfer for Lines {
    fn start(&self, digest: &str, size: u64) {
        let now = Instant::now();
        self.started
            .lock()
            .expect("lock")
            .insert(digest.to_string(), (now, now));
        let _ = writeln!(
            std::io::stderr(),
            "{} {} {}",
            self.verb,
            short(digest),
            human_bytes(size)
        );
    }

    fn progress(&self, digest: &str, bytes: u64) {
        let mut started = self.started.lock().expect("lock");
        let Some((t0, last)) = started.get_mut(digest) else {
            return;
        };
        if last.elapsed() >= EVERY {
            *last = Instant::now();
            let _ = writeln!(
                std::io::stderr(),
                "sha256:{} {} {:.1}s",
                short(digest),
                human_bytes(bytes),
                t0.elapsed().as_secs_f64()
            );
        }
    }

    fn done(&self, digest: &str, size: u64, existed: bool) {
        let t0 = self.started.lock().expect("lock").remove(digest);
        let line = match (existed, t0) {
            (true, _) | (false, None) => format!("{} exists", short(digest)),
            (false, Some((t0, _))) => format!(
                "{} {} / {} {:.1}s done",
                short(digest),
                human_bytes(size),
                human_bytes(size),
                t0.elapsed().as_secs_f64()
            ),
        };
        let _ = writeln!(std::io::stderr(), "{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_as_buildkit_prints_them() {
        assert_eq!(human_bytes(12), "12B");
        assert_eq!(human_bytes(12_580_000), "12.58MB");
        assert_eq!(human_bytes(1_500), "1.50kB");
        assert_eq!(human_bytes(2_000_000_000), "2.00GB");
    }
}
