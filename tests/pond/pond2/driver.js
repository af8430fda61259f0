// Pond 2.7.0 driver for tests/tests/pond.rs and the Pond benchmark. Every mode prints JSON
// lines on stdout; the Rust side reads them (with timeouts).
//
//   STORE_URL=ws://.../store_api node driver.js emit <tag> <n>
//       emits n events {i} tagged <tag>, prints {"emitted": n}
//   STORE_URL=... node driver.js observe <tag> <expect>
//       runs a fish collecting [lamport, source, offset, i] of every event tagged <tag>; prints
//       {"ready": true} at its first state, {"outOfOrder": ...} if a state it shows is not in
//       (lamport, source, offset) order, and {"state": [...]} once it holds <expect> events
//   STORE_URL=... node driver.js count <tag> <expect> [waitSnapshotMs]
//       a counting fish through a counting proxy; prints {"n","sum","eventsRead",
//       "firstStateMs","snapshotsStored","snapshotsRetrieved"} once it has seen <expect> events
//       (waiting up to waitSnapshotMs for Pond to store a snapshot first)
'use strict'
const { Pond, Tags, FishId } = require('@actyx/pond')
const proxy = require('./proxy')

const out = (v) => process.stdout.write(JSON.stringify(v) + '\n')
const [mode, tag, nArg, waitArg] = process.argv.slice(2)
const n = Number(nArg)
const target = process.env.STORE_URL

const fail = (e) => {
  out({ error: String((e && e.stack) || e) })
  process.exit(2)
}

const keyOf = (meta) => [meta.lamport, meta.eventId.split('/')[1], meta.offset]
const before = (a, b) => a[0] < b[0] || (a[0] === b[0] && (a[1] < b[1] || (a[1] === b[1] && a[2] < b[2])))

async function emit() {
  const pond = await Pond.of({ url: target }, {})
  const pending = []
  for (let i = 0; i < n; i++) pending.push(pond.emit(Tags(tag), { i }).toPromise())
  await Promise.all(pending)
  out({ emitted: n })
  pond.dispose()
  process.exit(0)
}

async function observe() {
  const pond = await Pond.of({ url: target }, {})
  const fish = {
    where: Tags(tag),
    initialState: [],
    onEvent: (state, event, meta) => state.concat([[...keyOf(meta), event.i]]),
    fishId: FishId.of('shoal.test.order', tag, 1),
  }
  let ready = false
  pond.observe(fish, (state) => {
    if (!ready) {
      ready = true
      out({ ready: true, len: state.length })
    }
    for (let i = 1; i < state.length; i++) {
      if (!before(state[i - 1], state[i])) out({ outOfOrder: [state[i - 1], state[i]] })
    }
    out({ len: state.length })
    if (state.length === n) {
      out({ state })
      process.exit(0)
    }
  }, fail)
}

async function count() {
  const p = await proxy.start(target)
  const started = Date.now()
  const pond = await Pond.of({ url: p.url }, {})
  const fish = {
    where: Tags(tag),
    initialState: { n: 0, sum: 0 },
    onEvent: (state, event) => ({ n: state.n + 1, sum: state.sum + event.i }),
    fishId: FishId.of('shoal.test.count', tag, 1),
  }
  let firstStateMs = null
  let done = false
  pond.observe(fish, async (state) => {
    if (firstStateMs === null) firstStateMs = Date.now() - started
    if (state.n === n && !done) {
      done = true
      const wait = Number(waitArg || 0)
      const until = Date.now() + wait
      while (p.stats.snapshotsStored === 0 && Date.now() < until) await new Promise((r) => setTimeout(r, 100))
      out({ n: state.n, sum: state.sum, eventsRead: p.stats.events, firstStateMs,
        snapshotsStored: p.stats.snapshotsStored, snapshotsRetrieved: p.stats.snapshotsRetrieved })
      process.exit(0)
    }
  }, fail)
}

const modes = { emit, observe, count }
if (!modes[mode]) fail(`unknown mode ${mode}`)
modes[mode]().catch(fail)
