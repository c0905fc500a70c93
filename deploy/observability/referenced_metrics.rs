//! The metric names that the alert rules and Grafana dashboards beside this
//! file query, for the tests that check each one is exported:
//! `tests/api/observability.rs` (the API's) and
//! `outbox-relay/tests/relay/observability.rs` (the relay's, `outbox_relay_*`).
//! Both include this file by path.
//!
//! A name is taken from every selector of every expression, parsed as PromQL,
//! as written: `http_request_duration_seconds_bucket` stays so, and is compared
//! with the sample names of a scrape, which carry the same `_bucket`, `_sum`,
//! `_count` and `_total` suffixes. So a histogram queried as one must be
//! exported as one.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use promql_parser::parser::{self, Expr, VectorSelector};
use promql_parser::util::{walk_expr, ExprVisitor};

/// The prefix of the relay's metrics; every other name belongs to the API.
pub const RELAY_PREFIX: &str = "outbox_relay_";

/// `deploy/observability`, from a crate directory inside the workspace.
pub fn observability_dir(manifest_dir: &str) -> PathBuf {
    Path::new(manifest_dir)
        .ancestors()
        .map(|dir| dir.join("deploy/observability"))
        .find(|dir| dir.join("alerts.yaml").is_file())
        .expect("deploy/observability/alerts.yaml above the crate")
}

/// Every metric name the rules and dashboards query, each with the places
/// (`file: expression`) that name it.
pub fn referenced_metrics(dir: &Path) -> BTreeMap<String, Vec<String>> {
    let mut names = BTreeMap::new();
    for (file, expr) in rule_expressions(dir)
        .into_iter()
        .chain(dashboard_expressions(dir))
    {
        for name in selected_names(&file, &expr) {
            names
                .entry(name)
                .or_insert_with(Vec::new)
                .push(format!("{file}: {expr}"));
        }
    }
    names
}

/// Metric names from the lines of a Prometheus or OpenMetrics text exposition
/// or from series (`name{labels}`): comments skipped, labels and value cut.
pub fn exported_names<S: AsRef<str>>(lines: impl IntoIterator<Item = S>) -> BTreeSet<String> {
    lines
        .into_iter()
        .filter_map(|line| {
            let line = line.as_ref();
            let name = line.split(['{', ' ']).next()?;
            (!name.is_empty() && !line.starts_with('#')).then(|| name.to_owned())
        })
        .collect()
}

fn rule_expressions(dir: &Path) -> Vec<(String, String)> {
    let path = dir.join("alerts.yaml");
    let text = std::fs::read_to_string(&path).expect("read alerts.yaml");
    let docs = yaml_rust2::YamlLoader::load_from_str(&text).expect("alerts.yaml is YAML");
    let groups = docs[0]["groups"].as_vec().expect("alerts.yaml has groups");
    groups
        .iter()
        .flat_map(|group| group["rules"].as_vec().expect("a group has rules"))
        .map(|rule| {
            let expr = rule["expr"].as_str().expect("every rule has an expr");
            ("alerts.yaml".to_owned(), expr.to_owned())
        })
        .collect()
}

fn dashboard_expressions(dir: &Path) -> Vec<(String, String)> {
    let dashboards = dir.join("grafana/dashboards");
    let mut found = Vec::new();
    for entry in std::fs::read_dir(&dashboards).expect("read grafana/dashboards") {
        let path = entry.expect("dir entry").path();
        if path.extension().is_some_and(|ext| ext == "json") {
            let text = std::fs::read_to_string(&path).expect("read dashboard");
            let json: serde_json::Value = serde_json::from_str(&text).expect("dashboard is JSON");
            let file = format!(
                "grafana/dashboards/{}",
                path.file_name().unwrap().to_string_lossy()
            );
            collect_exprs(&json, &file, &mut found);
        }
    }
    assert!(
        !found.is_empty(),
        "no dashboard expressions in {}",
        dashboards.display()
    );
    found
}

/// Panel targets' `expr`s, wherever panels nest (rows, libraries).
fn collect_exprs(value: &serde_json::Value, file: &str, found: &mut Vec<(String, String)>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("expr", serde_json::Value::String(expr)) => {
                        found.push((file.to_owned(), expr.clone()))
                    }
                    _ => collect_exprs(value, file, found),
                }
            }
        }
        serde_json::Value::Array(items) => items
            .iter()
            .for_each(|item| collect_exprs(item, file, found)),
        _ => {}
    }
}

fn selected_names(file: &str, expr: &str) -> Vec<String> {
    // Grafana's interval variables are not PromQL; any duration parses.
    let promql = ["$__rate_interval", "$__interval", "$__range"]
        .iter()
        .fold(expr.to_owned(), |e, var| e.replace(var, "5m"));
    let ast = parser::parse(&promql).unwrap_or_else(|err| panic!("{file}: `{expr}`: {err}"));
    let mut names = Names(Vec::new());
    let _ = walk_expr(&mut names, &ast);
    assert!(!names.0.is_empty(), "{file}: no metric in `{expr}`");
    names.0
}

struct Names(Vec<String>);

impl Names {
    fn add(&mut self, selector: &VectorSelector) {
        let name = selector
            .name
            .clone()
            .expect("selectors name their metric (no bare {__name__=...})");
        self.0.push(name);
    }
}

impl ExprVisitor for Names {
    type Error = std::convert::Infallible;

    fn pre_visit(&mut self, expr: &Expr) -> Result<bool, Self::Error> {
        match expr {
            Expr::VectorSelector(selector) => self.add(selector),
            Expr::MatrixSelector(matrix) => self.add(&matrix.vs),
            _ => {}
        }
        Ok(true)
    }
}
