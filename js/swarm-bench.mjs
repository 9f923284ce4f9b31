// Node <-> Node webrtc-swarm@2.9.0 figures (simple-peer 6.4.4 over @roamhq/wrtc@0.10.0) for the
// benchmark, both swarms in this one process, signalling through the hub given.
//
// Usage: node js/swarm-bench.mjs <hub url> [--tries 20] [--mb 64]
//   (a) join-to-open, --tries times, each with a fresh app name: swarm A joins; once both of its
//       subscriptions ("all" and its inbox) are open and its first announce has been posted, swarm B
//       joins; the sample is the time from B's creation until both sides have fired 'connect'.
//       Then both swarms are closed.
//   (b) throughput: one connected pair; A writes --mb MiB in 16 KiB binary messages, respecting
//       peer.write()'s backpressure; B counts. MB/s = bytes / (first write .. last byte received),
//       with MB = 10^6 bytes (throughput_mib_s: the same in MiB/s).
// stdout, one JSON line:
//   {"connect_ms":{"median","p95","min","max","samples":[...]},"throughput_mb_s":X,
//    "throughput_mib_s":Y,"bytes":N,"throughput_ms":M,"disconnects":K}
//   (disconnects: handshakes that failed and were retried during (a), e.g. glare)
// Progress goes to stderr. Exits 1 with the reason on stderr if a try does not connect in 30 s.
import { createRequire } from 'node:module'
import { performance } from 'node:perf_hooks'
import { attach } from './swarm-commands.mjs'

const require = createRequire(import.meta.url)
let signalhub, webrtcSwarm, wrtc
try {
  signalhub = require('signalhub')
  webrtcSwarm = require('webrtc-swarm')
  wrtc = require('@roamhq/wrtc')
} catch (err) {
  console.error('swarm-bench: missing Node packages, run `npm ci --prefix js`: ' + err.message)
  process.exit(3)
}

const args = process.argv.slice(2)
const hubUrl = args.find((a, i) => !a.startsWith('--') && !(i > 0 && args[i - 1].startsWith('--')))
function flag (name, dflt) {
  const i = args.indexOf(name)
  return i >= 0 ? Number(args[i + 1]) : dflt
}
const tries = flag('--tries', 20)
const mib = flag('--mb', 64)
if (!hubUrl || !(tries > 0) || !(mib > 0)) {
  console.error('usage: node js/swarm-bench.mjs <hub url> [--tries 20] [--mb 64]')
  process.exit(64)
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))
function deadline (ms, what) {
  let timer
  const promise = new Promise((resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: nothing after ${ms / 1000} s`)), ms)
  })
  promise.cancel = () => clearTimeout(timer)
  return promise
}

let disconnects = 0

// One swarm with its event stream: `when(pred)` resolves with the first event matching.
function join (app) {
  const hub = signalhub(app, [hubUrl])
  const events = []
  const waiters = []
  const emit = (ev) => {
    ev.at = performance.now()
    if (ev.event === 'disconnect' && !ev.connected) disconnects++
    events.push(ev)
    for (const w of waiters.slice()) {
      if (w.pred(ev)) {
        waiters.splice(waiters.indexOf(w), 1)
        w.resolve(ev)
      }
    }
  }
  const swarm = webrtcSwarm(hub, { wrtc, config: { iceServers: [] } })
  const handle = attach(swarm, { emit, now: () => performance.now() })
  // Both subscriptions open, and the first announce (sent on the inbox's 'open') posted.
  const opened = hub.subscribers.map((sub) => new Promise((resolve) => sub.once('open', resolve)))
  const announced = new Promise((resolve) => {
    const broadcast = hub.broadcast.bind(hub)
    hub.broadcast = (channel, message, cb) => broadcast(channel, message, (err) => {
      if (channel === 'all') resolve()
      if (cb) cb(err)
    })
  })
  const when = (pred) => {
    const ev = events.find(pred)
    if (ev) return Promise.resolve(ev)
    return new Promise((resolve) => waiters.push({ pred, resolve }))
  }
  return { swarm, handle, when, ready: Promise.all([...opened, announced]) }
}

function stats (samples) {
  const sorted = samples.slice().sort((a, b) => a - b)
  const at = (q) => sorted[Math.min(sorted.length - 1, Math.ceil(q * sorted.length) - 1)]
  const mid = sorted.length >> 1
  const median = sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2
  const r = (x) => Math.round(x * 10) / 10
  return { median: r(median), p95: r(at(0.95)), min: r(sorted[0]), max: r(sorted[sorted.length - 1]), samples: samples.map(r) }
}

async function pair (app) {
  const a = join(app)
  const limit = deadline(30000, `${app}: A's subscriptions`)
  await Promise.race([a.ready, limit])
  limit.cancel()
  const t0 = performance.now()
  const b = join(app)
  const both = deadline(30000, `${app}: connect`)
  const [ca, cb] = await Promise.race([
    Promise.all([a.when((e) => e.event === 'connect'), b.when((e) => e.event === 'connect')]),
    both
  ])
  both.cancel()
  return { a, b, ms: Math.max(ca.at, cb.at) - t0 }
}

const closeAll = (...peers) => Promise.all(peers.map((p) => p.handle({ cmd: 'close' })))

try {
  const samples = []
  const stamp = Date.now().toString(36)
  for (let i = 0; i < tries; i++) {
    const { a, b, ms } = await pair(`bench-${stamp}-${i}`)
    samples.push(ms)
    console.error(`swarm-bench: try ${i + 1}/${tries}: ${ms.toFixed(1)} ms`)
    await closeAll(a, b)
    await sleep(100)
  }
  const connectDisconnects = disconnects

  const bytes = Math.round(mib * 1024 * 1024)
  const { a, b } = await pair(`bench-${stamp}-throughput`)
  await sleep(250) // let the fresh channel settle (wrtc may reorder its first messages)
  const sinkReply = await b.handle({ cmd: 'sink', to: a.swarm.me, expect: bytes })
  if (sinkReply.error) throw new Error(sinkReply.error)
  const t0 = performance.now()
  const done = b.when((e) => e.event === 'sunk')
  const limit = deadline(300000, 'throughput')
  const blastReply = await Promise.race([a.handle({ cmd: 'blast', to: b.swarm.me, bytes, chunk: 16384 }), limit])
  if (blastReply.error) throw new Error('blast: ' + blastReply.error)
  const sunk = await Promise.race([done, limit])
  limit.cancel()
  const ms = sunk.at - t0
  console.error(`swarm-bench: ${bytes} bytes in ${ms.toFixed(0)} ms (writer done after ${blastReply.ms} ms)`)
  await closeAll(a, b)

  process.stdout.write(JSON.stringify({
    connect_ms: stats(samples),
    throughput_mb_s: Math.round((bytes / 1e6) / (ms / 1000) * 100) / 100,
    throughput_mib_s: Math.round((bytes / 1048576) / (ms / 1000) * 100) / 100,
    bytes,
    throughput_ms: Math.round(ms),
    disconnects: connectDisconnects
  }) + '\n', () => process.exit(0))
} catch (err) {
  console.error('swarm-bench: ' + err.message)
  process.exit(1)
}
