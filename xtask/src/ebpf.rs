//! `cargo xtask build-ebpf`: builds the eBPF crate alone, for inspection.
//!
//! The normal build path is `lb-agent`'s build script (aya-build), which embeds the
//! object in the agent. This task builds the same crate directly so its object can be
//! inspected (`llvm-objdump -S`, `bpftool prog load`), with the same flags: the stable
//! toolchain, `RUSTC_BOOTSTRAP=1` and `-Z build-std=core` (see docs/toolchain.md).

use anyhow::{Context, Result};

use crate::cmd::{self, Cmd};

/// The eBPF crate: it builds only for `bpfel-unknown-none`, so host-target steps
/// (`cargo test`, clippy) exclude it and it gets its own clippy run.
pub(crate) const EBPF_CRATE: &str = "lb-ebpf";

/// The eBPF target triple.
pub(crate) const EBPF_TARGET: &str = "bpfel-unknown-none";

/// The name of the eBPF crate's binary (its object file).
const EBPF_BIN: &str = "lb";

/// `RUSTC_BOOTSTRAP=1 cargo <subcommand> -p lb-ebpf -Z build-std=core --target bpfel-unknown-none`.
pub(crate) fn ebpf_cargo(subcommand: &str) -> Cmd {
    Cmd::cargo().env("RUSTC_BOOTSTRAP", "1").args([
        subcommand,
        "-p",
        EBPF_CRATE,
        "-Z",
        "build-std=core",
        "--target",
        EBPF_TARGET,
    ])
}

/// Builds the eBPF object in release mode and prints where it is.
pub(crate) fn run() -> Result<()> {
    cmd::step("build the eBPF crate");
    ebpf_cargo("build")
        .arg("--release")
        .run()
        .context("building the eBPF crate failed; `cargo xtask setup` installs what it needs")?;
    let object = cmd::target_dir()
        .join(EBPF_TARGET)
        .join("release")
        .join(EBPF_BIN);
    eprintln!("eBPF object: {}", object.display());
    eprintln!("inspect with: llvm-objdump-22 -S {}", object.display());
    Ok(())
}
