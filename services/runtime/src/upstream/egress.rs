//! Which network addresses upstream sources may reach: the egress policy of the servers that
//! connect to URLs their callers chose (the VersionWatcher and the DataRepository).
//!
//! A source spec is a URL from an API caller, so without a policy any caller could make the
//! server connect to whatever it can reach: the node's loopback services, the cluster's private
//! network, the cloud metadata endpoint. The rule:
//!
//! - cloud metadata addresses ([`is_metadata_address`]) are always refused, whatever is allowed;
//! - other non-public addresses ([`AddressClass`]: loopback, RFC 1918 and `fc00::/7` private,
//!   CGNAT `100.64.0.0/10`, unspecified, multicast, reserved and documentation ranges, and the
//!   IPv4-mapped, -compatible, NAT64 and 6to4 forms of those) are refused unless the host name or
//!   the address matches an `--allow-upstream-host` pattern;
//! - public addresses are allowed. The allow-list opens private ranges; it does not close the
//!   internet (restrict that with a NetworkPolicy on the pods).
//!
//! Pattern grammar (`--allow-upstream-host`, repeatable):
//!
//! | pattern | matches |
//! |---|---|
//! | `registry.internal` | that host name exactly (case-insensitive, a trailing dot ignored) |
//! | `*.corp.example` | every name below `corp.example` (not `corp.example` itself) |
//! | `10.1.2.3`, `::1` | that address (IPv4-mapped IPv6 forms included) |
//! | `10.0.0.0/8`, `fd00::/8` | every address in the block |
//!
//! A name pattern allows whatever the name resolves to (except metadata addresses): the operator
//! vouches for the name. Checks run on the *resolved* addresses at connect time
//! ([`EgressPolicy::check`], used by the HTTPS connector and before `git` starts), so a name
//! that rebinds to a private address is refused; [`EgressPolicy::check_host`] judges a URL's host
//! alone, for the request-time check that refuses what can never be allowed.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
    sync::Arc,
};

/// The flag that opens a non-public upstream, as error messages name it.
pub const ALLOW_FLAG: &str = "--allow-upstream-host";

/// The `--allow-upstream-host` flag of the servers that reach upstream sources.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct EgressArgs {
    /// Lets OCI, HTTP and git sources reach a non-public host (repeatable; comma-separated in
    /// the environment): a host name (`registry.internal`), a `*.suffix` wildcard, an IP address
    /// or a CIDR block. Without it, loopback, private, link-local and other non-public addresses
    /// are refused; cloud metadata addresses are refused always; public hosts are always allowed.
    #[arg(
        long = "allow-upstream-host",
        value_name = "PATTERN",
        env = "AUTOCRANE_ALLOW_UPSTREAM_HOSTS",
        value_delimiter = ','
    )]
    pub allow_upstream_hosts: Vec<HostPattern>,
}

impl EgressArgs {
    /// The policy these flags describe.
    pub fn policy(&self) -> EgressPolicy {
        EgressPolicy::new(self.allow_upstream_hosts.iter().cloned())
    }
}

/// One `--allow-upstream-host` pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostPattern {
    /// A host name, lower-case, without a trailing dot.
    Name(String),
    /// `*.suffix`: the suffix, lower-case, with its leading dot (`.corp.example`).
    Suffix(String),
    /// An IP block: the network address and the prefix length (32 or 128 for one address).
    Block {
        /// The network address (IPv4 for IPv4 blocks, never an IPv4-mapped IPv6 address).
        network: IpAddr,
        /// The prefix length.
        prefix: u8,
    },
}

/// Why a pattern does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{pattern:?} is not a host name, *.suffix, IP address or CIDR block: {reason}")]
pub struct InvalidPattern {
    /// The pattern as given.
    pub pattern: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl FromStr for HostPattern {
    type Err = InvalidPattern;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = |reason| InvalidPattern {
            pattern: text.to_string(),
            reason,
        };
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err(invalid("it is empty"));
        }
        if let Some((address, prefix)) = trimmed.split_once('/') {
            let network: IpAddr = address
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse()
                .map_err(|_| invalid("the part before '/' is not an IP address"))?;
            let network = canonical(network);
            let prefix: u8 = prefix
                .parse()
                .map_err(|_| invalid("the prefix length is not a number"))?;
            let bits = if network.is_ipv4() { 32 } else { 128 };
            if prefix > bits {
                return Err(invalid("the prefix length is longer than the address"));
            }
            if masked(network, prefix) != network {
                return Err(invalid("the address has bits set beyond the prefix length"));
            }
            return Ok(HostPattern::Block { network, prefix });
        }
        if let Ok(ip) = trimmed
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            let ip = canonical(ip);
            let prefix = if ip.is_ipv4() { 32 } else { 128 };
            return Ok(HostPattern::Block {
                network: ip,
                prefix,
            });
        }
        let (wildcard, name) = match trimmed.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, trimmed),
        };
        let name = normalise_name(name);
        if !is_host_name(&name) {
            return Err(invalid(
                "names are dot-separated labels of letters, digits, '-' and '_' (a leading '*.' for a wildcard)",
            ));
        }
        if ends_in_a_number(&name) {
            // `2130706433` or `0x7f.1` are IPv4 addresses to URL parsers and resolvers: a name
            // pattern spelled like one would be a way to allow an address by surprise.
            return Err(invalid(
                "a name ending in a number is an IPv4 address in another notation; write the address",
            ));
        }
        Ok(if wildcard {
            HostPattern::Suffix(format!(".{name}"))
        } else {
            HostPattern::Name(name)
        })
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Name(name) => f.write_str(name),
            HostPattern::Suffix(suffix) => write!(f, "*{suffix}"),
            HostPattern::Block { network, prefix } => write!(f, "{network}/{prefix}"),
        }
    }
}

impl HostPattern {
    fn matches_name(&self, host: &str) -> bool {
        match self {
            HostPattern::Name(name) => host == name,
            HostPattern::Suffix(suffix) => host.ends_with(suffix.as_str()),
            HostPattern::Block { .. } => false,
        }
    }

    fn matches_ip(&self, ip: IpAddr) -> bool {
        match self {
            HostPattern::Block { network, prefix } => {
                network.is_ipv4() == ip.is_ipv4() && masked(ip, *prefix) == *network
            }
            _ => false,
        }
    }
}

/// What kind of address an upstream resolved to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressClass {
    /// Globally routable.
    Public,
    /// A cloud instance-metadata address or the link-local range they live in: never allowed.
    Metadata,
    /// `127.0.0.0/8`, `::1`.
    Loopback,
    /// RFC 1918 (`10/8`, `172.16/12`, `192.168/16`) and unique-local `fc00::/7`.
    Private,
    /// Carrier-grade NAT, `100.64.0.0/10`.
    SharedAddressSpace,
    /// `0.0.0.0/8` and `::`: "this host", which connects to loopback.
    Unspecified,
    /// Multicast, broadcast, reserved, benchmarking, documentation and protocol-assignment ranges.
    Reserved,
}

impl fmt::Display for AddressClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AddressClass::Public => "public",
            AddressClass::Metadata => "cloud metadata (link-local)",
            AddressClass::Loopback => "loopback",
            AddressClass::Private => "private",
            AddressClass::SharedAddressSpace => "shared (CGNAT)",
            AddressClass::Unspecified => "unspecified",
            AddressClass::Reserved => "reserved",
        })
    }
}

/// Whether `ip` is a cloud instance-metadata address (or in the link-local range they live in).
pub fn is_metadata_address(ip: IpAddr) -> bool {
    classify(ip) == AddressClass::Metadata
}

/// The class of `ip`; IPv6 forms that carry an IPv4 address (mapped, compatible, NAT64, 6to4)
/// are classed by that address.
pub fn classify(ip: IpAddr) -> AddressClass {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> AddressClass {
    let [a, b, c, _] = ip.octets();
    if (a == 169 && b == 254) || ip.octets() == [100, 100, 100, 200] {
        AddressClass::Metadata
    } else if a == 127 {
        AddressClass::Loopback
    } else if a == 10 || (a == 172 && (16..32).contains(&b)) || (a == 192 && b == 168) {
        AddressClass::Private
    } else if a == 100 && (64..128).contains(&b) {
        AddressClass::SharedAddressSpace
    } else if a == 0 {
        AddressClass::Unspecified
    } else if a >= 224
        || (a == 192 && b == 0 && (c == 0 || c == 2))
        || (a == 198 && (b == 18 || b == 19))
        || (a == 198 && b == 51 && c == 100)
        || (a == 203 && b == 0 && c == 113)
    {
        AddressClass::Reserved
    } else {
        AddressClass::Public
    }
}

fn classify_v6(ip: Ipv6Addr) -> AddressClass {
    let segments = ip.segments();
    if ip.is_loopback() {
        return AddressClass::Loopback;
    }
    if ip.is_unspecified() {
        return AddressClass::Unspecified;
    }
    if let Some(v4) = embedded_v4(ip) {
        return classify_v4(v4);
    }
    if (segments[0] & 0xffc0) == 0xfe80 || segments == [0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254] {
        AddressClass::Metadata
    } else if (segments[0] & 0xfe00) == 0xfc00 {
        AddressClass::Private
    } else if (segments[0] & 0xff00) == 0xff00
        || (segments[0] == 0x2001 && segments[1] == 0x0db8)
        || (segments[0] & 0xffc0) == 0xfec0
        || (segments[0] == 0x0100 && segments[1..4] == [0, 0, 0])
    {
        AddressClass::Reserved
    } else {
        AddressClass::Public
    }
}

/// The IPv4 address an IPv6 address stands for: `::ffff:a.b.c.d` (mapped), `::a.b.c.d`
/// (compatible, deprecated but still routed by some stacks), `64:ff9b::a.b.c.d` (NAT64) and
/// `2002:aabb:ccdd::/48` (6to4).
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let low = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    if s[..5] == [0, 0, 0, 0, 0] && (s[5] == 0xffff || s[5] == 0) {
        return Some(low);
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some(low);
    }
    if s[0] == 0x2002 {
        return Some(Ipv4Addr::new(
            (s[1] >> 8) as u8,
            s[1] as u8,
            (s[2] >> 8) as u8,
            s[2] as u8,
        ));
    }
    None
}

/// IPv4-mapped IPv6 addresses as the IPv4 address they are, so `127.0.0.1` allows
/// `::ffff:127.0.0.1` and a pattern cannot be dodged by the other spelling.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn masked(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(v4) & mask))
        }
        IpAddr::V6(v6) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
        }
    }
}

fn normalise_name(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

fn is_host_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// The WHATWG URL rule: a host whose last label is a number (decimal or `0x` hex) is IPv4.
fn ends_in_a_number(name: &str) -> bool {
    let last = name.rsplit('.').next().unwrap_or_default();
    !last.is_empty()
        && (last.bytes().all(|b| b.is_ascii_digit())
            || last
                .strip_prefix("0x")
                .is_some_and(|hex| hex.bytes().all(|b| b.is_ascii_hexdigit())))
}

/// The IP address a URL host is, if it is one: `[v6]` or v6, dotted-quad v4, and the other IPv4
/// notations resolvers and URL parsers accept (`2130706433`, `0x7f.1`, `017700000001`,
/// `127.1`), which `getaddrinfo` turns into the same address without any lookup.
pub fn host_literal(host: &str) -> Option<IpAddr> {
    let host = host.trim_end_matches('.');
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Some(ip);
    }
    loose_ipv4(bare).map(IpAddr::V4)
}

/// `inet_aton`'s grammar: one to four parts, each decimal, octal (leading `0`) or hex (`0x`),
/// the last filling the remaining bytes.
fn loose_ipv4(text: &str) -> Option<Ipv4Addr> {
    let parts: Vec<&str> = text.split('.').collect();
    if parts.is_empty() || parts.len() > 4 {
        return None;
    }
    let mut numbers = Vec::with_capacity(parts.len());
    for part in &parts {
        let lower = part.to_ascii_lowercase();
        let value = if let Some(hex) = lower.strip_prefix("0x") {
            if hex.is_empty() {
                0
            } else {
                u64::from_str_radix(hex, 16).ok()?
            }
        } else if lower.len() > 1 && lower.starts_with('0') {
            u64::from_str_radix(&lower[1..], 8).ok()?
        } else {
            if lower.is_empty() || !lower.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            lower.parse::<u64>().ok()?
        };
        numbers.push(value);
    }
    let (last, leading) = numbers.split_last()?;
    if leading.iter().any(|&n| n > 255) {
        return None;
    }
    let last_bits = 8 * (4 - leading.len() as u32);
    if *last >= 1u64 << last_bits {
        return None;
    }
    let mut value: u32 = 0;
    for (i, n) in leading.iter().enumerate() {
        value |= (*n as u32) << (24 - 8 * i as u32);
    }
    Some(Ipv4Addr::from(value | *last as u32))
}

/// A refused connection: the host as the URL named it, the address, and its class.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct EgressRefused {
    /// The host of the URL.
    pub host: String,
    /// The address it is or resolved to.
    pub ip: IpAddr,
    /// Why it is refused.
    pub class: AddressClass,
}

impl fmt::Display for EgressRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let address = if host_literal(&self.host).is_some() {
            self.ip.to_string()
        } else {
            format!("{} ({})", self.host, self.ip)
        };
        if self.class == AddressClass::Metadata {
            write!(
                f,
                "{address} is a cloud metadata (link-local) address; upstream sources may never reach it"
            )
        } else {
            write!(
                f,
                "{address} is a {} address; this server refuses non-public upstreams unless allowed with {ALLOW_FLAG}",
                self.class
            )
        }
    }
}

/// The egress allow-list; cheap to clone. The default allows no non-public address.
#[derive(Clone, Debug, Default)]
pub struct EgressPolicy {
    allowed: Arc<[HostPattern]>,
}

impl EgressPolicy {
    /// A policy allowing `patterns` besides the public internet.
    pub fn new(patterns: impl IntoIterator<Item = HostPattern>) -> Self {
        Self {
            allowed: patterns.into_iter().collect(),
        }
    }

    /// The patterns, for logs.
    pub fn patterns(&self) -> &[HostPattern] {
        &self.allowed
    }

    /// Whether a connection to `ip`, which the URL host `host` is or resolved to, is allowed.
    pub fn check(&self, host: &str, ip: IpAddr) -> Result<(), EgressRefused> {
        let ip = canonical(ip);
        let class = classify(ip);
        let refused = || EgressRefused {
            host: host.to_string(),
            ip,
            class,
        };
        match class {
            AddressClass::Public => Ok(()),
            AddressClass::Metadata => Err(refused()),
            _ => {
                let name = normalise_name(host);
                let by_name = host_literal(host).is_none()
                    && self.allowed.iter().any(|p| p.matches_name(&name));
                let by_address = self.allowed.iter().any(|p| p.matches_ip(ip));
                if by_name || by_address {
                    Ok(())
                } else {
                    Err(refused())
                }
            }
        }
    }

    /// The request-time judgement of a URL host alone (`host`, `[v6]`, with or without a port
    /// stripped by the caller): an IP literal in any notation, and `localhost` names (which
    /// resolvers answer with loopback without asking DNS), are decided here; any other name is
    /// `Ok` and is decided at connect time on what it resolves to.
    pub fn check_host(&self, host: &str) -> Result<(), EgressRefused> {
        if let Some(ip) = host_literal(host) {
            return self.check(host, ip);
        }
        let name = normalise_name(host);
        if name == "localhost" || name.ends_with(".localhost") {
            return self.check(host, IpAddr::V4(Ipv4Addr::LOCALHOST));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(patterns: &[&str]) -> EgressPolicy {
        EgressPolicy::new(patterns.iter().map(|p| p.parse().unwrap()))
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    /// The hostile table: every one of these is refused with no allow-list, statically (from the
    /// URL host alone) and at connect time (the address it resolves to).
    const HOSTILE: &[(&str, &str, AddressClass)] = &[
        ("127.0.0.1", "127.0.0.1", AddressClass::Loopback),
        ("127.53.1.1", "127.53.1.1", AddressClass::Loopback),
        ("localhost", "127.0.0.1", AddressClass::Loopback),
        ("LocalHost.", "127.0.0.1", AddressClass::Loopback),
        ("api.localhost", "127.0.0.1", AddressClass::Loopback),
        ("[::1]", "::1", AddressClass::Loopback),
        ("0.0.0.0", "0.0.0.0", AddressClass::Unspecified),
        ("[::]", "::", AddressClass::Unspecified),
        ("0", "0.0.0.0", AddressClass::Unspecified),
        ("10.0.0.1", "10.0.0.1", AddressClass::Private),
        ("192.168.1.1", "192.168.1.1", AddressClass::Private),
        ("172.16.0.1", "172.16.0.1", AddressClass::Private),
        ("172.31.255.255", "172.31.255.255", AddressClass::Private),
        ("[fd12::1]", "fd12::1", AddressClass::Private),
        ("100.64.0.1", "100.64.0.1", AddressClass::SharedAddressSpace),
        ("169.254.169.254", "169.254.169.254", AddressClass::Metadata),
        ("[fe80::1]", "fe80::1", AddressClass::Metadata),
        ("[fd00:ec2::254]", "fd00:ec2::254", AddressClass::Metadata),
        ("100.100.100.200", "100.100.100.200", AddressClass::Metadata),
        ("2130706433", "127.0.0.1", AddressClass::Loopback),
        ("0x7f.1", "127.0.0.1", AddressClass::Loopback),
        ("0x7F000001", "127.0.0.1", AddressClass::Loopback),
        ("017700000001", "127.0.0.1", AddressClass::Loopback),
        ("0177.0.0.1", "127.0.0.1", AddressClass::Loopback),
        ("127.1", "127.0.0.1", AddressClass::Loopback),
        ("10.1", "10.0.0.1", AddressClass::Private),
        ("[::ffff:127.0.0.1]", "127.0.0.1", AddressClass::Loopback),
        ("[::ffff:7f00:1]", "127.0.0.1", AddressClass::Loopback),
        ("[::127.0.0.1]", "::127.0.0.1", AddressClass::Loopback),
        ("[64:ff9b::a00:1]", "64:ff9b::a00:1", AddressClass::Private),
        (
            "[2002:a9fe:a9fe::]",
            "2002:a9fe:a9fe::",
            AddressClass::Metadata,
        ),
        (
            "[::ffff:169.254.169.254]",
            "169.254.169.254",
            AddressClass::Metadata,
        ),
        ("224.0.0.1", "224.0.0.1", AddressClass::Reserved),
        ("255.255.255.255", "255.255.255.255", AddressClass::Reserved),
    ];

    #[test]
    fn hostile_hosts_are_refused_without_an_allow_list() {
        let none = EgressPolicy::default();
        for &(host, address, class) in HOSTILE {
            let refused = none.check_host(host).expect_err(host);
            assert_eq!(refused.class, class, "{host}");
            assert_eq!(
                refused.ip,
                canonical(ip(address)),
                "{host} is {address} to a resolver"
            );
            assert!(
                none.check("attacker.example", ip(address)).is_err(),
                "a name resolving to {address} is refused at connect time"
            );
            let message = refused.to_string();
            let hint = if class == AddressClass::Metadata {
                "may never reach it"
            } else {
                ALLOW_FLAG
            };
            assert!(message.contains(hint), "{host}: {message}");
        }
    }

    #[test]
    fn metadata_addresses_are_refused_even_when_allowed() {
        let everything = policy(&[
            "0.0.0.0/0",
            "::/0",
            "169.254.169.254",
            "metadata.google.internal",
            "*.internal",
        ]);
        for address in [
            "169.254.169.254",
            "fe80::1",
            "fd00:ec2::254",
            "::ffff:169.254.169.254",
        ] {
            let refused = everything
                .check("metadata.google.internal", ip(address))
                .unwrap_err();
            assert_eq!(refused.class, AddressClass::Metadata, "{address}");
        }
        assert!(everything.check_host("169.254.169.254").is_err());
        assert!(everything.check("10.0.0.1", ip("10.0.0.1")).is_ok());
    }

    #[test]
    fn an_allowed_address_opens_that_address_in_every_spelling_and_nothing_else() {
        let local = policy(&["127.0.0.1"]);
        for host in [
            "127.0.0.1",
            "[::ffff:127.0.0.1]",
            "[::ffff:7f00:1]",
            "2130706433",
            "0x7f.1",
        ] {
            assert_eq!(local.check_host(host), Ok(()), "{host}");
        }
        assert!(local.check_host("127.0.0.2").is_err());
        assert!(local.check_host("[::1]").is_err());
        assert!(local.check_host("10.0.0.1").is_err());
        // `localhost` is judged by the address it resolves to.
        assert_eq!(local.check_host("localhost"), Ok(()));
        assert_eq!(local.check("vm", ip("127.0.0.1")), Ok(()));
        assert!(local.check("vm", ip("127.0.1.1")).is_err());
    }

    #[test]
    fn blocks_names_and_wildcards_match_what_they_say() {
        let allowed = policy(&[
            "10.0.0.0/8",
            "fd00::/8",
            "registry.internal",
            "*.corp.example",
        ]);
        assert_eq!(allowed.check("a", ip("10.200.3.4")), Ok(()));
        assert_eq!(allowed.check("a", ip("fd12::1")), Ok(()));
        assert!(allowed.check("a", ip("fc00::1")).is_err());
        assert!(allowed.check("a", ip("192.168.0.1")).is_err());
        assert_eq!(
            allowed.check("Registry.Internal.", ip("192.168.0.1")),
            Ok(())
        );
        assert_eq!(allowed.check("git.corp.example", ip("192.168.0.1")), Ok(()));
        assert_eq!(allowed.check("a.b.corp.example", ip("192.168.0.1")), Ok(()));
        assert!(allowed.check("corp.example", ip("192.168.0.1")).is_err());
        assert!(
            allowed
                .check("evilcorp.example", ip("192.168.0.1"))
                .is_err()
        );
        assert!(
            allowed
                .check("registry.internal.evil", ip("192.168.0.1"))
                .is_err()
        );
        // A name pattern never matches an IP-literal host spelled like it.
        assert!(allowed.check("127.0.0.1", ip("127.0.0.1")).is_err());
    }

    #[test]
    fn public_addresses_are_allowed_with_or_without_a_list() {
        for allowed in [EgressPolicy::default(), policy(&["registry.internal"])] {
            for address in [
                "8.8.8.8",
                "2606:4700::1111",
                "100.128.0.1",
                "172.32.0.1",
                "1.1.1.1",
            ] {
                assert_eq!(
                    allowed.check("example.com", ip(address)),
                    Ok(()),
                    "{address}"
                );
            }
            assert_eq!(allowed.check_host("example.com"), Ok(()));
            assert_eq!(allowed.check_host("8.8.8.8"), Ok(()));
        }
    }

    #[test]
    fn patterns_parse_and_bad_ones_say_why() {
        assert_eq!(
            "Registry.Internal.".parse(),
            Ok(HostPattern::Name("registry.internal".into()))
        );
        assert_eq!(
            "*.corp.example".parse(),
            Ok(HostPattern::Suffix(".corp.example".into()))
        );
        assert_eq!(
            "::ffff:10.0.0.1"
                .parse::<HostPattern>()
                .unwrap()
                .to_string(),
            "10.0.0.1/32"
        );
        assert_eq!(
            "[::1]".parse::<HostPattern>().unwrap().to_string(),
            "::1/128"
        );
        assert_eq!(
            "10.0.0.0/8".parse::<HostPattern>().unwrap().to_string(),
            "10.0.0.0/8"
        );
        for bad in [
            "",
            "10.0.0.1/8",
            "10.0.0.0/33",
            "10.0.0.0/x",
            "nope/8",
            "*",
            "*.",
            "a..b",
            "-evil",
            "http://registry",
            "registry:5000",
            "reg istry",
            "2130706433",
            "0x7f.1",
            "evil.127",
        ] {
            let err = bad.parse::<HostPattern>().unwrap_err();
            assert!(
                err.to_string().contains("is not a host name"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn loose_ipv4_follows_inet_aton() {
        for (text, address) in [
            ("1.2.3.4", "1.2.3.4"),
            ("16909060", "1.2.3.4"),
            ("1.2.772", "1.2.3.4"),
            ("0x1.0x2.0x3.0x4", "1.2.3.4"),
            ("01.02.03.04", "1.2.3.4"),
            ("0xffffffff", "255.255.255.255"),
        ] {
            assert_eq!(loose_ipv4(text), Some(address.parse().unwrap()), "{text}");
        }
        for text in [
            "1.2.3.256",
            "1.2.3.4.5",
            "4294967296",
            "08",
            "1..2",
            "a.b",
            "",
        ] {
            assert_eq!(loose_ipv4(text), None, "{text}");
        }
    }
}
