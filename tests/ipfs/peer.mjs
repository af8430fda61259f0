// A Helia IPFS peer for shoal's interop tests and benchmark (tests/tests/ipfs.rs,
// tests/src/bin/bench_ipfs.rs): Bitswap over TCP + pnet (the swarm key file) + noise + yamux,
// identify, nothing else (no DHT, no ping service — like many IPFS peers).
//
//   node peer.mjs SWARM_KEY_FILE
//
// prints {"peer": id, "addrs": [...]} once listening, then answers one JSON command per stdin
// line with one JSON line (an {"error"} line if it failed):
//   {"dial": MULTIADDR}              -> {"dialed": peer}: connected, and its identify lists Bitswap
//   {"tryDial": MULTIADDR}           -> {"connected": false, "reason": "..."} or {"connected": true}
//   {"get": [CID...]}                -> {"blocks": [{"cid", "size", "sha256"}...], "ms"}: via Bitswap
//   {"put": FILE}                    -> {"cid"}: the file's bytes as one raw block
//   {"add": FILE}                    -> {"cid"}: a UnixFS file as `ipfs add --cid-version=1
//                                        --raw-leaves --chunker=size-1048576` builds it
//   {"cat": CID}                     -> {"size", "sha256", "ms"}: the UnixFS file's bytes, via Bitswap
//   {"drop": [CID...]}               -> {"dropped": n}: deleted from the local blockstore
//   {"hostile": MULTIADDR}           -> {"streams": n}: misbehaves on Bitswap towards that peer
//                                        (junk, an oversized frame, too many entries, blocks
//                                        nobody asked for, floods of wants for random CIDs)

// Node 20 has no Promise.withResolvers (Node 22), which libp2p 3 uses.
if (typeof Promise.withResolvers !== 'function') {
  Promise.withResolvers = function () {
    let resolve, reject
    const promise = new Promise((res, rej) => { resolve = res; reject = rej })
    return { promise, resolve, reject }
  }
}

import { createHash } from 'node:crypto'
import { createReadStream, readFileSync } from 'node:fs'
import { createInterface } from 'node:readline'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { withBitswap } from '@helia/bitswap'
import { withLibp2pLight } from '@helia/libp2p'
import { unixfs } from '@helia/unixfs'
import { identify } from '@libp2p/identify'
import { preSharedKey } from '@libp2p/pnet'
import { tcp } from '@libp2p/tcp'
import { multiaddr } from '@multiformats/multiaddr'
import { createHeliaLight } from 'helia'
import { fixedSize } from 'ipfs-unixfs-importer/chunker'
import { balanced } from 'ipfs-unixfs-importer/layout'
import { CID } from 'multiformats/cid'
import * as raw from 'multiformats/codecs/raw'
import { sha256 } from 'multiformats/hashes/sha2'

const BITSWAP = '/ipfs/bitswap/1.2.0'
const MiB = 1 << 20
const TIMEOUT = 120_000

// @libp2p/pnet's xsalsa20 runs out of WebAssembly memory on one huge buffer: feed it 1 MiB at
// a time.
function chunked (xor) {
  const update = xor.update.bind(xor)
  xor.update = (buf) => {
    if (buf.byteLength <= MiB) return update(buf)
    const out = new Uint8Array(buf.byteLength)
    for (let i = 0; i < buf.byteLength; i += MiB) {
      out.set(update(buf.subarray(i, Math.min(i + MiB, buf.byteLength))), i)
    }
    return out
  }
}

function protector (psk) {
  const make = preSharedKey({ psk })
  return (components) => {
    const p = make(components)
    const protect = p.protect.bind(p)
    p.protect = async (conn, options) => {
      const s = await protect(conn, options)
      chunked(s.inboundXor)
      chunked(s.outboundXor)
      return s
    }
    return p
  }
}

const helia = withBitswap(withLibp2pLight(createHeliaLight(), {
  addresses: { listen: ['/ip4/127.0.0.1/tcp/0'] },
  transports: [tcp()],
  connectionEncrypters: [noise()],
  streamMuxers: [yamux()],
  connectionProtector: protector(readFileSync(process.argv[2])),
  // js-libp2p probes every connection with a ping every 10 s and aborts it when one times out;
  // while this process itself is busy sending blocks, its probe waits behind them in its own
  // send queue and times out (seen in bench_ipfs, Helia -> shoal). Probe, but keep the peer.
  connectionMonitor: { abortConnectionOnPingFailure: false },
  services: { identify: identify() }
}))
await helia.start()
const fs = unixfs(helia)

// blockstore.get answers bytes, a Uint8ArrayList or an async iterable of chunks by version.
async function bytes (v) {
  v = await v
  if (v instanceof Uint8Array) return v
  if (typeof v?.subarray === 'function') return v.subarray()
  const parts = []
  for await (const p of v) parts.push(p instanceof Uint8Array ? p : p.subarray())
  return Buffer.concat(parts)
}

const out = (v) => process.stdout.write(JSON.stringify(v) + '\n')
const hex = (d) => createHash('sha256').update(d).digest('hex')

async function dial (addr) {
  const ma = multiaddr(addr)
  const conn = await helia.libp2p.dial(ma, { signal: AbortSignal.timeout(20_000) })
  // Helia sends wants only to peers whose identify lists Bitswap.
  const deadline = Date.now() + 20_000
  while (Date.now() < deadline) {
    const peer = await helia.libp2p.peerStore.get(conn.remotePeer).catch(() => null)
    if (peer?.protocols.includes(BITSWAP)) return conn.remotePeer.toString()
    await new Promise(resolve => setTimeout(resolve, 50))
  }
  throw new Error(`${addr}: identify did not list ${BITSWAP} within 20 s`)
}

// Hand-made Bitswap frames for the hostile command (Helia itself only sends valid ones).
const concat = (...parts) => Buffer.concat(parts.map(p => Buffer.from(p)))
function varint (n) {
  const out = []
  while (n >= 0x80) { out.push((n % 0x80) | 0x80); n = Math.floor(n / 0x80) }
  out.push(n)
  return Uint8Array.from(out)
}
const field = (num, bytes) => concat(varint(num * 8 + 2), varint(bytes.length), bytes)
const frame = (body) => concat(varint(body.length), body)
const randomCid = () => concat([0x01, 0x55, 0x12, 0x20], crypto.getRandomValues(new Uint8Array(32)))
const wants = (n) => field(1, concat(...Array.from({ length: n }, () =>
  field(1, concat(field(1, randomCid()), [5 * 8, 1])))))

async function hostile (addr) {
  const frames = [
    concat(varint(1000), crypto.getRandomValues(new Uint8Array(1000))), // junk protobuf
    concat(varint(100 << 20), new Uint8Array(16)), // a 100 MiB frame announced
    frame(wants(4097)), // more entries than a message may hold
    frame(concat(...[1, 2, 3].map(() => field(3, concat( // blocks nobody asked for
      field(1, Uint8Array.from([1, 0x55, 0x12, 0x20])),
      field(2, crypto.getRandomValues(new Uint8Array(1000)))
    ))))),
    ...Array.from({ length: 12 }, () => frame(wants(1000))) // floods of wants for random CIDs
  ]
  for (const f of frames) {
    const stream = await helia.libp2p.dialProtocol(multiaddr(addr), BITSWAP, { signal: AbortSignal.timeout(20_000) })
    if (!stream.send(f)) await stream.onDrain()
    await stream.close().catch(() => {})
  }
  return { streams: frames.length }
}

async function run (cmd) {
  if (cmd.hostile != null) return await hostile(cmd.hostile)
  if (cmd.dial != null) return { dialed: await dial(cmd.dial) }
  if (cmd.tryDial != null) {
    try {
      await helia.libp2p.dial(multiaddr(cmd.tryDial), { signal: AbortSignal.timeout(10_000) })
      return { connected: true }
    } catch (err) {
      return { connected: false, reason: String(err?.message ?? err) }
    }
  }
  if (cmd.get != null) {
    const started = Date.now()
    const blocks = await Promise.all(cmd.get.map(async (c) => {
      const data = await bytes(helia.blockstore.get(CID.parse(c), { signal: AbortSignal.timeout(TIMEOUT) }))
      return { cid: c, size: data.byteLength, sha256: hex(data) }
    }))
    return { blocks, ms: Date.now() - started }
  }
  if (cmd.put != null) {
    const data = readFileSync(cmd.put)
    const cid = CID.createV1(raw.code, await sha256.digest(data))
    await helia.blockstore.put(cid, data)
    return { cid: cid.toString() }
  }
  if (cmd.add != null) {
    const cid = await fs.addByteStream(createReadStream(cmd.add, { highWaterMark: MiB }), {
      cidVersion: 1,
      rawLeaves: true,
      chunker: fixedSize({ chunkSize: MiB }),
      layout: balanced({ maxChildrenPerNode: 174 }),
      reduceSingleLeafToSelf: true
    })
    return { cid: cid.toString() }
  }
  if (cmd.cat != null) {
    const started = Date.now()
    const h = createHash('sha256')
    let size = 0
    // A string, not a CID: the exporter may hold another copy of multiformats than this script.
    for await (const buf of fs.cat(cmd.cat, { signal: AbortSignal.timeout(TIMEOUT * 10) })) {
      h.update(buf)
      size += buf.byteLength
    }
    return { size, sha256: h.digest('hex'), ms: Date.now() - started }
  }
  if (cmd.drop != null) {
    for (const c of cmd.drop) await helia.blockstore.delete(CID.parse(c))
    return { dropped: cmd.drop.length }
  }
  throw new Error(`unknown command ${JSON.stringify(cmd)}`)
}

out({ peer: helia.libp2p.peerId.toString(), addrs: helia.libp2p.getMultiaddrs().map(String) })
const lines = createInterface({ input: process.stdin })
for await (const line of lines) {
  if (line.trim() === '') continue
  try {
    out(await run(JSON.parse(line)))
  } catch (err) {
    out({ error: String(err?.stack ?? err) })
  }
}
await helia.stop()
process.exit(0)
