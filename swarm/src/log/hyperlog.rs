//! [`Log`]: a hyperlog 4.x log on a [`Store`]: local appends (signed when a keypair is set),
//! nodes received from others (verified when a verifier is set), heads, the changes feed and a
//! live subscription.
//!
//! Insertion follows hyperlog's pipeline (spec §1.7) exactly, so that a Rust peer accepts and
//! rejects what a JS peer does. All writes of one call (an append, an add, a batch, a received
//! node) are committed at once, and the call returns once they are durable.
//!
//! The methods are synchronous (the store is); in async code they block for the duration of one
//! store transaction.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::node::{Key, Node};
use super::sign::{Keypair, SignError, SigningQueue, Verifier, SIGNATURE_LEN};
use super::store::{Entry, MemoryStore, RedbStore, Snapshot, Store, StoreError, WriteBatch};

/// Why an insertion failed.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// A link names a node that is not here (hyperlog's levelup NotFound). Not fatal to a
    /// replication: the node may be retried once its links arrive.
    #[error("link {0} not found")]
    MissingLink(Key),
    /// The node's seq is not the next one of its log ("Invalid log sequence", which hyperlog
    /// also flags as not found, i.e. retry later).
    #[error("invalid log sequence: log {log:?} expects seq {expected}, the node has {got}")]
    InvalidSeq {
        /// The log.
        log: String,
        /// The next seq of the log here.
        expected: u64,
        /// The seq the node carries.
        got: u64,
    },
    /// The key does not match the links and value ("Checksum mismatch", fatal).
    #[error("checksum mismatch: the node claims key {claimed}, its content hashes to {computed}")]
    ChecksumMismatch {
        /// The key the node carries.
        claimed: Key,
        /// The key of its links and value.
        computed: Key,
    },
    /// The verifier refused the node ("Invalid signature", fatal).
    #[error("invalid signature on node {key}: {error}")]
    InvalidSignature {
        /// The node's key.
        key: Key,
        /// Why it was refused.
        error: SignError,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl LogError {
    /// Whether this is hyperlog's "not found" kind (missing link or seq not next), which a
    /// replication retries later instead of failing.
    pub fn is_not_found(&self) -> bool {
        matches!(self, LogError::MissingLink(_) | LogError::InvalidSeq { .. })
    }
}

/// Options of a [`Log`].
#[derive(Debug, Clone, Default)]
pub struct LogOptions {
    /// Signs local appends and attaches its public key as their identity.
    pub keypair: Option<Keypair>,
    /// Checks every node whose log is not the local one (as hyperlog's `verify` hook).
    pub verifier: Option<Verifier>,
}

/// One node to insert in a [`Log::batch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchItem {
    /// Links every current head (including nodes added earlier in the batch).
    Append(Vec<u8>),
    /// Links exactly these keys, in this order.
    Add {
        /// The links (their order is hashed).
        links: Vec<Key>,
        /// The value bytes.
        value: Vec<u8>,
    },
}

struct Inner {
    store: Box<dyn Store>,
    options: LogOptions,
    /// hyperlog's insertion mutex.
    write: Mutex<()>,
    /// The change counter, published after every commit.
    changes: watch::Sender<u64>,
}

/// A hyperlog-compatible log. Cheap to clone (all clones share one store).
#[derive(Clone)]
pub struct Log {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log")
            .field("id", &self.id())
            .field("changes", &*self.inner.changes.borrow())
            .finish_non_exhaustive()
    }
}

/// Reads through to the store, with the writes of the batch being built on top.
struct Overlay<'a> {
    store: Box<dyn Snapshot + 'a>,
    batch: WriteBatch,
    /// Where each new node of the batch is in `batch.nodes`.
    nodes: HashMap<Key, usize>,
    /// Per log, the first seq the batch gives it and where each of its entries is in
    /// `batch.entries` (a batch gives a log consecutive seqs, so this also gives its head).
    entry_positions: HashMap<String, (u64, Vec<usize>)>,
    /// The head set as the batch leaves it, and as the store had it (loaded on first use); the
    /// batch writes only the difference, however many heads came and went in between.
    heads: Option<(BTreeSet<Key>, BTreeSet<Key>)>,
    changes: u64,
}

impl<'a> Overlay<'a> {
    fn new(store: &'a dyn Store) -> Result<Overlay<'a>, StoreError> {
        let store = store.snapshot()?;
        Ok(Overlay {
            changes: store.changes()?,
            store,
            batch: WriteBatch::default(),
            nodes: HashMap::new(),
            entry_positions: HashMap::new(),
            heads: None,
        })
    }

    fn node(&self, key: &Key) -> Result<Option<Node>, StoreError> {
        match self.nodes.get(key) {
            Some(&i) => Ok(Some(self.batch.nodes[i].clone())),
            None => self.store.node(key),
        }
    }

    /// Entry `seq` of `log` if this batch wrote it.
    fn batch_entry(&self, log: &str, seq: u64) -> Option<&Entry> {
        let (first, positions) = self.entry_positions.get(log)?;
        let at = *positions.get(usize::try_from(seq.checked_sub(*first)?).ok()?)?;
        match self.batch.entries.get(at) {
            Some((l, s, entry)) if l == log && *s == seq => Some(entry),
            _ => None,
        }
    }

    /// `f` of a node, without copying it when the batch has it.
    fn with_node<T>(&self, key: &Key, f: impl FnOnce(&Node) -> T) -> Result<Option<T>, StoreError> {
        match self.nodes.get(key) {
            Some(&i) => Ok(Some(f(&self.batch.nodes[i]))),
            None => Ok(self.store.node(key)?.map(|node| f(&node))),
        }
    }

    /// The highest seq of `log`, counting the entries this batch gave it.
    fn log_head(&self, log: &str) -> Result<u64, StoreError> {
        match self.entry_positions.get(log) {
            Some((first, positions)) => Ok(first + positions.len() as u64 - 1),
            None => self.store.log_head(log),
        }
    }

    fn heads(&mut self) -> Result<&mut BTreeSet<Key>, StoreError> {
        if self.heads.is_none() {
            let stored: BTreeSet<Key> = self.store.heads()?.into_iter().collect();
            self.heads = Some((stored.clone(), stored));
        }
        Ok(&mut self.heads.get_or_insert_with(Default::default).0)
    }

    /// The batch to commit, with the head changes worked out.
    fn into_batch(self) -> WriteBatch {
        let mut batch = self.batch;
        if let Some((now, before)) = self.heads {
            batch.remove_heads = before.difference(&now).copied().collect();
            batch.add_heads = now.difference(&before).copied().collect();
        }
        batch
    }
}

/// Cancels a signing queue when a batch ends, whichever way.
struct CancelOnDrop<'q, 'k>(&'q SigningQueue<'k>);

impl Drop for CancelOnDrop<'_, '_> {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// A node to insert and, for a received node, what it claims (hyperlog's `opts`).
struct Insert<'n> {
    links: Vec<Key>,
    value: Vec<u8>,
    remote: Option<&'n Node>,
}

/// Where a checked insertion goes (see `Log::plan`).
struct Plan {
    key: Key,
    log: String,
    seq: u64,
    change: u64,
    link_logs: Vec<String>,
    /// The node already stored under this key (the insertion is then a dedup entry).
    existing: Option<Node>,
}

/// What `Log::apply` did.
enum Inserted {
    /// A new node, at this index of the batch's nodes.
    New(usize),
    /// A dedup entry for this node (relabelled with the new entry's log and seq).
    Dedup(Node),
}

impl Log {
    /// A log on any store.
    pub fn with_store(store: Box<dyn Store>, options: LogOptions) -> Result<Log, LogError> {
        let changes = store.changes()?;
        Ok(Log {
            inner: Arc::new(Inner {
                store,
                options,
                write: Mutex::new(()),
                changes: watch::Sender::new(changes),
            }),
        })
    }

    /// A log in memory with a fresh local id.
    pub fn memory(options: LogOptions) -> Result<Log, LogError> {
        Log::with_store(Box::new(MemoryStore::new()?), options)
    }

    /// A log in memory whose local log id is `id`.
    pub fn memory_with_id(id: &str, options: LogOptions) -> Result<Log, LogError> {
        Log::with_store(Box::new(MemoryStore::with_id(id)), options)
    }

    /// A durable log in the redb database at `path` (created if absent).
    pub fn open(path: impl AsRef<Path>, options: LogOptions) -> Result<Log, LogError> {
        Log::with_store(Box::new(RedbStore::open(path)?), options)
    }

    /// The store (for derived views, which keep their rows in it).
    pub(crate) fn store(&self) -> &dyn Store {
        self.inner.store.as_ref()
    }

    /// The local log id (the log local appends are filed under).
    pub fn id(&self) -> &str {
        self.inner.store.local_id()
    }

    /// The keypair local appends are signed with, if any.
    pub fn keypair(&self) -> Option<&Keypair> {
        self.inner.options.keypair.as_ref()
    }

    /// Appends `value` linking all current heads (sorted by key).
    pub fn append(&self, value: impl Into<Vec<u8>>) -> Result<Node, LogError> {
        self.one(BatchItem::Append(value.into()))
    }

    /// Adds `value` linking `links` (in this order).
    pub fn add(&self, links: Vec<Key>, value: impl Into<Vec<u8>>) -> Result<Node, LogError> {
        self.one(BatchItem::Add {
            links,
            value: value.into(),
        })
    }

    fn one(&self, item: BatchItem) -> Result<Node, LogError> {
        let mut nodes = self.batch(vec![item])?;
        nodes
            .pop()
            .ok_or_else(|| LogError::Store(StoreError::Corrupt("empty batch result".into())))
    }

    /// Inserts several local nodes, committed at once (all or none).
    pub fn batch(&self, items: Vec<BatchItem>) -> Result<Vec<Node>, LogError> {
        let _guard = self.lock()?;
        let mut ov = Overlay::new(self.inner.store.as_ref())?;
        let Some(keypair) = self.inner.options.keypair.as_ref() else {
            let out = self.add_items(&mut ov, items, &mut |_| {})?;
            self.commit(ov, &mut |_| {})?;
            return Ok(out);
        };
        // Keys never depend on signatures: helper threads sign each key as soon as the batch
        // has worked it out, and go on while the store writes; the writer signs whatever they
        // have not reached when it needs it.
        let local = self.id();
        let identity = keypair.public_key().to_vec();
        let queue = SigningQueue::new(keypair, items.len());
        let mut index: HashMap<Key, usize> = HashMap::with_capacity(items.len());
        std::thread::scope(|scope| {
            for _ in 0..queue.helpers() {
                scope.spawn(|| queue.help());
            }
            // However this ends (an error, a panic), helpers must not wait for more keys.
            let _stop = CancelOnDrop(&queue);
            let mut out = self.add_items(&mut ov, items, &mut |key| {
                if let Some(i) = queue.push(key) {
                    index.insert(key, i);
                }
            })?;
            queue.seal();
            let signed = |node: &Node| {
                if node.signature.is_some() || node.log != local {
                    return None;
                }
                index.get(&node.key).map(|&i| queue.signature(i))
            };
            let set = |node: &mut Node, signature: [u8; SIGNATURE_LEN]| {
                node.signature = Some(signature.to_vec());
                if node.identity.is_none() {
                    node.identity = Some(identity.clone());
                }
            };
            self.commit(ov, &mut |node| {
                if node.signature.is_none() && node.log == local {
                    let signature = signed(node).unwrap_or_else(|| keypair.sign_key(&node.key));
                    set(node, signature);
                }
            })?;
            // What the caller gets back carries the same signatures (a batch that appends a
            // value twice gets the first node back for the second item, also signed).
            for node in &mut out {
                if let Some(signature) = signed(node) {
                    set(node, signature);
                }
            }
            Ok(out)
        })
    }

    /// Inserts local items into the overlay; `new_key` hears the key of each new node.
    fn add_items(
        &self,
        ov: &mut Overlay<'_>,
        items: Vec<BatchItem>,
        new_key: &mut dyn FnMut(Key),
    ) -> Result<Vec<Node>, LogError> {
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            let (links, value) = match item {
                BatchItem::Append(value) => (ov.heads()?.iter().copied().collect(), value),
                BatchItem::Add { links, value } => (links, value),
            };
            let before = ov.batch.nodes.len();
            out.push(self.insert(
                ov,
                Insert {
                    links,
                    value,
                    remote: None,
                },
            )?);
            if let Some(node) = ov.batch.nodes.get(before) {
                new_key(node.key);
            }
        }
        Ok(out)
    }

    /// Inserts a node received from a peer, with hyperlog's replication options: its key must
    /// match, its seq (unless 0) must be the next of its log, and unless it claims the local
    /// log it must pass the verifier. Returns the node as stored (with the local change).
    pub fn receive(&self, node: &Node) -> Result<Node, LogError> {
        let _guard = self.lock()?;
        let mut ov = Overlay::new(self.inner.store.as_ref())?;
        let stored = self.insert(
            &mut ov,
            Insert {
                links: node.links.clone(),
                value: node.value.clone(),
                remote: Some(node),
            },
        )?;
        self.commit(ov, &mut |_| {})?;
        Ok(stored)
    }

    /// Starts inserting received nodes in one transaction: each [`ReceiveBatch::receive`]
    /// follows exactly the rules of [`Log::receive`] and sees the nodes received before it, and
    /// [`ReceiveBatch::commit`] writes them all at once. The insertion lock is held until then,
    /// so nothing else may be inserted meanwhile (from this thread: that would deadlock).
    pub fn begin_receive(&self) -> Result<ReceiveBatch<'_>, LogError> {
        let guard = self.lock()?;
        let ov = Overlay::new(self.inner.store.as_ref())?;
        Ok(ReceiveBatch {
            log: self,
            ov,
            _guard: guard,
        })
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, ()>, LogError> {
        self.inner
            .write
            .lock()
            .map_err(|_| LogError::Store(StoreError::Engine("log mutex poisoned".into())))
    }

    /// Commits the overlay's batch; `prepare` sees each new node just before it is stored.
    fn commit(&self, ov: Overlay<'_>, prepare: &mut dyn FnMut(&mut Node)) -> Result<(), LogError> {
        let changes = ov.changes;
        self.inner.store.commit(ov.into_batch(), prepare)?;
        self.inner.changes.send_if_modified(|c| {
            let modified = *c != changes;
            *c = changes;
            modified
        });
        Ok(())
    }

    /// hyperlog's per-node insertion (spec §1.7), into the overlay; the node as inserted.
    fn insert(&self, ov: &mut Overlay<'_>, ins: Insert<'_>) -> Result<Node, LogError> {
        let plan = self.plan(ov, &ins.links, &ins.value, ins.remote)?;
        let identity = ins.remote.and_then(|r| r.identity.clone());
        let signature = ins.remote.and_then(|r| r.signature.clone());
        Ok(
            match Log::apply(ov, plan, ins.links, ins.value, identity, signature) {
                Inserted::New(i) => ov.batch.nodes[i].clone(),
                Inserted::Dedup(node) => node,
            },
        )
    }

    /// The checks of an insertion (links present, and for a received node: key, seq, signature),
    /// and where it goes; nothing is written.
    fn plan(
        &self,
        ov: &mut Overlay<'_>,
        links: &[Key],
        value: &[u8],
        remote: Option<&Node>,
    ) -> Result<Plan, LogError> {
        let local = self.id();
        let log = match remote {
            Some(r) if !r.log.is_empty() => r.log.clone(),
            _ => local.to_string(),
        };
        let seq0 = ov.log_head(&log)?;
        let key = Key::compute(links, value);
        let mut link_logs: Vec<String> = Vec::new();
        for link in links {
            let other_log = ov
                .with_node(link, |linked| {
                    (linked.log != log && !link_logs.contains(&linked.log))
                        .then(|| linked.log.clone())
                })?
                .ok_or(LogError::MissingLink(*link))?;
            link_logs.extend(other_log);
        }
        let existing = ov.node(&key)?;
        let seq = seq0 + 1;
        let change = match &existing {
            Some(n) => n.change,
            None => ov.changes + 1,
        };
        if let Some(remote) = remote {
            if remote.key != key {
                return Err(LogError::ChecksumMismatch {
                    claimed: remote.key,
                    computed: key,
                });
            }
            if remote.seq != 0 && remote.seq != seq {
                return Err(LogError::InvalidSeq {
                    log,
                    expected: seq,
                    got: remote.seq,
                });
            }
            // The verifier reads the key (checked equal above), identity and signature: the
            // remote node's are the ones the node is stored with.
            match (&self.inner.options.verifier, &self.inner.options.keypair) {
                // From a peer, whatever log it claims: the verifier decides.
                (Some(verifier), _) => verifier
                    .verify_node(remote)
                    .map_err(|error| LogError::InvalidSignature { key, error })?,
                // From a peer, claiming this log's id (which every `Have` makes public): only
                // what this log signed itself, say echoed back from a backup. hyperlog 4.x would
                // sign whatever arrives under its id, letting any peer publish in the owner's name.
                (None, Some(kp)) if log == local => {
                    Verifier::for_keypair(kp)
                        .verify_node(remote)
                        .map_err(|error| LogError::InvalidSignature { key, error })?
                }
                (None, _) => {}
            }
        }
        // (A local append: `Log::batch` signs it as the store writes it, with a keypair.)
        if existing.is_none() {
            // A new node changes the heads: have them loaded for `apply`.
            ov.heads()?;
        }
        Ok(Plan {
            key,
            log,
            seq,
            change,
            link_logs,
            existing,
        })
    }

    /// Writes a planned insertion into the overlay, taking the node's parts.
    fn apply(
        ov: &mut Overlay<'_>,
        plan: Plan,
        links: Vec<Key>,
        value: Vec<u8>,
        identity: Option<Vec<u8>>,
        signature: Option<Vec<u8>>,
    ) -> Inserted {
        let Plan {
            key,
            log,
            seq,
            change,
            link_logs,
            existing,
        } = plan;
        let entry = Entry {
            key,
            change,
            log_links: link_logs,
        };
        ov.entry_positions
            .entry(log.clone())
            .or_insert_with(|| (seq, Vec::new()))
            .1
            .push(ov.batch.entries.len());
        ov.batch.entries.push((log.clone(), seq, entry));
        match existing {
            Some(mut old) => {
                // A dedup: only the entry is written; the node keeps its first author.
                old.log = log;
                old.seq = seq;
                Inserted::Dedup(old)
            }
            None => {
                // `plan` loaded the heads for a new node.
                let node = Node {
                    key,
                    links,
                    value,
                    log,
                    seq,
                    change,
                    identity,
                    signature,
                };
                if let Some((heads, _)) = ov.heads.as_mut() {
                    for link in &node.links {
                        heads.remove(link);
                    }
                    heads.insert(key);
                }
                ov.changes = change;
                ov.batch.changes = Some(change);
                let i = ov.batch.nodes.len();
                ov.nodes.insert(key, i);
                ov.batch.nodes.push(node);
                Inserted::New(i)
            }
        }
    }

    /// A node by key (with the log and seq it was first filed under).
    pub fn get(&self, key: &Key) -> Result<Option<Node>, LogError> {
        Ok(self.inner.store.node(key)?)
    }

    /// The node at entry `seq` of `log`, with `log` and `seq` set to that entry's (a dedup entry
    /// gives the original node relabelled, as hyperlog sends it), and the entry's log links.
    pub fn entry(&self, log: &str, seq: u64) -> Result<Option<Entry>, LogError> {
        Ok(self.inner.store.entry(log, seq)?)
    }

    /// The highest seq of `log` here (0 if unknown).
    pub fn log_head(&self, log: &str) -> Result<u64, LogError> {
        Ok(self.inner.store.log_head(log)?)
    }

    /// The head nodes, sorted by key.
    pub fn heads(&self) -> Result<Vec<Node>, LogError> {
        let mut out = Vec::new();
        for key in self.inner.store.heads()? {
            let node = self
                .inner
                .store
                .node(&key)?
                .ok_or_else(|| StoreError::Corrupt(format!("head {key} has no node")))?;
            out.push(node);
        }
        Ok(out)
    }

    /// The change counter and the head nodes (sorted by key), read together under the
    /// insertion lock, as hyperlog takes its replication snapshot.
    pub fn snapshot(&self) -> Result<(u64, Vec<Node>), LogError> {
        let _guard = self.lock()?;
        Ok((self.changes(), self.heads()?))
    }

    /// The head keys, sorted.
    pub fn head_keys(&self) -> Result<Vec<Key>, LogError> {
        Ok(self.inner.store.heads()?)
    }

    /// The change counter: the number of distinct nodes here.
    pub fn changes(&self) -> u64 {
        *self.inner.changes.borrow()
    }

    /// The node inserted at `change`.
    pub fn at_change(&self, change: u64) -> Result<Option<Node>, LogError> {
        Ok(self.inner.store.node_at_change(change)?)
    }

    /// The nodes with change > `since`, in change order, as they are now.
    pub fn changes_since(&self, since: u64) -> ChangesIter {
        ChangesIter {
            log: self.clone(),
            next: since + 1,
            end: self.changes(),
        }
    }

    /// The nodes with change > `since`, in change order, then every new node as it is
    /// inserted.
    pub fn subscribe(&self, since: u64) -> Subscription {
        Subscription {
            log: self.clone(),
            next: since + 1,
            rx: self.inner.changes.subscribe(),
        }
    }

    /// A receiver of the change counter, updated after every commit.
    pub fn watch_changes(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }
}

/// A node [`ReceiveBatch::receive_owned`] did not insert, and why.
#[derive(Debug)]
pub struct Refused {
    /// Why.
    pub error: LogError,
    /// The node, as it was given.
    pub node: Node,
}

/// Received nodes being inserted in one transaction (see [`Log::begin_receive`]).
pub struct ReceiveBatch<'a> {
    log: &'a Log,
    ov: Overlay<'a>,
    _guard: std::sync::MutexGuard<'a, ()>,
}

impl std::fmt::Debug for ReceiveBatch<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReceiveBatch")
            .field("nodes", &self.ov.batch.nodes.len())
            .field("entries", &self.ov.batch.entries.len())
            .finish_non_exhaustive()
    }
}

impl ReceiveBatch<'_> {
    /// As [`Log::receive`], into this batch. A refused node leaves the batch as it was.
    pub fn receive(&mut self, node: &Node) -> Result<Node, LogError> {
        self.log.insert(
            &mut self.ov,
            Insert {
                links: node.links.clone(),
                value: node.value.clone(),
                remote: Some(node),
            },
        )
    }

    /// As [`ReceiveBatch::receive`], taking the node: its value and links are stored as they
    /// are, not copied (a large value arrives once and stays where it is). A refused node is
    /// handed back with the error, the batch as it was.
    pub fn receive_owned(&mut self, node: Node) -> Result<(), Box<Refused>> {
        let plan = match self
            .log
            .plan(&mut self.ov, &node.links, &node.value, Some(&node))
        {
            Ok(plan) => plan,
            Err(error) => return Err(Box::new(Refused { error, node })),
        };
        let Node {
            links,
            value,
            identity,
            signature,
            ..
        } = node;
        Log::apply(&mut self.ov, plan, links, value, identity, signature);
        Ok(())
    }

    /// As [`Log::entry`], including the entries of this batch.
    pub fn entry(&self, log: &str, seq: u64) -> Result<Option<Entry>, LogError> {
        match self.ov.batch_entry(log, seq) {
            Some(entry) => Ok(Some(entry.clone())),
            None => self.log.entry(log, seq),
        }
    }

    /// Whether nothing was inserted yet.
    pub fn is_empty(&self) -> bool {
        self.ov.batch.is_empty()
    }

    /// Writes everything received into this batch, in one transaction.
    pub fn commit(self) -> Result<(), LogError> {
        let ReceiveBatch { log, ov, _guard } = self;
        log.commit(ov, &mut |_| {})
    }
}

/// See [`Log::changes_since`].
#[derive(Debug)]
pub struct ChangesIter {
    log: Log,
    next: u64,
    end: u64,
}

impl Iterator for ChangesIter {
    type Item = Result<Node, LogError>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.next > self.end {
            return None;
        }
        let change = self.next;
        self.next += 1;
        match self.log.at_change(change) {
            Ok(Some(node)) => Some(Ok(node)),
            Ok(None) => Some(Err(LogError::Store(StoreError::Corrupt(format!(
                "change {change} is missing"
            ))))),
            Err(e) => Some(Err(e)),
        }
    }
}

/// See [`Log::subscribe`].
#[derive(Debug)]
pub struct Subscription {
    log: Log,
    next: u64,
    rx: watch::Receiver<u64>,
}

impl Subscription {
    /// The next node in change order, waiting for it if needed. `None` never happens while
    /// the log exists (a subscription holds it).
    pub async fn next(&mut self) -> Option<Result<Node, LogError>> {
        loop {
            let current = *self.rx.borrow_and_update();
            if self.next <= current {
                let change = self.next;
                self.next += 1;
                return match self.log.at_change(change) {
                    Ok(Some(n)) => Some(Ok(n)),
                    Ok(None) => Some(Err(LogError::Store(StoreError::Corrupt(format!(
                        "change {change} is missing"
                    ))))),
                    Err(e) => Some(Err(e)),
                };
            }
            if self.rx.changed().await.is_err() {
                return None;
            }
        }
    }

    /// The change the next node will have.
    pub fn next_change(&self) -> u64 {
        self.next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELLO: &str = "8c7efb22472592f561a7a7647f8c5ee93134880b4ca0c92889a61848cd5c4602";
    const WORLD: &str = "5f5e63be98841981a12b6041e4200677851714ec4305d13a3ee30197439ff193";

    fn log(id: &str) -> Log {
        Log::memory_with_id(id, LogOptions::default()).unwrap()
    }

    #[test]
    fn append_links_heads() {
        let a = log("A");
        let n1 = a.append("hello").unwrap();
        let n2 = a.append("world").unwrap();
        assert_eq!(n1.key.to_hex(), HELLO);
        assert_eq!(n2.key.to_hex(), WORLD);
        assert_eq!((n2.log.as_str(), n2.seq, n2.change), ("A", 2, 2));
        assert_eq!(a.head_keys().unwrap(), vec![n2.key]);
        assert_eq!(a.get(&n1.key).unwrap(), Some(n1.clone()));
        let all: Vec<Node> = a.changes_since(0).map(Result::unwrap).collect();
        assert_eq!(all, vec![n1, n2.clone()]);
        assert_eq!(a.changes_since(1).count(), 1);
    }

    #[test]
    fn heads_are_sorted_and_append_links_all() {
        let a = log("A");
        let x = a.add(vec![], "x").unwrap();
        let y = a.add(vec![], "y").unwrap();
        let mut both = vec![x.key, y.key];
        both.sort();
        assert_eq!(a.head_keys().unwrap(), both);
        let z = a.append("z").unwrap();
        assert_eq!(z.links, both);
        assert_eq!(a.head_keys().unwrap(), vec![z.key]);
    }

    #[test]
    fn missing_link_is_not_found() {
        let a = log("A");
        let err = a.add(vec![Key::compute(&[], b"nope")], "v").unwrap_err();
        assert!(err.is_not_found(), "{err}");
        assert_eq!(a.changes(), 0);
    }

    #[test]
    fn batch_commits_once_or_not_at_all() {
        let a = log("A");
        let nodes = a
            .batch(vec![
                BatchItem::Append(b"hello".to_vec()),
                BatchItem::Append(b"world".to_vec()),
            ])
            .unwrap();
        assert_eq!(nodes[1].key.to_hex(), WORLD);
        assert_eq!(a.changes(), 2);
        let err = a
            .batch(vec![
                BatchItem::Append(b"three".to_vec()),
                BatchItem::Add {
                    links: vec![Key::compute(&[], b"?")],
                    value: vec![],
                },
            ])
            .unwrap_err();
        assert!(err.is_not_found());
        assert_eq!(a.changes(), 2);
        assert_eq!(a.log_head("A").unwrap(), 2);
    }

    #[test]
    fn receive_checks_like_hyperlog() {
        let a = log("A");
        let b = log("B");
        let n1 = a.append("hello").unwrap();
        let n2 = a.append("world").unwrap();
        // Out of order: missing link.
        assert!(matches!(b.receive(&n2), Err(LogError::MissingLink(_))));
        // Wrong seq.
        let mut skip = n1.clone();
        skip.seq = 2;
        assert!(matches!(
            b.receive(&skip),
            Err(LogError::InvalidSeq { expected: 1, .. })
        ));
        // Bad checksum.
        let mut forged = n1.clone();
        forged.value = b"HELLO".to_vec();
        assert!(matches!(
            b.receive(&forged),
            Err(LogError::ChecksumMismatch { .. })
        ));
        assert_eq!(b.changes(), 0);
        let got = b.receive(&n1).unwrap();
        assert_eq!((got.log.as_str(), got.seq, got.change), ("A", 1, 1));
        b.receive(&n2).unwrap();
        assert_eq!(b.log_head("A").unwrap(), 2);
        // A second log holding the same content: a dedup entry only.
        let mut dup = n1.clone();
        dup.log = "C".into();
        dup.seq = 1;
        let d = b.receive(&dup).unwrap();
        assert_eq!((d.log.as_str(), d.seq, d.change), ("C", 1, 1));
        assert_eq!(b.changes(), 2);
        assert_eq!(b.entry("C", 1).unwrap().unwrap().key, n1.key);
        assert_eq!(b.get(&n1.key).unwrap().unwrap().log, "A");
    }

    #[test]
    fn log_links_name_other_logs() {
        let a = log("A");
        let c = log("C");
        let c1 = c.append("c1").unwrap();
        let c2 = c.append("c2").unwrap();
        a.receive(&c1).unwrap();
        a.receive(&c2).unwrap();
        let a1 = a.append("a1").unwrap();
        assert_eq!(a1.links, vec![c2.key]);
        assert_eq!(a.entry("A", 1).unwrap().unwrap().log_links, vec!["C"]);
        assert_eq!(
            a.entry("C", 2).unwrap().unwrap().log_links,
            Vec::<String>::new()
        );
    }

    #[test]
    fn signing_and_verifying() {
        let kp = Keypair::from_seed(&[1; 32]);
        let a = Log::memory_with_id(
            "A",
            LogOptions {
                keypair: Some(kp.clone()),
                verifier: None,
            },
        )
        .unwrap();
        let n1 = a.append("hello").unwrap();
        assert_eq!(n1.identity.as_deref(), Some(kp.public_key().as_slice()));
        let b = Log::memory_with_id(
            "B",
            LogOptions {
                keypair: None,
                verifier: Some(Verifier::for_keypair(&kp)),
            },
        )
        .unwrap();
        let other = Keypair::from_seed(&[2; 32]);
        let mut forged = n1.clone();
        other.sign_node(&mut forged);
        forged.identity = Some(other.public_key().to_vec());
        assert!(matches!(
            b.receive(&forged),
            Err(LogError::InvalidSignature { .. })
        ));
        let mut unsigned = n1.clone();
        unsigned.signature = None;
        unsigned.identity = None;
        assert!(b.receive(&unsigned).is_err());
        assert_eq!(b.changes(), 0);
        b.receive(&n1).unwrap();
        assert_eq!(b.changes(), 1);
    }

    #[test]
    fn a_peer_cannot_write_into_a_signing_log_under_its_own_id() {
        let kp = Keypair::from_seed(&[1; 32]);
        let signing = || LogOptions {
            keypair: Some(kp.clone()),
            verifier: None,
        };
        let a = Log::memory_with_id("A", signing()).unwrap();
        // A peer sends an unsigned node under A's (public) log id: hyperlog would sign it.
        let mut sneaked = Node::new(vec![], b"not from A".to_vec(), "A".into(), 1, 1);
        assert!(matches!(
            a.receive(&sneaked),
            Err(LogError::InvalidSignature { .. })
        ));
        // Signed by someone else, claiming A's log: refused too.
        Keypair::from_seed(&[9; 32]).sign_node(&mut sneaked);
        assert!(matches!(
            a.receive(&sneaked),
            Err(LogError::InvalidSignature { .. })
        ));
        assert_eq!(a.changes(), 0);

        // What A signed itself comes back fine (a restored backup learning its later entries).
        let original = Log::memory_with_id("A", signing()).unwrap();
        let n1 = original.append("hello").unwrap();
        let n2 = original.append("world").unwrap();
        a.receive(&n1).unwrap();
        a.receive(&n2).unwrap();
        assert_eq!(a.changes(), 2);
        assert_eq!(a.log_head("A").unwrap(), 2);
    }

    #[test]
    fn a_large_signed_batch_is_signed_on_every_core_and_verifies() {
        let kp = Keypair::from_seed(&[3; 32]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("signed.redb");
        let options = || LogOptions {
            keypair: Some(kp.clone()),
            verifier: None,
        };
        let log = Log::open(&path, options()).unwrap();
        let mut items: Vec<BatchItem> = (0..100)
            .map(|i| BatchItem::Append(format!("entry {i}").into_bytes()))
            .collect();
        // The same node twice: the second item is a dedup of the first, within the batch.
        for _ in 0..2 {
            items.push(BatchItem::Add {
                links: vec![],
                value: b"twice".to_vec(),
            });
        }
        let returned = log.batch(items).unwrap();
        let verifier = Verifier::for_keypair(&kp);
        for node in &returned {
            verifier
                .verify_node(node)
                .expect("returned nodes are signed");
        }
        assert_eq!(returned[100].key, returned[101].key);
        assert_eq!(returned[101].seq, 102, "the dedup has its own entry");
        drop(log);
        // What was committed is signed too, and another log accepts all of it.
        let log = Log::open(&path, options()).unwrap();
        let reader = Log::memory_with_id(
            "R",
            LogOptions {
                keypair: None,
                verifier: Some(Verifier::for_keypair(&kp)),
            },
        )
        .unwrap();
        for node in log.changes_since(0) {
            let node = node.unwrap();
            verifier
                .verify_node(&node)
                .expect("stored nodes are signed");
            reader.receive(&node).unwrap();
        }
        assert_eq!(reader.changes(), 101);
    }

    #[test]
    fn durable_log_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.redb");
        let (id, key) = {
            let a = Log::open(&path, LogOptions::default()).unwrap();
            a.append("hello").unwrap();
            let n2 = a.append("world").unwrap();
            (a.id().to_string(), n2.key)
        };
        let a = Log::open(&path, LogOptions::default()).unwrap();
        assert_eq!(a.id(), id);
        assert_eq!(a.changes(), 2);
        assert_eq!(a.head_keys().unwrap(), vec![key]);
        let n3 = a.append("again").unwrap();
        assert_eq!((n3.seq, n3.change, n3.links.clone()), (3, 3, vec![key]));
    }

    /// Every change (key, first log and seq) and every entry (log, seq, key, change).
    type State = (Vec<(Key, String, u64)>, Vec<(String, u64, Key, u64)>);

    /// The state a log ends in.
    fn state(log: &Log, logs: &[&str]) -> State {
        let changes = log
            .changes_since(0)
            .map(|n| {
                let n = n.unwrap();
                (n.key, n.log, n.seq)
            })
            .collect();
        let mut entries = Vec::new();
        for l in logs {
            for seq in 1..=log.log_head(l).unwrap() {
                let e = log.entry(l, seq).unwrap().unwrap();
                entries.push((l.to_string(), seq, e.key, e.change));
            }
        }
        (changes, entries)
    }

    #[test]
    fn a_receive_batch_inserts_as_one_by_one() {
        // C: c1 <- c2; A received them, then a1 links c2 and a2 dedups c1's content in log A.
        let c = log("C");
        let c1 = c.append("c1").unwrap();
        let c2 = c.append("c2").unwrap();
        let a = log("A");
        a.receive(&c1).unwrap();
        a.receive(&c2).unwrap();
        let a1 = a.append("a1").unwrap();
        let a2 = a.add(vec![], "c1").unwrap();
        assert_eq!(a2.key, c1.key);
        let mut wrong_seq = c2.clone();
        wrong_seq.seq = 5;
        let mut forged = c1.clone();
        forged.value = b"C1".to_vec();
        // An arrival order with missing links, a bad seq, a fatal checksum, a repeat and a dedup.
        let arrivals = [
            a1.clone(),
            c2.clone(),
            wrong_seq,
            forged,
            c1.clone(),
            c2.clone(),
            a1.clone(),
            a2.clone(),
        ];
        let one = log("X");
        let batched = log("X");
        let mut batch = batched.begin_receive().unwrap();
        for node in &arrivals {
            let r1 = one.receive(node).map_err(|e| e.to_string());
            let r2 = batch.receive(node).map_err(|e| e.to_string());
            assert_eq!(r1, r2);
            for (l, seq) in [("A", 1), ("A", 2), ("C", 1), ("C", 2)] {
                assert_eq!(one.entry(l, seq).unwrap(), batch.entry(l, seq).unwrap());
            }
        }
        assert!(!batch.is_empty());
        assert_eq!(batched.changes(), 0);
        batch.commit().unwrap();
        assert_eq!(batched.changes(), 3);
        assert_eq!(state(&one, &["A", "C"]), state(&batched, &["A", "C"]));
        assert_eq!(one.head_keys().unwrap(), batched.head_keys().unwrap());
    }

    #[tokio::test]
    async fn subscription_continues_live() {
        let a = log("A");
        a.append("one").unwrap();
        let mut sub = a.subscribe(0);
        assert_eq!(sub.next().await.unwrap().unwrap().value, b"one");
        let writer = a.clone();
        let task = tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            writer.append("two").unwrap();
        });
        assert_eq!(sub.next().await.unwrap().unwrap().value, b"two");
        task.await.unwrap();
    }
}
