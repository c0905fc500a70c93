//! Rebuilds the `live_streams` projection from the event log alone and diffs
//! it against the live table: the proof that the log is complete.

use std::collections::BTreeMap;

use anyhow::Context;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use crate::domain::{StreamEventPayload, StreamEventType};

/// One disagreement between the log and the table.
#[derive(Debug, Clone, PartialEq)]
pub enum Difference {
    /// The log's history of a stream is itself inconsistent (gap, event after end, …).
    BadHistory { stream_id: Uuid, problem: String },
    /// The log has the stream, the table does not.
    MissingFromTable { stream_id: Uuid },
    /// The table has the stream, the log never started it.
    MissingFromLog { stream_id: Uuid },
    /// Both have it, and a column differs.
    Field {
        stream_id: Uuid,
        field: String,
        from_log: Value,
        in_table: Value,
    },
}

impl std::fmt::Display for Difference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::BadHistory { stream_id, problem } => {
                write!(f, "stream {stream_id}: bad history: {problem}")
            }
            Self::MissingFromTable { stream_id } => write!(
                f,
                "stream {stream_id}: in the log, missing from live_streams"
            ),
            Self::MissingFromLog { stream_id } => write!(
                f,
                "stream {stream_id}: in live_streams, missing from the log"
            ),
            Self::Field {
                stream_id,
                field,
                from_log,
                in_table,
            } => {
                write!(
                    f,
                    "stream {stream_id}: {field}: log says {from_log}, table says {in_table}"
                )
            }
        }
    }
}

#[derive(Debug, Default)]
pub struct Report {
    pub events: u64,
    pub streams: usize,
    pub differences: Vec<Difference>,
}

/// A stream's state, folded from its events.
struct Folded {
    payload: StreamEventPayload,
    ended: bool,
    version: i64,
}

#[derive(sqlx::FromRow)]
struct Row {
    aggregate_id: Uuid,
    aggregate_version: i64,
    event_type: String,
    payload: sqlx::types::Json<Value>,
}

/// Folds the whole log, in relay order, into one state per stream.
fn fold(row: Row, streams: &mut BTreeMap<Uuid, Folded>, problems: &mut Vec<Difference>) {
    let id = row.aggregate_id;
    let mut problem = |text: String| {
        problems.push(Difference::BadHistory {
            stream_id: id,
            problem: text,
        })
    };
    let payload: StreamEventPayload = match serde_json::from_value(row.payload.0) {
        Ok(p) => p,
        Err(e) => {
            return problem(format!(
                "version {}: unreadable payload: {e}",
                row.aggregate_version
            ))
        }
    };
    let expected = streams.get(&id).map_or(1, |s| s.version + 1);
    if row.aggregate_version != expected {
        problem(format!(
            "version {} where {expected} was next",
            row.aggregate_version
        ));
    }
    match (row.event_type.as_str(), streams.get_mut(&id)) {
        (t, None) if t == StreamEventType::Started.as_str() => {
            streams.insert(
                id,
                Folded {
                    payload,
                    ended: false,
                    version: row.aggregate_version,
                },
            );
        }
        (t, Some(s)) if t == StreamEventType::Ended.as_str() && !s.ended => {
            s.payload = payload;
            s.ended = true;
            s.version = row.aggregate_version;
        }
        (t, state) => problem(format!(
            "{t} at version {} on a stream that is {}",
            row.aggregate_version,
            match state {
                None => "unknown",
                Some(s) if s.ended => "ended",
                Some(_) => "live",
            }
        )),
    }
}

/// Rebuilds in memory and diffs against the table, all in one read-only,
/// repeatable-read snapshot, so a command committing meanwhile cannot cause a
/// false alarm. Nothing is written, not even a scratch table: a write assigns
/// a transaction id, and an open one holds back the relay's horizon (and every
/// other gap-safe reader's) for as long as the diff runs.
pub async fn rebuild_and_diff(pool: &PgPool) -> anyhow::Result<Report> {
    let mut tx = pool.begin().await?;
    sqlx::query("set transaction isolation level repeatable read, read only")
        .execute(&mut *tx)
        .await?;

    let mut report = Report::default();
    let mut streams = BTreeMap::new();
    {
        let mut rows = sqlx::query_as::<_, Row>(
            "select aggregate_id, aggregate_version, event_type, payload from event_log \
             where aggregate_type = 'stream' order by txid, position",
        )
        .fetch(&mut *tx);
        while let Some(row) = rows.try_next().await.context("reading the event log")? {
            report.events += 1;
            fold(row, &mut streams, &mut report.differences);
        }
    }
    report.streams = streams.len();

    // Rebuilt rows go up as arrays, a chunk at a time, and are compared with
    // the table's as JSON; streams only in the table are found by id.
    let mut diffs: Vec<(Uuid, Option<Value>, Option<Value>)> = Vec::new();
    for chunk in streams.values().collect::<Vec<_>>().chunks(5_000) {
        let ids: Vec<Uuid> = chunk.iter().map(|s| s.payload.stream_id).collect();
        let ended_at: Vec<Option<DateTime<Utc>>> = chunk
            .iter()
            .map(|s| if s.ended { s.payload.ended_at } else { None })
            .collect();
        let rows: Vec<(Uuid, Option<Value>, Option<Value>)> = sqlx::query_as(
            "with r as ( \
               select id, (p->>'creator_id')::uuid as creator_id, p->>'title' as title, \
                      p->>'category' as category, p->>'thumbnail_url' as thumbnail_url, status, \
                      (p->>'started_at')::timestamptz as started_at, ended_at, version \
               from unnest($1::uuid[], $2::jsonb[], $3::text[], $4::timestamptz[], $5::bigint[]) \
                    as t(id, p, status, ended_at, version)) \
             select r.id, to_jsonb(r), to_jsonb(s) \
             from r left join live_streams s on s.id = r.id \
             where s.id is null or to_jsonb(r) is distinct from to_jsonb(s)",
        )
        .bind(&ids)
        .bind(
            chunk
                .iter()
                .map(|s| serde_json::to_value(&s.payload).unwrap_or_default())
                .collect::<Vec<Value>>(),
        )
        .bind(
            chunk
                .iter()
                .map(|s| if s.ended { "ended" } else { "live" })
                .collect::<Vec<_>>(),
        )
        .bind(&ended_at)
        .bind(chunk.iter().map(|s| s.version).collect::<Vec<_>>())
        .fetch_all(&mut *tx)
        .await
        .context("diffing")?;
        diffs.extend(rows);
    }
    let stored: Vec<Uuid> = sqlx::query_scalar("select id from live_streams")
        .fetch_all(&mut *tx)
        .await
        .context("listing live_streams")?;
    let rebuilt: std::collections::HashSet<Uuid> =
        streams.values().map(|s| s.payload.stream_id).collect();
    diffs.extend(
        stored
            .into_iter()
            .filter(|id| !rebuilt.contains(id))
            .map(|id| (id, None, Some(Value::Null))),
    );
    diffs.sort_by_key(|(id, ..)| *id);

    for (stream_id, rebuilt, stored) in diffs {
        match (rebuilt, stored) {
            (Some(_), None) => report
                .differences
                .push(Difference::MissingFromTable { stream_id }),
            (None, Some(_)) => report
                .differences
                .push(Difference::MissingFromLog { stream_id }),
            (Some(Value::Object(rebuilt)), Some(Value::Object(stored))) => {
                for (field, from_log) in rebuilt {
                    let in_table = stored.get(&field).cloned().unwrap_or(Value::Null);
                    if from_log != in_table {
                        report.differences.push(Difference::Field {
                            stream_id,
                            field,
                            from_log,
                            in_table,
                        });
                    }
                }
            }
            _ => {}
        }
    }
    tx.rollback().await?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: Uuid, version: i64, event_type: &str) -> Row {
        let payload = serde_json::json!({
            "stream_id": id, "creator_id": id, "title": "t", "category": "talk", "thumbnail_url": null,
            "started_at": "2026-01-01T00:00:00Z", "ended_at": null, "version": version,
        });
        Row {
            aggregate_id: id,
            aggregate_version: version,
            event_type: event_type.into(),
            payload: sqlx::types::Json(payload),
        }
    }

    #[test]
    fn inconsistent_histories_are_reported() {
        let (mut streams, mut problems) = (BTreeMap::new(), vec![]);
        let (gap, twice, orphan) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        fold(row(gap, 1, "stream.started"), &mut streams, &mut problems);
        fold(row(gap, 3, "stream.ended"), &mut streams, &mut problems);
        fold(row(twice, 1, "stream.started"), &mut streams, &mut problems);
        fold(row(twice, 2, "stream.started"), &mut streams, &mut problems);
        fold(row(orphan, 1, "stream.ended"), &mut streams, &mut problems);
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(text.len(), 3, "{text:?}");
        assert!(text[0].contains(&format!("{gap}: bad history: version 3 where 2 was next")));
        assert!(text[1].contains("stream.started at version 2 on a stream that is live"));
        assert!(text[2].contains("stream.ended at version 1 on a stream that is unknown"));
    }
}
