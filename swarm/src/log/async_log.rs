//! [`AsyncLog`]: a [`Log`] for async code. Each call runs the log's blocking method on tokio's
//! blocking thread pool (`tokio::task::spawn_blocking`), so that an append that signs, hashes a
//! large value or waits for a durable commit does not stall the runtime's worker thread (nor, on
//! a `current_thread` runtime, every other task).
//!
//! ```
//! # async fn example() -> Result<(), swarm::LogError> {
//! use swarm::{AsyncLog, Log, LogOptions};
//!
//! let log = AsyncLog::new(Log::memory(LogOptions::default())?);
//! let node = log.append(b"hello".to_vec()).await?;
//! assert_eq!(log.get(node.key).await?.map(|n| n.value), Some(b"hello".to_vec()));
//! # Ok(())
//! # }
//! ```
//!
//! A call whose future is dropped before it finishes still completes in the background (a write
//! is never left half done). A panic inside the log resumes in the caller, as with the blocking
//! call.

use tokio::sync::watch;

use super::hyperlog::{BatchItem, Log, LogError, Subscription};
use super::node::{Key, Node};
use super::store::{Entry, StoreError};

/// A [`Log`] whose methods do not block the async runtime (see the module docs). Cheap to clone;
/// all clones, and the [`Log`] it was made from, share one store.
#[derive(Debug, Clone)]
pub struct AsyncLog {
    log: Log,
}

impl From<Log> for AsyncLog {
    fn from(log: Log) -> AsyncLog {
        AsyncLog::new(log)
    }
}

impl AsyncLog {
    /// Wraps a log.
    pub fn new(log: Log) -> AsyncLog {
        AsyncLog { log }
    }

    /// The blocking log (for [`super::replicate::Replication`], views, and calls that never block
    /// for long).
    pub fn log(&self) -> &Log {
        &self.log
    }

    /// Runs `f` on the blocking pool with a clone of the log.
    async fn run<T, F>(&self, f: F) -> Result<T, LogError>
    where
        T: Send + 'static,
        F: FnOnce(&Log) -> Result<T, LogError> + Send + 'static,
    {
        let log = self.log.clone();
        match tokio::task::spawn_blocking(move || f(&log)).await {
            Ok(result) => result,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Err(LogError::Store(StoreError::Engine(
                "the runtime shut down during a log call".into(),
            ))),
        }
    }

    /// The local log id.
    pub fn id(&self) -> &str {
        self.log.id()
    }

    /// [`Log::append`].
    pub async fn append(&self, value: impl Into<Vec<u8>>) -> Result<Node, LogError> {
        let value = value.into();
        self.run(move |log| log.append(value)).await
    }

    /// [`Log::add`].
    pub async fn add(&self, links: Vec<Key>, value: impl Into<Vec<u8>>) -> Result<Node, LogError> {
        let value = value.into();
        self.run(move |log| log.add(links, value)).await
    }

    /// [`Log::batch`].
    pub async fn batch(&self, items: Vec<BatchItem>) -> Result<Vec<Node>, LogError> {
        self.run(move |log| log.batch(items)).await
    }

    /// [`Log::receive`].
    pub async fn receive(&self, node: Node) -> Result<Node, LogError> {
        self.run(move |log| log.receive(&node)).await
    }

    /// [`Log::get`].
    pub async fn get(&self, key: Key) -> Result<Option<Node>, LogError> {
        self.run(move |log| log.get(&key)).await
    }

    /// [`Log::entry`].
    pub async fn entry(
        &self,
        log_id: impl Into<String>,
        seq: u64,
    ) -> Result<Option<Entry>, LogError> {
        let log_id = log_id.into();
        self.run(move |log| log.entry(&log_id, seq)).await
    }

    /// [`Log::log_head`].
    pub async fn log_head(&self, log_id: impl Into<String>) -> Result<u64, LogError> {
        let log_id = log_id.into();
        self.run(move |log| log.log_head(&log_id)).await
    }

    /// [`Log::heads`].
    pub async fn heads(&self) -> Result<Vec<Node>, LogError> {
        self.run(|log| log.heads()).await
    }

    /// [`Log::head_keys`].
    pub async fn head_keys(&self) -> Result<Vec<Key>, LogError> {
        self.run(|log| log.head_keys()).await
    }

    /// [`Log::at_change`].
    pub async fn at_change(&self, change: u64) -> Result<Option<Node>, LogError> {
        self.run(move |log| log.at_change(change)).await
    }

    /// Up to `limit` nodes with change > `since`, in change order ([`Log::changes_since`]).
    pub async fn changes_since(&self, since: u64, limit: usize) -> Result<Vec<Node>, LogError> {
        self.run(move |log| log.changes_since(since).take(limit).collect())
            .await
    }

    /// The change counter ([`Log::changes`]; never blocks).
    pub fn changes(&self) -> u64 {
        self.log.changes()
    }

    /// [`Log::subscribe`]. Its `next` reads one node from the store per call (a short read, not
    /// a write).
    pub fn subscribe(&self, since: u64) -> Subscription {
        self.log.subscribe(since)
    }

    /// [`Log::watch_changes`].
    pub fn watch_changes(&self) -> watch::Receiver<u64> {
        self.log.watch_changes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::hyperlog::LogOptions;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    /// On a `current_thread` runtime, another task runs while an append is in progress: the
    /// append waits (on the blocking pool) for the log's insertion lock, which only that other
    /// task can have released. Were the append to block the runtime's one thread, the other task
    /// could only run after it (the lock holder gives up after 30 s, so a regression fails
    /// instead of hanging).
    #[test]
    fn an_append_does_not_block_a_current_thread_runtime() {
        let log = Log::memory_with_id("A", LogOptions::default()).unwrap();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let (held_tx, held_rx) = std::sync::mpsc::channel::<()>();
        let holder = {
            let log = log.clone();
            std::thread::spawn(move || {
                // Hold the insertion lock until told (or until the fallback deadline).
                let batch = log.begin_receive().unwrap();
                held_tx.send(()).unwrap();
                let _ = release_rx.recv_timeout(Duration::from_secs(30));
                drop(batch);
            })
        };
        held_rx.recv().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let append_done = Arc::new(AtomicBool::new(false));
        let other_ran_during_append = Arc::new(AtomicBool::new(false));
        let async_log = AsyncLog::new(log.clone());
        let value = vec![7u8; 8 * 1024 * 1024];
        let node = rt.block_on(async {
            let other = {
                let append_done = Arc::clone(&append_done);
                let ran = Arc::clone(&other_ran_during_append);
                tokio::spawn(async move {
                    // Let the append start first.
                    tokio::task::yield_now().await;
                    ran.store(!append_done.load(Ordering::SeqCst), Ordering::SeqCst);
                    release_tx.send(()).ok();
                })
            };
            let node = async_log.append(value).await.unwrap();
            append_done.store(true, Ordering::SeqCst);
            other.await.unwrap();
            node
        });
        holder.join().unwrap();
        assert!(
            other_ran_during_append.load(Ordering::SeqCst),
            "the other task only ran after the append"
        );
        assert_eq!(log.get(&node.key).unwrap().unwrap().value.len(), 8 << 20);
    }
}
