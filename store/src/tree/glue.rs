//! Glue between banyan and the SQLite block store: a [`ReadOnlyStore`] over a shared
//! connection that also sees blocks staged by the running transaction, and a [`BlockWriter`]
//! that stages blocks in memory until the caller writes them, with the alias move, in one
//! SQLite transaction.
//!
//! Invariant: a staged block's CID is computed from its bytes here, so staged blocks are
//! trusted; nothing reaches SQLite from here directly.

use crate::{
    blocks,
    cid::{self, Cid, IpldCid},
    error::Error,
};
use banyan::store::{BlockWriter, ReadOnlyStore};
use rusqlite::Connection;
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

/// Blocks written by one banyan transaction, in write order.
#[derive(Debug, Default)]
pub(crate) struct Staged {
    pub order: Vec<IpldCid>,
    pub map: HashMap<IpldCid, Vec<u8>>,
}

impl Staged {
    /// Adds a block (once: a block staged twice keeps its first place in the order).
    pub fn insert(&mut self, link: IpldCid, data: Vec<u8>) {
        if self.map.insert(link, data).is_none() {
            self.order.push(link);
        }
    }

    /// Takes the staged blocks, in write order, as public CIDs.
    pub fn drain(&mut self) -> Vec<(Cid, Vec<u8>)> {
        let order = std::mem::take(&mut self.order);
        let mut map = std::mem::take(&mut self.map);
        order
            .into_iter()
            .filter_map(|c| {
                let data = map.remove(&c)?;
                cid::from_ipld(&c).ok().map(|c| (c, data))
            })
            .collect()
    }
}

pub(crate) type Staging = Arc<Mutex<Staged>>;

/// Reads blocks from SQLite (and from a staging area, when writing).
#[derive(Clone)]
pub(crate) struct SqliteReader {
    conn: Arc<Mutex<Connection>>,
    staged: Option<Staging>,
}

impl SqliteReader {
    pub fn new(conn: Arc<Mutex<Connection>>) -> Self {
        Self { conn, staged: None }
    }

    /// The same reader, also seeing `staged`.
    pub fn with_staging(&self, staged: Staging) -> Self {
        Self {
            conn: self.conn.clone(),
            staged: Some(staged),
        }
    }
}

impl ReadOnlyStore<IpldCid> for SqliteReader {
    fn get(&self, link: &IpldCid) -> anyhow::Result<Box<[u8]>> {
        if let Some(staged) = &self.staged {
            let staged = staged
                .lock()
                .map_err(|_| anyhow::anyhow!("staging poisoned"))?;
            if let Some(data) = staged.map.get(link) {
                return Ok(data.clone().into_boxed_slice());
            }
        }
        let cid = cid::from_ipld(link)?;
        let conn = self
            .conn
            .lock()
            .map_err(|_| anyhow::anyhow!("connection poisoned"))?;
        match blocks::get(&conn, &cid)? {
            Some(data) => Ok(data.into_boxed_slice()),
            None => Err(Error::MissingBlock(cid).into()),
        }
    }
}

/// Stages the blocks banyan writes.
pub(crate) struct Stager(pub Staging);

impl BlockWriter<IpldCid> for Stager {
    fn put(&mut self, data: Vec<u8>) -> anyhow::Result<IpldCid> {
        let link = cid::ipld_cid_of(&data)?;
        let mut staged = self
            .0
            .lock()
            .map_err(|_| anyhow::anyhow!("staging poisoned"))?;
        staged.insert(link, data);
        Ok(link)
    }
}
