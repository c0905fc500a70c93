//! Nova Streaming: the live-streaming HTTP API, built on a transactional outbox.
//!
//! A command (start or end a stream) writes the stream's new state **and** its
//! event row in one Postgres transaction; nothing in the request path talks to
//! Kafka. The `outbox-relay` crate moves the event log to Kafka.
//!
//! Where things live:
//! - [`config`]: typed settings from flags and env vars.
//! - [`cli`]: the command line (`serve`, `migrate`, `users create`, `token`).
//! - [`startup`]: builds the application and runs it until a shutdown signal.
//! - [`telemetry`]: tracing setup (pretty or JSON logs).
//! - [`domain`]: validated values (`StreamTitle`, `Category`, …) and events.
//! - [`store`]: SQL, one module per table; write functions take a transaction.
//! - [`commands`]: start/end a stream, atomically, with idempotency keys.
//! - [`queries`]: reads, with lookups batched (never one query per row).
//! - [`presence`]: viewer heartbeats and counts in Redis.
//! - [`wakeup`]: after a command commits, one coalesced NOTIFY (at most one
//!   per millisecond per process) for the relay and the long-polls.
//! - [`notifier`]: LISTEN for committed events, to wake long-polling readers.
//! - [`projection`]: rebuild `live_streams` from the event log and diff it.
//! - [`auth`]: HS256 bearer tokens.
//! - [`http`]: the axum router, extractors, JSON errors, metrics, OpenAPI.

pub mod auth;
pub mod cli;
pub mod commands;
pub mod config;
pub mod domain;
pub mod http;
pub mod notifier;
pub mod presence;
pub mod projection;
pub mod queries;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod wakeup;
