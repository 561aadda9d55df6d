//! The monitoring files in `deploy/`: the Grafana dashboard and the Prometheus alert
//! rules, read as the tests check them (their queries parse, the metrics they name are
//! the ones the managers and agents serve).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use mesh_compose::yaml::{self, Value};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `deploy/grafana/mesh-dashboard.json`.
#[must_use]
pub fn dashboard_path() -> PathBuf {
    repo_root().join("deploy/grafana/mesh-dashboard.json")
}

/// `deploy/prometheus/mesh-alerts.yml`.
#[must_use]
pub fn alert_rules_path() -> PathBuf {
    repo_root().join("deploy/prometheus/mesh-alerts.yml")
}

/// One query of the dashboard: its panel's title and its PromQL.
#[derive(Clone, Debug)]
pub struct PanelQuery {
    /// The panel's title.
    pub panel: String,
    /// The query, as Grafana sends it (with its variables).
    pub expr: String,
}

/// Every query of the dashboard's panels.
///
/// # Errors
/// If the file does not read or parse, or a panel has no query.
pub fn dashboard_queries() -> Result<Vec<PanelQuery>> {
    let path = dashboard_path();
    let text = std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?;
    let dashboard: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    let panels = dashboard["panels"]
        .as_array()
        .context("the dashboard has no panels")?;
    let mut out = Vec::new();
    for panel in panels.iter().filter(|p| p["type"] != "row") {
        let title = panel["title"].as_str().context("a panel without a title")?;
        let targets = panel["targets"].as_array().map_or(&[][..], Vec::as_slice);
        if targets.is_empty() {
            bail!("panel {title:?} has no query");
        }
        for target in targets {
            let expr = target["expr"]
                .as_str()
                .with_context(|| format!("panel {title:?}: a target without expr"))?;
            out.push(PanelQuery {
                panel: title.to_owned(),
                expr: expr.to_owned(),
            });
        }
    }
    Ok(out)
}

/// `expr` with the dashboard's variables as Prometheus would get them: every node,
/// a 1-minute rate interval.
#[must_use]
pub fn expand_variables(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$node", ".*")
}

/// The metric names (`lb_…`, `mesh_manager_…`) `expr` refers to.
#[must_use]
pub fn metric_names(expr: &str) -> BTreeSet<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|w| w.starts_with("lb_") || w.starts_with("mesh_manager_"))
        .map(str::to_owned)
        .collect()
}

/// Every alert rule's name and expression.
///
/// # Errors
/// If the file does not read or parse, or a rule has no `alert` or `expr`.
pub fn alert_rules() -> Result<Vec<(String, String)>> {
    let path = alert_rules_path();
    let text = std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?;
    let root = yaml::parse(&text)
        .map_err(|e| anyhow::anyhow!("{}: line {}: {e:?}", path.display(), e.line))?
        .context("an empty rules file")?;
    let seq = |node: Option<&yaml::Node>, what: &str| -> Result<Vec<yaml::Node>> {
        match node.map(|n| &n.value) {
            Some(Value::Seq(items)) => Ok(items.clone()),
            _ => bail!("{}: no {what} list", path.display()),
        }
    };
    let text_of = |node: Option<&yaml::Node>| match node.map(|n| &n.value) {
        Some(Value::Str(s)) => Some(s.clone()),
        _ => None,
    };
    let mut rules = Vec::new();
    for group in seq(root.get("groups"), "groups")? {
        for rule in seq(group.get("rules"), "rules")? {
            let name = text_of(rule.get("alert")).context("a rule without `alert`")?;
            let expr = text_of(rule.get("expr")).with_context(|| format!("{name}: no expr"))?;
            rules.push((name, expr));
        }
    }
    Ok(rules)
}

/// The sample names of a text-format exposition (`name{…} value` or `name value`).
#[must_use]
pub fn exposed_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}
