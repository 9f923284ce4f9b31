// The one piece of Node's `crypto` the bundled stack uses: hyperlog hashes nodes with
// framed-hash, which calls `crypto.createHash('sha256')` synchronously (browserify gave it
// crypto-browserify; this gives the same digests from sha.js, without the rest). js/build.mjs
// maps `crypto` here for the chat page.
import shajs from 'sha.js'

export function createHash (algorithm) {
  return shajs(String(algorithm).toLowerCase())
}

export default { createHash }
