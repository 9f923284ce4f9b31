//! Storage for a log: what hyperlog keeps, behind a small trait, with an in-memory store and a
//! durable one on `redb` (the only file that touches the storage engine).
//!
//! A store keeps (spec §2.11): every node by key (raw value bytes, links, log, seq, change,
//! identity, signature); per-log entries `seq -> (key, change, logLinks)`, dedup entries
//! included; the key inserted at each change; the global change counter; the head set; and the
//! local log id, generated on first open and persisted.
//!
//! Stores are written only through [`Store::commit`], which applies a whole [`WriteBatch`]
//! atomically: in the durable store it is one redb write transaction, and it returns once that
//! transaction is committed (durable). The insertion logic (what to write) lives in
//! [`super::hyperlog`]; a store does no checking of its own.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::{OnceLock, RwLock};

use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition, TableHandle};

use super::node::{Key, Node, KEY_LEN};
use super::wire::{put_varint, read_varint, NodeMessage};

/// A per-log entry: position `seq` of log `log` holds node `key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The node this entry points at (for a dedup entry, a node first filed in another log).
    pub key: Key,
    /// The local change of that node.
    pub change: u64,
    /// The distinct log ids of the nodes it links to, except this entry's own log.
    pub log_links: Vec<String>,
}

/// A storage failure. None of these are caused by the data being inserted.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The storage engine failed (I/O, a broken database file, ...).
    #[error("storage engine: {0}")]
    Engine(String),
    /// Stored bytes do not decode.
    #[error("corrupt store: {0}")]
    Corrupt(String),
    /// The database was written in a layout this version does not know (by a newer version).
    #[error("store format {found} is not supported (this version reads formats up to {supported}); upgrade the program")]
    UnsupportedFormat {
        /// The format the database says it has.
        found: u64,
        /// The newest format this version knows.
        supported: u64,
    },
}

/// Everything one atomic write does.
#[derive(Debug, Clone, Default)]
pub struct WriteBatch {
    /// New nodes (each stored under its key, and under its change in the changes index).
    pub nodes: Vec<Node>,
    /// New entries, `(log, seq, entry)`.
    pub entries: Vec<(String, u64, Entry)>,
    /// Keys that become heads (not heads before).
    pub add_heads: Vec<Key>,
    /// Heads that stop being heads (applied before `add_heads`).
    pub remove_heads: Vec<Key>,
    /// The new global change counter, if it changes.
    pub changes: Option<u64>,
}

impl WriteBatch {
    /// Whether the batch writes nothing.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
            && self.entries.is_empty()
            && self.add_heads.is_empty()
            && self.remove_heads.is_empty()
            && self.changes.is_none()
    }
}

/// Rows of a view: `(row key, row value)`, kept sorted by key.
pub type ViewRows = Vec<(Vec<u8>, Vec<u8>)>;

/// Reads of one consistent state of a store, for the many lookups of a batch being built (one
/// read transaction for all of them, in the durable store).
pub trait Snapshot: Send {
    /// As [`Store::node`].
    fn node(&self, key: &Key) -> Result<Option<Node>, StoreError>;
    /// As [`Store::log_head`].
    fn log_head(&self, log: &str) -> Result<u64, StoreError>;
    /// As [`Store::heads`].
    fn heads(&self) -> Result<Vec<Key>, StoreError>;
    /// As [`Store::changes`].
    fn changes(&self) -> Result<u64, StoreError>;
}

/// The storage behind a [`super::hyperlog::Log`]. Reads see every committed batch.
pub trait Store: Send + Sync {
    /// The committed state as it is now, for many reads. The log takes one while it holds its
    /// insertion lock, so nothing commits while a batch reads through it.
    fn snapshot(&self) -> Result<Box<dyn Snapshot + '_>, StoreError>;
    /// The local log id (generated and persisted on first open).
    fn local_id(&self) -> &str;
    /// A node by key, as first stored (its own log and seq).
    fn node(&self, key: &Key) -> Result<Option<Node>, StoreError>;
    /// Entry `seq` of `log`.
    fn entry(&self, log: &str, seq: u64) -> Result<Option<Entry>, StoreError>;
    /// The highest seq of `log` (0 if the log is unknown).
    fn log_head(&self, log: &str) -> Result<u64, StoreError>;
    /// The heads, sorted by key.
    fn heads(&self) -> Result<Vec<Key>, StoreError>;
    /// The global change counter (the change of the last new node; 0 when empty).
    fn changes(&self) -> Result<u64, StoreError>;
    /// The node inserted at `change`.
    fn node_at_change(&self, change: u64) -> Result<Option<Node>, StoreError>;
    /// Applies a batch atomically (and durably, for a durable store). `prepare` is called on
    /// each new node, in batch order, just before it is written: the log signs there, so that
    /// signing overlaps the writing (see `log::sign::SigningQueue`).
    fn commit(
        &self,
        batch: WriteBatch,
        prepare: &mut dyn FnMut(&mut Node),
    ) -> Result<(), StoreError>;

    /// The change view `view` has folded up to (0 if it never saved). See [`super::view`].
    fn view_change(&self, view: &str) -> Result<u64, StoreError>;
    /// Up to `limit` rows of view `view`, in key order, with keys strictly after `after` (from
    /// the first row when `None`).
    fn view_rows(
        &self,
        view: &str,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<ViewRows, StoreError>;
    /// Writes rows of view `view` and sets its change to `change`, atomically (and durably, for a
    /// durable store). This is separate from the log's own [`Store::commit`]: a view is derived
    /// from committed changes only, so it can lag behind the log but never run ahead of it.
    fn view_commit(&self, view: &str, change: u64, rows: ViewRows) -> Result<(), StoreError>;
}

/// A new cuid-like log id: 25 characters of `[a-z0-9]`, starting with `c`, then the time in
/// milliseconds (base 36) and random characters.
pub fn new_log_id() -> Result<String, StoreError> {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut id = String::with_capacity(25);
    id.push('c');
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let mut time = [b'0'; 8];
    let mut m = millis;
    for slot in time.iter_mut().rev() {
        *slot = DIGITS[(m % 36) as usize];
        m /= 36;
    }
    id.extend(time.iter().map(|&b| char::from(b)));
    let mut random = [0u8; 16];
    getrandom::fill(&mut random).map_err(|e| StoreError::Engine(format!("random: {e}")))?;
    id.extend(
        random
            .iter()
            .map(|&b| char::from(DIGITS[usize::from(b) % 36])),
    );
    Ok(id)
}

// ---------------------------------------------------------------------------------------------
// In memory

#[derive(Default)]
struct MemState {
    nodes: HashMap<Key, Node>,
    entries: HashMap<String, BTreeMap<u64, Entry>>,
    by_change: BTreeMap<u64, Key>,
    heads: BTreeSet<Key>,
    changes: u64,
    view_changes: HashMap<String, u64>,
    view_rows: HashMap<String, BTreeMap<Vec<u8>, Vec<u8>>>,
}

/// A store in memory (lost when dropped).
pub struct MemoryStore {
    id: String,
    state: RwLock<MemState>,
}

impl MemoryStore {
    /// An empty store with a fresh log id.
    pub fn new() -> Result<MemoryStore, StoreError> {
        Ok(MemoryStore::with_id(new_log_id()?))
    }

    /// An empty store whose local log id is `id`.
    pub fn with_id(id: impl Into<String>) -> MemoryStore {
        MemoryStore {
            id: id.into(),
            state: RwLock::new(MemState::default()),
        }
    }

    fn read(&self) -> Result<std::sync::RwLockReadGuard<'_, MemState>, StoreError> {
        self.state
            .read()
            .map_err(|_| StoreError::Engine("memory store lock poisoned".into()))
    }
}

/// The memory store reads under its lock call by call: each read is cheap, and holding the lock
/// for a whole batch would block the commit that ends it.
struct MemorySnapshot<'a>(&'a MemoryStore);

impl Snapshot for MemorySnapshot<'_> {
    fn node(&self, key: &Key) -> Result<Option<Node>, StoreError> {
        self.0.node(key)
    }
    fn log_head(&self, log: &str) -> Result<u64, StoreError> {
        self.0.log_head(log)
    }
    fn heads(&self) -> Result<Vec<Key>, StoreError> {
        self.0.heads()
    }
    fn changes(&self) -> Result<u64, StoreError> {
        self.0.changes()
    }
}

impl Store for MemoryStore {
    fn snapshot(&self) -> Result<Box<dyn Snapshot + '_>, StoreError> {
        Ok(Box::new(MemorySnapshot(self)))
    }

    fn local_id(&self) -> &str {
        &self.id
    }

    fn node(&self, key: &Key) -> Result<Option<Node>, StoreError> {
        Ok(self.read()?.nodes.get(key).cloned())
    }

    fn entry(&self, log: &str, seq: u64) -> Result<Option<Entry>, StoreError> {
        Ok(self
            .read()?
            .entries
            .get(log)
            .and_then(|l| l.get(&seq))
            .cloned())
    }

    fn log_head(&self, log: &str) -> Result<u64, StoreError> {
        Ok(self
            .read()?
            .entries
            .get(log)
            .and_then(|l| l.keys().next_back().copied())
            .unwrap_or(0))
    }

    fn heads(&self) -> Result<Vec<Key>, StoreError> {
        Ok(self.read()?.heads.iter().copied().collect())
    }

    fn changes(&self) -> Result<u64, StoreError> {
        Ok(self.read()?.changes)
    }

    fn node_at_change(&self, change: u64) -> Result<Option<Node>, StoreError> {
        let state = self.read()?;
        Ok(state
            .by_change
            .get(&change)
            .and_then(|key| state.nodes.get(key))
            .cloned())
    }

    fn commit(
        &self,
        mut batch: WriteBatch,
        prepare: &mut dyn FnMut(&mut Node),
    ) -> Result<(), StoreError> {
        // Before taking the lock: readers need not wait for the signing.
        batch.nodes.iter_mut().for_each(prepare);
        let mut state = self
            .state
            .write()
            .map_err(|_| StoreError::Engine("memory store lock poisoned".into()))?;
        for node in batch.nodes {
            state.by_change.insert(node.change, node.key);
            state.nodes.insert(node.key, node);
        }
        for (log, seq, entry) in batch.entries {
            state.entries.entry(log).or_default().insert(seq, entry);
        }
        for key in &batch.remove_heads {
            state.heads.remove(key);
        }
        state.heads.extend(batch.add_heads);
        if let Some(changes) = batch.changes {
            state.changes = changes;
        }
        Ok(())
    }

    fn view_change(&self, view: &str) -> Result<u64, StoreError> {
        Ok(self.read()?.view_changes.get(view).copied().unwrap_or(0))
    }

    fn view_rows(
        &self,
        view: &str,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<ViewRows, StoreError> {
        use std::ops::Bound;
        let state = self.read()?;
        let Some(rows) = state.view_rows.get(view) else {
            return Ok(Vec::new());
        };
        let start = match after {
            Some(k) => Bound::Excluded(k.to_vec()),
            None => Bound::Unbounded,
        };
        Ok(rows
            .range((start, Bound::Unbounded))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn view_commit(&self, view: &str, change: u64, rows: ViewRows) -> Result<(), StoreError> {
        let mut state = self
            .state
            .write()
            .map_err(|_| StoreError::Engine("memory store lock poisoned".into()))?;
        let table = state.view_rows.entry(view.to_string()).or_default();
        table.extend(rows);
        state.view_changes.insert(view.to_string(), change);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Durable, on redb
//
// Format 2 (`meta` `"format"` = 2). Appends write mostly at the ends of B-trees: a random-key
// table would dirty one page per new node and make every commit rewrite a large part of the
// file (the first format, keyed by node key, committed 1000 appends in 20–30 ms at 100 000
// nodes; this one in a few ms).
//
// - `meta`: `"id"` → the local log id; `"changes"` → the counter (8 bytes big endian);
//   `"format"` → the layout (8 bytes big endian).
// - `nodes_by_change`: change → the node as a wire Node message (proto2, as hyperlog stores it).
// - `key_index` and `key_index_recent`: (the key's first 8 bytes as a big-endian u64, change)
//   → (). Small rows, so few pages; a lookup reads the candidates under the prefix in both and
//   keeps the one whose full key matches, so two keys sharing a prefix (an attacker can make one
//   with ~2^32 hashes) are told apart, never confused. New keys go to the small
//   `key_index_recent`, which only has a few dozen pages for a commit to dirty; once it holds
//   `RECENT_KEYS` rows, that commit moves them into `key_index` in key order (one pass over its
//   pages) and empties it. Random keys then cost the big index one write per page per
//   `RECENT_KEYS` new nodes instead of about one per node.
// - `heads`: 32-byte key → empty.
// - `entries`: (log, seq) → entry: varint change, 32 key bytes, varint count, then each log id
//   as varint length + UTF-8.
// - `view_changes` (view name → the change it has folded up to) and `view_rows` ((view name,
//   row key) → row value), written together in one transaction per view catch-up batch.
//
// Format 1 (no `"format"`) kept nodes in `nodes` (32-byte key → node) and `changes` (change →
// key); opening such a database converts it in one transaction (see `migrate_from_format_1`).

/// The layout this version writes.
const FORMAT: u64 = 2;

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const NODES_BY_CHANGE: TableDefinition<u64, &[u8]> = TableDefinition::new("nodes_by_change");
const KEY_INDEX: TableDefinition<(u64, u64), ()> = TableDefinition::new("key_index");
const KEY_INDEX_RECENT: TableDefinition<(u64, u64), ()> = TableDefinition::new("key_index_recent");
/// How many keys `key_index_recent` gathers before they move to `key_index`. 8192 rows are ~60
/// pages; the move then touches each page of `key_index` at most once per 8192 nodes. At 100 000
/// nodes this halves commit time against a single index (measured with a throwaway program).
const RECENT_KEYS: u64 = 8192;
const HEADS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("heads");
const ENTRIES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("entries");
const VIEW_CHANGES: TableDefinition<&str, u64> = TableDefinition::new("view_changes");
const VIEW_ROWS: TableDefinition<(&str, &[u8]), &[u8]> = TableDefinition::new("view_rows");
const FORMAT_1_NODES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("nodes");
const FORMAT_1_CHANGES: TableDefinition<u64, &[u8]> = TableDefinition::new("changes");

fn engine(err: impl std::fmt::Display) -> StoreError {
    StoreError::Engine(err.to_string())
}

/// The `key_index` prefix of a key.
fn key_prefix(key: &Key) -> u64 {
    let b = key.as_bytes();
    u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

fn read_u64(bytes: &[u8], what: &str) -> Result<u64, StoreError> {
    let arr: [u8; 8] = bytes
        .try_into()
        .map_err(|_| StoreError::Corrupt(format!("{what} is not 8 bytes")))?;
    Ok(u64::from_be_bytes(arr))
}

/// A durable store in one redb database file. Every [`Store::commit`] is one write transaction,
/// durable when it returns; a crash leaves the last committed state.
pub struct RedbStore {
    id: String,
    db: Database,
}

impl RedbStore {
    /// Opens (or creates) the database at `path`. A new database gets a fresh local log id; a
    /// database of the first format is converted to the current one first (in one
    /// transaction: a crash midway leaves it as it was).
    pub fn open(path: impl AsRef<Path>) -> Result<RedbStore, StoreError> {
        let db = Database::create(path).map_err(engine)?;
        let txn = db.begin_write().map_err(engine)?;
        let format_1 = txn
            .list_tables()
            .map_err(engine)?
            .any(|table| table.name() == FORMAT_1_NODES.name());
        let id = {
            let mut meta = txn.open_table(META).map_err(engine)?;
            txn.open_table(NODES_BY_CHANGE).map_err(engine)?;
            txn.open_table(KEY_INDEX).map_err(engine)?;
            txn.open_table(KEY_INDEX_RECENT).map_err(engine)?;
            txn.open_table(HEADS).map_err(engine)?;
            txn.open_table(ENTRIES).map_err(engine)?;
            txn.open_table(VIEW_CHANGES).map_err(engine)?;
            txn.open_table(VIEW_ROWS).map_err(engine)?;
            let format = meta
                .get("format")
                .map_err(engine)?
                .map(|v| read_u64(v.value(), "store format"))
                .transpose()?;
            match format {
                Some(FORMAT) => {}
                Some(found) => {
                    return Err(StoreError::UnsupportedFormat {
                        found,
                        supported: FORMAT,
                    })
                }
                None => {
                    if format_1 {
                        migrate_from_format_1(&txn)?;
                    }
                    meta.insert("format", FORMAT.to_be_bytes().as_slice())
                        .map_err(engine)?;
                }
            }
            let existing = meta
                .get("id")
                .map_err(engine)?
                .map(|v| String::from_utf8(v.value().to_vec()));
            match existing {
                Some(Ok(id)) => id,
                Some(Err(_)) => return Err(StoreError::Corrupt("local id is not UTF-8".into())),
                None => {
                    let id = new_log_id()?;
                    meta.insert("id", id.as_bytes()).map_err(engine)?;
                    id
                }
            }
        };
        txn.commit().map_err(engine)?;
        Ok(RedbStore { id, db })
    }

    /// A read transaction; its tables open as they are first read.
    fn read(&self) -> Result<RedbSnapshot, StoreError> {
        Ok(RedbSnapshot {
            txn: self.db.begin_read().map_err(engine)?,
            index: OnceLock::new(),
            recent: OnceLock::new(),
            nodes: OnceLock::new(),
            entries: OnceLock::new(),
            heads: OnceLock::new(),
            meta: OnceLock::new(),
        })
    }
}

/// One redb read transaction's view. A single lookup opens only the tables it reads; a batch's
/// many lookups open each once.
struct RedbSnapshot {
    txn: redb::ReadTransaction,
    index: OnceLock<redb::ReadOnlyTable<(u64, u64), ()>>,
    recent: OnceLock<redb::ReadOnlyTable<(u64, u64), ()>>,
    nodes: OnceLock<redb::ReadOnlyTable<u64, &'static [u8]>>,
    entries: OnceLock<redb::ReadOnlyTable<(&'static str, u64), &'static [u8]>>,
    heads: OnceLock<redb::ReadOnlyTable<&'static [u8], &'static [u8]>>,
    meta: OnceLock<redb::ReadOnlyTable<&'static str, &'static [u8]>>,
}

/// `table` of `txn`, opened on first use.
fn opened<'t, K: redb::Key + 'static, V: redb::Value + 'static>(
    txn: &redb::ReadTransaction,
    cell: &'t OnceLock<redb::ReadOnlyTable<K, V>>,
    table: TableDefinition<K, V>,
) -> Result<&'t redb::ReadOnlyTable<K, V>, StoreError> {
    if let Some(open) = cell.get() {
        return Ok(open);
    }
    let open = txn.open_table(table).map_err(engine)?;
    Ok(cell.get_or_init(|| open))
}

impl Snapshot for RedbSnapshot {
    fn node(&self, key: &Key) -> Result<Option<Node>, StoreError> {
        let prefix = key_prefix(key);
        let candidates = (prefix, 0)..=(prefix, u64::MAX);
        let nodes = opened(&self.txn, &self.nodes, NODES_BY_CHANGE)?;
        let recent = opened(&self.txn, &self.recent, KEY_INDEX_RECENT)?
            .range(candidates.clone())
            .map_err(engine)?;
        let older = opened(&self.txn, &self.index, KEY_INDEX)?
            .range(candidates)
            .map_err(engine)?;
        for item in recent.chain(older) {
            let change = item.map_err(engine)?.0.value().1;
            let bytes = nodes.get(change).map_err(engine)?.ok_or_else(|| {
                StoreError::Corrupt(format!(
                    "key index names change {change}, which has no node"
                ))
            })?;
            let node = decode_node(bytes.value())?;
            if node.key == *key {
                return Ok(Some(node));
            }
        }
        Ok(None)
    }

    fn log_head(&self, log: &str) -> Result<u64, StoreError> {
        let mut range = opened(&self.txn, &self.entries, ENTRIES)?
            .range((log, 0)..=(log, u64::MAX))
            .map_err(engine)?;
        match range.next_back() {
            Some(item) => Ok(item.map_err(engine)?.0.value().1),
            None => Ok(0),
        }
    }

    fn heads(&self) -> Result<Vec<Key>, StoreError> {
        let mut out = Vec::new();
        for item in opened(&self.txn, &self.heads, HEADS)?
            .iter()
            .map_err(engine)?
        {
            out.push(decode_key(item.map_err(engine)?.0.value())?);
        }
        Ok(out)
    }

    fn changes(&self) -> Result<u64, StoreError> {
        match opened(&self.txn, &self.meta, META)?
            .get("changes")
            .map_err(engine)?
        {
            None => Ok(0),
            Some(v) => read_u64(v.value(), "change counter"),
        }
    }
}

/// Moves the rows of `key_index_recent` into `key_index` once there are `limit` or more, in key
/// order, and empties it.
fn move_recent_keys(txn: &redb::WriteTransaction, limit: u64) -> Result<(), StoreError> {
    {
        let recent = txn.open_table(KEY_INDEX_RECENT).map_err(engine)?;
        if recent.len().map_err(engine)? < limit {
            return Ok(());
        }
        let mut index = txn.open_table(KEY_INDEX).map_err(engine)?;
        for item in recent.iter().map_err(engine)? {
            index
                .insert(item.map_err(engine)?.0.value(), ())
                .map_err(engine)?;
        }
    }
    txn.delete_table(KEY_INDEX_RECENT).map_err(engine)?;
    txn.open_table(KEY_INDEX_RECENT).map_err(engine)?;
    Ok(())
}

/// Converts a format 1 database, inside the opening transaction: every node moves to
/// `nodes_by_change` and `key_index`, checked against its change and key on the way, and the
/// old tables are deleted. Entries, heads, views and meta are the same in both formats.
fn migrate_from_format_1(txn: &redb::WriteTransaction) -> Result<(), StoreError> {
    let mut moved = 0u64;
    {
        let old_changes = txn.open_table(FORMAT_1_CHANGES).map_err(engine)?;
        let old_nodes = txn.open_table(FORMAT_1_NODES).map_err(engine)?;
        let mut nodes = txn.open_table(NODES_BY_CHANGE).map_err(engine)?;
        let mut index = txn.open_table(KEY_INDEX).map_err(engine)?;
        for item in old_changes.iter().map_err(engine)? {
            let (change, key) = item.map_err(engine)?;
            let (change, key) = (change.value(), decode_key(key.value())?);
            let bytes = old_nodes
                .get(key.as_bytes().as_slice())
                .map_err(engine)?
                .ok_or_else(|| {
                    StoreError::Corrupt(format!(
                        "format 1: change {change} names missing node {key}"
                    ))
                })?;
            let node = decode_node(bytes.value())?;
            if node.key != key || node.change != change {
                return Err(StoreError::Corrupt(format!(
                    "format 1: node {key} at change {change} says key {} change {}",
                    node.key, node.change
                )));
            }
            nodes.insert(change, bytes.value()).map_err(engine)?;
            index
                .insert((key_prefix(&key), change), ())
                .map_err(engine)?;
            moved += 1;
        }
    }
    txn.delete_table(FORMAT_1_NODES).map_err(engine)?;
    txn.delete_table(FORMAT_1_CHANGES).map_err(engine)?;
    tracing::info!(
        nodes = moved,
        "converted the log store from format 1 to format {FORMAT}"
    );
    Ok(())
}

fn encode_entry(entry: &Entry) -> Vec<u8> {
    let mut out = Vec::with_capacity(48);
    put_varint(&mut out, entry.change);
    out.extend_from_slice(entry.key.as_bytes());
    put_varint(&mut out, entry.log_links.len() as u64);
    for log in &entry.log_links {
        put_varint(&mut out, log.len() as u64);
        out.extend_from_slice(log.as_bytes());
    }
    out
}

fn decode_entry(buf: &[u8]) -> Result<Entry, StoreError> {
    let corrupt = || StoreError::Corrupt("bad entry".into());
    let mut at = 0;
    let varint = |at: &mut usize| -> Result<u64, StoreError> {
        let rest = buf.get(*at..).ok_or_else(corrupt)?;
        let (v, n) = read_varint(rest)
            .map_err(|_| corrupt())?
            .ok_or_else(corrupt)?;
        *at += n;
        Ok(v)
    };
    let change = varint(&mut at)?;
    let key_bytes: [u8; KEY_LEN] = buf
        .get(at..at + KEY_LEN)
        .and_then(|s| s.try_into().ok())
        .ok_or_else(corrupt)?;
    at += KEY_LEN;
    let count = varint(&mut at)?;
    let mut log_links = Vec::new();
    for _ in 0..count {
        let len = usize::try_from(varint(&mut at)?).map_err(|_| corrupt())?;
        let bytes = buf.get(at..at.saturating_add(len)).ok_or_else(corrupt)?;
        at += len;
        log_links.push(String::from_utf8(bytes.to_vec()).map_err(|_| corrupt())?);
    }
    Ok(Entry {
        key: Key::from_bytes(key_bytes),
        change,
        log_links,
    })
}

fn decode_key(bytes: &[u8]) -> Result<Key, StoreError> {
    let arr: [u8; KEY_LEN] = bytes
        .try_into()
        .map_err(|_| StoreError::Corrupt("stored key is not 32 bytes".into()))?;
    Ok(Key::from_bytes(arr))
}

fn decode_node(bytes: &[u8]) -> Result<Node, StoreError> {
    let msg = NodeMessage::decode(bytes).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    Node::from_message(msg).map_err(|e| StoreError::Corrupt(e.to_string()))
}

impl Store for RedbStore {
    fn local_id(&self) -> &str {
        &self.id
    }

    fn snapshot(&self) -> Result<Box<dyn Snapshot + '_>, StoreError> {
        Ok(Box::new(self.read()?))
    }

    fn node(&self, key: &Key) -> Result<Option<Node>, StoreError> {
        self.read()?.node(key)
    }

    fn entry(&self, log: &str, seq: u64) -> Result<Option<Entry>, StoreError> {
        let txn = self.db.begin_read().map_err(engine)?;
        let table = txn.open_table(ENTRIES).map_err(engine)?;
        let value = table.get((log, seq)).map_err(engine)?;
        value.map(|v| decode_entry(v.value())).transpose()
    }

    fn log_head(&self, log: &str) -> Result<u64, StoreError> {
        self.read()?.log_head(log)
    }

    fn heads(&self) -> Result<Vec<Key>, StoreError> {
        self.read()?.heads()
    }

    fn changes(&self) -> Result<u64, StoreError> {
        self.read()?.changes()
    }

    fn node_at_change(&self, change: u64) -> Result<Option<Node>, StoreError> {
        let txn = self.db.begin_read().map_err(engine)?;
        let table = txn.open_table(NODES_BY_CHANGE).map_err(engine)?;
        let value = table.get(change).map_err(engine)?;
        value.map(|v| decode_node(v.value())).transpose()
    }

    fn commit(
        &self,
        mut batch: WriteBatch,
        prepare: &mut dyn FnMut(&mut Node),
    ) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let txn = self.db.begin_write().map_err(engine)?;
        {
            let mut nodes = txn.open_table(NODES_BY_CHANGE).map_err(engine)?;
            let mut index = txn.open_table(KEY_INDEX_RECENT).map_err(engine)?;
            // Each node's message is written straight into its place in the table (no encoded
            // copy of a large value on the side), and the node dropped once it is written.
            for mut node in std::mem::take(&mut batch.nodes) {
                prepare(&mut node);
                let (head, value, tail) = node.message_parts();
                let len = head.len() + value.len() + tail.len();
                let len = u32::try_from(len).map_err(|_| {
                    StoreError::Engine(format!(
                        "node {} is {len} bytes encoded, more than the store can hold in a row",
                        node.key
                    ))
                })?;
                let mut row = nodes.insert_reserve(node.change, len).map_err(engine)?;
                let out: &mut [u8] = row.as_mut();
                let (out_head, rest) = out.split_at_mut(head.len());
                let (out_value, out_tail) = rest.split_at_mut(value.len());
                out_head.copy_from_slice(&head);
                out_value.copy_from_slice(value);
                out_tail.copy_from_slice(&tail);
                drop(row);
                index
                    .insert((key_prefix(&node.key), node.change), ())
                    .map_err(engine)?;
            }
            let mut entries = txn.open_table(ENTRIES).map_err(engine)?;
            for (log, seq, entry) in &batch.entries {
                entries
                    .insert((log.as_str(), *seq), encode_entry(entry).as_slice())
                    .map_err(engine)?;
            }
            let mut heads = txn.open_table(HEADS).map_err(engine)?;
            for key in &batch.remove_heads {
                heads.remove(key.as_bytes().as_slice()).map_err(engine)?;
            }
            for key in &batch.add_heads {
                heads
                    .insert(key.as_bytes().as_slice(), [].as_slice())
                    .map_err(engine)?;
            }
            if let Some(counter) = batch.changes {
                let mut meta = txn.open_table(META).map_err(engine)?;
                meta.insert("changes", counter.to_be_bytes().as_slice())
                    .map_err(engine)?;
            }
        }
        move_recent_keys(&txn, RECENT_KEYS)?;
        txn.commit().map_err(engine)
    }

    fn view_change(&self, view: &str) -> Result<u64, StoreError> {
        let txn = self.db.begin_read().map_err(engine)?;
        let table = txn.open_table(VIEW_CHANGES).map_err(engine)?;
        let value = table.get(view).map_err(engine)?;
        Ok(value.map_or(0, |v| v.value()))
    }

    fn view_rows(
        &self,
        view: &str,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<ViewRows, StoreError> {
        use std::ops::Bound;
        let txn = self.db.begin_read().map_err(engine)?;
        let table = txn.open_table(VIEW_ROWS).map_err(engine)?;
        let start = match after {
            Some(k) => Bound::Excluded((view, k)),
            None => Bound::Included((view, [].as_slice())),
        };
        let mut out = Vec::new();
        for item in table
            .range::<(&str, &[u8])>((start, Bound::Unbounded))
            .map_err(engine)?
        {
            if out.len() >= limit {
                break;
            }
            let (k, v) = item.map_err(engine)?;
            let (name, row) = k.value();
            if name != view {
                break;
            }
            out.push((row.to_vec(), v.value().to_vec()));
        }
        Ok(out)
    }

    fn view_commit(&self, view: &str, change: u64, rows: ViewRows) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(engine)?;
        {
            let mut table = txn.open_table(VIEW_ROWS).map_err(engine)?;
            for (k, v) in &rows {
                table
                    .insert((view, k.as_slice()), v.as_slice())
                    .map_err(engine)?;
            }
            let mut changes = txn.open_table(VIEW_CHANGES).map_err(engine)?;
            changes.insert(view, change).map_err(engine)?;
        }
        txn.commit().map_err(engine)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exercise(store: &dyn Store) {
        assert_eq!(store.changes().unwrap(), 0);
        assert_eq!(store.log_head("A").unwrap(), 0);
        let n1 = Node::new(vec![], b"hello".to_vec(), "A".into(), 1, 1);
        let n2 = Node::new(vec![n1.key], b"world".to_vec(), "A".into(), 2, 2);
        let e = |n: &Node| Entry {
            key: n.key,
            change: n.change,
            log_links: vec![],
        };
        store
            .commit(
                WriteBatch {
                    nodes: vec![n1.clone()],
                    entries: vec![("A".into(), 1, e(&n1))],
                    add_heads: vec![n1.key],
                    remove_heads: vec![],
                    changes: Some(1),
                },
                &mut |_| {},
            )
            .unwrap();
        store
            .commit(
                WriteBatch {
                    nodes: vec![n2.clone()],
                    entries: vec![
                        ("A".into(), 2, e(&n2)),
                        (
                            "B".into(),
                            1,
                            Entry {
                                log_links: vec!["A".into(), "ü".into()],
                                ..e(&n2)
                            },
                        ),
                    ],
                    add_heads: vec![n2.key],
                    remove_heads: vec![n1.key],
                    changes: Some(2),
                },
                &mut |_| {},
            )
            .unwrap();
        assert_eq!(store.node(&n2.key).unwrap(), Some(n2.clone()));
        assert_eq!(store.node(&Key::compute(&[], b"x")).unwrap(), None);
        assert_eq!(store.heads().unwrap(), vec![n2.key]);
        assert_eq!(store.changes().unwrap(), 2);
        assert_eq!(store.log_head("A").unwrap(), 2);
        assert_eq!(store.log_head("B").unwrap(), 1);
        assert_eq!(store.log_head("").unwrap(), 0);
        assert_eq!(
            store.entry("B", 1).unwrap().unwrap().log_links,
            vec!["A".to_string(), "ü".to_string()]
        );
        assert_eq!(store.entry("B", 2).unwrap(), None);
        assert_eq!(
            store.node_at_change(1).unwrap().map(|n| n.key),
            Some(n1.key)
        );
        assert_eq!(store.node_at_change(3).unwrap(), None);
    }

    #[test]
    fn memory_store() {
        let store = MemoryStore::new().unwrap();
        assert_eq!(store.local_id().len(), 25);
        exercise(&store);
    }

    #[test]
    fn redb_store_persists() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.redb");
        let id = {
            let store = RedbStore::open(&path).unwrap();
            exercise(&store);
            store.local_id().to_string()
        };
        let store = RedbStore::open(&path).unwrap();
        assert_eq!(store.local_id(), id);
        assert_eq!(store.changes().unwrap(), 2);
        assert_eq!(store.heads().unwrap().len(), 1);
    }

    /// Two keys with the same first 8 bytes share a `key_index` prefix: each lookup must still
    /// find its own node, and a third key under that prefix none. (The store does not check
    /// keys against content, which is what lets the test forge them.)
    #[test]
    fn redb_keys_sharing_an_index_prefix_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let store = RedbStore::open(dir.path().join("log.redb")).unwrap();
        let forged = |last: u8, change: u64| {
            let mut key = [0xab; KEY_LEN];
            key[KEY_LEN - 1] = last;
            let mut node = Node::new(vec![], vec![last], "A".into(), change, change);
            node.key = Key::from_bytes(key);
            node
        };
        let (a, b, c) = (forged(1, 1), forged(2, 2), forged(3, 3));
        let mut prepared = 0;
        store
            .commit(
                WriteBatch {
                    nodes: vec![a.clone(), b.clone()],
                    changes: Some(2),
                    ..WriteBatch::default()
                },
                &mut |_| prepared += 1,
            )
            .unwrap();
        assert_eq!(prepared, 2, "prepare sees every new node");
        let check = |present: &[&Node], absent: &Node| {
            for node in present {
                assert_eq!(store.node(&node.key).unwrap().as_ref(), Some(*node));
            }
            assert_eq!(store.node(&absent.key).unwrap(), None);
        };
        check(&[&a, &b], &c);
        assert_eq!(store.node_at_change(1).unwrap(), Some(a.clone()));
        // Moved into the main index, and the next key in the recent one: the same prefix in
        // both tables.
        let txn = store.db.begin_write().unwrap();
        move_recent_keys(&txn, 1).unwrap();
        txn.commit().unwrap();
        check(&[&a, &b], &c);
        store
            .commit(
                WriteBatch {
                    nodes: vec![c.clone()],
                    changes: Some(3),
                    ..WriteBatch::default()
                },
                &mut |_| {},
            )
            .unwrap();
        check(&[&a, &b, &c], &forged(4, 4));
        let txn = store.db.begin_read().unwrap();
        let count = |table| txn.open_table(table).unwrap().len().unwrap();
        assert_eq!((count(KEY_INDEX), count(KEY_INDEX_RECENT)), (2, 1));
    }

    /// The commit that fills `key_index_recent` moves it into `key_index`; every node is still
    /// found, before and after reopening, and later keys go to the emptied recent table.
    #[test]
    fn redb_recent_keys_move_to_the_main_index() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.redb");
        let store = RedbStore::open(&path).unwrap();
        let total = RECENT_KEYS + 10;
        let nodes: Vec<Node> = (1..=total)
            .map(|i| Node::new(vec![], i.to_le_bytes().to_vec(), "A".into(), i, i))
            .collect();
        for (batch, chunk) in nodes.chunks(1000).enumerate() {
            store
                .commit(
                    WriteBatch {
                        nodes: chunk.to_vec(),
                        changes: Some(chunk.last().unwrap().change),
                        ..WriteBatch::default()
                    },
                    &mut |_| {},
                )
                .unwrap();
            let txn = store.db.begin_read().unwrap();
            let recent = txn.open_table(KEY_INDEX_RECENT).unwrap().len().unwrap();
            let written = ((batch + 1) * 1000).min(nodes.len()) as u64;
            // The 9th commit reaches RECENT_KEYS and moves everything.
            let expected = if written >= RECENT_KEYS { 0 } else { written };
            assert_eq!(recent, expected, "after commit {}", batch + 1);
        }
        drop(store);
        let store = RedbStore::open(&path).unwrap();
        for node in nodes.iter().step_by(97).chain(nodes.last()) {
            assert_eq!(store.node(&node.key).unwrap().as_ref(), Some(node));
        }
        assert_eq!(store.changes().unwrap(), total);
    }

    /// A database says which layout it has; a newer one is refused by name, not misread.
    #[test]
    fn redb_refuses_a_newer_format() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.redb");
        drop(RedbStore::open(&path).unwrap());
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(META)
                .unwrap()
                .insert("format", (FORMAT + 1).to_be_bytes().as_slice())
                .unwrap();
            txn.commit().unwrap();
        }
        match RedbStore::open(&path) {
            Err(StoreError::UnsupportedFormat { found, supported }) => {
                assert_eq!((found, supported), (FORMAT + 1, FORMAT));
            }
            other => panic!("expected UnsupportedFormat, got {:?}", other.map(|_| ())),
        }
    }

    #[test]
    fn log_ids_are_cuid_like() {
        let a = new_log_id().unwrap();
        let b = new_log_id().unwrap();
        assert_ne!(a, b);
        for id in [a, b] {
            assert_eq!(id.len(), 25);
            assert!(id.starts_with('c'));
            assert!(id
                .bytes()
                .all(|c| c.is_ascii_digit() || c.is_ascii_lowercase()));
        }
    }

    #[test]
    fn entry_codec_rejects_garbage() {
        let entry = Entry {
            key: Key::compute(&[], b""),
            change: 300,
            log_links: vec!["abc".into()],
        };
        let bytes = encode_entry(&entry);
        assert_eq!(decode_entry(&bytes).unwrap(), entry);
        for cut in 0..bytes.len() {
            assert!(decode_entry(&bytes[..cut]).is_err());
        }
    }
}
