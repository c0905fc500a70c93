//! SQL, one module per table. Functions that write take
//! `&mut PgConnection` borrowed from a transaction, so the state write and the
//! outbox insert are visibly in the same transaction at the call site.

pub mod event_log;
pub mod idempotency;
pub mod streams;
pub mod users;

pub use event_log::{EventLog, LogCursor, LogFilter, LogHead, LogPage, LoggedEvent};
pub use idempotency::{IdempotencyStore, SavedResponse};
pub use streams::StreamRepo;
pub use users::{User, UserRepo};

/// The name of the unique or foreign-key constraint that `err` violated, if any.
pub fn violated_constraint(err: &sqlx::Error) -> Option<&str> {
    match err {
        sqlx::Error::Database(db) if db.is_unique_violation() || db.is_foreign_key_violation() => {
            db.constraint()
        }
        _ => None,
    }
}
