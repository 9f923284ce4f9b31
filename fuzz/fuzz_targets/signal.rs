//! The swarm's signalling parser (`swarm::signal`): hub messages as JSON text, as they arrive on
//! a channel. Parsing must never panic, and whatever it accepts must survive a round trip
//! through its own JSON (and, signed, through `seal` and `open_sealed`). Signed envelopes with
//! arbitrary fields go through `open_sealed` as well.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use swarm::signal::{open_sealed, seal, HubMessage, Signal};
use swarm::Keypair;

fn keypair() -> &'static Keypair {
    static KEYPAIR: OnceLock<Keypair> = OnceLock::new();
    KEYPAIR.get_or_init(|| Keypair::from_seed(&[7; 32]))
}

fuzz_target!(|input: &[u8]| {
    let Ok(value) = serde_json::from_slice::<Value>(input) else {
        return;
    };
    // A signed envelope with whatever fields the input has.
    let _ = open_sealed(&value, "app", "all");
    let Ok(message) = HubMessage::parse(&value) else {
        return;
    };
    if let HubMessage::Signal {
        signal: Signal::Ignored { .. },
        ..
    } = message
    {
        // Never sent (it is written as null).
        return;
    }
    let text = message.to_json();
    let again = HubMessage::parse(&serde_json::from_str(&text).expect("our own JSON"))
        .unwrap_or_else(|err| panic!("{text} does not parse back: {err}"));
    assert_eq!(again, message);
    // Signed by a key whose id it is not: refused. Re-addressed to the key's id: accepted.
    let sealed = seal(keypair(), "app", "all", &message);
    if message.from() != sealed["from"] {
        assert!(open_sealed(&sealed, "app", "all").is_err());
    }
    let from = sealed["from"].as_str().expect("hex").to_string();
    let mine = match message {
        HubMessage::Announce { .. } => HubMessage::Announce { from },
        HubMessage::Signal { signal, .. } => HubMessage::Signal { from, signal },
    };
    let sealed = seal(keypair(), "app", "all", &mine);
    assert_eq!(open_sealed(&sealed, "app", "all"), Ok(mine.clone()));
    // Not for another channel.
    assert!(open_sealed(&sealed, "app", "other").is_err());
});
