//! `cargo xtask bench <what>`: benchmarks, each writing a report under `bench-results/`.

use anyhow::{Result, bail};

use crate::cmd::{self, Cmd};
use crate::setup;

/// Which benchmark to run.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum Bench {
    /// Cost of the eBPF programs per packet, timed in the kernel with BPF_PROG_TEST_RUN;
    /// writes bench-results/dataplane.md.
    Dataplane,
    /// Throughput, latency and CPU cost through a namespace mesh, beside direct,
    /// nftables and HAProxy; writes bench-results/mesh.md (root; about 5 minutes).
    Mesh,
    /// Committed writes per second on 1 and 3 managers and leader failover time, with
    /// real `mesh-manager` processes (phase `raft`, no root); the time from a committed
    /// `service scale` until every node's dataplane maps follow, and from a node's loss
    /// until its backends are gone everywhere, and from a committed scale of a service on
    /// a user network until every node's DNS resolver answers with the new set, on managed
    /// clusters in network namespaces (phase `services`, root); writes
    /// bench-results/control-plane.md (about 6 minutes
    /// after the release build). Run as root; `-- --phases raft` runs only what needs no
    /// root.
    ControlPlane,
    /// The control plane with many nodes: real `mesh-manager` processes (1 and 3) and
    /// 10, 100 and 1,000 simulated agents (the real session protocol, no dataplane) in
    /// one process; service creation, scale propagation to every agent, bytes per change,
    /// the leader's CPU and memory, Raft sizes. Writes bench-results/scale.md. No root.
    /// `-- --nodes 10,100 --managers 1 --time-limit 300` selects and bounds the run.
    Scale,
}

/// Options of `cargo xtask bench`.
#[derive(Debug, clap::Args)]
pub(crate) struct BenchArgs {
    /// The benchmark to run.
    #[arg(value_enum)]
    pub what: Bench,
    /// Skip `cargo xtask setup`.
    #[arg(long)]
    pub no_setup: bool,
    /// Extra arguments for the benchmark binary.
    #[arg(last = true)]
    pub extra: Vec<String>,
}

/// Runs a benchmark.
pub(crate) fn run(args: BenchArgs) -> Result<()> {
    match args.what {
        Bench::Dataplane => dataplane(&args),
        Bench::Mesh => mesh(&args),
        Bench::ControlPlane => control_plane(&args),
        Bench::Scale => scale(&args),
    }
}

/// `bench mesh`: builds the agent, `task-echo` and `bench-mesh` in release mode, then
/// runs `bench-mesh`, which builds two namespace topologies, measures direct, the mesh,
/// nftables and HAProxy in interleaved rounds, and writes bench-results/mesh.md.
fn mesh(args: &BenchArgs) -> Result<()> {
    if !args.no_setup {
        setup::run()?;
    }
    if !cmd::is_root() {
        bail!(
            "`bench mesh` creates network namespaces, loads eBPF programs and runs \
             nftables and HAProxy in them: run it as root"
        );
    }
    cmd::step("build (release): lb-agent, task-echo, bench-mesh");
    release_build(
        &["lb-agent", "mesh-tests"],
        &["lb-agent", "task-echo", "bench-mesh"],
    )?;
    // The release binaries it starts: lb-agent and task-echo.
    run_bench("bench-mesh", "mesh.md", args, true)
}

/// Builds binaries `bins` of packages `packages` in release mode.
fn release_build(packages: &[&str], bins: &[&str]) -> Result<()> {
    let mut args = vec!["build", "--release"];
    for package in packages {
        args.extend(["-p", package]);
    }
    for bin in bins {
        args.extend(["--bin", bin]);
    }
    Cmd::cargo().args(args).run()
}

/// Runs the release build of benchmark binary `bin` from `mesh-tests`, writing
/// `bench-results/<out>`; with `starts_bins`, points it at the release binaries it starts.
fn run_bench(bin: &str, out: &str, args: &BenchArgs, starts_bins: bool) -> Result<()> {
    cmd::step(&format!("bench {}", bin.trim_start_matches("bench-")));
    std::fs::create_dir_all(cmd::workspace_root().join("bench-results"))?;
    let mut run = Cmd::cargo()
        .args(["run", "--release", "-p", "mesh-tests", "--bin", bin, "--"])
        .args(["--out", &format!("bench-results/{out}")])
        .args(&args.extra);
    if starts_bins {
        run = run.env("MESH_BIN_DIR", cmd::target_dir().join("release"));
    }
    run.run()
}

fn dataplane(args: &BenchArgs) -> Result<()> {
    if !args.no_setup {
        setup::run()?;
    }
    run_bench("bench-dataplane", "dataplane.md", args, false)
}

/// `bench control-plane`: builds `mesh-manager`, `meshctl`, `lb-agent`, `task-echo` and
/// `bench-control-plane` in release mode, then runs `bench-control-plane`. Its `raft`
/// phase (no root) starts a 1-manager and a 3-manager cluster on loopback and measures
/// committed writes per second on each and leader failover on the second in interleaved
/// rounds; its `services` phase (root) starts managed 3-node clusters in network
/// namespaces and measures how fast scaling and a node's loss reach every agent's maps,
/// and how fast a scale reaches every node's DNS resolver.
/// Writes bench-results/control-plane.md. Without root, the binary stops with a message
/// unless given `-- --phases raft`. Does not run `cargo xtask setup` (`--no-setup` is
/// accepted and changes nothing): the agent's build needs its prerequisites.
fn control_plane(args: &BenchArgs) -> Result<()> {
    cmd::step("build (release): mesh-manager, meshctl, lb-agent, task-echo, bench-control-plane");
    release_build(
        &["mesh-manager", "meshctl", "lb-agent", "mesh-tests"],
        &[
            "mesh-manager",
            "meshctl",
            "lb-agent",
            "task-echo",
            "bench-control-plane",
        ],
    )?;
    // The release binaries it starts: mesh-manager, meshctl, lb-agent and task-echo.
    run_bench("bench-control-plane", "control-plane.md", args, true)
}

/// `bench scale`: builds `mesh-manager`, `meshctl` and `bench-scale` in release mode,
/// then runs `bench-scale`, which starts 1- and 3-manager clusters on loopback and, for
/// each, simulated agents in its own process; writes bench-results/scale.md. Needs no
/// root and no `cargo xtask setup` (`--no-setup` changes nothing).
fn scale(args: &BenchArgs) -> Result<()> {
    cmd::step("build (release): mesh-manager, meshctl, bench-scale");
    release_build(
        &["mesh-manager", "meshctl", "mesh-tests"],
        &["mesh-manager", "meshctl", "bench-scale"],
    )?;
    // The release binaries it starts: mesh-manager and meshctl.
    run_bench("bench-scale", "scale.md", args, true)
}
