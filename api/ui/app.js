// The node dashboard: plain ES module, no build step, no CDN. Everything comes from the node's
// own API (same origin): live node info and app list over SSE (/api/v1/node/events, pushed when
// the swarm's view, the stored offsets or the apps change), events over the v1 query/subscribe
// NDJSON streams, app settings over /api/v1/settings.

const $ = (sel) => document.querySelector(sel);
const esc = (s) => String(s ?? '').replace(/[&<>"']/g, (c) => ({'&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;'}[c]));
const short = (id) => (id && id.length > 16 ? id.slice(0, 8) + '…' + id.slice(-6) : id ?? '');
const when = (us) => (us ? new Date(us / 1000).toLocaleTimeString() : '—');
const bytes = (n) => (n >= 1 << 20 ? (n / (1 << 20)).toFixed(1) + ' MiB' : n >= 1024 ? (n / 1024).toFixed(1) + ' KiB' : n + ' B');

let info = null;
// This node's display name: from its own entry of /api/v1/nodes (node info has none).
let displayName = null;

async function getJson(path) {
  const resp = await fetch(path);
  if (!resp.ok) {
    let msg = resp.status + '';
    try { msg = (await resp.json()).error; } catch (e) {}
    const err = new Error(msg);
    err.status = resp.status;
    throw err;
  }
  return resp.json();
}

// Reads an NDJSON response line by line; `onLine` gets each parsed object (keep-alive blank
// lines are skipped); stops when `signal` aborts or `onLine` returns false.
async function readNdjson(resp, onLine) {
  const reader = resp.body.getReader();
  const dec = new TextDecoder();
  let buf = '';
  for (;;) {
    const {value, done} = await reader.read();
    if (done) return;
    buf += dec.decode(value, {stream: true});
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, i).trim();
      buf = buf.slice(i + 1);
      if (line && onLine(JSON.parse(line)) === false) { reader.cancel(); return; }
    }
  }
}

// ---- node, peers, sources (live) ----

function renderNode(i) {
  const facts = [
    ['source', `<span class="mono" id="node-source">${esc(i.source)}</span>`],
    ['display name', `<span id="node-display">${esc(displayName ?? '—')}</span>`],
    ['version', esc(i.version)],
    ['uptime', `${Math.floor(i.uptimeSecs / 3600)} h ${Math.floor(i.uptimeSecs / 60) % 60} min ${i.uptimeSecs % 60} s`],
    ['swarm addresses', i.listenAddrs.map((a) => `<div class="mono">${esc(a)}</div>`).join('')],
    ['console / store API', `<span class="mono">${esc(i.consoleAddr)} · ${esc(i.storeAddr)}</span>`],
    ['store', `${bytes(i.storeBytes)} · ${i.events} events · ${i.streams} streams`],
  ];
  $('#node-facts').innerHTML = facts.map(([k, v]) => `<dt>${k}</dt><dd>${v}</dd>`).join('');
  $('#peers').innerHTML = i.peers.map((p) => `<tr>
    <td class="mono" title="${esc(p.peerId)}">${esc(short(p.peerId))}</td>
    <td>${p.connected ? 'yes' : 'no'}</td>
    <td>${p.ourOffsetStored ?? '—'}</td>
    <td>${when(p.lastSeen)}</td>
    <td class="error">${esc(p.lastError ?? '')}</td></tr>`).join('') || '<tr><td colspan="5" class="note">no peers</td></tr>';
  $('#source-rows').innerHTML = i.sources.map((s) => {
    const lag = s.knownOffset == null ? 0 : s.knownOffset - (s.storedOffset ?? -1);
    return `<tr data-source="${esc(s.source)}"><td class="mono" title="${esc(s.source)}">${esc(short(s.source))}${s.source === i.source ? ' (this node)' : ''}</td>
      <td>${s.storedOffset ?? '—'}</td><td>${s.knownOffset ?? '—'}</td><td>${lag > 0 ? lag : 0}</td></tr>`;
  }).join('') || '<tr><td colspan="4" class="note">no events yet</td></tr>';
}

function live() {
  const es = new EventSource('/api/v1/node/events');
  es.onopen = () => { $('#live').textContent = 'live'; $('#live').className = 'badge on'; };
  es.onerror = () => { $('#live').textContent = 'reconnecting…'; $('#live').className = 'badge off'; };
  es.onmessage = (m) => {
    info = JSON.parse(m.data);
    renderNode(info);
    // Node info changed (a peer, an offset): the swarm list and the blobs may have too.
    refreshNodes();
  };
  es.addEventListener('apps', (m) => renderApps(JSON.parse(m.data)));
}

// ---- swarm ----

async function refreshNodes() {
  let nodes;
  try {
    nodes = await getJson('/api/v1/nodes');
  } catch (e) {
    $('#node-rows').innerHTML = `<tr><td colspan="6" class="note">/api/v1/nodes: ${esc(e.message)}</td></tr>`;
    return;
  }
  $('#node-rows').innerHTML = nodes.map((n) => `<tr data-node="${esc(n.source)}">
    <td class="mono" title="${esc(n.source)}">${esc(short(n.source))}</td><td>${esc(n.displayName ?? '—')}</td>
    <td>${esc(n.version)}</td><td>${n.connected ? 'yes' : 'no'}</td><td>${n.events}</td>
    <td>${n.apps ? `${n.apps.running}/${n.apps.deployed}` : '—'}</td></tr>`).join('');
  const me = nodes.find((n) => n.source === info?.source);
  if (me) { displayName = me.displayName; $('#node-display').textContent = displayName ?? '—'; }
  drawSwarm(nodes);
}

// Nodes on a circle; an edge for each pair of nodes one of which lists the other among its
// connected peers (every node's status carries its `peers`), drawn once per pair. This node's
// own connections are solid, every other edge dashed (known only from other nodes' status).
// Peers without a status of their own (e.g. an IPFS peer) are not drawn.
function drawSwarm(nodes) {
  const svg = $('#swarm-map');
  const self = info?.source;
  const n = nodes.length || 1;
  const pos = new Map(nodes.map((node, k) => {
    const a = (2 * Math.PI * k) / n - Math.PI / 2;
    return [node.source, [150 + 110 * Math.cos(a), 150 + 110 * Math.sin(a)]];
  }));
  const edges = new Map();
  for (const node of nodes) {
    for (const peer of node.peers ?? []) {
      if (peer === node.source || !pos.has(peer)) continue;
      const [x, y] = [node.source, peer].sort();
      edges.set(`${x} ${y}`, [x, y]);
    }
  }
  // This node's own connections, as it sees them now (another node's status may be older).
  const mine = new Set(nodes.find((node) => node.source === self)?.peers ?? []);
  let out = '';
  for (const [key, [x, y]] of edges) {
    const [x1, y1] = pos.get(x), [x2, y2] = pos.get(y);
    const direct = (x === self && mine.has(y)) || (y === self && mine.has(x));
    out += `<line class="edge ${direct ? 'direct' : ''}" data-edge="${esc(key)}" x1="${x1}" y1="${y1}" x2="${x2}" y2="${y2}" ${direct ? '' : 'stroke-dasharray="4 3"'}/>`;
  }
  for (const node of nodes) {
    const [x, y] = pos.get(node.source);
    out += `<circle class="node ${node.source === self ? 'self' : ''}" cx="${x}" cy="${y}" r="12"><title>${esc(node.source)}</title></circle>`;
    out += `<text x="${x}" y="${y + 26}" text-anchor="middle">${esc(node.displayName ?? short(node.source))}</text>`;
  }
  svg.innerHTML = out;
}

// ---- events: query and live tail ----

let tail = null;

function filter() {
  const f = new FormData($('#event-filter'));
  const sub = {};
  for (const k of ['semantics', 'name', 'source']) if (f.get(k)) sub[k] = f.get(k);
  const tags = String(f.get('tags') || '').split(',').map((t) => t.trim()).filter(Boolean);
  if (tags.length) sub.tags = tags;
  return [sub];
}

function eventRow(e) {
  return `<tr data-name="${esc(e.stream.name)}"><td>${e.lamport}</td><td class="mono" title="${esc(e.stream.source)}">${esc(short(e.stream.source))}</td>
    <td>${e.offset}</td><td>${esc(e.stream.semantics)} / ${esc(e.stream.name)}</td><td>${esc((e.tags ?? []).join(', '))}</td>
    <td class="mono">${esc(JSON.stringify(e.payload)).slice(0, 300)}</td></tr>`;
}

async function query() {
  const rows = [];
  try {
    const offsets = await getJson('/api/v1/events/offsets');
    const resp = await fetch('/api/v1/events/query', {method: 'POST', headers: {'content-type': 'application/json'},
      body: JSON.stringify({upperBound: offsets, subscriptions: filter(), order: 'lamport-reverse'})});
    if (!resp.ok) throw new Error((await resp.json()).error);
    await readNdjson(resp, (e) => { rows.push(eventRow(e)); return rows.length < 200; });
    $('#event-rows').innerHTML = rows.join('');
    $('#event-status').textContent = `${rows.length} newest matching events${rows.length === 200 ? ' (first 200)' : ''}`;
    $('#event-status').className = 'note';
    startTail(offsets);
  } catch (e) {
    $('#event-status').textContent = e.message;
    $('#event-status').className = 'error';
  }
}

// New matching events above `offsets`, prepended as they arrive, until the filter changes.
async function startTail(offsets) {
  if (tail) tail.abort();
  if (!$('#tail-on').checked) return;
  tail = new AbortController();
  try {
    const resp = await fetch('/api/v1/events/subscribe', {method: 'POST', signal: tail.signal,
      headers: {'content-type': 'application/json'}, body: JSON.stringify({lowerBound: offsets, subscriptions: filter()})});
    await readNdjson(resp, (e) => {
      $('#event-rows').insertAdjacentHTML('afterbegin', eventRow(e));
      const rows = $('#event-rows').rows;
      while (rows.length > 500) rows[rows.length - 1].remove();
    });
  } catch (e) {
    if (e.name !== 'AbortError') $('#event-status').textContent = 'live tail ended: ' + e.message;
  }
}

// ---- blobs ----

async function refreshBlobs() {
  try {
    const blobs = await getJson('/api/v1/blobs');
    $('#blob-rows').innerHTML = blobs.map((b) => `<tr data-cid="${esc(b.cid)}">
      <td class="mono"><a href="/api/v1/blobs/${esc(b.cid)}" download>${esc(short(b.cid))}</a></td>
      <td>${bytes(b.size)}</td><td>${esc(b.name ?? '')}</td><td>${b.complete ? 'complete' : 'partial'}${b.pinned ? ', pinned' : ''}</td>
      <td class="replicas">${b.replicas ?? '—'}</td></tr>`).join('')
      || '<tr><td colspan="5" class="note">no blobs</td></tr>';
  } catch (e) {
    $('#blob-status').textContent = e.message;
  }
}

async function upload(ev) {
  ev.preventDefault();
  const file = $('#blob-file').files[0];
  if (!file) { $('#blob-status').textContent = 'choose a file first'; return; }
  // Empty: the node's default replica count (--blob-replicas).
  const replicas = $('#blob-replicas').value.trim();
  const url = replicas ? `/api/v1/blobs?replicas=${encodeURIComponent(replicas)}` : '/api/v1/blobs';
  $('#blob-status').textContent = replicas > 1 ? `storing on ${replicas} nodes…` : 'storing…';
  const resp = await fetch(url, {method: 'POST', body: file, headers: {'content-type': file.type || 'application/octet-stream'}});
  const body = await resp.json();
  // 202: stored here, but fewer nodes than asked hold it yet (replication goes on).
  const held = resp.status === 202 ? `; held by ${body.replicas} of ${replicas} nodes so far` : '';
  $('#blob-status').textContent = resp.ok ? `stored ${body.cid} (${bytes(body.size)})${held}` : body.error;
  $('#blob-status').className = resp.ok ? 'note' : 'error';
  $('#blob-status').dataset.cid = resp.ok ? body.cid : '';
  refreshBlobs();
}

// ---- apps: list (live over SSE), start/stop/restart, settings editor, log ----

// The scope the editor and the log show: 'node' or an app id.
let scope = 'node';
let appLog = null;

function renderApps(apps) {
  $('#app-rows').innerHTML = apps.map((a) => `<tr data-app="${esc(a.id)}" data-state="${esc(a.state)}" data-pid="${a.pid ?? ''}"
      class="${a.id === scope ? 'selected' : ''}">
    <td><a href="#apps" data-open="${esc(a.id)}">${esc(a.id)}</a> <span class="note">${esc(a.kind)}</span></td>
    <td>${esc(a.version)}</td>
    <td class="state-${esc(a.state)}">${esc(a.state)}${a.settingsValid ? '' : ' (settings invalid)'}</td>
    <td>${a.restarts}</td><td>${a.pid ?? '—'}</td>
    <td>${a.startedAt ? esc(new Date(a.startedAt).toLocaleString()) : '—'}</td>
    <td class="actions">${['start', 'stop', 'restart'].map((act) =>
      `<button type="button" data-act="${act}" data-id="${esc(a.id)}">${act}</button>`).join('')}</td></tr>`).join('')
    || '<tr><td colspan="7" class="note">no apps deployed (shoal apps deploy DIR)</td></tr>';
  // The scope list: this node, then every app; the current choice stays.
  const sel = $('#app-scope');
  const ids = apps.map((a) => a.id);
  const have = [...sel.options].map((o) => o.value);
  if (have.join('\n') !== ['node', ...ids].join('\n')) {
    sel.innerHTML = '<option value="node">this node (node)</option>'
      + ids.map((id) => `<option value="${esc(id)}">${esc(id)}</option>`).join('');
    sel.value = scope === 'node' || ids.includes(scope) ? scope : 'node';
  }
  if (scope !== 'node' && !ids.includes(scope)) {
    $('#settings-status').textContent = `${scope} is no longer deployed here`;
    $('#settings-status').className = 'note';
  }
}

async function appAction(id, act) {
  const resp = await fetch(`/api/v1/apps/${encodeURIComponent(id)}/${act}`, {method: 'POST'});
  if (resp.ok) {
    $('#apps-status').textContent = `${act} ${id}: accepted`;
    $('#apps-status').className = 'note';
  } else {
    let msg = resp.status + '';
    try { msg = (await resp.json()).error; } catch (e) {}
    $('#apps-status').textContent = `${act} ${id}: ${msg}`;
    $('#apps-status').className = 'error';
  }
}

// Loads the settings in force and the schema of `scope` into the editor (what is typed there
// is replaced: this happens only on a choice or Reload, never on a live update).
async function loadSettings() {
  const path = `/api/v1/settings/${encodeURIComponent(scope)}`;
  const status = $('#settings-status');
  try {
    const [value, schema] = await Promise.all([getJson(path), getJson(path + '/schema')]);
    $('#settings-text').value = JSON.stringify(value, null, 2);
    $('#settings-schema').textContent = JSON.stringify(schema, null, 2);
    status.textContent = `settings of ${scope} as in force`;
    status.className = 'note';
    delete status.dataset.error;
  } catch (e) {
    status.textContent = `${path}: ${e.message}`;
    status.className = 'error';
  }
}

// PUT the editor's text as it is; the node validates it against the schema. An invalid value
// changes nothing there: the error (which names the failing JSON path) is shown and the text
// stays for correcting.
async function saveSettings() {
  const status = $('#settings-status');
  const resp = await fetch(`/api/v1/settings/${encodeURIComponent(scope)}`, {method: 'PUT',
    headers: {'content-type': 'application/json'}, body: $('#settings-text').value});
  if (resp.ok) {
    status.textContent = scope === 'node' ? 'saved' : `saved; ${scope} restarts with them if it runs`;
    status.className = 'note';
    status.dataset.saved = String(Number(status.dataset.saved ?? 0) + 1);
    delete status.dataset.error;
    return;
  }
  let msg = `${resp.status}`;
  try { msg = (await resp.json()).error; } catch (e) {}
  status.textContent = `not saved: ${msg}`;
  status.className = 'error';
  status.dataset.error = msg;
}

// The console entries of the chosen app (producerName = app id), with follow.
async function followAppLog() {
  if (appLog) appLog.abort();
  const pre = $('#app-log');
  pre.textContent = '';
  $('#app-log-name').textContent = scope === 'node' ? '—' : scope;
  if (scope === 'node') { pre.textContent = 'choose an app to see its log'; return; }
  appLog = new AbortController();
  const id = scope;
  const follow = $('#app-log-follow').checked;
  try {
    const resp = await fetch(`/api/v1/logs${follow ? '?follow=true' : ''}`, {signal: appLog.signal});
    if (!resp.ok) throw new Error((await resp.json()).error);
    await readNdjson(resp, (e) => {
      if (e.producerName !== id) return true;
      pre.textContent += `${e.logTimestamp} ${e.severity.padEnd(5)} ${e.producerVersion}: ${e.message}\n`;
      if (pre.textContent.length > 100000) pre.textContent = pre.textContent.slice(-50000);
      pre.scrollTop = pre.scrollHeight;
      return true;
    });
  } catch (e) {
    if (e.name !== 'AbortError') pre.textContent += `log ended: ${e.message}\n`;
  }
}

function choose(id) {
  scope = id;
  $('#app-scope').value = id;
  for (const tr of $('#app-rows').rows) tr.classList.toggle('selected', tr.dataset.app === id);
  loadSettings();
  followAppLog();
}

// ---- console ----

let consoleFollow = null;

async function followConsole() {
  if (consoleFollow) consoleFollow.abort();
  consoleFollow = new AbortController();
  const pre = $('#console-lines');
  pre.textContent = '';
  const follow = $('#console-follow').checked;
  try {
    const resp = await fetch(`/api/v1/logs${follow ? '?follow=true' : ''}`, {signal: consoleFollow.signal});
    if (!resp.ok) throw new Error((await resp.json()).error);
    await readNdjson(resp, (e) => {
      pre.textContent += `${e.logTimestamp} ${e.severity.padEnd(5)} ${e.producerName} ${e.logName}: ${e.message}\n`;
      if (pre.textContent.length > 200000) pre.textContent = pre.textContent.slice(-100000);
      pre.scrollTop = pre.scrollHeight;
    });
  } catch (e) {
    if (e.name !== 'AbortError') $('#console-status').textContent = e.message;
  }
}

$('#event-filter').addEventListener('submit', (ev) => { ev.preventDefault(); query(); });
$('#tail-on').addEventListener('change', query);
$('#blob-form').addEventListener('submit', upload);
$('#console-follow').addEventListener('change', followConsole);
$('#app-rows').addEventListener('click', (ev) => {
  const t = ev.target.closest('[data-act], [data-open]');
  if (!t) return;
  ev.preventDefault();
  if (t.dataset.act) appAction(t.dataset.id, t.dataset.act);
  else choose(t.dataset.open);
});
$('#app-scope').addEventListener('change', () => choose($('#app-scope').value));
$('#settings-save').addEventListener('click', saveSettings);
$('#settings-reload').addEventListener('click', loadSettings);
$('#app-log-follow').addEventListener('change', followAppLog);
live();
query();
refreshBlobs();
choose('node');
followConsole();
document.body.dataset.ready = 'true';
