//! Materialized views: the log is the truth, indexes are derived from it.
//!
//! A [`View`] folds the log's nodes in change order through a [`Fold`], which turns each node
//! into zero or more rows (sorted byte keys and values) of the view's own area in the log's
//! store. The change the view has reached is kept next to its rows, and both are written in one
//! store transaction per catch-up batch of [`CATCH_UP_BATCH`] nodes
//! ([`Store::view_commit`](super::store::Store::view_commit)). After a restart a view resumes
//! from the stored change instead of folding the whole log again.
//!
//! Rows are written in a transaction of their own, separate from the log's insertions: a view is
//! derived from committed changes only, so at worst (a crash between the two) it lags behind the
//! log and folds the missing changes at the next catch-up; it never runs ahead. Writing view rows
//! inside the log's own transaction would have put every view in the insertion path of every
//! append and replication.
//!
//! Rows are only ever added or overwritten (an append-only log never retracts a node), so a
//! fold writes rows and never deletes them.
//!
//! One view ships: [`ChatMessages`], chatwizard's messages ordered by their `time` field.
//!
//! ```
//! use swarm::{ChatMessages, Log, LogOptions, View};
//!
//! let log = Log::memory(LogOptions::default()).unwrap();
//! log.append(r#"{"time":2,"who":"b","message":"second"}"#).unwrap();
//! log.append(r#"{"time":1,"who":"a","message":"first"}"#).unwrap();
//! log.append("not a chat message").unwrap();
//! let mut view = View::open(&log, ChatMessages).unwrap();
//! assert_eq!(view.catch_up().unwrap(), 3);
//! let texts: Vec<String> = ChatMessages::read(&view).unwrap().into_iter().map(|m| m.message).collect();
//! assert_eq!(texts, ["first", "second"]);
//! ```

use super::hyperlog::{Log, LogError};
use super::node::{Key, Node, KEY_LEN};
use super::store::{StoreError, ViewRows};
use super::wire::{put_varint, read_varint};

/// How many nodes a catch-up folds per store transaction.
pub const CATCH_UP_BATCH: usize = 1000;

/// Rows a [`Fold`] emits: `(row key, row value)`, kept sorted by key in the store.
pub type Rows = ViewRows;

/// What a view computes: a function from one node to rows of the view.
///
/// The rows must depend on the node alone: only the rows and the change reached are stored, not
/// the fold's own fields, so after a restart the fold starts afresh at the stored change.
pub trait Fold {
    /// The view's name, unique within a store (its rows and change are kept under it).
    fn name(&self) -> &str;
    /// Appends the rows that `node` contributes to `rows` (none to skip it).
    fn fold(&mut self, node: &Node, rows: &mut Rows);
}

/// A view failed.
#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    /// Reading the log failed.
    #[error(transparent)]
    Log(#[from] LogError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The view's stored change is past the log's (the view belongs to another log).
    #[error("view {view:?} has reached change {view_change}, the log only {log_change}")]
    AheadOfLog {
        /// The view.
        view: String,
        /// Its stored change.
        view_change: u64,
        /// The log's change counter.
        log_change: u64,
    },
}

/// A view of a [`Log`], kept in the log's store (see the module docs). Open at most one
/// `View` per name and store at a time (two would fold the same changes twice, harmlessly but
/// uselessly, and race on the stored change).
#[derive(Debug)]
pub struct View<F> {
    log: Log,
    fold: F,
    change: u64,
    folded: u64,
}

impl<F: Fold> View<F> {
    /// Opens the view `fold.name()` of `log`, at the change it reached last time (0 if new).
    /// Nothing is folded until [`View::catch_up`] or [`View::update`].
    pub fn open(log: &Log, fold: F) -> Result<View<F>, ViewError> {
        let change = log.store().view_change(fold.name())?;
        let log_change = log.changes();
        if change > log_change {
            return Err(ViewError::AheadOfLog {
                view: fold.name().to_string(),
                view_change: change,
                log_change,
            });
        }
        Ok(View {
            log: log.clone(),
            fold,
            change,
            folded: 0,
        })
    }

    /// The change the view has folded (and stored) up to.
    pub fn change(&self) -> u64 {
        self.change
    }

    /// How many nodes this instance has folded since it was opened.
    pub fn folded(&self) -> u64 {
        self.folded
    }

    /// The log.
    pub fn log(&self) -> &Log {
        &self.log
    }

    /// The fold.
    pub fn fold(&self) -> &F {
        &self.fold
    }

    /// Folds every change of the log after [`View::change`], storing rows and the change reached
    /// every [`CATCH_UP_BATCH`] nodes. Returns the number of nodes folded.
    pub fn catch_up(&mut self) -> Result<u64, ViewError> {
        self.catch_up_to(self.log.changes())
    }

    fn catch_up_to(&mut self, end: u64) -> Result<u64, ViewError> {
        let start = self.change;
        let mut rows = Rows::new();
        let mut in_batch = 0;
        let mut reached = self.change;
        for node in self.log.changes_since(self.change) {
            let node = node?;
            if node.change > end {
                break;
            }
            self.fold.fold(&node, &mut rows);
            reached = node.change;
            in_batch += 1;
            if in_batch == CATCH_UP_BATCH {
                self.save(reached, std::mem::take(&mut rows))?;
                in_batch = 0;
            }
        }
        if reached != self.change {
            self.save(reached, rows)?;
        }
        Ok(self.change - start)
    }

    fn save(&mut self, change: u64, rows: Rows) -> Result<(), ViewError> {
        self.log
            .store()
            .view_commit(self.fold.name(), change, rows)?;
        self.folded += change - self.change;
        self.change = change;
        Ok(())
    }

    /// Waits, through the log's subscription, until the log has a change the view has not
    /// folded, then catches up. Returns the number of nodes folded (at least 1).
    pub async fn update(&mut self) -> Result<u64, ViewError> {
        let mut sub = self.log.subscribe(self.change);
        match sub.next().await {
            Some(node) => {
                node?;
            }
            None => return Ok(0),
        }
        self.catch_up()
    }

    /// Up to `limit` rows of the view, in key order, after row key `after`.
    pub fn rows(&self, after: Option<&[u8]>, limit: usize) -> Result<Rows, ViewError> {
        Ok(self.log.store().view_rows(self.fold.name(), after, limit)?)
    }
}

/// A chatwizard message (spec §4.2), as indexed by [`ChatMessages`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    /// `time`: milliseconds since the epoch.
    pub time: i64,
    /// The node's key (breaks ties between equal times).
    pub key: Key,
    /// `who`: the sender's nick.
    pub who: String,
    /// `message`: the text.
    pub message: String,
}

/// The chat view: every node whose value is a JSON object with an integer `time` and string
/// `who` and `message` (other fields are ignored), ordered by `time`, then by node key (the same
/// order on every peer, whatever order the nodes arrived in). Other nodes are skipped.
///
/// Row key: `time` as 8 bytes big endian with the sign bit flipped (so byte order is numeric
/// order), then the 32 key bytes. Row value: varint length of `who`, `who`, then `message`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ChatMessages;

impl ChatMessages {
    /// The view's name in the store.
    pub const NAME: &'static str = "chat-messages-by-time";

    /// Parses a chat message value; `None` if it is not one.
    pub fn parse(value: &[u8]) -> Option<(i64, String, String)> {
        let v: serde_json::Value = serde_json::from_slice(value).ok()?;
        let obj = v.as_object()?;
        let time = obj.get("time")?.as_i64()?;
        let who = obj.get("who")?.as_str()?.to_string();
        let message = obj.get("message")?.as_str()?.to_string();
        Some((time, who, message))
    }

    /// Every message, in order.
    pub fn read(view: &View<ChatMessages>) -> Result<Vec<ChatMessage>, ViewError> {
        ChatMessages::read_range(view, None, usize::MAX)
    }

    /// Up to `limit` messages in order, after `after` (a message's `(time, key)`).
    pub fn read_range(
        view: &View<ChatMessages>,
        after: Option<(i64, Key)>,
        limit: usize,
    ) -> Result<Vec<ChatMessage>, ViewError> {
        let after = after.map(|(t, k)| row_key(t, &k));
        let mut out = Vec::new();
        let mut cursor = after;
        while out.len() < limit {
            let page = view.rows(cursor.as_deref(), (limit - out.len()).min(1024))?;
            let Some((last, _)) = page.last() else {
                break;
            };
            cursor = Some(last.clone());
            for (k, v) in &page {
                out.push(decode_row(k, v)?);
            }
        }
        Ok(out)
    }
}

fn row_key(time: i64, key: &Key) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + KEY_LEN);
    out.extend_from_slice(&((time as u64) ^ (1 << 63)).to_be_bytes());
    out.extend_from_slice(key.as_bytes());
    out
}

fn decode_row(k: &[u8], v: &[u8]) -> Result<ChatMessage, ViewError> {
    let corrupt = || ViewError::Store(StoreError::Corrupt("bad chat view row".into()));
    let time: [u8; 8] = k
        .get(..8)
        .and_then(|s| s.try_into().ok())
        .ok_or_else(corrupt)?;
    let key: [u8; KEY_LEN] = k
        .get(8..)
        .and_then(|s| s.try_into().ok())
        .ok_or_else(corrupt)?;
    let (len, n) = read_varint(v).ok().flatten().ok_or_else(corrupt)?;
    let len = usize::try_from(len).map_err(|_| corrupt())?;
    let who = v.get(n..n.saturating_add(len)).ok_or_else(corrupt)?;
    let message = &v[n + len..];
    Ok(ChatMessage {
        time: (u64::from_be_bytes(time) ^ (1 << 63)) as i64,
        key: Key::from_bytes(key),
        who: String::from_utf8(who.to_vec()).map_err(|_| corrupt())?,
        message: String::from_utf8(message.to_vec()).map_err(|_| corrupt())?,
    })
}

impl Fold for ChatMessages {
    fn name(&self) -> &str {
        ChatMessages::NAME
    }

    fn fold(&mut self, node: &Node, rows: &mut Rows) {
        if let Some((time, who, message)) = ChatMessages::parse(&node.value) {
            let mut value = Vec::with_capacity(who.len() + message.len() + 2);
            put_varint(&mut value, who.len() as u64);
            value.extend_from_slice(who.as_bytes());
            value.extend_from_slice(message.as_bytes());
            rows.push((row_key(time, &node.key), value));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::hyperlog::LogOptions;

    fn chat(time: i64, who: &str, message: &str) -> String {
        serde_json::json!({"time": time, "who": who, "message": message}).to_string()
    }

    fn texts(view: &View<ChatMessages>) -> Vec<String> {
        ChatMessages::read(view)
            .unwrap()
            .into_iter()
            .map(|m| m.message)
            .collect()
    }

    #[test]
    fn catches_up_after_appends_and_skips_non_chat() {
        let log = Log::memory_with_id("A", LogOptions::default()).unwrap();
        log.append(chat(30, "a", "three")).unwrap();
        log.append("plain bytes").unwrap();
        log.append(r#"{"time":"soon","who":"a","message":"x"}"#)
            .unwrap();
        log.append(r#"{"time":5,"who":"a"}"#).unwrap();
        log.append(chat(10, "b", "one")).unwrap();
        let mut view = View::open(&log, ChatMessages).unwrap();
        assert_eq!(view.change(), 0);
        assert_eq!(view.catch_up().unwrap(), 5);
        assert_eq!(texts(&view), ["one", "three"]);
        assert_eq!(view.catch_up().unwrap(), 0);
        log.append(chat(20, "c", "two")).unwrap();
        log.append(chat(-5, "c", "zero")).unwrap();
        assert_eq!(view.catch_up().unwrap(), 2);
        assert_eq!(view.change(), 7);
        assert_eq!(view.folded(), 7);
        assert_eq!(texts(&view), ["zero", "one", "two", "three"]);
        let m = &ChatMessages::read(&view).unwrap()[0];
        assert_eq!((m.time, m.who.as_str()), (-5, "c"));
    }

    #[test]
    fn ties_break_by_key_whatever_the_arrival_order() {
        let a = Log::memory_with_id("A", LogOptions::default()).unwrap();
        let b = Log::memory_with_id("B", LogOptions::default()).unwrap();
        let nodes: Vec<Node> = (0..20)
            .map(|i| a.add(vec![], chat(7, "w", &format!("m{i}"))).unwrap())
            .collect();
        // B receives the same nodes in reverse (each has seq 0: no seq check).
        for n in nodes.iter().rev() {
            let mut n = n.clone();
            n.seq = 0;
            n.log = "A".into();
            b.receive(&n).unwrap();
        }
        let mut va = View::open(&a, ChatMessages).unwrap();
        let mut vb = View::open(&b, ChatMessages).unwrap();
        va.catch_up().unwrap();
        vb.catch_up().unwrap();
        let ra = ChatMessages::read(&va).unwrap();
        assert_eq!(ra, ChatMessages::read(&vb).unwrap());
        let keys: Vec<Key> = ra.iter().map(|m| m.key).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
        assert_eq!(ra.len(), 20);
        // Paging resumes after a (time, key).
        let page = ChatMessages::read_range(&va, Some((ra[4].time, ra[4].key)), 3).unwrap();
        assert_eq!(page, ra[5..8]);
    }

    #[test]
    fn restart_resumes_at_the_stored_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chat.redb");
        let n = CATCH_UP_BATCH as i64 + 500;
        {
            let log = Log::open(&path, LogOptions::default()).unwrap();
            let items = (0..n)
                .map(|i| crate::BatchItem::Append(chat(n - i, "w", &i.to_string()).into_bytes()))
                .collect();
            log.batch(items).unwrap();
            let mut view = View::open(&log, ChatMessages).unwrap();
            assert_eq!(view.catch_up().unwrap(), n as u64);
            assert_eq!(view.folded(), n as u64);
        }
        let log = Log::open(&path, LogOptions::default()).unwrap();
        log.append(chat(0, "w", "newest first")).unwrap();
        let mut view = View::open(&log, ChatMessages).unwrap();
        assert_eq!(view.change(), n as u64);
        // Only the one new node is folded; the rows of the others come from the store.
        assert_eq!(view.catch_up().unwrap(), 1);
        assert_eq!(view.folded(), 1);
        let all = ChatMessages::read(&view).unwrap();
        assert_eq!(all.len(), n as usize + 1);
        assert_eq!(all[0].message, "newest first");
        assert_eq!(all[1].message, (n - 1).to_string());
        assert_eq!(all[n as usize].message, "0");
    }

    #[test]
    fn a_view_ahead_of_its_log_is_refused() {
        let log = Log::memory(LogOptions::default()).unwrap();
        log.store()
            .view_commit(ChatMessages::NAME, 3, vec![])
            .unwrap();
        assert!(matches!(
            View::open(&log, ChatMessages),
            Err(ViewError::AheadOfLog { view_change: 3, .. })
        ));
    }

    #[tokio::test]
    async fn updates_live_through_the_subscription() {
        let log = Log::memory(LogOptions::default()).unwrap();
        log.append(chat(2, "a", "before")).unwrap();
        let mut view = View::open(&log, ChatMessages).unwrap();
        assert_eq!(view.update().await.unwrap(), 1);
        let writer = log.clone();
        let task = tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            writer.append(chat(1, "b", "earlier, later")).unwrap();
        });
        assert_eq!(view.update().await.unwrap(), 1);
        task.await.unwrap();
        assert_eq!(texts(&view), ["earlier, later", "before"]);
        assert_eq!(view.change(), 2);
    }
}
