//! Where a connection comes from, as the admission limits count it: an
//! IPv4 address whole, an IPv6 address by its /64 (the block one subscriber
//! usually holds, so a single user cannot dodge a per-address limit by
//! walking its own prefix); and the network around it, a /24 or a /48 (one
//! attacker's machines usually share one), for the budgets shared fairly
//! between sources.

use std::net::IpAddr;

/// Where a connection comes from, as the admission limits count it: an
/// IPv4 address whole, an IPv6 address by its /64 (the block one
/// subscriber usually holds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct AddressBlock(u128);

impl AddressBlock {
    /// The block `ip` belongs to.
    pub(crate) fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Self(u128::from(u32::from(v4))),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self(u128::from(u32::from(v4))),
                // The /64 prefix, and a mark no IPv4 block (< 2^32) carries.
                None => Self((u128::from(v6) & !u128::from(u64::MAX)) | (1 << 63)),
            },
        }
    }
}

/// The network a connection comes from, as the fair shares count it: an
/// IPv4 /24 or an IPv6 /48 (a site's allocation), so that many addresses of
/// one network share one share.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct AddressPrefix(u128);

impl AddressPrefix {
    /// The prefix `ip` belongs to.
    pub(crate) fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Self(u128::from(u32::from(v4) & 0xffff_ff00)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self::of(IpAddr::V4(v4)),
                // The /48 prefix, and a mark no IPv4 prefix (< 2^32) carries.
                None => Self((u128::from(v6) & !((1 << 80) - 1)) | 1),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_counts_by_its_slash_64() {
        let block = |text: &str| AddressBlock::of(text.parse().unwrap());
        assert_eq!(block("2001:db8:1:2:aaaa::1"), block("2001:db8:1:2:bbbb::2"));
        assert_ne!(block("2001:db8:1:2::1"), block("2001:db8:1:3::1"));
        assert_eq!(block("::ffff:192.0.2.1"), block("192.0.2.1"));
        assert_ne!(block("192.0.2.1"), block("192.0.2.2"));
        assert_ne!(
            block("::c000:201"),
            block("192.0.2.1"),
            "an IPv6 /64 never collides with an IPv4 address"
        );
    }

    #[test]
    fn prefixes_are_slash_24_and_slash_48() {
        let prefix = |text: &str| AddressPrefix::of(text.parse().unwrap());
        assert_eq!(prefix("192.0.2.1"), prefix("192.0.2.254"));
        assert_eq!(prefix("::ffff:192.0.2.9"), prefix("192.0.2.1"));
        assert_ne!(prefix("192.0.2.1"), prefix("192.0.3.1"));
        assert_eq!(prefix("2001:db8:1:2::1"), prefix("2001:db8:1:ffff::9"));
        assert_ne!(prefix("2001:db8:1::1"), prefix("2001:db8:2::1"));
        assert_ne!(prefix("::"), prefix("0.0.0.0"));
    }
}
