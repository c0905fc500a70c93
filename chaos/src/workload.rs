//! The mixed HTTP workload: creators start and end streams (with
//! Idempotency-Keys, retried on 503 and timeouts), viewers send heartbeats,
//! readers list, and one client long-polls the event log. Every 2xx command
//! is recorded with the version it answered: the run's ground truth.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use rand::{rngs::StdRng, Rng as _, SeedableRng as _};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// What the workload saw.
#[derive(Debug, Default)]
pub struct Observed {
    /// `(stream, version)` of every command answered 2xx.
    pub committed: Vec<(Uuid, i64)>,
    /// Replies by request kind and status (0: no reply: timeout or connection).
    pub statuses: BTreeMap<(&'static str, u16), u64>,
    /// Event ids the long-poller read from `GET /v1/events`.
    pub polled: Vec<Uuid>,
    /// `(stream, version)` of every command a late committer (`late`) committed.
    pub late: Vec<(Uuid, i64)>,
    /// Late committers' commands that failed (Postgres down, connection killed).
    pub late_failed: u64,
}

pub type Shared = Arc<Mutex<Observed>>;

pub struct Client {
    http: reqwest::Client,
    base: String,
    observed: Shared,
}

impl Client {
    pub fn new(base: String, observed: Shared) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .build()
            .expect("client");
        Self {
            http,
            base,
            observed,
        }
    }

    async fn send(&self, kind: &'static str, request: reqwest::RequestBuilder) -> (u16, Value) {
        let (status, body) = match request.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                (status, response.json().await.unwrap_or(Value::Null))
            }
            Err(_) => (0, Value::Null),
        };
        *self
            .observed
            .lock()
            .unwrap()
            .statuses
            .entry((kind, status))
            .or_default() += 1;
        (status, body)
    }

    fn commit(&self, body: &Value) {
        if let (Some(id), Some(version)) = (
            body["id"].as_str().and_then(|s| s.parse().ok()),
            body["version"].as_i64(),
        ) {
            self.observed.lock().unwrap().committed.push((id, version));
        }
    }

    /// A command, retried with the same Idempotency-Key while its outcome is
    /// unknown (no reply, 503, 504), so most commands end with an answer.
    async fn command(
        &self,
        kind: &'static str,
        path: &str,
        token: &str,
        body: Option<Value>,
        stop: &CancellationToken,
    ) -> (u16, Value) {
        let key = Uuid::now_v7().to_string();
        for _ in 0..8 {
            let mut request = self
                .http
                .post(format!("{}{path}", self.base))
                .bearer_auth(token)
                .header("Idempotency-Key", &key);
            if let Some(body) = &body {
                request = request.json(body);
            }
            let (status, reply) = self.send(kind, request).await;
            if !matches!(status, 0 | 503 | 504) || stop.is_cancelled() {
                return (status, reply);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        (0, Value::Null)
    }

    /// Starts, watches (heartbeats, lists) and ends streams until `stop`.
    pub async fn creator(self, token: String, seed: u64, stop: CancellationToken) {
        let mut rng = StdRng::seed_from_u64(seed);
        let categories = ["gaming", "music", "talk", "sports", "creative", "other"];
        while !stop.is_cancelled() {
            let category = categories[rng.random_range(0..categories.len())];
            let body =
                json!({"title": format!("chaos {}", rng.random::<u32>()), "category": category});
            let (status, reply) = self
                .command("start", "/v1/streams", &token, Some(body), &stop)
                .await;
            let stream: Uuid = match status {
                201 => {
                    self.commit(&reply);
                    reply["id"].as_str().and_then(|s| s.parse().ok()).unwrap()
                }
                // Live from an earlier start whose reply was lost: end that one.
                409 => match reply["error"]["details"]["stream_id"].as_str() {
                    Some(id) => id.parse().unwrap(),
                    None => continue,
                },
                _ => continue,
            };
            for _ in 0..rng.random_range(1..4) {
                let anonymous = json!({"anonymous_id": Uuid::now_v7()});
                let beat = self
                    .http
                    .post(format!(
                        "{}/v1/streams/{stream}/viewers/heartbeat",
                        self.base
                    ))
                    .json(&anonymous);
                self.send("heartbeat", beat).await;
                let list = self.http.get(format!("{}/v1/streams?limit=50", self.base));
                self.send("list", list).await;
                tokio::time::sleep(Duration::from_millis(rng.random_range(50..300))).await;
            }
            let (status, reply) = self
                .command(
                    "end",
                    &format!("/v1/streams/{stream}/end"),
                    &token,
                    None,
                    &stop,
                )
                .await;
            if status == 200 {
                self.commit(&reply);
            }
        }
    }

    /// Follows the event log with long-polls until `stop`.
    pub async fn long_poller(self, token: String, stop: CancellationToken) {
        let mut after: Option<String> = None;
        while !stop.is_cancelled() {
            let mut url = format!("{}/v1/events?wait=5&limit=200", self.base);
            if let Some(after) = &after {
                url.push_str(&format!("&after={after}"));
            }
            let (status, body) = self
                .send("long-poll", self.http.get(url).bearer_auth(&token))
                .await;
            if status != 200 {
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            let ids: Vec<Uuid> = body["events"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|e| e["event_id"].as_str()?.parse().ok())
                .collect();
            self.observed.lock().unwrap().polled.extend(ids);
            after = body["next"].as_str().map(str::to_owned);
        }
    }
}
