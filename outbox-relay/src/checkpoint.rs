//! The relay's progress: `(txid, position)` per relay name in `relay_checkpoints`.
//! Everything at or below it has been acknowledged by Kafka. Writes are
//! compare-and-set, so an operator's `reset-checkpoint` is never overwritten by
//! a leader that still holds the old value in memory.

use sqlx::PgConnection;

/// A point in the relay's `(txid, position)` order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Checkpoint {
    pub txid: i64,
    pub position: i64,
}

impl std::fmt::Display for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.txid, self.position)
    }
}

/// The row as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredCheckpoint {
    pub checkpoint: Checkpoint,
    /// `pg_control_system().system_identifier` when it was written.
    pub system_identifier: Option<i64>,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint of relay `{0}` was changed by someone else (reset-checkpoint?)")]
    Moved(String),
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

pub async fn load(
    conn: &mut PgConnection,
    relay_name: &str,
) -> Result<Option<StoredCheckpoint>, sqlx::Error> {
    let row: Option<(i64, i64, Option<i64>)> = sqlx::query_as(
        "select txid::text::bigint, position, system_identifier
         from relay_checkpoints where relay_name = $1",
    )
    .bind(relay_name)
    .fetch_optional(conn)
    .await?;
    Ok(
        row.map(|(txid, position, system_identifier)| StoredCheckpoint {
            checkpoint: Checkpoint { txid, position },
            system_identifier,
        }),
    )
}

/// Moves the checkpoint from `expected` (what this relay last read or wrote;
/// `None` = no row yet) to `new`. Fails with [`CheckpointError::Moved`] if the row
/// is not what the caller expected.
pub async fn advance(
    conn: &mut PgConnection,
    relay_name: &str,
    expected: Option<StoredCheckpoint>,
    new: StoredCheckpoint,
) -> Result<(), CheckpointError> {
    let written = match expected {
        None => sqlx::query(
            "insert into relay_checkpoints (relay_name, txid, position, system_identifier)
             values ($1, $2::bigint::text::xid8, $3, $4)
             on conflict (relay_name) do nothing",
        )
        .bind(relay_name)
        .bind(new.checkpoint.txid)
        .bind(new.checkpoint.position)
        .bind(new.system_identifier)
        .execute(conn)
        .await?
        .rows_affected(),
        Some(old) => sqlx::query(
            "update relay_checkpoints
             set txid = $2::bigint::text::xid8, position = $3, system_identifier = $4, updated_at = now()
             where relay_name = $1
               and txid = $5::bigint::text::xid8 and position = $6
               and system_identifier is not distinct from $7",
        )
        .bind(relay_name)
        .bind(new.checkpoint.txid)
        .bind(new.checkpoint.position)
        .bind(new.system_identifier)
        .bind(old.checkpoint.txid)
        .bind(old.checkpoint.position)
        .bind(old.system_identifier)
        .execute(conn)
        .await?
        .rows_affected(),
    };
    if written == 1 {
        Ok(())
    } else {
        Err(CheckpointError::Moved(relay_name.to_owned()))
    }
}

/// Unconditional write, for `reset-checkpoint`.
pub async fn overwrite(
    conn: &mut PgConnection,
    relay_name: &str,
    new: StoredCheckpoint,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "insert into relay_checkpoints (relay_name, txid, position, system_identifier)
         values ($1, $2::bigint::text::xid8, $3, $4)
         on conflict (relay_name) do update
         set txid = excluded.txid, position = excluded.position,
             system_identifier = excluded.system_identifier, updated_at = now()",
    )
    .bind(relay_name)
    .bind(new.checkpoint.txid)
    .bind(new.checkpoint.position)
    .bind(new.system_identifier)
    .execute(conn)
    .await?;
    Ok(())
}
