//! Commands: each one transaction that writes the stream's new state and its
//! event row (and the idempotency record, when a key is given), or nothing.
//!
//! Write order inside each transaction is fixed by [`StreamRepo`]: the stream
//! row first, then the idempotency record, then the event. After the commit,
//! and only then, listeners are woken ([`CommitWakeup::committed`]).

use chrono::{DateTime, SubsecRound, Utc};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use crate::domain::{
    Category, EventHeaders, LiveStream, StreamEvent, StreamEventType, StreamStatus, StreamTitle,
    ThumbnailUrl,
};
use crate::store::{self, streams::ONE_LIVE_PER_CREATOR, EventLog, IdempotencyStore, StreamRepo};
use crate::wakeup::CommitWakeup;

/// Why a command did not happen.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("stream not found")]
    NotFound,
    #[error("only the stream's creator may do this")]
    NotCreator,
    #[error("creator already has a live stream")]
    AlreadyLive { stream_id: Option<Uuid> },
    #[error("stream has already ended")]
    AlreadyEnded,
    #[error("the token's user does not exist")]
    UnknownUser,
    #[error("idempotency key was used for a different request")]
    IdempotencyKeyReused,
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// An `Idempotency-Key` from `user_id`, with a fingerprint of the request it came with.
#[derive(Debug, Clone)]
pub struct IdempotencyKey {
    pub user_id: Uuid,
    pub key: String,
    pub request_hash: String,
    /// How long the first response is replayed (`IDEMPOTENCY_TTL`).
    pub ttl: std::time::Duration,
}

/// What a command returns: a fresh result, or the response saved under its idempotency key.
#[derive(Debug, Clone)]
pub enum Outcome {
    Done(LiveStream),
    Replayed { status: u16, body: Value },
}

/// The input of "start a stream", already validated.
#[derive(Debug, Clone)]
pub struct StartStream {
    pub creator_id: Uuid,
    pub title: StreamTitle,
    pub category: Category,
    pub thumbnail_url: Option<ThumbnailUrl>,
}

/// The HTTP status a successful start and end answer with (also stored under the key).
pub const STARTED_STATUS: u16 = 201;
pub const ENDED_STATUS: u16 = 200;

/// Postgres keeps microseconds: truncate so the response equals what is stored.
fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

#[tracing::instrument(skip_all, fields(creator_id = %cmd.creator_id))]
pub async fn start_stream(
    pool: &PgPool,
    wakeup: &CommitWakeup,
    cmd: StartStream,
    idempotency: Option<IdempotencyKey>,
    headers: EventHeaders,
) -> Result<Outcome, CommandError> {
    if let Some(saved) = replay(pool, idempotency.as_ref()).await? {
        return Ok(saved);
    }
    let mut tx = pool.begin().await?;
    let inserted = StreamRepo::insert(
        &mut tx,
        cmd.creator_id,
        &cmd.title,
        cmd.category,
        cmd.thumbnail_url.as_ref(),
        now(),
    )
    .await;
    let stream = match inserted {
        Ok(stream) => stream,
        Err(err) => {
            tx.rollback().await?;
            let failure = match store::violated_constraint(&err) {
                Some(ONE_LIVE_PER_CREATOR) => {
                    let mut conn = pool.acquire().await?;
                    let stream_id =
                        StreamRepo::find_live_by_creator(&mut conn, cmd.creator_id).await?;
                    CommandError::AlreadyLive { stream_id }
                }
                Some("live_streams_creator_id_fkey") => CommandError::UnknownUser,
                _ => CommandError::Database(err),
            };
            return replay_or(pool, idempotency.as_ref(), failure).await;
        }
    };
    finish(
        pool,
        wakeup,
        tx,
        stream,
        StreamEventType::Started,
        STARTED_STATUS,
        idempotency,
        headers,
    )
    .await
}

#[tracing::instrument(skip_all, fields(%stream_id, %user_id))]
pub async fn end_stream(
    pool: &PgPool,
    wakeup: &CommitWakeup,
    stream_id: Uuid,
    user_id: Uuid,
    idempotency: Option<IdempotencyKey>,
    headers: EventHeaders,
) -> Result<Outcome, CommandError> {
    if let Some(saved) = replay(pool, idempotency.as_ref()).await? {
        return Ok(saved);
    }
    let mut tx = pool.begin().await?;
    let failure = match StreamRepo::lock(&mut tx, stream_id).await? {
        None => CommandError::NotFound,
        Some(s) if s.creator_id != user_id => CommandError::NotCreator,
        Some(s) if s.status == StreamStatus::Ended => CommandError::AlreadyEnded,
        Some(_) => {
            let stream = StreamRepo::mark_ended(&mut tx, stream_id, now()).await?;
            return finish(
                pool,
                wakeup,
                tx,
                stream,
                StreamEventType::Ended,
                ENDED_STATUS,
                idempotency,
                headers,
            )
            .await;
        }
    };
    tx.rollback().await?;
    replay_or(pool, idempotency.as_ref(), failure).await
}

/// The shared tail of every command: idempotency record, then the event, then
/// commit, then the wake-up (after the commit, so the transaction never waits
/// for Postgres's notify lock; see [`crate::wakeup`]).
#[expect(
    clippy::too_many_arguments,
    reason = "the command's parts, each used once"
)]
async fn finish(
    pool: &PgPool,
    wakeup: &CommitWakeup,
    mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
    stream: LiveStream,
    event_type: StreamEventType,
    status: u16,
    idempotency: Option<IdempotencyKey>,
    headers: EventHeaders,
) -> Result<Outcome, CommandError> {
    if let Some(key) = &idempotency {
        let body = serde_json::to_value(&stream).expect("a stream serializes");
        let saved = IdempotencyStore::save(
            &mut tx,
            key.user_id,
            &key.key,
            &key.request_hash,
            (status, &body),
            key.ttl,
        )
        .await?;
        if !saved {
            // Another request holds the key: undo ours and answer with its response.
            tx.rollback().await?;
            return replay(pool, Some(key))
                .await?
                .ok_or(CommandError::IdempotencyKeyReused);
        }
    }
    let event = StreamEvent::new(event_type, &stream, headers);
    EventLog::append(&mut tx, &event).await?;
    tx.commit().await?;
    wakeup.committed();
    tracing::info!(stream_id = %stream.id, event_type = event_type.as_str(), "command committed");
    Ok(Outcome::Done(stream))
}

/// The response saved under `key`, if there is one for the same request.
async fn replay(
    pool: &PgPool,
    key: Option<&IdempotencyKey>,
) -> Result<Option<Outcome>, CommandError> {
    let Some(key) = key else { return Ok(None) };
    let mut conn = pool.acquire().await?;
    match IdempotencyStore::find(&mut conn, key.user_id, &key.key, key.ttl).await? {
        None => Ok(None),
        Some(saved) if saved.request_hash != key.request_hash => {
            Err(CommandError::IdempotencyKeyReused)
        }
        Some(saved) => Ok(Some(Outcome::Replayed {
            status: saved.response_status as u16,
            body: saved.response_body.0,
        })),
    }
}

/// After a failed command: a concurrent request with the same key may have
/// succeeded, and its response wins over our failure.
async fn replay_or(
    pool: &PgPool,
    key: Option<&IdempotencyKey>,
    failure: CommandError,
) -> Result<Outcome, CommandError> {
    match replay(pool, key).await? {
        Some(saved) => Ok(saved),
        None => Err(failure),
    }
}
