// The talk's "p2p feed publisher" ("the disintermediated web", substack, 2016) on the real
// packages: hyperlog@4.12.1 on memdb, signed by hyperlog-sodium@2.0.0, gossiped over
// webrtc-swarm@2.9.0 (Node WebRTC from @roamhq/wrtc) through a signalhub@4.9.0 hub.
//
// Usage: node js/feed-publisher.mjs [--keys keys.json] [--hub URL]...
//   Appends each line of stdin to the log (as the talk's split2 → through2 → log.append(buf)) and
//   replicates the log with every peer of the swarm whose signalhub app is the public key in hex.
//   --keys: a keys file as `feed keygen` (and the talk's "create an account") writes it; without
//   it a fresh keypair is made, as the talk's publisher does. --hub: default http://127.0.0.1:8080.
//   It keeps serving after stdin ends, until SIGINT/SIGTERM.
//
// Where it departs from the slides (each one a bug or a missing piece there):
//   - sodium-signatures (Ed25519 detached, the same scheme) instead of chloride, which is not
//     installed here; hyperlog-sodium supports both.
//   - node:readline instead of split2 + through2: the slide's through2 handler never calls next(),
//     so only the first line would ever be appended. Empty lines are skipped, as split2 does.
//   - the keys can come from a file, and the public key is printed: the slide's publisher makes a
//     new keypair and never shows it, so nobody could subscribe.
//   - log.replicate({live: true}) instead of log.replicate(): followers keep getting new entries.
//   - {wrtc, config: {iceServers: []}}: Node has no WebRTC of its own, and no public STUN here.
//   - a replication error (a peer sent a node this key did not sign) closes that peer instead of
//     crashing the process with an unhandled 'error' event.
//
// Output: one JSON object a line on stdout (for the tests):
//   {"event":"ready","publicKey":"<hex>","id":"<swarm id>"}
//   {"event":"subscribed"}                  the swarm's inbox is open (it announces itself now)
//   {"event":"append","key":"<node key>"}   the talk's console.log(node.key), one per line
//   {"event":"peer","id":"<peer id>"}, {"event":"disconnect","id":"<peer id>"}
//   {"event":"replication-error","id":"<peer id>","message":"..."}
//   {"event":"stdin-end"}, {"event":"error","message":"..."}, {"event":"fatal","message":"..."} (exit 3)
import { createRequire } from 'node:module'
import fs from 'node:fs'
import readline from 'node:readline'

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

function parseArgs (argv) {
  const args = { keys: null, hubs: [] }
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--keys') args.keys = argv[++i]
    else if (argv[i] === '--hub') args.hubs.push(argv[++i])
    else throw new Error('unknown argument ' + argv[i])
  }
  if (!args.hubs.length) args.hubs.push('http://127.0.0.1:8080')
  return args
}

process.on('uncaughtException', (err) => fatal('uncaught: ' + (err && err.stack ? err.stack : String(err))))

if (swarm) {
  let args
  try {
    args = parseArgs(process.argv.slice(2))
  } catch (err) {
    fatal(err.message + ' (usage: node js/feed-publisher.mjs [--keys keys.json] [--hub URL]...)')
  }
  if (args) main(args)
}

function main (args) {
  // set up the swarm and hyperlog
  let keypair
  if (args.keys) {
    const keys = JSON.parse(fs.readFileSync(args.keys, 'utf8'))
    keypair = { publicKey: Buffer.from(keys.publicKey, 'hex'), secretKey: Buffer.from(keys.secretKey, 'hex') }
  } else {
    keypair = sodium.keyPair()
  }
  const log = hyperlog(memdb(), hsodium(sodium, keypair))

  const hubs = args.hubs
  const hub = signalhub(keypair.publicKey.toString('hex'), hubs)
  const sw = swarm(hub, { wrtc, config: { iceServers: [] } })
  out({ event: 'ready', publicKey: keypair.publicKey.toString('hex'), id: sw.me })
  const inbox = hub.subscribers[1]
  if (inbox) inbox.once('open', () => out({ event: 'subscribed' }))

  // populate the log
  const rl = readline.createInterface({ input: process.stdin })
  rl.on('line', (line) => {
    if (!line.length) return
    log.append(Buffer.from(line, 'utf8'), function (err, node) {
      if (err) out({ event: 'error', message: err.message })
      else out({ event: 'append', key: node.key })
    })
  })
  rl.on('close', () => out({ event: 'stdin-end' }))

  // gossip!
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
