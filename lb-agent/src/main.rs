//! `lb-agent`: the mesh's node daemon.
#![forbid(unsafe_code)]

fn main() {
    println!("{} bytes of eBPF", lb_agent::EBPF_OBJECT.len());
}
