//! The one progress line of long CLI work (blob transfers, large queries), on stderr: how much,
//! how fast, and with a known total the share done and an ETA. Drawn only for a person watching
//! (see [`Progress::wanted`]), at most 10 times a second; nothing when piped.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::output::human_bytes;

/// How often the line is redrawn.
const REDRAW: Duration = Duration::from_millis(100);

/// What is counted.
#[derive(Clone, Copy)]
pub enum Unit {
    Bytes,
    Events,
}

/// A count shared between the work (which adds) and its progress line (which reads).
#[derive(Clone, Default)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

pub struct Progress {
    enabled: bool,
    label: &'static str,
    unit: Unit,
    total: Option<u64>,
    counter: Counter,
    started: Instant,
    last_draw: Option<Instant>,
    adds: u64,
}

impl Progress {
    /// Whether a line may be drawn: stderr is a terminal, and the command's output does not go
    /// to that same terminal (`output_on_stdout`: it writes its results to stdout).
    pub fn wanted(output_on_stdout: bool) -> bool {
        std::io::stderr().is_terminal() && !(output_on_stdout && std::io::stdout().is_terminal())
    }

    pub fn new(label: &'static str, unit: Unit, total: Option<u64>, enabled: bool) -> Progress {
        Progress {
            enabled,
            label,
            unit,
            total,
            counter: Counter::default(),
            started: Instant::now(),
            last_draw: None,
            adds: 0,
        }
    }

    /// The counter to add to from elsewhere (see [`Progress::drive`]).
    pub fn counter(&self) -> Counter {
        self.counter.clone()
    }

    /// Counts `n` more and redraws when due: for work done in the caller's own loop. The clock
    /// is read every 1024 calls only, so counting single events stays cheap.
    pub fn add(&mut self, n: u64) {
        self.counter.add(n);
        self.adds += 1;
        if self.enabled && self.adds.is_multiple_of(1024) && self.due() {
            self.draw();
        }
    }

    /// Runs `fut`, redrawing while it runs: for work that counts through [`Progress::counter`].
    pub async fn drive<T>(&mut self, fut: impl std::future::Future<Output = T>) -> T {
        let mut fut = std::pin::pin!(fut);
        let mut tick = tokio::time::interval(REDRAW);
        loop {
            tokio::select! {
                out = &mut fut => return out,
                _ = tick.tick() => if self.enabled { self.draw() },
            }
        }
    }

    /// Draws the final figures and ends the line, if a line was drawn at all.
    pub fn finish(&mut self) {
        if self.last_draw.is_some() {
            self.draw();
            eprintln!();
        }
    }

    fn due(&self) -> bool {
        self.last_draw.is_none_or(|t| t.elapsed() >= REDRAW)
    }

    fn draw(&mut self) {
        self.last_draw = Some(Instant::now());
        let done = self.counter.get();
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let rate = done as f64 / secs;
        let amount = |n: u64| match self.unit {
            Unit::Bytes => human_bytes(n),
            Unit::Events => format!("{n} events"),
        };
        let line = match self.total {
            Some(total) if total > 0 => {
                let eta = if rate > 0.0 {
                    format!("{:.0}s", total.saturating_sub(done) as f64 / rate)
                } else {
                    "?".into()
                };
                format!(
                    "{} {} / {} ({:.0}%) {}/s ETA {eta}",
                    self.label,
                    amount(done),
                    amount(total),
                    done as f64 * 100.0 / total as f64,
                    amount(rate as u64)
                )
            }
            _ => format!("{} {} {}/s", self.label, amount(done), amount(rate as u64)),
        };
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r\x1b[2K{line}");
        let _ = err.flush();
    }
}
