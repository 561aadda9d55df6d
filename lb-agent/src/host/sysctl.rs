//! The kernel settings the dataplane depends on.
//!
//! `bpf_fib_lookup`, which XDP uses to find the next hop of encapsulated frames and of
//! replies to clients, answers only for interfaces with IPv4 forwarding on (even for
//! output lookups), like any router or load balancer. The agent turns it on for the
//! underlay interface of its own network namespace.

use std::path::PathBuf;

/// Turns on IPv4 forwarding on `iface` (`net.ipv4.conf.<iface>.forwarding = 1`).
///
/// # Errors
/// When the setting cannot be written (no such interface, or no permission).
pub fn enable_forwarding(iface: &str) -> std::io::Result<()> {
    let path = PathBuf::from("/proc/sys/net/ipv4/conf")
        .join(iface)
        .join("forwarding");
    if std::fs::read_to_string(&path)?.trim() == "1" {
        return Ok(());
    }
    std::fs::write(&path, "1\n")
}
