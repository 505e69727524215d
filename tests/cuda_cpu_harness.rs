//! The CPU execution of CUDA kernels itself (crates/cuda-cpu): CUDA's f32 → bf16/f16
//! conversions bit for bit (through the cast kernels), launches that CUDA would refuse or
//! whose arguments do not match (count, size, kind, element size), an out-of-bounds access
//! caught by a guard page, and dynamic shared memory bounded by what the launch asks for.
//! A separate test binary, so that the kernel count of tests/cuda_on_cpu sees only its own
//! runs.

use cuda_cpu::{launch, Buffer, Guard};
use half::{bf16, f16};
use sparsetune::device::Launch;

fn run_1d(kernel: &str, n: usize, args: &[&dyn cuda_cpu::Arg]) {
    let l = Launch::grid_1d(n.min(1 << 24), 256).unwrap();
    launch("cast", kernel, [l.grid.0, 1, 1], [l.block.0, 1, 1], 0, args).unwrap();
}

/// f32 bit patterns: every 16-bit pattern in the high half with several low halves (the
/// rounding cases: exact, below, at and above the halfway point, with odd and even results).
fn f32_patterns() -> Vec<f32> {
    let lows = [0u32, 1, 0x0fff, 0x1000, 0x1001, 0x7fff, 0x8000, 0x8001, 0xffff];
    (0..=0xffffu32).flat_map(|hi| lows.iter().map(move |lo| f32::from_bits(hi << 16 | lo))).collect()
}

#[test]
fn f32_to_bf16_and_f16_round_like_cuda() {
    let xs = f32_patterns();
    let n = xs.len();
    let x = Buffer::from_slice(&xs, Guard::After);
    let (to_bf16, to_f16) = (Buffer::filled(n, 0u16, Guard::After), Buffer::filled(n, 0u16, Guard::After));
    run_1d("cast_f32_bf16", n, &[&x, &to_bf16, &n]);
    run_1d("cast_f32_f16", n, &[&x, &to_f16, &n]);
    for ((v, b), h) in xs.iter().zip(to_bf16.to_vec()).zip(to_f16.to_vec()) {
        // CUDA makes every NaN the canonical 0x7fff; the half crate keeps the payload.
        let (want_b, want_h) =
            if v.is_nan() { (0x7fff, 0x7fff) } else { (bf16::from_f32(*v).to_bits(), f16::from_f32(*v).to_bits()) };
        assert_eq!(b, want_b, "bf16 of {v:e} ({:#010x})", v.to_bits());
        assert_eq!(h, want_h, "f16 of {v:e} ({:#010x})", v.to_bits());
    }
}

#[test]
fn bf16_and_f16_widen_exactly() {
    let bits: Vec<u16> = (0..=u16::MAX).collect();
    let n = bits.len();
    let x = Buffer::from_slice(&bits, Guard::Before);
    let (from_bf16, from_f16) = (Buffer::filled(n, 0f32, Guard::Before), Buffer::filled(n, 0f32, Guard::Before));
    run_1d("cast_bf16_f32", n, &[&x, &from_bf16, &n]);
    run_1d("cast_f16_f32", n, &[&x, &from_f16, &n]);
    for ((b, wide_b), wide_h) in bits.iter().zip(from_bf16.to_vec()).zip(from_f16.to_vec()) {
        let (want_b, want_h) = (bf16::from_bits(*b).to_f32(), f16::from_bits(*b).to_f32());
        assert!(wide_b.to_bits() == want_b.to_bits() || wide_b.is_nan() && want_b.is_nan(), "bf16 {b:#06x}");
        assert!(wide_h.to_bits() == want_h.to_bits() || wide_h.is_nan() && want_h.is_nan(), "f16 {b:#06x}");
    }
}

#[test]
fn launches_cuda_would_refuse_or_that_mismatch_the_kernel_are_errors() {
    let (x, y, n) = (Buffer::filled(4, 0f32, Guard::After), Buffer::filled(4, 0f32, Guard::After), 4usize);
    let go = |kernel: &str, block: u32, shared: u32, args: &[&dyn cuda_cpu::Arg]| {
        launch("elementwise", kernel, [1, 1, 1], [block, 1, 1], shared, args)
    };
    assert!(go("scale_f32", 256, 0, &[&x, &2f32, &y, &n]).is_ok());
    let err = |r: Result<(), String>| r.expect_err("a refused launch");
    assert!(err(go("scale_f64", 256, 0, &[&x, &2f32, &y, &n])).contains("no kernel"));
    assert!(err(go("scale_f32", 256, 0, &[&x, &2f32, &y])).contains("takes 4 arguments"));
    assert!(err(go("scale_f32", 256, 0, &[&x, &2f32, &y, &4i32])).contains("argument 3 has 4 bytes"));
    let msg = err(go("scale_f32", 256, 0, &[&x, &2i32, &y, &n]));
    assert!(msg.contains("argument 1 is a signed integer, the kernel takes a floating-point number"), "{msg}");
    let msg = err(go("scale_f32", 256, 0, &[&x, &2f32, &y, &4i64]));
    assert!(msg.contains("argument 3 is a signed integer, the kernel takes an unsigned integer"), "{msg}");
    let wide = Buffer::filled(4, 0f64, Guard::After);
    let msg = err(go("scale_f32", 256, 0, &[&wide, &2f32, &y, &n]));
    assert!(msg.contains("argument 0 points at 8-byte elements, the kernel's at 4-byte ones"), "{msg}");
    assert!(err(go("scale_f32", 256, 0, &[&2f32, &2f32, &y, &n])).contains("argument 0 has 4 bytes"));
    assert!(err(go("scale_f32", 1025, 0, &[&x, &2f32, &y, &n])).contains("invalid launch"));
    assert!(err(go("scale_f32", 256, 1 << 20, &[&x, &2f32, &y, &n])).contains("shared memory"));
}

/// Reads one element past the end of the inputs (n is one more than the buffers hold).
fn overrun() {
    let (a, b, n) = (Buffer::filled(100, 1f32, Guard::After), Buffer::filled(100, 1f32, Guard::After), 101usize);
    let sum = Buffer::filled(100, 0f32, Guard::After);
    let _ = launch("elementwise", "add_f32", [1, 1, 1], [256, 1, 1], 0, &[&a, &b, &sum, &n]);
}

/// Runs `test` of this binary again in a child process with `CUDA_CPU_HARNESS_CHILD` set
/// (where it runs its faulty launch), and returns the child's stderr once it has failed.
fn child_failure(test: &str) -> String {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--test-threads=1"])
        .env(CHILD, "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{test}: the fault went unnoticed: {stderr}");
    stderr
}

const CHILD: &str = "CUDA_CPU_HARNESS_CHILD";

fn in_child() -> bool {
    std::env::var_os(CHILD).is_some()
}

#[test]
fn an_access_past_the_end_aborts_naming_kernel_and_offset() {
    if in_child() {
        overrun();
        return;
    }
    let stderr = child_failure("an_access_past_the_end_aborts_naming_kernel_and_offset");
    assert!(stderr.contains("kernel elementwise/add_f32"), "{stderr}");
    // a[100] or b[100], whichever the compiled kernel loads first.
    assert!(stderr.contains("(400 bytes): offset 400 (past its end)"), "{stderr}");
}

/// rope_f32 on one token of one head of `head_dim`, whose cos/sin table needs
/// 2·(head_dim/2) floats of dynamic shared memory, launched with `shared_bytes`.
fn rope_with_shared(head_dim: usize, shared_bytes: u32) {
    let (x, inv_freq) =
        (Buffer::filled(head_dim, 1f32, Guard::After), Buffer::filled(head_dim / 2, 0.5f32, Guard::After));
    let y = Buffer::filled(head_dim, f32::NAN, Guard::After);
    let d = head_dim as i32;
    let (null, no_positions) = (cuda_cpu::Null, cuda_cpu::Null); // positions from pos_offset
                                                                 // x (a row of d), inv_freq, y0 (1 head), no y1 or y2, 1 token of a sequence of 1.
    let args: [&dyn cuda_cpu::Arg; 15] =
        [&x, &d, &inv_freq, &y, &1i32, &null, &0i32, &null, &0i32, &1i32, &1i32, &d, &0i32, &no_positions, &1f32];
    launch("rope", "rope_f32", [1, 1, 1], [128, 1, 1], shared_bytes, &args).unwrap();
}

#[test]
fn dynamic_shared_memory_is_exactly_what_the_launch_asks_for() {
    rope_with_shared(8, 32); // the 8 floats it needs: fine
    rope_with_shared(2200, 8800);
}

#[test]
fn a_write_past_the_dynamic_shared_memory_of_the_launch_fails() {
    if in_child() {
        rope_with_shared(8, 16); // 32 bytes written, 16 asked for: within the page
        return;
    }
    let stderr = child_failure("a_write_past_the_dynamic_shared_memory_of_the_launch_fails");
    assert!(stderr.contains("rope/rope_f32: block (0,0,0) wrote extern __shared__ trig at byte 16"), "{stderr}");
}

#[test]
fn an_access_a_page_past_the_dynamic_shared_memory_faults() {
    if in_child() {
        // 8800 bytes written, 4096 asked for: thread 0 writes cos[0], then sin[0] at byte
        // 4400, in the next page.
        rope_with_shared(2200, 4096);
        return;
    }
    let stderr = child_failure("an_access_a_page_past_the_dynamic_shared_memory_faults");
    assert!(stderr.contains("kernel rope/rope_f32"), "{stderr}");
    assert!(
        stderr.contains("extern __shared__ trig: offset 4400, past the 4096 bytes the launch asked for"),
        "{stderr}"
    );
}
