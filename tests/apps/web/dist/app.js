// Reads the `test.web-input` events through the node's API (this page is served by the node, so
// the API is same-origin) and publishes what it read as one `test.web-output` event.
(async () => {
  const offsets = await (await fetch('/api/v1/events/offsets')).json();
  const res = await fetch('/api/v1/events/query', {
    method: 'POST',
    headers: {'Content-Type': 'application/json'},
    body: JSON.stringify({upperBound: offsets, subscriptions: [{semantics: 'test.web-input'}], order: 'lamport'}),
  });
  const lines = (await res.text()).split('\n').filter(l => l.trim());
  const seen = lines.map(l => JSON.parse(l).payload);
  await fetch('/api/v1/events/publish', {
    method: 'POST',
    headers: {'Content-Type': 'application/json'},
    body: JSON.stringify({data: [{semantics: 'test.web-output', name: 'page', payload: {seen, location: location.pathname}}]}),
  });
  document.getElementById('status').textContent = 'done';
})();
