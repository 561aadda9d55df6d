//! Builds the eBPF programs (`lb-ebpf`) and leaves the object in `OUT_DIR/lb`.
//!
//! The eBPF crate is compiled for `bpfel-unknown-none` with `-Z build-std=core` on the
//! stable toolchain: aya-build passes that flag when `RUSTC_BOOTSTRAP=1`, which this
//! script sets for the nested cargo it spawns (see docs/toolchain.md).
use std::path::Path;

fn main() -> anyhow::Result<()> {
    // Say what is missing rather than let the nested build fail at link time.
    if std::process::Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_err()
    {
        anyhow::bail!(
            "lb-agent embeds its eBPF programs, which bpf-linker links, and bpf-linker is not \
             on PATH: run `cargo xtask setup` (it installs bpf-linker 0.13.0 against LLVM 22; \
             see docs/toolchain.md)"
        );
    }
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR")?;
    let ebpf_dir = Path::new(&manifest_dir).join("../lb-ebpf");
    let ebpf_dir = ebpf_dir.canonicalize()?;
    let root_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow::anyhow!("non-UTF-8 path"))?;
    for dir in ["src", "Cargo.toml"] {
        println!("cargo:rerun-if-changed={root_dir}/{dir}");
    }
    println!("cargo:rerun-if-changed=../lb-common/src");
    // SAFETY: build scripts are single-threaded at this point; the variable is read by
    // aya-build below and inherited by the cargo process it spawns.
    unsafe { std::env::set_var("RUSTC_BOOTSTRAP", "1") };
    let package = aya_build::Package {
        name: "lb-ebpf",
        root_dir,
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::Custom("stable"))
}
