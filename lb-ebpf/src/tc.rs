//! TC on the host side of each local task's veth (clsact ingress: traffic leaving the
//! task). East-west load balancing to VIPs, replies of mesh flows (back to the client
//! through the underlay, or back through the ingress node's tunnel), and overlay routing
//! to tasks on this node or on peers. Everything else continues into the node's stack.
//!
//! Packets from a local stack usually carry a partial checksum (`CHECKSUM_PARTIAL`), so
//! rewrites go through the kernel's checksum helpers, which know how to update one; and
//! encapsulation uses `bpf_skb_adjust_room` with the encap flags, which keeps TSO/GSO
//! super-packets segmentable as UDP-tunnelled traffic.

use aya_ebpf::{
    bindings::{
        BPF_F_ADJ_ROOM_ENCAP_L2_ETH, BPF_F_ADJ_ROOM_ENCAP_L3_IPV4, BPF_F_ADJ_ROOM_ENCAP_L4_UDP,
        BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, TC_ACT_OK, TC_ACT_SHOT,
        bpf_adj_room_mode::BPF_ADJ_ROOM_MAC,
    },
    helpers::{bpf_redirect, bpf_redirect_neigh},
    programs::TcContext,
};
use lb_common::{DropReason, IPPROTO_TCP, NodeConfig, VXLAN_OVERHEAD, service::task_mac};
use network_types::eth::EthHdr;

use crate::{
    decide::{self, NatKind, NextKind, Rewrite, Verdict, count_drop},
    packet::{Ipv4Packet, parse_ipv4},
    vxlan,
};

/// Bytes of headers the program reads directly: Ethernet, IPv4 with options, L4 ports.
const HEADERS: u32 = 14 + 60 + 20;

/// The program's entry: never fails, every error becomes a verdict.
#[inline(always)]
pub(crate) fn handle(ctx: &TcContext) -> i32 {
    let Some(cfg) = decide::node_config() else {
        return TC_ACT_OK;
    };
    // Make the headers directly readable (they may sit in paged fragments).
    if ctx.data() + (HEADERS as usize) > ctx.data_end() {
        let _ = ctx.pull_data(ctx.len().min(HEADERS));
    }
    let Ok(pkt) = parse_ipv4(ctx.data(), ctx.data_end(), ctx.len() as usize) else {
        return TC_ACT_OK;
    };
    if pkt.fragment {
        return TC_ACT_OK;
    }
    // SAFETY: reading a plain field of the context: the veth the packet came in on.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let decision = decide::from_task(&pkt.key, cfg, ifindex, pkt.tcp_flags, pkt.tot_len);
    match decision.verdict {
        Verdict::Pass => TC_ACT_OK,
        Verdict::Drop => drop(decision.reason),
        Verdict::Forward => {
            if nat(ctx, &pkt, decision.rewrite).is_none() {
                return drop(DropReason::Internal);
            }
            let next = decision.next;
            match next.kind {
                NextKind::Local => {
                    let ep = next.ep;
                    let macs = Macs {
                        dst: ep.mac,
                        src: ep.gw_mac,
                    };
                    if ctx.store(0, &macs, 0).is_err() {
                        return drop(DropReason::Internal);
                    }
                    // SAFETY: the helper has no memory preconditions.
                    unsafe { bpf_redirect(ep.ifindex, 0) as i32 }
                }
                NextKind::Encap => {
                    let inner_dst = match decision.rewrite.kind {
                        NatKind::Dnat => decision.rewrite.addr,
                        _ => pkt.key.dst_addr,
                    };
                    encapsulate(ctx, cfg, &pkt, next.node, next.wire_vni(cfg), inner_dst)
                }
                NextKind::Underlay => redirect_underlay(cfg),
            }
        }
    }
}

#[inline(always)]
fn drop(reason: DropReason) -> i32 {
    count_drop(reason);
    TC_ACT_SHOT
}

/// Destination and source MAC, the first 12 bytes of a frame.
#[repr(C)]
struct Macs {
    dst: [u8; 6],
    src: [u8; 6],
}

/// Out of the underlay interface; the kernel's neighbour subsystem fills in the MACs
/// (and resolves them if needed), so no FIB miss is possible here.
#[inline(always)]
fn redirect_underlay(cfg: &NodeConfig) -> i32 {
    // SAFETY: a null params pointer with length 0 is the documented "use the FIB" form.
    unsafe { bpf_redirect_neigh(cfg.ifindex, core::ptr::null_mut(), 0, 0) as i32 }
}

/// Rewrites an address and port through the kernel's checksum helpers.
#[inline(always)]
fn nat(ctx: &TcContext, pkt: &Ipv4Packet, rewrite: Rewrite) -> Option<()> {
    let dnat = match rewrite.kind {
        NatKind::None => return Some(()),
        NatKind::Dnat => true,
        NatKind::Snat => false,
    };
    let (addr, port) = (rewrite.addr, rewrite.port);
    let (old_addr, addr_at, old_port, port_at) = if dnat {
        (
            pkt.key.dst_addr,
            EthHdr::LEN + 16,
            pkt.key.dst_port,
            pkt.l4 + 2,
        )
    } else {
        (pkt.key.src_addr, EthHdr::LEN + 12, pkt.key.src_port, pkt.l4)
    };
    let (check_at, mangled) = if pkt.key.proto == IPPROTO_TCP {
        (pkt.l4 + 16, 0)
    } else {
        (pkt.l4 + 6, u64::from(BPF_F_MARK_MANGLED_0))
    };
    let (old_a, new_a) = (u64::from(old_addr), u64::from(addr));
    let (old_p, new_p) = (u64::from(old_port), u64::from(port));
    let pseudo = u64::from(BPF_F_PSEUDO_HDR);
    ctx.l4_csum_replace(check_at, old_a, new_a, pseudo | mangled | 4)
        .ok()?;
    ctx.l4_csum_replace(check_at, old_p, new_p, mangled | 2)
        .ok()?;
    ctx.l3_csum_replace(EthHdr::LEN + 10, old_a, new_a, 4)
        .ok()?;
    ctx.store(addr_at, &addr, 0).ok()?;
    ctx.store(port_at, &port, 0).ok()?;
    Some(())
}

/// What goes between the outer Ethernet header and the inner IPv4 packet.
#[repr(C)]
struct Tunnel {
    tunnel: [u8; 36],
    inner_dst: [u8; 6],
    inner_src: [u8; 6],
    inner_type: [u8; 2],
}

/// VXLAN-encapsulates towards the peer at `node` on `vni` and sends it out of the
/// underlay; `inner_dst` is the packet's destination after its rewrite.
#[inline(always)]
fn encapsulate(
    ctx: &TcContext,
    cfg: &NodeConfig,
    pkt: &Ipv4Packet,
    node: u32,
    vni: u32,
    inner_dst: u32,
) -> i32 {
    // SAFETY: reading a plain field of the context.
    let gso_size = unsafe { (*ctx.skb.skb).gso_size };
    let outer_len = u32::from(pkt.tot_len) + u32::from(VXLAN_OVERHEAD);
    if gso_size == 0 && outer_len > cfg.mtu {
        return drop(DropReason::TooBig);
    }
    let t = Tunnel {
        tunnel: vxlan::tunnel_header(cfg, node, vni, pkt),
        inner_dst: task_mac(u32::from_be(inner_dst)),
        inner_src: cfg.mac,
        inner_type: 0x0800_u16.to_be_bytes(),
    };

    let flags = u64::from(
        BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 | BPF_F_ADJ_ROOM_ENCAP_L4_UDP | BPF_F_ADJ_ROOM_ENCAP_L2_ETH,
    ) | ((EthHdr::LEN as u64 & 0xff) << 56);
    if ctx
        .adjust_room(i32::from(VXLAN_OVERHEAD), BPF_ADJ_ROOM_MAC, flags)
        .is_err()
    {
        return drop(DropReason::Internal);
    }
    if ctx.store(EthHdr::LEN, &t, 0).is_err() {
        return drop(DropReason::Internal);
    }
    redirect_underlay(cfg)
}
