//! The hyperlog 4.x replication wire format, and nothing else: frames, message types, and a
//! hand-written proto2 codec for exactly the three message schemas of hyperlog's `schema.proto`.
//!
//! A stream is a sequence of frames `varint(len) || body` (unsigned LEB128 length, as npm
//! `length-prefixed-stream@1.6.0` writes it). A body is one type byte and then the protobuf
//! encoding of that type's message:
//!
//! | type | message | payload |
//! |---|---|---|
//! | 0 | Handshake | [`Handshake`] |
//! | 1 | Have | [`LogSeq`] |
//! | 2 | Want | [`LogSeq`] |
//! | 3 | Node | [`NodeMessage`] |
//! | 4 | SentHeads | none (extra bytes are ignored) |
//! | 5 | SentWants | none (extra bytes are ignored) |
//! | other | — | ignored by JS; kept here as [`Message::Unknown`] |
//!
//! The encoder writes fields in schema declaration order, as `protocol-buffers@3.2.1` does, so
//! frames are byte-identical to a JS peer's (Node: tags 1,2,3,4,7,8,5,6). Required fields are
//! always written, even when zero or empty; optional fields are written whenever they are present,
//! even when equal to the default.
//!
//! The decoder accepts fields in any order, keeps the last value of a repeated non-repeated field
//! (as JS does), skips unknown fields of wire types 0, 1, 2 and 5, and turns every malformed
//! input into a [`WireError`]. Differences from the JS decoder, all on inputs a JS encoder never
//! produces: a known field with the wrong wire type is an error (JS decodes it by the schema type
//! anyway); a length-delimited field running past the end is an error (JS silently truncates it);
//! a `bool` is read as a varint (JS reads one byte). Like JS, string fields with invalid UTF-8 are
//! decoded with U+FFFD replacement, and `uint32` fields are not limited to 32 bits
//! (protocol-buffers 3.2.1 reads and writes the full JS number; here any value up to `u64::MAX`).
//!
//! Frames are bounded by a maximum body size (default [`DEFAULT_MAX_FRAME_SIZE`], 8 MiB), which
//! the JS decoder does not have: hyperlog sets no limit on values. The limit bounds the memory one
//! connection can make us buffer. 8 MiB leaves a wide margin over any node a JS browser peer can
//! send at all: simple-peer writes each frame body with one data-channel `send()`, and
//! node-wrtc data channels advertise `a=max-message-size:262144` (256 KiB), as Chromium does.
//! Peers on other transports that need bigger nodes can raise it with
//! [`FrameDecoder::with_max_frame_size`].

use bytes::{Buf, Bytes, BytesMut};

/// Default maximum frame body size: 8 MiB (see the module docs for why).
pub const DEFAULT_MAX_FRAME_SIZE: usize = 8 * 1024 * 1024;

/// Type byte of a Handshake frame.
pub const TYPE_HANDSHAKE: u8 = 0;
/// Type byte of a Have frame.
pub const TYPE_HAVE: u8 = 1;
/// Type byte of a Want frame.
pub const TYPE_WANT: u8 = 2;
/// Type byte of a Node frame.
pub const TYPE_NODE: u8 = 3;
/// Type byte of a SentHeads frame.
pub const TYPE_SENT_HEADS: u8 = 4;
/// Type byte of a SentWants frame.
pub const TYPE_SENT_WANTS: u8 = 5;

/// The longest LEB128 encoding of a `u64`.
const MAX_VARINT_LEN: usize = 10;

const WT_VARINT: u8 = 0;
const WT_FIXED64: u8 = 1;
const WT_LEN: u8 = 2;
const WT_START_GROUP: u8 = 3;
const WT_END_GROUP: u8 = 4;
const WT_FIXED32: u8 = 5;

/// A malformed frame or message. After any of these a replication stream is dead (JS destroys
/// it), so none of them is recoverable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// A frame's declared body length exceeds the decoder's limit.
    #[error("frame body of at least {len} bytes exceeds the maximum of {max} bytes")]
    FrameTooLarge {
        /// The declared length (or a lower bound of it, when the prefix was not complete yet).
        len: u64,
        /// The decoder's limit.
        max: usize,
    },
    /// A varint is longer than 10 bytes or does not fit in 64 bits.
    #[error("varint is longer than 10 bytes or overflows 64 bits")]
    VarintOverflow,
    /// A message ends inside a field.
    #[error("{message} message is truncated")]
    Truncated {
        /// The message being decoded.
        message: &'static str,
    },
    /// A required field is absent ("Decoded message is not valid" in JS).
    #[error("{message} message lacks its required field `{field}`")]
    MissingField {
        /// The message being decoded.
        message: &'static str,
        /// The missing field.
        field: &'static str,
    },
    /// A known field arrived with a wire type that does not match the schema.
    #[error("{message}.{field} has wire type {wire_type}, expected {expected}")]
    WrongWireType {
        /// The message being decoded.
        message: &'static str,
        /// The field.
        field: &'static str,
        /// The wire type received.
        wire_type: u8,
        /// The wire type of the field's schema type.
        expected: u8,
    },
    /// A group (wire type 3 or 4); protocol-buffers 3.2.1 refuses them too.
    #[error("{message} message contains a group, which is not supported")]
    Group {
        /// The message being decoded.
        message: &'static str,
    },
    /// Wire type 6 or 7.
    #[error("{message} message contains unknown wire type {wire_type}")]
    UnknownWireType {
        /// The message being decoded.
        message: &'static str,
        /// The wire type.
        wire_type: u8,
    },
    /// A frame body with no type byte (the frame decoder skips empty frames, as JS does; this
    /// only comes from [`Message::decode_body`] given an empty slice).
    #[error("frame body is empty (no type byte)")]
    EmptyBody,
}

/// The `Handshake` message (type 0), sent first by each side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handshake {
    /// Protocol version, required; hyperlog always sends 1 and never checks it.
    pub version: u64,
    /// `"sync"`, `"push"` or `"pull"`; absent means `"sync"`.
    pub mode: Option<String>,
    /// Opaque metadata, emitted to the application by the receiver.
    pub metadata: Option<Vec<u8>>,
    /// Whether the sender asks for live replication (either side can turn it on).
    pub live: Option<bool>,
}

/// The mode a [`Handshake`] without one stands for.
pub const DEFAULT_MODE: &str = "sync";

impl Handshake {
    /// `{version: 1}` with every optional field absent.
    pub fn new() -> Handshake {
        Handshake {
            version: 1,
            mode: None,
            metadata: None,
            live: None,
        }
    }

    /// The mode, with the schema default `"sync"` when absent.
    pub fn mode_or_default(&self) -> &str {
        self.mode.as_deref().unwrap_or(DEFAULT_MODE)
    }

    /// Appends the protobuf encoding (fields 1, 2, 3, 4).
    pub fn encode(&self, out: &mut Vec<u8>) {
        put_varint_field(out, 1, self.version);
        if let Some(mode) = &self.mode {
            put_bytes_field(out, 2, mode.as_bytes());
        }
        if let Some(metadata) = &self.metadata {
            put_bytes_field(out, 3, metadata);
        }
        if let Some(live) = self.live {
            put_varint_field(out, 4, u64::from(live));
        }
    }

    /// Length of [`Handshake::encode`]'s output.
    pub fn encoded_len(&self) -> usize {
        varint_field_len(1, self.version)
            + self
                .mode
                .as_ref()
                .map_or(0, |m| bytes_field_len(2, m.len()))
            + self
                .metadata
                .as_ref()
                .map_or(0, |m| bytes_field_len(3, m.len()))
            + self.live.map_or(0, |l| varint_field_len(4, u64::from(l)))
    }

    /// Decodes a protobuf-encoded Handshake.
    pub fn decode(buf: &[u8]) -> Result<Handshake, WireError> {
        const M: &str = "Handshake";
        let mut r = Reader::new(buf, M);
        let mut version = None;
        let mut out = Handshake::new();
        while let Some((field, wt)) = r.tag()? {
            match field {
                1 => version = Some(r.varint_field(wt, "version")?),
                2 => out.mode = Some(r.string_field(wt, "mode")?),
                3 => out.metadata = Some(r.bytes_field(wt, "metadata")?.to_vec()),
                4 => out.live = Some(r.varint_field(wt, "live")? != 0),
                _ => r.skip(wt)?,
            }
        }
        out.version = version.ok_or(WireError::MissingField {
            message: M,
            field: "version",
        })?;
        Ok(out)
    }
}

impl Default for Handshake {
    fn default() -> Handshake {
        Handshake::new()
    }
}

/// The `Log` message of hyperlog's schema, the payload of Have (type 1) and Want (type 2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSeq {
    /// The log id.
    pub log: String,
    /// A seq in that log (0 is valid and always encoded).
    pub seq: u64,
}

impl LogSeq {
    /// A `Log` message.
    pub fn new(log: impl Into<String>, seq: u64) -> LogSeq {
        LogSeq {
            log: log.into(),
            seq,
        }
    }

    /// Appends the protobuf encoding (fields 1, 2).
    pub fn encode(&self, out: &mut Vec<u8>) {
        put_bytes_field(out, 1, self.log.as_bytes());
        put_varint_field(out, 2, self.seq);
    }

    /// Length of [`LogSeq::encode`]'s output.
    pub fn encoded_len(&self) -> usize {
        bytes_field_len(1, self.log.len()) + varint_field_len(2, self.seq)
    }

    /// Decodes a protobuf-encoded `Log`.
    pub fn decode(buf: &[u8]) -> Result<LogSeq, WireError> {
        const M: &str = "Log";
        let mut r = Reader::new(buf, M);
        let mut log = None;
        let mut seq = None;
        while let Some((field, wt)) = r.tag()? {
            match field {
                1 => log = Some(r.string_field(wt, "log")?),
                2 => seq = Some(r.varint_field(wt, "seq")?),
                _ => r.skip(wt)?,
            }
        }
        Ok(LogSeq {
            log: log.ok_or(WireError::MissingField {
                message: M,
                field: "log",
            })?,
            seq: seq.ok_or(WireError::MissingField {
                message: M,
                field: "seq",
            })?,
        })
    }
}

/// The `Node` message (type 3), field for field; see `crate::log::node::Node` for the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeMessage {
    /// Tag 1, required: the sender's local change number.
    pub change: u64,
    /// Tag 2, required: the key as hex (not checked here).
    pub key: String,
    /// Tag 3, required: the log id.
    pub log: String,
    /// Tag 4, optional (JS always sends it): the seq in `log`.
    pub seq: Option<u64>,
    /// Tag 7, optional: the author's public key.
    pub identity: Option<Vec<u8>>,
    /// Tag 8, optional: the signature.
    pub signature: Option<Vec<u8>>,
    /// Tag 5, required (written as `2a 00` when empty): the value bytes.
    pub value: Vec<u8>,
    /// Tag 6, repeated (not packed): the link keys, in order.
    pub links: Vec<String>,
}

impl NodeMessage {
    /// Appends the protobuf encoding, fields in declaration order 1,2,3,4,7,8,5,6.
    pub fn encode(&self, out: &mut Vec<u8>) {
        encode_node_fields(
            out,
            NodeFields {
                change: self.change,
                key: self.key.as_bytes(),
                log: &self.log,
                seq: self.seq,
                identity: self.identity.as_deref(),
                signature: self.signature.as_deref(),
                value: &self.value,
            },
            self.links.iter().map(String::as_bytes),
        );
    }

    /// Length of [`NodeMessage::encode`]'s output.
    pub fn encoded_len(&self) -> usize {
        varint_field_len(1, self.change)
            + bytes_field_len(2, self.key.len())
            + bytes_field_len(3, self.log.len())
            + self.seq.map_or(0, |s| varint_field_len(4, s))
            + self
                .identity
                .as_ref()
                .map_or(0, |i| bytes_field_len(7, i.len()))
            + self
                .signature
                .as_ref()
                .map_or(0, |s| bytes_field_len(8, s.len()))
            + bytes_field_len(5, self.value.len())
            + self
                .links
                .iter()
                .map(|l| bytes_field_len(6, l.len()))
                .sum::<usize>()
    }

    /// Decodes a protobuf-encoded `Node`.
    pub fn decode(buf: &[u8]) -> Result<NodeMessage, WireError> {
        let (mut msg, value) = NodeMessage::decode_fields(buf)?;
        msg.value = buf[value].to_vec();
        Ok(msg)
    }

    /// Decodes a `Node` whose protobuf encoding is `payload[offset..]`, taking the value out of
    /// `payload` without copying it when `payload` is the only handle on its buffer (as a large
    /// frame from [`FrameDecoder`] is): the value then keeps that buffer's allocation.
    pub fn decode_owned(payload: Bytes, offset: usize) -> Result<NodeMessage, WireError> {
        let rest = payload
            .get(offset..)
            .ok_or(WireError::Truncated { message: "Node" })?;
        let (mut msg, value) = NodeMessage::decode_fields(rest)?;
        let mut payload = payload;
        payload.advance(offset + value.start);
        payload.truncate(value.len());
        // A unique `Bytes` becomes a `Vec` in place (its bytes moved to the front); a shared one
        // is copied.
        msg.value = Vec::from(payload);
        Ok(msg)
    }

    /// Every field but the value, which is left empty; and where the value is in `buf`.
    fn decode_fields(buf: &[u8]) -> Result<(NodeMessage, std::ops::Range<usize>), WireError> {
        const M: &str = "Node";
        let mut r = Reader::new(buf, M);
        let mut change = None;
        let mut key = None;
        let mut log = None;
        let mut value = None;
        let mut seq = None;
        let mut identity = None;
        let mut signature = None;
        let mut links = Vec::new();
        while let Some((field, wt)) = r.tag()? {
            match field {
                1 => change = Some(r.varint_field(wt, "change")?),
                2 => key = Some(r.string_field(wt, "key")?),
                3 => log = Some(r.string_field(wt, "log")?),
                4 => seq = Some(r.varint_field(wt, "seq")?),
                5 => {
                    let bytes = r.bytes_field(wt, "value")?;
                    value = Some(r.pos - bytes.len()..r.pos);
                }
                6 => links.push(r.string_field(wt, "links")?),
                7 => identity = Some(r.bytes_field(wt, "identity")?.to_vec()),
                8 => signature = Some(r.bytes_field(wt, "signature")?.to_vec()),
                _ => r.skip(wt)?,
            }
        }
        let missing = |field| WireError::MissingField { message: M, field };
        let msg = NodeMessage {
            change: change.ok_or_else(|| missing("change"))?,
            key: key.ok_or_else(|| missing("key"))?,
            log: log.ok_or_else(|| missing("log"))?,
            seq,
            identity,
            signature,
            value: Vec::new(),
            links,
        };
        Ok((msg, value.ok_or_else(|| missing("value"))?))
    }
}

/// One replication message: a decoded frame body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Type 0.
    Handshake(Handshake),
    /// Type 1: "I have log L up to seq s".
    Have(LogSeq),
    /// Type 2: "send me log L after seq s".
    Want(LogSeq),
    /// Type 3.
    Node(NodeMessage),
    /// Type 4: all Haves for the heads have been sent.
    SentHeads,
    /// Type 5: all Wants have been sent.
    SentWants,
    /// Any other type byte. JS acknowledges and ignores such frames; so should a receiver.
    Unknown {
        /// The type byte (never 0–5 when decoded; one of those would encode as that message's
        /// type instead).
        type_byte: u8,
        /// The rest of the body, undecoded.
        payload: Vec<u8>,
    },
}

impl Message {
    /// The type byte of this message.
    pub fn type_byte(&self) -> u8 {
        match self {
            Message::Handshake(_) => TYPE_HANDSHAKE,
            Message::Have(_) => TYPE_HAVE,
            Message::Want(_) => TYPE_WANT,
            Message::Node(_) => TYPE_NODE,
            Message::SentHeads => TYPE_SENT_HEADS,
            Message::SentWants => TYPE_SENT_WANTS,
            Message::Unknown { type_byte, .. } => *type_byte,
        }
    }

    /// Length of the frame body (type byte and payload).
    pub fn body_len(&self) -> usize {
        1 + match self {
            Message::Handshake(h) => h.encoded_len(),
            Message::Have(l) | Message::Want(l) => l.encoded_len(),
            Message::Node(n) => n.encoded_len(),
            Message::SentHeads | Message::SentWants => 0,
            Message::Unknown { payload, .. } => payload.len(),
        }
    }

    /// Appends the frame body: the type byte and the payload.
    pub fn encode_body(&self, out: &mut Vec<u8>) {
        out.push(self.type_byte());
        match self {
            Message::Handshake(h) => h.encode(out),
            Message::Have(l) | Message::Want(l) => l.encode(out),
            Message::Node(n) => n.encode(out),
            Message::SentHeads | Message::SentWants => {}
            Message::Unknown { payload, .. } => out.extend_from_slice(payload),
        }
    }

    /// The frame body as a new vector.
    pub fn to_body(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.body_len());
        self.encode_body(&mut out);
        out
    }

    /// Appends the whole frame: `varint(body length) || body`. (JS writes the prefix and the body
    /// as two separate chunks; on a byte stream that is the same bytes.)
    pub fn encode_frame(&self, out: &mut Vec<u8>) {
        let len = self.body_len();
        out.reserve(varint_len(len as u64) + len);
        put_varint(out, len as u64);
        self.encode_body(out);
    }

    /// The whole frame as a new vector.
    pub fn to_frame(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_frame(&mut out);
        out
    }

    /// Length of [`Message::encode_frame`]'s output.
    pub fn frame_len(&self) -> usize {
        let len = self.body_len();
        varint_len(len as u64) + len
    }

    /// Decodes a frame body, as [`Message::decode_body`], taking a Node's value out of `body`
    /// without a copy when `body` is the only handle on its buffer.
    pub fn decode_owned_body(body: Bytes) -> Result<Message, WireError> {
        match body.first() {
            Some(&TYPE_NODE) => Ok(Message::Node(NodeMessage::decode_owned(body, 1)?)),
            _ => Message::decode_body(&body),
        }
    }

    /// Decodes a frame body (type byte and payload).
    pub fn decode_body(body: &[u8]) -> Result<Message, WireError> {
        let (&type_byte, payload) = body.split_first().ok_or(WireError::EmptyBody)?;
        Ok(match type_byte {
            TYPE_HANDSHAKE => Message::Handshake(Handshake::decode(payload)?),
            TYPE_HAVE => Message::Have(LogSeq::decode(payload)?),
            TYPE_WANT => Message::Want(LogSeq::decode(payload)?),
            TYPE_NODE => Message::Node(NodeMessage::decode(payload)?),
            TYPE_SENT_HEADS => Message::SentHeads,
            TYPE_SENT_WANTS => Message::SentWants,
            _ => Message::Unknown {
                type_byte,
                payload: payload.to_vec(),
            },
        })
    }
}

/// An incremental frame decoder: feed it bytes as they arrive, split anywhere, and take out
/// complete frame bodies.
///
/// A frame whose declared length exceeds the limit is refused as soon as its length prefix shows
/// it, before any of its body is buffered. Zero-length frames are skipped (as JS does). After an
/// error the decoder stays failed: every later call returns the same error.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: BytesMut,
    max_frame_size: usize,
    failed: Option<WireError>,
    empty_frames: u64,
}

/// A frame body at least this long is handed out as the sole owner of its buffer (the bytes
/// after it are copied to a new one), so that a node's value can keep that buffer without a copy
/// and the decoder does not keep a large buffer after a large frame.
const OWNED_FRAME: usize = 1024 * 1024;

impl FrameDecoder {
    /// A decoder with the default limit ([`DEFAULT_MAX_FRAME_SIZE`]).
    pub fn new() -> FrameDecoder {
        FrameDecoder::with_max_frame_size(DEFAULT_MAX_FRAME_SIZE)
    }

    /// A decoder refusing frame bodies longer than `max_frame_size` bytes.
    pub fn with_max_frame_size(max_frame_size: usize) -> FrameDecoder {
        FrameDecoder {
            buf: BytesMut::new(),
            max_frame_size,
            failed: None,
            empty_frames: 0,
        }
    }

    /// The limit on a frame body's length.
    pub fn max_frame_size(&self) -> usize {
        self.max_frame_size
    }

    /// Bytes received and not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// How many zero-length frames were skipped (a replication sends one as a keep-alive).
    pub fn empty_frames(&self) -> u64 {
        self.empty_frames
    }

    /// Whether a stream ending now would end cleanly (on a frame boundary).
    pub fn is_at_boundary(&self) -> bool {
        self.buf.is_empty()
    }

    /// Adds received bytes. Call [`FrameDecoder::next_frame`] until it returns `None` after each
    /// push, so that no more than one incomplete frame (plus this chunk) is ever buffered.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.failed.is_none() {
            self.buf.extend_from_slice(bytes);
        }
    }

    /// The next complete frame body, `None` if more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Bytes>, WireError> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        loop {
            let (len, prefix_len) = match self.parse_prefix() {
                Ok(Some(v)) => v,
                Ok(None) => return Ok(None),
                Err(err) => return Err(self.fail(err)),
            };
            if self.buf.len() - prefix_len < len {
                // Wait for the rest of the body, with room for it reserved once.
                self.buf.reserve(prefix_len + len - self.buf.len());
                return Ok(None);
            }
            self.buf.advance(prefix_len);
            if len == 0 {
                self.empty_frames += 1;
                continue;
            }
            if len >= OWNED_FRAME {
                let rest = BytesMut::from(&self.buf[len..]);
                self.buf.truncate(len);
                return Ok(Some(std::mem::replace(&mut self.buf, rest).freeze()));
            }
            return Ok(Some(self.buf.split_to(len).freeze()));
        }
    }

    /// The next complete frame, decoded (a large node's value without a copy: see
    /// [`Message::decode_owned_body`]).
    pub fn next_message(&mut self) -> Result<Option<Message>, WireError> {
        match self.next_frame()? {
            None => Ok(None),
            Some(body) => Message::decode_owned_body(body)
                .map(Some)
                .map_err(|err| self.fail(err)),
        }
    }

    fn fail(&mut self, err: WireError) -> WireError {
        self.buf = BytesMut::new();
        self.failed = Some(err.clone());
        err
    }

    /// Reads the length prefix at the start of the buffer: `(body length, prefix length)`.
    fn parse_prefix(&self) -> Result<Option<(usize, usize)>, WireError> {
        let mut value: u64 = 0;
        for (i, &byte) in self.buf.iter().enumerate() {
            if i == MAX_VARINT_LEN {
                return Err(WireError::VarintOverflow);
            }
            let bits = u64::from(byte & 0x7f);
            if i == MAX_VARINT_LEN - 1 && bits > 1 {
                return Err(WireError::VarintOverflow);
            }
            value |= bits << (7 * i);
            // Later bytes only add higher bits, so a partial value over the limit is final.
            let too_large = usize::try_from(value).map_or(true, |v| v > self.max_frame_size);
            if too_large {
                return Err(WireError::FrameTooLarge {
                    len: value,
                    max: self.max_frame_size,
                });
            }
            if byte & 0x80 == 0 {
                // Checked against max_frame_size above, which is a usize.
                let len = usize::try_from(value).map_err(|_| WireError::VarintOverflow)?;
                return Ok(Some((len, i + 1)));
            }
        }
        if self.buf.len() >= MAX_VARINT_LEN {
            return Err(WireError::VarintOverflow);
        }
        Ok(None)
    }
}

impl Default for FrameDecoder {
    fn default() -> FrameDecoder {
        FrameDecoder::new()
    }
}

// ---------------------------------------------------------------------------------------------
// proto2 primitives

/// Appends `value` as an unsigned LEB128 varint.
pub fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Length of `value` as a varint.
pub fn varint_len(value: u64) -> usize {
    let bits = 64 - (value | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

/// Decodes a varint at the start of `buf`: `Ok(Some((value, bytes read)))`, `Ok(None)` when
/// `buf` ends inside it.
pub fn read_varint(buf: &[u8]) -> Result<Option<(u64, usize)>, WireError> {
    let mut value: u64 = 0;
    for (i, &byte) in buf.iter().enumerate() {
        if i == MAX_VARINT_LEN {
            return Err(WireError::VarintOverflow);
        }
        let bits = u64::from(byte & 0x7f);
        if i == MAX_VARINT_LEN - 1 && bits > 1 {
            return Err(WireError::VarintOverflow);
        }
        value |= bits << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
    }
    if buf.len() >= MAX_VARINT_LEN {
        return Err(WireError::VarintOverflow);
    }
    Ok(None)
}

fn put_tag(out: &mut Vec<u8>, field: u32, wire_type: u8) {
    put_varint(out, (u64::from(field) << 3) | u64::from(wire_type));
}

fn tag_len(field: u32) -> usize {
    varint_len(u64::from(field) << 3)
}

fn put_varint_field(out: &mut Vec<u8>, field: u32, value: u64) {
    put_tag(out, field, WT_VARINT);
    put_varint(out, value);
}

fn varint_field_len(field: u32, value: u64) -> usize {
    tag_len(field) + varint_len(value)
}

fn put_bytes_field(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_tag(out, field, WT_LEN);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn bytes_field_len(field: u32, len: usize) -> usize {
    tag_len(field) + varint_len(len as u64) + len
}

/// The fields of a Node message but its links, borrowed from wherever they are kept.
pub(crate) struct NodeFields<'a> {
    pub(crate) change: u64,
    /// The key as hex.
    pub(crate) key: &'a [u8],
    pub(crate) log: &'a str,
    pub(crate) seq: Option<u64>,
    pub(crate) identity: Option<&'a [u8]>,
    pub(crate) signature: Option<&'a [u8]>,
    pub(crate) value: &'a [u8],
}

/// Appends a Node message: the one place that decides its field order (1,2,3,4,7,8,5,6, as
/// protocol-buffers 3 writes hyperlog's schema) and which fields are always present.
pub(crate) fn encode_node_fields<L: AsRef<[u8]>>(
    out: &mut Vec<u8>,
    fields: NodeFields<'_>,
    links: impl Iterator<Item = L>,
) {
    let value = fields.value;
    encode_node_head(out, fields);
    out.extend_from_slice(value);
    encode_node_links(out, links);
}

/// The length of what [`encode_node_fields`] appends.
pub(crate) fn node_fields_len(
    fields: &NodeFields<'_>,
    link_lens: impl Iterator<Item = usize>,
) -> usize {
    varint_field_len(1, fields.change)
        + bytes_field_len(2, fields.key.len())
        + bytes_field_len(3, fields.log.len())
        + fields.seq.map_or(0, |s| varint_field_len(4, s))
        + fields.identity.map_or(0, |i| bytes_field_len(7, i.len()))
        + fields.signature.map_or(0, |s| bytes_field_len(8, s.len()))
        + bytes_field_len(5, fields.value.len())
        + link_lens.map(|l| bytes_field_len(6, l)).sum::<usize>()
}

/// What [`encode_node_fields`] writes before the value's bytes (up to the value's tag and
/// length), so that a writer can put the value itself straight where it goes.
pub(crate) fn encode_node_head(out: &mut Vec<u8>, fields: NodeFields<'_>) {
    put_varint_field(out, 1, fields.change);
    put_bytes_field(out, 2, fields.key);
    put_bytes_field(out, 3, fields.log.as_bytes());
    if let Some(seq) = fields.seq {
        put_varint_field(out, 4, seq);
    }
    if let Some(identity) = fields.identity {
        put_bytes_field(out, 7, identity);
    }
    if let Some(signature) = fields.signature {
        put_bytes_field(out, 8, signature);
    }
    put_tag(out, 5, WT_LEN);
    put_varint(out, fields.value.len() as u64);
}

/// What [`encode_node_fields`] writes after the value's bytes: the links.
pub(crate) fn encode_node_links<L: AsRef<[u8]>>(out: &mut Vec<u8>, links: impl Iterator<Item = L>) {
    for link in links {
        put_bytes_field(out, 6, link.as_ref());
    }
}

/// A cursor over one protobuf message.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    message: &'static str,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], message: &'static str) -> Reader<'a> {
        Reader {
            buf,
            pos: 0,
            message,
        }
    }

    fn truncated(&self) -> WireError {
        WireError::Truncated {
            message: self.message,
        }
    }

    fn varint(&mut self) -> Result<u64, WireError> {
        let rest = self.buf.get(self.pos..).unwrap_or_default();
        match read_varint(rest)? {
            Some((value, n)) => {
                self.pos += n;
                Ok(value)
            }
            None => Err(self.truncated()),
        }
    }

    /// The next field's (number, wire type), or `None` at the end of the message.
    fn tag(&mut self) -> Result<Option<(u64, u8)>, WireError> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let tag = self.varint()?;
        // The low three bits, so the cast cannot truncate.
        Ok(Some((tag >> 3, (tag & 7) as u8)))
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], WireError> {
        let remaining = self.buf.len() - self.pos;
        let n = usize::try_from(n)
            .ok()
            .filter(|&n| n <= remaining)
            .ok_or_else(|| self.truncated())?;
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn expect(&self, wt: u8, expected: u8, field: &'static str) -> Result<(), WireError> {
        if wt == expected {
            Ok(())
        } else {
            Err(WireError::WrongWireType {
                message: self.message,
                field,
                wire_type: wt,
                expected,
            })
        }
    }

    fn varint_field(&mut self, wt: u8, field: &'static str) -> Result<u64, WireError> {
        self.expect(wt, WT_VARINT, field)?;
        self.varint()
    }

    fn bytes_field(&mut self, wt: u8, field: &'static str) -> Result<&'a [u8], WireError> {
        self.expect(wt, WT_LEN, field)?;
        let len = self.varint()?;
        self.take(len)
    }

    fn string_field(&mut self, wt: u8, field: &'static str) -> Result<String, WireError> {
        // Like Buffer#toString('utf-8') in JS: invalid sequences become U+FFFD.
        Ok(String::from_utf8_lossy(self.bytes_field(wt, field)?).into_owned())
    }

    fn skip(&mut self, wt: u8) -> Result<(), WireError> {
        match wt {
            WT_VARINT => self.varint().map(drop),
            WT_FIXED64 => self.take(8).map(drop),
            WT_LEN => {
                let len = self.varint()?;
                self.take(len).map(drop)
            }
            WT_FIXED32 => self.take(4).map(drop),
            WT_START_GROUP | WT_END_GROUP => Err(WireError::Group {
                message: self.message,
            }),
            _ => Err(WireError::UnknownWireType {
                message: self.message,
                wire_type: wt,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hex with optional spaces and `|` separators to bytes.
    fn unhex(s: &str) -> Vec<u8> {
        let digits: Vec<u8> = s.bytes().filter(|b| b.is_ascii_hexdigit()).collect();
        assert_eq!(digits.len() % 2, 0, "odd hex: {s}");
        digits
            .chunks(2)
            .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap_or("zz"), 16).unwrap_or(0))
            .collect()
    }

    const N1_KEY: &str = "8c7efb22472592f561a7a7647f8c5ee93134880b4ca0c92889a61848cd5c4602";
    const N2_KEY: &str = "5f5e63be98841981a12b6041e4200677851714ec4305d13a3ee30197439ff193";
    const PK: &str = "8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c";
    const N1_SIG: &str = "2e94c56a399f5e6bc16d2b7603283511a3d40dd32fc3da3d41cdb273090d0e42\
                          289ebc0511fa2cdf20ed8445053feb715850e28d479aba0f9051399482620308";

    fn ascii_hex(s: &str) -> String {
        s.bytes().map(|b| format!("{b:02x}")).collect()
    }

    fn n1() -> NodeMessage {
        NodeMessage {
            change: 1,
            key: N1_KEY.into(),
            log: "A".into(),
            seq: Some(1),
            identity: None,
            signature: None,
            value: b"hello".to_vec(),
            links: vec![],
        }
    }

    fn n2() -> NodeMessage {
        NodeMessage {
            change: 2,
            key: N2_KEY.into(),
            log: "A".into(),
            seq: Some(2),
            identity: None,
            signature: None,
            value: b"world".to_vec(),
            links: vec![N1_KEY.into()],
        }
    }

    /// Every frame of spec §2.9 and §3.2, as (frame bytes, message). The bytes were also
    /// captured from hyperlog 4.12.1 + memdb under Node 20 (log ids forced to "A" and "B"), and
    /// the signed n1 with hyperlog-sodium 2.0.0 + sodium-signatures 1.4.1 (tweetnacl), seed 32×01.
    fn golden() -> Vec<(Vec<u8>, Message)> {
        let hs_live_false = Handshake {
            live: Some(false),
            ..Handshake::new()
        };
        let n1_frame = format!(
            "51 03 | 08 01 | 12 40 {} | 1a 01 41 | 20 01 | 2a 05 68 65 6c 6c 6f",
            ascii_hex(N1_KEY)
        );
        let n2_frame = format!(
            "93 01 03 | 08 02 | 12 40 {} | 1a 01 41 | 20 02 | 2a 05 77 6f 72 6c 64 | 32 40 {}",
            ascii_hex(N2_KEY),
            ascii_hex(N1_KEY)
        );
        let signed_n1_frame = format!(
            "b5 01 03 08 01 12 40 {} 1a 01 41 20 01 3a 20 {PK} 42 40 {N1_SIG} 2a 05 {}",
            ascii_hex(N1_KEY),
            ascii_hex("hello")
        );
        let signed_n1 = NodeMessage {
            identity: Some(unhex(PK)),
            signature: Some(unhex(N1_SIG)),
            ..n1()
        };
        vec![
            (
                unhex("05 00 08 01 20 00"),
                Message::Handshake(hs_live_false),
            ),
            (unhex("03 00 08 01"), Message::Handshake(Handshake::new())),
            (unhex("01 04"), Message::SentHeads),
            (
                unhex("06 01 0a 01 41 10 02"),
                Message::Have(LogSeq::new("A", 2)),
            ),
            (unhex("01 05"), Message::SentWants),
            (
                unhex("06 02 0a 01 41 10 00"),
                Message::Want(LogSeq::new("A", 0)),
            ),
            (unhex(&n1_frame), Message::Node(n1())),
            (unhex(&n2_frame), Message::Node(n2())),
            (
                unhex(&format!("0b 00 08 01 12 04 {} 20 00", ascii_hex("push"))),
                Message::Handshake(Handshake {
                    mode: Some("push".into()),
                    live: Some(false),
                    ..Handshake::new()
                }),
            ),
            (
                unhex(&format!("09 00 08 01 12 04 {}", ascii_hex("pull"))),
                Message::Handshake(Handshake {
                    mode: Some("pull".into()),
                    ..Handshake::new()
                }),
            ),
            (unhex(&signed_n1_frame), Message::Node(signed_n1)),
            // Captured from JS: replicate({metadata: Buffer.from('meta')}).
            (
                unhex(&format!("09 00 08 01 1a 04 {}", ascii_hex("meta"))),
                Message::Handshake(Handshake {
                    metadata: Some(b"meta".to_vec()),
                    ..Handshake::new()
                }),
            ),
        ]
    }

    #[test]
    fn golden_frames_decode_and_reencode() {
        for (bytes, msg) in golden() {
            let mut dec = FrameDecoder::new();
            dec.push(&bytes);
            assert_eq!(dec.next_message(), Ok(Some(msg.clone())), "{bytes:02x?}");
            assert_eq!(dec.next_message(), Ok(None));
            assert!(dec.is_at_boundary());
            assert_eq!(msg.to_frame(), bytes, "{msg:?}");
            assert_eq!(msg.frame_len(), bytes.len());
        }
    }

    #[test]
    fn spec_frame_lengths() {
        // §2.9: n1 body = 81 = 0x51, n2 body = 147 = varint 93 01.
        assert_eq!(Message::Node(n1()).body_len(), 81);
        assert_eq!(Message::Node(n2()).body_len(), 147);
        assert_eq!(&Message::Node(n2()).to_frame()[..2], &[0x93, 0x01]);
    }

    #[test]
    fn golden_frames_split_at_every_byte() {
        let all: Vec<(Vec<u8>, Message)> = golden();
        for (bytes, msg) in &all {
            for cut in 0..=bytes.len() {
                let mut dec = FrameDecoder::new();
                dec.push(&bytes[..cut]);
                let first = dec.next_message().expect("no error on a prefix");
                if cut < bytes.len() {
                    assert_eq!(first, None, "frame complete too early at {cut}");
                    dec.push(&bytes[cut..]);
                    assert_eq!(dec.next_message(), Ok(Some(msg.clone())), "cut at {cut}");
                } else {
                    assert_eq!(first, Some(msg.clone()));
                }
                assert_eq!(dec.next_message(), Ok(None));
                assert!(dec.is_at_boundary());
            }
        }
        // The whole session as one stream, fed one byte at a time.
        let stream: Vec<u8> = all.iter().flat_map(|(b, _)| b.clone()).collect();
        let mut dec = FrameDecoder::new();
        let mut got = Vec::new();
        for b in &stream {
            dec.push(std::slice::from_ref(b));
            while let Some(m) = dec.next_message().expect("valid stream") {
                got.push(m);
            }
        }
        let want: Vec<Message> = all.into_iter().map(|(_, m)| m).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn js_encodings_of_defaults_and_absences() {
        // From protocol-buffers 3.2.1: defaults are written when present, absent optionals are not.
        let hs = Handshake {
            version: 1,
            mode: Some("sync".into()),
            metadata: Some(vec![]),
            live: Some(true),
        };
        assert_eq!(hs.encoded_len(), 12);
        let mut out = Vec::new();
        hs.encode(&mut out);
        assert_eq!(out, unhex("08 01 12 04 73 79 6e 63 1a 00 20 01"));
        let empty = NodeMessage {
            change: 0,
            key: String::new(),
            log: String::new(),
            seq: Some(0),
            identity: None,
            signature: None,
            value: vec![],
            links: vec![],
        };
        let mut out = Vec::new();
        empty.encode(&mut out);
        assert_eq!(out, unhex("08 00 12 00 1a 00 20 00 2a 00"));
        assert_eq!(NodeMessage::decode(&out), Ok(empty));
        let no_seq = NodeMessage {
            change: 1,
            key: "k".into(),
            log: "L".into(),
            seq: None,
            identity: None,
            signature: None,
            value: b"v".to_vec(),
            links: vec![],
        };
        let mut out = Vec::new();
        no_seq.encode(&mut out);
        assert_eq!(out, unhex("08 01 12 01 6b 1a 01 4c 2a 01 76"));
        assert_eq!(NodeMessage::decode(&out), Ok(no_seq));
        // seq 2^32 is not truncated by JS: 0a 01 41 10 80 80 80 80 10.
        let mut out = Vec::new();
        LogSeq::new("A", 1 << 32).encode(&mut out);
        assert_eq!(out, unhex("0a 01 41 10 80 80 80 80 10"));
    }

    #[test]
    fn decoder_quirks_match_js_where_js_accepts() {
        // Duplicate fields: last wins (JS: {"log":"B","seq":5}).
        assert_eq!(
            LogSeq::decode(&unhex("0a 01 41 10 00 0a 01 42 10 05")),
            Ok(LogSeq::new("B", 5))
        );
        // Unknown fixed32 field skipped.
        assert_eq!(
            LogSeq::decode(&unhex("0a 01 41 10 00 25 aa bb cc dd")),
            Ok(LogSeq::new("A", 0))
        );
        // Unknown fields of every skippable wire type, and fields out of order.
        assert_eq!(
            LogSeq::decode(&unhex(
                "10 07 18 96 01 21 01 02 03 04 05 06 07 08 2a 02 ff ff 35 01 02 03 04 0a 01 41"
            )),
            Ok(LogSeq::new("A", 7))
        );
        // Invalid UTF-8 becomes U+FFFD (JS: "\ufffdA").
        assert_eq!(
            LogSeq::decode(&unhex("0a 02 ff 41 10 00")),
            Ok(LogSeq::new("\u{fffd}A", 0))
        );
        // A uint32 over 32 bits is kept (JS: 4398046511104).
        assert_eq!(
            LogSeq::decode(&unhex("0a 01 41 10 80 80 80 80 80 80 01")),
            Ok(LogSeq::new("A", 4_398_046_511_104))
        );
        // bool: any non-zero is true (JS: live 2 → true).
        assert_eq!(
            Handshake::decode(&unhex("08 01 20 02")).map(|h| h.live),
            Ok(Some(true))
        );
        // Absent mode decodes as "sync".
        assert_eq!(
            Handshake::decode(&unhex("08 01")).map(|h| h.mode_or_default().to_string()),
            Ok("sync".to_string())
        );
        // Non-minimal varints are accepted.
        assert_eq!(
            LogSeq::decode(&unhex("0a 01 41 10 80 00")),
            Ok(LogSeq::new("A", 0))
        );
        // SentHeads / SentWants ignore trailing bytes; unknown types are kept.
        assert_eq!(
            Message::decode_body(&unhex("04 ff 00")),
            Ok(Message::SentHeads)
        );
        assert_eq!(
            Message::decode_body(&unhex("05 01")),
            Ok(Message::SentWants)
        );
        assert_eq!(
            Message::decode_body(&unhex("07 01 02")),
            Ok(Message::Unknown {
                type_byte: 7,
                payload: vec![1, 2]
            })
        );
    }

    #[test]
    fn malformed_messages_are_typed_errors() {
        use WireError::*;
        type Decode = fn(&[u8]) -> Result<(), WireError>;
        let cases: Vec<(&str, Decode, WireError)> = vec![
            // JS: "Decoded message is not valid".
            (
                "0a 01 41",
                |b| LogSeq::decode(b).map(drop),
                MissingField {
                    message: "Log",
                    field: "seq",
                },
            ),
            (
                "",
                |b| Handshake::decode(b).map(drop),
                MissingField {
                    message: "Handshake",
                    field: "version",
                },
            ),
            (
                "08 01 12 01 6b 1a 01 4c",
                |b| NodeMessage::decode(b).map(drop),
                MissingField {
                    message: "Node",
                    field: "value",
                },
            ),
            // JS: "Could not decode varint".
            (
                "0a 01 41 10",
                |b| LogSeq::decode(b).map(drop),
                Truncated { message: "Log" },
            ),
            (
                "0a 01 41 10 80",
                |b| LogSeq::decode(b).map(drop),
                Truncated { message: "Log" },
            ),
            // JS silently truncates this one; we refuse it.
            (
                "10 00 0a 05 41",
                |b| LogSeq::decode(b).map(drop),
                Truncated { message: "Log" },
            ),
            (
                "10 00 25 aa bb",
                |b| LogSeq::decode(b).map(drop),
                Truncated { message: "Log" },
            ),
            // JS: "Groups are not supported".
            (
                "0a 01 41 10 00 1b",
                |b| LogSeq::decode(b).map(drop),
                Group { message: "Log" },
            ),
            (
                "0a 01 41 10 00 1e",
                |b| LogSeq::decode(b).map(drop),
                UnknownWireType {
                    message: "Log",
                    wire_type: 6,
                },
            ),
            (
                "0a 01 41 12 01 41",
                |b| LogSeq::decode(b).map(drop),
                WrongWireType {
                    message: "Log",
                    field: "seq",
                    wire_type: 2,
                    expected: 0,
                },
            ),
            (
                "0a 01 41 10 ff ff ff ff ff ff ff ff ff 02",
                |b| LogSeq::decode(b).map(drop),
                VarintOverflow,
            ),
            (
                "0a 01 41 10 80 80 80 80 80 80 80 80 80 80 00",
                |b| LogSeq::decode(b).map(drop),
                VarintOverflow,
            ),
            ("", |b| Message::decode_body(b).map(drop), EmptyBody),
        ];
        for (hex, decode, want) in cases {
            assert_eq!(decode(&unhex(hex)), Err(want), "{hex}");
        }
        // u64::MAX itself is fine.
        let mut out = Vec::new();
        LogSeq::new("A", u64::MAX).encode(&mut out);
        assert_eq!(out, unhex("0a 01 41 10 ff ff ff ff ff ff ff ff ff 01"));
        assert_eq!(LogSeq::decode(&out), Ok(LogSeq::new("A", u64::MAX)));
    }

    #[test]
    fn frame_limit_is_enforced_from_the_prefix() {
        let mut dec = FrameDecoder::with_max_frame_size(100);
        dec.push(&[0x64]); // 100: allowed
        assert_eq!(dec.next_frame(), Ok(None));
        let mut dec = FrameDecoder::with_max_frame_size(100);
        dec.push(&[0x65]); // 101
        assert_eq!(
            dec.next_frame(),
            Err(WireError::FrameTooLarge { len: 101, max: 100 })
        );
        // Stays failed, and buffers nothing more.
        dec.push(&[0; 1000]);
        assert_eq!(dec.buffered(), 0);
        assert!(dec.next_frame().is_err());

        // A prefix whose first byte already exceeds the limit fails before it is complete.
        let mut dec = FrameDecoder::with_max_frame_size(100);
        dec.push(&[0xff]);
        assert_eq!(
            dec.next_frame(),
            Err(WireError::FrameTooLarge { len: 127, max: 100 })
        );

        // The default: exactly 8 MiB declared is accepted, one more is not.
        let mut dec = FrameDecoder::new();
        let mut prefix = Vec::new();
        put_varint(&mut prefix, DEFAULT_MAX_FRAME_SIZE as u64);
        dec.push(&prefix);
        assert_eq!(dec.next_frame(), Ok(None));
        let mut dec = FrameDecoder::new();
        let mut prefix = Vec::new();
        put_varint(&mut prefix, DEFAULT_MAX_FRAME_SIZE as u64 + 1);
        dec.push(&prefix);
        assert!(matches!(
            dec.next_frame(),
            Err(WireError::FrameTooLarge { .. })
        ));

        // An endless zero-valued prefix is refused after 10 bytes.
        let mut dec = FrameDecoder::new();
        dec.push(&[0x80; 9]);
        assert_eq!(dec.next_frame(), Ok(None));
        dec.push(&[0x80]);
        assert_eq!(dec.next_frame(), Err(WireError::VarintOverflow));
    }

    #[test]
    fn empty_frames_are_skipped_and_bodies_are_exact() {
        let mut dec = FrameDecoder::new();
        dec.push(&unhex("00 00 01 04 80 00 02 07 09"));
        assert_eq!(dec.next_frame(), Ok(Some(Bytes::from_static(&[4]))));
        assert_eq!(dec.next_frame(), Ok(Some(Bytes::from_static(&[7, 9]))));
        assert_eq!(dec.next_frame(), Ok(None));
        assert!(dec.is_at_boundary());
        dec.push(&[0x00]);
        assert_eq!(dec.next_frame(), Ok(None));
        assert!(dec.is_at_boundary());
    }

    #[test]
    fn a_node_value_is_taken_from_a_unique_body_without_a_copy() {
        let msg = NodeMessage {
            value: vec![9; 4096],
            ..n1()
        };
        let body = Message::Node(msg.clone()).to_body();
        let start = body.as_ptr();
        let Ok(Message::Node(got)) = Message::decode_owned_body(Bytes::from(body)) else {
            panic!("a node");
        };
        assert_eq!(got, msg);
        // The value now owns the body's allocation (its bytes moved to the front).
        assert_eq!(got.value.as_ptr(), start);
        // A shared body is copied, and stays whole.
        let body = Bytes::from(Message::Node(msg.clone()).to_body());
        let keep = body.clone();
        let Ok(Message::Node(got)) = Message::decode_owned_body(body) else {
            panic!("a node");
        };
        assert_eq!(got, msg);
        assert_eq!(Message::decode_body(&keep), Ok(Message::Node(msg)));
    }

    #[test]
    fn a_large_frame_is_handed_out_alone_and_the_rest_kept() {
        let big = Message::Node(NodeMessage {
            value: vec![3; OWNED_FRAME + 10],
            ..n1()
        });
        let mut stream = big.to_frame();
        stream.extend_from_slice(&Message::SentHeads.to_frame());
        stream.extend_from_slice(&[0]);
        stream.extend_from_slice(&Message::SentWants.to_frame()[..1]);
        let mut decoder = FrameDecoder::with_max_frame_size(2 * OWNED_FRAME);
        for chunk in stream.chunks(16 * 1024) {
            decoder.push(chunk);
        }
        assert_eq!(decoder.next_message(), Ok(Some(big)));
        assert_eq!(decoder.next_message(), Ok(Some(Message::SentHeads)));
        assert_eq!(decoder.next_message(), Ok(None));
        assert_eq!(decoder.empty_frames(), 1);
        assert_eq!(decoder.buffered(), 1);
        decoder.push(&[TYPE_SENT_WANTS]);
        assert_eq!(decoder.next_message(), Ok(Some(Message::SentWants)));
    }

    #[test]
    fn a_bad_message_fails_the_decoder() {
        let mut dec = FrameDecoder::new();
        dec.push(&unhex("04 01 0a 01 41 01 04"));
        let err = WireError::MissingField {
            message: "Log",
            field: "seq",
        };
        assert_eq!(dec.next_message(), Err(err.clone()));
        assert_eq!(dec.next_message(), Err(err));
    }

    #[test]
    fn varint_lengths() {
        for v in [
            0u64,
            1,
            127,
            128,
            16_383,
            16_384,
            (1 << 35) - 1,
            1 << 35,
            u64::MAX >> 1,
            u64::MAX,
        ] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(out.len(), varint_len(v), "{v}");
            assert_eq!(read_varint(&out), Ok(Some((v, out.len()))));
            assert_eq!(read_varint(&out[..out.len() - 1]), Ok(None));
        }
    }

    mod prop {
        use super::super::*;
        use proptest::prelude::*;

        fn opt_bytes() -> impl Strategy<Value = Option<Vec<u8>>> {
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..80))
        }

        fn message() -> impl Strategy<Value = Message> {
            let handshake = (
                any::<u64>(),
                proptest::option::of(".{0,8}"),
                opt_bytes(),
                any::<Option<bool>>(),
            )
                .prop_map(|(version, mode, metadata, live)| {
                    Message::Handshake(Handshake {
                        version,
                        mode,
                        metadata,
                        live,
                    })
                });
            let log = (".{0,30}", any::<u64>()).prop_map(|(log, seq)| LogSeq { log, seq });
            let node = (
                any::<u64>(),
                ".{0,70}",
                ".{0,30}",
                any::<Option<u64>>(),
                opt_bytes(),
                opt_bytes(),
                proptest::collection::vec(any::<u8>(), 0..300),
                proptest::collection::vec("[0-9a-f]{64}|.{0,5}", 0..4),
            )
                .prop_map(
                    |(change, key, log, seq, identity, signature, value, links)| {
                        Message::Node(NodeMessage {
                            change,
                            key,
                            log,
                            seq,
                            identity,
                            signature,
                            value,
                            links,
                        })
                    },
                );
            let unknown = (6u8.., proptest::collection::vec(any::<u8>(), 0..20))
                .prop_map(|(type_byte, payload)| Message::Unknown { type_byte, payload });
            prop_oneof![
                handshake,
                log.clone().prop_map(Message::Have),
                log.prop_map(Message::Want),
                node,
                Just(Message::SentHeads),
                Just(Message::SentWants),
                unknown,
            ]
        }

        proptest! {
            #[test]
            fn decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600),
                                    cut in any::<proptest::sample::Index>(),
                                    max in 0usize..300) {
                let mut dec = FrameDecoder::with_max_frame_size(max);
                let at = cut.index(bytes.len() + 1);
                dec.push(&bytes[..at]);
                while let Ok(Some(_)) = dec.next_message() {}
                dec.push(&bytes[at..]);
                while let Ok(Some(_)) = dec.next_message() {}
                let _ = Message::decode_body(&bytes);
                let _ = Handshake::decode(&bytes);
                let _ = LogSeq::decode(&bytes);
                let _ = NodeMessage::decode(&bytes);
            }

            #[test]
            fn message_bodies_never_panic(type_byte in 0u8..8,
                                          payload in proptest::collection::vec(any::<u8>(), 0..200)) {
                let mut body = vec![type_byte];
                body.extend_from_slice(&payload);
                let _ = Message::decode_body(&body);
            }

            #[test]
            fn encode_decode_round_trips(msgs in proptest::collection::vec(message(), 1..6),
                                         cuts in proptest::collection::vec(any::<proptest::sample::Index>(), 0..4)) {
                let mut stream = Vec::new();
                for m in &msgs {
                    let before = stream.len();
                    m.encode_frame(&mut stream);
                    prop_assert_eq!(stream.len() - before, m.frame_len());
                    prop_assert_eq!(Message::decode_body(&m.to_body()), Ok(m.clone()));
                }
                let mut points: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
                points.push(stream.len());
                points.sort_unstable();
                let mut dec = FrameDecoder::new();
                let mut got = Vec::new();
                let mut from = 0;
                for p in points {
                    dec.push(&stream[from..p]);
                    from = p;
                    while let Some(m) = dec.next_message().map_err(|e| TestCaseError::fail(e.to_string()))? {
                        got.push(m);
                    }
                }
                prop_assert!(dec.is_at_boundary());
                prop_assert_eq!(got, msgs);
            }
        }
    }
}
