// The factory dashboard: subscribes to seed 003's material-movements on the node that serves
// this page (same origin: fetch streaming of the NDJSON subscription), shows each movement as
// it happens and the pieces per location that follow from them. Resumes where it left off
// (the highest offset per source seen) when the stream breaks.
"use strict";

const MAX_ROWS = 200;
const levels = new Map();
const lower = {};
let count = 0;

function apply(p) {
  const n = Number(p.howMuch) || 0;
  const move = (where, d) => { if (where) levels.set(where, (levels.get(where) || 0) + d); };
  if (p.eventType === "consumed" || p.eventType === "pickedUp") move(p.fromWhere, -n);
  if (p.eventType === "produced") move(p.where, n);
  if (p.eventType === "delivered") move(p.toWhere, n);
}

function cell(row, text) {
  const td = document.createElement("td");
  td.textContent = text === undefined ? "" : String(text);
  row.appendChild(td);
}

function show(event) {
  const p = event.payload || {};
  const row = document.createElement("tr");
  row.className = "new";
  cell(row, new Date(event.timestamp / 1000).toLocaleTimeString());
  cell(row, `${p.howMuch} × ${p.what}`);
  cell(row, p.eventType);
  cell(row, p.fromWhere);
  cell(row, p.toWhere || p.where);
  cell(row, p.byWhom);
  const body = document.querySelector("#moves tbody");
  body.insertBefore(row, body.firstChild);
  while (body.rows.length > MAX_ROWS) body.deleteRow(-1);
  document.getElementById("count").textContent = String(++count);
  const levelsBody = document.querySelector("#levels tbody");
  levelsBody.replaceChildren();
  for (const [where, n] of [...levels].sort()) {
    const r = document.createElement("tr");
    cell(r, where);
    cell(r, n);
    levelsBody.appendChild(r);
  }
}

async function follow() {
  const status = document.getElementById("status");
  for (;;) {
    try {
      const resp = await fetch("/api/v1/events/subscribe", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ lowerBound: lower, subscriptions: [{ semantics: "material-movements" }] }),
      });
      if (!resp.ok) throw new Error(`HTTP ${resp.status}`);
      status.textContent = "live";
      const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value;
        let nl;
        while ((nl = buf.indexOf("\n")) >= 0) {
          const line = buf.slice(0, nl).trim();
          buf = buf.slice(nl + 1);
          if (!line) continue; // keep-alive
          const event = JSON.parse(line);
          lower[event.stream.source] = event.offset;
          apply(event.payload || {});
          show(event);
        }
      }
    } catch (e) {
      status.textContent = `reconnecting (${e.message})`;
    }
    await new Promise((r) => setTimeout(r, 1000));
  }
}

follow();
