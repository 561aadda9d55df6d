//! The dataplane's decisions, shared by the XDP and TC programs: which flow a packet
//! belongs to, which backend a new flow gets, how the packet is rewritten, and where it
//! goes next. Nothing here touches packet memory; `xdp` and `tc` apply the result.

use core::mem::{MaybeUninit, size_of};

use aya_ebpf::helpers::generated::bpf_ktime_get_coarse_ns;
use lb_common::{
    Backend, Counters, DropReason, Endpoint, Flow, FlowEvent, FlowKey, FlowKind, IPPROTO_TCP,
    MESH_ONLY_VNI, NodeConfig, Scheduler, Service, ServiceKey,
    maps::{published_bit, slot_at},
    sched::{LC_CANDIDATES, flow_hash, source_hash},
};

use crate::maps::{
    LB_BACKEND_CONNS, LB_BACKEND_COUNTERS, LB_BACKENDS, LB_DROPS, LB_ENDPOINTS, LB_FLOW_EVENTS,
    LB_FLOWS, LB_GENERATION, LB_NODE_CONFIG, LB_PUBLISHED, LB_RR_CURSORS, LB_SERVICE_COUNTERS,
    LB_SERVICES, LB_SLOTS, LB_SYN_FLOWS,
};

/// TCP flag bits as they sit in the 13th byte of the TCP header.
pub(crate) const TCP_FIN: u8 = 0x01;
/// SYN.
pub(crate) const TCP_SYN: u8 = 0x02;
/// RST.
pub(crate) const TCP_RST: u8 = 0x04;
/// ACK.
pub(crate) const TCP_ACK: u8 = 0x10;

/// How a packet's addresses change.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum NatKind {
    /// Nothing.
    None,
    /// Destination becomes (addr, port): the original direction of a balanced flow.
    Dnat,
    /// Source becomes (addr, port): a reply, made to look as the client expects.
    Snat,
}

/// What to do to a packet's addresses.
///
/// Decisions are plain structs with fieldless kinds rather than enums with payloads: an
/// enum's unused payload is `undef` to LLVM, which may then spill a register the kernel
/// verifier knows to be uninitialised, and the program is refused.
#[derive(Clone, Copy)]
pub(crate) struct Rewrite {
    /// Which address changes.
    pub kind: NatKind,
    /// The new address (network order).
    pub addr: u32,
    /// The new port (network order).
    pub port: u16,
}

impl Rewrite {
    /// No change.
    pub(crate) const NONE: Self = Self {
        kind: NatKind::None,
        addr: 0,
        port: 0,
    };
}

/// Where a packet goes after its rewrite.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum NextKind {
    /// To a task on this node, through the host side of its veth (`Next::ep`).
    Local,
    /// VXLAN-encapsulated to a peer node's underlay address (`Next::node`).
    Encap,
    /// Out of the underlay towards its destination, as routed by the kernel's FIB.
    Underlay,
}

/// Where a packet goes after its rewrite.
#[derive(Clone, Copy)]
pub(crate) struct Next {
    /// Which way.
    pub kind: NextKind,
    /// Encap: the peer's underlay address.
    pub node: u32,
    /// Local and Encap: the VNI of the destination's network (`MESH_ONLY_VNI` for a
    /// routing-mesh-only address and for routing-mesh traffic: it travels with the
    /// ingress VNI, see [`Next::wire_vni`]).
    pub vni: u32,
    /// Local: the task's endpoint.
    pub ep: Endpoint,
}

const NO_ENDPOINT: Endpoint = Endpoint {
    node: 0,
    ifindex: 0,
    mac: [0; 6],
    gw_mac: [0; 6],
    vni: 0,
};

impl Next {
    const fn local(ep: Endpoint) -> Self {
        Self {
            kind: NextKind::Local,
            node: 0,
            vni: ep.vni,
            ep,
        }
    }
    const fn encap(node: u32, vni: u32) -> Self {
        Self {
            kind: NextKind::Encap,
            node,
            vni,
            ep: NO_ENDPOINT,
        }
    }
    const UNDERLAY: Self = Self {
        kind: NextKind::Underlay,
        node: 0,
        vni: MESH_ONLY_VNI,
        ep: NO_ENDPOINT,
    };

    /// The VNI an encapsulated packet carries: its destination network's, or the ingress
    /// network's for routing-mesh traffic (a routing-mesh-only address, a Return flow).
    #[inline(always)]
    pub(crate) const fn wire_vni(&self, cfg: &NodeConfig) -> u32 {
        if self.vni == MESH_ONLY_VNI {
            cfg.vni
        } else {
            self.vni
        }
    }
}

/// The verdict of a decision.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Not the mesh's: hand it to the kernel untouched.
    Pass,
    /// Rewrite, then send on.
    Forward,
    /// Drop, counting why.
    Drop,
}

/// The decision for one packet.
#[derive(Clone, Copy)]
pub(crate) struct Decision {
    /// What happens.
    pub verdict: Verdict,
    /// Drop: why.
    pub reason: DropReason,
    /// Forward: the rewrite.
    pub rewrite: Rewrite,
    /// Forward: where to.
    pub next: Next,
    /// Forward: clamp the MSS of a SYN that gets encapsulated.
    pub mss_clamp: bool,
}

impl Decision {
    /// Hand to the kernel.
    pub(crate) const PASS: Self = Self {
        verdict: Verdict::Pass,
        reason: DropReason::Internal,
        rewrite: Rewrite::NONE,
        next: Next::UNDERLAY,
        mss_clamp: false,
    };

    /// Drop for `reason`.
    #[must_use]
    pub(crate) const fn drop(reason: DropReason) -> Self {
        Self {
            verdict: Verdict::Drop,
            reason,
            ..Self::PASS
        }
    }

    /// Rewrite and send on.
    #[must_use]
    pub(crate) const fn forward(rewrite: Rewrite, next: Next, mss_clamp: bool) -> Self {
        Self {
            verdict: Verdict::Forward,
            reason: DropReason::Internal,
            rewrite,
            next,
            mss_clamp,
        }
    }
}

/// This node's settings; a zeroed config (agent not started yet) is returned as `None`.
#[inline(always)]
pub(crate) fn node_config() -> Option<&'static NodeConfig> {
    match LB_NODE_CONFIG.get(0) {
        Some(cfg) if cfg.addr != 0 => Some(cfg),
        _ => None,
    }
}

/// Counts a flow event.
#[inline(always)]
fn count_flow_event(event: FlowEvent) {
    if let Some(v) = LB_FLOW_EVENTS.get_ptr_mut(event as u32) {
        // SAFETY: per-CPU value, only this CPU writes it.
        unsafe { *v += 1 };
    }
}

/// Counts a drop.
#[inline(always)]
pub(crate) fn count_drop(reason: DropReason) {
    if let Some(v) = LB_DROPS.get_ptr_mut(reason as u32) {
        // SAFETY: per-CPU value, only this CPU writes it.
        unsafe { *v += 1 };
    }
}

#[inline(always)]
fn bump(counters: Option<*mut Counters>, bytes: u16, new_flow: bool) {
    if let Some(c) = counters {
        // SAFETY: per-CPU value, only this CPU writes it.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += u64::from(bytes);
            if new_flow {
                (*c).new_flows += 1;
            }
        }
    }
}

#[inline(always)]
pub(crate) fn count(service_id: u32, backend_id: u32, bytes: u16, new_flow: bool) {
    bump(LB_SERVICE_COUNTERS.get_ptr_mut(service_id), bytes, new_flow);
    bump(LB_BACKEND_COUNTERS.get_ptr_mut(backend_id), bytes, new_flow);
}

/// The time flows are stamped with: CLOCK_MONOTONIC as of the last tick
/// (`bpf_ktime_get_coarse_ns`, at most a tick behind `bpf_ktime_get_ns`, and a plain read
/// where that one reads the clock source). Expiry is counted in seconds.
#[inline(always)]
fn now() -> u64 {
    // SAFETY: the helper has no preconditions.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// Notes TCP events and liveness on an existing flow without a map update: a write into
/// the value only when a FIN/RST is new or `last_seen_ns` is over a second old.
///
/// An open TCP connection never expires by idleness (see the agent's sweep), so its
/// `last_seen_ns` only matters once a FIN or RST was seen (the closed entry lingers 10 s
/// after its last packet): until then, its packets read no clock.
#[inline(always)]
fn touch(flow: *mut Flow, proto: u8, tcp_flags: u8, fin_bit: u8) {
    // SAFETY: `flow` points at a live map value; racing writers only store monotonic
    // timestamps and set bits, so a lost update is harmless.
    unsafe {
        if proto == IPPROTO_TCP {
            let mut seen = 0;
            if tcp_flags & TCP_FIN != 0 {
                seen |= fin_bit;
            }
            if tcp_flags & TCP_RST != 0 {
                seen |= Flow::SEEN_RST;
            }
            let tcp = (*flow).tcp;
            if seen != 0 && tcp & seen != seen {
                (*flow).tcp = tcp | seen;
                // The connection starts to end: one fewer active connection of its
                // backend, for least-connections (counted at the new flow).
                if tcp & Flow::SEEN_CLOSING == 0 && (*flow).kind == FlowKind::Forward as u8 {
                    uncount_connection((*flow).backend_id);
                }
            }
            if (tcp | seen) & Flow::SEEN_CLOSING == 0 {
                return;
            }
        }
        let t = now();
        if t.wrapping_sub((*flow).last_seen_ns) > Flow::REFRESH_NS {
            (*flow).last_seen_ns = t;
        }
    }
}

/// The routing generation: the agent adds one after each change of backends or
/// endpoints (see [`Flow::generation`]).
#[inline(always)]
fn routing_generation() -> u32 {
    LB_GENERATION.get(0).copied().unwrap_or(0)
}

/// Where the flow at `flow` (read as `f`) sends its packets, to `dst`: what the entry
/// remembers, if it was found at the `current` generation and is not a local task's
/// (whose veth and MACs the entry does not keep); else the overlay's table, whose
/// answer the entry then remembers with `generation`.
#[inline(always)]
fn remembered_route(
    flow: *mut Flow,
    f: &FlowView,
    dst: u32,
    current: bool,
    generation: u32,
) -> Next {
    if current {
        match f.route {
            Flow::ROUTE_ENCAP => return Next::encap(f.node, f.vni),
            Flow::ROUTE_UNDERLAY => return Next::UNDERLAY,
            _ => {}
        }
    }
    let next = route(dst);
    if !current || f.route == Flow::ROUTE_UNKNOWN {
        // SAFETY: `flow` points at a live map value; racing writers store the same
        // answer for the same generation, and a reader of a half-written one is sent by
        // the table's answer of this generation or the previous.
        unsafe {
            match next.kind {
                NextKind::Encap => {
                    (*flow).node = next.node;
                    (*flow).vni = next.vni;
                    (*flow).route = Flow::ROUTE_ENCAP;
                }
                NextKind::Underlay => (*flow).route = Flow::ROUTE_UNDERLAY,
                NextKind::Local => (*flow).route = Flow::ROUTE_LOCAL,
            }
            (*flow).generation = generation;
        }
    }
    next
}

/// Where a (post-rewrite) destination address lives.
#[inline(always)]
pub(crate) fn route(dst: u32) -> Next {
    // SAFETY: read-only copy of the value.
    match unsafe { LB_ENDPOINTS.get(dst) } {
        Some(ep) if ep.is_local() => Next::local(*ep),
        Some(ep) => Next::encap(ep.node, ep.vni),
        None => Next::UNDERLAY,
    }
}

/// The service a packet is addressed to: a port published on this node, its VIP on that
/// port, or its VIP on every port (port 0 in the key: Swarm's VIPs take every port).
/// On the node's own address, the published port alone is looked up (no VIP is the
/// node's address: the agent refuses one), and only if its bit says it is published:
/// most traffic to the node's own address is not the mesh's (its SSH, its kubelet), and
/// passes on an array read, without a hash lookup.
#[inline(always)]
pub(crate) fn find_service(key: &FlowKey, cfg: &NodeConfig) -> Option<&'static Service> {
    if key.dst_addr == cfg.addr {
        if !is_published(key.dst_port, key.proto) {
            return None;
        }
        return published_service(key);
    }
    let vip = ServiceKey {
        addr: key.dst_addr,
        port: key.dst_port,
        proto: key.proto,
        pad: 0,
    };
    // SAFETY: read-only access to the value.
    if let Some(svc) = unsafe { LB_SERVICES.get(vip) } {
        return Some(svc);
    }
    let any_port = ServiceKey { port: 0, ..vip };
    // SAFETY: as above.
    unsafe { LB_SERVICES.get(any_port) }
}

/// The service of the port `key` is addressed to on the node's own address (published
/// on every node), whose bit the caller checked.
#[inline(always)]
fn published_service(key: &FlowKey) -> Option<&'static Service> {
    let published = ServiceKey {
        addr: 0,
        port: key.dst_port,
        proto: key.proto,
        pad: 0,
    };
    // SAFETY: read-only access to the value.
    unsafe { LB_SERVICES.get(published) }
}

/// Whether the port `port` (network order) of `proto` is published on the node.
#[inline(always)]
fn is_published(port: u16, proto: u8) -> bool {
    match published_bit(port, proto) {
        Some((word, mask)) => LB_PUBLISHED.get(word).is_some_and(|w| w & mask != 0),
        None => false,
    }
}

/// What a new flow's pick hashes: for `maglev` its source address and port and its
/// destination port and protocol, for `sh` its source address (see
/// `lb_common::sched`). The socket programs fill it as far as a socket tells.
#[derive(Clone, Copy)]
pub(crate) struct PickKey {
    /// Source address (network order): the client, never balanced to itself.
    pub src_addr: u32,
    /// Source port (network order).
    pub src_port: u16,
    /// Destination port (network order).
    pub dst_port: u16,
    /// IP protocol.
    pub proto: u8,
}

impl PickKey {
    /// The pick key of a packet's 5-tuple.
    #[inline(always)]
    pub(crate) const fn of(key: &FlowKey) -> Self {
        Self {
            src_addr: key.src_addr,
            src_port: key.src_port,
            dst_port: key.dst_port,
            proto: key.proto,
        }
    }
}

/// This CPU's round-robin cursor of `svc`, advanced.
#[inline(always)]
fn next_cursor(svc: &Service) -> Option<u32> {
    let cursor = LB_RR_CURSORS.get_ptr_mut(svc.id)?;
    // SAFETY: per-CPU value, only this CPU writes it.
    Some(unsafe {
        let pos = *cursor;
        *cursor = pos.wrapping_add(1);
        pos
    })
}

/// Picks a backend of `svc` for a new flow, by the service's scheduler: `rr` takes
/// this CPU's round-robin cursor over the live slot table (weights are already expanded
/// into slots by the agent); `maglev` and `sh` take the slot of the flow's hash in the
/// service's Maglev table; `lc` the least loaded backend ([`pick_least_conn`]). A task
/// connecting to its own service's VIP is not balanced to itself when another backend
/// exists: the task's kernel would drop a packet from its own address.
#[inline(always)]
pub(crate) fn pick_backend(svc: &Service, key: &PickKey) -> Option<(u32, Backend)> {
    let slots = svc.slots;
    if slots == 0 {
        return None;
    }
    let pos = match Scheduler::from_u32(svc.sched) {
        Scheduler::RoundRobin => next_cursor(svc)?,
        Scheduler::Maglev => flow_hash(key.src_addr, key.src_port, key.dst_port, key.proto),
        Scheduler::SourceHash => source_hash(key.src_addr),
        Scheduler::LeastConn => return pick_least_conn(svc, key.src_addr),
    };
    let id = *LB_SLOTS.get(slot_at(svc.base, slots, pos))?;
    // SAFETY: read-only copy.
    let backend = unsafe { *LB_BACKENDS.get(id)? };
    if backend.addr != key.src_addr || slots == 1 {
        return Some((id, backend));
    }
    // The client itself: the next slot of another backend, among the next few (a Maglev
    // table may give one backend several slots in a row).
    let mut found = (id, backend);
    for i in 1..=SELF_SKIP {
        let id = *LB_SLOTS.get(slot_at(svc.base, slots, pos.wrapping_add(i)))?;
        // SAFETY: read-only copy.
        let backend = unsafe { *LB_BACKENDS.get(id)? };
        found = (id, backend);
        if backend.addr != key.src_addr {
            break;
        }
    }
    Some(found)
}

/// How many slots after its own a client's new flow to its own service looks at for
/// another backend.
const SELF_SKIP: u32 = 8;

/// The `lc` pick: among the first [`LC_CANDIDATES`] entries of the service's table
/// (each active backend once) from this CPU's round-robin cursor, the backend with the
/// fewest active connections per unit of weight (`LB_BACKEND_CONNS`); ties go to the
/// first from the cursor, so equal loads still take turns. A service with more backends
/// compares a window of that many, which moves on by one with every new flow.
#[inline(always)]
fn pick_least_conn(svc: &Service, client: u32) -> Option<(u32, Backend)> {
    let slots = svc.slots;
    let pos = next_cursor(svc)?;
    let n = if slots < LC_CANDIDATES {
        slots
    } else {
        LC_CANDIDATES
    };
    // Plain values, no `Option` with a payload: LLVM may spill an unset payload, which
    // the verifier refuses as an uninitialised register (see `Decision`).
    let mut found = false;
    let mut best_id = 0u32;
    let mut best = Backend {
        addr: 0,
        port: 0,
        flags: 0,
        service_id: 0,
        weight: 0,
    };
    let (mut best_conns, mut best_weight) = (0u64, 1u64);
    for i in 0..LC_CANDIDATES {
        if i >= n {
            break;
        }
        let Some(&id) = LB_SLOTS.get(slot_at(svc.base, slots, pos.wrapping_add(i))) else {
            continue;
        };
        // SAFETY: read-only copy.
        let Some(backend) = (unsafe { LB_BACKENDS.get(id) }).copied() else {
            continue;
        };
        if backend.addr == client && slots > 1 {
            continue;
        }
        let conns = match LB_BACKEND_CONNS.get_ptr(id) {
            // SAFETY: a live map value; a torn read is impossible for an aligned u64.
            Some(c) => unsafe { core::ptr::read_volatile(c) },
            None => 0,
        };
        let weight = u64::from(if backend.weight == 0 {
            1
        } else {
            backend.weight
        });
        // conns / weight < best_conns / best_weight, without dividing.
        if !found || conns * best_weight < best_conns * weight {
            found = true;
            best_id = id;
            best = backend;
            best_conns = conns;
            best_weight = weight;
        }
    }
    if found { Some((best_id, best)) } else { None }
}

/// Counts a new flow of an `lc` service as an active connection of its backend.
#[inline(always)]
fn count_connection(svc: &Service, backend_id: u32) {
    if svc.sched != Scheduler::LeastConn as u32 {
        return;
    }
    if let Some(c) = LB_BACKEND_CONNS.get_ptr_mut(backend_id) {
        // SAFETY: a live, aligned map value shared by every CPU. The BPF target has no
        // atomic read-modify-write in Rust's core, so two CPUs that count a new flow of
        // one backend at once may lose one; the agent's sweep recounts from the flow
        // tables, which bounds the drift to one sweep interval.
        unsafe { core::ptr::write_volatile(c, core::ptr::read_volatile(c) + 1) };
    }
}

/// One fewer active connection of backend `backend_id` (its connection's first FIN or
/// RST). Only least-connections services count theirs: a count of 0 stays 0. The agent's
/// sweep recounts from the flow tables (connections whose entries were evicted, UDP
/// flows that went quiet).
#[inline(always)]
fn uncount_connection(backend_id: u32) {
    if let Some(c) = LB_BACKEND_CONNS.get_ptr_mut(backend_id) {
        // SAFETY: as in `count_connection` (a lost update is corrected by the sweep).
        unsafe {
            let n = core::ptr::read_volatile(c);
            if n > 0 {
                core::ptr::write_volatile(c, n - 1);
            }
        }
    }
}

/// A new flow of `svc`: choose a backend and record both directions. A TCP segment
/// without SYN (nor RST) is a connection whose state was lost ([`FlowEvent::Lost`]).
#[inline(always)]
fn new_flow(key: &FlowKey, svc: &Service, tcp_flags: u8, bytes: u16) -> Decision {
    // Read before the backend: the entries are valid as of this generation.
    let generation = routing_generation();
    let Some((backend_id, mut backend)) = pick_backend(svc, &PickKey::of(key)) else {
        return Decision::drop(DropReason::NoBackend);
    };
    // A backend of a VIP's every-port entry keeps the port the client asked for.
    if backend.port == 0 {
        backend.port = key.dst_port;
    }
    let t = now();
    let forward = flow_entry(
        FlowKind::Forward,
        backend_id,
        (backend.addr, backend.port),
        0,
        svc.id,
        t,
        generation,
    );
    let reply_key = key.with_dst(backend.addr, backend.port).reversed();
    let reply = flow_entry(
        FlowKind::Reply,
        backend_id,
        (key.dst_addr, key.dst_port),
        0,
        svc.id,
        t,
        generation,
    );
    // Reply first: by the time the backend can answer, its entry exists. A TCP
    // connection starts in the handshake table (see `handshake`).
    let inserted = if key.proto == IPPROTO_TCP {
        // The entries of an earlier connection on this 5-tuple (closed, or whose backend
        // went) must not outlive it in the flow table, which is looked up first. Looked
        // up before removed: a lookup takes no lock, a removal the bucket's, and there is
        // rarely anything to remove.
        if LB_FLOWS.get_ptr(key).is_some() {
            let _ = LB_FLOWS.remove(key);
        }
        if LB_FLOWS.get_ptr(reply_key).is_some() {
            let _ = LB_FLOWS.remove(reply_key);
        }
        LB_SYN_FLOWS.insert(reply_key, reply, 0).is_ok()
            && LB_SYN_FLOWS.insert(key, forward, 0).is_ok()
    } else {
        LB_FLOWS.insert(reply_key, reply, 0).is_ok() && LB_FLOWS.insert(key, forward, 0).is_ok()
    };
    if !inserted {
        return Decision::drop(DropReason::Internal);
    }
    count(svc.id, backend_id, bytes, true);
    count_connection(svc, backend_id);
    if key.proto == IPPROTO_TCP && tcp_flags & (TCP_SYN | TCP_RST) == 0 {
        count_flow_event(FlowEvent::Lost);
    }
    Decision::forward(
        Rewrite {
            kind: NatKind::Dnat,
            addr: backend.addr,
            port: backend.port,
        },
        route(backend.addr),
        svc.flags & Service::FLAG_MSS_CLAMP != 0,
    )
}

/// A flow entry with every field written, as six 8-byte volatile stores: a struct
/// literal's zero fields (`..Flow::default()`, or written out) become a `memset` call,
/// which the BPF target compiles to a loop of one-byte stores.
#[inline(always)]
fn flow_entry(
    kind: FlowKind,
    backend_id: u32,
    nat: (u32, u16),
    node: u32,
    service_id: u32,
    t: u64,
    generation: u32,
) -> Flow {
    const _: () = assert!(size_of::<Flow>() == 48 && cfg!(target_endian = "little"));
    // No route remembered yet (ROUTE_UNKNOWN): the first packet that needs it finds it.
    let words = [
        kind as u64 | u64::from(backend_id) << 32,
        u64::from(nat.0) | u64::from(nat.1) << 32,
        u64::from(node) | u64::from(service_id) << 32,
        t,
        t,
        u64::from(generation),
    ];
    let mut flow = MaybeUninit::<Flow>::uninit();
    let base = flow.as_mut_ptr().cast::<u64>();
    let mut i = 0;
    while i < words.len() {
        // SAFETY: `Flow` is 48 bytes, `repr(C)` with 8-byte alignment (it holds u64s):
        // six aligned words, little-endian as the layout assumes (kind, tcp, route, pad,
        // backend_id | nat_addr, nat_port, pad2 | node, service_id | created | last_seen
        // | generation, vni).
        unsafe { base.add(i).write_volatile(words[i]) };
        i += 1;
    }
    // SAFETY: every byte written above; plain old data.
    unsafe { flow.assume_init() }
}

/// The fields of a flow entry that the packet path reads, loaded one by one: copying
/// the whole 48-byte `Flow` out of the map is a `memmove` call, which the BPF target
/// compiles to a loop of one-byte copies (on every established packet).
#[derive(Clone, Copy)]
struct FlowView {
    kind: u8,
    tcp: u8,
    route: u8,
    generation: u32,
    vni: u32,
    backend_id: u32,
    nat_addr: u32,
    nat_port: u16,
    node: u32,
    service_id: u32,
}

impl FlowView {
    #[inline(always)]
    fn read(flow: *const Flow) -> Self {
        // SAFETY: `flow` points at a live map value (RCU keeps it valid while the
        // program runs); plain loads of its fields.
        unsafe {
            Self {
                kind: (*flow).kind,
                tcp: (*flow).tcp,
                route: (*flow).route,
                generation: (*flow).generation,
                vni: (*flow).vni,
                backend_id: (*flow).backend_id,
                nat_addr: (*flow).nat_addr,
                nat_port: (*flow).nat_port,
                node: (*flow).node,
                service_id: (*flow).service_id,
            }
        }
    }

    #[inline(always)]
    const fn kind(&self) -> Option<FlowKind> {
        FlowKind::from_u8(self.kind)
    }

    #[inline(always)]
    const fn tcp_closed(&self) -> bool {
        Flow::closes(self.tcp)
    }
}

/// Sets TCP event bits on the other direction's entry too, so that each entry alone tells
/// the agent's sweep whether the connection is closed. Runs only on FIN/RST packets.
#[inline(always)]
fn mirror_tcp_close(sibling: &FlowKey, tcp_flags: u8, fin_bit: u8) {
    if tcp_flags & (TCP_FIN | TCP_RST) == 0 {
        return;
    }
    // The sibling is where this entry is: in the flow table, or still in the handshake
    // table (a connection closed before its handshake completed).
    if let Some(other) = LB_FLOWS.get_ptr_mut(sibling) {
        touch(other, IPPROTO_TCP, tcp_flags, fin_bit);
    } else if let Some(other) = LB_SYN_FLOWS.get_ptr_mut(sibling) {
        touch(other, IPPROTO_TCP, tcp_flags, fin_bit);
    }
}

/// A packet of a flow we have state for, looked up by its own 5-tuple.
#[inline(always)]
fn existing(key: &FlowKey, flow: *mut Flow, tcp_flags: u8, bytes: u16) -> Option<Decision> {
    let f = FlowView::read(flow);
    match f.kind()? {
        // A new connection on the 5-tuple of a closed one (the client's port came round
        // again while the entry waits for the sweep) is a new flow: it must not follow
        // the old one to a backend that may be draining or stopped by now.
        FlowKind::Forward
            if key.proto == IPPROTO_TCP
                && tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
                && f.tcp_closed() =>
        {
            None
        }
        FlowKind::Forward => {
            // Read before the maps: what is checked below is valid as of this generation.
            let generation = routing_generation();
            // While the agent changed no backend or endpoint, the backend found valid at
            // the entry's generation still is, and so is the route remembered then. A SYN
            // always checks (a retransmitted SYN to a draining backend, below).
            let current = f.generation == generation && tcp_flags & TCP_SYN == 0;
            if !current {
                // The backend must still exist with the same address; a removed backend's
                // flows are reassigned (the new backend answers a stray TCP segment with
                // RST, which tells the client at once instead of leaving it hanging).
                // SAFETY: read-only copy.
                let backend = unsafe { LB_BACKENDS.get(f.backend_id) }.copied();
                match backend {
                    // A retransmitted SYN of a connection whose backend now drains (the
                    // first SYN went there just before this node learned it drains, and
                    // got no answer: the task may be stopping) is balanced again, to a
                    // backend that takes new flows.
                    Some(b)
                        if b.flags & Backend::FLAG_DRAINING != 0
                            && key.proto == IPPROTO_TCP
                            && tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN =>
                    {
                        return None;
                    }
                    // Ids are recycled: the same id must still mean the same backend.
                    Some(b)
                        if b.addr == f.nat_addr
                            && (b.port == f.nat_port || b.port == 0)
                            && b.service_id == f.service_id => {}
                    _ => return None,
                }
            }
            touch(flow, key.proto, tcp_flags, Flow::SEEN_FIN_FWD);
            let reply_key = key.with_dst(f.nat_addr, f.nat_port).reversed();
            mirror_tcp_close(&reply_key, tcp_flags, Flow::SEEN_FIN_FWD);
            count(f.service_id, f.backend_id, bytes, false);
            Some(Decision::forward(
                Rewrite {
                    kind: NatKind::Dnat,
                    addr: f.nat_addr,
                    port: f.nat_port,
                },
                remembered_route(flow, &f, f.nat_addr, current, generation),
                false,
            ))
        }
        FlowKind::Reply => {
            let generation = routing_generation();
            touch(flow, key.proto, tcp_flags, Flow::SEEN_FIN_REV);
            let forward_key = key.with_src(f.nat_addr, f.nat_port).reversed();
            mirror_tcp_close(&forward_key, tcp_flags, Flow::SEEN_FIN_REV);
            count(f.service_id, f.backend_id, bytes, false);
            Some(Decision::forward(
                Rewrite {
                    kind: NatKind::Snat,
                    addr: f.nat_addr,
                    port: f.nat_port,
                },
                remembered_route(
                    flow,
                    &f,
                    key.dst_addr,
                    f.generation == generation,
                    generation,
                ),
                false,
            ))
        }
        FlowKind::Return => {
            touch(flow, key.proto, tcp_flags, Flow::SEEN_FIN_REV);
            // Routing-mesh traffic: back with the ingress VNI.
            Some(Decision::forward(
                Rewrite::NONE,
                Next::encap(f.node, MESH_ONLY_VNI),
                false,
            ))
        }
    }
}

/// A packet of a TCP connection in its handshake, found in `LB_SYN_FLOWS`. The task's
/// answer (through a Reply or Return entry) marks the entry; the client's ACK that
/// follows completes the handshake, and the connection's entries move to `LB_FLOWS`. A
/// flood of SYNs from many addresses (whose SYN-ACKs nobody acknowledges) so churns the
/// handshake table only, and never evicts an established flow.
#[inline(always)]
fn handshake(key: &FlowKey, flow: *mut Flow, tcp_flags: u8, bytes: u16) -> Option<Decision> {
    let f = FlowView::read(flow);
    match f.kind()? {
        FlowKind::Reply | FlowKind::Return => {
            // SAFETY: as in `touch`: setting a bit, a lost update is harmless.
            unsafe {
                if (*flow).tcp & Flow::SEEN_REPLY == 0 {
                    (*flow).tcp |= Flow::SEEN_REPLY;
                }
            }
            existing(key, flow, tcp_flags, bytes)
        }
        FlowKind::Forward => {
            if tcp_flags & (TCP_SYN | TCP_ACK) == TCP_ACK {
                let reply_key = key.with_dst(f.nat_addr, f.nat_port).reversed();
                // The entries move by reference: the helper copies the value from one
                // map into the other (a copy here would be a byte-loop `memmove`).
                // SAFETY: `flow` points at a live map value.
                let entry: &Flow = unsafe { &*flow };
                // SAFETY: read-only access to the value.
                if let Some(reply) = unsafe { LB_SYN_FLOWS.get(reply_key) }
                    && reply.tcp & Flow::SEEN_REPLY != 0
                    && LB_FLOWS.insert(reply_key, reply, 0).is_ok()
                    && LB_FLOWS.insert(key, entry, 0).is_ok()
                {
                    let _ = LB_SYN_FLOWS.remove(reply_key);
                    let _ = LB_SYN_FLOWS.remove(key);
                    if let Some(established) = LB_FLOWS.get_ptr_mut(key) {
                        return existing(key, established, tcp_flags, bytes);
                    }
                }
            }
            existing(key, flow, tcp_flags, bytes)
        }
    }
}

/// The decision for a packet of a flow with state: an established one, or a TCP
/// connection in its handshake.
#[inline(always)]
fn known(key: &FlowKey, tcp_flags: u8, bytes: u16) -> Option<Decision> {
    if let Some(flow) = LB_FLOWS.get_ptr_mut(key)
        && let Some(d) = existing(key, flow, tcp_flags, bytes)
    {
        return Some(d);
    }
    if key.proto == IPPROTO_TCP
        && let Some(flow) = LB_SYN_FLOWS.get_ptr_mut(key)
    {
        return handshake(key, flow, tcp_flags, bytes);
    }
    None
}

/// A packet arriving from outside the node, not encapsulated: published ports and VIPs.
#[inline(always)]
pub(crate) fn from_underlay(
    key: &FlowKey,
    cfg: &NodeConfig,
    tcp_flags: u8,
    bytes: u16,
) -> Decision {
    // A published port: its bit says the packet is the mesh's, so an established flow is
    // found first, and only a new one pays the service's lookup.
    if key.dst_addr == cfg.addr {
        if !is_published(key.dst_port, key.proto) {
            return Decision::PASS;
        }
        if let Some(d) = known(key, tcp_flags, bytes) {
            return d;
        }
        return match published_service(key) {
            Some(svc) => new_flow(key, svc, tcp_flags, bytes),
            None => Decision::PASS,
        };
    }
    let Some(svc) = find_service(key, cfg) else {
        return Decision::PASS;
    };
    if let Some(d) = known(key, tcp_flags, bytes) {
        return d;
    }
    // From outside, the default network's VIPs: a user network's VIP
    // is reached from that network only.
    if svc.vni != cfg.vni {
        return Decision::drop(DropReason::Isolation);
    }
    new_flow(key, svc, tcp_flags, bytes)
}

/// Whether a task may start a flow from `src`, sending on the veth `ifindex`, to
/// something on network `vni` (a VIP, or a task address): `src` is a local task's
/// address on that very veth (not one a task forged: a raw socket could otherwise reach
/// any network by another task's address), both are on the same network, and not a
/// routing-mesh-only one. Costs one endpoint lookup, paid by new flows and by
/// task-to-task packets routed by address (which have no flow entry), never by a flow
/// found in the flow tables.
#[inline(always)]
fn same_network(src: u32, ifindex: u32, vni: u32) -> bool {
    if vni == MESH_ONLY_VNI {
        return false;
    }
    // SAFETY: read-only access to the value.
    match unsafe { LB_ENDPOINTS.get(src) } {
        Some(ep) => ep.vni == vni && ep.is_local() && ep.ifindex == ifindex,
        None => false,
    }
}

/// A packet leaving a local task (TC on the host side of its veth, `ifindex`).
#[inline(always)]
pub(crate) fn from_task(
    key: &FlowKey,
    cfg: &NodeConfig,
    ifindex: u32,
    tcp_flags: u8,
    bytes: u16,
) -> Decision {
    if let Some(d) = known(key, tcp_flags, bytes) {
        return d;
    }
    if let Some(svc) = find_service(key, cfg) {
        if !same_network(key.src_addr, ifindex, svc.vni) {
            return Decision::drop(DropReason::Isolation);
        }
        return new_flow(key, svc, tcp_flags, bytes);
    }
    let next = route(key.dst_addr);
    match next.kind {
        NextKind::Underlay => Decision::PASS,
        _ if !same_network(key.src_addr, ifindex, next.vni) => {
            Decision::drop(DropReason::Isolation)
        }
        _ => Decision::forward(Rewrite::NONE, next, false),
    }
}

/// Whether a packet that came out of the tunnel with `vni` may reach the local address
/// on network `dst_vni`: its own network's VNI; or the ingress VNI to a
/// routing-mesh-only address from a client, not a task (`src_is_task`, asked only then:
/// routing-mesh traffic, a published port's flow through another node).
#[inline(always)]
fn admits(vni: u32, dst_vni: u32, cfg: &NodeConfig, src_is_task: impl FnOnce() -> bool) -> bool {
    if vni == dst_vni {
        return dst_vni != MESH_ONLY_VNI;
    }
    dst_vni == MESH_ONLY_VNI && vni == cfg.vni && !src_is_task()
}

/// Whether `addr` is a task address this node knows.
#[inline(always)]
fn is_task(addr: u32) -> bool {
    // SAFETY: read-only access.
    unsafe { LB_ENDPOINTS.get(addr) }.is_some()
}

/// Vets the decision for a decapsulated packet of a known flow against its VNI: to a
/// local task, as [`admits`] says; anywhere else (a client of the routing mesh), only
/// with the ingress VNI. Uses the endpoint the decision already looked up: an
/// established flow pays no extra lookup.
#[inline(always)]
fn vet_overlay(d: Decision, key: &FlowKey, vni: u32, cfg: &NodeConfig) -> Decision {
    if d.verdict != Verdict::Forward {
        return d;
    }
    match d.next.kind {
        NextKind::Local if admits(vni, d.next.vni, cfg, || is_task(key.src_addr)) => d,
        NextKind::Local => Decision::drop(DropReason::Isolation),
        _ if vni == cfg.vni => d,
        _ => Decision::drop(DropReason::UnknownVni),
    }
}

/// A packet that came out of a VXLAN tunnel with `vni` from the peer at `outer_src`.
///
/// The VNI must be the local destination's ([`admits`]); a packet to anything else
/// comes with the ingress VNI. Refused: `isolation` for a local task, `unknown_vni`
/// otherwise. (A refused packet that matches a known flow is vetted after the lookup
/// that found the flow, so it may have refreshed that entry's timestamp.)
#[inline(always)]
pub(crate) fn from_overlay(
    key: &FlowKey,
    outer_src: u32,
    vni: u32,
    cfg: &NodeConfig,
    tcp_flags: u8,
    bytes: u16,
) -> Decision {
    if let Some(d) = known(key, tcp_flags, bytes) {
        return vet_overlay(d, key, vni, cfg);
    }
    let next = route(key.dst_addr);
    if next.kind != NextKind::Local {
        return Decision::drop(if vni == cfg.vni {
            DropReason::NoEndpoint
        } else {
            DropReason::UnknownVni
        });
    }
    let src_is_task = is_task(key.src_addr);
    if !admits(vni, next.vni, cfg, || src_is_task) {
        return Decision::drop(DropReason::Isolation);
    }
    // A flow from outside the overlay (a client that reached the sender's published port):
    // its replies must go back through the sender, so remember it. Established flows
    // only look the entry up.
    if !src_is_task {
        let reverse = key.reversed();
        match LB_FLOWS.get_ptr_mut(reverse) {
            Some(ret) if continues(ret, outer_src, key.proto, tcp_flags) => {
                touch(ret, key.proto, tcp_flags, Flow::SEEN_FIN_FWD);
            }
            // Another connection's entry (through another node) holds the key: see
            // `return_handshake`.
            Some(_) if key.proto == IPPROTO_TCP && !is_syn(tcp_flags) => {}
            _ if key.proto == IPPROTO_TCP => {
                if !return_handshake(&reverse, outer_src, tcp_flags) {
                    return Decision::drop(DropReason::Internal);
                }
            }
            _ => {
                if LB_FLOWS.insert(reverse, return_flow(outer_src), 0).is_err() {
                    return Decision::drop(DropReason::Internal);
                }
            }
        }
    }
    Decision::forward(Rewrite::NONE, next, false)
}

/// Whether a packet through `node` continues the connection whose Return entry is at
/// `ret`: the entry is towards `node`, and the packet is not a SYN on a closed
/// connection's entry. Such a SYN opens a new connection, whose entry starts afresh: the
/// closed one's FIN bits would have the sweep remove it from under the new connection.
#[inline(always)]
fn continues(ret: *mut Flow, node: u32, proto: u8, tcp_flags: u8) -> bool {
    let f = FlowView::read(ret);
    f.node == node && !(proto == IPPROTO_TCP && is_syn(tcp_flags) && f.tcp_closed())
}

/// A TCP segment that opens a connection: SYN without ACK.
#[inline(always)]
const fn is_syn(tcp_flags: u8) -> bool {
    tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
}

/// A Return entry: replies go back through `node`.
#[inline(always)]
fn return_flow(node: u32) -> Flow {
    flow_entry(FlowKind::Return, 0, (0, 0), node, 0, now(), 0)
}

/// The Return entry (`reverse`) of a TCP connection from outside the overlay, on the
/// node of its task: kept in the handshake table until the client's ACK follows the
/// task's answer, then moved to `LB_FLOWS` (as `handshake` does for the other kinds).
/// `false` if an entry could not be written.
///
/// The key is (task address and port, client address and port): a client that reaches
/// the same task from the same port through two nodes gives both connections one key
/// here (its kernel lets a port go to a new destination while the connection through
/// the other node still closes). Only a SYN, which opens a connection, takes the key
/// over from an entry towards another node (or a local Reply). Any other segment
/// through `node` that finds one is a late packet of the earlier connection (its last
/// ACK, its FIN, a retransmission): it reaches the task without touching the entry,
/// which belongs to the newer connection. Were it to replace the entry, the task's
/// answers to the newer connection (its SYN-ACK, every retransmission of it) would go
/// to `node` and on to the client's closed earlier socket, and the newer connection
/// would never complete.
#[inline(always)]
fn return_handshake(reverse: &FlowKey, node: u32, tcp_flags: u8) -> bool {
    match LB_SYN_FLOWS.get_ptr_mut(reverse) {
        Some(ret) if continues(ret, node, IPPROTO_TCP, tcp_flags) => {
            if tcp_flags & (TCP_SYN | TCP_ACK) == TCP_ACK
                && FlowView::read(ret).tcp & Flow::SEEN_REPLY != 0
            {
                // SAFETY: `ret` points at a live map value, passed by reference (a copy
                // would be a byte-loop `memmove`).
                let entry: &Flow = unsafe { &*ret };
                if LB_FLOWS.insert(reverse, entry, 0).is_err() {
                    return false;
                }
                let _ = LB_SYN_FLOWS.remove(reverse);
            } else {
                touch(ret, IPPROTO_TCP, tcp_flags, Flow::SEEN_FIN_FWD);
            }
            true
        }
        // A newer connection's handshake (through another node) holds the key.
        Some(_) if !is_syn(tcp_flags) => true,
        _ => {
            // An entry of an earlier connection under this key (another ingress node's,
            // or a closed flow's) must not stay in the flow table, which is looked up
            // first: the task's answers would follow it.
            let _ = LB_FLOWS.remove(reverse);
            LB_SYN_FLOWS.insert(reverse, return_flow(node), 0).is_ok()
        }
    }
}
