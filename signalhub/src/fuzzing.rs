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
