//! The Grafana dashboard and the Prometheus alert rules in `deploy/`, checked as
//! Prometheus and Grafana will read them: `promtool check rules` accepts the rules,
//! `promtool test rules` runs their unit tests (each alert fires on the series that
//! should raise it, after its `for`, and not on a healthy cluster), every rule has such
//! a test, and every dashboard query parses as PromQL. That the metrics they name are
//! the ones the managers and agents serve is checked against live scrapes in
//! `services::metrics_lint_clean_and_keep_backend_series_across_a_replacement`.
//! Needs `promtool` (`cargo xtask setup` installs it), not root.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Output};

use mesh_tests::monitoring::{
    alert_rules, alert_rules_path, dashboard_path, dashboard_queries, expand_variables,
};

fn promtool(args: &[&str], dir: &Path) -> Output {
    Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("promtool does not run ({e}): cargo xtask setup installs it"))
}

fn said(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    let rules = alert_rules_path();
    let dir = rules.parent().expect("deploy/prometheus");
    let out = promtool(&["check", "rules", "mesh-alerts.yml"], dir);
    assert!(out.status.success(), "promtool check rules: {}", said(&out));
    let names = alert_rules().expect("the alert rules");
    assert!(
        said(&out).contains(&format!("SUCCESS: {} rules found", names.len())),
        "{}",
        said(&out)
    );
    let out = promtool(&["test", "rules", "mesh-alerts.test.yml"], dir);
    assert!(out.status.success(), "promtool test rules: {}", said(&out));

    // Every alert the issue names, and every rule in the file, has a unit test.
    let tests = std::fs::read_to_string(dir.join("mesh-alerts.test.yml")).expect("the tests");
    let tested: BTreeSet<&str> = tests
        .lines()
        .filter_map(|l| l.trim().strip_prefix("alertname: "))
        .collect();
    for wanted in [
        "MeshNoLeader",
        "MeshNodeDown",
        "MeshDropsRising",
        "MeshServiceBelowReplicas",
    ] {
        assert!(names.iter().any(|(n, _)| n == wanted), "no {wanted} rule");
    }
    for (name, _) in &names {
        assert!(tested.contains(name.as_str()), "{name} has no unit test");
    }
}

/// Each query is checked as a recording rule's expression; a broken one is seen to fail
/// the same check, so the check does parse them.
#[test]
fn every_dashboard_query_parses_as_promql() {
    let queries = dashboard_queries().expect("the dashboard");
    assert!(queries.len() >= 15, "{} queries", queries.len());
    let dir = std::env::temp_dir().join(format!("mesh-dashboard-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    // Each query as a recording rule: `promtool check rules` parses its expression.
    let rules = |exprs: &[String]| {
        let mut file = String::from("groups:\n  - name: dashboard\n    rules:\n");
        for (i, expr) in exprs.iter().enumerate() {
            let quoted = serde_json::to_string(expr).expect("a JSON string is a YAML string");
            writeln!(
                file,
                "      - record: dashboard:query_{i}\n        expr: {quoted}"
            )
            .unwrap();
        }
        file
    };
    let exprs: Vec<String> = queries.iter().map(|q| expand_variables(&q.expr)).collect();
    std::fs::write(dir.join("queries.yml"), rules(&exprs)).expect("writing the rules");
    let out = promtool(&["check", "rules", "queries.yml"], &dir);
    assert!(
        out.status.success(),
        "a dashboard query does not parse: {}\n{queries:#?}",
        said(&out)
    );
    let mut broken = exprs.clone();
    broken.push("sum by (service (rate(lb_service_bytes_total[1m]))".into());
    std::fs::write(dir.join("broken.yml"), rules(&broken)).expect("writing the rules");
    let out = promtool(&["check", "rules", "broken.yml"], &dir);
    assert!(!out.status.success(), "promtool accepted a broken query");
    let _ = std::fs::remove_dir_all(&dir);

    // Grafana's side: unique panel ids, every panel on the datasource variable.
    let text = std::fs::read_to_string(dashboard_path()).expect("the dashboard");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    let ids: BTreeSet<u64> = panels.iter().filter_map(|p| p["id"].as_u64()).collect();
    assert_eq!(ids.len(), panels.len(), "panel ids are not unique");
    for panel in panels.iter().filter(|p| p["type"] != "row") {
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "panel {} does not use the datasource variable",
            panel["title"]
        );
    }
}
