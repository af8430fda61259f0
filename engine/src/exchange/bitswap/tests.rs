use super::*;
use sha2::Digest;

fn block(data: &[u8]) -> (Cid, Vec<u8>) {
    let mh = cid::multihash::Multihash::<64>::wrap(
        crate::exchange::wire::SHA2_256,
        &sha2::Sha256::digest(data),
    )
    .unwrap();
    (Cid::new_v1(0x55, mh), data.to_vec())
}

fn connected() -> (Behaviour, PeerId) {
    let mut b = Behaviour::new();
    let peer = PeerId::random();
    b.connections
        .insert(peer, vec![ConnectionId::new_unchecked(1)]);
    (b, peer)
}

fn events(b: &mut Behaviour) -> Vec<Event> {
    b.events
        .drain(..)
        .filter_map(|e| match e {
            ToSwarm::GenerateEvent(e) => Some(e),
            _ => None,
        })
        .collect()
}

fn want(cid: Cid, cancel: bool) -> Entry {
    Entry {
        cid,
        priority: 1,
        cancel,
        want_type: WantType::Block,
        send_dont_have: true,
    }
}

/// A request completes once every CID arrived or was answered DontHave.
#[test]
fn requests_complete_with_blocks_and_dont_haves() {
    let (mut b, peer) = connected();
    let (a, da) = block(b"a");
    let (c, _) = block(b"c");
    let id = b.want(peer, vec![a, c]);
    b.on_message(
        peer,
        Message {
            blocks: vec![(a, da.clone().into())],
            ..Message::default()
        },
        0,
    );
    assert!(events(&mut b).is_empty(), "c is still outstanding");
    b.on_message(
        peer,
        Message {
            presences: vec![(c, Presence::DontHave)],
            ..Message::default()
        },
        0,
    );
    match &events(&mut b)[..] {
        [Event::Response {
            request,
            blocks,
            dont_have,
            ..
        }] => {
            assert_eq!(*request, id);
            assert_eq!(blocks, &vec![(a, da)]);
            assert_eq!(dont_have, &vec![c]);
        }
        other => panic!("{other:?}"),
    }
    assert!(b.requests.is_empty() && b.by_peer.is_empty());
}

/// Another peer's block does not answer a request to this one.
#[test]
fn blocks_count_only_from_the_asked_peer() {
    let (mut b, peer) = connected();
    let other = PeerId::random();
    let (a, da) = block(b"a");
    b.want(peer, vec![a]);
    b.on_message(
        other,
        Message {
            blocks: vec![(a, da.into())],
            ..Message::default()
        },
        0,
    );
    assert!(events(&mut b).is_empty());
    assert_eq!(b.requests.len(), 1);
}

/// The ledger: wants queue in order, cancels and `full` remove, its size is capped.
#[test]
fn ledger_queues_cancels_and_caps() {
    let (mut b, peer) = connected();
    let cids: Vec<Cid> = (0..5u8).map(|i| block(&[i]).0).collect();
    b.on_message(
        peer,
        Message {
            wantlist: cids.iter().map(|c| want(*c, false)).collect(),
            ..Message::default()
        },
        0,
    );
    assert!(matches!(&events(&mut b)[..], [Event::Wanted { .. }]));
    b.on_message(
        peer,
        Message {
            wantlist: vec![want(cids[1], true)],
            ..Message::default()
        },
        0,
    );
    let taken: Vec<Cid> = b.take_wants(&peer, 3).iter().map(|w| w.cid).collect();
    assert_eq!(taken, vec![cids[0], cids[2], cids[3]]);
    b.on_message(
        peer,
        Message {
            wantlist: vec![want(cids[0], false)],
            full: true,
            ..Message::default()
        },
        0,
    );
    let taken: Vec<Cid> = b.take_wants(&peer, 10).iter().map(|w| w.cid).collect();
    assert_eq!(taken, vec![cids[0]], "full replaced the wantlist");
    let many: Vec<Entry> = (0..MAX_LEDGER as u32 + 10)
        .map(|i| want(block(&i.to_be_bytes()).0, false))
        .collect();
    for chunk in many.chunks(MAX_ENTRIES_PER_MESSAGE) {
        b.on_message(
            peer,
            Message {
                wantlist: chunk.to_vec(),
                ..Message::default()
            },
            0,
        );
    }
    assert_eq!(b.take_wants(&peer, usize::MAX).len(), MAX_LEDGER);
}

/// A request gathering more than its byte cap is answered with what it has; the rest is
/// cancelled at the peer.
#[test]
fn requests_are_capped_in_bytes() {
    let (mut b, peer) = connected();
    let blocks: Vec<(Cid, Vec<u8>)> = (0..10u8)
        .map(|i| {
            let mut d = vec![i; 2 << 20];
            d[0] = i;
            block(&d)
        })
        .collect();
    b.want(peer, blocks.iter().map(|(c, _)| *c).collect());
    b.events.clear();
    b.on_message(
        peer,
        Message {
            blocks: blocks[..5]
                .iter()
                .map(|(c, d)| (*c, Bytes::from(d.clone())))
                .collect(),
            ..Message::default()
        },
        0,
    );
    let sent_cancel = b.events.iter().any(|e| {
        matches!(e, ToSwarm::NotifyHandler { event: (m, _), .. } if m.wantlist.iter().all(|e| e.cancel) && m.wantlist.len() == 5)
    });
    assert!(sent_cancel, "the five CIDs not gathered are cancelled");
    match &events(&mut b)[..] {
        [Event::Response {
            blocks, dont_have, ..
        }] => {
            assert_eq!(
                blocks.len(),
                5,
                "the message that crossed the cap is kept whole"
            );
            assert!(dont_have.is_empty());
        }
        other => panic!("{other:?}"),
    }
}

/// A block under a CID nobody asked the peer for (what a corrupted block looks like) is
/// dropped, and the peer's outstanding requests fail at once, so they go to another peer.
#[test]
fn a_wrong_block_fails_the_peers_requests_at_once() {
    let (mut b, peer) = connected();
    let (a, _) = block(b"a");
    let (c, _) = block(b"c");
    let first = b.want(peer, vec![a]);
    let second = b.want(peer, vec![c]);
    b.on_message(
        peer,
        Message {
            blocks: vec![(
                block(b"a, corrupted").0,
                Bytes::from_static(b"a, corrupted"),
            )],
            ..Message::default()
        },
        0,
    );
    assert_eq!(b.dropped_blocks, 1);
    let failed: Vec<RequestId> = events(&mut b)
        .into_iter()
        .filter_map(|e| match e {
            Event::Failed { request, .. } => Some(request),
            _ => None,
        })
        .collect();
    assert_eq!(failed.len(), 2);
    assert!(failed.contains(&first) && failed.contains(&second));
    assert!(b.requests.is_empty());
}

/// A block whose request already ended (here: answered, then the peer sends it again, as Helia
/// does a few times per GiB) is a late answer, not a wrong block: dropped without failing the
/// peer's other requests.
#[test]
fn a_late_block_of_an_ended_request_fails_nothing() {
    let (mut b, peer) = connected();
    let (a, a_data) = block(b"a");
    let (c, _) = block(b"c");
    b.want(peer, vec![a]);
    let message = || Message {
        blocks: vec![(a, Bytes::from(a_data.clone()))],
        ..Message::default()
    };
    b.on_message(peer, message(), 0);
    assert!(matches!(&events(&mut b)[..], [Event::Response { .. }]));
    let second = b.want(peer, vec![c]);
    b.on_message(peer, message(), 0);
    assert_eq!((b.late_blocks, b.dropped_blocks), (1, 0));
    assert!(events(&mut b).is_empty(), "nothing failed");
    assert!(b.requests.contains_key(&second));
}
