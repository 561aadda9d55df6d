//! `cargo xtask test`: the one command that checks the whole project.
//!
//! Runs setup, then: `cargo fmt --check`, clippy with `-D warnings` (host crates, and the
//! eBPF crate for its own target), the layering check ([`crate::layers`]), `cargo deny
//! check licenses bans sources` (deny.toml), builds the binaries the end-to-end tests
//! start, and runs `cargo test` over the workspace. Lint failures do not stop the test run, so one
//! CI log shows everything; the command fails if any step failed, with `cargo test`'s exit
//! code when the tests failed.

use std::io::IsTerminal;

use anyhow::Result;

use crate::cmd::{self, Cmd};
use crate::ebpf::{EBPF_CRATE, ebpf_cargo};
use crate::layers;
use crate::setup;

/// Options of `cargo xtask test`.
#[derive(Debug, clap::Args)]
pub(crate) struct TestArgs {
    /// Skip `cargo xtask setup` (for a machine known to be ready, or without root).
    #[arg(long)]
    pub no_setup: bool,
    /// Skip rustfmt and clippy.
    #[arg(long)]
    pub no_lint: bool,
    /// Arguments passed to `cargo test` after the workspace selection, e.g. a test name
    /// filter, or `-- --nocapture`.
    #[arg(last = true)]
    pub cargo_test_args: Vec<String>,
}

/// Builds the packages whose binaries the end-to-end tests and the demo start.
pub(crate) fn build_bins() -> Result<()> {
    Cmd::cargo()
        .args([
            "build",
            "-p",
            "lb-agent",
            "-p",
            "mesh-manager",
            "-p",
            "meshctl",
            "-p",
            "mesh-tests",
            "--bins",
        ])
        .run()
}

/// Runs the whole check.
pub(crate) fn run(args: TestArgs) -> Result<()> {
    if !args.no_setup {
        setup::run()?;
    }
    let mut results: Vec<(&str, Result<()>)> = Vec::new();

    if !args.no_lint {
        cmd::step("rustfmt");
        let mut fmt = Cmd::cargo().args(["fmt", "--all", "--", "--check"]);
        if !std::io::stderr().is_terminal() {
            // rustfmt colours its diff even into a CI log file.
            fmt = fmt.args(["--color", "never"]);
        }
        results.push(("cargo fmt --check", fmt.run()));

        cmd::step("clippy (host crates)");
        let clippy = Cmd::cargo()
            .args([
                "clippy",
                "--workspace",
                "--exclude",
                EBPF_CRATE,
                "--all-targets",
            ])
            .args(["--", "-D", "warnings"])
            .run();
        results.push(("clippy (host)", clippy));

        cmd::step("clippy (eBPF crate, bpfel-unknown-none)");
        let clippy = ebpf_cargo("clippy").args(["--", "-D", "warnings"]).run();
        results.push(("clippy (eBPF)", clippy));

        results.push(("layers", layers::run()));

        cmd::step("cargo deny (licenses, bans, sources; deny.toml)");
        let deny = Cmd::cargo()
            .args([
                "deny",
                "--log-level",
                "error",
                "check",
                "licenses",
                "bans",
                "sources",
            ])
            .run();
        results.push(("cargo deny", deny));
    }

    cmd::step("build the binaries the tests start");
    let build = build_bins();
    let build_ok = build.is_ok();
    results.push(("cargo build --bins", build));

    if build_ok {
        cmd::step("cargo test");
        let bin_dir = cmd::target_dir().join("debug");
        let mut test = Cmd::cargo()
            .args([
                "test",
                "--workspace",
                "--exclude",
                EBPF_CRATE,
                "--no-fail-fast",
            ])
            .args(&args.cargo_test_args);
        if std::env::var_os("MESH_BIN_DIR").is_none() {
            test = test.env("MESH_BIN_DIR", &bin_dir);
        }
        results.push(("cargo test", test.run()));
    } else {
        eprintln!("\nthe build failed: not running the tests");
    }

    eprintln!("\ntest summary:");
    for (name, r) in &results {
        match r {
            Ok(()) => eprintln!("  {name:<20} ok"),
            Err(e) => eprintln!("  {name:<20} FAILED ({e})"),
        }
    }
    // Prefer `cargo test`'s own exit code; otherwise the first failure's.
    let failed: Vec<_> = results.into_iter().filter(|(_, r)| r.is_err()).collect();
    if failed.is_empty() {
        eprintln!("\nall checks passed");
        return Ok(());
    }
    let names: Vec<&str> = failed.iter().map(|(n, _)| *n).collect();
    let (_, first) = failed
        .iter()
        .find(|(n, _)| *n == "cargo test")
        .unwrap_or(&failed[0]);
    let code = first.as_ref().err().map(cmd::exit_code_of).unwrap_or(1);
    Err(cmd::Exit {
        code,
        message: format!("failed: {}", names.join(", ")),
    }
    .into())
}
