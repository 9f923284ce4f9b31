//! A private hub's token check (`signalhub/src/server/access.rs`): any token text for any app.
//! Never a panic, always a refusal with a 401/403 status and a message (no input can carry a
//! signature of the fixed trusted key's secret half).
#![no_main]

use libfuzzer_sys::fuzz_target;
use signalhub::fuzzing::check_token;

fuzz_target!(|input: &[u8]| {
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    let (token, app) = text.split_once('\n').unwrap_or((text, "app"));
    match check_token(token, app) {
        Ok(()) => panic!("a token no one signed was accepted: {token:?}"),
        Err((status, message)) => {
            assert!(matches!(status, 401 | 403), "status {status}");
            assert!(!message.is_empty());
        }
    }
});
