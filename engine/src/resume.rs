//! Safe resume of this node's own source after its store was lost (issue 17 item 3).
//!
//! A node that lost its store but kept its key (the data dir was deleted and the key restored,
//! or the store restored from an older `events dump`) holds fewer events of its own source than
//! its peers may. Appending then would sign a second tree at offsets peers already hold: a
//! fork, which peers refuse. So such a node is *resuming*: it refuses local publishes (503,
//! `EventsError::Resuming`) and imports its own source from peers like a replicated one (the
//! store still checks each tree extends what is stored) until
//! - a peer's digest (they come every few seconds from each connected peer) showed that peer
//!   holds this source, and this node holds at least as much as every such peer heard; or
//! - no peer that holds this source was heard within `resume_timeout` (`--resume-timeout-secs`,
//!   default 60 s; 0 = do not wait): the node has nobody to ask and publishes from what it
//!   holds, with a warning. (A peer that holds none of this source says nothing: it may simply
//!   be new, while another peer holds the events.)
//!
//! A node resumes when it starts on a data dir whose key existed but whose store did not, and
//! after `events restore` imported its own source. The state survives restarts as the marker
//! file `<data-dir>/resuming`, removed when resuming ends.
//!
//! Limit: only peers that are connected while resuming are asked; a peer that holds more of
//! this source but is unreachable then still sees a fork later (it keeps its own tree and
//! reports the fork in node info).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Name of the marker file inside the data dir.
pub const MARKER: &str = "resuming";

/// The resume state, shared by the writer (refuses publishes, allows importing the own source),
/// the swarm (peers' digests, heads of the own source) and the replicator.
#[derive(Clone)]
pub struct Resume(Arc<Inner>);

struct Inner {
    resuming: AtomicBool,
    state: Mutex<State>,
    marker: Option<PathBuf>,
    timeout: Duration,
}

struct State {
    /// When resuming began.
    since: Instant,
    /// Whether a peer's digest was heard since.
    heard: bool,
    /// The highest offset of our source a peer holds, as heard.
    wanted: Option<u64>,
    /// The highest offset of our source stored here.
    stored: Option<u64>,
}

impl std::fmt::Debug for Resume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resume")
            .field("resuming", &self.is_resuming())
            .finish()
    }
}

impl Resume {
    /// The state at start: resuming when `resuming` (see the module doc) or the marker file
    /// exists in `data_dir`. `stored` is the own source's highest offset in the store.
    pub fn new(
        data_dir: Option<PathBuf>,
        resuming: bool,
        stored: Option<u64>,
        timeout: Duration,
    ) -> Resume {
        let marker = data_dir.map(|d| d.join(MARKER));
        let resuming = resuming || marker.as_deref().is_some_and(|m| m.exists());
        let resume = Resume(Arc::new(Inner {
            resuming: AtomicBool::new(false),
            state: Mutex::new(State {
                since: Instant::now(),
                heard: false,
                wanted: None,
                stored,
            }),
            marker,
            timeout,
        }));
        if resuming {
            resume.begin();
        }
        resume
    }

    /// Not resuming, nothing saved (tests).
    pub fn done() -> Resume {
        Resume::new(None, false, None, Duration::ZERO)
    }

    /// Whether local publishes are held.
    pub fn is_resuming(&self) -> bool {
        self.0.resuming.load(Ordering::Acquire)
    }

    /// Starts resuming (again): at start, or after a restore imported the own source.
    pub fn begin(&self) {
        if let Some(m) = &self.0.marker {
            if let Err(e) =
                std::fs::write(m, b"resuming the own source; see docs/format.md, Forks\n")
            {
                tracing::warn!(path = %m.display(), error = %e, "cannot write the resume marker");
            }
        }
        if let Ok(mut s) = self.0.state.lock() {
            s.since = Instant::now();
            s.heard = false;
            s.wanted = None;
        }
        if !self.0.resuming.swap(true, Ordering::AcqRel) {
            tracing::warn!(
                wait = ?self.0.timeout,
                "resuming this node's own source: publishes are held until a peer says how far \
                 it holds it and this node has caught up (or no peer answers in time)"
            );
        }
    }

    /// A peer's digest: it holds our source up to `offset` (`None`: not at all, which tells
    /// nothing).
    pub fn heard(&self, offset: Option<u64>) {
        let Some(offset) = offset else {
            return;
        };
        if !self.is_resuming() {
            return;
        }
        self.update(|s| {
            s.heard = true;
            s.wanted = s.wanted.max(Some(offset));
        });
    }

    /// Our store now holds our source up to `offset`.
    pub fn stored(&self, offset: u64) {
        self.update(|s| s.stored = s.stored.max(Some(offset)));
    }

    /// Whether a head of our source at `offset` is beyond what we store while resuming (then
    /// the replicator imports it).
    pub fn wants(&self, offset: u64) -> bool {
        self.is_resuming()
            && self
                .0
                .state
                .lock()
                .map(|s| s.stored.is_none_or(|o| o < offset))
                .unwrap_or(false)
    }

    /// Ends resuming when no peer answered within the timeout (called periodically).
    pub fn check_timeout(&self) {
        if !self.is_resuming() {
            return;
        }
        let expired = self
            .0
            .state
            .lock()
            .map(|s| !s.heard && s.since.elapsed() >= self.0.timeout)
            .unwrap_or(false);
        if expired {
            tracing::warn!(
                "no peer answered within {:?}: publishing from what this node holds of its own \
                 source (a peer that holds more will report a fork)",
                self.0.timeout
            );
            self.finish();
        }
    }

    fn update(&self, f: impl FnOnce(&mut State)) {
        let caught_up = match self.0.state.lock() {
            Ok(mut s) => {
                f(&mut s);
                s.heard && s.wanted.is_none_or(|w| s.stored.is_some_and(|o| o >= w))
            }
            Err(_) => false,
        };
        if caught_up && self.is_resuming() {
            tracing::info!("resumed this node's own source: it holds what its peers hold");
            self.finish();
        }
    }

    fn finish(&self) {
        self.0.resuming.store(false, Ordering::Release);
        if let Some(m) = &self.0.marker {
            if let Err(e) = std::fs::remove_file(m) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(path = %m.display(), error = %e, "cannot remove the resume marker");
                }
            }
        }
    }
}

/// Checks the timeout every second until `shutdown` flips.
pub(crate) fn spawn(
    resume: Resume,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => resume.check_timeout(),
                _ = crate::stopped(&mut shutdown) => return,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resuming_ends_when_a_peer_was_heard_and_its_offset_is_stored() {
        let dir = tempfile::tempdir().unwrap();
        let r = Resume::new(
            Some(dir.path().to_path_buf()),
            true,
            Some(9),
            Duration::from_secs(600),
        );
        assert!(r.is_resuming());
        assert!(dir.path().join(MARKER).exists());
        r.heard(Some(20));
        assert!(r.is_resuming() && r.wants(20) && !r.wants(9));
        r.stored(15);
        assert!(r.is_resuming());
        r.stored(20);
        assert!(!r.is_resuming());
        assert!(!dir.path().join(MARKER).exists());
        // A restart with the marker gone does not resume; one with it does.
        assert!(
            !Resume::new(Some(dir.path().to_path_buf()), false, None, Duration::ZERO).is_resuming()
        );
        std::fs::write(dir.path().join(MARKER), b"").unwrap();
        let r = Resume::new(
            Some(dir.path().to_path_buf()),
            false,
            Some(3),
            Duration::from_secs(600),
        );
        assert!(r.is_resuming());
        // A peer that holds nothing of ours tells nothing; one that holds less than we do ends it.
        r.heard(None);
        assert!(r.is_resuming());
        r.heard(Some(2));
        assert!(!r.is_resuming());
    }

    #[test]
    fn without_peers_resuming_ends_after_the_timeout() {
        let r = Resume::new(None, true, None, Duration::ZERO);
        assert!(r.is_resuming());
        r.check_timeout();
        assert!(!r.is_resuming());
    }
}
