//! `shoal store`: the store inspector. Opens a data dir's store file read-only (SQLite WAL
//! readers never block a running node's writer, so it works while a node uses the dir) and
//! renders the store library's views: `streams`, `tree`, `events`, `block`, `verify`, `stats`;
//! `export` writes the DAGs under given CIDs to a CAR v1 file. `gc` and `import` write the store:
//! they open it for writing, which takes the data dir's writer lock, so they are refused while a
//! node (or another writer) uses the dir.
//!
//! This module owns only presentation: every number comes from `shoal_store` (`Reader::sources`,
//! `tree_shape`, `block`, `verify`, `stats`; `Writer::gc`). Human-readable text by default,
//! `--json` for one JSON document (NDJSON for `events`); `tree --dot` for Graphviz.

mod render;

use std::{
    io::Write,
    path::{Path, PathBuf},
};

use anyhow::Context;
use shoal_engine::config::STORE_FILE;
use shoal_store::{Cid, EventFilter, GcStats, SourceId, Store, StoreConfig};

use crate::output::human_bytes;
use crate::progress::{Progress, Unit};

/// Blocks deleted per garbage-collection transaction.
const GC_STEP: usize = 10_000;

/// Arguments of `shoal store`.
#[derive(clap::Args)]
pub struct Args {
    /// The node's data dir (the one given to `shoal run --data-dir`).
    #[arg(
        long,
        global = true,
        env = "SHOAL_DATA_DIR",
        default_value = "./shoal-data",
        value_name = "DIR"
    )]
    data_dir: PathBuf,
    /// Print JSON instead of text (one document; `events` always prints NDJSON).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Every source: root CID, highest offset, event count, bytes.
    Streams,
    /// A source's tree: levels, branches and leaves with offset ranges, CIDs, sizes, summaries.
    Tree {
        /// The source id (see `shoal store streams`).
        source: String,
        /// Print a Graphviz graph (`shoal store tree SRC --dot | dot -Tsvg > tree.svg`).
        #[arg(long, conflicts_with = "json")]
        dot: bool,
    },
    /// A source's events as NDJSON, in offset order.
    Events {
        /// The source id (see `shoal store streams`).
        source: String,
        /// First offset (inclusive); default 0.
        #[arg(long, value_name = "N")]
        from: Option<u64>,
        /// Last offset (inclusive); default the highest.
        #[arg(long, value_name = "M")]
        to: Option<u64>,
    },
    /// One block, decoded: dag-cbor and dag-pb (blob DAG nodes) as JSON, raw as length and hex.
    Block {
        /// The block's CID (e.g. from `shoal store tree`).
        cid: String,
    },
    /// Check every tree is complete and every block hashes to its CID; exits non-zero naming
    /// each missing or corrupt block and the tree it belongs to.
    Verify,
    /// Blocks and bytes in total; per source bytes per event and compression ratio.
    Stats,
    /// Collect unreachable blocks now and say what was freed. The one subcommand that writes:
    /// refused while a node uses the data dir (stop it first; a running node collects in the
    /// background anyway). Blocks unpinned less than a minute ago are kept (grace period).
    Gc,
    /// Write the DAGs under CIDs (blobs, tree roots, any stored block) to a CAR v1 file, as
    /// `ipfs dag export` does: the roots, then every block below them once. Works while a node
    /// uses the data dir.
    Export {
        /// Root CIDs (from `shoal blobs ls`, `shoal store streams`, ...).
        #[arg(required = true, value_name = "CID")]
        cids: Vec<String>,
        /// The CAR file to write (`-` for stdout).
        #[arg(short, long, value_name = "FILE")]
        output: PathBuf,
    },
    /// Import a CAR v1 file (`ipfs dag export`'s format, or `shoal store export`'s): every block
    /// is checked against its CID and every root's DAG must be complete, else nothing is
    /// imported. A root that is a blob is pinned as a blob put here (`shoal blobs ls` lists it),
    /// any other root as `car/<cid>`. Refused while a node uses the data dir (stop it first).
    Import {
        /// The CAR file.
        file: PathBuf,
    },
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let path = args.data_dir.join(STORE_FILE);
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let json = args.json;
    match args.command {
        Command::Streams => {
            let sources = open(&path)?.sources().context("cannot list the sources")?;
            render::streams(&mut out, &sources, json)?;
        }
        Command::Tree { source, dot } => {
            let reader = open(&path)?;
            let source = SourceId::new(source);
            let shape = reader
                .tree_shape(&source)
                .with_context(|| format!("cannot read the tree of {source}"))?
                .with_context(|| no_such_source(&source))?;
            if dot {
                render::tree_dot(&mut out, &shape)?;
            } else {
                render::tree(&mut out, &shape, json)?;
            }
        }
        Command::Events { source, from, to } => {
            events(&mut out, &open(&path)?, SourceId::new(source), from, to)?;
        }
        Command::Block { cid } => {
            let cid: Cid = cid.parse().map_err(|e| {
                anyhow::anyhow!("`{cid}` is not a CID ({e}): copy one from `shoal store tree`")
            })?;
            let block = open(&path)?
                .block(&cid)
                .with_context(|| format!("cannot read block {cid}"))?
                .with_context(|| format!("block {cid} is not in this store"))?;
            render::block(&mut out, &block, json)?;
        }
        Command::Verify => {
            let report = open(&path)?.verify().context("cannot verify the store")?;
            render::verify(&mut out, &report, json)?;
            out.flush()?;
            if !report.problems.is_empty() {
                anyhow::bail!(
                    "{} missing or corrupt block(s): the store is damaged; a node re-fetches \
                     replicated trees from peers, its own source's lost events cannot be recovered",
                    report.problems.len()
                );
            }
        }
        Command::Stats => {
            let stats = open(&path)?
                .stats()
                .context("cannot compute the statistics")?;
            render::stats(&mut out, &stats, json)?;
        }
        Command::Gc => {
            let store = match Store::open(&path_checked(&path)?, StoreConfig::default()) {
                Ok(store) => store,
                Err(shoal_store::Error::Locked { pid, .. }) => anyhow::bail!(
                    "data dir {} is in use by {}: stop the node first (a running node collects \
                     garbage in the background anyway); read-only commands work meanwhile",
                    args.data_dir.display(),
                    holder(pid)
                ),
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("cannot open {} for writing", path.display()))
                }
            };
            let mut writer = store
                .writer()
                .context("cannot take the store's writer: is a node using this data dir?")?;
            // Bounded steps (each one transaction) until nothing is left.
            // Every step also sweeps one block-file directory: at least one step per
            // directory, so all are swept.
            let mut stats = GcStats::default();
            for step in 1usize.. {
                let got = writer.gc(GC_STEP).context(
                    "garbage collection failed: stop the node using this data dir and retry",
                )?;
                stats.blocks_deleted += got.blocks_deleted;
                stats.bytes_freed += got.bytes_freed;
                stats.cids_deleted += got.cids_deleted;
                stats.files_swept += got.files_swept;
                if !got.more && step >= shoal_store::FILE_DIRS {
                    break;
                }
            }
            render::gc(&mut out, &stats, json)?;
        }
        Command::Export { cids, output } => export(&path, &cids, &output)?,
        Command::Import { file } => {
            let (moved, pinned) = import(&path, &args.data_dir, &file)?;
            render::imported(&mut out, &moved, &pinned, json)?;
        }
    }
    out.flush()?;
    Ok(())
}

/// `shoal store export`: the CAR goes to a file (removed again if the export fails) or stdout.
fn export(path: &Path, cids: &[String], output: &Path) -> anyhow::Result<()> {
    let roots = cids
        .iter()
        .map(|c| {
            c.parse::<Cid>().map_err(|e| {
                anyhow::anyhow!("`{c}` is not a CID ({e}): copy one from `shoal blobs ls`")
            })
        })
        .collect::<anyhow::Result<Vec<Cid>>>()?;
    let reader = open(path)?;
    let to_stdout = output == Path::new("-");
    let mut progress = Progress::new("export", Unit::Bytes, None, Progress::wanted(to_stdout));
    let sink: Box<dyn Write> = if to_stdout {
        Box::new(std::io::BufWriter::new(std::io::stdout().lock()))
    } else {
        let file = std::fs::File::create(output)
            .with_context(|| format!("cannot create {}", output.display()))?;
        Box::new(std::io::BufWriter::new(file))
    };
    let result = shoal_store::dag::export(&reader, &roots, sink, |n| progress.add(n));
    progress.finish();
    match result {
        Ok((_, moved)) => {
            eprintln!(
                "exported {} block(s), {} to {}",
                moved.blocks,
                human_bytes(moved.bytes),
                if to_stdout {
                    "stdout".to_string()
                } else {
                    output.display().to_string()
                }
            );
            Ok(())
        }
        Err(e) => {
            if !to_stdout {
                let _ = std::fs::remove_file(output);
            }
            Err(anyhow::Error::new(e).context("cannot export: nothing was written"))
        }
    }
}

/// `shoal store import`: checks the whole file, then stores it (the writer lock refuses it while
/// a node uses the data dir).
fn import(
    path: &Path,
    data_dir: &Path,
    file: &Path,
) -> anyhow::Result<(shoal_store::dag::Moved, Vec<shoal_store::dag::Pinned>)> {
    let size = std::fs::metadata(file)
        .with_context(|| format!("cannot read {}", file.display()))?
        .len();
    let store = open_writable(path, data_dir, "import")?;
    let mut writer = store
        .writer()
        .context("cannot take the store's writer: is a node using this data dir?")?;
    // Two passes over the file: checking, then storing.
    let mut progress = Progress::new(
        "import",
        Unit::Bytes,
        Some(2 * size),
        Progress::wanted(false),
    );
    let result = shoal_store::dag::import(
        &mut writer,
        || std::fs::File::open(file).map(std::io::BufReader::new),
        |n| progress.add(n),
    );
    progress.finish();
    result.with_context(|| format!("cannot import {}: nothing was imported", file.display()))
}

/// The store opened for writing, or an error saying to stop the node that holds it.
fn open_writable(path: &Path, data_dir: &Path, what: &str) -> anyhow::Result<Store> {
    match Store::open(&path_checked(path)?, StoreConfig::default()) {
        Ok(store) => Ok(store),
        Err(shoal_store::Error::Locked { pid, .. }) => anyhow::bail!(
            "data dir {} is in use by {}: stop the node first, then {what} again (read-only \
             commands work meanwhile)",
            data_dir.display(),
            holder(pid)
        ),
        Err(e) => Err(e).with_context(|| format!("cannot open {} for writing", path.display())),
    }
}

/// The store file, or an error saying which data dir has none.
fn path_checked(path: &Path) -> anyhow::Result<PathBuf> {
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    let dir = path.parent().unwrap_or(path);
    anyhow::bail!(
        "no store in {}: give the data dir of a node with --data-dir (default ./shoal-data)",
        dir.display()
    )
}

/// A read-only reader on the store file.
fn open(path: &Path) -> anyhow::Result<shoal_store::Reader> {
    let store = Store::open_read_only(&path_checked(path)?)
        .with_context(|| format!("cannot open {} read-only", path.display()))?;
    store
        .reader()
        .with_context(|| format!("cannot read {}", path.display()))
}

/// Who holds a data dir's writer lock, for messages: `process 1234` or `another process`.
pub(crate) fn holder(pid: Option<u32>) -> String {
    match pid {
        Some(pid) => format!("another process (pid {pid})"),
        None => "another process".to_string(),
    }
}

fn no_such_source(source: &SourceId) -> String {
    format!("no source {source} in this store: `shoal store streams` lists them")
}

/// Streams a source's events as NDJSON (bounded memory: the store's iterator reads leaf by
/// leaf).
fn events(
    out: &mut impl Write,
    reader: &shoal_store::Reader,
    source: SourceId,
    from: Option<u64>,
    to: Option<u64>,
) -> anyhow::Result<()> {
    let sources = reader.sources().context("cannot list the sources")?;
    let info = sources
        .iter()
        .find(|s| s.source == source)
        .with_context(|| no_such_source(&source))?;
    let from = from.unwrap_or(0);
    let to = to.unwrap_or(info.last_offset).min(info.last_offset);
    if from > to {
        return Ok(());
    }
    let events = reader
        .events(&source, from..=to, &EventFilter::default(), false)
        .with_context(|| format!("cannot read the events of {source}"))?;
    for event in events {
        let event = event.with_context(|| format!("cannot read the events of {source}"))?;
        serde_json::to_writer(&mut *out, &event)?;
        out.write_all(b"\n")?;
    }
    Ok(())
}
