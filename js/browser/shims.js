// Node globals the bundled JS stack expects (injected into every module by js/build.mjs):
// simple-peer 6 calls `new Buffer(arrayBuffer)` on every binary message, readable-stream reads
// `process.nextTick`, and a few modules look for `global`.
import { Buffer } from 'buffer'
import process from 'process'

// The `process` package runs nextTick callbacks from setTimeout(0), which Chromium clamps to 4 ms
// once timers nest; readable-stream defers every write callback and 'drain' through nextTick, so a
// browser blast crawled at ~3.5 MB/s. A microtask is what nextTick means anyway.
process.nextTick = (fn, ...args) => queueMicrotask(() => fn(...args))

const global = globalThis
export { Buffer, process, global }
