// A webrtc-swarm@2.9.0 peer inside headless Chromium (the browser's own WebRTC), driven like
// js/swarm-peer.mjs, for the Rust interop tests and the Rust <-> Chromium benchmark.
//
// Usage: node js/swarm-browser.mjs '<config JSON>'
//   config: {"hubs": ["http://127.0.0.1:PORT", ...], "app": "<app>",
//            "id"?: "<uuid to use>", "maxPeers"?: N, "iceServersFromHub"?: true, "sinkAll"?: true}
//   iceServersFromHub: the page takes the STUN/TURN servers the first hub hands out at
//   GET /ice-servers, as js/swarm-peer.mjs does. sinkAll: as js/swarm-peer.mjs.
//   Needs the page bundle: `npm run --prefix js build` (writes js/dist/swarm-page.js).
//
// It serves a small page and the bundle on 127.0.0.1:<free port> (Node's http), starts
// /usr/bin/chromium through playwright-core with a fresh user-data dir under os.tmpdir() (removed at
// exit), grants camera and microphone to the page's origin (without that grant Chromium gathers no
// 127.0.0.1 candidate), and opens the page, which runs js/browser/swarm-page.js.
//
// Commands on stdin, replies and events on stdout: exactly those of js/swarm-peer.mjs (send,
// send-binary, sink, sunk, blast, peers, id, close; events ready, subscribed, connect, disconnect,
// data, sunk, error, fatal, closed), all carried through one ordered channel from the page. Extra:
//   {"event":"browser","origin":"http://127.0.0.1:…","userDataDir":"…"}  first line, before Chromium
//       starts (should this script be killed, the caller removes userDataDir)
//   {"event":"console","type":"error"|"warning"|"pageerror","text":"…"}  the page's console
// "close" (or the end of stdin) closes the swarm, then Chromium, removes the user-data dir, prints
// {"event":"closed"} and exits 0. A failure to start prints {"event":"fatal","message"} and exits 3.

import http from 'node:http'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import readline from 'node:readline'
import { fileURLToPath } from 'node:url'
import { CHROMIUM, launchForWebRtc, relayConsole } from './chromium.mjs'

const here = path.dirname(fileURLToPath(import.meta.url))
const BUNDLE = path.join(here, 'dist', 'swarm-page.js')

function out (obj) {
  process.stdout.write(JSON.stringify(obj) + '\n')
}

let cleanup = async () => {}
let closing = false // a "close" is under way: Chromium going away is expected
let ending = false
// Reports, cleans up and exits 3; the returned promise never settles, so `await fatal(...)` stops the caller.
async function fatal (message) {
  if (ending) return new Promise(() => {})
  ending = true
  out({ event: 'fatal', message })
  await Promise.race([cleanup(), new Promise((resolve) => setTimeout(resolve, 5000))])
  process.stdout.write('', () => process.exit(3))
  return new Promise(() => {})
}

let chromium
try {
  ({ chromium } = await import('playwright-core'))
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
  out({ event: 'fatal', message: `bad config (usage: node js/swarm-browser.mjs '{"hubs":[url],"app":name}'): ${err.message}` })
  process.exit(3)
}
if (!fs.existsSync(BUNDLE)) {
  out({ event: 'fatal', message: `${BUNDLE} is missing: run \`npm run --prefix js build\` (after \`npm ci --prefix js\`)` })
  process.exit(3)
}
if (!fs.existsSync(CHROMIUM)) {
  out({ event: 'fatal', message: `${CHROMIUM} not found: apt-get install chromium` })
  process.exit(3)
}

const PAGE = `<!doctype html>
<html><head><meta charset="utf-8"><title>webrtc-swarm peer</title></head>
<body><script src="/swarm-page.js"></script></body></html>
`
const bundle = fs.readFileSync(BUNDLE)
const server = http.createServer((req, res) => {
  const url = req.url.split('?')[0]
  if (req.method === 'GET' && url === '/index.html') {
    res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8', 'Cache-Control': 'no-store' })
    res.end(PAGE)
  } else if (req.method === 'GET' && url === '/swarm-page.js') {
    res.writeHead(200, { 'Content-Type': 'text/javascript; charset=utf-8', 'Cache-Control': 'no-store' })
    res.end(bundle)
  } else {
    res.writeHead(url === '/favicon.ico' ? 204 : 404)
    res.end()
  }
})
await new Promise((resolve, reject) => {
  server.once('error', reject)
  server.listen(0, '127.0.0.1', resolve)
})
const origin = `http://127.0.0.1:${server.address().port}`
const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'swarm-browser-'))
let context = null
let cleaning = null
cleanup = () => {
  cleaning ??= (async () => {
    if (context) await context.close().catch(() => {})
    server.close()
    try {
      fs.rmSync(userDataDir, { recursive: true, force: true, maxRetries: 10, retryDelay: 100 })
    } catch (err) {
      out({ event: 'error', message: `could not remove ${userDataDir}: ${err.message}` })
    }
  })()
  return cleaning
}
for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.on(signal, async () => {
    closing = true
    await Promise.race([cleanup(), new Promise((resolve) => setTimeout(resolve, 3000))])
    process.exit(128 + os.constants.signals[signal])
  })
}
out({ event: 'browser', origin, userDataDir })

try {
  context = await launchForWebRtc(chromium, userDataDir, origin)
} catch (err) {
  await fatal(`cannot start ${CHROMIUM}: ${err.message}`)
}
context.on('close', () => {
  if (!closing) fatal('Chromium went away')
})

const page = context.pages()[0] ?? await context.newPage()
relayConsole(page, out)
page.on('crash', () => fatal('the page crashed'))

// Every event and every reply reaches stdout through this one binding, so they keep the page's order.
await page.exposeFunction('emitEvent', (ev) => {
  if (closing && ev.reply === 'close') return // the close path prints its own reply
  if (ev.event === 'fatal') return fatal(ev.message)
  out(ev)
})

const query = new URLSearchParams()
for (const hub of config.hubs) query.append('hub', hub)
query.set('app', config.app)
if (config.id) query.set('id', config.id)
if (config.maxPeers) query.set('maxPeers', String(config.maxPeers))
if (config.iceServersFromHub) query.set('iceFromHub', '1')
if (config.sinkAll) query.set('sinkAll', '1')
try {
  await page.goto(`${origin}/index.html?${query}`, { timeout: 60000 })
  await page.waitForFunction(() => typeof window.swarmCommand === 'function', null, { timeout: 60000 })
} catch (err) {
  await fatal(`the page did not start: ${err.message}`)
}

async function closeAndExit () {
  if (closing) return
  closing = true
  let reply
  try {
    reply = await Promise.race([
      page.evaluate((cmd) => window.swarmCommand(cmd), { cmd: 'close' }),
      new Promise((resolve) => setTimeout(() => resolve({ reply: 'close', error: 'the page did not answer in 5 s' }), 5000))
    ])
  } catch (err) {
    reply = { reply: 'close', error: err.message }
  }
  out(reply)
  await Promise.race([cleanup(), new Promise((resolve) => setTimeout(resolve, 10000))])
  out({ event: 'closed' })
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
  // The page answers through emitEvent; evaluate only starts the command.
  page.evaluate((c) => { window.swarmCommand(c).then((reply) => window.emitEvent(reply)) }, cmd)
    .catch((err) => {
      if (!closing) out({ reply: cmd.cmd, ...(cmd.seq !== undefined ? { seq: cmd.seq } : {}), error: 'page: ' + err.message })
    })
})
rl.on('close', closeAndExit)
