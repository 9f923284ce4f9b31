//! The hyperlog 4.x node model and its content key.
//!
//! A node's key is SHA-256 over a "framed" input: every chunk is preceded by its byte length in
//! decimal ASCII and a `\n`. The chunks are the link keys (as their 64-char lowercase hex
//! strings, in the order given) and then the value bytes, which are always present, so an empty
//! value contributes `0\n`. Only links and value are hashed; `log`, `seq`, `change`, `identity`
//! and `signature` are not. This is what `framed-hash@1.1.0` computes for hyperlog ≥ 4.0.0.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};

use super::wire::{
    encode_node_fields, encode_node_head, encode_node_links, node_fields_len, put_varint,
    NodeFields, NodeMessage, TYPE_NODE,
};

/// Length of a key in bytes (SHA-256).
pub const KEY_LEN: usize = 32;
/// Length of a key written as lowercase hex.
pub const KEY_HEX_LEN: usize = 64;

const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

/// A node key: the SHA-256 of the framed links and value.
///
/// It is shown and sent as 64 lowercase hex characters. Its ordering (by bytes) is the same as
/// the ordering of those hex strings, so sorting keys sorts them as hyperlog sorts its heads.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key([u8; KEY_LEN]);

/// Why a string is not a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The string is not 64 characters long.
    #[error("a key is {KEY_HEX_LEN} hex characters, got {0} bytes")]
    BadLength(usize),
    /// A character is not one of `0-9a-f` (upper case hex is refused: hyperlog writes lower case,
    /// and a key in upper case names no node).
    #[error("a key is lowercase hex; byte {index} is not")]
    NotLowercaseHex {
        /// Byte offset of the first bad character.
        index: usize,
    },
}

impl Key {
    /// Wraps 32 raw bytes.
    pub const fn from_bytes(bytes: [u8; KEY_LEN]) -> Key {
        Key(bytes)
    }

    /// The 32 raw bytes (what hyperlog-sodium signs).
    pub const fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// Parses exactly 64 lowercase hex characters.
    pub fn parse(s: &str) -> Result<Key, KeyError> {
        let s = s.as_bytes();
        if s.len() != KEY_HEX_LEN {
            return Err(KeyError::BadLength(s.len()));
        }
        let mut out = [0u8; KEY_LEN];
        for (i, pair) in s.chunks_exact(2).enumerate() {
            let hi = hex_value(pair[0]).ok_or(KeyError::NotLowercaseHex { index: 2 * i })?;
            let lo = hex_value(pair[1]).ok_or(KeyError::NotLowercaseHex { index: 2 * i + 1 })?;
            out[i] = (hi << 4) | lo;
        }
        Ok(Key(out))
    }

    /// The key as 64 lowercase hex characters (as ASCII bytes, without allocating).
    pub fn to_hex_bytes(&self) -> [u8; KEY_HEX_LEN] {
        let mut out = [0u8; KEY_HEX_LEN];
        for (i, b) in self.0.iter().enumerate() {
            out[2 * i] = HEX_DIGITS[usize::from(b >> 4)];
            out[2 * i + 1] = HEX_DIGITS[usize::from(b & 0x0f)];
        }
        out
    }

    /// The key as a 64-character lowercase hex string.
    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(KEY_HEX_LEN);
        s.extend(self.to_hex_bytes().iter().map(|&b| char::from(b)));
        s
    }

    /// Computes the key of a node with these links (in this order) and this value.
    pub fn compute(links: &[Key], value: &[u8]) -> Key {
        let mut hasher = Sha256::new();
        for link in links {
            frame_chunk(&mut hasher, &link.to_hex_bytes());
        }
        frame_chunk(&mut hasher, value);
        Key(hasher.finalize().into())
    }

    /// Computes the key as hyperlog does for links given as arbitrary strings (each hashed as
    /// its UTF-8 bytes). For links that are keys this equals [`Key::compute`].
    pub fn compute_raw<S: AsRef<[u8]>>(links: &[S], value: &[u8]) -> Key {
        let mut hasher = Sha256::new();
        for link in links {
            frame_chunk(&mut hasher, link.as_ref());
        }
        frame_chunk(&mut hasher, value);
        Key(hasher.finalize().into())
    }
}

/// Feeds `<decimal length>\n<chunk>` to the hash.
fn frame_chunk(hasher: &mut Sha256, chunk: &[u8]) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut n = chunk.len();
    loop {
        at -= 1;
        // `n % 10` is below 10, so the cast cannot truncate.
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    hasher.update(&digits[at..]);
    hasher.update(b"\n");
    hasher.update(chunk);
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

impl FromStr for Key {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Key, KeyError> {
        Key::parse(s)
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({self})")
    }
}

impl From<[u8; KEY_LEN]> for Key {
    fn from(bytes: [u8; KEY_LEN]) -> Key {
        Key(bytes)
    }
}

/// Why a received node cannot be taken into the model.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    /// The `key` field is not a key.
    #[error("the node's key is not a key: {0}")]
    BadKey(KeyError),
    /// A link is not a key.
    #[error("link {index} of the node is not a key: {error}")]
    BadLink {
        /// Position of the link in the node's links.
        index: usize,
        /// What is wrong with it.
        error: KeyError,
    },
    /// The key does not match the links and value ("Checksum mismatch" in hyperlog, which
    /// destroys the replication stream).
    #[error("checksum mismatch: the node claims key {claimed} but its links and value hash to {computed}")]
    ChecksumMismatch {
        /// The key the node carries.
        claimed: Key,
        /// The key of its links and value.
        computed: Key,
    },
}

/// A hyperlog node, with the fields hyperlog 4.x gives it.
#[derive(Clone, PartialEq, Eq)]
pub struct Node {
    /// The content key (see [`Key::compute`]); the node's global id.
    pub key: Key,
    /// Keys of the parent nodes, in the order given (the order is hashed).
    pub links: Vec<Key>,
    /// The encoded value bytes (may be empty).
    pub value: Vec<u8>,
    /// Id of the log (writer) the node is filed under.
    pub log: String,
    /// 1-based position in `log` (0 when a sender left it out; hyperlog then skips its seq check).
    pub seq: u64,
    /// The holder's local 1-based insertion counter (sent on the wire, recomputed by receivers).
    pub change: u64,
    /// The author's public key, if the node is signed.
    pub identity: Option<Vec<u8>>,
    /// A signature over the key, if the node is signed.
    pub signature: Option<Vec<u8>>,
}

impl Node {
    /// A new unsigned node; its key is computed from `links` and `value`.
    pub fn new(links: Vec<Key>, value: Vec<u8>, log: String, seq: u64, change: u64) -> Node {
        let key = Key::compute(&links, &value);
        Node {
            key,
            links,
            value,
            log,
            seq,
            change,
            identity: None,
            signature: None,
        }
    }

    /// The key that the links and value hash to (which [`Node::key`] should equal).
    pub fn computed_key(&self) -> Key {
        Key::compute(&self.links, &self.value)
    }

    /// Checks that the key matches the links and value.
    pub fn check_key(&self) -> Result<(), NodeError> {
        let computed = self.computed_key();
        if computed == self.key {
            Ok(())
        } else {
            Err(NodeError::ChecksumMismatch {
                claimed: self.key,
                computed,
            })
        }
    }

    /// Takes a decoded wire node into the model: the key and every link must be keys. A missing
    /// `seq` becomes 0, as in hyperlog. The key is not checked against the content here (see
    /// [`Node::check_key`]).
    pub fn from_message(msg: NodeMessage) -> Result<Node, NodeError> {
        let key = Key::parse(&msg.key).map_err(NodeError::BadKey)?;
        let links = msg
            .links
            .iter()
            .enumerate()
            .map(|(index, l)| Key::parse(l).map_err(|error| NodeError::BadLink { index, error }))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Node {
            key,
            links,
            value: msg.value,
            log: msg.log,
            seq: msg.seq.unwrap_or(0),
            change: msg.change,
            identity: msg.identity,
            signature: msg.signature,
        })
    }

    /// The fields of its Node message but the links; `key` is the key as hex.
    fn fields<'a>(&'a self, key: &'a [u8; KEY_HEX_LEN]) -> NodeFields<'a> {
        NodeFields {
            change: self.change,
            key,
            log: &self.log,
            seq: Some(self.seq),
            identity: self.identity.as_deref(),
            signature: self.signature.as_deref(),
            value: &self.value,
        }
    }

    /// Appends exactly what `self.to_message().encode(out)` appends, without building the
    /// message (no copies of the value, no hex strings on the heap): how a store writes nodes.
    pub fn encode_message(&self, out: &mut Vec<u8>) {
        encode_node_fields(
            out,
            self.fields(&self.key.to_hex_bytes()),
            self.links.iter().map(Key::to_hex_bytes),
        );
    }

    /// Length of [`Node::encode_message`]'s output.
    pub fn message_len(&self) -> usize {
        node_fields_len(
            &self.fields(&self.key.to_hex_bytes()),
            self.links.iter().map(|_| KEY_HEX_LEN),
        )
    }

    /// What [`Node::encode_message`] appends, in three parts: the bytes before the value, the
    /// value itself (borrowed) and the bytes after it; so that a store can write the value
    /// straight into its own buffer.
    pub(crate) fn message_parts(&self) -> (Vec<u8>, &[u8], Vec<u8>) {
        let mut head = Vec::with_capacity(256);
        encode_node_head(&mut head, self.fields(&self.key.to_hex_bytes()));
        let mut tail = Vec::with_capacity(self.links.len() * (KEY_HEX_LEN + 2));
        encode_node_links(&mut tail, self.links.iter().map(Key::to_hex_bytes));
        (head, &self.value, tail)
    }

    /// Appends the node's whole replication frame, exactly what
    /// `Message::Node(self.to_message()).encode_frame(out)` appends, copying the value once.
    pub fn encode_frame(&self, out: &mut Vec<u8>) {
        let body = 1 + self.message_len();
        out.reserve(body + 10);
        put_varint(out, body as u64);
        out.push(TYPE_NODE);
        self.encode_message(out);
    }

    /// The node as a wire message (`seq` is always sent, as JS does).
    pub fn to_message(&self) -> NodeMessage {
        NodeMessage {
            change: self.change,
            key: self.key.to_hex(),
            log: self.log.clone(),
            seq: Some(self.seq),
            identity: self.identity.clone(),
            signature: self.signature.clone(),
            value: self.value.clone(),
            links: self.links.iter().map(Key::to_hex).collect(),
        }
    }
}

impl TryFrom<NodeMessage> for Node {
    type Error = NodeError;
    fn try_from(msg: NodeMessage) -> Result<Node, NodeError> {
        Node::from_message(msg)
    }
}

impl From<&Node> for NodeMessage {
    fn from(node: &Node) -> NodeMessage {
        node.to_message()
    }
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Bytes<'a>(&'a [u8]);
        impl fmt::Debug for Bytes<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match std::str::from_utf8(self.0) {
                    Ok(s) => write!(f, "{s:?}"),
                    Err(_) => {
                        for b in self.0 {
                            write!(f, "{b:02x}")?;
                        }
                        Ok(())
                    }
                }
            }
        }
        f.debug_struct("Node")
            .field("key", &self.key)
            .field("links", &self.links)
            .field("value", &Bytes(&self.value))
            .field("log", &self.log)
            .field("seq", &self.seq)
            .field("change", &self.change)
            .field("identity", &self.identity.as_deref().map(Bytes))
            .field("signature", &self.signature.as_deref().map(Bytes))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> Key {
        Key::parse(s).expect("test key")
    }

    const HELLO: &str = "8c7efb22472592f561a7a7647f8c5ee93134880b4ca0c92889a61848cd5c4602";
    const WORLD: &str = "5f5e63be98841981a12b6041e4200677851714ec4305d13a3ee30197439ff193";

    #[test]
    fn vector_hello() {
        assert_eq!(Key::compute(&[], b"hello"), key(HELLO));
        assert_eq!(Key::compute(&[], b"hello").to_hex(), HELLO);
    }

    #[test]
    fn vector_world_links_hello() {
        assert_eq!(Key::compute(&[key(HELLO)], b"world"), key(WORLD));
    }

    #[test]
    fn vector_empty_value() {
        assert_eq!(
            Key::compute(&[], b"").to_hex(),
            "9a271f2a916b0b6ee6cecb2426f0b3206ef074578be55d9bc94f6f3fe3ab86aa"
        );
    }

    #[test]
    fn vector_chatwizard_message_and_follower() {
        let value = br##"{"time":1461500000000,"who":"a1b2c3","message":"hello #nodeconflondon"}"##;
        let first = Key::compute(&[], value);
        assert_eq!(
            first.to_hex(),
            "4b7e8bbc04a76fcda8e6dd62eb9b11e10f83c4ed2ef266a2c7b1e284f046ef1a"
        );
        // The spec does not give the second value. Hashing candidates with hyperlog 4.12.1's
        // lib/hash.js under Node found it: the same writer one second later saying "second".
        let second = br#"{"time":1461500001000,"who":"a1b2c3","message":"second"}"#;
        assert_eq!(
            Key::compute(&[first], second).to_hex(),
            "4e6dc79ea8ff712e1ed464bb8695286710ea40e37dbb56e8cd9a326bd1cf6b29"
        );
    }

    #[test]
    fn framing_is_length_newline_chunk() {
        // sha256("5\nhello") computed directly.
        let direct: [u8; 32] = Sha256::digest(b"5\nhello").into();
        assert_eq!(Key::compute(&[], b"hello"), Key::from_bytes(direct));
        let mut input = b"64\n".to_vec();
        input.extend_from_slice(HELLO.as_bytes());
        input.extend_from_slice(b"5\nworld");
        let direct: [u8; 32] = Sha256::digest(&input).into();
        assert_eq!(
            Key::compute(&[key(HELLO)], b"world"),
            Key::from_bytes(direct)
        );
        // A chunk of 1234 bytes gets a 4-digit prefix.
        let value = vec![7u8; 1234];
        let mut input = b"1234\n".to_vec();
        input.extend_from_slice(&value);
        let direct: [u8; 32] = Sha256::digest(&input).into();
        assert_eq!(Key::compute(&[], &value), Key::from_bytes(direct));
    }

    #[test]
    fn link_order_is_hashed() {
        let a = key(HELLO);
        let b = key(WORLD);
        assert_ne!(Key::compute(&[a, b], b"x"), Key::compute(&[b, a], b"x"));
    }

    #[test]
    fn raw_links_hash_as_strings() {
        assert_eq!(
            Key::compute_raw(&[HELLO], b"world"),
            Key::compute(&[key(HELLO)], b"world")
        );
        let none: [&str; 0] = [];
        assert_eq!(Key::compute_raw(&none, b"hello"), key(HELLO));
        // Not a key, still hashable (hyperlog hashes whatever strings it is given).
        let odd = Key::compute_raw(&["ü"], b"");
        let direct: [u8; 32] = Sha256::digest("2\nü0\n".as_bytes()).into();
        assert_eq!(odd, Key::from_bytes(direct));
    }

    #[test]
    fn parse_is_strict() {
        assert_eq!(Key::parse("00"), Err(KeyError::BadLength(2)));
        assert_eq!(
            Key::parse(&HELLO.to_uppercase()),
            Err(KeyError::NotLowercaseHex { index: 1 })
        );
        let mut s = HELLO.to_string();
        s.replace_range(63..64, "g");
        assert_eq!(Key::parse(&s), Err(KeyError::NotLowercaseHex { index: 63 }));
        // A multi-byte character makes the length wrong or a byte non-hex, never a panic.
        let mut s = HELLO[..62].to_string();
        s.push('é');
        assert_eq!(Key::parse(&s), Err(KeyError::NotLowercaseHex { index: 62 }));
        assert_eq!(HELLO.parse::<Key>(), Ok(key(HELLO)));
        assert_eq!(format!("{}", key(HELLO)), HELLO);
        assert_eq!(format!("{:?}", key(HELLO)), format!("Key({HELLO})"));
    }

    #[test]
    fn key_order_is_hex_order() {
        let mut keys = [key(WORLD), key(HELLO), Key::compute(&[], b"")];
        keys.sort();
        let mut hexes: Vec<String> = keys.iter().map(Key::to_hex).collect();
        let sorted = hexes.clone();
        hexes.sort();
        assert_eq!(hexes, sorted);
    }

    #[test]
    fn node_new_and_check() {
        let n1 = Node::new(vec![], b"hello".to_vec(), "A".into(), 1, 1);
        assert_eq!(n1.key, key(HELLO));
        assert_eq!(n1.check_key(), Ok(()));
        let n2 = Node::new(vec![n1.key], b"world".to_vec(), "A".into(), 2, 2);
        assert_eq!(n2.key, key(WORLD));
        let mut bad = n2.clone();
        bad.value = b"World".to_vec();
        assert!(matches!(
            bad.check_key(),
            Err(NodeError::ChecksumMismatch { claimed, .. }) if claimed == key(WORLD)
        ));
    }

    #[test]
    fn encode_message_writes_what_the_message_encodes() {
        let n1 = Node::new(vec![], Vec::new(), "A".into(), 1, 1);
        let mut n2 = Node::new(
            vec![key(HELLO), n1.key],
            b"world".to_vec(),
            "log".into(),
            2,
            300,
        );
        n2.identity = Some(vec![1; 32]);
        n2.signature = Some(vec![2; 64]);
        for node in [n1, n2] {
            let (mut direct, mut via) = (Vec::new(), Vec::new());
            node.encode_message(&mut direct);
            node.to_message().encode(&mut via);
            assert_eq!(direct, via);
            assert_eq!(node.message_len(), direct.len());
            let (head, value, tail) = node.message_parts();
            assert_eq!([head.as_slice(), value, tail.as_slice()].concat(), direct);
            let (mut frame, mut via) = (Vec::new(), Vec::new());
            node.encode_frame(&mut frame);
            crate::log::wire::Message::Node(node.to_message()).encode_frame(&mut via);
            assert_eq!(frame, via);
        }
    }

    #[test]
    fn node_message_conversion() {
        let mut n2 = Node::new(vec![key(HELLO)], b"world".to_vec(), "A".into(), 2, 2);
        n2.identity = Some(vec![1; 32]);
        n2.signature = Some(vec![2; 64]);
        let msg = n2.to_message();
        assert_eq!(msg.key, WORLD);
        assert_eq!(msg.links, vec![HELLO.to_string()]);
        assert_eq!(msg.seq, Some(2));
        assert_eq!(Node::try_from(msg.clone()), Ok(n2.clone()));

        let mut no_seq = msg.clone();
        no_seq.seq = None;
        assert_eq!(Node::from_message(no_seq).map(|n| n.seq), Ok(0));

        let mut bad_key = msg.clone();
        bad_key.key = "nope".into();
        assert_eq!(
            Node::from_message(bad_key),
            Err(NodeError::BadKey(KeyError::BadLength(4)))
        );
        let mut bad_link = msg;
        bad_link.links.push(HELLO.to_uppercase());
        assert!(matches!(
            Node::from_message(bad_link),
            Err(NodeError::BadLink { index: 1, .. })
        ));
    }

    #[test]
    fn debug_shows_text_values() {
        let n1 = Node::new(vec![], b"hello".to_vec(), "A".into(), 1, 1);
        let s = format!("{n1:?}");
        assert!(s.contains("\"hello\""), "{s}");
        let n = Node::new(vec![], vec![0xff, 0x00], "A".into(), 1, 1);
        assert!(format!("{n:?}").contains("ff00"));
    }
}
