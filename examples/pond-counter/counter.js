// A swarm-wide counter written with Actyx Pond 2.x: every node can increment it, and every
// node's fish converges to the same total once the nodes replicate.
//
//   AX_STORE_URI=ws://127.0.0.1:4243/store_api node counter.js [increments] [--follow]
//
// Emits <increments> (default 1) events tagged `counter`, then prints the counter's state each
// time it changes. Without --follow it exits after 5 seconds without a change.
'use strict'
const { Pond, Tag, FishId } = require('@actyx/pond')

const CounterTag = Tag('counter')

const Counter = {
  where: CounterTag,
  initialState: { total: 0, bySource: {} },
  onEvent: (state, event, meta) => {
    const source = meta.eventId.split('/')[1]
    state.total += event.by
    state.bySource[source] = (state.bySource[source] || 0) + event.by
    return state
  },
  fishId: FishId.of('com.example.counter', 'shared', 1),
}

async function main() {
  const increments = Number(process.argv[2] || 1)
  const follow = process.argv.includes('--follow')
  const pond = await Pond.default()
  let quiet = null
  const settle = () => {
    if (follow) return
    clearTimeout(quiet)
    quiet = setTimeout(() => {
      pond.dispose()
      process.exit(0)
    }, 5000)
  }
  pond.observe(Counter, (state) => {
    console.log(`counter = ${state.total}  (by node: ${JSON.stringify(state.bySource)})`)
    settle()
  })
  for (let i = 0; i < increments; i++) {
    await pond.emit(CounterTag, { by: 1 }).toPromise()
  }
  settle()
}

main().catch((e) => {
  console.error(e)
  process.exit(1)
})
