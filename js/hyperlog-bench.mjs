// The JavaScript side of swarm/benches/logbench.rs: real hyperlog@4.12.1 on memdb (signed with
// hyperlog-sodium@2.0.0 over sodium-signatures when asked), measured the way the Rust side is.
//
// Usage: node js/hyperlog-bench.mjs '{"nodes_unsigned": N, "nodes_signed": N, "appends_unsigned": M,
//                                     "appends_signed": M}'
// Prints one JSON line: {"append_unsigned": nodes/s, "append_signed": nodes/s,
//   "repl_unsigned": nodes/s, "repl_signed": nodes/s, and the counts used}
// - append_*: M sequential appends (each waits for the previous) to a memdb log;
// - repl_*: an N-node log (built by appends, not timed) replicated, default sync and not live,
//   to an empty memdb log over loopback TCP; timed from the connection to both streams' end.
// Signing: with "signer": "native" (the default), hyperlog-sodium signs and verifies with the
// Ed25519 of Node's own crypto (OpenSSL): native speed, as the JS stack had when
// sodium-signatures still found its native libsodium (its optional sodium-prebuilt 1.1.0, which
// npm leaves out here: its install script fails).
// With "signer": "tweetnacl", it goes through sodium-signatures 1.4.1 as installed today, which
// falls back to tweetnacl in pure JS: ~100x slower, so keep the signed counts small. Both make
// the same signatures (Ed25519 is deterministic).
import { createRequire } from 'node:module'
import crypto from 'node:crypto'
import net from 'node:net'

const require = createRequire(import.meta.url)
const hyperlog = require('hyperlog')
const memdb = require('memdb')
const hsodium = require('hyperlog-sodium')
const signatures = require('sodium-signatures')

const config = JSON.parse(process.argv[2] || '{}')
const signer = config.signer || 'native'
const counts = {
  nodes_unsigned: config.nodes_unsigned || 2000,
  nodes_signed: config.nodes_signed || 300,
  appends_unsigned: config.appends_unsigned || 1000,
  appends_signed: config.appends_signed || 200
}

const seed = Buffer.alloc(32, 1)
const keypair = signatures.keyPair(seed)

// hyperlog-sodium calls `sodium.sign(message, secretKey)` and `sodium.verify(message, signature,
// publicKey)` on an object that has those and no `crypto_sign`.
const PKCS8_ED25519 = Buffer.from('302e020100300506032b657004220420', 'hex')
const SPKI_ED25519 = Buffer.from('302a300506032b6570032100', 'hex')
const keyObjects = new Map()
function keyObject (kind, raw) {
  const id = kind + Buffer.from(raw).toString('hex')
  let key = keyObjects.get(id)
  if (!key) {
    key = kind === 'private'
      ? crypto.createPrivateKey({ key: Buffer.concat([PKCS8_ED25519, Buffer.from(raw).subarray(0, 32)]), format: 'der', type: 'pkcs8' })
      : crypto.createPublicKey({ key: Buffer.concat([SPKI_ED25519, Buffer.from(raw)]), format: 'der', type: 'spki' })
    keyObjects.set(id, key)
  }
  return key
}
const nativeEd25519 = {
  sign: (message, secretKey) => crypto.sign(null, message, keyObject('private', secretKey)),
  verify: (message, signature, publicKey) => {
    try {
      return crypto.verify(null, message, keyObject('public', publicKey), signature)
    } catch (err) {
      return false
    }
  }
}
const sodium = signer === 'tweetnacl' ? signatures : nativeEd25519

function makeLog (signed, role) {
  const opts = { valueEncoding: 'binary' }
  if (signed) {
    if (role === 'writer') Object.assign(opts, hsodium(sodium, keypair))
    else Object.assign(opts, hsodium(sodium, {}, { publicKey: [keypair.publicKey] }))
  }
  return hyperlog(memdb(), opts)
}

function value (i) {
  return Buffer.from(JSON.stringify({ time: 1461500000000 + i, who: 'bench', message: 'message number ' + i }))
}

function appendN (dag, n) {
  return new Promise((resolve, reject) => {
    let i = 0
    const next = () => {
      if (i === n) return resolve()
      dag.append(value(i++), (err) => (err ? reject(err) : next()))
    }
    next()
  })
}

async function appendRate (signed, m) {
  const dag = makeLog(signed, 'writer')
  const t0 = process.hrtime.bigint()
  await appendN(dag, m)
  const secs = Number(process.hrtime.bigint() - t0) / 1e9
  return m / secs
}

function replicateOnce (a, b) {
  return new Promise((resolve, reject) => {
    let ended = 0
    const done = () => { if (++ended === 2) { server.close(); resolve() } }
    const server = net.createServer((sock) => {
      const r = a.replicate()
      r.on('error', reject)
      r.on('end', done)
      sock.pipe(r).pipe(sock)
    })
    server.listen(0, '127.0.0.1', () => {
      const sock = net.connect(server.address().port, '127.0.0.1')
      const r = b.replicate()
      r.on('error', reject)
      r.on('end', done)
      sock.pipe(r).pipe(sock)
    })
  })
}

function count (dag) {
  return new Promise((resolve, reject) => {
    let n = 0
    dag.createReadStream().on('data', () => n++).on('error', reject).on('end', () => resolve(n))
  })
}

async function replRate (signed, N) {
  const a = makeLog(signed, 'writer')
  await appendN(a, N)
  const b = makeLog(signed, 'reader')
  const t0 = process.hrtime.bigint()
  await replicateOnce(a, b)
  const secs = Number(process.hrtime.bigint() - t0) / 1e9
  const got = await count(b)
  if (got !== N) throw new Error(`replicated ${got} of ${N} nodes`)
  return N / secs
}

// The two signers agree byte for byte, or the comparison means nothing.
{
  const message = Buffer.alloc(32, 7)
  const native = nativeEd25519.sign(message, keypair.secretKey)
  const nacl = signatures.sign(message, keypair.secretKey)
  if (!Buffer.from(native).equals(Buffer.from(nacl))) throw new Error('node:crypto and tweetnacl signatures differ')
  if (!nativeEd25519.verify(message, nacl, keypair.publicKey)) throw new Error('node:crypto does not verify tweetnacl')
}

const result = { ...counts, signer }
result.append_unsigned = await appendRate(false, counts.appends_unsigned)
result.append_signed = await appendRate(true, counts.appends_signed)
result.repl_unsigned = await replRate(false, counts.nodes_unsigned)
result.repl_signed = await replRate(true, counts.nodes_signed)
process.stdout.write(JSON.stringify(result) + '\n')
process.exit(0)
