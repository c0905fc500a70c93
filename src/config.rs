//! Typed settings. Every field is a flag and an env var; the README lists them.

use std::{fmt, net::SocketAddr, num::NonZeroU32, str::FromStr, time::Duration};

/// Settings of the `serve` command.
#[derive(Debug, Clone, clap::Args)]
pub struct Settings {
    /// Postgres connection string.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: String,

    /// Redis connection string (viewer presence).
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,

    /// Prefix for every Redis key this service writes, so deployments (and tests) can share one Redis.
    #[arg(long, env = "REDIS_KEY_PREFIX", default_value = "nova:")]
    pub redis_key_prefix: String,

    /// HS256 secret for bearer tokens (at least 32 bytes).
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: String,

    /// The secret being rotated out: tokens it signed still verify (never
    /// signed with). Set it to the old JWT_SECRET for one token lifetime.
    #[arg(long, env = "JWT_PREVIOUS_SECRET", hide_env_values = true)]
    pub jwt_previous_secret: Option<String>,

    /// When set, tokens must carry `iss` equal to it.
    #[arg(long, env = "JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// When set, tokens must carry `aud` equal to it.
    #[arg(long, env = "JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// Address the HTTP server listens on.
    #[arg(long, env = "BIND_ADDR", default_value = "127.0.0.1:8080")]
    pub bind_addr: SocketAddr,

    /// Maximum Postgres connections in the pool.
    #[arg(long, env = "DB_MAX_CONNECTIONS", default_value_t = 20)]
    pub db_max_connections: u32,

    /// How long a request waits for a Postgres connection before it answers 503.
    #[arg(long, env = "DB_ACQUIRE_TIMEOUT", default_value = "2s", value_parser = humantime::parse_duration)]
    pub db_acquire_timeout: Duration,

    /// Upper bound of one SQL statement (Postgres `statement_timeout`).
    #[arg(long, env = "DB_STATEMENT_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub db_statement_timeout: Duration,

    /// Upper bound of one Redis round trip; past it, viewer counts are reported unavailable.
    #[arg(long, env = "REDIS_TIMEOUT", default_value = "100ms", value_parser = humantime::parse_duration)]
    pub redis_timeout: Duration,

    /// A viewer counts as watching while its last heartbeat is younger than this.
    #[arg(long, env = "PRESENCE_WINDOW", default_value = "30s", value_parser = humantime::parse_duration)]
    pub presence_window: Duration,

    /// Upper bound of one HTTP request.
    #[arg(long, env = "REQUEST_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,

    /// Requests served at once; past it, API requests are shed with 503 (health
    /// and metrics are always served). Bounds memory and latency under overload.
    #[arg(long, env = "MAX_IN_FLIGHT_REQUESTS", default_value_t = 512)]
    pub max_in_flight_requests: usize,

    /// Long-polls (`GET /v1/events?wait=N`) open at once; past it, 503. They
    /// never count against MAX_IN_FLIGHT_REQUESTS.
    #[arg(long, env = "LONG_POLL_MAX", default_value_t = 1024)]
    pub long_poll_max: usize,

    /// The longest a long-poll is held, whatever its `wait` (≤ 30 s): lower it
    /// below a proxy's idle timeout. Past it, an empty page, as at any deadline.
    #[arg(long, env = "LONG_POLL_MAX_WAIT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub long_poll_max_wait: Duration,

    /// Long-polls open at once per user; past it, 429.
    #[arg(long, env = "LONG_POLL_PER_USER", default_value_t = 4)]
    pub long_poll_per_user: usize,

    /// Commands (start, end) per user: `N/s`, `N/min` or `N/h` (a burst of N,
    /// refilled evenly over the period), or `off`. Past it, 429.
    #[arg(long, env = "RATE_LIMIT_COMMANDS", default_value = "30/min")]
    pub rate_limit_commands: Rate,

    /// Heartbeats per viewer (a token's user, or an anonymous id). Past it, 429.
    #[arg(long, env = "RATE_LIMIT_HEARTBEATS", default_value = "20/min")]
    pub rate_limit_heartbeats: Rate,

    /// Anonymous heartbeats per client address (many viewers may share one
    /// behind a NAT). Past it, 429.
    #[arg(
        long,
        env = "RATE_LIMIT_ANONYMOUS_PER_ADDRESS",
        default_value = "600/min"
    )]
    pub rate_limit_anonymous_per_address: Rate,

    /// How long a command's response is replayed for its `Idempotency-Key`;
    /// older records are deleted in the background.
    #[arg(long, env = "IDEMPOTENCY_TTL", default_value = "24h", value_parser = humantime::parse_duration)]
    pub idempotency_ttl: Duration,

    /// How often expired idempotency records are deleted (in batches of 1000).
    #[arg(long, env = "IDEMPOTENCY_CLEANUP_INTERVAL", default_value = "1m", value_parser = humantime::parse_duration)]
    pub idempotency_cleanup_interval: Duration,

    /// Address of the admin listener: `/metrics` (and the probes). Keep it
    /// private: loopback by default, never the public port.
    #[arg(long, env = "ADMIN_ADDR", default_value = "127.0.0.1:9465")]
    pub admin_addr: SocketAddr,

    /// On SIGTERM/SIGINT, how long in-flight requests may take to finish.
    #[arg(long, env = "SHUTDOWN_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,
}

impl Settings {
    /// Settings for tests and embedding: port 0, short timeouts, a unique Redis prefix.
    pub fn for_tests(database_url: impl Into<String>, redis_url: impl Into<String>) -> Self {
        Self {
            database_url: database_url.into(),
            redis_url: redis_url.into(),
            redis_key_prefix: format!("nova-test:{}:", uuid::Uuid::now_v7()),
            jwt_secret: "test-secret-test-secret-test-secret!".into(),
            jwt_previous_secret: None,
            jwt_issuer: None,
            jwt_audience: None,
            bind_addr: ([127, 0, 0, 1], 0).into(),
            db_max_connections: 20,
            db_acquire_timeout: Duration::from_secs(2),
            db_statement_timeout: Duration::from_secs(5),
            redis_timeout: Duration::from_millis(200),
            presence_window: Duration::from_secs(30),
            request_timeout: Duration::from_secs(10),
            max_in_flight_requests: 512,
            long_poll_max: 1024,
            long_poll_per_user: 4,
            long_poll_max_wait: Duration::from_secs(30),
            // Off: tests that exercise them turn them on.
            rate_limit_commands: Rate::Off,
            rate_limit_heartbeats: Rate::Off,
            rate_limit_anonymous_per_address: Rate::Off,
            shutdown_grace: Duration::from_secs(5),
            idempotency_ttl: Duration::from_secs(24 * 3600),
            idempotency_cleanup_interval: Duration::from_secs(60),
            admin_addr: ([127, 0, 0, 1], 0).into(),
        }
    }
}

/// A rate limit: a burst of `count`, refilled evenly over `per`; or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rate {
    Off,
    Limit { count: NonZeroU32, per: Duration },
}

impl FromStr for Rate {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("off") {
            return Ok(Rate::Off);
        }
        let invalid = || format!("expected N/s, N/min, N/h or off, got {text:?}");
        let (count, unit) = text.split_once('/').ok_or_else(invalid)?;
        let count: NonZeroU32 = count.trim().parse().map_err(|_| invalid())?;
        let per = match unit.trim() {
            "s" | "sec" => Duration::from_secs(1),
            "min" | "m" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            _ => return Err(invalid()),
        };
        Ok(Rate::Limit { count, per })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rate::Off => f.write_str("off"),
            Rate::Limit { count, per } => write!(f, "{count}/{}s", per.as_secs()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse() {
        assert_eq!("off".parse(), Ok(Rate::Off));
        assert_eq!(
            "30/min".parse(),
            Ok(Rate::Limit {
                count: NonZeroU32::new(30).unwrap(),
                per: Duration::from_secs(60)
            })
        );
        assert_eq!(
            " 5 / s ".parse::<Rate>().unwrap(),
            Rate::Limit {
                count: NonZeroU32::new(5).unwrap(),
                per: Duration::from_secs(1)
            }
        );
        for bad in ["", "0/min", "-1/s", "30", "30/day", "x/s"] {
            assert!(bad.parse::<Rate>().is_err(), "{bad}");
        }
    }
}
