//! The packer thread: computes packs of this node's tree off the commit path (see the writer's
//! module doc for why and when).
//!
//! Where the kernel lets the node raise a thread's priority back (root, `CAP_SYS_NICE`, or an
//! `RLIMIT_NICE` of 20 or more), a pack starts in `SCHED_IDLE`: any thread that wakes preempts
//! it at once. In `SCHED_BATCH` a writer, HTTP worker or swarm thread that woke on the packer's
//! core waited out its slice, 1-2.5 ms, while the other core went idle (`perf sched timehist`,
//! 1,000 publishes/s): most of the latency tail's wake-up delays. A pack that is late (no idle
//! core on a loaded machine) is raised to `SCHED_BATCH` by the writer's next commit, so it still
//! keeps up: late means [`BOOST_EVENTS`] committed since its ticket (each must be appended again
//! onto the pack, so waiting costs the writer) or [`BOOST_AFTER`]. Elsewhere packs run in
//! `SCHED_BATCH` throughout.

use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use shoal_store::{PackTicket, PreparedPack, Reader};

/// Events committed since a pack's ticket after which it gets its normal share of the CPU.
/// Raised after 10 ms instead, batches of 100 from 4 clients ran 0.81x as fast.
const BOOST_EVENTS: u64 = 128;
/// How long a pack may wait for idle cores at most.
const BOOST_AFTER: Duration = Duration::from_millis(50);

/// The pack being computed.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    since: Instant,
    /// Events committed since its ticket.
    events: u64,
    /// Raised to `SCHED_BATCH`.
    boosted: bool,
}

/// The packer thread: computes packs of this node's tree on its own read connection, one at a
/// time, for the writer (see the module doc). Dropping it stops and joins the thread.
pub(super) struct Packer {
    jobs: Option<std_mpsc::Sender<PackTicket>>,
    done: std_mpsc::Receiver<Result<PreparedPack, shoal_store::Error>>,
    in_flight: Option<InFlight>,
    /// The thread's id, if its packs start in `SCHED_IDLE` (see the module doc).
    idle_tid: Option<libc::pid_t>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Packer {
    pub(super) fn spawn(reader: Reader) -> std::io::Result<Packer> {
        let (jobs, tickets) = std_mpsc::channel::<PackTicket>();
        let (results, done) = std_mpsc::channel();
        let (tid_tx, tid_rx) = std_mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("shoal-packer".into())
            .spawn(move || {
                crate::events::yield_to_wakers();
                let idle = crate::events::idle_policy_is_reversible();
                // SAFETY: gettid has no arguments and cannot fail.
                let _ = tid_tx.send(idle.then(|| unsafe { libc::gettid() }));
                // Ends when the writer drops its sender (shutdown).
                while let Ok(ticket) = tickets.recv() {
                    if idle {
                        // Also ends the previous pack's boost, if it had one.
                        crate::events::set_policy(0, libc::SCHED_IDLE);
                    }
                    let started = Instant::now();
                    let prepared = reader.prepare_pack(ticket);
                    tracing::debug!(took = ?started.elapsed(), ok = prepared.is_ok(), "pack prepared");
                    if results.send(prepared).is_err() {
                        return;
                    }
                }
            })?;
        // Sent first thing by the thread, or the sender is dropped if it ended early.
        let idle_tid = tid_rx.recv().ok().flatten();
        Ok(Packer {
            jobs: Some(jobs),
            done,
            in_flight: None,
            idle_tid,
            thread: Some(thread),
        })
    }

    /// No pack is being computed or waiting to be installed.
    pub(super) fn idle(&self) -> bool {
        self.in_flight.is_none()
    }

    pub(super) fn start(&mut self, ticket: PackTicket) {
        if let Some(jobs) = &self.jobs {
            self.in_flight = jobs.send(ticket).is_ok().then(|| InFlight {
                since: Instant::now(),
                events: 0,
                boosted: false,
            });
        }
    }

    /// Called after each commit of `events`: raises a late pack to `SCHED_BATCH` (see the
    /// module doc).
    pub(super) fn nudge(&mut self, events: u64) {
        let (Some(tid), Some(pack)) = (self.idle_tid, self.in_flight.as_mut()) else {
            return;
        };
        pack.events = pack.events.saturating_add(events);
        if !pack.boosted && (pack.events >= BOOST_EVENTS || pack.since.elapsed() >= BOOST_AFTER) {
            pack.boosted = true;
            crate::events::set_policy(tid, libc::SCHED_BATCH);
        }
    }

    /// A finished pack, if one is waiting (never blocks).
    pub(super) fn ready(&mut self) -> Option<PreparedPack> {
        self.in_flight?;
        match self.done.try_recv() {
            Ok(Ok(pack)) => {
                self.in_flight = None;
                Some(pack)
            }
            Ok(Err(e)) => {
                // Not fatal: the next commit asks again, and `append` packs inline as a backstop.
                tracing::warn!(error = %e, "background pack failed");
                self.in_flight = None;
                None
            }
            Err(std_mpsc::TryRecvError::Empty) => None,
            Err(std_mpsc::TryRecvError::Disconnected) => {
                tracing::error!("the packer thread is gone; packing inline from now on");
                self.jobs = None;
                self.in_flight = None;
                None
            }
        }
    }
}

impl Drop for Packer {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;
    use shoal_store::{NewEvent, SourceId, Store, StoreConfig};

    fn policy(tid: libc::pid_t) -> libc::c_int {
        // SAFETY: no pointers; a tid that is gone only makes the call fail (-1).
        unsafe { libc::sched_getscheduler(tid) }
    }

    /// Waits (bounded) for the pack in flight and returns whether one came.
    fn wait_ready(packer: &mut Packer) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if packer.ready().is_some() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        false
    }

    #[test]
    fn packs_run_in_sched_idle_and_a_late_one_is_raised() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.sqlite"), StoreConfig::debug()).unwrap();
        let mut writer = store.writer().unwrap();
        let source = SourceId::new("packer");
        let mut n = 0u64;
        let mut ticket = || loop {
            let event = NewEvent {
                semantics: "sem".into(),
                name: "n".into(),
                tags: vec![],
                lamport: n,
                timestamp: n,
                payload: RawValue::from_string(format!("{{\"i\":{n}}}")).unwrap(),
            };
            writer.append(&source, vec![event]).unwrap();
            n += 1;
            if let Some(t) = writer.pack_ticket(&source) {
                return t;
            }
        };
        let mut packer = Packer::spawn(store.reader().unwrap()).unwrap();
        let Some(tid) = packer.idle_tid else {
            eprintln!(
                "SKIPPED packs_run_in_sched_idle_and_a_late_one_is_raised: this process may not \
                 leave SCHED_IDLE (not root, no CAP_SYS_NICE, RLIMIT_NICE < 20), so packs run in \
                 SCHED_BATCH"
            );
            return;
        };
        packer.start(ticket());
        assert!(wait_ready(&mut packer), "the first pack never came");
        assert_eq!(policy(tid), libc::SCHED_IDLE, "a pack runs in SCHED_IDLE");

        // Not late yet: nothing changes. Late by events, or by time: raised to SCHED_BATCH.
        let fresh = InFlight {
            since: Instant::now(),
            events: 0,
            boosted: false,
        };
        packer.in_flight = Some(fresh);
        packer.nudge(BOOST_EVENTS - 1);
        assert_eq!(policy(tid), libc::SCHED_IDLE);
        packer.nudge(1);
        assert_eq!(
            policy(tid),
            libc::SCHED_BATCH,
            "a pack late by events is raised"
        );
        assert!(packer.in_flight.is_some_and(|p| p.boosted));
        assert!(crate::events::set_policy(tid, libc::SCHED_IDLE));
        packer.in_flight = Some(InFlight {
            since: Instant::now() - BOOST_AFTER,
            ..fresh
        });
        packer.nudge(0);
        assert_eq!(
            policy(tid),
            libc::SCHED_BATCH,
            "a pack late by time is raised"
        );
        packer.in_flight = None;

        // The next pack starts in SCHED_IDLE again.
        packer.start(ticket());
        assert!(wait_ready(&mut packer), "the second pack never came");
        assert_eq!(
            policy(tid),
            libc::SCHED_IDLE,
            "the boost ends with its pack"
        );
    }
}
