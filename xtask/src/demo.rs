//! `cargo xtask demo`: a local three-node managed cluster in network namespaces.
//!
//! Sets up, builds the manager, the agent and the test harness's binaries, then hands
//! over to `mesh-demo` (written in the `tests` crate), which starts a manager and three
//! agents joined by token, creates the service `web` with `meshctl`, and prints which task
//! answers each request through each node. Without flags the cluster stays up to be
//! explored with `meshctl`; `--once` tears it down after one round (a smoke test);
//! `--down` tears down a cluster an earlier run left up.

use anyhow::{Result, bail};

use crate::cmd::{self, Cmd};
use crate::{setup, test};

/// Options of `cargo xtask demo`, passed through to `mesh-demo`.
#[derive(Debug, clap::Args)]
pub(crate) struct DemoArgs {
    /// Tear down the cluster an earlier `cargo xtask demo` left running, then exit.
    #[arg(long, conflicts_with = "once")]
    pub down: bool,
    /// Start the cluster, show it answering, then tear it down and exit.
    #[arg(long)]
    pub once: bool,
    /// Skip `cargo xtask setup`.
    #[arg(long)]
    pub no_setup: bool,
}

/// Runs the demo; on success this process becomes `mesh-demo` and does not return.
pub(crate) fn run(args: DemoArgs) -> Result<()> {
    if !args.no_setup {
        setup::run()?;
    }
    cmd::step("build");
    test::build_bins()?;
    let demo = cmd::target_dir().join("debug").join("mesh-demo");
    if !demo.exists() {
        bail!(
            "{} was not built: the `mesh-tests` crate has no `mesh-demo` binary yet",
            demo.display()
        );
    }
    if !cmd::is_root() {
        bail!("the demo creates network namespaces and loads eBPF programs: run it as root");
    }
    let mut demo = Cmd::new(&demo);
    if args.down {
        demo = demo.arg("--down");
    }
    if args.once {
        demo = demo.arg("--once");
    }
    cmd::step("mesh-demo");
    // `exec`, so that Ctrl-C reaches mesh-demo alone and it can tear the cluster down.
    Err(demo.exec())
}
