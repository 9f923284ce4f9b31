//! A hyperlog-compatible signed append-only log.
//!
//! hyperlog 4.x (mafintosh) is a content-addressed Merkle DAG whose nodes are also filed into
//! per-writer logs, replicated between peers by exchanging per-log heads. This module holds the
//! pieces that must match the JavaScript originals byte for byte:
//!
//! - [`node`]: the node model and its framed SHA-256 key;
//! - [`sign`]: hyperlog-sodium 2.x Ed25519 signatures over node keys;
//! - [`wire`]: the replication frames and their proto2 messages;
//! - [`json`]: JSON written exactly as JS `JSON.stringify` writes it, for JSON-encoded logs;
//! - [`store`]: storage (in memory, or durable on redb) behind a small trait;
//! - [`hyperlog`]: the [`Log`] itself (append, add, batch, heads, changes, live subscription);
//! - [`async_log`]: [`AsyncLog`], the same log for async code, without blocking the runtime;
//! - [`replicate`]: the replication protocol over any tokio byte stream;
//! - [`view`]: materialized views derived from the log, kept in its store.

pub mod async_log;
pub mod hyperlog;
pub mod json;
pub mod node;
pub mod replicate;
pub mod sign;
pub mod store;
pub mod view;
pub mod wire;

pub use async_log::AsyncLog;
pub use hyperlog::{BatchItem, ChangesIter, Log, LogError, LogOptions, Subscription};
