//! What the numbers were measured on: machine, versions, commit.

use std::process::Command;

use sqlx::PgPool;

/// Facts printed above the results table.
#[derive(Debug, Clone)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub memory_gib: f64,
    pub kernel: String,
    pub postgres: String,
    /// Settings that change what the command path costs over a run.
    pub postgres_settings: String,
    pub redis: String,
    /// The broker's version, from the jars it runs on, its JVM and heap.
    pub kafka: String,
    pub java: String,
    pub kafka_heap: &'static str,
    pub librdkafka: String,
    pub rustc: String,
    pub commit: String,
}

fn command_output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".into())
}

fn proc_field(file: &str, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(file).ok()?;
    text.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
}

impl Machine {
    pub async fn describe(admin: &PgPool, redis_url: &str) -> Self {
        let memory_kib: f64 = proc_field("/proc/meminfo", "MemTotal")
            .and_then(|v| v.trim_end_matches(" kB").trim().parse().ok())
            .unwrap_or(0.0);
        let postgres: String = sqlx::query_scalar("select version()")
            .fetch_one(admin)
            .await
            .map(|v: String| v.split(" on ").next().unwrap_or(&v).to_owned())
            .unwrap_or_else(|_| "unknown".into());
        // With autovacuum off (as on these machines) dead tuples pile up over a
        // run: worth knowing when a figure drifts from one repetition to the next.
        let postgres_settings: String = sqlx::query_scalar(
            "select string_agg(name || '=' || setting, ', ' order by name) from pg_settings \
             where name in ('autovacuum', 'synchronous_commit', 'shared_buffers', 'max_connections')",
        )
        .fetch_one(admin)
        .await
        .unwrap_or_else(|_| "unknown".into());
        let redis = redis_version(redis_url)
            .await
            .unwrap_or_else(|| "unknown".into());
        let dirty = !command_output("git", &["status", "--porcelain"]).is_empty();
        let commit = format!(
            "{}{}",
            command_output("git", &["rev-parse", "--short", "HEAD"]),
            if dirty {
                " (with uncommitted changes)"
            } else {
                ""
            }
        );
        Self {
            cpu: proc_field("/proc/cpuinfo", "model name").unwrap_or_else(|| "unknown".into()),
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            memory_gib: memory_kib / 1024.0 / 1024.0,
            kernel: command_output("uname", &["-r"]),
            postgres,
            postgres_settings,
            redis,
            kafka: kafka_version().unwrap_or_else(|| "Apache Kafka (unknown version)".into()),
            java: java_version().unwrap_or_else(|| "unknown Java".into()),
            kafka_heap: testkit::ClusterOptions::default().heap,
            librdkafka: rdkafka::util::get_rdkafka_version().1,
            rustc: command_output("rustc", &["--version"]),
            commit,
        }
    }

    pub fn markdown(&self) -> String {
        format!(
            "- Machine: {} cores ({}), {:.1} GiB memory, Linux {}; shared with other work, so only the ratios decide.\n\
             - Versions: {}, Redis {}, {} (a single KRaft node per scenario on loopback, {}, -Xmx{}), librdkafka {}, {}.\n\
             - Postgres settings: {}.\n\
             - Commit: {}.\n",
            self.cores,
            self.cpu,
            self.memory_gib,
            self.kernel,
            self.postgres,
            self.redis,
            self.kafka,
            self.java,
            self.kafka_heap,
            self.librdkafka,
            self.rustc,
            self.postgres_settings,
            self.commit
        )
    }
}

async fn redis_version(url: &str) -> Option<String> {
    let client = redis::Client::open(url).ok()?;
    let mut conn = client.get_multiplexed_async_connection().await.ok()?;
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut conn)
        .await
        .ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .map(|v| v.trim().to_owned())
}

/// "Apache Kafka 4.4.0", from the broker jar's name (`kafka_<scala>-<version>.jar`)
/// in the directory the bench's nodes run from.
fn kafka_version() -> Option<String> {
    std::fs::read_dir(testkit::kafka::kafka_libs())
        .ok()?
        .flatten()
        .find_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let version = name.strip_prefix("kafka_")?.strip_suffix(".jar")?;
            let (_scala, version) = version.split_once('-')?;
            Some(format!("Apache Kafka {version}"))
        })
}

/// "openjdk 17.0.15", from the first line of `java -version` (on stderr):
/// `openjdk version "17.0.15" 2025-04-15`.
fn java_version() -> Option<String> {
    let output = Command::new("java").arg("-version").output().ok()?;
    let text = String::from_utf8_lossy(&output.stderr);
    let (vendor, rest) = text.lines().next()?.split_once(" version ")?;
    let version = rest.split('"').nth(1)?;
    Some(format!("{vendor} {version}"))
}
