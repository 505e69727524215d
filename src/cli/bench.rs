//! `sparsetune bench`: timings of single kernels at chosen sizes, median of `--reps` runs
//! after one warm-up, one JSON object per line on stdout. For sizes where criterion's
//! minimum of ten samples would take minutes (CPU Cholesky at 11008).

use std::time::Instant;

use clap::{Args, Subcommand};

use crate::device::CudaDevice;
use crate::prune::{linalg, sparsegpt, Pattern, SparseGptOptions};
use crate::testing::random_f64;
use crate::{Device, Error, Result};

/// Arguments of `sparsetune bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    what: BenchKind,
    /// cpu or cuda.
    #[arg(long, default_value = "cpu", global = true)]
    device: String,
    /// Timed repetitions (the median is reported).
    #[arg(long, default_value_t = 3, global = true)]
    reps: usize,
}

#[derive(Subcommand, Debug)]
enum BenchKind {
    /// Upper Cholesky factor of H⁻¹ (SparseGPT's step 3) for an n×n SPD matrix.
    Cholesky {
        /// Matrix size.
        #[arg(long, default_value_t = 4096)]
        n: usize,
    },
    /// SparseGPT on one random [rows, cols] weight with a random SPD Hessian.
    Sparsegpt {
        /// Output rows.
        #[arg(long, default_value_t = 4096)]
        rows: usize,
        /// Input columns.
        #[arg(long, default_value_t = 4096)]
        cols: usize,
        /// "0.5" (unstructured) or "2:4".
        #[arg(long, default_value = "0.5")]
        pattern: String,
    },
}

/// A well-conditioned SPD matrix: I·n + R·Rᵀ/n with R [n, 64] random.
fn spd(n: usize) -> Vec<f64> {
    let k = 64;
    let r = random_f64(n * k, 1.0, 7);
    let mut h = vec![0f64; n * n];
    linalg::gemm_f64(n, n, k, &mut h, n, false, 1.0 / k as f64, &r, k, false, &r, k, true);
    for i in 0..n {
        h[i * n + i] += 1.0;
    }
    h
}

fn median_seconds(reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut t = Vec::with_capacity(reps);
    for _ in 0..reps.max(1) {
        let s = Instant::now();
        f()?;
        t.push(s.elapsed().as_secs_f64());
    }
    t.sort_by(f64::total_cmp);
    Ok(t[t.len() / 2])
}

fn cuda(device: &Device) -> Option<&CudaDevice> {
    match device {
        Device::Cuda(d) => Some(d),
        Device::Cpu(_) => None,
    }
}

/// Runs `bench`.
pub fn run(a: BenchArgs) -> Result<()> {
    let device = Device::from_name(&a.device)?;
    match a.what {
        BenchKind::Cholesky { n } => {
            let h = spd(n);
            let secs = match cuda(&device) {
                None => median_seconds(a.reps, || linalg::inverse_cholesky_upper(&h, n).map(drop))?,
                Some(dev) => {
                    let hd = dev.htod(&h)?;
                    median_seconds(a.reps, || {
                        crate::ops::sparsegpt::inverse_cholesky_upper(dev, hd.slice(), n)?;
                        dev.synchronize()
                    })?
                }
            };
            // chol (n³/3) + triangular inverse (n³/3) + L⁻ᵀL⁻¹ (n³/3, symmetric) + chol (n³/3), as flops ≈ 2·n³·(4/6)
            let gflop = 4.0 * (n as f64).powi(3) / 3.0 / 1e9;
            println!(
                "{}",
                serde_json::json!({"bench": "cholesky_inverse_factor", "n": n, "device": device.label(),
                    "seconds": secs, "gflop_per_s": gflop / secs})
            );
        }
        BenchKind::Sparsegpt { rows, cols, pattern } => {
            let pattern = match pattern.split_once(':') {
                Some((n, m)) => Pattern::NM {
                    n: n.parse().map_err(|_| Error::invalid("bad --pattern"))?,
                    m: m.parse().map_err(|_| Error::invalid("bad --pattern"))?,
                },
                None => Pattern::Unstructured(pattern.parse().map_err(|_| Error::invalid("bad --pattern"))?),
            };
            let h = spd(cols);
            let w = random_f64(rows * cols, 1.0, 8);
            let opts = SparseGptOptions::default();
            let secs = match cuda(&device) {
                None => median_seconds(a.reps, || {
                    let mut w = w.clone();
                    sparsegpt::prune(&mut w, &h, rows, cols, pattern, opts).map(drop)
                })?,
                Some(dev) => {
                    let (hd, w0) = (dev.htod(&h)?, dev.htod(&w)?);
                    let mut wd = dev.alloc::<f64>(rows * cols)?;
                    median_seconds(a.reps, || {
                        dev.stream().memcpy_dtod(w0.slice(), wd.slice_mut())?;
                        crate::ops::sparsegpt::prune(dev, wd.slice_mut(), hd.slice(), rows, cols, pattern, opts)?;
                        dev.synchronize()
                    })?
                }
            };
            println!(
                "{}",
                serde_json::json!({"bench": "sparsegpt_prune", "rows": rows, "cols": cols, "pattern": pattern.to_string(),
                    "device": device.label(), "seconds": secs})
            );
        }
    }
    Ok(())
}
