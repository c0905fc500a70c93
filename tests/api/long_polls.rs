//! Long-polls: answered at their deadline (never cut by the request timeout),
//! cheap while they wait, and unable to starve commands and reads.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use reqwest::StatusCode;
use sqlx::PgPool;

use crate::helpers::{statuses, Reply, TestApp};

fn events_of(page: &Reply) -> usize {
    page.body["events"].as_array().unwrap().len()
}

/// The README's own example: `wait=30` answers 200 with an empty page after
/// about 30 s, although REQUEST_TIMEOUT is 10 s.
#[sqlx::test]
async fn a_thirty_second_long_poll_answers_200_at_its_deadline(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    assert_eq!(app.settings.request_timeout, Duration::from_secs(10));
    let reader = app.reader_token();
    let started = Instant::now();
    let page = app.read_events(&reader, "wait=30").await;
    let took = started.elapsed();
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    assert_eq!(events_of(&page), 0);
    assert!(
        (Duration::from_millis(29_500)..Duration::from_secs(33)).contains(&took),
        "answered after {took:?}"
    );
}

/// A filtered page moves its cursor past the rows it scanned, so waiting
/// and the next read start after them.
#[sqlx::test]
async fn a_filtered_page_advances_past_what_it_scanned(pool: PgPool) {
    let app = TestApp::spawn(pool).await;
    let reader = app.reader_token();
    let alice = app.create_user("alice").await;
    let stream = app.live_stream(alice, "a").await;
    for name in ["b", "c"] {
        let user = app.create_user(name).await;
        app.live_stream(user, name).await;
    }
    app.wait_until_readable().await;

    let all = app.read_events(&reader, "").await;
    let empty = app.read_events(&reader, "type=stream.ended").await;
    assert_eq!(events_of(&empty), 0);
    assert_eq!(
        empty.body["next"], all.body["next"],
        "the empty filtered page skips the three started events"
    );
    // A full page cannot skip: it stops at its last event.
    let full = app
        .read_events(&reader, "limit=1&type=stream.started")
        .await;
    assert_eq!(full.body["next"], {
        let first = app.read_events(&reader, "limit=1").await;
        first.body["next"].clone()
    });

    app.end_stream(&app.token(alice), stream).await;
    app.wait_until_readable().await;
    let next = app
        .read_events(
            &reader,
            &format!(
                "type=stream.ended&after={}",
                empty.body["next"].as_str().unwrap()
            ),
        )
        .await;
    assert_eq!(events_of(&next), 1);
    assert_eq!(next.body["events"][0]["aggregate_id"], stream.to_string());
}

/// While waiting, a long-poll makes no query: only a moving head wakes it.
#[sqlx::test]
async fn waiting_long_polls_make_no_queries(pool: PgPool) {
    let app = Arc::new(TestApp::spawn(pool).await);
    let polls: Vec<_> = (0..8)
        .map(|_| {
            let app = app.clone();
            let reader = app.reader_token();
            tokio::spawn(async move { app.read_events(&reader, "wait=3").await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(app.long_polls.open_count(), 8);
    let before = app.long_polls.reads();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        app.long_polls.reads(),
        before,
        "no reads while nothing commits"
    );
    for poll in polls {
        assert_eq!(poll.await.unwrap().status, StatusCode::OK);
    }
    assert_eq!(app.long_polls.open_count(), 0, "slots freed");
}

/// A flood of long-polls from many tokens (the 560 with one token are
/// now refused past 4) cannot take the permits and connections that commands
/// and lists need: with MAX_IN_FLIGHT_REQUESTS at 16 and 64 long-polls open,
/// every command and list answers, quickly.
#[sqlx::test]
async fn a_flood_of_long_polls_leaves_commands_and_lists_alone(pool: PgPool) {
    let app = Arc::new(
        TestApp::spawn_with(pool, |s| {
            s.max_in_flight_requests = 16;
            s.long_poll_max = 64;
            s.long_poll_per_user = 4;
        })
        .await,
    );
    // 40 users × 4 long-polls, filtered on a type that never comes.
    let readers: Vec<String> = (0..40).map(|_| app.reader_token()).collect();
    let flood: Vec<_> = readers
        .iter()
        .flat_map(|reader| std::iter::repeat_n(reader.clone(), 4))
        .map(|reader| {
            let app = app.clone();
            tokio::spawn(async move { app.read_events(&reader, "wait=6&type=stream.ended").await })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(3);
    while app.long_polls.open_count() < 64 {
        assert!(Instant::now() < deadline, "64 long-polls open");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // One user's fifth long-poll: 429; anyone's past the global cap: 503.
    let fifth = app.read_events(&readers[0], "wait=6").await;
    assert_eq!(fifth.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(fifth.error_code(), "too_many_long_polls");
    assert!(fifth.headers.contains_key("retry-after"));
    let other = app.read_events(&app.reader_token(), "wait=6").await;
    assert_eq!(other.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(other.error_code(), "long_polls_exhausted");
    assert!(other.headers.contains_key("retry-after"));

    // Commands and lists, 20 each, 8 at a time, all while the flood is open.
    let started = Instant::now();
    let work: Vec<_> = (0..8)
        .map(|w| {
            let app = app.clone();
            tokio::spawn(async move {
                let mut slowest = Duration::ZERO;
                let mut replies = vec![];
                for i in 0..5 {
                    let user = app.create_user(&format!("u{w}-{i}")).await;
                    let t = Instant::now();
                    replies.push(app.start_stream(&app.token(user), "t", "talk").await);
                    replies.push(app.get("/v1/streams?limit=50").await);
                    slowest = slowest.max(t.elapsed());
                }
                (replies, slowest)
            })
        })
        .collect();
    let mut replies = vec![];
    let mut slowest = Duration::ZERO;
    for w in work {
        let (r, s) = w.await.unwrap();
        replies.extend(r);
        slowest = slowest.max(s);
    }
    let took = started.elapsed();
    assert_eq!(
        statuses(&replies),
        [(200, 40), (201, 40)].into(),
        "every command and list answered"
    );
    assert!(
        app.long_polls.open_count() == 64,
        "the flood was open throughout"
    );
    println!("flood: 80 requests in {took:?}, slowest start+list pair {slowest:?}");
    assert!(
        slowest < Duration::from_secs(2),
        "slowest start+list {slowest:?}"
    );

    let flood: Vec<Reply> = futures::future::join_all(flood)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let tally = statuses(&flood);
    assert_eq!(tally.get(&200), Some(&64), "{tally:?}");
    assert_eq!(tally.get(&503), Some(&96), "{tally:?}");
    assert!(flood
        .iter()
        .filter(|r| r.status == StatusCode::OK)
        .all(|r| events_of(r) == 0));
    // Each long-poll read once, plus once per head move (40 commits, coalesced).
    let reads = app.long_polls.reads();
    println!("flood: {reads} long-poll reads");
    assert!(reads <= 64 * 41, "{reads} long-poll reads");
}
