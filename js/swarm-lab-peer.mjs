// A JS webrtc-swarm@2.9.0 peer (Node, @roamhq/wrtc) that joins and leaves swarms on command, for
// the swarm benchmark's NAT lab (swarm/benches/swarmbench/nat.rs): one process per home namespace
// serves every try, so a try times the join and the handshake, not Node's start.
//
// Usage: node js/swarm-lab-peer.mjs '{"hubs":["http://HOST:PORT"],"iceServersFromHub":true}'
//   iceServersFromHub: take the STUN/TURN servers the first hub hands out at GET /ice-servers,
//   once at start (as js/swarm-peer.mjs does; the benchmark's credentials last an hour).
//
// Commands on stdin, one JSON object a line; events and replies on stdout, likewise:
//   {"cmd":"join","app":"<app>"}  -> {"event":"joined","id"} once both subscriptions are open and
//                                    the first announce is posted; then {"event":"connect","id"}
//                                    for each peer met (as js/swarm-peer.mjs)
//   {"cmd":"leave"}               -> closes the swarm: {"reply":"leave"}
//   sink, blast, path, peers      -> the joined swarm's commands (js/swarm-commands.mjs)
// Startup failures print {"event":"fatal","message"} and exit 3; the end of stdin exits 0.
import { createRequire } from 'node:module'
import { performance } from 'node:perf_hooks'
import readline from 'node:readline'
import { attach, hubIceServers } from './swarm-commands.mjs'

const require = createRequire(import.meta.url)
const out = (obj) => process.stdout.write(JSON.stringify(obj) + '\n')

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
} catch (err) {
  out({ event: 'fatal', message: `bad config (usage: node js/swarm-lab-peer.mjs '{"hubs":[url]}'): ${err.message}` })
  process.exit(3)
}

const iceServers = []
if (config.iceServersFromHub) {
  try {
    iceServers.push(...await hubIceServers(config.hubs[0]))
  } catch (err) {
    out({ event: 'fatal', message: 'GET /ice-servers failed: ' + err.message })
    process.exit(3)
  }
}

let current = null // { swarm, handle }

function join (app) {
  const hub = signalhub(app, config.hubs)
  const swarm = webrtcSwarm(hub, { wrtc, config: { iceServers } })
  const handle = attach(swarm, { emit: out, now: () => performance.now() })
  // Joined: both subscriptions ("all" and the inbox) open, and the first announce posted.
  const opened = hub.subscribers.map((sub) => new Promise((resolve) => sub.once('open', resolve)))
  const announced = new Promise((resolve) => {
    const broadcast = hub.broadcast.bind(hub)
    hub.broadcast = (channel, message, cb) => broadcast(channel, message, (err) => {
      if (err) out({ event: 'error', message: `broadcast to ${channel} failed: ${err.message}` })
      if (channel === 'all') resolve()
      if (cb) cb(err)
    })
  })
  Promise.all([...opened, announced]).then(() => out({ event: 'joined', id: swarm.me }))
  return { swarm, handle }
}

const rl = readline.createInterface({ input: process.stdin })
let queue = Promise.resolve()
rl.on('line', (line) => {
  if (!line.trim()) return
  let cmd
  try {
    cmd = JSON.parse(line)
  } catch (err) {
    out({ event: 'error', message: 'bad command line: ' + err.message })
    return
  }
  // One command at a time, in order (a leave must finish before the next join).
  queue = queue.then(async () => {
    if (cmd.cmd === 'join') {
      if (current) return out({ reply: 'join', error: 'already in a swarm: leave first' })
      current = join(String(cmd.app))
    } else if (cmd.cmd === 'leave') {
      if (current) await current.handle({ cmd: 'close' })
      current = null
      out({ reply: 'leave' })
    } else if (!current) {
      out({ reply: cmd.cmd, error: 'not in a swarm: join first' })
    } else {
      out(await current.handle(cmd))
    }
  }).catch((err) => out({ reply: cmd.cmd, error: err.message }))
})
rl.on('close', async () => {
  await queue
  if (current) await current.handle({ cmd: 'close' })
  process.stdout.write('', () => process.exit(0))
  setTimeout(() => process.exit(0), 1000).unref()
})
