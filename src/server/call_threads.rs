//! The threads that run sync endpoints for the TCP side: a bounded pool of
//! our own, so that a slow endpoint never holds a runtime thread and a fast
//! one costs a queue push to a thread that is already polling.
//!
//! A thread that finishes a call polls the queue for [`POLL`] (yielding its
//! CPU between looks, so it takes nothing from threads with work) before it
//! sleeps on the condition variable: under load, calls follow each other
//! without a thread wakeup, which costs more than a small call itself. At
//! most one thread per CPU but one polls at a time (the others sleep at
//! once): more pollers than spare CPUs would only take turns. A
//! thread asleep for [`KEEP_ALIVE`] exits; threads start on demand, at
//! most [`CallThreads::new`]'s `max` at once. Past that, jobs wait in the
//! queue without holding a thread (the queue is bounded by the server's
//! connections, each of which has at most one request in progress).
//!
//! Invariants, all under `state`'s lock:
//! - `polling + sleeping + running ≤ threads ≤ max`, where `running` is the
//!   threads inside a job (not counted), and `threads` also counts the
//!   callers of [`CallThreads::run_here`] while they run;
//! - a job is pushed only with the lock held, and a poller stops polling
//!   (`polling -= 1`) and looks at the queue in one hold of the lock, so a
//!   submitter that saw `jobs.len() ≤ polling` and woke no one cannot leave
//!   its job unseen: either the poller's loop sees `queued`, or its last
//!   look under the lock does;
//! - `queued` mirrors `jobs.len()`; it is only a hint for pollers, which
//!   take the lock before they pop.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long a thread that finished a call looks for the next before it
/// sleeps. As long as the TCP server polls a loopback socket for the next
/// request, so that a client calling in a loop finds both awake.
const POLL: Duration = Duration::from_micros(50);

/// How long an idle thread sleeps before it exits.
const KEEP_ALIVE: Duration = Duration::from_secs(10);

/// Most threads polling at once: the spin licence's budget, `CPUs − 1`
/// and at least one (see `metabridge_spin`).
fn max_pollers() -> usize {
    metabridge_spin::max_spinners()
}

/// A job: a sync call and the sending of its result.
type Job = Box<dyn FnOnce() + Send>;

/// The pool; dropping it lets idle threads exit (threads inside a call
/// finish it first; one that never returns is abandoned with the process).
pub(super) struct CallThreads {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    /// Signalled when a job is pushed for a sleeping thread, and on drop.
    wake: Condvar,
    /// `state.jobs.len()`, readable without the lock (see the invariants).
    queued: AtomicUsize,
    max: usize,
    name: String,
}

#[derive(Default)]
struct State {
    jobs: VecDeque<Job>,
    threads: usize,
    polling: usize,
    sleeping: usize,
    closed: bool,
}

impl CallThreads {
    /// A pool of at most `max` threads (at least one), named `name`.
    pub(super) fn new(max: usize, name: &str) -> CallThreads {
        CallThreads {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                wake: Condvar::new(),
                queued: AtomicUsize::new(0),
                max: max.max(1),
                name: name.to_string(),
            }),
        }
    }

    /// Runs `f` on a pool thread; its result arrives on the receiver (which
    /// reports an error only if `f` panicked, or the pool could not start a
    /// thread when it had none).
    pub(super) fn run<T, F>(&self, f: F) -> tokio::sync::oneshot::Receiver<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.push(Box::new(move || {
            // The receiver gone (its client left) just drops the result.
            let _ = tx.send(f());
        }));
        rx
    }

    /// Runs `f` on the calling thread as if it were a pool thread: it
    /// counts against the bound while it runs (so `f` must not hold a
    /// runtime thread: the caller wraps it in `block_in_place`). Gives `f`
    /// back when the pool is at its bound.
    pub(super) fn run_here<T, F: FnOnce() -> T>(&self, f: F) -> Result<T, F> {
        {
            let mut state = self.shared.lock();
            if state.threads >= self.shared.max {
                return Err(f);
            }
            state.threads += 1;
        }
        /// Gives the slot back, even if `f` unwinds.
        struct Slot<'a>(&'a Arc<Shared>);
        impl Drop for Slot<'_> {
            fn drop(&mut self) {
                let mut state = self.0.lock();
                state.threads -= 1;
                if !state.jobs.is_empty() {
                    // Jobs queued while this slot was taken may have no
                    // thread to take them.
                    self.0.find_taker(state);
                }
            }
        }
        let _slot = Slot(&self.shared);
        Ok(f())
    }

    fn push(&self, job: Job) {
        let mut state = self.shared.lock();
        state.jobs.push_back(job);
        self.shared.find_taker(state);
    }
}

impl Drop for CallThreads {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_all();
    }
}

impl Shared {
    /// After a job was queued: leaves it to a poller, wakes a sleeper, or
    /// starts a thread, within the bound; else it waits for the first
    /// thread to finish.
    fn find_taker(self: &Arc<Self>, mut state: MutexGuard<'_, State>) {
        // Release: pairs with the pollers' Acquire load; the job itself
        // is handed over by the lock.
        self.queued.store(state.jobs.len(), Ordering::Release);
        if state.jobs.len() <= state.polling {
            return; // a poller takes it (see the invariants)
        }
        if state.sleeping > 0 {
            self.wake.notify_one();
            return;
        }
        if state.threads >= self.max {
            return;
        }
        state.threads += 1;
        drop(state);
        let worker = Arc::clone(self);
        let started = std::thread::Builder::new()
            .name(self.name.clone())
            .spawn(move || worker.serve());
        if let Err(e) = started {
            tracing::warn!(
                target: "metabridge::service",
                "could not start a thread for sync calls ({e}); the call waits for a running one"
            );
            let mut state = self.lock();
            state.threads -= 1;
            if state.threads == 0 {
                // No thread will ever take them: fail the calls now
                // (dropping a job drops its sender; the caller sees an
                // error) rather than leave them waiting.
                let jobs = std::mem::take(&mut state.jobs);
                self.queued.store(0, Ordering::Release);
                drop(state);
                drop(jobs);
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A job runs outside the lock and under `catch_unwind`, so nothing
        // panics while holding it; a poisoned lock still holds a valid
        // state.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A pool thread's life: take a job, run it, poll for the next, sleep,
    /// exit after [`KEEP_ALIVE`] idle or when the pool is dropped.
    fn serve(&self) {
        let mut state = self.lock();
        loop {
            if let Some(job) = state.jobs.pop_front() {
                self.queued.store(state.jobs.len(), Ordering::Release);
                drop(state);
                // The dispatcher catches endpoint panics; this guards the
                // thread against anything else in the job.
                let _ = catch_unwind(AssertUnwindSafe(job));
                state = self.lock();
                if state.jobs.is_empty() && !state.closed && state.polling < max_pollers() {
                    state = self.poll(state);
                }
                continue;
            }
            if state.closed {
                break;
            }
            state.sleeping += 1;
            let (next, waited) = self
                .wake
                .wait_timeout(state, KEEP_ALIVE)
                .unwrap_or_else(|p| p.into_inner());
            state = next;
            state.sleeping -= 1;
            if waited.timed_out() && state.jobs.is_empty() {
                break;
            }
        }
        state.threads -= 1;
    }

    /// Looks for a job for at most [`POLL`], yielding between looks;
    /// returns with the lock held, and a job in the queue if one came.
    fn poll<'a>(&'a self, mut state: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        state.polling += 1;
        drop(state);
        let start = Instant::now();
        // Acquire: pairs with `push`'s Release store.
        while self.queued.load(Ordering::Acquire) == 0 && start.elapsed() < POLL {
            std::thread::yield_now();
        }
        state = self.lock();
        state.polling -= 1;
        state
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::Barrier;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
    }

    /// Every job runs once and its result comes back, from many threads.
    #[test]
    fn every_job_runs_once_and_answers() {
        let pool = Arc::new(CallThreads::new(4, "test-calls"));
        let ran = Arc::new(AtomicUsize::new(0));
        let submitters: Vec<_> = (0..8)
            .map(|t| {
                let (pool, ran) = (pool.clone(), ran.clone());
                std::thread::spawn(move || {
                    let rt = runtime();
                    for i in 0..500u64 {
                        let ran = ran.clone();
                        let rx = pool.run(move || {
                            ran.fetch_add(1, Ordering::Relaxed);
                            t * 1000 + i
                        });
                        assert_eq!(rt.block_on(rx).unwrap(), t * 1000 + i);
                    }
                })
            })
            .collect();
        for s in submitters {
            s.join().unwrap();
        }
        assert_eq!(ran.load(Ordering::Relaxed), 8 * 500);
        assert!(pool.shared.lock().threads <= 4);
    }

    /// No more than `max` jobs run at once; the others wait their turn and
    /// then run.
    #[test]
    fn at_most_max_jobs_run_at_once() {
        let pool = CallThreads::new(2, "test-calls");
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let release = Arc::new(AtomicBool::new(false));
        let both_in = Arc::new(Barrier::new(3));
        let receivers: Vec<_> = (0..6)
            .map(|i| {
                let (running, most, release, both_in) = (
                    running.clone(),
                    most.clone(),
                    release.clone(),
                    both_in.clone(),
                );
                pool.run(move || {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    if i < 2 {
                        both_in.wait();
                    }
                    while !release.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    running.fetch_sub(1, Ordering::SeqCst);
                    i
                })
            })
            .collect();
        // The first two hold both threads; the other four are queued.
        both_in.wait();
        assert_eq!(pool.shared.lock().jobs.len(), 4);
        release.store(true, Ordering::SeqCst);
        let rt = runtime();
        for (i, rx) in receivers.into_iter().enumerate() {
            assert_eq!(rt.block_on(rx).unwrap(), i);
        }
        assert_eq!(most.load(Ordering::SeqCst), 2);
    }

    /// A panicking job reports an error to its caller and leaves the
    /// thread serving.
    #[test]
    fn a_panicking_job_fails_alone() {
        let pool = CallThreads::new(1, "test-calls");
        let rt = runtime();
        let failed = pool.run(|| -> u8 { panic!("on purpose") });
        assert!(rt.block_on(failed).is_err());
        assert_eq!(rt.block_on(pool.run(|| 7u8)).unwrap(), 7);
    }

    /// A caller running a job in place takes a slot of the bound: a job
    /// queued meanwhile waits (no thread starts past the bound), then runs
    /// once the slot is given back; at the bound, `run_here` declines.
    #[test]
    fn running_in_place_counts_against_the_bound() {
        let pool = CallThreads::new(1, "test-calls");
        let rt = runtime();
        let queued = pool
            .run_here(|| {
                let rx = pool.run(|| 5u8);
                let state = pool.shared.lock();
                assert_eq!((state.threads, state.jobs.len()), (1, 1));
                drop(state);
                assert!(
                    pool.run_here(|| ()).is_err(),
                    "a second slot past the bound"
                );
                rx
            })
            .unwrap_or_else(|_| panic!("the pool had a free slot"));
        assert_eq!(rt.block_on(queued).unwrap(), 5);
    }

    /// Dropping the pool lets its idle threads exit.
    #[test]
    fn idle_threads_exit_when_the_pool_is_dropped() {
        let pool = CallThreads::new(3, "test-calls");
        let rt = runtime();
        assert_eq!(rt.block_on(pool.run(|| 1)).unwrap(), 1);
        let shared = Arc::clone(&pool.shared);
        drop(pool);
        let deadline = Instant::now() + Duration::from_secs(20);
        while shared.lock().threads > 0 {
            assert!(Instant::now() < deadline, "an idle thread did not exit");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
