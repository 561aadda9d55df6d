//! Reading a running agent's dataplane maps from their pins (`/sys/fs/bpf/<prefix>-nK/`):
//! which task addresses a service's published port (or VIP) sends new flows to, and which
//! drain.
//!
//! bpffs is shared by every network namespace, so a node's maps can be read from any
//! thread. [`PinnedMaps::open`] opens the maps once (an agent that restarts finds and
//! reuses the same pinned maps); [`PinnedMaps::service`] reads them, which costs a few
//! system calls per backend. The reading itself ([`backends_of`]) is pure.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::Path;

use anyhow::{Context as _, Result};
use aya::maps::{Array, HashMap, Map, MapData};
use lb_common::{Backend, Service, ServiceKey, maps};

/// A service's backends as one node's maps hold them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceBackends {
    /// Task addresses that take new flows: in the live slot table, not draining.
    pub active: BTreeSet<Ipv4Addr>,
    /// Task addresses of the service marked draining (their flows go on, no new ones).
    pub draining: BTreeSet<Ipv4Addr>,
}

impl ServiceBackends {
    /// Every task address the maps still know for the service.
    #[must_use]
    pub fn all(&self) -> BTreeSet<Ipv4Addr> {
        self.active.union(&self.draining).copied().collect()
    }
}

/// The backends of service `svc` given the backend ids of its live slot table
/// (`live_ids`, repeats allowed: weights expand into slots) and the backend map. An id
/// the backend map lacks (read while the agent updates) is skipped.
#[must_use]
pub fn backends_of(
    svc: &Service,
    live_ids: &[u32],
    backends: &BTreeMap<u32, Backend>,
) -> ServiceBackends {
    let addr = |b: &Backend| Ipv4Addr::from(u32::from_be(b.addr));
    let draining = |b: &Backend| b.flags & Backend::FLAG_DRAINING != 0;
    let active = live_ids
        .iter()
        .filter_map(|id| backends.get(id))
        .filter(|b| b.service_id == svc.id && !draining(b))
        .map(addr)
        .collect();
    let draining = backends
        .values()
        .filter(|b| b.service_id == svc.id && draining(b))
        .map(addr)
        .collect();
    ServiceBackends { active, draining }
}

/// One node's pinned service, slot and backend maps.
pub struct PinnedMaps {
    services: HashMap<MapData, ServiceKey, Service>,
    slots: Array<MapData, u32>,
    backends: HashMap<MapData, u32, Backend>,
}

impl std::fmt::Debug for PinnedMaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PinnedMaps").finish_non_exhaustive()
    }
}

fn open_map(dir: &Path, name: &str) -> Result<Map> {
    let path = dir.join(name);
    let data = MapData::from_pin(&path)
        .with_context(|| format!("opening the pinned map {}", path.display()))?;
    Map::from_map_data(data).with_context(|| format!("the type of {}", path.display()))
}

impl PinnedMaps {
    /// Opens the maps pinned under `dir` (an agent's `--pin-dir`).
    ///
    /// # Errors
    /// If a map is not pinned there (no agent has run with that pin directory) or has
    /// another type.
    pub fn open(dir: &Path) -> Result<Self> {
        Ok(Self {
            services: open_map(dir, maps::SERVICES)?.try_into()?,
            slots: open_map(dir, maps::SLOTS)?.try_into()?,
            backends: open_map(dir, maps::BACKENDS)?.try_into()?,
        })
    }

    /// The backends of the TCP or UDP (`proto`) port `port` published on every node
    /// (the routing mesh's key, address 0); `None` if the node has no such service.
    ///
    /// # Errors
    /// If a map cannot be read.
    pub fn service(&self, port: u16, proto: u8) -> Result<Option<ServiceBackends>> {
        self.service_at(ServiceKey::published(port, proto))
    }

    /// The backends of the service at `key` (a published port's, or a VIP's such as
    /// `ServiceKey::new(vip, 0, IPPROTO_TCP)` for every TCP port of a VIP); `None` if the
    /// node has no such service.
    ///
    /// # Errors
    /// If a map cannot be read.
    pub fn service_at(&self, key: ServiceKey) -> Result<Option<ServiceBackends>> {
        let svc = match self.services.get(&key, 0) {
            Ok(svc) => svc,
            Err(aya::maps::MapError::KeyNotFound) => return Ok(None),
            Err(e) => return Err(e).context("reading LB_SERVICES"),
        };
        let mut live = Vec::new();
        let end = svc
            .base
            .saturating_add(svc.slots.min(maps::MAX_SLOTS))
            .min(maps::SLOTS_LEN);
        for idx in svc.base..end {
            live.push(self.slots.get(&idx, 0).context("reading LB_SLOTS")?);
        }
        let mut backends = BTreeMap::new();
        for entry in self.backends.iter() {
            match entry {
                Ok((id, b)) => {
                    backends.insert(id, b);
                }
                // An entry removed while the map is walked.
                Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(e).context("reading LB_BACKENDS"),
            }
        }
        Ok(Some(backends_of(&svc, &live, &backends)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_slots_are_active_draining_flags_drain_other_services_ignored() {
        let svc = Service {
            id: 3,
            base: 100,
            slots: 4,
            flags: 0,
            vni: 4096,
            sched: 0,
        };
        let a = u32::from(Ipv4Addr::new(10, 255, 0, 2));
        let mut backends = BTreeMap::new();
        backends.insert(1, Backend::new(a, 80, 3));
        backends.insert(2, Backend::new(a + 1, 80, 3));
        let mut gone = Backend::new(a + 2, 80, 3);
        gone.flags = Backend::FLAG_DRAINING;
        backends.insert(7, gone);
        backends.insert(9, Backend::new(a + 3, 80, 4));
        // Weights repeat ids; id 5 vanished while the agent updated; 9 is another service's.
        let got = backends_of(&svc, &[1, 2, 1, 5, 9], &backends);
        let ip = |n: u32| Ipv4Addr::from(a + n);
        assert_eq!(got.active, BTreeSet::from([ip(0), ip(1)]));
        assert_eq!(got.draining, BTreeSet::from([ip(2)]));
        assert_eq!(got.all().len(), 3);
    }

    #[test]
    fn a_draining_backend_still_in_the_live_table_is_not_active() {
        let svc = Service {
            id: 0,
            base: 0,
            slots: 1,
            flags: 0,
            vni: 4096,
            sched: 0,
        };
        let mut b = Backend::new(1, 80, 0);
        b.flags = Backend::FLAG_DRAINING;
        let got = backends_of(&svc, &[4], &BTreeMap::from([(4, b)]));
        assert!(got.active.is_empty());
        assert_eq!(got.draining.len(), 1);
    }
}
