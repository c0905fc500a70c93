//! `outbox-relay`: drains Nova Streaming's `event_log` to Kafka, gap-safe, in
//! per-stream order, at least once. It shares only the schema contract with the
//! service (`migrations/`); see `docs/relay.md` for the design.
//!
//! Where things live:
//! - [`config`]: the command line and env vars (`run`, `tail`, `reset-checkpoint`,
//!   `replay`, `parked`). Only [`cli`] reads it.
//! - [`cli`]: what each subcommand does: builds its plain settings from the
//!   command line; signal handling; log setup.
//! - [`service`]: the deployable: wires the tasks below and shuts them down.
//! - [`relay`]: standby → leader → standby; a leadership owns the lock, the
//!   checkpoints, the window of batches in flight and the reader, and drains
//!   step by step: cursor → batch → producer → checkpoint.
//! - [`leader`]: the session advisory lock, on a dedicated connection that also
//!   reads and writes checkpoints, so a relay without the lock can do neither.
//! - [`reader`]: the gap-safe read below the transaction horizon, and backlog stats.
//! - [`checkpoint`]: `(txid, position)` per relay name, compare-and-set.
//! - [`parked`]: streams parked behind an event Kafka refused for good, and
//!   what an operator asked for them (retry, skip).
//! - [`restore`]: refuses to run when the cluster looks restored (txids from the
//!   future, or another system identifier).
//! - [`event`]: an event row and its Kafka record (key, value, CloudEvents headers).
//! - [`publisher`]: the idempotent producer, for relay and replay: whole batch
//!   in, all acks awaited, a deadline per batch, rebuilt only when it must be.
//! - [`kafka`]: bootstrap servers and the operator's librdkafka settings.
//! - [`wakeup`]: `LISTEN nova_events`, re-registered on reconnect; the poll fallback
//!   lives in [`relay`].
//! - [`stats`]: backlog, oldest unpublished event, horizon hold-back.
//! - [`metrics`]: the Prometheus registry and every metric.
//! - [`health`]: `/healthz` and `/metrics` over hyper.
//! - [`tail`]: a small consumer that prints records with key and headers.
//! - [`replay`]: re-publishes a slice of the log (position/time/stream/type),
//!   marked `nova_replay`, with its own resumable progress; never the relay's
//!   checkpoint.
//! - [`backoff`]: the retry delay after a failed attempt, for relay and replay.

pub mod backoff;
pub mod checkpoint;
pub mod cli;
pub mod config;
pub mod event;
pub mod health;
pub mod kafka;
pub mod leader;
pub mod metrics;
pub mod offsets;
pub mod parked;
pub mod publisher;
pub mod reader;
pub mod relay;
pub mod replay;
pub mod restore;
pub mod service;
pub mod stats;
pub mod tail;
pub mod wakeup;
