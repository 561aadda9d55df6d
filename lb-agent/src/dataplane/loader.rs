//! The eBPF dataplane shell: loads the object with its maps pinned under the pin
//! directory, reads the maps back into a [`DataplaneState`], applies [`MapOp`]s, and owns
//! the programs for attaching (see [`crate::dataplane::links`]).
//!
//! Maps are declared pinned by name, so loading with `default_map_pin_directory` reuses
//! maps an earlier agent pinned: their contents, and the traffic that depends on them,
//! survive restarts. A pinned map whose key or value size differs from the new object's
//! (a layout change across versions) cannot be reused; then every map is unpinned and
//! created afresh, with a warning, and the agent reprograms them from the configuration.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use aya::maps::{Array, HashMap, MapData, MapError, PerCpuArray, PerCpuValues};
use aya::programs::{CgroupSockAddr, ProgramError, SchedClassifier, Xdp};
use aya::{Ebpf, EbpfError, EbpfLoader};
use lb_common::maps as names;
use lb_common::{Backend, Counters, Endpoint, Flow, FlowKey, NodeConfig, Service, ServiceKey};
use tracing::{debug, info, warn};

use crate::dataplane::flows::{self, FlowCounts};
use crate::dataplane::map_state::{DataplaneState, MapOp, SvcKey};

/// Name of the XDP program in the object.
pub const XDP_PROGRAM: &str = "lb_xdp";
/// Name of the TC program in the object.
pub const TC_PROGRAM: &str = "lb_tc_task";
/// Names of the socket programs in the object (the node's own connections and datagrams
/// to its published ports), with their attach points, in the order they are attached:
/// the answers' translation before the requests' balancing.
pub const SOCK_PROGRAMS: [(&str, &str); 4] = [
    ("lb_getpeername4", "getpeername4"),
    ("lb_recvmsg4", "recvmsg4"),
    ("lb_sendmsg4", "sendmsg4"),
    ("lb_connect4", "connect4"),
];
/// The object's global that tells the socket programs which network namespace
/// is the node's (its cookie); every other namespace's sockets are left alone.
pub const NETNS_COOKIE_GLOBAL: &str = "LB_NETNS_COOKIE";

/// Failures of the dataplane shell.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// Loading the object failed (verifier, map creation, pinning).
    #[error("loading the eBPF object: {0}")]
    Load(#[from] EbpfError),
    /// Parsing the object to check pinned maps failed.
    #[error("parsing the eBPF object: {0}")]
    Parse(String),
    /// The object lacks a map or program the agent needs.
    #[error("the eBPF object has no {0}")]
    Missing(&'static str),
    /// A map operation failed.
    #[error("map {map}: {source}")]
    Map {
        /// Map name.
        map: &'static str,
        /// The cause.
        source: MapError,
    },
    /// A program operation failed.
    #[error("program {program}: {source}")]
    Program {
        /// Program name.
        program: &'static str,
        /// The cause.
        source: ProgramError,
    },
    /// A file-system operation under the pin directory failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

fn map_err(map: &'static str) -> impl FnOnce(MapError) -> DataplaneError {
    move |source| DataplaneError::Map { map, source }
}

/// The per-CPU counter maps, shared between the map writer (which zeroes counters of
/// fresh ids) and the metrics collector (which sums them at scrape time).
pub struct CounterMaps {
    services: PerCpuArray<MapData, Counters>,
    backends: PerCpuArray<MapData, Counters>,
    drops: PerCpuArray<MapData, u64>,
    flow_events: PerCpuArray<MapData, u64>,
}

impl std::fmt::Debug for CounterMaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CounterMaps").finish_non_exhaustive()
    }
}

impl CounterMaps {
    /// The sum over CPUs of service `id`'s counters.
    ///
    /// # Errors
    /// If the lookup fails (e.g. `id` out of range).
    pub fn service(&self, id: u32) -> Result<Counters, MapError> {
        Ok(sum(&self.services.get(&id, 0)?))
    }

    /// The sum over CPUs of backend `id`'s counters.
    ///
    /// # Errors
    /// If the lookup fails.
    pub fn backend(&self, id: u32) -> Result<Counters, MapError> {
        Ok(sum(&self.backends.get(&id, 0)?))
    }

    /// The sum over CPUs of drops with reason index `reason`.
    ///
    /// # Errors
    /// If the lookup fails.
    pub fn drops(&self, reason: u32) -> Result<u64, MapError> {
        Ok(self.drops.get(&reason, 0)?.iter().sum())
    }

    /// The sum over CPUs of flow events of index `event` ([`lb_common::FlowEvent`]).
    ///
    /// # Errors
    /// If the lookup fails.
    pub fn flow_events(&self, event: u32) -> Result<u64, MapError> {
        Ok(self.flow_events.get(&event, 0)?.iter().sum())
    }
}

fn sum(values: &PerCpuValues<Counters>) -> Counters {
    let mut total = Counters::default();
    for v in values.iter() {
        total += *v;
    }
    total
}

fn zeroes<T: aya::Pod + Default + Clone>() -> Result<PerCpuValues<T>, MapError> {
    let n = aya::util::nr_cpus().map_err(|(_, e)| MapError::IoError(e))?;
    PerCpuValues::try_from(vec![T::default(); n]).map_err(MapError::IoError)
}

/// The flow table and the handshake table (TCP connections not established yet), handed
/// to the sweeper thread.
pub struct FlowTable {
    flows: HashMap<MapData, FlowKey, Flow>,
    handshakes: HashMap<MapData, FlowKey, Flow>,
    conns: Array<MapData, u64>,
    /// The backends (read only: which ids may have a count).
    backends: HashMap<MapData, u32, Backend>,
    /// Backend ids whose connection count the last sweep wrote non-zero; `None` before
    /// the first sweep, which clears every count.
    counted: Option<BTreeSet<u32>>,
}

impl std::fmt::Debug for FlowTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlowTable")
            .field("flows", &self.flows)
            .field("handshakes", &self.handshakes)
            .finish_non_exhaustive()
    }
}

impl FlowTable {
    /// The flow tables and connection counts pinned under `pin_dir` (by an agent, or a
    /// test's loader), for a sweep from outside the agent that loaded them.
    ///
    /// # Errors
    /// If a map is missing or of another type.
    pub fn open_pinned(pin_dir: &Path) -> Result<Self, MapError> {
        let open =
            |name: &str| aya::maps::Map::from_map_data(MapData::from_pin(pin_dir.join(name))?);
        Ok(Self {
            flows: HashMap::try_from(open(names::FLOWS)?)?,
            handshakes: HashMap::try_from(open(names::SYN_FLOWS)?)?,
            conns: Array::try_from(open(names::BACKEND_CONNS)?)?,
            backends: HashMap::try_from(open(names::BACKENDS)?)?,
            counted: None,
        })
    }

    /// Deletes expired flows (see [`flows::expired`]) and counts the rest by protocol.
    ///
    /// # Errors
    /// If reading the clock fails. Failed deletions (an entry that the LRU evicted in
    /// the meantime) are ignored.
    pub fn sweep(&mut self, udp_timeout_ns: u64) -> Result<(FlowCounts, u64), MapError> {
        let now = flows::monotonic_now_ns().map_err(|e| MapError::IoError(e.into()))?;
        let mut expired = Vec::new();
        let mut counts = FlowCounts::default();
        for entry in self.flows.iter() {
            // Entries can vanish during iteration (LRU eviction); skip errors.
            let Ok((key, flow)) = entry else { continue };
            if flows::expired(&key, &flow, now, udp_timeout_ns) {
                expired.push(key);
            } else {
                counts.add(key.proto);
            }
        }
        let mut deleted = 0;
        for key in &expired {
            if self.flows.remove(key).is_ok() {
                deleted += 1;
            }
        }
        // Connections closed in their handshake go too; the others leave by LRU
        // eviction (a flood's never complete) or on completing.
        let mut closed = Vec::new();
        for (key, flow) in self.handshakes.iter().flatten() {
            if flows::expired(&key, &flow, now, udp_timeout_ns) {
                closed.push(key);
            } else {
                counts.handshakes += 1;
            }
        }
        for key in &closed {
            if self.handshakes.remove(key).is_ok() {
                deleted += 1;
            }
        }
        self.recount_connections();
        Ok((counts, deleted))
    }

    /// Recounts the active connections of every backend (`LB_BACKEND_CONNS`, which
    /// least-connections picks read) from the flow tables: the Forward entries of flows
    /// not closed ([`flows::active_connection`]). The dataplane only adds to the counts;
    /// this is where closed, expired and evicted flows leave them. Failed writes are
    /// ignored (the next sweep writes again).
    pub fn recount_connections(&mut self) {
        let mut active: BTreeMap<u32, u64> = BTreeMap::new();
        for (key, flow) in self
            .flows
            .iter()
            .flatten()
            .chain(self.handshakes.iter().flatten())
        {
            if flows::active_connection(&key, &flow) {
                *active.entry(flow.backend_id).or_default() += 1;
            }
        }
        // Zeroed: every backend without an active connection (its count may hold new
        // flows since removed, evicted or never recorded), and the ids counted last
        // time (a backend since deleted); before the first sweep, every id.
        let stale: Vec<u32> = match &self.counted {
            Some(ids) => ids
                .iter()
                .copied()
                .chain(self.backends.keys().flatten())
                .filter(|id| !active.contains_key(id))
                .collect::<BTreeSet<u32>>()
                .into_iter()
                .collect(),
            None => (0..names::MAX_BACKENDS)
                .filter(|id| !active.contains_key(id))
                .collect(),
        };
        for id in stale {
            let _ = self.conns.set(id, 0, 0);
        }
        for (&id, &n) in &active {
            let _ = self.conns.set(id, n, 0);
        }
        self.counted = Some(active.into_keys().collect());
    }

    /// The active connections of backend `id` as the dataplane's least-connections picks
    /// see them.
    ///
    /// # Errors
    /// If the map cannot be read.
    pub fn connections(&self, id: u32) -> Result<u64, MapError> {
        self.conns.get(&id, 0)
    }

    /// Calls `visit` on every entry of both tables; entries that vanish meanwhile (LRU
    /// eviction, a completed handshake) are skipped.
    pub fn for_each(&self, mut visit: impl FnMut(&FlowKey, &Flow)) {
        for (key, flow) in self.flows.iter().flatten() {
            visit(&key, &flow);
        }
        for (key, flow) in self.handshakes.iter().flatten() {
            visit(&key, &flow);
        }
    }
}

/// The loaded object and the maps the agent writes.
pub struct Dataplane {
    ebpf: Ebpf,
    pin_dir: PathBuf,
    services: HashMap<MapData, ServiceKey, Service>,
    slots: Array<MapData, u32>,
    backends: HashMap<MapData, u32, Backend>,
    endpoints: HashMap<MapData, u32, Endpoint>,
    rr_cursors: PerCpuArray<MapData, u32>,
    node: Array<MapData, NodeConfig>,
    generation: Array<MapData, u32>,
    /// What `generation` holds: the agent is its only writer, so it is read once.
    generation_value: u32,
    published: Array<MapData, u64>,
    counters: Arc<Mutex<CounterMaps>>,
    flows: Option<FlowTable>,
}

impl std::fmt::Debug for Dataplane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dataplane")
            .field("pin_dir", &self.pin_dir)
            .finish_non_exhaustive()
    }
}

impl Dataplane {
    /// Loads `object` with its maps pinned under `pin_dir` (which must exist on bpffs),
    /// reusing compatible pinned maps, and loads the XDP, TC and socket
    /// ([`SOCK_PROGRAMS`]) programs into the kernel. The socket programs act only on
    /// sockets of the network namespace of the calling thread ([`netns_cookie`]); where
    /// the kernel cannot say which that is, on none.
    ///
    /// # Errors
    /// If the object is malformed, lacks a program or map, or the kernel rejects it.
    pub fn open(
        object: &[u8],
        pin_dir: &Path,
        flow_table_size: u32,
    ) -> Result<Self, DataplaneError> {
        check_pinned_maps(object, pin_dir, flow_table_size)?;
        let cookie = netns_cookie().unwrap_or_else(|e| {
            warn!(error = %e, "cannot read the network namespace's cookie (SO_NETNS_COOKIE, \
                Linux 5.14): the node's own connections to published ports are not balanced");
            0
        });
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(pin_dir)
            .map_max_entries(names::FLOWS, flow_table_size)
            .override_global(NETNS_COOKIE_GLOBAL, &cookie, true)
            .load(object)?;
        let names = [XDP_PROGRAM, TC_PROGRAM]
            .into_iter()
            .chain(SOCK_PROGRAMS.iter().map(|(name, _)| *name));
        for name in names {
            let program = ebpf
                .program_mut(name)
                .ok_or(DataplaneError::Missing(name))?;
            let err = |source| DataplaneError::Program {
                program: name,
                source,
            };
            match program {
                aya::programs::Program::Xdp(p) => retry_eagain(|| p.load()).map_err(err)?,
                aya::programs::Program::SchedClassifier(p) => {
                    retry_eagain(|| p.load()).map_err(err)?;
                }
                aya::programs::Program::CgroupSockAddr(p) => {
                    retry_eagain(|| p.load()).map_err(err)?;
                }
                _ => return Err(DataplaneError::Missing(name)),
            }
        }
        let mut take =
            |name: &'static str| ebpf.take_map(name).ok_or(DataplaneError::Missing(name));
        let services =
            HashMap::try_from(take(names::SERVICES)?).map_err(map_err(names::SERVICES))?;
        let slots = Array::try_from(take(names::SLOTS)?).map_err(map_err(names::SLOTS))?;
        let backends =
            HashMap::try_from(take(names::BACKENDS)?).map_err(map_err(names::BACKENDS))?;
        let endpoints =
            HashMap::try_from(take(names::ENDPOINTS)?).map_err(map_err(names::ENDPOINTS))?;
        let flows = FlowTable::open_pinned(pin_dir).map_err(map_err(names::FLOWS))?;
        let rr_cursors =
            PerCpuArray::try_from(take(names::RR_CURSORS)?).map_err(map_err(names::RR_CURSORS))?;
        let node =
            Array::try_from(take(names::NODE_CONFIG)?).map_err(map_err(names::NODE_CONFIG))?;
        let generation: Array<MapData, u32> =
            Array::try_from(take(names::GENERATION)?).map_err(map_err(names::GENERATION))?;
        let generation_value = generation.get(&0, 0).map_err(map_err(names::GENERATION))?;
        let published =
            Array::try_from(take(names::PUBLISHED)?).map_err(map_err(names::PUBLISHED))?;
        let mut layout: Array<MapData, u32> =
            Array::try_from(take(names::LAYOUT)?).map_err(map_err(names::LAYOUT))?;
        let counters = CounterMaps {
            services: PerCpuArray::try_from(take(names::SERVICE_COUNTERS)?)
                .map_err(map_err(names::SERVICE_COUNTERS))?,
            backends: PerCpuArray::try_from(take(names::BACKEND_COUNTERS)?)
                .map_err(map_err(names::BACKEND_COUNTERS))?,
            drops: PerCpuArray::try_from(take(names::DROPS)?).map_err(map_err(names::DROPS))?,
            flow_events: PerCpuArray::try_from(take(names::FLOW_EVENTS)?)
                .map_err(map_err(names::FLOW_EVENTS))?,
        };
        let mut dataplane = Self {
            ebpf,
            pin_dir: pin_dir.to_owned(),
            services,
            slots,
            backends,
            endpoints,
            rr_cursors,
            node,
            generation,
            generation_value,
            published,
            counters: Arc::new(Mutex::new(counters)),
            flows: Some(flows),
        };
        dataplane.rebuild_published()?;
        layout
            .set(0, names::LAYOUT_VERSION, 0)
            .map_err(map_err(names::LAYOUT))?;
        Ok(dataplane)
    }

    /// Rewrites every word of the published-ports bitmap from the services map: the bits
    /// of the ports published there, and no other (an agent stopped between a service's
    /// insert and its bit, or a bit's clearing and the service's removal, left them
    /// apart).
    fn rebuild_published(&mut self) -> Result<(), DataplaneError> {
        let mut words = vec![0u64; names::PUBLISHED_WORDS as usize];
        for entry in self.services.keys() {
            let key = entry.map_err(map_err(names::SERVICES))?;
            if key.addr == 0
                && let Some((word, mask)) = names::published_bit(key.port, key.proto)
            {
                words[word as usize] |= mask;
            }
        }
        for (i, word) in (0..).zip(words) {
            self.published
                .set(i, word, 0)
                .map_err(map_err(names::PUBLISHED))?;
        }
        Ok(())
    }

    /// Sets (`on`) or clears the published-ports bit of `key`, if it is a published port.
    fn mark_published(&mut self, key: &ServiceKey, on: bool) -> Result<(), DataplaneError> {
        if key.addr != 0 {
            return Ok(());
        }
        let Some((word, mask)) = names::published_bit(key.port, key.proto) else {
            return Ok(());
        };
        let old = self
            .published
            .get(&word, 0)
            .map_err(map_err(names::PUBLISHED))?;
        let new = if on { old | mask } else { old & !mask };
        if new != old {
            self.published
                .set(word, new, 0)
                .map_err(map_err(names::PUBLISHED))?;
        }
        Ok(())
    }

    /// The pin directory.
    #[must_use]
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// The counter maps, for the metrics collector.
    #[must_use]
    pub fn counters(&self) -> Arc<Mutex<CounterMaps>> {
        Arc::clone(&self.counters)
    }

    /// Hands out the flow table (once), for the sweeper.
    pub fn take_flow_table(&mut self) -> Option<FlowTable> {
        self.flows.take()
    }

    /// The loaded XDP program.
    ///
    /// # Errors
    /// [`DataplaneError::Missing`] if the object has no such XDP program.
    pub fn xdp_program(&mut self) -> Result<&mut Xdp, DataplaneError> {
        match self.ebpf.program_mut(XDP_PROGRAM) {
            Some(aya::programs::Program::Xdp(p)) => Ok(p),
            _ => Err(DataplaneError::Missing(XDP_PROGRAM)),
        }
    }

    /// The loaded TC program.
    ///
    /// # Errors
    /// [`DataplaneError::Missing`] if the object has no such classifier.
    pub fn tc_program(&mut self) -> Result<&mut SchedClassifier, DataplaneError> {
        match self.ebpf.program_mut(TC_PROGRAM) {
            Some(aya::programs::Program::SchedClassifier(p)) => Ok(p),
            _ => Err(DataplaneError::Missing(TC_PROGRAM)),
        }
    }

    /// The loaded socket program `name` (one of [`SOCK_PROGRAMS`]).
    ///
    /// # Errors
    /// [`DataplaneError::Missing`] if the object has no such program.
    pub fn sock_program(
        &mut self,
        name: &'static str,
    ) -> Result<&mut CgroupSockAddr, DataplaneError> {
        match self.ebpf.program_mut(name) {
            Some(aya::programs::Program::CgroupSockAddr(p)) => Ok(p),
            _ => Err(DataplaneError::Missing(name)),
        }
    }

    /// Reads what the maps hold now.
    ///
    /// # Errors
    /// If a map cannot be read.
    pub fn read_state(&self) -> Result<DataplaneState, DataplaneError> {
        let mut state = DataplaneState::default();
        for entry in self.services.iter() {
            let (k, v) = entry.map_err(map_err(names::SERVICES))?;
            state.services.insert(SvcKey::from_map(&k), v);
        }
        let mut live: BTreeMap<u32, (u32, u32)> = BTreeMap::new();
        for svc in state.services.values() {
            live.entry(svc.id)
                .or_insert((svc.base, svc.slots.min(names::MAX_SLOTS)));
        }
        for (id, (base, n)) in live {
            // A range past the pool's end (never written so) reads as what fits.
            let end = base.saturating_add(n).min(names::SLOTS_LEN);
            let mut seq = Vec::with_capacity((end.saturating_sub(base)) as usize);
            for idx in base..end {
                seq.push(self.slots.get(&idx, 0).map_err(map_err(names::SLOTS))?);
            }
            state.slots.insert(id, seq);
        }
        for entry in self.backends.iter() {
            let (k, v) = entry.map_err(map_err(names::BACKENDS))?;
            state.backends.insert(k, v);
        }
        for entry in self.endpoints.iter() {
            let (k, v) = entry.map_err(map_err(names::ENDPOINTS))?;
            state.endpoints.insert(Ipv4Addr::from(u32::from_be(k)), v);
        }
        let node = self.node.get(&0, 0).map_err(map_err(names::NODE_CONFIG))?;
        state.node = (node != NodeConfig::default()).then_some(node);
        Ok(state)
    }

    /// Applies operations in order, stopping at the first failure.
    ///
    /// # Errors
    /// The first failed map operation; the operations before it stay applied (the order
    /// of [`crate::dataplane::map_state::diff`] keeps every prefix consistent for packets).
    ///
    /// After a change of backends or endpoints (even a partial one, on failure), the
    /// routing generation goes up by one, so flow entries that remember their backend
    /// and route check them again ([`lb_common::Flow::generation`]).
    pub fn apply(&mut self, ops: &[MapOp]) -> Result<(), DataplaneError> {
        let mut routing_changed = false;
        let mut result = Ok(());
        for op in ops {
            debug!(?op, "map op");
            routing_changed |= changes_routing(op);
            result = self.apply_one(op);
            if result.is_err() {
                break;
            }
        }
        if routing_changed {
            self.next_generation()?;
        }
        result
    }

    /// Adds one to the routing generation (the agent is its only writer).
    fn next_generation(&mut self) -> Result<(), DataplaneError> {
        let next = self.generation_value.wrapping_add(1);
        self.generation
            .set(0, next, 0)
            .map_err(map_err(names::GENERATION))?;
        self.generation_value = next;
        Ok(())
    }

    fn apply_one(&mut self, op: &MapOp) -> Result<(), DataplaneError> {
        match op {
            MapOp::SetNodeConfig(n) => self.node.set(0, n, 0).map_err(map_err(names::NODE_CONFIG)),
            MapOp::ResetServiceCounters(id) => {
                self.rr_cursors
                    .set(*id, zeroes()?, 0)
                    .map_err(map_err(names::RR_CURSORS))?;
                let mut c = self
                    .counters
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                c.services
                    .set(*id, zeroes()?, 0)
                    .map_err(map_err(names::SERVICE_COUNTERS))
            }
            MapOp::ResetBackendCounters(id) => {
                let mut c = self
                    .counters
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                c.backends
                    .set(*id, zeroes()?, 0)
                    .map_err(map_err(names::BACKEND_COUNTERS))
            }
            MapOp::UpsertEndpoint(addr, ep) => self
                .endpoints
                .insert(u32::from(*addr).to_be(), ep, 0)
                .map_err(map_err(names::ENDPOINTS)),
            MapOp::UpsertBackend(id, b) => self
                .backends
                .insert(id, b, 0)
                .map_err(map_err(names::BACKENDS)),
            MapOp::WriteSlots { base, backends } => {
                for (idx, id) in (*base..).zip(backends) {
                    self.slots.set(idx, id, 0).map_err(map_err(names::SLOTS))?;
                }
                Ok(())
            }
            // A published port's bit is set after its service is in the map, and cleared
            // before it leaves: a packet that sees the bit finds the service.
            MapOp::UpsertService(k, s) => {
                let key = k.to_map();
                self.services
                    .insert(key, s, 0)
                    .map_err(map_err(names::SERVICES))?;
                self.mark_published(&key, true)
            }
            MapOp::DeleteService(k) => {
                let key = k.to_map();
                self.mark_published(&key, false)?;
                ignore_missing(self.services.remove(&key)).map_err(map_err(names::SERVICES))
            }
            MapOp::DeleteBackend(id) => {
                ignore_missing(self.backends.remove(id)).map_err(map_err(names::BACKENDS))
            }
            MapOp::DeleteEndpoint(addr) => {
                ignore_missing(self.endpoints.remove(&u32::from(*addr).to_be()))
                    .map_err(map_err(names::ENDPOINTS))
            }
        }
    }
}

impl From<MapError> for DataplaneError {
    fn from(source: MapError) -> Self {
        Self::Map {
            map: "per-CPU values",
            source,
        }
    }
}

/// Runs `load` again while the kernel answers EAGAIN: the verifier gives up with EAGAIN
/// when a signal is pending, and a retry succeeds (libbpf does the same).
///
/// # Errors
/// The last error of `load`, after a few EAGAINs or at once for any other error.
pub fn retry_eagain(
    mut load: impl FnMut() -> Result<(), ProgramError>,
) -> Result<(), ProgramError> {
    let mut tries = 0;
    loop {
        match load() {
            Err(ProgramError::LoadError { io_error, .. })
                if io_error.raw_os_error() == Some(libc::EAGAIN) && tries < 5 =>
            {
                tries += 1;
            }
            other => return other,
        }
    }
}

fn ignore_missing(r: Result<(), MapError>) -> Result<(), MapError> {
    match r {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}

/// The cookie of the calling thread's network namespace (`SO_NETNS_COOKIE`), the value
/// `bpf_get_netns_cookie` gives programs for sockets there; never 0.
///
/// # Errors
/// If no socket can be opened, or the kernel predates `SO_NETNS_COOKIE` (Linux 5.14).
pub fn netns_cookie() -> std::io::Result<u64> {
    let socket = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
    sock_netns_cookie(&socket)
}

#[allow(unsafe_code)]
fn sock_netns_cookie(socket: &impl std::os::fd::AsRawFd) -> std::io::Result<u64> {
    let mut cookie: u64 = 0;
    let mut len = libc::socklen_t::try_from(size_of::<u64>())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: the socket is open for the call; `cookie` and `len` are valid for writes
    // and `len` is the size of `cookie`.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            std::ptr::from_mut(&mut cookie).cast(),
            &raw mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if cookie == 0 {
        return Err(std::io::Error::other(
            "the kernel gave the namespace cookie 0",
        ));
    }
    Ok(cookie)
}

/// Unpins the maps under `pin_dir` when any of them no longer matches `object`'s layout
/// (key or value size, or size for any map but the flow table), so that the loader
/// creates them all afresh: the maps refer to each other (service ids, slot ranges,
/// backend ids in flows), so one recreated map would make the others' contents wrong.
/// Established flows are then balanced again, once, on an upgrade that changes the
/// layout. A flow table of another size alone is kept (recreating it would break every
/// connection; `lb-agent cleanup` resizes it).
fn check_pinned_maps(
    object: &[u8],
    pin_dir: &Path,
    flow_table_size: u32,
) -> Result<(), DataplaneError> {
    let obj = aya_obj::Object::parse(object).map_err(|e| DataplaneError::Parse(e.to_string()))?;
    let mut pinned = Vec::new();
    let mut changed = Vec::new();
    for (name, def) in &obj.maps {
        let path = pin_dir.join(name);
        if !path.exists() {
            continue;
        }
        pinned.push(path.clone());
        let info = match aya::maps::MapInfo::from_pin(&path) {
            Ok(info) => info,
            Err(e) => {
                warn!(map = %name, error = %e, "pinned map unreadable");
                changed.push(name.clone());
                continue;
            }
        };
        if info.key_size() != def.key_size() || info.value_size() != def.value_size() {
            warn!(
                map = %name,
                pinned_key = info.key_size(),
                pinned_value = info.value_size(),
                key = def.key_size(),
                value = def.value_size(),
                "pinned map has another layout"
            );
            changed.push(name.clone());
        } else if name == names::FLOWS {
            if info.max_entries() != flow_table_size {
                warn!(
                    pinned = info.max_entries(),
                    configured = flow_table_size,
                    "flow table size differs from the pinned table's; keeping the pinned table \
                     (run `lb-agent cleanup` and restart to resize it)"
                );
            }
        } else if info.max_entries() != def.max_entries() {
            warn!(map = %name, pinned = info.max_entries(), wanted = def.max_entries(),
                "pinned map has another size");
            changed.push(name.clone());
        } else {
            debug!(map = %name, "reusing pinned map");
        }
    }
    // Values that keep their size but change their meaning: the layout version the
    // pinned maps were written with (none: an agent from before the version was kept).
    if !pinned.is_empty() {
        let version = pinned_layout_version(&pin_dir.join(names::LAYOUT));
        if version != Some(names::LAYOUT_VERSION) {
            warn!(
                pinned = ?version,
                wanted = names::LAYOUT_VERSION,
                "pinned maps have another layout version"
            );
            changed.push(names::LAYOUT.to_owned());
        }
    }
    if !changed.is_empty() {
        warn!(
            ?changed,
            "the dataplane's map layout changed: recreating every map (established flows \
             are balanced again, once)"
        );
        for path in pinned {
            remove_pin(&path)?;
        }
    }
    Ok(())
}

/// The layout version held by the pinned `LB_LAYOUT` at `path`, if there is one to read.
fn pinned_layout_version(path: &Path) -> Option<u32> {
    let data = MapData::from_pin(path).ok()?;
    let layout: Array<MapData, u32> = Array::try_from(aya::maps::Map::Array(data)).ok()?;
    layout.get(&0, 0).ok()
}

fn remove_pin(path: &Path) -> Result<(), DataplaneError> {
    std::fs::remove_file(path).map_err(|source| DataplaneError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Removes every map pin directly under `pin_dir` (not the links, see
/// [`crate::dataplane::links::remove_all`]) and the directory if it ends up empty.
///
/// # Errors
/// If a pin cannot be removed.
pub fn remove_map_pins(pin_dir: &Path) -> Result<usize, DataplaneError> {
    let io = |source| DataplaneError::Io {
        path: pin_dir.to_owned(),
        source,
    };
    let entries = match std::fs::read_dir(pin_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(io(e)),
    };
    let mut removed = 0;
    for entry in entries {
        let entry = entry.map_err(io)?;
        if entry.file_type().map_err(io)?.is_file() {
            remove_pin(&entry.path())?;
            removed += 1;
        }
    }
    if std::fs::remove_dir(pin_dir).is_ok() {
        info!(dir = %pin_dir.display(), "removed pin directory");
    }
    Ok(removed)
}

/// Whether `op` changes what a flow entry may remember: a backend (its address, or that
/// its id now names another) or an endpoint (where an address lives).
const fn changes_routing(op: &MapOp) -> bool {
    matches!(
        op,
        MapOp::UpsertBackend(..)
            | MapOp::DeleteBackend(..)
            | MapOp::UpsertEndpoint(..)
            | MapOp::DeleteEndpoint(..)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netns_cookie_names_this_namespace() {
        let a = netns_cookie().expect("SO_NETNS_COOKIE (Linux 5.14)");
        let b = netns_cookie().expect("again");
        assert_ne!(a, 0);
        assert_eq!(a, b, "every socket of one namespace has its cookie");
    }
}
