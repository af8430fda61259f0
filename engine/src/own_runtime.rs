//! A subsystem on threads of its own: the swarm takes every peer's traffic, and on the node's
//! runtime its tasks shared the workers' queue with the HTTP requests, so an app's publish
//! waited behind a flooding peer's work (issue 12). On their own threads the kernel shares the
//! cores between them instead. (The replicator on threads of its own was tried too: the
//! 10-node mesh of `bench_swarm` then measured p99 113–153 ms instead of 81, 395 ms instead of
//! 195 with a busy process on each core; BENCHMARKS.md, "A node under attack".)

use std::future::Future;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Runs `work` on a new multi-threaded runtime with `threads` workers named `name`. The
/// returned handle (on the caller's runtime) completes when `work` has ended and the runtime
/// has shut down (blocking work still running then gets [`GRACE`] before it is left behind);
/// aborting it aborts `work`.
pub(crate) fn spawn(
    name: &'static str,
    threads: usize,
    work: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<JoinHandle<()>> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name(name)
        .enable_all()
        .build()?;
    let work = runtime.spawn(work);
    let abort = AbortOnDrop(work.abort_handle());
    let (done_tx, done_rx) = oneshot::channel::<()>();
    // The runtime is handed over once the thread exists: if it cannot be started, the runtime
    // is still here to be shut down (a runtime dropped on an async thread panics).
    let (handover, handed) = std::sync::mpsc::channel::<tokio::runtime::Runtime>();
    let started = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            if let Ok(runtime) = handed.recv() {
                let _ = runtime.block_on(work);
                runtime.shutdown_timeout(GRACE);
            }
            drop(done_tx);
        });
    if let Err(e) = started {
        runtime.shutdown_background();
        return Err(e);
    }
    // The thread waits in `recv` until this is sent, so it cannot fail.
    let _ = handover.send(runtime);
    Ok(tokio::spawn(async move {
        let _ = done_rx.await;
        drop(abort); // `work` has ended: aborting it now is a no-op
    }))
}

/// Aborts the work on its own runtime when the handle's task is aborted (dropped) early.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How long a runtime's blocking work (store reads for peers) may go on after its subsystem
/// ended; the store outlives it.
const GRACE: Duration = Duration::from_secs(1);
