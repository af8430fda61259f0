//! Staged banyan transactions: new tree blocks are built in memory and handed over to be
//! written with the alias move in one SQLite transaction.

use super::*;

/// A banyan transaction whose new blocks are staged in memory (and read back from there)
/// until [`StagedTxn::blocks`] hands them over, to be written with the alias move in one
/// SQLite transaction.
pub(super) struct StagedTxn {
    staging: Staging,
    txn: banyan::Transaction<EventTree, SqliteReader, Stager>,
}

impl StagedTxn {
    pub(super) fn new(forest: &Forest) -> Self {
        let staging = Staging::default();
        let txn =
            forest.transaction(|r| (r.with_staging(staging.clone()), Stager(staging.clone())));
        Self { staging, txn }
    }

    /// Stages `blocks` as if this transaction had written them.
    pub(super) fn stage(&mut self, blocks: Blocks) -> Result<()> {
        let mut staged = self.staged()?;
        for (c, data) in blocks {
            staged.insert(cid::to_ipld(&c)?, data);
        }
        Ok(())
    }

    /// The tree at `root` (stored or staged), to extend or pack with `config`.
    pub(super) fn builder(&self, config: banyan::Config, root: &Cid) -> Result<Builder> {
        load_builder(&self.txn, config, root)
    }

    /// Appends `entries` to `builder` as one unpacked leaf.
    pub(super) fn extend(
        &mut self,
        builder: &mut Builder,
        entries: Vec<(Key, Value)>,
    ) -> Result<()> {
        self.txn
            .extend_unpacked(builder, entries)
            .map_err(Error::from_tree)
    }

    /// Packs the tree at `root` with `config` (loaded with it, so sealing is judged as when
    /// the tree was built): the new root, or `None` when it was packed already.
    pub(super) fn pack(&mut self, config: banyan::Config, root: &Cid) -> Result<Option<Cid>> {
        let mut packer = self.builder(config, root)?;
        if self
            .txn
            .is_packed(&packer.snapshot())
            .map_err(Error::from_tree)?
        {
            return Ok(None);
        }
        self.txn.pack(&mut packer).map_err(Error::from_tree)?;
        root_of(&packer).map(Some)
    }

    /// Drops what `query` does not keep from `builder`'s packed part (banyan's `retain`).
    pub(super) fn retain<Q: banyan::query::Query<EventTree> + Send + Sync>(
        &mut self,
        builder: &mut Builder,
        query: &Q,
    ) -> Result<()> {
        self.txn.retain(builder, query).map_err(Error::from_tree)
    }

    /// The staged blocks, in write order.
    pub(super) fn blocks(self) -> Result<Blocks> {
        Ok(self.staged()?.drain())
    }

    pub(super) fn staged(&self) -> Result<std::sync::MutexGuard<'_, Staged>> {
        self.staging
            .lock()
            .map_err(|_| Error::Tree("staging poisoned".into()))
    }
}

pub(super) fn load_builder(forest: &Forest, config: banyan::Config, root: &Cid) -> Result<Builder> {
    forest
        .load_stream_builder(tree::secrets(), config, cid::to_ipld(root)?)
        .map_err(Error::from_tree)
}

/// The root of a tree being built (never empty once events were added).
pub(super) fn root_of(builder: &Builder) -> Result<Cid> {
    let root = builder
        .link()
        .ok_or_else(|| Error::Tree("the tree is empty".into()))?;
    cid::from_ipld(&root)
}

/// Runs `f` on a tree that came from a peer, turning a panic inside banyan (it asserts on some
/// malformed shapes) into a `Corrupt` error instead of taking the node down.
pub(super) fn guarded<T>(root: Cid, f: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|_| {
        Err(Error::Corrupt {
            cid: root,
            reason: "malformed tree".into(),
        })
    })
}

/// Keys and values for banyan, with names and tags interned across the batch.
pub(super) fn to_entries(events: Vec<NewEvent>) -> Vec<(Key, Value)> {
    let mut strings: HashMap<String, SharedStr> = HashMap::new();
    let mut intern = |s: String| -> SharedStr {
        if let Some(shared) = strings.get(&s) {
            return shared.clone();
        }
        let shared = SharedStr::from(s.as_str());
        strings.insert(s, shared.clone());
        shared
    };
    events
        .into_iter()
        .map(|e| {
            let key = Key {
                lamport: e.lamport,
                time: e.timestamp,
                semantics: intern(e.semantics),
                name: intern(e.name),
                tags: e.tags.into_iter().map(&mut intern).collect(),
            };
            (key, String::from(Box::<str>::from(e.payload)))
        })
        .collect()
}
