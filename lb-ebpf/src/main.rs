//! The mesh's eBPF dataplane.
//!
//! - `lb_xdp`: XDP on each node's underlay interface.
//! - `lb_tc_task`: TC (clsact ingress) on the host side of each local task's veth.
//! - `lb_xdp_pass`: passes everything; attached to the receiving end of veths that get
//!   XDP_TX/XDP_REDIRECT frames, which turns on the veth's NAPI so the frames arrive.
//! - `lb_connect4`, `lb_sendmsg4`, `lb_recvmsg4`, `lb_getpeername4`: on the root cgroup, the node's own
//!   connections and datagrams to its published ports (`127.0.0.1:PORT`, the node's
//!   address), balanced at the socket.
//! - `bench_*`: baselines for `cargo xtask bench dataplane`.
#![no_std]
#![no_main]

mod csum;
mod decide;
mod maps;
mod packet;
mod sock;
mod tc;
mod vxlan;
mod xdp;

use aya_ebpf::{
    bindings::xdp_action,
    macros::{cgroup_sock_addr, classifier, xdp},
    programs::{SockAddrContext, TcContext, XdpContext},
};
use network_types::eth::EthHdr;

/// The routing mesh on the underlay interface.
#[xdp]
pub(crate) fn lb_xdp(ctx: XdpContext) -> u32 {
    xdp::handle(&ctx)
}

/// Load balancing and overlay routing of traffic leaving a local task.
#[classifier]
pub(crate) fn lb_tc_task(ctx: TcContext) -> i32 {
    tc::handle(&ctx)
}

/// The node's own connections to its published ports, balanced when they connect.
#[cgroup_sock_addr(connect4)]
pub(crate) fn lb_connect4(ctx: SockAddrContext) -> i32 {
    sock::balance(&ctx)
}

/// The node's own unconnected UDP datagrams to its published ports, balanced one by one.
#[cgroup_sock_addr(sendmsg4)]
pub(crate) fn lb_sendmsg4(ctx: SockAddrContext) -> i32 {
    sock::balance(&ctx)
}

/// Answers to those datagrams, shown as coming from the address the application used.
#[cgroup_sock_addr(recvmsg4)]
pub(crate) fn lb_recvmsg4(ctx: SockAddrContext) -> i32 {
    sock::origin(&ctx)
}

/// The peer of a balanced socket, shown as the address the application connected to.
#[cgroup_sock_addr(getpeername4)]
pub(crate) fn lb_getpeername4(ctx: SockAddrContext) -> i32 {
    sock::origin(&ctx)
}

/// Passes every frame.
#[xdp]
pub(crate) fn lb_xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// Benchmark floor: the cheapest useful forwarding program, swap MACs and bounce.
#[xdp]
pub(crate) fn bench_xdp_mac_swap(ctx: XdpContext) -> u32 {
    let Some(eth) = packet::ptr_at::<EthHdr>(ctx.data(), ctx.data_end(), 0) else {
        return xdp_action::XDP_DROP;
    };
    // SAFETY: bounds checked by ptr_at.
    unsafe {
        let e = &mut *eth;
        core::mem::swap(&mut e.dst_addr, &mut e.src_addr);
    }
    xdp_action::XDP_TX
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}

/// The kernel checks that programs using GPL-only helpers declare a GPL-compatible license.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
