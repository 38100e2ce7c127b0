//! Who sent a request: the peer's address, or, when the peer is a proxy we
//! were told to trust, the client that proxy names in `X-Forwarded-For`.
//!
//! `X-Forwarded-For` is believed only from trusted proxies, because anyone
//! can send the header: taken from an untrusted peer it would let a client
//! pick its own address, and so its own per-IP rate limit. The list is read
//! from the right, the end our own proxy appended, skipping every address
//! that is itself a trusted proxy; the first one that is not is the client.
//! An entry that is not an address stops the walk at the last trusted hop.

use std::net::IpAddr;

use axum::http::HeaderMap;
use ipnet::IpNet;

/// The proxies whose `X-Forwarded-For` is believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    pub fn new(nets: Vec<IpNet>) -> Self {
        Self(nets)
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|n| n.contains(&ip))
    }

    /// The client's address for a request that arrived from `peer`.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = canonical(peer);
        if !self.trusts(peer) {
            return peer;
        }
        let mut client = peer;
        let hops = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .collect::<Vec<_>>();
        for hop in hops.iter().rev() {
            let Ok(ip) = hop.trim().parse::<IpAddr>() else { break };
            client = canonical(ip);
            if !self.trusts(client) {
                break;
            }
        }
        client
    }
}

/// `::ffff:10.0.0.1` (an IPv4 peer on a dual-stack socket) as `10.0.0.1`,
/// so one client is one key and IPv4 ranges match it.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The address as text, exactly as `IpAddr`'s `Display` writes it: the
/// envelope's `source_ip`. An IPv4 address (nearly every client) is written
/// here digit by digit; `Display` goes through the formatting machinery, about
/// 1,300 instructions a request (`benches/callgrind.sh`), which is 2 % of what
/// the whole request costs.
pub fn text(ip: IpAddr) -> String {
    let IpAddr::V4(v4) = ip else { return ip.to_string() };
    let mut out = String::with_capacity(15);
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        if octet >= 100 {
            out.push(char::from(b'0' + octet / 100));
        }
        if octet >= 10 {
            out.push(char::from(b'0' + octet / 10 % 10));
        }
        out.push(char::from(b'0' + octet % 10));
    }
    out
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn proxies() -> TrustedProxies {
        TrustedProxies::new(vec!["10.0.0.0/8".parse().expect("net"), "192.168.1.1/32".parse().expect("net")])
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", HeaderValue::from_str(v).expect("value"));
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_claims() {
        assert_eq!(proxies().client(ip("203.0.113.9"), &xff(&["1.2.3.4"])), ip("203.0.113.9"));
        assert_eq!(TrustedProxies::default().client(ip("10.0.0.1"), &xff(&["1.2.3.4"])), ip("10.0.0.1"));
    }

    #[test]
    fn a_trusted_proxy_names_the_client() {
        assert_eq!(proxies().client(ip("10.1.2.3"), &xff(&["198.51.100.7"])), ip("198.51.100.7"));
    }

    #[test]
    fn the_walk_is_from_the_right_and_skips_trusted_hops() {
        // The client forged the first entry; our proxies appended the rest.
        let h = xff(&["1.1.1.1, 198.51.100.7", "192.168.1.1"]);
        assert_eq!(proxies().client(ip("10.0.0.5"), &h), ip("198.51.100.7"));
    }

    #[test]
    fn garbage_stops_at_the_last_trusted_hop() {
        assert_eq!(proxies().client(ip("10.0.0.5"), &xff(&["nonsense"])), ip("10.0.0.5"));
        assert_eq!(proxies().client(ip("10.0.0.5"), &xff(&["1.1.1.1, junk, 10.0.0.9"])), ip("10.0.0.9"));
        assert_eq!(proxies().client(ip("10.0.0.5"), &HeaderMap::new()), ip("10.0.0.5"));
    }

    #[test]
    fn ipv4_mapped_addresses_are_ipv4() {
        assert_eq!(
            proxies().client(ip("::ffff:10.0.0.5"), &xff(&["::ffff:198.51.100.7"])),
            ip("198.51.100.7")
        );
    }

    /// Every octet value in every position, and IPv6, as `Display` writes them.
    #[test]
    fn text_is_what_display_writes() {
        for n in 0..=255u8 {
            for ip in [[n, 0, 0, 0], [1, n, 2, 3], [10, 20, n, 30], [255, 9, 99, n], [n, n, n, n]] {
                let ip = IpAddr::from(ip);
                assert_eq!(text(ip), ip.to_string());
            }
        }
        for v6 in ["::1", "2001:db8::8a2e:370:7334", "::ffff:10.0.0.1"] {
            let ip: IpAddr = v6.parse().expect("an IPv6 address");
            assert_eq!(text(ip), ip.to_string());
        }
    }
}
