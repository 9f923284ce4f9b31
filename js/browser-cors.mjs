// A cross-origin page in headless Chromium subscribes to a hub with EventSource and broadcasts
// with fetch, for the Rust test in signalhub/tests/browser.rs.
//
//   node js/browser-cors.mjs <hub url> [timeout seconds, default 90] [page port, default any]
//
// It serves a small static page on 127.0.0.1:<some other port> (so the page's origin differs from
// the hub's), opens it in Chromium (/usr/bin/chromium, driven by playwright-core, with a fresh
// user-data dir), and the page:
//   1. opens `new EventSource(hub + '/v1/app/ch')`;
//   2. on `open`, POSTs `JSON.stringify(msg)` to `hub + '/v1/app/ch'` with fetch and
//      `Content-Type: application/json`, which needs a CORS preflight;
//   3. waits for its message to come back through the EventSource.
//
// stdout, one JSON object per line:
//   {"event":"page","origin":"http://127.0.0.1:…","userDataDir":"…"}   about to start Chromium
//                                     (the test removes userDataDir should this script be killed)
//   {"event":"result", "origin", "hub", "sent", "received", "fetchStatus", "fetchError",
//    "eventSourceErrors", "preflights":[{"method","url","status","requestHeaders","responseHeaders"}],
//    "requests":[{"method","url","type"}], "console":[…]}
// then it exits 0. It exits non-zero with the reason on stderr if Chromium cannot be started or
// the page does not finish in time.

import http from 'node:http'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { chromium } from 'playwright-core'

const CHROMIUM = '/usr/bin/chromium'
const [hubUrl, timeoutArg, pagePortArg] = process.argv.slice(2)
if (!hubUrl) {
  console.error('usage: node browser-cors.mjs <hub url> [timeout seconds]')
  process.exit(64)
}
const timeoutSeconds = Number(timeoutArg) || 90

function emit (event) {
  process.stdout.write(JSON.stringify(event) + '\n')
}

let cleanup = async () => {}
let failing = false
async function fail (message) {
  // Only the first failure speaks and cleans up (a timeout also makes the pending steps fail).
  if (failing) return new Promise(() => {})
  failing = true
  console.error(`browser-cors: ${message}`)
  await Promise.race([cleanup(), new Promise((resolve) => setTimeout(resolve, 5000))])
  process.exit(2)
}

let page = null
const timer = setTimeout(async () => {
  // Say how far the page got.
  let progress = 'no page yet'
  if (page) {
    progress = await Promise.race([
      page.evaluate(() => JSON.stringify(window.progress)).catch((err) => String(err)),
      new Promise((resolve) => setTimeout(() => resolve('the page does not answer'), 3000))
    ])
  }
  await fail(`timed out after ${timeoutSeconds} s (the page never finished); page state: ${progress}`)
}, timeoutSeconds * 1000)

// The page: everything it learns goes into `window.outcome`, a promise the driver awaits.
const PAGE = `<!doctype html>
<html><head><meta charset="utf-8"><title>signalhub CORS</title></head>
<body><p id="status">starting</p>
<script>
window.outcome = new Promise((resolve) => {
  const hub = new URL(location.href).searchParams.get('hub')
  const msg = { from: 'browser', origin: location.origin, text: 'cross-origin \\u2713 "quoted" \\u00e9', nonce: Math.random().toString(36).slice(2) }
  const out = {
    origin: location.origin,
    hub,
    sent: JSON.stringify(msg),
    received: null,
    fetchStatus: null,
    fetchError: null,
    eventSourceErrors: []
  }
  window.progress = out
  let fetched = false
  const finish = () => {
    if (out.received !== null && fetched) {
      document.getElementById('status').textContent = 'done'
      es.close()
      resolve(out)
    }
  }
  const es = new EventSource(hub + '/v1/app/ch')
  es.onerror = async () => {
    out.eventSourceErrors.push('error, readyState ' + es.readyState)
    // Refused for good (a private hub's 403 or 401): record what a POST gets too, and finish.
    if (es.readyState === EventSource.CLOSED && !fetched) {
      fetched = true
      try {
        const response = await fetch(hub + '/v1/app/ch', {
          method: 'POST',
          headers: { 'Content-Type': 'application/json' },
          body: out.sent
        })
        out.fetchStatus = response.status
        await response.text()
      } catch (err) {
        out.fetchError = String(err)
      }
      document.getElementById('status').textContent = 'refused'
      resolve(out)
    }
  }
  es.onmessage = (event) => {
    if (out.received === null) out.received = event.data
    finish()
  }
  es.addEventListener('open', async () => {
    try {
      const response = await fetch(hub + '/v1/app/ch', {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: out.sent
      })
      out.fetchStatus = response.status
      await response.text()
    } catch (err) {
      out.fetchError = String(err)
      out.received = out.received ?? ''
    }
    fetched = true
    finish()
  }, { once: true })
})
</script></body></html>
`

const server = http.createServer((req, res) => {
  if (req.method === 'GET' && req.url.startsWith('/index.html')) {
    res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8', 'Cache-Control': 'no-store' })
    res.end(PAGE)
  } else if (req.url === '/favicon.ico') {
    res.writeHead(204)
    res.end()
  } else {
    res.writeHead(404)
    res.end()
  }
})
await new Promise((resolve, reject) => {
  server.once('error', reject)
  server.listen(Number(pagePortArg) || 0, '127.0.0.1', resolve)
})
const origin = `http://127.0.0.1:${server.address().port}`
const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'signalhub-browser-'))
let context = null
let cleaning = null
cleanup = () => {
  cleaning ??= (async () => {
    if (context) await context.close().catch(() => {})
    server.close()
    try {
      fs.rmSync(userDataDir, { recursive: true, force: true, maxRetries: 10, retryDelay: 100 })
    } catch (err) {
      console.error(`browser-cors: could not remove ${userDataDir}: ${err.message}`)
    }
  })()
  return cleaning
}
emit({ event: 'page', origin, userDataDir })

if (!fs.existsSync(CHROMIUM)) await fail(`${CHROMIUM} not found: apt-get install chromium`)
try {
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync'
    ],
    timeout: timeoutSeconds * 1000
  })
} catch (err) {
  await fail(`cannot start ${CHROMIUM}: ${err.message}`)
}

page = context.pages()[0] ?? await context.newPage()
const consoleMessages = []
page.on('console', (message) => consoleMessages.push(`${message.type()}: ${message.text()}`))
page.on('pageerror', (err) => consoleMessages.push(`pageerror: ${err.message}`))

// The DevTools protocol reports the CORS preflight as a request of its own (Playwright's `request`
// event does not); collect every request and response the page makes.
const requests = new Map()
const cdp = await context.newCDPSession(page)
cdp.on('Network.requestWillBeSent', ({ requestId, request, type }) => {
  requests.set(requestId, { method: request.method, url: request.url, type, requestHeaders: request.headers })
})
cdp.on('Network.responseReceived', ({ requestId, response, type }) => {
  const entry = requests.get(requestId) ?? { url: response.url, type }
  entry.status = response.status
  entry.responseHeaders = response.headers
  requests.set(requestId, entry)
})
await cdp.send('Network.enable')

try {
  await page.goto(`${origin}/index.html?hub=${encodeURIComponent(hubUrl)}`, { timeout: timeoutSeconds * 1000 })
  const outcome = await page.evaluate(() => window.outcome)
  const all = [...requests.values()]
  emit({
    event: 'result',
    ...outcome,
    preflights: all.filter((r) => r.method === 'OPTIONS'),
    requests: all.map(({ method, url, type, status }) => ({ method, url, type, status })),
    console: consoleMessages
  })
} catch (err) {
  await fail(`the page failed: ${err.message}\nconsole: ${JSON.stringify(consoleMessages)}`)
}
clearTimeout(timer)
await cleanup()
process.exit(0)
