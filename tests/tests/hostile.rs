//! One hostile peer against an honest three-node swarm (issue 12, "Done means"), with real node
//! processes and the real libp2p peer of `shoal_tests::hostile` (forged, extreme and invented
//! heads, malformed and oversized blocks, endless deferrals, request floods) attacking two of
//! them while all three publish. Afterwards: every node still up and answering, every honest
//! event everywhere, a node that joins only now replicated both ways (the attack must not fill
//! the nodes' head books for good), nothing of the attacker's stored, `swarm-heads` and memory
//! bounded, and `shoal store verify` clean. Publish latency under attack is a benchmark
//! (`bench_hostile`, BENCHMARKS.md), not asserted here.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use shoal_tests::hostile::Hostile;
use shoal_tests::stats::proc_status_kib;
use shoal_tests::{event, Node, NodeOptions, TIMEOUT};

/// How long the attack runs (the benchmark runs a minute).
const ATTACK: Duration = Duration::from_secs(20);

fn peer(of: &Node) -> NodeOptions {
    NodeOptions::default().arg("--peer").arg(of.swarm.clone())
}

/// Waits until `node` stores at least `expected`'s offset of every source in it.
async fn holds(node: &Node, expected: &[(&str, u64)]) -> Value {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let offsets = node.offsets().await.unwrap();
        let done = expected
            .iter()
            .all(|(s, o)| offsets[*s].as_u64().is_some_and(|have| have >= *o));
        if done {
            return offsets;
        }
        assert!(
            Instant::now() < deadline,
            "{} never held {expected:?}; it holds {offsets}",
            node.source
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_honest_swarm_converges_and_stays_bounded_under_a_hostile_peer() {
    let mut a = Node::start().unwrap();
    let b = Node::start_with(peer(&a)).unwrap();
    let c = Node::start_with(peer(&b)).unwrap();
    let honest = [&a, &b, &c];
    for n in honest {
        n.publish(&[event("test", "before", json!({}))])
            .await
            .unwrap();
    }
    let before: Vec<(&str, u64)> = honest.iter().map(|n| (n.source.as_str(), 0)).collect();
    for n in honest {
        holds(n, &before).await;
    }
    let rss_before = a
        .pid()
        .and_then(|p| proc_status_kib(p, "VmRSS:"))
        .map_or(0, |kib| kib << 10);

    let victims: Vec<String> = honest.iter().map(|n| n.source.clone()).collect();
    let hostile = Hostile::start(&[a.swarm.clone(), b.swarm.clone()], &victims)
        .await
        .unwrap();
    // All three keep publishing through the attack; every publish must be answered (bounded
    // by the harness's timeout, so a node that stops serving fails here).
    let until = Instant::now() + ATTACK;
    let mut published = 0u64;
    while Instant::now() < until {
        for n in honest {
            n.publish(&[event("test", "during", json!({ "i": published }))])
                .await
                .unwrap_or_else(|e| panic!("{} stopped serving publishes: {e:#}", n.source));
        }
        published += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rss_attacked = a
        .pid()
        .and_then(|p| proc_status_kib(p, "VmRSS:"))
        .map_or(0, |kib| kib << 10);
    let tally = hostile.stop().await;
    eprintln!("hostile peer: {tally:?}; {published} publishes per node during the attack");
    assert!(
        tally.connections > 0,
        "the attacker never connected: {tally:?}"
    );
    assert!(
        tally.invented > 1_000 && tally.requests > 100,
        "no attack ran: {tally:?}"
    );

    // Every honest event reaches every node.
    let after: Vec<(&str, u64)> = honest
        .iter()
        .map(|n| (n.source.as_str(), published))
        .collect();
    for n in honest {
        let offsets = holds(n, &after).await;
        let foreign: Vec<&String> = offsets
            .as_object()
            .unwrap()
            .keys()
            .filter(|s| !victims.contains(s))
            .collect();
        assert!(
            foreign.is_empty(),
            "{} stored the attacker's sources {foreign:?}",
            n.source
        );
    }

    // A node that joins now, through an attacked node, replicates both ways (a full head
    // book gives up invented sources for it: swarm::heads's unit test).
    let d = Node::start_with(peer(&a)).unwrap();
    d.publish(&[event("test", "late", json!({}))])
        .await
        .unwrap();
    holds(&c, &[(d.source.as_str(), 0)]).await;
    holds(&d, &after).await;

    // Bounded: the head book on disk and the attacked node's memory.
    let heads = std::fs::metadata(a.data_dir().join(shoal_engine::swarm::HEADS_FILE))
        .map_or(0, |m| m.len());
    eprintln!(
        "attacked node: swarm-heads {heads} bytes; RSS {} MiB before, {} MiB at the end of the attack",
        rss_before >> 20,
        rss_attacked >> 20
    );
    assert!(heads < 4 << 20, "swarm-heads grew to {heads} bytes");
    assert!(rss_attacked < 512 << 20, "RSS grew to {rss_attacked} bytes");

    for n in honest {
        assert!(
            !n.log().contains("panicked"),
            "{} panicked:\n{}",
            n.source,
            n.log()
        );
    }
    assert!(a.stop().unwrap(), "the attacked node did not stop cleanly");
    let verify = Command::new(shoal_tests::shoal_bin())
        .args(["store", "verify", "--data-dir"])
        .arg(a.data_dir())
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "store verify after the attack: {}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
}
