//! Entry points for the fuzz targets under `fuzz/` (the `fuzzing` feature): the crate-private
//! parsers of the hub, behind owned, public types. Not an API: nothing outside `fuzz/` uses it.
#![doc(hidden)]

use axum::http::Method;

use crate::server::limits::PathLimits;
use crate::server::routes::{self, Route};

/// What the hub's route parser decided, with owned fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteOutcome {
    Preflight,
    Info,
    Health,
    Metrics,
    IceServers,
    Subscribe { app: String, channels: Vec<String> },
    Broadcast { key: String },
    NotFound,
    Invalid { status: u16, message: String },
}

/// Routes a method (any token; `None` if it is not a valid HTTP method) and a raw request
/// target, under these limits, as the hub does.
pub fn route(
    method: &[u8],
    target: &str,
    max_target_bytes: usize,
    max_name_bytes: usize,
    max_channels: usize,
) -> Option<RouteOutcome> {
    let method = Method::from_bytes(method).ok()?;
    let limits = PathLimits {
        max_target_bytes,
        max_name_bytes,
        max_channels,
    };
    Some(match routes::route(&method, target, limits) {
        Route::Preflight => RouteOutcome::Preflight,
        Route::Info => RouteOutcome::Info,
        Route::Health => RouteOutcome::Health,
        Route::Metrics => RouteOutcome::Metrics,
        Route::IceServers => RouteOutcome::IceServers,
        Route::Subscribe { app, channels } => RouteOutcome::Subscribe {
            app: app.to_string(),
            channels: channels.into_iter().map(str::to_string).collect(),
        },
        Route::Broadcast { key } => RouteOutcome::Broadcast {
            key: key.to_string(),
        },
        Route::NotFound => RouteOutcome::NotFound,
        Route::Invalid(_, status, message) => RouteOutcome::Invalid {
            status: status.as_u16(),
            message,
        },
    })
}

/// A cluster message from Redis, as `sh1` envelopes carry it (`server/broker.rs`), with owned
/// fields: (node, sent_micros, came by POST, key, message).
pub type EnvelopeParts = (String, u64, bool, String, Vec<u8>);

/// Decodes bytes as a node of the cluster decodes what Redis hands it.
pub fn decode_envelope(bytes: &[u8]) -> Result<EnvelopeParts, String> {
    use crate::server::broker::{Envelope, Origin};
    Envelope::decode(bytes)
        .map(|e| {
            (
                e.node.to_string(),
                e.sent_micros,
                e.origin == Origin::Http,
                e.key.to_string(),
                e.message.to_vec(),
            )
        })
        .map_err(|err| err.to_string())
}

/// Encodes envelope parts as a node publishes them.
pub fn encode_envelope(parts: &EnvelopeParts) -> Vec<u8> {
    use crate::server::broker::{Envelope, Origin};
    let (node, sent_micros, http, key, message) = parts;
    Envelope {
        node,
        sent_micros: *sent_micros,
        origin: if *http {
            Origin::Http
        } else {
            Origin::WebSocket
        },
        key,
        message,
    }
    .encode()
    .to_vec()
}

/// Checks a token for `app` as a private hub trusting one fixed key does: the status and message
/// of the refusal, if any.
pub fn check_token(token: &str, app: &str) -> Result<(), (u16, String)> {
    use crate::server::access::Access;
    // A fixed key: no input can hold a signature made with its secret half.
    static ACCESS: std::sync::LazyLock<Access> = std::sync::LazyLock::new(|| Access {
        token_keys: vec![ed25519_dalek::SigningKey::from_bytes(&[7u8; 32]).verifying_key()],
        ..Access::default()
    });
    ACCESS
        .check_app(app, Some(token))
        .map_err(|denial| (denial.status.as_u16(), denial.message))
}
