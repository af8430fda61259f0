//! The packer thread: computes packs of this node's tree off the commit path (see the writer's
//! module doc for why and when).

use std::sync::mpsc as std_mpsc;

use shoal_store::{PackTicket, PreparedPack, Reader};

/// The packer thread: computes packs of this node's tree on its own read connection, one at a
/// time, for the writer (see the module doc). Dropping it stops and joins the thread.
pub(super) struct Packer {
    jobs: Option<std_mpsc::Sender<PackTicket>>,
    done: std_mpsc::Receiver<Result<PreparedPack, shoal_store::Error>>,
    in_flight: bool,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Packer {
    pub(super) fn spawn(reader: Reader) -> std::io::Result<Packer> {
        let (jobs, tickets) = std_mpsc::channel::<PackTicket>();
        let (results, done) = std_mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("shoal-packer".into())
            .spawn(move || {
                crate::events::yield_to_wakers();
                // Ends when the writer drops its sender (shutdown).
                while let Ok(ticket) = tickets.recv() {
                    let started = std::time::Instant::now();
                    let prepared = reader.prepare_pack(ticket);
                    tracing::debug!(took = ?started.elapsed(), ok = prepared.is_ok(), "pack prepared");
                    if results.send(prepared).is_err() {
                        return;
                    }
                }
            })?;
        Ok(Packer {
            jobs: Some(jobs),
            done,
            in_flight: false,
            thread: Some(thread),
        })
    }

    /// No pack is being computed or waiting to be installed.
    pub(super) fn idle(&self) -> bool {
        !self.in_flight
    }

    pub(super) fn start(&mut self, ticket: PackTicket) {
        if let Some(jobs) = &self.jobs {
            self.in_flight = jobs.send(ticket).is_ok();
        }
    }

    /// A finished pack, if one is waiting (never blocks).
    pub(super) fn ready(&mut self) -> Option<PreparedPack> {
        if !self.in_flight {
            return None;
        }
        match self.done.try_recv() {
            Ok(Ok(pack)) => {
                self.in_flight = false;
                Some(pack)
            }
            Ok(Err(e)) => {
                // Not fatal: the next commit asks again, and `append` packs inline as a backstop.
                tracing::warn!(error = %e, "background pack failed");
                self.in_flight = false;
                None
            }
            Err(std_mpsc::TryRecvError::Empty) => None,
            Err(std_mpsc::TryRecvError::Disconnected) => {
                tracing::error!("the packer thread is gone; packing inline from now on");
                self.jobs = None;
                self.in_flight = false;
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
