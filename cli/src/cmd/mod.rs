//! One module per top-level subcommand; each exposes `Args` and `run(Args)`.

pub mod apps;
pub mod blobs;
pub mod completions;
pub mod events;
pub mod logs;
pub mod node;
pub mod nodes;
pub mod run;
pub mod settings;
pub mod store;
pub mod swarm;
