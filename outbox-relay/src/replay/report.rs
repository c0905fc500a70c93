//! What a replay shows while it runs: a progress bar with rate and ETA when
//! stderr is a terminal, otherwise a log line every few seconds (a redrawn bar
//! is noise in a log file), and a summary at the end.

use std::fmt;
use std::io::IsTerminal as _;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

/// How often the plain output logs progress.
const LINE_EVERY: Duration = Duration::from_secs(2);

pub struct Report {
    bar: Option<ProgressBar>,
    name: String,
    selected: u64,
    /// Acknowledged before this run (an earlier run of a resumed replay).
    before: u64,
    /// Acknowledged by this run.
    sent: u64,
    started: Instant,
    last_line: Instant,
}

/// The last line of a replay: `sent`, `skipped` (already sent by an earlier run
/// of the same replay), `elapsed`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub sent: u64,
    pub skipped: u64,
    pub elapsed: Duration,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let seconds = self.elapsed.as_secs_f64();
        write!(
            f,
            "sent {}, skipped {}, elapsed {seconds:.2}s ({:.0} events/s)",
            self.sent,
            self.skipped,
            per_second(self.sent, self.elapsed)
        )
    }
}

fn per_second(events: u64, elapsed: Duration) -> f64 {
    let seconds = elapsed.as_secs_f64();
    if seconds > 0.0 {
        events as f64 / seconds
    } else {
        0.0
    }
}

impl Report {
    pub fn new(name: &str, selected: u64, before: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(Some(selected), ProgressDrawTarget::stderr())
                .with_position(before)
                .with_prefix(name.to_owned());
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix} {wide_bar} {pos}/{len} {rate} ETA {eta} ({elapsed})",
                )
                .expect("a valid template")
                // indicatif's `{per_sec}` prints four decimals.
                .with_key(
                    "rate",
                    |state: &ProgressState, w: &mut dyn std::fmt::Write| {
                        let _ = write!(w, "{:.0}/s", state.per_sec());
                    },
                ),
            );
            bar
        });
        let now = Instant::now();
        Self {
            bar,
            name: name.to_owned(),
            selected,
            before,
            sent: 0,
            started: now,
            last_line: now,
        }
    }

    pub fn sent(&mut self, events: u64) {
        self.sent += events;
        if let Some(bar) = &self.bar {
            bar.inc(events);
        } else if self.last_line.elapsed() >= LINE_EVERY {
            self.last_line = Instant::now();
            let rate = per_second(self.sent, self.started.elapsed());
            let left = self.selected.saturating_sub(self.before + self.sent);
            // `rate` is above zero here: events were sent, and time has passed.
            let eta = Duration::from_secs((left as f64 / rate).ceil() as u64);
            tracing::info!(replay = %self.name, sent = self.before + self.sent, of = self.selected,
                rate = format_args!("{rate:.0}/s"), eta = %humantime::format_duration(eta),
                "replay progress");
        }
    }

    /// Runs `log` with the bar hidden, so a log line is not drawn over it.
    pub fn suspend<R>(&self, log: impl FnOnce() -> R) -> R {
        match &self.bar {
            Some(bar) => bar.suspend(log),
            None => log(),
        }
    }

    pub fn finish(self) -> Summary {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        Summary {
            sent: self.sent,
            skipped: self.before,
            elapsed: self.started.elapsed(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_names_sent_skipped_and_elapsed() {
        let summary = Summary {
            sent: 50,
            skipped: 10,
            elapsed: Duration::from_millis(500),
        };
        assert_eq!(
            summary.to_string(),
            "sent 50, skipped 10, elapsed 0.50s (100 events/s)"
        );
    }
}
