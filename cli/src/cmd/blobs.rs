//! `shoal blobs`: put, get, cat, ls and rm blobs on a running node (`/api/v1/blobs`).
//!
//! Transfers are streamed both ways (a file is never read whole into memory). On a terminal,
//! `put` and `get` draw one progress line on stderr (bytes, rate, ETA), redrawn at most 10 times
//! a second; piped or redirected stderr gets nothing but errors, so scripts see clean output.
//! `get` and `cat` take a CID or a name (`PUT /api/v1/blobs/names/<name>`).

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result};
use futures::StreamExt;
use serde_json::Value;

use crate::client::{block_on, Client, NodeArgs};
use crate::output::human_bytes;
use crate::progress::{Progress, Unit};

/// Arguments of `shoal blobs`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    remote: NodeArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Store a file as a blob; prints its CID.
    Put {
        /// The file to store (streamed, never read whole into memory).
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// Also name the blob swarm-wide (the latest naming wins).
        #[arg(long)]
        name: Option<String>,
        /// Content type kept with the blob. [default: none]
        #[arg(long, value_name = "TYPE")]
        mime: Option<String>,
        /// Wait until N nodes in all (this one included) hold the blob pinned, so it survives
        /// the loss of N - 1 of them; after the node's replica timeout the put returns with the
        /// count reached and replication goes on. [default: the node's blob-replicas, 1]
        #[arg(long, value_name = "N")]
        replicas: Option<u32>,
    },
    /// Download a blob (by CID or name) into a file, or to stdout without -o.
    Get {
        /// The blob's CID (from `put` or `ls`) or a name given with `put --name`.
        #[arg(value_name = "CID|NAME")]
        blob: String,
        /// Write the blob into FILE (created or truncated) instead of stdout.
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Write a blob (by CID or name) to stdout.
    Cat {
        /// The blob's CID (from `put` or `ls`) or a name given with `put --name`.
        #[arg(value_name = "CID|NAME")]
        blob: String,
    },
    /// List the blobs stored on the node (sizes human-readable; bytes with --json).
    Ls,
    /// Delete a blob (its chunks are freed unless another blob uses them).
    Rm {
        /// The blob's CID (see `shoal blobs ls`); names are not accepted, so a name that
        /// now points elsewhere never deletes the wrong blob.
        #[arg(value_name = "CID")]
        cid: String,
    },
}

pub fn run(args: Args) -> Result<()> {
    block_on(async {
        let client = Client::new(&args.remote.node)?;
        match args.command {
            Command::Put {
                file,
                name,
                mime,
                replicas,
            } => put(&client, file, name, mime, replicas, args.remote.json).await,
            Command::Get { blob, output } => get(&client, &blob, output, true).await,
            Command::Cat { blob } => get(&client, &blob, None, false).await,
            Command::Ls => ls(&client, args.remote.json).await,
            Command::Rm { cid } => {
                let path = format!("/api/v1/blobs/{}", encode(&cid));
                client
                    .send_request(client.request(reqwest::Method::DELETE, &path), &path)
                    .await?;
                Ok(())
            }
        }
    })
}

/// Path of a blob by CID, or by name when `blob` is not a CID.
fn blob_path(blob: &str) -> String {
    let is_cid = blob.len() > 40
        && blob.starts_with('b')
        && blob
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if is_cid {
        format!("/api/v1/blobs/{blob}")
    } else {
        format!("/api/v1/blobs/names/{}", encode(blob))
    }
}

/// Percent-encodes everything but unreserved characters (a name may contain `/` or spaces).
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn put(
    client: &Client,
    file: PathBuf,
    name: Option<String>,
    mime: Option<String>,
    replicas: Option<u32>,
    json: bool,
) -> Result<()> {
    let f = tokio::fs::File::open(&file)
        .await
        .with_context(|| format!("cannot open {}", file.display()))?;
    let size = f.metadata().await.ok().map(|m| m.len());
    let mut progress = Progress::new("put", Unit::Bytes, size, Progress::wanted(false));
    let counter = progress.counter();
    // 256 KiB reads: large enough for few syscalls, small enough to stay streamed.
    let stream = futures::stream::unfold(f, |mut f| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 256 << 10];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(buf), f))
            }
            Err(e) => Some((Err(e), f)),
        }
    })
    .inspect(move |piece| {
        if let Ok(p) = piece {
            counter.add(p.len() as u64);
        }
    });
    let mut query = Vec::new();
    if let Some(n) = &name {
        query.push(format!("name={}", encode(n)));
    }
    if let Some(n) = replicas {
        query.push(format!("replicas={n}"));
    }
    let mut path = "/api/v1/blobs".to_string();
    if !query.is_empty() {
        path.push('?');
        path.push_str(&query.join("&"));
    }
    let mut req = client
        .request(reqwest::Method::POST, &path)
        .body(reqwest::Body::wrap_stream(stream));
    if let Some(size) = size {
        req = req.header(reqwest::header::CONTENT_LENGTH, size);
    }
    if let Some(m) = &mime {
        req = req.header(reqwest::header::CONTENT_TYPE, m.as_str());
    }
    let send = client.send_request(req, &path);
    let resp = progress.drive(send).await?;
    progress.finish();
    let accepted = resp.status() == reqwest::StatusCode::ACCEPTED;
    let answer: Value = resp.json().await.context("the node did not answer JSON")?;
    let cid = answer["cid"].as_str().unwrap_or_default().to_string();
    if accepted {
        // 202: stored here, but fewer nodes than asked hold it yet.
        let asked = replicas.map_or(String::new(), |n| format!(" of the {n} asked for"));
        eprintln!(
            "warning: {} node(s){asked} hold the blob so far; the node goes on replicating it \
             (`shoal blobs ls` shows the count)",
            answer["replicas"].as_u64().unwrap_or(1),
        );
    }
    if let Some(n) = &name {
        let name_path = format!("/api/v1/blobs/names/{}", encode(n));
        let body = serde_json::json!({ "cid": cid });
        client
            .send_request(
                client.request(reqwest::Method::PUT, &name_path).json(&body),
                &name_path,
            )
            .await?;
    }
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{answer}")?;
    } else {
        writeln!(out, "{cid}")?;
    }
    Ok(())
}

async fn get(client: &Client, blob: &str, output: Option<PathBuf>, show: bool) -> Result<()> {
    let path = blob_path(blob);
    let resp = client
        .send_request(client.request(reqwest::Method::GET, &path), &path)
        .await?;
    let size = resp.content_length();
    let shown = show && Progress::wanted(output.is_none());
    let mut progress = Progress::new("get", Unit::Bytes, size, shown);
    let counter = progress.counter();
    let mut sink: Box<dyn Write> = match &output {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
        )),
        None => Box::new(std::io::stdout().lock()),
    };
    let mut stream = resp.bytes_stream();
    let copy = async {
        while let Some(piece) = stream.next().await {
            let piece = piece.context("the download broke off; run the command again to resume")?;
            sink.write_all(&piece)?;
            counter.add(piece.len() as u64);
        }
        sink.flush()?;
        Ok::<(), anyhow::Error>(())
    };
    progress.drive(copy).await?;
    progress.finish();
    Ok(())
}

async fn ls(client: &Client, json: bool) -> Result<()> {
    let list = client.get_json("/api/v1/blobs").await?;
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{list}")?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<62} {:>10} {:<8} {:<6} {:>8} NAME",
        "CID", "SIZE", "COMPLETE", "PINNED", "REPLICAS"
    )?;
    for b in list.as_array().into_iter().flatten() {
        writeln!(
            out,
            "{:<62} {:>10} {:<8} {:<6} {:>8} {}",
            b["cid"].as_str().unwrap_or(""),
            human_bytes(b["size"].as_u64().unwrap_or(0)),
            b["complete"].as_bool().unwrap_or(false),
            b["pinned"].as_bool().unwrap_or(false),
            b["replicas"].as_u64().unwrap_or(0),
            b["name"].as_str().unwrap_or("")
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_cids_route_differently() {
        let cid = "bafyreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy";
        assert_eq!(blob_path(cid), format!("/api/v1/blobs/{cid}"));
        assert_eq!(
            blob_path("my file/v2"),
            "/api/v1/blobs/names/my%20file%2Fv2"
        );
    }
}
