//! Where ad-hoc queries run: a Tokio runtime of their own, apart from the threads that
//! serve the API and run the stream.
//!
//! A heavy query (a cross join, an unbounded recursive CTE) must not take the threads
//! `/healthz`, the lookups or the stream need, so queries get:
//! - their own worker threads, at the lowest CPU priority (nice 19): on a busy machine the
//!   stream and the API run first, and an idle machine still gives a query every core;
//! - big thread stacks, so DataFusion's recursive planner and the drop of a deep syntax
//!   tree cannot overflow (the depth is bounded before planning as well, see `guard`);
//! - a bounded number of queries at once: the next one is refused at once (429 with a
//!   retry hint) rather than queued behind work it cannot see;
//! - a deadline: the query's task is aborted when it passes (or when the client goes
//!   away), which drops its DataFusion streams and their spawned tasks at their next
//!   yield, so its CPU is free within a second.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::AbortHandle;

/// How the query pool is sized.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Worker threads (default: the machine's cores).
    pub threads: usize,
    /// Queries running at once; more are refused with 429.
    pub max_concurrent: usize,
    /// Stack of each pool thread, in bytes.
    pub stack_bytes: usize,
    /// CPU priority of the pool's threads (Linux nice value, 0..=19).
    pub nice: i32,
    /// Name of the pool's threads (what `top -H` shows).
    pub thread_name: String,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            max_concurrent: 4,
            // Virtual address space only: pages are touched as deep as a query recurses.
            stack_bytes: 256 * 1024 * 1024,
            nice: 19,
            thread_name: "risksense-sql".to_string(),
        }
    }
}

/// Why the pool did not give a result.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("{running} queries are already running (the limit): retry in a moment")]
    Busy { running: usize },
    #[error("the query ran longer than {0:?} and was cancelled")]
    Deadline(Duration),
    #[error("the query failed inside the engine: {0}")]
    Panicked(String),
}

/// A runtime and a concurrency limit for ad-hoc queries.
pub struct QueryPool {
    // Option so that Drop can shut it down without blocking (dropping a runtime inside
    // another runtime's thread would panic).
    runtime: Option<tokio::runtime::Runtime>,
    permits: Arc<Semaphore>,
    max_concurrent: usize,
    /// Queries cancelled at their deadline or because their client left.
    pub cancelled: AtomicU64,
    /// Queries refused because the pool was full.
    pub refused: AtomicU64,
}

impl QueryPool {
    pub fn new(config: &PoolConfig) -> std::io::Result<Self> {
        let nice = config.nice;
        let threads = config.threads.max(1);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .max_blocking_threads(threads.max(2))
            .thread_stack_size(config.stack_bytes)
            .thread_name(config.thread_name.clone())
            .on_thread_start(move || lower_priority(nice))
            .enable_all()
            .build()?;
        Ok(Self {
            runtime: Some(runtime),
            permits: Arc::new(Semaphore::new(config.max_concurrent.max(1))),
            max_concurrent: config.max_concurrent.max(1),
            cancelled: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        })
    }

    /// Queries running now.
    pub fn running(&self) -> usize {
        self.max_concurrent - self.permits.available_permits()
    }

    /// Runs `work` on the pool and waits for it until `deadline`; refuses at once when
    /// the pool is full. The work is aborted at the deadline, and when the returned
    /// future is dropped (the client went away).
    pub async fn run<F, T>(&self, deadline: Duration, work: F) -> Result<T, PoolError>
    where
        F: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            self.refused.fetch_add(1, Relaxed);
            return Err(PoolError::Busy {
                running: self.max_concurrent,
            });
        };
        let runtime = self.runtime.as_ref().expect("the runtime lives until drop");
        let handle = runtime.spawn(async move {
            let _permit = permit;
            work.await
        });
        let mut guard = AbortOnDrop(Some(handle.abort_handle()));
        match tokio::time::timeout(deadline, handle).await {
            Ok(Ok(value)) => {
                guard.0 = None;
                Ok(value)
            }
            Ok(Err(error)) => {
                guard.0 = None;
                Err(PoolError::Panicked(error.to_string()))
            }
            Err(_) => {
                self.cancelled.fetch_add(1, Relaxed);
                Err(PoolError::Deadline(deadline))
            }
        }
    }
}

impl Drop for QueryPool {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Aborts the query's task unless disarmed: at its deadline, or when the request future
/// is dropped because the client disconnected.
struct AbortOnDrop(Option<AbortHandle>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(handle) = self.0.take() {
            handle.abort();
        }
    }
}

/// Lowers the calling thread's CPU priority. On Linux the nice value belongs to the
/// thread, so this leaves the API's and the stream's threads alone.
fn lower_priority(nice: i32) {
    #[cfg(target_os = "linux")]
    // SAFETY: plain syscalls on the calling thread; a failure only leaves the priority as
    // it was.
    unsafe {
        let tid = libc::gettid();
        if libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) != 0 {
            tracing::debug!("could not lower the SQL pool's thread priority");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = nice;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(max_concurrent: usize) -> QueryPool {
        QueryPool::new(&PoolConfig {
            threads: 1,
            max_concurrent,
            stack_bytes: 8 * 1024 * 1024,
            ..PoolConfig::default()
        })
        .expect("pool")
    }

    #[tokio::test]
    async fn a_full_pool_refuses_at_once_and_frees_its_slot_after_a_deadline() {
        let pool = pool(1);
        let spin = || async {
            // Yields often, as DataFusion's streams do, so an abort lands.
            loop {
                tokio::task::yield_now().await;
            }
        };
        let first = pool.run(Duration::from_millis(300), spin());
        let second = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            pool.run(Duration::from_millis(300), spin()).await
        };
        let (first, second) = tokio::join!(first, second);
        assert!(matches!(first, Err(PoolError::Deadline(_))), "{first:?}");
        assert!(matches!(second, Err(PoolError::Busy { .. })), "{second:?}");
        assert_eq!(pool.refused.load(Relaxed), 1);
        // The aborted task gives its permit back.
        let mut freed = false;
        for _ in 0..100 {
            if pool.running() == 0 {
                freed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(freed, "the cancelled query still holds its slot");
        let answer = pool.run(Duration::from_secs(5), async { 41 + 1 }).await;
        assert_eq!(answer.expect("runs"), 42);
    }

    #[tokio::test]
    async fn a_panicking_query_is_an_error_not_a_crash() {
        let pool = pool(2);
        let result: Result<(), _> = pool
            .run(Duration::from_secs(5), async { panic!("boom") })
            .await;
        assert!(matches!(result, Err(PoolError::Panicked(_))), "{result:?}");
    }

    #[tokio::test]
    async fn dropping_the_request_cancels_the_query() {
        let pool = pool(1);
        let spin = async {
            loop {
                tokio::task::yield_now().await;
            }
        };
        let request = pool.run(Duration::from_secs(60), spin);
        // The client goes away after 50 ms.
        let _ = tokio::time::timeout(Duration::from_millis(50), request).await;
        let mut freed = false;
        for _ in 0..100 {
            if pool.running() == 0 {
                freed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(freed, "the abandoned query still runs");
    }
}
