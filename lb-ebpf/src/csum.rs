//! Internet checksum arithmetic (RFC 1071, incremental updates after RFC 1624).
//!
//! One's-complement sums do not depend on byte order as long as every word is read and
//! written the same way, so values are taken exactly as they sit in the packet.

/// Folds a 64-bit accumulator into 16 bits.
#[inline(always)]
pub(crate) fn fold(mut sum: u64) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// The checksum `check` after a 32-bit word of the covered data changes from `old` to `new`.
#[inline(always)]
pub(crate) fn replace4(check: u16, old: u32, new: u32) -> u16 {
    let old = !old;
    let sum = u64::from(!check)
        + u64::from(old & 0xffff)
        + u64::from(old >> 16)
        + u64::from(new & 0xffff)
        + u64::from(new >> 16);
    !fold(sum)
}

/// The checksum `check` after a 16-bit word of the covered data changes from `old` to `new`.
#[inline(always)]
pub(crate) fn replace2(check: u16, old: u16, new: u16) -> u16 {
    !fold(u64::from(!check) + u64::from(!old) + u64::from(new))
}

/// UDP's variant: 0 means "no checksum" and stays 0; a computed 0 is sent as 0xffff.
#[inline(always)]
pub(crate) fn udp_fixup(before: u16, after: u16) -> u16 {
    match (before, after) {
        (0, _) => 0,
        (_, 0) => 0xffff,
        (_, v) => v,
    }
}

/// The checksum of a 20-byte IPv4 header given as bytes (checksum bytes zero).
#[inline(always)]
pub(crate) fn ipv4_bytes(h: &[u8; 20]) -> u16 {
    let mut sum = 0u64;
    let mut i = 0;
    while i < 20 {
        sum += u64::from(u16::from_ne_bytes([h[i], h[i + 1]]));
        i += 2;
    }
    !fold(sum)
}
