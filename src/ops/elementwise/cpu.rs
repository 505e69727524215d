//! Elementwise reference over n elements: `add` a + b, `mul` a · b, `scale` a · s.

use crate::ops::Real;

/// out = a + b.
pub fn add<F: Real>(a: &[F], b: &[F], out: &mut [F]) {
    for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
        *o = x + y;
    }
}

/// out = a · b.
pub fn mul<F: Real>(a: &[F], b: &[F], out: &mut [F]) {
    for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
        *o = x * y;
    }
}

/// out = a · s.
pub fn scale<F: Real>(a: &[F], s: F, out: &mut [F]) {
    for (o, &x) in out.iter_mut().zip(a) {
        *o = x * s;
    }
}
