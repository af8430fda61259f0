//! HTTP helpers of the harness: bounded waits ([`within`]), status and error-format checks,
//! NDJSON streams read line by line with timeouts ([`Ndjson`]), and [`raw_http`] for requests
//! reqwest will not send (a lying `Content-Length`, a chunked body cut short).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::TIMEOUT;

/// `fut`, or an error after [`TIMEOUT`].
pub async fn within<T, E>(fut: impl std::future::Future<Output = Result<T, E>>) -> Result<T>
where
    E: Into<anyhow::Error>,
{
    match tokio::time::timeout(TIMEOUT, fut).await {
        Ok(r) => r.map_err(Into::into),
        Err(_) => bail!("no answer within {TIMEOUT:?}"),
    }
}

/// Fails unless `resp` has `status`.
pub fn expect_status(resp: &reqwest::Response, status: u16) -> Result<()> {
    if resp.status().as_u16() != status {
        bail!(
            "expected {status}, got {} from {}",
            resp.status(),
            resp.url()
        );
    }
    Ok(())
}

/// Checks an API error answer: status, `errorCode`, and that the message mentions `mentions`.
pub async fn expect_error(
    resp: reqwest::Response,
    status: u16,
    code: &str,
    mentions: &str,
) -> Result<Value> {
    let got = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let text = within(resp.text()).await?;
    if got != status {
        bail!("expected {status} {code}, got {got}: {text}");
    }
    if !ct.starts_with("application/json") {
        bail!("error answer has content type `{ct}`: {text}");
    }
    let body: Value = serde_json::from_str(&text).with_context(|| format!("not JSON: {text}"))?;
    if body["errorCode"] != code {
        bail!("expected errorCode {code}: {body}");
    }
    let msg = body["error"].as_str().unwrap_or("");
    if msg.is_empty() || !msg.contains(mentions) {
        bail!("error message should mention `{mentions}`: {body}");
    }
    Ok(body)
}

/// Lines of an NDJSON answer, read as they arrive; keep-alive (empty) lines are skipped.
pub struct Ndjson {
    resp: reqwest::Response,
    buf: Vec<u8>,
    done: bool,
    /// Every line read so far ended with `\n` (checked at the end of a finite stream).
    pub content_type: String,
}

impl Ndjson {
    pub fn new(resp: reqwest::Response) -> Ndjson {
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        Ndjson {
            resp,
            buf: Vec::new(),
            done: false,
            content_type,
        }
    }

    /// The next JSON line, `None` at the end of the stream; fails after [`TIMEOUT`].
    pub async fn next(&mut self) -> Result<Option<Value>> {
        self.next_within(TIMEOUT).await
    }

    /// The next JSON line within `limit`; `Err` on timeout (the stream stays usable).
    pub async fn next_within(&mut self, limit: Duration) -> Result<Option<Value>> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                let line = &line[..line.len() - 1];
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let v = serde_json::from_slice(line).with_context(|| {
                    format!("not a JSON line: {}", String::from_utf8_lossy(line))
                })?;
                return Ok(Some(v));
            }
            if self.done {
                if !self.buf.is_empty() {
                    bail!(
                        "stream ended with an unterminated line: {}",
                        String::from_utf8_lossy(&self.buf)
                    );
                }
                return Ok(None);
            }
            match tokio::time::timeout_at(deadline, self.resp.chunk()).await {
                Err(_) => bail!("no line within {limit:?}"),
                Ok(Ok(Some(chunk))) => self.buf.extend_from_slice(&chunk),
                Ok(Ok(None)) => self.done = true,
                Ok(Err(e)) => bail!("stream broke: {e}"),
            }
        }
    }

    /// `n` lines, each within [`TIMEOUT`]; fails if the stream ends first.
    pub async fn take(&mut self, n: usize) -> Result<Vec<Value>> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            match self.next().await? {
                Some(v) => out.push(v),
                None => bail!("stream ended after {} of {n} lines", out.len()),
            }
        }
        Ok(out)
    }

    /// Every remaining line; the stream must end within [`TIMEOUT`] of the last line.
    pub async fn collect(mut self) -> Result<Vec<Value>> {
        let mut out = Vec::new();
        while let Some(v) = self.next().await? {
            out.push(v);
        }
        Ok(out)
    }

    /// Asserts nothing but keep-alives arrives within `quiet` (used only to check that a
    /// stream does not deliver extra items; never a timing assertion on the node).
    pub async fn expect_nothing(&mut self, quiet: Duration) -> Result<()> {
        match self.next_within(quiet).await {
            Err(_) => Ok(()),
            Ok(None) => bail!("stream ended"),
            Ok(Some(v)) => bail!("unexpected line: {v}"),
        }
    }
}

/// A raw HTTP/1.1 exchange over TCP: sends `request` as is, then reads the answer's status line
/// and headers (and as much body as arrives before the server closes or [`TIMEOUT`]). Returns
/// `(status, head, body)`. For requests reqwest will not send.
pub async fn raw_http(addr: SocketAddr, request: &[u8]) -> Result<(u16, String, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = within(tokio::net::TcpStream::connect(addr)).await?;
    within(tcp.write_all(request)).await?;
    let mut got = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        // Enough once the head and a JSON error body are in; else read until close.
        if let Some(head_end) = find(&got, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..head_end]).to_string();
            let body = &got[head_end + 4..];
            let length = head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<usize>().ok())?
            });
            if length.is_some_and(|n| body.len() >= n) {
                let status = parse_status(&head)?;
                return Ok((status, head, String::from_utf8_lossy(body).to_string()));
            }
        }
        match tokio::time::timeout(TIMEOUT, tcp.read(&mut chunk)).await {
            Err(_) => bail!("no complete answer within {TIMEOUT:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&chunk[..n]),
        }
    }
    let head_end = find(&got, b"\r\n\r\n").context("connection closed before a response")?;
    let head = String::from_utf8_lossy(&got[..head_end]).to_string();
    let status = parse_status(&head)?;
    Ok((
        status,
        head,
        String::from_utf8_lossy(&got[head_end + 4..]).to_string(),
    ))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn parse_status(head: &str) -> Result<u16> {
    head.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line in {head}"))
}
