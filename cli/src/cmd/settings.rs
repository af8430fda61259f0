//! `shoal settings get|schema|set|unset SCOPE`: settings of an app (its id) or of the node
//! (`node`), on a running node (`/api/v1/settings`). `set` takes JSON inline or `@FILE`; an
//! invalid value exits 1 with the node's message, which names the failing JSON path. `set` and
//! `unset` take `--to SOURCE|all` to record the change for other nodes (their schema decides).

use anyhow::{Context, Result};
use serde_json::Value;

use crate::client::{block_on, Client, NodeArgs};
use crate::cmd::apps::{recorded, To};

/// Arguments of `shoal settings`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    remote: NodeArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Print the settings in force (stored, else the app's defaults).
    Get { scope: String },
    /// Print the JSON Schema of a scope.
    Schema { scope: String },
    /// Validate and store settings; a running app restarts with them.
    Set {
        scope: String,
        /// The settings as JSON, or @FILE to read them from a file.
        #[arg(value_name = "JSON|@FILE")]
        value: String,
        #[command(flatten)]
        to: To,
    },
    /// Drop stored settings: back to the defaults.
    Unset {
        scope: String,
        #[command(flatten)]
        to: To,
    },
}

pub fn run(args: Args) -> Result<()> {
    block_on(async {
        let client = Client::new(&args.remote.node)?;
        let json = args.remote.json;
        match args.command {
            Command::Get { scope } => {
                print(
                    &client,
                    &format!("/api/v1/settings/{}", encode(&scope)),
                    json,
                )
                .await
            }
            Command::Schema { scope } => {
                print(
                    &client,
                    &format!("/api/v1/settings/{}/schema", encode(&scope)),
                    json,
                )
                .await
            }
            Command::Set { scope, value, to } => {
                let text = match value.strip_prefix('@') {
                    Some(file) => std::fs::read_to_string(file)
                        .with_context(|| format!("cannot read {file}"))?,
                    None => value,
                };
                let v: Value = serde_json::from_str(&text).with_context(|| {
                    "the settings are not JSON: give e.g. '{\"n\": 1}' or @settings.json"
                })?;
                let path = with_to(format!("/api/v1/settings/{}", encode(&scope)), &to);
                let resp = client
                    .send_request(client.request(reqwest::Method::PUT, &path).json(&v), &path)
                    .await?;
                recorded(resp, &to, json).await
            }
            Command::Unset { scope, to } => {
                let path = with_to(format!("/api/v1/settings/{}", encode(&scope)), &to);
                let resp = client
                    .send_request(client.request(reqwest::Method::DELETE, &path), &path)
                    .await?;
                recorded(resp, &to, json).await
            }
        }
    })
}

fn with_to(path: String, to: &To) -> String {
    match to.to {
        Some(_) => format!("{path}?{}", to.query()),
        None => path,
    }
}

async fn print(client: &Client, path: &str, json: bool) -> Result<()> {
    let v = client.get_json(path).await?;
    if json {
        println!("{v}");
    } else {
        println!("{}", serde_json::to_string_pretty(&v)?);
    }
    Ok(())
}

/// Percent-encodes everything but unreserved characters.
pub fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
