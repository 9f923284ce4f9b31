// Drives the real `signalhubws` 1.0.12 client in Node (with `ws` as its WebSocket class) against a
// hub, for the Rust interoperability tests in signalhub/tests/js_clients.rs.
//
//   node js/signalhubws-client.mjs <hub ws url> <scenario> [timeout seconds, default 90]
//
// Scenarios (the app is always `interop`; every client subscribes to channel `ch` at start):
//   pair    two independent clients, A and B (one WebSocket each)
//   bridge  one client, A
//
// Protocol: one JSON object per line.
//   stdout (events):
//     {"event":"open","client":"A"}                         the client's channel stream opened
//     {"event":"data","client":"A","channel":"ch","data":<message>}
//     {"event":"broadcasted","client":"A","id":…,"frame":<the JSON text the client sent>}
//     {"event":"error","client":"A","error":"…"}
//     {"event":"closed"}                                    then the process exits 0
//   stdin (commands):
//     {"cmd":"broadcast","client":"A","id":…,"channel":"…","message":…}
//     {"cmd":"close"}
// On timeout, or if stdin ends before `close`, it prints the reason to stderr and exits non-zero.

import readline from 'node:readline'
import signalhubws from 'signalhubws'
import WebSocket from 'ws'

const [hubUrl, scenario, timeoutArg] = process.argv.slice(2)
const SCENARIOS = { pair: ['A', 'B'], bridge: ['A'] }
if (!hubUrl || !(scenario in SCENARIOS)) {
  console.error(
    `usage: node signalhubws-client.mjs <hub ws url> <${Object.keys(SCENARIOS).join('|')}> [timeout seconds]`
  )
  process.exit(64)
}
const timeoutSeconds = Number(timeoutArg) || 90
const CHANNEL = 'ch'

function emit (event) {
  process.stdout.write(JSON.stringify(event) + '\n')
}

function fail (message) {
  console.error(`signalhubws-client (${scenario}): ${message}`)
  process.exit(2)
}

const timer = setTimeout(
  () => fail(`timed out after ${timeoutSeconds} s without a close command from the test`),
  timeoutSeconds * 1000
)

// A WebSocket class that records what signalhubws sends, so that the test can compare it with
// what the hub forwards.
const sent = new Map()
function recordingWebSocket (name) {
  return class extends WebSocket {
    send (data, ...rest) {
      sent.set(name, String(data))
      return super.send(data, ...rest)
    }
  }
}

const clients = new Map()
for (const name of SCENARIOS[scenario]) {
  const client = signalhubws('interop', [hubUrl], recordingWebSocket(name))
  client.on('error', ({ url }) => emit({ event: 'error', client: name, error: `socket error on ${url}` }))
  const stream = client.subscribe(CHANNEL)
  stream.on('open', () => emit({ event: 'open', client: name }))
  stream.on('data', (data) => emit({ event: 'data', client: name, channel: CHANNEL, data }))
  for (const socket of client.sockets) {
    socket.addEventListener('close', (event) => {
      if (!closing) emit({ event: 'error', client: name, error: `socket closed: ${event.code} ${event.reason}` })
    })
  }
  clients.set(name, client)
}
let closing = false

function onCommand (command) {
  switch (command.cmd) {
    case 'broadcast': {
      const client = clients.get(command.client)
      if (!client) fail(`no client ${command.client}`)
      client.broadcast(command.channel, command.message, () => {
        emit({ event: 'broadcasted', client: command.client, id: command.id, frame: sent.get(command.client) })
      })
      break
    }
    case 'close': {
      closing = true
      let pending = clients.size
      for (const client of clients.values()) {
        client.close(() => {
          if (--pending > 0) return
          clearTimeout(timer)
          emit({ event: 'closed' })
          process.exit(0)
        })
      }
      break
    }
    default:
      fail(`unknown command ${JSON.stringify(command)}`)
  }
}

const lines = readline.createInterface({ input: process.stdin })
lines.on('line', (line) => {
  if (!line.trim()) return
  let command
  try {
    command = JSON.parse(line)
  } catch (err) {
    fail(`stdin line is not JSON: ${line}`)
  }
  onCommand(command)
})
lines.on('close', () => {
  if (!closing) fail('stdin ended before a close command (did the test die?)')
})
