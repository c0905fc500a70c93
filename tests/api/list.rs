//! The live list: shape, order, filters, pagination, and a fixed number of
//! round trips whatever the page size.

use redis::AsyncCommands;
use reqwest::StatusCode;
use sqlx::PgPool;
use uuid::Uuid;

use crate::helpers::{count_round_trips, RoundTrips, TestApp, CLOSED_REDIS_URL};

/// `n` live streams by `n` distinct creators (inserted directly: faster than HTTP).
async fn seed_live_streams(app: &TestApp, n: usize, category: &str) -> Vec<Uuid> {
    let mut ids = vec![];
    for i in 0..n {
        let creator = app.create_user(&format!("{category}{i}")).await;
        let id = Uuid::now_v7();
        sqlx::query(
            "insert into live_streams (id, creator_id, title, category, status, started_at, version) \
             values ($1, $2, $3, $4, 'live', now() - make_interval(secs => $5), 1)",
        )
        .bind(id)
        .bind(creator)
        .bind(format!("stream {i}"))
        .bind(category)
        .bind((n - i) as f64)
        .execute(&app.pool)
        .await
        .unwrap();
        ids.push(id);
    }
    ids
}

#[sqlx::test]
async fn lists_live_streams_newest_first_with_creators_and_viewers(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let alice = app.create_user("alice").await;
    let bob = app.create_user("bob").await;
    let carol = app.create_user("carol").await;
    let a = app.live_stream(alice, "a").await;
    let b = app.live_stream(bob, "b").await;
    let c = app.live_stream(carol, "c").await;
    app.end_stream(&app.token(carol), c).await;
    for viewer in [alice, carol] {
        app.heartbeat(b, Some(&app.token(viewer)), None).await;
    }

    let reply = app.get("/v1/streams").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body["total"], 2);
    assert_eq!(reply.body["page"], 1);
    assert_eq!(reply.body["limit"], 20);
    let items = reply.body["items"].as_array().unwrap();
    let ids: Vec<&str> = items.iter().map(|i| i["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        vec![b.to_string(), a.to_string()],
        "newest first, ended excluded"
    );
    assert_eq!(items[0]["creator"]["username"], "bob");
    assert_eq!(
        items[0]["creator"]["avatar_url"],
        "https://cdn.example.com/bob.png"
    );
    assert_eq!(items[0]["current_viewers"], 2);
    assert_eq!(items[1]["current_viewers"], 0);
    assert!(reply.headers.get("x-viewer-counts").is_none());
}

#[sqlx::test]
async fn filters_by_category_and_paginates(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let music = seed_live_streams(&app, 5, "music").await;
    seed_live_streams(&app, 3, "talk").await;

    let page2 = app.get("/v1/streams?category=music&page=2&limit=2").await;
    assert_eq!(page2.status, StatusCode::OK);
    assert_eq!(page2.body["total"], 5);
    let ids: Vec<&str> = page2.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    // Seeded oldest first, so newest first is the reverse: page 2 holds the 3rd and 4th newest.
    assert_eq!(ids, vec![music[2].to_string(), music[1].to_string()]);

    let past_the_end = app.get("/v1/streams?category=music&page=9&limit=2").await;
    assert_eq!(past_the_end.body["total"], 5);
    assert_eq!(past_the_end.body["items"].as_array().unwrap().len(), 0);

    for bad in [
        "limit=0",
        "limit=101",
        "page=0",
        "page=-1",
        "page=abc",
        "category=cooking",
    ] {
        let reply = app.get(&format!("/v1/streams?{bad}")).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(reply.error_code(), "invalid_query");
    }
}

#[sqlx::test]
async fn a_page_costs_two_sql_and_one_redis_round_trip_whatever_its_size(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    seed_live_streams(&app, 100, "gaming").await;

    for limit in [1, 10, 100] {
        let (reply, round_trips) =
            count_round_trips(app.oneshot_get(&format!("/v1/streams?limit={limit}"))).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.body["items"].as_array().unwrap().len(), limit);
        assert_eq!(
            round_trips,
            RoundTrips { sql: 2, redis: 1 },
            "page of {limit}: page+total, then creators; one pipeline of viewer counts"
        );
    }
    let (_, empty) = count_round_trips(app.oneshot_get("/v1/streams?category=sports")).await;
    assert_eq!(
        empty,
        RoundTrips { sql: 1, redis: 0 },
        "an empty page needs no other lookup"
    );
}

#[sqlx::test]
async fn a_missing_creator_gets_a_placeholder(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let ids = seed_live_streams(&app, 2, "gaming").await;
    // Only possible if the foreign key is gone (e.g. a partial restore); the list must survive it.
    sqlx::raw_sql(
        "alter table live_streams drop constraint live_streams_creator_id_fkey; \
         delete from users where username = 'gaming0';",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let reply = app.get("/v1/streams").await;
    assert_eq!(reply.status, StatusCode::OK);
    let orphan = reply.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"] == ids[0].to_string())
        .unwrap();
    assert_eq!(orphan["creator"]["username"], "[unknown]");
    assert_eq!(orphan["creator"]["id"], orphan["creator_id"]);
}

#[sqlx::test]
async fn redis_down_marks_counts_unavailable_but_answers(pool: PgPool) {
    let app = TestApp::spawn_with(pool, |s| s.redis_url = CLOSED_REDIS_URL.into()).await;
    seed_live_streams(&app, 3, "gaming").await;
    let started = std::time::Instant::now();
    let reply = app.get("/v1/streams").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "bounded by the Redis timeout"
    );
    assert_eq!(reply.headers["x-viewer-counts"], "unavailable");
    for item in reply.body["items"].as_array().unwrap() {
        assert!(item["current_viewers"].is_null());
    }
}

#[sqlx::test]
async fn viewers_older_than_the_window_are_not_counted(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let ids = seed_live_streams(&app, 1, "gaming").await;
    let mut redis = app.redis().await;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let key = app.viewers_key(ids[0]);
    let _: () = redis.zadd(&key, "a:stale", now_ms - 31_000).await.unwrap();
    let _: () = redis.zadd(&key, "a:fresh", now_ms - 1_000).await.unwrap();
    let reply = app.get("/v1/streams").await;
    assert_eq!(reply.body["items"][0]["current_viewers"], 1);
    let _: () = redis.del(&key).await.unwrap();
}
