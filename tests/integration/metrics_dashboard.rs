//! deploy/dashboards/spark-shuffle-agent.json may only query metrics the agent exports: every
//! metric name in every PromQL expression of the dashboard must be one a real agent (built by
//! `app::build`) registers (`Exporter::exported_names`, which lists families that have no series
//! yet too, such as the Kubernetes watch gauges). A renamed metric then fails here, not on an operator's screen.

use std::collections::BTreeSet;

use spark_shuffle_agent::app;
use spark_shuffle_agent::config::Config;

const DASHBOARD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/dashboards/spark-shuffle-agent.json");

/// PromQL words that are not metric names: operators spelled as words, and aggregations (which
/// may be followed by `by (...)` instead of `(`). Functions are recognised by their `(`.
const KEYWORDS: &[&str] = &[
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "sum",
    "avg",
    "min",
    "max",
    "count",
    "group",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
    "limitk",
    "limit_ratio",
];

/// Every `"expr"` string in the dashboard (panels, nested rows, and template variables' queries).
fn expressions(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr" | "definition", serde_json::Value::String(s)) => out.push(s.clone()),
                    ("query", serde_json::Value::String(s)) if s.contains('(') => out.push(s.clone()),
                    _ => expressions(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| expressions(v, out)),
        _ => {}
    }
}

/// The metric names a PromQL expression selects: identifiers left after dropping string
/// literals, label matchers `{...}`, ranges `[...]`, grouping clauses `by (...)`, and every
/// identifier directly followed by `(` (a function or aggregation).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut cleaned = String::new();
    let mut chars = expr.chars();
    // Some(closing char) while inside `{...}` or `[...]`, whose content is dropped.
    let mut inside: Option<char> = None;
    while let Some(c) = chars.next() {
        match c {
            '"' | '\'' | '`' => {
                // A string literal (a label value), dropped whole: braces in it mean nothing.
                while let Some(d) = chars.next() {
                    if d == '\\' {
                        chars.next();
                    } else if d == c {
                        break;
                    }
                }
                cleaned.push(' ');
            }
            '{' | '[' if inside.is_none() => inside = Some(if c == '{' { '}' } else { ']' }),
            c if inside == Some(c) => {
                inside = None;
                cleaned.push(' ');
            }
            _ if inside.is_some() => {}
            _ => cleaned.push(c),
        }
    }
    let mut names = BTreeSet::new();
    let tokens = tokenize(&cleaned);
    let mut i = 0;
    while i < tokens.len() {
        let token = &tokens[i];
        let next = tokens.get(i + 1).map(String::as_str);
        if matches!(token.as_str(), "by" | "without" | "on" | "ignoring" | "group_left" | "group_right")
            && next == Some("(")
        {
            // Label names up to the closing parenthesis.
            while i < tokens.len() && tokens[i] != ")" {
                i += 1;
            }
        } else if is_identifier(token) && next != Some("(") && !KEYWORDS.contains(&token.as_str()) {
            names.insert(token.clone());
        }
        i += 1;
    }
    names
}

fn tokenize(text: &str) -> Vec<String> {
    let mut tokens = Vec::new();
    let mut current = String::new();
    for c in text.chars() {
        if c.is_ascii_alphanumeric() || c == '_' || c == ':' || c == '.' || c == '$' {
            current.push(c);
        } else {
            if !current.is_empty() {
                tokens.push(std::mem::take(&mut current));
            }
            if !c.is_whitespace() {
                tokens.push(c.to_string());
            }
        }
    }
    if !current.is_empty() {
        tokens.push(current);
    }
    tokens
}

/// A metric-name-shaped token: not a number, not a Grafana `$variable`.
fn is_identifier(token: &str) -> bool {
    let first = token.chars().next().unwrap_or('0');
    (first.is_ascii_alphabetic() || first == '_' || first == ':') && !token.contains('$') && !token.contains('.')
}

#[test]
fn the_name_extractor_skips_functions_labels_strings_and_ranges() {
    let expr = r#"histogram_quantile(0.99, sum by (le, app) (rate(foo_bucket{instance=~"$instance",x="a{b}"}[5m]))) / on (app) bar_total + ignoring(le) baz offset 5m"#;
    let names: Vec<String> = metric_names(expr).into_iter().collect();
    assert_eq!(names, ["bar_total", "baz", "foo_bucket"]);
    assert_eq!(metric_names("label_values(spark_shuffle_agent_build_info, instance)").len(), 2, "both words");
}

#[test]
fn every_metric_the_dashboard_queries_is_exported_by_the_agent() {
    let text = std::fs::read_to_string(DASHBOARD).expect("the dashboard exists");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut exprs = Vec::new();
    expressions(&dashboard, &mut exprs);
    assert!(exprs.len() >= 20, "expected the dashboard's queries, found {}", exprs.len());
    let exported = exported_names();
    let mut used = BTreeSet::new();
    for expr in &exprs {
        for name in metric_names(expr) {
            // label_values(metric, label): the second argument is a label, not a metric.
            if expr.starts_with("label_values(") && !name.starts_with("spark_shuffle_agent_") {
                continue;
            }
            assert!(
                exported.contains(&name),
                "the dashboard queries {name:?}, which the agent does not export (in {expr})"
            );
            used.insert(name);
        }
    }
    // The panels the operator needs are there (the issue's list).
    for needed in [
        "spark_shuffle_agent_app_disk_bytes",
        "spark_shuffle_agent_root_free_bytes",
        "spark_shuffle_agent_block_bytes_transferred_total",
        "spark_shuffle_agent_blocks_transferred_total",
        "spark_shuffle_agent_fetch_latency_seconds_bucket",
        "spark_shuffle_agent_registered_apps",
        "spark_shuffle_agent_registered_executors",
        "spark_shuffle_agent_active_connections",
        "spark_shuffle_agent_errors_total",
        "spark_shuffle_agent_executor_cleanups_total",
        "spark_shuffle_agent_k8s_watch_up",
    ] {
        assert!(used.contains(needed), "no panel queries {needed}");
    }
}

#[test]
fn every_panel_uses_the_datasource_variable() {
    let text = std::fs::read_to_string(DASHBOARD).expect("the dashboard exists");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    for panel in panels.iter().filter(|p| p["type"] != "row") {
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "panel {:?}", panel["title"]);
        let grid = &panel["gridPos"];
        assert!(
            grid["x"].as_u64().unwrap() + grid["w"].as_u64().unwrap() <= 24,
            "panel {:?} is off the grid",
            panel["title"]
        );
    }
}

/// Every series name a real agent can export (families with no series yet included), from an
/// agent built as the binary builds it.
fn exported_names() -> BTreeSet<String> {
    let (root, state) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let config = Config {
        bind: std::net::Ipv4Addr::LOCALHOST.into(),
        port: 0,
        metrics_port: 0,
        roots: vec![root.path().to_path_buf()],
        state_dir: state.path().to_path_buf(),
        ..Config::default()
    };
    let agent = app::build(config).expect("the agent starts");
    let names = agent.admin().exporter.exported_names().into_iter().collect();
    agent.stop();
    agent.wait_termination().expect("the agent stops");
    names
}
