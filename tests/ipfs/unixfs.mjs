// The IPFS reference importer and CAR codec, driven by shoal's tests (tests/src/ipfs.rs):
//
//   node unixfs.mjs cid FILE...        one CID per line: each file imported as
//                                      `ipfs add --cid-version=1 --raw-leaves --chunker=size-1048576`
//   node unixfs.mjs cid-with CHUNK FANOUT FILE...   the same with another chunk size and fanout
//   node unixfs.mjs car FILE OUT.car   the same import, written as a CAR v1 (root = the file's CID)
//   node unixfs.mjs read-car IN.car    JSON {roots, blocks: [{cid, bytes, hashOk}]} read with @ipld/car
//
// Errors go to stderr with a non-zero exit.
import { createReadStream, createWriteStream } from 'node:fs'
import { pipeline } from 'node:stream/promises'
import { Readable } from 'node:stream'
import { importFile } from 'ipfs-unixfs-importer'
import { fixedSize } from 'ipfs-unixfs-importer/chunker'
import { balanced } from 'ipfs-unixfs-importer/layout'
import { CarWriter, CarBlockIterator } from '@ipld/car'
import { sha256 } from 'multiformats/hashes/sha2'
import { equals } from 'multiformats/bytes'

// What `ipfs add --cid-version=1 --raw-leaves --chunker=size-1048576` uses.
const OPTIONS = {
  cidVersion: 1,
  rawLeaves: true,
  reduceSingleLeafToSelf: true,
  chunker: fixedSize({ chunkSize: 1048576 }),
  layout: balanced({ maxChildrenPerNode: 174 })
}

// Blocks in memory, keyed by CID (codec included, unlike blockstore-core's MemoryBlockstore).
class Blocks {
  constructor () { this.map = new Map() }
  async put (cid, bytes) {
    if (!(bytes instanceof Uint8Array)) {
      const parts = []
      for await (const p of bytes) parts.push(p)
      bytes = Buffer.concat(parts)
    }
    this.map.set(cid.toString(), { cid, bytes })
    return cid
  }
  has (cid) { return this.map.has(cid.toString()) }
  async * get (cid) {
    const b = this.map.get(cid.toString())
    if (b == null) throw new Error(`not found: ${cid}`)
    yield b.bytes
  }
}

async function importPath (path, blocks, options = OPTIONS) {
  const entry = await importFile({ content: createReadStream(path) }, blocks, options)
  return entry.cid
}

const NO_BLOCKS = { put: async (cid) => cid, has: () => false }

const [cmd, ...args] = process.argv.slice(2)
if (cmd === 'cid') {
  for (const path of args) {
    console.log((await importPath(path, NO_BLOCKS)).toString())
  }
} else if (cmd === 'cid-with') {
  // The same layout with another chunk size and fanout: deep DAGs from small files.
  const [chunk, fanout, ...paths] = args
  const options = {
    ...OPTIONS,
    chunker: fixedSize({ chunkSize: Number(chunk) }),
    layout: balanced({ maxChildrenPerNode: Number(fanout) })
  }
  for (const path of paths) {
    console.log((await importPath(path, NO_BLOCKS, options)).toString())
  }
} else if (cmd === 'car') {
  const [path, out] = args
  const blocks = new Blocks()
  const root = await importPath(path, blocks)
  const { writer, out: bytes } = CarWriter.create([root])
  const written = pipeline(Readable.from(bytes), createWriteStream(out))
  for (const { cid, bytes: data } of blocks.map.values()) {
    await writer.put({ cid, bytes: data })
  }
  await writer.close()
  await written
  console.log(root.toString())
} else if (cmd === 'read-car') {
  const reader = await CarBlockIterator.fromIterable(createReadStream(args[0]))
  const roots = (await reader.getRoots()).map(String)
  const blocks = []
  for await (const { cid, bytes } of reader) {
    const digest = await sha256.digest(bytes)
    const hashOk = cid.multihash.code === sha256.code && equals(digest.digest, cid.multihash.digest)
    blocks.push({ cid: cid.toString(), bytes: bytes.length, hashOk })
  }
  console.log(JSON.stringify({ roots, blocks }))
} else {
  console.error('usage: node unixfs.mjs cid FILE... | cid-with CHUNK FANOUT FILE... | car FILE OUT.car | read-car IN.car')
  process.exit(2)
}
