//! Dump and restore of event logs (`shoal events dump` / `restore`, `GET /api/v1/events/dump`,
//! `POST /api/v1/events/restore`): every source's signed head and the blocks of its tree, as a
//! CAR v1 file (`shoal_store::car`; layout in `docs/format.md`, "Events dump").
//!
//! The file's one root is a *manifest* block (dag-cbor, written first): `{"format":
//! "shoal-events-dump", "version": 1, "sources": [{"head": <encoded SignedHead>, "root": <link
//! to the tree root>, "blocks": <count>}, ...]}`; then, source after source, the `blocks`
//! blocks of each tree. Because the manifest links every tree root, the file is one complete
//! DAG (`ipfs dag import` accepts it).
//!
//! Restore trusts nothing in the file: each block is hash-checked as it is read (the CAR
//! reader) and put through the writer as fetched blocks are; each head's signature is verified
//! against the key its source id embeds; each tree is imported exactly as a replicated one
//! (the store checks it is complete, valid and extends what is stored). A source is imported
//! as soon as its blocks have been read, so no block waits for its import longer than one
//! tree's share of the file (blocks put ahead of their import are safe from GC for the store's
//! `gc_grace`, 60 s). Memory: one batch of blocks ([`BATCH_BYTES`]) and the manifest.
//!
//! This node's own source is restored too (after its disk was lost): the import still has to
//! extend what is stored, so a restore never rewrites offsets this node already holds. Peers
//! may hold more of it than the dump (events published after the dump was made): a restore that
//! imported the own source makes the node *resume* it (`crate::resume`): publishes are held
//! until peers said how far they hold it and their trees of it were imported, so no offset a
//! peer holds is signed twice.

use std::io::{Read, Write};
use std::sync::Arc;

use cid::Cid;
use ipld_core::ipld::Ipld;
use libp2p::identity::Keypair;
use libp2p::PeerId;
use serde::Serialize;
use shoal_store::car::{CarError, CarReader, CarWriter};
use shoal_store::{EventFilter, SourceId, Store};
use tokio::sync::oneshot;

use crate::events::{EventService, EventsError, ImportOutcome, ImportRequest};
use crate::head::{Head, HeadError, SignedHead};
use crate::swarm::{self, Command};

/// Blocks put per writer command during a restore.
const BATCH_BYTES: usize = 4 << 20;
/// Sources a manifest may name (the head book's limit).
const MAX_SOURCES: usize = swarm::heads::MAX_SOURCES;
/// Value of the manifest's `format` field.
const FORMAT: &str = "shoal-events-dump";

/// Why a dump or restore failed.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error("cannot read the store")]
    Store(#[from] shoal_store::Error),
    #[error("the dump is not a valid CAR file")]
    Car(#[from] CarError),
    #[error("the dump's manifest is invalid: {0}")]
    Manifest(String),
    #[error("cannot sign this node's head")]
    Sign(#[source] HeadError),
    #[error("the writer failed")]
    Events(#[from] EventsError),
    #[error("the node is shutting down")]
    Stopped,
    #[error("a dump task failed: {0}")]
    Task(String),
}

/// What a dump wrote.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DumpSummary {
    pub sources: u64,
    pub events: u64,
    pub blocks: u64,
    pub bytes: u64,
    /// Sources stored here without a signed head for their current tree (not dumped).
    pub skipped: Vec<String>,
}

/// What became of one source of a restore.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RestoredSource {
    pub source: String,
    /// Highest offset in the dump.
    pub offset: u64,
    /// `imported`, `current` (stored already), or why it was not (the rest was restored).
    pub outcome: String,
}

/// What a restore did.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RestoreSummary {
    pub blocks: u64,
    pub bytes: u64,
    pub sources: Vec<RestoredSource>,
}

/// One entry of the manifest.
struct Entry {
    head: SignedHead,
    blocks: u64,
}

fn encode_manifest(entries: &[Entry]) -> Result<Vec<u8>, DumpError> {
    let sources = entries
        .iter()
        .map(|e| {
            Ipld::Map(
                [
                    ("head".to_string(), Ipld::Bytes(e.head.encode())),
                    ("root".to_string(), Ipld::Link(e.head.head.root)),
                    ("blocks".to_string(), Ipld::Integer(e.blocks.into())),
                ]
                .into_iter()
                .collect(),
            )
        })
        .collect();
    let manifest = Ipld::Map(
        [
            ("format".to_string(), Ipld::String(FORMAT.into())),
            ("version".to_string(), Ipld::Integer(1)),
            ("sources".to_string(), Ipld::List(sources)),
        ]
        .into_iter()
        .collect(),
    );
    serde_ipld_dagcbor::to_vec(&manifest).map_err(|e| DumpError::Manifest(e.to_string()))
}

/// Decodes a manifest (its block was hash-checked; its contents are not trusted): every head
/// must verify and link the root it names.
fn decode_manifest(data: &[u8]) -> Result<Vec<Entry>, DumpError> {
    let bad = |s: String| DumpError::Manifest(s);
    let ipld: Ipld = serde_ipld_dagcbor::from_slice(data).map_err(|e| bad(e.to_string()))?;
    let Ipld::Map(map) = ipld else {
        return Err(bad("not a map".into()));
    };
    if map.get("format") != Some(&Ipld::String(FORMAT.into())) {
        return Err(bad(format!("format is not `{FORMAT}`")));
    }
    if map.get("version") != Some(&Ipld::Integer(1)) {
        return Err(bad("version is not 1 (written by a newer shoal?)".into()));
    }
    let Some(Ipld::List(sources)) = map.get("sources") else {
        return Err(bad("sources is not a list".into()));
    };
    if sources.len() > MAX_SOURCES {
        return Err(bad(format!("more than {MAX_SOURCES} sources")));
    }
    let mut out = Vec::with_capacity(sources.len());
    let mut seen = std::collections::HashSet::new();
    for (i, s) in sources.iter().enumerate() {
        let at = |what: &str| bad(format!("sources[{i}]: {what}"));
        let Ipld::Map(m) = s else {
            return Err(at("not a map"));
        };
        let (Some(Ipld::Bytes(h)), Some(Ipld::Link(root)), Some(Ipld::Integer(blocks))) =
            (m.get("head"), m.get("root"), m.get("blocks"))
        else {
            return Err(at("needs head (bytes), root (link) and blocks (integer)"));
        };
        let head = SignedHead::decode(h).map_err(|e| at(&e.to_string()))?;
        head.verify().map_err(|e| at(&e.to_string()))?;
        if head.head.root != *root {
            return Err(at("the head's root is not the linked root"));
        }
        if !seen.insert(head.head.source) {
            return Err(at("a source named twice"));
        }
        let blocks = u64::try_from(*blocks).map_err(|_| at("blocks is negative"))?;
        out.push(Entry { head, blocks });
    }
    Ok(out)
}

/// Dump and restore of a node's event logs (cheap to clone).
#[derive(Clone)]
pub struct Backup {
    store: Arc<Store>,
    events: EventService,
    swarm: swarm::Handle,
    keypair: Keypair,
    own: PeerId,
    resume: crate::resume::Resume,
}

impl Backup {
    pub(crate) fn new(
        store: Arc<Store>,
        events: EventService,
        swarm: swarm::Handle,
        keypair: Keypair,
        resume: crate::resume::Resume,
    ) -> Self {
        let own = keypair.public().to_peer_id();
        Backup {
            store,
            events,
            swarm,
            keypair,
            own,
            resume,
        }
    }

    /// The signed head of every source whose current tree has one: our own signed now, the
    /// others' from the swarm's head book (what digests serve). Sources without: `skipped`.
    async fn heads(&self) -> Result<(Vec<SignedHead>, Vec<String>), DumpError> {
        let (reply, rx) = oneshot::channel();
        self.swarm
            .send(Command::StoredHeads(reply))
            .await
            .map_err(|_| DumpError::Stopped)?;
        let book = rx.await.map_err(|_| DumpError::Stopped)?;
        let reader = self.store.reader()?;
        let own = self.own;
        let keypair = self.keypair.clone();
        let task = tokio::task::spawn_blocking(move || -> Result<_, DumpError> {
            let by_source: std::collections::HashMap<String, SignedHead> = book
                .into_iter()
                .map(|h| (h.head.source.to_string(), h))
                .collect();
            let mut heads = Vec::new();
            let mut skipped = Vec::new();
            for info in reader.sources()? {
                if info.source.as_str() == own.to_string() {
                    let last = reader
                        .events(
                            &info.source,
                            info.last_offset..=info.last_offset,
                            &EventFilter::all(),
                            false,
                        )?
                        .next()
                        .transpose()?;
                    let head = Head {
                        source: own,
                        root: info.root,
                        offset: info.last_offset,
                        lamport: last.as_ref().map_or(0, |e| e.lamport),
                        timestamp: last.as_ref().map_or(0, |e| e.timestamp),
                        pruned: reader.pruned_generation(&info.source, info.last_offset)?,
                    };
                    heads.push(head.sign(&keypair).map_err(DumpError::Sign)?);
                    continue;
                }
                match by_source.get(info.source.as_str()) {
                    Some(h) if h.head.root == info.root && h.head.offset == info.last_offset => {
                        heads.push(h.clone())
                    }
                    _ => skipped.push(info.source.to_string()),
                }
            }
            Ok((heads, skipped))
        });
        task.await.map_err(|e| DumpError::Task(e.to_string()))?
    }

    /// Writes the dump to `out` on a blocking thread; `progress(bytes)` after each block.
    /// Streaming: one block in memory at a time.
    pub async fn dump<W: Write + Send + 'static>(
        &self,
        out: W,
        mut progress: impl FnMut(u64) + Send + 'static,
    ) -> Result<DumpSummary, DumpError> {
        let (heads, skipped) = self.heads().await?;
        let reader = self.store.reader()?;
        let task = tokio::task::spawn_blocking(move || -> Result<DumpSummary, DumpError> {
            // Block lists first: the manifest, written first, counts each tree's blocks.
            let mut entries = Vec::with_capacity(heads.len());
            let mut lists = Vec::with_capacity(heads.len());
            for head in heads {
                let Some(cids) = reader.dag_blocks(&head.head.root)? else {
                    return Err(DumpError::Store(shoal_store::Error::MissingBlock(
                        head.head.root,
                    )));
                };
                entries.push(Entry {
                    blocks: cids.len() as u64,
                    head,
                });
                lists.push(cids);
            }
            let manifest = encode_manifest(&entries)?;
            let manifest_cid = shoal_store::cid::cid_of(shoal_store::cid::DAG_CBOR, &manifest);
            let mut car = CarWriter::new(out, &[manifest_cid])?;
            car.block(&manifest_cid, &manifest)?;
            let mut summary = DumpSummary {
                skipped,
                ..DumpSummary::default()
            };
            for (entry, cids) in entries.iter().zip(lists) {
                for cid in cids {
                    let data = reader
                        .get_block(&cid)?
                        .ok_or(shoal_store::Error::MissingBlock(cid))?;
                    car.block(&cid, &data)?;
                    summary.blocks += 1;
                    progress(car.bytes());
                }
                summary.sources += 1;
                summary.events += entry.head.head.offset + 1;
            }
            summary.bytes = car.bytes();
            car.finish()?;
            Ok(summary)
        });
        task.await.map_err(|e| DumpError::Task(e.to_string()))?
    }

    /// Reads a dump from `input` on a blocking thread and imports every source as if it had
    /// been replicated (see the module doc); returns once every imported source is queryable.
    /// `progress(bytes)` after each block.
    pub async fn restore<R: Read + Send + 'static>(
        &self,
        input: R,
        mut progress: impl FnMut(u64) + Send + 'static,
    ) -> Result<RestoreSummary, DumpError> {
        let this = self.clone();
        let runtime = tokio::runtime::Handle::current();
        let task = tokio::task::spawn_blocking(move || -> Result<RestoreSummary, DumpError> {
            let mut car = CarReader::new(input)?;
            let [root] = car.roots() else {
                return Err(DumpError::Manifest(format!(
                    "the file names {} roots; a dump names one (its manifest)",
                    car.roots().len()
                )));
            };
            let root = *root;
            let Some((cid, data)) = car.next_block()? else {
                return Err(DumpError::Manifest("the file holds no blocks".into()));
            };
            if cid != root {
                return Err(DumpError::Manifest(
                    "the first block is not the manifest the header names".into(),
                ));
            }
            let entries = decode_manifest(&data)?;
            let mut summary = RestoreSummary::default();
            for entry in entries {
                let mut batch = Vec::new();
                let mut batch_bytes = 0usize;
                for _ in 0..entry.blocks {
                    let Some((cid, data)) = car.next_block()? else {
                        return Err(DumpError::Manifest(format!(
                            "the file ends inside the blocks of source {}",
                            entry.head.head.source
                        )));
                    };
                    summary.blocks += 1;
                    batch_bytes += data.len();
                    batch.push((cid, data));
                    progress(car.bytes());
                    if batch_bytes >= BATCH_BYTES {
                        runtime
                            .block_on(this.events.put_blocks(std::mem::take(&mut batch), false))?;
                        batch_bytes = 0;
                    }
                }
                let outcome = runtime.block_on(this.import(&entry.head, batch))?;
                summary.sources.push(RestoredSource {
                    source: entry.head.head.source.to_string(),
                    offset: entry.head.head.offset,
                    outcome,
                });
            }
            if car.next_block()?.is_some() {
                return Err(DumpError::Manifest(
                    "blocks after the last source's (the manifest's counts are wrong)".into(),
                ));
            }
            summary.bytes = car.bytes();
            Ok(summary)
        });
        task.await.map_err(|e| DumpError::Task(e.to_string()))?
    }

    /// Imports one source's tree (its last `blocks` come along), as replication does; tells
    /// the swarm so digests serve the head. Answers what happened, in words.
    async fn import(
        &self,
        head: &SignedHead,
        blocks: Vec<(Cid, Vec<u8>)>,
    ) -> Result<String, DumpError> {
        let source = SourceId::new(head.head.source.to_string());
        let outcome = self
            .events
            .restore_import(ImportRequest {
                source: source.clone(),
                root: head.head.root,
                blocks,
                checked: false,
            })
            .await?;
        let stored = self.events.offsets().get(&source);
        let text = match outcome {
            ImportOutcome::Imported(_) => "imported".to_string(),
            ImportOutcome::Current => "current".to_string(),
            ImportOutcome::Missing(m) => {
                format!("{} blocks of its tree are not in the file", m.len())
            }
            ImportOutcome::Failed(_) if stored.is_some_and(|o| o >= head.head.offset) => {
                format!(
                    "not imported: this node stores more of it (offset {})",
                    stored.unwrap_or(0)
                )
            }
            ImportOutcome::Failed(e) => format!("not imported: {e}"),
        };
        if matches!(text.as_str(), "imported" | "current") && head.head.source != self.own {
            let _ = self.swarm.send(Command::Stored(head.clone())).await;
        }
        if text == "imported" && head.head.source == self.own {
            // Restored our own events: peers may hold more of them than the dump.
            self.resume.begin();
        }
        tracing::info!(source = %head.head.source, offset = head.head.offset, outcome = %text, "restored");
        Ok(text)
    }
}
