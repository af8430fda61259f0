//! Fetcher scenarios: retries elsewhere, wrong blocks, not-found, windows, back-pressure.

use super::*;
use crate::exchange::wire::SHA2_256;
use sha2::{Digest, Sha256};

fn block(i: u32) -> (Cid, Vec<u8>) {
    let data = i.to_be_bytes().to_vec();
    let mh = cid::multihash::Multihash::<64>::wrap(SHA2_256, &Sha256::digest(&data)).unwrap();
    (Cid::new_v1(0x55, mh), data)
}

fn blocks(n: u32) -> Vec<(Cid, Vec<u8>)> {
    (0..n).map(block).collect()
}

/// Sends every planned request, returning (key, peer, cids).
fn send_all(
    f: &mut Fetcher<u64>,
    peers: &[PeerId],
    next: &mut u64,
) -> Vec<(u64, PeerId, Vec<Cid>)> {
    let mut out = Vec::new();
    for p in f.plan(peers) {
        *next += 1;
        out.push((*next, p.peer, p.cids.clone()));
        f.sent(*next, p);
    }
    out
}

fn lookup(all: &[(Cid, Vec<u8>)], cid: &Cid) -> Vec<u8> {
    all.iter().find(|(c, _)| c == cid).unwrap().1.clone()
}

#[test]
fn have_not_is_retried_on_another_peer() {
    let all = blocks(3);
    let (a, b) = (PeerId::random(), PeerId::random());
    let (tx, mut rx) = mpsc::channel(8);
    let mut f = Fetcher::default();
    f.add(all.iter().map(|x| x.0).collect(), tx, vec![a]);
    let mut k = 0;
    let reqs = send_all(&mut f, &[a, b], &mut k);
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].1, a, "preferred peer asked first");
    f.on_response(&reqs[0].0, vec![], reqs[0].2.clone(), false);
    let reqs = send_all(&mut f, &[a, b], &mut k);
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].1, b);
    let resp = reqs[0].2.iter().map(|c| (*c, lookup(&all, c))).collect();
    let r = f.on_response(&reqs[0].0, resp, vec![], false);
    assert_eq!(r.delivered, 3);
    match rx.try_recv().unwrap() {
        FetchEvent::Blocks(bs) => assert_eq!(bs.len(), 3),
        other => panic!("{other:?}"),
    }
    assert!(send_all(&mut f, &[a, b], &mut k).is_empty());
    assert_eq!(f.sessions(), 0, "finished session is dropped");
}

/// Issue 12 item 5: a peer that answers every `Want` with neither blocks nor have-not used to
/// be asked again and again (its CIDs looked deferred), stalling the fetch; now the CIDs go to
/// another peer, and to `NotFound` once every peer withheld them.
#[test]
fn a_peer_that_withholds_everything_is_not_asked_again() {
    let all = blocks(2);
    let (staller, honest) = (PeerId::random(), PeerId::random());
    let (tx, mut rx) = mpsc::channel(8);
    let mut f = Fetcher::default();
    f.add(all.iter().map(|x| x.0).collect(), tx, vec![staller]);
    let mut k = 0;
    let reqs = send_all(&mut f, &[staller, honest], &mut k);
    assert_eq!(reqs[0].1, staller);
    f.on_response(&reqs[0].0, vec![], vec![], false);
    let reqs = send_all(&mut f, &[staller, honest], &mut k);
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].1, honest, "the staller is not asked again");
    // The honest peer defers one after sending the other: that deferral is legitimate.
    f.on_response(&reqs[0].0, vec![all[0].clone()], vec![], false);
    assert!(matches!(rx.try_recv().unwrap(), FetchEvent::Blocks(_)));
    let reqs = send_all(&mut f, &[staller, honest], &mut k);
    assert_eq!(reqs[0].1, honest);
    assert_eq!(reqs[0].2, vec![all[1].0]);
    // Now both withhold it: reported not found rather than asked for ever.
    f.on_response(&reqs[0].0, vec![], vec![], false);
    assert!(send_all(&mut f, &[staller, honest], &mut k).is_empty());
    match rx.try_recv().unwrap() {
        FetchEvent::NotFound(c) => assert_eq!(c, vec![all[1].0]),
        other => panic!("{other:?}"),
    }
}

#[test]
fn wrong_block_is_reported_and_fetched_elsewhere() {
    let all = blocks(1);
    let (liar, honest) = (PeerId::random(), PeerId::random());
    let (tx, mut rx) = mpsc::channel(8);
    let mut f = Fetcher::default();
    f.add(vec![all[0].0], tx, vec![liar]);
    let mut k = 0;
    let reqs = send_all(&mut f, &[liar, honest], &mut k);
    let r = f.on_response(
        &reqs[0].0,
        vec![(all[0].0, b"forged".to_vec())],
        vec![],
        false,
    );
    assert_eq!(r.bad_blocks, vec![all[0].0]);
    assert!(rx.try_recv().is_err(), "nothing unverified is delivered");
    let reqs = send_all(&mut f, &[liar, honest], &mut k);
    assert_eq!(reqs[0].1, honest);
    f.on_response(&reqs[0].0, vec![all[0].clone()], vec![], false);
    assert!(matches!(rx.try_recv().unwrap(), FetchEvent::Blocks(_)));
}

#[test]
fn unrequested_blocks_are_rejected() {
    let all = blocks(2);
    let p = PeerId::random();
    let (tx, mut rx) = mpsc::channel(8);
    let mut f = Fetcher::default();
    f.add(vec![all[0].0], tx, vec![]);
    let mut k = 0;
    let reqs = send_all(&mut f, &[p], &mut k);
    let r = f.on_response(&reqs[0].0, all.clone(), vec![], false);
    assert_eq!(r.bad_blocks, vec![all[1].0]);
    match rx.try_recv().unwrap() {
        FetchEvent::Blocks(bs) => assert_eq!(bs, vec![all[0].clone()]),
        other => panic!("{other:?}"),
    }
}

#[test]
fn not_found_after_every_peer_tried() {
    let all = blocks(2);
    let (a, b) = (PeerId::random(), PeerId::random());
    let (tx, mut rx) = mpsc::channel(8);
    let mut f = Fetcher::default();
    f.add(all.iter().map(|x| x.0).collect(), tx, vec![]);
    let mut k = 0;
    for _ in 0..2 {
        let reqs = send_all(&mut f, &[a, b], &mut k);
        for (key, _, cids) in reqs {
            f.on_response(&key, vec![], cids, false);
        }
    }
    assert!(send_all(&mut f, &[a, b], &mut k).is_empty());
    match rx.try_recv().unwrap() {
        FetchEvent::NotFound(c) => assert_eq!(c.len(), 2),
        other => panic!("{other:?}"),
    }
}

#[test]
fn no_peers_means_not_found() {
    let (tx, mut rx) = mpsc::channel(8);
    let mut f: Fetcher<u64> = Fetcher::default();
    f.add(vec![block(1).0], tx, vec![]);
    assert!(f.plan(&[]).is_empty());
    assert!(matches!(rx.try_recv().unwrap(), FetchEvent::NotFound(_)));
}

#[test]
fn failure_retries_elsewhere() {
    let all = blocks(1);
    let (a, b) = (PeerId::random(), PeerId::random());
    let (tx, mut rx) = mpsc::channel(8);
    let mut f = Fetcher::default();
    f.add(vec![all[0].0], tx, vec![a]);
    let mut k = 0;
    let reqs = send_all(&mut f, &[a, b], &mut k);
    f.on_failure(&reqs[0].0);
    let reqs = send_all(&mut f, &[a, b], &mut k);
    assert_eq!(reqs[0].1, b);
    f.on_response(&reqs[0].0, vec![all[0].clone()], vec![], false);
    assert!(matches!(rx.try_recv().unwrap(), FetchEvent::Blocks(_)));
}

#[test]
fn windows_bound_requests_in_flight() {
    let all = blocks(10_000);
    let p = PeerId::random();
    let (tx, _rx) = mpsc::channel(1000);
    let mut f = Fetcher::default();
    f.add(all.iter().map(|x| x.0).collect(), tx, vec![]);
    let mut k = 0;
    let reqs = send_all(&mut f, &[p], &mut k);
    assert_eq!(reqs.len(), PEER_WINDOW);
    assert!(reqs.iter().all(|r| r.2.len() == FIRST_BATCH));
    assert!(send_all(&mut f, &[p], &mut k).is_empty(), "window full");
    // Small blocks delivered: the next requests name as many CIDs as a request may.
    let resp = reqs[0].2.iter().map(|c| (*c, lookup(&all, c))).collect();
    f.on_response(&reqs[0].0, resp, vec![], false);
    let next = send_all(&mut f, &[p], &mut k);
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].2.len(), WANT_BATCH);
    let peers: Vec<PeerId> = (0..10).map(|_| PeerId::random()).collect();
    let more = send_all(&mut f, &peers, &mut k);
    assert_eq!(reqs.len() - 1 + next.len() + more.len(), SESSION_WINDOW);
}

#[test]
fn slow_consumer_gets_no_new_requests() {
    let all = blocks(1000);
    let p = PeerId::random();
    let (tx, mut rx) = mpsc::channel(2);
    let mut f = Fetcher::default();
    f.add(all.iter().map(|x| x.0).collect(), tx, vec![]);
    let mut k = 0;
    let reqs = send_all(&mut f, &[p], &mut k);
    assert_eq!(reqs.len(), 2, "one request per free channel slot");
    for (key, _, cids) in &reqs {
        let resp = cids.iter().map(|c| (*c, lookup(&all, c))).collect();
        f.on_response(key, resp, vec![], false);
    }
    assert!(send_all(&mut f, &[p], &mut k).is_empty(), "channel full");
    rx.try_recv().unwrap();
    assert_eq!(send_all(&mut f, &[p], &mut k).len(), 1);
}

#[test]
fn dropped_receiver_cancels_session() {
    let (tx, rx) = mpsc::channel(8);
    let mut f: Fetcher<u64> = Fetcher::default();
    f.add(vec![block(1).0], tx, vec![]);
    drop(rx);
    assert!(f.plan(&[PeerId::random()]).is_empty());
    assert_eq!(f.sessions(), 0);
}

#[test]
fn deferred_cids_are_asked_again_from_same_peer() {
    let all = blocks(4);
    let p = PeerId::random();
    let (tx, mut rx) = mpsc::channel(8);
    let mut f = Fetcher::default();
    f.add(all.iter().map(|x| x.0).collect(), tx, vec![]);
    let mut k = 0;
    let reqs = send_all(&mut f, &[p], &mut k);
    // Only the first block fits the peer's response budget; the rest are deferred.
    f.on_response(&reqs[0].0, vec![all[0].clone()], vec![], false);
    let reqs = send_all(&mut f, &[p], &mut k);
    assert_eq!(reqs[0].2.len(), 3);
    let resp = reqs[0].2.iter().map(|c| (*c, lookup(&all, c))).collect();
    f.on_response(&reqs[0].0, resp, vec![], false);
    let mut n = 0;
    while let Ok(FetchEvent::Blocks(b)) = rx.try_recv() {
        n += b.len();
    }
    assert_eq!(n, 4);
}
