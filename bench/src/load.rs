//! The Rust load generator: stream commands over HTTP to 127.0.0.1 only,
//! bounded in count and time. Closed loop (N clients back to back) for
//! throughput; open loop (a fixed schedule, independent of responses) for
//! latency, so a slow response never lowers the offered load.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use uuid::Uuid;

/// A creator who alternates start and end, with a bearer token.
#[derive(Debug, Clone)]
pub struct Creator {
    pub token: String,
    pub live: Option<Uuid>,
}

impl Creator {
    pub fn many(ids: &[Uuid], jwt_secret: &str) -> Vec<Self> {
        ids.iter()
            .map(|&id| Self {
                token: nova_streaming::auth::issue_token(
                    jwt_secret,
                    id,
                    &[nova_streaming::auth::scopes::STREAMS_WRITE.into()],
                    Duration::from_secs(4 * 3600),
                ),
                live: None,
            })
            .collect()
    }
}

/// What a command did: which event it wrote and when its response arrived.
#[derive(Debug, Clone, Copy)]
pub struct Completion {
    pub stream_id: Uuid,
    /// The event's `aggregate_version`: 1 for a start, 2 for an end.
    pub version: i64,
    pub responded: Instant,
}

#[derive(Clone)]
pub struct CommandClient {
    http: reqwest::Client,
    base: String,
    /// The start request body, serialised once (`Bytes` clones are cheap).
    start_body: bytes::Bytes,
}

impl CommandClient {
    /// `base` is e.g. `http://127.0.0.1:8080`.
    pub fn new(base: &str, max_idle: usize) -> Self {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(max_idle)
            .tcp_nodelay(true)
            .timeout(Duration::from_secs(10))
            .build()
            .expect("an HTTP client");
        let body = serde_json::json!({"title": "bench stream", "category": "gaming"});
        Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
            start_body: serde_json::to_vec(&body).expect("json").into(),
        }
    }

    /// The client itself, for other requests to the same API.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Starts a stream if the creator has none live, else ends it. After a
    /// failed step the creator's state follows what the API answered: a 409 on
    /// a start names the live stream, a 409 on an end means it ended.
    pub async fn step(&self, creator: &mut Creator) -> anyhow::Result<Completion> {
        match creator.live {
            None => {
                let response = self
                    .http
                    .post(format!("{}/v1/streams", self.base))
                    .bearer_auth(&creator.token)
                    .header("content-type", "application/json")
                    .body(self.start_body.clone())
                    .send()
                    .await?;
                let status = response.status();
                let body: serde_json::Value = response.json().await.unwrap_or_default();
                if status.as_u16() == 409 {
                    // A start that timed out or was shed may have committed after
                    // all: the 409 names the live stream, which the next step ends.
                    creator.live = body["error"]["details"]["stream_id"]
                        .as_str()
                        .and_then(|s| s.parse().ok());
                }
                anyhow::ensure!(status.as_u16() == 201, "start answered {status}: {body}");
                let stream_id: Uuid = body["id"]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .context("start: no stream id")?;
                creator.live = Some(stream_id);
                Ok(Completion {
                    stream_id,
                    version: 1,
                    responded: Instant::now(),
                })
            }
            Some(stream_id) => {
                let response = self
                    .http
                    .post(format!("{}/v1/streams/{stream_id}/end", self.base))
                    .bearer_auth(&creator.token)
                    .send()
                    .await?;
                let status = response.status();
                let _ = response.bytes().await;
                if status.as_u16() == 409 {
                    // Already ended (an earlier end committed but its answer was lost).
                    creator.live = None;
                }
                anyhow::ensure!(status.as_u16() == 200, "end answered {status}");
                creator.live = None;
                Ok(Completion {
                    stream_id,
                    version: 2,
                    responded: Instant::now(),
                })
            }
        }
    }

    /// Ends whatever the creators left live, so the next run starts clean.
    pub async fn settle(&self, creators: &mut [Creator]) {
        for creator in creators.iter_mut().filter(|c| c.live.is_some()) {
            let _ = self.step(creator).await;
        }
    }
}

/// The outcome of a closed-loop run.
#[derive(Debug, Default)]
pub struct Throughput {
    pub commands: u64,
    pub errors: u64,
    pub elapsed: Duration,
}

impl Throughput {
    pub fn per_second(&self) -> f64 {
        self.commands as f64 / self.elapsed.as_secs_f64()
    }
}

/// One client per creator, each issuing commands back to back for `duration`.
pub async fn closed_loop(
    client: &CommandClient,
    creators: &mut Vec<Creator>,
    duration: Duration,
) -> Throughput {
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = JoinSet::new();
    for mut creator in creators.drain(..) {
        let client = client.clone();
        tasks.spawn(async move {
            let (mut done, mut errors) = (0u64, 0u64);
            while Instant::now() < deadline {
                match client.step(&mut creator).await {
                    Ok(_) => done += 1,
                    // `step` resyncs the creator from the API's 409s.
                    Err(_) => errors += 1,
                }
            }
            (creator, done, errors)
        });
    }
    let mut result = Throughput::default();
    while let Some(joined) = tasks.join_next().await {
        let (creator, done, errors) = joined.expect("a load task panicked");
        creators.push(creator);
        result.commands += done;
        result.errors += errors;
    }
    result.elapsed = started.elapsed();
    result
}

/// The outcome of an open-loop run.
#[derive(Debug, Default)]
pub struct OpenLoop {
    /// From the scheduled send time to the response.
    pub latencies: Vec<Duration>,
    pub completions: Vec<Completion>,
    pub errors: u64,
    /// Ticks that found no idle creator (the pool was too small).
    pub skipped: u64,
}

/// Sends `rate` commands per second for `duration`, each from an idle creator.
pub async fn open_loop(
    client: &CommandClient,
    creators: &mut Vec<Creator>,
    rate: f64,
    duration: Duration,
) -> OpenLoop {
    let (idle_tx, mut idle_rx) = mpsc::unbounded_channel();
    for creator in creators.drain(..) {
        idle_tx.send(creator).expect("receiver alive");
    }
    let interval = Duration::from_secs_f64(1.0 / rate);
    let ticks = (duration.as_secs_f64() * rate).round() as u64;
    let start = tokio::time::Instant::now();
    let mut tasks = JoinSet::new();
    let mut result = OpenLoop::default();
    for tick in 0..ticks {
        let scheduled = start + interval.mul_f64(tick as f64);
        tokio::time::sleep_until(scheduled).await;
        let Ok(mut creator) = idle_rx.try_recv() else {
            result.skipped += 1;
            continue;
        };
        let (client, idle_tx) = (client.clone(), idle_tx.clone());
        tasks.spawn(async move {
            let outcome = client.step(&mut creator).await;
            let latency = scheduled.elapsed();
            let _ = idle_tx.send(creator);
            (outcome, latency)
        });
    }
    while let Some(joined) = tasks.join_next().await {
        match joined.expect("a load task panicked") {
            (Ok(completion), latency) => {
                result.latencies.push(latency);
                result.completions.push(completion);
            }
            (Err(_), _) => result.errors += 1,
        }
    }
    drop(idle_tx);
    while let Some(creator) = idle_rx.recv().await {
        creators.push(creator);
    }
    result
}
