//! A signalhub rendezvous hub, its client, and the pieces of both.
//!
//! The hub speaks the v1 HTTP API of JavaScript `signalhub` 4.9 byte for byte (subscribe by
//! server-sent events at `GET /v1/<app>/<channel>[,<channel>…]`, broadcast with
//! `POST /v1/<app>/<channel>`), and the WebSocket protocol of `signalhubws` on the same port, so
//! existing browser and Node clients work against it unchanged. Unlike the JS hub it bounds every
//! subscriber's queue, enforces limits with clear errors, and exports metrics.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use signalhub::{Hub, HubConfig};
//! let hub = Hub::bind("127.0.0.1:8080", HubConfig::default()).await?;
//! hub.run_until(async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! # Ok(()) }
//! ```
//!
//! The [`client`] subscribes and broadcasts through one or more hubs.

pub mod client;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod server;

pub use server::{
    default_max_connections, generate_token_keys, mint_token, parse_signing_key,
    parse_verifying_key, turn_credential, Access, ClusterError, Hub, HubConfig, HubError,
    IceConfigError, IceServers, KeyError, Metrics, RedisConfig, Rejection, RunningHub, TokenClaims,
    MAX_REFUSALS,
};
