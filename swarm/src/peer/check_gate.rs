//! The [`CheckGate`] every datagram an engine's socket receives passes first: it authenticates
//! connectivity checks before the engine does, keeps the offerer controlling, holds relay pairs
//! back while a direct one may still work, and replays a nomination the engine dropped. A part
//! of `peer.rs`, the one file that touches the engine; `sockets.rs` puts it in the read path.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex as StdMutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use tracing::debug;

/// Drops connectivity checks that are not for this connection before the engine sees them,
/// and, on the offerer, holds the relay back while a direct path may still work.
///
/// **Authentication.** rtc-ice 0.21 (`Agent::handle_inbound`, `src/agent/mod.rs`) settles ICE
/// role conflicts (RFC 8445 §7.3.1.1) *before* it checks a request's USERNAME and
/// MESSAGE-INTEGRITY, which RFC 8445 §7.3 puts first. So any binding request claiming
/// ICE-CONTROLLING with a greater tie-breaker turned our controlling agent into a controlled
/// one, and the pair was then chosen by whichever side won the argument that followed. Such
/// checks come for real: after a glare, the remote's abandoned attempt has our candidates and
/// checks them with its own credentials (logged by the engine as `ErrMismatchUsername`), and so
/// can anyone who knows our address. A binding request reaches the engine only when its
/// USERNAME names our local ufrag and its MESSAGE-INTEGRITY is keyed with our password;
/// everything else passes as it came. Checks relayed through our TURN allocation, in
/// ChannelData messages or Data indications, are looked at inside them. Upstream: rtc-ice
/// should authenticate first.
///
/// **Role.** The offerer also keeps the controlling role when a genuine check claims it too. A
/// browser whose own offer crossed ours rolls it back and answers ours, but stays controlling
/// (webrtc-pc keeps an ICE role once a local offer set it), so both agents claim the role and
/// the tie-breakers decide: half the time the browser won, nominated a relay pair first, and
/// rtc-ice, controlled, kept that nomination for good (it ignores later, better ones), so our
/// side sent through TURN across two cone NATs. The gate gives such a check a tie-breaker of 0
/// (signed again with our password, which keys the checks sent to us): our agent answers with
/// a role-conflict error, and the browser, as RFC 8445 §7.3.1.1 has it, becomes controlled.
/// Only an offerer does this, and only offerers claim control, so two such peers never meet.
///
/// **Relay hold.** rtc-ice nominates once and for good, so the controlling side must not take
/// a relay pair while a direct one may still work; its only lever is a fixed wait after checks
/// start (`relay_acceptance_min_wait`), which a connection that can only be relayed (behind a
/// symmetric NAT) pays in full. The offerer's gate instead withholds the success responses of
/// relay pairs (those through our TURN allocation, and those from a remote relay candidate)
/// from the engine, so the engine sees no working relay pair and keeps checking, and lets them
/// through
///
/// - against a peer of this crate (which checks every pair every 5 ms), once its checks arrive
///   only through our relay, plus a grace of two round trips (of our own checks; at least
///   20 ms) for our direct checks: had a direct check of the remote's worked, it would have
///   reached us, since we check the remote's addresses all along, which opens our NAT to
///   them. Through symmetric NATs Rust↔Rust connects in ~140 ms instead of ~340;
/// - against any remote, once our own NAT is seen to map per destination (two STUN servers
///   saw one socket of ours at two addresses, [`CheckGate::note_local_candidate`]), when our
///   first check to each of the remote's direct addresses is older than the grace. Such a NAT
///   lets in only what comes to a mapping one of our own checks made, from the address that
///   check went to, so the remote's checks of the addresses we advertise never arrive, however
///   early or late it sends them: a direct pair can work only if one of our checks gets
///   through and is answered, within a round trip. What this gives up: a remote behind a NAT
///   that filters by address alone lets our check in only after its own check to our address
///   went out, which a pacing remote may send late; such a pair is relayed where it could have
///   been direct. Symmetric NATs, Rust controlling Node: 872 → ~180 ms (see the note of
///   2026-12-05);
/// - otherwise at the latest [`RelayHold::longest`] after our first check: 700 ms against
///   libwebrtc, 300 ms against a peer of this crate.
///
/// Not against libwebrtc (Node, browsers), measured in the NAT lab across cone NATs: Chromium
/// often checks pairs with a relay end first (one through our relay 19–82 ms in, one from its
/// own relay 44–74 ms in) and its first direct check came only 253–424 ms in, in about one run
/// of three. Releasing on its relayed checks relayed Rust to Chromium in
/// `nat::rust_and_chromium_behind_cone_nats_connect_directly`: in 3 runs of 17 counting checks
/// from its relay address, in 1 of 12 counting only those through our relay. Node's direct
/// check came first (63 ms in, its relayed one at 309 ms), but the two cannot be told apart.
///
/// The answerer, against libwebrtc (which controls ICE when it offered), holds back the relay
/// by the same rules: libwebrtc nominates the first pair that works, often a relay one (its
/// checks of the NAT-to-NAT pair come later), and a better one once that works; rtc-ice,
/// controlled, kept the first for good, so across two cone NATs a Rust answerer sent through
/// TURN in every try of the NAT lab's Node-offers benchmark. A nomination of a relay pair
/// reaches the engine as a plain check (its USE-CANDIDATE turned into an attribute no agent
/// knows, of the same length, and signed again) while the hold lasts, and is kept; the engine
/// then takes the direct pair the remote nominates next, or, when the hold ends, the kept
/// nomination after the next answer from its sender. A remote whose NAT maps per destination
/// (two of its server-reflexive candidates with one base and two addresses; a browser gives
/// every base as `0.0.0.0:0`) ends the hold like our own NAT doing so. Against a peer of this
/// crate the answerer holds nothing: the offerer held the relay back already.
///
/// **Nomination.** rtc-ice 0.21, controlled, drops a nomination (a check with USE-CANDIDATE)
/// that arrives before its own check of the pair has succeeded: it sends a triggered check and
/// neither answers the request nor remembers it (`handle_binding_request` in
/// `agent_selector.rs`), where RFC 8445 §7.3.1.5 has the pair nominated once the triggered
/// check succeeds. libwebrtc (browsers, Node) nominates with its very first check of a pair, so
/// a Rust answerer's pair was selected only at the remote's next nomination, ~50 ms later (its
/// pace), or on another pair. The answerer's gate keeps the last nomination from each address
/// (received directly, for at most 2 s) and, when the success response of our own check of
/// that pair arrives, hands the nomination to the engine again right after it: the engine then
/// selects the pair the remote chose, as the RFC says. On loopback, Rust answering Chromium:
/// ICE checking → connected 40–65 ms before, 9–27 ms with it. Upstream: rtc-ice should remember
/// the nomination (and answer the request).
pub(super) struct CheckGate {
    /// Our ICE ufrag and password, from the local description; until then nothing is dropped.
    credentials: RwLock<Option<(String, String)>>,
    crypto: Option<Arc<dyn rtc::crypto::RTCCryptoProvider>>,
    /// Whether we offered, and so control ICE.
    offerer: bool,
    /// What the offerer knows of the remote's checks and of relay pairs.
    relay_hold: StdMutex<RelayHold>,
    /// The answerer's nominations waiting for their pair to work (see "Nomination").
    pending_nominations: StdMutex<PendingNominations>,
    /// Whether ICE has connected (see [`CheckGate::ice_connected`]).
    ice_connected: AtomicBool,
    /// The remote's last DTLS datagram from before that, which the engine dropped.
    early_dtls: StdMutex<EarlyDtls>,
}

/// The remote's last DTLS datagram from before ICE connected (see
/// [`CheckGate::ice_connected`]): our socket, the sender, the datagram as received, and
/// whether it is due to be handed over again.
#[derive(Debug, Default)]
struct EarlyDtls {
    kept: Option<(SocketAddr, SocketAddr, Vec<u8>)>,
    due: bool,
}

/// What [`CheckGate::inspect`] makes of a received datagram.
#[derive(Debug, PartialEq)]
pub(super) enum CheckVerdict {
    Pass,
    /// A check for other credentials.
    Drop,
    /// A relay pair's success response, held back (see [`CheckGate`]).
    Withhold,
    /// A genuine check claiming control, with its tie-breaker set to 0: the same length.
    Rewrite(Vec<u8>),
    /// A success response, to pass, and after it this earlier nomination from its sender again.
    PassAndReplay(Vec<u8>),
}

/// A binding request of ours: its transaction, our socket, where to, when.
#[derive(Debug, Clone, Copy)]
struct SentRequest {
    transaction: [u8; 12],
    local: SocketAddr,
    to: SocketAddr,
    at: Instant,
}

/// Our last [`SENT_KEPT`] binding requests, to match their responses.
#[derive(Debug, Default)]
struct RecentRequests(VecDeque<SentRequest>);

impl RecentRequests {
    fn record(&mut self, request: SentRequest) {
        if self.0.len() == SENT_KEPT {
            self.0.pop_front();
        }
        self.0.push_back(request);
    }

    /// The request `transaction` answers, forgotten.
    fn take(&mut self, transaction: [u8; 12]) -> Option<SentRequest> {
        let at = self
            .0
            .iter()
            .position(|sent| sent.transaction == transaction)?;
        self.0.remove(at)
    }
}

/// The answerer's nominations waiting for their pair to work (see [`CheckGate`], "Nomination").
#[derive(Debug, Default)]
struct PendingNominations {
    /// Our recent binding requests sent directly.
    sent: RecentRequests,
    /// Nominations received directly: our socket, the sender, the datagram, when.
    nominations: Vec<(SocketAddr, SocketAddr, Vec<u8>, Instant)>,
}

/// Nominations kept at once, and for how long.
const NOMINATIONS_KEPT: usize = 4;
const NOMINATION_KEPT_FOR: Duration = Duration::from_secs(2);

/// The offerer's view of the race between direct and relay pairs (see [`CheckGate`]).
#[derive(Debug)]
struct RelayHold {
    /// How long after our first check relay pairs are held back at most.
    longest: Duration,
    /// Whether the remote's checks coming only through relays end the hold sooner (against a
    /// peer of this crate).
    early_release: bool,
    /// Our server-reflexive candidates: whether our NAT maps per destination, and then the hold
    /// ends once our own direct checks had their round trips.
    own_mappings: Mappings,
    /// Where our direct checks went (not to a remote relay candidate, not through our relay),
    /// and when the first to each.
    direct_targets: Vec<(SocketAddr, Instant)>,
    /// The remote's server-reflexive candidates (a browser gives every base as `0.0.0.0:0`).
    remote_mappings: Mappings,
    /// The answerer's last nomination of a relay pair kept from the engine: our socket, the
    /// sender, the datagram as received (see "Relay hold").
    held_nomination: Option<(SocketAddr, SocketAddr, Vec<u8>)>,
    /// When we sent our first connectivity check.
    first_check: Option<Instant>,
    /// Once true, nothing more is held back.
    released: bool,
    /// The remote's relay candidates: responses and checks from these came through a relay.
    remote_relays: Vec<SocketAddr>,
    /// Whether a remote check came to us other than through a relay.
    direct_check_seen: bool,
    /// When the first remote check that came through a relay arrived.
    relayed_check_seen: Option<Instant>,
    /// Our recent binding requests, to time their responses.
    sent: RecentRequests,
    /// The longest round trip of a check of ours so far.
    longest_rtt: Option<Duration>,
    /// Success responses held back so far (for the log).
    withheld: usize,
}

/// One side's server-reflexive candidates: a base (the socket) and the address a STUN server saw
/// it as, for the first [`MAPPINGS_KEPT`].
#[derive(Debug, Default)]
struct Mappings {
    seen: Vec<(SocketAddr, SocketAddr)>,
    /// Whether one base was seen at two addresses: the NAT maps per destination.
    varies: bool,
}

impl Mappings {
    /// Notes `base` seen as `mapped`; true when that shows, for the first time, that the NAT
    /// maps per destination.
    fn note(&mut self, base: SocketAddr, mapped: SocketAddr) -> bool {
        if self.seen.len() == MAPPINGS_KEPT || self.seen.contains(&(base, mapped)) {
            return false;
        }
        let varies = self
            .seen
            .iter()
            .any(|(seen_base, seen_mapped)| *seen_base == base && *seen_mapped != mapped);
        self.seen.push((base, mapped));
        let news = varies && !self.varies;
        self.varies |= varies;
        news
    }
}

/// The remote relay candidates remembered; more are ignored (and their pairs wait the longest).
const REMOTE_RELAYS_KEPT: usize = 16;
/// Server-reflexive candidates remembered a side (one per STUN server and socket).
const MAPPINGS_KEPT: usize = 16;
/// The remote addresses our direct checks went to, remembered; checks to more are not waited
/// for.
const DIRECT_TARGETS_KEPT: usize = 16;
/// Binding requests of ours remembered for timing.
const SENT_KEPT: usize = 64;
/// The least grace our direct checks get after the remote's first relayed check.
const LEAST_GRACE: Duration = Duration::from_millis(20);

impl RelayHold {
    fn new(longest: Duration, early_release: bool) -> Self {
        RelayHold {
            longest,
            early_release,
            own_mappings: Mappings::default(),
            direct_targets: Vec::new(),
            remote_mappings: Mappings::default(),
            held_nomination: None,
            first_check: None,
            released: false,
            remote_relays: Vec::new(),
            direct_check_seen: false,
            relayed_check_seen: None,
            sent: RecentRequests::default(),
            longest_rtt: None,
            withheld: 0,
        }
    }

    /// Whether a relay pair's success response is still held back at `now`.
    fn holds(&mut self, now: Instant) -> bool {
        if self.released {
            return false;
        }
        let since_first = self
            .first_check
            .map(|first| now.saturating_duration_since(first));
        let grace = |rtt: Duration| (rtt * 2).max(LEAST_GRACE);
        let last_direct_target = self.direct_targets.iter().map(|(_, at)| *at).max();
        let reason = match (since_first, self.relayed_check_seen, self.longest_rtt) {
            // A response to a check we did not see go out: nothing to time it by.
            (None, _, _) => Some("no check of ours was seen"),
            (Some(since), _, _) if since >= self.longest => Some("the longest wait is over"),
            (Some(_), Some(seen), Some(rtt))
                if self.early_release && !self.direct_check_seen && now >= seen + grace(rtt) =>
            {
                Some("the remote's checks come only through relays")
            }
            (Some(_), _, Some(rtt))
                if (self.own_mappings.varies || self.remote_mappings.varies)
                    && !self.direct_check_seen
                    && last_direct_target.is_some_and(|last| now >= last + grace(rtt)) =>
            {
                Some(if self.own_mappings.varies {
                    "our NAT maps per destination, and our direct checks had their round trips"
                } else {
                    "the remote's NAT maps per destination, and our direct checks had their round trips"
                })
            }
            _ => None,
        };
        if let Some(reason) = reason {
            self.released = true;
            debug!(
                reason,
                after_ms = since_first.map(|since| since.as_millis() as u64),
                withheld = self.withheld,
                "relay pairs may be chosen now"
            );
            return false;
        }
        self.withheld += 1;
        true
    }
}

impl std::fmt::Debug for CheckGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckGate").finish_non_exhaustive()
    }
}

impl CheckGate {
    /// A gate for the offerer (`offerer`) or the answerer. An offerer holds relay pairs back
    /// at most `longest_relay_hold` after its first check, and less when `early_relay_release`
    /// and the remote's checks come only through our relay (see "Relay hold").
    pub(super) fn new(
        offerer: bool,
        longest_relay_hold: Duration,
        early_relay_release: bool,
    ) -> Self {
        CheckGate {
            credentials: RwLock::new(None),
            crypto: rtc::crypto::default_provider().ok(),
            offerer,
            relay_hold: StdMutex::new(RelayHold::new(longest_relay_hold, early_relay_release)),
            pending_nominations: StdMutex::new(PendingNominations::default()),
            ice_connected: AtomicBool::new(false),
            early_dtls: StdMutex::new(EarlyDtls::default()),
        }
    }

    fn pending_nominations(&self) -> std::sync::MutexGuard<'_, PendingNominations> {
        self.pending_nominations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn hold(&self) -> std::sync::MutexGuard<'_, RelayHold> {
        self.relay_hold
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Notes that ICE connected (a pair is selected), and whether a DTLS datagram from before
    /// is now due to be handed to the engine again ([`CheckGate::take_early_dtls`]).
    ///
    /// Why: rtc 0.21 drops every datagram that is not STUN until ICE has selected a pair
    /// (`IceHandler::handle_read`, "drop message … before ICE connection is connected"). A
    /// remote that nominated sooner than we selected (a browser or Node offering, whose
    /// nomination we took later: see "Nomination" and "Relay hold") starts DTLS at once, and its
    /// ClientHello was lost: the handshake waited for its retransmission, which libwebrtc backs
    /// off (50, 100, 200 ms…). Measured across cone NATs, Node offering: ICE connected at 217 ms,
    /// the ClientHello retransmitted at 408 ms. Upstream: rtc should keep such a datagram (as
    /// libwebrtc keeps an early ClientHello).
    pub(super) fn ice_connected(&self) -> bool {
        self.ice_connected.store(true, Ordering::Release);
        let mut early = self
            .early_dtls
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        early.due = early.kept.is_some();
        early.due
    }

    /// The DTLS datagram received on `local` before ICE connected, and its sender, once due.
    pub(super) fn take_early_dtls(&self, local: SocketAddr) -> Option<(SocketAddr, Vec<u8>)> {
        let mut early = self
            .early_dtls
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if !early.due || early.kept.as_ref().is_none_or(|(on, ..)| *on != local) {
            return None;
        }
        early.due = false;
        early
            .kept
            .take()
            .map(|(_, from, datagram)| (from, datagram))
    }

    /// Takes our credentials from a local description about to be applied.
    pub(super) fn admit(&self, local_sdp: &str) {
        let attribute = |name: &str| {
            local_sdp
                .lines()
                .find_map(|line| line.trim_end().strip_prefix(name).map(str::to_string))
        };
        if let (Some(ufrag), Some(pwd)) = (attribute("a=ice-ufrag:"), attribute("a=ice-pwd:")) {
            *self
                .credentials
                .write()
                .unwrap_or_else(PoisonError::into_inner) = Some((ufrag, pwd));
        }
    }

    /// Notes a remote candidate (an `a=candidate` value, with or without `a=`): a relay one's
    /// address marks what comes from it as relayed.
    pub(super) fn note_remote_candidate(&self, candidate: &str) {
        let fields: Vec<&str> = candidate.split_ascii_whitespace().collect();
        let is_relay = fields
            .iter()
            .position(|field| *field == "typ")
            .and_then(|at| fields.get(at + 1))
            == Some(&"relay");
        let address = candidate_ip(candidate)
            .zip(fields.get(5).and_then(|port| port.parse().ok()))
            .map(|(ip, port)| SocketAddr::new(ip, port));
        if let (true, Some(address)) = (is_relay, address) {
            let mut hold = self.hold();
            if hold.remote_relays.len() < REMOTE_RELAYS_KEPT
                && !hold.remote_relays.contains(&address)
            {
                hold.remote_relays.push(address);
            }
        }
        if let Some((mapped, base)) = server_reflexive_mapping(candidate) {
            if self.hold().remote_mappings.note(base, mapped) {
                debug!(%base, "the remote's NAT maps per destination");
            }
        }
    }

    /// Notes a local candidate the engine gathered (an `a=candidate` value, with or without
    /// `a=`). Two server-reflexive ones from the same socket at different addresses mean our
    /// NAT maps per destination (two STUN servers saw two mappings); the offerer then holds
    /// relay pairs back only until its own direct checks had their round trips (see "Relay
    /// hold").
    pub(super) fn note_local_candidate(&self, candidate: &str) {
        let Some((mapped, base)) = server_reflexive_mapping(candidate) else {
            return;
        };
        if self.hold().own_mappings.note(base, mapped) {
            debug!(%base, "our NAT maps per destination");
        }
    }

    /// Whether two STUN servers saw one of our sockets at two addresses (see
    /// [`CheckGate::note_local_candidate`]).
    pub(super) fn own_mapping_varies(&self) -> bool {
        self.hold().own_mappings.varies
    }

    /// Notes the candidates a remote description carries.
    pub(super) fn note_remote_description(&self, sdp: &str) {
        for line in sdp.lines() {
            if let Some(candidate) = line.trim_end().strip_prefix("a=") {
                if candidate.starts_with("candidate:") {
                    self.note_remote_candidate(candidate);
                }
            }
        }
    }

    /// Whether a datagram the engine sends to `to` goes through a TURN server: framed for our own
    /// allocation (ChannelData, or a Send indication), or to a remote relay candidate.
    pub(super) fn goes_through_a_relay(&self, to: SocketAddr, datagram: &[u8]) -> bool {
        turn_payload(datagram).0 != Framing::Direct || self.hold().remote_relays.contains(&to)
    }

    /// Notes a datagram the engine sends from its socket `local` to `to`: the offerer times its
    /// checks, the answerer remembers where its direct ones went.
    pub(super) fn observe_sent(
        &self,
        local: SocketAddr,
        to: SocketAddr,
        datagram: &[u8],
        now: Instant,
    ) {
        let (framing, payload) = turn_payload(datagram);
        let message = &datagram[payload];
        let Some((Binding::Request, transaction)) = binding_message(message) else {
            return;
        };
        let request = SentRequest {
            transaction,
            local,
            to,
            at: now,
        };
        if !self.offerer {
            let mut pending = self.pending_nominations();
            if framing == Framing::Direct && !pending.nominations.is_empty() {
                pending.sent.record(request);
            }
        }
        let mut hold = self.hold();
        if hold.released {
            return;
        }
        // A connectivity check names the remote's ufrag; a gathering request does not.
        if stun_attribute(message, ATTR_USERNAME).is_some() {
            hold.first_check.get_or_insert(now);
            let direct = framing == Framing::Direct && !hold.remote_relays.contains(&to);
            if direct
                && hold.direct_targets.len() < DIRECT_TARGETS_KEPT
                && !hold.direct_targets.iter().any(|(target, _)| *target == to)
            {
                hold.direct_targets.push((to, now));
            }
        }
        hold.sent.record(request);
    }

    /// What the engine gets of `datagram`, received on its socket `local` from `from` at `now`:
    /// anything but a binding request for other credentials; as the offerer, a genuine check
    /// claiming control without its tie-breaker, and a relay pair's success response only once
    /// the relay may be chosen; as the answerer, after the success response that makes a pair
    /// work, the nomination of that pair the engine dropped (see "Nomination").
    pub(super) fn inspect(
        &self,
        local: SocketAddr,
        datagram: &[u8],
        from: SocketAddr,
        now: Instant,
    ) -> CheckVerdict {
        let (framing, payload) = turn_payload(datagram);
        let message = &datagram[payload.clone()];
        let Some((binding, transaction)) = binding_message(message) else {
            // RFC 7983: DTLS records start with 20–63.
            if !self.ice_connected.load(Ordering::Acquire)
                && message
                    .first()
                    .is_some_and(|first| (20..=63).contains(first))
            {
                let mut early = self
                    .early_dtls
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                early.kept = Some((local, from, datagram.to_vec()));
            }
            return CheckVerdict::Pass;
        };
        match binding {
            Binding::Request => {
                let verdict = self.inspect_check(message);
                // A relay pair's nomination held back is not one to replay early either.
                let held = (!self.offerer && verdict == CheckVerdict::Pass)
                    .then(|| self.held_back_nomination(local, datagram, from, now))
                    .flatten();
                if held.is_none()
                    && !self.offerer
                    && verdict == CheckVerdict::Pass
                    && framing == Framing::Direct
                    && stun_attribute(message, ATTR_USE_CANDIDATE).is_some()
                {
                    let mut pending = self.pending_nominations();
                    pending.nominations.retain(|(socket, sender, _, at)| {
                        (*socket, *sender) != (local, from)
                            && now.saturating_duration_since(*at) < NOMINATION_KEPT_FOR
                    });
                    if pending.nominations.len() == NOMINATIONS_KEPT {
                        pending.nominations.remove(0);
                    }
                    pending
                        .nominations
                        .push((local, from, datagram.to_vec(), now));
                }
                if verdict != CheckVerdict::Drop {
                    let mut hold = self.hold();
                    let after_ms = hold
                        .first_check
                        .map(|first| now.saturating_duration_since(first).as_millis() as u64);
                    if hold.remote_relays.contains(&from) {
                        // From the remote's relay candidate: a remote checks the pairs of a
                        // local candidate as soon as it has gathered it, whatever their rank,
                        // so these tell nothing about its direct checks.
                    } else if framing != Framing::Direct {
                        if hold.relayed_check_seen.is_none() {
                            debug!(%from, ?framing, after_ms, "the remote's first check through a relay");
                            hold.relayed_check_seen = Some(now);
                        }
                    } else if !hold.direct_check_seen {
                        debug!(%from, after_ms, "the remote's first direct check");
                        hold.direct_check_seen = true;
                    }
                }
                if let Some(stripped) = held {
                    return stripped;
                }
                match verdict {
                    CheckVerdict::Rewrite(check) => {
                        match rewrapped(datagram, framing, payload, &check) {
                            Some(wrapped) => CheckVerdict::Rewrite(wrapped),
                            None => CheckVerdict::Pass,
                        }
                    }
                    verdict => verdict,
                }
            }
            Binding::Success if self.offerer => {
                let mut hold = self.hold();
                if let Some(sent) = hold.sent.take(transaction) {
                    let rtt = now.saturating_duration_since(sent.at);
                    hold.longest_rtt =
                        Some(hold.longest_rtt.map_or(rtt, |longest| longest.max(rtt)));
                }
                let relayed = framing != Framing::Direct || hold.remote_relays.contains(&from);
                if relayed && hold.holds(now) {
                    CheckVerdict::Withhold
                } else {
                    CheckVerdict::Pass
                }
            }
            Binding::Success => {
                let released = {
                    let mut hold = self.hold();
                    if let Some(sent) = hold.sent.take(transaction) {
                        let rtt = now.saturating_duration_since(sent.at);
                        hold.longest_rtt =
                            Some(hold.longest_rtt.map_or(rtt, |longest| longest.max(rtt)));
                    }
                    let ours = hold
                        .held_nomination
                        .as_ref()
                        .is_some_and(|(on, sender, _)| (*on, *sender) == (local, from));
                    if ours && !hold.holds(now) {
                        hold.held_nomination.take()
                    } else {
                        None
                    }
                };
                if let Some((.., nomination)) = released {
                    debug!(%from, "relay pairs may be chosen now: the remote's nomination of one again");
                    return CheckVerdict::PassAndReplay(nomination);
                }
                let mut pending = self.pending_nominations();
                if framing != Framing::Direct || pending.nominations.is_empty() {
                    return CheckVerdict::Pass;
                }
                let Some(sent) = pending.sent.take(transaction) else {
                    return CheckVerdict::Pass;
                };
                let Some(at) = pending.nominations.iter().position(|(on, sender, _, at)| {
                    (*on, *sender) == (sent.local, sent.to)
                        && sent.to == from
                        && now.saturating_duration_since(*at) < NOMINATION_KEPT_FOR
                }) else {
                    return CheckVerdict::Pass;
                };
                let (.., nomination, _) = pending.nominations.remove(at);
                debug!(%from, "the pair the remote nominated works now: its nomination again");
                CheckVerdict::PassAndReplay(nomination)
            }
        }
    }

    /// As the answerer, against a remote that paces its checks: a genuine nomination of a relay
    /// pair (`datagram`, received on `local` from `from`) while relay pairs are held back comes
    /// to the engine without its USE-CANDIDATE, and is kept, to be handed over once the hold is
    /// over (see "Relay hold"); `None` for anything else.
    fn held_back_nomination(
        &self,
        local: SocketAddr,
        datagram: &[u8],
        from: SocketAddr,
        now: Instant,
    ) -> Option<CheckVerdict> {
        let (framing, payload) = turn_payload(datagram);
        let message = &datagram[payload.clone()];
        stun_attribute(message, ATTR_USE_CANDIDATE)?;
        let mut hold = self.hold();
        let relayed = framing != Framing::Direct || hold.remote_relays.contains(&from);
        if hold.early_release || !relayed || !hold.holds(now) {
            return None;
        }
        let stripped = self.resigned(message, |typ| {
            (typ == ATTR_USE_CANDIDATE).then(|| (ATTR_NOMINATION_HELD, Vec::new()))
        })?;
        let wrapped = rewrapped(datagram, framing, payload, &stripped)?;
        if hold.held_nomination.is_none() {
            debug!(%from, "the remote nominated a relay pair: held back while a direct one may work");
        }
        hold.held_nomination = Some((local, from, datagram.to_vec()));
        Some(CheckVerdict::Rewrite(wrapped))
    }

    /// A binding request of the remote's (`check`, already authenticated), with the attributes
    /// `swap` names replaced (by type, and value), signed again with our password: of the
    /// same length, or `None`.
    fn resigned(
        &self,
        check: &[u8],
        swap: impl Fn(u16) -> Option<(u16, Vec<u8>)>,
    ) -> Option<Vec<u8>> {
        use rtc::stun::attributes::{AttrType, ATTR_FINGERPRINT, ATTR_MESSAGE_INTEGRITY};
        use rtc::stun::fingerprint::FINGERPRINT;
        use rtc::stun::integrity::MessageIntegrity;
        use rtc::stun::message::{Message, Setter};
        let credentials = self
            .credentials
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let (Some((_, pwd)), Some(crypto)) = (credentials.as_ref(), &self.crypto) else {
            return None;
        };
        let mut message = Message::new();
        message.raw = check.to_vec();
        message.decode().ok()?;
        let mut rebuilt = Message::new();
        rebuilt.typ = message.typ;
        rebuilt.transaction_id = message.transaction_id;
        rebuilt.write_header();
        for attribute in &message.attributes.0 {
            if attribute.typ == ATTR_MESSAGE_INTEGRITY || attribute.typ == ATTR_FINGERPRINT {
                continue;
            }
            match swap(attribute.typ.0) {
                Some((typ, value)) => rebuilt.add(AttrType(typ), &value),
                None => rebuilt.add(attribute.typ, &attribute.value),
            }
        }
        MessageIntegrity::new_short_term_integrity_with_provider(pwd.clone(), crypto.crypto())
            .add_to(&mut rebuilt)
            .and_then(|()| FINGERPRINT.add_to(&mut rebuilt))
            .ok()?;
        (rebuilt.raw.len() == check.len()).then_some(rebuilt.raw)
    }

    /// [`CheckGate::inspect`] for a binding request as the remote sent it.
    fn inspect_check(&self, datagram: &[u8]) -> CheckVerdict {
        use rtc::stun::integrity::MessageIntegrity;
        use rtc::stun::message::{Message, BINDING_REQUEST};
        let credentials = self
            .credentials
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let (Some((ufrag, pwd)), Some(crypto)) = (credentials.as_ref(), &self.crypto) else {
            return CheckVerdict::Pass;
        };
        let mut message = Message::new();
        message.raw = datagram.to_vec();
        if message.decode().is_err() || message.typ != BINDING_REQUEST {
            return CheckVerdict::Drop;
        }
        let ours = message
            .get(rtc::stun::attributes::ATTR_USERNAME)
            .is_ok_and(|username| {
                username
                    .strip_prefix(ufrag.as_bytes())
                    .is_some_and(|rest| rest.first() == Some(&b':'))
            });
        if !ours || MessageIntegrity::check(&mut message, pwd.as_bytes(), crypto.crypto()).is_err()
        {
            return CheckVerdict::Drop;
        }
        if !self.offerer || !message.contains(rtc::stun::attributes::ATTR_ICE_CONTROLLING) {
            return CheckVerdict::Pass;
        }
        drop(credentials);
        // The tie-breaker, a 64-bit number, set to 0.
        let controlling = rtc::stun::attributes::ATTR_ICE_CONTROLLING.0;
        match self.resigned(datagram, |typ| {
            (typ == controlling).then(|| (typ, vec![0; 8]))
        }) {
            Some(yielded) => {
                debug!("a check claims the controlling role too: the offerer keeps it");
                CheckVerdict::Rewrite(yielded)
            }
            None => CheckVerdict::Pass,
        }
    }
}

/// The address of an SDP candidate line (`candidate:F 1 udp P ADDRESS PORT typ …`, with or
/// without `a=`), if it is an IP address (not an mDNS name).
pub(super) fn candidate_ip(candidate: &str) -> Option<std::net::IpAddr> {
    let line = candidate.strip_prefix("a=").unwrap_or(candidate);
    line.split_ascii_whitespace().nth(4)?.parse().ok()
}

/// A server-reflexive candidate's address and base (`… ADDRESS PORT typ srflx raddr BASE rport
/// PORT …`), as IP addresses and ports; `None` for any other candidate.
fn server_reflexive_mapping(candidate: &str) -> Option<(SocketAddr, SocketAddr)> {
    let line = candidate.strip_prefix("a=").unwrap_or(candidate);
    let fields: Vec<&str> = line.split_ascii_whitespace().collect();
    let after = |name: &str| {
        fields
            .iter()
            .position(|field| *field == name)
            .and_then(|at| fields.get(at + 1))
            .copied()
    };
    if after("typ") != Some("srflx") {
        return None;
    }
    let mapped = SocketAddr::new(candidate_ip(line)?, fields.get(5)?.parse().ok()?);
    let base = SocketAddr::new(after("raddr")?.parse().ok()?, after("rport")?.parse().ok()?);
    Some((mapped, base))
}

/// How a datagram reached us: as the remote sent it, or through our TURN server.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Framing {
    Direct,
    /// In a TURN ChannelData message (RFC 8656 §12.4).
    Channel,
    /// In the DATA attribute of a TURN Data (or, sent, Send) indication.
    Indication,
}

/// A STUN binding message's class.
#[derive(Debug, PartialEq)]
enum Binding {
    Request,
    Success,
}

pub(super) const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];
pub(super) const STUN_HEADER: usize = 20;
const ATTR_USERNAME: u16 = 0x0006;
const ATTR_DATA: u16 = 0x0013;
const ATTR_USE_CANDIDATE: u16 = 0x0025;
/// What a held-back nomination's USE-CANDIDATE becomes: a comprehension-optional attribute
/// (RFC 8489 §14: ≥ 0x8000) no agent knows, of the same length (none), so the check keeps its
/// length and the engine reads it as a plain check.
const ATTR_NOMINATION_HELD: u16 = 0xC0DE;
const ATTR_FINGERPRINT: u16 = 0x8028;

/// Where in `datagram` the remote's (or, sent, our) datagram is: inside a TURN ChannelData
/// message (RFC 7983: first byte 64–79) or a Data or Send indication, or the whole of it.
fn turn_payload(datagram: &[u8]) -> (Framing, Range<usize>) {
    if let [64..=79, _, high, low, ..] = datagram {
        let len = usize::from(u16::from_be_bytes([*high, *low]));
        if 4 + len <= datagram.len() {
            return (Framing::Channel, 4..4 + len);
        }
        return (Framing::Direct, 0..datagram.len());
    }
    // Send indication 0x0016, Data indication 0x0017.
    if datagram.len() >= STUN_HEADER
        && matches!(datagram[..2], [0x00, 0x16] | [0x00, 0x17])
        && datagram[4..8] == MAGIC_COOKIE
    {
        if let Some(data) = stun_attribute(datagram, ATTR_DATA) {
            return (Framing::Indication, data);
        }
    }
    (Framing::Direct, 0..datagram.len())
}

/// The class and transaction ID of a STUN binding request or success response.
fn binding_message(message: &[u8]) -> Option<(Binding, [u8; 12])> {
    if message.len() < STUN_HEADER || message[4..8] != MAGIC_COOKIE {
        return None;
    }
    let binding = match message[..2] {
        [0x00, 0x01] => Binding::Request,
        [0x01, 0x01] => Binding::Success,
        _ => return None,
    };
    let mut transaction = [0; 12];
    transaction.copy_from_slice(&message[8..STUN_HEADER]);
    Some((binding, transaction))
}

/// Where the value of a STUN message's first attribute of type `wanted` is.
fn stun_attribute(message: &[u8], wanted: u16) -> Option<Range<usize>> {
    let declared = usize::from(u16::from_be_bytes([*message.get(2)?, *message.get(3)?]));
    let end = (STUN_HEADER + declared).min(message.len());
    let mut at = STUN_HEADER;
    while at + 4 <= end {
        let typ = u16::from_be_bytes([message[at], message[at + 1]]);
        let len = usize::from(u16::from_be_bytes([message[at + 2], message[at + 3]]));
        let value = at + 4..at + 4 + len;
        if value.end > end {
            return None;
        }
        if typ == wanted {
            return Some(value);
        }
        at = value.start + len.div_ceil(4) * 4;
    }
    None
}

/// `datagram` with the message at `payload` replaced by `check` (of the same length: `None`
/// otherwise); a Data indication's FINGERPRINT, if it has one, computed again.
fn rewrapped(
    datagram: &[u8],
    framing: Framing,
    payload: Range<usize>,
    check: &[u8],
) -> Option<Vec<u8>> {
    if payload.len() != check.len() {
        return None;
    }
    let mut wrapped = datagram.to_vec();
    wrapped[payload].copy_from_slice(check);
    if framing == Framing::Indication {
        if let Some(value) = stun_attribute(&wrapped, ATTR_FINGERPRINT) {
            let header = value.start - 4;
            let print = rtc::stun::fingerprint::fingerprint_value(&wrapped[..header]);
            wrapped[value.start..value.start + 4].copy_from_slice(&print.to_be_bytes());
        }
    }
    Some(wrapped)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A binding request as an ICE agent sends it: `username`, ICE-CONTROLLING, integrity keyed
    /// with `pwd`, fingerprint.
    fn binding_request(username: &str, pwd: &str) -> Vec<u8> {
        use rtc::ice::attributes::control::AttrControlling;
        use rtc::stun::attributes::ATTR_USERNAME;
        use rtc::stun::fingerprint::FINGERPRINT;
        use rtc::stun::integrity::MessageIntegrity;
        use rtc::stun::message::{Message, Setter, TransactionId, BINDING_REQUEST};
        use rtc::stun::textattrs::Username;
        let provider = rtc::crypto::default_provider().expect("a crypto provider");
        let mut message = Message::new();
        let setters: Vec<Box<dyn Setter>> = vec![
            Box::new(BINDING_REQUEST),
            Box::new(TransactionId::new()),
            Box::new(Username::new(ATTR_USERNAME, username.to_string())),
            Box::new(AttrControlling(u64::MAX)),
            Box::new(MessageIntegrity::new_short_term_integrity_with_provider(
                pwd.to_string(),
                provider.crypto(),
            )),
            Box::new(FINGERPRINT),
        ];
        message.build(&setters).expect("a request");
        message.raw
    }

    const REMOTE: SocketAddr = SocketAddr::new(
        std::net::IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, 12)),
        40000,
    );
    const LOCAL: SocketAddr = SocketAddr::new(
        std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 1, 0, 2)),
        50000,
    );
    const LONGEST: Duration = Duration::from_millis(700);

    const GATE_PWD: &str = "0123456789abcdefghijklmnop";

    fn gate(offerer: bool) -> CheckGate {
        let gate = CheckGate::new(offerer, LONGEST, true);
        gate.admit(&format!(
            "v=0\r\na=ice-ufrag:Ab1z\r\na=ice-pwd:{GATE_PWD}\r\na=fingerprint:sha-256 00\r\n"
        ));
        gate
    }

    /// [`gate`], against a remote that paces its checks (libwebrtc).
    fn gate_against_a_pacing_remote(offerer: bool) -> CheckGate {
        let gate = CheckGate::new(offerer, LONGEST, false);
        gate.admit(&format!("a=ice-ufrag:Ab1z\r\na=ice-pwd:{GATE_PWD}\r\n"));
        gate
    }

    #[test]
    fn the_check_gate_passes_only_checks_for_our_credentials() {
        let ours = binding_request("Ab1z:remote", GATE_PWD);
        let other_ufrag = binding_request("Xy9w:remote", GATE_PWD);
        let other_pwd = binding_request("Ab1z:remote", "not-our-password-at-all");
        let ufrag_prefix = binding_request("Ab1zz:remote", GATE_PWD);
        // Before the local description, nothing is known: everything passes.
        assert_eq!(
            CheckGate::new(false, LONGEST, true).inspect(
                LOCAL,
                &other_ufrag,
                REMOTE,
                Instant::now()
            ),
            CheckVerdict::Pass
        );
        let gate = gate(false);
        assert_eq!(
            gate.inspect(LOCAL, &ours, REMOTE, Instant::now()),
            CheckVerdict::Pass
        );
        assert_eq!(
            gate.inspect(LOCAL, &other_ufrag, REMOTE, Instant::now()),
            CheckVerdict::Drop,
            "another ufrag"
        );
        assert_eq!(
            gate.inspect(LOCAL, &other_pwd, REMOTE, Instant::now()),
            CheckVerdict::Drop,
            "integrity keyed with another password"
        );
        assert_eq!(
            gate.inspect(LOCAL, &ufrag_prefix, REMOTE, Instant::now()),
            CheckVerdict::Drop,
            "a ufrag that only starts with ours"
        );
        let mut truncated = ours.clone();
        truncated.truncate(30);
        assert_eq!(
            gate.inspect(LOCAL, &truncated, REMOTE, Instant::now()),
            CheckVerdict::Drop,
            "a broken request"
        );
        // Not binding requests: DTLS, SCTP, a STUN success response (type 0x0101).
        assert_eq!(
            gate.inspect(LOCAL, &[22, 254, 253, 0, 0], REMOTE, Instant::now()),
            CheckVerdict::Pass
        );
        let mut response = ours;
        response[..2].copy_from_slice(&[0x01, 0x01]);
        assert_eq!(
            gate.inspect(LOCAL, &response, REMOTE, Instant::now()),
            CheckVerdict::Pass
        );
    }

    #[test]
    fn the_offerers_gate_takes_the_tie_breaker_from_a_genuine_check_claiming_control() {
        use rtc::ice::attributes::control::AttrControlling;
        use rtc::stun::integrity::MessageIntegrity;
        use rtc::stun::message::{Getter, Message};
        let ours = binding_request("Ab1z:remote", GATE_PWD);
        let CheckVerdict::Rewrite(yielded) =
            gate(true).inspect(LOCAL, &ours, REMOTE, Instant::now())
        else {
            panic!("the offerer's gate passed a check claiming control as it came");
        };
        assert_eq!(yielded.len(), ours.len());
        let mut message = Message::new();
        message.raw = yielded;
        message.decode().expect("a STUN message");
        let mut tie_breaker = AttrControlling(1);
        tie_breaker.get_from(&message).expect("ICE-CONTROLLING");
        assert_eq!(tie_breaker.0, 0);
        let provider = rtc::crypto::default_provider().expect("a crypto provider");
        MessageIntegrity::check(&mut message, GATE_PWD.as_bytes(), provider.crypto())
            .expect("signed again with our password");
        rtc::stun::fingerprint::FINGERPRINT
            .check(&message)
            .expect("a fingerprint that matches");
        // Idempotent: a check whose tie-breaker is already 0 comes out the same.
        assert_eq!(
            gate(true).inspect(LOCAL, &message.raw, REMOTE, Instant::now()),
            CheckVerdict::Rewrite(message.raw.clone())
        );
        // An answerer's gate leaves it alone.
        assert_eq!(
            gate(false).inspect(LOCAL, &ours, REMOTE, Instant::now()),
            CheckVerdict::Pass
        );
    }

    #[test]
    fn candidate_addresses_are_read() {
        let host = "candidate:3831815203 1 udp 2130706431 127.0.0.1 50886 typ host";
        assert_eq!(
            candidate_ip(host),
            Some(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST))
        );
        let srflx = "a=candidate:1 1 udp 1694498815 198.51.100.11 50886 typ srflx raddr 10.1.0.2 rport 50886";
        assert_eq!(candidate_ip(srflx), "198.51.100.11".parse().ok());
        assert_eq!(
            candidate_ip("candidate:1 1 udp 1 6a1f0c.local 50886 typ host"),
            None
        );
        assert_eq!(candidate_ip(""), None);
    }

    #[test]
    fn checks_relayed_in_channel_data_are_inspected_inside_it() {
        let channel_data = |inner: &[u8]| {
            let mut wrapped = vec![0x40, 0x01];
            wrapped.extend_from_slice(&(inner.len() as u16).to_be_bytes());
            wrapped.extend_from_slice(inner);
            wrapped.extend_from_slice(&[0; 3]); // padding, as over UDP it may come
            wrapped
        };
        let ours = channel_data(&binding_request("Ab1z:remote", GATE_PWD));
        let stranger = channel_data(&binding_request("Xy9w:remote", GATE_PWD));
        assert_eq!(
            gate(false).inspect(LOCAL, &ours, REMOTE, Instant::now()),
            CheckVerdict::Pass
        );
        assert_eq!(
            gate(false).inspect(LOCAL, &stranger, REMOTE, Instant::now()),
            CheckVerdict::Drop
        );
        let CheckVerdict::Rewrite(yielded) =
            gate(true).inspect(LOCAL, &ours, REMOTE, Instant::now())
        else {
            panic!("the offerer's gate passed a relayed check claiming control as it came");
        };
        assert_eq!(yielded.len(), ours.len());
        assert_eq!(yielded[..4], ours[..4], "the ChannelData header is kept");
        assert_eq!(
            gate(true).inspect(
                LOCAL,
                &yielded[4..yielded.len() - 3],
                REMOTE,
                Instant::now()
            ),
            CheckVerdict::Rewrite(yielded[4..yielded.len() - 3].to_vec()),
            "the inner check is the rewritten one"
        );
        // DTLS or SCTP inside ChannelData, and a header longer than the datagram, pass.
        assert_eq!(
            gate(true).inspect(
                LOCAL,
                &channel_data(&[22, 254, 253]),
                REMOTE,
                Instant::now()
            ),
            CheckVerdict::Pass
        );
        assert_eq!(
            gate(true).inspect(LOCAL, &[0x40, 0x01, 0x00, 0x30, 1], REMOTE, Instant::now()),
            CheckVerdict::Pass
        );
    }

    /// `inner` in a ChannelData message, padded as over UDP it may come.
    fn channel_data(inner: &[u8]) -> Vec<u8> {
        let mut wrapped = vec![0x40, 0x01];
        wrapped.extend_from_slice(&(inner.len() as u16).to_be_bytes());
        wrapped.extend_from_slice(inner);
        wrapped.extend_from_slice(&[0; 3]);
        wrapped
    }

    /// `inner` in a TURN Data indication, with a FINGERPRINT when `fingerprinted`.
    fn data_indication(inner: &[u8], fingerprinted: bool) -> Vec<u8> {
        let mut message = vec![0x00, 0x17, 0, 0, 0x21, 0x12, 0xA4, 0x42];
        message.extend_from_slice(&[7; 12]);
        message.extend_from_slice(&[0x00, 0x12, 0x00, 0x08, 0x00, 0x01, 0x9c, 0x40, 1, 2, 3, 4]);
        message.extend_from_slice(&[0x00, 0x13]);
        message.extend_from_slice(&(inner.len() as u16).to_be_bytes());
        message.extend_from_slice(inner);
        message.resize(message.len().next_multiple_of(4), 0);
        let mut length = message.len() - STUN_HEADER + if fingerprinted { 8 } else { 0 };
        message[2..4].copy_from_slice(&(length as u16).to_be_bytes());
        if fingerprinted {
            let print = rtc::stun::fingerprint::fingerprint_value(&message);
            message.extend_from_slice(&[0x80, 0x28, 0x00, 0x04]);
            message.extend_from_slice(&print.to_be_bytes());
            length = message.len() - STUN_HEADER;
            assert_eq!(u16::from_be_bytes([message[2], message[3]]), length as u16);
        }
        message
    }

    /// A binding success response to the request `request`.
    fn success_to(request: &[u8]) -> Vec<u8> {
        let mut response = vec![0x01, 0x01, 0, 0];
        response.extend_from_slice(&request[4..20]);
        response
    }

    #[test]
    fn checks_relayed_in_data_indications_are_inspected_inside_them() {
        let ours = binding_request("Ab1z:remote", GATE_PWD);
        let stranger = binding_request("Xy9w:remote", GATE_PWD);
        for fingerprinted in [false, true] {
            let wrapped = data_indication(&ours, fingerprinted);
            assert_eq!(
                gate(false).inspect(LOCAL, &wrapped, REMOTE, Instant::now()),
                CheckVerdict::Pass
            );
            assert_eq!(
                gate(false).inspect(
                    LOCAL,
                    &data_indication(&stranger, fingerprinted),
                    REMOTE,
                    Instant::now()
                ),
                CheckVerdict::Drop
            );
            let CheckVerdict::Rewrite(yielded) =
                gate(true).inspect(LOCAL, &wrapped, REMOTE, Instant::now())
            else {
                panic!("the offerer's gate passed a relayed check claiming control as it came");
            };
            assert_eq!(yielded.len(), wrapped.len());
            let (framing, payload) = turn_payload(&yielded);
            assert_eq!(framing, Framing::Indication);
            assert_eq!(
                gate(true).inspect(LOCAL, &yielded[payload.clone()], REMOTE, Instant::now()),
                CheckVerdict::Rewrite(yielded[payload].to_vec()),
                "the inner check is the rewritten one"
            );
            let mut message = rtc::stun::message::Message::new();
            message.raw = yielded;
            message.decode().expect("still a STUN message");
            if fingerprinted {
                rtc::stun::fingerprint::FINGERPRINT
                    .check(&message)
                    .expect("the indication's fingerprint computed again");
            }
        }
    }

    /// A gate that saw our first check at `start` and timed one relayed round trip of `rtt`.
    fn offerer_after_a_relayed_round_trip(start: Instant, rtt: Duration) -> CheckGate {
        let gate = gate(true);
        let check = binding_request("remote:Ab1z", "their-password-their-password");
        gate.observe_sent(LOCAL, REMOTE, &check, start);
        let relayed = binding_request("remote:Ab1z", "their-password-their-password");
        gate.observe_sent(LOCAL, REMOTE, &channel_data(&relayed), start);
        assert_eq!(
            gate.inspect(
                LOCAL,
                &channel_data(&success_to(&relayed)),
                RELAY_SERVER,
                start + rtt
            ),
            CheckVerdict::Withhold,
            "a relay pair's response at once"
        );
        gate
    }

    const RELAY_SERVER: SocketAddr = SocketAddr::new(
        std::net::IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, 2)),
        3478,
    );

    #[test]
    fn the_offerer_holds_relay_pairs_back_until_the_remote_checks_only_through_relays() {
        let start = Instant::now();
        let ms = Duration::from_millis;
        let gate = offerer_after_a_relayed_round_trip(start, ms(2));
        // A direct pair's response passes; so does the STUN server's answer to gathering.
        let direct = binding_request("remote:Ab1z", "their-password-their-password");
        gate.observe_sent(LOCAL, REMOTE, &direct, start);
        assert_eq!(
            gate.inspect(LOCAL, &success_to(&direct), REMOTE, start + ms(3)),
            CheckVerdict::Pass
        );
        // The remote's relay candidate: what comes from it is relayed too.
        let remote_relay = SocketAddr::new(RELAY_SERVER.ip(), 51624);
        gate.note_remote_description(
            "v=0\r\na=candidate:750890486 1 udp 41885439 198.51.100.2 51624 typ relay raddr 198.51.100.12 rport 18624 generation 0\r\n",
        );
        let unanswered = binding_request("remote:Ab1z", "their-password-their-password");
        assert_eq!(
            gate.inspect(LOCAL, &success_to(&unanswered), remote_relay, start + ms(5)),
            CheckVerdict::Withhold
        );
        // The remote's first check comes through our relay at 10 ms; our direct checks get a
        // grace of two of the longest round trips, but at least LEAST_GRACE (20 ms).
        let theirs = binding_request("Ab1z:remote", GATE_PWD);
        assert!(matches!(
            gate.inspect(LOCAL, &channel_data(&theirs), RELAY_SERVER, start + ms(10)),
            CheckVerdict::Rewrite(_)
        ));
        assert_eq!(
            gate.inspect(
                LOCAL,
                &channel_data(&success_to(&unanswered)),
                RELAY_SERVER,
                start + ms(29)
            ),
            CheckVerdict::Withhold
        );
        assert_eq!(
            gate.inspect(
                LOCAL,
                &success_to(&unanswered),
                remote_relay,
                start + ms(30)
            ),
            CheckVerdict::Pass
        );
        // Released for good.
        assert_eq!(
            gate.inspect(
                LOCAL,
                &channel_data(&success_to(&unanswered)),
                RELAY_SERVER,
                start + ms(31)
            ),
            CheckVerdict::Pass
        );
    }

    /// `response` (a relay pair's) is held back until just before `release`, and passes then.
    fn assert_held_until(gate: &CheckGate, response: &[u8], release: Instant) {
        let before = release - Duration::from_millis(1);
        assert_eq!(
            gate.inspect(LOCAL, response, RELAY_SERVER, before),
            CheckVerdict::Withhold
        );
        assert_eq!(
            gate.inspect(LOCAL, response, RELAY_SERVER, release),
            CheckVerdict::Pass
        );
    }

    #[test]
    fn after_a_direct_check_the_relay_waits_the_longest() {
        let start = Instant::now();
        let ms = Duration::from_millis;
        let gate = offerer_after_a_relayed_round_trip(start, ms(2));
        let theirs = binding_request("Ab1z:remote", GATE_PWD);
        let _ = gate.inspect(LOCAL, &theirs, REMOTE, start + ms(8));
        let _ = gate.inspect(LOCAL, &channel_data(&theirs), RELAY_SERVER, start + ms(10));
        let response = channel_data(&success_to(&theirs));
        assert_held_until(&gate, &response, start + LONGEST);
    }

    #[test]
    fn against_a_remote_that_paces_its_checks_the_relay_waits_the_longest() {
        let start = Instant::now();
        let ms = Duration::from_millis;
        let gate = gate_against_a_pacing_remote(true);
        let relayed = binding_request("remote:Ab1z", "their-password-their-password");
        gate.observe_sent(LOCAL, RELAY_SERVER, &channel_data(&relayed), start);
        let theirs = binding_request("Ab1z:remote", GATE_PWD);
        let _ = gate.inspect(LOCAL, &channel_data(&theirs), RELAY_SERVER, start + ms(10));
        let response = channel_data(&success_to(&relayed));
        assert_held_until(&gate, &response, start + LONGEST);
    }

    /// A gate against a remote that paces its checks (libwebrtc), told of our
    /// server-reflexive `candidates`, that checked the remote's direct addresses `REMOTE` at
    /// `start` and `OTHER` 30 ms later, and timed a relayed round trip of 2 ms.
    fn offerer_with_own_candidates(start: Instant, candidates: &[&str]) -> CheckGate {
        let ms = Duration::from_millis;
        let gate = gate_against_a_pacing_remote(true);
        for candidate in candidates {
            gate.note_local_candidate(candidate);
        }
        let check = || binding_request("remote:Ab1z", "their-password-their-password");
        gate.observe_sent(LOCAL, REMOTE, &check(), start);
        let relayed = check();
        gate.observe_sent(LOCAL, RELAY_SERVER, &channel_data(&relayed), start);
        assert_eq!(
            gate.inspect(
                LOCAL,
                &channel_data(&success_to(&relayed)),
                RELAY_SERVER,
                start + ms(2)
            ),
            CheckVerdict::Withhold
        );
        let other = SocketAddr::new(REMOTE.ip(), REMOTE.port() + 1);
        gate.observe_sent(LOCAL, other, &check(), start + ms(30));
        gate
    }

    /// Our socket 10.1.0.2:50886 as two STUN servers saw it, at one address, and another of our
    /// sockets elsewhere (and a host candidate): a NAT that keeps one mapping per socket.
    const ONE_MAPPING_PER_SOCKET: [&str; 4] = [
        "candidate:1 1 udp 1694498815 198.51.100.11 50886 typ srflx raddr 10.1.0.2 rport 50886",
        "a=candidate:2 1 udp 1694498815 198.51.100.11 50886 typ srflx raddr 10.1.0.2 rport 50886",
        "candidate:3 1 udp 1694498815 198.51.100.11 40112 typ srflx raddr 10.1.0.2 rport 40112",
        "candidate:4 1 udp 2130706431 10.1.0.2 50886 typ host",
    ];
    /// The same socket seen at another port by a second STUN server.
    const ANOTHER_MAPPING: &str =
        "candidate:5 1 udp 1694498815 198.51.100.11 61234 typ srflx raddr 10.1.0.2 rport 50886";

    #[test]
    fn once_our_nat_maps_per_destination_the_relay_waits_only_for_our_direct_checks() {
        let start = Instant::now();
        let ms = Duration::from_millis;
        let response = || channel_data(&success_to(&binding_request("x:y", "z")));
        // One mapping per socket: against a pacing remote the relay waits the longest.
        let gate = offerer_with_own_candidates(start, &ONE_MAPPING_PER_SOCKET);
        assert_held_until(&gate, &response(), start + LONGEST);
        // Two mappings for one socket: until our last new direct target's first check (30 ms)
        // is older than the grace (two of the 2 ms round trips, but at least 20 ms).
        let mut varying = ONE_MAPPING_PER_SOCKET.to_vec();
        varying.push(ANOTHER_MAPPING);
        let gate = offerer_with_own_candidates(start, &varying);
        assert_held_until(&gate, &response(), start + ms(50));
        // Learnt after the checks started, it counts from then on.
        let gate = offerer_with_own_candidates(start, &ONE_MAPPING_PER_SOCKET);
        assert_eq!(
            gate.inspect(LOCAL, &response(), RELAY_SERVER, start + ms(60)),
            CheckVerdict::Withhold
        );
        gate.note_local_candidate(ANOTHER_MAPPING);
        assert_eq!(
            gate.inspect(LOCAL, &response(), RELAY_SERVER, start + ms(61)),
            CheckVerdict::Pass
        );
    }

    #[test]
    fn when_our_nat_maps_per_destination_a_direct_check_still_makes_the_relay_wait_the_longest() {
        let start = Instant::now();
        let mut varying = ONE_MAPPING_PER_SOCKET.to_vec();
        varying.push(ANOTHER_MAPPING);
        let gate = offerer_with_own_candidates(start, &varying);
        let theirs = binding_request("Ab1z:remote", GATE_PWD);
        let _ = gate.inspect(LOCAL, &theirs, REMOTE, start + Duration::from_millis(8));
        let response = channel_data(&success_to(&theirs));
        assert_held_until(&gate, &response, start + LONGEST);
    }

    #[test]
    fn server_reflexive_candidates_are_read_as_mapping_and_base() {
        let address = |text: &str| text.parse::<SocketAddr>().unwrap();
        assert_eq!(
            server_reflexive_mapping(
                "a=candidate:1 1 udp 1694498815 198.51.100.11 61234 typ srflx raddr 10.1.0.2 rport 50886 generation 0"
            ),
            Some((address("198.51.100.11:61234"), address("10.1.0.2:50886")))
        );
        for other in [
            "candidate:4 1 udp 2130706431 10.1.0.2 50886 typ host",
            "candidate:5 1 udp 41885439 198.51.100.2 51624 typ relay raddr 198.51.100.12 rport 18624",
            "candidate:6 1 udp 1694498815 198.51.100.11 61234 typ srflx",
            "candidate:7 1 udp 1694498815 x.local 61234 typ srflx raddr 10.1.0.2 rport 50886",
        ] {
            assert_eq!(server_reflexive_mapping(other), None, "{other}");
        }
    }

    #[test]
    fn the_grace_grows_with_the_round_trip() {
        let start = Instant::now();
        let ms = Duration::from_millis;
        let gate = offerer_after_a_relayed_round_trip(start, ms(80));
        let theirs = binding_request("Ab1z:remote", GATE_PWD);
        let _ = gate.inspect(LOCAL, &channel_data(&theirs), RELAY_SERVER, start + ms(100));
        let response = channel_data(&success_to(&theirs));
        assert_held_until(&gate, &response, start + ms(260));
    }

    #[test]
    fn an_answerer_holds_nothing_back() {
        let gate = gate(false);
        let relayed = binding_request("remote:Ab1z", "their-password-their-password");
        gate.observe_sent(LOCAL, REMOTE, &channel_data(&relayed), Instant::now());
        assert_eq!(
            gate.inspect(
                LOCAL,
                &channel_data(&success_to(&relayed)),
                RELAY_SERVER,
                Instant::now()
            ),
            CheckVerdict::Pass
        );
    }

    /// The check inside `wrapped` (ChannelData, see [`channel_data`]), decoded.
    fn check_in_channel_data(wrapped: &[u8]) -> rtc::stun::message::Message {
        let len = usize::from(u16::from_be_bytes([wrapped[2], wrapped[3]]));
        let mut message = rtc::stun::message::Message::new();
        message.raw = wrapped[4..4 + len].to_vec();
        message.decode().expect("a STUN message");
        message
    }

    #[test]
    fn the_answerer_keeps_a_relay_nomination_from_the_engine_while_a_direct_pair_may_work() {
        use rtc::stun::attributes::ATTR_USE_CANDIDATE;
        let start = Instant::now();
        let ms = Duration::from_millis;
        let gate = gate_against_a_pacing_remote(false);
        let ours = || binding_request("remote:Ab1z", "their-password-their-password");
        let first = ours();
        gate.observe_sent(LOCAL, RELAY_SERVER, &channel_data(&first), start);
        // The remote nominates the pair through our relay: the engine gets a plain check, of
        // the same length, signed again with our password.
        let nominating = channel_data(&nomination("Ab1z:remote", GATE_PWD));
        let CheckVerdict::Rewrite(plain) =
            gate.inspect(LOCAL, &nominating, RELAY_SERVER, start + ms(50))
        else {
            panic!("a relay pair's nomination went to the engine as it came");
        };
        assert_eq!(plain.len(), nominating.len());
        let mut message = check_in_channel_data(&plain);
        assert!(!message.contains(ATTR_USE_CANDIDATE), "still nominating");
        let provider = rtc::crypto::default_provider().expect("a crypto provider");
        rtc::stun::integrity::MessageIntegrity::check(
            &mut message,
            GATE_PWD.as_bytes(),
            provider.crypto(),
        )
        .expect("signed again with our password");
        rtc::stun::fingerprint::FINGERPRINT
            .check(&message)
            .expect("a fingerprint that matches");
        // Our check's answer through the relay passes, and nothing comes back yet.
        assert_eq!(
            gate.inspect(
                LOCAL,
                &channel_data(&success_to(&first)),
                RELAY_SERVER,
                start + ms(60)
            ),
            CheckVerdict::Pass
        );
        // A direct nomination goes to the engine as it came.
        let direct = nomination("Ab1z:remote", GATE_PWD);
        assert_eq!(
            gate.inspect(LOCAL, &direct, REMOTE, start + ms(70)),
            CheckVerdict::Pass
        );
        // Once the longest wait is over, the next answer from there brings the nomination back,
        // as the remote sent it; once.
        for (at, expected) in [
            (LONGEST - ms(1), CheckVerdict::Pass),
            (LONGEST, CheckVerdict::PassAndReplay(nominating.clone())),
            (LONGEST + ms(1), CheckVerdict::Pass),
        ] {
            let check = ours();
            gate.observe_sent(
                LOCAL,
                RELAY_SERVER,
                &channel_data(&check),
                start + at - ms(1),
            );
            assert_eq!(
                gate.inspect(
                    LOCAL,
                    &channel_data(&success_to(&check)),
                    RELAY_SERVER,
                    start + at
                ),
                expected,
                "{at:?}"
            );
        }
    }

    #[test]
    fn against_a_peer_of_ours_the_answerer_passes_relay_nominations() {
        let nominating = channel_data(&nomination("Ab1z:remote", GATE_PWD));
        let gate = gate(false);
        let ours = binding_request("remote:Ab1z", "their-password-their-password");
        gate.observe_sent(LOCAL, RELAY_SERVER, &channel_data(&ours), Instant::now());
        assert_eq!(
            gate.inspect(LOCAL, &nominating, RELAY_SERVER, Instant::now()),
            CheckVerdict::Pass
        );
    }

    #[test]
    fn once_the_remotes_nat_maps_per_destination_the_answerer_waits_only_for_our_direct_checks() {
        let start = Instant::now();
        let ms = Duration::from_millis;
        let gate = gate_against_a_pacing_remote(false);
        // A browser's two server-reflexive candidates (it hides their base) at two ports.
        gate.note_remote_description(
            "v=0\r\na=candidate:1 1 udp 1685987071 198.51.100.12 40001 typ srflx raddr 0.0.0.0 rport 0\r\na=candidate:2 1 udp 1685987071 198.51.100.12 40002 typ srflx raddr 0.0.0.0 rport 0\r\n",
        );
        let ours = || binding_request("remote:Ab1z", "their-password-their-password");
        let relayed = ours();
        gate.observe_sent(LOCAL, RELAY_SERVER, &channel_data(&relayed), start);
        gate.observe_sent(LOCAL, REMOTE, &ours(), start + ms(5));
        let nominating = channel_data(&nomination("Ab1z:remote", GATE_PWD));
        assert!(matches!(
            gate.inspect(LOCAL, &nominating, RELAY_SERVER, start + ms(10)),
            CheckVerdict::Rewrite(_)
        ));
        // A 2 ms round trip: the grace is 20 ms after our direct check.
        assert_eq!(
            gate.inspect(
                LOCAL,
                &channel_data(&success_to(&relayed)),
                RELAY_SERVER,
                start + ms(2)
            ),
            CheckVerdict::Pass
        );
        let check = ours();
        gate.observe_sent(LOCAL, RELAY_SERVER, &channel_data(&check), start + ms(24));
        assert_eq!(
            gate.inspect(
                LOCAL,
                &channel_data(&success_to(&check)),
                RELAY_SERVER,
                start + ms(25)
            ),
            CheckVerdict::PassAndReplay(nominating)
        );
    }

    /// A check as a controlling agent nominates with it: USE-CANDIDATE added to
    /// [`binding_request`]'s attributes.
    fn nomination(username: &str, pwd: &str) -> Vec<u8> {
        use rtc::stun::attributes::ATTR_USE_CANDIDATE;
        use rtc::stun::message::{Message, Setter};
        let mut check = Message::new();
        check.raw = binding_request(username, pwd);
        check.decode().expect("a STUN message");
        let mut nominating = Message::new();
        nominating.typ = check.typ;
        nominating.transaction_id = check.transaction_id;
        nominating.write_header();
        for attribute in &check.attributes.0 {
            if attribute.typ != rtc::stun::attributes::ATTR_MESSAGE_INTEGRITY
                && attribute.typ != rtc::stun::attributes::ATTR_FINGERPRINT
            {
                nominating.add(attribute.typ, &attribute.value);
            }
        }
        nominating.add(ATTR_USE_CANDIDATE, &[]);
        let provider = rtc::crypto::default_provider().expect("a crypto provider");
        rtc::stun::integrity::MessageIntegrity::new_short_term_integrity_with_provider(
            pwd.to_string(),
            provider.crypto(),
        )
        .add_to(&mut nominating)
        .and_then(|()| rtc::stun::fingerprint::FINGERPRINT.add_to(&mut nominating))
        .expect("signed");
        nominating.raw
    }

    #[test]
    fn datagrams_for_a_relay_are_told_apart() {
        let gate = CheckGate::new(true, LONGEST, false);
        let relay: SocketAddr = "198.51.100.7:49152".parse().expect("address");
        let other: SocketAddr = "198.51.100.7:49153".parse().expect("address");
        let dtls = [22u8, 0xfe, 0xfd, 0, 0];
        assert!(!gate.goes_through_a_relay(relay, &dtls), "not yet a relay");
        gate.note_remote_candidate(&format!(
            "candidate:1 1 udp 16777215 {} {} typ relay raddr 0.0.0.0 rport 0",
            relay.ip(),
            relay.port()
        ));
        assert!(
            gate.goes_through_a_relay(relay, &dtls),
            "to the remote's relay"
        );
        assert!(!gate.goes_through_a_relay(other, &dtls), "another port");
        let mut channel_data = vec![0x40, 0x00, 0x00, 0x05];
        channel_data.extend_from_slice(&dtls);
        assert!(
            gate.goes_through_a_relay(other, &channel_data),
            "through our allocation"
        );
    }

    #[test]
    fn a_nomination_before_our_check_succeeded_is_replayed_after_it() {
        let now = Instant::now();
        let gate = gate(false);
        let nominating = nomination("Ab1z:remote", GATE_PWD);
        assert_eq!(
            gate.inspect(LOCAL, &nominating, REMOTE, now),
            CheckVerdict::Pass
        );
        // Our triggered check of the pair, and its answer: the nomination comes again after it.
        let ours = binding_request("remote:Ab1z", "their-password-their-password");
        gate.observe_sent(LOCAL, REMOTE, &ours, now);
        assert_eq!(
            gate.inspect(LOCAL, &success_to(&ours), REMOTE, now),
            CheckVerdict::PassAndReplay(nominating.clone())
        );
        // Once.
        let again = binding_request("remote:Ab1z", "their-password-their-password");
        gate.observe_sent(LOCAL, REMOTE, &again, now);
        assert_eq!(
            gate.inspect(LOCAL, &success_to(&again), REMOTE, now),
            CheckVerdict::Pass
        );
    }

    #[test]
    fn only_a_nomination_on_the_pair_that_worked_is_replayed_and_not_for_long() {
        let now = Instant::now();
        let ours = || binding_request("remote:Ab1z", "their-password-their-password");
        let elsewhere = SocketAddr::new(LOCAL.ip(), LOCAL.port() + 1);
        let other_remote = SocketAddr::new(REMOTE.ip(), REMOTE.port() + 1);
        let answerer = gate(false);
        // A plain check (no USE-CANDIDATE) is not kept.
        let plain = binding_request("Ab1z:remote", GATE_PWD);
        assert_eq!(
            answerer.inspect(LOCAL, &plain, REMOTE, now),
            CheckVerdict::Pass
        );
        let check = ours();
        answerer.observe_sent(LOCAL, REMOTE, &check, now);
        assert_eq!(
            answerer.inspect(LOCAL, &success_to(&check), REMOTE, now),
            CheckVerdict::Pass
        );
        // A nomination for our socket from REMOTE: not replayed after a success on another
        // socket or from another address, nor once it is older than NOMINATION_KEPT_FOR.
        let nominating = nomination("Ab1z:remote", GATE_PWD);
        let _ = answerer.inspect(LOCAL, &nominating, REMOTE, now);
        for (socket, remote) in [(elsewhere, REMOTE), (LOCAL, other_remote)] {
            let check = ours();
            answerer.observe_sent(socket, remote, &check, now);
            assert_eq!(
                answerer.inspect(socket, &success_to(&check), remote, now),
                CheckVerdict::Pass,
                "{socket} {remote}"
            );
        }
        let check = ours();
        answerer.observe_sent(LOCAL, REMOTE, &check, now);
        assert_eq!(
            answerer.inspect(
                LOCAL,
                &success_to(&check),
                REMOTE,
                now + NOMINATION_KEPT_FOR
            ),
            CheckVerdict::Pass
        );
        // A nomination for other credentials is dropped, not kept; the offerer keeps none.
        let stranger = nomination("Xy9w:remote", GATE_PWD);
        assert_eq!(
            answerer.inspect(LOCAL, &stranger, REMOTE, now),
            CheckVerdict::Drop
        );
        let offerer = gate(true);
        let _ = offerer.inspect(LOCAL, &nominating, REMOTE, now);
        let check = ours();
        offerer.observe_sent(LOCAL, REMOTE, &check, now);
        assert_eq!(
            offerer.inspect(LOCAL, &success_to(&check), REMOTE, now),
            CheckVerdict::Pass
        );
    }
}
