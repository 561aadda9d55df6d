//! `cargo xtask fuzz <what>`: fuzzing, with figures on stdout.
//!
//! - `dataplane`: mutated frames through the loaded XDP and TC programs
//!   (BPF_PROG_TEST_RUN, root): `fuzz-dataplane` of `mesh-tests`, release build;
//! - `parsers`: the property tests named `fuzz_*` (the agent's configuration parser,
//!   the wire and spec decoders, the parsers of what users type, the compose-file
//!   loader, the tasks' DNS resolver's answers to any bytes) with many cases
//!   (`--cases`, default 100,000 each).

use anyhow::{Result, bail};

use crate::cmd::{self, Cmd};
use crate::setup;

/// What to fuzz.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum Fuzz {
    /// Mutated frames through the eBPF programs (root).
    Dataplane,
    /// The parsers and decoders, by property tests.
    Parsers,
}

/// Options of `cargo xtask fuzz`.
#[derive(Debug, clap::Args)]
pub(crate) struct FuzzArgs {
    /// What to fuzz.
    #[arg(value_enum)]
    pub what: Fuzz,
    /// Skip `cargo xtask setup`.
    #[arg(long)]
    pub no_setup: bool,
    /// `parsers`: cases per property.
    #[arg(long, default_value_t = 100_000)]
    pub cases: u32,
    /// Extra arguments for `fuzz-dataplane` (e.g. `--frames 1000000 --seed 7`).
    #[arg(last = true)]
    pub extra: Vec<String>,
}

/// Runs a fuzzer.
pub(crate) fn run(args: FuzzArgs) -> Result<()> {
    if !args.no_setup {
        setup::run()?;
    }
    match args.what {
        Fuzz::Dataplane => {
            if !cmd::is_root() {
                bail!(
                    "`fuzz dataplane` loads eBPF programs in a network namespace: run it as root"
                );
            }
            cmd::step("fuzz dataplane");
            Cmd::cargo()
                .args([
                    "run",
                    "--release",
                    "-p",
                    "mesh-tests",
                    "--bin",
                    "fuzz-dataplane",
                    "--",
                ])
                .args(&args.extra)
                .run()
        }
        Fuzz::Parsers => {
            cmd::step(&format!("fuzz parsers ({} cases per property)", args.cases));
            Cmd::cargo()
                .args([
                    "test",
                    "--release",
                    "-p",
                    "lb-agent",
                    "-p",
                    "mesh-api",
                    "-p",
                    "mesh-compose",
                    "--lib",
                    "fuzz_",
                ])
                .env("PROPTEST_CASES", args.cases.to_string())
                .run()
        }
    }
}
