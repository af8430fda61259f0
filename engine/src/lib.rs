//! shoal-engine: the node without its HTTP face.
//!
//! Principal types:
//! - [`Node`] (`node.rs`): builds every part in dependency order, each with only the handles it
//!   needs; owns their tasks; [`Node::shutdown`] flushes everything. Its module doc draws the
//!   task graph. Front ends get a [`NodeHandle`].
//! - [`EventService`] (`events/`): publish (group commit), query (three orders), subscribe
//!   (stored then live, no gap, no duplicate), offsets; the one path by which local and
//!   replicated events reach subscribers ([`SourceUpdate`] on one broadcast).
//! - [`Config`] / [`Settings`] (`config.rs`): every setting, resolved flag > env > file > default.
//! - [`Identity`] (`identity.rs`): the ed25519 key in the data dir; its `PeerId` is the source id.
//!
//! The engine knows nothing of HTTP: the `shoal-api` crate maps requests onto these types.

pub mod announce;
pub mod apps;
pub mod blobs;
pub mod config;
pub mod connectivity;
pub mod console;
#[cfg(test)]
mod decoders;
pub mod dump;
pub mod events;
pub mod exchange;
pub mod head;
pub mod health;
pub mod identity;
mod maintenance;
pub mod metrics;
pub mod node;
mod own_runtime;
pub mod remote;
pub mod replication;
pub mod resume;
pub mod retention;
pub mod snapshots;
pub mod status;
pub mod swarm;

pub use config::{Config, ConfigError, Settings};
pub use events::{
    EventService, EventStream, EventsError, Filter, Order, Origin, PublishEvent, Published, Query,
    SourceUpdate, Stamp, StreamSelector, Subscription,
};
pub use identity::{Identity, IdentityError};
pub use node::{Node, NodeError, NodeHandle, NodeInfo};
pub use shoal_store::{Event, OffsetMap, SourceId};
pub use swarm::{NetworkState, PeerInfo};

/// Resolves once the node's shutdown signal is true (or its sender is gone). Holds no borrow
/// of the watch, so a `select!` over it stays `Send`.
pub(crate) async fn stopped(shutdown: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}
