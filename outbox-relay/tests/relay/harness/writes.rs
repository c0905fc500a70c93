//! The service's writes, in SQL: each command transaction writes the stream row
//! first, then the event row; after the commit the writer notifies (the schema
//! contract: the NOTIFY is never inside the transaction).

use std::collections::HashSet;

use serde_json::json;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

pub async fn create_user(pool: &PgPool) -> Uuid {
    let id = Uuid::now_v7();
    sqlx::query("insert into users (id, username) values ($1, $2)")
        .bind(id)
        .bind(format!("user_{}", id.simple()))
        .execute(pool)
        .await
        .expect("insert user");
    id
}

async fn append_event(conn: &mut PgConnection, stream: Uuid, creator: Uuid, version: i64) {
    let event_type = if version == 1 {
        "stream.started"
    } else {
        "stream.ended"
    };
    let payload = json!({
        "stream_id": stream, "creator_id": creator, "title": "t", "category": "gaming",
        "thumbnail_url": null, "started_at": "2026-11-26T00:00:00Z",
        "ended_at": if version == 1 { None } else { Some("2026-11-26T01:00:00Z") },
        "version": version,
    });
    sqlx::query(
        "insert into event_log (event_id, aggregate_type, aggregate_id, aggregate_version, event_type, payload, headers, occurred_at)
         values ($1, 'stream', $2, $3, $4, $5, $6, now())",
    )
    .bind(Uuid::now_v7())
    .bind(stream)
    .bind(version)
    .bind(event_type)
    .bind(payload)
    .bind(json!({"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}))
    .execute(conn)
    .await
    .expect("insert event");
}

/// The service's wake-up: a NOTIFY on its own, after the writes committed.
pub async fn notify_committed<'e>(executor: impl sqlx::PgExecutor<'e>) {
    sqlx::query("select pg_notify('nova_events', '')")
        .execute(executor)
        .await
        .expect("notify");
}

/// `stream.started` in the caller's transaction: stream row, then event; the
/// caller commits, then calls [`notify_committed`].
pub async fn start_stream(conn: &mut PgConnection, creator: Uuid) -> Uuid {
    let stream = Uuid::now_v7();
    sqlx::query(
        "insert into live_streams (id, creator_id, title, category, status, started_at, version)
         values ($1, $2, 't', 'gaming', 'live', now(), 1)",
    )
    .bind(stream)
    .bind(creator)
    .execute(&mut *conn)
    .await
    .expect("insert stream");
    append_event(conn, stream, creator, 1).await;
    stream
}

/// `stream.ended` in the caller's transaction: stream row, then event.
pub async fn end_stream(conn: &mut PgConnection, stream: Uuid, creator: Uuid) {
    sqlx::query(
        "update live_streams set status = 'ended', ended_at = now(), version = 2 where id = $1",
    )
    .bind(stream)
    .execute(&mut *conn)
    .await
    .expect("end stream");
    append_event(conn, stream, creator, 2).await;
}

/// `streams` × (started, ended) events, written fast in transactions of up to
/// 1,000 events (no stream rows: the relay reads only `event_log`), then the
/// NOTIFY.
pub async fn bulk_events(pool: &PgPool, streams: i64) {
    bulk_events_unannounced(pool, streams).await;
    notify_committed(pool).await;
}

/// Like [`bulk_events`] without the NOTIFY: a wake-up lost to a crash
/// between commit and notify.
pub async fn bulk_events_unannounced(pool: &PgPool, streams: i64) {
    let mut done = 0;
    while done < streams {
        let chunk = (streams - done).min(500);
        sqlx::query(
            "insert into event_log (event_id, aggregate_type, aggregate_id, aggregate_version, event_type, payload, occurred_at)
             select gen_random_uuid(), 'stream', s.id, v.version,
                    case v.version when 1 then 'stream.started' else 'stream.ended' end,
                    jsonb_build_object('stream_id', s.id, 'version', v.version), now()
             from (select gen_random_uuid() as id, g from generate_series(1, $1) g) s
             cross join (values (1::bigint), (2::bigint)) v(version)
             order by s.g, v.version",
        )
        .bind(chunk)
        .execute(pool)
        .await
        .expect("bulk insert");
        done += chunk;
    }
}

pub async fn all_event_ids(pool: &PgPool) -> HashSet<String> {
    sqlx::query_scalar::<_, Uuid>("select event_id from event_log")
        .fetch_all(pool)
        .await
        .expect("event ids")
        .into_iter()
        .map(|id| id.to_string())
        .collect()
}
