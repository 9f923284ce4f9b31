// A browser chat in the rooms of substack's chatwizard (2016), for any modern browser: per room a
// webrtc-swarm@2.9.0 full mesh found through a signalhub@4.9.0 hub, and an in-memory
// hyperlog@4.12.1 (memdb, valueEncoding 'json') replicated live with every peer. Lines are
// `{"time","who","message"}`, shown sorted by time as `HH:MM:SS <who> message`. js/build.mjs
// bundles it into js/dist/chat/ (index.html, chat.js, style.css), which `signalhub listen --web
// js/dist/chat` serves.
//
// Address: <page>?hub=<url>[&hub=<url>…][&nick=<name>][&ice=<stun/turn url>…]#<room>
//   hub   the signalhub(s); default: the page's own origin (the hub that served it)
//   nick  the starting nick; default: 6 random hex chars, new on every load
//   ice   ICE servers; default: none (host candidates only: a LAN, or one machine)
//   #room the room to open (`#nodeconflondon` is the room "#nodeconflondon"); it tracks the
//         current room. `#!status` is the local status window.
//
// `/me waves` writes the ordinary chatwizard line `* nick waves` (chatwizard has no action
// line; it shows `<nick> * nick waves`), shown here and in the terminal chat as `* nick waves`.
// Notices (local, never sent): peers joining and leaving a room, and nick changes, seen when a
// writer's log (a page or chat process) writes under a new nick, since chatwizard announces none.
//
// For tests, window.chatTest: say(text[, room]) -> Promise<key>, input(text) (as typed),
// lines([room]) -> ["HH:MM:SS <who> message", …] sorted by time, entries([room]),
// peers([room]) -> n, join(room), part([room]), nick([name]), rooms(), current(). When the page
// has a function window.chatEvent (a test driver's), it is called with {event:"ready"},
// {event:"line",room,key,time,who,message,text} for every line (in arrival order),
// {event:"notice",room,message} for every notice and {event:"peers",room,peers}.
import signalhub from 'signalhub'
import webrtcSwarm from 'webrtc-swarm'
import hyperlog from 'hyperlog'
import memdb from 'memdb'
import { PassThrough } from 'stream'
import { createHash } from './crypto.js'

const STATUS = '!status'
// Replication starts this long after a peer connects: a data channel's first messages can arrive
// out of order in some WebRTC stacks, and hyperlog's framing does not survive that.
const REPLICATE_DELAY_MS = 250
// A new peer that sends nothing at all (not even hyperlog's handshake) this long after
// replication starts is dropped, so that the next announcement connects afresh.
const SILENT_PEER_MS = 5000
// A browser keeps at most 6 HTTP/1.1 connections to one host (across all its tabs); each room
// holds one open subscription, and the POSTs need one more.
const MAX_ROOMS_HTTP1 = 5
const HELP = [
  'commands:',
  '  /join #room    /j   join a room and show it',
  '  /part [#room]  /p   leave this room (or the one named)',
  '  /nick NAME     /n   change your nick',
  '  /me does x          an action, shown as * nick does x',
  '  /names              the nicks that wrote in this room',
  '  /clear              empty this window',
  '  /help          /h   this text',
  'keys: PgUp/PgDn scroll; Ctrl+Up/Down or Alt+Up/Down switch rooms;',
  '  Up/Down recall what you typed; Tab completes a nick; //text sends /text.',
  'Rooms live in memory: their history is what the peers still in them hold.'
]

const params = new URL(window.location.href).searchParams
const hubs = params.getAll('hub').map((h) => h.trim()).filter(Boolean)
if (!hubs.length && /^https?:$/.test(window.location.protocol)) hubs.push(window.location.origin)
const iceServers = params.getAll('ice').map((h) => h.trim()).filter(Boolean).map((urls) => ({ urls }))
// Without ?ice=, the hub's STUN/TURN servers (GET /ice-servers: short-lived TURN credentials),
// fetched now and again before they expire. webrtc-swarm hands this same array to every new
// connection, so filling it in place serves the rooms joined before the answer came.
if (!iceServers.length && hubs.length) loadHubIceServers()
let nick = cleanNick(params.get('nick') || '') || randomHex(3)

const rooms = new Map() // name -> room, in the order joined; STATUS first
let current = STATUS

// ---------------------------------------------------------------------------------------------
// helpers

async function loadHubIceServers () {
  let servers
  try {
    const res = await fetch(hubs[0].replace(/\/+$/, '') + '/ice-servers')
    if (!res.ok) return // 404: the hub offers none (host candidates only)
    servers = await res.json()
  } catch (err) {
    return
  }
  if (!Array.isArray(servers)) return
  iceServers.splice(0, iceServers.length, ...servers)
  window.chatIceServers = iceServers // for the tests and the curious
  // TURN REST API usernames begin with their expiry (Unix seconds): fetch again at 4/5 of it.
  const expiries = servers
    .map((server) => Number(String(server.username || '').split(':')[0]))
    .filter((t) => Number.isFinite(t) && t > 0)
  if (expiries.length) {
    const left = Math.min(...expiries) * 1000 - Date.now()
    setTimeout(loadHubIceServers, Math.max(60000, left * 0.8))
  }
}

function randomHex (bytes) {
  const buf = new Uint8Array(bytes)
  window.crypto.getRandomValues(buf)
  return Array.from(buf, (b) => b.toString(16).padStart(2, '0')).join('')
}

function sha1hex (text) {
  return createHash('sha1').update(text, 'utf8').digest('hex')
}

function cleanNick (name) {
  return String(name).trim().replace(/\s+/g, '_').slice(0, 64)
}

function pad (n) {
  return String(n).padStart(2, '0')
}

function clock (time) {
  const d = new Date(time)
  if (Number.isNaN(d.getTime())) return '--:--:--'
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`
}

function escapeRegExp (text) {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')
}

function mentions (message) {
  return new RegExp(`(^|[^\\w])${escapeRegExp(nick)}($|[^\\w])`, 'i').test(message)
}

function nickColor (who) {
  let h = 0
  for (let i = 0; i < who.length; i++) h = (h * 31 + who.charCodeAt(i)) >>> 0
  return `hsl(${h % 360}, 65%, 65%)`
}

function testEvent (ev) {
  if (typeof window.chatEvent === 'function') {
    try {
      window.chatEvent(ev)
    } catch (err) {}
  }
}

// The room name for what a user typed: `#` added when missing; `!status` and `#!status` are the
// status window. Empty: null.
function roomName (raw) {
  const name = String(raw || '').trim()
  if (!name || name === '#') return null
  if (name === STATUS || name === '#' + STATUS) return STATUS
  return (name.startsWith('#') ? name : '#' + name).slice(0, 200)
}

// ---------------------------------------------------------------------------------------------
// rooms

// webrtc-swarm subscribes twice per swarm (to `all` and to its own id), and a browser keeps at
// most 6 HTTP/1.1 connections to one host: 3 rooms would take them all and leave none for the
// POSTs. One subscription to `all,<me>` carries both; messages are told apart by their shape
// (a signal for me has `signal`; an announcement on `all` has none).
function sharedSubscription (hub, me, onBroadcastResult) {
  const all = new PassThrough({ objectMode: true })
  const mine = new PassThrough({ objectMode: true })
  let source = null
  function open () {
    source = hub.subscribe(['all', me])
    source.on('open', () => {
      all.emit('open')
      mine.emit('open')
    })
    source.on('data', (data) => {
      if (!data || typeof data !== 'object') return
      if (data.signal !== undefined) mine.write(data)
      else all.write(data)
    })
    source.on('error', () => {})
  }
  return {
    subscribe (channel) {
      if (!source) open()
      return channel === me ? mine : all
    },
    broadcast (channel, message, cb) {
      if (hub.closed) return cb && cb(new Error('closed'))
      hub.broadcast(channel, message, (err) => {
        onBroadcastResult(err)
        if (cb) cb(err)
      })
    },
    close (cb) {
      all.end()
      mine.end()
      hub.close(cb)
    }
  }
}

function newRoom (name) {
  return {
    name,
    items: [], // lines and local notices, sorted by time
    keys: new Set(),
    peers: new Set(),
    nicks: new Set(),
    writers: new Map(), // log id -> { nick, time }: the nick each writer last wrote under
    activity: false,
    mentioned: false,
    hubError: null,
    closed: false
  }
}

function openRoom (name) {
  const room = newRoom(name)
  room.app = sha1hex('chatwizard.' + name)
  room.log = hyperlog(memdb(), { valueEncoding: 'json' })
  room.reader = room.log.createReadStream({ live: true })
  room.reader.on('data', (node) => addNode(room, node))
  room.reader.on('error', (err) => notice(room, 'reading the log failed: ' + err.message))
  if (!hubs.length) {
    notice(room, 'no hub: open this page from a hub, or add ?hub=<url> to its address')
    return room
  }
  const me = randomHex(12)
  const hub = sharedSubscription(signalhub(room.app, hubs), me, (err) => {
    const was = room.hubError
    room.hubError = err ? err.message || String(err) : null
    if (room.hubError !== was) {
      if (room.hubError) notice(room, 'the hub did not take a message: ' + room.hubError)
      drawStatus()
    }
  })
  room.swarm = webrtcSwarm(hub, { uuid: me, config: { iceServers } })
  room.swarm.on('peer', (peer, id) => addPeer(room, peer, id))
  return room
}

function addPeer (room, peer, id) {
  if (room.closed) return peer.destroy()
  room.peers.add(peer)
  notice(room, `peer ${String(id).slice(0, 8)} joined ${room.name} (${plural(room.peers.size, 'peer')})`)
  peersChanged(room)
  let replication = null
  let watchdog = null
  const start = setTimeout(() => {
    if (room.closed || peer.destroyed) return
    replication = room.log.replicate({ live: true })
    replication.on('error', (err) => {
      notice(room, `replication with a peer failed (${err.message}): dropping it`)
      peer.destroy()
    })
    let heard = false
    peer.pipe(replication).pipe(peer)
    // Added after pipe, so that no data is taken before replication sees it.
    peer.once('data', () => { heard = true })
    watchdog = setTimeout(() => {
      if (!heard && !peer.destroyed) peer.destroy()
    }, SILENT_PEER_MS)
  }, REPLICATE_DELAY_MS)
  peer.on('error', () => {})
  peer.once('close', () => {
    clearTimeout(start)
    clearTimeout(watchdog)
    if (replication) replication.destroy()
    if (room.peers.delete(peer)) {
      if (!room.closed) notice(room, `peer ${String(id).slice(0, 8)} left ${room.name} (${plural(room.peers.size, 'peer')})`)
      peersChanged(room)
    }
  })
}

function peersChanged (room) {
  testEvent({ event: 'peers', room: room.name, peers: room.peers.size })
  if (room.name === current) drawStatus()
}

function closeRoom (room) {
  room.closed = true
  if (room.swarm) room.swarm.close()
  for (const peer of room.peers) peer.destroy()
  room.peers.clear()
  if (room.reader) room.reader.destroy()
}

function plural (n, one) {
  return `${n} ${one}${n === 1 ? '' : 's'}`
}

// The action of a `/me` line (`* who does x` written by who): `does x`; else null.
function actionOf (who, message) {
  const prefix = `* ${who} `
  return message.startsWith(prefix) ? message.slice(prefix.length) : null
}

// Whatever a peer sent: time, who and message as the UI can show them.
function lineFrom (key, value) {
  const v = value && typeof value === 'object' ? value : { message: value }
  const time = Number.isFinite(v.time) ? v.time : 0
  const who = typeof v.who === 'string' ? v.who : String(v.who ?? '?')
  const message = typeof v.message === 'string' ? v.message : v.message == null ? '' : JSON.stringify(v.message)
  const action = actionOf(who, message)
  const text = action === null ? `${clock(time)} <${who}> ${message}` : `${clock(time)} * ${who} ${action}`
  return { key, time, who, message, action, text, local: false }
}

// A writer's line under another nick than its last one: a nick change (not for our own log,
// whose changes setNick tells).
function noteWriter (room, node, item) {
  if (typeof node.log !== 'string') return
  const last = room.writers.get(node.log)
  if (last && item.time < last.time) return
  room.writers.set(node.log, { nick: item.who, time: item.time })
  if (last && last.nick !== item.who && node.log !== room.log.id) {
    notice(room, `${last.nick} is now known as ${item.who}`, item.time)
  }
}

function addNode (room, node) {
  // A parted room's reader may still deliver: its lines are not shown (a new join has its own).
  if (room.closed || room.keys.has(node.key)) return
  room.keys.add(node.key)
  const item = lineFrom(node.key, node.value)
  item.mention = item.who !== nick && mentions(item.message)
  room.nicks.add(item.who)
  noteWriter(room, node, item)
  insert(room, item)
  if (room.name !== current) {
    room.activity = true
    if (item.mention) room.mentioned = true
    drawRooms()
  }
  testEvent({ event: 'line', room: room.name, key: item.key, time: item.time, who: item.who, message: item.message, text: item.text })
}

// A local line (help, errors, joins and parts, nick changes): shown, never sent.
function notice (room, message, time = Date.now()) {
  insert(room, { key: null, time, who: '!info', message, text: `${clock(time)} -!- ${message}`, local: true })
  testEvent({ event: 'notice', room: room.name, message })
}

function insert (room, item) {
  // After every line of the same time: equal times keep their arrival order.
  let lo = 0
  let hi = room.items.length
  while (lo < hi) {
    const mid = (lo + hi) >>> 1
    if (room.items[mid].time <= item.time) lo = mid + 1
    else hi = mid
  }
  room.items.splice(lo, 0, item)
  if (room.name === current) {
    const stick = atBottom()
    ui.lines.insertBefore(lineElement(item), ui.lines.children[lo] || null)
    if (stick) scrollToBottom()
  }
}

function join (raw) {
  const name = roomName(raw)
  if (!name) return notice(rooms.get(current), 'usage: /join #room')
  if (!rooms.has(name)) {
    const room = openRoom(name)
    rooms.set(name, room)
    if (rooms.size - 1 > MAX_ROOMS_HTTP1) {
      notice(room, `this is room ${rooms.size - 1}: a browser keeps at most 6 connections to a hub ` +
        'over HTTP/1.1 and each room holds one open, so signalling may stall (not over HTTP/2); /part a room')
    }
  }
  switchTo(name)
  return name
}

function part (raw) {
  const name = raw ? roomName(raw) : current
  const room = rooms.get(name)
  if (!room) return notice(rooms.get(current), `not in ${raw}`)
  if (name === STATUS) return notice(room, 'the status window stays; /part a room')
  const names = [...rooms.keys()]
  const at = names.indexOf(name)
  closeRoom(room)
  rooms.delete(name)
  if (current === name) switchTo(names[at + 1] ?? names[at - 1] ?? STATUS)
  else drawRooms()
}

function switchTo (name) {
  const room = rooms.get(name)
  if (!room) return
  current = name
  room.activity = false
  room.mentioned = false
  const hash = '#' + encodeURIComponent(name.replace(/^#/, ''))
  if (window.location.hash !== hash) window.location.hash = hash
  document.title = `${name} - chat`
  drawRooms()
  drawLines()
  drawStatus()
  ui.input.focus()
}

function cycle (step) {
  const names = [...rooms.keys()]
  const at = names.indexOf(current)
  switchTo(names[(at + step + names.length) % names.length])
}

function say (text, name = current) {
  const room = rooms.get(name)
  if (!room || room.name === STATUS || !room.log) {
    if (room) notice(room, 'nothing is sent from here: /join #room first')
    return Promise.reject(new Error(`not in a room (${name})`))
  }
  // Key order time, who, message: the bytes chatwizard writes.
  const value = { time: Date.now(), who: nick, message: String(text) }
  return new Promise((resolve, reject) => {
    room.log.append(value, (err, node) => (err ? reject(err) : resolve(node.key)))
  })
}

function setNick (name) {
  const clean = cleanNick(name)
  if (!clean) return notice(rooms.get(current), 'usage: /nick NAME')
  nick = clean
  notice(rooms.get(current), `you are now known as ${nick}`)
  drawStatus()
}

function names () {
  const room = rooms.get(current)
  if (room.name === STATUS) return notice(room, 'usage: /names in a room')
  const seen = [...room.writers.values()].sort((a, b) => b.time - a.time).map((w) => w.nick)
  const list = [nick, ...new Set(seen.filter((n) => n !== nick))]
  notice(room, `${room.name}: ${list.join(' ')} (nicks that wrote here, you first); ${plural(room.peers.size, 'peer')} connected now`)
}

function clearWindow () {
  const room = rooms.get(current)
  room.items = []
  drawLines()
}

function input (text) {
  if (!text.trim()) return
  if (text.startsWith('//')) return say(text.slice(1)).catch(() => {})
  if (!text.startsWith('/')) return say(text).catch(() => {})
  const [command, ...args] = text.slice(1).trim().split(/\s+/)
  switch (command.toLowerCase()) {
    case 'j':
    case 'join':
      join(args[0])
      break
    case 'p':
    case 'part':
      part(args[0])
      break
    case 'n':
    case 'nick':
      setNick(args.join(' '))
      break
    case 'me':
      if (!args.length) return notice(rooms.get(current), 'usage: /me does something')
      // An ordinary chatwizard line that reads as IRC shows an action.
      return say(`* ${nick} ${text.slice(1).trim().replace(/^me\s+/i, '')}`).catch(() => {})
    case 'names':
      names()
      break
    case 'clear':
      clearWindow()
      break
    case 'h':
    case 'help':
      for (const line of HELP) notice(rooms.get(current), line)
      break
    default:
      notice(rooms.get(current), `unknown command /${command}: try /help`)
  }
}

// ---------------------------------------------------------------------------------------------
// the page

const ui = {}

function el (tag, className, text) {
  const node = document.createElement(tag)
  if (className) node.className = className
  if (text !== undefined) node.textContent = text
  return node
}

const LINK = /(?:https?:|magnet:|ssb:)[^\s<>"]+|(?:^|(?<=\s))#[^\s#]+/g

// The message as text nodes and links: web and magnet links open in a new tab, `#room` joins it.
function appendLinked (parent, message) {
  let at = 0
  for (const match of message.matchAll(LINK)) {
    if (match.index > at) parent.append(message.slice(at, match.index))
    const a = el('a', null, match[0])
    if (match[0].startsWith('#')) {
      a.href = '#' + encodeURIComponent(match[0].slice(1))
      a.addEventListener('click', (ev) => {
        ev.preventDefault()
        join(match[0])
      })
    } else {
      a.href = match[0]
      a.target = '_blank'
      a.rel = 'noopener noreferrer'
    }
    parent.append(a)
    at = match.index + match[0].length
  }
  if (at < message.length) parent.append(message.slice(at))
}

function lineElement (item) {
  const line = el('div', 'line')
  if (item.local) line.classList.add('notice')
  if (item.mention) line.classList.add('mention')
  if (!item.local && item.who === nick) line.classList.add('self')
  const who = el('span', 'who', item.local ? '-!-' : item.action !== null ? `* ${item.who}` : `<${item.who}>`)
  if (!item.local) who.style.color = nickColor(item.who)
  if (!item.local && item.action !== null) line.classList.add('action')
  const message = el('span', 'message')
  appendLinked(message, item.local || item.action === null ? item.message : item.action)
  line.append(el('span', 'time', clock(item.time)), ' ', who, ' ', message)
  return line
}

function atBottom () {
  const l = ui.lines
  return l.scrollHeight - l.scrollTop - l.clientHeight < 8
}

function scrollToBottom () {
  ui.lines.scrollTop = ui.lines.scrollHeight
}

function drawLines () {
  const room = rooms.get(current)
  const fragment = document.createDocumentFragment()
  for (const item of room.items) fragment.append(lineElement(item))
  ui.lines.replaceChildren(fragment)
  scrollToBottom()
}

function drawRooms () {
  const list = []
  for (const room of rooms.values()) {
    const item = el('li')
    const button = el('button', 'room', room.name)
    if (room.name === current) button.classList.add('current')
    else if (room.mentioned) button.classList.add('mentioned')
    else if (room.activity) button.classList.add('activity')
    button.addEventListener('click', () => switchTo(room.name))
    item.append(button)
    list.push(item)
  }
  ui.rooms.replaceChildren(...list)
}

function drawStatus () {
  const room = rooms.get(current)
  const parts = [`[${clock(Date.now())}]`, `[${nick}]`]
  if (room.name === STATUS) {
    parts.push(plural(rooms.size - 1, 'room'))
  } else {
    parts.push(plural(room.peers.size, 'peer'))
    if (room.hubError) parts.push('[hub unreachable]')
  }
  ui.status.textContent = parts.join(' ')
  ui.prompt.textContent = `[${room.name}]`
}

const history = []
let historyAt = 0

function complete () {
  const value = ui.input.value
  const start = value.lastIndexOf(' ', ui.input.selectionStart - 1) + 1
  const word = value.slice(start, ui.input.selectionStart)
  if (!word) return
  const room = rooms.get(current)
  const found = [...room.nicks].find((n) => n.toLowerCase().startsWith(word.toLowerCase()))
  if (!found) return
  const suffix = start === 0 ? ': ' : ' '
  ui.input.value = value.slice(0, start) + found + suffix + value.slice(ui.input.selectionStart)
  const caret = start + found.length + suffix.length
  ui.input.setSelectionRange(caret, caret)
}

function onKey (ev) {
  const page = ui.lines.clientHeight - 20
  if (ev.key === 'PageUp' || ev.key === 'PageDown') {
    ev.preventDefault()
    ui.lines.scrollBy(0, ev.key === 'PageUp' ? -page : page)
  } else if ((ev.ctrlKey || ev.altKey) && (ev.key === 'ArrowUp' || ev.key === 'ArrowDown')) {
    ev.preventDefault()
    cycle(ev.key === 'ArrowUp' ? -1 : 1)
  } else if (ev.ctrlKey && (ev.key === 'k' || ev.key === 'j')) {
    ev.preventDefault()
    cycle(ev.key === 'k' ? -1 : 1)
  } else if (ev.key === 'ArrowUp' || ev.key === 'ArrowDown') {
    if (!history.length) return
    ev.preventDefault()
    historyAt = Math.max(0, Math.min(history.length, historyAt + (ev.key === 'ArrowUp' ? -1 : 1)))
    ui.input.value = history[historyAt] ?? ''
  } else if (ev.key === 'Tab' && !ev.shiftKey && ui.input.value) {
    ev.preventDefault()
    complete()
  }
}

function roomFromHash () {
  const raw = window.location.hash.slice(1)
  if (!raw) return null
  try {
    return decodeURIComponent(raw)
  } catch (err) {
    return raw
  }
}

function start () {
  ui.rooms = document.getElementById('rooms')
  ui.lines = document.getElementById('lines')
  ui.status = document.getElementById('status')
  ui.prompt = document.getElementById('prompt')
  ui.input = document.getElementById('input')
  const form = document.getElementById('form')

  rooms.set(STATUS, newRoom(STATUS))
  const status = rooms.get(STATUS)
  notice(status, `you are ${nick}; hub: ${hubs.join(', ') || '(none)'}`)
  for (const line of HELP) notice(status, line)

  form.addEventListener('submit', (ev) => {
    ev.preventDefault()
    const text = ui.input.value
    ui.input.value = ''
    if (text.trim()) {
      if (history[history.length - 1] !== text) history.push(text)
      historyAt = history.length
    }
    input(text)
  })
  ui.input.addEventListener('keydown', onKey)
  document.addEventListener('keydown', (ev) => {
    if (ev.target !== ui.input && !ev.ctrlKey && !ev.metaKey && !ev.altKey && ev.key.length === 1) ui.input.focus()
  })
  window.addEventListener('hashchange', () => {
    const name = roomFromHash()
    if (name && roomName(name) !== current) join(name)
  })
  window.addEventListener('error', (ev) => {
    const s = rooms.get(STATUS)
    if (s) notice(s, 'error: ' + (ev.message || ev.error))
  })
  setInterval(drawStatus, 1000)

  const first = roomFromHash()
  if (first) join(first)
  else switchTo(STATUS)

  window.chatTest = {
    say: (text, room) => say(text, room ? roomName(room) : current),
    input: (text) => { input(String(text)) },
    lines: (room) => (rooms.get(room ? roomName(room) : current)?.items ?? []).filter((i) => !i.local).map((i) => i.text),
    entries: (room) => (rooms.get(room ? roomName(room) : current)?.items ?? []).filter((i) => !i.local).map(({ key, time, who, message, text }) => ({ key, time, who, message, text })),
    peers: (room) => rooms.get(room ? roomName(room) : current)?.peers.size ?? 0,
    join: (room) => join(room),
    part: (room) => part(room),
    nick: (name) => {
      if (name !== undefined) setNick(name)
      return nick
    },
    rooms: () => [...rooms.keys()],
    current: () => current,
    app: (room) => sha1hex('chatwizard.' + roomName(room || current))
  }
  testEvent({ event: 'ready', nick, room: current, hubs })
}

if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start)
else start()
