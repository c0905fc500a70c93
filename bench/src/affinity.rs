//! Which cores a leg's processes may run on (`taskset`): the "split" legs put
//! the servers (Postgres, the broker) on core 0 and the clients (the API and
//! the load generator, pgbench, the relay or the raw producer) on core 1, as
//! they would run on machines of their own. On the shared legs everything runs
//! on both cores, and a ratio is then the ratio of CPU per operation of
//! everything on the machine; on a split leg it shows which side bounds it.

use anyhow::Context as _;

/// The cores of a split leg: servers on the first, clients on the second.
const SERVERS: &str = "0";
const CLIENTS: &str = "1";

/// Pins processes for one split leg; dropping it gives every one of them all
/// cores again, also on an early return.
pub struct Split {
    pinned: Vec<u32>,
    all: String,
}

impl Split {
    /// Gives every Postgres process all cores again: a bench killed during a
    /// split leg (Ctrl-C runs no destructors) leaves the server pinned to one.
    pub fn reset_postgres() {
        if let Ok(all) = all_cores() {
            unpin(crate::cpu::postgres_pids(), &all);
        }
    }

    /// Whether the machine has the two cores a split leg needs.
    pub fn possible() -> bool {
        std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2)
    }

    /// Pins every Postgres process (the postmaster too, so backends forked
    /// during the leg inherit core 0) and `servers` to core 0; this process
    /// (children spawned during the leg inherit it) and `clients` to core 1.
    pub fn pin(servers: &[u32], clients: &[u32]) -> anyhow::Result<Self> {
        let mut split = Self {
            pinned: Vec::new(),
            all: all_cores()?,
        };
        for pid in crate::cpu::postgres_pids()
            .into_iter()
            .chain(servers.iter().copied())
        {
            split.set(pid, SERVERS)?;
        }
        for pid in clients.iter().copied().chain([std::process::id()]) {
            split.set(pid, CLIENTS)?;
        }
        Ok(split)
    }

    fn set(&mut self, pid: u32, cores: &str) -> anyhow::Result<()> {
        taskset(pid, cores)?;
        self.pinned.push(pid);
        Ok(())
    }
}

impl Drop for Split {
    fn drop(&mut self) {
        // Backends forked during the leg inherited core 0 from the postmaster.
        let pids = std::mem::take(&mut self.pinned)
            .into_iter()
            .chain(crate::cpu::postgres_pids());
        unpin(pids, &self.all);
    }
}

/// Every core of the machine, as `taskset -c` takes it.
fn all_cores() -> anyhow::Result<String> {
    Ok(format!(
        "0-{}",
        std::thread::available_parallelism()?.get() - 1
    ))
}

/// Gives `pids` all cores again; a process gone meanwhile (or another
/// user's) has nothing to undo.
fn unpin(pids: impl IntoIterator<Item = u32>, all: &str) {
    for pid in pids {
        let _ = taskset(pid, all);
    }
}

/// `taskset -a -p -c <cores> <pid>`: every thread of `pid`.
fn taskset(pid: u32, cores: &str) -> anyhow::Result<()> {
    let status = std::process::Command::new("taskset")
        .args(["-a", "-p", "-c", cores, &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .context("cannot run taskset (util-linux)")?;
    anyhow::ensure!(status.success(), "taskset {cores} {pid}: {status}");
    Ok(())
}
