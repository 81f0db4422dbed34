//! The live progress view on a terminal (`--progress tty`, the default on
//! one): a spinner per running step with the last lines of its output
//! and a byte bar per download under it; a finished step collapses to
//! one line above the live area.
//!
//! Steps run on many threads, but only the view's own thread touches the
//! terminal: the others send it events (indicatif loses lines when
//! `println` from several threads meets bars finishing).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread::JoinHandle;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Output lines shown under a running step.
const TAIL: usize = 3;
/// Output lines shown under a failed step.
const ERROR_TAIL: usize = 10;

/// What happened to a step.
pub enum Event {
    /// It started.
    Start { id: usize, name: String },
    /// It printed a line.
    Line { id: usize, line: String },
    /// It finished after `secs`.
    Done { id: usize, secs: f64 },
    /// Its result came from the cache.
    Cached { id: usize },
    /// It failed.
    Error { id: usize, message: String },
    /// It was stopped because another step failed.
    Canceled { id: usize },
    /// A transfer inside it moved: `current` of `total` bytes.
    Status {
        id: usize,
        status: String,
        current: u64,
        total: u64,
        done: bool,
    },
}

/// The view: a sender to its thread.
pub struct TtyView {
    tx: Mutex<Option<Sender<Event>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl TtyView {
    /// Starts the view's thread, drawing on stderr.
    pub fn start() -> TtyView {
        let (tx, rx) = channel();
        let thread = std::thread::spawn(move || draw(rx));
        TtyView {
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
        }
    }

    /// Hands an event to the view.
    pub fn send(&self, event: Event) {
        if let Some(tx) = self.tx.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            let _ = tx.send(event);
        }
    }

    /// Draws what is left and waits for the view to end.
    pub fn finish(&self) {
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = t.join();
        }
    }
}

impl Drop for TtyView {
    fn drop(&mut self) {
        self.finish();
    }
}

struct Step {
    name: String,
    bar: ProgressBar,
    tail_bars: Vec<ProgressBar>,
    lines: VecDeque<String>,
    /// A byte bar per transfer under way.
    statuses: BTreeMap<String, ProgressBar>,
}

fn draw(rx: Receiver<Event>) {
    let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10));
    let spinner = ProgressStyle::with_template("{spinner:.cyan} {wide_msg} {elapsed:>4}")
        .expect("a valid template")
        .tick_chars("⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏ ");
    let tail = ProgressStyle::with_template("    {wide_msg:.dim}").expect("a valid template");
    let bytes = ProgressStyle::with_template("    {msg} {bytes:>10} / {total_bytes:<10} {bar:30}")
        .expect("a valid template");
    let mut steps: BTreeMap<usize, Step> = BTreeMap::new();
    let println = |line: String| {
        let _ = multi.println(line);
    };
    for event in rx {
        match event {
            Event::Start { id, name } => {
                let bar = multi.add(
                    ProgressBar::new_spinner()
                        .with_style(spinner.clone())
                        .with_message(format!("[{id}] {name}")),
                );
                bar.enable_steady_tick(Duration::from_millis(100));
                steps.insert(
                    id,
                    Step {
                        name,
                        bar,
                        tail_bars: Vec::new(),
                        lines: VecDeque::new(),
                        statuses: BTreeMap::new(),
                    },
                );
            }
            Event::Line { id, line } => {
                let Some(step) = steps.get_mut(&id) else {
                    continue;
                };
                step.lines.push_back(line);
                while step.lines.len() > ERROR_TAIL {
                    step.lines.pop_front();
                }
                if step.tail_bars.len() < TAIL {
                    let after = step.tail_bars.last().unwrap_or(&step.bar).clone();
                    let bar = multi
                        .insert_after(&after, ProgressBar::new_spinner().with_style(tail.clone()));
                    step.tail_bars.push(bar);
                }
                let shown: Vec<&String> = step
                    .lines
                    .iter()
                    .skip(step.lines.len().saturating_sub(step.tail_bars.len()))
                    .collect();
                for (bar, line) in step.tail_bars.iter().zip(shown) {
                    bar.set_message(line.clone());
                }
            }
            Event::Status {
                id,
                status,
                current,
                total,
                done,
            } => {
                let Some(step) = steps.get_mut(&id) else {
                    continue;
                };
                if done {
                    if let Some(bar) = step.statuses.remove(&status) {
                        bar.finish_and_clear();
                        multi.remove(&bar);
                    }
                    continue;
                }
                let bar = step.statuses.entry(status.clone()).or_insert_with(|| {
                    let short = status.strip_prefix("sha256:").unwrap_or(&status);
                    multi.insert_after(
                        &step.bar,
                        ProgressBar::new(total)
                            .with_style(bytes.clone())
                            .with_message(format!("sha256:{}", &short[..short.len().min(12)])),
                    )
                });
                bar.set_length(total);
                bar.set_position(current);
            }
            Event::Done { id, secs } => {
                if let Some(step) = close(&multi, &mut steps, id) {
                    println(format!("=> [{id}] {} {secs:.1}s", step.name));
                }
            }
            Event::Cached { id } => {
                if let Some(step) = close(&multi, &mut steps, id) {
                    println(format!("=> CACHED [{id}] {}", step.name));
                }
            }
            Event::Canceled { id } => {
                if let Some(step) = close(&multi, &mut steps, id) {
                    println(format!("=> CANCELED [{id}] {}", step.name));
                }
            }
            Event::Error { id, message } => {
                if let Some(step) = close(&multi, &mut steps, id) {
                    println(format!("=> ERROR [{id}] {}: {message}", step.name));
                    for line in &step.lines {
                        println(format!("    > {line}"));
                    }
                }
            }
        }
    }
    // Whatever still shows (a build that stopped early) goes.
    for (_, step) in std::mem::take(&mut steps) {
        for b in step
            .tail_bars
            .into_iter()
            .chain(step.statuses.into_values())
        {
            b.finish_and_clear();
        }
        step.bar.finish_and_clear();
    }
    let _ = multi.clear();
}

/// Takes a step off the live area.
fn close(multi: &MultiProgress, steps: &mut BTreeMap<usize, Step>, id: usize) -> Option<Step> {
    let step = steps.remove(&id)?;
    for b in step.tail_bars.iter().chain(step.statuses.values()) {
        b.finish_and_clear();
        multi.remove(b);
    }
    step.bar.finish_and_clear();
    multi.remove(&step.bar);
    Some(step)
}
