//! Relay integration tests: real Postgres, Apache Kafka (a topic per test on
//! the shared broker, or brokers of the test's own to break), the real
//! `outbox-relay` binary. One binary, one module per guarantee.

mod harness;

mod api_flow;
mod broker_outage;
mod cluster;
mod exactly_once;
mod failover;
mod gap_safety;
mod kafka_security;
mod leadership;
mod observability;
mod parking;
mod producer_rebuild;
mod query_plans;
mod replay;
mod replay_resume;
mod restore;
mod shutdown_and_crash;
mod stream_stats;
mod stream_stats_exactly_once;
mod wakeups;
