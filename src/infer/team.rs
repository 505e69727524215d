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

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
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

/// Runs `work` on `threads` members (the calling thread is member 0) and returns the first
/// error a member met (not the errors of those released because of it). A panic in a member
/// is resumed on the caller once every member has stopped.
pub(crate) fn run(threads: usize, work: impl Fn(&Member<'_>) -> Result<()> + Sync) -> Result<()> {
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
    std::thread::scope(|scope| {
        for index in 1..shared.members {
            let member = &member;
            std::thread::Builder::new()
                .name(format!("decode-{index}"))
                .spawn_scoped(scope, move || member(index))
                .map_err(|e| {
                    shared.fail();
                    Error::invalid(format!("cannot start a decode thread: {e}"))
                })?;
        }
        member(0);
        Ok::<(), Error>(())
    })?;
    match shared.error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    /// Each phase reads what every member wrote in the phase before.
    #[test]
    fn phases_see_every_write_of_the_one_before() {
        for threads in [1, 2, 3, 5, 8] {
            let cells: Vec<AtomicU64> = (0..threads).map(|_| AtomicU64::new(0)).collect();
            let sums: Vec<AtomicU64> = (0..threads).map(|_| AtomicU64::new(0)).collect();
            run(threads, |m| {
                for phase in 1..=200u64 {
                    cells[m.index()].store(phase * (m.index() as u64 + 1), Ordering::Relaxed);
                    m.sync()?;
                    let seen: u64 = cells.iter().map(|c| c.load(Ordering::Relaxed)).sum();
                    sums[m.index()].fetch_add(seen, Ordering::Relaxed);
                    m.sync()?;
                }
                Ok(())
            })
            .unwrap();
            // Σ_phase phase · Σ_i (i + 1) for every member.
            let want = (1..=200u64).sum::<u64>() * (1..=threads as u64).sum::<u64>();
            for s in &sums {
                assert_eq!(s.load(Ordering::Relaxed), want, "{threads} threads");
            }
        }
    }

    /// A member's error is returned and releases the others from their syncs.
    #[test]
    fn an_error_releases_the_team() {
        let err = run(3, |m| {
            for phase in 0..10 {
                if m.index() == 1 && phase == 4 {
                    return Err(Error::invalid("phase 4 broke"));
                }
                m.sync()?;
            }
            Ok(())
        })
        .unwrap_err();
        assert!(err.to_string().contains("phase 4 broke"), "{err}");
    }

    /// A panic in a member reaches the caller; the others do not hang.
    #[test]
    fn a_panic_reaches_the_caller() {
        let caught = std::panic::catch_unwind(|| {
            run(2, |m| {
                m.sync()?;
                if m.index() == 1 {
                    panic!("member 1");
                }
                m.sync()?;
                m.sync()
            })
        });
        assert!(caught.is_err());
    }

    #[test]
    fn shares_cover_the_range() {
        let shared = Shared::new(3);
        let parts: Vec<_> = (0..3).map(|index| Member { index, shared: &shared }.share(10)).collect();
        assert_eq!(parts, [0..3, 3..6, 6..10]);
    }
}
