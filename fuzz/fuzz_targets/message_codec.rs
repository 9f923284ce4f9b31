//! The hyperlog message codec (`swarm::Message::decode_body`, and `Handshake`, `LogSeq`,
//! `NodeMessage` under it) on arbitrary frame bodies: it must never panic, and a body it accepts
//! must re-encode canonically (a second encode of the decoded message gives the same bytes, and
//! decodes to the same message), with `body_len` and `frame_len` matching what is written.
#![no_main]

use libfuzzer_sys::fuzz_target;
use swarm::Message;

fuzz_target!(|body: &[u8]| {
    let Ok(message) = Message::decode_body(body) else {
        return;
    };
    let encoded = message.to_body();
    assert_eq!(encoded.len(), message.body_len());
    assert_eq!(message.to_frame().len(), message.frame_len());
    let again = Message::decode_body(&encoded).expect("our own encoding decodes");
    assert_eq!(again, message);
    assert_eq!(again.to_body(), encoded, "the encoding is not canonical");
});
