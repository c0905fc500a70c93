//! The retry delay after a failed publish attempt: `backon`'s exponential
//! backoff with jitter, from `RELAY_BACKOFF_MIN` doubling up to
//! `RELAY_BACKOFF_MAX`, forever. The live relay and `replay` both use this one,
//! so a replay treats a struggling broker exactly as the relay does.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// The retry delays' bounds (`RELAY_BACKOFF_MIN`, `RELAY_BACKOFF_MAX`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub min: Duration,
    pub max: Duration,
}

impl Backoff {
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.min <= self.max,
            "RELAY_BACKOFF_MIN ({:?}) is above RELAY_BACKOFF_MAX ({:?})",
            self.min,
            self.max
        );
        Ok(())
    }
}

pub struct RetryDelay {
    min: Duration,
    max: Duration,
    /// `Some` while failures follow one another; a success starts over at `min`.
    current: Option<ExponentialBackoff>,
}

impl RetryDelay {
    pub fn new(bounds: Backoff) -> Self {
        Self {
            min: bounds.min,
            max: bounds.max,
            current: None,
        }
    }

    /// The delay before the next attempt, after one more failure.
    pub fn after_failure(&mut self) -> Duration {
        let (min, max) = (self.min, self.max);
        self.current
            .get_or_insert_with(|| {
                ExponentialBuilder::default()
                    .with_min_delay(min)
                    .with_max_delay(max)
                    .with_factor(2.0)
                    .with_jitter()
                    .without_max_times()
                    .build()
            })
            .next()
            .unwrap_or(max)
            // Jitter may add up to +100% on top of the capped delay.
            .min(max)
    }

    /// After a success: `true` if it ended a run of failures.
    pub fn succeeded(&mut self) -> bool {
        self.current.take().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delays(min_ms: u64, max_ms: u64) -> RetryDelay {
        RetryDelay::new(Backoff {
            min: Duration::from_millis(min_ms),
            max: Duration::from_millis(max_ms),
        })
    }

    #[test]
    fn grows_to_the_cap_and_starts_over_after_a_success() {
        let mut retry = delays(100, 1_000);
        let first = retry.after_failure();
        assert!(first >= Duration::from_millis(100) && first <= Duration::from_millis(200));
        let later: Vec<_> = (0..10).map(|_| retry.after_failure()).collect();
        assert!(later.iter().all(|d| *d <= Duration::from_secs(1)));
        assert_eq!(later.last(), Some(&Duration::from_secs(1)));
        assert!(retry.succeeded());
        assert!(!retry.succeeded());
        assert!(retry.after_failure() <= Duration::from_millis(200));
    }

    #[test]
    fn a_minimum_above_the_maximum_is_refused() {
        let bounds = |min, max| Backoff {
            min: Duration::from_millis(min),
            max: Duration::from_millis(max),
        };
        assert!(bounds(100, 100).validate().is_ok());
        assert!(bounds(200, 100).validate().is_err());
    }
}
