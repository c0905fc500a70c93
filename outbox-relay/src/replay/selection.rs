//! What a replay re-publishes: a slice of the event log chosen by position or
//! time bounds, stream ids and event types. It is read in the live relay's
//! `(txid, position)` order, so one stream's events reach the target topic in
//! version order, and only from transactions below a horizon fixed when the
//! replay started, so the slice cannot grow or change under it. (An event inside
//! the bounds whose transaction was still open then has not been published yet:
//! the live relay sends it.)

use std::fmt;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use uuid::Uuid;

use crate::checkpoint::Checkpoint;
use crate::event::OutboxEvent;

/// One end of the slice: an `event_log.position` or an `occurred_at` time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Bound {
    Position(i64),
    Time(DateTime<Utc>),
}

impl Bound {
    /// A non-negative integer is a position; anything else must be RFC 3339.
    pub fn parse(raw: &str) -> Result<Self, String> {
        if let Ok(position) = raw.parse::<i64>() {
            return if position >= 0 {
                Ok(Self::Position(position))
            } else {
                Err(format!("a position is not negative, got `{raw}`"))
            };
        }
        DateTime::parse_from_rfc3339(raw)
            .map(|time| Self::Time(time.with_timezone(&Utc)))
            .map_err(|_| {
                format!(
                    "expected an event position (`1200`) or an RFC 3339 time \
                     (`2026-11-26T12:00:00Z`), got `{raw}`"
                )
            })
    }

    fn position(self) -> Option<i64> {
        match self {
            Self::Position(position) => Some(position),
            Self::Time(_) => None,
        }
    }

    fn time(self) -> Option<DateTime<Utc>> {
        match self {
            Self::Time(time) => Some(time),
            Self::Position(_) => None,
        }
    }
}

impl fmt::Display for Bound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Position(position) => write!(f, "{position}"),
            Self::Time(time) => f.write_str(&time.to_rfc3339_opts(SecondsFormat::AutoSi, true)),
        }
    }
}

/// The slice: `from` inclusive, `to` exclusive (adjacent slices share no
/// event), and within them only the given streams and types (none = all).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Selection {
    pub from: Option<Bound>,
    pub to: Option<Bound>,
    pub aggregates: Vec<Uuid>,
    pub types: Vec<String>,
}

impl Selection {
    /// Refuses bounds that select nothing by construction.
    pub fn validate(&self) -> Result<(), String> {
        let empty = match (self.from, self.to) {
            (Some(Bound::Position(from)), Some(Bound::Position(to))) => from >= to,
            (Some(Bound::Time(from)), Some(Bound::Time(to))) => from >= to,
            _ => false,
        };
        if empty {
            return Err(format!(
                "--from {} is not before --to {} (--to is exclusive)",
                self.from.map(|b| b.to_string()).unwrap_or_default(),
                self.to.map(|b| b.to_string()).unwrap_or_default()
            ));
        }
        Ok(())
    }
}

/// The flags that select this slice, e.g. `--from 10 --type stream.ended`.
impl fmt::Display for Selection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut flags = Vec::new();
        if let Some(from) = self.from {
            flags.push(format!("--from {from}"));
        }
        if let Some(to) = self.to {
            flags.push(format!("--to {to}"));
        }
        flags.extend(self.aggregates.iter().map(|id| format!("--aggregate {id}")));
        flags.extend(self.types.iter().map(|t| format!("--type {t}")));
        if flags.is_empty() {
            f.write_str("the whole log")
        } else {
            f.write_str(&flags.join(" "))
        }
    }
}

/// The slice's filter; `$1` is the horizon, `$2`–`$7` come from [`Selection`].
/// One static statement with optional parameters rather than SQL built from
/// strings: nothing user-given is ever spliced in.
const FILTER: &str = "txid < $1::bigint::text::xid8
    and ($2::bigint is null or position >= $2)
    and ($3::bigint is null or position < $3)
    and ($4::timestamptz is null or occurred_at >= $4)
    and ($5::timestamptz is null or occurred_at < $5)
    and (cardinality($6::uuid[]) = 0 or aggregate_id = any($6))
    and (cardinality($7::text[]) = 0 or event_type = any($7))";

/// Binds the horizon and the selection to `$1`–`$7` of [`FILTER`].
macro_rules! bind_filter {
    ($query:expr, $horizon:expr, $selection:expr) => {{
        let s: &Selection = $selection;
        $query
            .bind($horizon)
            .bind(s.from.and_then(Bound::position))
            .bind(s.to.and_then(Bound::position))
            .bind(s.from.and_then(Bound::time))
            .bind(s.to.and_then(Bound::time))
            .bind(&s.aggregates)
            .bind(&s.types)
    }};
}

/// The transaction horizon now: every transaction below it has ended.
pub async fn horizon(conn: &mut PgConnection) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("select pg_snapshot_xmin(pg_current_snapshot())::text::bigint")
        .fetch_one(conn)
        .await
}

/// Events of the slice after `after` in publishing order.
pub async fn count(
    conn: &mut PgConnection,
    horizon: i64,
    selection: &Selection,
    after: Checkpoint,
) -> Result<i64, sqlx::Error> {
    let sql = format!(
        "select count(*) from event_log
         where {FILTER} and (txid, position) > ($8::bigint::text::xid8, $9)"
    );
    bind_filter!(sqlx::query_scalar(&sql), horizon, selection)
        .bind(after.txid)
        .bind(after.position)
        .fetch_one(conn)
        .await
}

/// Events of the slice per event type, for the dry run.
pub async fn count_by_type(
    conn: &mut PgConnection,
    horizon: i64,
    selection: &Selection,
) -> Result<Vec<(String, i64)>, sqlx::Error> {
    let sql = format!(
        "select event_type, count(*) from event_log where {FILTER}
         group by event_type order by event_type"
    );
    bind_filter!(sqlx::query_as(&sql), horizon, selection)
        .fetch_all(conn)
        .await
}

/// The next events of the slice after `after`, at most `limit`, in `(txid,
/// position)` order: the same order as the live relay, on the same index.
#[tracing::instrument(skip_all, fields(after = %after, limit))]
pub async fn read_batch(
    conn: &mut PgConnection,
    horizon: i64,
    selection: &Selection,
    after: Checkpoint,
    limit: u32,
) -> Result<Vec<OutboxEvent>, sqlx::Error> {
    let sql = format!(
        "select {}
         from event_log
         where {FILTER} and (txid, position) > ($8::bigint::text::xid8, $9)
         order by event_log.txid, event_log.position  -- the table's columns: see reader::READ_BATCH_SQL
         limit $10",
        crate::outbox_event_columns!()
    );
    bind_filter!(sqlx::query_as(&sql), horizon, selection)
        .bind(after.txid)
        .bind(after.position)
        .bind(i64::from(limit))
        .fetch_all(conn)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_positions_or_rfc3339_times() {
        assert_eq!(Bound::parse("1200"), Ok(Bound::Position(1200)));
        let time = Bound::parse("2026-11-26T12:00:00+01:00").unwrap();
        assert_eq!(time.to_string(), "2026-11-26T11:00:00Z");
        assert!(Bound::parse("-3").is_err());
        assert!(Bound::parse("2026-11-26").is_err());
        assert!(Bound::parse("").is_err());
    }

    #[test]
    fn selection_prints_as_the_flags_that_make_it() {
        assert_eq!(Selection::default().to_string(), "the whole log");
        let selection = Selection {
            from: Some(Bound::Position(5)),
            to: Some(Bound::parse("2026-11-26T00:00:00.5Z").unwrap()),
            aggregates: vec![Uuid::nil()],
            types: vec!["stream.ended".into()],
        };
        assert_eq!(
            selection.to_string(),
            "--from 5 --to 2026-11-26T00:00:00.500Z \
             --aggregate 00000000-0000-0000-0000-000000000000 --type stream.ended"
        );
        let json = serde_json::to_value(&selection).unwrap();
        assert_eq!(
            serde_json::from_value::<Selection>(json).unwrap(),
            selection
        );
    }

    #[test]
    fn empty_ranges_are_refused() {
        let range = |from: &str, to: &str| Selection {
            from: Some(Bound::parse(from).unwrap()),
            to: Some(Bound::parse(to).unwrap()),
            ..Selection::default()
        };
        assert!(range("5", "5").validate().is_err());
        assert!(range("5", "6").validate().is_ok());
        assert!(range("2026-11-26T00:00:00Z", "2026-11-25T00:00:00Z")
            .validate()
            .is_err());
        // Mixed kinds cannot be compared without the log; they may select nothing.
        assert!(range("5", "2026-11-25T00:00:00Z").validate().is_ok());
    }
}
