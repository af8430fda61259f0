//! A minimal store-API client for the tests: sends request/cancel frames and collects the
//! answers of each request; every wait is bounded by the harness's `TIMEOUT`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use shoal_tests::TIMEOUT;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    /// Frames read but not yet taken, per request id.
    pending: HashMap<i64, Vec<Value>>,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Result<Client> {
        let url = format!("ws://{addr}/store_api");
        let (ws, _) = tokio::time::timeout(TIMEOUT, tokio_tungstenite::connect_async(url))
            .await
            .context("connect timed out")??;
        Ok(Client {
            ws,
            next_id: 0,
            pending: HashMap::new(),
        })
    }

    pub async fn send_text(&mut self, text: &str) -> Result<()> {
        self.ws.send(Message::text(text.to_string())).await?;
        Ok(())
    }

    pub async fn ws_binary(&mut self) -> Result<()> {
        self.ws.send(Message::binary(vec![0u8, 1, 2])).await?;
        Ok(())
    }

    /// Sends a request; returns its id.
    pub async fn request(&mut self, service: &str, payload: Value) -> Result<u64> {
        let id = self.next_id;
        self.next_id += 1;
        let frame = json!({"type":"request","serviceId":service,"requestId":id,"payload":payload});
        self.send_text(&frame.to_string()).await?;
        Ok(id)
    }

    pub async fn cancel(&mut self, id: u64) -> Result<()> {
        self.send_text(&json!({"type":"cancel","requestId":id}).to_string())
            .await
    }

    /// The next frame addressed to `id` (i64: errors about frames without an id use -1).
    pub async fn frame_for(&mut self, id: i64) -> Result<Value> {
        self.frame_within(id, TIMEOUT).await
    }

    pub async fn frame_within(&mut self, id: i64, limit: Duration) -> Result<Value> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(q) = self.pending.get_mut(&id) {
                if !q.is_empty() {
                    return Ok(q.remove(0));
                }
            }
            let msg = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => bail!("no frame for request {id} within {limit:?}"),
                Ok(None) => bail!("connection closed"),
                Ok(Some(m)) => m?,
            };
            let Message::Text(text) = msg else { continue };
            let v: Value = serde_json::from_str(text.as_str())
                .with_context(|| format!("frame is not JSON: {text}"))?;
            let rid = v["requestId"].as_i64().context("frame without requestId")?;
            self.pending.entry(rid).or_default().push(v);
        }
    }

    /// Every `next` payload of `id` until `complete`; fails on `error`.
    pub async fn collect(&mut self, id: u64) -> Result<Vec<Value>> {
        let mut out = Vec::new();
        loop {
            let f = self.frame_for(id as i64).await?;
            match f["type"].as_str() {
                Some("next") => out.push(f["payload"].clone()),
                Some("complete") => return Ok(out),
                _ => bail!("request {id} failed: {f}"),
            }
        }
    }

    /// The next `next` payload of `id`.
    pub async fn next(&mut self, id: u64) -> Result<Value> {
        let f = self.frame_for(id as i64).await?;
        if f["type"] != "next" {
            bail!("expected next for {id}, got {f}");
        }
        Ok(f["payload"].clone())
    }

    /// Sends a request and returns its single `next` payload (then expects `complete`).
    pub async fn call(&mut self, service: &str, payload: Value) -> Result<Value> {
        let id = self.request(service, payload).await?;
        let mut all = self.collect(id).await?;
        if all.len() != 1 {
            bail!("{service}: expected one answer, got {all:?}");
        }
        Ok(all.remove(0))
    }

    /// Events from `next` payloads (arrays) until `n` events have arrived.
    pub async fn events(&mut self, id: u64, n: usize) -> Result<Vec<Value>> {
        let mut out = Vec::new();
        while out.len() < n {
            let p = self.next(id).await?;
            out.extend(
                p.as_array()
                    .context("events payload is not an array")?
                    .clone(),
            );
        }
        Ok(out)
    }
}

/// `OffsetMapWithDefault`.
pub fn bound(default: &str) -> Value {
    json!({"psns": {}, "default": default})
}

/// A `requestPersistedEvents`/`requestAllEvents` payload.
pub fn events_request(set: Value, order: &str) -> Value {
    json!({"fromPsnsExcluding": bound("min"), "toPsnsIncluding": bound("max"),
        "subscriptionSet": set, "sortOrder": order, "minEventKey": null, "count": "max"})
}

/// A `persistEvents` event.
pub fn unstored(semantics: &str, name: &str, tags: &[&str], payload: Value) -> Value {
    json!({"semantics": semantics, "name": name, "timestamp": 1_000_000u64,
        "tags": tags, "payload": payload})
}
