//! Presentation of the store inspector's views: human-readable text, JSON (`--json`) and
//! Graphviz (`tree --dot`). Pure functions from the store library's view types to a writer;
//! nothing here reads the store.

use std::io::{self, Write};

use serde::Serialize;

use crate::output::human_bytes as bytes;
use shoal_store::{
    BlockView, GcStats, NodeShape, ProblemKind, SourceInfo, Stats, TreeShape, VerifyReport,
};

/// Longest summary shown per node in the text view (`--json` has them whole).
const SUMMARY_CHARS: usize = 160;

/// Deepest indentation of the text tree view.
const MAX_INDENT: usize = 12;

fn json(out: &mut impl Write, value: &impl Serialize) -> io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, value)?;
    writeln!(out)
}

/// Serializable form of a source (the library's `SourceInfo` is a plain struct).
#[derive(Serialize)]
struct StreamJson<'a> {
    source: &'a str,
    root: String,
    last_offset: u64,
    count: u64,
    bytes: u64,
}

pub fn streams(out: &mut impl Write, sources: &[SourceInfo], as_json: bool) -> io::Result<()> {
    if as_json {
        let rows: Vec<StreamJson> = sources
            .iter()
            .map(|s| StreamJson {
                source: s.source.as_str(),
                root: s.root.to_string(),
                last_offset: s.last_offset,
                count: s.count,
                bytes: s.bytes,
            })
            .collect();
        return json(out, &rows);
    }
    if sources.is_empty() {
        return writeln!(out, "no sources in this store");
    }
    let width = sources
        .iter()
        .map(|s| s.source.as_str().len())
        .max()
        .unwrap_or(0)
        .max("SOURCE".len());
    writeln!(
        out,
        "{:<width$}  {:>10}  {:>11}  {:>10}  ROOT",
        "SOURCE", "EVENTS", "LAST OFFSET", "BYTES"
    )?;
    for s in sources {
        writeln!(
            out,
            "{:<width$}  {:>10}  {:>11}  {:>10}  {}",
            s.source.as_str(),
            s.count,
            s.last_offset,
            bytes(s.bytes),
            s.root
        )?;
    }
    Ok(())
}

/// Depth of each node below the root (nodes are in preorder, each names its parent).
fn depths(nodes: &[NodeShape]) -> Vec<usize> {
    let mut depth = vec![0usize; nodes.len()];
    for (i, node) in nodes.iter().enumerate() {
        if let Some(parent) = node.parent.filter(|p| *p < i) {
            depth[i] = depth[parent] + 1;
        }
    }
    depth
}

fn truncated(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let cut: String = text.chars().take(max).collect();
    format!("{cut}…")
}

fn node_sizes(node: &NodeShape) -> String {
    let mut parts = Vec::new();
    if let Some(block) = node.block_bytes {
        parts.push(format!("block {}", bytes(block)));
    }
    if node.level == 0 {
        parts.push(format!("{} compressed", bytes(node.value_bytes)));
        if let Some(raw) = node.uncompressed_bytes {
            let ratio = raw as f64 / node.value_bytes.max(1) as f64;
            parts.push(format!("{} uncompressed ({ratio:.1}x)", bytes(raw)));
        }
    } else {
        parts.push(format!("subtree values {}", bytes(node.value_bytes)));
    }
    parts.join(", ")
}

fn node_cid(node: &NodeShape) -> String {
    node.cid
        .map_or_else(|| "(inline)".to_string(), |cid| cid.to_string())
}

pub fn tree(out: &mut impl Write, shape: &TreeShape, as_json: bool) -> io::Result<()> {
    if as_json {
        return json(out, shape);
    }
    writeln!(out, "source {}", shape.source)?;
    writeln!(
        out,
        "root {}: {} level(s), {} event(s), {} node(s)",
        shape.root,
        shape.levels,
        shape.count,
        shape.nodes.len()
    )?;
    let depth = depths(&shape.nodes);
    for (node, depth) in shape.nodes.iter().zip(depth) {
        // An unpacked tree is a chain as deep as its appends: cap the indentation there (the
        // `L<level>` label still tells the depth).
        let indent = "  ".repeat(depth.min(MAX_INDENT));
        let kind = if node.level == 0 { "leaf" } else { "branch" };
        let sealed = if node.sealed { "sealed" } else { "unsealed" };
        writeln!(
            out,
            "{indent}{kind} L{} offsets {}..={} ({} events, {sealed}) {}",
            node.level,
            node.first_offset,
            node.last_offset,
            node.count,
            node_cid(node)
        )?;
        writeln!(out, "{indent}  {}", node_sizes(node))?;
        let summary = node.summary.to_string();
        writeln!(
            out,
            "{indent}  summary {}",
            truncated(&summary, SUMMARY_CHARS)
        )?;
    }
    Ok(())
}

/// Graphviz: one box per node, labelled with level, offsets, short CID and sizes.
pub fn tree_dot(out: &mut impl Write, shape: &TreeShape) -> io::Result<()> {
    writeln!(out, "digraph tree {{")?;
    writeln!(out, "  rankdir=TB;")?;
    writeln!(
        out,
        "  node [shape=box, fontname=\"monospace\", fontsize=10];"
    )?;
    writeln!(
        out,
        "  label=\"{} events of {}\\nroot {}\";",
        shape.count,
        dot_escape(shape.source.as_str()),
        shape.root
    )?;
    for node in &shape.nodes {
        let kind = if node.level == 0 { "leaf" } else { "branch" };
        let cid = node_cid(node);
        let short = if cid.len() > 16 {
            format!("…{}", &cid[cid.len() - 12..])
        } else {
            cid
        };
        let style = if node.sealed { "" } else { ", style=dashed" };
        writeln!(
            out,
            "  n{} [label=\"{kind} L{}\\n{}..={} ({})\\n{short}\\n{}\"{style}];",
            node.id,
            node.level,
            node.first_offset,
            node.last_offset,
            node.count,
            dot_escape(&node_sizes(node))
        )?;
    }
    for node in &shape.nodes {
        if let Some(parent) = node.parent {
            writeln!(out, "  n{parent} -> n{};", node.id)?;
        }
    }
    writeln!(out, "}}")
}

fn dot_escape(text: &str) -> String {
    text.replace('\\', "\\\\").replace('"', "\\\"")
}

pub fn block(out: &mut impl Write, view: &BlockView, as_json: bool) -> io::Result<()> {
    if as_json {
        return json(out, view);
    }
    match view {
        BlockView::DagCbor { cid, length, value } => {
            writeln!(out, "block {cid}: dag-cbor, {length} bytes")?;
            serde_json::to_writer_pretty(&mut *out, value)?;
            writeln!(out)
        }
        BlockView::DagPb { cid, length, value } => {
            writeln!(out, "block {cid}: dag-pb, {length} bytes")?;
            serde_json::to_writer_pretty(&mut *out, value)?;
            writeln!(out)
        }
        BlockView::Raw { cid, length, hex } => {
            writeln!(out, "block {cid}: raw, {length} bytes")?;
            // 32 bytes (64 hex digits) per line, prefixed with the byte offset.
            for (i, line) in hex.as_bytes().chunks(64).enumerate() {
                writeln!(out, "{:08x}  {}", i * 32, String::from_utf8_lossy(line))?;
            }
            Ok(())
        }
    }
}

pub fn verify(out: &mut impl Write, report: &VerifyReport, as_json: bool) -> io::Result<()> {
    if as_json {
        return json(out, report);
    }
    for problem in &report.problems {
        let what = match &problem.kind {
            ProblemKind::Missing => "missing".to_string(),
            ProblemKind::HashMismatch => "corrupt (bytes do not match the CID)".to_string(),
            ProblemKind::Corrupt(reason) => format!("corrupt ({reason})"),
        };
        writeln!(
            out,
            "{what}: block {} in tree {}",
            problem.cid, problem.alias
        )?;
    }
    let verdict = if report.problems.is_empty() {
        "sound".to_string()
    } else {
        format!("{} problem(s)", report.problems.len())
    };
    writeln!(
        out,
        "checked {} tree(s), {} block(s): {verdict}",
        report.aliases, report.blocks_checked
    )
}

pub fn stats(out: &mut impl Write, stats: &Stats, as_json: bool) -> io::Result<()> {
    if as_json {
        return json(out, stats);
    }
    writeln!(
        out,
        "{} block(s), {}; {} CID row(s); {} alias(es)",
        stats.blocks,
        bytes(stats.bytes),
        stats.cids,
        stats.aliases
    )?;
    if stats.file_blocks > 0 {
        writeln!(
            out,
            "of which {} block(s), {}, are files beside the database",
            stats.file_blocks,
            bytes(stats.file_bytes)
        )?;
    }
    if stats.sources.is_empty() {
        return Ok(());
    }
    let width = stats
        .sources
        .iter()
        .map(|s| s.source.as_str().len())
        .max()
        .unwrap_or(0)
        .max("SOURCE".len());
    writeln!(
        out,
        "{:<width$}  {:>10}  {:>10}  {:>11}  {:>11}",
        "SOURCE", "EVENTS", "BYTES", "BYTES/EVENT", "COMPRESSION"
    )?;
    for s in &stats.sources {
        writeln!(
            out,
            "{:<width$}  {:>10}  {:>10}  {:>11.1}  {:>10.1}x",
            s.source.as_str(),
            s.events,
            bytes(s.bytes),
            s.bytes_per_event,
            s.compression_ratio
        )?;
    }
    Ok(())
}

pub fn gc(out: &mut impl Write, stats: &GcStats, as_json: bool) -> io::Result<()> {
    if as_json {
        return json(out, stats);
    }
    writeln!(
        out,
        "freed {} block(s), {}; {} CID row(s) deleted",
        stats.blocks_deleted,
        bytes(stats.bytes_freed),
        stats.cids_deleted
    )?;
    if stats.files_swept > 0 {
        writeln!(
            out,
            "removed {} block file(s) no row pointed to (left by a crash)",
            stats.files_swept
        )?;
    }
    if stats.more {
        writeln!(out, "more garbage remains: run `shoal store gc` again")?;
    }
    Ok(())
}

pub fn imported(
    out: &mut impl Write,
    moved: &shoal_store::dag::Moved,
    pinned: &[shoal_store::dag::Pinned],
    as_json: bool,
) -> io::Result<()> {
    if as_json {
        return json(
            out,
            &serde_json::json!({"blocks": moved.blocks, "bytes": moved.bytes, "roots": pinned}),
        );
    }
    for p in pinned {
        match p.size {
            Some(size) => writeln!(out, "{} pinned as {} ({size} bytes)", p.root, p.pin)?,
            None => writeln!(out, "{} pinned as {}", p.root, p.pin)?,
        }
    }
    writeln!(
        out,
        "imported {} block(s), {} bytes",
        moved.blocks, moved.bytes
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_human() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 << 20), "3.0 MiB");
        assert_eq!(bytes(3 << 30), "3.0 GiB");
    }

    #[test]
    fn truncation_marks_the_cut() {
        assert_eq!(truncated("abc", 5), "abc");
        assert_eq!(truncated("abcdef", 3), "abc…");
    }
}
