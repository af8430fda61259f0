//! Browser safety (API.md "Browser safety"): which requests from web pages the node's three
//! servers (events/node API, console, Pond store API) accept.
//!
//! Parties: the servers, and a web browser on the device or the LAN, where pages from any site
//! may be open. What such a page can do without this guard: send a `text/plain` POST (a CORS
//! "simple request", sent without a preflight: it publishes even though the page cannot read
//! the answer), open a WebSocket to the store API (WebSockets have no CORS at all: full read and
//! write), and, after DNS rebinding (its own name re-resolved to 127.0.0.1), read every answer as
//! same-origin. Non-goals: authenticating clients that are not browsers (curl, SDKs, Pond under
//! Node.js send no `Origin`; apps on a node are trusted) and subresource loads such as
//! `<img src>` (no `Origin`, and the page cannot read what they return).
//!
//! The rule, checked by [`Guard::check`] in the server before any route runs (so it covers every
//! route, 404s and WebSocket upgrades, and a refused request reads no body and changes nothing):
//! 1. `Host`, when present, must be an IP literal, `localhost`, or a name given with
//!    `--allow-host`: a rebound name (`evil.example` resolving to 127.0.0.1) is refused.
//!    Browsers always send `Host`; a request without one cannot come from a page.
//! 2. `Origin`, when present, must be
//!    - the origin the request was sent to (`http://` + its `Host`): a page this server served;
//!    - the node's API address under the same host (on the console and store API servers, see
//!      [`Guard::with_page_port`]): the dashboard and web apps are served by the node from its
//!      API address (`http://<api-addr>/apps/<id>/`), so they are the node's own pages;
//!    - or an origin given with `--allow-origin` (compared as browsers serialize origins).
//!
//!    Loopback names are one host: `localhost`, `127.x.y.z` and `[::1]` all name this machine,
//!    so a page at `http://localhost:4454` may open `ws://127.0.0.1:4243/store_api`.
//!    `Origin: null` (sandboxed frames, `file:` pages) is refused.
//!
//! Everything else gets 403 `ERR_FORBIDDEN` (`error.rs`). Parsing never panics on any header
//! bytes (property-tested below).

use std::collections::HashSet;
use std::sync::Arc;

use shoal_engine::config::WebConfig;
use url::Host;
use warp::http::header::{HOST, ORIGIN};
use warp::http::HeaderMap;

use crate::error::ApiError;

/// The browser-safety check of one server. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Guard {
    /// `--allow-origin`, as browsers serialize origins.
    allowed_origins: Arc<HashSet<String>>,
    /// `--allow-host`, lower case.
    allowed_hosts: Arc<HashSet<String>>,
    /// Ports whose pages count as the node's own besides the server's own port.
    page_ports: Vec<u16>,
}

impl Guard {
    /// The guard for the node's settings.
    pub fn new(web: &WebConfig) -> Self {
        Self {
            allowed_origins: Arc::new(web.allowed_origins.iter().cloned().collect()),
            allowed_hosts: Arc::new(web.allowed_hosts.iter().cloned().collect()),
            page_ports: Vec::new(),
        }
    }

    /// Pages served from `port` (under the host a request names) are the node's own too: the
    /// console and store API servers pass the API server's port, where the node serves its
    /// pages.
    pub fn with_page_port(mut self, port: u16) -> Self {
        self.page_ports.push(port);
        self
    }

    /// Whether a request with these headers may be served; the error says why not.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let host = match headers.get(HOST) {
            None => None,
            Some(value) => {
                let text = value
                    .to_str()
                    .map_err(|_| ApiError::forbidden("the Host header is not a valid host name"))?;
                let (host, port) = parse_host_header(text).ok_or_else(|| {
                    ApiError::forbidden(format!("the Host header `{text}` is not a valid host"))
                })?;
                if !self.host_allowed(&host) {
                    return Err(ApiError::forbidden(format!(
                        "host `{host}` refused (protection against DNS rebinding): use an IP \
                         address or localhost, or allow the name with --allow-host"
                    )));
                }
                Some((host, port))
            }
        };
        let Some(origin) = headers.get(ORIGIN) else {
            return Ok(());
        };
        let refused = |shown: &str| {
            ApiError::forbidden(format!(
                "cross-origin request from `{shown}` refused: only the node's own pages and \
                 origins given with --allow-origin may use this API"
            ))
        };
        let Ok(text) = origin.to_str() else {
            return Err(refused("(not ASCII)"));
        };
        if self.allowed_origins.contains(text) {
            return Ok(());
        }
        let Ok(url) = url::Url::parse(text) else {
            return Err(refused(text));
        };
        let origin = url.origin();
        if self.allowed_origins.contains(&origin.ascii_serialization()) {
            return Ok(());
        }
        let url::Origin::Tuple(scheme, origin_host, origin_port) = origin else {
            return Err(refused(text));
        };
        let Some((host, port)) = host else {
            return Err(refused(text));
        };
        // The node serves plain HTTP: an https page is never one of its own.
        let own_port = origin_port == port.unwrap_or(80) || self.page_ports.contains(&origin_port);
        if scheme == "http" && own_port && same_host(&origin_host, &host) {
            Ok(())
        } else {
            Err(refused(text))
        }
    }

    fn host_allowed(&self, host: &Host) -> bool {
        match host {
            Host::Ipv4(_) | Host::Ipv6(_) => true,
            Host::Domain(name) => name == "localhost" || self.allowed_hosts.contains(name),
        }
    }
}

/// `host[:port]` of a `Host` header, the host parsed as browsers do (lower case, IP literals
/// recognized, a trailing dot dropped); `None` if it is not a host.
fn parse_host_header(text: &str) -> Option<(Host, Option<u16>)> {
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        // `[v6]` or `[v6]:port`.
        let (v6, after) = rest.split_once(']')?;
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':')?),
        };
        (format!("[{v6}]"), port)
    } else {
        match text.rsplit_once(':') {
            Some((host, port)) => (host.to_string(), Some(port)),
            None => (text.to_string(), None),
        }
    };
    let port = match port {
        None => None,
        Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => Some(p.parse().ok()?),
        Some(_) => return None,
    };
    let host = host.strip_suffix('.').unwrap_or(&host);
    if host.is_empty() {
        return None;
    }
    // The common case (a client of 127.0.0.1) skips url's IDNA pass (seen in the profile of
    // single-event publishes).
    if let Ok(ip) = host.parse::<std::net::Ipv4Addr>() {
        return Some((Host::Ipv4(ip), port));
    }
    Some((Host::parse(host).ok()?, port))
}

/// The same machine: equal hosts, or both loopback names.
fn same_host(a: &Host, b: &Host) -> bool {
    a == b || (is_loopback(a) && is_loopback(b))
}

fn is_loopback(host: &Host) -> bool {
    match host {
        Host::Domain(name) => name == "localhost",
        Host::Ipv4(ip) => ip.is_loopback(),
        Host::Ipv6(ip) => ip.is_loopback(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use warp::http::HeaderValue;

    fn headers(host: Option<&str>, origin: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(v) = host {
            h.insert(HOST, HeaderValue::from_str(v).unwrap());
        }
        if let Some(v) = origin {
            h.insert(ORIGIN, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn allows(g: &Guard, host: Option<&str>, origin: Option<&str>) -> bool {
        match g.check(&headers(host, origin)) {
            Ok(()) => true,
            Err(e) => {
                assert_eq!(e.code(), "ERR_FORBIDDEN");
                false
            }
        }
    }

    #[test]
    fn requests_without_origin_need_only_a_plain_host() {
        let g = Guard::default();
        assert!(allows(&g, None, None));
        for host in [
            "127.0.0.1:4454",
            "localhost:4454",
            "LOCALHOST",
            "localhost.:4454",
            "[::1]:4454",
            "192.168.1.20",
        ] {
            assert!(allows(&g, Some(host), None), "{host}");
        }
        for host in [
            "evil.example:4454",
            "evil.example",
            "localhost.evil.example",
            "127.0.0.1.nip.io",
            "",
            ":4454",
            "[::1",
            "[::1]x",
            "127.0.0.1:99999",
            "127.0.0.1:",
            "a b",
        ] {
            assert!(!allows(&g, Some(host), None), "{host}");
        }
        let named = Guard::new(&WebConfig {
            allowed_hosts: vec!["mydevice.local".into()],
            ..WebConfig::default()
        });
        assert!(allows(&named, Some("MyDevice.local:4454"), None));
        assert!(!allows(&named, Some("other.local:4454"), None));
    }

    #[test]
    fn same_origin_pages_pass_and_others_are_refused() {
        let g = Guard::default();
        let host = Some("127.0.0.1:4454");
        assert!(allows(&g, host, Some("http://127.0.0.1:4454")));
        assert!(allows(&g, host, Some("http://localhost:4454")));
        assert!(allows(&g, host, Some("http://[::1]:4454")));
        assert!(allows(
            &g,
            Some("192.168.1.20:4454"),
            Some("http://192.168.1.20:4454")
        ));
        assert!(allows(&g, Some("localhost"), Some("http://localhost")));
        for origin in [
            "http://127.0.0.1:8080",
            "http://evil.example",
            "http://evil.example:4454",
            "https://127.0.0.1:4454",
            "http://192.168.1.20:4454",
            "null",
            "file://",
            "",
            "garbage",
        ] {
            assert!(!allows(&g, host, Some(origin)), "{origin}");
        }
        // No Host: nothing to be same-origin with.
        assert!(!allows(&g, None, Some("http://127.0.0.1:4454")));
    }

    #[test]
    fn pages_of_the_api_address_may_use_the_other_servers() {
        let store = Guard::default().with_page_port(4454);
        assert!(allows(
            &store,
            Some("127.0.0.1:4243"),
            Some("http://localhost:4454")
        ));
        assert!(!allows(
            &store,
            Some("127.0.0.1:4243"),
            Some("http://localhost:4455")
        ));
        assert!(!allows(
            &store,
            Some("127.0.0.1:4243"),
            Some("http://evil.example:4454")
        ));
    }

    #[test]
    fn allowed_origins_pass_from_anywhere() {
        let g = Guard::new(&WebConfig {
            allowed_origins: vec!["http://192.168.1.30:8080".into(), "https://ui.test".into()],
            ..WebConfig::default()
        });
        let host = Some("127.0.0.1:4454");
        assert!(allows(&g, host, Some("http://192.168.1.30:8080")));
        assert!(allows(&g, host, Some("https://ui.test")));
        assert!(allows(&g, host, Some("HTTPS://UI.test:443")));
        assert!(!allows(&g, host, Some("http://192.168.1.30:8081")));
        assert!(!allows(&g, host, Some("http://ui.test")));
        // An allowed origin does not make a rebound Host acceptable.
        assert!(!allows(
            &g,
            Some("evil.example:4454"),
            Some("https://ui.test")
        ));
    }

    proptest! {
        /// Any header bytes get an answer, never a panic.
        #[test]
        fn never_panics_on_arbitrary_headers(
            host in proptest::collection::vec(any::<u8>(), 0..40),
            origin in proptest::collection::vec(any::<u8>(), 0..60),
            host_text in "\\PC{0,30}",
            origin_text in "(http|https|ftp|null)?(://)?\\PC{0,30}(:[0-9]{0,7})?",
        ) {
            let g = Guard::default().with_page_port(4454);
            for (h, o) in [(&host[..], &origin[..]), (host_text.as_bytes(), origin_text.as_bytes())] {
                let mut map = HeaderMap::new();
                if let Ok(v) = HeaderValue::from_bytes(h) {
                    map.insert(HOST, v);
                }
                if let Ok(v) = HeaderValue::from_bytes(o) {
                    map.insert(ORIGIN, v);
                }
                let _ = g.check(&map);
            }
        }
    }
}
