//! The operators' monitoring files in `packaging/monitoring/`: the Prometheus
//! alert rules pass `promtool check rules` and their own unit tests
//! (`promtool test rules`, which feed series and check which alerts fire),
//! and the rules and the Grafana dashboard only use metrics the gateway
//! really exports, in PromQL that parses, with every exported family shown on
//! the dashboard. promtool comes from Debian's prometheus package
//! (`cargo xtask setup` installs it).
// Test code: a failed unwrap or expect is the test failing, with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use gateway::metrics::Metrics;
use serde_json::Value;

fn monitoring_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/monitoring")
}

/// Runs promtool with `args` in the monitoring folder; panics with its
/// output unless it succeeds.
fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(monitoring_dir())
        .output()
        .unwrap_or_else(|e| {
            panic!("running promtool failed ({e}): install Debian's prometheus package (cargo xtask setup)")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

/// Every `s2cs_...` metric name in `text`, histogram series suffixes folded
/// into their family.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("s2cs_") {
        let preceded_by_word = rest[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        let tail = &rest[at..];
        let len = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        if !preceded_by_word {
            let name = &tail[..len];
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or(name);
            names.insert(family.to_owned());
        }
        rest = &tail[len..];
    }
    names
}

fn exported() -> BTreeSet<String> {
    Metrics::new()
        .expect("metrics registry")
        .family_names()
        .into_iter()
        .collect()
}

fn dashboard() -> Value {
    let text = std::fs::read_to_string(monitoring_dir().join("grafana-dashboard.json"))
        .expect("reading the dashboard");
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

/// Every query of every panel of the dashboard.
fn dashboard_queries(dashboard: &Value) -> Vec<(String, String)> {
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        let title = panel["title"].as_str().expect("every panel has a title");
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("panel {title:?} has a target without expr"));
            queries.push((title.to_owned(), expr.to_owned()));
        }
    }
    queries
}

#[test]
fn alert_rules_pass_promtool_and_their_unit_tests() {
    let checked = promtool(&["check", "rules", "s2cs-alerts.yml"]);
    assert!(checked.contains("SUCCESS"), "{checked}");
    let tested = promtool(&["test", "rules", "s2cs-alerts.test.yml"]);
    assert!(tested.contains("SUCCESS"), "{tested}");
}

#[test]
fn alert_rules_use_only_exported_metrics_and_each_alert_is_tested() {
    let rules = std::fs::read_to_string(monitoring_dir().join("s2cs-alerts.yml")).unwrap();
    let exported = exported();
    let used = metric_names(&rules);
    assert!(
        used.len() >= 6,
        "too few metrics found in the rules: {used:?}"
    );
    let unknown: Vec<_> = used.difference(&exported).collect();
    assert!(
        unknown.is_empty(),
        "the alert rules use metrics the gateway does not export: {unknown:?}"
    );
    let tests = std::fs::read_to_string(monitoring_dir().join("s2cs-alerts.test.yml")).unwrap();
    for line in rules.lines() {
        if let Some(name) = line.trim().strip_prefix("- alert: ") {
            assert!(
                tests.contains(&format!("alertname: {name}\n")),
                "alert {name} has no case in s2cs-alerts.test.yml that expects it to fire"
            );
        }
    }
}

#[test]
fn dashboard_shows_every_exported_metric_and_nothing_else() {
    let dashboard = dashboard();
    let queries = dashboard_queries(&dashboard);
    assert!(!queries.is_empty());
    let all: String = queries.iter().map(|(_, q)| format!("{q}\n")).collect();
    let used = metric_names(&all);
    let exported = exported();
    let unknown: Vec<_> = used.difference(&exported).collect();
    assert!(
        unknown.is_empty(),
        "the dashboard queries metrics the gateway does not export: {unknown:?}"
    );
    let unshown: Vec<_> = exported.difference(&used).collect();
    assert!(
        unshown.is_empty(),
        "metrics the gateway exports that no dashboard panel shows: {unshown:?}"
    );
}

#[test]
fn dashboard_queries_are_valid_promql() {
    // promtool parses PromQL only in rule files: wrap each panel's query in a
    // recording rule, with Grafana's template variable given a value.
    let dashboard = dashboard();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (title, expr)) in dashboard_queries(&dashboard).iter().enumerate() {
        let expr = expr.replace("$instance", ".*");
        let quoted = serde_json::to_string(&expr).unwrap();
        rules.push_str(&format!(
            "      # {title}\n      - record: dashboard_query_{i}\n        expr: {quoted}\n"
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dashboard-queries.yml");
    std::fs::write(&file, rules).unwrap();
    let out = promtool(&["check", "rules", file.to_str().unwrap()]);
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn dashboard_panels_have_unique_ids_and_fit_the_grid_without_overlap() {
    let dashboard = dashboard();
    assert_eq!(dashboard["uid"], "scistream-s2cs");
    let panels = dashboard["panels"].as_array().unwrap();
    let mut ids = BTreeSet::new();
    let mut cells = BTreeSet::new();
    for panel in panels {
        let title = panel["title"].as_str().unwrap();
        let id = panel["id"].as_u64().expect("numeric panel id");
        assert!(ids.insert(id), "panel id {id} used twice ({title})");
        let grid = &panel["gridPos"];
        let (x, y, w, h) = (
            grid["x"].as_u64().unwrap(),
            grid["y"].as_u64().unwrap(),
            grid["w"].as_u64().unwrap(),
            grid["h"].as_u64().unwrap(),
        );
        assert!(x + w <= 24, "panel {title:?} is wider than the grid");
        for cx in x..x + w {
            for cy in y..y + h {
                assert!(cells.insert((cx, cy)), "panel {title:?} overlaps another");
            }
        }
        if panel["type"] != "row" {
            assert_eq!(
                panel["datasource"]["uid"], "${DS_PROMETHEUS}",
                "panel {title:?} must use the dashboard's Prometheus input"
            );
            assert!(
                panel["description"].as_str().is_some_and(|d| !d.is_empty()),
                "panel {title:?} has no description"
            );
        }
    }
}
