//! A real browser for tests: Debian's `chromium`, headless ([`chromium`] finds or installs it,
//! [`Browser`] runs it on one URL in its own process group and kills that group on drop;
//! [`Devtools`] runs it driven over the Chrome DevTools Protocol, whose [`Page`] evaluates
//! JavaScript in a page, waits for conditions in it, types and takes screenshots).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::{within, TIMEOUT};

/// Debian's chromium, installed with apt when missing (as `.ci/run` does); `None` only when it
/// truly cannot be installed here.
pub fn chromium() -> Option<PathBuf> {
    let find = || {
        ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
    };
    if let Some(p) = std::env::var_os("SHOAL_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    if let Some(p) = find() {
        return Some(p);
    }
    eprintln!("browser test: chromium is missing; trying `apt-get install -y chromium`");
    let apt = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    let _ = apt(&["update"]) && apt(&["install", "-y", "chromium"]);
    find()
}

/// Headless chromium on `url`, in its own process group so that dropping it kills the browser
/// and every helper process it started.
pub struct Browser(std::process::Child);

impl Browser {
    pub fn open(chromium: &Path, profile: &Path, url: &str) -> Result<Browser> {
        use std::os::unix::process::CommandExt;
        let child = Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .context("cannot run chromium")?;
        Ok(Browser(child))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Ok(pgid) = libc::pid_t::try_from(self.0.id()) {
            // SAFETY: kill(2) on the process group of our own, not yet reaped, child.
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
        }
        let _ = self.0.wait();
    }
}

/// Headless chromium with the DevTools Protocol on a port of its choosing, in its own process
/// group (killed with it on drop).
pub struct Devtools {
    child: std::process::Child,
    ws_url: String,
}

impl Devtools {
    pub fn launch(chromium: &Path, profile: &Path) -> Result<Devtools> {
        use std::os::unix::process::CommandExt;
        let mut child = Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .context("cannot run chromium")?;
        let stderr = child.stderr.take().context("chromium stderr")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    let _ = tx.send(url.trim().to_string());
                }
            }
        });
        let mut browser = Devtools {
            child,
            ws_url: String::new(),
        };
        browser.ws_url = rx
            .recv_timeout(TIMEOUT)
            .context("chromium printed no DevTools address")?;
        Ok(browser)
    }
}

impl Drop for Devtools {
    fn drop(&mut self) {
        if let Ok(pgid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: kill(2) on the process group of our own, not yet reaped, child.
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
        }
        let _ = self.child.wait();
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A DevTools Protocol session on one page.
pub struct Page {
    ws: Socket,
    next_id: u64,
    session: String,
}

impl Page {
    pub async fn open(browser: &Devtools, url: &str) -> Result<Page> {
        let (ws, _) = within(tokio_tungstenite::connect_async(browser.ws_url.as_str())).await?;
        let mut page = Page {
            ws,
            next_id: 1,
            session: String::new(),
        };
        let target = page
            .call("Target.createTarget", json!({"url": "about:blank"}))
            .await?;
        let attached = page
            .call(
                "Target.attachToTarget",
                json!({"targetId": target["targetId"], "flatten": true}),
            )
            .await?;
        page.session = attached["sessionId"]
            .as_str()
            .context("no sessionId")?
            .to_string();
        page.viewport(1280, 1500).await?;
        page.call("Page.navigate", json!({ "url": url })).await?;
        Ok(page)
    }

    /// One command; its `result`, or its error.
    pub async fn call(&mut self, method: &str, params: Value) -> Result<Value> {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if !self.session.is_empty() {
            msg["sessionId"] = self.session.clone().into();
        }
        within(self.ws.send(Message::text(msg.to_string()))).await?;
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let frame = tokio::time::timeout(left, self.ws.next())
                .await
                .with_context(|| format!("{method}: no answer within {TIMEOUT:?}"))?
                .context("the DevTools socket closed")??;
            let Message::Text(text) = frame else { continue };
            let answer: Value = serde_json::from_str(text.as_str())?;
            if answer["id"] != id {
                continue; // an event, or another command's answer
            }
            if !answer["error"].is_null() {
                bail!("{method}: {}", answer["error"]);
            }
            return Ok(answer["result"].clone());
        }
    }

    /// Evaluates `js` in the page (promises awaited); its value.
    pub async fn eval(&mut self, js: &str) -> Result<Value> {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": js, "awaitPromise": true, "returnByValue": true}),
            )
            .await?;
        if !r["exceptionDetails"].is_null() {
            bail!("{js}: {}", r["exceptionDetails"]);
        }
        Ok(r["result"]["value"].clone())
    }

    /// Polls `js` until it is true (bounded by [`TIMEOUT`]).
    pub async fn wait_for(&mut self, what: &str, js: &str) -> Result<()> {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if self.eval(js).await.ok() == Some(Value::Bool(true)) {
                return Ok(());
            }
            if Instant::now() > deadline {
                let body = self
                    .eval("document.body.innerText")
                    .await
                    .unwrap_or_default();
                bail!("the page never showed {what} ({js}); it shows:\n{body}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn viewport(&mut self, width: u32, height: u32) -> Result<()> {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": false}),
        )
        .await?;
        Ok(())
    }

    /// Types `text` into the element `selector` (focused, its content selected first), as a
    /// user's keyboard would.
    pub async fn type_into(&mut self, selector: &str, text: &str) -> Result<()> {
        let sel = serde_json::to_string(selector)?;
        self.eval(&format!(
            "(() => {{ const t = document.querySelector({sel}); t.focus(); t.select(); return true; }})()"
        ))
        .await?;
        self.call("Input.insertText", json!({ "text": text }))
            .await?;
        Ok(())
    }

    /// A PNG of the viewport, written to `<dir>/<name>.png`.
    pub async fn screenshot(&mut self, dir: &Path, name: &str) -> Result<()> {
        let shot = self
            .call("Page.captureScreenshot", json!({"format": "png"}))
            .await?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().context("no screenshot data")?)?;
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join(format!("{name}.png")), png)?;
        Ok(())
    }
}
