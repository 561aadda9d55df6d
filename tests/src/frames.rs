//! Crafted frames for the dataplane's tests and benchmarks, and the standard scenario
//! they run against: service `web` (TCP, published 8080 and a VIP) with local and remote
//! backends, and `dns` (UDP, published 5353).

use std::net::Ipv4Addr;

use etherparse::{IpNumber, Ipv4Header, PacketBuilder, TcpOptionElement};
use lb_common::{
    Backend, Endpoint, FlowKey, IPPROTO_TCP, IPPROTO_UDP, Service, ServiceKey, service::task_mac,
};

use crate::fixture::{CLIENT_MAC, Dataplane, NODE_MAC, PEER, VNI, be};

/// `web`'s virtual IP.
pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 255, 255, 10);
/// A task on this node (backend 0 of `web`, backend 2 of `dns`).
pub const LOCAL_TASK: Ipv4Addr = Ipv4Addr::new(10, 255, 1, 1);
/// A second task on this node (backend 3 of `web`).
pub const LOCAL_TASK2: Ipv4Addr = Ipv4Addr::new(10, 255, 1, 2);
/// A task on the peer node (backend 1 of `web`).
pub const REMOTE_TASK: Ipv4Addr = Ipv4Addr::new(10, 255, 2, 1);
/// ifindex of `LOCAL_TASK`'s veth (set to a real veth by benchmarks).
pub const LOCAL_IFINDEX: u32 = 42;
/// ifindex of `LOCAL_TASK2`'s veth.
pub const LOCAL_IFINDEX2: u32 = 43;
/// MAC of the host side of local tasks' veths.
pub const GW_MAC: [u8; 6] = [0x02, 0, 0, 0, 1, 1];
/// Service id of `web`.
pub const WEB: u32 = 0;
/// Service id of `dns`.
pub const DNS: u32 = 1;
/// Where `web`'s slot table starts in the slot pool.
pub const WEB_BASE: u32 = 0;
/// Where `dns`'s slot table starts.
pub const DNS_BASE: u32 = 100;
/// Where [`switch_web_backends`] writes `web`'s new table.
pub const WEB_SWITCHED_BASE: u32 = 200;

/// Service `web` (TCP, published 8080 and VIP:80) with backends 0 (local), 1 (remote),
/// 3 (local); `dns` (UDP, published 5353) with backend 2. Slots as given.
pub fn mesh(web_slots: &[u32]) -> Dataplane {
    let mut dp = Dataplane::new().expect("the dataplane loads (run as root)");
    mesh_on(&mut dp, web_slots, LOCAL_IFINDEX);
    dp
}

/// Programs the standard scenario into `dp`, with `LOCAL_TASK` behind `local_ifindex`.
///
/// # Panics
/// When a map update fails.
pub fn mesh_on(dp: &mut Dataplane, web_slots: &[u32], local_ifindex: u32) {
    let web = Service {
        id: WEB,
        base: WEB_BASE,
        slots: web_slots.len() as u32,
        flags: Service::FLAG_MSS_CLAMP,
        vni: VNI,
        sched: 0,
    };
    dp.set_slots(WEB_BASE, web_slots).unwrap();
    dp.set_service(ServiceKey::published(8080, IPPROTO_TCP), web)
        .unwrap();
    dp.set_service(ServiceKey::new(u32::from(VIP), 80, IPPROTO_TCP), web)
        .unwrap();
    dp.set_backend(0, Backend::new(u32::from(LOCAL_TASK), 80, WEB))
        .unwrap();
    dp.set_backend(1, Backend::new(u32::from(REMOTE_TASK), 80, WEB))
        .unwrap();
    dp.set_backend(3, Backend::new(u32::from(LOCAL_TASK2), 80, WEB))
        .unwrap();
    let dns = Service {
        id: DNS,
        base: DNS_BASE,
        slots: 1,
        flags: 0,
        vni: VNI,
        sched: 0,
    };
    dp.set_slots(DNS_BASE, &[2]).unwrap();
    dp.set_service(ServiceKey::published(5353, IPPROTO_UDP), dns)
        .unwrap();
    dp.set_backend(2, Backend::new(u32::from(LOCAL_TASK), 53, DNS))
        .unwrap();
    for (addr, ifindex) in [(LOCAL_TASK, local_ifindex), (LOCAL_TASK2, LOCAL_IFINDEX2)] {
        let ep = Endpoint {
            node: 0,
            ifindex,
            mac: task_mac(u32::from(addr)),
            gw_mac: GW_MAC,
            vni: VNI,
        };
        dp.set_endpoint(addr, ep).unwrap();
    }
    let remote = Endpoint {
        node: be(PEER),
        ifindex: 0,
        mac: task_mac(u32::from(REMOTE_TASK)),
        gw_mac: [0; 6],
        vni: VNI,
    };
    dp.set_endpoint(REMOTE_TASK, remote).unwrap();
}

/// VNI of the user network `front` of [`networks_on`].
pub const FRONT_VNI: u32 = 4097;
/// VNI of the user network `back`.
pub const BACK_VNI: u32 = 4098;
/// `api`'s VIP on `front` (every TCP port).
pub const FRONT_VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 2);
/// `api`'s VIP on `back` (every TCP port).
pub const BACK_VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
/// A task on this node on `front` (a client).
pub const FRONT_TASK: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 5);
/// A second task on this node on `front` (`api`'s backend 5 there).
pub const FRONT_TASK2: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 7);
/// A task on the peer on `front` (`api`'s backend 6 there).
pub const FRONT_REMOTE: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 6);
/// A task on this node on `back` (`api`'s backend 7 there).
pub const BACK_TASK: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 5);
/// A routing-mesh-only ingress address of a task on this node (its service joins user
/// networks), backend 8 of `api`'s published port 9090.
pub const MESH_ONLY_TASK: Ipv4Addr = Ipv4Addr::new(10, 255, 1, 5);
/// A routing-mesh-only ingress address on the peer, backend 9 of port 9090.
pub const MESH_ONLY_REMOTE: Ipv4Addr = Ipv4Addr::new(10, 255, 2, 5);
/// Service id of `api` on `front`.
pub const API_FRONT: u32 = 5;
/// Service id of `api` on `back`.
pub const API_BACK: u32 = 6;
/// Service id of `api`'s published port 9090.
pub const API_PUBLISHED: u32 = 7;

/// Adds user networks to the standard scenario: `front` and `back`, each with its VIP of
/// `api` (every TCP port) and tasks here and on the peer, and `api`'s published port
/// 9090 balanced to its tasks' routing-mesh-only ingress addresses (VNI 0). `api` on
/// `front` balances to `front_backends` (5: `FRONT_TASK2`, 6: `FRONT_REMOTE`).
///
/// # Panics
/// When a map update fails.
pub fn networks_on(dp: &mut Dataplane, front_backends: &[u32], published_backends: &[u32]) {
    let local = |ifindex: u32, addr: Ipv4Addr, vni: u32| Endpoint {
        node: 0,
        ifindex,
        mac: task_mac(u32::from(addr)),
        gw_mac: GW_MAC,
        vni,
    };
    let remote = |addr: Ipv4Addr, vni: u32| Endpoint {
        node: be(PEER),
        ifindex: 0,
        mac: task_mac(u32::from(addr)),
        gw_mac: [0; 6],
        vni,
    };
    let endpoints = [
        (FRONT_TASK, local(44, FRONT_TASK, FRONT_VNI)),
        (FRONT_TASK2, local(45, FRONT_TASK2, FRONT_VNI)),
        (FRONT_REMOTE, remote(FRONT_REMOTE, FRONT_VNI)),
        (BACK_TASK, local(46, BACK_TASK, BACK_VNI)),
        (MESH_ONLY_TASK, local(47, MESH_ONLY_TASK, 0)),
        (MESH_ONLY_REMOTE, remote(MESH_ONLY_REMOTE, 0)),
    ];
    for (addr, ep) in endpoints {
        dp.set_endpoint(addr, ep).unwrap();
    }
    let services = [
        (FRONT_VIP, 0, API_FRONT, 400, FRONT_VNI, front_backends),
        (BACK_VIP, 0, API_BACK, 500, BACK_VNI, &[7][..]),
        (
            Ipv4Addr::UNSPECIFIED,
            9090,
            API_PUBLISHED,
            600,
            0,
            published_backends,
        ),
    ];
    for (addr, port, id, base, vni, backends) in services {
        dp.set_slots(base, backends).unwrap();
        let svc = Service {
            id,
            base,
            slots: backends.len() as u32,
            flags: Service::FLAG_MSS_CLAMP,
            vni,
            sched: 0,
        };
        dp.set_service(ServiceKey::new(u32::from(addr), port, IPPROTO_TCP), svc)
            .unwrap();
    }
    let backends = [
        (5, FRONT_TASK2, API_FRONT),
        (6, FRONT_REMOTE, API_FRONT),
        (7, BACK_TASK, API_BACK),
        (8, MESH_ONLY_TASK, API_PUBLISHED),
        (9, MESH_ONLY_REMOTE, API_PUBLISHED),
    ];
    for (id, addr, service) in backends {
        let port = if service == API_PUBLISHED { 80 } else { 0 };
        dp.set_backend(id, Backend::new(u32::from(addr), port, service))
            .unwrap();
    }
}

/// Switches `web`'s backend set for `key` atomically, as the agent does: fills a free
/// range of the slot pool, then points the service at it with one map update.
///
/// # Panics
/// When a map update fails.
pub fn switch_web_backends(dp: &mut Dataplane, key: ServiceKey, backend_ids: &[u32]) {
    dp.set_slots(WEB_SWITCHED_BASE, backend_ids).unwrap();
    let web = Service {
        id: WEB,
        base: WEB_SWITCHED_BASE,
        slots: backend_ids.len() as u32,
        flags: Service::FLAG_MSS_CLAMP,
        vni: VNI,
        sched: 0,
    };
    dp.set_service(key, web).unwrap();
}

/// Which TCP segment to build.
#[derive(Clone, Copy, Debug)]
pub enum Tcp {
    /// SYN with MSS 1460.
    Syn,
    /// SYN-ACK with MSS 1410.
    SynAck,
    /// A plain ACK.
    Ack,
    /// FIN-ACK.
    Fin,
}

/// A TCP frame; SYNs carry an MSS option of 1460.
pub fn tcp(
    macs: ([u8; 6], [u8; 6]),
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
    kind: Tcp,
    payload: &[u8],
) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(macs.0, macs.1)
        .ipv4(src.0.octets(), dst.0.octets(), 64)
        .tcp(src.1, dst.1, 1000, 64240);
    let b = match kind {
        Tcp::Syn => b
            .syn()
            .options(&[TcpOptionElement::MaximumSegmentSize(1460)])
            .unwrap(),
        Tcp::SynAck => b
            .syn()
            .ack(1)
            .options(&[TcpOptionElement::MaximumSegmentSize(1410)])
            .unwrap(),
        Tcp::Ack => b.ack(1),
        Tcp::Fin => b.fin().ack(1),
    };
    let mut out = Vec::new();
    b.write(&mut out, payload).unwrap();
    out
}

/// A TCP SYN whose MSS option says `mss`.
pub fn syn_with_mss(
    macs: ([u8; 6], [u8; 6]),
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
    mss: u16,
) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(macs.0, macs.1)
        .ipv4(src.0.octets(), dst.0.octets(), 64)
        .tcp(src.1, dst.1, 1000, 64240)
        .syn()
        .options(&[TcpOptionElement::MaximumSegmentSize(mss)])
        .unwrap();
    let mut out = Vec::new();
    b.write(&mut out, &[]).unwrap();
    out
}

/// A UDP frame.
pub fn udp(
    macs: ([u8; 6], [u8; 6]),
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
    p: &[u8],
) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2(macs.0, macs.1)
        .ipv4(src.0.octets(), dst.0.octets(), 64)
        .udp(src.1, dst.1)
        .write(&mut out, p)
        .unwrap();
    out
}

/// Client -> node, as it arrives on the underlay.
pub const FROM_CLIENT: ([u8; 6], [u8; 6]) = (CLIENT_MAC, NODE_MAC);

/// What a VXLAN frame from `src` to `dst` (underlay) carrying `inner` looks like, given
/// the UDP source port the sender chose, on the ingress network.
pub fn vxlan(
    macs: ([u8; 6], [u8; 6]),
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    inner: &[u8],
) -> Vec<u8> {
    vxlan_on(VNI, macs, src, dst, sport, inner)
}

/// [`vxlan`] on the network `vni`.
pub fn vxlan_on(
    vni: u32,
    macs: ([u8; 6], [u8; 6]),
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    inner: &[u8],
) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&macs.1); // dst
    out.extend_from_slice(&macs.0); // src
    out.extend_from_slice(&[0x08, 0x00]);
    let udp_len = (8 + 8 + inner.len()) as u16;
    let mut ip = Ipv4Header::new(udp_len, 64, IpNumber::UDP, src.octets(), dst.octets()).unwrap();
    ip.dont_fragment = true;
    ip.header_checksum = ip.calc_header_checksum();
    ip.write(&mut out).unwrap();
    out.extend_from_slice(&sport.to_be_bytes());
    out.extend_from_slice(&4789u16.to_be_bytes());
    out.extend_from_slice(&udp_len.to_be_bytes());
    out.extend_from_slice(&[0, 0]);
    let v = vni.to_be_bytes();
    out.extend_from_slice(&[0x08, 0, 0, 0, v[1], v[2], v[3], 0]);
    out.extend_from_slice(inner);
    out
}

/// The outer UDP source port of a VXLAN frame (flow entropy), checked to be in range.
pub fn vxlan_sport(frame: &[u8]) -> u16 {
    let sport = u16::from_be_bytes([frame[34], frame[35]]);
    assert!(
        sport >= 0xc000,
        "VXLAN source port {sport} outside 49152..=65535"
    );
    sport
}

/// The flow key of a 5-tuple in host order.
pub fn key(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), proto: u8) -> FlowKey {
    FlowKey {
        src_addr: be(src.0),
        dst_addr: be(dst.0),
        src_port: src.1.to_be(),
        dst_port: dst.1.to_be(),
        proto,
        pad: 0,
        pad2: 0,
    }
}

/// MACs of a frame delivered to `LOCAL_TASK` (source, destination).
pub const TASK_MACS: ([u8; 6], [u8; 6]) = (GW_MAC, [0x02, 0x42, 10, 255, 1, 1]);
