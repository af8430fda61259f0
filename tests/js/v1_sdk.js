// The real ActyxOS v1 JS client (@actyx/os-sdk 0.3.1, from npm) against a running shoal node.
// Run by tests/tests/api.rs (`v1_js_sdk_*`) after `npm ci` in a scratch copy of this directory.
// AX_EVENT_SERVICE_URI / AX_CONSOLE_SERVICE_URI point the SDK at the node (its own env vars).
// Prints `OK` and exits 0 when every step worked; any failure exits non-zero with a reason.
'use strict';
const { Client, EventDraft, Subscription, Ordering, LogSeverity } = require('@actyx/os-sdk');

const fail = (msg) => {
  console.error('FAIL: ' + msg);
  process.exit(1);
};
// Every wait is bounded: the whole script gets 60 s.
setTimeout(() => fail('timed out'), 60000).unref();

const take = async (stream, n) => {
  const out = [];
  for await (const ev of stream) {
    out.push(ev);
    if (out.length === n) break;
  }
  return out;
};

(async () => {
  const ax = Client();
  const es = ax.eventService;
  const semantics = 'com.example.sdk';

  // publish: one request per call; the SDK sends a chunked body without Content-Length.
  await es.publishPromise({ eventDrafts: EventDraft.make(semantics, 'robot1', { n: 1 }) });
  await es.publishPromise({
    eventDrafts: [EventDraft.make(semantics, 'robot1', { n: 2 }), EventDraft.make(semantics, 'robot2', { n: 3 })],
  });

  const offsets = await es.offsetsPromise();
  const sources = Object.keys(offsets);
  if (sources.length !== 1 || offsets[sources[0]] !== 2) fail('offsets ' + JSON.stringify(offsets));
  const source = sources[0];

  const query = await es.queryStream({ upperBound: offsets, subscriptions: Subscription.everything(), ordering: Ordering.Lamport });
  const queried = await take(query, 3);
  const ns = queried.map((e) => e.payload.n).join(',');
  if (ns !== '1,2,3') fail('query payloads ' + ns);
  if (queried[0].stream.source !== source || queried[0].stream.streamSemantics !== semantics) fail('query envelope ' + JSON.stringify(queried[0]));

  const reverse = await es.queryStream({
    upperBound: offsets,
    subscriptions: Subscription.distributed(semantics, 'robot1'),
    ordering: Ordering.LamportReverse,
  });
  const rev = (await take(reverse, 2)).map((e) => e.payload.n).join(',');
  if (rev !== '2,1') fail('reverse query payloads ' + rev);

  // subscribe: catch-up above the lower bound, then a live event.
  const sub = await es.subscribeStream({ subscriptions: Subscription.wildcard(semantics), lowerBound: { [source]: 0 } });
  const it = sub[Symbol.asyncIterator]();
  const first = await it.next();
  const second = await it.next();
  if (first.value.offset !== 1 || second.value.offset !== 2) fail('catch-up offsets ' + first.value.offset + ',' + second.value.offset);
  await es.publishPromise({ eventDrafts: EventDraft.make(semantics, 'robot1', { n: 4 }) });
  const live = await it.next();
  if (live.value.offset !== 3 || live.value.payload.n !== 4) fail('live event ' + JSON.stringify(live.value));
  sub.cancel();

  await ax.consoleService.logPromise({
    logName: 'sdk-test',
    message: 'hello from the v1 SDK',
    severity: LogSeverity.WARN,
    producer: { name: 'com.example.sdk', version: '1.0.0' },
    labels: { k: 'v' },
    additionalData: { x: 1 },
  });

  console.log('OK');
  process.exit(0);
})().catch((e) => fail(String(e && e.stack ? e.stack : e)));
