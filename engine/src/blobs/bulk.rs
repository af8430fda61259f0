//! Threads for a blob's bulk work, below the priority of everything else the node does.
//!
//! Hashing an upload's chunks and writing block files take most of a core during a 1 GiB put
//! or fetch. On the node's blocking pool they ran at the priority of the HTTP workers and the
//! writer, so an app's single-event publish waited for a core behind them: its p99 during a put
//! was 5–6× the idle figure (issue 16). On these threads (nice [`NICE`]) the kernel hands the
//! core to a waking publish at once and gives the bulk work what is left; with nothing else to
//! run, a blob goes as fast as before. The pool is a tokio runtime used only for its blocking
//! threads: they come and go with the load, and a task's result is awaited from any runtime.

use tokio::runtime::{Builder, Runtime};
use tokio::task::JoinHandle;

/// How much nicer than the node the bulk threads run (nice values go up to 19, the lowest
/// priority). 10 steps apart, a node thread gets ~9× a bulk thread's share of a contended core.
pub(super) const NICE: i32 = 10;
/// Most bulk threads at once (uploads hash [`super::HASHES_IN_FLIGHT`] chunks each, reads stage
/// [`super::fetch::WRITES_IN_FLIGHT`] batches each); more wait for a free thread.
const MAX_THREADS: usize = 64;

pub(super) struct Bulk {
    /// `None` when the threads could not be started: then the caller's blocking pool is used.
    runtime: Option<Runtime>,
}

impl Bulk {
    pub(super) fn new() -> Self {
        let runtime = Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(MAX_THREADS)
            .thread_name("shoal-bulk")
            .on_thread_start(lower_priority)
            .build();
        match runtime {
            Ok(runtime) => Self {
                runtime: Some(runtime),
            },
            Err(e) => {
                tracing::warn!(error = %e, "no bulk threads for blobs: hashing at normal priority");
                Self { runtime: None }
            }
        }
    }

    /// Runs `work` on a bulk thread.
    pub(super) fn spawn_blocking<F, R>(&self, work: F) -> JoinHandle<R>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        match &self.runtime {
            Some(runtime) => runtime.spawn_blocking(work),
            None => tokio::task::spawn_blocking(work),
        }
    }
}

impl Drop for Bulk {
    /// Dropped with the last handle of the blob service, possibly on an async thread, where a
    /// runtime must not wait for its threads: work still running finishes on its own.
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Lowers the calling thread's priority to [`NICE`] below the node's main thread's (Linux's nice
/// value is per thread; a new thread starts with its creator's, which may be a bulk thread
/// already). Best effort: a refusal leaves the thread at the node's priority.
fn lower_priority() {
    // SAFETY: `who` 0 = the calling thread, the pid = the main thread; no pointers are passed.
    // (getpriority's -1 on error is also a valid nice value: a start either way.)
    let rc = unsafe {
        let node = libc::getpriority(libc::PRIO_PROCESS as _, libc::getpid() as _);
        libc::setpriority(
            libc::PRIO_PROCESS as _,
            0,
            node.saturating_add(NICE).min(19),
        )
    };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "bulk threads keep normal priority");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own_nice() -> i32 {
        // SAFETY: `who` 0 = the calling thread; no pointers are passed.
        unsafe { libc::getpriority(libc::PRIO_PROCESS as _, 0) }
    }

    #[tokio::test]
    async fn bulk_work_runs_below_the_callers_priority() {
        let caller = tokio::task::spawn_blocking(own_nice).await.unwrap();
        let bulk = Bulk::new();
        let niced = bulk.spawn_blocking(own_nice).await.unwrap();
        assert_eq!(
            niced,
            (caller + NICE).min(19),
            "bulk threads run at nice {NICE}"
        );
        // The node's own blocking threads keep their priority.
        assert_eq!(tokio::task::spawn_blocking(own_nice).await.unwrap(), caller);
        drop(bulk); // on an async thread: must not panic
    }
}
