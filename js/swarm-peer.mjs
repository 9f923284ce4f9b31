// A real webrtc-swarm@2.9.0 peer (simple-peer 6.4.4 over @roamhq/wrtc@0.10.0, signalling through the
// signalhub@4.9.0 client) for the Rust interop tests and benchmarks. js/swarm-browser.mjs speaks the
// same protocol from headless Chromium.
//
// Usage: node js/swarm-peer.mjs '<config JSON>'
//   config: {"hubs": ["http://127.0.0.1:PORT", ...], "app": "<app>",
//            "id"?: "<uuid to use, default a cuid>", "maxPeers"?: N,
//            "iceServers"?: [RTCIceServer, ...], "iceServersFromHub"?: true, "sinkAll"?: true}
//   The swarm uses `config: {iceServers}`: by default none (host candidates only, no STUN); with
//   "iceServersFromHub", also those the first hub hands out at GET /ice-servers (a 404 means
//   none), which is how any webrtc-swarm user takes the hub's STUN/TURN servers and credentials.
//   "sinkAll": every peer's bytes are counted as by "sink" from its connection on, and a later
//   "sink" keeps them (so a peer that sends the moment its channel opens is counted in full).
//
// Commands, one JSON object a line on stdin; replies, one a line on stdout. A command may carry
// "seq": any value, echoed in its reply. A failed command replies {"reply":<cmd>,"error":"..."}.
//   {"cmd":"send","to":"<peer id>"|null,"data":"<text>"} -> {"reply":"send","count":N}
//        peer.send(text): one text message to that peer, or to every connected peer if "to" is null
//   {"cmd":"send-binary","to":id|null,"base64":"..."}   -> {"reply":"send-binary","count":N}
//        peer.write(Buffer): one binary message
//   {"cmd":"sink","to":id,"expect"?:N}                   -> {"reply":"sink"}
//        from now on count the bytes received from that peer instead of emitting "data" events;
//        with "expect", emit {"event":"sunk"} once N bytes have arrived
//   {"cmd":"sunk","to":id}                               -> {"reply":"sunk","bytes":N,"ms":M|null}
//        bytes counted so far, ms from the first counted message to the last
//   {"cmd":"blast","to":id,"bytes":N,"chunk"?:16384}      -> {"reply":"blast","bytes":N,"ms":M}
//        writes N bytes in binary messages of "chunk" bytes as fast as backpressure allows; ms runs
//        from the first write until the data channel's bufferedAmount is back to 0
//   {"cmd":"drain","to"?:id}                             -> {"reply":"drain","count":N}
//        once the data channel(s) hold nothing unsent (bufferedAmount 0; 10 s at most)
//   {"cmd":"peers"}                                      -> {"reply":"peers","ids":[...connected ids]}
//   {"cmd":"id"}                                         -> {"reply":"id","id":"<swarm.me>"}
//   {"cmd":"path","to":id}  -> {"reply":"path","local":{"type","address","port","protocol"},
//        "remote":{…},"bytesSent":N,"bytesReceived":N,"rtt":seconds}: the selected candidate pair
//   {"cmd":"close-connection","to":id}                  -> {"reply":"close-connection"}
//        closes that peer's RTCPeerConnection alone (not its data channel first, as simple-peer's
//        destroy does): the other side sees the connection end, not the channel
//   {"cmd":"close"}  swarm.close(), then {"reply":"close"}, {"event":"closed"} and exit 0
// End of stdin closes the same way.
// Events:
//   {"event":"ready","id":"<swarm.me>"}                 once the swarm exists
//   {"event":"subscribed"}                              the inbox subscription is open (webrtc-swarm
//                                                       announces itself on "all" at this moment)
//   {"event":"connect","id":"<peer id>","ms":M}         ms since the swarm was created
//   {"event":"disconnect","id":"<peer id>","connected":bool}  (also for handshakes that never connected)
//   {"event":"data","from":"<peer id>","data":"<utf8 text>","base64":"<the exact bytes>",
//    "kind":"text"|"binary"}                            every message from a peer not in sink mode;
//                                                       "kind": whether the data channel delivered
//                                                       a string or an ArrayBuffer (simple-peer's
//                                                       'data' gives a Buffer for both)
//   {"event":"sunk","from":id,"bytes":N,"ms":M}         a sink's "expect" was reached
//   {"event":"error","message":"..."}                   non-fatal (a hub request failed, ...)
//   {"event":"fatal","message":"..."}                   then exit 3
import { createRequire } from 'node:module'
import { performance } from 'node:perf_hooks'
import readline from 'node:readline'
import { attach, hubIceServers } from './swarm-commands.mjs'

const require = createRequire(import.meta.url)

function out (obj) {
  process.stdout.write(JSON.stringify(obj) + '\n')
}

function fatal (message) {
  out({ event: 'fatal', message })
  process.stdout.write('', () => process.exit(3))
  setTimeout(() => process.exit(3), 500).unref()
}

let signalhub, webrtcSwarm, wrtc
try {
  signalhub = require('signalhub')
  webrtcSwarm = require('webrtc-swarm')
  wrtc = require('@roamhq/wrtc')
} catch (err) {
  out({ event: 'fatal', message: 'missing Node packages, run `npm ci --prefix js`: ' + err.message })
  process.exit(3)
}

let config
try {
  config = JSON.parse(process.argv[2] || '')
  if (!Array.isArray(config.hubs) || !config.hubs.length) throw new Error('"hubs" must be a non-empty array')
  if (!config.app) throw new Error('"app" is required')
} catch (err) {
  out({ event: 'fatal', message: `bad config (usage: node js/swarm-peer.mjs '{"hubs":[url],"app":name}'): ${err.message}` })
  process.exit(3)
}

process.on('uncaughtException', (err) => fatal('uncaught: ' + (err && err.stack ? err.stack : String(err))))
process.on('unhandledRejection', (err) => fatal('unhandled rejection: ' + (err && err.stack ? err.stack : String(err))))

const iceServers = Array.isArray(config.iceServers) ? [...config.iceServers] : []
if (config.iceServersFromHub) {
  // What a plain webrtc-swarm user does to use the hub's STUN/TURN servers: fetch them, pass them
  // as config.iceServers. (TURN credentials expire: a long-running peer fetches them again.)
  try {
    iceServers.push(...await hubIceServers(config.hubs[0]))
  } catch (err) {
    out({ event: 'error', message: err.message.startsWith('GET /ice-servers') ? err.message : 'GET /ice-servers failed: ' + err.message })
  }
}

const hub = signalhub(config.app, config.hubs)
const swarm = webrtcSwarm(hub, {
  wrtc,
  uuid: config.id || undefined,
  maxPeers: config.maxPeers || undefined,
  config: { iceServers }
})
const handle = attach(swarm, { emit: out, now: () => performance.now(), sinkAll: config.sinkAll === true })

// webrtc-swarm ignores hub errors (a failed POST just moves on); report failed signal POSTs.
const broadcast = hub.broadcast.bind(hub)
hub.broadcast = (channel, message, cb) => broadcast(channel, message, (err) => {
  if (err) out({ event: 'error', message: `broadcast to ${channel} failed: ${err.message}` })
  if (cb) cb(err)
})
// subscribers[0] is "all", subscribers[1] the inbox, whose 'open' starts the announce loop.
const inbox = hub.subscribers[1]
if (inbox) inbox.once('open', () => out({ event: 'subscribed' }))
for (const sub of hub.subscribers) {
  sub.on('retry', () => out({ event: 'error', message: 'a hub subscription failed or dropped; the signalhub client retries in 3 s' }))
}

out({ event: 'ready', id: swarm.me })

let closing = false
async function closeAndExit () {
  if (closing) return
  closing = true
  const reply = await handle({ cmd: 'close' })
  out(reply)
  out({ event: 'closed' })
  // wrtc and the announce timer keep handles alive: leave explicitly once stdout has flushed.
  process.stdout.write('', () => process.exit(0))
  setTimeout(() => process.exit(0), 1000).unref()
}

const rl = readline.createInterface({ input: process.stdin })
rl.on('line', (line) => {
  if (!line.trim() || closing) return
  let cmd
  try {
    cmd = JSON.parse(line)
  } catch (err) {
    out({ event: 'error', message: 'bad command line: ' + err.message })
    return
  }
  if (cmd.cmd === 'close') return closeAndExit()
  handle(cmd).then(out)
})
rl.on('close', closeAndExit)
