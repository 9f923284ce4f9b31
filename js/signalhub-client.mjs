// Drives the real `signalhub` 4.9.0 client (Node build: event-source-stream over `request`)
// against a hub, for the Rust interoperability tests in signalhub/tests/js_clients.rs.
//
//   node js/signalhub-client.mjs <hub url> <scenario> [timeout seconds, default 90]
//
// Scenarios (what is subscribed at start; the app is always `interop`):
//   single     subscribe('single')
//   multi      subscribe(['a', 'b'])        one GET /v1/interop/a,b
//   broadcast  no subscription
//   reconnect  subscribe('ch')
//
// Protocol: one JSON object per line.
//   stdout (events):
//     {"event":"ready"}                                     the client exists (every scenario)
//     {"event":"open"|"retry"|"reconnect"|"close","channels":…}   from the subscription stream
//     {"event":"data","channels":…,"data":<parsed message>}
//     {"event":"broadcasted","id":…,"body":<JSON.stringify(message)>,"error":null|"…"}
//     {"event":"closed"}                                    then the process exits 0
//   stdin (commands):
//     {"cmd":"broadcast","id":…,"channel":"…","message":…}
//     {"cmd":"close"}
// On timeout, or if stdin ends before `close`, it prints the reason to stderr and exits non-zero.

import readline from 'node:readline'
import signalhub from 'signalhub'

const [hubUrl, scenario, timeoutArg] = process.argv.slice(2)
const SCENARIOS = {
  single: 'single',
  multi: ['a', 'b'],
  broadcast: null,
  reconnect: 'ch'
}
if (!hubUrl || !(scenario in SCENARIOS)) {
  console.error(
    `usage: node signalhub-client.mjs <hub url> <${Object.keys(SCENARIOS).join('|')}> [timeout seconds]`
  )
  process.exit(64)
}
const timeoutSeconds = Number(timeoutArg) || 90

function emit (event) {
  process.stdout.write(JSON.stringify(event) + '\n')
}

function fail (message) {
  console.error(`signalhub-client (${scenario}): ${message}`)
  process.exit(2)
}

const timer = setTimeout(
  () => fail(`timed out after ${timeoutSeconds} s without a close command from the test`),
  timeoutSeconds * 1000
)

const hub = signalhub('interop', [hubUrl])
let closing = false

const channels = SCENARIOS[scenario]
if (channels !== null) {
  const stream = hub.subscribe(channels)
  for (const name of ['open', 'retry', 'reconnect', 'close']) {
    stream.on(name, () => emit({ event: name, channels }))
  }
  stream.on('data', (data) => emit({ event: 'data', channels, data }))
  stream.on('error', (err) => emit({ event: 'error', channels, error: String(err) }))
}
emit({ event: 'ready' })

function onCommand (command) {
  switch (command.cmd) {
    case 'broadcast': {
      const body = JSON.stringify(command.message)
      hub.broadcast(command.channel, command.message, (err) => {
        emit({ event: 'broadcasted', id: command.id, body, error: err ? String(err.message || err) : null })
      })
      break
    }
    case 'close':
      closing = true
      hub.close(() => {
        clearTimeout(timer)
        emit({ event: 'closed' })
        process.exit(0)
      })
      break
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
