//! The replica book as a pure fold: holders, duties, releases, re-placement and placement order,
//! with events arriving in any order.

use std::collections::BTreeMap;

use libp2p::PeerId;
use shoal_store::cid::{cid_of, RAW};

use super::*;
use crate::swarm::PeerInfo;

fn src(n: u8) -> SourceId {
    SourceId::from(format!("node-{n}"))
}

fn request(wanted: u32, holders: &[u8]) -> Op {
    Op::Request {
        size: 10,
        wanted,
        holders: holders.iter().map(|h| src(*h).to_string()).collect(),
    }
}

fn blob(n: u8) -> Cid {
    cid_of(RAW, &[n])
}

#[test]
fn holders_are_the_requester_and_those_that_hold() {
    let cid = blob(1);
    let mut book = Book::default();
    book.apply(cid, &src(1), 5, request(3, &[2, 3]));
    assert_eq!(book.holders(&cid), [src(1)].into());
    assert_eq!(book.duties(&src(2)), vec![(cid, 10)]);
    assert!(book.duties(&src(4)).is_empty(), "not named");
    book.apply(cid, &src(2), 7, Op::Held);
    assert_eq!(book.holders(&cid), [src(1), src(2)].into());
    assert!(book.duties(&src(2)).is_empty(), "held: done");
    assert_eq!(book.duties(&src(3)), vec![(cid, 10)]);
    assert!(
        book.short(&src(1)).is_empty(),
        "two holders named besides the requester"
    );
}

#[test]
fn a_release_ends_everything_before_it_in_any_arrival_order() {
    let cid = blob(2);
    let events = [
        (src(1), 5, request(2, &[2])),
        (src(2), 6, Op::Held),
        (src(3), 9, Op::Released),
    ];
    // Every arrival order gives the same book.
    for order in [[0, 1, 2], [2, 1, 0], [1, 2, 0], [2, 0, 1]] {
        let mut book = Book::default();
        for i in order {
            let (s, l, op) = &events[i];
            book.apply(cid, s, *l, op.clone());
        }
        assert!(book.released(&cid), "{order:?}");
        assert!(!book.live(&cid));
        assert!(book.holders(&cid).is_empty());
        assert!(book.duties(&src(2)).is_empty());
    }
    // The same bytes put again after the release: live again.
    let mut book = Book::default();
    for (s, l, op) in events {
        book.apply(cid, &s, l, op);
    }
    book.apply(cid, &src(1), 12, request(2, &[2]));
    assert!(book.live(&cid) && !book.released(&cid));
    assert_eq!(
        book.duties(&src(2)),
        vec![(cid, 10)],
        "its old hold was released"
    );
}

#[test]
fn a_refusal_makes_the_owner_short_until_it_names_another() {
    let cid = blob(3);
    let mut book = Book::default();
    book.apply(cid, &src(1), 1, request(2, &[2]));
    assert!(book.short(&src(1)).is_empty());
    book.apply(
        cid,
        &src(2),
        2,
        Op::Refused {
            reason: "full".into(),
        },
    );
    assert_eq!(book.short(&src(1)), vec![(cid, 1)]);
    assert!(book.duties(&src(2)).is_empty(), "refused: not asked again");
    assert!(book.short(&src(2)).is_empty(), "only the owner re-places");
    book.apply(cid, &src(1), 3, request(2, &[3]));
    assert!(book.short(&src(1)).is_empty());
    assert_eq!(book.duties(&src(3)), vec![(cid, 10)]);
}

#[test]
fn placement_prefers_connected_then_recent_then_stream_sources() {
    let cid = blob(4);
    let peer = |connected: bool, seen: Option<u64>| {
        let id = PeerId::random();
        (
            id,
            PeerInfo {
                peer_id: id.to_string(),
                addrs: Vec::new(),
                connected,
                last_seen: seen,
                our_offset_stored: None,
                last_error: None,
                gossip_score: None,
            },
        )
    };
    let (old, old_info) = peer(false, Some(100));
    let (recent, recent_info) = peer(false, Some(200));
    let (up, up_info) = peer(true, Some(50));
    let me = SourceId::from("me");
    let far = SourceId::from("far-away");
    let network = NetworkState {
        listen_addrs: Vec::new(),
        peers: BTreeMap::from([(old, old_info), (recent, recent_info), (up, up_info)]),
        known: BTreeMap::from([(far.clone(), 3), (me.clone(), 7)]),
        forks: Vec::new(),
        node_list_changes: 0,
    };
    let book = Book::default();
    let order = book.placement(&cid, &me, &network, 10);
    let s = |p: PeerId| SourceId::from(p.to_string());
    assert_eq!(order, vec![s(up), s(recent), s(old), far.clone()]);
    assert_eq!(book.placement(&cid, &me, &network, 1), vec![s(up)]);

    // Named or refused nodes are not chosen again.
    let mut book = Book::default();
    book.apply(
        cid,
        &me,
        1,
        Op::Request {
            size: 1,
            wanted: 3,
            holders: vec![s(up).to_string()],
        },
    );
    book.apply(
        cid,
        &s(recent),
        2,
        Op::Refused {
            reason: "full".into(),
        },
    );
    assert_eq!(book.placement(&cid, &me, &network, 10), vec![s(old), far]);
}

#[test]
fn replica_events_from_peers_are_decoded_or_dropped() {
    let event = |name: &str, payload: &str| Event {
        source: src(9),
        offset: 0,
        lamport: 1,
        timestamp: 0,
        semantics: SEMANTICS.into(),
        name: name.into(),
        tags: Vec::new(),
        payload: RawValue::from_string(payload.into()).unwrap(),
    };
    let cid = blob(5).to_string();
    assert_eq!(
        decode(&event(&cid, r#"{"op":"held"}"#)),
        Some((blob(5), Op::Held))
    );
    assert!(decode(&event("not-a-cid", r#"{"op":"held"}"#)).is_none());
    assert!(decode(&event(&cid, r#"{"op":"eat"}"#)).is_none());
    assert!(decode(&event(&cid, r#"[1,2]"#)).is_none());
    assert!(
        decode(&event(
            &cid,
            r#"{"op":"request","size":1,"wanted":65,"holders":[]}"#
        ))
        .is_none(),
        "more replicas than any put may ask for"
    );
}
