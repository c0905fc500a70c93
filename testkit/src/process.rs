//! A child process with stdin closed and its output in a log file, killed when
//! dropped, so a failed test or scenario leaves nothing running.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::Context as _;

/// A spawned program; see the module doc.
pub struct Process {
    /// The program's file name, for messages.
    name: String,
    /// `None` once the process has been killed or has exited and been reaped.
    child: Option<Child>,
}

/// Sends `signal` (e.g. `STOP`, `CONT`, `TERM`) to `pid` with kill(1): the
/// workspace forbids `unsafe`, so no libc.
pub fn signal(pid: u32, signal: &str) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()?;
    anyhow::ensure!(status.success(), "kill -{signal} {pid} failed");
    Ok(())
}

impl Process {
    /// Spawns `command` with stdin closed and stdout and stderr to `log`
    /// (created or truncated); `missing` says how to get the program if it
    /// cannot start.
    pub fn spawn(mut command: Command, log: &Path, missing: &str) -> anyhow::Result<Self> {
        let file = std::fs::File::create(log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let program = PathBuf::from(command.get_program());
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("cannot start {} ({missing})", program.display()))?;
        let name = program.file_name().map_or_else(
            || program.display().to_string(),
            |name| name.to_string_lossy().into_owned(),
        );
        Ok(Self {
            name,
            child: Some(child),
        })
    }

    /// `None` once killed or reaped.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends `signal` (see [`signal`]).
    pub fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let pid = self
            .pid()
            .with_context(|| format!("{} is not running", self.name))?;
        self::signal(pid, signal)
    }

    /// `false` once the process has exited (e.g. panicked) or been killed.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    /// The exit status, if the process has exited since the last look; reaps it.
    pub fn try_exit(&mut self) -> std::io::Result<Option<ExitStatus>> {
        let Some(child) = self.child.as_mut() else {
            return Ok(None);
        };
        let status = child.try_wait()?;
        if status.is_some() {
            self.child = None;
        }
        Ok(status)
    }

    /// Waits up to `timeout` for the process to exit on its own; reaps it.
    pub async fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let child = self
            .child
            .as_mut()
            .with_context(|| format!("{} is not running", self.name))?;
        let what = format!("{} to exit", self.name);
        let status = crate::eventually(timeout, &what, || {
            std::future::ready(child.try_wait().ok().flatten())
        })
        .await?;
        self.child = None;
        Ok(status)
    }

    /// SIGKILL, and reap it; nothing once it is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}
