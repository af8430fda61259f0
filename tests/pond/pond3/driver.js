// Pond 3.x driver for tests/tests/pond.rs: connects with the store address as actyxPort, so
// Pond probes /api/v2/node/id there, gets a 404 and falls back to the v1 store API.
// Usage: node driver.js <host> <port> <tag> <n>: emits n events tagged <tag> and waits for a
// fish over that tag to show them all; prints {"nodeId"}, then {"state": n}.
'use strict'
const { Pond, Tags, FishId } = require('@actyx/pond')

const out = (v) => process.stdout.write(JSON.stringify(v) + '\n')
const [host, port, tag, nArg] = process.argv.slice(2)
const n = Number(nArg)
const manifest = { appId: 'com.example.shoal-test', displayName: 'shoal test', version: '1.0.0' }

Pond.of(manifest, { actyxHost: host, actyxPort: Number(port) }, {})
  .then(async (pond) => {
    out({ nodeId: pond.info().nodeId })
    const fish = {
      where: Tags(tag),
      initialState: 0,
      onEvent: (state) => state + 1,
      fishId: FishId.of('shoal.test.v3', tag, 1),
    }
    pond.observe(fish, (state) => {
      if (state === n) {
        out({ state })
        process.exit(0)
      }
    })
    for (let i = 0; i < n; i++) await pond.emit(Tags(tag), { i }).toPromise()
  })
  .catch((e) => {
    out({ error: String((e && e.stack) || e) })
    process.exit(2)
  })
