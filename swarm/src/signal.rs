//! The signalling messages of JS `webrtc-swarm` 2.9 and `simple-peer` 6.x–9.x, as they travel
//! through a signalhub, and nothing else: their shapes, their exact JSON, and what a peer accepts.
//!
//! On the hub a swarm uses two channels per peer: `all`, where each peer announces itself with
//! `{"type":"connect","from":<id>}`, and its own id, its inbox, where others post
//! `{"from":<id>,"signal":<signal>}`. A signal is what simple-peer emits: an offer or answer
//! `{"type":…,"sdp":…}`, or a trickled ICE candidate
//! `{"candidate":{"candidate":…,"sdpMLineIndex":…,"sdpMid":…}}` (simple-peer ≥ 9.9 adds
//! `"type":"candidate"`). Key order on the wire is JS insertion order, which [`HubMessage::to_json`]
//! reproduces; parsing does not depend on it. See `shared/specs/signalhub-and-webrtc-swarm.md` §4–5.

use serde_json::{json, Map, Value};

use crate::log::sign::{verify_signature, Keypair};

/// Why a hub message is not a swarm message (the swarm drops it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignalError {
    #[error("not a JSON object")]
    NotAnObject,
    #[error("no string `from`")]
    NoSender,
    #[error("neither an announce nor a signal")]
    UnknownMessage,
    #[error(
        "a signal with neither `sdp` nor `candidate` (it would destroy a simple-peer 6.x peer)"
    )]
    EmptySignal,
    #[error("an ICE candidate without its `candidate` string")]
    BadCandidate,
    /// Signed signalling is on and the message is not a signed envelope.
    #[error("not signed (this swarm accepts only signed signalling)")]
    NotSigned,
    /// The envelope's `from` is not a 32-byte public key in hex, or differs from the signed
    /// message's `from`.
    #[error("the sender is not the signing key")]
    WrongSigner,
    /// The signature does not verify for the claimed sender, app and channel.
    #[error("the signature does not verify for the claimed sender")]
    BadSignature,
}

/// A message of a swarm, on `all` or on a peer's inbox.
#[derive(Debug, Clone, PartialEq)]
pub enum HubMessage {
    /// `{"type":"connect","from":id}` on `all`: "I am here; whoever hears this, offer to me".
    Announce { from: String },
    /// `{"from":id,"signal":…}` on the recipient's inbox.
    Signal { from: String, signal: Signal },
}

/// One simple-peer signal.
#[derive(Debug, Clone, PartialEq)]
pub enum Signal {
    Offer {
        sdp: String,
    },
    Answer {
        sdp: String,
    },
    Candidate(IceCandidate),
    /// simple-peer 9.x `renegotiate` and `transceiverRequest` (media only): accepted, not acted on.
    Ignored {
        kind: String,
    },
    /// `{"type":"abandon"}`: "I dropped my attempt to connect with you; drop yours". Not
    /// simple-peer's: a simple-peer (6.x or 9.x) destroys its peer on any signal with neither
    /// `sdp` nor `candidate` ("signal() called with invalid signal data"), and webrtc-swarm then
    /// forgets the sender, so the sender's next announce brings a fresh offer. This crate sends
    /// it to a JS peer whose handshake it gives up on; without it, webrtc-swarm keeps the stale
    /// attempt for good and ignores every later announce from us.
    Abandon,
}

/// A trickled ICE candidate, as `RTCIceCandidate` serializes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IceCandidate {
    /// The candidate line, without `a=` (`candidate:…`).
    pub candidate: String,
    pub sdp_m_line_index: Option<u16>,
    pub sdp_mid: Option<String>,
}

impl HubMessage {
    /// Reads a message received from the hub. Extra keys are ignored; both candidate shapes are
    /// accepted.
    pub fn parse(value: &Value) -> Result<HubMessage, SignalError> {
        let object = value.as_object().ok_or(SignalError::NotAnObject)?;
        let from = object
            .get("from")
            .and_then(Value::as_str)
            .ok_or(SignalError::NoSender)?
            .to_string();
        if let Some(signal) = object.get("signal") {
            return Ok(HubMessage::Signal {
                from,
                signal: Signal::parse(signal)?,
            });
        }
        if object.get("type").and_then(Value::as_str) == Some("connect") {
            return Ok(HubMessage::Announce { from });
        }
        Err(SignalError::UnknownMessage)
    }

    /// The message as webrtc-swarm writes it, byte for byte (keys in its order).
    pub fn to_json(&self) -> String {
        self.to_value().to_string()
    }

    /// The message as a JSON value, keys in webrtc-swarm's order.
    pub fn to_value(&self) -> Value {
        match self {
            HubMessage::Announce { from } => json!({"type": "connect", "from": from}),
            HubMessage::Signal { from, signal } => {
                let mut object = Map::new();
                object.insert("from".into(), Value::String(from.clone()));
                object.insert("signal".into(), signal.to_value());
                Value::Object(object)
            }
        }
    }

    /// The sender's id.
    pub fn from(&self) -> &str {
        match self {
            HubMessage::Announce { from } | HubMessage::Signal { from, .. } => from,
        }
    }
}

impl Signal {
    /// Reads a simple-peer signal. A signal must carry `sdp` or `candidate`, except the 9.x
    /// extras, which are recognised and ignored.
    pub fn parse(value: &Value) -> Result<Signal, SignalError> {
        let object = value.as_object().ok_or(SignalError::NotAnObject)?;
        let kind = object.get("type").and_then(Value::as_str);
        if let Some(sdp) = object.get("sdp").and_then(Value::as_str) {
            return match kind {
                Some("offer") => Ok(Signal::Offer {
                    sdp: sdp.to_string(),
                }),
                Some("answer") => Ok(Signal::Answer {
                    sdp: sdp.to_string(),
                }),
                _ => Err(SignalError::UnknownMessage),
            };
        }
        if let Some(candidate) = object.get("candidate").filter(|c| !c.is_null()) {
            let candidate = candidate.as_object().ok_or(SignalError::BadCandidate)?;
            let line = candidate
                .get("candidate")
                .and_then(Value::as_str)
                .ok_or(SignalError::BadCandidate)?;
            return Ok(Signal::Candidate(IceCandidate {
                candidate: line.to_string(),
                sdp_m_line_index: candidate
                    .get("sdpMLineIndex")
                    .and_then(Value::as_u64)
                    .and_then(|i| u16::try_from(i).ok()),
                sdp_mid: candidate
                    .get("sdpMid")
                    .and_then(Value::as_str)
                    .map(str::to_string),
            }));
        }
        match kind {
            Some(kind @ ("renegotiate" | "transceiverRequest")) => Ok(Signal::Ignored {
                kind: kind.to_string(),
            }),
            Some("abandon") => Ok(Signal::Abandon),
            _ => Err(SignalError::EmptySignal),
        }
    }

    /// The signal as simple-peer 6.x writes it (candidates without `type`, which every version
    /// accepts). [`Signal::Ignored`] is never sent: it has no `sdp` or `candidate`, and would
    /// destroy a 6.x peer; it is written as `null` should anyone try.
    pub fn to_value(&self) -> Value {
        match self {
            Signal::Offer { sdp } => json!({"type": "offer", "sdp": sdp}),
            Signal::Answer { sdp } => json!({"type": "answer", "sdp": sdp}),
            Signal::Candidate(candidate) => json!({"candidate": {
                "candidate": candidate.candidate,
                "sdpMLineIndex": candidate.sdp_m_line_index,
                "sdpMid": candidate.sdp_mid,
            }}),
            Signal::Ignored { .. } => Value::Null,
            Signal::Abandon => json!({"type": "abandon"}),
        }
    }

    /// Whether this may be sent to any simple-peer version.
    pub fn is_sendable(&self) -> bool {
        !matches!(self, Signal::Ignored { .. })
    }
}

/// What a signed message's signature covers, besides the message: the protocol, the app and the
/// channel it was posted to, so a signature cannot be replayed into another swarm or inbox.
fn signed_bytes(app: &str, channel: &str, inner: &str) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(32 + app.len() + channel.len() + inner.len());
    for part in ["swarm-signal/1", app, channel] {
        bytes.extend_from_slice(part.as_bytes());
        bytes.push(0);
    }
    bytes.extend_from_slice(inner.as_bytes());
    bytes
}

/// Signs a message for `channel` of `app`: `{"from":<hex public key>,"signed":<the message's
/// JSON text>,"signature":<hex Ed25519 signature>}`. The message travels as text, so a receiver
/// verifies the exact bytes that were signed, with no canonical JSON to agree on.
pub fn seal(keypair: &Keypair, app: &str, channel: &str, message: &HubMessage) -> Value {
    let inner = message.to_json();
    let signature = keypair.sign(&signed_bytes(app, channel, &inner));
    let mut object = Map::new();
    object.insert("from".into(), Value::String(hex(&keypair.public_key())));
    object.insert("signed".into(), Value::String(inner));
    object.insert("signature".into(), Value::String(hex(&signature)));
    Value::Object(object)
}

/// Opens a signed envelope received on `channel` of `app`: checks that the sender is the
/// signing key and the message inside names the same sender, then the signature.
pub fn open_sealed(value: &Value, app: &str, channel: &str) -> Result<HubMessage, SignalError> {
    let object = value.as_object().ok_or(SignalError::NotAnObject)?;
    let (Some(from), Some(inner), Some(signature)) = (
        object.get("from").and_then(Value::as_str),
        object.get("signed").and_then(Value::as_str),
        object.get("signature").and_then(Value::as_str),
    ) else {
        return Err(SignalError::NotSigned);
    };
    let public_key = unhex(from)
        .filter(|k| k.len() == 32)
        .ok_or(SignalError::WrongSigner)?;
    let signature = unhex(signature).ok_or(SignalError::BadSignature)?;
    verify_signature(&public_key, &signed_bytes(app, channel, inner), &signature)
        .map_err(|_| SignalError::BadSignature)?;
    let message: Value = serde_json::from_str(inner).map_err(|_| SignalError::NotAnObject)?;
    let message = HubMessage::parse(&message)?;
    if message.from() != from {
        return Err(SignalError::WrongSigner);
    }
    Ok(message)
}

/// Lowercase hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        text.push(DIGITS[usize::from(byte >> 4)] as char);
        text.push(DIGITS[usize::from(byte & 15)] as char);
    }
    text
}

/// Hex (either case) to bytes; `None` if it is not hex.
pub(crate) fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    text.as_bytes()
        .chunks(2)
        .map(|pair| {
            let digit = |c: u8| (c as char).to_digit(16);
            Some((digit(pair[0])? * 16 + digit(pair[1])?) as u8)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_messages_verify_only_for_their_signer_app_and_channel() {
        let alice = Keypair::from_seed(&[1; 32]);
        let mallory = Keypair::from_seed(&[2; 32]);
        let alice_id = hex(&alice.public_key());
        let offer = HubMessage::Signal {
            from: alice_id.clone(),
            signal: Signal::Offer {
                sdp: "v=0\r\n".into(),
            },
        };
        let sealed = seal(&alice, "app", "bob", &offer);
        assert_eq!(open_sealed(&sealed, "app", "bob"), Ok(offer.clone()));
        // Replayed into another inbox or swarm.
        assert_eq!(
            open_sealed(&sealed, "app", "carol"),
            Err(SignalError::BadSignature)
        );
        assert_eq!(
            open_sealed(&sealed, "other", "bob"),
            Err(SignalError::BadSignature)
        );
        // Mallory signs a message in Alice's name: the signer is not the claimed sender.
        let mut forged = seal(&mallory, "app", "bob", &offer);
        assert_eq!(
            open_sealed(&forged, "app", "bob"),
            Err(SignalError::WrongSigner)
        );
        // ... and claiming Alice's key outside does not help: the signature is Mallory's.
        forged["from"] = Value::String(alice_id);
        assert_eq!(
            open_sealed(&forged, "app", "bob"),
            Err(SignalError::BadSignature)
        );
        // Tampering with the signed text.
        let mut tampered = sealed.clone();
        tampered["signed"] =
            Value::String(sealed["signed"].as_str().unwrap().replace("v=0", "v=1"));
        assert_eq!(
            open_sealed(&tampered, "app", "bob"),
            Err(SignalError::BadSignature)
        );
        // A plain message is not signed.
        assert_eq!(
            open_sealed(&offer.to_value(), "app", "bob"),
            Err(SignalError::NotSigned)
        );
    }

    #[test]
    fn hex_round_trips() {
        assert_eq!(hex(&[0, 15, 255]), "000fff");
        assert_eq!(unhex("000fFF"), Some(vec![0, 15, 255]));
        assert_eq!(unhex("0g"), None);
        assert_eq!(unhex("abc"), None);
    }

    fn parse(text: &str) -> Result<HubMessage, SignalError> {
        HubMessage::parse(&serde_json::from_str(text).unwrap())
    }

    #[test]
    fn announce_round_trips_byte_for_byte() {
        let text = r#"{"type":"connect","from":"cjrrm879l0000305zxsk3el9n"}"#;
        let message = parse(text).unwrap();
        assert_eq!(
            message,
            HubMessage::Announce {
                from: "cjrrm879l0000305zxsk3el9n".into()
            }
        );
        assert_eq!(message.to_json(), text);
        // Key order does not matter when reading.
        assert_eq!(
            parse(r#"{"from":"a","type":"connect"}"#).unwrap().from(),
            "a"
        );
    }

    #[test]
    fn signals_as_captured_from_webrtc_swarm() {
        let offer = r#"{"from":"peerA","signal":{"type":"offer","sdp":"v=0\r\no=- 9160 2 IN IP4 127.0.0.1\r\n"}}"#;
        let message = parse(offer).unwrap();
        assert!(
            matches!(&message, HubMessage::Signal { signal: Signal::Offer { sdp }, .. } if sdp.starts_with("v=0\r\n"))
        );
        assert_eq!(message.to_json(), offer);

        let candidate = r#"{"from":"peerA","signal":{"candidate":{"candidate":"candidate:3229573512 1 udp 2122194687 192.0.2.2 34016 typ host generation 0 ufrag 9Afh network-id 1","sdpMLineIndex":0,"sdpMid":"0"}}}"#;
        let message = parse(candidate).unwrap();
        match &message {
            HubMessage::Signal {
                signal: Signal::Candidate(c),
                ..
            } => {
                assert_eq!(c.sdp_m_line_index, Some(0));
                assert_eq!(c.sdp_mid.as_deref(), Some("0"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(message.to_json(), candidate);

        let answer =
            r#"{"from":"peerB","signal":{"type":"answer","sdp":"v=0\r\na=setup:active\r\n"}}"#;
        assert_eq!(parse(answer).unwrap().to_json(), answer);
    }

    #[test]
    fn both_candidate_shapes_and_9x_extras_are_accepted() {
        let with_type = r#"{"from":"b","signal":{"type":"candidate","candidate":{"candidate":"candidate:1 1 udp 1 ::1 9 typ host","sdpMLineIndex":0,"sdpMid":"0"}}}"#;
        let message = parse(with_type).unwrap();
        // Sent back in the 6.x shape, which every version accepts.
        assert_eq!(
            message.to_json(),
            r#"{"from":"b","signal":{"candidate":{"candidate":"candidate:1 1 udp 1 ::1 9 typ host","sdpMLineIndex":0,"sdpMid":"0"}}}"#
        );
        for extra in [
            r#"{"from":"b","signal":{"type":"renegotiate","renegotiate":true}}"#,
            r#"{"from":"b","signal":{"type":"transceiverRequest","transceiverRequest":{"kind":"audio","init":{}}}}"#,
        ] {
            match parse(extra).unwrap() {
                HubMessage::Signal { signal, .. } => assert!(!signal.is_sendable()),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn abandon_round_trips_and_is_what_simple_peer_rejects() {
        let abandon = r#"{"from":"b","signal":{"type":"abandon"}}"#;
        let message = parse(abandon).unwrap();
        assert_eq!(
            message,
            HubMessage::Signal {
                from: "b".into(),
                signal: Signal::Abandon
            }
        );
        assert_eq!(message.to_json(), abandon);
        // simple-peer destroys its peer on a signal with neither `sdp` nor `candidate`, and does
        // nothing else with this one (no `renegotiate` or `transceiverRequest` either).
        let signal = &serde_json::from_str::<Value>(abandon).unwrap()["signal"];
        for key in ["sdp", "candidate", "renegotiate", "transceiverRequest"] {
            assert!(signal.get(key).is_none(), "{key}");
        }
    }

    #[test]
    fn what_a_swarm_drops() {
        assert_eq!(parse("[]"), Err(SignalError::NotAnObject));
        assert_eq!(parse(r#"{"type":"connect"}"#), Err(SignalError::NoSender));
        assert_eq!(
            parse(r#"{"from":1,"type":"connect"}"#),
            Err(SignalError::NoSender)
        );
        assert_eq!(
            parse(r#"{"from":"a","type":"bye"}"#),
            Err(SignalError::UnknownMessage)
        );
        assert_eq!(
            parse(r#"{"from":"a","signal":{}}"#),
            Err(SignalError::EmptySignal)
        );
        assert_eq!(
            parse(r#"{"from":"a","signal":{"candidate":null}}"#),
            Err(SignalError::EmptySignal)
        );
        assert_eq!(
            parse(r#"{"from":"a","signal":{"candidate":{"sdpMid":"0"}}}"#),
            Err(SignalError::BadCandidate)
        );
        assert_eq!(
            parse(r#"{"from":"a","signal":{"type":"pranswer","sdp":"v=0"}}"#),
            Err(SignalError::UnknownMessage)
        );
        assert_eq!(
            parse(r#"{"from":"a","signal":"offer"}"#),
            Err(SignalError::NotAnObject)
        );
    }
}
