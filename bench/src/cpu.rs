//! CPU time spent by the processes of a leg, read from `/proc`: where a
//! throughput goes on a 2-core machine (broker, relay or producer, Postgres).
//! CPU seconds per event depend far less on what else the machine runs than
//! wall-clock rates do, so they show what a missed ratio is made of.

use std::time::Duration;

/// Clock ticks per second of `/proc/<pid>/stat` (`getconf CLK_TCK`; 100 on Linux).
fn ticks_per_second() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok()?.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// User + system CPU time of `pid` so far (all its threads), or zero if gone.
pub fn of_pid(pid: u32) -> Duration {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| ticks(&stat))
        .map_or(Duration::ZERO, |t| {
            Duration::from_secs_f64(t as f64 / ticks_per_second())
        })
}

/// User + system CPU time so far of every `postgres` process (backends and
/// background workers). Backends that exit meanwhile take theirs with them, so
/// take both readings while the connections of interest are open.
pub fn of_postgres() -> Duration {
    let total: u64 = postgres_stats()
        .iter()
        .filter_map(|(_, stat)| ticks(stat))
        .sum();
    Duration::from_secs_f64(total as f64 / ticks_per_second())
}

/// Every `postgres` process: the postmaster, its backends and background workers.
pub fn postgres_pids() -> Vec<u32> {
    postgres_stats().into_iter().map(|(pid, _)| pid).collect()
}

fn postgres_stats() -> Vec<(u32, String)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            Some((
                pid,
                std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?,
            ))
        })
        .filter(|(_, stat)| command(stat) == Some("postgres"))
        .collect()
}

/// The command name in `/proc/<pid>/stat`: between the first `(` and the last `)`.
fn command(stat: &str) -> Option<&str> {
    Some(&stat[stat.find('(')? + 1..stat.rfind(')')?])
}

/// utime + stime: fields 14 and 15, i.e. the 12th and 13th after the `)`
/// that ends the command name (which may itself hold spaces).
fn ticks(stat: &str) -> Option<u64> {
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// The machine's CPU time so far from `/proc/stat`: on a virtual machine,
/// `steal` is time the hypervisor gave to other guests while this one had work.
#[derive(Debug, Clone, Copy)]
pub struct Host {
    steal: u64,
    total: u64,
    busy: u64,
}

impl Host {
    pub fn now() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let fields: Vec<u64> = stat
            .lines()
            .next()?
            .strip_prefix("cpu ")?
            .split_whitespace()
            .filter_map(|f| f.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal [guest guest_nice]:
        // guest time is already counted in user and nice.
        Some(Self {
            steal: *fields.get(7)?,
            total: fields.iter().take(8).sum(),
            // Not idle, iowait or steal: CPU time this guest's processes used.
            busy: fields.iter().take(7).sum::<u64>() - fields.get(3)? - fields.get(4)?,
        })
    }

    /// CPU time the machine's processes (all cores) have used so far.
    fn busy(&self) -> Duration {
        Duration::from_secs_f64(self.busy as f64 / ticks_per_second())
    }

    /// The share of all CPU time since `self` that was stolen, in percent.
    pub fn stolen_since(&self) -> Option<f64> {
        let now = Self::now()?;
        let total = now.total.checked_sub(self.total).filter(|t| *t > 0)?;
        Some(100.0 * now.steal.saturating_sub(self.steal) as f64 / total as f64)
    }
}

/// CPU time of named parts of a leg, between [`Meter::start`] and [`Meter::stop`].
pub struct Meter {
    parts: Vec<(&'static str, Source, Duration)>,
}

#[derive(Clone, Copy)]
pub enum Source {
    Pid(u32),
    Postgres,
    /// Every process on the machine: what a part not metered by pid (a
    /// short-lived child such as pgbench) cost is this minus the parts that are.
    Machine,
}

impl Source {
    fn read(self) -> Duration {
        match self {
            Source::Pid(pid) => of_pid(pid),
            Source::Postgres => of_postgres(),
            Source::Machine => Host::now().map_or(Duration::ZERO, |host| host.busy()),
        }
    }
}

/// What a leg cost each part, in CPU time.
#[derive(Debug, Clone, Default)]
pub struct Spent(pub Vec<(&'static str, Duration)>);

impl Meter {
    pub fn start(parts: &[(&'static str, Source)]) -> Self {
        Self {
            parts: parts
                .iter()
                .map(|&(name, source)| (name, source, source.read()))
                .collect(),
        }
    }

    pub fn stop(self) -> Spent {
        Spent(
            self.parts
                .into_iter()
                .map(|(name, source, before)| (name, source.read().saturating_sub(before)))
                .collect(),
        )
    }
}

impl Spent {
    pub fn get(&self, name: &str) -> Duration {
        self.0
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(Duration::ZERO, |(_, d)| *d)
    }

    /// The parts' names, in the order they were metered.
    pub fn names(&self) -> Vec<&'static str> {
        self.0.iter().map(|(name, _)| *name).collect()
    }

    pub fn total(&self) -> Duration {
        self.0.iter().map(|(_, d)| *d).sum()
    }
}

/// The name every Postgres process's CPU time goes under.
pub const POSTGRES: &str = "Postgres";

/// One metered leg: how many operations (events, commands) in how long, and
/// the CPU time each part spent on them.
pub struct Leg {
    pub ops: usize,
    pub elapsed: Duration,
    pub spent: Spent,
}

impl Leg {
    pub fn rate(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }

    /// CPU microseconds per operation (= milliseconds per 1,000) of `spent`.
    pub fn micros_per_op(&self, spent: Duration) -> f64 {
        spent.as_secs_f64() * 1e6 / self.ops.max(1) as f64
    }

    /// CPU microseconds per operation of `part`, or of all parts.
    pub fn micros_of(&self, part: Option<&str>) -> f64 {
        self.micros_per_op(part.map_or_else(|| self.spent.total(), |p| self.spent.get(p)))
    }

    /// Cores kept busy on average by `spent`.
    pub fn cores(&self, spent: Duration) -> f64 {
        spent.as_secs_f64() / self.elapsed.as_secs_f64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_times_after_a_command_name_with_spaces() {
        let stat = "42 (tokio rt) S 1 42 42 0 -1 4194560 100 0 0 0 250 37 0 0 20 0 9 0 1 2 3";
        assert_eq!(command(stat), Some("tokio rt"));
        assert_eq!(ticks(stat), Some(287));
    }

    #[test]
    fn this_process_has_spent_some_cpu() {
        // Spin for longer than a clock tick (10 ms), so some CPU time is on record.
        let started = std::time::Instant::now();
        while started.elapsed() < Duration::from_millis(50) {
            std::hint::black_box(started.elapsed());
        }
        assert!(of_pid(std::process::id()) > Duration::ZERO);
    }
}
