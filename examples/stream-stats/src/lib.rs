//! stream-stats: an example downstream consumer of `nova.stream-events`.
//!
//! It reads the topic with a consumer group and maintains, in its own
//! database, live streams per category and each ended stream's duration. Every
//! event is applied in one transaction together with an inbox row keyed by
//! `(aggregate_id, aggregate_version)`: a redelivered or replayed event finds
//! its row and changes nothing, so at-least-once delivery counts exactly once.
//!
//! - [`apply`]: the projection (SQL), one event per transaction.
//! - [`consumer`]: the Kafka loop; offsets are committed after the database.

pub mod apply;
pub mod consumer;

/// Migrations of the consumer's own database.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");
