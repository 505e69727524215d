// driver.cpp: the parts of the CUDA driver API and of cuBLAS that sparsetune's CUDA device
// calls (through cudarc), implemented on the CPU. build.rs links it with the kernel tables
// and launch.cpp into `libcuda_cpu.so`, next to links named libcuda.so and libcublas.so; a
// process started with that folder first in LD_LIBRARY_PATH opens it as its GPU and runs
// every launcher, kernel and cuBLAS call of the library unchanged (tests only: see
// `cuda_cpu::DRIVER_DIR`).
//   - One device, "cuda-cpu", reporting an H100's limits (compute capability 9.0, 132 SMs,
//     227 KiB of opt-in shared memory per block) and memory pools, so that cudarc allocates
//     with cuMemAllocAsync, as on the H100/H200 (which gives the null pointer for 0 bytes).
//   - Device memory: guarded host buffers (launch.cpp), so device pointers are host
//     addresses and a kernel that runs past a buffer faults with the kernel's name. They are
//     aligned to 16 bytes, the widest access of our kernels (cudaMalloc gives 256).
//   - Streams and events: every call completes before it returns; events record wall time.
//   - Modules: the image (fatbin or PTX) is not read. cuModuleGetFunction finds the kernel by
//     its name in the table of every cuda/*.cu; a name two modules define is refused.
//   - cuLaunchKernel runs the kernel with cuda_cpu_launch on the calling thread; a launch
//     CUDA would refuse returns CUDA_ERROR_INVALID_VALUE and prints why.
//   - cuBLAS: cublasGemmEx and cublasGemmStridedBatchedEx (f32, bf16 or f16 operands, f32
//     compute, an f32/bf16/f16 result rounded to nearest even) and cublasDgemm, column-major
//     as cuBLAS defines them, summed in order over k in f32 (f64 for Dgemm); with beta = 0,
//     C is not read (it may hold NaN), as in cuBLAS. Anything else: CUBLAS_STATUS_NOT_SUPPORTED.
// An entry point cudarc asks for that is not here makes cudarc panic with its name.
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <mutex>
#include <string>
#include <unordered_map>

#include "cuda_bf16.h"
#include "cuda_fp16.h"
#include "table.h"

extern const cuda_cpu::Module cuda_cpu_modules[];
extern const size_t cuda_cpu_module_count;
extern "C" int cuda_cpu_launch(const char* module, const char* name, const uint32_t grid[3], const uint32_t block[3],
                               uint32_t shared_bytes, void* const* args, const cuda_cpu::Param* params, size_t nargs,
                               char* err, size_t err_len);
extern "C" void* cuda_cpu_alloc(size_t bytes, size_t align, int at_start);
extern "C" void cuda_cpu_free(void* data);

#define API extern "C" __attribute__((visibility("default")))

namespace {

// CUresult values.
constexpr int SUCCESS = 0, INVALID_VALUE = 1, OUT_OF_MEMORY = 2, INVALID_DEVICE = 101, INVALID_HANDLE = 400,
              NOT_FOUND = 500, NOT_SUPPORTED = 801;

constexpr size_t TOTAL_MEMORY = size_t(16) << 30;

struct Function {
    const cuda_cpu::Module* module;
    const cuda_cpu::Kernel* kernel;
};

std::mutex state_mutex;
std::unordered_map<uintptr_t, size_t> allocations;  // device pointer -> bytes
size_t allocated_bytes = 0;
std::unordered_map<std::string, Function*> functions;
int primary_context;  // its address is the one context handle
thread_local void* current_context = nullptr;

int check_device(int dev) { return dev == 0 ? SUCCESS : INVALID_DEVICE; }

double now_ms() {
    timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

// Prints why a call fails (the error code alone rarely says) and returns `code`.
int refuse(int code, const char* fmt, ...) {
    va_list args;
    va_start(args, fmt);
    fputs("cuda-cpu: ", stderr);
    vfprintf(stderr, fmt, args);
    fputc('\n', stderr);
    va_end(args);
    return code;
}

// `bytes` of device memory; 0 bytes gives the null pointer where `zero_ok` (the
// stream-ordered allocator), else an error (cuMemAlloc).
int device_alloc(uint64_t* dptr, size_t bytes, bool zero_ok) {
    if (!dptr) return refuse(INVALID_VALUE, "allocation into a null pointer");
    if (bytes == 0) return zero_ok ? (*dptr = 0, SUCCESS) : refuse(INVALID_VALUE, "cuMemAlloc of 0 bytes");
    std::lock_guard<std::mutex> lock(state_mutex);
    if (bytes > TOTAL_MEMORY - allocated_bytes)
        return refuse(OUT_OF_MEMORY, "%zu bytes asked, %zu of %zu in use", bytes, allocated_bytes, TOTAL_MEMORY);
    void* p = cuda_cpu_alloc(bytes, 16, 0);
    if (!p) return refuse(OUT_OF_MEMORY, "cannot map %zu bytes", bytes);
    allocations[(uintptr_t)p] = bytes;
    allocated_bytes += bytes;
    *dptr = (uintptr_t)p;
    return SUCCESS;
}

int device_free(uint64_t dptr) {
    if (dptr == 0) return SUCCESS;
    std::lock_guard<std::mutex> lock(state_mutex);
    auto it = allocations.find((uintptr_t)dptr);
    if (it == allocations.end()) return refuse(INVALID_VALUE, "free of %#llx, which is not an allocation", (unsigned long long)dptr);
    allocated_bytes -= it->second;
    allocations.erase(it);
    cuda_cpu_free((void*)(uintptr_t)dptr);
    return SUCCESS;
}

int copy(uint64_t dst, uint64_t src, size_t bytes) {
    if (bytes && (!dst || !src)) return refuse(INVALID_VALUE, "copy of %zu bytes from or to a null pointer", bytes);
    memmove((void*)(uintptr_t)dst, (const void*)(uintptr_t)src, bytes);
    return SUCCESS;
}

int device_attribute(int attribute) {
    switch (attribute) {
        case 1: return 1024;                   // MAX_THREADS_PER_BLOCK
        case 2: case 3: return 1024;           // MAX_BLOCK_DIM_X, _Y
        case 4: return 64;                     // MAX_BLOCK_DIM_Z
        case 5: return 0x7fffffff;             // MAX_GRID_DIM_X
        case 6: case 7: return 65535;          // MAX_GRID_DIM_Y, _Z
        case 8: return 48 << 10;               // MAX_SHARED_MEMORY_PER_BLOCK
        case 10: return 32;                    // WARP_SIZE
        case 12: return 65536;                 // MAX_REGISTERS_PER_BLOCK
        case 16: return 132;                   // MULTIPROCESSOR_COUNT
        case 38: return 50 << 20;              // L2_CACHE_SIZE
        case 39: return 2048;                  // MAX_THREADS_PER_MULTIPROCESSOR
        case 75: return 9;                     // COMPUTE_CAPABILITY_MAJOR
        case 76: return 0;                     // COMPUTE_CAPABILITY_MINOR
        case 81: return 228 << 10;             // MAX_SHARED_MEMORY_PER_MULTIPROCESSOR
        case 97: return 227 << 10;             // MAX_SHARED_MEMORY_PER_BLOCK_OPTIN
        case 115: return 1;                    // MEMORY_POOLS_SUPPORTED
        default: return -1;
    }
}

}  // namespace

// Initialisation, device and context ----------------------------------------------------------

API int cuInit(unsigned) { return SUCCESS; }
API int cuDriverGetVersion(int* v) { return v ? (*v = 13000, SUCCESS) : INVALID_VALUE; }
API int cuDeviceGetCount(int* n) { return n ? (*n = 1, SUCCESS) : INVALID_VALUE; }
API int cuDeviceGet(int* dev, int ordinal) { return dev ? (*dev = ordinal, check_device(ordinal)) : INVALID_VALUE; }

API int cuDeviceGetName(char* name, int len, int dev) {
    if (!name || len <= 0) return INVALID_VALUE;
    snprintf(name, (size_t)len, "cuda-cpu (kernels executed on the CPU)");
    return check_device(dev);
}

API int cuDeviceTotalMem_v2(size_t* bytes, int dev) { return bytes ? (*bytes = TOTAL_MEMORY, check_device(dev)) : INVALID_VALUE; }

API int cuDeviceGetAttribute(int* value, int attribute, int dev) {
    if (!value) return INVALID_VALUE;
    const int v = device_attribute(attribute);
    if (v < 0) {
        return refuse(INVALID_VALUE, "device attribute %d is not modelled", attribute);
    }
    *value = v;
    return check_device(dev);
}

API int cuDevicePrimaryCtxRetain(void** ctx, int dev) { return ctx ? (*ctx = &primary_context, check_device(dev)) : INVALID_VALUE; }
API int cuDevicePrimaryCtxRelease_v2(int dev) { return check_device(dev); }
API int cuCtxSetCurrent(void* ctx) { return current_context = ctx, SUCCESS; }
API int cuCtxGetCurrent(void** ctx) { return ctx ? (*ctx = current_context, SUCCESS) : INVALID_VALUE; }
API int cuCtxPushCurrent_v2(void* ctx) { return current_context = ctx, SUCCESS; }
API int cuCtxPopCurrent_v2(void** ctx) {
    if (ctx) *ctx = current_context;
    return SUCCESS;
}
API int cuCtxGetDevice(int* dev) { return dev ? (*dev = 0, SUCCESS) : INVALID_VALUE; }
API int cuCtxSynchronize() { return SUCCESS; }

API int cuMemGetInfo_v2(size_t* free_bytes, size_t* total) {
    if (!free_bytes || !total) return INVALID_VALUE;
    std::lock_guard<std::mutex> lock(state_mutex);
    *free_bytes = TOTAL_MEMORY - allocated_bytes;
    *total = TOTAL_MEMORY;
    return SUCCESS;
}

// Streams and events: all work is done when its call returns --------------------------------

API int cuStreamCreate(void** stream, unsigned) { return stream ? (*stream = new int(0), SUCCESS) : INVALID_VALUE; }
API int cuStreamCreateWithPriority(void** stream, unsigned flags, int) { return cuStreamCreate(stream, flags); }
API int cuStreamDestroy_v2(void* stream) { return delete (int*)stream, SUCCESS; }
API int cuStreamSynchronize(void*) { return SUCCESS; }
API int cuStreamQuery(void*) { return SUCCESS; }
API int cuStreamWaitEvent(void*, void*, unsigned) { return SUCCESS; }

API int cuEventCreate(void** event, unsigned) { return event ? (*event = new double(0), SUCCESS) : INVALID_VALUE; }
API int cuEventDestroy_v2(void* event) { return delete (double*)event, SUCCESS; }
API int cuEventRecord(void* event, void*) { return event ? (*(double*)event = now_ms(), SUCCESS) : INVALID_HANDLE; }
API int cuEventSynchronize(void* event) { return event ? SUCCESS : INVALID_HANDLE; }
API int cuEventQuery(void* event) { return event ? SUCCESS : INVALID_HANDLE; }

API int cuEventElapsedTime_v2(float* ms, void* start, void* end) {
    if (!ms || !start || !end) return INVALID_VALUE;
    *ms = (float)(*(double*)end - *(double*)start);
    return SUCCESS;
}
API int cuEventElapsedTime(float* ms, void* start, void* end) { return cuEventElapsedTime_v2(ms, start, end); }

// Memory ------------------------------------------------------------------------------------------

API int cuMemAlloc_v2(uint64_t* dptr, size_t bytes) { return device_alloc(dptr, bytes, false); }
API int cuMemAllocAsync(uint64_t* dptr, size_t bytes, void*) { return device_alloc(dptr, bytes, true); }
API int cuDeviceGetDefaultMemPool(void** pool, int dev) { return pool ? (*pool = &primary_context, check_device(dev)) : INVALID_VALUE; }
API int cuMemPoolSetAttribute(void* pool, int, void* value) { return pool && value ? SUCCESS : INVALID_VALUE; }
API int cuMemFree_v2(uint64_t dptr) { return device_free(dptr); }
API int cuMemFreeAsync(uint64_t dptr, void*) { return device_free(dptr); }

API int cuMemcpyHtoD_v2(uint64_t dst, const void* src, size_t n) { return copy(dst, (uintptr_t)src, n); }
API int cuMemcpyDtoH_v2(void* dst, uint64_t src, size_t n) { return copy((uintptr_t)dst, src, n); }
API int cuMemcpyDtoD_v2(uint64_t dst, uint64_t src, size_t n) { return copy(dst, src, n); }
API int cuMemcpyHtoDAsync_v2(uint64_t dst, const void* src, size_t n, void*) { return copy(dst, (uintptr_t)src, n); }
API int cuMemcpyDtoHAsync_v2(void* dst, uint64_t src, size_t n, void*) { return copy((uintptr_t)dst, src, n); }
API int cuMemcpyDtoDAsync_v2(uint64_t dst, uint64_t src, size_t n, void*) { return copy(dst, src, n); }

API int cuMemsetD8_v2(uint64_t dst, unsigned char v, size_t n) {
    if (n && !dst) return refuse(INVALID_VALUE, "memset of %zu bytes at the null pointer", n);
    memset((void*)(uintptr_t)dst, v, n);
    return SUCCESS;
}
API int cuMemsetD8Async(uint64_t dst, unsigned char v, size_t n, void*) { return cuMemsetD8_v2(dst, v, n); }

API int cuMemsetD32_v2(uint64_t dst, unsigned v, size_t n) {
    if (n && !dst) return INVALID_VALUE;
    for (size_t i = 0; i < n; ++i) memcpy((char*)(uintptr_t)dst + 4 * i, &v, 4);
    return SUCCESS;
}
API int cuMemsetD32Async(uint64_t dst, unsigned v, size_t n, void*) { return cuMemsetD32_v2(dst, v, n); }

// Modules and launches --------------------------------------------------------------------------

API int cuModuleLoadData(void** module, const void* image) {
    return module && image ? (*module = &primary_context, SUCCESS) : INVALID_VALUE;
}
API int cuModuleUnload(void*) { return SUCCESS; }

API int cuModuleGetFunction(void** function, void*, const char* name) {
    if (!function || !name) return INVALID_VALUE;
    std::lock_guard<std::mutex> lock(state_mutex);
    auto known = functions.find(name);
    if (known != functions.end()) return *function = known->second, SUCCESS;
    Function found{nullptr, nullptr};
    for (size_t m = 0; m < cuda_cpu_module_count; ++m)
        for (size_t k = 0; k < cuda_cpu_modules[m].count; ++k) {
            if (strcmp(cuda_cpu_modules[m].kernels[k].name, name) != 0) continue;
            if (found.kernel) {
                return refuse(INVALID_VALUE, "kernel %s is defined by cuda/%s.cu and cuda/%s.cu", name,
                              found.module->name, cuda_cpu_modules[m].name);
            }
            found = {&cuda_cpu_modules[m], &cuda_cpu_modules[m].kernels[k]};
        }
    if (!found.kernel) return refuse(NOT_FOUND, "no kernel %s in cuda/*.cu", name);
    Function* f = new Function(found);
    functions[name] = f;
    *function = f;
    return SUCCESS;
}

API int cuFuncGetAttribute(int* value, int attribute, void* function) {
    if (!value || !function) return INVALID_VALUE;
    switch (attribute) {
        case 0: *value = 1024; return SUCCESS;  // MAX_THREADS_PER_BLOCK
        case 1: *value = 0; return SUCCESS;     // SHARED_SIZE_BYTES (static)
        case 4: *value = 32; return SUCCESS;    // NUM_REGS
        default: return NOT_SUPPORTED;
    }
}

API int cuFuncSetAttribute(void* function, int attribute, int value) {
    if (!function) return INVALID_HANDLE;
    // MAX_DYNAMIC_SHARED_SIZE_BYTES: the launch itself refuses more than the opt-in limit.
    if (attribute == 8 && (value < 0 || value > (227 << 10)))
        return refuse(INVALID_VALUE, "%s: %d bytes of dynamic shared memory", ((Function*)function)->kernel->name, value);
    return SUCCESS;
}

API int cuLaunchKernel(void* function, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                       unsigned shared_bytes, void*, void** params, void** extra) {
    if (!function) return INVALID_HANDLE;
    const Function& f = *(Function*)function;
    if (extra || (!params && f.kernel->param_count))
        return refuse(INVALID_VALUE, "%s: arguments must come as kernelParams", f.kernel->name);
    const uint32_t grid[3] = {gx, gy, gz}, block[3] = {bx, by, bz};
    char err[512];
    if (cuda_cpu_launch(f.module->name, f.kernel->name, grid, block, shared_bytes, params, f.kernel->params,
                        f.kernel->param_count, err, sizeof err) != 0) {
        return refuse(INVALID_VALUE, "launch refused: %s", err);
    }
    return SUCCESS;
}

API int cuGetErrorString(int error, const char** text) {
    if (!text) return INVALID_VALUE;
    *text = error == SUCCESS ? "no error" : "cuda-cpu error (see the message printed before it)";
    return SUCCESS;
}
API int cuGetErrorName(int error, const char** text) {
    if (!text) return INVALID_VALUE;
    *text = error == SUCCESS ? "CUDA_SUCCESS" : "CUDA_ERROR (cuda-cpu)";
    return SUCCESS;
}

// cuBLAS ------------------------------------------------------------------------------------------

namespace {

constexpr int BLAS_SUCCESS = 0, BLAS_INVALID_VALUE = 7, BLAS_NOT_SUPPORTED = 15;
constexpr int R_32F = 0, R_64F = 1, R_16F = 2, R_16BF = 14;
constexpr int COMPUTE_32F = 68, COMPUTE_32F_FAST_TF32 = 77;

float load(const void* p, int type, size_t i) {
    switch (type) {
        case R_32F: return ((const float*)p)[i];
        case R_16BF: return __bfloat162float(((const __nv_bfloat16*)p)[i]);
        default: return __half2float(((const __half*)p)[i]);
    }
}

void store(void* p, int type, size_t i, float v) {
    switch (type) {
        case R_32F: ((float*)p)[i] = v; break;
        case R_16BF: ((__nv_bfloat16*)p)[i] = __float2bfloat16_rn(v); break;
        default: ((__half*)p)[i] = __float2half_rn(v); break;
    }
}

bool float_type(int t) { return t == R_32F || t == R_16BF || t == R_16F; }

// Element (row, col) of op(X) where X is column-major with leading dimension ld.
inline size_t at(int op, long long ld, long long row, long long col) {
    return (size_t)(op == 0 ? row + col * ld : col + row * ld);
}

// C = alpha·op(A)·op(B) + beta·C for one batch entry; m×n result, inner dimension k.
template <typename Acc, typename LoadA, typename LoadB, typename LoadC, typename StoreC>
void gemm(int ta, int tb, int m, int n, int k, Acc alpha, LoadA a, long long lda, LoadB b, long long ldb, Acc beta,
          LoadC c_old, StoreC c, long long ldc) {
    for (long long j = 0; j < n; ++j)
        for (long long i = 0; i < m; ++i) {
            Acc s = 0;
            for (long long p = 0; p < k; ++p) s += a(at(ta, lda, i, p)) * b(at(tb, ldb, p, j));
            const size_t ci = (size_t)(i + j * ldc);
            c(ci, beta == 0 ? alpha * s : alpha * s + beta * c_old(ci));
        }
}

int check_shape(int ta, int tb, int m, int n, int k, long long lda, long long ldb, long long ldc) {
    if (ta < 0 || ta > 1 || tb < 0 || tb > 1) return refuse(BLAS_NOT_SUPPORTED, "gemm: transposes %d %d", ta, tb);
    if (m < 0 || n < 0 || k < 0 || lda < (ta == 0 ? m : k) || lda < 1 || ldb < (tb == 0 ? k : n) || ldb < 1 ||
        ldc < m || ldc < 1)
        return refuse(BLAS_INVALID_VALUE, "gemm: m %d n %d k %d, ld %lld %lld %lld (ops %d %d)", m, n, k, lda, ldb,
                      ldc, ta, tb);
    return BLAS_SUCCESS;
}

int gemm_ex_batched(int ta, int tb, int m, int n, int k, const void* alpha, const void* a, int atype, int lda,
                    long long stride_a, const void* b, int btype, int ldb, long long stride_b, const void* beta, void* c,
                    int ctype, int ldc, long long stride_c, int batch, int compute) {
    if ((compute != COMPUTE_32F && compute != COMPUTE_32F_FAST_TF32) || !float_type(atype) || !float_type(btype) ||
        !float_type(ctype) || atype != btype)
        return refuse(BLAS_NOT_SUPPORTED, "gemm: types %d %d -> %d, compute %d", atype, btype, ctype, compute);
    if (const int s = check_shape(ta, tb, m, n, k, lda, ldb, ldc)) return s;
    if (batch < 0 || !alpha || !beta) return refuse(BLAS_INVALID_VALUE, "gemm: batch %d", batch);
    const float al = *(const float*)alpha, be = *(const float*)beta;
    for (int e = 0; e < batch; ++e) {
        auto la = [&](size_t i) { return load(a, atype, (size_t)(e * stride_a) + i); };
        auto lb = [&](size_t i) { return load(b, btype, (size_t)(e * stride_b) + i); };
        auto lc = [&](size_t i) { return load(c, ctype, (size_t)(e * stride_c) + i); };
        auto sc = [&](size_t i, float v) { store(c, ctype, (size_t)(e * stride_c) + i, v); };
        gemm<float>(ta, tb, m, n, k, al, la, lda, lb, ldb, be, lc, sc, ldc);
    }
    return BLAS_SUCCESS;
}

int blas_handle;

}  // namespace

API int cublasCreate_v2(void** handle) { return handle ? (*handle = &blas_handle, BLAS_SUCCESS) : BLAS_INVALID_VALUE; }
API int cublasDestroy_v2(void*) { return BLAS_SUCCESS; }
API int cublasSetStream_v2(void*, void*) { return BLAS_SUCCESS; }
API int cublasSetWorkspace_v2(void*, void*, size_t) { return BLAS_SUCCESS; }
API int cublasSetMathMode(void*, int) { return BLAS_SUCCESS; }

API int cublasGemmEx(void*, int ta, int tb, int m, int n, int k, const void* alpha, const void* a, int atype, int lda,
                     const void* b, int btype, int ldb, const void* beta, void* c, int ctype, int ldc, int compute,
                     int) {
    return gemm_ex_batched(ta, tb, m, n, k, alpha, a, atype, lda, 0, b, btype, ldb, 0, beta, c, ctype, ldc, 0, 1,
                           compute);
}

API int cublasGemmStridedBatchedEx(void*, int ta, int tb, int m, int n, int k, const void* alpha, const void* a,
                                   int atype, int lda, long long stride_a, const void* b, int btype, int ldb,
                                   long long stride_b, const void* beta, void* c, int ctype, int ldc,
                                   long long stride_c, int batch, int compute, int) {
    return gemm_ex_batched(ta, tb, m, n, k, alpha, a, atype, lda, stride_a, b, btype, ldb, stride_b, beta, c, ctype,
                           ldc, stride_c, batch, compute);
}

API int cublasDgemm_v2(void*, int ta, int tb, int m, int n, int k, const double* alpha, const double* a, int lda,
                       const double* b, int ldb, const double* beta, double* c, int ldc) {
    if (const int s = check_shape(ta, tb, m, n, k, lda, ldb, ldc)) return s;
    if (!alpha || !beta) return BLAS_INVALID_VALUE;
    auto la = [&](size_t i) { return a[i]; };
    auto lb = [&](size_t i) { return b[i]; };
    auto lc = [&](size_t i) { return c[i]; };
    auto sc = [&](size_t i, double v) { c[i] = v; };
    gemm<double>(ta, tb, m, n, k, *alpha, la, lda, lb, ldb, *beta, lc, sc, ldc);
    return BLAS_SUCCESS;
}

API int cublasSgemm_v2(void*, int ta, int tb, int m, int n, int k, const float* alpha, const float* a, int lda,
                       const float* b, int ldb, const float* beta, float* c, int ldc) {
    if (const int s = check_shape(ta, tb, m, n, k, lda, ldb, ldc)) return s;
    if (!alpha || !beta) return BLAS_INVALID_VALUE;
    return gemm_ex_batched(ta, tb, m, n, k, alpha, a, R_32F, lda, 0, b, R_32F, ldb, 0, beta, c, R_32F, ldc, 0, 1,
                           COMPUTE_32F);
}

API const char* cublasGetStatusString(int status) {
    return status == BLAS_SUCCESS ? "CUBLAS_STATUS_SUCCESS" : "cuBLAS error (cuda-cpu)";
}
API const char* cublasGetStatusName(int status) { return cublasGetStatusString(status); }
