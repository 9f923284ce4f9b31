// The talk's "p2p feed subscriber" ("the disintermediated web", substack, 2016) on the real
// packages: hyperlog@4.12.1 on memdb, verified by hyperlog-sodium@2.0.0, gossiped over
// webrtc-swarm@2.9.0 (Node WebRTC from @roamhq/wrtc) through a signalhub@4.9.0 hub.
//
// Usage: node js/feed-subscriber.mjs <publicKey hex> [--hub URL]...
//   Joins the swarm whose signalhub app is the public key, accepts only nodes signed by that key,
//   prints every entry as it arrives (log.createReadStream({live: true})), and replicates with
//   every peer, so it hosts the feed for others too. --hub: default http://127.0.0.1:8080. It runs
//   until SIGINT/SIGTERM.
//
// Where it departs from the slides:
//   - sodium-signatures (Ed25519 detached) instead of chloride, which is not installed here.
//   - the public key goes to hyperlog-sodium as a Buffer: the slide passes the hex string, which
//     never compares equal to a node's identity (a Buffer), so every node would be refused.
//   - log.replicate({live: true}) instead of log.replicate(), so entries keep coming.
//   - {wrtc, config: {iceServers: []}}, and a replication error (a node not signed by the key)
//     closes that peer instead of crashing the process.
//   - entries are printed as JSON lines instead of console.log(node).
//
// Output: one JSON object a line on stdout (for the tests):
//   {"event":"ready","id":"<swarm id>"}, {"event":"subscribed"}
//   {"event":"entry","key","log","seq","change","value":"<utf8>","links":[...],"identity":"<hex>"}
//   {"event":"peer","id"}, {"event":"disconnect","id"}, {"event":"replication-error","id","message"}
//   {"event":"error","message"}, {"event":"fatal","message"} (then exit 3)
import { createRequire } from 'node:module'

const require = createRequire(import.meta.url)

function out (obj) {
  process.stdout.write(JSON.stringify(obj) + '\n')
}

function fatal (message) {
  out({ event: 'fatal', message })
  process.stdout.write('', () => process.exit(3))
  setTimeout(() => process.exit(3), 500).unref()
}

let swarm, signalhub, memdb, sodium, hsodium, hyperlog, wrtc
try {
  swarm = require('webrtc-swarm')
  signalhub = require('signalhub')
  memdb = require('memdb')
  sodium = require('sodium-signatures')
  hsodium = require('hyperlog-sodium')
  hyperlog = require('hyperlog')
  wrtc = require('@roamhq/wrtc')
} catch (err) {
  fatal('missing Node packages, run `npm ci --prefix js`: ' + err.message)
}

process.on('uncaughtException', (err) => fatal('uncaught: ' + (err && err.stack ? err.stack : String(err))))

function parseArgs (argv) {
  const args = { publicKey: null, hubs: [] }
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--hub') args.hubs.push(argv[++i])
    else if (argv[i].startsWith('--')) throw new Error('unknown option ' + argv[i])
    else if (args.publicKey === null) args.publicKey = argv[i]
    else throw new Error('unexpected argument ' + argv[i])
  }
  if (!/^[0-9a-fA-F]{64}$/.test(args.publicKey || '')) throw new Error('the public key must be 64 hex characters')
  if (!args.hubs.length) args.hubs.push('http://127.0.0.1:8080')
  return args
}

if (swarm) {
  let args
  try {
    args = parseArgs(process.argv.slice(2))
  } catch (err) {
    fatal(err.message + ' (usage: node js/feed-subscriber.mjs <publicKey> [--hub URL]...)')
  }
  if (args) main(args)
}

function main (args) {
  // set up the swarm and hyperlog
  const publicKey = args.publicKey.toLowerCase()
  const log = hyperlog(memdb(), hsodium(sodium, { publicKey: Buffer.from(publicKey, 'hex') }))

  const hubs = args.hubs
  const hub = signalhub(publicKey, hubs)
  const sw = swarm(hub, { wrtc, config: { iceServers: [] } })
  out({ event: 'ready', id: sw.me })
  const inbox = hub.subscribers[1]
  if (inbox) inbox.once('open', () => out({ event: 'subscribed' }))

  // subscribed!
  log.createReadStream({ live: true })
    .on('data', (node) => out({
      event: 'entry',
      key: node.key,
      log: node.log,
      seq: node.seq,
      change: node.change,
      value: Buffer.from(node.value).toString('utf8'),
      links: node.links,
      identity: node.identity ? Buffer.from(node.identity).toString('hex') : null
    }))
    .on('error', (err) => out({ event: 'error', message: err.message }))

  sw.on('peer', function (peer, id) {
    out({ event: 'peer', id })
    const r = log.replicate({ live: true })
    r.on('error', (err) => {
      out({ event: 'replication-error', id, message: err.message })
      peer.destroy()
    })
    peer.on('error', (err) => out({ event: 'error', message: `peer ${id}: ${err.message}` }))
    peer.pipe(r).pipe(peer)
  })
  sw.on('disconnect', (peer, id) => out({ event: 'disconnect', id }))

  const stop = () => {
    sw.close()
    process.stdout.write('', () => process.exit(0))
    setTimeout(() => process.exit(0), 500).unref()
  }
  process.on('SIGINT', stop)
  process.on('SIGTERM', stop)
}
