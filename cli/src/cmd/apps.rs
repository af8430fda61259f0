//! `shoal apps`: validate and package app directories (locally), deploy, list, start, stop,
//! restart, undeploy apps on a running node (`/api/v1/apps`) and read an app's log lines (the
//! console service, entries whose `producerName` is the app id).
//!
//! `validate` and `package` need no node: they run the engine's own manifest check, so what
//! passes here passes a deploy. `deploy DIR` packs the directory in memory first.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use serde_json::Value;
use shoal_engine::apps::{manifest::Manifest, package};

use crate::client::{block_on, Client, NodeArgs};
use crate::output::{Format, Out};

/// Arguments of `shoal apps`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    remote: NodeArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Check an app directory's shoal-app.toml and the files it names (no node needed).
    Validate {
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
    /// Validate an app directory and pack it into <id>-<version>.tar.gz (no node needed).
    Package {
        #[arg(value_name = "DIR")]
        dir: PathBuf,
        /// Write the package here. [default: ./<id>-<version>.tar.gz]
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Deploy a package (or an app directory, packed on the fly) to the node and start it;
    /// with --to, record the deployment for other nodes, which fetch the package from the swarm.
    Deploy {
        #[arg(value_name = "PACKAGE|DIR")]
        package: PathBuf,
        /// Deploy without starting it.
        #[arg(long)]
        no_start: bool,
        #[command(flatten)]
        to: To,
    },
    /// List the node's apps: state, pid, restarts.
    Ls {
        /// Every node's apps, as their gossiped status last reported them (NODE column).
        #[arg(long)]
        all: bool,
    },
    /// Start a stopped or failed app.
    Start {
        id: String,
        #[command(flatten)]
        to: To,
    },
    /// Stop an app (SIGTERM, SIGKILL after 10 s); it stays stopped across node restarts.
    Stop {
        id: String,
        #[command(flatten)]
        to: To,
    },
    /// Stop and start an app.
    Restart {
        id: String,
        #[command(flatten)]
        to: To,
    },
    /// Stop an app and remove it; its data/ directory stays unless --purge.
    Undeploy {
        id: String,
        /// Also remove the app's data/ directory and settings.
        #[arg(long)]
        purge: bool,
        #[command(flatten)]
        to: To,
    },
    /// Print an app's log lines (its stdout and stderr), oldest first.
    Logs {
        id: String,
        /// Keep printing new lines as the app writes them.
        #[arg(long, short)]
        follow: bool,
    },
}

/// `--to SOURCE|all`: the swarm-wide form of a command.
#[derive(clap::Args)]
pub struct To {
    /// Record the command for another node (a source id, see `shoal nodes ls`) or for `all`
    /// nodes; each carries it out when it receives it, also after a partition heals.
    #[arg(long, value_name = "SOURCE|all")]
    pub to: Option<String>,
}

impl To {
    /// The `to=` query parameter, if any.
    pub fn query(&self) -> String {
        match &self.to {
            Some(to) => format!("to={}", crate::cmd::settings::encode(to)),
            None => String::new(),
        }
    }
}

fn with_query(path: String, parts: &[String]) -> String {
    let parts: Vec<&str> = parts
        .iter()
        .map(String::as_str)
        .filter(|p| !p.is_empty())
        .collect();
    if parts.is_empty() {
        path
    } else {
        format!("{path}?{}", parts.join("&"))
    }
}

pub fn run(args: Args) -> Result<()> {
    let json = args.remote.json;
    match args.command {
        Command::Validate { dir } => {
            let m = Manifest::load(&dir).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"id": m.id, "version": m.version.to_string(), "kind": m.kind().as_str()})
                );
            } else {
                println!("ok: {} {} ({})", m.id, m.version, m.kind().as_str());
            }
            Ok(())
        }
        Command::Package { dir, output } => {
            let (m, bytes) =
                package::pack(&dir).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
            let out = output.unwrap_or_else(|| PathBuf::from(package::file_name(&m)));
            std::fs::write(&out, &bytes)
                .with_context(|| format!("cannot write {}", out.display()))?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({"id": m.id, "version": m.version.to_string(), "file": out, "bytes": bytes.len()})
                );
            } else {
                println!("{} ({} bytes)", out.display(), bytes.len());
            }
            Ok(())
        }
        command => block_on(remote(command, Client::new(&args.remote.node)?, json)),
    }
}

async fn remote(command: Command, client: Client, json: bool) -> Result<()> {
    match command {
        Command::Validate { .. } | Command::Package { .. } => unreachable_local(),
        Command::Deploy {
            package: path,
            no_start,
            to,
        } => {
            let bytes = if path.is_dir() {
                package::pack(&path)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
                    .1
            } else {
                std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?
            };
            let start = if no_start {
                "start=false".to_string()
            } else {
                String::new()
            };
            let api = with_query("/api/v1/apps".into(), &[to.query(), start]);
            let req = client
                .request(reqwest::Method::POST, &api)
                .header("content-type", "application/gzip")
                .body(bytes);
            let d: Value = client
                .send_request(req, &api)
                .await?
                .json()
                .await
                .context("the node did not answer JSON")?;
            if json {
                println!("{d}");
            } else if let Some(to) = &to.to {
                println!(
                    "deploy of {} {} recorded for {to} (package {}, command {}); \
                     see it run with `shoal apps ls --all`",
                    d["id"].as_str().unwrap_or("?"),
                    d["version"].as_str().unwrap_or("?"),
                    d["package"].as_str().unwrap_or("?"),
                    d["command"].as_str().unwrap_or("?"),
                );
            } else {
                println!(
                    "deployed {} {} (package {})",
                    d["id"].as_str().unwrap_or("?"),
                    d["version"].as_str().unwrap_or("?"),
                    d["package"].as_str().unwrap_or("?")
                );
            }
            Ok(())
        }
        Command::Ls { all } => {
            let api = if all {
                "/api/v1/apps?all=true"
            } else {
                "/api/v1/apps"
            };
            let list = client.get_json(api).await?;
            if json {
                println!("{list}");
                return Ok(());
            }
            let mut out = std::io::stdout().lock();
            if all {
                write!(out, "{:<53} ", "NODE")?;
            }
            writeln!(
                out,
                "{:<32} {:<10} {:<8} {:<17} {:>8} {:>8}",
                "ID", "VERSION", "KIND", "STATE", "PID", "RESTARTS"
            )?;
            for app in list.as_array().into_iter().flatten() {
                if all {
                    write!(out, "{:<53} ", app["node"].as_str().unwrap_or("?"))?;
                }
                writeln!(
                    out,
                    "{:<32} {:<10} {:<8} {:<17} {:>8} {:>8}",
                    app["id"].as_str().unwrap_or("?"),
                    app["version"].as_str().unwrap_or("?"),
                    app["kind"].as_str().unwrap_or("?"),
                    app["state"].as_str().unwrap_or("?"),
                    app["pid"]
                        .as_u64()
                        .map(|p| p.to_string())
                        .unwrap_or_else(|| "-".into()),
                    app["restarts"].as_u64().unwrap_or(0),
                )?;
            }
            Ok(())
        }
        Command::Start { id, to } => action(&client, &id, "start", &to, json).await,
        Command::Stop { id, to } => action(&client, &id, "stop", &to, json).await,
        Command::Restart { id, to } => action(&client, &id, "restart", &to, json).await,
        Command::Undeploy { id, purge, to } => {
            let purge = if purge {
                "purge=true".to_string()
            } else {
                String::new()
            };
            let api = with_query(
                format!("/api/v1/apps/{}", crate::cmd::settings::encode(&id)),
                &[to.query(), purge],
            );
            let resp = client
                .send_request(client.request(reqwest::Method::DELETE, &api), &api)
                .await?;
            recorded(resp, &to, json).await
        }
        Command::Logs { id, follow } => logs(&client, &id, follow, json).await,
    }
}

fn unreachable_local() -> Result<()> {
    bail!("validate and package run without a node")
}

async fn action(client: &Client, id: &str, what: &str, to: &To, json: bool) -> Result<()> {
    let api = with_query(
        format!("/api/v1/apps/{}/{what}", crate::cmd::settings::encode(id)),
        &[to.query()],
    );
    let resp = client
        .send_request(client.request(reqwest::Method::POST, &api), &api)
        .await?;
    recorded(resp, to, json).await
}

/// With `--to`: says which command event the node recorded (the targets carry it out).
pub async fn recorded(resp: reqwest::Response, to: &To, json: bool) -> Result<()> {
    if to.to.is_none() {
        return Ok(());
    }
    let given: Value = resp.json().await.context("the node did not answer JSON")?;
    if json {
        println!("{given}");
        return Ok(());
    }
    println!(
        "{} of {} recorded for {} (command {})",
        given["action"].as_str().unwrap_or("?"),
        given["app"].as_str().unwrap_or("?"),
        given["to"].as_str().unwrap_or("?"),
        given["command"].as_str().unwrap_or("?"),
    );
    Ok(())
}

/// The app's console entries, read from the console service the node names in its info.
async fn logs(client: &Client, id: &str, follow: bool, json: bool) -> Result<()> {
    let info = client.get_json("/api/v1/node/info").await?;
    let console = info["consoleAddr"]
        .as_str()
        .context("the node's info names no console address")?;
    let console = Client::new(&format!("http://{console}"))?;
    let path = if follow {
        "/api/v1/logs?follow=true"
    } else {
        "/api/v1/logs"
    };
    let mut lines = console.get_lines(path).await?;
    let mut out = Out::new(Format::from_json_flag(json), follow);
    while let Some(line) = lines.next_line().await? {
        let entry: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
        if entry["producerName"].as_str() == Some(id) {
            out.log_entry(&line)?;
        }
    }
    out.flush()?;
    if follow {
        bail!("the node closed the log stream (it may have shut down)");
    }
    Ok(())
}
