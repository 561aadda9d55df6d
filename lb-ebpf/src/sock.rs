//! Socket-level load balancing of the node's own connections to its published ports
//! (P4): `cgroup/connect4`, `sendmsg4`, `recvmsg4` and `getpeername4` on the root of
//! the cgroup v2 hierarchy.
//!
//! XDP sees only frames from the wire, so a process on the node that connects to
//! `127.0.0.1:PORT` or to the node's underlay address never reaches the dataplane. Here
//! the destination is rewritten when the socket connects (TCP, and UDP sockets that
//! connect) or sends an unconnected datagram, before the kernel picks a route or a
//! source address, so no packet needs NAT: a backend on this node is connected to
//! directly (its address and target port, through the host route on its veth), one on a
//! peer through that peer's published port, whose XDP balances it as any client of the
//! routing mesh. Where a socket or a datagram went is recorded per socket
//! (`LB_SOCK_ORIGINS`): `getpeername4` names the address the application used as the
//! socket's peer, and `recvmsg4` shows UDP answers as coming from it, as a resolver or
//! any client that checks the source expects.
//!
//! The program sees every socket of every network namespace whose processes sit in the
//! cgroup tree (on a test machine, every node's namespace and every task's). It acts
//! only in the agent's own namespace, [`LB_NETNS_COOKIE`]; every other socket is left
//! alone, so tasks, which have namespaces of their own, connect as before.

use aya_ebpf::{
    EbpfContext, Global,
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    programs::SockAddrContext,
};
use lb_common::{IPPROTO_TCP, IPPROTO_UDP, Scheduler, ServiceKey, SockKey, SockOrigin};

use crate::{
    decide,
    maps::{LB_ENDPOINTS, LB_SERVICES, LB_SOCK_ORIGINS},
};

/// The cookie of the network namespace the agent runs in, set by the agent at load
/// (`bpf_get_netns_cookie`'s value there, `SO_NETNS_COOKIE`); 0 (never a namespace's
/// cookie) leaves every socket alone.
#[unsafe(no_mangle)]
static LB_NETNS_COOKIE: Global<u64> = Global::new(0);

/// `127.0.0.1` in network order, as `bpf_sock_addr::user_ip4` holds it.
const LOOPBACK: u32 = u32::from_ne_bytes([127, 0, 0, 1]);

/// The verdict that lets the connect go on (rewritten or not).
const ALLOW: i32 = 1;

/// Whether the socket of `ctx` lives in the agent's own network namespace.
#[inline(always)]
fn in_node_namespace(ctx: &SockAddrContext) -> bool {
    let own = LB_NETNS_COOKIE.load();
    // SAFETY: the helper takes the program's context.
    own != 0 && unsafe { bpf_get_netns_cookie(ctx.as_ptr()) } == own
}

/// Balances a connect (`connect4`) or an unconnected datagram (`sendmsg4`) addressed to
/// a port published on this node: rewrites its destination to the chosen backend, and
/// records where it went, for [`origin`].
#[inline(always)]
pub(crate) fn balance(ctx: &SockAddrContext) -> i32 {
    if !in_node_namespace(ctx) {
        return ALLOW;
    }
    let Some(cfg) = decide::node_config() else {
        return ALLOW;
    };
    // SAFETY: the kernel hands a valid context; these fields are readable here.
    let (dst, user_port, proto) = unsafe {
        let sa = &*ctx.sock_addr;
        (sa.user_ip4, sa.user_port, sa.protocol)
    };
    if dst != LOOPBACK && dst != cfg.addr {
        return ALLOW;
    }
    let proto = match proto {
        p if p == u32::from(IPPROTO_TCP) => IPPROTO_TCP,
        p if p == u32::from(IPPROTO_UDP) => IPPROTO_UDP,
        _ => return ALLOW,
    };
    // `user_port` holds the port in network order in its low 16 bits.
    let port = user_port as u16;
    let key = ServiceKey {
        addr: 0,
        port,
        proto,
        pad: 0,
    };
    // SAFETY: read-only access to the value.
    let Some(svc) = (unsafe { LB_SERVICES.get(key) }) else {
        return ALLOW;
    };
    // What the pick hashes: the socket has no source port before it connects, so its
    // cookie (unique per socket) stands in for the source port and address under
    // `maglev`; under `sh` the client is the node itself, whose connections then all go
    // to one backend.
    // SAFETY: the helper takes the program's context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let pick = decide::PickKey {
        src_addr: if svc.sched == Scheduler::SourceHash as u32 {
            cfg.addr
        } else {
            (cookie >> 16) as u32 ^ cfg.addr
        },
        src_port: cookie as u16,
        dst_port: port,
        proto,
    };
    // Draining backends have no slots: they get no new connections.
    let Some((backend_id, backend)) = decide::pick_backend(svc, &pick) else {
        return ALLOW;
    };
    // SAFETY: read-only copy of the value.
    let Some(ep) = (unsafe { LB_ENDPOINTS.get(backend.addr) }).copied() else {
        return ALLOW;
    };
    let (addr, to_port) = if ep.is_local() {
        decide::count(svc.id, backend_id, 0, true);
        (
            backend.addr,
            if backend.port == 0 {
                port
            } else {
                backend.port
            },
        )
    } else {
        (ep.node, port)
    };
    {
        let went = SockKey {
            cookie,
            addr,
            port: to_port,
            pad: 0,
        };
        let origin = SockOrigin {
            addr: dst,
            port,
            pad: 0,
        };
        // Without the entry the answers still arrive, from the backend's address, and
        // `getpeername` names the backend.
        let _ = LB_SOCK_ORIGINS.insert(went, origin, 0);
    }
    // SAFETY: `user_ip4` and `user_port` are writable in connect4 and sendmsg4.
    unsafe {
        let sa = &mut *ctx.sock_addr;
        sa.user_ip4 = addr;
        sa.user_port = u32::from(to_port);
    }
    ALLOW
}

/// Shows the address of a balanced socket's peer (`getpeername4`) or of an answer to a
/// balanced datagram (`recvmsg4`: `recvfrom`'s source) as the address the application
/// had used.
#[inline(always)]
pub(crate) fn origin(ctx: &SockAddrContext) -> i32 {
    if !in_node_namespace(ctx) {
        return ALLOW;
    }
    // SAFETY: the kernel hands a valid context; these fields are readable here.
    let (src, src_port) = unsafe {
        let sa = &*ctx.sock_addr;
        (sa.user_ip4, sa.user_port)
    };
    let key = SockKey {
        // SAFETY: the helper takes the program's context.
        cookie: unsafe { bpf_get_socket_cookie(ctx.as_ptr()) },
        addr: src,
        port: src_port as u16,
        pad: 0,
    };
    // SAFETY: read-only copy of the value.
    let Some(origin) = (unsafe { LB_SOCK_ORIGINS.get(key) }).copied() else {
        return ALLOW;
    };
    // SAFETY: `user_ip4` and `user_port` are writable in recvmsg4 and getpeername4.
    unsafe {
        let sa = &mut *ctx.sock_addr;
        sa.user_ip4 = origin.addr;
        sa.user_port = u32::from(origin.port);
    }
    ALLOW
}
