//! `shoal run`: runs a node in the foreground until SIGINT/SIGTERM.
//!
//! Settings: flags here, `SHOAL_<FLAG>` environment variables and `<data-dir>/shoal.toml`
//! (flag > env > file > default), validated in one step by `shoal_engine::config`.
//! Once every server is bound, exactly one line goes to stdout:
//! `shoal ready source=<id> api=<addr> swarm=<multiaddr>` — scripts wait for it. Logs go to
//! stderr, filtered by the first of `--log-level`/`-v`, `RUST_LOG`, `SHOAL_LOG_LEVEL`, the
//! file's `log-level`, `info`; logging starts once the settings are read, so a bad setting is
//! reported as the one error line, not as a log line.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use shoal_engine::{Config, Node, Settings};

/// Arguments of `shoal run`.
#[derive(clap::Args)]
pub struct Args {
    /// Data directory (key, store, shoal.toml); created if missing. [default: ./shoal-data]
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Events, blobs and node API address. [default: 127.0.0.1:4454]
    #[arg(long, value_name = "IP:PORT")]
    api_addr: Option<String>,
    /// Console (logging) API address. [default: 127.0.0.1:4457]
    #[arg(long, value_name = "IP:PORT")]
    console_addr: Option<String>,
    /// WebSocket store API address for Pond apps. [default: 127.0.0.1:4243]
    #[arg(long, value_name = "IP:PORT")]
    store_addr: Option<String>,
    /// libp2p listen address (repeatable). [default: /ip4/0.0.0.0/tcp/4001]
    #[arg(long, value_name = "MULTIADDR")]
    swarm_addr: Vec<String>,
    /// Bootstrap peer, e.g. /ip4/127.0.0.1/tcp/4002/p2p/<id> (repeatable).
    #[arg(long, value_name = "MULTIADDR")]
    peer: Vec<String>,
    /// Pre-shared swarm key file; nodes with other keys cannot connect. Without one, any shoal
    /// node that reaches this one (mDNS finds them on the LAN) joins the swarm: make a key with
    /// `shoal swarm keygen -o FILE` and give every node the same file.
    #[arg(long, value_name = "FILE")]
    swarm_key: Option<PathBuf>,
    /// Disable LAN discovery (mDNS).
    #[arg(long)]
    no_mdns: bool,
    /// Largest JSON request body accepted, in bytes. [default: 16777216]
    #[arg(long, value_name = "BYTES")]
    max_body_bytes: Option<u64>,
    /// Console log entries kept (the newest). [default: 100000]
    #[arg(long, value_name = "N")]
    console_retention: Option<u64>,
    /// Largest blob accepted by POST /api/v1/blobs, in bytes. [default: 68719476736 (64 GiB)]
    #[arg(long, value_name = "BYTES")]
    max_blob_bytes: Option<u64>,
    /// Seconds a blob fetch waits for any peer to deliver the next block before 404. [default: 10]
    #[arg(long, value_name = "SECS")]
    blob_fetch_timeout_secs: Option<u64>,
    /// Nodes that hold each blob put without `?replicas=N` (this one included): 2 or more makes
    /// every put wait for that many nodes to hold it pinned. [default: 1]
    #[arg(long, value_name = "N")]
    blob_replicas: Option<u32>,
    /// Seconds a blob put with replicas waits for its holders before answering 202 (replication
    /// goes on in the background). [default: 60]
    #[arg(long, value_name = "SECS")]
    blob_replica_timeout_secs: Option<u64>,
    /// A web origin (e.g. http://192.168.1.30:8080) whose pages may use the APIs besides the
    /// node's own (repeatable). Other pages get 403 (API.md, Browser safety).
    #[arg(long, value_name = "URL")]
    allow_origin: Vec<String>,
    /// A host name the APIs answer to besides IP addresses and localhost, e.g. mydevice.local
    /// (repeatable). Other names get 403: protection against DNS rebinding.
    #[arg(long, value_name = "NAME")]
    allow_host: Vec<String>,
    /// What to log (to stderr): a level (error, warn, info, debug, trace) or a RUST_LOG-style
    /// filter such as `info,shoal_engine::swarm=debug`. Wins over RUST_LOG. [default: info]
    #[arg(long, value_name = "LEVEL", conflicts_with = "verbose")]
    log_level: Option<String>,
    /// Log more: -v is --log-level debug, -vv is --log-level trace (libp2p included: noisy).
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
    /// What a stored event survives: `process` (a killed process; may lose the last commits on
    /// power loss) or `power` (also power loss: one fsync per commit). [default: process]
    #[arg(long, value_name = "process|power")]
    durability: Option<String>,
    /// Seconds a node that lost its store (data dir restored, or its own events restored from
    /// a dump) waits for a peer to say how far it holds this node's events before publishing
    /// anyway; publishes are refused meanwhile, so no offset a peer holds is reused. 0 = do not
    /// wait (a node that never has peers). [default: 60]
    #[arg(long, value_name = "SECS")]
    resume_timeout_secs: Option<u64>,
}

impl Args {
    /// The flag layer: only what was given (so env and file can fill the rest).
    fn settings(self) -> Settings {
        Settings {
            data_dir: self.data_dir,
            api_addr: self.api_addr,
            console_addr: self.console_addr,
            store_addr: self.store_addr,
            swarm_addr: (!self.swarm_addr.is_empty()).then_some(self.swarm_addr),
            peer: (!self.peer.is_empty()).then_some(self.peer),
            swarm_key: self.swarm_key,
            no_mdns: self.no_mdns.then_some(true),
            max_body_bytes: self.max_body_bytes,
            console_retention: self.console_retention,
            max_blob_bytes: self.max_blob_bytes,
            blob_fetch_timeout_secs: self.blob_fetch_timeout_secs,
            blob_replicas: self.blob_replicas,
            blob_replica_timeout_secs: self.blob_replica_timeout_secs,
            allow_origin: (!self.allow_origin.is_empty()).then_some(self.allow_origin),
            allow_host: (!self.allow_host.is_empty()).then_some(self.allow_host),
            log_level: match self.verbose {
                0 => self.log_level,
                1 => Some("debug".into()),
                _ => Some("trace".into()),
            },
            durability: self.durability,
            resume_timeout_secs: self.resume_timeout_secs,
            ..Settings::default()
        }
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let (config, log) = resolve(args)?;
    init_logging(log);
    limit_malloc_arenas();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("shoal")
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(serve(config));
    // Everything was flushed inside `serve`; do not wait for idle blocking threads.
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    result
}

/// glibc's malloc gives each thread that meets a locked arena a new one (up to 8 per core) and
/// keeps what is freed in it for that arena's next allocation: a node's many blocking threads
/// (hashing, writing and reading 1 MiB chunks) each held tens of MB of freed chunk buffers, and
/// a node's peak RSS during `bench_blobs` was 145–173 MB, with two arenas 95–100 MB at the same
/// throughput (BENCHMARKS.md, "Blobs"). Called before the runtime starts any thread, so it
/// binds every arena made after it; `MALLOC_ARENA_MAX` in the environment still wins.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets a malloc parameter; no other thread runs yet.
        if unsafe { libc::mallopt(libc::M_ARENA_MAX, MALLOC_ARENAS) } != 1 {
            tracing::warn!("cannot limit malloc arenas: memory use may be higher");
        }
    }
}

/// Arenas glibc's malloc may use (see [`limit_malloc_arenas`]).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MALLOC_ARENAS: libc::c_int = 2;

fn init_logging(filter: tracing_subscriber::EnvFilter) {
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}

/// flag > env > file > default, and the log filter: flag > `RUST_LOG` > `SHOAL_LOG_LEVEL` >
/// file > `info` (`RUST_LOG` is the more specific of the two variables, so it wins).
fn resolve(args: Args) -> anyhow::Result<(Config, tracing_subscriber::EnvFilter)> {
    let flags = args.settings();
    let env = Settings::from_env(|k| std::env::var(k).ok())?;
    let data_dir = flags
        .data_dir
        .clone()
        .or(env.data_dir.clone())
        .unwrap_or_else(|| Config::default().data_dir);
    let file = Settings::from_file(&data_dir)?;
    let rust_log = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty());
    let (log, from) = [
        (flags.log_level.clone(), "--log-level"),
        (rust_log, "RUST_LOG"),
        (env.log_level.clone(), "SHOAL_LOG_LEVEL"),
        (file.log_level.clone(), "log-level in shoal.toml"),
    ]
    .into_iter()
    .find_map(|(v, from)| v.map(|v| (v, from)))
    .unwrap_or_else(|| ("info".to_string(), "the default"));
    let invalid = |why: &dyn std::fmt::Display| {
        anyhow::anyhow!(
            "invalid log level `{log}` ({from}): {why}; give error, warn, info, debug, trace or \
             a filter like info,shoal_engine::swarm=debug"
        )
    };
    // A lone word of ours is a level: EnvFilter would take `inf` as a module name and log
    // nothing else. RUST_LOG keeps its usual meaning (a lone word is a module there).
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    let word = log.trim().to_ascii_lowercase();
    if from != "RUST_LOG" && !word.contains(['=', ',']) && !LEVELS.contains(&word.as_str()) {
        return Err(invalid(&"not a level"));
    }
    let filter = tracing_subscriber::EnvFilter::try_new(&log).map_err(|e| invalid(&e))?;
    Ok((flags.or(env).or(file).resolve()?, filter))
}

async fn serve(config: Config) -> anyhow::Result<()> {
    // Watched from the start: a SIGTERM that arrives while the node starts (or right after it
    // printed `shoal ready`) would otherwise kill it with the default action, uncleanly.
    let signals = Signals::watch()?;
    let api_addr = config.api_addr;
    let data_dir = config.data_dir.clone();
    let node = match Node::start(config).await {
        Ok(node) => node,
        Err(e) => {
            let e = anyhow::Error::new(e);
            // Another process writes this data dir: say who, once, without the error chain.
            if let Some(shoal_store::Error::Locked { pid, .. }) = e
                .chain()
                .find_map(|c| c.downcast_ref::<shoal_store::Error>())
            {
                anyhow::bail!(
                    "data dir {} is in use by {}: a data dir serves one node at a time; stop \
                     that node or give this one another --data-dir",
                    data_dir.display(),
                    super::store::holder(*pid)
                );
            }
            return Err(e).context("cannot start the node");
        }
    };
    let servers = std::sync::Arc::new(shoal_api::node::Servers::default());
    let api = match shoal_api::serve(node.handle(), servers.clone()).await {
        Ok(api) => api,
        Err(e) => {
            node.shutdown().await;
            return Err(e).with_context(|| {
                format!("cannot listen on {api_addr}: is another node running? --api-addr sets the address")
            });
        }
    };
    let console_addr = node.config().console_addr;
    let console = match shoal_api::console::serve_node(node.handle(), api.local_addr()).await {
        Ok(console) => console,
        Err(e) => {
            api.shutdown().await;
            node.shutdown().await;
            return Err(e).with_context(|| {
                format!("cannot listen on {console_addr}: is another node running? --console-addr sets the address")
            });
        }
    };
    // The WebSocket store API for Pond apps (pond helper: additive).
    let store_addr = node.config().store_addr;
    let store = match shoal_api::store_api::serve(node.handle(), api.local_addr()).await {
        Ok(store) => store,
        Err(e) => {
            api.shutdown().await;
            console.shutdown().await;
            node.shutdown().await;
            return Err(e).with_context(|| {
                format!("cannot listen on {store_addr}: is another node running? --store-addr sets the address")
            });
        }
    };
    servers.set(console.local_addr(), store.local_addr());
    // Apps start once the APIs they use are up (and get their bound addresses).
    if let Err(e) = node
        .handle()
        .apps()
        .serving(api.local_addr(), store.local_addr())
        .await
    {
        tracing::error!(error = %e, "cannot start the apps");
    }
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "shoal ready source={} api={} swarm={} store={}",
            node.source(),
            api.local_addr(),
            node.swarm_addr(),
            store.local_addr()
        );
        let _ = out.flush();
    }
    tracing::info!(api = %api.local_addr(), "serving");
    signals.wait().await;
    tracing::info!("shutting down");
    // Subscriptions end first, so the server's grace period is not spent on them.
    node.signal_shutdown();
    api.shutdown().await;
    console.shutdown().await;
    store.shutdown().await;
    node.shutdown().await;
    Ok(())
}

/// SIGTERM and SIGINT, both meaning "shut down cleanly".
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn watch() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("cannot watch SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("cannot watch SIGINT")?,
        })
    }

    /// Until one of them arrives (also one that arrived before this call).
    async fn wait(mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}
