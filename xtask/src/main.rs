//! `cargo xtask`: the project's tasks.
//!
//! - `setup`: installs the toolchain prerequisites (idempotent; root for apt and bpffs);
//! - `build-ebpf`: builds the eBPF crate alone, for inspection;
//! - `layers`: checks from `cargo tree` that each crate depends only on the layers below it;
//! - `test`: setup, lints, layers, build, and the whole test suite: the project's one test
//!   command;
//! - `demo`: setup, build, and a local three-node mesh in network namespaces;
//! - `bench <what>`: benchmarks, reports under `bench-results/`;
//! - `fuzz <what>`: the dataplane's programs and the parsers, fuzzed;
//! - `package`: Debian packages of the agent, the manager and the CLI.
#![forbid(unsafe_code)]

mod bench;
mod cmd;
mod demo;
mod ebpf;
mod fuzz;
mod layers;
mod package;
mod setup;
mod test;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The project's tasks. Run from anywhere in the workspace as `cargo xtask <task>`.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask", version, about)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Install every prerequisite (rustup components, Debian packages, bpf-linker,
    /// bpffs); skips what is present.
    Setup,
    /// Build the eBPF crate alone (release, bpfel-unknown-none) for inspection.
    BuildEbpf,
    /// Check from `cargo tree` that each crate depends only on the layers below it.
    Layers,
    /// Setup, rustfmt, clippy, layers, cargo-deny, build, and the whole test suite (needs root for the
    /// end-to-end tests).
    Test(test::TestArgs),
    /// Setup, build, and run a local three-node mesh in network namespaces.
    Demo(demo::DemoArgs),
    /// Run a benchmark.
    Bench(bench::BenchArgs),
    /// Fuzz the dataplane's programs (mutated frames) or the parsers (property tests).
    Fuzz(fuzz::FuzzArgs),
    /// Build Debian packages of lb-agent, mesh-manager and meshctl (release build) into
    /// target/debian.
    Package(package::PackageArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Setup => setup::run(),
        Task::BuildEbpf => ebpf::run(),
        Task::Layers => layers::run(),
        Task::Test(args) => test::run(args),
        Task::Demo(args) => demo::run(args),
        Task::Bench(args) => bench::run(args),
        Task::Fuzz(args) => fuzz::run(args),
        Task::Package(args) => package::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("\nerror: {err:#}");
            let code = cmd::exit_code_of(&err);
            ExitCode::from(u8::try_from(code).unwrap_or(1))
        }
    }
}
