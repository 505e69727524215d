//! Per-op wall time of training steps, for benchmarks: a [`Profile`] given to a [`super::Tape`]
//! synchronises the device at every recorded op and in backward around every node, and sums
//! the time per (op, phase). Forward time of an op is the time since the previous recorded op
//! (so untaped work in between, e.g. a reshape, counts towards the next op). Ops inside a
//! [`super::checkpoint`]ed segment are not seen one by one: their forward and the segment's
//! backward count as `checkpoint`. Synchronising costs time itself, so a profiled step is
//! slower than an unprofiled one; compare the ops with each other and with the step total.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::{Device, Result};

/// When an op's time was spent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Phase {
    /// The forward pass (loss included).
    Forward,
    /// The op's backward closure.
    Backward,
    /// Outside the tape (the caller's [`Profile::time`] spans, e.g. the optimizer update).
    Other,
}

impl Phase {
    /// "forward", "backward" or "other".
    pub fn name(self) -> &'static str {
        match self {
            Phase::Forward => "forward",
            Phase::Backward => "backward",
            Phase::Other => "other",
        }
    }
}

/// Calls and seconds of one (op, phase).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct OpTime {
    /// Times the op ran.
    pub calls: usize,
    /// Wall seconds, device work included.
    pub seconds: f64,
}

#[derive(Debug)]
struct Inner {
    device: Device,
    mark: Instant,
    times: BTreeMap<(&'static str, Phase), OpTime>,
}

/// Shared per-op timer (clones share the sums).
#[derive(Clone, Debug)]
pub struct Profile(Arc<Mutex<Inner>>);

impl Profile {
    /// A timer that synchronises `device`.
    pub fn new(device: &Device) -> Self {
        Profile(Arc::new(Mutex::new(Inner { device: device.clone(), mark: Instant::now(), times: BTreeMap::new() })))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves only sums behind; keep them.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Synchronises the device and starts the next span now.
    pub fn mark(&self) -> Result<()> {
        let mut inner = self.lock();
        inner.device.synchronize()?;
        inner.mark = Instant::now();
        Ok(())
    }

    /// Synchronises the device and adds the time since the last mark to (op, phase).
    pub fn lap(&self, op: &'static str, phase: Phase) -> Result<()> {
        let mut inner = self.lock();
        inner.device.synchronize()?;
        let now = Instant::now();
        let dt = now.duration_since(inner.mark).as_secs_f64();
        inner.mark = now;
        let t = inner.times.entry((op, phase)).or_default();
        t.calls += 1;
        t.seconds += dt;
        Ok(())
    }

    /// Runs `f` as one span of (op, [`Phase::Other`]).
    pub fn time<T>(&self, op: &'static str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        self.mark()?;
        let out = f()?;
        self.lap(op, Phase::Other)?;
        Ok(out)
    }

    /// The sums so far, largest first.
    pub fn table(&self) -> Vec<(&'static str, Phase, OpTime)> {
        let mut rows: Vec<_> = self.lock().times.iter().map(|(&(op, phase), &t)| (op, phase, t)).collect();
        rows.sort_by(|a, b| b.2.seconds.total_cmp(&a.2.seconds));
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autograd::{Grads, Tape};
    use crate::ops::matmul::matmul;
    use crate::{DType, Tensor};

    /// Every recorded op is counted once forward and once backward; spans outside the tape
    /// go to their own row; a tape without a profile counts nothing.
    #[test]
    fn counts_every_recorded_op_and_span() {
        let dev = Device::cpu();
        let a = Tensor::randn([4, 3], 1.0, DType::F32, &dev, 1).unwrap();
        let b = Tensor::randn([3, 5], 1.0, DType::F32, &dev, 2).unwrap();
        let c = Tensor::randn([5, 2], 1.0, DType::F32, &dev, 3).unwrap();
        let prof = Profile::new(&dev);
        let run = |profile: Option<Profile>| {
            let mut tape = Tape::new();
            tape.set_profile(profile).unwrap();
            tape.watch(&a);
            let ab = matmul(Some(&mut tape), &a, &b).unwrap();
            let abc = matmul(Some(&mut tape), &ab, &c).unwrap();
            let g = Tensor::from_f32(vec![1.0; 8], [4, 2], DType::F32, &dev).unwrap();
            tape.backward_from(&abc, g, &mut Grads::new()).unwrap();
        };
        run(None);
        assert!(prof.table().is_empty());
        run(Some(prof.clone()));
        let x = prof.time("outside", || Ok(7)).unwrap();
        assert_eq!(x, 7);
        let rows: Vec<(&str, Phase, usize)> = {
            let mut r: Vec<_> = prof.table().into_iter().map(|(op, ph, t)| (op, ph, t.calls)).collect();
            r.sort();
            r
        };
        assert_eq!(rows, [("matmul", Phase::Forward, 2), ("matmul", Phase::Backward, 2), ("outside", Phase::Other, 1)]);
        assert!(prof.table().iter().all(|(_, _, t)| t.seconds >= 0.0 && t.seconds.is_finite()));
    }
}
