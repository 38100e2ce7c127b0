//! Who sent a request: the peer's address, or, when the peer is a proxy we
//! were told to trust, the client that proxy names in `X-Forwarded-For`
//! (or in `Forwarded`, RFC 7239, when configured).
//!
//! The header is believed only from trusted proxies, because anyone can
//! send it: taken from an untrusted peer it would let a client pick its
//! own address, and so its own per-IP rate limit. The list is read from the
//! right, the end our own proxy appended, skipping every address that is
//! itself a trusted proxy; the first one that is not is the client. An
//! entry is an address, with or without a port (`203.0.113.9:4711`,
//! `[2001:db8::1]:4711`, as some proxies write them); anything else
//! (`unknown`, an obfuscated `_hidden` node) stops the walk at the last
//! trusted hop.

use std::net::{IpAddr, Ipv6Addr};

use axum::http::HeaderMap;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// Which header trusted proxies name the client in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2`.
    #[default]
    XForwardedFor,
    /// RFC 7239: `Forwarded: for=client;proto=https, for=proxy1`.
    Forwarded,
}

/// The proxies whose forwarding header is believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    nets: Vec<IpNet>,
    header: ForwardedHeader,
}

impl TrustedProxies {
    pub fn new(nets: Vec<IpNet>) -> Self {
        Self { nets, header: ForwardedHeader::default() }
    }

    /// Reads the client from `header` instead of `X-Forwarded-For`.
    pub fn reading(mut self, header: ForwardedHeader) -> Self {
        self.header = header;
        self
    }

    /// Whether `ip` is one of the trusted proxies.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.nets.iter().any(|n| n.contains(&ip))
    }

    /// The hops of the configured header, left to right, as written.
    fn hops<'h>(&self, headers: &'h HeaderMap) -> Vec<&'h str> {
        let values = headers.get_all(match self.header {
            ForwardedHeader::XForwardedFor => "x-forwarded-for",
            ForwardedHeader::Forwarded => "forwarded",
        });
        let elements = values.iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(','));
        match self.header {
            ForwardedHeader::XForwardedFor => elements.collect(),
            // `for=…` of each element; an element without one is no address.
            ForwardedHeader::Forwarded => elements
                .map(|element| {
                    element
                        .split(';')
                        .filter_map(|pair| pair.split_once('='))
                        .find(|(k, _)| k.trim().eq_ignore_ascii_case("for"))
                        .map_or("", |(_, v)| v)
                })
                .collect(),
        }
    }

    /// The client's address for a request that arrived from `peer`.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = canonical(peer);
        if !self.trusts(peer) {
            return peer;
        }
        let mut client = peer;
        for hop in self.hops(headers).iter().rev() {
            let Some(ip) = hop_address(hop) else { break };
            client = canonical(ip);
            if !self.trusts(client) {
                break;
            }
        }
        client
    }
}

/// One hop's address: `1.2.3.4`, `1.2.3.4:80`, `2001:db8::1`,
/// `[2001:db8::1]`, `[2001:db8::1]:80`, each maybe in double quotes
/// (RFC 7239 quotes the bracketed forms).
fn hop_address(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim().trim_matches('"');
    if let Some(rest) = hop.strip_prefix('[') {
        let (inside, _port) = rest.split_once(']')?;
        return inside.parse::<Ipv6Addr>().ok().map(IpAddr::V6);
    }
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(ip);
    }
    // `1.2.3.4:80`: one colon only (a bare IPv6 address has several).
    let (host, port) = hop.rsplit_once(':')?;
    if host.contains(':') || port.parse::<u16>().is_err() {
        return None;
    }
    host.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

/// The client as a rate limit keys it: an IPv4 address as it is, an IPv6
/// address as its network of `v6_prefix` bits (one host or subscriber
/// holds a whole /64 and could use a fresh address per request).
pub fn group(ip: IpAddr, v6_prefix: u8) -> IpAddr {
    match canonical(ip) {
        IpAddr::V6(v6) => {
            let bits = u32::from(v6_prefix.min(128));
            let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
        }
        v4 => v4,
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

    /// Proxies that write the port, IPv6 in brackets, quotes.
    #[test]
    fn hops_with_ports_and_brackets_are_addresses() {
        for (hop, want) in [
            ("198.51.100.7:4711", "198.51.100.7"),
            ("[2001:db8::7]:4711", "2001:db8::7"),
            ("[2001:db8::7]", "2001:db8::7"),
            ("\"[2001:db8::7]:80\"", "2001:db8::7"),
            ("2001:db8::7", "2001:db8::7"),
        ] {
            assert_eq!(proxies().client(ip("10.0.0.5"), &xff(&[hop])), ip(want), "{hop}");
        }
        for junk in ["198.51.100.7:port", "unknown", "_hidden", "[nonsense]:1"] {
            assert_eq!(proxies().client(ip("10.0.0.5"), &xff(&[junk])), ip("10.0.0.5"), "{junk}");
        }
    }

    #[test]
    fn forwarded_is_read_when_configured() {
        let p = proxies().reading(ForwardedHeader::Forwarded);
        let mut h = HeaderMap::new();
        h.append(
            "forwarded",
            HeaderValue::from_static("for=1.1.1.1;proto=https, For=\"[2001:db8:cafe::17]:4711\";by=10.0.0.1"),
        );
        h.append("forwarded", HeaderValue::from_static("for=192.168.1.1"));
        assert_eq!(p.client(ip("10.0.0.5"), &h), ip("2001:db8:cafe::17"));
        // X-Forwarded-For is not read then, and Forwarded is not read by default.
        let only_xff = xff(&["198.51.100.7"]);
        assert_eq!(p.client(ip("10.0.0.5"), &only_xff), ip("10.0.0.5"));
        assert_eq!(proxies().client(ip("10.0.0.5"), &h), ip("10.0.0.5"));
        let mut unknown = HeaderMap::new();
        unknown.append("forwarded", HeaderValue::from_static("for=unknown"));
        assert_eq!(p.client(ip("10.0.0.5"), &unknown), ip("10.0.0.5"));
    }

    #[test]
    fn ipv6_clients_are_grouped_by_their_network() {
        assert_eq!(group(ip("2001:db8:1:2:3:4:5:6"), 64), ip("2001:db8:1:2::"));
        assert_eq!(group(ip("2001:db8:1:2:3:4:5:6"), 48), ip("2001:db8:1::"));
        assert_eq!(group(ip("2001:db8:1:2:3:4:5:6"), 128), ip("2001:db8:1:2:3:4:5:6"));
        assert_eq!(group(ip("198.51.100.7"), 64), ip("198.51.100.7"));
        assert_eq!(group(ip("::ffff:198.51.100.7"), 64), ip("198.51.100.7"));
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
