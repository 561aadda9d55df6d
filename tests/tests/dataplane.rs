//! The dataplane's programs, run by the kernel on crafted frames (BPF_PROG_TEST_RUN):
//! verdicts and exact output bytes for every packet path, with populated maps.
//!
//! Each test loads its own copy of the object (own maps) in its own network namespace.
use std::net::Ipv4Addr;

use etherparse::{IpNumber, Ipv4Header, PacketBuilder};
use lb_common::{
    Backend, DropReason, Flow, FlowEvent, IPPROTO_TCP, Service, ServiceKey, service::task_mac,
};
use mesh_tests::fixture::{CLIENT, CLIENT_MAC, NODE, NODE_MAC, PEER, PEER_MAC, VNI, be};
use mesh_tests::frames::*;

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;
const TC_ACT_OK: i32 = 0;
const TC_ACT_SHOT: i32 = 2;
const TC_ACT_REDIRECT: i32 = 7;

/// Asserts that TC's output is `inner` VXLAN-encapsulated from this node to the peer. TC
/// leaves the outer MACs to `bpf_redirect_neigh`, so the comparison starts at the
/// EtherType.
fn assert_tc_encapsulated_to_peer(out: &[u8], inner: &[u8]) {
    let expected = vxlan((NODE_MAC, PEER_MAC), NODE, PEER, vxlan_sport(out), inner);
    assert_eq!(out[12..], expected[12..]);
}

#[test]
fn p1_new_flow_to_a_local_task_is_redirected_with_dnat() {
    let mut dp = mesh(&[0]);
    let syn = tcp(FROM_CLIENT, (CLIENT, 40000), (NODE, 8080), Tcp::Syn, &[]);
    let (verdict, out) = dp.run_xdp("lb_xdp", &syn).unwrap();
    assert_eq!(verdict, XDP_REDIRECT);
    let expected = tcp(TASK_MACS, (CLIENT, 40000), (LOCAL_TASK, 80), Tcp::Syn, &[]);
    assert_eq!(
        out, expected,
        "DNAT to the task, MACs of its veth, checksums right"
    );
    // Both directions are recorded.
    let fwd = dp
        .flow(&key((CLIENT, 40000), (NODE, 8080), IPPROTO_TCP))
        .unwrap()
        .unwrap();
    assert_eq!(fwd.backend_id, 0);
    let rev = dp
        .flow(&key((LOCAL_TASK, 80), (CLIENT, 40000), IPPROTO_TCP))
        .unwrap()
        .unwrap();
    assert_eq!((rev.nat_addr, rev.nat_port), (be(NODE), 8080u16.to_be()));
    let c = dp.service_counters(WEB).unwrap();
    assert_eq!((c.packets, c.new_flows), (1, 1));
}

#[test]
fn p1_established_flow_keeps_its_backend_across_backend_set_changes() {
    let mut dp = mesh(&[0]);
    let syn = tcp(FROM_CLIENT, (CLIENT, 40001), (NODE, 8080), Tcp::Syn, &[]);
    assert_eq!(dp.run_xdp("lb_xdp", &syn).unwrap().0, XDP_REDIRECT);
    // The service's backend set flips atomically to the remote task only.
    switch_web_backends(&mut dp, ServiceKey::published(8080, IPPROTO_TCP), &[1]);
    let ack = tcp(
        FROM_CLIENT,
        (CLIENT, 40001),
        (NODE, 8080),
        Tcp::Ack,
        b"GET /",
    );
    let (verdict, out) = dp.run_xdp("lb_xdp", &ack).unwrap();
    assert_eq!(
        verdict, XDP_REDIRECT,
        "the established flow stays on its local task"
    );
    assert_eq!(
        out,
        tcp(
            TASK_MACS,
            (CLIENT, 40001),
            (LOCAL_TASK, 80),
            Tcp::Ack,
            b"GET /"
        )
    );
    // A new flow takes the new set.
    let syn2 = tcp(FROM_CLIENT, (CLIENT, 40002), (NODE, 8080), Tcp::Syn, &[]);
    assert_eq!(
        dp.run_xdp("lb_xdp", &syn2).unwrap().0,
        XDP_TX,
        "new flow encapsulated"
    );
    let c = dp.service_counters(WEB).unwrap();
    assert_eq!(
        (c.packets, c.new_flows),
        (3, 2),
        "no new flow for the established one"
    );
}

#[test]
fn p2_remote_task_gets_the_exact_vxlan_frame_with_mss_clamped() {
    let dp = mesh(&[1]);
    let syn = tcp(FROM_CLIENT, (CLIENT, 40010), (NODE, 8080), Tcp::Syn, &[]);
    let (verdict, out) = dp.run_xdp("lb_xdp", &syn).unwrap();
    assert_eq!(verdict, XDP_TX, "back out of the underlay towards the peer");
    let inner_macs = (NODE_MAC, task_mac(u32::from(REMOTE_TASK)));
    // The client's address is kept; MSS lowered to 1500 - 50 - 40.
    let inner = syn_with_mss(inner_macs, (CLIENT, 40010), (REMOTE_TASK, 80), 1410);
    let expected = vxlan((NODE_MAC, PEER_MAC), NODE, PEER, vxlan_sport(&out), &inner);
    assert_eq!(out, expected);
    // The same flow always gets the same entropy (ECMP keeps it on one path).
    let ack = tcp(FROM_CLIENT, (CLIENT, 40010), (NODE, 8080), Tcp::Ack, &[]);
    let (_, out2) = dp.run_xdp("lb_xdp", &ack).unwrap();
    assert_eq!(vxlan_sport(&out2), vxlan_sport(&out));
}

#[test]
fn p2_follows_a_peers_new_mac_within_a_second() {
    let mut dp = mesh(&[1]);
    let syn = tcp(FROM_CLIENT, (CLIENT, 40015), (NODE, 8080), Tcp::Syn, &[]);
    let (verdict, out) = dp.run_xdp("lb_xdp", &syn).unwrap();
    assert_eq!(verdict, XDP_TX);
    assert_eq!(out[..6], PEER_MAC, "to the peer's MAC");
    // The FIB's answer is memoised: the flow's next packets need no FIB lookup.
    let hop = dp
        .next_hop(NODE, PEER)
        .unwrap()
        .expect("the next hop is memoised");
    assert_eq!((hop.dmac(), hop.smac()), (PEER_MAC, NODE_MAC));

    // The peer is replaced by a machine with the same address and another MAC: within
    // the memo's second, packets go to the new MAC.
    let new_mac = [0x02, 0, 10, 99, 0, 0x42];
    dp.set_neighbour(PEER, new_mac).unwrap();
    let ack = tcp(FROM_CLIENT, (CLIENT, 40015), (NODE, 8080), Tcp::Ack, &[]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (verdict, out) = dp.run_xdp("lb_xdp", &ack).unwrap();
        assert_eq!(verdict, XDP_TX);
        if out[..6] == new_mac {
            break;
        }
        assert_eq!(
            out[..6],
            PEER_MAC,
            "the old MAC or the new one, nothing else"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "still sent to the old MAC 10 s after the neighbour changed"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let hop = dp.next_hop(NODE, PEER).unwrap().expect("memoised again");
    assert_eq!(hop.dmac(), new_mac);
}

#[test]
fn an_established_flow_follows_its_backends_task_to_another_node() {
    let mut dp = mesh(&[1]);
    let syn = tcp(FROM_CLIENT, (CLIENT, 40016), (NODE, 8080), Tcp::Syn, &[]);
    let ack = tcp(FROM_CLIENT, (CLIENT, 40016), (NODE, 8080), Tcp::Ack, b"x");
    assert_eq!(dp.run_xdp("lb_xdp", &syn).unwrap().0, XDP_TX);
    let (_, out) = dp.run_xdp("lb_xdp", &ack).unwrap();
    assert_eq!(&out[30..34], &PEER.octets(), "encapsulated to the peer");
    // The entry now remembers the route; the endpoint's change (as the agent applies it,
    // with a new routing generation) must still reach established packets.
    let other_peer = Ipv4Addr::new(10, 99, 0, 13);
    let other_mac = [0x02, 0, 10, 99, 0, 13];
    dp.set_neighbour(other_peer, other_mac).unwrap();
    dp.set_endpoint(
        REMOTE_TASK,
        lb_common::Endpoint {
            node: be(other_peer),
            ifindex: 0,
            mac: task_mac(u32::from(REMOTE_TASK)),
            gw_mac: [0; 6],
            vni: VNI,
        },
    )
    .unwrap();
    let (verdict, out) = dp.run_xdp("lb_xdp", &ack).unwrap();
    assert_eq!(verdict, XDP_TX);
    assert_eq!(&out[30..34], &other_peer.octets(), "to the task's new node");
    assert_eq!(out[..6], other_mac);
    assert_eq!(dp.flow_events(FlowEvent::Lost).unwrap(), 0, "the same flow");
}

#[test]
fn p2_replies_return_through_the_ingress_node_to_the_client() {
    let dp = mesh(&[1]);
    let syn = tcp(FROM_CLIENT, (CLIENT, 40020), (NODE, 8080), Tcp::Syn, &[]);
    assert_eq!(dp.run_xdp("lb_xdp", &syn).unwrap().0, XDP_TX);
    // The peer sends the task's SYN-ACK back, encapsulated.
    let inner = tcp(
        (PEER_MAC, NODE_MAC),
        (REMOTE_TASK, 80),
        (CLIENT, 40020),
        Tcp::SynAck,
        &[],
    );
    let frame = vxlan((PEER_MAC, NODE_MAC), PEER, NODE, 50000, &inner);
    let (verdict, out) = dp.run_xdp("lb_xdp", &frame).unwrap();
    assert_eq!(verdict, XDP_TX);
    let expected = tcp(
        (NODE_MAC, CLIENT_MAC),
        (NODE, 8080),
        (CLIENT, 40020),
        Tcp::SynAck,
        &[],
    );
    assert_eq!(
        out, expected,
        "decapsulated, source back to the published port"
    );
}

#[test]
fn p2_on_the_task_node_decap_delivers_and_replies_go_back_to_the_ingress_node() {
    let mut dp = mesh(&[0]);
    // This node runs LOCAL_TASK; the peer balanced a client's flow to it.
    let inner = tcp(
        (PEER_MAC, NODE_MAC),
        (CLIENT, 40030),
        (LOCAL_TASK, 80),
        Tcp::Syn,
        &[],
    );
    let frame = vxlan((PEER_MAC, NODE_MAC), PEER, NODE, 50001, &inner);
    let (verdict, out) = dp.run_xdp("lb_xdp", &frame).unwrap();
    assert_eq!(verdict, XDP_REDIRECT);
    assert_eq!(
        out,
        tcp(TASK_MACS, (CLIENT, 40030), (LOCAL_TASK, 80), Tcp::Syn, &[])
    );
    let ret = dp
        .flow(&key((LOCAL_TASK, 80), (CLIENT, 40030), IPPROTO_TCP))
        .unwrap()
        .unwrap();
    assert_eq!(ret.node, be(PEER), "return path remembered");
    // The task answers; TC sends it back through the tunnel, not straight to the client.
    let reply = tcp(
        (task_mac(u32::from(LOCAL_TASK)), GW_MAC),
        (LOCAL_TASK, 80),
        (CLIENT, 40030),
        Tcp::SynAck,
        &[],
    );
    let (verdict, out) = dp.run_tc(&reply).unwrap();
    assert_eq!(verdict, TC_ACT_REDIRECT);
    let inner = tcp(
        (NODE_MAC, task_mac(u32::from(CLIENT))),
        (LOCAL_TASK, 80),
        (CLIENT, 40030),
        Tcp::SynAck,
        &[],
    );
    assert_tc_encapsulated_to_peer(&out, &inner);
}

/// A client port used through this node and then, while the first connection's entries
/// linger in the flow table, through a peer, to the same local task: the task's answers
/// to the second connection go back through the peer, not after the first one's entry.
#[test]
fn p2_a_lingering_entry_of_an_earlier_connection_does_not_capture_the_replies() {
    let dp = mesh(&[0]);
    let c = (CLIENT, 40031);
    // The first connection, through this node's published port, to the local task.
    dp.run_xdp("lb_xdp", &tcp(FROM_CLIENT, c, (NODE, 8080), Tcp::Syn, &[]))
        .unwrap();
    let from_task = (task_mac(u32::from(LOCAL_TASK)), GW_MAC);
    dp.run_tc(&tcp(from_task, (LOCAL_TASK, 80), c, Tcp::SynAck, &[]))
        .unwrap();
    dp.run_xdp("lb_xdp", &tcp(FROM_CLIENT, c, (NODE, 8080), Tcp::Ack, &[]))
        .unwrap();
    // The second, through the peer, from the same client port to the same task.
    let inner = tcp((PEER_MAC, NODE_MAC), c, (LOCAL_TASK, 80), Tcp::Syn, &[]);
    let frame = vxlan((PEER_MAC, NODE_MAC), PEER, NODE, 50001, &inner);
    assert_eq!(dp.run_xdp("lb_xdp", &frame).unwrap().0, XDP_REDIRECT);
    let (verdict, out) = dp
        .run_tc(&tcp(from_task, (LOCAL_TASK, 80), c, Tcp::SynAck, &[]))
        .unwrap();
    assert_eq!(verdict, TC_ACT_REDIRECT);
    let inner = tcp(
        (NODE_MAC, task_mac(u32::from(CLIENT))),
        (LOCAL_TASK, 80),
        c,
        Tcp::SynAck,
        &[],
    );
    assert_tc_encapsulated_to_peer(&out, &inner);
}

/// A client port used through a peer and, at once, through this node's published port,
/// to the same local task (the client's kernel lets a port go to a new destination while
/// the first connection still closes). The first connection's last packets (the client's
/// FIN and final ACK, which travel through the peer) arrive after the second connection's
/// SYN: they must not take the task's reply entry from the second connection, or the
/// task's SYN-ACKs go to the peer, which hands them to the client's closed first
/// connection, and the second one never completes (the docker rolling-update connect
/// timeouts of step 7 of `tests/tests/services.rs`).
#[test]
fn p2_late_packets_of_an_earlier_connection_do_not_capture_a_new_ones_replies() {
    let dp = mesh(&[0]);
    let c = (CLIENT, 40032);
    let t = (LOCAL_TASK, 80);
    let from_task = (task_mac(u32::from(LOCAL_TASK)), GW_MAC);
    let from_peer = |kind: Tcp| {
        let inner = tcp((PEER_MAC, NODE_MAC), c, t, kind, &[]);
        vxlan((PEER_MAC, NODE_MAC), PEER, NODE, 50002, &inner)
    };
    // The first connection, balanced by the peer to the local task, established.
    assert_eq!(
        dp.run_xdp("lb_xdp", &from_peer(Tcp::Syn)).unwrap().0,
        XDP_REDIRECT
    );
    dp.run_tc(&tcp(from_task, t, c, Tcp::SynAck, &[])).unwrap();
    assert_eq!(
        dp.run_xdp("lb_xdp", &from_peer(Tcp::Ack)).unwrap().0,
        XDP_REDIRECT
    );
    // The client closes it and opens the second one, from the same port, through this
    // node; the first one's FIN and last ACK come through the peer after that SYN.
    assert_eq!(
        dp.run_xdp("lb_xdp", &tcp(FROM_CLIENT, c, (NODE, 8080), Tcp::Syn, &[]))
            .unwrap()
            .0,
        XDP_REDIRECT
    );
    for late in [Tcp::Fin, Tcp::Ack] {
        assert_eq!(
            dp.run_xdp("lb_xdp", &from_peer(late)).unwrap().0,
            XDP_REDIRECT,
            "the first connection's packets still reach the task"
        );
    }
    // The task's SYN-ACK to the second connection leaves with the published address.
    let (verdict, out) = dp.run_tc(&tcp(from_task, t, c, Tcp::SynAck, &[])).unwrap();
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(
        out,
        tcp(from_task, (NODE, 8080), c, Tcp::SynAck, &[]),
        "the SYN-ACK goes to the client as this node's published port, not to the peer"
    );
}

/// A client port used again through the same peer to the same local task, once its
/// first connection closed: the new connection's Return entry starts afresh, without the
/// closed one's FIN bits. With them, the sweep would remove the entry 10 s after the old
/// connection closed, from under the live new one, whose task could then not answer
/// until the client spoke again.
#[test]
fn p2_a_new_connection_on_a_closed_ones_port_through_the_same_peer_starts_afresh() {
    let mut dp = mesh(&[0]);
    let c = (CLIENT, 40034);
    let t = (LOCAL_TASK, 80);
    let reverse = key(t, c, IPPROTO_TCP);
    let from_task = (task_mac(u32::from(LOCAL_TASK)), GW_MAC);
    let from_peer = |kind: Tcp| {
        let inner = tcp((PEER_MAC, NODE_MAC), c, t, kind, &[]);
        vxlan((PEER_MAC, NODE_MAC), PEER, NODE, 50002, &inner)
    };
    // Established, then closed: FIN each way, the last ACK.
    dp.run_xdp("lb_xdp", &from_peer(Tcp::Syn)).unwrap();
    dp.run_tc(&tcp(from_task, t, c, Tcp::SynAck, &[])).unwrap();
    dp.run_xdp("lb_xdp", &from_peer(Tcp::Ack)).unwrap();
    dp.run_xdp("lb_xdp", &from_peer(Tcp::Fin)).unwrap();
    dp.run_tc(&tcp(from_task, t, c, Tcp::Fin, &[])).unwrap();
    dp.run_xdp("lb_xdp", &from_peer(Tcp::Ack)).unwrap();
    let closed = dp.flow(&reverse).unwrap().expect("the Return entry");
    assert!(closed.tcp_closed(), "closed: {closed:?}");
    // The same port again, through the same peer.
    assert_eq!(
        dp.run_xdp("lb_xdp", &from_peer(Tcp::Syn)).unwrap().0,
        XDP_REDIRECT
    );
    let fresh = dp.flow(&reverse).unwrap().expect("the new Return entry");
    assert!(
        !fresh.tcp_closed() && fresh.tcp & (Flow::SEEN_FIN_FWD | Flow::SEEN_FIN_REV) == 0,
        "the new connection's entry carries the closed one's state: {fresh:?}"
    );
    let (verdict, _) = dp.run_tc(&tcp(from_task, t, c, Tcp::SynAck, &[])).unwrap();
    assert_eq!(
        verdict, TC_ACT_REDIRECT,
        "the SYN-ACK goes back through the peer"
    );
}

/// As above, with both connections balanced to the local task by peers: the earlier one
/// by a second peer, whose late packets arrive after the newer one's SYN from the first.
#[test]
fn p2_late_packets_through_another_peer_do_not_capture_a_new_ones_replies() {
    const PEER2: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 13);
    const PEER2_MAC: [u8; 6] = [0x02, 0, 10, 99, 0, 13];
    let dp = mesh(&[0]);
    let c = (CLIENT, 40033);
    let t = (LOCAL_TASK, 80);
    let from_task = (task_mac(u32::from(LOCAL_TASK)), GW_MAC);
    let through = |peer: Ipv4Addr, mac: [u8; 6], kind: Tcp| {
        let inner = tcp((mac, NODE_MAC), c, t, kind, &[]);
        vxlan((mac, NODE_MAC), peer, NODE, 50003, &inner)
    };
    // The earlier connection, through the second peer, established.
    dp.run_xdp("lb_xdp", &through(PEER2, PEER2_MAC, Tcp::Syn))
        .unwrap();
    dp.run_tc(&tcp(from_task, t, c, Tcp::SynAck, &[])).unwrap();
    dp.run_xdp("lb_xdp", &through(PEER2, PEER2_MAC, Tcp::Ack))
        .unwrap();
    // The newer one's SYN through the first peer, then the earlier one's last packets.
    assert_eq!(
        dp.run_xdp("lb_xdp", &through(PEER, PEER_MAC, Tcp::Syn))
            .unwrap()
            .0,
        XDP_REDIRECT
    );
    for late in [Tcp::Fin, Tcp::Ack] {
        assert_eq!(
            dp.run_xdp("lb_xdp", &through(PEER2, PEER2_MAC, late))
                .unwrap()
                .0,
            XDP_REDIRECT
        );
    }
    let (verdict, out) = dp.run_tc(&tcp(from_task, t, c, Tcp::SynAck, &[])).unwrap();
    assert_eq!(verdict, TC_ACT_REDIRECT);
    let inner = tcp(
        (NODE_MAC, task_mac(u32::from(CLIENT))),
        t,
        c,
        Tcp::SynAck,
        &[],
    );
    assert_tc_encapsulated_to_peer(&out, &inner);
}

#[test]
fn p1_reply_from_a_local_task_leaves_with_the_published_address() {
    let dp = mesh(&[0]);
    let syn = tcp(FROM_CLIENT, (CLIENT, 40040), (NODE, 8080), Tcp::Syn, &[]);
    assert_eq!(dp.run_xdp("lb_xdp", &syn).unwrap().0, XDP_REDIRECT);
    let reply = tcp(
        (task_mac(u32::from(LOCAL_TASK)), GW_MAC),
        (LOCAL_TASK, 80),
        (CLIENT, 40040),
        Tcp::SynAck,
        &[],
    );
    let (verdict, out) = dp.run_tc(&reply).unwrap();
    assert_eq!(verdict, TC_ACT_REDIRECT, "redirected to the underlay");
    let expected = tcp(
        (task_mac(u32::from(LOCAL_TASK)), GW_MAC),
        (NODE, 8080),
        (CLIENT, 40040),
        Tcp::SynAck,
        &[],
    );
    assert_eq!(
        out, expected,
        "SNAT with checksums right; MACs set by redirect_neigh"
    );
}

#[test]
fn draining_backend_takes_no_new_flows_but_keeps_its_established_ones() {
    let mut dp = mesh(&[0, 1]);
    let syn = tcp(FROM_CLIENT, (CLIENT, 41000), (NODE, 8080), Tcp::Syn, &[]);
    dp.run_xdp("lb_xdp", &syn).unwrap();
    let first = dp
        .flow(&key((CLIENT, 41000), (NODE, 8080), IPPROTO_TCP))
        .unwrap()
        .unwrap();
    // Drain whichever backend it got: it leaves the slot table, stays in the backends.
    let drained = first.backend_id;
    let other = 1 - drained;
    let mut b = if drained == 0 {
        Backend::new(u32::from(LOCAL_TASK), 80, WEB)
    } else {
        Backend::new(u32::from(REMOTE_TASK), 80, WEB)
    };
    b.flags |= Backend::FLAG_DRAINING;
    dp.set_backend(drained, b).unwrap();
    switch_web_backends(&mut dp, ServiceKey::published(8080, IPPROTO_TCP), &[other]);
    for port in 41001..41021 {
        let syn = tcp(FROM_CLIENT, (CLIENT, port), (NODE, 8080), Tcp::Syn, &[]);
        dp.run_xdp("lb_xdp", &syn).unwrap();
        let f = dp
            .flow(&key((CLIENT, port), (NODE, 8080), IPPROTO_TCP))
            .unwrap()
            .unwrap();
        assert_eq!(f.backend_id, other, "new flows avoid the draining backend");
    }
    let ack = tcp(
        FROM_CLIENT,
        (CLIENT, 41000),
        (NODE, 8080),
        Tcp::Ack,
        b"more",
    );
    dp.run_xdp("lb_xdp", &ack).unwrap();
    let f = dp
        .flow(&key((CLIENT, 41000), (NODE, 8080), IPPROTO_TCP))
        .unwrap()
        .unwrap();
    assert_eq!(f.backend_id, drained, "its established flow goes on");
    assert_eq!(dp.backend_counters(drained).unwrap().packets, 2);
    // A retransmitted SYN of a flow whose backend drains (the first one got no answer:
    // the task may be stopping) is balanced again, to a backend that takes new flows.
    dp.run_xdp("lb_xdp", &syn).unwrap();
    let f = dp
        .flow(&key((CLIENT, 41000), (NODE, 8080), IPPROTO_TCP))
        .unwrap()
        .unwrap();
    assert_eq!(f.backend_id, other, "the SYN again: a new flow");
}

#[test]
fn flows_of_a_removed_backend_are_reassigned() {
    let mut dp = mesh(&[0]);
    let syn = tcp(FROM_CLIENT, (CLIENT, 42000), (NODE, 8080), Tcp::Syn, &[]);
    assert_eq!(dp.run_xdp("lb_xdp", &syn).unwrap().0, XDP_REDIRECT);
    switch_web_backends(&mut dp, ServiceKey::published(8080, IPPROTO_TCP), &[1]);
    dp.remove_backend(0).unwrap();
    let ack = tcp(FROM_CLIENT, (CLIENT, 42000), (NODE, 8080), Tcp::Ack, &[]);
    assert_eq!(
        dp.run_xdp("lb_xdp", &ack).unwrap().0,
        XDP_TX,
        "now to the remote task"
    );
    let f = dp
        .flow(&key((CLIENT, 42000), (NODE, 8080), IPPROTO_TCP))
        .unwrap()
        .unwrap();
    assert_eq!(f.backend_id, 1);
}

#[test]
fn udp_published_port_is_balanced_and_checksums_stay_right() {
    let dp = mesh(&[0]);
    let q = udp(FROM_CLIENT, (CLIENT, 5000), (NODE, 5353), b"query");
    let (verdict, out) = dp.run_xdp("lb_xdp", &q).unwrap();
    assert_eq!(verdict, XDP_REDIRECT);
    assert_eq!(
        out,
        udp(TASK_MACS, (CLIENT, 5000), (LOCAL_TASK, 53), b"query")
    );
    // A datagram without a checksum keeps none.
    let mut q0 = udp(FROM_CLIENT, (CLIENT, 5001), (NODE, 5353), b"query");
    q0[40..42].copy_from_slice(&[0, 0]);
    let (_, out) = dp.run_xdp("lb_xdp", &q0).unwrap();
    assert_eq!(&out[40..42], &[0, 0]);
    // The answer goes back from the published port.
    let a = udp(
        (task_mac(u32::from(LOCAL_TASK)), GW_MAC),
        (LOCAL_TASK, 53),
        (CLIENT, 5000),
        b"a",
    );
    let (verdict, out) = dp.run_tc(&a).unwrap();
    assert_eq!(verdict, TC_ACT_REDIRECT);
    let expected = udp(
        (task_mac(u32::from(LOCAL_TASK)), GW_MAC),
        (NODE, 5353),
        (CLIENT, 5000),
        b"a",
    );
    assert_eq!(out, expected);
}

#[test]
fn p3_task_to_vip_reaches_local_and_remote_tasks() {
    let mut dp = mesh(&[3]);
    let from = (task_mac(u32::from(LOCAL_TASK)), GW_MAC);
    let syn = tcp(from, (LOCAL_TASK, 33000), (VIP, 80), Tcp::Syn, &[]);
    let (verdict, out) = dp.run_tc(&syn).unwrap();
    assert_eq!(verdict, TC_ACT_REDIRECT);
    let to = (GW_MAC, task_mac(u32::from(LOCAL_TASK2)));
    assert_eq!(
        out,
        tcp(to, (LOCAL_TASK, 33000), (LOCAL_TASK2, 80), Tcp::Syn, &[])
    );
    // The other task's reply comes back from the VIP.
    let reply = tcp(to, (LOCAL_TASK2, 80), (LOCAL_TASK, 33000), Tcp::SynAck, &[]);
    let (verdict, out) = dp.run_tc(&reply).unwrap();
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(
        out,
        tcp(TASK_MACS, (VIP, 80), (LOCAL_TASK, 33000), Tcp::SynAck, &[])
    );

    // To a task on the peer: encapsulated.
    switch_web_backends(
        &mut dp,
        ServiceKey::new(u32::from(VIP), 80, IPPROTO_TCP),
        &[1],
    );
    let syn = tcp(from, (LOCAL_TASK, 33001), (VIP, 80), Tcp::Syn, &[]);
    let (verdict, out) = dp.run_tc(&syn).unwrap();
    assert_eq!(verdict, TC_ACT_REDIRECT);
    let inner = tcp(
        (NODE_MAC, task_mac(u32::from(REMOTE_TASK))),
        (LOCAL_TASK, 33001),
        (REMOTE_TASK, 80),
        Tcp::Syn,
        &[],
    );
    assert_tc_encapsulated_to_peer(&out, &inner);
}

#[test]
fn p3_every_port_of_a_vip_reaches_the_same_port_of_a_task() {
    let mut dp = mesh(&[0]);
    // `cache`: every TCP port of its VIP (port 0 in the key), one task, backend port 0.
    const CACHE: u32 = 2;
    let cache = Service {
        id: CACHE,
        base: 300,
        slots: 1,
        flags: 0,
        vni: VNI,
        sched: 0,
    };
    dp.set_slots(300, &[4]).unwrap();
    dp.set_service(ServiceKey::new(u32::from(VIP), 0, IPPROTO_TCP), cache)
        .unwrap();
    dp.set_backend(4, Backend::new(u32::from(LOCAL_TASK2), 0, CACHE))
        .unwrap();

    let from = (task_mac(u32::from(LOCAL_TASK)), GW_MAC);
    let to = (GW_MAC, task_mac(u32::from(LOCAL_TASK2)));
    let syn = tcp(from, (LOCAL_TASK, 33000), (VIP, 6379), Tcp::Syn, &[]);
    let (verdict, out) = dp.run_tc(&syn).unwrap();
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(
        out,
        tcp(to, (LOCAL_TASK, 33000), (LOCAL_TASK2, 6379), Tcp::Syn, &[])
    );
    let reply = tcp(
        to,
        (LOCAL_TASK2, 6379),
        (LOCAL_TASK, 33000),
        Tcp::SynAck,
        &[],
    );
    let (verdict, out) = dp.run_tc(&reply).unwrap();
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(
        out,
        tcp(
            TASK_MACS,
            (VIP, 6379),
            (LOCAL_TASK, 33000),
            Tcp::SynAck,
            &[]
        )
    );
    // The established flow keeps its backend and port.
    let ack = tcp(from, (LOCAL_TASK, 33000), (VIP, 6379), Tcp::Ack, b"ping");
    let (verdict, out) = dp.run_tc(&ack).unwrap();
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(
        out,
        tcp(
            to,
            (LOCAL_TASK, 33000),
            (LOCAL_TASK2, 6379),
            Tcp::Ack,
            b"ping"
        )
    );
    // A port the VIP names exactly still goes to its own service (`web`, backend 0 on
    // LOCAL_TASK), and the node's own address takes no every-port entry.
    let syn = tcp(from, (LOCAL_TASK2, 33001), (VIP, 80), Tcp::Syn, &[]);
    let (verdict, out) = dp.run_tc(&syn).unwrap();
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(
        &out[30..34],
        &LOCAL_TASK.octets(),
        "VIP:80 is web's, not cache's"
    );
    dp.set_service(ServiceKey::new(u32::from(NODE), 0, IPPROTO_TCP), cache)
        .unwrap();
    let syn = tcp(
        (CLIENT_MAC, NODE_MAC),
        (CLIENT, 40000),
        (NODE, 22),
        Tcp::Syn,
        &[],
    );
    let (verdict, _) = dp.run_xdp("lb_xdp", &syn).unwrap();
    assert_eq!(verdict, XDP_PASS, "the node's own ports are not a VIP's");
}

#[test]
fn p7_traffic_that_is_not_the_meshs_passes_untouched() {
    let dp = mesh(&[0]);
    let frames = [
        tcp(FROM_CLIENT, (CLIENT, 50000), (NODE, 22), Tcp::Syn, &[]),
        udp(FROM_CLIENT, (CLIENT, 50000), (NODE, 53), b"x"),
        tcp(
            FROM_CLIENT,
            (CLIENT, 50000),
            (Ipv4Addr::new(10, 99, 0, 50), 8080),
            Tcp::Syn,
            &[],
        ),
    ];
    for f in &frames {
        assert_eq!(dp.run_xdp("lb_xdp", f).unwrap(), (XDP_PASS, f.clone()));
    }
    // ARP and IPv6 frames.
    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&CLIENT_MAC);
    arp.extend_from_slice(&[0x08, 0x06]);
    arp.extend_from_slice(&[0u8; 28]);
    assert_eq!(dp.run_xdp("lb_xdp", &arp).unwrap(), (XDP_PASS, arp.clone()));
    let mut v6 = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, NODE_MAC)
        .ipv6([1; 16], [2; 16], 64)
        .udp(1, 2)
        .write(&mut v6, b"x")
        .unwrap();
    assert_eq!(dp.run_xdp("lb_xdp", &v6).unwrap(), (XDP_PASS, v6.clone()));
    // A task talking to the outside world: the node's stack handles it.
    let out = tcp(
        (task_mac(u32::from(LOCAL_TASK)), GW_MAC),
        (LOCAL_TASK, 40000),
        (Ipv4Addr::new(192, 0, 2, 1), 443),
        Tcp::Syn,
        &[],
    );
    assert_eq!(dp.run_tc(&out).unwrap(), (TC_ACT_OK, out.clone()));
}

#[test]
fn malformed_frames_get_sensible_verdicts_and_change_nothing() {
    let mut dp = mesh(&[0]);
    let good = tcp(FROM_CLIENT, (CLIENT, 43000), (NODE, 8080), Tcp::Syn, &[]);
    // Cut short anywhere in the headers: passed to the kernel, which discards it.
    for len in [0, 10, 14, 20, 33, 34, 40] {
        let f = &good[..len.min(good.len())];
        let (verdict, _) = dp.run_xdp("lb_xdp", f).unwrap_or((XDP_PASS, Vec::new()));
        assert_eq!(verdict, XDP_PASS, "truncated to {len} bytes");
    }
    // IHL below 5, total length beyond the frame, wrong version.
    for (at, value) in [(14, 0x44u8), (16, 0xff), (14, 0x65)] {
        let mut f = good.clone();
        f[at] = value;
        assert_eq!(
            dp.run_xdp("lb_xdp", &f).unwrap().0,
            XDP_PASS,
            "byte {at} = {value:#x}"
        );
    }
    assert!(
        dp.flow(&key((CLIENT, 43000), (NODE, 8080), IPPROTO_TCP))
            .unwrap()
            .is_none()
    );
    // A fragment addressed to a service is dropped and counted; others pass.
    let mut frag = good.clone();
    frag[20] |= 0x20; // more fragments
    let ip_check = Ipv4Header::from_slice(&frag[14..])
        .unwrap()
        .0
        .calc_header_checksum();
    frag[24..26].copy_from_slice(&ip_check.to_be_bytes());
    assert_eq!(dp.run_xdp("lb_xdp", &frag).unwrap().0, XDP_DROP);
    assert_eq!(dp.drops(DropReason::Fragment).unwrap(), 1);
    let mut other = tcp(FROM_CLIENT, (CLIENT, 43000), (NODE, 22), Tcp::Syn, &[]);
    other[20] |= 0x20;
    assert_eq!(dp.run_xdp("lb_xdp", &other).unwrap().0, XDP_PASS);
    // IP options are skipped correctly: the flow is balanced as usual.
    let mut opts = Vec::new();
    let mut ip = Ipv4Header::new(20, 64, IpNumber::TCP, CLIENT.octets(), NODE.octets()).unwrap();
    ip.options = [1, 1, 1, 0][..].try_into().unwrap(); // NOP NOP NOP EOL
    PacketBuilder::ethernet2(CLIENT_MAC, NODE_MAC)
        .ip(etherparse::IpHeaders::Ipv4(ip, Default::default()))
        .tcp(43001, 8080, 1, 64240)
        .syn()
        .write(&mut opts, &[])
        .unwrap();
    assert_eq!(dp.run_xdp("lb_xdp", &opts).unwrap().0, XDP_REDIRECT);
    let f = dp
        .flow(&key((CLIENT, 43001), (NODE, 8080), IPPROTO_TCP))
        .unwrap();
    assert!(f.is_some(), "a packet with IP options is balanced");
    // VXLAN for an unknown network, cut short, or for an address with no task here.
    let inner = tcp(
        (PEER_MAC, NODE_MAC),
        (CLIENT, 1),
        (LOCAL_TASK, 80),
        Tcp::Syn,
        &[],
    );
    // Another network's VNI to a task here is refused by isolation; a VNI nobody here
    // has, to an address that is no task here, is unknown; VNI 0 is never valid.
    let mut wrong_vni = vxlan((PEER_MAC, NODE_MAC), PEER, NODE, 50000, &inner);
    wrong_vni[48] ^= 0xff;
    assert_eq!(dp.run_xdp("lb_xdp", &wrong_vni).unwrap().0, XDP_DROP);
    assert_eq!(dp.drops(DropReason::Isolation).unwrap(), 1);
    let to_nobody = tcp(
        (PEER_MAC, NODE_MAC),
        (CLIENT, 1),
        (Ipv4Addr::new(10, 9, 9, 9), 80),
        Tcp::Syn,
        &[],
    );
    let unknown = vxlan_on(7777, (PEER_MAC, NODE_MAC), PEER, NODE, 50000, &to_nobody);
    assert_eq!(dp.run_xdp("lb_xdp", &unknown).unwrap().0, XDP_DROP);
    assert_eq!(dp.drops(DropReason::UnknownVni).unwrap(), 1);
    let zero = vxlan_on(0, (PEER_MAC, NODE_MAC), PEER, NODE, 50000, &inner);
    assert_eq!(dp.run_xdp("lb_xdp", &zero).unwrap().0, XDP_DROP);
    assert_eq!(dp.drops(DropReason::UnknownVni).unwrap(), 2);
    let whole = vxlan((PEER_MAC, NODE_MAC), PEER, NODE, 50000, &inner);
    let cut = &whole[..60];
    let (verdict, _) = dp.run_xdp("lb_xdp", cut).unwrap();
    assert_ne!(
        verdict, XDP_REDIRECT,
        "a cut-short tunnel frame is not delivered"
    );
    let stray = tcp(
        (PEER_MAC, NODE_MAC),
        (CLIENT, 1),
        (Ipv4Addr::new(10, 255, 9, 9), 80),
        Tcp::Syn,
        &[],
    );
    let stray = vxlan((PEER_MAC, NODE_MAC), PEER, NODE, 50000, &stray);
    assert_eq!(dp.run_xdp("lb_xdp", &stray).unwrap().0, XDP_DROP);
    assert_eq!(dp.drops(DropReason::NoEndpoint).unwrap(), 1);
}

#[test]
fn round_robin_spreads_new_flows_by_weight() {
    // Equal weights: three backends, 300 flows.
    let mut dp = mesh(&[0, 1, 3]);
    let mut per_backend = [0u32; 4];
    for port in 0..300u16 {
        let syn = tcp(
            FROM_CLIENT,
            (CLIENT, 20000 + port),
            (NODE, 8080),
            Tcp::Syn,
            &[],
        );
        dp.run_xdp("lb_xdp", &syn).unwrap();
        let k = key((CLIENT, 20000 + port), (NODE, 8080), IPPROTO_TCP);
        per_backend[dp.flow(&k).unwrap().unwrap().backend_id as usize] += 1;
    }
    for id in [0, 1, 3] {
        let n = per_backend[id];
        assert!(
            (90..=110).contains(&n),
            "backend {id} got {n} of 300: {per_backend:?}"
        );
        assert_eq!(
            u64::from(n),
            dp.backend_counters(id as u32).unwrap().new_flows
        );
    }
    // Weight 2:1 is expanded into slots by the agent: [0, 0, 1].
    let mut dp = mesh(&[0, 1, 0]);
    let mut zero = 0;
    for port in 0..300u16 {
        let syn = tcp(
            FROM_CLIENT,
            (CLIENT, 30000 + port),
            (NODE, 8080),
            Tcp::Syn,
            &[],
        );
        dp.run_xdp("lb_xdp", &syn).unwrap();
        let k = key((CLIENT, 30000 + port), (NODE, 8080), IPPROTO_TCP);
        zero += u32::from(dp.flow(&k).unwrap().unwrap().backend_id == 0);
    }
    assert!(
        (180..=220).contains(&zero),
        "weight 2 backend got {zero} of 300"
    );
}

#[test]
fn tcp_close_is_recorded_on_both_directions() {
    let mut dp = mesh(&[0]);
    let c = (CLIENT, 44000);
    dp.run_xdp("lb_xdp", &tcp(FROM_CLIENT, c, (NODE, 8080), Tcp::Syn, &[]))
        .unwrap();
    dp.run_xdp("lb_xdp", &tcp(FROM_CLIENT, c, (NODE, 8080), Tcp::Fin, &[]))
        .unwrap();
    let from_task = (task_mac(u32::from(LOCAL_TASK)), GW_MAC);
    dp.run_tc(&tcp(from_task, (LOCAL_TASK, 80), c, Tcp::Fin, &[]))
        .unwrap();
    let fwd = dp
        .flow(&key(c, (NODE, 8080), IPPROTO_TCP))
        .unwrap()
        .unwrap();
    let rev = dp
        .flow(&key((LOCAL_TASK, 80), c, IPPROTO_TCP))
        .unwrap()
        .unwrap();
    assert!(
        fwd.tcp_closed() && rev.tcp_closed(),
        "FIN both ways closes both entries"
    );
    // A new connection from the same client port, while the closed entries wait for the
    // sweep, is a new flow: it follows the service's current backends, not the old one.
    switch_web_backends(&mut dp, ServiceKey::published(8080, IPPROTO_TCP), &[3]);
    let (verdict, out) = dp
        .run_xdp("lb_xdp", &tcp(FROM_CLIENT, c, (NODE, 8080), Tcp::Syn, &[]))
        .unwrap();
    assert_eq!(verdict, XDP_REDIRECT);
    assert_eq!(
        &out[30..34],
        &LOCAL_TASK2.octets(),
        "the SYN went to backend 3"
    );
    let fwd = dp
        .flow(&key(c, (NODE, 8080), IPPROTO_TCP))
        .unwrap()
        .unwrap();
    assert!(!fwd.tcp_closed(), "the new flow's entry starts open");
    // An established flow that is merely idle is never closed by the dataplane.
    dp.run_xdp(
        "lb_xdp",
        &tcp(FROM_CLIENT, (CLIENT, 44001), (NODE, 8080), Tcp::Syn, &[]),
    )
    .unwrap();
    let idle = dp
        .flow(&key((CLIENT, 44001), (NODE, 8080), IPPROTO_TCP))
        .unwrap()
        .unwrap();
    assert!(!idle.tcp_closed());
}

/// Issue 12: a SYN flood from many source addresses that fills the flow tables (256
/// entries each here) leaves an idle established connection working, on the same task,
/// once the flood stops: connections enter the flow table only once their handshake
/// completes, so the flood churns the handshake table alone.
#[test]
fn a_syn_flood_does_not_evict_an_established_connection() {
    let mut dp = mesh_tests::fixture::Dataplane::with_flow_tables(256, 256)
        .expect("the dataplane loads (run as root)");
    mesh_on(&mut dp, &[0, 3], LOCAL_IFINDEX);
    let c = (CLIENT, 45000);
    let fwd = key(c, (NODE, 8080), IPPROTO_TCP);
    dp.run_xdp("lb_xdp", &tcp(FROM_CLIENT, c, (NODE, 8080), Tcp::Syn, &[]))
        .unwrap();
    let chosen = dp.flow(&fwd).unwrap().unwrap();
    let task = Ipv4Addr::from(u32::from_be(chosen.nat_addr));
    assert!(
        dp.flow_in(lb_common::maps::FLOWS, &fwd).unwrap().is_none(),
        "a SYN alone earns no place in the flow table"
    );
    // The task answers, the client acknowledges: established.
    let from_task = (task_mac(u32::from(task)), GW_MAC);
    let (verdict, _) = dp
        .run_tc(&tcp(from_task, (task, 80), c, Tcp::SynAck, &[]))
        .unwrap();
    assert_eq!(
        verdict, TC_ACT_REDIRECT,
        "the SYN-ACK leaves for the client"
    );
    dp.run_xdp("lb_xdp", &tcp(FROM_CLIENT, c, (NODE, 8080), Tcp::Ack, &[]))
        .unwrap();
    let established = dp.flow_in(lb_common::maps::FLOWS, &fwd).unwrap();
    assert_eq!(established.map(|f| f.backend_id), Some(chosen.backend_id));

    // The flood: 5,000 SYNs from as many addresses, never acknowledged.
    let before = dp.service_counters(WEB).unwrap().new_flows;
    for i in 0..5_000u32 {
        let src = Ipv4Addr::from(0x0ac8_0000 + i);
        let syn = tcp(
            FROM_CLIENT,
            (src, 1024 + (i % 60_000) as u16),
            (NODE, 8080),
            Tcp::Syn,
            &[],
        );
        dp.run_xdp("lb_xdp", &syn).unwrap();
    }
    assert_eq!(dp.service_counters(WEB).unwrap().new_flows, before + 5_000);
    assert!(dp.flow_count(lb_common::maps::SYN_FLOWS).unwrap() <= 256);

    // The idle connection goes on, to the same task, and is not balanced again.
    let (verdict, out) = dp
        .run_xdp(
            "lb_xdp",
            &tcp(FROM_CLIENT, c, (NODE, 8080), Tcp::Ack, b"still here"),
        )
        .unwrap();
    assert_eq!(verdict, XDP_REDIRECT);
    let dst = Ipv4Addr::new(out[30], out[31], out[32], out[33]);
    assert_eq!(dst, task, "the established connection stays on its task");
    assert_eq!(dp.service_counters(WEB).unwrap().new_flows, before + 5_000);
    assert_eq!(
        dp.flow_in(lb_common::maps::FLOWS, &fwd)
            .unwrap()
            .map(|f| f.backend_id),
        Some(chosen.backend_id)
    );
    assert_eq!(
        dp.flow_events(FlowEvent::Lost).unwrap(),
        0,
        "no connection lost its state"
    );
}

/// A connection whose entry a full flow table evicted is counted when its next segment
/// finds no state (`lb_flows_lost_total`), once, and balanced again.
#[test]
fn an_evicted_connection_is_counted_as_lost() {
    let mut dp = mesh_tests::fixture::Dataplane::with_flow_tables(256, 256)
        .expect("the dataplane loads (run as root)");
    mesh_on(&mut dp, &[0, 3], LOCAL_IFINDEX);
    // Establishes the connection from `c` (SYN, the task's SYN-ACK, the client's ACK).
    let establish = |dp: &mut mesh_tests::fixture::Dataplane, c: (Ipv4Addr, u16)| {
        let fwd = key(c, (NODE, 8080), IPPROTO_TCP);
        dp.run_xdp("lb_xdp", &tcp(FROM_CLIENT, c, (NODE, 8080), Tcp::Syn, &[]))
            .unwrap();
        let task = Ipv4Addr::from(u32::from_be(dp.flow(&fwd).unwrap().unwrap().nat_addr));
        let from_task = (task_mac(u32::from(task)), GW_MAC);
        dp.run_tc(&tcp(from_task, (task, 80), c, Tcp::SynAck, &[]))
            .unwrap();
        dp.run_xdp("lb_xdp", &tcp(FROM_CLIENT, c, (NODE, 8080), Tcp::Ack, &[]))
            .unwrap();
        fwd
    };
    let idle = establish(&mut dp, (CLIENT, 45000));
    assert!(dp.flow_in(lb_common::maps::FLOWS, &idle).unwrap().is_some());
    // 300 busier connections (600 entries) through a table of 256.
    for i in 0..300u32 {
        establish(&mut dp, (Ipv4Addr::from(0x0ac9_0000 + i), 2000));
    }
    assert!(
        dp.flow_in(lb_common::maps::FLOWS, &idle).unwrap().is_none()
            && dp
                .flow_in(lb_common::maps::SYN_FLOWS, &idle)
                .unwrap()
                .is_none(),
        "the idle connection's entry was evicted"
    );
    assert_eq!(dp.flow_events(FlowEvent::Lost).unwrap(), 0);
    // Its next segment finds no state: counted, and balanced again (a new entry).
    for _ in 0..3 {
        let (verdict, _) = dp
            .run_xdp(
                "lb_xdp",
                &tcp(
                    FROM_CLIENT,
                    (CLIENT, 45000),
                    (NODE, 8080),
                    Tcp::Ack,
                    b"data",
                ),
            )
            .unwrap();
        assert_eq!(verdict, XDP_REDIRECT);
    }
    assert_eq!(
        dp.flow_events(FlowEvent::Lost).unwrap(),
        1,
        "one loss, counted once"
    );
}

/// The VNI a VXLAN frame carries (outer headers without options).
fn vni_of(frame: &[u8]) -> u32 {
    u32::from_be_bytes([0, frame[46], frame[47], frame[48]])
}

/// The frame a local task's interface sends (`from`'s MAC to its gateway).
fn from_task(from: (Ipv4Addr, u16), to: (Ipv4Addr, u16), flags: Tcp, payload: &[u8]) -> Vec<u8> {
    tcp(
        (task_mac(u32::from(from.0)), GW_MAC),
        from,
        to,
        flags,
        payload,
    )
}

/// The frame as the dataplane delivers it into a local task's veth.
fn into_task(from: (Ipv4Addr, u16), to: (Ipv4Addr, u16), flags: Tcp, payload: &[u8]) -> Vec<u8> {
    tcp(
        (GW_MAC, task_mac(u32::from(to.0))),
        from,
        to,
        flags,
        payload,
    )
}

#[test]
fn isolation_a_task_reaches_its_own_networks_vip_dnated_to_the_address_there() {
    let mut dp = mesh(&[0]);
    networks_on(&mut dp, &[5], &[8]);
    let syn = from_task((FRONT_TASK, 34000), (FRONT_VIP, 80), Tcp::Syn, &[]);
    let (verdict, out) = dp.run_tc(&syn).unwrap();
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(
        out,
        into_task((FRONT_TASK, 34000), (FRONT_TASK2, 80), Tcp::Syn, &[])
    );
    let c = dp.service_counters(API_FRONT).unwrap();
    assert_eq!((c.packets, c.new_flows), (1, 1));
    // The answer leaves by the backend's `front` interface and is SNATed back to the VIP.
    let reply = from_task((FRONT_TASK2, 80), (FRONT_TASK, 34000), Tcp::SynAck, &[]);
    let (verdict, out) = dp.run_tc(&reply).unwrap();
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(
        out,
        into_task((FRONT_VIP, 80), (FRONT_TASK, 34000), Tcp::SynAck, &[])
    );
    // Task to task by address on the same network: routed.
    let direct = from_task((FRONT_TASK, 34001), (FRONT_TASK2, 8080), Tcp::Syn, &[]);
    let (verdict, out) = dp.run_tc(&direct).unwrap();
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(
        out,
        into_task((FRONT_TASK, 34001), (FRONT_TASK2, 8080), Tcp::Syn, &[])
    );
    assert_eq!(dp.drops(DropReason::Isolation).unwrap(), 0);
}

#[test]
fn isolation_a_task_cannot_open_flows_to_another_networks_vip_or_addresses() {
    let mut dp = mesh(&[0]);
    networks_on(&mut dp, &[5], &[8]);
    let refused = [
        // front -> back's VIP, and back's task by address.
        ((FRONT_TASK, 35000), (BACK_VIP, 80)),
        ((FRONT_TASK, 35001), (BACK_TASK, 80)),
        // The default network and a user network, both ways.
        ((LOCAL_TASK, 35002), (FRONT_VIP, 80)),
        ((LOCAL_TASK, 35003), (FRONT_TASK2, 80)),
        ((FRONT_TASK, 35004), (VIP, 80)),
        ((FRONT_TASK, 35005), (REMOTE_TASK, 80)),
    ];
    for (n, (from, to)) in refused.into_iter().enumerate() {
        let syn = from_task(from, to, Tcp::Syn, &[]);
        let (verdict, _) = dp.run_tc(&syn).unwrap();
        assert_eq!(verdict, TC_ACT_SHOT, "{from:?} -> {to:?}");
        assert_eq!(dp.drops(DropReason::Isolation).unwrap(), n as u64 + 1);
        assert_eq!(
            dp.flow_in("LB_SYN_FLOWS", &key(from, to, IPPROTO_TCP))
                .unwrap(),
            None,
            "no state for a refused flow"
        );
    }
    for id in [API_BACK, WEB, API_FRONT] {
        assert_eq!(dp.service_counters(id).unwrap().new_flows, 0);
    }
}

#[test]
fn isolation_a_task_cannot_borrow_another_tasks_address() {
    let mut dp = mesh(&[0]);
    networks_on(&mut dp, &[5], &[8]);
    // The `back` task (veth 46) forges `front` addresses: another task's, and one of a
    // task on the peer. Neither is its own on this veth.
    for (n, forged) in [FRONT_TASK, FRONT_REMOTE].into_iter().enumerate() {
        let to_vip = from_task((forged, 39000), (FRONT_VIP, 80), Tcp::Syn, &[]);
        assert_eq!(dp.run_tc_on(46, &to_vip).unwrap().0, TC_ACT_SHOT);
        let to_task = from_task((forged, 39001), (FRONT_TASK2, 80), Tcp::Syn, &[]);
        assert_eq!(dp.run_tc_on(46, &to_task).unwrap().0, TC_ACT_SHOT);
        assert_eq!(dp.drops(DropReason::Isolation).unwrap(), 2 * n as u64 + 2);
    }
    // From its own veth, the same packet is the front task's, and allowed.
    let syn = from_task((FRONT_TASK, 39000), (FRONT_VIP, 80), Tcp::Syn, &[]);
    assert_eq!(dp.run_tc_on(44, &syn).unwrap().0, TC_ACT_REDIRECT);
}

#[test]
fn isolation_a_routing_mesh_only_address_has_no_east_west_traffic() {
    let mut dp = mesh(&[0]);
    networks_on(&mut dp, &[5], &[8]);
    let refused = [
        ((MESH_ONLY_TASK, 36000), (VIP, 80)),
        ((MESH_ONLY_TASK, 36001), (LOCAL_TASK, 80)),
        ((MESH_ONLY_TASK, 36002), (FRONT_VIP, 80)),
        ((MESH_ONLY_TASK, 36003), (MESH_ONLY_REMOTE, 80)),
        ((LOCAL_TASK, 36004), (MESH_ONLY_TASK, 80)),
        // Nor do tasks open flows to a published port balanced to such addresses.
        ((LOCAL_TASK, 36005), (NODE, 9090)),
    ];
    for (n, (from, to)) in refused.into_iter().enumerate() {
        let syn = from_task(from, to, Tcp::Syn, &[]);
        assert_eq!(
            dp.run_tc(&syn).unwrap().0,
            TC_ACT_SHOT,
            "{from:?} -> {to:?}"
        );
        assert_eq!(dp.drops(DropReason::Isolation).unwrap(), n as u64 + 1);
    }
    // The routing mesh still reaches it, and its answers leave with the published
    // address.
    let syn = tcp(FROM_CLIENT, (CLIENT, 41000), (NODE, 9090), Tcp::Syn, &[]);
    let (verdict, out) = dp.run_xdp("lb_xdp", &syn).unwrap();
    assert_eq!(verdict, XDP_REDIRECT);
    assert_eq!(
        out,
        into_task((CLIENT, 41000), (MESH_ONLY_TASK, 80), Tcp::Syn, &[])
    );
    let reply = from_task((MESH_ONLY_TASK, 80), (CLIENT, 41000), Tcp::SynAck, &[]);
    let (verdict, out) = dp.run_tc(&reply).unwrap();
    assert_ne!(verdict, TC_ACT_SHOT, "the reply of an allowed flow passes");
    assert_eq!(
        &out[26..30],
        &NODE.octets(),
        "SNATed to the published address"
    );
    assert_eq!(dp.drops(DropReason::Isolation).unwrap(), 6);
}

#[test]
fn isolation_encapsulation_carries_the_destination_networks_vni() {
    let mut dp = mesh(&[0]);
    networks_on(&mut dp, &[6], &[9]);
    // To the front VIP, balanced to the peer's front task: VNI 4097, byte for byte.
    let syn = from_task((FRONT_TASK, 37000), (FRONT_VIP, 80), Tcp::Syn, &[]);
    let (verdict, out) = dp.run_tc(&syn).unwrap();
    assert_eq!(verdict, TC_ACT_REDIRECT);
    let inner = tcp(
        (NODE_MAC, task_mac(u32::from(FRONT_REMOTE))),
        (FRONT_TASK, 37000),
        (FRONT_REMOTE, 80),
        Tcp::Syn,
        &[],
    );
    let expected = vxlan_on(
        FRONT_VNI,
        (NODE_MAC, PEER_MAC),
        NODE,
        PEER,
        vxlan_sport(&out),
        &inner,
    );
    assert_eq!(out[12..], expected[12..]);
    assert_eq!(vni_of(&out), FRONT_VNI);
    // By address on the same network, too.
    let direct = from_task((FRONT_TASK, 37001), (FRONT_REMOTE, 22), Tcp::Syn, &[]);
    let (verdict, out) = dp.run_tc(&direct).unwrap();
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(vni_of(&out), FRONT_VNI);
    // The default network's traffic keeps the ingress VNI.
    let default = from_task((LOCAL_TASK, 37002), (REMOTE_TASK, 80), Tcp::Syn, &[]);
    let (verdict, out) = dp.run_tc(&default).unwrap();
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(vni_of(&out), VNI);
    // Routing-mesh traffic to a routing-mesh-only address on the peer: the ingress VNI.
    let syn = tcp(FROM_CLIENT, (CLIENT, 41001), (NODE, 9090), Tcp::Syn, &[]);
    let (verdict, out) = dp.run_xdp("lb_xdp", &syn).unwrap();
    assert_eq!(verdict, XDP_TX);
    assert_eq!(vni_of(&out), VNI);
    let inner = syn_with_mss(
        (NODE_MAC, task_mac(u32::from(MESH_ONLY_REMOTE))),
        (CLIENT, 41001),
        (MESH_ONLY_REMOTE, 80),
        1410,
    );
    let expected = vxlan_on(
        VNI,
        (NODE_MAC, PEER_MAC),
        NODE,
        PEER,
        vxlan_sport(&out),
        &inner,
    );
    assert_eq!(out, expected);
}

#[test]
fn isolation_decapsulation_takes_only_the_destinations_vni() {
    let mut dp = mesh(&[0]);
    networks_on(&mut dp, &[5], &[8]);
    let to_front = tcp(
        (PEER_MAC, NODE_MAC),
        (FRONT_REMOTE, 38000),
        (FRONT_TASK, 80),
        Tcp::Syn,
        &[],
    );
    // Its own network's VNI: delivered as it is.
    let frame = vxlan_on(
        FRONT_VNI,
        (PEER_MAC, NODE_MAC),
        PEER,
        NODE,
        50000,
        &to_front,
    );
    let (verdict, out) = dp.run_xdp("lb_xdp", &frame).unwrap();
    assert_eq!(verdict, XDP_REDIRECT);
    assert_eq!(
        out,
        into_task((FRONT_REMOTE, 38000), (FRONT_TASK, 80), Tcp::Syn, &[])
    );
    // Another network's, or the ingress network's: dropped and counted.
    for (n, vni) in [BACK_VNI, VNI].into_iter().enumerate() {
        let frame = vxlan_on(vni, (PEER_MAC, NODE_MAC), PEER, NODE, 50000, &to_front);
        assert_eq!(
            dp.run_xdp("lb_xdp", &frame).unwrap().0,
            XDP_DROP,
            "VNI {vni}"
        );
        assert_eq!(dp.drops(DropReason::Isolation).unwrap(), n as u64 + 1);
    }
    // A task of the peer sending to a routing-mesh-only address here with the ingress
    // VNI: that is no routing-mesh traffic.
    let east_west = tcp(
        (PEER_MAC, NODE_MAC),
        (REMOTE_TASK, 38001),
        (MESH_ONLY_TASK, 80),
        Tcp::Syn,
        &[],
    );
    let frame = vxlan((PEER_MAC, NODE_MAC), PEER, NODE, 50000, &east_west);
    assert_eq!(dp.run_xdp("lb_xdp", &frame).unwrap().0, XDP_DROP);
    assert_eq!(dp.drops(DropReason::Isolation).unwrap(), 3);
    assert_eq!(
        dp.flow_in(
            "LB_SYN_FLOWS",
            &key((MESH_ONLY_TASK, 80), (REMOTE_TASK, 38001), IPPROTO_TCP)
        )
        .unwrap(),
        None,
        "a refused packet leaves no Return entry"
    );
}

#[test]
fn isolation_routing_mesh_clients_reach_a_mesh_only_address_through_the_tunnel() {
    let mut dp = mesh(&[0]);
    networks_on(&mut dp, &[5], &[8]);
    // The peer balanced a client of its published port to the routing-mesh-only
    // address here.
    let inner = tcp(
        (PEER_MAC, NODE_MAC),
        (CLIENT, 42000),
        (MESH_ONLY_TASK, 80),
        Tcp::Syn,
        &[],
    );
    let frame = vxlan((PEER_MAC, NODE_MAC), PEER, NODE, 50000, &inner);
    let (verdict, out) = dp.run_xdp("lb_xdp", &frame).unwrap();
    assert_eq!(verdict, XDP_REDIRECT);
    assert_eq!(
        out,
        into_task((CLIENT, 42000), (MESH_ONLY_TASK, 80), Tcp::Syn, &[])
    );
    // Its answer goes back through the peer, with the ingress VNI.
    let reply = from_task((MESH_ONLY_TASK, 80), (CLIENT, 42000), Tcp::SynAck, &[]);
    let (verdict, out) = dp.run_tc(&reply).unwrap();
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(vni_of(&out), VNI);
    let inner = tcp(
        (NODE_MAC, task_mac(u32::from(CLIENT))),
        (MESH_ONLY_TASK, 80),
        (CLIENT, 42000),
        Tcp::SynAck,
        &[],
    );
    assert_tc_encapsulated_to_peer(&out, &inner);
    assert_eq!(dp.drops(DropReason::Isolation).unwrap(), 0);
}

#[test]
fn isolation_a_user_networks_vip_is_not_reached_from_outside() {
    let mut dp = mesh(&[0]);
    networks_on(&mut dp, &[5], &[8]);
    let syn = tcp(FROM_CLIENT, (CLIENT, 43000), (FRONT_VIP, 80), Tcp::Syn, &[]);
    assert_eq!(dp.run_xdp("lb_xdp", &syn).unwrap().0, XDP_DROP);
    assert_eq!(dp.drops(DropReason::Isolation).unwrap(), 1);
    // The default network's VIP still is.
    let syn = tcp(FROM_CLIENT, (CLIENT, 43001), (VIP, 80), Tcp::Syn, &[]);
    assert_eq!(dp.run_xdp("lb_xdp", &syn).unwrap().0, XDP_REDIRECT);
}

/// Values that keep their size but change their meaning: pinned maps written with another
/// layout version (`LB_LAYOUT`) are recreated by the agent's loader, never misread; maps
/// of the same version are kept (an agent restart keeps every flow).
#[test]
fn pinned_maps_of_another_layout_version_are_recreated_and_of_this_one_kept() {
    use lb_agent::dataplane::{loader::Dataplane as Agent, map_state::MapOp};
    mesh_tests::fixture::require_root().unwrap();
    let dir = std::path::PathBuf::from(format!("/sys/fs/bpf/lbtest-layout-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let open = || {
        Agent::open(
            lb_agent::EBPF_OBJECT,
            &dir,
            lb_common::maps::DEFAULT_MAX_FLOWS,
        )
    };
    let backend = Backend::new(u32::from(LOCAL_TASK), 80, WEB);
    let mut agent = open().unwrap();
    agent.apply(&[MapOp::UpsertBackend(7, backend)]).unwrap();
    drop(agent);
    let kept = open().unwrap().read_state().unwrap();
    assert_eq!(kept.backends.get(&7), Some(&backend), "same version: kept");

    // An agent of another layout version wrote these pins.
    let pin = dir.join(lb_common::maps::LAYOUT);
    let mut layout: aya::maps::Array<aya::maps::MapData, u32> =
        aya::maps::Map::Array(aya::maps::MapData::from_pin(&pin).unwrap())
            .try_into()
            .unwrap();
    layout
        .set(0, lb_common::maps::LAYOUT_VERSION - 1, 0)
        .unwrap();
    drop(layout);
    let recreated = open().unwrap().read_state().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(recreated.backends.is_empty(), "another version: recreated");
}
