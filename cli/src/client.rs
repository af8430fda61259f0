//! The one HTTP client of the CLI: every command that talks to a running node goes through
//! [`Client`], so connection failures and the node's JSON errors are reported the same way
//! everywhere — one line naming the URL tried and what to do.
//!
//! Streaming answers (NDJSON) are read line by line as they arrive ([`Lines`]); empty lines are
//! keep-alives and skipped. Nothing here prints: output is `output.rs`'s job.

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

/// Default URL of the events/node API.
pub const DEFAULT_NODE: &str = "http://127.0.0.1:4454";

/// `--node` and `--json`: every command that talks to a node's events, node or blob API.
#[derive(clap::Args)]
pub struct NodeArgs {
    /// URL of the node's API.
    #[arg(long, global = true, default_value = DEFAULT_NODE, env = "SHOAL_NODE")]
    pub node: String,
    /// Machine-readable output: NDJSON for streams, JSON otherwise.
    #[arg(long, global = true)]
    pub json: bool,
}

/// Runs a command's async part: one request (or stream) at a time needs only one thread.
pub fn block_on<T>(fut: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(fut)
}

/// A line longer than this is not NDJSON from a node (bounds memory on a garbage stream).
const MAX_LINE: usize = 64 * 1024 * 1024;

/// A client for one node URL.
pub struct Client {
    base: String,
    http: reqwest::Client,
}

impl Client {
    /// A client for `url` (scheme and authority, e.g. `http://127.0.0.1:4454`).
    pub fn new(url: &str) -> Result<Client> {
        let base = url.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            bail!("invalid --node `{url}`: expected a URL like {DEFAULT_NODE}");
        }
        let http = reqwest::Client::builder()
            .tcp_nodelay(true)
            .build()
            .context("cannot set up the HTTP client")?;
        Ok(Client { base, http })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Sends `req`, turning transport failures and error statuses into one-line errors.
    async fn send(&self, req: reqwest::RequestBuilder, path: &str) -> Result<reqwest::Response> {
        let url = self.url(path);
        let resp = req
            .send()
            .await
            .map_err(|e| self.transport_error(&url, e))?;
        self.check(resp, path).await
    }

    /// A success answer as it is; an error status as a one-line error naming it.
    async fn check(&self, resp: reqwest::Response, path: &str) -> Result<reqwest::Response> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let body = resp.text().await.unwrap_or_default();
        match serde_json::from_str::<Value>(&body) {
            Ok(v) if v.get("error").is_some() => bail!(
                "node at {} answered {} {}: {}",
                self.base,
                status.as_u16(),
                v["errorCode"].as_str().unwrap_or(""),
                v["error"].as_str().unwrap_or("")
            ),
            _ => bail!(
                "node at {} answered {} for {path}: {}",
                self.base,
                status,
                body.trim()
            ),
        }
    }

    fn transport_error(&self, url: &str, e: reqwest::Error) -> anyhow::Error {
        if e.is_connect() {
            let cause = root_cause(&e);
            anyhow!(
                "cannot reach node at {} ({cause}): is a node running? --node sets the URL",
                self.base
            )
        } else if e.is_timeout() {
            anyhow!("node at {} did not answer in time ({url})", self.base)
        } else {
            anyhow!("request to {url} failed: {}", root_cause(&e))
        }
    }

    /// A request for `method path` (blob transfers build their own bodies), sent with
    /// [`Client::send_request`].
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, self.url(path))
    }

    /// Sends a request from [`Client::request`], with the same error reporting as the rest.
    pub async fn send_request(
        &self,
        req: reqwest::RequestBuilder,
        path: &str,
    ) -> Result<reqwest::Response> {
        self.send(req, path).await
    }

    /// `GET path` → JSON.
    pub async fn get_json(&self, path: &str) -> Result<Value> {
        let resp = self.send(self.http.get(self.url(path)), path).await?;
        let url = self.url(path);
        resp.json()
            .await
            .with_context(|| format!("{url} did not answer JSON"))
    }

    /// `GET path` → JSON, or `None` when the server answers 404 (a server of the node other
    /// than its API lacks the path).
    pub async fn get_json_if_found(&self, path: &str) -> Result<Option<Value>> {
        let url = self.url(path);
        let resp = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| self.transport_error(&url, e))?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let resp = self.check(resp, path).await?;
        let value = resp
            .json()
            .await
            .with_context(|| format!("{url} did not answer JSON"))?;
        Ok(Some(value))
    }

    /// The URL this client talks to (scheme and authority).
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `POST path` with a JSON body → the response body as JSON (`Null` if empty).
    pub async fn post_json(&self, path: &str, body: &Value) -> Result<Value> {
        let resp = self
            .send(self.http.post(self.url(path)).json(body), path)
            .await?;
        let url = self.url(path);
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| self.transport_error(&url, e))?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&bytes).with_context(|| format!("{url} did not answer JSON"))
    }

    /// `POST path` with a JSON body → the NDJSON lines of the answer.
    pub async fn post_lines(&self, path: &str, body: &Value) -> Result<Lines> {
        let resp = self
            .send(self.http.post(self.url(path)).json(body), path)
            .await?;
        Ok(Lines::new(resp, self.url(path)))
    }

    /// `GET path` → the NDJSON lines of the answer.
    pub async fn get_lines(&self, path: &str) -> Result<Lines> {
        let resp = self.send(self.http.get(self.url(path)), path).await?;
        Ok(Lines::new(resp, self.url(path)))
    }
}

/// The innermost cause of a transport error: "Connection refused (os error 111)" rather than
/// reqwest's "error sending request for url (...)".
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// The lines of a streaming answer, as they arrive.
pub struct Lines {
    resp: reqwest::Response,
    buf: Vec<u8>,
    /// Start of the unread part of `buf`.
    pos: usize,
    url: String,
    done: bool,
}

impl Lines {
    fn new(resp: reqwest::Response, url: String) -> Lines {
        Lines {
            resp,
            buf: Vec::new(),
            pos: 0,
            url,
            done: false,
        }
    }

    /// The next non-empty line, `None` at the end of the answer.
    pub async fn next_line(&mut self) -> Result<Option<String>> {
        loop {
            if let Some(i) = self.buf[self.pos..].iter().position(|&b| b == b'\n') {
                let line = &self.buf[self.pos..self.pos + i];
                self.pos += i + 1;
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue; // keep-alive
                }
                return self.text(line.to_vec()).map(Some);
            }
            // Drop what was consumed before reading more (keeps the buffer one line long).
            self.buf.drain(..self.pos);
            self.pos = 0;
            if self.done {
                if self.buf.iter().all(u8::is_ascii_whitespace) {
                    return Ok(None);
                }
                let line = std::mem::take(&mut self.buf);
                return self.text(line).map(Some);
            }
            match self.resp.chunk().await {
                Ok(Some(chunk)) => {
                    self.buf.extend_from_slice(&chunk);
                    if self.buf.len() > MAX_LINE {
                        bail!("{} sent a line over {MAX_LINE} bytes", self.url);
                    }
                }
                Ok(None) => self.done = true,
                Err(e) => bail!("the stream from {} broke: {}", self.url, root_cause(&e)),
            }
        }
    }

    fn text(&self, line: Vec<u8>) -> Result<String> {
        String::from_utf8(line)
            .with_context(|| format!("{} sent a line that is not UTF-8", self.url))
    }
}
