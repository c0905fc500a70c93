//! A child's HTTP port as the tests and the bench read it: `/healthz`,
//! `/readyz`, and the Prometheus text of `/metrics`.

use std::time::Duration;

/// `GET http://{addr}{path}` with a 2 s timeout: `(status, body)`, or `None`
/// when nothing answers (not up yet, or gone).
pub async fn get(addr: &str, path: &str) -> Option<(u16, String)> {
    let response = reqwest::Client::new()
        .get(format!("http://{addr}{path}"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?;
    let status = response.status().as_u16();
    Some((status, response.text().await.ok()?))
}

/// The samples of a Prometheus text exposition as `(series, value)`, the series
/// being the name with its labels (`outbox_relay_retries_total`,
/// `outbox_relay_batch_seconds_bucket{le="0.1"}`); comments are skipped.
pub fn metric_samples(text: &str) -> impl Iterator<Item = (&str, f64)> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            Some((series, value.parse().ok()?))
        })
}

#[cfg(test)]
mod tests {
    use super::metric_samples;

    #[test]
    fn reads_series_with_and_without_labels() {
        let text = "# HELP x_total X.\n# TYPE x_total counter\nx_total 3\n\
                    y_bucket{le=\"0.1\"} 2\ny_bucket{le=\"+Inf\"} 5\n# EOF\n";
        let samples: Vec<_> = metric_samples(text).collect();
        assert_eq!(
            samples,
            [
                ("x_total", 3.0),
                ("y_bucket{le=\"0.1\"}", 2.0),
                ("y_bucket{le=\"+Inf\"}", 5.0)
            ]
        );
    }
}
