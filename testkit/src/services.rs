//! Postgres and Redis servers of a test's own, on free ports, for the tests
//! that stop, restart or cut them (the shared ones are never touched): the
//! API's outage tests and the chaos run.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::Context as _;

use crate::{free_port, Process};

fn run(command: &mut Command) -> anyhow::Result<()> {
    let out = command.output().with_context(|| format!("{command:?}"))?;
    anyhow::ensure!(
        out.status.success(),
        "{command:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// A Postgres cluster of the caller's own (initdb into `dir`, on a free port),
/// to stop and start at will. As root, its binaries run as `postgres`.
pub struct PrivatePostgres {
    dir: PathBuf,
    bin: PathBuf,
    pub port: u16,
    as_root: bool,
}

impl PrivatePostgres {
    /// `PG_BINDIR`, or Debian's newest `/usr/lib/postgresql/*/bin`.
    fn bindir() -> anyhow::Result<PathBuf> {
        if let Some(dir) = std::env::var_os("PG_BINDIR") {
            return Ok(dir.into());
        }
        let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .context("no /usr/lib/postgresql: install Postgres or set PG_BINDIR")?
            .filter_map(|e| {
                let path = e.ok()?.path();
                let version = path.file_name()?.to_str()?.parse().ok()?;
                path.join("bin/initdb")
                    .exists()
                    .then(|| (version, path.join("bin")))
            })
            .collect();
        found.sort();
        found
            .pop()
            .map(|(_, bin)| bin)
            .context("no initdb under /usr/lib/postgresql")
    }

    fn command(&self, program: &str) -> Command {
        let program = self.bin.join(program);
        if self.as_root {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        }
    }

    pub fn start_new(dir: &Path) -> anyhow::Result<Self> {
        let as_root = is_root();
        let dir = dir.join("postgres");
        std::fs::create_dir_all(&dir)?;
        if as_root {
            run(Command::new("chown").arg("postgres:").arg(&dir))?;
        }
        let pg = Self {
            bin: Self::bindir()?,
            port: free_port(),
            as_root,
            dir,
        };
        run(pg
            .command("initdb")
            .args([
                "--auth=trust",
                "--username=postgres",
                "--no-sync",
                "-E",
                "UTF8",
                "-D",
            ])
            .arg(pg.dir.join("data")))?;
        pg.start()?;
        Ok(pg)
    }

    pub fn start(&self) -> anyhow::Result<()> {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=100",
            self.port,
            self.dir.display()
        );
        run(self
            .command("pg_ctl")
            .args(["-w", "-t", "60", "-l"])
            .arg(self.dir.join("log"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-o", &options, "start"])
            .stdout(Stdio::null()))
    }

    /// `fast`: transactions rolled back, clients disconnected.
    pub fn stop(&self) -> anyhow::Result<()> {
        self.stop_with("fast")
    }

    /// `pg_ctl stop -m <mode>`: `smart`, `fast` or `immediate`.
    pub fn stop_with(&self, mode: &str) -> anyhow::Result<()> {
        run(self
            .command("pg_ctl")
            .args(["-w", "-t", "60", "-m", mode, "-D"])
            .arg(self.dir.join("data"))
            .arg("stop")
            .stdout(Stdio::null()))
    }

    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .args(["-m", "immediate", "-D"])
            .arg(self.dir.join("data"))
            .arg("stop")
            .output();
    }
}

/// A redis-server of the caller's own on a free port, to stop and start.
pub struct PrivateRedis {
    pub port: u16,
    log: PathBuf,
    process: Option<Process>,
}

impl PrivateRedis {
    pub async fn start_new(dir: &Path) -> anyhow::Result<Self> {
        let mut redis = Self {
            port: free_port(),
            log: dir.join("redis.log"),
            process: None,
        };
        redis.start().await?;
        Ok(redis)
    }

    pub async fn start(&mut self) -> anyhow::Result<()> {
        let mut command = Command::new("redis-server");
        command
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"]);
        self.process = Some(Process::spawn(
            command,
            &self.log,
            "apt-get install redis-server",
        )?);
        let addr = format!("127.0.0.1:{}", self.port);
        crate::eventually(Duration::from_secs(10), "redis-server to listen", || {
            let addr = addr.clone();
            async move { tokio::net::TcpStream::connect(addr).await.ok() }
        })
        .await?;
        Ok(())
    }

    pub fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}
