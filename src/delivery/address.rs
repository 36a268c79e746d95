//! Where outbound requests may go (PURE): the one table of non-public address ranges (the IANA
//! special-purpose registries), the check of a request's destination, the parsed entries of the
//! URL allowlist, and the redaction that keeps credentials in URLs out of messages and logs.
//!
//! The check is made on the address a request actually connects to: an IP literal in the URL
//! here ([`check_url`]), every DNS answer in the guarded resolver (`webhook::guarded_client`).
//! Redirects are never followed, so there is no second hop to check.

use ipnet::{Ipv4Net, Ipv6Net};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use url::{Host, Url};

const fn v4(a: u8, b: u8, c: u8, d: u8, len: u8) -> Ipv4Net {
    Ipv4Net::new_assert(Ipv4Addr::new(a, b, c, d), len)
}

const fn v6(a: u16, b: u16, c: u16, d: u16, e: u16, f: u16, len: u8) -> Ipv6Net {
    Ipv6Net::new_assert(Ipv6Addr::new(a, b, c, d, e, f, 0, 0), len)
}

/// IPv4 ranges no request goes to without permission: the IANA IPv4 special-purpose registry
/// entries that are not globally reachable, plus multicast. The first match names the range.
const NON_PUBLIC_V4: &[(Ipv4Net, &str)] = &[
    (v4(0, 0, 0, 0, 8), "\"this network\" (0.0.0.0/8)"),
    (v4(10, 0, 0, 0, 8), "private (10.0.0.0/8)"),
    (
        v4(100, 64, 0, 0, 10),
        "shared address space, CGNAT (100.64.0.0/10)",
    ),
    (v4(127, 0, 0, 0, 8), "loopback (127.0.0.0/8)"),
    (v4(169, 254, 0, 0, 16), "link-local (169.254.0.0/16)"),
    (v4(172, 16, 0, 0, 12), "private (172.16.0.0/12)"),
    (
        v4(192, 0, 0, 0, 24),
        "IETF protocol assignments (192.0.0.0/24)",
    ),
    (
        v4(192, 0, 2, 0, 24),
        "documentation, TEST-NET-1 (192.0.2.0/24)",
    ),
    (
        v4(192, 88, 99, 0, 24),
        "6to4 relay anycast (192.88.99.0/24)",
    ),
    (v4(192, 168, 0, 0, 16), "private (192.168.0.0/16)"),
    (v4(198, 18, 0, 0, 15), "benchmarking (198.18.0.0/15)"),
    (
        v4(198, 51, 100, 0, 24),
        "documentation, TEST-NET-2 (198.51.100.0/24)",
    ),
    (
        v4(203, 0, 113, 0, 24),
        "documentation, TEST-NET-3 (203.0.113.0/24)",
    ),
    (v4(224, 0, 0, 0, 4), "multicast (224.0.0.0/4)"),
    (
        v4(255, 255, 255, 255, 32),
        "limited broadcast (255.255.255.255/32)",
    ),
    (v4(240, 0, 0, 0, 4), "reserved (240.0.0.0/4)"),
];

/// IPv6 ranges no request goes to without permission: the IANA IPv6 special-purpose registry
/// entries that are not globally reachable, plus site-local and multicast. IPv4-mapped
/// addresses (`::ffff:0:0/96`) are not listed: they are checked as the IPv4 address they carry.
/// Prefixes that embed or translate to IPv4 (NAT64, 6to4, Teredo) are refused outright, and so
/// is anything outside global unicast ([`GLOBAL_UNICAST_V6`]); the entries outside it are listed
/// for their names.
const NON_PUBLIC_V6: &[(Ipv6Net, &str)] = &[
    (v6(0, 0, 0, 0, 0, 0, 128), "unspecified (::/128)"),
    (
        Ipv6Net::new_assert(Ipv6Addr::LOCALHOST, 128),
        "loopback (::1/128)",
    ),
    (
        v6(0, 0, 0, 0, 0, 0, 96),
        "IPv4-compatible, deprecated (::/96)",
    ),
    (v6(0x64, 0xff9b, 0, 0, 0, 0, 96), "NAT64 (64:ff9b::/96)"),
    (
        v6(0x64, 0xff9b, 1, 0, 0, 0, 48),
        "local-use NAT64 (64:ff9b:1::/48)",
    ),
    (v6(0x100, 0, 0, 0, 0, 0, 64), "discard-only (100::/64)"),
    (
        v6(0x100, 0, 0, 1, 0, 0, 64),
        "dummy prefix (100:0:0:1::/64)",
    ),
    (
        v6(0x2001, 0xdb8, 0, 0, 0, 0, 32),
        "documentation (2001:db8::/32)",
    ),
    (
        v6(0x2001, 0, 0, 0, 0, 0, 23),
        "IETF protocol assignments, Teredo included (2001::/23)",
    ),
    (v6(0x2002, 0, 0, 0, 0, 0, 16), "6to4 (2002::/16)"),
    (v6(0x3fff, 0, 0, 0, 0, 0, 20), "documentation (3fff::/20)"),
    (
        v6(0x5f00, 0, 0, 0, 0, 0, 16),
        "segment routing SIDs (5f00::/16)",
    ),
    (v6(0xfc00, 0, 0, 0, 0, 0, 7), "unique local (fc00::/7)"),
    (v6(0xfe80, 0, 0, 0, 0, 0, 10), "link-local (fe80::/10)"),
    (
        v6(0xfec0, 0, 0, 0, 0, 0, 10),
        "site-local, deprecated (fec0::/10)",
    ),
    (v6(0xff00, 0, 0, 0, 0, 0, 8), "multicast (ff00::/8)"),
];

/// The only IPv6 space assigned for global unicast (IANA IPv6 address space registry).
const GLOBAL_UNICAST_V6: Ipv6Net = v6(0x2000, 0, 0, 0, 0, 0, 3);

/// The non-public range `ip` is in, named, or `None` for an address fit for an outbound request.
pub fn non_public_range(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => NON_PUBLIC_V4
            .iter()
            .find(|(net, _)| net.contains(&v4))
            .map(|(_, what)| *what),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => non_public_range(IpAddr::V4(v4)),
            None => NON_PUBLIC_V6
                .iter()
                .find(|(net, _)| net.contains(&v6))
                .map(|(_, what)| *what)
                .or_else(|| {
                    (!GLOBAL_UNICAST_V6.contains(&v6))
                        .then_some("outside global unicast (2000::/3)")
                }),
        },
    }
}

/// Whether an address is fit for an outbound request without explicit permission.
pub fn is_public(ip: IpAddr) -> bool {
    non_public_range(ip).is_none()
}

/// Why a request is not sent where it would go.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("refused: {ip} is {range} (SSRF guard)")]
    Address { ip: IpAddr, range: &'static str },
    #[error("refused: `{host}` resolves to no public address: {ip} is {range} (SSRF guard)")]
    Resolved {
        host: String,
        ip: IpAddr,
        range: &'static str,
    },
    #[error("refused: `{0}` resolves to no address (SSRF guard)")]
    Unresolved(String),
    #[error("refused: scheme `{0}` (only http and https are sent)")]
    Scheme(String),
    #[error("refused: the URL names no host")]
    NoHost,
}

/// Checks a single address.
pub fn check_ip(ip: IpAddr) -> Result<(), Refusal> {
    match non_public_range(ip) {
        Some(range) => Err(Refusal::Address { ip, range }),
        None => Ok(()),
    }
}

/// Checks what can be checked of a URL before connecting: the scheme, and the host when it is
/// an IP literal (any spelling the URL standard accepts, `http://2130706433/`, `http://0x7f.1/`
/// and `http://[::ffff:127.0.0.1]/` included: the parser normalizes them). A host name is
/// checked by the guarded resolver, on every address it answers.
pub fn check_url(url: &Url) -> Result<(), Refusal> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Refusal::Scheme(url.scheme().to_string()));
    }
    match url.host() {
        Some(Host::Ipv4(ip)) => check_ip(IpAddr::V4(ip)),
        Some(Host::Ipv6(ip)) => check_ip(IpAddr::V6(ip)),
        Some(Host::Domain(_)) => Ok(()),
        None => Err(Refusal::NoHost),
    }
}

/// One entry of `delivery.webhook_url_allowlist`, parsed at config load. A URL is admitted when
/// its scheme, host and port are the entry's exactly and its path is the entry's path or below
/// it, on a segment boundary: `https://h/api` admits `/api` and `/api/x`, not `/apix`;
/// `http://192.0.2.2` admits nothing on `192.0.2.20` or `192.0.2.2.evil.example`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedUrl {
    scheme: String,
    host: Host<String>,
    port: u16,
    path: String,
}

/// Why an allowlist entry is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllowlistError {
    #[error("`{entry}` is not a URL: {reason}")]
    NotAUrl { entry: String, reason: String },
    #[error("`{0}`: only http and https URLs can be allowed")]
    Scheme(String),
    #[error("`{0}` names no host")]
    NoHost(String),
    #[error("`{0}`: wildcards are not supported; list each host")]
    Wildcard(String),
    #[error("`{0}`: an entry may not carry a user name, password, query or fragment")]
    Extra(String),
}

impl AllowedUrl {
    /// Parses an entry; errors name it (redacted).
    pub fn parse(entry: &str) -> Result<AllowedUrl, AllowlistError> {
        let shown = redact(entry);
        let url = Url::parse(entry.trim()).map_err(|e| AllowlistError::NotAUrl {
            entry: shown.clone(),
            reason: e.to_string(),
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(AllowlistError::Scheme(shown));
        }
        let (Some(host), Some(port)) = (url.host(), url.port_or_known_default()) else {
            return Err(AllowlistError::NoHost(shown));
        };
        if matches!(host, Host::Domain(name) if name.contains('*')) {
            return Err(AllowlistError::Wildcard(shown));
        }
        if !url.username().is_empty()
            || url.password().is_some()
            || url.query().is_some()
            || url.fragment().is_some()
        {
            return Err(AllowlistError::Extra(shown));
        }
        Ok(AllowedUrl {
            scheme: url.scheme().to_string(),
            host: host.to_owned(),
            port,
            path: url.path().to_string(),
        })
    }

    /// Whether `url` is under this entry.
    pub fn admits(&self, url: &Url) -> bool {
        url.scheme() == self.scheme
            && url.host().map(|h| h.to_owned()).as_ref() == Some(&self.host)
            && url.port_or_known_default() == Some(self.port)
            && path_under(url.path(), &self.path)
    }
}

impl std::fmt::Display for AllowedUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}://{}:{}{}",
            self.scheme, self.host, self.port, self.path
        )
    }
}

/// Whether `path` is `base` or below it, on a segment boundary.
fn path_under(path: &str, base: &str) -> bool {
    match path.strip_prefix(base) {
        Some(rest) => rest.is_empty() || base.ends_with('/') || rest.starts_with('/'),
        None => false,
    }
}

/// The longest redacted URL shown; longer ones are cut (with `…`).
const SHOWN_CHARS: usize = 200;

/// A URL fit for a message or a log line: no user name or password, no query (a signed URL
/// carries its credential there; `?…` marks that one was removed), no fragment, at most
/// [`SHOWN_CHARS`] characters, no control characters. Text that is not a URL is cut the same
/// way.
pub fn redact(url: &str) -> String {
    let shown = match Url::parse(url.trim()) {
        Ok(mut parsed) => {
            let had_query = parsed.query().is_some() || parsed.fragment().is_some();
            parsed.set_query(None);
            parsed.set_fragment(None);
            // Fails only for URLs that cannot have credentials; those have none to remove.
            let _ = parsed.set_username("");
            let _ = parsed.set_password(None);
            let mut shown = String::from(parsed);
            if had_query {
                shown.push_str("?…");
            }
            shown
        }
        Err(_) => redact_text(url),
    };
    let mut chars = shown.chars();
    let mut cut: String = chars.by_ref().take(SHOWN_CHARS).collect();
    if chars.next().is_some() {
        cut.push('…');
    }
    cut
}

/// [`redact`] for text the URL parser refuses: cut at the first `?` or `#`, and anything before
/// an `@` in what looks like the authority dropped.
fn redact_text(text: &str) -> String {
    let (base, tail) = match text.find(['?', '#']) {
        Some(i) => (&text[..i], "?…"),
        None => (text, ""),
    };
    let base = match base.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            format!("{scheme}://{host}{path}")
        }
        None => base.to_string(),
    };
    base.chars()
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .chain(tail.chars())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(ip: &str) -> Option<&'static str> {
        non_public_range(ip.parse().unwrap())
    }

    /// Every table entry, by an address inside it (its first and last address, named by the
    /// entry itself) and the nearest addresses outside that are public.
    #[test]
    fn each_non_public_range_is_refused_at_both_ends_and_not_beyond() {
        // (range, first address, last address, public neighbours)
        #[rustfmt::skip]
        let cases: &[(&str, &str, &str, &[&str])] = &[
            ("0.0.0.0/8", "0.0.0.0", "0.255.255.255", &["1.0.0.0"]),
            ("10.0.0.0/8", "10.0.0.0", "10.255.255.255", &["9.255.255.255", "11.0.0.0"]),
            ("100.64.0.0/10", "100.64.0.0", "100.127.255.255", &["100.63.255.255", "100.128.0.0"]),
            ("127.0.0.0/8", "127.0.0.0", "127.255.255.255", &["126.255.255.255", "128.0.0.0"]),
            ("169.254.0.0/16", "169.254.0.0", "169.254.255.255", &["169.253.255.255", "169.255.0.0"]),
            ("172.16.0.0/12", "172.16.0.0", "172.31.255.255", &["172.15.255.255", "172.32.0.0"]),
            ("192.0.0.0/24", "192.0.0.0", "192.0.0.255", &["191.255.255.255", "192.0.1.0"]),
            ("192.0.2.0/24", "192.0.2.0", "192.0.2.255", &["192.0.1.255", "192.0.3.0"]),
            ("192.88.99.0/24", "192.88.99.0", "192.88.99.255", &["192.88.98.255", "192.88.100.0"]),
            ("192.168.0.0/16", "192.168.0.0", "192.168.255.255", &["192.167.255.255", "192.169.0.0"]),
            ("198.18.0.0/15", "198.18.0.0", "198.19.255.255", &["198.17.255.255", "198.20.0.0"]),
            ("198.51.100.0/24", "198.51.100.0", "198.51.100.255", &["198.51.99.255", "198.51.101.0"]),
            ("203.0.113.0/24", "203.0.113.0", "203.0.113.255", &["203.0.112.255", "203.0.114.0"]),
            ("224.0.0.0/4", "224.0.0.0", "239.255.255.255", &["223.255.255.255"]),
            ("240.0.0.0/4", "240.0.0.0", "255.255.255.254", &[]),
            ("255.255.255.255/32", "255.255.255.255", "255.255.255.255", &[]),
            ("::/128", "::", "::", &[]),
            ("::1/128", "::1", "::1", &[]),
            ("::/96", "::2", "::ffff:ffff", &[]),
            ("64:ff9b::/96", "64:ff9b::", "64:ff9b::ffff:ffff", &[]),
            ("64:ff9b:1::/48", "64:ff9b:1::", "64:ff9b:1:ffff:ffff:ffff:ffff:ffff", &[]),
            ("100::/64", "100::", "100::ffff:ffff:ffff:ffff", &[]),
            ("100:0:0:1::/64", "100:0:0:1::", "100::1:ffff:ffff:ffff:ffff", &[]),
            ("2001::/23", "2001::", "2001:1ff:ffff:ffff:ffff:ffff:ffff:ffff", &["2000:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "2001:200::"]),
            ("2001:db8::/32", "2001:db8::", "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", &["2001:db7:ffff:ffff:ffff:ffff:ffff:ffff", "2001:db9::"]),
            ("2002::/16", "2002::", "2002:ffff:ffff:ffff:ffff:ffff:ffff:ffff", &["2003::"]),
            ("3fff::/20", "3fff::", "3fff:fff:ffff:ffff:ffff:ffff:ffff:ffff", &["3ffe:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "3fff:1000::"]),
            ("5f00::/16", "5f00::", "5f00:ffff:ffff:ffff:ffff:ffff:ffff:ffff", &[]),
            ("fc00::/7", "fc00::", "fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", &[]),
            ("fe80::/10", "fe80::", "febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff", &[]),
            ("fec0::/10", "fec0::", "feff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", &[]),
            ("ff00::/8", "ff00::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", &[]),
        ];
        let listed = NON_PUBLIC_V4.len() + NON_PUBLIC_V6.len();
        assert_eq!(cases.len(), listed, "one case per table entry");
        for (net, first, last, outside) in cases {
            for ip in [first, last] {
                let named = range(ip).unwrap_or_else(|| panic!("{ip} must be refused ({net})"));
                assert!(
                    named.contains(&format!("({net})")),
                    "{ip}: {named}, expected {net}"
                );
            }
            for ip in *outside {
                assert_eq!(range(ip), None, "{ip} is public");
            }
        }
    }

    #[test]
    fn ipv6_outside_global_unicast_is_refused() {
        for ip in [
            "::1:0:0",
            "1::",
            "64:ff9a::1",
            "ff::1",
            "1fff:ffff::",
            "4000::",
            "8000::1",
            "fbff::",
        ] {
            assert_eq!(range(ip), Some("outside global unicast (2000::/3)"), "{ip}");
        }
        assert_eq!(range("2000::"), None);
        assert_eq!(range("3fff:1000::"), None);
    }

    #[test]
    fn ipv4_mapped_addresses_are_checked_as_ipv4() {
        assert_eq!(range("::ffff:127.0.0.1"), Some("loopback (127.0.0.0/8)"));
        assert_eq!(
            range("::ffff:169.254.169.254"),
            Some("link-local (169.254.0.0/16)")
        );
        assert_eq!(
            range("::ffff:0.1.2.3"),
            Some("\"this network\" (0.0.0.0/8)")
        );
        assert_eq!(range("::ffff:93.184.216.34"), None);
    }

    #[test]
    fn public_addresses_pass() {
        for ip in [
            "1.1.1.1",
            "8.8.8.8",
            "93.184.216.34",
            "2606:4700:4700::1111",
            "2a00:1450::1",
        ] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn every_spelling_of_an_ip_literal_is_checked() {
        for url in [
            "http://127.0.0.1/",
            "http://2130706433/",
            "http://0x7f.1/",
            "http://0177.0.0.1/",
            "http://127.1/",
            "http://0/",
            "http://[::1]:8080/",
            "http://[::ffff:127.0.0.1]/",
            "http://[::ffff:7f00:1]/",
            "https://169.254.169.254/latest/meta-data/",
            "http://[64:ff9b::7f00:1]/",
            "http://[::7f00:1]/",
            "http://0.1.2.3/",
        ] {
            let parsed = Url::parse(url).unwrap();
            assert!(
                matches!(check_url(&parsed), Err(Refusal::Address { .. })),
                "{url} must be refused"
            );
        }
        assert_eq!(
            check_url(&Url::parse("http://2130706433/").unwrap())
                .unwrap_err()
                .to_string(),
            "refused: 127.0.0.1 is loopback (127.0.0.0/8) (SSRF guard)"
        );
        assert!(check_url(&Url::parse("https://93.184.216.34/x").unwrap()).is_ok());
        assert!(check_url(&Url::parse("https://hooks.example.com/x").unwrap()).is_ok());
        assert_eq!(
            check_url(&Url::parse("file:///etc/passwd").unwrap()),
            Err(Refusal::Scheme("file".into()))
        );
    }

    #[test]
    fn allowlist_entries_match_scheme_host_port_exactly_and_paths_by_segment() {
        let admits = |entry: &str, url: &str| {
            AllowedUrl::parse(entry)
                .unwrap()
                .admits(&Url::parse(url).unwrap())
        };
        assert!(admits("http://192.0.2.2", "http://192.0.2.2/"));
        assert!(admits(
            "http://192.0.2.2",
            "http://192.0.2.2/any/path?sig=1"
        ));
        assert!(!admits("http://192.0.2.2", "http://192.0.2.20/"));
        assert!(!admits(
            "http://192.0.2.2",
            "http://192.0.2.2.evil.example/"
        ));
        assert!(!admits("http://192.0.2.2", "http://192.0.2.2:8080/"));
        assert!(!admits("http://192.0.2.2", "https://192.0.2.2/"));
        assert!(admits("http://192.0.2.2:80", "http://192.0.2.2/"));
        assert!(admits("https://h.example/api", "https://h.example/api"));
        assert!(admits("https://h.example/api", "https://h.example/api/x"));
        assert!(admits("https://h.example/api", "https://h.example/api?x=1"));
        assert!(!admits("https://h.example/api", "https://h.example/apix"));
        assert!(!admits(
            "https://h.example/api",
            "https://h.example/api/../admin"
        ));
        assert!(!admits(
            "https://h.example/api",
            "https://h.example/api/%2e%2e/admin"
        ));
        assert!(admits("https://h.example/api/", "https://h.example/api/x"));
        assert!(!admits("https://h.example/api/", "https://h.example/api"));
        assert!(admits("HTTPS://H.Example/api", "https://h.example/api/x"));
        assert!(!admits(
            "https://h.example/api",
            "https://h.example.evil/api"
        ));
        assert!(!admits(
            "https://h.example/api",
            "https://user@h.example.evil/api"
        ));
        // IP literals compare as addresses, whatever their spelling.
        assert!(admits("http://127.0.0.1:9", "http://2130706433:9/x"));
    }

    #[test]
    fn bad_allowlist_entries_are_named() {
        for (entry, expected) in [
            ("hooks.example.com", "is not a URL"),
            ("ftp://h.example/", "only http and https"),
            ("https://*.example.com/", "wildcards"),
            ("https://h.example/hook?sig=s3cret", "may not carry"),
            ("https://user:pw@h.example/", "may not carry"),
        ] {
            let message = AllowedUrl::parse(entry).unwrap_err().to_string();
            assert!(message.contains(expected), "{entry}: {message}");
            assert!(
                !message.contains("s3cret") && !message.contains("pw@"),
                "{message}"
            );
        }
    }

    #[test]
    fn redaction_drops_credentials_and_queries() {
        assert_eq!(
            redact("https://user:pw@h.example:8443/a/b?sig=s3cret#frag"),
            "https://h.example:8443/a/b?…"
        );
        assert_eq!(redact("http://2130706433/x"), "http://127.0.0.1/x");
        assert_eq!(redact("https://h.example/a"), "https://h.example/a");
        assert_eq!(redact("not a url?sig=s3cret"), "not a url?…");
        assert_eq!(redact("ht!tp://u:pw@h/x?sig=1"), "ht!tp://h/x?…");
        assert_eq!(redact("a\nb"), "a\u{fffd}b");
        let long = format!("https://h.example/{}", "a".repeat(500));
        assert_eq!(redact(&long).chars().count(), SHOWN_CHARS + 1);
    }
}
