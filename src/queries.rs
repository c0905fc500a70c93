//! Reads. A list page costs a fixed number of round trips whatever its size:
//! one SQL query for the page and its total, then, concurrently, one
//! `WHERE id = ANY($1)` for the creators and one Redis pipeline for the viewer
//! counts.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use crate::domain::{Category, LiveStream, StreamStatus};
use crate::presence::ViewerPresence;
use crate::store::{StreamRepo, User, UserRepo};

/// One page of live streams, newest first.
#[derive(Debug, Clone)]
pub struct LivePage {
    pub total: i64,
    pub items: Vec<LiveItem>,
    /// False when Redis did not answer in time: counts are then `None`.
    pub viewer_counts_available: bool,
}

/// A live stream with its creator and current viewer count.
#[derive(Debug, Clone)]
pub struct LiveItem {
    pub stream: LiveStream,
    pub creator: User,
    pub current_viewers: Option<u64>,
}

#[derive(sqlx::FromRow)]
struct PageRow {
    total: i64,
    id: Option<Uuid>,
    creator_id: Option<Uuid>,
    title: Option<String>,
    category: Option<String>,
    thumbnail_url: Option<String>,
    started_at: Option<DateTime<Utc>>,
    version: Option<i64>,
}

impl PageRow {
    fn into_stream(self) -> Option<LiveStream> {
        Some(LiveStream {
            id: self.id?,
            creator_id: self.creator_id?,
            title: self.title?,
            category: self.category?,
            thumbnail_url: self.thumbnail_url,
            status: StreamStatus::Live,
            started_at: self.started_at?,
            ended_at: None,
            version: self.version?,
        })
    }
}

/// A creator whose row is missing still gets a well-formed entry.
fn placeholder_creator(id: Uuid) -> User {
    User {
        id,
        username: "[unknown]".into(),
        avatar_url: None,
    }
}

/// One page of live streams and their total: `$1` category or null, `$2` limit,
/// `$3` offset. The left join keeps one row (with the total) even when the page
/// is empty, so the page and its total cost one round trip.
pub const LIVE_PAGE_SQL: &str = "with live as ( \
        select id, creator_id, title, category, thumbnail_url, started_at, version \
        from live_streams where status = 'live' and ($1::text is null or category = $1) \
     ), page as ( \
        select * from live order by started_at desc, id desc limit $2 offset $3 \
     ) \
     select t.total, p.* from (select count(*) as total from live) t \
     left join page p on true order by p.started_at desc, p.id desc";

#[tracing::instrument(skip(pool, presence))]
pub async fn list_live(
    pool: &PgPool,
    presence: &ViewerPresence,
    category: Option<Category>,
    page: u32,
    limit: u32,
) -> sqlx::Result<LivePage> {
    let offset = i64::from(page - 1) * i64::from(limit);
    let rows: Vec<PageRow> = sqlx::query_as(LIVE_PAGE_SQL)
        .bind(category.map(Category::as_str))
        .bind(i64::from(limit))
        .bind(offset)
        .fetch_all(pool)
        .await?;

    let total = rows.first().map_or(0, |r| r.total);
    let streams: Vec<LiveStream> = rows.into_iter().filter_map(PageRow::into_stream).collect();
    if streams.is_empty() {
        return Ok(LivePage {
            total,
            items: vec![],
            viewer_counts_available: true,
        });
    }

    let mut creator_ids: Vec<Uuid> = streams.iter().map(|s| s.creator_id).collect();
    creator_ids.sort_unstable();
    creator_ids.dedup();
    let stream_ids: Vec<Uuid> = streams.iter().map(|s| s.id).collect();
    // Independent lookups, awaited together: the page costs one round trip of
    // latency after its query, not two.
    let (creators, counts) = tokio::join!(
        UserRepo::find_many(pool, &creator_ids),
        presence.counts(&stream_ids)
    );
    let creators: HashMap<Uuid, User> = creators?.into_iter().map(|u| (u.id, u)).collect();
    let viewer_counts_available = counts.is_some();

    let items = streams
        .into_iter()
        .enumerate()
        .map(|(i, stream)| LiveItem {
            creator: creators
                .get(&stream.creator_id)
                .cloned()
                .unwrap_or_else(|| placeholder_creator(stream.creator_id)),
            current_viewers: counts.as_ref().map(|c| c[i]),
            stream,
        })
        .collect();
    Ok(LivePage {
        total,
        items,
        viewer_counts_available,
    })
}

pub async fn get_stream(pool: &PgPool, id: Uuid) -> sqlx::Result<Option<LiveStream>> {
    let mut conn = pool.acquire().await?;
    StreamRepo::find(&mut conn, id).await
}

/// One stream with its creator and, while live, its viewer count.
pub async fn stream_detail(
    pool: &PgPool,
    presence: &ViewerPresence,
    id: Uuid,
) -> sqlx::Result<Option<LiveItem>> {
    let Some(stream) = get_stream(pool, id).await? else {
        return Ok(None);
    };
    let (ids, creator_ids) = ([stream.id], [stream.creator_id]);
    let viewers = async {
        match stream.status {
            StreamStatus::Live => presence.counts(&ids).await.map(|c| c[0]),
            StreamStatus::Ended => Some(0),
        }
    };
    let (creators, current_viewers) =
        tokio::join!(UserRepo::find_many(pool, &creator_ids), viewers);
    let creator = creators?
        .pop()
        .unwrap_or_else(|| placeholder_creator(stream.creator_id));
    Ok(Some(LiveItem {
        stream,
        creator,
        current_viewers,
    }))
}
