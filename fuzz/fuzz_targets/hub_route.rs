//! The hub's route parser (`route()` in `signalhub/src/server/routes.rs`, through
//! `signalhub::fuzzing::route`): any method and raw request target, under small limits chosen
//! by the input. It must never panic, and what it accepts must keep the hub's promises: a
//! subscription names a non-empty app and 1..=max distinct, non-empty channels without commas,
//! none over the name limit; a broadcast names `<app>/<channel>` with a non-empty app and a
//! non-empty channel without a comma (the app may have one, as a
//! subscription's may); only targets within the target limit are accepted.
#![no_main]

use libfuzzer_sys::fuzz_target;
use signalhub::fuzzing::{route, RouteOutcome};

const METHODS: [&[u8]; 8] = [
    b"GET", b"POST", b"OPTIONS", b"HEAD", b"PUT", b"DELETE", b"get", b"PATCH",
];

fuzz_target!(|input: &[u8]| {
    let [method, target_limit, name_limit, channels_limit, target @ ..] = input else {
        return;
    };
    let Ok(target) = std::str::from_utf8(target) else {
        return;
    };
    let method = METHODS[usize::from(*method) % METHODS.len()];
    let max_target = usize::from(*target_limit) + 1;
    let max_name = usize::from(*name_limit % 32) + 1;
    let max_channels = usize::from(*channels_limit % 8) + 1;
    let outcome = route(method, target, max_target, max_name, max_channels).expect("a method");
    match &outcome {
        RouteOutcome::Subscribe { app, channels } => {
            assert_eq!(method, b"GET");
            assert!(target.len() <= max_target);
            assert!(target.starts_with("/v1/"));
            assert!(!app.is_empty() && app.len() <= max_name && !app.contains('/'));
            assert!(!channels.is_empty() && channels.len() <= max_channels);
            for (i, channel) in channels.iter().enumerate() {
                assert!(!channel.is_empty() && channel.len() <= max_name);
                assert!(!channel.contains(',') && !channel.contains('?'));
                assert!(!channels[..i].contains(channel), "{channel:?} twice");
            }
        }
        RouteOutcome::Broadcast { key } => {
            assert_eq!(method, b"POST");
            assert!(target.len() <= max_target);
            let (app, channel) = key.split_once('/').expect("<app>/<channel>");
            assert!(!app.is_empty() && app.len() <= max_name);
            assert!(!channel.is_empty() && channel.len() <= max_name);
            // The app may hold a comma (so may a subscription's: only channels are split on it).
            assert!(!channel.contains(',') && !key.contains('?'));
        }
        RouteOutcome::Invalid { status, message } => {
            assert!(matches!(status, 400 | 414), "status {status}");
            assert!(!message.is_empty());
        }
        RouteOutcome::Preflight => assert_eq!(method, b"OPTIONS"),
        RouteOutcome::Health | RouteOutcome::Metrics | RouteOutcome::IceServers => {
            assert_eq!(method, b"GET")
        }
        RouteOutcome::Info => assert_eq!(target, "/"),
        RouteOutcome::NotFound => {}
    }
    // The same target again gives the same answer (the parser keeps no state).
    assert_eq!(
        route(method, target, max_target, max_name, max_channels),
        Some(outcome)
    );
});
