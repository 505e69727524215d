// cuda_cpu.h: CUDA's programming model on the CPU, so that cuda/*.cu compile unchanged as
// C++17 (build.rs includes this header, then the .cu) and run in tests against the ops' CPU
// references. cuda_bf16.h and cuda_fp16.h next to it replace CUDA's.
//
// Modelled:
//   - threadIdx/blockIdx/blockDim/gridDim; each CUDA thread of a block is a cooperative
//     fiber (runtime/launch.cpp), blocks run one after another on the launching OS thread;
//   - __syncthreads() as a true barrier of the block's live threads (exited threads count
//     as arrived, as on sm_70+);
//   - warp exchange (the __shfl*_sync, __ballot_sync and __syncwarp our kernels use): a
//     rendezvous of the lanes in `mask`; a lane of the mask that exited or does not exist, or
//     a source lane outside the mask, aborts with a message instead of giving an undefined
//     value;
//   - __shared__ as `thread_local`: fibers of a block share their OS thread, so that is one
//     copy per running block, and launches from different OS threads (parallel tests) get
//     their own; `extern __shared__` arrays are defined by the generated kernel table, each
//     of its own area; a launch gets the bytes it asks for (more than CUDA_CPU_DYNAMIC_SHARED
//     is refused), filled with 0xff bytes (NaN) at the start of every block, so that reading
//     what the block never wrote shows; from the next page on the area is inaccessible
//     during the launch, and writes between the end of the request and that page are found
//     when the block ends (reads there see the 0xff bytes);
//   - atomics as real atomics; __nv_bfloat16 and __half with CUDA's exact conversions.
// Not modelled:
//   - memory ordering and visibility between threads or blocks, and all interleavings:
//     fibers switch only at barriers and warp operations, in one fixed order (threads start
//     in index order; a warp leaving a warp operation runs on ahead of the others). Races
//     that this order exposes (a missing __syncthreads around shared memory reused by
//     block_sum) fail; others give the sequential answer. A block-to-block handshake
//     through global memory would hang (blocks run one after another);
//   - several `extern __shared__` arrays of one file share one address on the GPU; here each
//     has its own area (our kernels use one array per file);
//   - timing, occupancy, warp-divergence cost, __launch_bounds__ limits, bank conflicts;
//   - static __shared__ arrays are not poisoned between blocks: a block may see what the
//     previous block on this OS thread left (the first sees zeros); their bounds are not
//     checked;
//   - floating point: g++ on x86-64 neither contracts a*b+c into fma (nvcc does by default)
//     nor uses approximate intrinsics (rsqrtf, __expf are exact here): expect last-bit
//     differences against the GPU, not against the tolerances of the tests.
#pragma once
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

// build.rs preprocesses each .cu with CUDA_CPU_SCAN to find the kernels and the `extern
// __shared__` arrays it must define, by these markers.
#ifdef CUDA_CPU_SCAN
#define __global__ cuda_cpu_scan_global
#define __shared__ cuda_cpu_scan_shared
#else
#define __global__
#define __shared__ thread_local
#endif
// The most dynamic shared memory a launch may ask for (what an H100 block may opt into),
// and the area behind each `extern __shared__` array: that, rounded up to pages, and one
// page more, so that the bytes past any launch's request can be made inaccessible.
#define CUDA_CPU_DYNAMIC_SHARED (227u << 10)
#define CUDA_CPU_PAGE 4096u
#define CUDA_CPU_SHARED_AREA \
    ((CUDA_CPU_DYNAMIC_SHARED + CUDA_CPU_PAGE - 1) / CUDA_CPU_PAGE * CUDA_CPU_PAGE + CUDA_CPU_PAGE)
#define __device__
#define __forceinline__ inline __attribute__((always_inline))
#define __restrict__ __restrict
#define __launch_bounds__(...)

struct uint3 { unsigned x, y, z; };
struct dim3 { unsigned x, y, z; };
struct alignas(16) float4 { float x, y, z, w; };

extern thread_local uint3 threadIdx;
extern thread_local uint3 blockIdx;
extern thread_local dim3 blockDim;
extern thread_local dim3 gridDim;

// Barriers and warp rendezvous, implemented by the fiber scheduler.
void __syncthreads();
namespace cuda_cpu {
// Every lane of `mask` contributes `value`; returns the value of lane `src`, or the caller's
// own when `src` is negative (the "outside the segment" case of the shuffles).
uint64_t warp_exchange(unsigned mask, uint64_t value, int src);
unsigned warp_ballot(unsigned mask, bool pred);
unsigned lane_id();

template <typename T> T shuffle(unsigned mask, T v, int src) {
    static_assert(sizeof(T) <= 8, "shuffles move at most 8 bytes");
    uint64_t bits = 0;
    memcpy(&bits, &v, sizeof(T));
    bits = warp_exchange(mask, bits, src);
    memcpy(&v, &bits, sizeof(T));
    return v;
}

// Applies `f` to *p atomically (compare-and-swap loop), returns the old value.
template <typename T, typename F> T atomic_update(T* p, F f) {
    T old;
    __atomic_load(p, &old, __ATOMIC_RELAXED);
    T desired;
    do desired = f(old);
    while (!__atomic_compare_exchange(p, &old, &desired, false, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED));
    return old;
}
}  // namespace cuda_cpu

// Shuffles within segments of `width` lanes.
template <typename T> T __shfl_sync(unsigned mask, T v, int src, int width = 32) {
    int base = cuda_cpu::lane_id() & ~(width - 1);
    return cuda_cpu::shuffle(mask, v, base + (src & (width - 1)));
}
template <typename T> T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
    int lane = cuda_cpu::lane_id(), src = lane ^ lane_mask;
    return cuda_cpu::shuffle(mask, v, (src & ~(width - 1)) == (lane & ~(width - 1)) ? src : -1);
}
template <typename T> T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32) {
    int lane = cuda_cpu::lane_id();
    return cuda_cpu::shuffle(mask, v, (lane & (width - 1)) >= (int)delta ? lane - (int)delta : -1);
}
inline unsigned __ballot_sync(unsigned mask, int pred) { return cuda_cpu::warp_ballot(mask, pred != 0); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { cuda_cpu::warp_exchange(mask, 0, -1); }

template <typename T> T atomicAdd(T* p, T v) {
    return cuda_cpu::atomic_update(p, [v](T old) { return old + v; });
}
template <typename T> T atomicMin(T* p, T v) {
    return cuda_cpu::atomic_update(p, [v](T old) { return v < old ? v : old; });
}

// Integer min/max and the intrinsics our kernels call (exact, see the header comment).
template <typename T> T min(T a, T b) { return b < a ? b : a; }
template <typename T> T max(T a, T b) { return a < b ? b : a; }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline unsigned __float_as_uint(float x) { unsigned u; memcpy(&u, &x, 4); return u; }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline float __fmul_rn(float a, float b) { return a * b; }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dsub_rn(double a, double b) { return a - b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __ddiv_rn(double a, double b) { return a / b; }
inline float __double2float_rn(double x) { return (float)x; }
