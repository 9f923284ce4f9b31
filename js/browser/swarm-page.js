// The page js/swarm-browser.mjs opens in headless Chromium: a webrtc-swarm@2.9.0 peer on the
// browser's own WebRTC, with the signalhub@4.9.0 client (EventSource + XHR). js/build.mjs bundles
// it into js/dist/swarm-page.js (`npm run --prefix js build`).
//
// Page address: /index.html?hub=<url>[&hub=<url>...]&app=<app>[&id=<uuid>][&maxPeers=N]
//                [&iceFromHub=1]
//   iceFromHub: take the STUN/TURN servers the first hub hands out at GET /ice-servers (what a
//   webrtc-swarm user does to cross NATs; a 404 means the hub offers none).
// Same commands, replies and events as js/swarm-peer.mjs (see js/swarm-commands.mjs):
//   window.swarmCommand(cmd) -> Promise<reply>
//   events go to window.emitEvent(ev), which the driver installs (page.exposeFunction) before the
//   page loads; events emitted while it is absent wait in window.pendingEvents.
import signalhub from 'signalhub'
import webrtcSwarm from 'webrtc-swarm'
import { attach, hubIceServers } from '../swarm-commands.mjs'

window.pendingEvents = []
function emit (ev) {
  if (typeof window.emitEvent === 'function') {
    while (window.pendingEvents.length) window.emitEvent(window.pendingEvents.shift())
    window.emitEvent(ev)
  } else {
    window.pendingEvents.push(ev)
  }
}

async function start () {
  const params = new URL(window.location.href).searchParams
  const hubs = params.getAll('hub')
  const app = params.get('app')
  if (!hubs.length || !app) throw new Error('the page address needs ?hub=<url>&app=<name>')
  const iceServers = params.get('iceFromHub') === '1' ? await hubIceServers(hubs[0]) : []
  const hub = signalhub(app, hubs)
  const swarm = webrtcSwarm(hub, {
    uuid: params.get('id') || undefined,
    maxPeers: Number(params.get('maxPeers')) || undefined,
    config: { iceServers }
  })
  const handle = attach(swarm, { emit, now: () => performance.now(), sinkAll: params.get('sinkAll') === '1' })

  const broadcast = hub.broadcast.bind(hub)
  hub.broadcast = (channel, message, cb) => broadcast(channel, message, (err) => {
    if (err) emit({ event: 'error', message: `broadcast to ${channel} failed: ${err.message}` })
    if (cb) cb(err)
  })
  const inbox = hub.subscribers[1]
  if (inbox) inbox.once('open', () => emit({ event: 'subscribed' }))

  window.swarm = swarm
  window.swarmCommand = (cmd) => handle(cmd)
  emit({ event: 'ready', id: swarm.me })
}

start().catch((err) => {
  window.swarmCommand = async (cmd) => ({ reply: cmd.cmd, error: 'the page failed to start: ' + err.message })
  emit({ event: 'fatal', message: 'the page failed to start: ' + (err.stack || err.message) })
})
