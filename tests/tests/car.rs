//! Issue 15 item 3: `shoal store export` / `import` read and write CAR v1 files that the IPFS
//! tools read and write (checked with `@ipld/car` and the reference UnixFS importer under
//! Node.js, `tests/ipfs/unixfs.mjs`): a CAR exported by shoal (a blob and an event tree) is read
//! by `@ipld/car` with the same roots and exactly the blocks IPFS has for the same bytes; a CAR
//! written by `@ipld/car` of a file imported by the reference importer is imported by shoal and
//! the blob reads back byte-identical over the blob API; bad files are refused with a one-line
//! error, a non-zero exit and nothing imported; an import while a node runs is refused.
//!
//! Skipped, loudly, only when node/npm are not installed or the npm registry is unreachable.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use shoal_tests::ipfs::{tools, unixfs};
use shoal_tests::{cli, event, within, Node};

const MIB: usize = 1 << 20;

async fn get(node: &Node, cid: &str) -> Result<Vec<u8>> {
    let resp = within(
        node.http
            .get(node.url(&format!("/api/v1/blobs/{cid}")))
            .send(),
    )
    .await?;
    if resp.status() != 200 {
        bail!("get {cid}: {}", resp.status());
    }
    Ok(within(resp.bytes()).await?.to_vec())
}

/// `@ipld/car`'s view of a CAR file: roots, and the CIDs of its blocks (all hash-checked).
fn read_car(tools: &Path, car: &Path) -> Result<(Vec<String>, BTreeSet<String>)> {
    let v: Value = serde_json::from_str(&unixfs(
        tools,
        &["read-car", car.to_str().context("path")?],
    )?)?;
    let roots = v["roots"]
        .as_array()
        .context("roots")?
        .iter()
        .map(|r| r.as_str().unwrap_or_default().to_string())
        .collect();
    let mut blocks = BTreeSet::new();
    for b in v["blocks"].as_array().context("blocks")? {
        assert_eq!(b["hashOk"], json!(true), "{b}");
        let fresh = blocks.insert(b["cid"].as_str().context("cid")?.to_string());
        assert!(fresh, "block {b} twice");
    }
    Ok((roots, blocks))
}

fn data_dir(node: &Node) -> String {
    node.data_dir().to_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_car_exported_by_shoal_is_read_by_ipld_car_with_the_blocks_ipfs_has() {
    let Some(tools) = tools() else {
        return;
    };
    let node = Node::start().unwrap();
    let scratch = tempfile::tempdir().unwrap();
    // 3 MiB + 5: four leaves under one node. Its reference CAR has IPFS's blocks for it.
    let data = shoal_fixtures::blob(1, 3 * MIB + 5);
    let file = scratch.path().join("blob");
    std::fs::write(&file, &data).unwrap();
    let reference = scratch.path().join("reference.car");
    let blob = unixfs(
        tools,
        &["car", file.to_str().unwrap(), reference.to_str().unwrap()],
    )
    .unwrap()
    .trim()
    .to_string();
    assert_eq!(node.put_blob(data).await.unwrap(), blob);
    // An event tree (dag-cbor) as a second root.
    node.publish(&[event("car-test", "a", json!({"n": 1}))])
        .await
        .unwrap();
    let streams = cli(
        &["store", "streams", "--json", "--data-dir", &data_dir(&node)],
        None,
    )
    .unwrap();
    assert!(streams.status.success(), "{}", streams.stderr);
    let streams: Value = serde_json::from_str(&streams.stdout).unwrap();
    let tree = streams[0]["root"].as_str().unwrap().to_string();

    // Exported while the node runs (the export only reads).
    let car = scratch.path().join("export.car");
    let out = cli(
        &[
            "store",
            "export",
            &blob,
            &tree,
            "-o",
            car.to_str().unwrap(),
            "--data-dir",
            &data_dir(&node),
        ],
        None,
    )
    .unwrap();
    assert!(out.status.success(), "{}", out.stderr);
    let (roots, blocks) = read_car(tools, &car).unwrap();
    assert_eq!(roots, vec![blob.clone(), tree.clone()]);
    let (reference_roots, reference_blocks) = read_car(tools, &reference).unwrap();
    assert_eq!(reference_roots, vec![blob.clone()]);
    assert!(
        reference_blocks.is_subset(&blocks),
        "every block IPFS has for the blob"
    );
    let tree_blocks: Vec<&String> = blocks.difference(&reference_blocks).collect();
    assert!(!tree_blocks.is_empty());
    assert!(
        tree_blocks.iter().all(|c| c.starts_with("bafyrei")),
        "dag-cbor: {tree_blocks:?}"
    );
    assert!(tree_blocks.contains(&&tree));

    // A CID the store lacks: one line, non-zero, no file left behind.
    let missing = "bafybeigsjb7auvumwgzokun7ymjm6wkjiz2c734xhf7il5jtya7zxqm42i";
    let bad = scratch.path().join("bad.car");
    let out = cli(
        &[
            "store",
            "export",
            missing,
            "-o",
            bad.to_str().unwrap(),
            "--data-dir",
            &data_dir(&node),
        ],
        None,
    )
    .unwrap();
    assert!(!out.status.success());
    assert!(out.stderr.contains("not in this store"), "{}", out.stderr);
    assert!(!bad.exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_car_written_by_ipld_car_is_imported_and_the_blob_reads_back() {
    let Some(tools) = tools() else {
        return;
    };
    let scratch = tempfile::tempdir().unwrap();
    // 5 MiB + 3: six leaves; written by @ipld/car from the reference importer's blocks.
    let data = shoal_fixtures::blob(2, 5 * MIB + 3);
    let file = scratch.path().join("blob");
    std::fs::write(&file, &data).unwrap();
    let car = scratch.path().join("ipfs.car");
    let root = unixfs(
        tools,
        &["car", file.to_str().unwrap(), car.to_str().unwrap()],
    )
    .unwrap()
    .trim()
    .to_string();
    let mut node = Node::start().unwrap();
    let dir = data_dir(&node);
    let car_path = car.to_str().unwrap();

    // Refused while the node runs.
    let out = cli(&["store", "import", car_path, "--data-dir", &dir], None).unwrap();
    assert!(!out.status.success());
    assert!(out.stderr.contains("stop the node first"), "{}", out.stderr);
    node.stop().unwrap();

    // Bad files: a truncated one, one with a block that does not hash to its CID, one whose
    // root's DAG is not all there. Each: one line, non-zero, nothing imported.
    let bytes = std::fs::read(&car).unwrap();
    let truncated = scratch.path().join("truncated.car");
    std::fs::write(&truncated, &bytes[..bytes.len() - 100]).unwrap();
    let flipped = scratch.path().join("flipped.car");
    let mut f = bytes.clone();
    let at = f.len() / 2;
    f[at] ^= 0xff;
    std::fs::write(&flipped, &f).unwrap();
    let partial = scratch.path().join("partial.car");
    let other = scratch.path().join("other");
    std::fs::write(&other, shoal_fixtures::blob(3, 3 * MIB)).unwrap();
    unixfs(
        tools,
        &["car", other.to_str().unwrap(), partial.to_str().unwrap()],
    )
    .unwrap();
    // Without its first section (a leaf: the importer writes leaves before their node).
    let p = std::fs::read(&partial).unwrap();
    let starts = section_starts(&p);
    let mut cut = p[..starts[0]].to_vec();
    cut.extend_from_slice(&p[starts[1]..]);
    std::fs::write(&partial, &cut).unwrap();
    for (bad, says) in [
        (&truncated, "ends inside"),
        (&flipped, "does not hash"),
        (&partial, "incomplete"),
    ] {
        let out = cli(
            &["store", "import", bad.to_str().unwrap(), "--data-dir", &dir],
            None,
        )
        .unwrap();
        assert!(!out.status.success(), "{bad:?}");
        assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);
        assert!(out.stderr.contains(says), "{bad:?}: {}", out.stderr);
    }

    let out = cli(&["store", "import", car_path, "--data-dir", &dir], None).unwrap();
    assert!(out.status.success(), "{}", out.stderr);
    assert!(
        out.stdout.contains(&format!(
            "{root} pinned as blob/{root} ({} bytes)",
            data.len()
        )),
        "{}",
        out.stdout
    );
    let node = node.respawn().unwrap();
    let list: Value = within(node.http.get(node.url("/api/v1/blobs")).send())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let listed: Vec<&str> = list
        .as_array()
        .map(|l| l.iter().filter_map(|b| b["cid"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(
        listed,
        vec![root.as_str()],
        "only the good file was imported: {list}"
    );
    assert_eq!(get(&node, &root).await.unwrap(), data);
    // And back: shoal's export of it has the same blocks as the file it came from.
    let again = scratch.path().join("again.car");
    let out = cli(
        &[
            "store",
            "export",
            &root,
            "-o",
            again.to_str().unwrap(),
            "--data-dir",
            &dir,
        ],
        None,
    )
    .unwrap();
    assert!(out.status.success(), "{}", out.stderr);
    assert_eq!(
        read_car(tools, &again).unwrap(),
        read_car(tools, &car).unwrap()
    );
}

/// Offsets where the sections of a CAR file start (after the header).
fn section_starts(car: &[u8]) -> Vec<usize> {
    fn varint(b: &[u8], mut at: usize) -> Option<(usize, usize)> {
        let mut v = 0usize;
        for i in 0..10 {
            let byte = *b.get(at)?;
            at += 1;
            v |= ((byte & 0x7f) as usize) << (7 * i);
            if byte & 0x80 == 0 {
                return Some((v, at));
            }
        }
        None
    }
    let mut starts = Vec::new();
    let Some((len, body)) = varint(car, 0) else {
        return starts;
    };
    let mut at = body + len;
    while let Some((len, body)) = varint(car, at) {
        starts.push(at);
        at = body + len;
    }
    starts
}
