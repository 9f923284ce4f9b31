//! A `tracing` filter that lets each message of the WebRTC engine through once a minute.
//!
//! webrtc-rs 0.21 logs some errors once per connectivity check, i.e. up to every 5 ms per
//! candidate pair for 1.4 s (see `peer.rs`): a TURN server that refuses to relay to an address
//! (coturn's `denied-peer-ip`, which production configurations set for private ranges) answers
//! every check's permission request with `403 Forbidden IP`, and the engine logs
//! `TURN permission request failed` each time, ~150 times per peer and connection in the NAT
//! lab. The engine should remember the refusal (`RTCTurnRelayer`, upstream); until it does,
//! this filter shows the first of each distinct engine message and drops its repeats for a
//! minute. Events of other crates pass untouched.
//!
//! ```
//! use tracing_subscriber::filter::FilterExt;
//! use tracing_subscriber::layer::SubscriberExt;
//! use tracing_subscriber::util::SubscriberInitExt;
//! use tracing_subscriber::Layer;
//!
//! let levels = tracing_subscriber::EnvFilter::new(swarm::RECOMMENDED_LOG_FILTER);
//! let _ = tracing_subscriber::registry()
//!     .with(
//!         tracing_subscriber::fmt::layer()
//!             .with_filter(levels.and(swarm::EngineRepeatFilter::default())),
//!     )
//!     .try_init();
//! ```

use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use tracing::field::{Field, Visit};
use tracing::{Event, Metadata};
use tracing_subscriber::layer::{Context, Filter};

/// How long a message's repeats are dropped by [`EngineRepeatFilter::default`].
pub const DEFAULT_REPEAT_WINDOW: Duration = Duration::from_secs(60);

/// How many distinct messages are remembered; past that the expired ones are forgotten, and if
/// none has expired, all (memory stays bounded whatever the engine logs).
const MAX_REMEMBERED: usize = 256;

/// A per-layer filter (`tracing_subscriber::Layer::with_filter`) that drops an event of the
/// WebRTC engine (the `webrtc` and `rtc*` crates, logging through `log`) when the same target
/// logged the same message less than a window ago. See the module's documentation.
#[derive(Debug)]
pub struct EngineRepeatFilter {
    window: Duration,
    shown: Mutex<HashMap<String, Instant>>,
}

impl Default for EngineRepeatFilter {
    /// Repeats dropped for [`DEFAULT_REPEAT_WINDOW`] (a minute).
    fn default() -> Self {
        EngineRepeatFilter::new(DEFAULT_REPEAT_WINDOW)
    }
}

impl EngineRepeatFilter {
    /// Drops the repeats of a message for `window` after it was shown.
    pub fn new(window: Duration) -> Self {
        EngineRepeatFilter {
            window,
            shown: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `key` was not shown within the window; if so, it counts as shown now.
    fn first_in_window(&self, key: String, now: Instant) -> bool {
        let mut shown = self.shown.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(at) = shown.get(&key) {
            if now.saturating_duration_since(*at) < self.window {
                return false;
            }
        }
        if shown.len() >= MAX_REMEMBERED {
            shown.retain(|_, at| now.saturating_duration_since(*at) < self.window);
            if shown.len() >= MAX_REMEMBERED {
                shown.clear();
            }
        }
        shown.insert(key, now);
        true
    }
}

/// Whether `target` is one of the engine's crates.
fn is_engine(target: &str) -> bool {
    let crate_name = target.split("::").next().unwrap_or(target);
    crate_name == "webrtc" || crate_name == "rtc" || crate_name.starts_with("rtc_")
}

/// An event's message and, for a `log` record, its target (`tracing-log` puts it in a field).
#[derive(Default)]
struct MessageAndTarget {
    message: String,
    log_target: Option<String>,
}

impl Visit for MessageAndTarget {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.message = value.to_string(),
            "log.target" => self.log_target = Some(value.to_string()),
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        match field.name() {
            "message" => self.message = format!("{value:?}"),
            "log.target" => self.log_target = Some(format!("{value:?}")),
            _ => {}
        }
    }
}

impl<S> Filter<S> for EngineRepeatFilter {
    fn enabled(&self, _: &Metadata<'_>, _: &Context<'_, S>) -> bool {
        true
    }

    fn event_enabled(&self, event: &Event<'_>, _: &Context<'_, S>) -> bool {
        let mut fields = MessageAndTarget::default();
        event.record(&mut fields);
        let target = fields
            .log_target
            .unwrap_or_else(|| event.metadata().target().to_string());
        if !is_engine(&target) {
            return true;
        }
        self.first_in_window(format!("{target}: {}", fields.message), Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_targets_are_recognised() {
        for target in [
            "webrtc",
            "webrtc::peer_connection::transport::turn_relayer",
            "rtc",
            "rtc::peer_connection",
            "rtc_ice::agent",
            "rtc_dtls",
        ] {
            assert!(is_engine(target), "{target}");
        }
        for target in ["swarm::peer", "webrtcfoo", "rtcp_app", "signalhub", "log"] {
            assert!(!is_engine(target), "{target}");
        }
    }

    #[test]
    fn a_message_passes_once_a_window_and_memory_stays_bounded() {
        let filter = EngineRepeatFilter::new(Duration::from_secs(60));
        let start = Instant::now();
        assert!(filter.first_in_window("a".into(), start));
        assert!(!filter.first_in_window("a".into(), start + Duration::from_secs(59)));
        assert!(filter.first_in_window("b".into(), start + Duration::from_secs(59)));
        assert!(filter.first_in_window("a".into(), start + Duration::from_secs(61)));
        for n in 0..10 * MAX_REMEMBERED {
            filter.first_in_window(n.to_string(), start + Duration::from_secs(62));
        }
        let remembered = filter.shown.lock().map(|shown| shown.len()).unwrap_or(0);
        assert!(remembered <= MAX_REMEMBERED, "{remembered} remembered");
    }
}
