// The browser chat page (js/browser/chat/, bundled into js/dist/chat/) in headless Chromium, as a
// user would open it from a hub, driven over stdin/stdout for the Rust tests (tests/chat_browser.rs).
//
// Usage: node js/chat-browser.mjs '<config JSON>'
//   config: {"url": "http://127.0.0.1:PORT/?hub=…#room", "nick"?: "<nick>"}
//   The page must be served at that address, e.g. by `signalhub listen --web js/dist/chat`.
//
// It starts /usr/bin/chromium through playwright-core with a fresh user-data dir under os.tmpdir()
// (removed at exit), grants camera and microphone to the page's origin (without that grant
// Chromium gathers no 127.0.0.1 candidate, and two browsers never connect), opens the page with
// the time zone of $TZ (UTC when unset, as the Rust chat prints), and sets the nick.
//
// Commands on stdin, one JSON object a line; replies and events on stdout, one a line:
//   {"cmd":"say","text":"…","room"?:"#r"}   -> {"reply":"say","room","key"}   (a message, never a command)
//   {"cmd":"input","text":"…"}              -> {"reply":"input"}              (as typed: "/join #x" works)
//   {"cmd":"lines","room"?:"#r"}            -> {"reply":"lines","room","lines":["HH:MM:SS <nick> text", …]}
//   {"cmd":"entries","room"?:"#r"}          -> {"reply":"entries","room","entries":[{key,time,who,message,text}]}
//   {"cmd":"peers","room"?:"#r"}            -> {"reply":"peers","room","peers":N}
//   {"cmd":"ice"}                           -> {"reply":"ice","servers":[…]}   (the hub's ICE servers, once fetched)
//   {"cmd":"join","room":"#r"}              -> {"reply":"join","room"}        (and shows it)
//   {"cmd":"part","room"?:"#r"}             -> {"reply":"part","room"}
//   {"cmd":"nick","nick":"…"}               -> {"reply":"nick","nick"}
//   {"cmd":"close"} (or the end of stdin)   -> {"event":"closed"}, exit 0
// A command's "seq", if any, comes back in its reply; a failed command replies {"reply",…,"error"}.
// Events:
//   {"event":"browser","origin","userDataDir"}  first, before Chromium starts (should this script be
//       killed, the caller removes userDataDir)
//   {"event":"ready","nick","room","app"}   the page runs and has the nick
//   {"event":"line","room","key","time","who","message","text":"HH:MM:SS <who> message"}  every
//       line the page shows, local or received, in arrival order (history too)
//   {"event":"peers","room","peers":N}      the count of connected peers changed
//   {"event":"console","type":"error"|"warning"|"pageerror","text"}  the page's console
//   {"event":"fatal","message"}             then exit 3

import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import readline from 'node:readline'
import { CHROMIUM, launchForWebRtc, relayConsole } from './chromium.mjs'


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
let origin
try {
  config = JSON.parse(process.argv[2] || '')
  if (typeof config.url !== 'string') throw new Error('"url" is required')
  origin = new URL(config.url).origin
  if (config.nick !== undefined && (typeof config.nick !== 'string' || !config.nick.trim())) {
    throw new Error('"nick" must be a non-empty string')
  }
} catch (err) {
  out({ event: 'fatal', message: `bad config (usage: node js/chat-browser.mjs '{"url":"http://127.0.0.1:PORT/#room","nick":"me"}'): ${err.message}` })
  process.exit(3)
}
if (!fs.existsSync(CHROMIUM)) {
  out({ event: 'fatal', message: `${CHROMIUM} not found: apt-get install chromium` })
  process.exit(3)
}

const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'chat-browser-'))
let context = null
let cleaning = null
cleanup = () => {
  cleaning ??= (async () => {
    if (context) await context.close().catch(() => {})
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
  context = await launchForWebRtc(chromium, userDataDir, origin, {
    // The Rust chat prints UTC times when TZ is unset; so does the page then.
    timezoneId: process.env.TZ ? undefined : 'UTC'
  })
} catch (err) {
  await fatal(`cannot start ${CHROMIUM}: ${err.message}`)
}
context.on('close', () => {
  if (!closing) fatal('Chromium went away')
})

const page = context.pages()[0] ?? await context.newPage()
relayConsole(page, out)
page.on('crash', () => fatal('the page crashed'))

// The page's events and the replies to commands reach stdout through this one binding, in order.
await page.exposeFunction('chatEvent', (ev) => {
  if (!ev || typeof ev !== 'object') return
  if (ev.event === 'ready') return // ours follows, once the nick is set
  out(ev)
})

try {
  await page.goto(config.url, { timeout: 60000 })
  await page.waitForFunction(() => typeof window.chatTest === 'object', null, { timeout: 60000 })
  const ready = await page.evaluate((nick) => {
    if (nick !== undefined) window.chatTest.nick(nick)
    return { nick: window.chatTest.nick(), room: window.chatTest.current(), app: window.chatTest.app() }
  }, config.nick)
  out({ event: 'ready', ...ready })
} catch (err) {
  await fatal(`the page did not start: ${err.message}`)
}

// Runs in the page: one command, its reply sent back through window.chatEvent.
async function pageCommand (cmd) {
  const t = window.chatTest
  const room = cmd.room || t.current()
  let reply
  try {
    switch (cmd.cmd) {
      case 'say':
        reply = { room, key: await t.say(String(cmd.text ?? ''), room) }
        break
      case 'input':
        t.input(String(cmd.text ?? ''))
        reply = {}
        break
      case 'lines':
        reply = { room, lines: t.lines(room) }
        break
      case 'entries':
        reply = { room, entries: t.entries(room) }
        break
      case 'peers':
        reply = { room, peers: t.peers(room) }
        break
      case 'ice':
        reply = { servers: window.chatIceServers ?? [] }
        break
      case 'join':
        reply = { room: t.join(String(cmd.room ?? '')) ?? null }
        break
      case 'part':
        t.part(cmd.room)
        reply = { room }
        break
      case 'nick':
        reply = { nick: t.nick(cmd.nick) }
        break
      default:
        reply = { error: `unknown command ${JSON.stringify(cmd.cmd)}` }
    }
  } catch (err) {
    reply = { error: err.message || String(err) }
  }
  window.chatEvent({ reply: cmd.cmd, ...(cmd.seq !== undefined ? { seq: cmd.seq } : {}), ...reply })
}

async function closeAndExit () {
  if (closing) return
  closing = true
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
    if (!cmd || typeof cmd !== 'object' || typeof cmd.cmd !== 'string') throw new Error('want {"cmd": …}')
  } catch (err) {
    out({ event: 'error', message: 'bad command line: ' + err.message })
    return
  }
  if (cmd.cmd === 'close') return closeAndExit()
  page.evaluate(pageCommand, cmd).catch((err) => {
    if (!closing) out({ reply: cmd.cmd, ...(cmd.seq !== undefined ? { seq: cmd.seq } : {}), error: 'page: ' + err.message })
  })
})
rl.on('close', closeAndExit)
