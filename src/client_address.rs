//! The client's own address behind load balancers (`TRUSTED_PROXIES`, CONTRACT.md §1
//! "Deployment").
//!
//! Behind a balancer every TCP peer is the balancer: one client's failed logins would lock
//! everyone out, and every span would name the balancer. The balancer says who its client was
//! in `X-Forwarded-For`, which it appends to; anything to the left of what our own proxies
//! wrote came from the client and may be forged. So the client is the right-most address not
//! in `TRUSTED_PROXIES`:
//!
//! ```text
//!  X-Forwarded-For: <forged by the client?>, 203.0.113.7, 10.0.0.5     peer 10.0.0.9
//!                                             └ client    └ trusted     └ trusted (a balancer)
//! ```
//!
//! With `TRUSTED_PROXIES` unset, or a peer outside it, the peer is the client and forwarded
//! headers are ignored, so a client cannot name itself anyone else.
//!
//! This one value is used by throttling ([`ClientAddress::throttle_key`]: IPv6 clients by
//! their /64, since one host usually holds a whole /64), `client.address` on the root span and
//! the access log.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use actix_web::dev::RequestHead;
use actix_web::http::header::HeaderMap;
use ipnet::IpNet;

/// `TRUSTED_PROXIES`: the networks of the load balancers in front of the service.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// Parses a comma-separated list of CIDRs (a bare address is its own /32 or /128).
    pub fn parse(raw: &str) -> Result<Self, String> {
        let mut nets = Vec::new();
        for item in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let net = item
                .parse::<IpNet>()
                .or_else(|_| item.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| format!("{item:?} is not a CIDR (e.g. 10.0.0.0/8) or an address"))?;
            nets.push(net);
        }
        Ok(Self(nets))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|net| net.contains(&ip))
    }
}

/// The address of the client of a request (module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddress(pub IpAddr);

impl ClientAddress {
    /// The client of a request whose TCP peer is `peer`.
    pub fn resolve(peer: IpAddr, headers: &HeaderMap, trusted: &TrustedProxies) -> Self {
        let peer = canonical(peer);
        if trusted.is_empty() || !trusted.contains(peer) {
            return Self(peer);
        }
        // Every X-Forwarded-For line, in order, as one list; walked from the right.
        let hops: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        let mut client = peer;
        for hop in hops.iter().rev() {
            let Some(ip) = parse_hop(hop) else {
                // Not an address: nothing to its left can be trusted either. The nearest hop
                // that was an address (ours) stands for the client.
                break;
            };
            client = ip;
            if !trusted.contains(ip) {
                break;
            }
        }
        Self(client)
    }

    /// The client of the request `head` (peer from the connection), with the trusted proxies
    /// in force.
    pub fn of(head: &RequestHead, trusted: Option<&TrustedProxies>) -> Option<Self> {
        let peer = head.peer_addr?.ip();
        let empty = TrustedProxies::default();
        Some(Self::resolve(
            peer,
            &head.headers,
            trusted.unwrap_or(&empty),
        ))
    }

    /// What counters are kept per: the address, or for IPv6 its /64 (a host usually holds a
    /// whole /64, so per address it could count against itself forever anew).
    pub fn throttle_key(&self) -> String {
        match self.0 {
            IpAddr::V4(ip) => ip.to_string(),
            IpAddr::V6(ip) => {
                let [a, b, c, d, ..] = ip.segments();
                format!("{}/64", Ipv6Addr::new(a, b, c, d, 0, 0, 0, 0))
            }
        }
    }
}

impl fmt::Display for ClientAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// An `X-Forwarded-For` entry: an address, with a port or in brackets as some proxies write
/// it.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    hop.parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| {
            hop.strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .and_then(|h| h.parse().ok())
        })
        .map(canonical)
}

/// IPv4-mapped IPv6 addresses (`::ffff:1.2.3.4`, what a dual-stack listener sees) as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::{HeaderName, HeaderValue};

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for value in xff {
            map.append(
                HeaderName::from_static("x-forwarded-for"),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    fn resolve(peer: &str, xff: &[&str], trusted: &str) -> String {
        let trusted = TrustedProxies::parse(trusted).unwrap();
        ClientAddress::resolve(peer.parse().unwrap(), &headers(xff), &trusted).to_string()
    }

    #[test]
    fn the_right_most_untrusted_hop_is_the_client() {
        let lb = "10.0.0.0/8";
        assert_eq!(resolve("10.0.0.9", &["203.0.113.7"], lb), "203.0.113.7");
        // A forged entry to the left of the real client changes nothing.
        assert_eq!(
            resolve("10.0.0.9", &["1.1.1.1, 203.0.113.7"], lb),
            "203.0.113.7"
        );
        // Chains of our own proxies are skipped, across header lines too.
        assert_eq!(
            resolve("10.0.0.9", &["1.1.1.1, 203.0.113.7", "10.0.0.5"], lb),
            "203.0.113.7"
        );
        // Only proxies: the left-most of them.
        assert_eq!(resolve("10.0.0.9", &["10.1.1.1, 10.0.0.5"], lb), "10.1.1.1");
        // No header: the balancer itself.
        assert_eq!(resolve("10.0.0.9", &[], lb), "10.0.0.9");
        // Garbage stops the walk at the nearest address.
        assert_eq!(
            resolve("10.0.0.9", &["1.1.1.1, junk, 10.0.0.5"], lb),
            "10.0.0.5"
        );
        // Ports and brackets.
        assert_eq!(
            resolve("10.0.0.9", &["203.0.113.7:5000"], lb),
            "203.0.113.7"
        );
        assert_eq!(
            resolve("10.0.0.9", &["[2001:db8::1]:5000"], lb),
            "2001:db8::1"
        );
        assert_eq!(resolve("10.0.0.9", &["[2001:db8::1]"], lb), "2001:db8::1");
    }

    #[test]
    fn forwarded_headers_are_ignored_unless_the_peer_is_trusted() {
        assert_eq!(
            resolve("198.51.100.4", &["203.0.113.7"], ""),
            "198.51.100.4"
        );
        assert_eq!(
            resolve("198.51.100.4", &["203.0.113.7"], "10.0.0.0/8"),
            "198.51.100.4"
        );
        // A dual-stack listener's mapped address is the IPv4 one, for the check too.
        assert_eq!(
            resolve("::ffff:10.0.0.9", &["203.0.113.7"], "10.0.0.0/8"),
            "203.0.113.7"
        );
    }

    #[test]
    fn ipv6_clients_are_throttled_by_their_64() {
        let a = ClientAddress("2001:db8:1:2:aaaa::1".parse().unwrap());
        let b = ClientAddress("2001:db8:1:2:bbbb::9".parse().unwrap());
        let c = ClientAddress("2001:db8:1:3::1".parse().unwrap());
        assert_eq!(a.throttle_key(), "2001:db8:1:2::/64");
        assert_eq!(a.throttle_key(), b.throttle_key());
        assert_ne!(a.throttle_key(), c.throttle_key());
        assert_eq!(
            ClientAddress("192.0.2.1".parse().unwrap()).throttle_key(),
            "192.0.2.1"
        );
    }

    #[test]
    fn bad_lists_are_refused() {
        assert!(TrustedProxies::parse("10.0.0.0/8, 192.168.1.1").is_ok());
        assert!(TrustedProxies::parse("").unwrap().is_empty());
        assert!(TrustedProxies::parse("10.0.0.0/33").is_err());
        assert!(TrustedProxies::parse("lb.internal").is_err());
    }
}
