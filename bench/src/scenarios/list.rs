//! Scenario 4: the service's batched list (`queries::list_live`: page+total,
//! one `WHERE id = ANY($1)`, one Redis pipeline) against an N+1 variant that
//! exists only here (one creator query and one Redis call per row). Both run
//! in-process on the same pool and Redis client, alternating call by call, at
//! 10, 100 and 1,000 live streams by as many creators. SQL round trips are
//! counted from sqlx's per-statement tracing events.

use std::str::FromStr;
use std::time::{Duration, Instant};

use sqlx::postgres::PgConnectOptions;
use sqlx::{PgPool, Row as _};
use uuid::Uuid;

use nova_streaming::config::Settings;
use nova_streaming::presence::ViewerPresence;
use nova_streaming::queries;
use nova_streaming::store::User;

use crate::harness::{ScratchDb, REDIS_URL};
use crate::report::Figure;
use crate::sqlcount;
use crate::stats::{ms, Latency};

use super::Ctx;

/// The N+1 list: the same page, then per row one creator query and one Redis call.
async fn list_n_plus_one(
    pool: &PgPool,
    presence: &ViewerPresence,
    limit: i64,
) -> anyhow::Result<Vec<(Uuid, User, Option<u64>)>> {
    // The service's own page query: only the lookups after it differ.
    let rows = sqlx::query(queries::LIVE_PAGE_SQL)
        .bind(None::<String>)
        .bind(limit)
        .bind(0i64)
        .fetch_all(pool)
        .await?;
    let mut items = Vec::with_capacity(rows.len());
    for row in rows {
        let (Some(id), Some(creator_id)) = (
            row.try_get::<Option<Uuid>, _>("id")?,
            row.try_get::<Option<Uuid>, _>("creator_id")?,
        ) else {
            continue;
        };
        let creator: User =
            sqlx::query_as("select id, username, avatar_url from users where id = $1")
                .bind(creator_id)
                .fetch_one(pool)
                .await?;
        let viewers = presence.counts(&[id]).await.map(|c| c[0]);
        items.push((id, creator, viewers));
    }
    Ok(items)
}

pub async fn run(ctx: &mut Ctx) -> anyhow::Result<()> {
    let db = ScratchDb::create(&ctx.admin, &ctx.admin_url, "list").await?;
    let prefix = format!("nova-bench:{}:", Uuid::now_v7());
    let mut keys = Vec::new();
    let result = measure(ctx, &db, &prefix, &mut keys).await;
    let _ = delete_keys(&keys).await;
    db.drop(&ctx.admin).await;
    result
}

async fn measure(
    ctx: &mut Ctx,
    db: &ScratchDb,
    prefix: &str,
    keys: &mut Vec<String>,
) -> anyhow::Result<()> {
    let defaults = Settings::for_tests(db.url.clone(), REDIS_URL);
    let pool = nova_streaming::startup::pool(&defaults, PgConnectOptions::from_str(&db.url)?);
    // The service's defaults: 100 ms Redis timeout, 30 s presence window.
    let presence = ViewerPresence::new(
        REDIS_URL,
        prefix.to_owned(),
        Duration::from_millis(100),
        Duration::from_secs(30),
    )?;
    let mut live = 0;
    for size in ctx.plan.list_sizes {
        keys.extend(add_streams(db, prefix, live, size - live).await?);
        live = size;
        let limit = size as u32;
        for _ in 0..5 {
            queries::list_live(&pool, &presence, None, 1, limit).await?;
            list_n_plus_one(&pool, &presence, size as i64).await?;
        }
        let (page, batched_rt) =
            sqlcount::count(queries::list_live(&pool, &presence, None, 1, limit)).await;
        let page = page?;
        anyhow::ensure!(
            page.items.len() == size,
            "batched list returned {} items",
            page.items.len()
        );
        anyhow::ensure!(page.viewer_counts_available, "viewer counts unavailable");
        let (items, n1_rt) = sqlcount::count(list_n_plus_one(&pool, &presence, size as i64)).await;
        anyhow::ensure!(items?.len() == size, "N+1 list returned the wrong count");

        let iters = if size >= 1_000 {
            ctx.plan.list_iters_large
        } else {
            ctx.plan.list_iters
        };
        let (mut batched, mut n1) = (Vec::new(), Vec::new());
        for i in 0..iters {
            for variant in if i % 2 == 0 { [0, 1] } else { [1, 0] } {
                let started = Instant::now();
                if variant == 0 {
                    queries::list_live(&pool, &presence, None, 1, limit).await?;
                    batched.push(started.elapsed());
                } else {
                    list_n_plus_one(&pool, &presence, size as i64).await?;
                    n1.push(started.elapsed());
                }
            }
        }
        let b = Latency::of(&mut batched).expect("samples");
        let n = Latency::of(&mut n1).expect("samples");
        let speedup = ms(n.p50) / ms(b.p50);
        println!(
            "  {size} streams: batched p50 {:.2} ms ({batched_rt} SQL), N+1 p50 {:.2} ms ({n1_rt} SQL)",
            ms(b.p50),
            ms(n.p50)
        );
        let mut figure = Figure::new(
            "4",
            format!("list {size} live streams: N+1 p50 / batched p50 (× faster)"),
        )
        .value(format!(
            "batched p50 {:.2} / p99 {:.2} ms; {batched_rt} SQL + 1 Redis",
            ms(b.p50),
            ms(b.p99)
        ))
        .baseline(format!(
            "N+1 p50 {:.2} / p99 {:.2} ms; {n1_rt} SQL + {size} Redis",
            ms(n.p50),
            ms(n.p99)
        ))
        .ratio(speedup);
        if size == 100 {
            figure = figure.goal(
                "≥ 20× faster, exactly 2 SQL",
                speedup >= 20.0 && batched_rt == 2,
            );
        } else {
            figure = figure.goal("exactly 2 SQL", batched_rt == 2);
        }
        ctx.report.push(figure);
    }
    pool.close().await;
    ctx.report.note(format!(
        "Scenario 4: in-process library calls on one pool (the service's pool settings) and one \
         Redis client (100 ms timeout), {} timed calls per variant ({} at 1,000), alternating; \
         the page limit is the list size (the HTTP API caps `limit` at 100, the query function does \
         not). Viewers: 1–20 per stream in Redis. Postgres and Redis are on loopback (~0.05 ms per \
         round trip), which is the N+1 variant's best case.",
        ctx.plan.list_iters, ctx.plan.list_iters_large
    ));
    Ok(())
}

/// Adds `count` live streams by as many new creators, each with 1–20 viewers.
async fn add_streams(
    db: &ScratchDb,
    prefix: &str,
    offset: usize,
    count: usize,
) -> anyhow::Result<Vec<String>> {
    let creators = db.users(count, &format!("creator{offset}")).await?;
    let streams: Vec<Uuid> = (0..count).map(|_| Uuid::now_v7()).collect();
    sqlx::query(
        "insert into live_streams (id, creator_id, title, category, status, started_at, version) \
         select s, c, 'stream ' || n, (array['gaming','music','talk','sports','creative','other'])[1 + n % 6], \
                'live', now() - make_interval(secs => n + $3), 1 \
         from unnest($1::uuid[], $2::uuid[]) with ordinality as t(s, c, n)",
    )
    .bind(&streams)
    .bind(&creators)
    .bind(offset as f64)
    .execute(&db.pool)
    .await?;

    let client = redis::Client::open(REDIS_URL)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let until = chrono::Utc::now().timestamp_millis() + 3_600_000;
    let mut pipe = redis::pipe();
    let mut keys = Vec::with_capacity(count);
    for (i, stream) in streams.iter().enumerate() {
        let key = format!("{prefix}stream:{stream}:viewers");
        for _ in 0..1 + (offset + i) % 20 {
            pipe.zadd(&key, format!("a:{}", Uuid::now_v7()), until)
                .ignore();
        }
        keys.push(key);
    }
    pipe.query_async::<()>(&mut conn).await?;
    Ok(keys)
}

async fn delete_keys(keys: &[String]) -> anyhow::Result<()> {
    let client = redis::Client::open(REDIS_URL)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    for chunk in keys.chunks(500) {
        redis::cmd("DEL")
            .arg(chunk)
            .query_async::<()>(&mut conn)
            .await?;
    }
    Ok(())
}
