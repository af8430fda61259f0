//! `shoal events offsets|publish|query|subscribe|dump|restore`: the event service of a running node, over its
//! HTTP API (`--node`, default the local API).
//!
//! Publish takes one event from arguments (`<semantics> <name> <payload-json> [--tag T]...`) or
//! many as NDJSON (`--file FILE`, `--file -` or no arguments for stdin), sent in batches; each
//! batch is one request, stored whole or not at all. Query and subscribe print what the node
//! streams, less shoal's own `shoal.*` events unless asked (`--internal`); subscribe runs until
//! interrupted (Ctrl-C) or the node goes away. Bounds: `--after` is exclusive (the API's
//! `lowerBound`), `--to` inclusive, like `store events --from/--to`'s inclusive range.
//! `--tag` (repeatable) and `--since`/`--until` (inclusive, RFC 3339 or µs) become the API's
//! filter extensions `tags`, `fromTime`, `toTime`, added to every filter. `dump` and `restore`
//! stream a CAR file to and from the node (`/api/v1/events/dump|restore`), with a progress bar
//! in bytes.

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use std::io::BufRead;

use crate::client::{block_on, Client, NodeArgs};
use crate::output::{Format, Out};
use crate::progress::{Progress, Unit};

/// Arguments of `shoal events`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    remote: NodeArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Highest offset stored per source.
    Offsets,
    /// Publish one event from arguments, or many as NDJSON from a file or stdin.
    Publish(PublishArgs),
    /// Stored events within bounds, in the chosen order; ends after the last one.
    Query(QueryArgs),
    /// Stored events above a lower bound, then new ones as they come; runs until interrupted.
    Subscribe(SubscribeArgs),
    /// Every source's signed head and tree blocks, as a CAR file (a backup; see `restore`).
    Dump(DumpArgs),
    /// Imports a dump as if it had been replicated (signatures and hashes checked); returns
    /// once the restored events are queryable.
    Restore(RestoreArgs),
}

#[derive(clap::Args)]
struct DumpArgs {
    /// Where to write the dump; default stdout.
    #[arg(long, short)]
    output: Option<std::path::PathBuf>,
}

#[derive(clap::Args)]
struct RestoreArgs {
    /// A file written by `shoal events dump`.
    file: std::path::PathBuf,
}

#[derive(clap::Args)]
struct PublishArgs {
    /// Stream semantics of the event (with NAME and PAYLOAD; omit all three to read NDJSON).
    #[arg(requires_all = ["name", "payload"])]
    semantics: Option<String>,
    /// Stream name of the event.
    name: Option<String>,
    /// Payload as JSON text, e.g. '{"temp":21.5}' or '"text"'.
    payload: Option<String>,
    /// A tag for the event (repeatable); with NDJSON input, added to every event.
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// NDJSON file of events (`{"semantics","name","payload","tags"?}` per line); `-` = stdin.
    #[arg(long, short, conflicts_with = "semantics")]
    file: Option<String>,
    /// Events per request when publishing NDJSON (each request is stored whole or not at all).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    batch: u64,
}

#[derive(clap::Args)]
struct FilterArgs {
    /// Only events of this semantics.
    #[arg(long)]
    semantics: Option<String>,
    /// Only events of this stream name.
    #[arg(long)]
    name: Option<String>,
    /// Only events of this source.
    #[arg(long)]
    source: Option<String>,
    /// Subscriptions as a JSON list, e.g. '[{"semantics":"a"},{"name":"b"}]' (instead of the
    /// three flags above).
    #[arg(long, conflicts_with_all = ["semantics", "name", "source"])]
    subscriptions: Option<String>,
    /// Only events carrying this tag (repeatable: every one); with --subscriptions, added to
    /// each filter of the list.
    #[arg(long = "tag", value_name = "TAG")]
    tags: Vec<String>,
    /// Only events stamped at or after this time: RFC 3339 (2026-11-23T15:04:05Z) or
    /// microseconds since the epoch; with --subscriptions, added to each filter.
    #[arg(long, value_name = "TIME")]
    since: Option<String>,
    /// Only events stamped at or before this time (inclusive), like --since.
    #[arg(long, value_name = "TIME")]
    until: Option<String>,
    /// Only events after these offsets (exclusive): an offset map as JSON, e.g.
    /// '{"<source>":41}' for offset 42 on; give what a previous run printed last to resume.
    #[arg(long, value_name = "OFFSETS")]
    after: Option<String>,
    /// The old name of --after, exclusive like it (unlike `store events --from`, inclusive):
    /// still accepted, with a warning.
    #[arg(long, value_name = "OFFSETS", hide = true, conflicts_with = "after")]
    from: Option<String>,
    /// Also show shoal's own events (semantics `shoal.*`, e.g. `shoal.blob-name` for blob
    /// names), hidden by default; a filter that names a `shoal.` semantics shows them too.
    #[arg(long)]
    internal: bool,
}

impl FilterArgs {
    /// Whether events of `shoal.*` semantics are printed.
    fn shows_internal(&self) -> bool {
        self.internal
            || self
                .semantics
                .as_deref()
                .is_some_and(|s| s.starts_with(INTERNAL_PREFIX))
            || self
                .subscriptions
                .as_deref()
                .is_some_and(|s| s.contains(INTERNAL_PREFIX))
    }
}

/// Semantics prefix of the events the node writes for itself (blob names, ...).
const INTERNAL_PREFIX: &str = "shoal.";

/// Whether an NDJSON event line is one of shoal's own (`stream.semantics` = `shoal.*`).
fn is_internal(line: &str) -> bool {
    // Cheap test first: most lines do not mention the prefix at all.
    if !line.contains("\"shoal.") {
        return false;
    }
    serde_json::from_str::<Value>(line).is_ok_and(|v| {
        v["stream"]["semantics"]
            .as_str()
            .is_some_and(|s| s.starts_with(INTERNAL_PREFIX))
    })
}

#[derive(clap::Args)]
struct QueryArgs {
    #[command(flatten)]
    filter: FilterArgs,
    /// Inclusive upper bound, an offset map as JSON; default: everything stored now.
    #[arg(long)]
    to: Option<String>,
    /// Order of the result.
    #[arg(long, default_value = "lamport",
          value_parser = ["lamport", "lamport-reverse", "source-ordered"])]
    order: String,
}

#[derive(clap::Args)]
struct SubscribeArgs {
    #[command(flatten)]
    filter: FilterArgs,
}

pub fn run(args: Args) -> Result<()> {
    block_on(run_async(args))
}

async fn run_async(args: Args) -> Result<()> {
    let client = Client::new(&args.remote.node)?;
    let format = Format::from_json_flag(args.remote.json);
    match args.command {
        Command::Offsets => {
            let offsets = client.get_json("/api/v1/events/offsets").await?;
            let mut out = Out::new(format, false);
            out.offsets(&offsets)?;
            out.flush()
        }
        Command::Publish(p) => publish(&client, format, p).await,
        Command::Query(q) => query(&client, format, q).await,
        Command::Subscribe(s) => subscribe(&client, format, s).await,
        Command::Dump(d) => dump(&client, d).await,
        Command::Restore(r) => restore(&client, format, r).await,
    }
}

const DUMP_PATH: &str = "/api/v1/events/dump";
const RESTORE_PATH: &str = "/api/v1/events/restore";

async fn dump(client: &Client, args: DumpArgs) -> Result<()> {
    use futures::StreamExt;
    use std::io::Write;
    let resp = client
        .send_request(client.request(reqwest::Method::GET, DUMP_PATH), DUMP_PATH)
        .await?;
    let mut progress = Progress::new(
        "dump",
        Unit::Bytes,
        None,
        Progress::wanted(args.output.is_none()),
    );
    let counter = progress.counter();
    let mut sink: Box<dyn Write> = match &args.output {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
        )),
        None => Box::new(std::io::stdout().lock()),
    };
    let mut stream = resp.bytes_stream();
    let copy = async {
        while let Some(piece) = stream.next().await {
            let piece = piece.context(
                "the dump broke off (the node's log says why); the file is incomplete: run the \
                 command again",
            )?;
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

async fn restore(client: &Client, format: Format, args: RestoreArgs) -> Result<()> {
    use futures::StreamExt;
    let path = &args.file;
    let f = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("cannot open {}", path.display()))?;
    let size = f.metadata().await.ok().map(|m| m.len());
    let mut progress = Progress::new("restore", Unit::Bytes, size, Progress::wanted(false));
    let counter = progress.counter();
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
    let mut req = client
        .request(reqwest::Method::POST, RESTORE_PATH)
        .body(reqwest::Body::wrap_stream(stream));
    if let Some(size) = size {
        req = req.header(reqwest::header::CONTENT_LENGTH, size);
    }
    let resp = progress
        .drive(client.send_request(req, RESTORE_PATH))
        .await?;
    progress.finish();
    let answer: Value = resp.json().await.context("the node did not answer JSON")?;
    if format == Format::Json {
        println!("{answer}");
        return Ok(());
    }
    for s in answer["sources"].as_array().into_iter().flatten() {
        println!(
            "{} up to offset {}: {}",
            s["source"].as_str().unwrap_or(""),
            s["offset"],
            s["outcome"].as_str().unwrap_or("")
        );
    }
    println!(
        "{} blocks, {} bytes read",
        answer["blocks"], answer["bytes"]
    );
    Ok(())
}

async fn publish(client: &Client, format: Format, args: PublishArgs) -> Result<()> {
    let mut out = Out::new(format, false);
    if let (Some(semantics), Some(name), Some(payload)) = (args.semantics, args.name, args.payload)
    {
        let payload: Value = serde_json::from_str(&payload).with_context(|| {
            format!("PAYLOAD `{payload}` is not JSON; quote text as JSON, e.g. '\"hello\"'")
        })?;
        let mut event = json!({"semantics": semantics, "name": name, "payload": payload});
        if !args.tags.is_empty() {
            event["tags"] = json!(args.tags);
        }
        let stamps = send_batch(client, vec![event]).await?;
        out.published(&stamps, 1)?;
        return out.flush();
    }
    // No event given and nothing piped in: say what to type instead of waiting for input the
    // user does not know is expected (`--file -` asks for the terminal on purpose).
    if args.file.is_none() && std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        bail!(
            "no event given: `shoal events publish SEMANTICS NAME PAYLOAD` (e.g. com.example \
             robot1 '{{\"temp\":21}}'), or NDJSON with --file FILE or on a pipe"
        );
    }
    let input: Box<dyn BufRead> = match args.file.as_deref() {
        None | Some("-") => Box::new(std::io::stdin().lock()),
        Some(path) => Box::new(std::io::BufReader::new(
            std::fs::File::open(path).with_context(|| format!("cannot open {path}"))?,
        )),
    };
    let source = match args.file.as_deref() {
        None | Some("-") => "stdin".to_string(),
        Some(path) => path.to_string(),
    };
    let batch_size = usize::try_from(args.batch).unwrap_or(1000);
    let mut batch = Vec::with_capacity(batch_size.min(10_000));
    let mut total = 0usize;
    for (i, line) in input.lines().enumerate() {
        let line = line.with_context(|| format!("cannot read {source}"))?;
        if line.trim().is_empty() {
            continue;
        }
        let mut event: Value = serde_json::from_str(&line)
            .with_context(|| format!("{source} line {}: not JSON", i + 1))?;
        let Some(obj) = event.as_object_mut() else {
            bail!(
                "{source} line {}: expected an object {{\"semantics\",\"name\",\"payload\"}}",
                i + 1
            );
        };
        if !args.tags.is_empty() {
            let mut tags: Vec<Value> = obj
                .get("tags")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            tags.extend(args.tags.iter().map(|t| json!(t)));
            obj.insert("tags".into(), Value::Array(tags));
        }
        batch.push(event);
        if batch.len() >= batch_size {
            total += flush_batch(client, &mut out, &mut batch, total).await?;
        }
    }
    if !batch.is_empty() {
        total += flush_batch(client, &mut out, &mut batch, total).await?;
    }
    if total == 0 {
        bail!("no events in {source}: expected one JSON object per line");
    }
    out.flush()
}

/// Sends one batch, printing its stamps; says how many were stored before a failure.
async fn flush_batch(
    client: &Client,
    out: &mut Out,
    batch: &mut Vec<Value>,
    stored_before: usize,
) -> Result<usize> {
    let events = std::mem::take(batch);
    let n = events.len();
    let stamps = send_batch(client, events).await.with_context(|| {
        format!(
            "{stored_before} events were stored before this batch of {n} failed (it stored none)"
        )
    })?;
    out.published(&stamps, n)?;
    Ok(n)
}

async fn send_batch(client: &Client, events: Vec<Value>) -> Result<Vec<Value>> {
    let answer = client
        .post_json("/api/v1/events/publish", &json!({ "data": events }))
        .await?;
    Ok(answer["data"].as_array().cloned().unwrap_or_default())
}

/// The `subscriptions` list and `lowerBound` of a query or subscription.
fn filter_body(f: &FilterArgs) -> Result<(Value, Option<Value>)> {
    let subscriptions = match &f.subscriptions {
        Some(text) => {
            let v: Value = serde_json::from_str(text)
                .context("--subscriptions is not JSON (expected a list of filters)")?;
            if !v.is_array() {
                bail!("--subscriptions must be a JSON list, e.g. '[{{\"semantics\":\"a\"}}]'");
            }
            v
        }
        None => {
            let mut one = serde_json::Map::new();
            for (k, v) in [
                ("semantics", &f.semantics),
                ("name", &f.name),
                ("source", &f.source),
            ] {
                if let Some(v) = v {
                    one.insert(k.into(), json!(v));
                }
            }
            json!([one])
        }
    };
    let subscriptions = with_tags_and_time(subscriptions, f)?;
    if f.from.is_some() {
        eprintln!(
            "shoal: warning: --from is exclusive here (events after those offsets), unlike \
             `store events --from`; use --after, which means the same"
        );
    }
    let lower = match (&f.after, &f.from) {
        (Some(t), _) => Some(offset_map("--after", t)?),
        (None, Some(t)) => Some(offset_map("--from", t)?),
        (None, None) => None,
    };
    Ok((subscriptions, lower))
}

/// Adds `--tag`, `--since` and `--until` to every filter of `subscriptions` (the API's
/// `tags`, `fromTime`, `toTime`; a filter's own tags are kept, its own bounds narrowed).
fn with_tags_and_time(mut subscriptions: Value, f: &FilterArgs) -> Result<Value> {
    let since = f
        .since
        .as_deref()
        .map(|t| micros("--since", t))
        .transpose()?;
    let until = f
        .until
        .as_deref()
        .map(|t| micros("--until", t))
        .transpose()?;
    if let (Some(s), Some(u)) = (since, until) {
        if s > u {
            bail!("--since ({s} µs) is after --until ({u} µs): nothing could match");
        }
    }
    let Some(list) = subscriptions.as_array_mut() else {
        return Ok(subscriptions);
    };
    for filter in list.iter_mut() {
        let Some(obj) = filter.as_object_mut() else {
            // The node names the bad entry in its answer.
            continue;
        };
        if !f.tags.is_empty() {
            let mut tags: Vec<Value> = obj
                .get("tags")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            tags.extend(f.tags.iter().map(|t| json!(t)));
            obj.insert("tags".into(), Value::Array(tags));
        }
        if let Some(s) = since {
            let own = obj.get("fromTime").and_then(Value::as_u64).unwrap_or(0);
            obj.insert("fromTime".into(), json!(own.max(s)));
        }
        if let Some(u) = until {
            let own = obj
                .get("toTime")
                .and_then(Value::as_u64)
                .unwrap_or(u64::MAX);
            obj.insert("toTime".into(), json!(own.min(u)));
        }
    }
    Ok(subscriptions)
}

/// A `--since`/`--until` value: RFC 3339 or microseconds since the epoch.
fn micros(flag: &str, text: &str) -> Result<u64> {
    if let Ok(us) = text.trim().parse::<u64>() {
        return Ok(us);
    }
    let us = shoal_engine::console::parse_rfc3339(text.trim())
        .map_err(|e| anyhow::anyhow!("{flag} `{text}`: {e}, or microseconds since the epoch"))?;
    u64::try_from(us).map_err(|_| anyhow::anyhow!("{flag} `{text}` is before 1970"))
}

fn offset_map(flag: &str, text: &str) -> Result<Value> {
    let v: Value = serde_json::from_str(text).with_context(|| {
        format!("{flag} is not JSON: expected an offset map, e.g. '{{\"<source>\":41}}'")
    })?;
    if !v.is_object() {
        bail!("{flag} must be an offset map (a JSON object), e.g. '{{\"<source>\":41}}'");
    }
    Ok(v)
}

async fn query(client: &Client, format: Format, args: QueryArgs) -> Result<()> {
    let (subscriptions, lower) = filter_body(&args.filter)?;
    let upper = match args.to.as_deref() {
        Some(t) => offset_map("--to", t)?,
        None => client.get_json("/api/v1/events/offsets").await?,
    };
    let mut body =
        json!({"upperBound": upper, "subscriptions": subscriptions, "order": args.order});
    if let Some(lower) = lower {
        body["lowerBound"] = lower;
    }
    let mut lines = client.post_lines("/api/v1/events/query", &body).await?;
    let mut out = Out::new(format, false);
    let mut progress = Progress::new("query", Unit::Events, None, Progress::wanted(true));
    let internal = args.filter.shows_internal();
    while let Some(line) = lines.next_line().await? {
        progress.add(1);
        if internal || !is_internal(&line) {
            out.event(&line)?;
        }
    }
    progress.finish();
    out.flush()
}

async fn subscribe(client: &Client, format: Format, args: SubscribeArgs) -> Result<()> {
    let (subscriptions, lower) = filter_body(&args.filter)?;
    let mut body = json!({ "subscriptions": subscriptions });
    if let Some(lower) = lower {
        body["lowerBound"] = lower;
    }
    let mut lines = client.post_lines("/api/v1/events/subscribe", &body).await?;
    let mut out = Out::new(format, true);
    let internal = args.filter.shows_internal();
    while let Some(line) = lines.next_line().await? {
        if internal || !is_internal(&line) {
            out.event(&line)?;
        }
    }
    bail!("the node closed the subscription (it may have shut down)")
}
