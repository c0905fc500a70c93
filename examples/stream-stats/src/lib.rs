//! stream-stats: an example downstream consumer of `nova.stream-events`.
//!
//! It reads the topic with a consumer group and maintains, in its own
//! database, live streams per category and each ended stream's duration. By
//! default every event is applied in one transaction together with an inbox
//! row keyed by `(aggregate_id, aggregate_version)`: a redelivered or replayed
//! event finds its row and changes nothing, so at-least-once delivery counts
//! exactly once. Behind an exactly-once relay, `--delivery exactly-once` keeps
//! no inbox: its offsets are stored with its state, and each stream's row
//! records the version it reflects, so replays change nothing.
//!
//! - [`apply`]: the projection with an inbox (SQL), one event per transaction.
//! - [`versioned`]: the projection without one, guarded by stream versions.
//! - [`offsets`]: the exactly-once mode's Kafka offsets, in its own database.
//! - [`consumer`]: the Kafka loop in either mode.

pub mod apply;
pub mod consumer;
pub mod offsets;
pub mod versioned;

/// Migrations of the consumer's own database.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");
