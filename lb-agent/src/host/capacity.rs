//! The node's CPUs and memory, as its agent reports them to the managers for the
//! scheduler's reservations (docker's `Description.Resources`): the CPUs this process
//! may run on (`available_parallelism`, which honours its affinity and a cgroup's CPU
//! quota) and `/proc/meminfo`'s `MemTotal`. Several agents on one machine each report
//! the whole machine's.

use mesh_api::resources::{NANO_PER_CPU, Resources};

/// `MemTotal` of `/proc/meminfo`'s text, in bytes.
#[must_use]
pub fn mem_total(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find_map(|l| l.strip_prefix("MemTotal:"))?;
    let mut words = line.split_whitespace();
    let value: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") => value.checked_mul(1024),
        None => Some(value),
        Some(_) => None,
    }
}

/// This node's CPUs and memory (0 for what cannot be read).
#[must_use]
pub fn node_resources() -> Resources {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get() as u64);
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| mem_total(&m))
        .unwrap_or(0);
    Resources {
        nano_cpus: cpus.saturating_mul(NANO_PER_CPU),
        memory_bytes: memory,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_is_read_from_meminfo() {
        let meminfo = "MemTotal:        8029204 kB\nMemFree:          251520 kB\n";
        assert_eq!(mem_total(meminfo), Some(8_029_204 * 1024));
        assert_eq!(mem_total("MemFree: 1 kB\n"), None);
        assert_eq!(mem_total("MemTotal: x kB\n"), None);
        let here = node_resources();
        assert!(
            here.nano_cpus >= NANO_PER_CPU && here.memory_bytes > 0,
            "{here:?}"
        );
    }
}
