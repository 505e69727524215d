//! Byte accounting for every buffer a device hands out. Each allocation holds a
//! [`MemTicket`] that adds its bytes to the device's [`MemoryCounter`] and subtracts them
//! when dropped, so `current` is the live total and `peak` its maximum since the last reset.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Live and peak bytes of one device's allocations.
#[derive(Debug, Default)]
pub struct MemoryCounter {
    current: AtomicUsize,
    peak: AtomicUsize,
}

/// A snapshot of a [`MemoryCounter`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryStats {
    /// Bytes currently allocated.
    pub current_bytes: usize,
    /// Largest `current_bytes` seen since creation or the last [`MemoryCounter::reset_peak`].
    pub peak_bytes: usize,
}

impl MemoryCounter {
    /// Current and peak bytes.
    pub fn stats(&self) -> MemoryStats {
        MemoryStats {
            current_bytes: self.current.load(Ordering::Relaxed),
            peak_bytes: self.peak.load(Ordering::Relaxed),
        }
    }

    /// Sets the peak to the current value, to measure the peak of a region.
    pub fn reset_peak(&self) {
        self.peak.store(self.current.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    fn add(&self, bytes: usize) {
        let now = self.current.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.peak.fetch_max(now, Ordering::Relaxed);
    }

    fn sub(&self, bytes: usize) {
        self.current.fetch_sub(bytes, Ordering::Relaxed);
    }
}

/// Proof that `bytes` are counted against a device; releases them on drop.
#[derive(Debug)]
pub struct MemTicket {
    counter: Arc<MemoryCounter>,
    bytes: usize,
}

impl MemTicket {
    /// Counts `bytes` against `counter` until the ticket is dropped.
    pub(crate) fn new(counter: &Arc<MemoryCounter>, bytes: usize) -> Self {
        counter.add(bytes);
        MemTicket { counter: counter.clone(), bytes }
    }

    /// Bytes this ticket accounts for.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for MemTicket {
    fn drop(&mut self) {
        self.counter.sub(self.bytes);
    }
}
