//! Node settings: every knob with its default, and how the layers combine.
//!
//! A setting can come from a command-line flag, a `SHOAL_<FLAG>` environment variable or a key in
//! `<data-dir>/shoal.toml`; the first that gives a value wins (flag > env > file > default).
//! Each layer is read into a [`Settings`] (all optional, raw strings), the layers are merged with
//! [`Settings::or`], and [`Settings::resolve`] validates everything in one step into a [`Config`]:
//! after that nothing in the node parses a setting again.
//!
//! Key names are the flag names (`api-addr`, `swarm-addr`, ...); the environment variable is
//! `SHOAL_` + the key upper-cased with `_` for `-` (`SHOAL_API_ADDR`). Repeatable settings
//! (`swarm-addr`, `peer`, `allow-origin`, `allow-host`) are a list in the file and
//! comma-separated in the environment.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use libp2p::Multiaddr;

pub use crate::events::EventsConfig;
use serde::Deserialize;
pub use shoal_store::Durability;

/// Name of the optional settings file inside the data dir.
pub const CONFIG_FILE: &str = "shoal.toml";
/// Name of the store's SQLite file inside the data dir (the inspector opens the same file).
pub const STORE_FILE: &str = "store.sqlite";

/// A setting that cannot be used; the message names the key and says what is accepted.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid {key} `{value}`: {reason}")]
    Invalid {
        key: &'static str,
        value: String,
        reason: String,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a valid settings file: {reason}")]
    File { path: PathBuf, reason: String },
}

/// One layer of raw settings (flags, environment or file). `None` = this layer does not say.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Settings {
    /// Not accepted in the file (the file lives in the data dir).
    #[serde(skip)]
    pub data_dir: Option<PathBuf>,
    pub api_addr: Option<String>,
    pub console_addr: Option<String>,
    pub store_addr: Option<String>,
    pub swarm_addr: Option<Vec<String>>,
    pub peer: Option<Vec<String>>,
    pub swarm_key: Option<PathBuf>,
    pub no_mdns: Option<bool>,
    /// Largest JSON request body accepted by the HTTP API, in bytes.
    pub max_body_bytes: Option<u64>,
    /// Most events the writer puts into one transaction (group commit cap).
    pub max_commit_events: Option<usize>,
    /// Seconds of silence after which a subscription sends a keep-alive `\n`.
    pub keepalive_secs: Option<u64>,
    /// Console log entries kept (the newest; older ones are dropped).
    pub console_retention: Option<u64>,
    /// Largest blob accepted, in bytes (blobs).
    pub max_blob_bytes: Option<u64>,
    /// Seconds a blob read waits for peers to deliver a missing block (blobs).
    pub blob_fetch_timeout_secs: Option<u64>,
    /// Nodes that hold a blob put without `?replicas=` (1: only this one).
    pub blob_replicas: Option<u32>,
    /// Seconds a put with replicas waits for its holders before it answers 202.
    pub blob_replica_timeout_secs: Option<u64>,
    /// Web origins (`http://host:port`) allowed to use the APIs besides the node's own.
    pub allow_origin: Option<Vec<String>>,
    /// Host names the APIs answer to besides IP literals and `localhost`.
    pub allow_host: Option<Vec<String>>,
    /// What the node logs: a level (`info`) or a `RUST_LOG`-style filter. Read by the binary
    /// (logging starts before the node); [`Settings::resolve`] does not use it.
    pub log_level: Option<String>,
    /// What a committed write survives: `process` (default) or `power`.
    pub durability: Option<String>,
    /// Seconds a node resuming its own source waits for a peer to say how far it holds it
    /// before publishing anyway (`resume.rs`; 0 = do not wait).
    pub resume_timeout_secs: Option<u64>,
}

impl Settings {
    /// This layer where it has a value, else `lower`.
    pub fn or(self, lower: Settings) -> Settings {
        Settings {
            data_dir: self.data_dir.or(lower.data_dir),
            api_addr: self.api_addr.or(lower.api_addr),
            console_addr: self.console_addr.or(lower.console_addr),
            store_addr: self.store_addr.or(lower.store_addr),
            swarm_addr: self.swarm_addr.or(lower.swarm_addr),
            peer: self.peer.or(lower.peer),
            swarm_key: self.swarm_key.or(lower.swarm_key),
            no_mdns: self.no_mdns.or(lower.no_mdns),
            max_body_bytes: self.max_body_bytes.or(lower.max_body_bytes),
            max_commit_events: self.max_commit_events.or(lower.max_commit_events),
            keepalive_secs: self.keepalive_secs.or(lower.keepalive_secs),
            console_retention: self.console_retention.or(lower.console_retention),
            max_blob_bytes: self.max_blob_bytes.or(lower.max_blob_bytes),
            blob_fetch_timeout_secs: self
                .blob_fetch_timeout_secs
                .or(lower.blob_fetch_timeout_secs),
            blob_replicas: self.blob_replicas.or(lower.blob_replicas),
            blob_replica_timeout_secs: self
                .blob_replica_timeout_secs
                .or(lower.blob_replica_timeout_secs),
            allow_origin: self.allow_origin.or(lower.allow_origin),
            allow_host: self.allow_host.or(lower.allow_host),
            log_level: self.log_level.or(lower.log_level),
            durability: self.durability.or(lower.durability),
            resume_timeout_secs: self.resume_timeout_secs.or(lower.resume_timeout_secs),
        }
    }

    /// The `SHOAL_*` layer, read through `var` (the process environment in `shoal run`).
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<Settings, ConfigError> {
        let list = |key: &str| {
            var(key).map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect::<Vec<_>>()
            })
        };
        Ok(Settings {
            data_dir: var("SHOAL_DATA_DIR").map(PathBuf::from),
            api_addr: var("SHOAL_API_ADDR"),
            console_addr: var("SHOAL_CONSOLE_ADDR"),
            store_addr: var("SHOAL_STORE_ADDR"),
            swarm_addr: list("SHOAL_SWARM_ADDR"),
            peer: list("SHOAL_PEER"),
            swarm_key: var("SHOAL_SWARM_KEY").map(PathBuf::from),
            no_mdns: var("SHOAL_NO_MDNS")
                .map(|v| parse_bool("SHOAL_NO_MDNS", &v))
                .transpose()?,
            max_body_bytes: var("SHOAL_MAX_BODY_BYTES")
                .map(|v| parse_num("SHOAL_MAX_BODY_BYTES", &v))
                .transpose()?,
            max_commit_events: var("SHOAL_MAX_COMMIT_EVENTS")
                .map(|v| parse_num("SHOAL_MAX_COMMIT_EVENTS", &v))
                .transpose()?,
            keepalive_secs: var("SHOAL_KEEPALIVE_SECS")
                .map(|v| parse_num("SHOAL_KEEPALIVE_SECS", &v))
                .transpose()?,
            console_retention: var("SHOAL_CONSOLE_RETENTION")
                .map(|v| parse_num("SHOAL_CONSOLE_RETENTION", &v))
                .transpose()?,
            max_blob_bytes: var("SHOAL_MAX_BLOB_BYTES")
                .map(|v| parse_num("SHOAL_MAX_BLOB_BYTES", &v))
                .transpose()?,
            blob_fetch_timeout_secs: var("SHOAL_BLOB_FETCH_TIMEOUT_SECS")
                .map(|v| parse_num("SHOAL_BLOB_FETCH_TIMEOUT_SECS", &v))
                .transpose()?,
            blob_replicas: var("SHOAL_BLOB_REPLICAS")
                .map(|v| parse_num("SHOAL_BLOB_REPLICAS", &v))
                .transpose()?,
            blob_replica_timeout_secs: var("SHOAL_BLOB_REPLICA_TIMEOUT_SECS")
                .map(|v| parse_num("SHOAL_BLOB_REPLICA_TIMEOUT_SECS", &v))
                .transpose()?,
            allow_origin: list("SHOAL_ALLOW_ORIGIN"),
            allow_host: list("SHOAL_ALLOW_HOST"),
            log_level: var("SHOAL_LOG_LEVEL"),
            durability: var("SHOAL_DURABILITY"),
            resume_timeout_secs: var("SHOAL_RESUME_TIMEOUT_SECS")
                .map(|v| parse_num("SHOAL_RESUME_TIMEOUT_SECS", &v))
                .transpose()?,
        })
    }

    /// The file layer: `<data_dir>/shoal.toml` if it exists, else an empty layer.
    pub fn from_file(data_dir: &Path) -> Result<Settings, ConfigError> {
        let path = data_dir.join(CONFIG_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text).map_err(|e| ConfigError::File {
                path,
                reason: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Settings::default()),
            Err(source) => Err(ConfigError::Read { path, source }),
        }
    }

    /// Validates the merged layers into a [`Config`], filling defaults.
    pub fn resolve(self) -> Result<Config, ConfigError> {
        let d = Config::default();
        let addr = |key: &'static str, v: Option<String>, default: SocketAddr| match v {
            None => Ok(default),
            Some(v) => v.parse::<SocketAddr>().map_err(|e| ConfigError::Invalid {
                key,
                reason: format!("{e} (expected IP:PORT, e.g. 127.0.0.1:4454)"),
                value: v,
            }),
        };
        let multiaddrs =
            |key: &'static str, v: Option<Vec<String>>, default: Vec<Multiaddr>| match v {
                None => Ok(default),
                Some(list) => list
                    .into_iter()
                    .map(|s| {
                        s.parse::<Multiaddr>().map_err(|e| ConfigError::Invalid {
                            key,
                            reason: format!(
                                "{e} (expected a multiaddr, e.g. /ip4/0.0.0.0/tcp/4001)"
                            ),
                            value: s,
                        })
                    })
                    .collect::<Result<Vec<_>, _>>(),
            };
        let max_body_bytes = self.max_body_bytes.unwrap_or(d.max_body_bytes);
        if max_body_bytes == 0 {
            return Err(ConfigError::Invalid {
                key: "max-body-bytes",
                value: "0".into(),
                reason: "must be at least 1".into(),
            });
        }
        let max_commit_events = self.max_commit_events.unwrap_or(d.events.max_commit_events);
        if max_commit_events == 0 {
            return Err(ConfigError::Invalid {
                key: "max-commit-events",
                value: "0".into(),
                reason: "must be at least 1".into(),
            });
        }
        let keepalive = match self.keepalive_secs {
            Some(0) => {
                return Err(ConfigError::Invalid {
                    key: "keepalive-secs",
                    value: "0".into(),
                    reason: "must be at least 1".into(),
                })
            }
            Some(s) => Duration::from_secs(s),
            None => d.keepalive,
        };
        let swarm_addrs = multiaddrs("swarm-addr", self.swarm_addr, d.swarm_addrs)?;
        if swarm_addrs.is_empty() {
            return Err(ConfigError::Invalid {
                key: "swarm-addr",
                value: String::new(),
                reason: "at least one listen address is needed".into(),
            });
        }
        let web = WebConfig {
            allowed_origins: self
                .allow_origin
                .unwrap_or_default()
                .iter()
                .map(|o| parse_origin(o))
                .collect::<Result<_, _>>()?,
            allowed_hosts: self
                .allow_host
                .unwrap_or_default()
                .iter()
                .map(|h| parse_host(h))
                .collect::<Result<_, _>>()?,
        };
        let durability = match self.durability.as_deref().map(str::trim) {
            None => d.durability,
            Some("process") => Durability::Process,
            Some("power") => Durability::PowerLoss,
            Some(other) => {
                return Err(ConfigError::Invalid {
                    key: "durability",
                    value: other.into(),
                    reason: "expected `process` (survives a killed process) or `power` \
                             (also survives power loss: one fsync per commit)"
                        .into(),
                })
            }
        };
        Ok(Config {
            data_dir: self.data_dir.unwrap_or(d.data_dir),
            api_addr: addr("api-addr", self.api_addr, d.api_addr)?,
            console_addr: addr("console-addr", self.console_addr, d.console_addr)?,
            console_retention: self.console_retention.unwrap_or(d.console_retention).max(1),
            blobs: crate::blobs::BlobsConfig {
                max_blob_bytes: self.max_blob_bytes.unwrap_or(d.blobs.max_blob_bytes),
                fetch_timeout: self
                    .blob_fetch_timeout_secs
                    .map_or(d.blobs.fetch_timeout, |s| Duration::from_secs(s.max(1))),
                default_replicas: replicas(self.blob_replicas, d.blobs.default_replicas)?,
                replica_timeout: self
                    .blob_replica_timeout_secs
                    .map_or(d.blobs.replica_timeout, |s| Duration::from_secs(s.max(1))),
                ..d.blobs
            },
            store_addr: addr("store-addr", self.store_addr, d.store_addr)?,
            swarm_addrs,
            peers: multiaddrs("peer", self.peer, d.peers)?,
            swarm_key: self.swarm_key.or(d.swarm_key),
            mdns: !self.no_mdns.unwrap_or(!d.mdns),
            max_body_bytes,
            keepalive,
            events: EventsConfig {
                max_commit_events,
                ..d.events
            },
            web,
            durability,
            resume_timeout: self
                .resume_timeout_secs
                .map_or(d.resume_timeout, Duration::from_secs),
        })
    }
}

/// The `blob-replicas` setting: 1 to [`crate::blobs::replicas::MAX_REPLICAS`].
fn replicas(value: Option<u32>, default: u32) -> Result<u32, ConfigError> {
    let max = crate::blobs::replicas::MAX_REPLICAS;
    match value {
        None => Ok(default),
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(n) => Err(ConfigError::Invalid {
            key: "blob-replicas",
            value: n.to_string(),
            reason: format!("expected 1 (this node only) to {max}"),
        }),
    }
}

/// An `allow-origin` value as the ASCII serialization browsers put in `Origin` headers
/// (`http://host[:port]`, lower case, no default port, no trailing slash).
fn parse_origin(value: &str) -> Result<String, ConfigError> {
    let invalid = |reason: &str| ConfigError::Invalid {
        key: "allow-origin",
        value: value.into(),
        reason: format!("{reason} (expected an origin such as http://192.168.1.20:8080)"),
    };
    let url = url::Url::parse(value.trim()).map_err(|e| invalid(&e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid("the scheme must be http or https"));
    }
    if !matches!(url.path(), "" | "/")
        || url.query().is_some()
        || url.fragment().is_some()
        || !url.username().is_empty()
        || url.password().is_some()
    {
        return Err(invalid("an origin has no path, query or user"));
    }
    Ok(url.origin().ascii_serialization())
}

/// An `allow-host` value: a DNS name (lower case, no trailing dot, no port).
fn parse_host(value: &str) -> Result<String, ConfigError> {
    let name = value.trim().trim_end_matches('.').to_ascii_lowercase();
    let valid = !name.is_empty()
        && name.len() <= 253
        && name
            .split('.')
            .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    if !valid {
        return Err(ConfigError::Invalid {
            key: "allow-host",
            value: value.into(),
            reason: "expected a host name such as mydevice.local (no port; IP addresses \
                     and localhost are always accepted)"
                .into(),
        });
    }
    Ok(name)
}

fn parse_bool(key: &'static str, v: &str) -> Result<bool, ConfigError> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" | "" => Ok(false),
        _ => Err(ConfigError::Invalid {
            key,
            value: v.into(),
            reason: "expected true or false".into(),
        }),
    }
}

fn parse_num<T: std::str::FromStr>(key: &'static str, v: &str) -> Result<T, ConfigError>
where
    T::Err: std::fmt::Display,
{
    v.trim().parse().map_err(|e: T::Err| ConfigError::Invalid {
        key,
        value: v.into(),
        reason: e.to_string(),
    })
}

/// Validated settings of one node.
#[derive(Debug, Clone)]
pub struct Config {
    /// Holds the key, the store and `shoal.toml`; created if missing.
    pub data_dir: PathBuf,
    /// Events, blobs and node API.
    pub api_addr: SocketAddr,
    /// Console (logging) API.
    pub console_addr: SocketAddr,
    /// Console log entries kept (the newest).
    pub console_retention: u64,
    /// Blob service limits.
    pub blobs: crate::blobs::BlobsConfig,
    /// WebSocket store API for Pond apps.
    pub store_addr: SocketAddr,
    /// libp2p listen addresses.
    pub swarm_addrs: Vec<Multiaddr>,
    /// Bootstrap peers.
    pub peers: Vec<Multiaddr>,
    /// Pre-shared swarm key file; `None` = open swarm.
    pub swarm_key: Option<PathBuf>,
    /// LAN discovery.
    pub mdns: bool,
    /// Largest JSON request body the HTTP API accepts (413 above).
    pub max_body_bytes: u64,
    /// Silence after which a long-lived stream sends a keep-alive line.
    pub keepalive: Duration,
    /// Event service tuning.
    pub events: EventsConfig,
    /// Which web pages and host names the APIs serve (API.md "Browser safety").
    pub web: WebConfig,
    /// What a committed write survives (`--durability`).
    pub durability: Durability,
    /// How long a node resuming its own source waits for a peer (`resume.rs`).
    pub resume_timeout: Duration,
}

/// Browser safety (API.md): who besides the node's own pages may use its APIs from a browser.
/// The checks themselves are the API's (`shoal_api::origin`).
#[derive(Debug, Clone, Default)]
pub struct WebConfig {
    /// Origins allowed besides the node's own, as browsers serialize them in `Origin`
    /// (`http://host[:port]`, lower case, no default port).
    pub allowed_origins: Vec<String>,
    /// Host names (`Host` header) accepted besides IP literals and `localhost`, lower case.
    pub allowed_hosts: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./shoal-data"),
            api_addr: SocketAddr::from(([127, 0, 0, 1], 4454)),
            console_addr: SocketAddr::from(([127, 0, 0, 1], 4457)),
            console_retention: crate::console::DEFAULT_RETENTION,
            blobs: crate::blobs::BlobsConfig::default(),
            store_addr: SocketAddr::from(([127, 0, 0, 1], 4243)),
            swarm_addrs: vec![default_swarm_addr()],
            peers: Vec::new(),
            swarm_key: None,
            mdns: true,
            max_body_bytes: 16 * 1024 * 1024,
            keepalive: Duration::from_secs(10),
            events: EventsConfig::default(),
            web: WebConfig::default(),
            durability: Durability::default(),
            resume_timeout: Duration::from_secs(60),
        }
    }
}

fn default_swarm_addr() -> Multiaddr {
    use libp2p::multiaddr::Protocol;
    Multiaddr::empty()
        .with(Protocol::Ip4([0, 0, 0, 0].into()))
        .with(Protocol::Tcp(4001))
}

impl Config {
    /// The store file of this node.
    pub fn store_path(&self) -> PathBuf {
        self.data_dir.join(STORE_FILE)
    }

    /// A config for tests: everything on 127.0.0.1 with OS-chosen ports, no mDNS.
    pub fn for_tests(data_dir: impl Into<PathBuf>) -> Self {
        use libp2p::multiaddr::Protocol;
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        Self {
            data_dir: data_dir.into(),
            api_addr: any,
            console_addr: any,
            store_addr: any,
            swarm_addrs: vec![Multiaddr::empty()
                .with(Protocol::Ip4([127, 0, 0, 1].into()))
                .with(Protocol::Tcp(0))],
            mdns: false,
            ..Self::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_beats_env_beats_file_beats_default() {
        let flags = Settings {
            api_addr: Some("127.0.0.1:1".into()),
            ..Settings::default()
        };
        let env = Settings::from_env(|k| match k {
            "SHOAL_API_ADDR" => Some("127.0.0.1:2".into()),
            "SHOAL_CONSOLE_ADDR" => Some("127.0.0.1:3".into()),
            "SHOAL_PEER" => Some("/ip4/1.2.3.4/tcp/1, /ip4/1.2.3.5/tcp/2".into()),
            "SHOAL_NO_MDNS" => Some("true".into()),
            _ => None,
        })
        .unwrap();
        let file: Settings = toml::from_str(
            "api-addr = \"127.0.0.1:5\"\nconsole-addr = \"127.0.0.1:6\"\nstore-addr = \"127.0.0.1:7\"\nmax-body-bytes = 99\n",
        )
        .unwrap();
        let config = flags.or(env).or(file).resolve().unwrap();
        assert_eq!(config.api_addr.port(), 1);
        assert_eq!(config.console_addr.port(), 3);
        assert_eq!(config.store_addr.port(), 7);
        assert_eq!(config.max_body_bytes, 99);
        assert_eq!(config.peers.len(), 2);
        assert!(!config.mdns);
        assert_eq!(config.swarm_addrs, vec![default_swarm_addr()]);
    }

    #[test]
    fn bad_values_name_their_key() {
        let err = Settings {
            api_addr: Some("nonsense".into()),
            ..Settings::default()
        }
        .resolve()
        .unwrap_err();
        assert!(err.to_string().contains("api-addr"), "{err}");
        let err =
            Settings::from_env(|k| (k == "SHOAL_NO_MDNS").then(|| "maybe".into())).unwrap_err();
        assert!(err.to_string().contains("SHOAL_NO_MDNS"), "{err}");
        let err = toml::from_str::<Settings>("unknown-key = 1").unwrap_err();
        assert!(err.to_string().contains("unknown-key"), "{err}");
    }

    #[test]
    fn allowed_origins_are_normalized_like_browsers_send_them() {
        let file: Settings = toml::from_str(
            "allow-origin = [\"HTTP://Example.COM:80/\", \"https://x.test:8443\"]\n\
             allow-host = [\"MyDevice.local.\"]\ndurability = \"power\"\n",
        )
        .unwrap();
        let config = file.resolve().unwrap();
        assert_eq!(
            config.web.allowed_origins,
            vec!["http://example.com", "https://x.test:8443"]
        );
        assert_eq!(config.web.allowed_hosts, vec!["mydevice.local"]);
        assert_eq!(config.durability, Durability::PowerLoss);
        let env = Settings::from_env(|k| {
            (k == "SHOAL_ALLOW_ORIGIN").then(|| "http://a.test:1, http://b.test:2".into())
        })
        .unwrap();
        assert_eq!(env.resolve().unwrap().web.allowed_origins.len(), 2);
        assert_eq!(
            Settings::default().resolve().unwrap().durability,
            Durability::Process
        );
        for bad in ["*", "null", "ftp://x.test", "http://x.test/app", "x.test"] {
            let err = Settings {
                allow_origin: Some(vec![bad.into()]),
                ..Settings::default()
            }
            .resolve()
            .unwrap_err();
            assert!(err.to_string().contains("allow-origin"), "{bad}: {err}");
        }
        for bad in ["*", "x.test:80", "", "a..b"] {
            let err = Settings {
                allow_host: Some(vec![bad.into()]),
                ..Settings::default()
            }
            .resolve()
            .unwrap_err();
            assert!(err.to_string().contains("allow-host"), "{bad}: {err}");
        }
        let err = Settings {
            durability: Some("disk".into()),
            ..Settings::default()
        }
        .resolve()
        .unwrap_err();
        assert!(err.to_string().contains("durability"), "{err}");
    }
}
