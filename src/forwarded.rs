//! Who the client is, for limits kept per client address: the TCP peer, or,
//! when the peer is a trusted reverse proxy (`TRUSTED_PROXIES`), the
//! right-most `X-Forwarded-For` address that is not itself a trusted proxy.
//!
//! Only a trusted proxy's header is believed: anyone can send any
//! `X-Forwarded-For`, and a limit keyed by it would be theirs to choose. It is
//! read from the right because each proxy appends the peer it saw, so the
//! entries left of the first untrusted one were written by the client. Pure.

use std::net::{IpAddr, SocketAddr};

/// The `TRUSTED_PROXIES` list: addresses and networks (CIDR).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TrustedProxies(Vec<Network>);

/// An address and how many of its leading bits a match must share.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Network {
    addr: IpAddr,
    prefix: u8,
}

impl Network {
    fn parse(text: &str) -> Option<Network> {
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let addr = addr.parse::<IpAddr>().ok()?.to_canonical();
        let bits = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => bits,
            Some(prefix) if prefix.bytes().all(|b| b.is_ascii_digit()) => prefix.parse().ok()?,
            Some(_) => return None,
        };
        (prefix <= bits).then_some(Network { addr, prefix })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                same_prefix(net.to_bits().into(), ip.to_bits().into(), 32, self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => same_prefix(net.to_bits(), ip.to_bits(), 128, self.prefix),
            _ => false,
        }
    }
}

/// Whether the first `prefix` of the low `bits` bits of `a` and `b` agree.
fn same_prefix(a: u128, b: u128, bits: u8, prefix: u8) -> bool {
    let ignored = u32::from(bits - prefix);
    a.checked_shr(ignored).unwrap_or(0) == b.checked_shr(ignored).unwrap_or(0)
}

impl TrustedProxies {
    /// Parses a comma-separated list of IP addresses and CIDR networks;
    /// the message names the entry that is neither.
    pub fn parse(list: &str) -> Result<TrustedProxies, String> {
        let entries = list.split(',').map(str::trim).filter(|entry| !entry.is_empty());
        entries
            .map(|entry| {
                Network::parse(entry).ok_or_else(|| {
                    format!("TRUSTED_PROXIES must list IP addresses or networks such as 10.0.0.0/8, not {entry:?}")
                })
            })
            .collect::<Result<_, _>>()
            .map(TrustedProxies)
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|network| network.contains(ip))
    }

    /// The client's address, given the TCP peer and the values of every
    /// `X-Forwarded-For` header in order (a repeated header counts as one
    /// list). Behind trusted proxies, an entry that is not an address ends
    /// the walk: the last trusted hop is then the best that is known.
    pub fn client(&self, peer: IpAddr, forwarded_for: &[&str]) -> IpAddr {
        let mut client = peer.to_canonical();
        if !self.contains(client) {
            return client;
        }
        for entry in forwarded_for.iter().flat_map(|header| header.split(',')).rev() {
            let Some(hop) = parse_hop(entry.trim()) else { return client };
            client = hop;
            if !self.contains(hop) {
                return hop;
            }
        }
        client
    }
}

/// One `X-Forwarded-For` entry: an address, maybe with a port (`[v6]:port` or `v4:port`).
fn parse_hop(entry: &str) -> Option<IpAddr> {
    let ip = entry.parse::<IpAddr>().ok().or_else(|| entry.parse::<SocketAddr>().ok().map(|addr| addr.ip()))?;
    Some(ip.to_canonical())
}

/// What per-address limits count under: an IPv4 address, or the /64 network
/// of an IPv6 address, since one host commonly holds a whole /64.
pub fn limit_key(ip: IpAddr) -> String {
    match ip.to_canonical() {
        IpAddr::V4(ip) => ip.to_string(),
        IpAddr::V6(ip) => {
            let network = std::net::Ipv6Addr::from_bits(ip.to_bits() & !u128::from(u64::MAX));
            format!("{network}/64")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn addresses_and_networks_parse_and_anything_else_is_named() {
        let proxies = TrustedProxies::parse(" 127.0.0.1, 10.0.0.0/8 ,fd00::/8,::1,").unwrap();
        for inside in ["127.0.0.1", "10.1.2.3", "fd12::1", "::1", "::ffff:10.9.9.9"] {
            assert!(proxies.contains(ip(inside)), "{inside} is trusted");
        }
        for outside in ["127.0.0.2", "11.0.0.1", "fe80::1", "::2", "1.2.3.4"] {
            assert!(!proxies.contains(ip(outside)), "{outside} is not trusted");
        }
        assert_eq!(TrustedProxies::parse("").unwrap(), TrustedProxies::default());
        assert!(TrustedProxies::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        for bad in ["10.0.0.0/33", "proxy.example", "10.0.0.0/", "10.0.0.0/+8", "::/129", "1.2.3.4:80"] {
            let message = TrustedProxies::parse(&format!("127.0.0.1,{bad}")).unwrap_err();
            assert!(message.contains("TRUSTED_PROXIES") && message.contains(bad), "{bad}: {message}");
        }
    }

    #[test]
    fn an_untrusted_peers_forwarded_for_is_ignored() {
        let none = TrustedProxies::default();
        assert_eq!(none.client(ip("127.0.0.1"), &["1.2.3.4"]), ip("127.0.0.1"));
        let proxies = TrustedProxies::parse("10.0.0.1").unwrap();
        assert_eq!(proxies.client(ip("10.0.0.2"), &["1.2.3.4"]), ip("10.0.0.2"));
    }

    #[test]
    fn behind_trusted_proxies_the_right_most_untrusted_address_is_the_client() {
        let proxies = TrustedProxies::parse("127.0.0.1,10.0.0.0/8").unwrap();
        let peer = ip("127.0.0.1");
        // (headers, client, why)
        let cases: [(&[&str], &str, &str); 8] = [
            (&[], "127.0.0.1", "no header: the proxy itself"),
            (&["1.2.3.4"], "1.2.3.4", "one hop"),
            (&["6.6.6.6, 1.2.3.4"], "1.2.3.4", "the client's own entry on the left is not believed"),
            (&["1.2.3.4, 10.0.0.5"], "1.2.3.4", "a second trusted proxy is skipped"),
            (&["6.6.6.6", "1.2.3.4, 10.0.0.5"], "1.2.3.4", "repeated headers are one list"),
            (&["10.0.0.7, 10.0.0.5"], "10.0.0.7", "all trusted: the farthest hop"),
            (&["1.2.3.4, garbage, 10.0.0.5"], "10.0.0.5", "garbage ends the walk at the last trusted hop"),
            (&["[2001:db8::1]:443, 5.6.7.8:80"], "5.6.7.8", "ports are dropped"),
        ];
        for (headers, client, why) in cases {
            assert_eq!(proxies.client(peer, headers), ip(client), "{why}: {headers:?}");
        }
        assert_eq!(proxies.client(ip("::ffff:127.0.0.1"), &["1.2.3.4"]), ip("1.2.3.4"), "a v4-mapped peer");
    }

    #[test]
    fn ipv6_addresses_are_limited_by_their_64_and_ipv4_ones_alone() {
        assert_eq!(limit_key(ip("1.2.3.4")), "1.2.3.4");
        assert_eq!(limit_key(ip("::ffff:1.2.3.4")), "1.2.3.4");
        assert_eq!(limit_key(ip("2001:db8:1:2:aaaa::1")), "2001:db8:1:2::/64");
        assert_eq!(limit_key(ip("2001:db8:1:2:bbbb::9")), limit_key(ip("2001:db8:1:2::")));
        assert_ne!(limit_key(ip("2001:db8:1:3::1")), limit_key(ip("2001:db8:1:2::1")));
    }
}
