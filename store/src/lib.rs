//! shoal-store: the SQLite block store and the per-source event trees.
//!
//! - [`Store`]: opens the SQLite file (WAL mode), hands out the one [`Writer`] and any number of
//!   [`Reader`]s. Raw blocks of at least [`FILE_MIN`] bytes (blob chunks) keep their bytes in
//!   files beside it (`files.rs`), still one store: one GC, one verify, one inspector. A store opened for writing is locked to one process (`lock.rs`): a second
//!   writer is refused with [`Error::Locked`], naming the holder.
//! - [`Writer`] (`log.rs`): appends batches to a source's banyan tree and moves its alias in one
//!   transaction; imports replicated trees; packs; collects garbage.
//! - [`Store::check_on_open`] (`check.rs`): the bounded start-up integrity check.
//! - [`Reader`] (`read.rs`, `inspect.rs`): streaming event reads (forward/backward, filtered by
//!   selectors and lamport/time ranges), blocks by CID, and the inspector's views.
//! - Shared types: [`SourceId`], [`NewEvent`], [`Event`], [`EventFilter`], [`Selector`],
//!   [`OffsetMap`], and [`Cid`] (cid 0.11, the type libp2p uses).
//!
//! Invariant kept by the whole crate: every alias names a complete tree (all blocks present and
//! hash-verified) except while a caller deliberately pins something incomplete; a committed
//! append or import is visible to every reader started after the commit.

pub mod blob;
mod blocks;
pub mod car;
mod check;
mod checkpoint;
pub mod cid;
pub mod console;
pub mod dag;
pub mod dagpb;
mod error;
mod event;
mod files;
mod gc;
mod inspect;
mod lock;
mod log;
mod offset;
mod read;
mod schema;
mod side;
pub mod snapshot;
mod store;
mod streams;
pub mod tree;

pub use crate::check::{OpenCheck, QUICK_CHECK_MAX_BYTES};
pub use crate::cid::Cid;
pub use crate::error::{Error, Result};
pub use crate::event::{
    Event, EventFilter, Lamport, NewEvent, Offset, Selector, SourceId, MAX_LAMPORT,
};
pub use crate::files::{DIRECT_ALIGN, FILE_DIRS, FILE_MIN};
pub use crate::gc::{GcMark, GcStart, GcStats};
pub use crate::inspect::{
    BlockView, NodeShape, Problem, ProblemKind, SourceStats, Stats, TreeShape, VerifyReport,
};
pub use crate::log::{
    Appended, ImportAttempt, Imported, PackTicket, Packed, PreparedPack, Pruned, RetentionRule,
    Writer,
};
pub use crate::offset::OffsetMap;
pub use crate::read::{EventIter, Reader, SourceInfo};
pub use crate::schema::Durability;
pub use crate::store::{Store, StoreConfig};
pub use crate::tree::TreeConfig;
