//! How much each scenario measures, per mode. Quick mode is for a sanity check
//! in under two minutes; full mode is the one to quote.

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    Quick,
    Full,
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub mode: Mode,
    /// Scenario 1: HTTP clients and pgbench clients.
    pub concurrency: usize,
    pub throughput_reps: usize,
    /// pgbench takes whole seconds.
    pub throughput_secs: u64,
    /// Scenario 2.
    pub drain_events: usize,
    pub drain_reps: usize,
    /// Scenario 3: offered loads (events/s; through the API up to
    /// `latency_http_max_rate`, straight into the log above it), seconds per
    /// load, repetitions.
    pub latency_rates: [f64; 3],
    pub latency_http_max_rate: f64,
    pub latency_secs: f64,
    pub latency_reps: usize,
    /// Scenario 4: list sizes; timed calls per variant (small sizes, then 1,000).
    pub list_sizes: [usize; 3],
    pub list_iters: usize,
    pub list_iters_large: usize,
    /// Scenario 7: log sizes (each against an empty log beside it), timed
    /// calls per read, events drained at each size.
    pub growth_sizes: Vec<i64>,
    pub growth_iters: usize,
    /// Reps of the paired (empty, filled) measures at each size.
    pub growth_reps: usize,
    pub growth_drain_events: i64,
    /// Scenario 5: offered load, seconds per phase, repetitions of up/down.
    pub outage_rate: f64,
    pub outage_secs: f64,
    pub outage_reps: usize,
}

impl Plan {
    pub fn new(mode: Mode) -> Self {
        let quick = mode == Mode::Quick;
        Self {
            mode,
            concurrency: 32,
            throughput_reps: if quick { 3 } else { 5 },
            throughput_secs: if quick { 3 } else { 10 },
            drain_events: if quick { 20_000 } else { 200_000 },
            drain_reps: if quick { 5 } else { 7 },
            latency_rates: [200.0, 1_000.0, 5_000.0],
            latency_http_max_rate: 1_000.0,
            latency_secs: if quick { 4.0 } else { 15.0 },
            latency_reps: if quick { 1 } else { 3 },
            list_sizes: [10, 100, 1_000],
            list_iters: if quick { 100 } else { 1_000 },
            list_iters_large: if quick { 10 } else { 100 },
            growth_sizes: if quick {
                vec![1_000_000]
            } else {
                vec![1_000_000, 10_000_000]
            },
            growth_iters: if quick { 200 } else { 1_000 },
            growth_reps: if quick { 2 } else { 3 },
            growth_drain_events: if quick { 20_000 } else { 100_000 },
            outage_rate: 200.0,
            outage_secs: if quick { 2.5 } else { 8.0 },
            outage_reps: if quick { 2 } else { 5 },
        }
    }

    pub fn name(&self) -> &'static str {
        match self.mode {
            Mode::Quick => "quick",
            Mode::Full => "full",
        }
    }

    pub fn secs(value: f64) -> Duration {
        Duration::from_secs_f64(value)
    }
}
