//! The headers VXLAN encapsulation puts between the outer Ethernet header and the inner
//! frame, built the same way by the XDP and TC programs.

use lb_common::{NodeConfig, VXLAN_OVERHEAD};

use crate::{csum, packet::Ipv4Packet};

/// VXLAN's "VNI present" flag.
pub(crate) const FLAG_VNI: u8 = 0x08;

/// Outer IPv4 (20 bytes), UDP (8) and VXLAN (8) headers from this node to the peer at
/// `node`, on network `vni`, for an inner IPv4 packet of `pkt.tot_len` bytes. The UDP source port carries
/// per-flow entropy (for ECMP and RSS); the UDP checksum is 0, as RFC 7348 allows.
#[inline(always)]
pub(crate) fn tunnel_header(cfg: &NodeConfig, node: u32, vni: u32, pkt: &Ipv4Packet) -> [u8; 36] {
    let outer_len = pkt.tot_len.wrapping_add(VXLAN_OVERHEAD);
    let len = outer_len.to_be_bytes();
    let (s, d) = (cfg.addr.to_ne_bytes(), node.to_ne_bytes());
    let sport = (0xc000 | (flow_entropy(pkt) & 0x3fff)).to_be_bytes();
    let dport = cfg.vxlan_port.to_ne_bytes();
    let ulen = (outer_len - 20).to_be_bytes();
    let v = vni.to_be_bytes();
    let mut h = [
        0x45, 0, len[0], len[1], 0, 0, 0x40, 0, 64, 17, 0, 0, s[0], s[1], s[2], s[3], d[0], d[1],
        d[2], d[3], // IPv4: DF, TTL 64, UDP
        sport[0], sport[1], dport[0], dport[1], ulen[0], ulen[1], 0, 0, // UDP
        FLAG_VNI, 0, 0, 0, v[1], v[2], v[3], 0, // VXLAN
    ];
    let ip: &[u8; 20] = h.first_chunk().unwrap_or(&[0; 20]);
    let check = csum::ipv4_bytes(ip).to_ne_bytes();
    h[10] = check[0];
    h[11] = check[1];
    h
}

/// A per-flow value for the outer UDP source port, so ECMP and RSS spread flows.
#[inline(always)]
pub(crate) fn flow_entropy(pkt: &Ipv4Packet) -> u16 {
    let k = &pkt.key;
    let mut h = k.src_addr ^ k.dst_addr.rotate_left(16);
    h ^= (u32::from(k.src_port) << 16) | u32::from(k.dst_port);
    h ^= u32::from(k.proto);
    h = h.wrapping_mul(0x9e37_79b1);
    (h >> 16) as u16
}
