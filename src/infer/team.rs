//! A team of threads that runs one piece of work in lock-step phases: every member runs the
//! same closure and calls [`Member::sync`] between phases; a sync returns once every member
//! has reached it. The CPU decode step ([`super::cpu_step`]) runs a whole token through the
//! model this way — about six phases per layer — instead of one thread-pool call per
//! operation, whose sleep and wake-up cost more than the small matrices of a decode step.
//!
//! Waiting spins for a short while (a phase lasts microseconds), then sleeps on a condition
//! variable until the last member arrives, so that a machine with more busy threads than
//! cores still runs the member being waited for. When a member fails (an error or a panic)
//! the others are released from their syncs with an error instead of waiting for it
//! forever.
//!
//! A [`Crew`] keeps its members' threads between runs (a model's decode steps): starting
//! a thread for each step cost ~110 µs of a ~3.3 ms step here. A run that finds the crew
//! busy starts threads for itself ([`spawn_members`]).

use std::any::Any;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::{Error, Result};

/// How long a waiting member spins before it sleeps.
const SPIN: Duration = Duration::from_micros(50);
/// A sleeping member looks again after this long even if not woken (a safety net).
const NAP: Duration = Duration::from_millis(5);

/// State shared by the members of one team.
struct Shared {
    members: usize,
    arrived: AtomicUsize,
    generation: AtomicUsize,
    failed: AtomicBool,
    error: Mutex<Option<Error>>,
    /// Members sleeping in a sync, and what they sleep on.
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
}

impl Shared {
    fn new(members: usize) -> Self {
        Shared {
            members: members.max(1),
            arrived: AtomicUsize::new(0),
            generation: AtomicUsize::new(0),
            failed: AtomicBool::new(false),
            error: Mutex::new(None),
            sleepers: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        }
    }

    /// Wakes the sleeping members (after a new generation or a failure).
    fn wake_sleepers(&self) {
        if self.sleepers.load(Ordering::SeqCst) > 0 {
            let _held = self.lock.lock().unwrap_or_else(|p| p.into_inner());
            self.wake.notify_all();
        }
    }

    /// Marks the team failed and wakes its sleepers; whether it was already failed.
    fn fail(&self) -> bool {
        let was = self.failed.swap(true, Ordering::SeqCst);
        self.wake_sleepers();
        was
    }
}

/// One member's view of its team.
pub(crate) struct Member<'a> {
    index: usize,
    shared: &'a Shared,
}

impl Member<'_> {
    /// This member's index, 0 .. [`Member::count`].
    pub(crate) fn index(&self) -> usize {
        self.index
    }

    /// Members of the team.
    pub(crate) fn count(&self) -> usize {
        self.shared.members
    }

    /// The part of `0..len` this member takes when it is split in equal contiguous parts.
    pub(crate) fn share(&self, len: usize) -> std::ops::Range<usize> {
        let m = self.count();
        len * self.index / m..len * (self.index + 1) / m
    }

    /// Waits until every member has called `sync` as many times as this one; everything a
    /// member wrote before its call is visible to every member after it. An error when
    /// another member has failed.
    pub(crate) fn sync(&self) -> Result<()> {
        let s = self.shared;
        let generation = s.generation.load(Ordering::Acquire);
        if s.arrived.fetch_add(1, Ordering::AcqRel) + 1 == s.members {
            s.arrived.store(0, Ordering::Relaxed);
            s.generation.store(generation.wrapping_add(1), Ordering::SeqCst);
            s.wake_sleepers();
            return Ok(());
        }
        let released = || s.generation.load(Ordering::Acquire) != generation;
        let failed = || Err(Error::invalid("another thread of the team failed"));
        let start = Instant::now();
        let mut spins = 0u32;
        while !released() {
            if s.failed.load(Ordering::Acquire) {
                return failed();
            }
            std::hint::spin_loop();
            spins += 1;
            // The clock is read every 64 spins (a read costs about as much as a spin).
            if spins.is_multiple_of(64) && start.elapsed() >= SPIN {
                // Sleep: registered before the last check under the lock, so the releaser
                // (which reads `sleepers` after its new generation) either is seen here or
                // sees us and notifies under the lock.
                s.sleepers.fetch_add(1, Ordering::SeqCst);
                let mut held = s.lock.lock().unwrap_or_else(|p| p.into_inner());
                while s.generation.load(Ordering::SeqCst) == generation && !s.failed.load(Ordering::SeqCst) {
                    held = s.wake.wait_timeout(held, NAP).unwrap_or_else(|p| p.into_inner()).0;
                }
                drop(held);
                s.sleepers.fetch_sub(1, Ordering::SeqCst);
            }
        }
        Ok(())
    }
}

/// Marks the team failed when a member's work ends in an error or a panic.
struct FailOnDrop<'a> {
    shared: &'a Shared,
    done: bool,
}

impl Drop for FailOnDrop<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.shared.fail();
        }
    }
}

/// Runs `member(i)` for i in 1..count on threads of their own while the caller runs
/// `member(0)`; returns once all have returned. Where a thread cannot start, `release`
/// frees the members already started from their syncs before the error is returned.
fn spawn_members(count: usize, member: &(dyn Fn(usize) + Sync), release: &dyn Fn()) -> Result<()> {
    std::thread::scope(|scope| {
        for index in 1..count {
            std::thread::Builder::new()
                .name(format!("decode-{index}"))
                .spawn_scoped(scope, move || member(index))
                .map_err(|e| {
                    release();
                    Error::invalid(format!("cannot start a decode thread: {e}"))
                })?;
        }
        member(0);
        Ok(())
    })
}

/// Runs `work` on `threads` members started by `launch` (which runs the member function for
/// every index 0..count concurrently, index 0 on the calling thread, and returns when all
/// have returned; where it cannot start them all, it calls the release function, which
/// frees those started from their syncs, and returns the error). Returns the first error a
/// member met (not the errors of those released because of it); a panic in a member is
/// resumed on the caller once every member has stopped.
fn with_members(
    threads: usize,
    work: impl Fn(&Member<'_>) -> Result<()> + Sync,
    launch: impl FnOnce(usize, &(dyn Fn(usize) + Sync), &dyn Fn()) -> Result<()>,
) -> Result<()> {
    let shared = Shared::new(threads);
    let member = |index: usize| {
        let mut guard = FailOnDrop { shared: &shared, done: false };
        let result = work(&Member { index, shared: &shared });
        if let Err(e) = result {
            // The first failure is the cause; members released by it only report that.
            let mut first = shared.error.lock().unwrap_or_else(|p| p.into_inner());
            if !shared.fail() {
                *first = Some(e);
            }
        }
        guard.done = true;
    };
    let release = || {
        shared.fail();
    };
    launch(shared.members, &member, &release)?;
    match shared.error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Threads kept between team runs. [`Crew::run`] runs a team on them: the first run starts
/// them (again when the member count changes), later runs hand them their work. Between
/// runs they spin for [`IDLE_SPIN`] (a decode step's sampling and set-up), then sleep. One
/// run at a time: a run that finds the crew busy (another thread's) starts threads of its
/// own. Dropping the crew ends its threads.
#[derive(Default)]
pub(crate) struct Crew {
    workers: Mutex<Option<Workers>>,
}

impl Clone for Crew {
    /// A new crew (threads are not shared).
    fn clone(&self) -> Self {
        Crew::default()
    }
}

impl std::fmt::Debug for Crew {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Crew")
    }
}

/// How long an idle crew thread spins for the next run before it sleeps.
const IDLE_SPIN: Duration = Duration::from_micros(500);

/// A member function with its lifetime erased: valid while the run that posted it waits
/// (see [`Crew::launch`]).
type Job = &'static (dyn Fn(usize) + Sync);

/// What the caller and a crew's threads share.
#[derive(Default)]
struct Board {
    /// The run's member function (None between runs), and whether to stop.
    post: Mutex<(Option<Job>, bool)>,
    /// Runs posted so far.
    round: AtomicU64,
    /// Threads done with the current round.
    finished: AtomicUsize,
    /// A panic of a thread in this round.
    panic: Mutex<Option<Box<dyn Any + Send>>>,
    /// Wakes the threads (a new round, or stop).
    wake: Condvar,
    /// Wakes the caller (the last thread finished).
    done: Condvar,
    /// The caller sleeps waiting for the threads.
    caller_sleeps: AtomicBool,
}

struct Workers {
    handles: Vec<JoinHandle<()>>,
    board: Arc<Board>,
}

impl Workers {
    /// `count` threads, members 1..=count of every run.
    fn start(count: usize) -> Result<Workers> {
        let board = Arc::new(Board::default());
        let mut workers = Workers { handles: Vec::with_capacity(count), board };
        for index in 1..=count {
            let board = Arc::clone(&workers.board);
            let handle = std::thread::Builder::new()
                .name(format!("decode-{index}"))
                .spawn(move || serve(&board, index, count))
                .map_err(|e| Error::invalid(format!("cannot start a decode thread: {e}")))?;
            workers.handles.push(handle);
        }
        Ok(workers)
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        let mut post = self.board.post.lock().unwrap_or_else(|p| p.into_inner());
        post.1 = true;
        self.board.wake.notify_all();
        drop(post);
        for handle in self.handles.drain(..) {
            // A thread's panics were caught in its rounds; nothing to report here.
            let _ = handle.join();
        }
    }
}

/// A crew thread: member `index` of each round until told to stop.
fn serve(board: &Board, index: usize, count: usize) {
    let mut seen = 0u64;
    loop {
        // Spin for the next round a while, then sleep for it.
        let start = Instant::now();
        let mut spins = 0u32;
        while board.round.load(Ordering::Acquire) == seen && !(spins.is_multiple_of(64) && start.elapsed() >= IDLE_SPIN)
        {
            std::hint::spin_loop();
            spins += 1;
        }
        let job = {
            let mut post = board.post.lock().unwrap_or_else(|p| p.into_inner());
            while board.round.load(Ordering::Acquire) == seen && !post.1 {
                post = board.wake.wait(post).unwrap_or_else(|p| p.into_inner());
            }
            if post.1 {
                return;
            }
            seen = board.round.load(Ordering::Acquire);
            post.0
        };
        if let Some(job) = job {
            if let Err(payload) = catch_unwind(AssertUnwindSafe(|| job(index))) {
                board.panic.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(payload);
            }
        }
        // The last one wakes the caller if it sleeps.
        if board.finished.fetch_add(1, Ordering::SeqCst) + 1 == count && board.caller_sleeps.load(Ordering::SeqCst) {
            let _held = board.post.lock().unwrap_or_else(|p| p.into_inner());
            board.done.notify_all();
        }
    }
}

impl Crew {
    /// Runs `work` on `threads` members (the calling thread is member 0), on this crew's
    /// threads or, when the crew is busy, on threads of its own; the first error a member
    /// met, and a member's panic resumed here once every member has stopped
    /// ([`with_members`]).
    pub(crate) fn run(&self, threads: usize, work: impl Fn(&Member<'_>) -> Result<()> + Sync) -> Result<()> {
        with_members(threads, work, |count, member, release| self.launch(count, member, release))
    }

    fn launch(&self, count: usize, member: &(dyn Fn(usize) + Sync), release: &dyn Fn()) -> Result<()> {
        let mut workers = match self.workers.try_lock() {
            Ok(workers) => workers,
            // A run that panicked left it poisoned; its threads finished that round.
            Err(std::sync::TryLockError::Poisoned(p)) => {
                self.workers.clear_poison();
                p.into_inner()
            }
            Err(std::sync::TryLockError::WouldBlock) => return spawn_members(count, member, release),
        };
        if count <= 1 {
            member(0);
            return Ok(());
        }
        if workers.as_ref().is_none_or(|w| w.handles.len() != count - 1) {
            *workers = None;
            *workers = Some(Workers::start(count - 1)?);
        }
        let board = &workers.as_ref().expect("started above").board;
        // SAFETY: the job is used by the crew's threads only within this round, and this
        // function returns (or unwinds) only after every thread has finished the round and
        // the job is taken off the board.
        let job: Job = unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync), Job>(member) };
        board.finished.store(0, Ordering::Release);
        {
            let mut post = board.post.lock().unwrap_or_else(|p| p.into_inner());
            post.0 = Some(job);
            board.round.fetch_add(1, Ordering::AcqRel);
            board.wake.notify_all();
        }
        let mine = catch_unwind(AssertUnwindSafe(|| member(0)));
        // Wait for the threads: spin (they end with the team's last phase), then sleep.
        let start = Instant::now();
        while board.finished.load(Ordering::Acquire) < count - 1 && start.elapsed() < IDLE_SPIN {
            std::hint::spin_loop();
        }
        if board.finished.load(Ordering::Acquire) < count - 1 {
            let mut post = board.post.lock().unwrap_or_else(|p| p.into_inner());
            board.caller_sleeps.store(true, Ordering::SeqCst);
            while board.finished.load(Ordering::SeqCst) < count - 1 {
                post = board.done.wait_timeout(post, NAP).unwrap_or_else(|p| p.into_inner()).0;
            }
            board.caller_sleeps.store(false, Ordering::SeqCst);
        }
        board.post.lock().unwrap_or_else(|p| p.into_inner()).0 = None;
        let theirs = board.panic.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Err(payload) = mine {
            resume_unwind(payload);
        }
        if let Some(payload) = theirs {
            resume_unwind(payload);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    /// A team run on threads started for it.
    fn run(threads: usize, work: impl Fn(&Member<'_>) -> Result<()> + Sync) -> Result<()> {
        with_members(threads, work, spawn_members)
    }

    /// Each phase reads what every member wrote in the phase before: on threads started for
    /// the run, and on one crew through member counts that change (its threads restarted)
    /// and repeat (its threads reused).
    #[test]
    fn phases_see_every_write_of_the_one_before() {
        let crew = Crew::default();
        for threads in [1, 2, 3, 3, 5, 8, 2, 2] {
            for on_crew in [false, true] {
                let cells: Vec<AtomicU64> = (0..threads).map(|_| AtomicU64::new(0)).collect();
                let sums: Vec<AtomicU64> = (0..threads).map(|_| AtomicU64::new(0)).collect();
                let work = |m: &Member<'_>| {
                    for phase in 1..=200u64 {
                        cells[m.index()].store(phase * (m.index() as u64 + 1), Ordering::Relaxed);
                        m.sync()?;
                        let seen: u64 = cells.iter().map(|c| c.load(Ordering::Relaxed)).sum();
                        sums[m.index()].fetch_add(seen, Ordering::Relaxed);
                        m.sync()?;
                    }
                    Ok(())
                };
                if on_crew { crew.run(threads, work) } else { run(threads, work) }.unwrap();
                // Σ_phase phase · Σ_i (i + 1) for every member.
                let want = (1..=200u64).sum::<u64>() * (1..=threads as u64).sum::<u64>();
                for s in &sums {
                    assert_eq!(s.load(Ordering::Relaxed), want, "{threads} threads, crew {on_crew}");
                }
            }
        }
    }

    /// A member's error is returned and releases the others from their syncs; the crew runs
    /// the next team as usual.
    #[test]
    fn an_error_releases_the_team() {
        let crew = Crew::default();
        let work = |m: &Member<'_>| {
            for phase in 0..10 {
                if m.index() == 1 && phase == 4 {
                    return Err(Error::invalid("phase 4 broke"));
                }
                m.sync()?;
            }
            Ok(())
        };
        for err in [run(3, work).unwrap_err(), crew.run(3, work).unwrap_err()] {
            assert!(err.to_string().contains("phase 4 broke"), "{err}");
        }
        crew.run(3, |m| m.sync()).unwrap();
    }

    /// A panic in a member (a crew thread, or the caller) reaches the caller; the others do
    /// not hang, and the crew runs the next team as usual.
    #[test]
    fn a_panic_reaches_the_caller() {
        let crew = Crew::default();
        for panicking in [0, 1] {
            let work = |m: &Member<'_>| {
                m.sync()?;
                if m.index() == panicking {
                    panic!("member {panicking}");
                }
                m.sync()?;
                m.sync()
            };
            assert!(std::panic::catch_unwind(|| run(2, work)).is_err());
            assert!(std::panic::catch_unwind(|| crew.run(2, work)).is_err());
            // The next runs are the crew's own (its lock is not left poisoned): member 1 runs
            // on the same thread in both.
            let member_1 = || {
                let id = Mutex::new(None);
                crew.run(2, |m| {
                    if m.index() == 1 {
                        *id.lock().unwrap() = Some(std::thread::current().id());
                    }
                    m.sync()
                })
                .unwrap();
                id.into_inner().unwrap()
            };
            assert_eq!(member_1(), member_1(), "member {panicking} panicked: the crew's thread is not reused");
            assert!(!crew.workers.is_poisoned());
        }
    }

    /// A launch that starts member 1 and then cannot start member 2 (nor run member 0)
    /// returns its error, and member 1, waiting in its sync, is released instead of
    /// waiting forever.
    #[test]
    fn a_thread_that_cannot_start_releases_the_others() {
        let err = with_members(
            3,
            |m| m.sync(),
            |_, member, release| {
                std::thread::scope(|scope| {
                    scope.spawn(|| member(1));
                    release();
                    Err(Error::invalid("no thread for member 2"))
                })
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("no thread for member 2"), "{err}");
    }

    /// A team run from inside a run of the same crew (the crew busy) gets threads of its
    /// own instead of waiting for the crew.
    #[test]
    fn a_busy_crew_is_not_waited_for() {
        let crew = Crew::default();
        let inner = AtomicU64::new(0);
        crew.run(2, |m| {
            if m.index() == 0 {
                crew.run(3, |n| {
                    inner.fetch_add(1, Ordering::Relaxed);
                    n.sync()
                })?;
            }
            m.sync()
        })
        .unwrap();
        assert_eq!(inner.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn shares_cover_the_range() {
        let shared = Shared::new(3);
        let parts: Vec<_> = (0..3).map(|index| Member { index, shared: &shared }.share(10)).collect();
        assert_eq!(parts, [0..3, 3..6, 6..10]);
    }
}
