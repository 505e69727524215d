//! `cuda/cast.cu` on the CPU: the float ↔ float conversions x [n] → y [n] between f32, bf16
//! and f16 against `Tensor::to_dtype` on the CPU, the f64 widenings and narrowings against
//! the CPU path of the pruning ops (f64 → f32 → bf16), and `scale_f64` (x ← s·x) against
//! f64 multiplication. Exact, as `tensor::cuda_round_trip_and_memory` compares: every bit,
//! the sign of zero included, except that any NaN matches any NaN (CUDA makes NaNs
//! canonical, the half crate keeps their payload). Inputs start with special values:
//! signed zeros, infinities, NaNs with payloads, subnormals, overflow thresholds and
//! rounding ties of each narrower type.

use cuda_cpu::{Buffer, Guard};
use half::{bf16, f16};
use sparsetune::ops::cast::cuda::{geometry, MAX_GRID_THREADS};
use sparsetune::testing::{random_f32, random_f64};
use sparsetune::{DType, Device, Tensor};

use crate::{each_case, run};

/// n: one element, a partial block, one full 256-thread block and one more, the size of
/// the core's CUDA test, and a larger one.
const SIZES: [usize; 6] = [1, 31, 256, 257, 1001, 100_003];

/// f32 inputs that decide the rounding of bf16 and f16.
const SPECIAL_F32: [f32; 22] = [
    0.0,
    -0.0,
    f32::INFINITY,
    f32::NEG_INFINITY,
    f32::NAN,
    f32::from_bits(0x7f80_0001), // a signalling NaN: truncation would make it infinite
    f32::from_bits(0xffc0_0001),
    1e-40,    // f32 subnormal
    f32::MAX, // rounds to bf16 infinity
    65504.0,  // largest f16
    65519.99,
    65520.0,           // rounds to f16 infinity
    1.0 + 1.0 / 256.0, // bf16 ties: to even below, to even above
    1.0 + 3.0 / 256.0,
    1.0 + 1.0 / 2048.0, // f16 ties
    1.0 + 3.0 / 2048.0,
    5.960_464_5e-8,                  // 2⁻²⁴: the smallest f16 subnormal
    2.980_232_2e-8,                  // 2⁻²⁵: an f16 tie to zero
    8.940_697e-8,                    // 1.5·2⁻²⁴: an f16 subnormal tie, to even above
    6.103_515_6e-5 - 2.980_232_2e-8, // rounds up to the smallest f16 normal
    -2.5e-8,
    1.0 / 3.0,
];

/// f64 inputs that decide the rounding to f32 (and to bf16 through f32).
const SPECIAL_F64: [f64; 14] = [
    0.0,
    -0.0,
    f64::INFINITY,
    f64::NEG_INFINITY,
    f64::NAN,
    1e-300,
    -1e-300,
    1e300,
    f64::MAX,
    1.0 + 1.0 / (1u64 << 30) as f64,
    1.0 + 1.0 / (1u64 << 24) as f64, // f32 ties
    1.0 + 3.0 / (1u64 << 24) as f64,
    1.0 + 1.0 / 256.0 + 1.0 / (1u64 << 30) as f64, // above a bf16 tie in f64, on it in f32
    1e-45,
];

/// `random` with `specials` in front.
fn values<F: Copy>(n: usize, specials: &[F], random: Vec<F>) -> Vec<F> {
    let mut v = random;
    let k = specials.len().min(n);
    v[..k].copy_from_slice(&specials[..k]);
    v
}

/// Float types whose values f64 holds exactly.
trait Exact: bytemuck::Pod {
    const NAN: Self;
    fn to_f64(self) -> f64;
}

impl Exact for f32 {
    const NAN: Self = f32::NAN;
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
}

impl Exact for bf16 {
    const NAN: Self = bf16::NAN;
    fn to_f64(self) -> f64 {
        bf16::to_f64(self)
    }
}

impl Exact for f16 {
    const NAN: Self = f16::NAN;
    fn to_f64(self) -> f64 {
        f16::to_f64(self)
    }
}

impl Exact for f64 {
    const NAN: Self = f64::NAN;
    fn to_f64(self) -> f64 {
        self
    }
}

/// Panics at the first element of `got` that is not `want` exactly (any NaN matches NaN).
fn assert_exact(what: &str, got: &[f64], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let differ = |(g, w): (&f64, &f64)| g.to_bits() != w.to_bits() && !(g.is_nan() && w.is_nan());
    let wrong = got.iter().zip(want).filter(|&p| differ(p)).count();
    if let Some(i) = got.iter().zip(want).position(differ) {
        panic!("{what}: {wrong} of {} elements differ; first at {i}: got {:e}, want {:e}", got.len(), got[i], want[i]);
    }
}

/// Runs the conversion `kernel` from `x` into a NaN-filled output and compares it with `want`.
fn convert<S: bytemuck::Pod, D: Exact>(kernel: &str, x: &Buffer<S>, want: &[f64], guard: Guard) {
    let n = want.len();
    let y = Buffer::filled(n, D::NAN, guard);
    run("cast", kernel, geometry(n).unwrap(), &[x, &y, &n]);
    let got: Vec<f64> = y.to_vec().into_iter().map(D::to_f64).collect();
    assert_exact(&format!("{kernel} n={n} {guard:?}"), &got, want);
}

/// Runs every kernel of `cast.cu` over n elements.
fn check(n: usize, guard: Guard) {
    let cpu = Device::cpu();
    let x = values(n, &SPECIAL_F32, random_f32(n, 4.0, 50));
    let src = |dtype| Tensor::from_f32(x.clone(), [n], dtype, &cpu).unwrap();
    let (x32, xb, xh) = (src(DType::F32), src(DType::BF16), src(DType::F16));
    let (x32_buf, xb_buf, xh_buf) = (
        Buffer::from_slice(&x32.to_vec::<f32>().unwrap(), guard),
        Buffer::from_slice(&xb.to_vec::<bf16>().unwrap(), guard),
        Buffer::from_slice(&xh.to_vec::<f16>().unwrap(), guard),
    );
    let as_f64 = |t: &Tensor| t.to_f32_vec().unwrap().into_iter().map(f64::from).collect::<Vec<_>>();
    let to = |t: &Tensor, dtype| as_f64(&t.to_dtype(dtype).unwrap());
    convert::<f32, bf16>("cast_f32_bf16", &x32_buf, &to(&x32, DType::BF16), guard);
    convert::<bf16, f32>("cast_bf16_f32", &xb_buf, &to(&xb, DType::F32), guard);
    convert::<f16, f32>("cast_f16_f32", &xh_buf, &to(&xh, DType::F32), guard);
    convert::<f16, bf16>("cast_f16_bf16", &xh_buf, &to(&xh, DType::BF16), guard);
    convert::<f32, f16>("cast_f32_f16", &x32_buf, &to(&x32, DType::F16), guard);
    convert::<bf16, f16>("cast_bf16_f16", &xb_buf, &to(&xb, DType::F16), guard);
    convert::<f32, f64>("cast_f32_f64", &x32_buf, &as_f64(&x32), guard);
    convert::<bf16, f64>("cast_bf16_f64", &xb_buf, &as_f64(&xb), guard);

    let x64 = values(n, &SPECIAL_F64, random_f64(n, 4.0, 51));
    let x64_buf = Buffer::from_slice(&x64, guard);
    let narrow = |dtype| as_f64(&Tensor::from_f32(x64.iter().map(|&v| v as f32).collect(), [n], dtype, &cpu).unwrap());
    convert::<f64, f32>("cast_f64_f32", &x64_buf, &narrow(DType::F32), guard);
    convert::<f64, bf16>("cast_f64_bf16", &x64_buf, &narrow(DType::BF16), guard);

    let s = -0.37f64;
    run("cast", "scale_f64", geometry(n).unwrap(), &[&x64_buf, &s, &n]);
    assert_exact(
        &format!("scale_f64 n={n} {guard:?}"),
        &x64_buf.to_vec(),
        &x64.iter().map(|v| v * s).collect::<Vec<_>>(),
    );
}

/// The smallest case, for the kernel count.
pub fn smoke() {
    check(1, Guard::After);
}

#[test]
fn every_kernel_matches_cpu() {
    each_case(&SIZES, check);
}

/// One element more than the largest grid covers: the last one is reached by the
/// grid-stride step.
#[test]
fn one_more_than_a_full_grid_stride() {
    check(MAX_GRID_THREADS + 1, Guard::After);
}
