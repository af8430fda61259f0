//! The redial list: addresses to stay connected to, redialled with backoff while their peer is
//! not connected. A bootstrap `--peer` stays for good; an address mDNS found stays until mDNS
//! says it expired. mDNS reports a peer once, not again when its connection drops, so without
//! this a peer lost in a network blip would stay lost until its record expired (minutes).
//!
//! A pure state machine (no I/O, no clock of its own): the swarm task asks it which addresses
//! are due and dials them. mDNS records come from anyone on the LAN, so at most
//! [`MAX_MDNS`] of them are kept; further ones are ignored until some expire.

use std::time::{Duration, Instant};

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};

const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// mDNS-found addresses kept at once.
pub const MAX_MDNS: usize = 64;

struct Entry {
    addr: Multiaddr,
    peer: Option<PeerId>,
    backoff: Duration,
    next: Instant,
    /// Found by mDNS (forgotten when it expires), not given as a `--peer` (kept for good).
    mdns: bool,
}

/// Addresses to keep dialling (see the module doc).
#[derive(Default)]
pub(super) struct Redials {
    entries: Vec<Entry>,
}

/// What [`Redials::add_mdns`] did.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Added {
    New,
    Known,
    /// [`MAX_MDNS`] mDNS addresses are kept already.
    Full,
}

impl Redials {
    /// The bootstrap peers, all due at `now`.
    pub(super) fn new(peers: &[Multiaddr], now: Instant) -> Self {
        let entries = peers
            .iter()
            .map(|addr| Entry {
                addr: addr.clone(),
                peer: addr.iter().find_map(|p| match p {
                    Protocol::P2p(id) => Some(id),
                    _ => None,
                }),
                backoff: BACKOFF_MIN,
                next: now,
                mdns: false,
            })
            .collect();
        Redials { entries }
    }

    /// An address mDNS found for `peer` (dialable form), due at once.
    pub(super) fn add_mdns(&mut self, addr: Multiaddr, peer: PeerId, now: Instant) -> Added {
        if self.entries.iter().any(|e| e.addr == addr) {
            return Added::Known;
        }
        if self.entries.iter().filter(|e| e.mdns).count() >= MAX_MDNS {
            return Added::Full;
        }
        self.entries.push(Entry {
            addr,
            peer: Some(peer),
            backoff: BACKOFF_MIN,
            next: now,
            mdns: true,
        });
        Added::New
    }

    /// mDNS says the record behind `addr` expired.
    pub(super) fn expire_mdns(&mut self, addr: &Multiaddr) {
        self.entries.retain(|e| !(e.mdns && &e.addr == addr));
    }

    /// We dialled `addr` and reached `peer`: a `--peer` given without `/p2p/` learns its id.
    pub(super) fn learned(&mut self, addr: &Multiaddr, peer: PeerId) {
        for e in &mut self.entries {
            if e.peer.is_none() && &e.addr == addr {
                e.peer = Some(peer);
            }
        }
    }

    /// The addresses to dial now; each is then due again after its backoff, which doubles per
    /// dial (to [`BACKOFF_MAX`]) and starts over while its peer is connected.
    pub(super) fn due(
        &mut self,
        now: Instant,
        connected: impl Fn(&PeerId) -> bool,
    ) -> Vec<Multiaddr> {
        let mut out = Vec::new();
        for e in &mut self.entries {
            if e.peer.as_ref().is_some_and(&connected) {
                e.backoff = BACKOFF_MIN;
                e.next = now + BACKOFF_MIN;
                continue;
            }
            if now < e.next {
                continue;
            }
            e.next = now + e.backoff;
            e.backoff = (e.backoff * 2).min(BACKOFF_MAX);
            out.push(e.addr.clone());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16, peer: PeerId) -> Multiaddr {
        format!("/ip4/127.0.0.1/tcp/{port}/p2p/{peer}")
            .parse()
            .unwrap()
    }

    #[test]
    fn backoff_doubles_while_away_and_resets_when_connected() {
        let peer = PeerId::random();
        let t0 = Instant::now();
        let mut r = Redials::new(&[addr(1, peer)], t0);
        assert_eq!(r.due(t0, |_| false).len(), 1);
        assert!(r.due(t0, |_| false).is_empty(), "not due again at once");
        assert_eq!(r.due(t0 + Duration::from_secs(1), |_| false).len(), 1);
        assert!(
            r.due(t0 + Duration::from_millis(2500), |_| false)
                .is_empty(),
            "2 s now"
        );
        assert_eq!(r.due(t0 + Duration::from_secs(3), |_| false).len(), 1);
        // Connected: nothing to dial, and the backoff starts over.
        assert!(r.due(t0 + Duration::from_secs(60), |_| true).is_empty());
        assert_eq!(r.due(t0 + Duration::from_secs(61), |_| false).len(), 1);
        assert!(r.due(t0 + Duration::from_secs(61), |_| false).is_empty());
        assert_eq!(r.due(t0 + Duration::from_secs(62), |_| false).len(), 1);
    }

    #[test]
    fn mdns_records_are_capped_and_expire() {
        let t0 = Instant::now();
        let mut r = Redials::new(&[], t0);
        for port in 0..MAX_MDNS as u16 {
            assert_eq!(
                r.add_mdns(addr(port, PeerId::random()), PeerId::random(), t0),
                Added::New
            );
        }
        let extra = addr(9999, PeerId::random());
        assert_eq!(r.add_mdns(extra.clone(), PeerId::random(), t0), Added::Full);
        assert_eq!(r.due(t0, |_| false).len(), MAX_MDNS);
        let first = addr(0, PeerId::random());
        // Expiry frees a place (the address must match exactly).
        r.expire_mdns(&first);
        assert_eq!(r.add_mdns(extra, PeerId::random(), t0), Added::Full);
        let known = r.entries[0].addr.clone();
        assert_eq!(
            r.add_mdns(known.clone(), PeerId::random(), t0),
            Added::Known
        );
        r.expire_mdns(&known);
        assert_eq!(
            r.add_mdns(addr(9998, PeerId::random()), PeerId::random(), t0),
            Added::New
        );
    }

    #[test]
    fn a_peer_without_id_learns_it() {
        let t0 = Instant::now();
        let bare: Multiaddr = "/ip4/127.0.0.1/tcp/5".parse().unwrap();
        let mut r = Redials::new(std::slice::from_ref(&bare), t0);
        let peer = PeerId::random();
        r.learned(&bare, peer);
        assert!(
            r.due(t0, |p| *p == peer).is_empty(),
            "connected by its learned id"
        );
    }
}
