//! Per-caller rate limits (GCRA, from `governor`): commands per user,
//! heartbeats per viewer, anonymous heartbeats per client address. Over a
//! limit: 429 `rate_limited` with `Retry-After`. In-process: with several API
//! replicas, each enforces the limit on its own share of the traffic.

use std::{
    hash::Hash,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use axum::{extract::ConnectInfo, http::request::Parts};
use governor::{
    clock::{Clock, DefaultClock},
    state::keyed::DefaultKeyedStateStore,
    Quota, RateLimiter,
};
use uuid::Uuid;

use super::error::ApiError;
use crate::{config::Rate, presence::Viewer};

type Keyed<K> = RateLimiter<K, DefaultKeyedStateStore<K>, DefaultClock>;

/// One keyed limit, or none when configured `off`.
struct Limit<K: Hash + Eq + Clone>(Option<Keyed<K>>);

impl<K: Hash + Eq + Clone> Limit<K> {
    fn new(rate: Rate) -> Self {
        Self(match rate {
            Rate::Off => None,
            Rate::Limit { count, per } => {
                let quota = Quota::with_period(per / count.get())
                    .unwrap_or_else(|| Quota::per_second(count))
                    .allow_burst(count);
                Some(RateLimiter::keyed(quota))
            }
        })
    }

    fn check(&self, key: &K, what: &'static str) -> Result<(), ApiError> {
        let Some(limiter) = &self.0 else {
            return Ok(());
        };
        limiter.check_key(key).map_err(|not_until| {
            metrics::counter!("rate_limited_total", "limit" => what).increment(1);
            let wait = not_until.wait_time_from(limiter.clock().now());
            ApiError::RateLimited {
                code: "rate_limited",
                retry_after_secs: wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
            }
        })
    }

    /// Forgets keys whose state is back to "full": bounds memory by the active callers.
    fn forget_idle(&self) {
        if let Some(limiter) = &self.0 {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

pub struct RateLimits {
    commands: Limit<Uuid>,
    heartbeats: Limit<Viewer>,
    anonymous_per_address: Limit<IpAddr>,
}

/// How often idle keys are forgotten.
pub const FORGET_IDLE_EVERY: Duration = Duration::from_secs(60);

impl RateLimits {
    pub fn new(commands: Rate, heartbeats: Rate, anonymous_per_address: Rate) -> Self {
        Self {
            commands: Limit::new(commands),
            heartbeats: Limit::new(heartbeats),
            anonymous_per_address: Limit::new(anonymous_per_address),
        }
    }

    /// A start or end by `user`.
    pub fn command(&self, user: Uuid) -> Result<(), ApiError> {
        self.commands.check(&user, "commands")
    }

    /// A heartbeat by `viewer`; an anonymous one also counts against its address.
    pub fn heartbeat(&self, viewer: Viewer, address: Option<IpAddr>) -> Result<(), ApiError> {
        if let (Viewer::Anonymous(_), Some(address)) = (viewer, address) {
            self.anonymous_per_address
                .check(&address, "anonymous_per_address")?;
        }
        self.heartbeats.check(&viewer, "heartbeats")
    }

    pub fn forget_idle(&self) {
        self.commands.forget_idle();
        self.heartbeats.forget_idle();
        self.anonymous_per_address.forget_idle();
    }
}

/// The peer's address (behind a proxy, the proxy's); absent when the router is
/// driven in-process.
pub fn client_address(parts: &Parts) -> Option<IpAddr> {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip())
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use super::*;

    fn rate(count: u32, per_secs: u64) -> Rate {
        Rate::Limit {
            count: NonZeroU32::new(count).unwrap(),
            per: Duration::from_secs(per_secs),
        }
    }

    #[test]
    fn a_burst_then_429_with_a_retry_after_per_key() {
        let limits = RateLimits::new(rate(2, 60), Rate::Off, Rate::Off);
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        assert!(limits.command(a).is_ok());
        assert!(limits.command(a).is_ok());
        match limits.command(a) {
            Err(ApiError::RateLimited {
                retry_after_secs, ..
            }) => assert!((29..=30).contains(&retry_after_secs), "{retry_after_secs}"),
            other => panic!("{other:?}"),
        }
        assert!(limits.command(b).is_ok(), "keys are apart");
    }

    #[test]
    fn anonymous_heartbeats_count_per_id_and_per_address() {
        let limits = RateLimits::new(Rate::Off, rate(2, 60), rate(3, 60));
        let address: IpAddr = [127, 0, 0, 1].into();
        let one = Viewer::Anonymous(Uuid::now_v7());
        assert!(limits.heartbeat(one, Some(address)).is_ok());
        assert!(limits.heartbeat(one, Some(address)).is_ok());
        assert!(limits.heartbeat(one, Some(address)).is_err(), "per id");
        // The third call used the address's third token before the id refused it.
        assert!(
            limits
                .heartbeat(Viewer::Anonymous(Uuid::now_v7()), Some(address))
                .is_err(),
            "per address"
        );
        let user = Viewer::User(Uuid::now_v7());
        assert!(
            limits.heartbeat(user, Some(address)).is_ok(),
            "users are not counted per address"
        );
    }
}
