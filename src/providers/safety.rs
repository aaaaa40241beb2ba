//! Endpoint safety. A tenant chooses `spec.endpoint`, but the operator makes the call from its
//! own network position, so an endpoint could aim it at cloud metadata or internal services.
//! Link-local, metadata, `0.0.0.0/8` and `192.0.0.0/24` addresses are always refused; private,
//! loopback, cluster-internal and translated (NAT64, 6to4) addresses unless the operator was
//! started with an allow-list, and never when the IPv4 address inside them is refused; plain
//! http unless allowed. The same rules run inside the HTTP client's DNS resolver, so a name that
//! later resolves elsewhere (DNS rebinding) is refused at connect time too.

use super::ProviderError;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

/// Names of cloud metadata services.
const METADATA_HOSTS: [&str; 4] = ["metadata.google.internal", "metadata.goog", "metadata", "instance-data"];

/// An IP network such as 10.0.0.0/8 or fd00::/8.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (ip, prefix) = s.trim().split_once('/').unwrap_or((s.trim(), ""));
        let network: IpAddr = ip.parse().map_err(|_| format!("{s:?} is not an IP network such as 10.0.0.0/8"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = if prefix.is_empty() { max } else { prefix.parse().map_err(|_| format!("{s:?} has a bad prefix length"))? };
        if prefix > max {
            return Err(format!("{s:?} has a prefix longer than {max}"));
        }
        Ok(Self { network, prefix })
    }
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        // Left-aligned in 128 bits, so one mask works for both families.
        let bits = |ip: IpAddr| -> u128 {
            match ip {
                IpAddr::V4(v4) => u128::from(u32::from(v4)) << 96,
                IpAddr::V6(v6) => u128::from(v6),
            }
        };
        let ip = match (self.network, ip) {
            (IpAddr::V4(_), IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => return false,
            },
            (IpAddr::V6(_), IpAddr::V4(_)) => return false,
            _ => ip,
        };
        if self.prefix == 0 {
            return true;
        }
        let (net, addr) = (bits(self.network), bits(ip));
        let mask = u128::MAX << (128 - u32::from(self.prefix));
        (net & mask) == (addr & mask)
    }
}

#[derive(Clone, Debug, Default)]
pub struct EndpointPolicy {
    /// Private or internal networks tenants may point at (`--allow-private-cidrs`).
    pub allowed: Vec<Cidr>,
    /// Allow `http://` endpoints (`--allow-insecure-http`).
    pub allow_http: bool,
}

/// The AWS (IMDS) and GCP IPv6 metadata addresses.
const METADATA_V6: [Ipv6Addr; 2] = [Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254), Ipv6Addr::new(0xfd20, 0xce, 0, 0, 0, 0, 0, 0x254)];

/// The IPv4 address an IPv6 address stands for: IPv4-mapped `::ffff:a.b.c.d`, the deprecated
/// IPv4-compatible `::a.b.c.d`, NAT64 `64:ff9b::a.b.c.d` and 6to4 `2002:AABB:CCDD::`. Each can
/// reach that IPv4 address, so it must pass the same checks.
fn embedded_ipv4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = v6.segments();
    let low = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s {
        [0, 0, 0, 0, 0, 0xffff, _, _] => Some(low),
        // `::` and `::1` are not IPv4-compatible addresses (RFC 4291 2.5.5.1).
        [0, 0, 0, 0, 0, 0, hi, lo] if hi != 0 || lo > 1 => Some(low),
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(low),
        [0x2002, a, b, ..] => Some(Ipv4Addr::new((a >> 8) as u8, a as u8, (b >> 8) as u8, b as u8)),
        _ => None,
    }
}

fn always_refused(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            v4.is_link_local()
                || v4 == Ipv4Addr::new(100, 100, 100, 200)
                || v4.is_broadcast()
                || v4.is_multicast()
                // "this network": 0.0.0.0 reaches the host itself on Linux.
                || a == 0
                // IETF protocol assignments, including Oracle Cloud's metadata at 192.0.0.192.
                || (a, b, c) == (192, 0, 0)
        }
        IpAddr::V6(v6) => {
            (v6.segments()[0] & 0xffc0) == 0xfe80
                || METADATA_V6.contains(&v6)
                || v6.is_multicast()
                || embedded_ipv4(v6).is_some_and(|v4| always_refused(IpAddr::V4(v4)))
        }
    }
}

fn internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_private() || v4.is_loopback() || v4.is_unspecified() || (v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64)
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || (s[0] & 0xfe00) == 0xfc00
                // NAT64 (well-known and local-use prefixes) and 6to4 leave the cluster through a
                // translator: internal unless allowed (e.g. an IPv6-only cluster with DNS64).
                || (s[0], s[1]) == (0x64, 0xff9b)
                || s[0] == 0x2002
                || embedded_ipv4(v6).is_some_and(|v4| internal(IpAddr::V4(v4)))
        }
    }
}

impl EndpointPolicy {
    /// Whether the operator may connect to `ip`; the error says why not.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), String> {
        if always_refused(ip) {
            return Err(format!("{ip} is a link-local or cloud-metadata address"));
        }
        if internal(ip) && !self.allowed.iter().any(|c| c.contains(ip)) {
            return Err(format!("{ip} is a private or cluster-internal address; allow it with --allow-private-cidrs"));
        }
        Ok(())
    }

    /// Checks scheme, host name and every address the host resolves to.
    pub async fn check(&self, url: &url::Url) -> Result<(), ProviderError> {
        let refuse = |why: String| Err(ProviderError::EndpointRefused(why));
        match url.scheme() {
            "https" => {}
            "http" if self.allow_http => {}
            "http" => return refuse("plain http is not allowed; use https or start the operator with --allow-insecure-http".into()),
            other => return refuse(format!("scheme {other:?} is not http(s)")),
        }
        let Some(host) = url.host_str() else { return refuse("the URL has no host".into()) };
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        if METADATA_HOSTS.contains(&host.as_str()) {
            return refuse(format!("{host} is a cloud metadata service"));
        }
        let port = url.port_or_known_default().unwrap_or(443);
        let addresses: Vec<SocketAddr> = match host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => match tokio::net::lookup_host((host.as_str(), port)).await {
                Ok(addrs) => addrs.collect(),
                Err(_) => return Err(ProviderError::Upstream { url: super::http::redact(url), reason: format!("cannot resolve {host}") }),
            },
        };
        for address in addresses {
            self.check_ip(address.ip()).map_err(ProviderError::EndpointRefused)?;
        }
        Ok(())
    }
}

/// reqwest DNS resolver that applies the policy to every resolution.
pub struct PolicyResolver(pub EndpointPolicy);

impl reqwest::dns::Resolve for PolicyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.0.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = addrs.into_iter().filter(|a| policy.check_ip(a.ip()).is_ok()).collect();
            if allowed.is_empty() {
                return Err(format!("{host} resolves only to refused addresses").into());
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn metadata_and_link_local_are_always_refused() {
        let open = EndpointPolicy { allowed: vec!["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()], allow_http: true };
        for bad in ["169.254.169.254", "169.254.10.1", "fe80::1", "fd00:ec2::254", "::ffff:169.254.169.254"] {
            assert!(open.check_ip(ip(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn translated_and_reserved_ranges_are_refused() {
        let open = EndpointPolicy { allowed: vec!["0.0.0.0/0".parse().unwrap(), "::/0".parse().unwrap()], allow_http: true };
        let always = [
            "0.0.0.0",
            "0.1.2.3",
            "192.0.0.192",
            "192.0.0.1",
            "fd20:ce::254",
            "::ffff:0.0.0.0",
            "::ffff:192.0.0.192",
            "::169.254.169.254",
            "64:ff9b::169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "2002:a9fe:a9fe::1",
            "2002:c000:00c0::",
        ];
        for bad in always {
            assert!(open.check_ip(ip(bad)).is_err(), "{bad} is refused even with everything allowed");
        }
        // Addresses that only translate to somewhere: refused by default, allowed by the list.
        let strict = EndpointPolicy::default();
        for translated in ["64:ff9b::8c52:7006", "64:ff9b:1::1", "2002:8c52:7006::1", "::ffff:10.0.0.1", "::10.0.0.1", "::127.0.0.1"] {
            assert!(strict.check_ip(ip(translated)).is_err(), "{translated}");
        }
        let dns64 = EndpointPolicy { allowed: vec!["64:ff9b::/96".parse().unwrap()], allow_http: false };
        assert!(dns64.check_ip(ip("64:ff9b::8c52:7006")).is_ok(), "an IPv6-only cluster can allow its NAT64 prefix");
        assert!(dns64.check_ip(ip("64:ff9b::a9fe:a9fe")).is_err(), "but never metadata through it");
        // Neighbours of the refused ranges stay usable.
        for fine in ["1.0.0.1", "192.0.1.1", "192.0.2.1", "2001:db8::1", "fd20:ce::253"] {
            assert!(open.check_ip(ip(fine)).is_ok(), "{fine}");
        }
        assert!(strict.check_ip(ip("2606:50c0:8000::153")).is_ok(), "a public IPv6 address");
    }

    #[test]
    fn private_ranges_need_the_allow_list() {
        let strict = EndpointPolicy::default();
        for private in ["10.1.2.3", "172.16.0.1", "192.168.1.1", "127.0.0.1", "::1", "fd12::1", "100.64.0.1"] {
            assert!(strict.check_ip(ip(private)).is_err(), "{private}");
        }
        assert!(strict.check_ip(ip("140.82.112.6")).is_ok());
        let lab = EndpointPolicy { allowed: vec!["10.20.0.0/16".parse().unwrap(), "127.0.0.1/32".parse().unwrap()], allow_http: false };
        assert!(lab.check_ip(ip("10.20.3.4")).is_ok());
        assert!(lab.check_ip(ip("10.21.3.4")).is_err());
        assert!(lab.check_ip(ip("127.0.0.1")).is_ok());
        assert!(lab.check_ip(ip("127.0.0.2")).is_err());
    }

    #[tokio::test]
    async fn scheme_and_metadata_names_are_checked_before_resolving() {
        let strict = EndpointPolicy::default();
        let err = strict.check(&url::Url::parse("http://gitlab.example.com").unwrap()).await.unwrap_err();
        assert!(err.to_string().contains("plain http"), "{err}");
        let err = strict.check(&url::Url::parse("https://metadata.google.internal/").unwrap()).await.unwrap_err();
        assert!(err.to_string().contains("metadata"), "{err}");
        let err = strict.check(&url::Url::parse("https://127.0.0.1:8443/").unwrap()).await.unwrap_err();
        assert!(matches!(err, ProviderError::EndpointRefused(_)));
    }

    #[test]
    fn cidrs_parse_and_match() {
        assert!("10.0.0.0/8".parse::<Cidr>().unwrap().contains(ip("10.255.0.1")));
        assert!(!"10.0.0.0/8".parse::<Cidr>().unwrap().contains(ip("11.0.0.1")));
        assert!("fd00::/8".parse::<Cidr>().unwrap().contains(ip("fd12::1")));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("nonsense".parse::<Cidr>().is_err());
    }
}
