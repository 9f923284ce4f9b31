//! The engine's runtime and UDP sockets as a peer wraps them: bigger kernel buffers, every
//! received datagram past the [`CheckGate`] first, and a [`ReadNudge`] that runs the engine's
//! read path when the peer asks. A part of `peer.rs`, the one file that touches the engine.

use std::future::Future;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex as StdMutex, PoisonError};
use std::task::Waker;
use std::time::{Duration, Instant};

use tracing::debug;
use webrtc::runtime::Runtime;

use super::check_gate::{CheckGate, CheckVerdict, MAGIC_COOKIE, STUN_HEADER};

/// The kernel buffer asked for on each UDP socket of a peer, both ways.
///
/// SCTP lets a sender have up to a 1 MiB window in flight; in datagrams of ~1.2 KB that is
/// about 900 packets, while Linux's default socket buffer (208 KiB, charged ~2.3 KiB per
/// datagram) holds about 90. The rest were dropped, and each loss cost a fast retransmit or a
/// 1 s retransmission timeout: loopback throughput swung between 2 and 25 MB/s. The kernel caps
/// the request at `net.core.rmem_max` / `wmem_max`, so raise those on hosts that move bulk data.
const SOCKET_BUFFER: usize = 4 * 1024 * 1024;

/// webrtc's Tokio runtime, except that every UDP socket it wraps gets [`SOCKET_BUFFER`], passes
/// its received datagrams through the connection's [`CheckGate`], answers its [`ReadNudge`],
/// and paces what it sends through a relay.
#[derive(Debug)]
pub(super) struct PeerRuntime {
    inner: Arc<dyn Runtime>,
    gate: Arc<CheckGate>,
    nudge: Arc<ReadNudge>,
    relay_pace: Option<NonZeroU32>,
}

impl PeerRuntime {
    /// The runtime, behind an `Arc` as the engine takes it, for a connection gated by `gate`
    /// and nudged by `nudge`, whose sockets send at most `relay_pace` datagrams a millisecond
    /// through a relay (unpaced if `None`, see [`RelayPacer`]); `None` outside a Tokio runtime.
    pub(super) fn shared(
        gate: Arc<CheckGate>,
        nudge: Arc<ReadNudge>,
        relay_pace: Option<NonZeroU32>,
    ) -> Option<Arc<dyn Runtime>> {
        let inner = webrtc::runtime::default_runtime()?;
        Some(Arc::new(PeerRuntime {
            inner,
            gate,
            nudge,
            relay_pace,
        }))
    }
}

impl Runtime for PeerRuntime {
    fn spawn(
        &self,
        future: Pin<Box<dyn Future<Output = ()> + Send>>,
    ) -> Box<dyn webrtc::runtime::JoinHandle> {
        self.inner.spawn(future)
    }

    fn spawn_reactor(
        &self,
        pool_size: usize,
        future: Pin<Box<dyn Future<Output = ()> + Send>>,
    ) -> Box<dyn webrtc::runtime::JoinHandle> {
        self.inner.spawn_reactor(pool_size, future)
    }

    fn wrap_udp_socket(
        &self,
        socket: std::net::UdpSocket,
    ) -> std::io::Result<Arc<dyn webrtc::runtime::AsyncUdpSocket>> {
        let sock = socket2::SockRef::from(&socket);
        for (what, result) in [
            ("receive", sock.set_recv_buffer_size(SOCKET_BUFFER)),
            ("send", sock.set_send_buffer_size(SOCKET_BUFFER)),
        ] {
            if let Err(error) = result {
                debug!(%error, what, "cannot enlarge a UDP socket buffer");
            }
        }
        let local = socket.local_addr()?;
        Ok(Arc::new(GatedUdpSocket {
            inner: self.inner.wrap_udp_socket(socket)?,
            gate: self.gate.clone(),
            nudge: self.nudge.clone(),
            relay_pacer: self.relay_pace.map(RelayPacer::new),
            local,
            replay: StdMutex::new(None),
        }))
    }

    fn wrap_tcp_listener(
        &self,
        listener: std::net::TcpListener,
    ) -> std::io::Result<Arc<dyn webrtc::runtime::AsyncTcpListener>> {
        self.inner.wrap_tcp_listener(listener)
    }

    fn connect_tcp<'a>(
        &'a self,
        remote_addr: SocketAddr,
    ) -> Pin<
        Box<
            dyn Future<Output = std::io::Result<Arc<dyn webrtc::runtime::AsyncTcpStream>>>
                + Send
                + 'a,
        >,
    > {
        self.inner.connect_tcp(remote_addr)
    }

    fn resolve_host<'a>(
        &'a self,
        host: &'a str,
    ) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<SocketAddr>>> + Send + 'a>> {
        self.inner.resolve_host(host)
    }

    fn now(&self) -> std::time::Instant {
        self.inner.now()
    }

    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        self.inner.sleep(duration)
    }

    fn interval(&self, period: Duration) -> Box<dyn webrtc::runtime::AsyncInterval> {
        self.inner.interval(period)
    }

    fn block_on(&self, future: Pin<Box<dyn Future<Output = ()> + '_>>) {
        self.inner.block_on(future)
    }
}

/// A UDP socket of the engine's whose received datagrams pass the [`CheckGate`] first.
#[derive(Debug)]
struct GatedUdpSocket {
    inner: Arc<dyn webrtc::runtime::AsyncUdpSocket>,
    gate: Arc<CheckGate>,
    nudge: Arc<ReadNudge>,
    relay_pacer: Option<RelayPacer>,
    /// The socket's address, as the gate tells sockets apart.
    local: SocketAddr,
    /// A nomination to replay, handed to the engine at its next read (after the response that
    /// made its pair work, which the engine has by then).
    replay: StdMutex<Option<(Vec<u8>, webrtc::runtime::RecvMeta)>>,
}

impl webrtc::runtime::AsyncUdpSocket for GatedUdpSocket {
    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn poll_send(
        &self,
        cx: &mut std::task::Context<'_>,
        transmit: &webrtc::runtime::Transmit<'_>,
    ) -> std::task::Poll<std::io::Result<usize>> {
        let pacer = self.relay_pacer.as_ref().filter(|_| {
            self.gate
                .goes_through_a_relay(transmit.destination, transmit.contents)
        });
        if pacer.is_some_and(|pacer| pacer.poll_ready(cx).is_pending()) {
            return std::task::Poll::Pending;
        }
        let sent = self.inner.poll_send(cx, transmit);
        if !matches!(sent, std::task::Poll::Ready(Ok(_))) {
            return sent; // not sent (yet): the engine asks again, and it is noted then
        }
        if transmit.segment_size.is_none() {
            self.gate.observe_sent(
                self.local,
                transmit.destination,
                transmit.contents,
                Instant::now(),
            );
        }
        if let Some(pacer) = pacer {
            // A batch (GSO) counts as its segments.
            let datagrams = transmit
                .segment_size
                .map_or(1, |size| transmit.contents.len().div_ceil(size.max(1)));
            pacer.spend(datagrams);
        }
        sent
    }

    fn poll_recv(
        &self,
        cx: &mut std::task::Context<'_>,
        bufs: &mut [std::io::IoSliceMut<'_>],
        meta: &mut [webrtc::runtime::RecvMeta],
    ) -> std::task::Poll<std::io::Result<usize>> {
        use std::task::Poll;
        // A flood of dropped checks must not keep the engine's task in this loop: after this
        // many reads that kept nothing, it yields and asks to be polled again.
        const DROPPED_READS_BEFORE_YIELDING: usize = 16;
        let replay = self
            .replay
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some((nomination, mut from)) = replay {
            if let (Some(buf), Some(slot)) = (bufs.first_mut(), meta.first_mut()) {
                if buf.len() >= nomination.len() {
                    buf[..nomination.len()].copy_from_slice(&nomination);
                    from.len = nomination.len();
                    from.stride = nomination.len();
                    *slot = from;
                    return Poll::Ready(Ok(1));
                }
            }
        }
        if let (Some(buf), Some(slot)) = (bufs.first_mut(), meta.first_mut()) {
            if let Some((sender, datagram)) = self.gate.take_early_dtls(self.local) {
                debug!(from = %sender, len = datagram.len(), "handing the engine an early DTLS datagram again");
                if buf.len() >= datagram.len() {
                    buf[..datagram.len()].copy_from_slice(&datagram);
                    let mut from = webrtc::runtime::RecvMeta::default();
                    from.addr = sender;
                    from.len = datagram.len();
                    from.stride = datagram.len();
                    *slot = from;
                    return Poll::Ready(Ok(1));
                }
            }
        }
        if self.local.port() != MDNS_PORT {
            if let (Some(buf), Some(slot)) = (bufs.first_mut(), meta.first_mut()) {
                if let Some(len) = self.nudge.take_into(buf) {
                    // From our own address, which no remote candidate has: the engine finds no
                    // pair to credit it to, so it keeps no connection alive.
                    let mut from = webrtc::runtime::RecvMeta::default();
                    from.addr = self.local;
                    from.len = len;
                    from.stride = len;
                    *slot = from;
                    return Poll::Ready(Ok(1));
                }
            }
        }
        for _ in 0..DROPPED_READS_BEFORE_YIELDING {
            let received = match self.inner.poll_recv(cx, bufs, meta) {
                Poll::Ready(Ok(received)) => received,
                Poll::Pending => {
                    self.nudge.wake_later(self.local, cx.waker());
                    return Poll::Pending;
                }
                other => return other,
            };
            // Keep the messages that pass, moved down over the dropped ones. A buffer holding
            // several coalesced datagrams (GRO) is kept whole: checks are never coalesced.
            let now = Instant::now();
            let mut kept = 0;
            let mut injected = None;
            for index in 0..received {
                let len = meta[index].len;
                if meta[index].stride >= len {
                    match self
                        .gate
                        .inspect(self.local, &bufs[index][..len], meta[index].addr, now)
                    {
                        CheckVerdict::Pass => {}
                        CheckVerdict::Drop => {
                            debug!(from = %meta[index].addr, "dropped a connectivity check for other ICE credentials");
                            continue;
                        }
                        CheckVerdict::Withhold => continue,
                        CheckVerdict::Rewrite(check) => bufs[index][..len].copy_from_slice(&check),
                        CheckVerdict::PassAndReplay(nomination) => {
                            injected = Some((nomination, meta[index]));
                        }
                    }
                }
                if kept != index {
                    let (low, high) = bufs.split_at_mut(index);
                    if low[kept].len() < len {
                        continue; // the engine's buffers are all one size: never happens
                    }
                    low[kept][..len].copy_from_slice(&high[0][..len]);
                    meta[kept] = meta[index];
                }
                kept += 1;
            }
            // A nomination to replay comes at the next read, after the response read now.
            if let Some(replay) = injected {
                *self.replay.lock().unwrap_or_else(PoisonError::into_inner) = Some(replay);
                cx.waker().wake_by_ref();
            }
            if kept > 0 {
                return Poll::Ready(Ok(kept));
            }
            // Everything was dropped: read again (or register for the next datagram).
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    fn max_gso_segments(&self) -> usize {
        self.inner.max_gso_segments()
    }

    fn max_gro_segments(&self) -> usize {
        self.inner.max_gro_segments()
    }
}

/// Paces a socket's datagrams that go through a TURN server to a rate a millisecond, in bursts
/// of as many (a token bucket; [`PeerConfig::relay_pace`](super::PeerConfig::relay_pace), by
/// default [`DEFAULT_RELAY_PACE`](super::DEFAULT_RELAY_PACE), 24: ~29 MB/s of 1.2 KB datagrams).
///
/// Why: rtc-sctp 0.21 sends all its congestion window allows at once (it has no Max.Burst,
/// RFC 9260 §7.2.4, which usrsctp and so libwebrtc keep at 4 packets a SACK), and coturn reads
/// its relay sockets from one thread with the kernel's default buffers: bursts of hundreds of
/// datagrams were dropped there (100–200 per 8 MiB in the NAT lab), and every retransmission
/// that was lost too cost a 1 s retransmission timeout (rtc-sctp's minimum RTO). Relayed
/// Rust→Rust throughput in the lab, four runs each: unpaced 2.2–2.9 MB/s in 3 of 4; at 24 a
/// millisecond 19.1–19.7, nothing dropped at coturn; at 32, 11–27 and at 40, 10–34, with drops
/// again (Node→Node in the same runs: ~25–50). Direct paths are not paced. Upstream: rtc-sctp
/// should keep to Max.Burst.
#[derive(Debug)]
struct RelayPacer {
    /// Datagrams a millisecond, and the most that go at once.
    per_ms: f64,
    state: StdMutex<PacerState>,
}

#[derive(Debug, Default)]
struct PacerState {
    /// Datagrams that may go now (negative after a batch bigger than what was left).
    tokens: f64,
    /// When `tokens` was last brought up to date.
    counted: Option<tokio::time::Instant>,
    /// The wait for the next token, while a send waits.
    wait: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl RelayPacer {
    fn new(per_ms: NonZeroU32) -> Self {
        RelayPacer {
            per_ms: f64::from(per_ms.get()),
            state: StdMutex::new(PacerState::default()),
        }
    }

    /// Whether a datagram (or a batch) may go now; if not, `cx` is woken when one may. What
    /// went is then paid for with [`RelayPacer::spend`] (not here: a send the kernel refuses
    /// for now is asked again).
    fn poll_ready(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            let now = tokio::time::Instant::now();
            let elapsed = state.counted.map_or(Duration::MAX, |counted| {
                now.saturating_duration_since(counted)
            });
            let refill = elapsed.as_secs_f64() * 1000.0 * self.per_ms;
            state.tokens = (state.tokens + refill).min(self.per_ms);
            state.counted = Some(now);
            if state.tokens >= 1.0 {
                state.wait = None;
                return std::task::Poll::Ready(());
            }
            let next = Duration::from_secs_f64((1.0 - state.tokens) / self.per_ms / 1000.0);
            let wait = state
                .wait
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(next)));
            wait.as_mut().reset(now + next);
            if wait.as_mut().poll(cx).is_pending() {
                return std::task::Poll::Pending;
            }
        }
    }

    /// Pays for `datagrams` sent (going below zero after a batch bigger than what was left).
    fn spend(&self, datagrams: usize) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.tokens -= datagrams as f64;
    }
}

/// mDNS's port: the engine's mDNS socket (when it resolves `.local` candidates) carries no ICE
/// candidate, so it takes no nudge.
const MDNS_PORT: u16 = 5353;

/// A request that the engine run its read path once with nothing new to read, answered by the
/// next read of one of the connection's sockets with a STUN Binding indication from the
/// socket's own address (which the engine accepts and drops, crediting no candidate pair).
///
/// Why: webrtc 0.21's driver takes data-channel messages out of the engine with
/// `poll_data_read` (`webrtc/src/peer_connection/driver.rs`, `drain_core_data`), which only
/// pops what the engine's pipeline already holds. rtc 0.21's SCTP handler stops moving
/// messages into that pipeline while it holds 256 undelivered ones (back-pressure: the rest stay
/// in SCTP's reassembly queue, `rtc/src/peer_connection/handler/sctp.rs`, "pending_readable"),
/// and moves them again only when the pipeline runs (`pump_reads`): on a received datagram or a
/// timer. So once a reader that had fallen behind catches up, the messages SCTP held back wait
/// for the next packet from the remote; if the remote has sent everything, that is the next
/// timer, up to ~2 s later (measured: 1000 messages sent before the other side reads any
/// stalled ~2 s in about half the runs). The fix belongs upstream: `drain_core_data` should run
/// the pipeline (`poll_read`), or `poll_data_read` should.
#[derive(Debug, Default)]
pub(super) struct ReadNudge {
    requested: AtomicBool,
    /// The transaction ID's last four bytes, so no two nudges look alike to the engine.
    sent: AtomicU32,
    /// Each socket's waker from its last read that found nothing.
    wakers: StdMutex<Vec<(SocketAddr, Waker)>>,
}

impl ReadNudge {
    /// Asks for a nudge and wakes the sockets' reads to deliver it.
    pub(super) fn request(&self) {
        self.requested.store(true, Ordering::Release);
        self.wake_reads();
    }

    /// Wakes each socket's last read that found nothing, to look again (for a nudge, or a
    /// datagram the gate hands over again: [`CheckGate::take_early_dtls`]).
    pub(super) fn wake_reads(&self) {
        let wakers = self.wakers.lock().unwrap_or_else(PoisonError::into_inner);
        for (_, waker) in wakers.iter() {
            waker.wake_by_ref();
        }
    }

    /// Writes the nudge into `buf` and gives its length, if one was asked for (and not taken by
    /// another socket).
    fn take_into(&self, buf: &mut [u8]) -> Option<usize> {
        const BINDING_INDICATION: [u8; 2] = [0x00, 0x11];
        if buf.len() < STUN_HEADER || !self.requested.swap(false, Ordering::AcqRel) {
            return None;
        }
        let count = self.sent.fetch_add(1, Ordering::Relaxed);
        buf[..2].copy_from_slice(&BINDING_INDICATION);
        buf[2..4].copy_from_slice(&0u16.to_be_bytes()); // no attributes
        buf[4..8].copy_from_slice(&MAGIC_COOKIE);
        buf[8..16].copy_from_slice(b"swarmnud");
        buf[16..STUN_HEADER].copy_from_slice(&count.to_be_bytes());
        Some(STUN_HEADER)
    }

    /// Keeps `waker` as the one to wake for the socket at `local`.
    fn wake_later(&self, local: SocketAddr, waker: &Waker) {
        let mut wakers = self.wakers.lock().unwrap_or_else(PoisonError::into_inner);
        match wakers.iter_mut().find(|(address, _)| *address == local) {
            Some((_, kept)) if kept.will_wake(waker) => {}
            Some((_, kept)) => kept.clone_from(waker),
            None => wakers.push((local, waker.clone())),
        }
        drop(wakers);
        // A request made between this read's look at the flag and now woke the waker kept
        // before (or none): make sure this read comes back for it.
        if self.requested.load(Ordering::Acquire) {
            waker.wake_by_ref();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nudge_is_one_binding_indication_per_request() {
        use rtc::stun::message::{Message, CLASS_INDICATION, METHOD_BINDING};
        let nudge = ReadNudge::default();
        let mut buf = [0u8; 1500];
        assert_eq!(nudge.take_into(&mut buf), None, "nothing was asked for");
        nudge.request();
        nudge.request();
        let len = nudge.take_into(&mut buf).expect("asked for");
        assert_eq!(
            nudge.take_into(&mut buf),
            None,
            "one nudge for both requests"
        );
        let mut message = Message {
            raw: buf[..len].to_vec(),
            ..Message::default()
        };
        message.decode().expect("a STUN message");
        assert_eq!(message.typ.method, METHOD_BINDING);
        assert_eq!(message.typ.class, CLASS_INDICATION);
        assert!(message.attributes.0.is_empty());

        nudge.request();
        let mut next = [0u8; 1500];
        let len = nudge.take_into(&mut next).expect("asked for again");
        assert_ne!(buf[8..20], next[8..len], "a new transaction ID");
        assert_eq!(nudge.take_into(&mut [0u8; 19]), None, "nothing asked for");
    }

    /// Admits as many of `datagrams` one at a time as the pacer lets go now.
    fn admitted_now(pacer: &RelayPacer, datagrams: usize) -> usize {
        let waker = Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        (0..datagrams)
            .take_while(|_| {
                let ready = pacer.poll_ready(&mut cx).is_ready();
                if ready {
                    pacer.spend(1);
                }
                ready
            })
            .count()
    }

    #[tokio::test(start_paused = true)]
    async fn datagrams_to_a_relay_go_in_bursts_of_the_rate_a_millisecond() {
        let burst = 24;
        let pacer = RelayPacer::new(NonZeroU32::new(24).expect("not zero"));
        assert_eq!(
            admitted_now(&pacer, 1000),
            burst,
            "a full burst, then a wait"
        );
        tokio::time::advance(Duration::from_micros(500)).await;
        assert_eq!(
            admitted_now(&pacer, 1000),
            burst / 2,
            "half a millisecond: half a burst"
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(
            admitted_now(&pacer, 1000),
            burst,
            "an idle second saves no more than a burst"
        );
        // A batch (GSO) bigger than what is left goes, and the next waits until it is paid for.
        tokio::time::advance(Duration::from_millis(1)).await;
        let waker = Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        assert!(pacer.poll_ready(&mut cx).is_ready());
        pacer.spend(2 * burst);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(admitted_now(&pacer, 1), 0, "still paying for the batch");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(admitted_now(&pacer, 1), 1);
    }

    /// A send that waits is woken when it may go.
    #[tokio::test(start_paused = true)]
    async fn a_waiting_datagram_is_woken_when_it_may_go() {
        let pacer = RelayPacer::new(NonZeroU32::new(3).expect("not zero"));
        admitted_now(&pacer, 1000);
        let started = tokio::time::Instant::now();
        std::future::poll_fn(|cx| pacer.poll_ready(cx)).await;
        let waited = started.elapsed();
        assert!(
            waited > Duration::ZERO && waited <= Duration::from_millis(1),
            "waited {waited:?}"
        );
    }

    #[test]
    fn a_request_wakes_each_sockets_last_read() {
        use std::sync::atomic::AtomicUsize;
        use std::task::Wake;
        struct Count(AtomicUsize);
        impl Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let (first, second) = (
            Arc::new(Count(AtomicUsize::new(0))),
            Arc::new(Count(AtomicUsize::new(0))),
        );
        let nudge = ReadNudge::default();
        let one: SocketAddr = "127.0.0.1:1000".parse().expect("address");
        let other: SocketAddr = "127.0.0.1:2000".parse().expect("address");
        nudge.wake_later(one, &Waker::from(first.clone()));
        nudge.wake_later(one, &Waker::from(first.clone()));
        nudge.wake_later(other, &Waker::from(second.clone()));
        nudge.request();
        assert_eq!(first.0.load(Ordering::SeqCst), 1, "kept once per socket");
        assert_eq!(second.0.load(Ordering::SeqCst), 1);
        // A read that registers after the request still comes back for it.
        let late = Arc::new(Count(AtomicUsize::new(0)));
        nudge.wake_later(one, &Waker::from(late.clone()));
        assert_eq!(late.0.load(Ordering::SeqCst), 1);
    }
}
