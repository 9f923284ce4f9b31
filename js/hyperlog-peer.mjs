// A real hyperlog@4.12.1 peer (memdb, optionally signed with hyperlog-sodium@2.0.0 over
// sodium-signatures) for the Rust interop tests in swarm/tests/js_hyperlog.rs.
//
// Usage: node js/hyperlog-peer.mjs '<config JSON>'
//   config: {"id": "<local log id>", "seed": "<hex, 32 bytes: sign local nodes>",
//            "trust": ["<hex public key>", ...]}   (seed or trust turns on verification)
// Commands, one JSON object a line on stdin; replies and events, one a line on stdout:
//   {"cmd":"append","value":"<utf8>"}          -> {"reply":"append","key","log","seq","change"}
//   {"cmd":"nodes"}                            -> {"reply":"nodes","nodes":[{key,log,seq,change,value,links,identity}]}
//   {"cmd":"heads"}                            -> {"reply":"heads","keys":[...]}
//   {"cmd":"listen","mode"?,"live"?}           -> {"reply":"listen","port":N}  (replicates each connection)
//   {"cmd":"connect","port":N,"mode"?,"live"?} -> {"reply":"connect"}
// Events: {"event":"add","key","log","seq"}, {"event":"repl-end"}, {"event":"repl-error","message"},
//         {"event":"fatal","message"} (then exit 3).
import { createRequire } from 'node:module'
import net from 'node:net'
import readline from 'node:readline'

const require = createRequire(import.meta.url)

function out (obj) {
  process.stdout.write(JSON.stringify(obj) + '\n')
}

let hyperlog, memdb, hsodium, signatures
try {
  hyperlog = require('hyperlog')
  memdb = require('memdb')
  hsodium = require('hyperlog-sodium')
  signatures = require('sodium-signatures')
} catch (err) {
  out({ event: 'fatal', message: 'missing Node packages, run `npm ci --prefix js`: ' + err.message })
  process.exit(3)
}

const config = JSON.parse(process.argv[2] || '{}')
const opts = { valueEncoding: 'binary' }
if (config.id) opts.id = config.id
if (config.seed || config.trust) {
  const keypair = config.seed ? signatures.keyPair(Buffer.from(config.seed, 'hex')) : {}
  const trusted = (config.trust || []).map((h) => Buffer.from(h, 'hex'))
  Object.assign(opts, hsodium(signatures, keypair, { publicKey: trusted }))
}
const dag = hyperlog(memdb(), opts)

dag.on('add', (node) => out({ event: 'add', key: node.key, log: node.log, seq: node.seq }))

function replicateOver (sock, o) {
  const ropts = {}
  if (o.mode) ropts.mode = o.mode
  if (o.live !== undefined) ropts.live = o.live
  const r = dag.replicate(ropts)
  r.on('error', (err) => {
    out({ event: 'repl-error', message: err.message })
    sock.destroy()
  })
  r.on('end', () => out({ event: 'repl-end' }))
  sock.on('error', (err) => out({ event: 'socket-error', message: err.message }))
  sock.pipe(r).pipe(sock)
}

function describe (node) {
  return {
    key: node.key,
    log: node.log,
    seq: node.seq,
    change: node.change,
    value: Buffer.from(node.value).toString('utf8'),
    links: node.links,
    identity: node.identity ? Buffer.from(node.identity).toString('hex') : null
  }
}

function handle (cmd) {
  switch (cmd.cmd) {
    case 'append':
      dag.append(Buffer.from(cmd.value, 'utf8'), (err, node) => {
        if (err) return out({ reply: 'append', error: err.message })
        out({ reply: 'append', key: node.key, log: node.log, seq: node.seq, change: node.change })
      })
      break
    case 'nodes': {
      const nodes = []
      dag.createReadStream()
        .on('data', (node) => nodes.push(describe(node)))
        .on('error', (err) => out({ reply: 'nodes', error: err.message }))
        .on('end', () => out({ reply: 'nodes', nodes }))
      break
    }
    case 'heads':
      dag.heads((err, heads) => {
        if (err) return out({ reply: 'heads', error: err.message })
        out({ reply: 'heads', keys: heads.map((n) => n.key) })
      })
      break
    case 'listen': {
      const server = net.createServer((sock) => replicateOver(sock, cmd))
      server.listen(0, '127.0.0.1', () => out({ reply: 'listen', port: server.address().port }))
      break
    }
    case 'connect': {
      const sock = net.connect(cmd.port, '127.0.0.1')
      replicateOver(sock, cmd)
      out({ reply: 'connect' })
      break
    }
    default:
      out({ reply: cmd.cmd, error: 'unknown command' })
  }
}

const rl = readline.createInterface({ input: process.stdin })
rl.on('line', (line) => {
  if (line.trim()) handle(JSON.parse(line))
})
// Let pending replies out, then stop (live replications would keep the process alive).
rl.on('close', () => setTimeout(() => process.exit(0), 300))
