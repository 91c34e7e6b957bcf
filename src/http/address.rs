//! Who a request comes from, for the per-address rate limit
//! (`PROGRESS_ADDRESS_RATE_PER_SECOND`): the TCP peer (which `serve.rs`
//! puts in each request's extensions as axum's `ConnectInfo`), or, when the
//! peer is one of `PROGRESS_TRUSTED_PROXIES`, the right-most address of
//! `X-Forwarded-For` that is not itself a trusted proxy. Each trusted proxy
//! appends the address it saw, so everything right of the first untrusted
//! entry was written by proxies we trust, and everything left of it may be
//! the client's own invention.
//!
//! IPv4-mapped IPv6 addresses (`::ffff:192.0.2.1`, what a dual-stack
//! listener reports for IPv4 peers) are read as the IPv4 address they are,
//! in the peer, in the header and in the trusted list.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::num::NonZeroU32;

use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, HeaderName, Request};
use ipnet::IpNet;

use super::rate::AddressLimiter;
use crate::error::Error;

/// The header proxies append the address they saw to.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The addresses whose `X-Forwarded-For` is believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// These networks (an address alone is a network of one).
    pub fn new(networks: &[IpNet]) -> Self {
        Self(networks.iter().map(|n| canonical_net(*n)).collect())
    }

    /// Whether `address` (canonical) is a trusted proxy.
    fn contains(&self, address: IpAddr) -> bool {
        self.0.iter().any(|n| n.contains(&address))
    }
}

/// One entry of `PROGRESS_TRUSTED_PROXIES`: an address (`10.0.0.7`,
/// `fd00::1`) or a CIDR block (`10.0.0.0/8`, `fd00::/8`); a reason otherwise.
pub fn parse_network(entry: &str) -> Result<IpNet, String> {
    let entry = entry.trim();
    let parsed = match entry.parse::<IpAddr>() {
        Ok(address) => Ok(IpNet::from(address)),
        Err(_) => entry.parse::<IpNet>(),
    };
    parsed
        .map(canonical_net)
        .map_err(|_| format!("{entry:?} is not an IP address or CIDR block such as 10.0.0.0/8, 192.0.2.7 or fd00::/8"))
}

/// `::ffff:a.b.c.d/n` (n ≥ 96) as the IPv4 block it is.
fn canonical_net(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96).map_or(net, IpNet::V4),
            None => net,
        },
        _ => net,
    }
}

/// The client address of a request from `peer` with these headers.
pub fn client_address(peer: IpAddr, headers: &HeaderMap, trusted: &TrustedProxies) -> IpAddr {
    let mut client = peer.to_canonical();
    if !trusted.contains(client) {
        return client;
    }
    // Several headers count as one list, in order (RFC 9110 §5.3); walk it
    // from the right, from the newest hop.
    for value in headers.get_all(X_FORWARDED_FOR).iter().rev() {
        let Ok(value) = value.to_str() else { return client };
        for entry in value.rsplit(',') {
            let Some(hop) = parse_hop(entry) else {
                // Not an address: a proxy we trust did not write it, so the
                // nearest proxy is as far as we can see.
                return client;
            };
            client = hop;
            if !trusted.contains(hop) {
                return hop;
            }
        }
    }
    // Every hop is a trusted proxy: the left-most is the client.
    client
}

/// One entry of `X-Forwarded-For`: an address, with a port or brackets as
/// some proxies write it (`192.0.2.1:4711`, `[2001:db8::1]:4711`).
fn parse_hop(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    let address = entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| entry.strip_prefix('[')?.strip_suffix(']')?.parse::<Ipv6Addr>().ok().map(IpAddr::V6))?;
    Some(address.to_canonical())
}

/// The per-address limit and whose `X-Forwarded-For` it believes.
pub struct AddressLimit {
    limiter: AddressLimiter,
    trusted: TrustedProxies,
}

impl AddressLimit {
    /// `per_second` requests sustained and `burst` at once per client
    /// address; `None` when `per_second` is 0 (off).
    pub fn new(per_second: u32, burst: u32, trusted: TrustedProxies) -> Option<Self> {
        let per_second = NonZeroU32::new(per_second)?;
        let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
        Some(Self { limiter: AddressLimiter::new(per_second, burst), trusted })
    }

    /// One request of `request`'s client; 429 when its address is over the
    /// limit. A request with no peer address (one that did not come through
    /// `serve.rs`, as in unit tests of the router) is not limited.
    pub fn check<B>(&self, request: &Request<B>) -> Result<(), Error> {
        let Some(ConnectInfo(peer)) = request.extensions().get::<ConnectInfo<SocketAddr>>() else { return Ok(()) };
        self.limiter.check(client_address(peer.ip(), request.headers(), &self.trusted))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn trusted(entries: &[&str]) -> TrustedProxies {
        TrustedProxies::new(&entries.iter().map(|e| parse_network(e).unwrap()).collect::<Vec<_>>())
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn client(peer: &str, forwarded: &[&str], proxies: &TrustedProxies) -> IpAddr {
        let mut headers = HeaderMap::new();
        for value in forwarded {
            headers.append(X_FORWARDED_FOR, HeaderValue::from_bytes(value.as_bytes()).unwrap());
        }
        client_address(ip(peer), &headers, proxies)
    }

    #[test]
    fn the_header_of_an_untrusted_peer_is_ignored() {
        let none = TrustedProxies::default();
        assert_eq!(client("198.51.100.9", &["203.0.113.1"], &none), ip("198.51.100.9"));
        let lb = trusted(&["10.0.0.0/8"]);
        assert_eq!(client("198.51.100.9", &["203.0.113.1"], &lb), ip("198.51.100.9"), "spoofed from outside");
        assert_eq!(client("198.51.100.9", &[], &lb), ip("198.51.100.9"));
    }

    #[test]
    fn the_right_most_untrusted_hop_of_a_chain() {
        let proxies = trusted(&["10.0.0.0/8", "192.0.2.50"]);
        // The client claims 1.1.1.1; the CDN edge (192.0.2.50) saw 203.0.113.7;
        // the load balancer (10.0.0.2) saw the edge; the peer is the load balancer.
        let chain = "1.1.1.1, 203.0.113.7, 192.0.2.50";
        assert_eq!(client("10.0.0.3", &[chain], &proxies), ip("203.0.113.7"));
        assert_eq!(client("10.0.0.3", &["1.1.1.1", "203.0.113.7,192.0.2.50"], &proxies), ip("203.0.113.7"));
        assert_eq!(client("10.0.0.3", &["203.0.113.7"], &proxies), ip("203.0.113.7"));
        // Every hop trusted: the left-most.
        assert_eq!(client("10.0.0.3", &["10.1.1.1, 192.0.2.50"], &proxies), ip("10.1.1.1"));
        // No header from a trusted peer: the peer itself.
        assert_eq!(client("10.0.0.3", &[], &proxies), ip("10.0.0.3"));
    }

    #[test]
    fn ipv6_and_mapped_ipv4() {
        let proxies = trusted(&["fd00::/8", "::ffff:10.0.0.0/104"]);
        assert_eq!(client("fd00::2", &["2001:db8::1, fd00::1"], &proxies), ip("2001:db8::1"));
        assert_eq!(client("fd00::2", &["[2001:db8::1]:4711"], &proxies), ip("2001:db8::1"));
        assert_eq!(client("fd00::2", &["[2001:db8::1]"], &proxies), ip("2001:db8::1"));
        // A dual-stack listener's IPv4 peer, and IPv4 written mapped.
        assert_eq!(client("::ffff:10.0.0.3", &["::ffff:203.0.113.7"], &proxies), ip("203.0.113.7"));
        assert_eq!(client("::ffff:10.0.0.3", &["203.0.113.7:5555"], &proxies), ip("203.0.113.7"));
        assert_eq!(client("::ffff:198.51.100.9", &["203.0.113.7"], &proxies), ip("198.51.100.9"));
        assert_eq!(parse_network("::ffff:10.0.0.0/104").unwrap(), "10.0.0.0/8".parse::<IpNet>().unwrap());
    }

    #[test]
    fn garbage_stops_at_the_nearest_proxy() {
        let proxies = trusted(&["127.0.0.1", "10.0.0.0/8"]);
        for garbage in ["", "unknown", "203.0.113.7, nonsense", "203.0.113.300", "1.2.3.4/8", "203.0.113.7 203.0.113.8"]
        {
            assert_eq!(client("127.0.0.1", &[garbage], &proxies), ip("127.0.0.1"), "{garbage:?}");
        }
        assert_eq!(client("127.0.0.1", &["203.0.113.7, nonsense, 10.0.0.9"], &proxies), ip("10.0.0.9"));
        // Garbage left of the client is never reached.
        assert_eq!(client("127.0.0.1", &["nonsense, 203.0.113.7"], &proxies), ip("203.0.113.7"));
        let mut headers = HeaderMap::new();
        headers.insert(X_FORWARDED_FOR, HeaderValue::from_bytes(b"203.0.113.7\xff").unwrap());
        assert_eq!(client_address(ip("127.0.0.1"), &headers, &proxies), ip("127.0.0.1"), "not text");
    }

    #[test]
    fn trusted_proxy_entries() {
        assert_eq!(parse_network(" 10.0.0.7 ").unwrap(), "10.0.0.7/32".parse::<IpNet>().unwrap());
        assert_eq!(parse_network("fd00::/8").unwrap(), "fd00::/8".parse::<IpNet>().unwrap());
        for bad in ["10.0.0.0/33", "10.0.0", "fd00::/129", "localhost", "10.0.0.0/8/8", ""] {
            let reason = parse_network(bad).unwrap_err();
            assert!(reason.contains("is not an IP address or CIDR block"), "{bad:?}: {reason}");
        }
    }
}
