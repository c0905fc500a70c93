//! `replay_progress`: one row per replay name with its slice, topic and
//! horizon, and the last `(txid, position)` Kafka acknowledged. It is written
//! after every acknowledged batch, so `--resume` continues where a killed
//! replay stopped, sending at most one batch twice. Replays never read or write
//! `relay_checkpoints`, and lock only their own name, so they run beside the
//! live relay.

use sqlx::PgConnection;

use super::selection::Selection;
use crate::checkpoint::Checkpoint;

/// A replay as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplayState {
    pub name: String,
    pub topic: String,
    pub selection: Selection,
    pub horizon: i64,
    /// Everything of the slice at or below it has been acknowledged.
    pub cursor: Checkpoint,
    pub sent: i64,
    pub selected: i64,
    pub finished: bool,
}

/// Takes the session advisory lock on the replay's name: the same replay
/// cannot run twice at once (two `--resume`s would race on the cursor). The key
/// space differs from the live relay's (`outbox-relay/<name>`), so a replay
/// never waits for, or blocks, a relay. Released when the connection closes.
pub async fn try_lock(conn: &mut PgConnection, name: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "select pg_try_advisory_lock(hashtextextended('outbox-relay-replay/' || $1, 0))",
    )
    .bind(name)
    .fetch_one(conn)
    .await
}

/// Records a new replay; `false` if the name is taken.
pub async fn create(conn: &mut PgConnection, state: &ReplayState) -> Result<bool, sqlx::Error> {
    let selection = serde_json::to_value(&state.selection).unwrap_or_default();
    let inserted = sqlx::query(
        "insert into replay_progress
             (replay_name, topic, selection, horizon, txid, position, sent, selected)
         values ($1, $2, $3, $4::bigint::text::xid8, $5::bigint::text::xid8, $6, $7, $8)
         on conflict (replay_name) do nothing",
    )
    .bind(&state.name)
    .bind(&state.topic)
    .bind(selection)
    .bind(state.horizon)
    .bind(state.cursor.txid)
    .bind(state.cursor.position)
    .bind(state.sent)
    .bind(state.selected)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

type Row = (String, serde_json::Value, i64, i64, i64, i64, i64, bool);

pub async fn load(conn: &mut PgConnection, name: &str) -> anyhow::Result<Option<ReplayState>> {
    let row: Option<Row> = sqlx::query_as(
        "select topic, selection, horizon::text::bigint, txid::text::bigint, position,
                sent, selected, finished_at is not null
         from replay_progress where replay_name = $1",
    )
    .bind(name)
    .fetch_optional(conn)
    .await?;
    let Some((topic, selection, horizon, txid, position, sent, selected, finished)) = row else {
        return Ok(None);
    };
    let selection = serde_json::from_value(selection)
        .map_err(|err| anyhow::anyhow!("replay `{name}` has an unreadable selection: {err}"))?;
    Ok(Some(ReplayState {
        name: name.to_owned(),
        topic,
        selection,
        horizon,
        cursor: Checkpoint { txid, position },
        sent,
        selected,
        finished,
    }))
}

/// Moves the cursor after an acknowledged batch.
pub async fn advance(conn: &mut PgConnection, state: &ReplayState) -> Result<(), sqlx::Error> {
    sqlx::query(
        "update replay_progress
         set txid = $2::bigint::text::xid8, position = $3, sent = $4, updated_at = now()
         where replay_name = $1",
    )
    .bind(&state.name)
    .bind(state.cursor.txid)
    .bind(state.cursor.position)
    .bind(state.sent)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn finish(conn: &mut PgConnection, name: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "update replay_progress set finished_at = now(), updated_at = now() where replay_name = $1",
    )
    .bind(name)
    .execute(conn)
    .await?;
    Ok(())
}
