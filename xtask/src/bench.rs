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
    /// Throughput and latency through a namespace mesh (not implemented yet).
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
        Bench::Dataplane => {}
        Bench::Mesh => bail!(
            "`bench mesh` is not implemented yet: it needs the namespace mesh harness \
             (tests/) and comes after the dataplane benchmark"
        ),
        Bench::ControlPlane => bail!(
            "`bench control-plane` is not implemented yet: it needs the Raft manager, \
             which does not exist yet"
        ),
    }
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
