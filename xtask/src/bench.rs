//! `cargo xtask bench <what>`: benchmarks, each writing a report under `bench-results/`.

use anyhow::{Result, bail};

use crate::cmd::{self, Cmd};
use crate::setup;

/// Which benchmark to run.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Bench {
    /// Cost of the eBPF programs per packet, timed in the kernel with BPF_PROG_TEST_RUN;
    /// writes bench-results/dataplane.md.
    Dataplane,
    /// Throughput, latency and CPU cost through a namespace mesh, beside direct,
    /// nftables and HAProxy; writes bench-results/mesh.md (root; about 5 minutes).
    Mesh,
    /// Endpoint-change propagation through the control plane (not implemented yet).
    ControlPlane,
}

/// Options of `cargo xtask bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
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
pub fn run(args: BenchArgs) -> Result<()> {
    match args.what {
        Bench::Dataplane => dataplane(&args),
        Bench::Mesh => mesh(&args),
        Bench::ControlPlane => bail!(
            "`bench control-plane` is not implemented yet: it needs the Raft manager, \
             which does not exist yet"
        ),
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
    Cmd::cargo()
        .args([
            "build",
            "--release",
            "-p",
            "lb-agent",
            "-p",
            "mesh-tests",
            "--bins",
        ])
        .run()?;
    cmd::step("bench mesh");
    std::fs::create_dir_all(cmd::workspace_root().join("bench-results"))?;
    Cmd::cargo()
        .args([
            "run",
            "--release",
            "-p",
            "mesh-tests",
            "--bin",
            "bench-mesh",
            "--",
        ])
        .args(["--out", "bench-results/mesh.md"])
        .args(&args.extra)
        // The release binaries it starts: lb-agent and task-echo.
        .env("MESH_BIN_DIR", cmd::target_dir().join("release"))
        .run()
}

fn dataplane(args: &BenchArgs) -> Result<()> {
    if !args.no_setup {
        setup::run()?;
    }
    cmd::step("bench dataplane");
    std::fs::create_dir_all(cmd::workspace_root().join("bench-results"))?;
    Cmd::cargo()
        .args([
            "run",
            "--release",
            "-p",
            "mesh-tests",
            "--bin",
            "bench-dataplane",
            "--",
        ])
        .args(["--out", "bench-results/dataplane.md"])
        .args(&args.extra)
        .run()
}
