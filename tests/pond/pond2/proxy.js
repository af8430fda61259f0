// A counting WebSocket proxy between a Pond app and the node: counts the events the node
// sends (the `next` arrays of event requests) and the snapshots it stores. Used to show that
// a fish restarting from a snapshot reads few events. Test tooling only.
'use strict'
const WebSocket = require('ws')

exports.start = (target) =>
  new Promise((resolve) => {
    const stats = { events: 0, snapshotsStored: 0, snapshotsRetrieved: 0 }
    const server = new WebSocket.Server({ host: '127.0.0.1', port: 0 }, () => {
      resolve({ url: `ws://127.0.0.1:${server.address().port}/store_api`, stats, close: () => server.close() })
    })
    server.on('connection', (client) => {
      const node = new WebSocket(target)
      const queue = []
      const storeRequests = new Set()
      const retrieveRequests = new Set()
      node.on('open', () => queue.splice(0).forEach((m) => node.send(m)))
      client.on('message', (m) => {
        const text = m.toString()
        try {
          const f = JSON.parse(text)
          if (f.serviceId === '/ax/snapshots/storeSnapshot') storeRequests.add(f.requestId)
          if (f.serviceId === '/ax/snapshots/retrieveSnapshot') retrieveRequests.add(f.requestId)
        } catch (_) {}
        if (node.readyState === WebSocket.OPEN) node.send(text)
        else queue.push(text)
      })
      node.on('message', (m) => {
        const text = m.toString()
        try {
          const f = JSON.parse(text)
          if (f.type === 'next' && Array.isArray(f.payload)) stats.events += f.payload.length
          if (f.type === 'next' && f.payload === true && storeRequests.has(f.requestId)) stats.snapshotsStored++
          if (f.type === 'next' && f.payload !== null && retrieveRequests.has(f.requestId)) stats.snapshotsRetrieved++
        } catch (_) {}
        client.send(text)
      })
      node.on('close', () => client.close())
      client.on('close', () => node.close())
    })
  })
