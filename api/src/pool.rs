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
//!   yield, so its CPU is free within a second;
//! - a CPU budget while a stream in this process is behind ([`Pressure`]): then queries
//!   together get at most `cpu_share_when_behind` of a core, measured with the CPU clocks
//!   of the pool's threads, and pause when they have used it.
//!
//! Why the budget, when the threads already run at nice 19: a nice value only ranks
//! threads within their scheduling group. The kernel shares CPU fairly between groups
//! first (autogroups per session, or cgroups per service), so busy low-priority threads
//! claim their process's whole share against Redis and the broker on the same cores.
//! Measured with `risksense bench queries` before the budget: the drain lost 6-19 % to
//! four heavy queries at nice 19 alone.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

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
    /// Cores all queries together may use while [`Pressure`] says the stream is behind.
    pub cpu_share_when_behind: f64,
}

/// Says whether work that can wait should wait now (a stream in the process is behind).
pub type Pressure = Arc<dyn Fn() -> bool + Send + Sync>;

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            max_concurrent: 4,
            // Virtual address space only: pages are touched as deep as a query recurses.
            stack_bytes: 256 * 1024 * 1024,
            nice: 19,
            thread_name: "risksense-sql".to_string(),
            cpu_share_when_behind: 0.05,
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
    limiter: Option<Arc<CpuLimiter>>,
}

impl QueryPool {
    /// A pool; with `pressure`, queries keep to the CPU budget while it says so.
    pub fn new(config: &PoolConfig, pressure: Option<Pressure>) -> std::io::Result<Self> {
        let nice = config.nice;
        let threads = config.threads.max(1);
        let clocks = Arc::new(ThreadClocks::default());
        let (started, stopped) = (clocks.clone(), clocks.clone());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .max_blocking_threads(threads.max(2))
            .thread_stack_size(config.stack_bytes)
            .thread_name(config.thread_name.clone())
            .on_thread_start(move || {
                lower_priority(nice);
                started.add_current();
            })
            .on_thread_stop(move || stopped.remove_current())
            .enable_all()
            .build()?;
        Ok(Self {
            runtime: Some(runtime),
            permits: Arc::new(Semaphore::new(config.max_concurrent.max(1))),
            max_concurrent: config.max_concurrent.max(1),
            cancelled: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            limiter: pressure.map(|pressure| {
                Arc::new(CpuLimiter::new(
                    config.cpu_share_when_behind,
                    pressure,
                    clocks,
                ))
            }),
        })
    }

    /// Time queries spent paused by the CPU budget.
    pub fn throttled(&self) -> Duration {
        self.limiter.as_ref().map_or(Duration::ZERO, |l| {
            Duration::from_nanos(l.paused_ns.load(Relaxed))
        })
    }

    /// Queries running now.
    pub fn running(&self) -> usize {
        self.max_concurrent - self.permits.available_permits()
    }

    /// Runs `work` on the pool and waits for it until `deadline`; refuses at once when
    /// the pool is full. The work is aborted at the deadline, and when the returned
    /// future is dropped (the client went away).
    ///
    /// With the result comes the query's [`Slot`]: the pool counts the query as running
    /// until the caller drops it, so that answers being sent count against the limit too.
    pub async fn run<F, T>(&self, deadline: Duration, work: F) -> Result<(T, Slot), PoolError>
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
        let work = Throttled {
            inner: Box::pin(work),
            limiter: self.limiter.clone(),
            pause: None,
        };
        let handle = runtime.spawn(async move {
            let value = work.await;
            (value, Slot(permit))
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

/// A query's place in the pool (see [`QueryPool::run`]).
#[derive(Debug)]
pub struct Slot(#[allow(dead_code)] tokio::sync::OwnedSemaphorePermit);

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

/// The CPU clocks of the pool's threads, each with its reading at the last charge.
///
/// The budget charges the CPU of every pool thread, not only of the task that polls: a
/// query's DataFusion operators may run in tasks of their own (a `UNION ALL`'s inputs,
/// `EXPLAIN ANALYZE`), and their CPU counts the same.
#[derive(Default)]
struct ThreadClocks {
    threads: Mutex<Vec<(std::thread::ThreadId, ClockId, u64)>>,
}

#[cfg(target_os = "linux")]
type ClockId = libc::clockid_t;
#[cfg(not(target_os = "linux"))]
type ClockId = ();

impl ThreadClocks {
    fn add_current(&self) {
        #[cfg(target_os = "linux")]
        {
            let mut clock: libc::clockid_t = 0;
            // SAFETY: asks for the calling thread's own CPU clock id.
            if unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut clock) } == 0 {
                let now = read_clock(clock);
                self.threads
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((std::thread::current().id(), clock, now));
            }
        }
    }

    fn remove_current(&self) {
        let id = std::thread::current().id();
        self.threads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(thread, _, _)| *thread != id);
    }

    /// CPU used by the pool's threads since the last call, in ns.
    fn used_since_last(&self) -> u64 {
        let mut threads = self.threads.lock().unwrap_or_else(|e| e.into_inner());
        let mut used = 0u64;
        for (_, clock, last) in threads.iter_mut() {
            let now = read_clock(*clock);
            used = used.saturating_add(now.saturating_sub(*last));
            *last = now;
        }
        used
    }
}

#[cfg(target_os = "linux")]
fn read_clock(clock: libc::clockid_t) -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes only the timespec we own; the clock is a pool thread's, which lives
    // until it is removed from the list (on_thread_stop) under the same lock.
    if unsafe { libc::clock_gettime(clock, &mut now) } == 0 {
        now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
    } else {
        0
    }
}

#[cfg(not(target_os = "linux"))]
fn read_clock(_clock: ClockId) -> u64 {
    0
}

/// The pool's CPU budget while under pressure: a token bucket of CPU nanoseconds, filled
/// at `share` cores, drawn by every pool thread's CPU.
struct CpuLimiter {
    share: f64,
    pressure: Pressure,
    clocks: Arc<ThreadClocks>,
    bucket: Mutex<Bucket>,
    paused_ns: AtomicU64,
}

struct Bucket {
    tokens_ns: f64,
    filled: Instant,
}

/// CPU the pool may use in one go under pressure before its queries pause.
const BURST_NS: f64 = 5e6;
/// Longest single pause (the budget is checked again after it).
const MAX_PAUSE: Duration = Duration::from_millis(200);

impl CpuLimiter {
    fn new(share: f64, pressure: Pressure, clocks: Arc<ThreadClocks>) -> Self {
        Self {
            share: share.max(0.001),
            pressure,
            clocks,
            bucket: Mutex::new(Bucket {
                tokens_ns: BURST_NS,
                filled: Instant::now(),
            }),
            paused_ns: AtomicU64::new(0),
        }
    }

    /// Books the pool's CPU since the last charge; returns how long the calling query
    /// should pause, if the budget is spent.
    fn charge(&self) -> Option<Duration> {
        let used = self.clocks.used_since_last();
        let mut bucket = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if !(self.pressure)() {
            bucket.tokens_ns = BURST_NS;
            bucket.filled = now;
            return None;
        }
        let elapsed = now.duration_since(bucket.filled).as_nanos() as f64;
        bucket.filled = now;
        bucket.tokens_ns = (bucket.tokens_ns + elapsed * self.share).min(BURST_NS) - used as f64;
        if bucket.tokens_ns >= 0.0 {
            return None;
        }
        let pause = Duration::from_nanos((-bucket.tokens_ns / self.share) as u64).min(MAX_PAUSE);
        self.paused_ns.fetch_add(pause.as_nanos() as u64, Relaxed);
        Some(pause)
    }
}

/// A query's future, which pauses between polls while the pool is over its budget. Every
/// DataFusion operator of an ad-hoc query is cooperative (see `sql`), so a poll ends at
/// least every 128 batches; tasks a query spawns stop once the paused query no longer
/// drains their bounded buffers.
struct Throttled<F> {
    inner: Pin<Box<F>>,
    limiter: Option<Arc<CpuLimiter>>,
    pause: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<F: Future> Future for Throttled<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        if let Some(pause) = &mut self.pause {
            std::task::ready!(pause.as_mut().poll(cx));
            self.pause = None;
        }
        let output = self.inner.as_mut().poll(cx);
        if output.is_pending()
            && let Some(limiter) = &self.limiter
            && let Some(pause) = limiter.charge()
        {
            let mut sleep = Box::pin(tokio::time::sleep(pause));
            // Registers the timer; the task wakes when the pause is over.
            let _ = sleep.as_mut().poll(cx);
            self.pause = Some(sleep);
        }
        output
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
        QueryPool::new(
            &PoolConfig {
                threads: 1,
                max_concurrent,
                stack_bytes: 8 * 1024 * 1024,
                ..PoolConfig::default()
            },
            None,
        )
        .expect("pool")
    }

    async fn idle_within_a_second(pool: &QueryPool) -> bool {
        for _ in 0..100 {
            if pool.running() == 0 {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    /// Burns CPU in slices of ~1 ms of the thread's own CPU time (not wall time: on a
    /// loaded machine a wall-clock slice got a fraction of a millisecond of CPU, and the
    /// pool, which books CPU, saw too little to throttle), yielding between them as
    /// DataFusion's streams do.
    async fn burn(total: Duration) {
        let thread_cpu = || read_clock(libc::CLOCK_THREAD_CPUTIME_ID);
        for _ in 0..total.as_millis() {
            let slice = thread_cpu();
            while thread_cpu().saturating_sub(slice) < 1_000_000 {
                std::hint::black_box(0u64);
            }
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn under_pressure_queries_keep_to_their_cpu_share() {
        let behind = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let flag = behind.clone();
        let pool = QueryPool::new(
            &PoolConfig {
                threads: 1,
                stack_bytes: 8 * 1024 * 1024,
                cpu_share_when_behind: 0.1,
                ..PoolConfig::default()
            },
            Some(Arc::new(move || flag.load(Relaxed))),
        )
        .expect("pool");
        // 50 ms of CPU at a tenth of a core takes about half a second.
        let started = Instant::now();
        pool.run(Duration::from_secs(10), burn(Duration::from_millis(50)))
            .await
            .expect("runs");
        let slowed = started.elapsed();
        assert!(slowed >= Duration::from_millis(300), "{slowed:?}");
        // The pool paused it. How long depends on the machine: the budget refills by the
        // wall clock, and on a loaded machine the burn itself takes longer (a run beside
        // training processes paused it less than the 200 ms this once asked for).
        assert!(pool.throttled() > Duration::ZERO, "{:?}", pool.throttled());
        // Work in a task the query spawned (as DataFusion does for a UNION ALL's inputs)
        // is charged too: the query pauses, and its producer stops on a full buffer.
        let started = Instant::now();
        pool.run(Duration::from_secs(10), async {
            let (send, mut receive) = tokio::sync::mpsc::channel::<()>(1);
            tokio::spawn(async move {
                for _ in 0..50 {
                    burn(Duration::from_millis(1)).await;
                    if send.send(()).await.is_err() {
                        break;
                    }
                }
            });
            while receive.recv().await.is_some() {}
        })
        .await
        .expect("runs");
        let slowed = started.elapsed();
        assert!(
            slowed >= Duration::from_millis(300),
            "spawned work: {slowed:?}"
        );
        // Without pressure, full speed.
        behind.store(false, Relaxed);
        let started = Instant::now();
        pool.run(Duration::from_secs(10), burn(Duration::from_millis(50)))
            .await
            .expect("runs");
        assert!(
            started.elapsed() < Duration::from_millis(200),
            "{:?}",
            started.elapsed()
        );
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
        assert!(
            idle_within_a_second(&pool).await,
            "the cancelled query still holds its slot"
        );
        let (answer, slot) = pool
            .run(Duration::from_secs(5), async { 41 + 1 })
            .await
            .expect("runs");
        assert_eq!(answer, 42);
        // The slot is held until the answer is dropped (sent).
        assert_eq!(pool.running(), 1);
        drop(slot);
        assert_eq!(pool.running(), 0);
    }

    #[tokio::test]
    async fn a_panicking_query_is_an_error_not_a_crash() {
        let pool = pool(2);
        let result: Result<((), Slot), _> = pool
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
        assert!(
            idle_within_a_second(&pool).await,
            "the abandoned query still runs"
        );
    }
}
