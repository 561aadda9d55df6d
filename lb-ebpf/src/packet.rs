//! Bounds-checked access to packet memory, and the parse of an IPv4 packet into its
//! flow key, shared by both programs.

use core::mem::size_of;

use lb_common::{FlowKey, IPPROTO_TCP, IPPROTO_UDP};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};

/// EtherType of IPv4 as it sits in the frame.
pub(crate) const ETH_P_IP: u16 = 0x0800_u16.to_be();
/// "More fragments" flag and fragment offset bits of the IPv4 `frags` field (host order).
pub(crate) const IP_MF_OFFSET: u16 = 0x3fff;
/// Fragment offset bits only.
pub(crate) const IP_OFFSET: u16 = 0x1fff;

/// A pointer to a `T` at `offset` into `[start, end)`, if it fits.
#[inline(always)]
pub(crate) fn ptr_at<T>(start: usize, end: usize, offset: usize) -> Option<*mut T> {
    let at = start + offset;
    if at + size_of::<T>() > end {
        return None;
    }
    Some(at as *mut T)
}

/// Where an IPv4 packet's headers are, and what it is.
#[derive(Clone, Copy)]
pub(crate) struct Ipv4Packet {
    /// Offset of the L4 header from the start of the frame.
    pub l4: usize,
    /// The 5-tuple (ports 0 for protocols other than TCP and UDP).
    pub key: FlowKey,
    /// IPv4 total length.
    pub tot_len: u16,
    /// TCP flags byte (0 for other protocols).
    pub tcp_flags: u8,
    /// Whether the packet is a fragment (ports unknown or partial).
    pub fragment: bool,
}

/// Why a frame could not be parsed as an IPv4 packet.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum ParseError {
    /// Not IPv4 at all (ARP, IPv6, ...): not ours.
    NotIpv4,
    /// IPv4 with impossible lengths or a cut-short header.
    Malformed,
}

/// Parses the Ethernet and IPv4 headers at the start of `[start, end)` and, for TCP and
/// UDP, the ports. IP options are skipped; non-first fragments get zero ports.
///
/// `frame_len` is the whole frame's length, which may exceed `end - start`: an skb's
/// payload can sit in paged fragments beyond the directly readable headers.
#[inline(always)]
pub(crate) fn parse_ipv4(
    start: usize,
    end: usize,
    frame_len: usize,
) -> Result<Ipv4Packet, ParseError> {
    let eth: *const EthHdr = ptr_at(start, end, 0).ok_or(ParseError::NotIpv4)?;
    // SAFETY: bounds checked by ptr_at.
    if unsafe { (*eth).ether_type } != ETH_P_IP {
        return Err(ParseError::NotIpv4);
    }
    let ip: *const Ipv4Hdr = ptr_at(start, end, EthHdr::LEN).ok_or(ParseError::Malformed)?;
    // SAFETY: bounds checked by ptr_at.
    let ip = unsafe { &*ip };
    let ihl = usize::from(ip.vihl & 0x0f) * 4;
    let tot_len = u16::from_be_bytes(ip.tot_len);
    if ip.vihl >> 4 != 4 || ihl < Ipv4Hdr::LEN || usize::from(tot_len) < ihl {
        return Err(ParseError::Malformed);
    }
    if EthHdr::LEN + usize::from(tot_len) > frame_len {
        return Err(ParseError::Malformed);
    }
    let frags = u16::from_be_bytes(ip.frags);
    let fragment = frags & IP_MF_OFFSET != 0;
    let l4 = EthHdr::LEN + ihl;
    let mut key = FlowKey {
        src_addr: u32::from_ne_bytes(ip.src_addr),
        dst_addr: u32::from_ne_bytes(ip.dst_addr),
        src_port: 0,
        dst_port: 0,
        proto: ip.proto,
        pad: 0,
        pad2: 0,
    };
    let mut tcp_flags = 0;
    if frags & IP_OFFSET == 0 && (ip.proto == IPPROTO_TCP || ip.proto == IPPROTO_UDP) {
        // Both carry the ports in their first four bytes.
        let ports: *const [u16; 2] = ptr_at(start, end, l4).ok_or(ParseError::Malformed)?;
        // SAFETY: bounds checked by ptr_at.
        let ports = unsafe { ports.read_unaligned() };
        key.src_port = ports[0];
        key.dst_port = ports[1];
        if ip.proto == IPPROTO_TCP {
            let flags: *const u8 = ptr_at(start, end, l4 + 13).ok_or(ParseError::Malformed)?;
            // SAFETY: bounds checked by ptr_at.
            tcp_flags = unsafe { *flags };
        } else if usize::from(tot_len) < ihl + 8 {
            return Err(ParseError::Malformed);
        }
    }
    Ok(Ipv4Packet {
        l4,
        key,
        tot_len,
        tcp_flags,
        fragment,
    })
}
