// Bundles the browser peer js/browser/swarm-page.js (webrtc-swarm + signalhub client) for
// headless Chromium into js/dist/swarm-page.js, which js/swarm-browser.mjs serves.
//
// Usage: npm run --prefix js build      (or: node js/build.mjs)
// Needs `npm ci --prefix js` first (esbuild and the browser polyfills come from js/node_modules).
import path from 'node:path'
import { fileURLToPath } from 'node:url'

const here = path.dirname(fileURLToPath(import.meta.url))

let esbuild
try {
  esbuild = await import('esbuild')
} catch (err) {
  console.error('build: esbuild is missing, run `npm ci --prefix js`: ' + err.message)
  process.exit(3)
}

const outfile = path.join(here, 'dist', 'swarm-page.js')
try {
  await esbuild.build({
    entryPoints: [path.join(here, 'browser', 'swarm-page.js')],
    outfile,
    absWorkingDir: here, // aliases resolve from here (js/node_modules)
    bundle: true,
    platform: 'browser',
    format: 'iife',
    target: 'chrome100',
    // Node core modules the stack requires, mapped to their npm browser versions.
    alias: { stream: 'stream-browserify' },
    inject: [path.join(here, 'browser', 'shims.js')],
    define: { 'process.env.NODE_DEBUG': 'false' },
    logLevel: 'warning'
  })
} catch (err) {
  // esbuild has already printed the errors.
  process.exit(1)
}
console.log(`build: wrote ${path.relative(process.cwd(), outfile)}`)
