//! The blob service over real HTTP on real nodes: boundary sizes round-trip and give stable
//! CIDs, Range edge cases (suffix, open-ended, out of range → 416, HEAD), names, a blob put on
//! one node read on another, a transfer that survives its source being killed and restarted,
//! a download that cannot finish breaking its body (never a clean short one), a corrupted
//! chunk served by a peer rejected, delete + GC freeing only unshared blocks, the
//! maximum blob size (413), and a full disk (507, on a tmpfs; skipped loudly without root).
//!
//! Boundary sizes, and why: 0 (the empty raw block), 1, CHUNK−1 / CHUNK / CHUNK+1 (the last chunk
//! short, exact, and one byte spilling into a second chunk), 100 MiB (many chunks, streaming).

use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use serde_json::{json, Value};
use shoal_tests::{raw_http, within, Node, NodeOptions, TIMEOUT};

const CHUNK: usize = 1 << 20;

async fn put(node: &Node, data: &[u8], query: &str) -> Result<(String, u64)> {
    let resp = within(
        node.http
            .post(node.url(&format!("/api/v1/blobs{query}")))
            .header("content-type", "application/x-test")
            .body(data.to_vec())
            .send(),
    )
    .await?;
    if resp.status() != 201 {
        bail!("put: {} {}", resp.status(), resp.text().await?);
    }
    let v: Value = resp.json().await?;
    let cid = v["cid"].as_str().context("cid")?.to_string();
    Ok((cid, v["size"].as_u64().context("size")?))
}

async fn get(node: &Node, path: &str, range: Option<&str>) -> Result<reqwest::Response> {
    let mut req = node.http.get(node.url(path));
    if let Some(r) = range {
        req = req.header("range", r);
    }
    within(req.send()).await
}

async fn body(resp: reqwest::Response) -> Result<Vec<u8>> {
    Ok(within(resp.bytes()).await?.to_vec())
}

/// Count and bytes of the present blocks of a node's store, inline (`blocks`) and as files
/// beside it (`files`), read with the sqlite3 CLI (WAL: safe while it runs).
fn block_stats(node: &Node) -> Result<(u64, u64)> {
    count_and_bytes(
        node,
        "SELECT count(*), coalesce(sum(n), 0) FROM \
         (SELECT length(data) AS n FROM blocks UNION ALL SELECT size FROM files);",
    )
}

/// Like [`block_stats`], for raw blocks (blob chunks: CIDv1 with codec 0x55) only.
fn chunk_stats(node: &Node) -> Result<(u64, u64)> {
    count_and_bytes(
        node,
        "SELECT count(*), coalesce(sum(p.n), 0) FROM \
         (SELECT id, length(data) AS n FROM blocks UNION ALL SELECT id, size FROM files) p \
         JOIN cids c ON c.id = p.id WHERE substr(c.cid, 2, 1) = x'55';",
    )
}

/// Every block file beside a node's database (path and length).
fn block_files(node: &Node) -> Vec<(std::path::PathBuf, u64)> {
    let dir = node.data_dir().join("store.sqlite.blocks");
    let mut out = Vec::new();
    for shard in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if shard.file_name() == "tmp" {
            continue;
        }
        for f in std::fs::read_dir(shard.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            out.push((f.path(), len));
        }
    }
    out.sort();
    out
}

fn count_and_bytes(node: &Node, sql: &str) -> Result<(u64, u64)> {
    let out = sqlite(node, sql)?;
    let mut it = out.trim().split('|').map(|s| s.parse::<u64>());
    match (it.next(), it.next()) {
        (Some(Ok(a)), Some(Ok(b))) => Ok((a, b)),
        _ => bail!("unexpected sqlite3 output {out:?}"),
    }
}

fn sqlite(node: &Node, sql: &str) -> Result<String> {
    let out = Command::new("sqlite3")
        .arg(node.data_dir().join("store.sqlite"))
        .arg(sql)
        .output()
        .context("sqlite3 (the tests use the sqlite3 CLI to look into a store)")?;
    if !out.status.success() {
        bail!("sqlite3: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test]
async fn boundary_sizes_round_trip_with_stable_cids() {
    let node = Node::start().unwrap();
    for (i, n) in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 100 * CHUNK]
        .into_iter()
        .enumerate()
    {
        let data = shoal_fixtures::blob(i as u64, n);
        let (cid, size) = put(&node, &data, "").await.unwrap();
        assert_eq!(size, n as u64);
        let resp = get(&node, &format!("/api/v1/blobs/{cid}"), None)
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["etag"], format!("\"{cid}\"").as_str());
        assert_eq!(resp.headers()["content-type"], "application/x-test");
        assert!(body(resp).await.unwrap() == data, "size {n} differs");
        // Same bytes, same CID (and no chunk stored twice). Only raw chunk blocks are
        // compared: an upload's progress manifest is a fresh dag-cbor block that stays until GC.
        let before = chunk_stats(&node).unwrap();
        assert_eq!(put(&node, &data, "").await.unwrap().0, cid);
        assert_eq!(chunk_stats(&node).unwrap(), before);
    }
    let list: Value = get(&node, "/api/v1/blobs", None)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list.as_array().unwrap().len(), 6);
}

#[tokio::test]
async fn ranges_head_and_names() {
    let node = Node::start().unwrap();
    let data = shoal_fixtures::blob(9, 3 * CHUNK + 5);
    let (cid, _) = put(&node, &data, "?name=report").await.unwrap();
    let path = format!("/api/v1/blobs/{cid}");
    let n = data.len();
    let cases: [(&str, usize, usize); 6] = [
        ("bytes=0-0", 0, 1),
        ("bytes=-5", n - 5, n),
        ("bytes=-99999999", 0, n),
        ("bytes=1048570-", 1048570, n),
        ("bytes=1048575-2097152", 1048575, 2097153),
        ("bytes=5-99999999", 5, n),
    ];
    for (range, a, b) in cases {
        let resp = get(&node, &path, Some(range)).await.unwrap();
        assert_eq!(resp.status(), 206, "{range}");
        let want = format!("bytes {a}-{}/{n}", b - 1);
        assert_eq!(resp.headers()["content-range"], want.as_str(), "{range}");
        assert!(body(resp).await.unwrap() == data[a..b], "{range}");
    }
    for range in [format!("bytes={n}-"), "bytes=-0".to_string()] {
        let resp = get(&node, &path, Some(&range)).await.unwrap();
        assert_eq!(resp.status(), 416, "{range}");
        assert_eq!(
            resp.headers()["content-range"],
            format!("bytes */{n}").as_str()
        );
        let err: Value = resp.json().await.unwrap();
        assert_eq!(err["errorCode"], "ERR_RANGE_NOT_SATISFIABLE");
    }
    let head = within(node.http.head(node.url(&path)).send())
        .await
        .unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["content-length"], n.to_string().as_str());
    assert_eq!(head.headers()["accept-ranges"], "bytes");
    assert_eq!(head.headers()["x-shoal-complete"], "true");
    // Names: set, resolve, re-point (latest wins), unknown blob → 404.
    let (other, _) = put(&node, b"other", "").await.unwrap();
    for target in [&cid, &other] {
        let resp = within(
            node.http
                .put(node.url("/api/v1/blobs/names/my%20report"))
                .json(&json!({"cid": target}))
                .send(),
        )
        .await
        .unwrap();
        assert_eq!(resp.status(), 204);
    }
    let resp = get(&node, "/api/v1/blobs/names/my%20report", None)
        .await
        .unwrap();
    assert_eq!(body(resp).await.unwrap(), b"other");
    let missing = "bafybeigsjb7auvumwgzokun7ymjm6wkjiz2c734xhf7il5jtya7zxqm42i";
    let resp = within(
        node.http
            .put(node.url("/api/v1/blobs/names/x"))
            .json(&json!({"cid": missing}))
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 404);
    let resp = get(&node, "/api/v1/blobs/not-a-cid", None).await.unwrap();
    assert_eq!(resp.status(), 400);
}

#[tokio::test]
async fn delete_frees_only_unshared_blocks() {
    let node = Node::start().unwrap();
    let (a, b, c) = (
        shoal_fixtures::blob(1, CHUNK),
        shoal_fixtures::blob(2, CHUNK),
        shoal_fixtures::blob(3, CHUNK),
    );
    let (x, _) = put(&node, &[a.clone(), b.clone()].concat(), "")
        .await
        .unwrap();
    let (y, _) = put(&node, &[b.clone(), c].concat(), "").await.unwrap();
    let (blocks, bytes) = block_stats(&node).unwrap();
    let resp = within(
        node.http
            .delete(node.url(&format!("/api/v1/blobs/{x}")))
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 204);
    let (blocks2, bytes2) = block_stats(&node).unwrap();
    // Chunk A and x's root node are gone; chunk B (shared with y) stays.
    assert_eq!(blocks - blocks2, 2);
    assert!(bytes - bytes2 >= CHUNK as u64 && bytes - bytes2 < 2 * CHUNK as u64);
    let resp = get(&node, &format!("/api/v1/blobs/{y}"), None)
        .await
        .unwrap();
    assert!(body(resp).await.unwrap()[..CHUNK] == b[..]);
    let list: Value = get(&node, "/api/v1/blobs", None)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    let resp = within(
        node.http
            .delete(node.url(&format!("/api/v1/blobs/{x}")))
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 404);
}

fn peer_of(node: &Node) -> NodeOptions {
    NodeOptions::default().arg("--peer").arg(node.swarm.clone())
}

#[tokio::test]
async fn put_on_a_read_on_b_and_a_range_fetches_only_its_chunks() {
    let a = Node::start().unwrap();
    let b = Node::start_with(peer_of(&a)).unwrap();
    let data = shoal_fixtures::blob(4, 8 * CHUNK + 3);
    let (cid, _) = put(&a, &data, "").await.unwrap();
    let path = format!("/api/v1/blobs/{cid}");
    // A range in the middle: B fetches the root and those chunks only.
    let resp = get(&b, &path, Some("bytes=3145728-4194303")).await.unwrap();
    assert_eq!(resp.status(), 206);
    assert!(body(resp).await.unwrap() == data[3 * CHUNK..4 * CHUNK]);
    let (blocks, _) = block_stats(&b).unwrap();
    assert!(blocks < 4, "a 1-chunk range stored {blocks} blocks on B");
    let head = within(b.http.head(b.url(&path)).send()).await.unwrap();
    assert_eq!(head.headers()["x-shoal-complete"], "false");
    let resp = get(&b, &path, None).await.unwrap();
    assert!(body(resp).await.unwrap() == data);
    let head = within(b.http.head(b.url(&path)).send()).await.unwrap();
    assert_eq!(head.headers()["x-shoal-complete"], "true");
}

/// A download that cannot complete (its headers sent, a later chunk held by no reachable peer)
/// must not look complete: the body ends short of its Content-Length, so the client gets an
/// error (curl: exit 18), never a clean short body; the node logs why.
#[tokio::test]
async fn a_download_whose_later_chunks_no_peer_has_breaks_the_body() {
    let a = Node::start().unwrap();
    let b = Node::start_with(peer_of(&a).arg("--blob-fetch-timeout-secs").arg("1")).unwrap();
    let data = shoal_fixtures::blob(7, 8 * CHUNK);
    let (cid, _) = put(&a, &data, "").await.unwrap();
    let path = format!("/api/v1/blobs/{cid}");
    // B holds the root and the first chunk only, then its one source is gone.
    let resp = get(&b, &path, Some("bytes=0-1048575")).await.unwrap();
    assert!(body(resp).await.unwrap() == data[..CHUNK]);
    drop(a);
    let resp = get(&b, &path, None).await.unwrap();
    assert_eq!(resp.status(), 200, "B knows the blob's size from its root");
    assert_eq!(resp.content_length(), Some(data.len() as u64));
    let mut stream = resp.bytes_stream();
    let mut got = Vec::new();
    let ended = loop {
        let next = tokio::time::timeout(TIMEOUT, stream.next()).await;
        match next.expect("the body neither went on nor ended within TIMEOUT") {
            Some(Ok(piece)) => got.extend_from_slice(&piece),
            Some(Err(e)) => break Err(e),
            None => break Ok(()),
        }
    };
    assert!(
        ended.is_err(),
        "the body ended cleanly after {} of {} bytes",
        got.len(),
        data.len()
    );
    assert!(got.len() < data.len() && got[..] == data[..got.len()]);
    assert!(b.log().contains("blob read failed"), "B did not log why");
}

#[tokio::test]
async fn unknown_blob_is_404_after_the_fetch_timeout() {
    let mut opts = NodeOptions::default();
    opts.env
        .push(("SHOAL_BLOB_FETCH_TIMEOUT_SECS".into(), "1".into()));
    let node = Node::start_with(opts).unwrap();
    let missing = "bafybeigsjb7auvumwgzokun7ymjm6wkjiz2c734xhf7il5jtya7zxqm42i";
    let resp = get(&node, &format!("/api/v1/blobs/{missing}"), None)
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
}

#[tokio::test]
async fn killing_the_source_mid_transfer_and_restarting_it_lets_b_finish() {
    // B first; A dials B, so A's new address after a restart does not matter.
    let b = Node::start().unwrap();
    let a = Node::start_with(peer_of(&b)).unwrap();
    let data = shoal_fixtures::blob(5, 64 * CHUNK);
    let (cid, _) = put(&a, &data, "").await.unwrap();
    let path = format!("/api/v1/blobs/{cid}");
    let resp = get(&b, &path, None).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut stream = resp.bytes_stream();
    let mut got = Vec::new();
    // The client reads slowly: B fetches only a window ahead of it.
    while got.len() < 4 * CHUNK {
        match within(async { stream.next().await.context("ended early") }).await {
            Ok(piece) => got.extend_from_slice(&piece.unwrap()),
            Err(e) => panic!("{e}"),
        }
    }
    let mut a = a;
    a.kill9();
    let a = a.respawn().unwrap();
    // Either the first request finishes (B waited for A), or it broke and a second one
    // resumes from what B kept.
    let mut broke = false;
    while let Ok(Some(piece)) = tokio::time::timeout(TIMEOUT, stream.next()).await {
        match piece {
            Ok(p) => got.extend_from_slice(&p),
            Err(_) => {
                broke = true;
                break;
            }
        }
    }
    if broke || got.len() != data.len() {
        let resp = get(&b, &path, None).await.unwrap();
        got = body(resp).await.unwrap();
    }
    assert!(got == data, "B's copy differs (broke: {broke})");
    drop(a);
}

#[tokio::test]
async fn a_corrupted_chunk_from_a_peer_is_rejected() {
    let data = shoal_fixtures::blob(6, 3 * CHUNK);
    // C holds a copy whose first chunk is damaged on disk (it serves it under the right CID).
    let mut c = Node::start().unwrap();
    let (cid, _) = put(&c, &data, "").await.unwrap();
    c.kill9();
    // Chunks of 1 MiB are files beside the database (`store.sqlite.blocks/<xx>/<cid>`).
    let damaged = block_files(&c)
        .into_iter()
        .find(|(_, len)| *len == CHUNK as u64)
        .expect("a 1 MiB chunk file");
    std::fs::write(&damaged.0, vec![0u8; CHUNK]).unwrap();
    let c = c.respawn().unwrap();
    let b = Node::start_with(peer_of(&c)).unwrap();
    let path = format!("/api/v1/blobs/{cid}");
    // B reads in the background while the only peer lies about one chunk...
    let url = b.url(&path);
    let http = b.http.clone();
    let reader = tokio::spawn(async move {
        let resp = http.get(url).send().await?;
        resp.bytes().await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    // ...then an honest peer appears.
    let a = Node::start_with(peer_of(&b)).unwrap();
    assert_eq!(put(&a, &data, "").await.unwrap().0, cid);
    let first = within(async { reader.await.map_err(anyhow::Error::from) }).await;
    let got = match first {
        Ok(Ok(bytes)) if bytes.len() == data.len() => bytes.to_vec(),
        // The first read may have given up before A came; a second one must work.
        _ => body(get(&b, &path, None).await.unwrap()).await.unwrap(),
    };
    assert!(got == data, "B served corrupted bytes");
    assert!(
        b.log().contains("do not match their CIDs"),
        "B did not log the bad block"
    );
    drop((a, c));
}

/// kill -9 in the middle of a put (issue 16): chunks are files beside the database, some
/// recorded under the upload's pin, some only written, one maybe half written under `tmp/`.
/// Nothing of it verifies as a blob: `shoal store verify` is sound before and after the
/// restart, the restart leaves no temp file and no upload pin, and a re-put of the same bytes
/// gives a blob that reads back in full.
#[tokio::test]
async fn kill9_mid_put_leaves_no_torn_blob_and_a_re_put_reads_back() {
    let data = shoal_fixtures::blob(16, 48 * CHUNK);
    let mut node = Node::start().unwrap();
    let (tx, rx) = futures::channel::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(4);
    let request = node
        .http
        .post(node.url("/api/v1/blobs"))
        .header("content-type", "application/octet-stream")
        .body(reqwest::Body::wrap_stream(rx))
        .send();
    let upload = tokio::spawn(request);
    // Half the body, then wait until chunks are on disk and a batch is committed under the
    // upload's pin; the rest is never sent.
    let mut tx = tx;
    for piece in data[..24 * CHUNK].chunks(64 << 10) {
        futures::SinkExt::send(&mut tx, Ok(piece.to_vec()))
            .await
            .unwrap();
    }
    let deadline = std::time::Instant::now() + TIMEOUT;
    while block_files(&node).len() < 16 || upload_pins(&node).unwrap() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the upload wrote no chunks within {TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    node.kill9();
    drop(tx);
    let _ = upload.await; // the connection broke
    let verify = |node: &Node| {
        let out = Command::new(shoal_tests::shoal_bin())
            .args(["store", "verify", "--data-dir"])
            .arg(node.data_dir())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "store verify: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    verify(&node);

    let node = node.respawn().unwrap();
    verify(&node);
    let tmp = node.data_dir().join("store.sqlite.blocks").join("tmp");
    assert_eq!(
        std::fs::read_dir(&tmp).map(|d| d.count()).unwrap_or(0),
        0,
        "no half-written file stays under {}",
        tmp.display()
    );
    let listed: Value = get(&node, "/api/v1/blobs", None)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed, json!([]), "no blob of the dead upload is known");
    // The blob service's first use dropped the dead upload's pin.
    assert_eq!(
        upload_pins(&node).unwrap(),
        0,
        "the dead upload's pin is gone"
    );

    let (cid, size) = put(&node, &data, "").await.unwrap();
    assert_eq!(size, data.len() as u64);
    let got = body(
        get(&node, &format!("/api/v1/blobs/{cid}"), None)
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    assert!(got == data, "the re-put blob reads back different bytes");
    assert_eq!(chunk_stats(&node).unwrap(), (48, data.len() as u64));
    verify(&node);
}

/// POST `data` as a blob; `chunked` sends it without `Content-Length` (streamed, in 64 KiB
/// pieces). Returns the status and the JSON body.
async fn put_raw(node: &Node, data: Vec<u8>, chunked: bool) -> Result<(u16, Value)> {
    let req = node
        .http
        .post(node.url("/api/v1/blobs"))
        .header("content-type", "application/octet-stream");
    let req = if chunked {
        let pieces: Vec<Result<Vec<u8>, std::io::Error>> =
            data.chunks(64 << 10).map(|p| Ok(p.to_vec())).collect();
        req.body(reqwest::Body::wrap_stream(futures::stream::iter(pieces)))
    } else {
        req.body(data)
    };
    let resp = within(req.send()).await?;
    let status = resp.status().as_u16();
    let text = within(resp.text()).await?;
    let body = serde_json::from_str(&text).with_context(|| format!("{status}: {text:?}"))?;
    Ok((status, body))
}

/// Aliases of uploads in progress (`blob-upload/<id>`): none may stay after an upload ends.
fn upload_pins(node: &Node) -> Result<u64> {
    let out = sqlite(
        node,
        "SELECT count(*) FROM aliases WHERE name LIKE 'blob-upload/%';",
    )?;
    out.trim().parse().context("count")
}

#[tokio::test]
async fn the_maximum_blob_size_gives_413_both_with_and_without_content_length() {
    const LIMIT: usize = 3 * CHUNK + 5;
    let mut options = NodeOptions::default();
    options
        .env
        .push(("SHOAL_MAX_BLOB_BYTES".into(), LIMIT.to_string()));
    let node = Node::start_with(options).unwrap();
    // By Content-Length: refused before the body is read. Sent as headers only over raw HTTP:
    // a client still writing a body the node will not read may see a reset instead of the 413.
    let request = format!(
        "POST /api/v1/blobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        LIMIT + 1
    );
    let (status, _, text) = raw_http(node.api, request.as_bytes()).await.unwrap();
    let by_length: Value = serde_json::from_str(&text).unwrap();
    // Chunked: refused once what arrived passes the limit (the whole body has been sent then).
    let (chunked_status, chunked) = put_raw(&node, shoal_fixtures::blob(7, LIMIT + 1), true)
        .await
        .unwrap();
    for (status, body) in [(status, by_length), (chunked_status, chunked)] {
        assert_eq!(status, 413, "{body}");
        assert_eq!(body["errorCode"], "ERR_PAYLOAD_TOO_LARGE", "{body}");
        assert!(
            body["error"].as_str().unwrap().contains(&LIMIT.to_string()),
            "the message names the limit: {body}"
        );
    }
    let list: Value = get(&node, "/api/v1/blobs", None)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list, json!([]), "nothing of a rejected upload is listed");
    assert_eq!(upload_pins(&node).unwrap(), 0, "nothing stays pinned");
    // Exactly the limit is accepted.
    let data = shoal_fixtures::blob(8, LIMIT);
    let (status, body) = put_raw(&node, data.clone(), true).await.unwrap();
    assert_eq!(status, 201, "{body}");
    let cid = body["cid"].as_str().unwrap();
    let resp = get(&node, &format!("/api/v1/blobs/{cid}"), None)
        .await
        .unwrap();
    assert!(body_eq(resp, &data).await);
}

async fn body_eq(resp: reqwest::Response, data: &[u8]) -> bool {
    resp.status() == 200 && body(resp).await.unwrap() == data
}

/// A tmpfs mounted on a directory for one test; unmounted (and the directory removed) when
/// dropped, however the test ends. Drop it after the node using it is stopped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &std::path::Path, bytes: u64) -> Result<Tmpfs> {
        std::fs::create_dir_all(dir)?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir)
            .output()
            .context("cannot run mount")?;
        if !out.status.success() {
            bail!(
                "mount -t tmpfs failed (root needed): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // Still busy (a process holds a file): detach it now, freed when released.
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
        let _ = std::fs::remove_dir(&self.0);
        if let Some(parent) = self.0.parent() {
            let _ = std::fs::remove_dir(parent);
        }
    }
}

/// Issue 5, limits: a full disk gives 507 `ERR_STORAGE_FULL` for blob (and event) writes,
/// leaves the store consistent (`shoal store verify`), keeps serving reads, and writes work
/// again once space is freed. The node's data dir is a small tmpfs (needs root to mount; the
/// test is skipped, loudly, otherwise); a ballast file on it is the space freed at the end.
#[tokio::test]
async fn a_full_disk_gives_507_and_leaves_the_store_consistent() {
    let _ = shoal_tests::shoal_bin(); // build first: nothing below must wait with a mount held
    let dir = tempfile::Builder::new()
        .prefix("shoal-full-")
        .tempdir()
        .unwrap();
    let data_dir = dir.path().join("data");
    // Declared before the node: dropped (unmounted) after it.
    let _mount = match Tmpfs::mount(&data_dir, 48 << 20) {
        Ok(m) => m,
        Err(e) => {
            eprintln!(
                "\n*** SKIPPED a_full_disk_gives_507_and_leaves_the_store_consistent: {e:#}. \
                 Run the tests as root to cover the full-disk limit. ***\n"
            );
            return;
        }
    };
    let ballast = data_dir.join("ballast");
    std::fs::write(&ballast, vec![1u8; 12 << 20]).unwrap();
    let node = Node::start_in(dir, NodeOptions::default()).unwrap();

    // Blobs of 3 MiB + 1 byte (a short last chunk) until the disk is full.
    let mut stored: Vec<(String, Vec<u8>)> = Vec::new();
    let mut full = None;
    for seed in 100..140 {
        let data = shoal_fixtures::blob(seed, 3 * CHUNK + 1);
        let (status, body) = match put_raw(&node, data.clone(), seed % 2 == 0).await {
            Ok(answer) => answer,
            // The node answered 507 while the body was still being sent, and the client saw
            // the connection reset before the answer. The disk is still full: the next put
            // reads its 507.
            Err(e) => {
                eprintln!("put {seed}: no answer read ({e:#}); trying the next");
                continue;
            }
        };
        match status {
            201 => stored.push((body["cid"].as_str().unwrap().to_string(), data)),
            507 => {
                full = Some(body);
                break;
            }
            other => panic!("put {seed}: unexpected {other}: {body}"),
        }
    }
    let full = full.expect("40 blobs of 3 MiB filled a 48 MiB disk");
    assert_eq!(full["errorCode"], "ERR_STORAGE_FULL", "{full}");
    assert!(
        !stored.is_empty(),
        "some blobs fit before the disk was full"
    );

    // Events: a publish that does not fit gets 507 too (incompressible 256 KiB payloads until
    // one fails; a leaf holds at most 1 MiB of events).
    let mut event_full = None;
    for i in 0..400 {
        let big: String = shoal_fixtures::blob(500 + i, 128 << 10)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let resp = within(
            node.http
                .post(node.url("/api/v1/events/publish"))
                .json(
                    &json!({"data": [{"semantics": "full", "name": format!("e{i}"),
                    "payload": {"i": i, "pad": big}}]}),
                )
                .send(),
        )
        .await
        .unwrap();
        match resp.status().as_u16() {
            201 => {}
            507 => {
                event_full = Some(resp.json::<Value>().await.unwrap());
                break;
            }
            other => panic!(
                "publish {i}: unexpected {other}: {}",
                resp.text().await.unwrap()
            ),
        }
    }
    let event_full = event_full.expect("a publish failed on the full disk");
    assert_eq!(event_full["errorCode"], "ERR_STORAGE_FULL", "{event_full}");

    // The store is consistent and the node still serves what it has.
    let verify = Command::new(shoal_tests::shoal_bin())
        .args(["store", "verify", "--data-dir"])
        .arg(node.data_dir())
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "store verify after the full disk: {}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    for (cid, data) in &stored {
        let resp = get(&node, &format!("/api/v1/blobs/{cid}"), None)
            .await
            .unwrap();
        assert!(body_eq(resp, data).await, "blob {cid} reads back");
    }
    let list: Value = get(&node, "/api/v1/blobs", None)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list.as_array().unwrap().len(), stored.len(), "{list}");

    // Space freed: writes work again, and nothing of the failed upload stays pinned.
    std::fs::remove_file(&ballast).unwrap();
    let published = node
        .publish(&[shoal_tests::event("full", "after", json!({"ok": true}))])
        .await
        .unwrap();
    assert_eq!(
        published.len(),
        1,
        "a publish after freeing space is stored"
    );
    let data = shoal_fixtures::blob(999, 3 * CHUNK + 1);
    let (status, body) = put_raw(&node, data.clone(), true).await.unwrap();
    assert_eq!(status, 201, "put after freeing space: {body}");
    let cid = body["cid"].as_str().unwrap();
    let resp = get(&node, &format!("/api/v1/blobs/{cid}"), None)
        .await
        .unwrap();
    assert!(body_eq(resp, &data).await);
    assert_eq!(upload_pins(&node).unwrap(), 0, "no upload pin left");
}

/// Issue 12 item 9: a blob name's `%` escapes were decoded by slicing the text at byte offsets,
/// so `%a` followed by a multibyte character panicked the handler and the client got no answer.
/// Now such a name is decoded byte by byte (`%a€` is not an escape: that name is looked up as
/// is) and one that does not decode to UTF-8 is a 400.
#[tokio::test]
async fn issue12_percent_escape_before_a_multibyte_character_is_answered() {
    // Unknown names and CIDs are looked for on peers until this timeout: keep it short.
    let options = NodeOptions::default()
        .arg("--blob-fetch-timeout-secs")
        .arg("1");
    let node = Node::start_with(options).unwrap();
    let get = b"GET /api/v1/blobs/names/%a\xe2\x82\xac HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    let (status, _, body) = raw_http(node.api, get).await.unwrap();
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("ERR_NOT_FOUND"), "{body}");

    let cid = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku";
    let body = format!("{{\"cid\":\"{cid}\"}}");
    for name in ["%a\u{20ac}", "%e2%82"] {
        let put = format!(
            "PUT /api/v1/blobs/names/{name} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let (status, _, answer) = raw_http(node.api, put.as_bytes()).await.unwrap();
        match name {
            // Not UTF-8 once decoded.
            "%e2%82" => {
                assert_eq!(status, 400, "{answer}");
                assert!(answer.contains("UTF-8"), "{answer}");
            }
            // A valid name, but no such blob here.
            _ => assert_eq!(status, 404, "{answer}"),
        }
    }
}
