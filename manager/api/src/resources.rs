//! CPU and memory: a task's limits and reservations (docker's `--limit-cpu`,
//! `--limit-memory`, `--reserve-cpu`, `--reserve-memory`, swarmkit's
//! `ResourceRequirements`) and a node's capacity, with docker's units.
//!
//! Limits are enforced on the node (a process task's cgroup, a container's
//! `HostConfig`); reservations only guide the scheduler, as in Swarm: a task
//! goes to a node whose unreserved CPUs and memory cover them.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::spec::{SpecError, invalid};

/// Nano CPUs in one CPU.
pub const NANO_PER_CPU: u64 = 1_000_000_000;
/// The smallest CPU value a spec may hold, other than 0 (swarmkit's: 0.001 CPU).
pub const MIN_NANO_CPUS: u64 = 1_000_000;
/// The smallest memory value a spec may hold, other than 0 (swarmkit's: 4 MiB).
pub const MIN_MEMORY_BYTES: u64 = 4 * 1024 * 1024;

/// An amount of CPU and memory (swarmkit's `Resources`); 0 is none (no limit, no
/// reservation, or, for a node, not reported). Its JSON is docker's
/// (`{"NanoCPUs": 500000000, "MemoryBytes": 67108864}`), as `inspect` shows it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// Billionths of a CPU (docker's `NanoCPUs`).
    #[serde(default, rename = "NanoCPUs")]
    pub nano_cpus: u64,
    /// Bytes (docker's `MemoryBytes`).
    #[serde(default, rename = "MemoryBytes")]
    pub memory_bytes: u64,
}

impl Resources {
    /// Whether neither is set.
    #[must_use]
    pub fn is_zero(&self) -> bool {
        self.nano_cpus == 0 && self.memory_bytes == 0
    }

    /// Whether `self` covers `need` (both amounts at least as large).
    #[must_use]
    pub fn covers(&self, need: &Resources) -> bool {
        self.nano_cpus >= need.nano_cpus && self.memory_bytes >= need.memory_bytes
    }

    /// `self` less `other`, each amount at least 0.
    #[must_use]
    pub fn saturating_sub(&self, other: &Resources) -> Resources {
        Resources {
            nano_cpus: self.nano_cpus.saturating_sub(other.nano_cpus),
            memory_bytes: self.memory_bytes.saturating_sub(other.memory_bytes),
        }
    }

    /// `self` plus `other`, each amount at most `u64::MAX`.
    #[must_use]
    pub fn saturating_add(&self, other: &Resources) -> Resources {
        Resources {
            nano_cpus: self.nano_cpus.saturating_add(other.nano_cpus),
            memory_bytes: self.memory_bytes.saturating_add(other.memory_bytes),
        }
    }
}

/// A task's limits and reservations (swarmkit's `ResourceRequirements`; JSON as
/// docker's `Resources`: `Limits`, `Reservations`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceRequirements {
    /// At most this much (enforced on the node).
    #[serde(default, rename = "Limits", skip_serializing_if = "Resources::is_zero")]
    pub limits: Resources,
    /// At least this much free on the node for the scheduler to place it there.
    #[serde(
        default,
        rename = "Reservations",
        skip_serializing_if = "Resources::is_zero"
    )]
    pub reservations: Resources,
}

impl ResourceRequirements {
    /// Whether nothing is set.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.limits.is_zero() && self.reservations.is_zero()
    }

    /// Checks the values as swarmkit does (each 0 or at least 0.001 CPU and 4 MiB),
    /// and that no reservation exceeds its limit.
    ///
    /// # Errors
    /// Why they are refused, in swarmkit's and docker's words.
    pub fn validate(&self) -> Result<(), SpecError> {
        for set in [&self.limits, &self.reservations] {
            if set.nano_cpus != 0 && set.nano_cpus < MIN_NANO_CPUS {
                return Err(invalid(format!(
                    "invalid cpu value {}: Must be at least 0.001",
                    CpuCount(set.nano_cpus)
                )));
            }
            if set.memory_bytes != 0 && set.memory_bytes < MIN_MEMORY_BYTES {
                return Err(invalid(format!(
                    "invalid memory value {}: Must be at least 4MiB",
                    set.memory_bytes
                )));
            }
        }
        let (limit, reserve) = (&self.limits, &self.reservations);
        if limit.memory_bytes != 0 && reserve.memory_bytes > limit.memory_bytes {
            return Err(invalid(format!(
                "memory reservation ({}) must be less than or equal to memory limit ({})",
                Bytes(reserve.memory_bytes),
                Bytes(limit.memory_bytes)
            )));
        }
        if limit.nano_cpus != 0 && reserve.nano_cpus > limit.nano_cpus {
            return Err(invalid(format!(
                "cpu reservation ({}) must be less than or equal to cpu limit ({})",
                CpuCount(reserve.nano_cpus),
                CpuCount(limit.nano_cpus)
            )));
        }
        Ok(())
    }
}

/// Parses a number of CPUs as docker's `--limit-cpu` does (`NanoCPUs`): a decimal
/// number (`0.5`, `2`, `.25`), at most 9 decimals, into nano CPUs.
///
/// # Errors
/// A value that is not a non-negative decimal, too precise, or too large.
pub fn parse_nano_cpus(text: &str) -> Result<u64, SpecError> {
    let s = text.trim();
    let not_a_number = || invalid(format!("failed to parse {s:?} as a rational number"));
    if s.starts_with('-') {
        return Err(invalid(format!(
            "invalid cpu value {s}: must not be negative"
        )));
    }
    let (whole, fraction) = s.split_once('.').unwrap_or((s, ""));
    let digits = |d: &str| d.bytes().all(|b| b.is_ascii_digit());
    if (whole.is_empty() && fraction.is_empty()) || !digits(whole) || !digits(fraction) {
        return Err(not_a_number());
    }
    let fraction = fraction.trim_end_matches('0');
    if fraction.len() > 9 {
        return Err(invalid(format!(
            "invalid cpu value {s}: value is too precise"
        )));
    }
    let too_large = || invalid(format!("invalid cpu value {s}: too large"));
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| too_large())?
    };
    let nanos: u64 = format!("{fraction:0<9}")
        .parse()
        .map_err(|_| not_a_number())?;
    whole
        .checked_mul(NANO_PER_CPU)
        .and_then(|n| n.checked_add(nanos))
        .ok_or_else(too_large)
}

/// Parses an amount of memory as docker's `--limit-memory` does (go-units'
/// `RAMInBytes`): a number, possibly with decimals, and an optional binary unit
/// `b`, `k`, `m`, `g`, `t` or `p` (either case, with an optional `i`/`b` after it:
/// `64M`, `64m`, `1g`, `512KiB`, `1.5g`, `1048576`).
///
/// # Errors
/// `invalid size: 'TEXT'` (docker's words) for anything else, or a value past
/// `u64`.
pub fn parse_memory_bytes(text: &str) -> Result<u64, SpecError> {
    let refuse = || invalid(format!("invalid size: '{text}'"));
    let s = text.trim();
    let number_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(number_end);
    let unit = unit.strip_prefix(' ').unwrap_or(unit).to_ascii_lowercase();
    let mut rest = unit.as_str();
    let shift = match rest.chars().next() {
        Some('k') => 10,
        Some('m') => 20,
        Some('g') => 30,
        Some('t') => 40,
        Some('p') => 50,
        _ => 0,
    };
    if shift > 0 {
        rest = &rest[1..];
    }
    rest = rest.strip_prefix('i').unwrap_or(rest);
    rest = rest.strip_prefix('b').unwrap_or(rest);
    if !rest.is_empty() || number.is_empty() {
        return Err(refuse());
    }
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() || fraction.contains('.') || number.ends_with('.') {
        return Err(refuse());
    }
    let too_large = || invalid(format!("invalid size: '{text}': too large"));
    let whole: u64 = whole.parse().map_err(|_| too_large())?;
    let mut bytes = whole
        .checked_shl(shift)
        .filter(|b| b >> shift == whole)
        .ok_or_else(too_large)?;
    // The fraction of a unit, exactly: digits / 10^n × 2^shift, rounded down
    // (go-units truncates its float product the same way).
    let fraction = fraction.trim_end_matches('0');
    if !fraction.is_empty() && shift > 0 {
        let digits = &fraction[..fraction.len().min(18)];
        let numerator: u128 = digits.parse().map_err(|_| refuse())?;
        let denominator = 10u128.pow(u32::try_from(digits.len()).unwrap_or(18));
        let part = u64::try_from((numerator << shift) / denominator).map_err(|_| too_large())?;
        bytes = bytes.checked_add(part).ok_or_else(too_large)?;
    }
    Ok(bytes)
}

/// Nano CPUs shown as a number of CPUs (`0.5`, `2`), as docker prints them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuCount(pub u64);

impl fmt::Display for CpuCount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (whole, nanos) = (self.0 / NANO_PER_CPU, self.0 % NANO_PER_CPU);
        if nanos == 0 {
            write!(f, "{whole}")
        } else {
            let fraction = format!("{nanos:09}");
            write!(f, "{whole}.{}", fraction.trim_end_matches('0'))
        }
    }
}

/// Bytes shown in binary units as docker's `BytesSize` does (`64MiB`, `1.5GiB`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bytes(pub u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
        let mut unit = 0;
        #[allow(clippy::cast_precision_loss)]
        let mut value = self.0 as f64;
        while value >= 1024.0 && unit + 1 < UNITS.len() {
            value /= 1024.0;
            unit += 1;
        }
        // go-units' `%.4g`: 4 significant digits, no trailing zeros.
        let decimals = match value {
            v if v >= 1000.0 => 0,
            v if v >= 100.0 => 1,
            v if v >= 10.0 => 2,
            _ => 3,
        };
        let text = format!("{value:.decimals$}");
        let trimmed = if text.contains('.') {
            text.trim_end_matches('0').trim_end_matches('.')
        } else {
            text.as_str()
        };
        write!(f, "{trimmed}{}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpus_parse_as_docker_nano_cpus_does() {
        assert_eq!(parse_nano_cpus("0.5"), Ok(500_000_000));
        assert_eq!(parse_nano_cpus("2"), Ok(2_000_000_000));
        assert_eq!(parse_nano_cpus(".25"), Ok(250_000_000));
        assert_eq!(parse_nano_cpus("1.000000001"), Ok(1_000_000_001));
        assert_eq!(parse_nano_cpus("0.5000000000"), Ok(500_000_000));
        assert_eq!(parse_nano_cpus("0"), Ok(0));
        let err = |s: &str| parse_nano_cpus(s).unwrap_err().to_string();
        assert_eq!(err("-1"), "invalid cpu value -1: must not be negative");
        assert_eq!(
            err("0.0000000001"),
            "invalid cpu value 0.0000000001: value is too precise"
        );
        assert_eq!(err("abc"), "failed to parse \"abc\" as a rational number");
        assert_eq!(err(""), "failed to parse \"\" as a rational number");
        assert_eq!(err("."), "failed to parse \".\" as a rational number");
        assert_eq!(
            err("1.2.3"),
            "failed to parse \"1.2.3\" as a rational number"
        );
        assert_eq!(
            err("18446744074"),
            "invalid cpu value 18446744074: too large"
        );
        assert_eq!(
            err("99999999999999999999999"),
            "invalid cpu value 99999999999999999999999: too large"
        );
        assert_eq!(CpuCount(500_000_000).to_string(), "0.5");
        assert_eq!(CpuCount(2_000_000_000).to_string(), "2");
        assert_eq!(CpuCount(1_250_000_000).to_string(), "1.25");
    }

    #[test]
    fn memory_parses_as_docker_ram_in_bytes_does() {
        assert_eq!(parse_memory_bytes("64M"), Ok(64 << 20));
        assert_eq!(parse_memory_bytes("64m"), Ok(64 << 20));
        assert_eq!(parse_memory_bytes("64MiB"), Ok(64 << 20));
        assert_eq!(parse_memory_bytes("64mb"), Ok(64 << 20));
        assert_eq!(parse_memory_bytes("1g"), Ok(1 << 30));
        assert_eq!(parse_memory_bytes("512k"), Ok(512 << 10));
        assert_eq!(parse_memory_bytes("1.5g"), Ok(3 << 29));
        assert_eq!(parse_memory_bytes("1048576"), Ok(1_048_576));
        assert_eq!(parse_memory_bytes("100b"), Ok(100));
        assert_eq!(parse_memory_bytes("32 M"), Ok(32 << 20));
        assert_eq!(parse_memory_bytes("0"), Ok(0));
        assert_eq!(parse_memory_bytes("15p"), Ok(15 << 50));
        for bad in [
            "", "-1", "m", "1x", "1.2.3m", "1.m", "64MM", "1 2", " ", "1e9",
        ] {
            assert_eq!(
                parse_memory_bytes(bad).unwrap_err().to_string(),
                format!("invalid size: '{bad}'"),
            );
        }
        for big in ["16384p", "18446744073709551616", "99999999999999999999999k"] {
            assert!(
                parse_memory_bytes(big)
                    .unwrap_err()
                    .to_string()
                    .ends_with("too large"),
                "{big}"
            );
        }
        assert_eq!(parse_memory_bytes("16383p"), Ok(16383 << 50));
        assert_eq!(Bytes(64 << 20).to_string(), "64MiB");
        assert_eq!(Bytes(3 << 29).to_string(), "1.5GiB");
        assert_eq!(Bytes(1000).to_string(), "1000B");
        assert_eq!(Bytes(33_554_432).to_string(), "32MiB");
    }

    #[test]
    fn requirements_are_checked_as_swarmkit_does() {
        let req = |limit: (u64, u64), reserve: (u64, u64)| ResourceRequirements {
            limits: Resources {
                nano_cpus: limit.0,
                memory_bytes: limit.1,
            },
            reservations: Resources {
                nano_cpus: reserve.0,
                memory_bytes: reserve.1,
            },
        };
        assert_eq!(req((0, 0), (0, 0)).validate(), Ok(()));
        assert_eq!(
            req((500_000_000, 32 << 20), (250_000_000, 16 << 20)).validate(),
            Ok(())
        );
        // A reservation without a limit is fine; equal is fine.
        assert_eq!(req((0, 0), (4_000_000_000, 1 << 40)).validate(), Ok(()));
        assert_eq!(
            req((1, 0), (0, 0)).validate().unwrap_err().to_string(),
            "invalid cpu value 0.000000001: Must be at least 0.001"
        );
        assert_eq!(
            req((0, 0), (0, 1024)).validate().unwrap_err().to_string(),
            "invalid memory value 1024: Must be at least 4MiB"
        );
        assert_eq!(
            req((0, 64 << 20), (0, 128 << 20))
                .validate()
                .unwrap_err()
                .to_string(),
            "memory reservation (128MiB) must be less than or equal to memory limit (64MiB)"
        );
        assert_eq!(
            req((500_000_000, 0), (1_000_000_000, 0))
                .validate()
                .unwrap_err()
                .to_string(),
            "cpu reservation (1) must be less than or equal to cpu limit (0.5)"
        );
        let node = Resources {
            nano_cpus: 2 * NANO_PER_CPU,
            memory_bytes: 1 << 30,
        };
        assert!(node.covers(&Resources {
            nano_cpus: NANO_PER_CPU,
            memory_bytes: 1 << 30
        }));
        assert!(!node.covers(&Resources {
            nano_cpus: 0,
            memory_bytes: (1 << 30) + 1
        }));
        // An old spec without resources loads; an empty one is not written.
        let json = serde_json::to_string(&ResourceRequirements::default()).unwrap();
        assert_eq!(json, "{}");
        // Docker's JSON.
        let limited = req((500_000_000, 32 << 20), (0, 0));
        assert_eq!(
            serde_json::to_string(&limited).unwrap(),
            r#"{"Limits":{"NanoCPUs":500000000,"MemoryBytes":33554432}}"#
        );
        assert_eq!(
            serde_json::from_str::<ResourceRequirements>("{}").unwrap(),
            ResourceRequirements::default()
        );
    }
}
