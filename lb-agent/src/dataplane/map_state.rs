//! The dataplane's contents as plain data, and the ordered map operations that turn one
//! state into another.
//!
//! [`DataplaneState`] describes what the maps hold (read back from the pinned maps) or
//! should hold (computed from the configuration). [`diff`] is a pure function from the
//! current and the desired state to a list of [`MapOp`]s, in an order that never lets a
//! packet see a half-written backend set or a dangling reference:
//!
//! 0. node settings, then counter resets of freshly allocated ids;
//! 1. upsert endpoints;
//! 2. upsert backends;
//! 3. write the new slot sequence of each changed service into a free range of the slot
//!    pool (never one a live table uses: [`crate::dataplane::slot_pool`]);
//! 4. upsert service keys, pointing each at its new range (`base`, `slots`) in one update;
//! 5. delete service keys that are gone;
//! 6. delete backends that are gone;
//! 7. delete endpoints that are gone.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;

use lb_common::maps::SLOTS_LEN;
use lb_common::{Backend, Endpoint, NodeConfig, Service, ServiceKey};

use crate::dataplane::slot_pool::SlotPool;

/// A service key in host byte order, ordered, for use in maps and logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SvcKey {
    /// VIP, or `0.0.0.0` for a port published on the node's address.
    pub addr: Ipv4Addr,
    /// Port.
    pub port: u16,
    /// IP protocol number.
    pub proto: u8,
}

impl SvcKey {
    /// The key of a published port.
    #[must_use]
    pub const fn published(port: u16, proto: u8) -> Self {
        Self {
            addr: Ipv4Addr::UNSPECIFIED,
            port,
            proto,
        }
    }

    /// The map key.
    #[must_use]
    pub fn to_map(self) -> ServiceKey {
        ServiceKey::new(u32::from(self.addr), self.port, self.proto)
    }

    /// From a map key (network byte order inside).
    #[must_use]
    pub fn from_map(k: &ServiceKey) -> Self {
        Self {
            addr: Ipv4Addr::from(u32::from_be(k.addr)),
            port: u16::from_be(k.port),
            proto: k.proto,
        }
    }
}

impl fmt::Display for SvcKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = match self.proto {
            lb_common::IPPROTO_TCP => "tcp",
            lb_common::IPPROTO_UDP => "udp",
            _ => "?",
        };
        if self.addr.is_unspecified() {
            write!(f, "*:{}/{proto}", self.port)
        } else {
            write!(f, "{}:{}/{proto}", self.addr, self.port)
        }
    }
}

/// What the dataplane maps hold, or should hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DataplaneState {
    /// Every service key and its value. In a desired state `base` is ignored.
    pub services: BTreeMap<SvcKey, Service>,
    /// The live slot sequence (backend ids) of each service id.
    pub slots: BTreeMap<u32, Vec<u32>>,
    /// Backends by id.
    pub backends: BTreeMap<u32, Backend>,
    /// Endpoints by task address.
    pub endpoints: BTreeMap<Ipv4Addr, Endpoint>,
    /// The node's settings, if set.
    pub node: Option<NodeConfig>,
}

impl DataplaneState {
    /// Ids of all services that some key points to.
    #[must_use]
    pub fn service_ids(&self) -> BTreeSet<u32> {
        self.services.values().map(|s| s.id).collect()
    }

    /// The range of the slot pool live for service `id` (`base`, `slots`, from its first
    /// key), if it has a key.
    #[must_use]
    pub fn live_range(&self, id: u32) -> Option<(u32, u32)> {
        self.services
            .values()
            .find(|s| s.id == id)
            .map(|s| (s.base, s.slots))
    }

    /// The ranges of the slot pool that live tables use, one per service id.
    fn live_ranges(&self) -> BTreeMap<u32, (u32, u32)> {
        let mut ranges = BTreeMap::new();
        for s in self.services.values() {
            ranges.entry(s.id).or_insert((s.base, s.slots));
        }
        ranges
    }
}

/// Why a state cannot be programmed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DiffError {
    /// No free range of the slot pool is long enough for a changed table (the
    /// configuration's check keeps the live tables to half of the pool, so only
    /// scattered free space can cause this).
    #[error(
        "the slot pool has no free range of {needed} slots for service id {service_id} \
         ({used} of {SLOTS_LEN} slots in use)"
    )]
    SlotPoolFull {
        /// The service whose table did not fit.
        service_id: u32,
        /// Its table's length.
        needed: u32,
        /// Slots in use, the new tables written so far included.
        used: u64,
    },
}

/// One map operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MapOp {
    /// Write the node settings.
    SetNodeConfig(NodeConfig),
    /// Zero the counters and round-robin cursor of a freshly allocated service id.
    ResetServiceCounters(u32),
    /// Zero the counters of a freshly allocated backend id.
    ResetBackendCounters(u32),
    /// Insert or replace an endpoint.
    UpsertEndpoint(Ipv4Addr, Endpoint),
    /// Insert or replace a backend.
    UpsertBackend(u32, Backend),
    /// Write a slot sequence into a free range of the slot pool.
    WriteSlots {
        /// The range's first entry (no live table uses the range).
        base: u32,
        /// Backend ids, one per slot.
        backends: Vec<u32>,
    },
    /// Insert or replace a service key's value.
    UpsertService(SvcKey, Service),
    /// Delete a service key.
    DeleteService(SvcKey),
    /// Delete a backend.
    DeleteBackend(u32),
    /// Delete an endpoint.
    DeleteEndpoint(Ipv4Addr),
}

/// The operations that turn `current` into `desired`, in a safe order (see the module
/// documentation).
///
/// `desired.services` values carry the id, flags and slot count; their `base` is chosen
/// here: a service whose slot sequence changed gets its new sequence written into a free
/// range of the slot pool, and its keys are pointed at it. A service id that `current`
/// does not know gets its counters reset before anything refers to it, and so does a
/// backend id. (A range a table leaves is free for the next call's tables: a packet that
/// read the old `base` is long done by then.)
///
/// # Errors
/// [`DiffError::SlotPoolFull`] when a changed table finds no free range.
pub fn diff(current: &DataplaneState, desired: &DataplaneState) -> Result<Vec<MapOp>, DiffError> {
    let mut ops = Vec::new();

    // 0. Node settings; counters of fresh ids.
    if let Some(node) = desired.node
        && current.node != Some(node)
    {
        ops.push(MapOp::SetNodeConfig(node));
    }
    let current_ids = current.service_ids();
    for id in desired.service_ids() {
        if !current_ids.contains(&id) {
            ops.push(MapOp::ResetServiceCounters(id));
        }
    }
    for id in desired.backends.keys() {
        if !current.backends.contains_key(id) {
            ops.push(MapOp::ResetBackendCounters(*id));
        }
    }

    // 1. Endpoints.
    for (addr, ep) in &desired.endpoints {
        if current.endpoints.get(addr) != Some(ep) {
            ops.push(MapOp::UpsertEndpoint(*addr, *ep));
        }
    }

    // 2. Backends.
    for (id, b) in &desired.backends {
        if current.backends.get(id) != Some(b) {
            ops.push(MapOp::UpsertBackend(*id, *b));
        }
    }

    // 3. Slot tables, and the range each service id goes live with.
    let live = current.live_ranges();
    let mut pool = SlotPool::new(SLOTS_LEN, live.values().copied());
    let mut bases = BTreeMap::new();
    for id in desired.service_ids() {
        let want = desired.slots.get(&id).map_or(&[][..], Vec::as_slice);
        let have = current.slots.get(&id).map(Vec::as_slice);
        let base = match live.get(&id) {
            Some(&(base, _)) if have == Some(want) => base,
            _ if want.is_empty() => 0,
            _ => {
                let needed = u32::try_from(want.len()).unwrap_or(u32::MAX);
                let base = pool.alloc(needed).ok_or(DiffError::SlotPoolFull {
                    service_id: id,
                    needed,
                    used: pool.used(),
                })?;
                ops.push(MapOp::WriteSlots {
                    base,
                    backends: want.to_vec(),
                });
                base
            }
        };
        bases.insert(id, base);
    }

    // 4. Service keys.
    for (key, svc) in &desired.services {
        let value = Service {
            base: bases.get(&svc.id).copied().unwrap_or(0),
            slots: desired.slots.get(&svc.id).map_or(0, |s| s.len() as u32),
            ..*svc
        };
        if current.services.get(key) != Some(&value) {
            ops.push(MapOp::UpsertService(*key, value));
        }
    }

    // 5-7. Deletions.
    for key in current.services.keys() {
        if !desired.services.contains_key(key) {
            ops.push(MapOp::DeleteService(*key));
        }
    }
    for id in current.backends.keys() {
        if !desired.backends.contains_key(id) {
            ops.push(MapOp::DeleteBackend(*id));
        }
    }
    for addr in current.endpoints.keys() {
        if !desired.endpoints.contains_key(addr) {
            ops.push(MapOp::DeleteEndpoint(*addr));
        }
    }
    Ok(ops)
}

/// A model of the maps (the slot pool as the entries written), to check [`diff`]'s
/// output op by op in tests and to predict the state after applying it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapModel {
    /// Service keys.
    pub services: BTreeMap<SvcKey, Service>,
    /// The slot pool's written entries.
    pub pool: BTreeMap<u32, u32>,
    /// Backends.
    pub backends: BTreeMap<u32, Backend>,
    /// Endpoints.
    pub endpoints: BTreeMap<Ipv4Addr, Endpoint>,
    /// Node settings.
    pub node: Option<NodeConfig>,
    /// Writes that changed a live table under a packet's feet.
    pub overwrites: Vec<String>,
}

impl MapModel {
    /// A model holding `state` (slot sequences in each service's live range).
    #[must_use]
    pub fn from_state(state: &DataplaneState) -> Self {
        let mut pool = BTreeMap::new();
        for (id, seq) in &state.slots {
            if let Some((base, _)) = state.live_range(*id) {
                for (i, backend) in (0u32..).zip(seq) {
                    pool.insert(base + i, *backend);
                }
            }
        }
        Self {
            services: state.services.clone(),
            pool,
            backends: state.backends.clone(),
            endpoints: state.endpoints.clone(),
            node: state.node,
            overwrites: Vec::new(),
        }
    }

    /// Applies one operation.
    pub fn apply(&mut self, op: &MapOp) {
        match op {
            MapOp::SetNodeConfig(n) => self.node = Some(*n),
            MapOp::ResetServiceCounters(_) | MapOp::ResetBackendCounters(_) => {}
            MapOp::UpsertEndpoint(a, e) => {
                self.endpoints.insert(*a, *e);
            }
            MapOp::UpsertBackend(id, b) => {
                self.backends.insert(*id, *b);
            }
            MapOp::WriteSlots { base, backends } => {
                for (i, backend) in (0u32..).zip(backends) {
                    let at = base + i;
                    for (key, svc) in &self.services {
                        if (svc.base..svc.base + svc.slots).contains(&at) {
                            self.overwrites
                                .push(format!("{key}: live slot {at} rewritten"));
                        }
                    }
                    self.pool.insert(at, *backend);
                }
            }
            MapOp::UpsertService(k, s) => {
                self.services.insert(*k, *s);
            }
            MapOp::DeleteService(k) => {
                self.services.remove(k);
            }
            MapOp::DeleteBackend(id) => {
                self.backends.remove(id);
            }
            MapOp::DeleteEndpoint(a) => {
                self.endpoints.remove(a);
            }
        }
    }

    /// The live table of `svc` as far as it was written.
    fn table(&self, svc: &Service) -> Vec<Option<u32>> {
        (svc.base..svc.base + svc.slots)
            .map(|at| self.pool.get(&at).copied())
            .collect()
    }

    /// The state a packet sees: each service's live slots, as [`DataplaneState`].
    #[must_use]
    pub fn state(&self) -> DataplaneState {
        let mut slots = BTreeMap::new();
        for svc in self.services.values() {
            slots
                .entry(svc.id)
                .or_insert_with(|| self.table(svc).into_iter().flatten().collect());
        }
        DataplaneState {
            services: self.services.clone(),
            slots,
            backends: self.backends.clone(),
            endpoints: self.endpoints.clone(),
            node: self.node,
        }
    }

    /// Problems a packet could run into right now: a live slot never written, a slot
    /// naming a missing backend or one of another service, a backend without an
    /// endpoint; and any live table rewritten so far.
    #[must_use]
    pub fn dangling(&self) -> Vec<String> {
        let mut problems = self.overwrites.clone();
        for (key, svc) in &self.services {
            for (at, slot) in (svc.base..).zip(self.table(svc)) {
                let Some(id) = slot else {
                    problems.push(format!("{key}: live slot {at} never written"));
                    continue;
                };
                match self.backends.get(&id) {
                    None => problems.push(format!("{key}: slot names missing backend {id}")),
                    Some(b) if b.service_id != svc.id => {
                        problems.push(format!("{key}: slot names backend {id} of another service"));
                    }
                    Some(b) => {
                        let addr = Ipv4Addr::from(u32::from_be(b.addr));
                        if !self.endpoints.contains_key(&addr) {
                            problems.push(format!("{key}: backend {id} has no endpoint {addr}"));
                        }
                    }
                }
            }
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: u8 = lb_common::IPPROTO_TCP;

    fn ep(n: u8) -> (Ipv4Addr, Endpoint) {
        (
            Ipv4Addr::new(10, 255, 0, n),
            Endpoint {
                node: 0,
                ifindex: u32::from(n),
                ..Default::default()
            },
        )
    }

    fn backend(n: u8, svc: u32) -> Backend {
        Backend::new(u32::from(Ipv4Addr::new(10, 255, 0, n)), 80, svc)
    }

    /// A state with one service (id `sid`, keys published 8080 and a VIP) and backends
    /// `(id, endpoint number)`.
    fn state(sid: u32, backends: &[(u32, u8)], slots: &[u32]) -> DataplaneState {
        let mut s = DataplaneState::default();
        let svc = Service {
            id: sid,
            base: 0,
            slots: slots.len() as u32,
            flags: 1,
            vni: 4096,
            sched: 0,
        };
        s.services.insert(SvcKey::published(8080, TCP), svc);
        s.services.insert(
            SvcKey {
                addr: Ipv4Addr::new(10, 255, 255, 10),
                port: 80,
                proto: TCP,
            },
            svc,
        );
        s.slots.insert(sid, slots.to_vec());
        for &(id, n) in backends {
            s.backends.insert(id, backend(n, sid));
            let (a, e) = ep(n);
            s.endpoints.insert(a, e);
        }
        s
    }

    /// Applies `ops` to a model of `current` op by op, checking that no packet could see
    /// an inconsistent state at any point, and returns the final state.
    fn run(current: &DataplaneState, ops: &[MapOp]) -> DataplaneState {
        let mut model = MapModel::from_state(current);
        assert!(model.dangling().is_empty(), "start: {:?}", model.dangling());
        for op in ops {
            model.apply(op);
            assert!(
                model.dangling().is_empty(),
                "after {op:?}: {:?}",
                model.dangling()
            );
        }
        model.state()
    }

    fn same_modulo_table(a: &DataplaneState, b: &DataplaneState) {
        let strip = |s: &DataplaneState| {
            let mut s = s.clone();
            for v in s.services.values_mut() {
                v.base = 0;
            }
            s
        };
        assert_eq!(strip(a), strip(b));
    }

    fn diff(current: &DataplaneState, desired: &DataplaneState) -> Vec<MapOp> {
        super::diff(current, desired).expect("the pool has room")
    }

    #[test]
    fn from_nothing() {
        let desired = state(3, &[(10, 1), (11, 2)], &[10, 11]);
        let ops = diff(&DataplaneState::default(), &desired);
        assert_eq!(ops[0], MapOp::ResetServiceCounters(3));
        assert_eq!(ops[1], MapOp::ResetBackendCounters(10));
        assert_eq!(ops[2], MapOp::ResetBackendCounters(11));
        assert!(matches!(ops[3], MapOp::UpsertEndpoint(..)));
        assert!(matches!(ops[5], MapOp::UpsertBackend(10, _)));
        assert_eq!(
            ops[7],
            MapOp::WriteSlots {
                base: 0,
                backends: vec![10, 11]
            }
        );
        assert!(matches!(
            ops[8],
            MapOp::UpsertService(
                _,
                Service {
                    id: 3,
                    base: 0,
                    slots: 2,
                    ..
                }
            )
        ));
        assert_eq!(ops.len(), 10);
        same_modulo_table(&run(&DataplaneState::default(), &ops), &desired);
    }

    #[test]
    fn no_change_no_ops() {
        let s = state(3, &[(10, 1), (11, 2)], &[10, 11]);
        assert!(diff(&s, &s).is_empty());
        // Also when the live range is elsewhere in the pool.
        let mut t = s.clone();
        for v in t.services.values_mut() {
            v.base = 700;
        }
        assert!(diff(&t, &s).is_empty());
    }

    #[test]
    fn backend_added_writes_a_new_range_and_points_the_keys_at_it() {
        let current = state(3, &[(10, 1)], &[10]);
        let desired = state(3, &[(10, 1), (11, 2)], &[10, 11]);
        let ops = diff(&current, &desired);
        assert_eq!(
            ops,
            vec![
                MapOp::ResetBackendCounters(11),
                MapOp::UpsertEndpoint(ep(2).0, ep(2).1),
                MapOp::UpsertBackend(11, backend(2, 3)),
                MapOp::WriteSlots {
                    base: 1,
                    backends: vec![10, 11]
                },
                MapOp::UpsertService(
                    SvcKey::published(8080, TCP),
                    Service {
                        id: 3,
                        base: 1,
                        slots: 2,
                        flags: 1,
                        vni: 4096,
                        sched: 0,
                    }
                ),
                MapOp::UpsertService(
                    SvcKey {
                        addr: Ipv4Addr::new(10, 255, 255, 10),
                        port: 80,
                        proto: TCP
                    },
                    Service {
                        id: 3,
                        base: 1,
                        slots: 2,
                        flags: 1,
                        vni: 4096,
                        sched: 0,
                    }
                ),
            ]
        );
        let after = run(&current, &ops);
        same_modulo_table(&after, &desired);
        // And back: the next change writes the range the first table left.
        let ops = diff(&after, &current);
        assert!(ops.contains(&MapOp::WriteSlots {
            base: 0,
            backends: vec![10]
        }));
        assert_eq!(ops.last(), Some(&MapOp::DeleteEndpoint(ep(2).0)));
        assert!(ops.contains(&MapOp::DeleteBackend(11)));
        same_modulo_table(&run(&after, &ops), &current);
    }

    #[test]
    fn draining_keeps_the_backend_without_slots() {
        let current = state(3, &[(10, 1), (11, 2)], &[10, 11]);
        let mut desired = state(3, &[(10, 1), (11, 2)], &[10]);
        desired.backends.get_mut(&11).unwrap().flags = Backend::FLAG_DRAINING;
        let ops = diff(&current, &desired);
        assert!(ops.iter().all(|op| !matches!(op, MapOp::DeleteBackend(_))));
        assert!(ops.contains(&MapOp::WriteSlots {
            base: 2,
            backends: vec![10]
        }));
        same_modulo_table(&run(&current, &ops), &desired);
    }

    #[test]
    fn all_backends_gone_means_zero_slots() {
        let current = state(3, &[(10, 1)], &[10]);
        let desired = state(3, &[], &[]);
        let ops = diff(&current, &desired);
        assert!(!ops.iter().any(|op| matches!(op, MapOp::WriteSlots { .. })));
        let after = run(&current, &ops);
        assert!(after.services.values().all(|s| s.slots == 0));
        same_modulo_table(&after, &desired);
    }

    #[test]
    fn removed_service_is_deleted_after_its_replacement_is_live() {
        let current = state(3, &[(10, 1)], &[10]);
        // The published port moves to a new service id 4 with a new backend 12.
        let mut desired = DataplaneState::default();
        let svc = Service {
            id: 4,
            base: 0,
            slots: 1,
            flags: 0,
            vni: 4096,
            sched: 0,
        };
        desired.services.insert(SvcKey::published(8080, TCP), svc);
        desired.slots.insert(4, vec![12]);
        desired.backends.insert(12, backend(5, 4));
        let (a, e) = ep(5);
        desired.endpoints.insert(a, e);
        let ops = diff(&current, &desired);
        let pos = |pred: &dyn Fn(&MapOp) -> bool| ops.iter().position(pred).unwrap();
        let upsert = pos(&|op| matches!(op, MapOp::UpsertService(..)));
        let delete_key = pos(&|op| matches!(op, MapOp::DeleteService(_)));
        let delete_backend = pos(&|op| matches!(op, MapOp::DeleteBackend(10)));
        let delete_ep = pos(&|op| matches!(op, MapOp::DeleteEndpoint(_)));
        assert!(upsert < delete_key && delete_key < delete_backend && delete_backend < delete_ep);
        assert_eq!(ops[0], MapOp::ResetServiceCounters(4));
        same_modulo_table(&run(&current, &ops), &desired);
    }

    #[test]
    fn flag_change_without_slot_change_keeps_the_table() {
        let mut current = state(3, &[(10, 1)], &[10]);
        for v in current.services.values_mut() {
            v.base = 9;
        }
        let mut desired = state(3, &[(10, 1)], &[10]);
        for v in desired.services.values_mut() {
            v.flags = 0;
        }
        let ops = diff(&current, &desired);
        assert_eq!(ops.len(), 2);
        assert!(ops.iter().all(|op| matches!(
            op,
            MapOp::UpsertService(
                _,
                Service {
                    base: 9,
                    flags: 0,
                    vni: 4096,
                    ..
                }
            )
        )));
    }

    #[test]
    fn many_services_change_at_once_without_touching_a_live_table() {
        // 300 services of 3 backends each, then every one loses a backend and gains
        // another: each new table lands in a free range, none over a live one.
        let mut current = DataplaneState::default();
        let mut desired = DataplaneState::default();
        for sid in 0..300u32 {
            let key = SvcKey::published(10_000 + sid as u16, TCP);
            let svc = Service {
                id: sid,
                base: 0,
                slots: 3,
                flags: 0,
                vni: 4096,
                sched: 0,
            };
            current.services.insert(key, svc);
            desired.services.insert(key, svc);
            let ids = [sid * 4, sid * 4 + 1, sid * 4 + 2, sid * 4 + 3];
            current.slots.insert(sid, ids[..3].to_vec());
            desired.slots.insert(sid, ids[1..].to_vec());
            for (i, id) in ids.iter().enumerate() {
                let n = (sid * 4 + i as u32) as u16;
                let b = Backend::new(
                    u32::from(Ipv4Addr::new(10, 1, (n >> 8) as u8, n as u8)),
                    80,
                    sid,
                );
                let e = Endpoint {
                    ifindex: 1,
                    ..Default::default()
                };
                let addr = Ipv4Addr::from(u32::from_be(b.addr));
                if i < 3 {
                    current.backends.insert(*id, b);
                    current.endpoints.insert(addr, e);
                }
                if i > 0 {
                    desired.backends.insert(*id, b);
                    desired.endpoints.insert(addr, e);
                }
            }
        }
        // Programmed from nothing first, so the live ranges are real ones.
        let ops = diff(&DataplaneState::default(), &current);
        let current = run(&DataplaneState::default(), &ops);
        let ops = diff(&current, &desired);
        let after = run(&current, &ops);
        same_modulo_table(&after, &desired);
        assert!(diff(&after, &desired).is_empty());
    }

    #[test]
    fn a_pool_without_a_long_enough_range_is_an_error() {
        // A live table of service 1 sits in the middle of the pool, so no free range is
        // as long as a table of most of the pool.
        let mut current = state(1, &[(10, 1)], &[10]);
        for v in current.services.values_mut() {
            v.base = SLOTS_LEN / 2;
        }
        let mut desired = current.clone();
        let big = SLOTS_LEN / 2 + 1;
        desired.slots.insert(1, vec![10; big as usize]);
        assert_eq!(
            super::diff(&current, &desired),
            Err(DiffError::SlotPoolFull {
                service_id: 1,
                needed: big,
                used: 1
            })
        );
    }

    #[test]
    fn node_config_is_written_first() {
        let mut desired = state(3, &[(10, 1)], &[10]);
        desired.node = Some(NodeConfig {
            mtu: 1500,
            ..Default::default()
        });
        let ops = diff(&DataplaneState::default(), &desired);
        assert!(matches!(ops[0], MapOp::SetNodeConfig(_)));
        assert!(diff(&run(&DataplaneState::default(), &ops), &desired).is_empty());
    }

    #[test]
    fn svc_key_round_trips_through_the_map_layout() {
        let k = SvcKey {
            addr: Ipv4Addr::new(10, 255, 255, 10),
            port: 8080,
            proto: TCP,
        };
        let m = k.to_map();
        assert_eq!(m.addr.to_ne_bytes(), [10, 255, 255, 10]);
        assert_eq!(m.port.to_ne_bytes(), [0x1f, 0x90]);
        assert_eq!(SvcKey::from_map(&m), k);
        assert_eq!(
            SvcKey::published(8080, TCP).to_map(),
            ServiceKey::published(8080, TCP)
        );
        assert_eq!(k.to_string(), "10.255.255.10:8080/tcp");
        assert_eq!(SvcKey::published(53, 17).to_string(), "*:53/udp");
    }
}
