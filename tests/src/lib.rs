//! Harness for the mesh's end-to-end tests: network-namespace topologies, agents, tasks.
//!
//! A [`Topology`] builds, on this machine, an underlay bridge in its own namespace, node
//! namespaces plugged into it, a client namespace, and tasks (each in its own namespace,
//! behind a veth in its node's namespace, running `task-echo`). It writes each node's
//! `lb-agent` configuration, runs the agents, reloads and kills them. Everything it creates
//! carries a short prefix unique to the topology, so topologies can coexist, and `Drop`
//! tears everything down.
//!
//! The [`client`] module has the requests tests make from inside a namespace.
#![forbid(unsafe_code)]

pub mod agent;
pub mod browser;
pub mod client;
pub mod cluster;
pub mod dns;
pub mod images;
pub mod load;
pub mod machine;
pub mod managed;
pub mod monitoring;
pub mod netns;
pub mod pinned;
pub mod sim;
pub mod stats;
pub mod topology;
pub mod web;

pub use agent::{Agent, BackendSpec, PortEntry, ServiceEntry};
pub use client::Reply;
pub use managed::{Container, CtlChild, ManagedCluster, ManagedOptions, TaskRow};
pub use mesh_api::spec::Protocol;
pub use netns::{in_netns, spawn_in_netns};
pub use topology::{Task, Topology, teardown_prefix};

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

/// Calls `f` until it returns `Ok(Some(_))`, every 10 to 200 ms, and fails once `timeout`
/// has passed. An `Err` from `f` is final and returned at once. Never assert on timing:
/// use generous timeouts; this returns as soon as the condition holds.
pub fn poll_until<T>(
    timeout: Duration,
    what: &str,
    mut f: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    let mut interval = Duration::from_millis(10);
    loop {
        if let Some(v) = f()? {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(interval);
        interval = (interval * 2).min(Duration::from_millis(200));
    }
}

/// Where the harness finds `lb-agent`, `task-echo` and `mesh-demo`: `$MESH_BIN_DIR`, else
/// the cargo target directory that holds the running executable (tests live in
/// `target/<profile>/deps`), else `<workspace>/target/debug`.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("MESH_BIN_DIR") {
        return PathBuf::from(dir);
    }
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        let dir = if dir.ends_with("deps") {
            dir.parent().unwrap_or(dir)
        } else {
            dir
        };
        if dir.join("task-echo").is_file() || dir.join("lb-agent").is_file() {
            return dir.to_path_buf();
        }
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug")
}

/// The path of one of the workspace's binaries; fails with what to run if it is missing.
pub fn bin(name: &str) -> Result<PathBuf> {
    let path = bin_dir().join(name);
    if !path.is_file() {
        bail!(
            "binary {} not found; build it first: run `cargo xtask test` (or `cargo build \
             -p lb-agent -p mesh-manager -p meshctl -p mesh-tests --bins`), or point \
             $MESH_BIN_DIR at the directory that holds it",
            path.display()
        );
    }
    Ok(path)
}
pub mod fixture;
pub mod frames;

/// The capabilities the shipped systemd unit (`deploy/lb-agent.service`) leaves its
/// agent: its `CapabilityBoundingSet=` lines, merged as systemd merges them.
///
/// # Errors
/// If the unit cannot be read or sets none.
pub fn unit_bounding_set() -> Result<Vec<String>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/lb-agent.service");
    let unit =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let caps: Vec<String> = unit
        .lines()
        .filter_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .flat_map(str::split_whitespace)
        .map(str::to_owned)
        .collect();
    anyhow::ensure!(
        !caps.is_empty(),
        "{} sets no CapabilityBoundingSet=",
        path.display()
    );
    Ok(caps)
}

static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Takes this test's turn among the tests of its binary that start clusters (each runs a
/// dozen processes, and CI has two cores): hold it for the whole test, declared before
/// the cluster.
pub fn turn() -> std::sync::MutexGuard<'static, ()> {
    TURN.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Unwraps, or panics with the whole error chain.
#[track_caller]
pub fn ok<T>(r: Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("{e:#}"))
}
