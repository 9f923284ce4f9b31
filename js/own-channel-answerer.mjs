// A webrtc-swarm peer (on the hub's wire) that answers an offer but talks only on a data channel
// of its own: what a simple-peer 6.x initiator in Chromium does after glare, when it receives our
// offer while its own is out (Chromium rolls its offer back and simple-peer answers ours, while
// keeping the channel it made for its offer; it never listens for ours). Node, @roamhq/wrtc.
// Driven by swarm/tests/swarm_js.rs.
//
// Usage: node js/own-channel-answerer.mjs '{"hubs":["http://127.0.0.1:PORT"],"app":"<app>"[,"glare":G]}'
// It announces itself on "all" (as webrtc-swarm does, every second until an offer comes) and
// answers the first offer in its inbox. With "glare": "answer-first", it also sends an offer of its
// own right after its answer, as the browser did before ours reached it (its two POSTs crossed);
// with "glare": "offer-first", that offer goes out (and is delivered) before the answer, as when
// the browser's offer reaches us first; "offer-first-no-candidates" is that, but its first answer
// gathers no candidate and sends no check (what Chromium sometimes does after such a rollback,
// see GLARE_ANSWER_CANDIDATES_WAIT in swarm/src/swarm.rs). A signal with neither `sdp` nor
// `candidate` (the swarm's abandon) ends the attempt as simple-peer would (it destroys its peer):
// it reports "destroyed" and announces again, and answers the next offer normally. Events on
// stdout, one JSON object a line:
//   {"event":"ready","id"}             its id, before it subscribes
//   {"event":"open","label"}           its own channel opened
//   {"event":"their-channel","label"}  the offerer's channel arrived (left alone, unread)
//   {"event":"data","data","kind"}     a message on its own channel
//   {"event":"closed","label"}         its own channel closed
//   {"event":"destroyed"}              an abandon ended its attempt
//   {"event":"fatal","message"}        then exit 3
// Commands on stdin: {"cmd":"send","text":"…"} sends on its own channel; the end of stdin exits.
import { createRequire } from 'node:module'
import { randomBytes } from 'node:crypto'
import readline from 'node:readline'

const require = createRequire(import.meta.url)
const out = (obj) => process.stdout.write(JSON.stringify(obj) + '\n')
let signalhub, wrtc
try {
  signalhub = require('signalhub')
  wrtc = require('@roamhq/wrtc')
} catch (err) {
  out({ event: 'fatal', message: 'missing Node packages, run `npm ci --prefix js`: ' + err.message })
  process.exit(3)
}
const config = JSON.parse(process.argv[2] || '{}')
const id = randomBytes(12).toString('hex')
const hub = signalhub(config.app, config.hubs)
out({ event: 'ready', id })

let pc = null
let own = null
let pending = []
let announcing = null
let attempts = 0

const announce = () => hub.broadcast('all', { type: 'connect', from: id })
const inbox = hub.subscribe(id)
inbox.on('open', () => {
  announce()
  announcing = setInterval(announce, 1000)
})
inbox.on('data', async (message) => {
  const { from, signal } = message || {}
  if (!from || !signal) return
  try {
    if (!signal.sdp && !signal.candidate) {
      if (pc) pc.close()
      pc = own = null
      pending = []
      out({ event: 'destroyed' })
      announce()
      announcing = setInterval(announce, 1000)
    } else if (signal.type === 'offer' && !pc) {
      clearInterval(announcing)
      attempts++
      const withoutCandidates = config.glare === 'offer-first-no-candidates' && attempts === 1
      const ownOffer = async () => {
        const decoy = new wrtc.RTCPeerConnection({ iceServers: [] })
        decoy.createDataChannel('rolled-back-' + id)
        const offer = await decoy.createOffer()
        await new Promise((resolve) => hub.broadcast(from, { from: id, signal: { type: 'offer', sdp: offer.sdp } }, resolve))
        decoy.close()
      }
      if (config.glare === 'offer-first' || withoutCandidates) await ownOffer()
      // A relay-only policy with no relay gathers nothing and checks nothing.
      pc = new wrtc.RTCPeerConnection({ iceServers: [], iceTransportPolicy: withoutCandidates ? 'relay' : 'all' })
      const channel = own = pc.createDataChannel('own-' + id)
      channel.onopen = () => out({ event: 'open', label: channel.label })
      channel.onclose = () => out({ event: 'closed', label: channel.label })
      channel.onmessage = (e) => out({
        event: 'data',
        data: typeof e.data === 'string' ? e.data : Buffer.from(e.data).toString('utf8'),
        kind: typeof e.data === 'string' ? 'text' : 'binary'
      })
      pc.ondatachannel = (e) => out({ event: 'their-channel', label: e.channel.label })
      pc.onicecandidate = (e) => {
        if (e.candidate) hub.broadcast(from, { from: id, signal: { candidate: e.candidate.toJSON() } })
      }
      await pc.setRemoteDescription(signal)
      for (const candidate of pending) await pc.addIceCandidate(candidate)
      pending = []
      const answer = await pc.createAnswer()
      await pc.setLocalDescription(answer)
      hub.broadcast(from, { from: id, signal: { type: 'answer', sdp: answer.sdp } })
      if (config.glare === 'answer-first') await ownOffer()
    } else if (signal.candidate) {
      if (pc && pc.remoteDescription) await pc.addIceCandidate(signal.candidate)
      else pending.push(signal.candidate)
    }
  } catch (err) {
    out({ event: 'fatal', message: err.stack || err.message })
    process.exit(3)
  }
})

const rl = readline.createInterface({ input: process.stdin })
rl.on('line', (line) => {
  const cmd = JSON.parse(line)
  if (cmd.cmd === 'send' && own) own.send(cmd.text)
})
rl.on('close', () => {
  clearInterval(announcing)
  if (pc) pc.close()
  hub.close(() => process.exit(0))
  setTimeout(() => process.exit(0), 1000).unref()
})
