//! Views for the store inspector (`shoal store ...`, rendered by the CLI): tree shapes,
//! decoded blocks, verification and statistics. Read-only; works on a read-only store while a
//! node writes.
//!
//! Invariant: nothing here trusts block contents: missing or corrupt blocks are reported, not
//! panicked on.

use crate::tree::{self, node, EventTree, NameSet, Summary, TagSet};
use crate::{
    blocks,
    cid::{self, Cid, DAG_CBOR, DAG_PB, RAW},
    error::{Error, Result},
    event::{EventFilter, SourceId},
    read::Reader,
    schema,
};
use banyan::index::{CompactSeq, NodeInfo, Summarizable};
use libipld::Ipld;
use serde::Serialize;
use std::collections::HashMap;

/// One node of a tree, for `shoal store tree`.
#[derive(Debug, Clone, Serialize)]
pub struct NodeShape {
    /// Preorder number; the root is 0.
    pub id: usize,
    pub parent: Option<usize>,
    /// 0 = leaf.
    pub level: u32,
    #[serde(serialize_with = "crate::cid::serialize_opt")]
    pub cid: Option<Cid>,
    /// Offsets covered, inclusive.
    pub first_offset: u64,
    pub last_offset: u64,
    pub count: u64,
    pub sealed: bool,
    /// Bytes of the node's own block as stored.
    pub block_bytes: Option<u64>,
    /// Leaves: compressed payload bytes; branches: of the whole subtree.
    pub value_bytes: u64,
    /// Leaves: uncompressed payload bytes (dag-cbor), when the leaf could be read.
    pub uncompressed_bytes: Option<u64>,
    /// The node's summary, as JSON.
    pub summary: serde_json::Value,
}

/// A source's tree, node by node in preorder.
#[derive(Debug, Clone, Serialize)]
pub struct TreeShape {
    pub source: SourceId,
    #[serde(serialize_with = "crate::cid::serialize")]
    pub root: Cid,
    pub levels: u32,
    pub count: u64,
    pub nodes: Vec<NodeShape>,
}

/// One block, decoded.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BlockView {
    /// dag-cbor as JSON (links as `{"/": cid}`, bytes as `{"/": {"bytes": hex}}`); banyan
    /// nodes additionally decrypted and decompressed into `items`.
    DagCbor {
        #[serde(serialize_with = "crate::cid::serialize")]
        cid: Cid,
        length: u64,
        value: serde_json::Value,
    },
    /// dag-pb (a blob's UnixFS node) as JSON: `{"links": [{"hash", "name", "tsize"}], "data":
    /// hex, "file": {"filesize", "blocksizes"}}` (`file` when it is a UnixFS file node).
    DagPb {
        #[serde(serialize_with = "crate::cid::serialize")]
        cid: Cid,
        length: u64,
        value: serde_json::Value,
    },
    /// Raw bytes.
    Raw {
        #[serde(serialize_with = "crate::cid::serialize")]
        cid: Cid,
        length: u64,
        hex: String,
    },
}

/// Kind of a verification problem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    Missing,
    HashMismatch,
    Corrupt(String),
}

/// One bad block and the alias (tree) it belongs to.
#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    pub alias: String,
    #[serde(serialize_with = "crate::cid::serialize")]
    pub cid: Cid,
    pub kind: ProblemKind,
}

/// Result of [`Reader::verify`].
#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifyReport {
    pub aliases: u64,
    pub blocks_checked: u64,
    pub problems: Vec<Problem>,
}

impl VerifyReport {
    /// True when every alias's tree is complete and every block matches its hash.
    pub fn is_sound(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Per-source statistics.
#[derive(Debug, Clone, Serialize)]
pub struct SourceStats {
    pub source: SourceId,
    pub events: u64,
    /// Bytes of all blocks reachable from the source's root.
    pub bytes: u64,
    pub bytes_per_event: f64,
    /// Payload JSON bytes / compressed leaf bytes.
    pub compression_ratio: f64,
}

/// Whole-store statistics.
#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    /// Present blocks, inline and as files.
    pub blocks: u64,
    pub bytes: u64,
    /// Of those, the blocks whose bytes are files beside the database (`files.rs`).
    pub file_blocks: u64,
    pub file_bytes: u64,
    pub cids: u64,
    pub aliases: u64,
    pub sources: Vec<SourceStats>,
}

/// dag-cbor data model → JSON: links as `{"/": cid}`, bytes as `{"/": {"bytes": hex}}`.
pub(crate) fn ipld_to_json(ipld: &Ipld) -> serde_json::Value {
    use serde_json::{json, Value};
    match ipld {
        Ipld::Null => Value::Null,
        Ipld::Bool(b) => json!(b),
        Ipld::Integer(i) => match (u64::try_from(*i), i64::try_from(*i)) {
            (Ok(u), _) => json!(u),
            (_, Ok(s)) => json!(s),
            _ => json!(i.to_string()),
        },
        Ipld::Float(f) => json!(f),
        Ipld::String(s) => json!(s),
        Ipld::Bytes(b) => json!({ "/": { "bytes": hex::encode(b) } }),
        Ipld::List(l) => Value::Array(l.iter().map(ipld_to_json).collect()),
        Ipld::StringMap(m) => Value::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), ipld_to_json(v)))
                .collect(),
        ),
        Ipld::IntegerMap(m) => Value::Object(
            m.iter()
                .map(|(k, v)| (k.to_string(), ipld_to_json(v)))
                .collect(),
        ),
        Ipld::Tag(t, v) => json!({ "tag": t, "value": ipld_to_json(v) }),
        Ipld::Link(c) => json!({ "/": c.to_string() }),
    }
}

fn summary_json(s: &Summary) -> serde_json::Value {
    use serde_json::json;
    let names = match &s.names {
        NameSet::Exact(pairs) => json!(pairs
            .iter()
            .map(|(a, b)| [a.to_string(), b.to_string()])
            .collect::<Vec<_>>()),
        NameSet::Bloom(_) => json!({ "bloom": true }),
    };
    let tags = match &s.tags {
        TagSet::Exact(tags) => json!(tags.iter().map(|t| t.to_string()).collect::<Vec<_>>()),
        TagSet::Bloom(_) => json!({ "bloom": true }),
    };
    json!({
        "count": s.count,
        "lamport": [s.lamport.0, s.lamport.1],
        "time": [s.time.0, s.time.1],
        "names": names,
        "tags": tags,
    })
}

/// What the graph walk records per node.
struct Visited {
    level: u32,
    count: u64,
    sealed: bool,
    link: Option<libipld::Cid>,
    value_bytes: u64,
    summary: Summary,
    is_leaf: bool,
}

impl Reader {
    /// The shape of `source`'s tree, node by node in preorder.
    pub fn tree_shape(&self, source: &SourceId) -> Result<Option<TreeShape>> {
        let Some(root) = self.alias(&source.alias())? else {
            return Ok(None);
        };
        // Loaded as a builder so `sealed` is judged with the store's config, not forced.
        let builder: banyan::StreamBuilder<EventTree, tree::Value> = self
            .forest
            .load_stream_builder(
                tree::secrets(),
                self.tree_config.append(),
                cid::to_ipld(&root)?,
            )
            .map_err(Error::from_tree)?;
        let snapshot = builder.snapshot();
        let (edges, nodes) = self
            .forest
            .dump_graph(
                &snapshot,
                |(_, info): (usize, &NodeInfo<EventTree, _>)| match info {
                    NodeInfo::Branch(i, _) | NodeInfo::PurgedBranch(i) => Visited {
                        level: i.level,
                        count: i.count,
                        sealed: i.sealed,
                        link: i.link,
                        value_bytes: i.value_bytes,
                        summary: i.summaries.summarize(),
                        is_leaf: false,
                    },
                    NodeInfo::Leaf(i, _) | NodeInfo::PurgedLeaf(i) => Visited {
                        level: 0,
                        count: i.keys.count(),
                        sealed: i.sealed,
                        link: i.link,
                        value_bytes: i.value_bytes,
                        summary: i.keys.summarize(),
                        is_leaf: true,
                    },
                },
            )
            .map_err(Error::from_tree)?;
        let mut parent_of: HashMap<usize, usize> = HashMap::new();
        let mut first: HashMap<usize, u64> = HashMap::from([(0, 0)]);
        let mut next_child_offset: HashMap<usize, u64> = HashMap::new();
        for (parent, child) in &edges {
            parent_of.insert(*child, *parent);
            let start = first.get(parent).copied().unwrap_or(0);
            let at = next_child_offset.entry(*parent).or_insert(start);
            first.insert(*child, *at);
            *at += nodes.get(child).map(|n| n.count).unwrap_or(0);
        }
        let mut out = Vec::with_capacity(nodes.len());
        for (id, v) in nodes {
            let cid = v.link.as_ref().map(cid::from_ipld).transpose()?;
            let data = match &cid {
                Some(c) => self.get_block(c)?,
                None => None,
            };
            let uncompressed = match (&data, v.is_leaf) {
                (Some(d), true) => node::open(d).ok().map(|n| n.uncompressed as u64),
                _ => None,
            };
            let start = first.get(&id).copied().unwrap_or(0);
            out.push(NodeShape {
                id,
                parent: parent_of.get(&id).copied(),
                level: v.level,
                cid,
                first_offset: start,
                last_offset: (start + v.count).saturating_sub(1),
                count: v.count,
                sealed: v.sealed,
                block_bytes: data.as_ref().map(|d| d.len() as u64),
                value_bytes: v.value_bytes,
                uncompressed_bytes: uncompressed,
                summary: summary_json(&v.summary),
            });
        }
        Ok(Some(TreeShape {
            source: source.clone(),
            root,
            levels: snapshot.level().max(0) as u32 + 1,
            count: snapshot.count(),
            nodes: out,
        }))
    }

    /// One block decoded, if present.
    pub fn block(&self, cid: &Cid) -> Result<Option<BlockView>> {
        let Some(data) = self.get_block(cid)? else {
            return Ok(None);
        };
        let length = data.len() as u64;
        Ok(Some(match cid.codec() {
            RAW => BlockView::Raw {
                cid: *cid,
                length,
                hex: hex::encode(&data),
            },
            DAG_CBOR => {
                let mut value = match blocks::check_dag_cbor(&data) {
                    Ok(()) => match libipld::codec::Codec::decode::<Ipld>(
                        &libipld::cbor::DagCborCodec,
                        &data,
                    ) {
                        Ok(ipld) => ipld_to_json(&ipld),
                        Err(e) => serde_json::json!({ "undecodable": e.to_string() }),
                    },
                    Err(e) => serde_json::json!({ "malformed": e }),
                };
                if let Ok(n) = node::open(&data) {
                    value = serde_json::json!({
                        "block": value,
                        "banyan": {
                            "cipher_offset": n.cipher_offset,
                            "links": n.links.iter().map(|l| l.to_string()).collect::<Vec<_>>(),
                            "compressed_bytes": n.compressed,
                            "uncompressed_bytes": n.uncompressed,
                            "items": node::items_json(&n),
                        }
                    });
                }
                BlockView::DagCbor {
                    cid: *cid,
                    length,
                    value,
                }
            }
            DAG_PB => BlockView::DagPb {
                cid: *cid,
                length,
                value: dag_pb_json(cid, &data),
            },
            other => {
                return Err(Error::UnsupportedCid {
                    cid: cid.to_string(),
                    reason: format!("codec {other:#x}"),
                })
            }
        }))
    }

    /// Walks every alias: every reachable block must be present and hash to its CID (and
    /// dag-cbor blocks must be well-formed); a block stored as a file is read and hashed from
    /// its file. Each block is checked once even if shared.
    pub fn verify(&self) -> Result<VerifyReport> {
        let aliases = blocks::all_aliases(&*self.lock()?)?;
        let mut report = VerifyReport {
            aliases: aliases.len() as u64,
            ..VerifyReport::default()
        };
        let mut seen = std::collections::HashSet::new();
        for (alias, root) in aliases {
            let reached = blocks::reachable(&*self.lock()?, &root)?;
            for r in reached {
                if !seen.insert(r.cid) {
                    continue;
                }
                report.blocks_checked += 1;
                // A block file that is gone or has the wrong length is a problem of this
                // block, not a reason to stop.
                let data = if r.present {
                    self.get_block(&r.cid)
                } else {
                    Ok(None)
                };
                let problem = match data {
                    Err(e @ (Error::Corrupt { .. } | Error::BlockFile { .. })) => {
                        Some(ProblemKind::Corrupt(e.to_string()))
                    }
                    Err(e) => return Err(e),
                    Ok(None) => Some(ProblemKind::Missing),
                    Ok(Some(data)) => match cid::verify(&r.cid, &data) {
                        Err(Error::HashMismatch { .. }) => Some(ProblemKind::HashMismatch),
                        Err(e) => Some(ProblemKind::Corrupt(e.to_string())),
                        Ok(()) => match blocks::links(&r.cid, &data) {
                            Err(e) => Some(ProblemKind::Corrupt(e.to_string())),
                            Ok(_) => None,
                        },
                    },
                };
                if let Some(kind) = problem {
                    report.problems.push(Problem {
                        alias: alias.clone(),
                        cid: r.cid,
                        kind,
                    });
                }
            }
        }
        Ok(report)
    }

    /// Counts and sizes of the whole store and per source. Reads every source's events once
    /// (to measure payload bytes for the compression ratio): meant for the inspector.
    pub fn stats(&self) -> Result<Stats> {
        let (blocks, bytes): (i64, i64) =
            self.lock()?
                .query_row(schema::COUNT_BLOCKS, [], |r| Ok((r.get(0)?, r.get(1)?)))?;
        let (file_blocks, file_bytes): (i64, i64) =
            self.lock()?
                .query_row(schema::COUNT_FILES, [], |r| Ok((r.get(0)?, r.get(1)?)))?;
        let cids: i64 = self
            .lock()?
            .query_row(schema::COUNT_CIDS, [], |r| r.get(0))?;
        let aliases = blocks::all_aliases(&*self.lock()?)?.len() as u64;
        let mut sources = Vec::new();
        for info in self.sources()? {
            let reached = blocks::reachable(&*self.lock()?, &info.root)?;
            let tree_bytes: u64 = reached.iter().map(|r| r.bytes).sum();
            let tree = self.load_tree(&info.root)?;
            let compressed = tree.index().map(|i| i.value_bytes()).unwrap_or(0);
            let mut payload = 0u64;
            for e in self.events(&info.source, 0..=u64::MAX, &EventFilter::all(), false)? {
                payload += e?.payload.get().len() as u64;
            }
            sources.push(SourceStats {
                bytes_per_event: tree_bytes as f64 / info.count.max(1) as f64,
                compression_ratio: payload as f64 / compressed.max(1) as f64,
                source: info.source,
                events: info.count,
                bytes: tree_bytes,
            });
        }
        Ok(Stats {
            blocks: (blocks.max(0) + file_blocks.max(0)) as u64,
            bytes: (bytes.max(0) + file_bytes.max(0)) as u64,
            file_blocks: file_blocks.max(0) as u64,
            file_bytes: file_bytes.max(0) as u64,
            cids: cids.max(0) as u64,
            aliases,
            sources,
        })
    }
}

/// A dag-pb block as the inspector shows it.
fn dag_pb_json(cid: &Cid, data: &[u8]) -> serde_json::Value {
    let node = match crate::dagpb::PbNode::decode(data) {
        Ok(node) => node,
        Err(e) => return serde_json::json!({ "malformed": e }),
    };
    let links: Vec<serde_json::Value> = node
        .links
        .iter()
        .map(|l| serde_json::json!({"hash": l.hash.to_string(), "name": l.name, "tsize": l.tsize}))
        .collect();
    let mut value = serde_json::json!({
        "links": links,
        "data": node.data.as_deref().map(hex::encode),
    });
    match crate::blob::FileNode::decode(cid, data) {
        Ok(file) => {
            value["file"] = serde_json::json!({"filesize": file.size, "blocksizes": file.sizes})
        }
        Err(e) => value["file"] = serde_json::json!({ "not_a_file": e.to_string() }),
    }
    value
}
