//! Makes cargo rebuild the programs when bpf-linker changes (a new LLVM, say).
use which::which;

fn main() {
    if let Ok(linker) = which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
