//! NATS JetStream as a reference for the benchmarks: Debian's `nats-server` (installed with
//! apt-get when missing), one node with a file store on 127.0.0.1, and a minimal client of the
//! text protocol (CONNECT, SUB, PUB, MSG, PING/PONG) that is just enough to create a stream and
//! a push consumer and to publish with acknowledgements. No crate: the protocol is a few lines,
//! and the reference should not pull a second async stack into the tests.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Mutex};

/// A running `nats-server -js` with its store in a temp dir; stopped when dropped.
pub struct NatsServer {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

/// Finds `nats-server`, installing Debian's package when it is missing.
fn ensure_installed() -> Result<()> {
    let have = || {
        Command::new("nats-server")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if have() {
        return Ok(());
    }
    eprintln!("nats-server missing: apt-get install -y nats-server");
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "nats-server"])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !install() {
        let _ = Command::new("apt-get")
            .arg("update")
            .stdout(Stdio::null())
            .status();
        install();
    }
    if !have() {
        bail!("nats-server is not installed and apt-get install -y nats-server failed");
    }
    Ok(())
}

impl NatsServer {
    /// Starts one JetStream node (file store) on a free port of 127.0.0.1.
    pub fn start() -> Result<NatsServer> {
        ensure_installed()?;
        let dir = tempfile::Builder::new()
            .prefix("shoal-bench-nats-")
            .tempdir()?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let log = std::fs::File::create(dir.path().join("nats.log"))?;
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(dir.path().join("js"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("start nats-server")?;
        let server = NatsServer {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("nats-server did not listen on port {port} within 10 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(server)
    }

    /// A client connection.
    pub async fn connect(&self) -> Result<NatsClient> {
        NatsClient::connect(self.port).await
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One message received, with the time the reader saw it.
pub struct Msg {
    pub subject: String,
    pub payload: Vec<u8>,
    pub received: Instant,
}

/// A connection: writes go straight to the socket (one write per call, no buffering, as one
/// HTTP request per publish); a reader task parses what arrives and answers PINGs.
pub struct NatsClient {
    write: Arc<Mutex<OwnedWriteHalf>>,
    pub msgs: mpsc::UnboundedReceiver<Msg>,
    reader: tokio::task::JoinHandle<Result<()>>,
}

impl NatsClient {
    async fn connect(port: u16) -> Result<NatsClient> {
        let stream = TcpStream::connect(("127.0.0.1", port)).await?;
        stream.set_nodelay(true)?;
        let (read, write) = stream.into_split();
        let write = Arc::new(Mutex::new(write));
        let mut read = BufReader::new(read);
        let mut info = String::new();
        read.read_line(&mut info).await?;
        if !info.starts_with("INFO") {
            bail!("nats: expected INFO, got {info:?}");
        }
        write
            .lock()
            .await
            .write_all(
                b"CONNECT {\"verbose\":false,\"pedantic\":false,\"headers\":false}\r\nPING\r\n",
            )
            .await?;
        let mut pong = String::new();
        read.read_line(&mut pong).await?;
        if !pong.starts_with("PONG") {
            bail!("nats: CONNECT answered {pong:?}");
        }
        let (tx, msgs) = mpsc::unbounded_channel();
        let reader = tokio::spawn(read_loop(read, write.clone(), tx));
        Ok(NatsClient {
            write,
            msgs,
            reader,
        })
    }

    async fn send(&self, bytes: &[u8]) -> Result<()> {
        self.write.lock().await.write_all(bytes).await?;
        Ok(())
    }

    /// Subscribes to `subject` (sid `sid`).
    pub async fn subscribe(&self, subject: &str, sid: u32) -> Result<()> {
        self.send(format!("SUB {subject} {sid}\r\n").as_bytes())
            .await
    }

    /// Publishes `payload` on `subject`, answers (a JetStream ack) going to `reply`.
    pub async fn publish(&self, subject: &str, reply: Option<&str>, payload: &[u8]) -> Result<()> {
        let mut frame = match reply {
            Some(r) => format!("PUB {subject} {r} {}\r\n", payload.len()),
            None => format!("PUB {subject} {}\r\n", payload.len()),
        }
        .into_bytes();
        frame.extend_from_slice(payload);
        frame.extend_from_slice(b"\r\n");
        self.send(&frame).await
    }

    /// A request/reply on `subject` (for the JetStream API); fails on a JSON `error` answer.
    pub async fn request(&mut self, subject: &str, payload: &Value) -> Result<Value> {
        let inbox = format!("_INBOX.req.{}", rand::random::<u64>());
        self.subscribe(&inbox, 999).await?;
        self.publish(subject, Some(&inbox), payload.to_string().as_bytes())
            .await?;
        let answer = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(m) = self.msgs.recv().await {
                if m.subject == inbox {
                    return Ok(m);
                }
            }
            bail!("nats connection closed")
        })
        .await
        .with_context(|| format!("nats: no answer to {subject} within 10 s"))??;
        self.send(b"UNSUB 999\r\n").await?;
        let v: Value = serde_json::from_slice(&answer.payload)?;
        if !v["error"].is_null() {
            bail!("nats: {subject} answered {v}");
        }
        Ok(v)
    }
}

impl Drop for NatsClient {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

async fn read_loop(
    mut read: BufReader<tokio::net::tcp::OwnedReadHalf>,
    write: Arc<Mutex<OwnedWriteHalf>>,
    tx: mpsc::UnboundedSender<Msg>,
) -> Result<()> {
    let mut line = String::new();
    loop {
        line.clear();
        if read.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let received = Instant::now();
        let parts: Vec<&str> = line.split_whitespace().collect();
        match parts.first().copied() {
            Some("MSG") => {
                // MSG <subject> <sid> [reply-to] <#bytes>
                let len: usize = parts
                    .last()
                    .context("MSG without size")?
                    .parse()
                    .context("MSG size")?;
                let mut payload = vec![0u8; len + 2];
                read.read_exact(&mut payload).await?;
                payload.truncate(len);
                let subject = parts.get(1).copied().unwrap_or_default().to_string();
                if tx
                    .send(Msg {
                        subject,
                        payload,
                        received,
                    })
                    .is_err()
                {
                    return Ok(());
                }
            }
            Some("PING") => write.lock().await.write_all(b"PONG\r\n").await?,
            Some("-ERR") => bail!("nats: {}", line.trim()),
            _ => {} // +OK, PONG, INFO
        }
    }
}
