//! `cargo xtask layers`: who may depend on whom, checked from `cargo tree`.
//!
//! The workspace's layering (docs/architecture.md) is a rule, not a convention: the
//! agent and the CLI never link the managers' daemon or their Raft storage, the pure core
//! never links an async runtime, RPC stack or database, and the contract crate links
//! neither. Each rule names a package and what its normal (non-dev, non-build)
//! dependency graph must not contain; `cargo xtask test` runs the check, and a rule
//! broken by a new dependency fails with the path that brought it in.

use anyhow::{Result, bail};

use crate::cmd::{self, Cmd};

/// A package and the packages (or `package/feature`s) its normal dependency graph
/// must not contain.
struct Rule {
    package: &'static str,
    why: &'static str,
    forbidden: &'static [&'static str],
}

/// The daemon's own crates and storage, which no node-side binary links.
const DAEMON: &[&str] = &["mesh-manager", "mesh-core", "openraft", "redb"];

const RULES: &[Rule] = &[
    Rule {
        package: "mesh-api",
        why: "the contract: messages and records, no runtime, no RPC stack",
        forbidden: &[
            "tokio",
            "tonic",
            "hyper",
            "mesh-core",
            "mesh-client",
            "mesh-manager",
        ],
    },
    Rule {
        package: "mesh-core",
        why: "the sans-IO core: no runtime, no RPC stack, no storage",
        forbidden: &[
            "tokio",
            "tonic",
            "hyper",
            "openraft",
            "redb",
            "mesh-client",
            "mesh-manager",
        ],
    },
    Rule {
        package: "mesh-client",
        why: "what every node links: no daemon, no gRPC server",
        forbidden: &[
            "mesh-manager",
            "mesh-core",
            "openraft",
            "redb",
            "tonic/server",
            "hyper/server",
        ],
    },
    Rule {
        package: "mesh-compose",
        why: "compose files as a pure library: no runtime, no RPC stack, no daemon",
        forbidden: &[
            "tokio",
            "tonic",
            "hyper",
            "mesh-core",
            "mesh-client",
            "mesh-manager",
        ],
    },
    Rule {
        package: "lb-agent",
        why: "the agent talks to managers through mesh-api and mesh-client only; stacks are the CLI's",
        forbidden: &[
            "mesh-manager",
            "mesh-core",
            "openraft",
            "redb",
            "mesh-compose",
        ],
    },
    Rule {
        package: "meshctl",
        why: "the CLI talks to managers through mesh-api and mesh-client only",
        forbidden: DAEMON,
    },
];

/// The packages and enabled features in `package`'s normal dependency graph, one
/// `name` or `name/feature` per entry.
fn graph(package: &str) -> Result<Vec<String>> {
    let Some(out) = Cmd::cargo()
        .args(["tree", "--quiet", "-p", package, "-e", "normal"])
        .args(["--prefix", "none", "--format", "{p}/{f}"])
        .probe()
    else {
        bail!("`cargo tree -p {package}` failed");
    };
    let mut entries = Vec::new();
    for line in out.lines() {
        // "tonic v0.14.2/channel,codegen (*)" or "mesh-api v0.1.0 (/path)/"
        let Some((name, rest)) = line.split_once(' ') else {
            continue;
        };
        entries.push(name.to_string());
        if let Some((_, features)) = rest.split_once(")/").or_else(|| rest.split_once('/')) {
            let features = features.trim_end_matches(" (*)");
            entries.extend(
                features
                    .split(',')
                    .filter(|f| !f.is_empty())
                    .map(|f| format!("{name}/{f}")),
            );
        }
    }
    Ok(entries)
}

/// Checks every rule; fails naming each broken one.
pub(crate) fn run() -> Result<()> {
    cmd::step("layers: who may depend on whom");
    let mut broken = Vec::new();
    for rule in RULES {
        let graph = graph(rule.package)?;
        let found: Vec<&str> = rule
            .forbidden
            .iter()
            .copied()
            .filter(|f| graph.iter().any(|g| g == f))
            .collect();
        if found.is_empty() {
            eprintln!("  {:<12} ok ({})", rule.package, rule.why);
        } else {
            eprintln!(
                "  {:<12} LINKS {} ({}); see `cargo tree -p {} -e normal -i <crate>`",
                rule.package,
                found.join(", "),
                rule.why,
                rule.package
            );
            broken.push(rule.package);
        }
    }
    if broken.is_empty() {
        Ok(())
    } else {
        bail!("layering broken in {}", broken.join(", "))
    }
}
