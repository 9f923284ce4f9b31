//! Node signatures compatible with hyperlog-sodium 2.x.
//!
//! hyperlog-sodium 2.0.0 signs the **32 raw bytes of the node key** (the key's hex decoded to
//! bytes; not the hex string, not the value) with Ed25519, detached: a 64-byte signature, stored
//! in the node's `signature` (tag 8). The node's `identity` (tag 7) is the raw 32-byte Ed25519
//! public key. Keys are kept in libsodium's layout: a 64-byte secret key is `seed || public key`.
//!
//! Verification follows hyperlog-sodium's order: the identity must be one of the allowed public
//! keys (or pass the allow predicate), then the signature must verify against it. Where the JS
//! code crashes (a node with no identity) or passes `null` to libsodium (no signature), this
//! module returns a typed error instead.
//!
//! hyperlog-sodium 1.x used libsodium's *combined* `crypto_sign`: a 96-byte `signature ‖ key`.
//! [`Verifier::accept_v1_combined`] optionally accepts that form too; it is off by default.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError};

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

use super::node::{Key, Node, KEY_LEN};

/// Length of an Ed25519 public key (a node identity).
pub const PUBLIC_KEY_LEN: usize = 32;
/// Length of a seed.
pub const SEED_LEN: usize = 32;
/// Length of a libsodium secret key (`seed || public key`).
pub const SECRET_KEY_LEN: usize = 64;
/// Length of a detached signature (hyperlog-sodium 2.x).
pub const SIGNATURE_LEN: usize = 64;
/// Length of a combined signature (hyperlog-sodium 1.x: signature then the 32 key bytes).
pub const V1_COMBINED_SIGNATURE_LEN: usize = SIGNATURE_LEN + KEY_LEN;

/// Why a node's signature is refused, or a key cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    /// The node carries no identity (hyperlog-sodium 2.0.0 throws on this).
    #[error("the node has no identity (public key)")]
    MissingIdentity,
    /// The node carries no signature.
    #[error("the node has no signature")]
    MissingSignature,
    /// The identity is not one of the allowed public keys ("Invalid signature" in hyperlog).
    #[error("identity {identity} is not an allowed key")]
    NotAllowed {
        /// The identity, as lowercase hex.
        identity: String,
    },
    /// The identity is not a usable Ed25519 public key.
    #[error("identity is not an Ed25519 public key ({len} bytes)")]
    BadIdentity {
        /// Its length in bytes.
        len: usize,
    },
    /// The signature does not verify ("Invalid signature" in hyperlog).
    #[error("invalid signature")]
    BadSignature,
    /// A secret key that is not 64 bytes, or whose public half does not match its seed.
    #[error("not a libsodium Ed25519 secret key (64 bytes: seed then matching public key)")]
    BadSecretKey,
    /// The operating system's random source failed.
    #[error("no randomness for a new key: {0}")]
    Random(String),
}

/// An Ed25519 keypair, convertible to and from libsodium's layout.
#[derive(Clone)]
pub struct Keypair {
    signing: SigningKey,
}

impl Keypair {
    /// A new random keypair.
    pub fn generate() -> Result<Keypair, SignError> {
        let mut seed = [0u8; SEED_LEN];
        getrandom::fill(&mut seed).map_err(|e| SignError::Random(e.to_string()))?;
        let kp = Keypair::from_seed(&seed);
        seed.fill(0);
        Ok(kp)
    }

    /// The keypair of a 32-byte seed (`crypto_sign_seed_keypair`).
    pub fn from_seed(seed: &[u8; SEED_LEN]) -> Keypair {
        Keypair {
            signing: SigningKey::from_bytes(seed),
        }
    }

    /// The keypair of a libsodium 64-byte secret key (`seed || public key`); the public half
    /// must match the seed.
    pub fn from_secret_key(secret_key: &[u8]) -> Result<Keypair, SignError> {
        let bytes: &[u8; SECRET_KEY_LEN] =
            secret_key.try_into().map_err(|_| SignError::BadSecretKey)?;
        SigningKey::from_keypair_bytes(bytes)
            .map(|signing| Keypair { signing })
            .map_err(|_| SignError::BadSecretKey)
    }

    /// The 32-byte seed.
    pub fn seed(&self) -> [u8; SEED_LEN] {
        self.signing.to_bytes()
    }

    /// The libsodium 64-byte secret key: `seed || public key`.
    pub fn secret_key(&self) -> [u8; SECRET_KEY_LEN] {
        self.signing.to_keypair_bytes()
    }

    /// The 32-byte public key (what goes into a node's `identity`).
    pub fn public_key(&self) -> [u8; PUBLIC_KEY_LEN] {
        self.signing.verifying_key().to_bytes()
    }

    /// The detached Ed25519 signature of any bytes (libsodium's `crypto_sign_detached`).
    pub fn sign(&self, message: &[u8]) -> [u8; SIGNATURE_LEN] {
        self.signing.sign(message).to_bytes()
    }

    /// The detached signature of a node key: Ed25519 over the key's 32 raw bytes.
    pub fn sign_key(&self, key: &Key) -> [u8; SIGNATURE_LEN] {
        self.signing.sign(key.as_bytes()).to_bytes()
    }

    /// Signs a node as hyperlog's `sign` hook does with hyperlog-sodium: sets its signature, and
    /// its identity to this public key if it has none.
    pub fn sign_node(&self, node: &mut Node) {
        node.signature = Some(self.sign_key(&node.key).to_vec());
        if node.identity.is_none() {
            node.identity = Some(self.public_key().to_vec());
        }
    }
}

impl fmt::Debug for Keypair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keypair")
            .field("public_key", &Key::from_bytes(self.public_key()).to_hex())
            .finish_non_exhaustive()
    }
}

/// Checks a detached (64-byte) signature of `key` by `identity`.
///
/// Verification is strict (as libsodium's `crypto_sign_verify_detached`: non-canonical
/// signatures and small-order keys are refused); an honest signer's signatures always pass.
pub fn verify_key_signature(identity: &[u8], key: &Key, signature: &[u8]) -> Result<(), SignError> {
    let pk = verifying_key(identity)?;
    let sig = Signature::from_slice(signature).map_err(|_| SignError::BadSignature)?;
    pk.verify_strict(key.as_bytes(), &sig)
        .map_err(|_| SignError::BadSignature)
}

/// Checks a detached (64-byte) Ed25519 signature of any bytes by `public_key`, as strictly as
/// [`verify_key_signature`].
pub fn verify_signature(
    public_key: &[u8],
    message: &[u8],
    signature: &[u8],
) -> Result<(), SignError> {
    let pk = verifying_key(public_key)?;
    let sig = Signature::from_slice(signature).map_err(|_| SignError::BadSignature)?;
    pk.verify_strict(message, &sig)
        .map_err(|_| SignError::BadSignature)
}

fn verifying_key(identity: &[u8]) -> Result<VerifyingKey, SignError> {
    let bytes: &[u8; PUBLIC_KEY_LEN] = identity.try_into().map_err(|_| SignError::BadIdentity {
        len: identity.len(),
    })?;
    VerifyingKey::from_bytes(bytes).map_err(|_| SignError::BadIdentity {
        len: identity.len(),
    })
}

type Predicate = Arc<dyn Fn(&[u8]) -> bool + Send + Sync>;

/// Which identities are accepted.
#[derive(Clone)]
enum Allowed {
    Keys(Vec<[u8; PUBLIC_KEY_LEN]>),
    Predicate(Predicate),
}

/// hyperlog-sodium's `verify` hook: an allow-list of public keys (or a predicate), then the
/// Ed25519 check.
#[derive(Clone)]
pub struct Verifier {
    allowed: Allowed,
    accept_v1: bool,
}

impl Verifier {
    /// Accepts nodes signed by any of these public keys
    /// (`hsodium(sodium, {publicKey}, {publicKey: [...]})`).
    pub fn new(allowed: impl IntoIterator<Item = [u8; PUBLIC_KEY_LEN]>) -> Verifier {
        Verifier {
            allowed: Allowed::Keys(allowed.into_iter().collect()),
            accept_v1: false,
        }
    }

    /// Accepts nodes signed by this keypair's public key (`hsodium(sodium, keypair)`).
    pub fn for_keypair(keypair: &Keypair) -> Verifier {
        Verifier::new([keypair.public_key()])
    }

    /// Accepts nodes whose identity passes `allow` and whose signature verifies against it
    /// (`opts.publicKey` as a function in hyperlog-sodium).
    pub fn with_predicate(allow: impl Fn(&[u8]) -> bool + Send + Sync + 'static) -> Verifier {
        Verifier {
            allowed: Allowed::Predicate(Arc::new(allow)),
            accept_v1: false,
        }
    }

    /// Accepts this public key too (for a predicate verifier: in addition to what the predicate
    /// accepts).
    pub fn allow(&mut self, public_key: [u8; PUBLIC_KEY_LEN]) {
        match &mut self.allowed {
            Allowed::Keys(keys) => {
                if !keys.contains(&public_key) {
                    keys.push(public_key);
                }
            }
            Allowed::Predicate(p) => {
                let p = Arc::clone(p);
                self.allowed =
                    Allowed::Predicate(Arc::new(move |id: &[u8]| id == public_key || p(id)));
            }
        }
    }

    /// Also accept hyperlog-sodium 1.x combined signatures (96 bytes: the signature followed by
    /// the key bytes it signs). Off by default.
    pub fn accept_v1_combined(mut self, accept: bool) -> Verifier {
        self.accept_v1 = accept;
        self
    }

    /// Whether `identity` is allowed (before any signature check).
    pub fn is_allowed(&self, identity: &[u8]) -> bool {
        match &self.allowed {
            Allowed::Keys(keys) => keys.iter().any(|k| k.as_slice() == identity),
            Allowed::Predicate(p) => p(identity),
        }
    }

    /// Verifies a node: identity present and allowed, signature present and valid for its key.
    pub fn verify_node(&self, node: &Node) -> Result<(), SignError> {
        let identity = node.identity.as_deref().ok_or(SignError::MissingIdentity)?;
        if !self.is_allowed(identity) {
            return Err(SignError::NotAllowed {
                identity: identity.iter().map(|b| format!("{b:02x}")).collect(),
            });
        }
        let signature = node
            .signature
            .as_deref()
            .ok_or(SignError::MissingSignature)?;
        if self.accept_v1 && signature.len() == V1_COMBINED_SIGNATURE_LEN {
            let (sig, message) = signature.split_at(SIGNATURE_LEN);
            if message != node.key.as_bytes() {
                return Err(SignError::BadSignature);
            }
            return verify_key_signature(identity, &node.key, sig);
        }
        verify_key_signature(identity, &node.key, signature)
    }
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Verifier");
        match &self.allowed {
            Allowed::Keys(keys) => d.field(
                "allowed",
                &keys
                    .iter()
                    .map(|k| Key::from_bytes(*k).to_hex())
                    .collect::<Vec<_>>(),
            ),
            Allowed::Predicate(_) => d.field("allowed", &"<predicate>"),
        };
        d.field("accept_v1_combined", &self.accept_v1).finish()
    }
}

/// Keys signed per claim of a [`SigningQueue`]: small enough that the writer rarely waits for a
/// helper's chunk, large enough that claiming costs nothing next to 16 signatures (~0.5 ms).
const SIGNING_CHUNK: usize = 16;

/// The signatures of a list of keys, made by helper threads as the keys come, ahead of one
/// consumer that takes them in order and signs itself whatever no helper has started yet.
///
/// A log batch uses it to sign on every core while it works out the batch (keys are pushed as
/// they are computed: a key never depends on a signature) and while the store writes the
/// nodes, so that neither waits for the other. Each signature is made exactly once, in chunks
/// claimed in order.
pub(crate) struct SigningQueue<'a> {
    keypair: &'a Keypair,
    /// Room for as many keys as the batch can add; the first `pushed` are set.
    keys: Vec<OnceLock<Key>>,
    pushed: AtomicUsize,
    /// Set once no more keys come ([`Self::seal`]): a partial last chunk may then be claimed.
    sealed: AtomicBool,
    /// Helpers waiting for a chunk's keys sleep here.
    arrivals: (Mutex<()>, Condvar),
    chunks: Vec<SignedChunk>,
    /// The first chunk nobody has claimed.
    next: AtomicUsize,
}

#[derive(Default)]
struct SignedChunk {
    signatures: Mutex<Option<Vec<[u8; SIGNATURE_LEN]>>>,
    done: Condvar,
}

impl<'a> SigningQueue<'a> {
    /// A queue for at most `capacity` keys.
    pub(crate) fn new(keypair: &'a Keypair, capacity: usize) -> SigningQueue<'a> {
        SigningQueue {
            keypair,
            keys: (0..capacity).map(|_| OnceLock::new()).collect(),
            pushed: AtomicUsize::new(0),
            sealed: AtomicBool::new(false),
            arrivals: (Mutex::new(()), Condvar::new()),
            chunks: (0..capacity.div_ceil(SIGNING_CHUNK))
                .map(|_| SignedChunk::default())
                .collect(),
            next: AtomicUsize::new(0),
        }
    }

    /// How many helper threads are worth starting on this machine: none for a small batch (a
    /// thread costs more than it saves), else one per core but the consumer's.
    pub(crate) fn helpers(&self) -> usize {
        if self.keys.len() < 4 * SIGNING_CHUNK {
            return 0;
        }
        std::thread::available_parallelism().map_or(0, |n| n.get().saturating_sub(1))
    }

    /// Adds the next key (from the one producing thread); returns its index, or `None` when the
    /// queue is full or sealed (the caller then signs that key itself).
    pub(crate) fn push(&self, key: Key) -> Option<usize> {
        let i = self.pushed.load(Ordering::Relaxed);
        if self.sealed.load(Ordering::Relaxed) || self.keys.get(i)?.set(key).is_err() {
            return None;
        }
        self.pushed.store(i + 1, Ordering::Release);
        if (i + 1) % SIGNING_CHUNK == 0 {
            self.wake_helpers();
        }
        Some(i)
    }

    /// No more keys: helpers finish what was pushed, then stop.
    pub(crate) fn seal(&self) {
        self.sealed.store(true, Ordering::Release);
        self.wake_helpers();
    }

    /// Stops helpers after the chunk each is signing (the consumer gave up), and seals.
    pub(crate) fn cancel(&self) {
        self.next.store(self.chunks.len(), Ordering::Relaxed);
        self.seal();
    }

    /// A helper's loop: signs chunks as their keys arrive, until none are left.
    pub(crate) fn help(&self) {
        while self.sign_next_chunk() {}
    }

    /// The signature of key `i` (after [`Self::seal`]). While its chunk is not done, the caller
    /// signs unclaimed chunks itself, and waits only for a chunk a helper is in the middle of.
    pub(crate) fn signature(&self, i: usize) -> [u8; SIGNATURE_LEN] {
        let chunk = &self.chunks[i / SIGNING_CHUNK];
        loop {
            if let Some(done) = lock(&chunk.signatures).as_ref() {
                return done[i % SIGNING_CHUNK];
            }
            if !self.sign_next_chunk() {
                break;
            }
        }
        let mut signatures = lock(&chunk.signatures);
        loop {
            if let Some(done) = signatures.as_ref() {
                return done[i % SIGNING_CHUNK];
            }
            signatures = chunk
                .done
                .wait(signatures)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    fn wake_helpers(&self) {
        // Taken so that a helper between its check and its wait cannot miss this.
        let _guard = lock(&self.arrivals.0);
        self.arrivals.1.notify_all();
    }

    /// Claims the next chunk, waits until its keys are pushed (or the queue is sealed), and
    /// signs them; false when no chunk with keys was left.
    fn sign_next_chunk(&self) -> bool {
        let c = self.next.fetch_add(1, Ordering::Relaxed);
        let Some(chunk) = self.chunks.get(c) else {
            return false;
        };
        let start = c * SIGNING_CHUNK;
        let full = start + SIGNING_CHUNK;
        let mut guard = lock(&self.arrivals.0);
        let end = loop {
            let pushed = self.pushed.load(Ordering::Acquire);
            if pushed >= full {
                break full;
            }
            if self.sealed.load(Ordering::Acquire) {
                break self.pushed.load(Ordering::Acquire);
            }
            guard = self
                .arrivals
                .1
                .wait(guard)
                .unwrap_or_else(PoisonError::into_inner);
        };
        drop(guard);
        if end <= start {
            // Sealed before this chunk got a key: every later one is empty too.
            self.next.store(self.chunks.len(), Ordering::Relaxed);
            return false;
        }
        let signed = self.keys[start..end]
            .iter()
            .filter_map(OnceLock::get)
            .map(|key| self.keypair.sign_key(key))
            .collect();
        *lock(&chunk.signatures) = Some(signed);
        chunk.done.notify_all();
        true
    }
}

/// Signatures are plain data: a panic elsewhere cannot leave one half-written.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len() / 2)
            .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap_or(0))
            .collect()
    }

    /// Keys pushed one by one while helpers sign: every signature is the one direct signing
    /// gives, including the partial last chunk, whether a helper or the consumer made it.
    #[test]
    fn a_signing_queue_signs_every_key_once_whoever_signs_it() {
        let kp = Keypair::from_seed(&[5; 32]);
        let keys: Vec<Key> = (0..1000u32)
            .map(|i| Key::compute(&[], &i.to_le_bytes()))
            .collect();
        for helpers in [0, 1, 3] {
            let queue = SigningQueue::new(&kp, keys.len() + 7);
            std::thread::scope(|scope| {
                for _ in 0..helpers {
                    scope.spawn(|| queue.help());
                }
                for (i, key) in keys.iter().enumerate() {
                    assert_eq!(queue.push(*key), Some(i));
                }
                queue.seal();
                assert_eq!(queue.push(keys[0]), None, "sealed");
                for (i, key) in keys.iter().enumerate() {
                    assert_eq!(queue.signature(i), kp.sign_key(key), "key {i}");
                }
            });
        }
    }

    /// A batch that fails midway cancels its queue: a helper waiting for keys that will never
    /// come stops, and the scope ends.
    #[test]
    fn a_cancelled_signing_queue_releases_its_helpers() {
        let kp = Keypair::from_seed(&[5; 32]);
        let queue = SigningQueue::new(&kp, 1000);
        std::thread::scope(|scope| {
            scope.spawn(|| queue.help());
            scope.spawn(|| queue.help());
            for i in 0..40u32 {
                queue.push(Key::compute(&[], &i.to_le_bytes()));
            }
            queue.cancel();
        });
        assert_eq!(queue.push(Key::compute(&[], b"late")), None);
    }

    const PK: &str = "8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c";
    const N1_KEY: &str = "8c7efb22472592f561a7a7647f8c5ee93134880b4ca0c92889a61848cd5c4602";
    /// Spec §3.2, and reproduced with hyperlog@4.12.1 + hyperlog-sodium@2.0.0 +
    /// sodium-signatures@1.4.1 (its tweetnacl backend) under Node 20: seed 32×0x01, `append('hello')`.
    const N1_SIG: &str = "2e94c56a399f5e6bc16d2b7603283511a3d40dd32fc3da3d41cdb273090d0e42\
                          289ebc0511fa2cdf20ed8445053feb715850e28d479aba0f9051399482620308";
    /// The same run's second node, n2 = append('world') linking n1 (key 5f5e…f193).
    const N2_SIG: &str = "9ba37234b0d29c170b2c068c60f0cf7e7d8541c1649738dc9388eeec81719e6f\
                          830d9521001b99c5b75d6623bff21b8a529ba644a35cd8977eee74f4289b3f0b";

    fn seed1() -> Keypair {
        Keypair::from_seed(&[1u8; 32])
    }

    fn n1() -> Node {
        Node::new(vec![], b"hello".to_vec(), "A".into(), 1, 1)
    }

    fn pk() -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(&unhex(PK));
        out
    }

    #[test]
    fn seed_vector_public_key() {
        assert_eq!(seed1().public_key().to_vec(), unhex(PK));
    }

    #[test]
    fn libsodium_layout() {
        let kp = seed1();
        let sk = kp.secret_key();
        assert_eq!(&sk[..32], &[1u8; 32]);
        assert_eq!(&sk[32..], unhex(PK).as_slice());
        assert_eq!(kp.seed(), [1u8; 32]);
        let back = Keypair::from_secret_key(&sk).expect("valid secret key");
        assert_eq!(back.public_key(), kp.public_key());
        let mut wrong = sk;
        wrong[63] ^= 1;
        assert_eq!(
            Keypair::from_secret_key(&wrong).map(|k| k.public_key()),
            Err(SignError::BadSecretKey)
        );
        assert_eq!(
            Keypair::from_secret_key(&sk[..32]).map(|k| k.public_key()),
            Err(SignError::BadSecretKey)
        );
        let dbg = format!("{kp:?}");
        assert!(dbg.contains(PK) && !dbg.contains("0101010101"), "{dbg}");
    }

    #[test]
    fn signature_vectors() {
        let kp = seed1();
        let k1 = n1().key;
        assert_eq!(k1.to_hex(), N1_KEY);
        assert_eq!(kp.sign_key(&k1).to_vec(), unhex(N1_SIG));
        let n2 = Node::new(vec![k1], b"world".to_vec(), "A".into(), 2, 2);
        assert_eq!(kp.sign_key(&n2.key).to_vec(), unhex(N2_SIG));
        assert_eq!(
            verify_key_signature(&unhex(PK), &k1, &unhex(N1_SIG)),
            Ok(())
        );
        assert_eq!(
            verify_key_signature(&unhex(PK), &n2.key, &unhex(N1_SIG)),
            Err(SignError::BadSignature)
        );
    }

    #[test]
    fn sign_node_sets_identity_once() {
        let kp = seed1();
        let mut node = n1();
        kp.sign_node(&mut node);
        assert_eq!(node.identity.as_deref(), Some(unhex(PK).as_slice()));
        assert_eq!(node.signature.as_deref(), Some(unhex(N1_SIG).as_slice()));
        let mut other = n1();
        other.identity = Some(vec![9; 32]);
        kp.sign_node(&mut other);
        assert_eq!(other.identity, Some(vec![9; 32]));
    }

    #[test]
    fn verifier_rules() {
        let kp = seed1();
        let v = Verifier::new([pk()]);
        let mut node = n1();
        assert_eq!(v.verify_node(&node), Err(SignError::MissingIdentity));
        node.identity = Some(unhex(PK));
        assert_eq!(v.verify_node(&node), Err(SignError::MissingSignature));
        node.signature = Some(unhex(N1_SIG));
        assert_eq!(v.verify_node(&node), Ok(()));
        assert_eq!(Verifier::for_keypair(&kp).verify_node(&node), Ok(()));

        // A third party with its own valid signature is not on the list.
        let other = Keypair::from_seed(&[2u8; 32]);
        let mut theirs = n1();
        other.sign_node(&mut theirs);
        assert_eq!(Verifier::for_keypair(&other).verify_node(&theirs), Ok(()));
        assert!(matches!(
            v.verify_node(&theirs),
            Err(SignError::NotAllowed { .. })
        ));
        // Their identity with our signature: allowed key, bad signature.
        let mut v2 = v.clone();
        v2.allow(other.public_key());
        let mut forged = theirs.clone();
        forged.signature = Some(unhex(N1_SIG));
        assert_eq!(v2.verify_node(&forged), Err(SignError::BadSignature));
        assert_eq!(v2.verify_node(&theirs), Ok(()));

        // Wrong-length signature or identity.
        let mut short = node.clone();
        short.signature = Some(vec![0; 63]);
        assert_eq!(v.verify_node(&short), Err(SignError::BadSignature));
        let any = Verifier::with_predicate(|_| true);
        let mut bad_id = node.clone();
        bad_id.identity = Some(vec![1; 31]);
        assert_eq!(
            any.verify_node(&bad_id),
            Err(SignError::BadIdentity { len: 31 })
        );
        assert_eq!(any.verify_node(&node), Ok(()));
        assert_eq!(any.verify_node(&theirs), Ok(()));

        // A tampered value changes the key the signature must match.
        let mut tampered = node.clone();
        tampered.value = b"hellO".to_vec();
        tampered.key = tampered.computed_key();
        assert_eq!(v.verify_node(&tampered), Err(SignError::BadSignature));
    }

    #[test]
    fn predicate_plus_allow() {
        let mut v = Verifier::with_predicate(|_| false);
        let mut node = n1();
        seed1().sign_node(&mut node);
        assert!(matches!(
            v.verify_node(&node),
            Err(SignError::NotAllowed { .. })
        ));
        v.allow(pk());
        assert_eq!(v.verify_node(&node), Ok(()));
    }

    #[test]
    fn v1_combined_signatures_only_when_asked() {
        let kp = seed1();
        let mut node = n1();
        let mut combined = kp.sign_key(&node.key).to_vec();
        combined.extend_from_slice(node.key.as_bytes());
        node.identity = Some(kp.public_key().to_vec());
        node.signature = Some(combined.clone());
        let strict = Verifier::for_keypair(&kp);
        assert_eq!(strict.verify_node(&node), Err(SignError::BadSignature));
        let lenient = strict.accept_v1_combined(true);
        assert_eq!(lenient.verify_node(&node), Ok(()));
        // The trailing bytes must be this node's key.
        combined[95] ^= 1;
        node.signature = Some(combined);
        assert_eq!(lenient.verify_node(&node), Err(SignError::BadSignature));
    }

    #[test]
    fn generated_keys_work() {
        let kp = Keypair::generate().expect("randomness");
        let mut node = n1();
        kp.sign_node(&mut node);
        assert_eq!(Verifier::for_keypair(&kp).verify_node(&node), Ok(()));
        assert_ne!(kp.public_key(), seed1().public_key());
    }
}
