// The command/event protocol shared by the webrtc-swarm peers the Rust tests drive: js/swarm-peer.mjs
// (Node, @roamhq/wrtc) and js/browser/swarm-page.js (headless Chromium, bundled by js/build.mjs).
// The protocol itself is documented at the top of js/swarm-peer.mjs.
//
// attach(swarm, { emit, now, sinkAll }) watches a webrtc-swarm instance, reports its events
// through `emit(object)` and returns `handle(command) -> Promise<reply object>`. `now()` gives
// milliseconds (performance.now); event times are counted from the call to attach(). With
// `sinkAll`, every peer's bytes are counted from its connection on (no "data" events), and a
// later "sink" command keeps what was counted: a peer that sends the moment its channel opens
// cannot beat the command (which, in the browser, is only read once the page has started).

export function attach (swarm, { emit, now, sinkAll = false }) {
  const start = now()
  const connected = new Map() // peer id -> simple-peer instance, connected peers only
  const sinks = new Map() // peer id -> { bytes, firstMs, lastMs, expect }

  swarm.on('connect', (peer, id) => {
    connected.set(id, peer)
    emit({ event: 'connect', id, ms: round(now() - start) })
    // simple-peer 6.4.4 is a byte stream (not objectMode): its 'data' gives a Buffer for text and
    // binary channel messages alike. The channel's own message event still tells them apart (a
    // string or an ArrayBuffer): note each message's kind before simple-peer pushes it.
    const kinds = []
    const onChannelMessage = peer._onChannelMessage
    if (typeof onChannelMessage === 'function') {
      peer._onChannelMessage = function (event) {
        kinds.push(typeof event.data === 'string' ? 'text' : 'binary')
        return onChannelMessage.call(this, event)
      }
    }
    peer.on('data', (buf) => {
      const kind = kinds.shift()
      let sink = sinks.get(id)
      if (!sink && sinkAll) {
        sink = newSink(null)
        sinks.set(id, sink)
      }
      if (sink) {
        const t = now()
        if (sink.firstMs === null) sink.firstMs = t
        sink.lastMs = t
        sink.bytes += buf.length
        if (sink.expect !== null && sink.bytes >= sink.expect) {
          emit({ event: 'sunk', from: id, bytes: sink.bytes, ms: round(sink.lastMs - sink.firstMs) })
          sink.expect = null
        }
        return
      }
      emit({ event: 'data', from: id, data: buf.toString('utf8'), base64: buf.toString('base64'), kind })
    })
  })

  swarm.on('disconnect', (peer, id) => {
    const wasConnected = connected.get(id) === peer
    if (wasConnected) connected.delete(id)
    emit({ event: 'disconnect', id, connected: wasConnected })
  })

  function targets (to) {
    if (to === null || to === undefined) return [...connected.values()]
    const peer = connected.get(to)
    if (!peer) throw new Error(`not connected to ${to}`)
    return [peer]
  }

  async function blast (peer, bytes, chunkSize) {
    const chunk = Buffer.alloc(chunkSize, 0x78)
    let failure = null
    const onClose = () => { failure = failure || new Error('the peer closed during the blast') }
    const onError = (err) => { failure = err }
    peer.once('close', onClose)
    peer.once('error', onError)
    try {
      const t0 = now()
      let sent = 0
      let lastWritten = null
      while (sent < bytes) {
        if (failure) throw failure
        const n = Math.min(chunkSize, bytes - sent)
        const piece = n === chunkSize ? chunk : chunk.subarray(0, n)
        sent += n
        let ok
        if (sent >= bytes) {
          lastWritten = new Promise((resolve) => { ok = peer.write(piece, resolve) })
        } else {
          ok = peer.write(piece)
        }
        if (!ok && sent < bytes) await drained(peer, () => failure)
      }
      if (lastWritten) await lastWritten
      // Everything is in the data channel; wait until it has gone to the SCTP transport.
      while (peer._channel && peer._channel.bufferedAmount > 0) {
        if (failure) throw failure
        await sleep(2)
      }
      if (failure) throw failure
      return { bytes: sent, ms: round(now() - t0) }
    } finally {
      peer.removeListener('close', onClose)
      peer.removeListener('error', onError)
    }
  }

  async function handle (cmd) {
    const reply = { reply: cmd.cmd }
    if (cmd.seq !== undefined) reply.seq = cmd.seq
    try {
      switch (cmd.cmd) {
        case 'send': {
          const peers = targets(cmd.to)
          for (const peer of peers) peer.send(String(cmd.data))
          reply.count = peers.length
          break
        }
        case 'drain': {
          // Until every message sent so far has left the data channel (bufferedAmount 0): a
          // close right after sends discards what libwebrtc still holds.
          const peers = targets(cmd.to)
          const deadline = now() + 10000
          while (peers.some((peer) => peer._channel && peer._channel.bufferedAmount > 0)) {
            if (now() > deadline) throw new Error('the data channel did not drain in 10 s')
            await sleep(2)
          }
          reply.count = peers.length
          break
        }
        case 'send-binary': {
          const peers = targets(cmd.to)
          const buf = Buffer.from(cmd.base64 || '', 'base64')
          for (const peer of peers) peer.write(buf)
          reply.count = peers.length
          break
        }
        case 'sink': {
          const expect = typeof cmd.expect === 'number' ? cmd.expect : null
          const counted = sinkAll ? sinks.get(cmd.to) : undefined
          if (!counted) {
            sinks.set(cmd.to, newSink(expect))
          } else if (expect !== null && counted.bytes >= expect) {
            emit({ event: 'sunk', from: cmd.to, bytes: counted.bytes, ms: round(counted.lastMs - counted.firstMs) })
            counted.expect = null
          } else {
            counted.expect = expect
          }
          break
        }
        case 'sunk': {
          const sink = sinks.get(cmd.to)
          reply.bytes = sink ? sink.bytes : 0
          reply.ms = sink && sink.firstMs !== null ? round(sink.lastMs - sink.firstMs) : null
          break
        }
        case 'blast': {
          const [peer] = targets(cmd.to)
          const bytes = Number(cmd.bytes) || 0
          const chunk = Number(cmd.chunk) || 16384
          Object.assign(reply, await blast(peer, bytes, chunk))
          break
        }
        case 'peers':
          reply.ids = [...connected.keys()]
          break
        case 'id':
          reply.id = swarm.me
          break
        case 'path': {
          const [peer] = targets(cmd.to)
          Object.assign(reply, await selectedPath(peer._pc))
          break
        }
        case 'close-connection': {
          // RTCPeerConnection.close() alone, its data channel not closed first (simple-peer's
          // destroy closes the channel, then the connection): the remote learns of the end on
          // the connection, not in the channel's stream after its messages.
          const [peer] = targets(cmd.to)
          if (!peer || !peer._pc) throw new Error('no such connected peer')
          peer._pc.close()
          break
        }
        case 'close':
          await new Promise((resolve) => {
            const timer = setTimeout(resolve, 3000)
            swarm.close(() => { clearTimeout(timer); resolve() })
            if (swarm.closed && !swarm.listenerCount('close')) resolve()
          })
          break
        default:
          throw new Error('unknown command')
      }
    } catch (err) {
      reply.error = err && err.message ? err.message : String(err)
    }
    return reply
  }

  return handle
}

// The selected candidate pair of an RTCPeerConnection, from its stats: the transport's
// selectedCandidatePairId where the engine reports it, else the nominated, succeeded pair.
async function selectedPath (pc) {
  if (!pc) throw new Error('the peer has no connection')
  const report = await pc.getStats()
  const stats = new Map()
  report.forEach((value, key) => stats.set(key, value))
  let pair = null
  for (const s of stats.values()) {
    if (s.type === 'transport' && s.selectedCandidatePairId) pair = stats.get(s.selectedCandidatePairId) || pair
  }
  if (!pair) {
    for (const s of stats.values()) {
      if (s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded') pair = pair || s
    }
  }
  if (!pair) throw new Error('no selected candidate pair')
  const end = (id) => {
    const c = stats.get(id)
    return c ? { type: c.candidateType, address: c.address || c.ip, port: c.port, protocol: c.protocol } : null
  }
  return {
    local: end(pair.localCandidateId),
    remote: end(pair.remoteCandidateId),
    bytesSent: pair.bytesSent,
    bytesReceived: pair.bytesReceived,
    rtt: pair.currentRoundTripTime
  }
}

function drained (peer, failed) {
  return new Promise((resolve, reject) => {
    const done = () => {
      peer.removeListener('drain', done)
      peer.removeListener('close', done)
      const err = failed()
      if (err) reject(err)
      else resolve()
    }
    peer.on('drain', done)
    peer.on('close', done)
  })
}

function sleep (ms) {
  return new Promise((resolve) => setTimeout(resolve, ms))
}

function round (ms) {
  return Math.round(ms * 10) / 10
}

// The STUN/TURN servers a hub hands out at GET /ice-servers (what a webrtc-swarm user passes as
// config.iceServers to cross NATs): [] when the hub offers none (404); any other failure throws.
export async function hubIceServers (hub) {
  const res = await fetch(hub.replace(/\/$/, '') + '/ice-servers')
  if (res.status === 404) return []
  if (!res.ok) throw new Error(`GET /ice-servers: ${res.status}`)
  return res.json()
}

function newSink (expect) {
  return { bytes: 0, firstMs: null, lastMs: null, expect }
}
