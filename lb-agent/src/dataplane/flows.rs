//! Flow expiry: which entries of the flow table the agent's sweep deletes.
//!
//! - TCP: an established connection NEVER expires by idleness (IPVS drops idle ones after
//!   900 s; we do not). A TCP flow is deleted only once TCP closed it (RST, or FIN both
//!   ways, see [`Flow::tcp_closed`]) and it has been quiet for [`TCP_CLOSED_LINGER_NS`],
//!   so late retransmissions and the last ACK still find it. Entries of connections that
//!   never complete are left to the table's LRU eviction.
//! - UDP and anything else: deleted after `udp_timeout` of idleness.
//!
//! Times are CLOCK_MONOTONIC nanoseconds, the clock of `bpf_ktime_get_coarse_ns` (the
//! dataplane stamps flows with the last tick's time, at most a tick behind).

use lb_common::{Flow, FlowKey, FlowKind, IPPROTO_TCP, IPPROTO_UDP};

/// How long a closed TCP flow lingers after its last packet.
pub const TCP_CLOSED_LINGER_NS: u64 = 10_000_000_000;

/// Whether the sweep deletes `flow` at monotonic time `now_ns`.
#[must_use]
pub const fn expired(key: &FlowKey, flow: &Flow, now_ns: u64, udp_timeout_ns: u64) -> bool {
    let idle = now_ns.saturating_sub(flow.last_seen_ns);
    if key.proto == IPPROTO_TCP {
        flow.tcp_closed() && idle > TCP_CLOSED_LINGER_NS
    } else {
        idle > udp_timeout_ns
    }
}

/// Whether the entry `key` -> `flow` is an active connection of its backend, for
/// least-connections picks: a Forward entry (one per connection) of a flow not closed
/// (TCP: no RST, not FIN both ways; UDP flows count until they expire).
#[must_use]
pub fn active_connection(key: &FlowKey, flow: &Flow) -> bool {
    flow.kind() == Some(FlowKind::Forward) && !(key.proto == IPPROTO_TCP && flow.tcp_closed())
}

/// Flow counts by protocol, from the last sweep (after deletions).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowCounts {
    /// TCP entries.
    pub tcp: u64,
    /// UDP entries.
    pub udp: u64,
    /// Other protocols.
    pub other: u64,
    /// Entries of the handshake table (TCP connections not established yet): a SYN
    /// flood fills it, never the flow table.
    pub handshakes: u64,
}

impl FlowCounts {
    /// Counts one entry of protocol `proto`.
    pub const fn add(&mut self, proto: u8) {
        match proto {
            IPPROTO_TCP => self.tcp += 1,
            IPPROTO_UDP => self.udp += 1,
            _ => self.other += 1,
        }
    }
}

/// The current CLOCK_MONOTONIC time in nanoseconds.
///
/// # Errors
/// If `clock_gettime` fails (it does not on Linux).
pub fn monotonic_now_ns() -> nix::Result<u64> {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)?;
    Ok(ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn key(proto: u8) -> FlowKey {
        FlowKey {
            proto,
            ..Default::default()
        }
    }

    fn flow(tcp: u8, last_seen_s: u64) -> Flow {
        Flow {
            tcp,
            last_seen_ns: last_seen_s * S,
            ..Default::default()
        }
    }

    #[test]
    fn established_tcp_never_expires() {
        let now = 1_000_000 * S;
        assert!(!expired(&key(6), &flow(0, 0), now, 120 * S));
        assert!(
            !expired(&key(6), &flow(Flow::SEEN_FIN_FWD, 0), now, 120 * S),
            "half-closed"
        );
    }

    #[test]
    fn closed_tcp_lingers_then_expires() {
        let closed = Flow::SEEN_FIN_FWD | Flow::SEEN_FIN_REV;
        assert!(!expired(&key(6), &flow(closed, 100), 105 * S, 120 * S));
        assert!(expired(&key(6), &flow(closed, 100), 111 * S, 120 * S));
        assert!(expired(
            &key(6),
            &flow(Flow::SEEN_RST, 100),
            111 * S,
            120 * S
        ));
    }

    #[test]
    fn udp_idle_timeout() {
        assert!(!expired(&key(17), &flow(0, 100), 219 * S, 120 * S));
        assert!(expired(&key(17), &flow(0, 100), 221 * S, 120 * S));
        assert!(
            expired(&key(1), &flow(0, 100), 221 * S, 120 * S),
            "other protocols too"
        );
    }

    #[test]
    fn clock_skew_does_not_expire() {
        // last_seen after now (a packet raced the sweep's clock read).
        assert!(!expired(&key(17), &flow(0, 200), 100 * S, 1));
    }

    #[test]
    fn active_connections_are_open_forward_entries() {
        let fwd = |tcp| Flow {
            kind: FlowKind::Forward as u8,
            tcp,
            ..Default::default()
        };
        assert!(active_connection(&key(6), &fwd(0)));
        assert!(
            active_connection(&key(6), &fwd(Flow::SEEN_FIN_FWD)),
            "half-closed"
        );
        assert!(!active_connection(&key(6), &fwd(Flow::SEEN_RST)));
        assert!(active_connection(&key(17), &fwd(0)));
        let reply = Flow {
            kind: FlowKind::Reply as u8,
            ..Default::default()
        };
        assert!(
            !active_connection(&key(6), &reply),
            "one entry per connection"
        );
    }

    #[test]
    fn counts() {
        let mut c = FlowCounts::default();
        for p in [6, 6, 17, 1] {
            c.add(p);
        }
        assert_eq!(
            c,
            FlowCounts {
                tcp: 2,
                udp: 1,
                other: 1,
                handshakes: 0
            }
        );
    }

    #[test]
    fn monotonic_clock_moves() {
        let a = monotonic_now_ns().unwrap();
        let b = monotonic_now_ns().unwrap();
        assert!(b >= a && a > 0);
    }
}
