//! XDP on the node's underlay interface: the routing mesh's ingress (published ports and
//! VIPs from outside), VXLAN decapsulation of overlay traffic, replies of mesh flows back
//! to clients, and encapsulation towards peers. Everything else passes untouched.

use core::mem::{MaybeUninit, size_of};

use aya_ebpf::{
    EbpfContext,
    bindings::{
        BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LOOKUP_OUTPUT, bpf_fib_lookup,
        xdp_action::{XDP_DROP, XDP_PASS, XDP_TX},
    },
    helpers::{
        bpf_fib_lookup as fib_lookup, bpf_redirect, bpf_xdp_adjust_head,
        generated::bpf_ktime_get_coarse_ns,
    },
    programs::XdpContext,
};
use lb_common::{
    DropReason, IPPROTO_TCP, IPPROTO_UDP, NextHop, NextHopKey, NodeConfig, VXLAN_OVERHEAD,
    service::task_mac,
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr, udp::UdpHdr, vxlan::VxlanHdr};

use crate::{
    csum,
    decide::{self, Decision, NatKind, NextKind, Rewrite, TCP_SYN, Verdict, count_drop},
    maps::LB_NEXT_HOPS,
    packet::{Ipv4Packet, ParseError, parse_ipv4, ptr_at},
    vxlan,
};

const AF_INET: u8 = 2;

/// The program's entry: never fails, every error becomes a verdict.
#[inline(always)]
pub(crate) fn handle(ctx: &XdpContext) -> u32 {
    let Some(cfg) = decide::node_config() else {
        return XDP_PASS;
    };
    let (start, end) = (ctx.data(), ctx.data_end());
    let pkt = match parse_ipv4(start, end, end - start) {
        Ok(pkt) => pkt,
        // Not ours to judge: the kernel drops what is really broken.
        Err(ParseError::NotIpv4 | ParseError::Malformed) => return XDP_PASS,
    };
    let key = pkt.key;
    if key.proto == IPPROTO_UDP && key.dst_addr == cfg.addr && key.dst_port == cfg.vxlan_port {
        if pkt.fragment {
            return drop(DropReason::Fragment);
        }
        return decapsulate(ctx, cfg, &pkt);
    }
    if key.proto != IPPROTO_TCP && key.proto != IPPROTO_UDP {
        return XDP_PASS;
    }
    if pkt.fragment {
        // Only whole packets are balanced; a fragment addressed to a service is dropped
        // (counted), any other passes.
        return match decide::find_service(&key, cfg) {
            Some(_) => drop(DropReason::Fragment),
            None => XDP_PASS,
        };
    }
    let decision = decide::from_underlay(&key, cfg, pkt.tcp_flags, pkt.tot_len);
    apply(ctx, cfg, &pkt, decision)
}

#[inline(always)]
fn drop(reason: DropReason) -> u32 {
    count_drop(reason);
    XDP_DROP
}

/// Strips the outer headers of a VXLAN packet addressed to this node and handles the
/// inner packet.
#[inline(always)]
fn decapsulate(ctx: &XdpContext, cfg: &NodeConfig, outer: &Ipv4Packet) -> u32 {
    let (start, end) = (ctx.data(), ctx.data_end());
    // Outer IP options would shift everything: VXLAN senders never use them.
    if outer.l4 != EthHdr::LEN + Ipv4Hdr::LEN {
        return drop(DropReason::Malformed);
    }
    let Some(vxlan) = ptr_at::<VxlanHdr>(start, end, outer.l4 + UdpHdr::LEN) else {
        return drop(DropReason::Malformed);
    };
    // SAFETY: bounds checked by ptr_at.
    let vxlan = unsafe { &*vxlan };
    let vni = u32::from_be_bytes([0, vxlan.vni[0], vxlan.vni[1], vxlan.vni[2]]);
    // Which VNIs a local destination accepts is `decide::from_overlay`'s to judge.
    if vxlan.flags & vxlan::FLAG_VNI == 0 || vni == 0 {
        return drop(DropReason::UnknownVni);
    }
    let outer_src = outer.key.src_addr;
    // SAFETY: the context pointer is valid; moving the start forward over the outer
    // headers is bounds-checked by the kernel.
    if unsafe { bpf_xdp_adjust_head(ctx.as_ptr().cast(), i32::from(VXLAN_OVERHEAD)) } != 0 {
        return drop(DropReason::Malformed);
    }
    let (start, end) = (ctx.data(), ctx.data_end());
    let inner = match parse_ipv4(start, end, end - start) {
        Ok(pkt) if !pkt.fragment => pkt,
        _ => return drop(DropReason::Malformed),
    };
    let decision = decide::from_overlay(
        &inner.key,
        outer_src,
        vni,
        cfg,
        inner.tcp_flags,
        inner.tot_len,
    );
    apply(ctx, cfg, &inner, decision)
}

/// Carries out a decision on the frame at the start of the context.
#[inline(always)]
fn apply(ctx: &XdpContext, cfg: &NodeConfig, pkt: &Ipv4Packet, decision: Decision) -> u32 {
    match decision.verdict {
        Verdict::Pass => return XDP_PASS,
        Verdict::Drop => return drop(decision.reason),
        Verdict::Forward => {}
    }
    let (rewrite, next) = (decision.rewrite, decision.next);
    if nat(ctx, pkt, rewrite).is_none() {
        return drop(DropReason::Malformed);
    }
    match next.kind {
        NextKind::Local => {
            let ep = next.ep;
            let Some(eth) = ptr_at::<EthHdr>(ctx.data(), ctx.data_end(), 0) else {
                return drop(DropReason::Malformed);
            };
            // SAFETY: bounds checked by ptr_at.
            unsafe {
                (*eth).dst_addr = ep.mac;
                (*eth).src_addr = ep.gw_mac;
                bpf_redirect(ep.ifindex, 0) as u32
            }
        }
        NextKind::Encap => {
            if decision.mss_clamp && pkt.tcp_flags & TCP_SYN != 0 {
                clamp_mss(ctx, pkt, cfg.overlay_mss());
            }
            encapsulate(ctx, cfg, pkt, next.node, next.wire_vni(cfg))
        }
        NextKind::Underlay => {
            let (src, dst) = match rewrite.kind {
                NatKind::Snat => (rewrite.addr, pkt.key.dst_addr),
                NatKind::Dnat => (pkt.key.src_addr, rewrite.addr),
                NatKind::None => (pkt.key.src_addr, pkt.key.dst_addr),
            };
            match next_hop(ctx, src, dst, pkt.tot_len) {
                Some(hop) => send(ctx, hop),
                // No resolved neighbour: the kernel can route it and resolve.
                None => XDP_PASS,
            }
        }
    }
}

/// Rewrites addresses and ports in place with incremental checksum updates.
#[inline(always)]
fn nat(ctx: &XdpContext, pkt: &Ipv4Packet, rewrite: Rewrite) -> Option<()> {
    let (start, end) = (ctx.data(), ctx.data_end());
    let dnat = match rewrite.kind {
        NatKind::None => return Some(()),
        NatKind::Dnat => true,
        NatKind::Snat => false,
    };
    let (addr, port) = (rewrite.addr, rewrite.port);
    let ip: *mut Ipv4Hdr = ptr_at(start, end, EthHdr::LEN)?;
    let (ports_at, check_at) = match pkt.key.proto {
        IPPROTO_TCP => (pkt.l4, pkt.l4 + 16),
        _ => (pkt.l4, pkt.l4 + 6),
    };
    let ports: *mut [u16; 2] = ptr_at(start, end, ports_at)?;
    let check: *mut u16 = ptr_at(start, end, check_at)?;
    let udp = pkt.key.proto == IPPROTO_UDP;
    // SAFETY: all three pointers were bounds-checked by ptr_at; fields are byte arrays
    // or accessed unaligned.
    unsafe {
        let ip = &mut *ip;
        let field = if dnat {
            &mut ip.dst_addr
        } else {
            &mut ip.src_addr
        };
        let old_addr = u32::from_ne_bytes(*field);
        *field = addr.to_ne_bytes();
        let ip_check = u16::from_ne_bytes(ip.check);
        ip.check = csum::replace4(ip_check, old_addr, addr).to_ne_bytes();

        let mut p = ports.read_unaligned();
        let idx = if dnat { 1 } else { 0 };
        let old_port = p[idx];
        p[idx] = port;
        ports.write_unaligned(p);

        let before = check.read_unaligned();
        let mut after = csum::replace4(before, old_addr, addr);
        after = csum::replace2(after, old_port, port);
        check.write_unaligned(if udp {
            csum::udp_fixup(before, after)
        } else {
            after
        });
    }
    Some(())
}

/// Lowers the MSS option of a SYN to `mss` if it is larger, so that full-size segments
/// still fit the underlay once encapsulated. Linux and every common stack put MSS first
/// in a SYN's options; only that position is checked (a bounded, verifier-friendly rule).
#[inline(always)]
fn clamp_mss(ctx: &XdpContext, pkt: &Ipv4Packet, mss: u16) {
    let (start, end) = (ctx.data(), ctx.data_end());
    let Some(doff) = ptr_at::<u8>(start, end, pkt.l4 + 12) else {
        return;
    };
    // SAFETY: bounds checked.
    if unsafe { *doff } >> 4 < 6 {
        return;
    }
    let Some(opt) = ptr_at::<[u8; 4]>(start, end, pkt.l4 + 20) else {
        return;
    };
    let Some(check) = ptr_at::<u16>(start, end, pkt.l4 + 16) else {
        return;
    };
    // SAFETY: bounds checked; byte arrays and unaligned accesses.
    unsafe {
        let o = *opt;
        if o[0] != 2 || o[1] != 4 {
            return;
        }
        let old = u16::from_be_bytes([o[2], o[3]]);
        if old <= mss {
            return;
        }
        let new = mss.to_be_bytes();
        (*opt)[2] = new[0];
        (*opt)[3] = new[1];
        let c = check.read_unaligned();
        check.write_unaligned(csum::replace2(
            c,
            u16::from_ne_bytes([o[2], o[3]]),
            u16::from_ne_bytes(new),
        ));
    }
}

/// The next hop from `src` to `dst`: the memo in `LB_NEXT_HOPS` while it is under a
/// second old (`bpf_ktime_get_coarse_ns`, a read of the last tick's time), else the
/// kernel's FIB, whose answer is memoised. A FIB miss (no route, no resolved neighbour)
/// is not: the next packet asks again.
#[inline(always)]
fn next_hop(ctx: &XdpContext, src: u32, dst: u32, tot_len: u16) -> Option<NextHop> {
    let key = NextHopKey { src, dst };
    // SAFETY: the helper has no preconditions.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    // SAFETY: read-only access to the value, copied field by field (no 6-byte arrays).
    if let Some(hop) = unsafe { LB_NEXT_HOPS.get(key) }
        && now.wrapping_sub(hop.filled_ns) < NextHop::TTL_NS
    {
        return Some(*hop);
    }
    let mut hop = fib(ctx, src, dst, tot_len)?;
    hop.filled_ns = now;
    let _ = LB_NEXT_HOPS.insert(key, hop, 0);
    Some(hop)
}

/// `bpf_fib_lookup`'s size in 8-byte words.
const FIB_WORDS: usize = size_of::<bpf_fib_lookup>() / 8;
const _: () = assert!(size_of::<bpf_fib_lookup>() == FIB_WORDS * 8);

/// Storage for the lookup's parameters, aligned for 8-byte stores.
#[repr(C, align(8))]
struct FibWords([u64; FIB_WORDS]);

#[inline(always)]
fn fib(ctx: &XdpContext, src: u32, dst: u32, tot_len: u16) -> Option<NextHop> {
    // The parameters start all zero (their "unset" state), written as eight volatile
    // 8-byte stores in place: `mem::zeroed()` (or any zeroing LLVM can see through) is a
    // `memset` call, which the BPF target compiles to a subprogram storing one byte per
    // loop iteration, and volatile stores cannot be folded back into one.
    let mut words = MaybeUninit::<FibWords>::uninit();
    let base = words.as_mut_ptr().cast::<u64>();
    let mut i = 0;
    while i < FIB_WORDS {
        // SAFETY: `i` is within the array, which is aligned for u64.
        unsafe { base.add(i).write_volatile(0) };
        i += 1;
    }
    let params = words.as_mut_ptr().cast::<bpf_fib_lookup>();
    // SAFETY: `params` points at FIB_WORDS * 8 zeroed bytes, aligned for it: an all-zero
    // `bpf_fib_lookup` (plain old data) of exactly its size.
    let params = unsafe { &mut *params };
    params.family = AF_INET;
    params.__bindgen_anon_1.tot_len = tot_len;
    params.ifindex = ctx.ingress_ifindex() as u32;
    params.__bindgen_anon_3.ipv4_src = src;
    params.__bindgen_anon_4.ipv4_dst = dst;
    // An output lookup: the node sends these packets as itself (encapsulated from its
    // address, or SNATed to it), so the ingress interface's forwarding setting is moot.
    // SAFETY: params is a valid, fully initialised struct of the size passed.
    let rc = unsafe {
        fib_lookup(
            ctx.as_ptr(),
            params,
            size_of::<bpf_fib_lookup>() as i32,
            BPF_FIB_LOOKUP_OUTPUT,
        )
    };
    if rc != i64::from(BPF_FIB_LKUP_RET_SUCCESS) {
        return None;
    }
    let (smac_hi, smac_lo) = mac_words(&params.smac);
    let (dmac_hi, dmac_lo) = mac_words(&params.dmac);
    Some(NextHop {
        ifindex: params.ifindex,
        smac_hi,
        smac_lo,
        dmac_lo,
        dmac_hi,
        filled_ns: 0,
    })
}

/// Sets the frame's MACs for `hop` and sends it: back out the same port, or redirected.
#[inline(always)]
fn send(ctx: &XdpContext, hop: NextHop) -> u32 {
    let Some(eth) = ptr_at::<EthHdr>(ctx.data(), ctx.data_end(), 0) else {
        return drop(DropReason::Malformed);
    };
    // SAFETY: bounds checked.
    unsafe { write_macs(&mut *eth, &hop) };
    if hop.ifindex == ctx.ingress_ifindex() as u32 {
        XDP_TX
    } else {
        // SAFETY: the helper has no memory preconditions.
        unsafe { bpf_redirect(hop.ifindex, 0) as u32 }
    }
}

/// Wraps the frame in Ethernet/IPv4/UDP/VXLAN towards the peer at `node`, on `vni`.
#[inline(always)]
fn encapsulate(ctx: &XdpContext, cfg: &NodeConfig, pkt: &Ipv4Packet, node: u32, vni: u32) -> u32 {
    let outer_len = pkt.tot_len.wrapping_add(VXLAN_OVERHEAD);
    if u32::from(outer_len) > cfg.mtu || outer_len < pkt.tot_len {
        return drop(DropReason::TooBig);
    }
    let Some(hop) = next_hop(ctx, cfg.addr, node, outer_len) else {
        return drop(DropReason::NoRoute);
    };
    let inner_dst = match ptr_at::<Ipv4Hdr>(ctx.data(), ctx.data_end(), EthHdr::LEN) {
        // SAFETY: bounds checked; read after the rewrite, so it is the backend.
        Some(ip) => u32::from_ne_bytes(unsafe { (*ip).dst_addr }),
        None => return drop(DropReason::Malformed),
    };
    // SAFETY: valid context; growing the headroom is bounds-checked by the kernel.
    if unsafe { bpf_xdp_adjust_head(ctx.as_ptr().cast(), -i32::from(VXLAN_OVERHEAD)) } != 0 {
        return drop(DropReason::Internal);
    }
    let (start, end) = (ctx.data(), ctx.data_end());
    let Some(hdr) = ptr_at::<OuterHeaders>(start, end, 0) else {
        return drop(DropReason::Internal);
    };
    let tunnel = vxlan::tunnel_header(cfg, node, vni, pkt);
    // SAFETY: bounds checked by ptr_at; OuterHeaders is made of byte arrays.
    unsafe {
        let h = &mut *hdr;
        store_mac(&mut h.eth_dst, hop.dmac_hi, hop.dmac_lo);
        store_mac(&mut h.eth_src, hop.smac_hi, hop.smac_lo);
        h.eth_type = 0x0800_u16.to_be_bytes();
        h.tunnel = tunnel;
        h.inner_dst = task_mac(u32::from_be(inner_dst));
        let (hi, lo) = mac_words(&cfg.mac);
        store_mac(&mut h.inner_src, hi, lo);
    }
    if hop.ifindex == ctx.ingress_ifindex() as u32 {
        XDP_TX
    } else {
        // SAFETY: the helper has no memory preconditions.
        unsafe { bpf_redirect(hop.ifindex, 0) as u32 }
    }
}

/// Writes a next hop's MACs into an Ethernet header.
#[inline(always)]
fn write_macs(eth: &mut EthHdr, hop: &NextHop) {
    store_mac(&mut eth.dst_addr, hop.dmac_hi, hop.dmac_lo);
    store_mac(&mut eth.src_addr, hop.smac_hi, hop.smac_lo);
}

/// Stores a MAC address kept as a 4-byte and a 2-byte word (see [`NextHop`]).
#[inline(always)]
fn store_mac(dst: &mut [u8; 6], hi: u32, lo: u16) {
    let d = dst.as_mut_ptr();
    // SAFETY: `dst` is 6 bytes; unaligned writes within it.
    unsafe {
        d.cast::<u32>().write_unaligned(hi);
        d.add(4).cast::<u16>().write_unaligned(lo);
    }
}

/// A MAC address as a 4-byte and a 2-byte word (see [`NextHop`]), read with two loads:
/// a plain 6-byte array copy between two memory locations is a `memmove` call, which the
/// BPF target compiles to a loop of one-byte copies.
#[inline(always)]
fn mac_words(mac: &[u8; 6]) -> (u32, u16) {
    let m = mac.as_ptr();
    // SAFETY: `mac` is 6 bytes; unaligned reads within it.
    unsafe {
        (
            m.cast::<u32>().read_unaligned(),
            m.add(4).cast::<u16>().read_unaligned(),
        )
    }
}

/// The outer headers of a VXLAN frame and the inner MACs, as bytes (alignment 1).
#[repr(C)]
struct OuterHeaders {
    eth_dst: [u8; 6],
    eth_src: [u8; 6],
    eth_type: [u8; 2],
    tunnel: [u8; 36],
    inner_dst: [u8; 6],
    inner_src: [u8; 6],
}
