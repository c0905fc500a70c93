//! The long-polls' own budget, apart from the in-flight permits that commands
//! and reads use: a global cap, a cap per user, and a few permits for their
//! queries, so however many long-polls are open, they can hold at most
//! [`LongPolls::db_permits`] pool connections, and never an in-flight permit.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use axum::extract::{Query, Request};
use serde::Deserialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, SemaphorePermit};
use uuid::Uuid;

use super::error::ApiError;

/// The path that long-polls.
pub const EVENTS_PATH: &str = "/v1/events";

pub struct LongPolls {
    open: Arc<Semaphore>,
    per_user: usize,
    // std Mutex: held for a map update only, never across an await.
    by_user: Mutex<HashMap<Uuid, usize>>,
    db: Semaphore,
    reads: AtomicU64,
}

/// One open long-poll; frees its slots when dropped.
pub struct LongPollSlot<'a> {
    polls: &'a LongPolls,
    user: Uuid,
    _open: OwnedSemaphorePermit,
}

impl Drop for LongPollSlot<'_> {
    fn drop(&mut self) {
        let mut by_user = self.polls.by_user.lock().expect("not poisoned");
        if let Some(n) = by_user.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                by_user.remove(&self.user);
            }
        }
    }
}

impl LongPolls {
    /// `max_open` long-polls at once, `per_user` of them per user, and
    /// `db_permits` of their queries at once.
    pub fn new(max_open: usize, per_user: usize, db_permits: usize) -> Self {
        Self {
            open: Arc::new(Semaphore::new(max_open)),
            per_user,
            by_user: Mutex::default(),
            db: Semaphore::new(db_permits.max(1)),
            reads: AtomicU64::new(0),
        }
    }

    /// Opens a long-poll for `user`: 429 past the user's cap, 503 past the global one.
    pub fn open(&self, user: Uuid) -> Result<LongPollSlot<'_>, ApiError> {
        let mut by_user = self.by_user.lock().expect("not poisoned");
        if by_user.get(&user).copied().unwrap_or(0) >= self.per_user {
            metrics::counter!("long_polls_refused_total", "reason" => "per_user").increment(1);
            return Err(ApiError::RateLimited {
                code: "too_many_long_polls",
                retry_after_secs: 1,
            });
        }
        let Ok(permit) = self.open.clone().try_acquire_owned() else {
            metrics::counter!("long_polls_refused_total", "reason" => "global").increment(1);
            return Err(ApiError::LongPollsExhausted);
        };
        *by_user.entry(user).or_default() += 1;
        Ok(LongPollSlot {
            polls: self,
            user,
            _open: permit,
        })
    }

    /// A permit for one long-poll query: waits (a long-poll waits anyway) so
    /// long-polls share a few pool connections instead of taking the pool.
    pub async fn db_permit(&self) -> SemaphorePermit<'_> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        self.db.acquire().await.expect("never closed")
    }

    /// Queries made by long-polls so far (tests check they stay few).
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    /// Long-polls open now.
    pub fn open_count(&self) -> usize {
        self.by_user.lock().expect("not poisoned").values().sum()
    }
}

#[derive(Deserialize)]
struct WaitParam {
    wait: Option<u64>,
}

/// `GET /v1/events?wait=N` with N > 0. Decided from the raw query, before the
/// handler runs, so the middleware can spare long-polls the in-flight permits
/// and the plain request timeout. A malformed `wait` is not a long-poll (the
/// handler answers 400).
pub fn is_long_poll(request: &Request) -> bool {
    request.method() == axum::http::Method::GET
        && request.uri().path() == EVENTS_PATH
        && Query::<WaitParam>::try_from_uri(request.uri())
            .is_ok_and(|Query(p)| p.wait.is_some_and(|w| w > 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_per_user_then_globally_and_frees_on_drop() {
        let polls = LongPolls::new(3, 2, 1);
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let a1 = polls.open(a).unwrap();
        let _a2 = polls.open(a).unwrap();
        assert!(matches!(polls.open(a), Err(ApiError::RateLimited { .. })));
        let _b1 = polls.open(b).unwrap();
        assert!(matches!(polls.open(b), Err(ApiError::LongPollsExhausted)));
        drop(a1);
        assert_eq!(polls.open_count(), 2);
        assert!(polls.open(b).is_ok());
    }

    #[test]
    fn only_get_events_with_a_positive_wait_is_a_long_poll() {
        let req = |method: &str, uri: &str| {
            Request::builder()
                .method(method)
                .uri(uri)
                .body(axum::body::Body::empty())
                .unwrap()
        };
        assert!(is_long_poll(&req("GET", "/v1/events?wait=30&limit=5")));
        assert!(!is_long_poll(&req("GET", "/v1/events?wait=0")));
        assert!(!is_long_poll(&req("GET", "/v1/events")));
        assert!(!is_long_poll(&req("GET", "/v1/events?wait=x")));
        assert!(!is_long_poll(&req("POST", "/v1/events?wait=3")));
        assert!(!is_long_poll(&req("GET", "/v1/streams?wait=3")));
    }
}
