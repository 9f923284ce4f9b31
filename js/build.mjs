// Bundles the browser pages for esbuild's `platform: 'browser'`:
// - js/browser/swarm-page.js (webrtc-swarm + signalhub client) for headless Chromium into
//   js/dist/swarm-page.js, which js/swarm-browser.mjs serves;
// - the chat page js/browser/chat/ (webrtc-swarm + signalhub + hyperlog over memdb) into
//   js/dist/chat/ (index.html, chat.js, its source map, style.css, favicon.svg), which
//   `signalhub listen --web js/dist/chat` serves and js/chat-browser.mjs drives.
//
// Usage: npm run --prefix js build      (or: node js/build.mjs)
// Needs `npm ci --prefix js` first (esbuild and the browser polyfills come from js/node_modules).
import fs from 'node:fs'
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

// What every page bundle shares: Node core modules the stack requires, mapped to their npm
// browser versions, and the Node globals it expects.
const common = {
  absWorkingDir: here, // aliases resolve from here (js/node_modules)
  bundle: true,
  platform: 'browser',
  format: 'iife',
  target: 'chrome100',
  alias: { stream: 'stream-browserify' },
  inject: [path.join(here, 'browser', 'shims.js')],
  define: { 'process.env.NODE_DEBUG': 'false' },
  logLevel: 'warning'
}

// hyperlog reads its protobuf schema with fs.readFileSync (browserify inlined it with brfs), and
// hashes with crypto.createHash (js/browser/chat/crypto.js gives it sha.js).
const hyperlogForBrowsers = {
  name: 'hyperlog-for-browsers',
  setup (build) {
    build.onResolve({ filter: /^crypto$/ }, () => ({ path: path.join(here, 'browser', 'chat', 'crypto.js') }))
    build.onLoad({ filter: /[\\/]hyperlog[\\/]lib[\\/]messages\.js$/ }, async (args) => {
      const dir = path.dirname(args.path)
      const schema = await fs.promises.readFile(path.join(dir, '..', 'schema.proto'), 'utf-8')
      return {
        contents: `module.exports = require('protocol-buffers')(${JSON.stringify(schema)})\n`,
        loader: 'js',
        resolveDir: dir
      }
    })
  }
}

const swarmPage = path.join(here, 'dist', 'swarm-page.js')
const chatDir = path.join(here, 'dist', 'chat')
try {
  await esbuild.build({
    ...common,
    entryPoints: [path.join(here, 'browser', 'swarm-page.js')],
    outfile: swarmPage
  })
  await esbuild.build({
    ...common,
    entryPoints: [path.join(here, 'browser', 'chat', 'chat.js')],
    outfile: path.join(chatDir, 'chat.js'),
    minify: true,
    sourcemap: 'linked',
    legalComments: 'linked',
    plugins: [hyperlogForBrowsers]
  })
} catch (err) {
  // esbuild has already printed the errors.
  process.exit(1)
}
for (const file of ['index.html', 'style.css', 'favicon.svg']) {
  fs.copyFileSync(path.join(here, 'browser', 'chat', file), path.join(chatDir, file))
}
console.log(`build: wrote ${path.relative(process.cwd(), swarmPage)} and ${path.relative(process.cwd(), chatDir)}/`)
