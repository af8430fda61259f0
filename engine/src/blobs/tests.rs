//! Blob service tests on a real store and writer, without a node or a swarm: put/read/range/
//! delete, and fetching through a fake exchange that serves another store, honest or lying.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use futures::StreamExt;
use rand::{RngCore, SeedableRng};

use super::*;
use crate::events::testing::{self, Parts};

/// A peerless exchange: nothing is ever found.
struct NoPeers;

impl BlockFetch for NoPeers {
    fn fetch(&self, cids: Vec<Cid>, reply: mpsc::Sender<FetchEvent>) -> BoxFuture<'static, bool> {
        Box::pin(async move {
            let _ = reply.send(FetchEvent::NotFound(cids)).await;
            true
        })
    }
}

/// A blob service over a fresh store in `dir`, fetching through `fetch`.
fn service(
    dir: &std::path::Path,
    config: BlobsConfig,
    fetch: Arc<dyn BlockFetch>,
) -> (BlobService, Parts) {
    let parts = testing::start(dir, "blob-test");
    let (replicas, inbox) = replicas::channel();
    let svc = BlobService::new(
        parts.events.clone(),
        parts.store.clone(),
        fetch,
        config,
        replicas,
    );
    // No swarm: the replica task places no holders but keeps the book.
    let (_, network) = tokio::sync::watch::channel(crate::swarm::NetworkState::default());
    replicas::spawn(
        inbox,
        svc.clone(),
        parts.events.clone(),
        network,
        parts._shutdown.subscribe(),
    );
    (svc, parts)
}

fn random(n: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

/// `data` as a body in odd-sized pieces.
fn body(data: &[u8]) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
    let pieces: Vec<_> = data
        .chunks(100_003)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    futures::stream::iter(pieces)
}

async fn read_all(
    svc: &BlobService,
    cid: Cid,
    start: u64,
    end: u64,
) -> Result<Vec<u8>, BlobsError> {
    let opened = svc.open(cid).await?;
    let mut s = svc.read_range(&opened, start, end);
    let mut out = Vec::new();
    while let Some(piece) = s.next().await {
        out.extend_from_slice(&piece?);
    }
    Ok(out)
}

#[tokio::test]
async fn put_read_ranges_dedup_delete() {
    let dir = tempfile::tempdir().unwrap();
    let (svc, parts) = service(dir.path(), BlobsConfig::default(), Arc::new(NoPeers));
    let c = CHUNK_SIZE;
    for n in [0, 1, c - 1, c, c + 1, 3 * c + 17] {
        let data = random(n, n as u64);
        let meta = svc.put(body(&data), PutOptions::default()).await.unwrap();
        assert_eq!(meta.size, n as u64);
        assert_eq!(
            read_all(&svc, meta.cid, 0, n as u64).await.unwrap(),
            data,
            "n={n}"
        );
        if n > 2 {
            let (a, b) = (1, n as u64 - 1);
            let got = read_all(&svc, meta.cid, a, b).await.unwrap();
            assert_eq!(got, &data[a as usize..b as usize]);
        }
        let again = svc.put(body(&data), PutOptions::default()).await.unwrap();
        assert_eq!(again.cid, meta.cid);
    }
    let listed = svc.list().await.unwrap();
    assert_eq!(listed.len(), 6);
    assert!(
        listed.iter().all(|e| e.replicas == 1),
        "put here, no replicas asked"
    );
    let big = listed
        .iter()
        .max_by_key(|e| e.entry.meta.size)
        .unwrap()
        .entry
        .meta
        .cid;
    let freed = svc.delete(big).await.unwrap();
    assert!(freed.bytes >= 3 * c as u64);
    assert!(matches!(
        svc.delete(big).await,
        Err(BlobsError::NotFound(_))
    ));
    parts.writer.stop().await;
}

#[tokio::test]
async fn too_large_is_refused_and_unpinned() {
    let dir = tempfile::tempdir().unwrap();
    let config = BlobsConfig {
        max_blob_bytes: 2 * CHUNK_SIZE as u64,
        ..BlobsConfig::default()
    };
    let (svc, parts) = service(dir.path(), config, Arc::new(NoPeers));
    let data = random(3 * CHUNK_SIZE, 1);
    let err = svc
        .put(body(&data), PutOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, BlobsError::TooLarge { .. }), "{err}");
    let r = parts.store.reader().unwrap();
    let pins: Vec<_> = ["blob-upload/"]
        .iter()
        .filter_map(|p| r.alias(&format!("{p}{}-0", std::process::id())).unwrap())
        .collect();
    assert!(pins.is_empty());
    parts.writer.stop().await;
}

/// Serves blocks from another node's store, optionally corrupting the first answer for each
/// chunk (a lying peer; the real exchange verifies hashes the same way).
struct FakeSwarm {
    reader: shoal_store::Reader,
    lie_once: AtomicBool,
}

impl BlockFetch for FakeSwarm {
    fn fetch(&self, cids: Vec<Cid>, reply: mpsc::Sender<FetchEvent>) -> BoxFuture<'static, bool> {
        let mut blocks = Vec::new();
        let mut missing = Vec::new();
        for cid in cids {
            match self.reader.get_block(&cid).unwrap() {
                Some(mut data) => {
                    if cid.codec() == RAW && self.lie_once.swap(false, Ordering::SeqCst) {
                        data[0] ^= 1;
                    }
                    // What the exchange's fetcher does: only verified blocks get through.
                    if crate::exchange::wire::verify_block(&cid, &data) {
                        blocks.push((cid, data));
                    } else {
                        missing.push(cid);
                    }
                }
                None => missing.push(cid),
            }
        }
        Box::pin(async move {
            if !blocks.is_empty() {
                let _ = reply.send(FetchEvent::Blocks(blocks)).await;
            }
            if !missing.is_empty() {
                let _ = reply.send(FetchEvent::NotFound(missing)).await;
            }
            true
        })
    }
}

#[tokio::test]
async fn fetches_missing_chunks_from_a_peer_and_resumes() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (sa, a) = service(da.path(), BlobsConfig::default(), Arc::new(NoPeers));
    let data = random(5 * CHUNK_SIZE + 9, 7);
    let cid = sa
        .put(body(&data), PutOptions::default())
        .await
        .unwrap()
        .cid;
    let config = BlobsConfig {
        fetch_timeout: Duration::from_secs(2),
        ..BlobsConfig::default()
    };
    let peer_a = Arc::new(FakeSwarm {
        reader: a.store.reader().unwrap(),
        lie_once: AtomicBool::new(true),
    });
    let (sb, b) = service(db.path(), config, peer_a);
    // A range first: only its chunks are fetched.
    let got = read_all(&sb, cid, CHUNK_SIZE as u64 + 5, 2 * CHUNK_SIZE as u64)
        .await
        .unwrap();
    assert_eq!(got, &data[CHUNK_SIZE + 5..2 * CHUNK_SIZE]);
    let opened = sb.open(cid).await.unwrap();
    assert!(!opened.complete);
    // Then all of it (the lying answer was dropped and asked again).
    assert_eq!(
        read_all(&sb, cid, 0, data.len() as u64).await.unwrap(),
        data
    );
    assert!(sb.open(cid).await.unwrap().complete);
    let listed = sb.list().await.unwrap();
    assert!(listed[0].entry.complete && !listed[0].entry.pinned);
    assert_eq!(
        listed[0].replicas, 0,
        "only cached here; nobody said who holds it"
    );
    a.writer.stop().await;
    b.writer.stop().await;
}

/// Issue 12 item 2: a blob fetched from a peer is held to `--max-blob-bytes` like an upload,
/// both an honest one over the limit and a root that claims a petabyte with 174 copies of
/// one child. Before the fix both were cached and the walk went on. Nothing is kept.
#[tokio::test]
async fn a_fetched_blob_over_max_blob_bytes_is_refused_and_not_cached() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (sa, a) = service(da.path(), BlobsConfig::default(), Arc::new(NoPeers));
    let honest = sa
        .put(body(&random(3 * CHUNK_SIZE, 3)), PutOptions::default())
        .await
        .unwrap()
        .cid;
    // A root whose 174 links all name one (absent) node, each said to hold 2^40 bytes.
    let child = shoal_store::cid::cid_of(shoal_store::cid::DAG_PB, b"never served");
    let fanout = shoal_store::blob::FANOUT;
    let liar = shoal_store::blob::FileNode {
        size: (1u64 << 40) * fanout as u64,
        links: vec![child; fanout],
        sizes: vec![1 << 40; fanout],
    };
    let (liar_cid, liar_data) = liar.encode();
    sa.write(BlobWrite::Put {
        staged: Vec::new(),
        chunks: vec![(liar_cid, Bytes::from(liar_data))],
        links: Vec::new(),
        upload: None,
    })
    .await
    .unwrap();
    let config = BlobsConfig {
        max_blob_bytes: 2 * CHUNK_SIZE as u64,
        fetch_timeout: Duration::from_secs(2),
        ..BlobsConfig::default()
    };
    let peer_a = Arc::new(FakeSwarm {
        reader: a.store.reader().unwrap(),
        lie_once: AtomicBool::new(false),
    });
    let (sb, b) = service(db.path(), config, peer_a);
    for cid in [honest, liar_cid] {
        let err = sb.open(cid).await.unwrap_err();
        assert!(matches!(err, BlobsError::TooLarge { .. }), "{cid}: {err}");
    }
    let r = b.store.reader().unwrap();
    for cid in [honest, liar_cid] {
        assert!(r.alias(&format!("blob-cache/{cid}")).unwrap().is_none());
        assert!(!r.has_block(&cid).unwrap());
    }
    assert!(sb.list().await.unwrap().is_empty());
    a.writer.stop().await;
    b.writer.stop().await;
}

/// Issue 15 item 2: a blob of the old format, named before the upgrade, is converted by the
/// first `ready` and its name moved to the new CID by a new name event, so nodes that never
/// held the blob (and cannot fetch its old CID) find it; the old CID still opens here.
#[tokio::test]
async fn a_converted_blob_keeps_its_name_on_the_new_cid() {
    use shoal_store::blob::legacy::LinkNode;
    let dir = tempfile::tempdir().unwrap();
    let (svc, parts) = service(dir.path(), BlobsConfig::default(), Arc::new(NoPeers));
    // The old format, written before the service's first use (no conversion yet).
    let data = random(2 * CHUNK_SIZE + 3, 11);
    let chunks: Vec<(Cid, Bytes)> = data
        .chunks(CHUNK_SIZE)
        .map(|c| (cid_of(RAW, c), Bytes::copy_from_slice(c)))
        .collect();
    let (old, link_block) = LinkNode {
        chunk: CHUNK_SIZE as u64,
        height: 1,
        size: data.len() as u64,
        links: chunks.iter().map(|c| c.0).collect(),
    }
    .encode()
    .unwrap();
    parts.events.blob_write(BlobWrite::Init).await.unwrap();
    parts
        .events
        .blob_write(BlobWrite::Put {
            staged: Vec::new(),
            chunks,
            links: vec![(old, link_block)],
            upload: Some("u".into()),
        })
        .await
        .unwrap();
    let meta = BlobMeta {
        cid: old,
        size: data.len() as u64,
        name: None,
        mime: None,
    };
    parts
        .events
        .blob_write(BlobWrite::Commit {
            upload: "u".into(),
            last: Vec::new(),
            meta,
        })
        .await
        .unwrap();
    let payload = RawValue::from_string(format!(r#"{{"cid":"{old}"}}"#)).unwrap();
    parts
        .events
        .publish(vec![PublishEvent {
            semantics: NAME_SEMANTICS.into(),
            name: "report".into(),
            tags: vec![NAME_TAG.into()],
            payload,
            timestamp: None,
        }])
        .await
        .unwrap();

    svc.ready().await.unwrap();
    let new = svc.canonical(old);
    assert_ne!(new, old);
    assert_eq!(new.codec(), shoal_store::cid::DAG_PB);
    svc.rename_converted().await.unwrap();
    let latest = svc
        .name_events(Some("report"))
        .next()
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        named_cid(&latest).unwrap(),
        new,
        "a new name event names the new CID"
    );
    assert_eq!(svc.resolve("report").await.unwrap(), new);
    // Idempotent: nothing left to move, no further event.
    svc.rename_converted().await.unwrap();
    let count = svc.name_events(Some("report")).count().await;
    assert_eq!(count, 2);
    assert_eq!(
        read_all(&svc, old, 0, data.len() as u64).await.unwrap(),
        data
    );
    parts.writer.stop().await;
}
