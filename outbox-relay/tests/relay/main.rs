//! Relay integration tests: real Postgres, a real Tansu broker per test, the
//! real `outbox-relay` binary. One binary, one module per guarantee.

mod harness;

mod api_flow;
mod broker_outage;
mod gap_safety;
mod leadership;
mod query_plans;
mod replay;
mod replay_resume;
mod restore;
mod shutdown_and_crash;
mod stream_stats;
mod wakeups;
