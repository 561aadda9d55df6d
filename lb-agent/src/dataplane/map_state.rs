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
//! 3. write the new slot sequence of each changed service into the table it does NOT use;
//! 4. upsert service keys, flipping `table` and setting `slots` in one update per key;
//! 5. delete service keys that are gone;
//! 6. delete backends that are gone;
//! 7. delete endpoints that are gone.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;

use lb_common::{Backend, Endpoint, NodeConfig, Service, ServiceKey};

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
    /// Every service key and its value. In a desired state `table` is ignored.
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

    /// The table currently live for service `id` (from its first key), if it has a key.
    #[must_use]
    pub fn live_table(&self, id: u32) -> Option<u32> {
        self.services
            .values()
            .find(|s| s.id == id)
            .map(|s| s.table & 1)
    }
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
    /// Write a slot sequence into one of a service's two tables.
    WriteSlots {
        /// Service id.
        service_id: u32,
        /// Table 0 or 1 (the one not in use).
        table: u32,
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
/// `desired.services` values carry the id, flags and slot count; their `table` is chosen
/// here: a service whose slot sequence changed gets its new sequence written into the
/// table it does not use, and its keys are flipped to it. A service id that `current` does
/// not know gets its counters reset before anything refers to it, and so does a backend id.
#[must_use]
pub fn diff(current: &DataplaneState, desired: &DataplaneState) -> Vec<MapOp> {
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

    // 3. Slot tables, and the table each service id goes live with.
    let mut tables = BTreeMap::new();
    for id in desired.service_ids() {
        let want = desired.slots.get(&id).map_or(&[][..], Vec::as_slice);
        let live = current.live_table(id);
        let have = current.slots.get(&id).map(Vec::as_slice);
        let table = match live {
            Some(t) if have == Some(want) => t,
            Some(t) => {
                let t = 1 - t;
                if !want.is_empty() {
                    ops.push(MapOp::WriteSlots {
                        service_id: id,
                        table: t,
                        backends: want.to_vec(),
                    });
                }
                t
            }
            None => {
                if !want.is_empty() {
                    ops.push(MapOp::WriteSlots {
                        service_id: id,
                        table: 0,
                        backends: want.to_vec(),
                    });
                }
                0
            }
        };
        tables.insert(id, table);
    }

    // 4. Service keys.
    for (key, svc) in &desired.services {
        let value = Service {
            table: tables.get(&svc.id).copied().unwrap_or(0),
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
    ops
}

/// A model of the maps (both slot tables of every service), to check [`diff`]'s output
/// op by op in tests and to predict the state after applying it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapModel {
    /// Service keys.
    pub services: BTreeMap<SvcKey, Service>,
    /// Slot tables by (service id, table).
    pub tables: BTreeMap<(u32, u32), Vec<u32>>,
    /// Backends.
    pub backends: BTreeMap<u32, Backend>,
    /// Endpoints.
    pub endpoints: BTreeMap<Ipv4Addr, Endpoint>,
    /// Node settings.
    pub node: Option<NodeConfig>,
}

impl MapModel {
    /// A model holding `state` (slot sequences in each service's live table).
    #[must_use]
    pub fn from_state(state: &DataplaneState) -> Self {
        let mut tables = BTreeMap::new();
        for (id, seq) in &state.slots {
            if let Some(t) = state.live_table(*id) {
                tables.insert((*id, t), seq.clone());
            }
        }
        Self {
            services: state.services.clone(),
            tables,
            backends: state.backends.clone(),
            endpoints: state.endpoints.clone(),
            node: state.node,
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
            MapOp::WriteSlots {
                service_id,
                table,
                backends,
            } => {
                self.tables.insert((*service_id, *table), backends.clone());
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

    /// The state a packet sees: each service's live slots, as [`DataplaneState`].
    #[must_use]
    pub fn state(&self) -> DataplaneState {
        let mut slots = BTreeMap::new();
        for svc in self.services.values() {
            let table = self
                .tables
                .get(&(svc.id, svc.table & 1))
                .cloned()
                .unwrap_or_default();
            slots
                .entry(svc.id)
                .or_insert_with(|| table.into_iter().take(svc.slots as usize).collect());
        }
        DataplaneState {
            services: self.services.clone(),
            slots,
            backends: self.backends.clone(),
            endpoints: self.endpoints.clone(),
            node: self.node,
        }
    }

    /// Problems a packet could run into right now: a live slot beyond what was written,
    /// a slot naming a missing backend or one of another service, a backend without an
    /// endpoint.
    #[must_use]
    pub fn dangling(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for (key, svc) in &self.services {
            let table = self
                .tables
                .get(&(svc.id, svc.table & 1))
                .map_or(&[][..], Vec::as_slice);
            if table.len() < svc.slots as usize {
                problems.push(format!(
                    "{key}: {} live slots, {} written",
                    svc.slots,
                    table.len()
                ));
            }
            for id in table.iter().take(svc.slots as usize) {
                match self.backends.get(id) {
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
            table: 0,
            slots: slots.len() as u32,
            flags: 1,
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
                v.table = 0;
            }
            s
        };
        assert_eq!(strip(a), strip(b));
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
                service_id: 3,
                table: 0,
                backends: vec![10, 11]
            }
        );
        assert!(matches!(
            ops[8],
            MapOp::UpsertService(
                _,
                Service {
                    id: 3,
                    table: 0,
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
        // Also when the live table is 1.
        let mut t = s.clone();
        for v in t.services.values_mut() {
            v.table = 1;
        }
        assert!(diff(&t, &s).is_empty());
    }

    #[test]
    fn backend_added_flips_the_table() {
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
                    service_id: 3,
                    table: 1,
                    backends: vec![10, 11]
                },
                MapOp::UpsertService(
                    SvcKey::published(8080, TCP),
                    Service {
                        id: 3,
                        table: 1,
                        slots: 2,
                        flags: 1
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
                        table: 1,
                        slots: 2,
                        flags: 1
                    }
                ),
            ]
        );
        let after = run(&current, &ops);
        same_modulo_table(&after, &desired);
        // And back: the next change writes table 0 again.
        let ops = diff(&after, &current);
        assert!(ops.contains(&MapOp::WriteSlots {
            service_id: 3,
            table: 0,
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
            service_id: 3,
            table: 1,
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
            table: 0,
            slots: 1,
            flags: 0,
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
            v.table = 1;
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
                    table: 1,
                    flags: 0,
                    ..
                }
            )
        )));
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
