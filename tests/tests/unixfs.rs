//! Issue 15 item 2: shoal's blob CIDs are the IPFS reference importer's (`ipfs-unixfs-importer`,
//! what `@helia/unixfs` uses, run under Node.js with the settings of `ipfs add --cid-version=1
//! --raw-leaves --chunker=size-1048576`), for blobs put on a real node: the empty blob, one byte,
//! one chunk −1/exact/+1, 174 MiB + 1 (175 leaves: the first size with two levels of nodes) and
//! random sizes; and the balanced layout at every depth with a small chunk size and fanout.
//!
//! Skipped, loudly, only when node/npm are not installed or the npm registry is unreachable.

use std::path::PathBuf;

use anyhow::{bail, Result};
use serde_json::Value;
use shoal_tests::ipfs::{reference_cids, tools, unixfs};
use shoal_tests::{within, Node};

const MIB: usize = 1 << 20;

async fn get_range(node: &Node, cid: &str, from: usize, to: usize) -> Result<Vec<u8>> {
    let resp = within(
        node.http
            .get(node.url(&format!("/api/v1/blobs/{cid}")))
            .header("range", format!("bytes={from}-{}", to - 1))
            .send(),
    )
    .await?;
    if resp.status() != 206 {
        bail!("range read: {}", resp.status());
    }
    Ok(within(resp.bytes()).await?.to_vec())
}

#[tokio::test(flavor = "multi_thread")]
async fn blob_cids_are_the_reference_importers() {
    let Some(tools) = tools() else {
        return;
    };
    let node = Node::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut sizes = vec![0, 1, MIB - 1, MIB, MIB + 1, 174 * MIB + 1];
    // A few random sizes up to 8 MiB (fixed seeds: the same every run).
    let mut x = 0x5eed_u64;
    for _ in 0..4 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        sizes.push((x % (8 * MIB as u64)) as usize);
    }
    for (i, size) in sizes.into_iter().enumerate() {
        let data = shoal_fixtures::blob(i as u64 + 1, size);
        let file: PathBuf = dir.path().join(format!("blob-{size}"));
        std::fs::write(&file, &data).unwrap();
        let reference = reference_cids(tools, std::slice::from_ref(&file)).unwrap();
        std::fs::remove_file(&file).unwrap();
        let ours = node.put_blob(data.clone()).await.unwrap();
        assert_eq!(vec![ours.clone()], reference, "{size} bytes");
        if size == 0 {
            assert_eq!(
                ours,
                "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
            );
            continue;
        }
        // A range across the boundary between the first two nodes of the lower level (or the
        // last bytes of a smaller blob) reads back through the UnixFS DAG.
        let (from, to) = if size > 174 * MIB {
            (174 * MIB - 5, size)
        } else {
            (size.saturating_sub(7), size)
        };
        let got = get_range(&node, &ours, from, to).await.unwrap();
        assert_eq!(got, &data[from..to], "{size} bytes, range {from}..{to}");
    }
}

/// The balanced layout at depths 1 to 4, against the reference with 4-byte chunks and 3 links
/// per node (the same code paths as 1 MiB and 174; a real 174³ MiB file is out of reach).
#[test]
fn the_balanced_layout_matches_the_reference_at_every_depth() {
    use shoal_store::blob::Builder;
    use shoal_store::cid::{cid_of, RAW};
    let Some(tools) = tools() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let sizes = [0usize, 1, 4, 5, 12, 13, 36, 37, 108, 109, 325, 1000];
    let mut files = Vec::new();
    let mut ours = Vec::new();
    for size in sizes {
        let data = shoal_fixtures::blob(size as u64, size);
        let file = dir.path().join(format!("f{size}"));
        std::fs::write(&file, &data).unwrap();
        files.push(file.to_str().unwrap().to_string());
        let mut b = Builder::with_fanout(3);
        for c in data.chunks(4) {
            b.push_chunk(cid_of(RAW, c), c.len() as u64).unwrap();
        }
        ours.push(b.finish().unwrap().0.to_string());
    }
    let mut args = vec!["cid-with", "4", "3"];
    args.extend(files.iter().map(String::as_str));
    let reference: Vec<String> = unixfs(tools, &args)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    for ((size, ours), reference) in sizes.iter().zip(&ours).zip(&reference) {
        assert_eq!(ours, reference, "{size} bytes");
    }
    assert_eq!(reference.len(), sizes.len());
}

/// Issue 15 item 2: a data dir holding a blob of the old format (1 MiB chunks under dag-cbor
/// link blocks, as shoal wrote them before) is converted when the node starts: the blob is
/// listed under the UnixFS CID the reference importer gives its bytes, reads back by that CID
/// and by its old one, keeps its name, content type and pin, and the store verifies clean with
/// the old link block gone.
#[tokio::test(flavor = "multi_thread")]
async fn a_data_dir_with_blobs_of_the_old_format_is_converted_at_start() {
    use shoal_store::blob::{self, legacy::LinkNode, BlobMeta};
    use shoal_store::cid::{cid_of, RAW};
    let tools = tools();
    let mut node = Node::start().unwrap();
    node.stop().unwrap();
    let data = shoal_fixtures::blob(9, 3 * MIB + 7);
    // The old format, written into the stopped node's store.
    let old = {
        let path = node.data_dir().join("store.sqlite");
        let store = shoal_store::Store::open(&path, shoal_store::StoreConfig::default()).unwrap();
        let mut w = store.writer().unwrap();
        blob::init(&mut w).unwrap();
        let chunks: Vec<(shoal_store::Cid, &[u8])> =
            data.chunks(MIB).map(|c| (cid_of(RAW, c), c)).collect();
        let (old, link_block) = LinkNode {
            chunk: MIB as u64,
            height: 1,
            size: data.len() as u64,
            links: chunks.iter().map(|c| c.0).collect(),
        }
        .encode()
        .unwrap();
        let mut blocks = chunks.clone();
        blocks.push((old, &link_block));
        blob::put_hashed(&mut w, &blocks, Some(("old", None))).unwrap();
        let meta = BlobMeta {
            cid: old,
            size: data.len() as u64,
            name: Some("report".into()),
            mime: Some("text/plain".into()),
        };
        blob::commit_upload(&mut w, "old", &[], &meta).unwrap();
        old.to_string()
    };
    assert!(old.starts_with("bafyrei"), "dag-cbor: {old}");
    let node = node.respawn().unwrap();
    let list: Value = within(node.http.get(node.url("/api/v1/blobs")).send())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let listed = &list[0];
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    let new = listed["cid"].as_str().unwrap().to_string();
    assert_eq!(listed["name"], "report");
    assert_eq!(listed["mime"], "text/plain");
    assert_eq!(listed["pinned"], true);
    assert_eq!(listed["size"], data.len() as u64);
    if let Some(tools) = tools {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), &data).unwrap();
        let reference = reference_cids(tools, &[file.path().to_path_buf()]).unwrap();
        assert_eq!(vec![new.clone()], reference);
    }
    for cid in [&new, &old] {
        let got = get_range(&node, cid, 0, data.len()).await.unwrap();
        assert!(got == data, "{cid}");
    }
    let out = shoal_tests::cli(
        &[
            "store",
            "verify",
            "--data-dir",
            node.data_dir().to_str().unwrap(),
        ],
        None,
    )
    .unwrap();
    assert!(out.status.success(), "{}{}", out.stdout, out.stderr);
    let out = shoal_tests::cli(
        &[
            "store",
            "block",
            &old,
            "--data-dir",
            node.data_dir().to_str().unwrap(),
        ],
        None,
    )
    .unwrap();
    assert!(out.stderr.contains("not in this store"), "{}", out.stderr);
}
