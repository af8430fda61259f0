//! How well this node is connected, as Pond's `requestConnectivity` reports it: derived from the
//! swarm's published [`NetworkState`] and the stored offsets, owned by neither.

use shoal_store::{OffsetMap, SourceId};

use crate::swarm::NetworkState;

/// The three states of API.md's `requestConnectivity`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Every known peer is connected, the special ones included.
    FullyConnected,
    /// Some known peer (or a special one) is not connected.
    PartiallyConnected,
    /// No peer is connected (also a node that knows none: it reads nothing new from anyone).
    NotConnected,
}

impl Status {
    /// The name Pond expects.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::FullyConnected => "FullyConnected",
            Status::PartiallyConnected => "PartiallyConnected",
            Status::NotConnected => "NotConnected",
        }
    }
}

/// One connectivity report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connectivity {
    pub status: Status,
    /// Connected peers per known peer, in percent.
    pub level: u64,
    /// The special peers asked about that are not connected.
    pub specials_disconnected: Vec<String>,
    /// Events known from peers' heads that are not stored here yet.
    pub events_to_read: u64,
    /// This node's own events that no peer is known to store (as of the peers' last digests):
    /// what would be lost if the device died now.
    pub events_to_send: u64,
}

impl Connectivity {
    /// The report for `network` and the `offsets` stored here; `own` is this node's source.
    pub fn of(
        network: &NetworkState,
        offsets: &OffsetMap,
        own: &SourceId,
        specials: &[String],
    ) -> Connectivity {
        let known_peers = network.peers.len() as u64;
        let connected: Vec<&str> = network
            .peers
            .values()
            .filter(|p| p.connected)
            .map(|p| p.peer_id.as_str())
            .collect();
        let specials_disconnected: Vec<String> = specials
            .iter()
            .filter(|s| !connected.contains(&s.as_str()))
            .cloned()
            .collect();
        let events_to_read = network
            .known
            .iter()
            .map(|(s, &k)| {
                let have = offsets.get(s).map_or(0, |o| o.saturating_add(1));
                k.saturating_add(1).saturating_sub(have)
            })
            .fold(0u64, u64::saturating_add);
        let ours = offsets.get(own).map_or(0, |o| o.saturating_add(1));
        let held = network
            .peers
            .values()
            .filter_map(|p| p.our_offset_stored)
            .max()
            .map_or(0, |o| o.saturating_add(1));
        let connected_count = connected.len() as u64;
        let status = if connected.is_empty() {
            Status::NotConnected
        } else if connected_count == known_peers && specials_disconnected.is_empty() {
            Status::FullyConnected
        } else {
            Status::PartiallyConnected
        };
        Connectivity {
            status,
            level: (connected_count * 100)
                .checked_div(known_peers)
                .unwrap_or(100),
            specials_disconnected,
            events_to_read,
            events_to_send: ours.saturating_sub(held),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::swarm::PeerInfo;

    fn peer(id: &str, connected: bool, ours: Option<u64>) -> (libp2p::PeerId, PeerInfo) {
        (
            libp2p::PeerId::random(),
            PeerInfo {
                peer_id: id.into(),
                addrs: vec![],
                connected,
                last_seen: None,
                our_offset_stored: ours,
                last_error: None,
                gossip_score: None,
            },
        )
    }

    #[test]
    fn alone_is_not_connected_and_counts_what_is_at_risk() {
        let own = SourceId::new("me");
        let mut offsets = OffsetMap::new();
        offsets.update(own.clone(), 9);
        let c = Connectivity::of(&NetworkState::default(), &offsets, &own, &[]);
        assert_eq!(c.status, Status::NotConnected);
        assert_eq!(c.events_to_send, 10);
        assert_eq!(c.events_to_read, 0);
    }

    #[test]
    fn partial_when_a_special_or_a_peer_is_missing() {
        let own = SourceId::new("me");
        let mut offsets = OffsetMap::new();
        offsets.update(own.clone(), 9);
        offsets.update(SourceId::new("other"), 4);
        let mut network = NetworkState::default();
        network
            .peers
            .extend([peer("a", true, Some(6)), peer("b", false, Some(2))]);
        network.known.insert(SourceId::new("other"), 7);
        let c = Connectivity::of(&network, &offsets, &own, &["a".into()]);
        assert_eq!(c.status, Status::PartiallyConnected);
        assert_eq!(c.level, 50);
        assert_eq!(c.events_to_send, 3, "the best peer holds 0..=6 of 0..=9");
        assert_eq!(c.events_to_read, 3, "5..=7 of other");
        network.peers.clear();
        network.peers.extend([peer("a", true, None)]);
        let c = Connectivity::of(&network, &offsets, &own, &["a".into()]);
        assert_eq!(c.status, Status::FullyConnected);
        let c = Connectivity::of(&network, &offsets, &own, &["z".into()]);
        assert_eq!(c.status, Status::PartiallyConnected);
        assert_eq!(c.specials_disconnected, vec!["z".to_string()]);
    }
}
