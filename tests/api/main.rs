//! Integration tests: the HTTP API against real Postgres (a fresh, migrated
//! database per test via `#[sqlx::test]`) and real Redis (a key prefix per test).
//! Set `TEST_LOG=1` to see logs.

mod atomicity;
mod contract;
mod events;
mod helpers;
mod idempotency_expiry;
mod list;
mod long_polls;
mod observability;
mod openapi_exact;
mod ops;
mod outages;
mod projection;
mod query_plans;
mod rate_limits;
mod requests;
mod streams;
mod tokens;
mod viewers;
mod wakeups;
