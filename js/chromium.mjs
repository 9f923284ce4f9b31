// Headless Chromium for a WebRTC page, as the browser drivers (swarm-browser.mjs,
// chat-browser.mjs) start it: Debian's /usr/bin/chromium through playwright-core, the flags that
// let a page use loopback host candidates, and the media grant without which Chromium gathers no
// 127.0.0.1 candidate (see shared/specs/browser-and-node-peers.md).
// PAGE_DEBUG=1 in the environment (for a look by hand) relays all of the page's console, with
// webrtc-swarm's and simple-peer's debug logs switched on.

export const CHROMIUM = '/usr/bin/chromium'

const FLAGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  // Offer real host addresses (no mDNS names) and allow 127.0.0.1 / ::1 candidates.
  '--disable-features=WebRtcHideLocalIpsWithMdns',
  '--allow-loopback-in-peer-connection',
  '--use-fake-ui-for-media-stream',
  '--use-fake-device-for-media-stream'
]

// Launches Chromium on `userDataDir` and grants camera and microphone to `origin` (when it is a
// secure context). The caller
// handles signals (it closes Chromium and removes the user-data dir itself). Extra playwright
// launch options (e.g. `timezoneId`) go in `options`.
export async function launchForWebRtc (chromium, userDataDir, origin, options = {}) {
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: FLAGS,
    timeout: 60000,
    handleSIGINT: false,
    handleSIGTERM: false,
    handleSIGHUP: false,
    ...options
  })
  // Only a secure context can be granted media (Chromium refuses the grant elsewhere): a page
  // served over plain HTTP from another host, as in the NAT lab, gathers no host candidate of
  // loopback, which it does not need there.
  const { protocol, hostname } = new URL(origin)
  if (protocol === 'https:' || ['localhost', '127.0.0.1', '[::1]'].includes(hostname)) {
    await context.grantPermissions(['camera', 'microphone'], { origin })
  }
  if (process.env.PAGE_DEBUG) await context.addInitScript(() => { try { localStorage.debug = 'webrtc-swarm,simple-peer' } catch (e) {} })
  return context
}

// Reports the page's console errors and warnings, and its uncaught errors, as `console` events.
export function relayConsole (page, out) {
  page.on('console', (message) => {
    const type = message.type()
    if (type === 'error' || type === 'warning' || process.env.PAGE_DEBUG) out({ event: 'console', type, text: message.text() })
  })
  page.on('pageerror', (err) => out({ event: 'console', type: 'pageerror', text: err.stack || err.message }))
}
