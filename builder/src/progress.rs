//! Build progress on stderr: BuildKit's plain lines, rawjson events, or
//! the live terminal view ([`crate::tty`]); nothing with `--progress quiet`.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Instant;

use crate::sandbox::Stream;

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressFormat {
    /// BuildKit's plain format: `#N name`, `#N 0.123 log`, `#N DONE 1.2s`.
    Plain,
    /// One JSON object per line, the shape of BuildKit's SolveStatus.
    RawJson,
    /// The live view on a terminal ([`crate::tty`]).
    Tty,
    /// Nothing.
    Quiet,
}

/// Progress of the steps, on stderr.
/// Steps run in parallel, so the state sits behind a lock.
pub struct Progress {
    format: ProgressFormat,
    state: std::sync::Mutex<ProgressState>,
    tty: Option<crate::tty::TtyView>,
}

#[derive(Default)]
pub(crate) struct ProgressState {
    counter: usize,
    /// Bytes of log shown per step (BuildKit caps a step's log at 2 MiB).
    shown: BTreeMap<usize, usize>,
    /// Partial log line per step (plain).
    partial: BTreeMap<usize, Vec<u8>>,
    /// Vertex digest, name and start time per step.
    names: BTreeMap<usize, (String, String, String)>,
    /// When each status was last shown, and at how many bytes.
    statuses: std::collections::HashMap<String, (Instant, u64)>,
}

/// A transfer shown inside a step (BuildKit's vertex status): a blob's
/// bytes as they move.
pub(crate) struct Status<'a> {
    /// What moves (`sha256:...`).
    pub id: &'a str,
    /// Bytes moved so far.
    pub current: u64,
    /// Bytes in all (0: unknown).
    pub total: u64,
    /// When it started.
    pub started: Instant,
    /// Whether it is done.
    pub completed: bool,
}

/// BuildKit's plain printer shows a status again only after this much of
/// its total moved, or [`STATUS_EVERY`] passed.
const STATUS_DELTA: f64 = 0.05;
const STATUS_EVERY: std::time::Duration = std::time::Duration::from_secs(5);
/// Rawjson and the live view take updates at most this often per status.
const STATUS_TICK: std::time::Duration = std::time::Duration::from_millis(100);

/// BuildKit's cap on a step's log output.
pub(crate) const LOG_CAP: usize = 2 << 20;

fn now_rfc3339_nanos() -> String {
    rfc3339_nanos(std::time::SystemTime::now())
}

/// `t` in RFC 3339 with nanoseconds, as BuildKit's progress times are.
fn rfc3339_nanos(t: std::time::SystemTime) -> String {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let base = rfc3339(d.as_secs() as i64);
    format!("{}.{:09}Z", base.trim_end_matches('Z'), d.subsec_nanos())
}

/// Writes one progress line to stderr in one write: stderr is unbuffered,
/// and `eprintln!` writes every piece of its format on its own.
fn stderr_line(args: std::fmt::Arguments<'_>) {
    let mut text = args.to_string();
    text.push('\n');
    let _ = std::io::stderr().write_all(text.as_bytes());
}

impl Progress {
    /// Progress in `format`.
    pub fn new(format: ProgressFormat) -> Progress {
        Progress {
            format,
            state: std::sync::Mutex::new(ProgressState::default()),
            tty: (format == ProgressFormat::Tty).then(crate::tty::TtyView::start),
        }
    }

    /// Ends the live view (its last lines are drawn); other formats have
    /// nothing to end.
    pub fn finish(&self) {
        if let Some(t) = &self.tty {
            t.finish();
        }
    }

    fn tty(&self, event: crate::tty::Event) {
        if let Some(t) = &self.tty {
            t.send(event);
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, ProgressState> {
        // A panicking step leaves the state usable: it is only counters.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn emit(value: serde_json::Value) {
        stderr_line(format_args!("{value}"));
    }

    fn vertex(&self, id: usize, extra: serde_json::Value) -> serde_json::Value {
        let (digest, name, started) = self.state().names.get(&id).cloned().unwrap_or_default();
        let mut v =
            serde_json::json!({"digest": digest, "inputs": [], "name": name, "started": started});
        if let (Some(obj), Some(extra)) = (v.as_object_mut(), extra.as_object()) {
            for (k, val) in extra {
                obj.insert(k.clone(), val.clone());
            }
        }
        serde_json::json!({"vertexes": [v]})
    }

    /// A warning that is not one step's (as BuildKit's `warnings` of a
    /// solve status): a `WARNING:` line, or a rawjson event.
    pub(crate) fn warn(&self, message: &str) {
        let message = crate::mask::Masker::global().mask_str(message);
        match self.format {
            ProgressFormat::RawJson => {
                use base64::Engine as _;
                let short = base64::engine::general_purpose::STANDARD.encode(message.as_bytes());
                Self::emit(serde_json::json!({"warnings": [{"level": 1, "short": short}]}));
            }
            _ => stderr_line(format_args!("WARNING: {message}")),
        }
    }

    pub(crate) fn start(&self, name: &str) -> (usize, Instant) {
        use sha2::{Digest as _, Sha256};
        let mut state = self.state();
        state.counter += 1;
        let id = state.counter;
        let digest = format!(
            "sha256:{}",
            Sha256::digest(format!("{id} {name}").as_bytes())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        );
        state
            .names
            .insert(id, (digest, name.to_string(), now_rfc3339_nanos()));
        drop(state);
        match self.format {
            ProgressFormat::Plain => stderr_line(format_args!("#{id} {name}")),
            ProgressFormat::RawJson => Self::emit(self.vertex(id, serde_json::json!({}))),
            ProgressFormat::Tty => self.tty(crate::tty::Event::Start {
                id,
                name: name.to_string(),
            }),
            ProgressFormat::Quiet => {}
        }
        (id, Instant::now())
    }

    pub(crate) fn cached(&self, id: usize) {
        match self.format {
            ProgressFormat::Plain => stderr_line(format_args!("#{id} CACHED")),
            ProgressFormat::RawJson => Self::emit(self.vertex(
                id,
                serde_json::json!({"cached": true, "completed": now_rfc3339_nanos()}),
            )),
            ProgressFormat::Tty => self.tty(crate::tty::Event::Cached { id }),
            ProgressFormat::Quiet => {}
        }
    }

    pub(crate) fn done(&self, id: usize, started: Instant) {
        match self.format {
            ProgressFormat::Plain => stderr_line(format_args!(
                "#{id} DONE {:.1}s",
                started.elapsed().as_secs_f64()
            )),
            ProgressFormat::RawJson => {
                Self::emit(self.vertex(id, serde_json::json!({"completed": now_rfc3339_nanos()})))
            }
            ProgressFormat::Tty => self.tty(crate::tty::Event::Done {
                id,
                secs: started.elapsed().as_secs_f64(),
            }),
            ProgressFormat::Quiet => {}
        }
    }

    pub(crate) fn canceled(&self, id: usize) {
        match self.format {
            ProgressFormat::Plain => stderr_line(format_args!("#{id} CANCELED")),
            ProgressFormat::RawJson => Self::emit(self.vertex(
                id,
                serde_json::json!({"completed": now_rfc3339_nanos(), "error": "context canceled"}),
            )),
            ProgressFormat::Tty => self.tty(crate::tty::Event::Canceled { id }),
            ProgressFormat::Quiet => {}
        }
    }

    pub(crate) fn error(&self, id: usize, message: &str) {
        match self.format {
            ProgressFormat::Plain => stderr_line(format_args!("#{id} ERROR: {message}")),
            ProgressFormat::RawJson => Self::emit(self.vertex(
                id,
                serde_json::json!({"completed": now_rfc3339_nanos(), "error": message}),
            )),
            ProgressFormat::Tty => self.tty(crate::tty::Event::Error {
                id,
                message: message.to_string(),
            }),
            ProgressFormat::Quiet => {}
        }
    }

    /// A transfer inside step `step`: plain `#N sha256:... 1.20MB / 3.40MB
    /// 0.3s` lines (`done` at the end; again only after 5% or 5 s, as
    /// BuildKit's printer), a rawjson `statuses` event, or a bar under the
    /// step in the live view.
    pub(crate) fn status(&self, step: usize, s: &Status<'_>) {
        if self.format == ProgressFormat::Quiet {
            return;
        }
        let now = Instant::now();
        let show = {
            let mut state = self.state();
            let key = format!("{step} {}", s.id);
            let show = match state.statuses.get(&key) {
                _ if s.completed => true,
                None => true,
                Some(&(at, bytes)) if self.format == ProgressFormat::Plain => {
                    let delta = if s.total > 0 {
                        s.current.saturating_sub(bytes) as f64 / s.total as f64
                    } else {
                        0.0
                    };
                    delta >= STATUS_DELTA || now.duration_since(at) >= STATUS_EVERY
                }
                Some(&(at, _)) => now.duration_since(at) >= STATUS_TICK,
            };
            if s.completed {
                state.statuses.remove(&key);
            } else if show {
                state.statuses.insert(key, (now, s.current));
            }
            show
        };
        if !show {
            return;
        }
        let secs = now.duration_since(s.started).as_secs_f64();
        match self.format {
            ProgressFormat::Plain => {
                let bytes = match (s.current, s.total) {
                    (c, t) if t > 0 => format!(
                        " {} / {}",
                        crate::registry::transfer::human_bytes(c),
                        crate::registry::transfer::human_bytes(t)
                    ),
                    (c, _) if c > 0 => format!(" {}", crate::registry::transfer::human_bytes(c)),
                    _ => String::new(),
                };
                let mut tm = if secs > 0.01 {
                    format!(" {secs:.1}s")
                } else {
                    String::new()
                };
                if s.completed {
                    tm.push_str(" done");
                }
                stderr_line(format_args!("#{step} {}{bytes}{tm}", s.id));
            }
            ProgressFormat::RawJson => {
                let vertex = self
                    .state()
                    .names
                    .get(&step)
                    .map(|n| n.0.clone())
                    .unwrap_or_default();
                let stamp = now_rfc3339_nanos();
                let started = std::time::SystemTime::now()
                    .checked_sub(now.duration_since(s.started))
                    .map_or_else(|| stamp.clone(), rfc3339_nanos);
                let mut v = serde_json::json!({
                    "id": s.id, "vertex": vertex, "name": s.id,
                    "total": s.total, "current": s.current,
                    "timestamp": stamp, "started": started,
                });
                if s.completed {
                    v["completed"] = serde_json::Value::String(stamp);
                }
                Self::emit(serde_json::json!({ "statuses": [v] }));
            }
            ProgressFormat::Tty => self.tty(crate::tty::Event::Status {
                id: step,
                status: s.id.to_string(),
                current: s.current,
                total: s.total,
                done: s.completed,
            }),
            ProgressFormat::Quiet => {}
        }
    }

    /// A chunk of a step's output: log lines (plain) or a log event (rawjson),
    /// up to BuildKit's 2 MiB per step, then one note that the log was clipped.
    pub(crate) fn log(&self, id: usize, stream: Stream, chunk: &[u8], started: Instant) {
        if self.format == ProgressFormat::Quiet {
            return;
        }
        let mut state = self.state();
        let state = &mut *state;
        let shown = state.shown.entry(id).or_insert(0);
        if *shown >= LOG_CAP {
            return;
        }
        let take = chunk.len().min(LOG_CAP - *shown);
        *shown += take;
        let clipped = *shown >= LOG_CAP;
        let chunk = &chunk[..take];
        match self.format {
            ProgressFormat::Plain | ProgressFormat::Tty => {
                let partial = state.partial.entry(id).or_default();
                for &b in chunk {
                    if b != b'\n' {
                        partial.push(b);
                        continue;
                    }
                    let line = String::from_utf8_lossy(partial).into_owned();
                    partial.clear();
                    if self.format == ProgressFormat::Plain {
                        stderr_line(format_args!(
                            "#{id} {:.3} {line}",
                            started.elapsed().as_secs_f64()
                        ));
                    } else {
                        self.tty(crate::tty::Event::Line { id, line });
                    }
                }
                if clipped && self.format == ProgressFormat::Plain {
                    stderr_line(format_args!(
                        "#{id} [output clipped, log limit 2MiB reached]"
                    ));
                }
            }
            ProgressFormat::RawJson => {
                use base64::Engine as _;
                let digest = state
                    .names
                    .get(&id)
                    .map(|n| n.0.clone())
                    .unwrap_or_default();
                let fd = if stream == Stream::Stdout { 1 } else { 2 };
                Self::emit(serde_json::json!({"logs": [{
                    "vertex": digest, "stream": fd,
                    "data": base64::engine::general_purpose::STANDARD.encode(chunk),
                    "timestamp": now_rfc3339_nanos(),
                }]}));
            }
            ProgressFormat::Quiet => {}
        }
    }
}

pub(crate) fn rfc3339(epoch: i64) -> String {
    // Days from civil (Howard Hinnant's algorithm), UTC.
    let days = epoch.div_euclid(86_400);
    let secs = epoch.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_dates() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(super::rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }
}
