//! The signalhub client's server-sent-events parser (`signalhub::client::SseParser`), fed the
//! input split into chunks at fuzzer-chosen points: it must never panic, and what it yields
//! (events, then at most one error) must not depend on where the stream was split.
#![no_main]

use libfuzzer_sys::fuzz_target;
use signalhub::client::SseParser;

/// Feeds `chunks` until the first error: the events, and whether it failed.
fn run<'a>(max: usize, chunks: impl Iterator<Item = &'a [u8]>) -> (Vec<String>, Option<String>) {
    let mut parser = SseParser::new(max);
    let mut events = Vec::new();
    for chunk in chunks {
        if let Err(err) = parser.feed(chunk, &mut events) {
            return (events, Some(err.to_string()));
        }
    }
    (events, None)
}

fuzz_target!(|input: &[u8]| {
    // Byte 0: the event limit (small, so that it is reached); byte 1: the chunk size.
    let [max, chunk, data @ ..] = input else {
        return;
    };
    let max = usize::from(*max) + 1;
    let chunk = usize::from(*chunk % 16) + 1;
    let whole = run(max, std::iter::once(data));
    let split = run(max, data.chunks(chunk));
    assert_eq!(whole, split, "chunks of {chunk} bytes parse differently");
    for event in &whole.0 {
        // An event's data, joined lines included, stays within the bound.
        assert!(event.len() <= 2 * max, "event of {} bytes", event.len());
        assert!(!event.contains('\r'), "CR inside an event: {event:?}");
    }
});
