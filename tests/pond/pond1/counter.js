// Pond 1.1.0 driver for tests/tests/pond.rs: a FishType counter fed with commands.
// Usage: AX_STORE_URI=ws://.../store_api node counter.js <name> <commands> <expectTotal>
// Prints one JSON line per observed state and exits 0 once the state equals expectTotal.
'use strict'
const { FishType, Pond, Semantics, OnStateChange, Subscription } = require('@actyx/pond')

const [name, commands, expect] = [process.argv[2], Number(process.argv[3]), Number(process.argv[4])]
const semantics = Semantics.of('shoal.test.counter')
const CounterFish = FishType.of({
  semantics,
  // Without a subscription a Pond 1.x fish sees only its own node's events.
  initialState: (fishName) => ({ state: 0, subscriptions: [Subscription.of(semantics, fishName)] }),
  onEvent: (state, _event) => state + 1,
  onCommand: (_state, command) => (command.type === 'inc' ? [{ type: 'incremented' }] : []),
  onStateChange: OnStateChange.publishPrivateState(),
})

const out = (v) => process.stdout.write(JSON.stringify(v) + '\n')

Pond.default()
  .then(async (pond) => {
    let last = -1
    pond.observe(CounterFish, name).subscribe((state) => {
      if (state !== last) {
        last = state
        out({ state })
      }
      if (state === expect) {
        out({ done: state })
        process.exit(0)
      }
    })
    for (let i = 0; i < commands; i++) {
      await pond.feed(CounterFish, name)({ type: 'inc' }).toPromise()
    }
    out({ fed: commands })
  })
  .catch((e) => {
    out({ error: String(e) })
    process.exit(2)
  })
