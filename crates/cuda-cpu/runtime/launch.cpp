// launch.cpp: runs a kernel of the generated name table on the CPU, and the guarded buffers
// its arguments live in.
//   - Launch: blocks one after another on the calling OS thread; a block's threads are
//     fibers (ucontext) scheduled cooperatively. A fiber runs CUDA threads in order until one
//     waits at __syncthreads() or a warp operation; only then is another fiber started, so a
//     kernel without barriers costs one fiber, not one per thread. Fibers and their stacks
//     (256 KiB, a PROT_NONE page below) are kept per OS thread and reused.
//   - Guarded buffers: mmap'd with a PROT_NONE page on both sides, the data placed against
//     the page after it (an overrun faults at once) or against the page before it (an
//     underrun does). While a launch runs, SIGSEGV/SIGBUS print the kernel, the block and
//     thread, and the fault's offset in the buffer argument it hit, then abort. Buffers are
//     aligned to their element type only (cudaMalloc gives 256 bytes), so that the end
//     touches the guard page. Not caught: an access that lands in another mapped region
//     (far out of bounds); with the guard before, an overrun within the page's slack after
//     the end; bytes up to the alignment when the size is not a multiple of it.
//   - Dynamic shared memory: the pages of each `extern __shared__` area past the launch's
//     request are PROT_NONE while it runs; the bytes up to that page are checked after each
//     block (a write there fails, a read sees the 0xff poison every block starts with).
//     Static __shared__ arrays are not checked.
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <deque>
#include <mutex>
#include <vector>

#include "cuda_cpu.h"
#include "table.h"

thread_local uint3 threadIdx;
thread_local uint3 blockIdx;
thread_local dim3 blockDim;
thread_local dim3 gridDim;

extern const cuda_cpu::Module cuda_cpu_modules[];
extern const size_t cuda_cpu_module_count;

namespace cuda_cpu {
namespace {

[[noreturn]] void fail(const char* fmt, ...);

size_t page_bytes() { return (size_t)sysconf(_SC_PAGESIZE); }

constexpr size_t STACK_BYTES = 256 << 10;

struct Fiber {
    ucontext_t context;
    char* mapping;     // guard page, then the stack
    unsigned thread;   // linear index of the CUDA thread it runs
    uint3 index;       // that thread's threadIdx
};

struct Warp {
    unsigned arrived = 0, mask = 0;
    uint64_t values[32], snapshot[32];
    Fiber* waiting[32];
};

struct Block {
    void (*run)(void* const*) = nullptr;
    void* const* args = nullptr;
    unsigned threads = 0, started = 0, exited = 0, at_barrier = 0;
    std::vector<Fiber*> barrier_waiting;
    Warp warps[32];
};

// The launch in progress on this OS thread, for the fault handler and error messages
// (constant-initialised, so a signal handler may read it on any thread).
struct Current {
    const char* module = nullptr;
    const Kernel* kernel = nullptr;
    void* const* args = nullptr;
    const SharedArray* shared = nullptr;  // the module's extern __shared__ arrays
    uint32_t shared_bytes = 0;
};
thread_local Current current;

struct Scheduler {
    ucontext_t main;
    std::vector<Fiber*> fibers, idle;
    std::deque<Fiber*> ready;
    Fiber* running = nullptr;
    Block block;
    stack_t alt_stack{};

    ~Scheduler() {
        for (Fiber* f : fibers) {
            munmap(f->mapping, STACK_BYTES + page_bytes());
            delete f;
        }
        if (alt_stack.ss_sp) {
            stack_t off{};
            off.ss_flags = SS_DISABLE;
            sigaltstack(&off, nullptr);
            free(alt_stack.ss_sp);
        }
    }
};

thread_local Scheduler sched;

void fiber_main();

Fiber* new_fiber() {
    const size_t page = page_bytes();
    void* m = mmap(nullptr, STACK_BYTES + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED || mprotect(m, page, PROT_NONE) != 0) fail("cannot map a fiber stack");
    Fiber* f = new Fiber{};
    f->mapping = (char*)m;
    getcontext(&f->context);
    f->context.uc_stack.ss_sp = f->mapping + page;
    f->context.uc_stack.ss_size = STACK_BYTES;
    f->context.uc_link = nullptr;
    makecontext(&f->context, fiber_main, 0);
    sched.fibers.push_back(f);
    return f;
}

// Gives control back to the scheduler until this fiber is resumed.
void suspend() {
    Fiber* self = sched.running;
    swapcontext(&self->context, &sched.main);
    threadIdx = self->index;
}

// A fiber's life: run unstarted threads of the current block one after another; when none
// is left, wait idle for the next block (of this or a later launch).
void fiber_main() {
    for (;;) {
        Block& b = sched.block;
        while (b.started < b.threads) {
            Fiber* self = sched.running;
            const unsigned t = b.started++;
            self->thread = t;
            self->index = {t % blockDim.x, t / blockDim.x % blockDim.y, t / (blockDim.x * blockDim.y)};
            threadIdx = self->index;
            b.run(b.args);
            ++b.exited;
        }
        sched.idle.push_back(sched.running);
        suspend();
    }
}

[[noreturn]] void deadlock() {
    const Block& b = sched.block;
    fprintf(stderr,
            "cuda_cpu: %s/%s block (%u,%u,%u) cannot proceed: %u of %u threads exited, %u wait at "
            "__syncthreads\n",
            current.module, current.kernel->name, blockIdx.x, blockIdx.y, blockIdx.z, b.exited, b.threads,
            b.at_barrier);
    for (unsigned w = 0; w < 32; ++w)
        if (b.warps[w].arrived)
            fprintf(stderr, "  warp %u: lanes %08x of mask %08x arrived at a warp operation\n", w, b.warps[w].arrived,
                    b.warps[w].mask);
    abort();
}

void run_block() {
    Block& b = sched.block;
    b.started = b.exited = b.at_barrier = 0;
    b.barrier_waiting.clear();
    for (Warp& w : b.warps) w.arrived = 0;
    for (;;) {
        Fiber* next;
        if (!sched.ready.empty()) {
            next = sched.ready.front();
            sched.ready.pop_front();
        } else if (b.started < b.threads) {
            if (sched.idle.empty()) {
                next = new_fiber();
            } else {
                next = sched.idle.back();
                sched.idle.pop_back();
            }
        } else if (b.at_barrier > 0 && b.at_barrier == b.threads - b.exited) {
            sched.ready.insert(sched.ready.end(), b.barrier_waiting.begin(), b.barrier_waiting.end());
            b.barrier_waiting.clear();
            b.at_barrier = 0;
            continue;
        } else if (b.exited == b.threads) {
            return;
        } else {
            deadlock();
        }
        sched.running = next;
        swapcontext(&sched.main, &next->context);
    }
}

// All lanes of `mask` meet; returns the values they brought, valid until they meet again.
const uint64_t* rendezvous(unsigned mask, uint64_t value) {
    Fiber* self = sched.running;
    const unsigned lane = self->thread & 31;
    Warp& w = sched.block.warps[self->thread >> 5];
    if (!(mask >> lane & 1u))
        fail("thread %u calls a warp operation with mask %08x, which excludes its lane %u", self->thread, mask, lane);
    if (w.arrived == 0) w.mask = mask;
    if (w.mask != mask) fail("warp %u: lanes use masks %08x and %08x at once", self->thread >> 5, w.mask, mask);
    w.values[lane] = value;
    w.arrived |= 1u << lane;
    if (w.arrived != mask) {
        w.waiting[lane] = self;
        suspend();
        return w.snapshot;
    }
    memcpy(w.snapshot, w.values, sizeof w.values);
    w.arrived = 0;
    // The warp runs on ahead of the other warps (front of the queue, in lane order): a
    // missing __syncthreads then lets it overwrite shared memory that other warps have yet
    // to read, or read what they have yet to write, as a fast warp would on the GPU.
    for (unsigned l = 32; l-- > 0;)
        if ((mask >> l & 1u) && l != lane) sched.ready.push_front(w.waiting[l]);
    return w.snapshot;
}

// Fault reporting -----------------------------------------------------------------------

struct Guarded {
    char* data;
    size_t bytes;
    char* mapping;
    size_t mapping_bytes;
};

std::mutex guarded_mutex;
std::vector<Guarded> guarded;  // live buffers from cuda_cpu_alloc

std::mutex handler_mutex;
unsigned launches_in_flight = 0;
struct sigaction previous_segv, previous_bus;

void on_fault(int sig, siginfo_t* info, void*) {
    const Current& c = current;
    if (!c.kernel) {  // a fault of another OS thread: back to the previous handler, and retry
        sigaction(sig, sig == SIGBUS ? &previous_bus : &previous_segv, nullptr);
        return;
    }
    const char* addr = (const char*)info->si_addr;
    fprintf(stderr, "\ncuda_cpu: %s in kernel %s/%s, block (%u,%u,%u), thread (%u,%u,%u), address %p\n",
            sig == SIGBUS ? "SIGBUS" : "SIGSEGV", c.module, c.kernel->name, blockIdx.x, blockIdx.y,
            blockIdx.z, threadIdx.x, threadIdx.y, threadIdx.z, (const void*)addr);
    bool in_shared = false;
    for (const SharedArray* a = c.shared; a && a->name; ++a) {
        const char* base = (const char*)a->address();
        if (addr < base || addr >= base + CUDA_CPU_SHARED_AREA) continue;
        fprintf(stderr, "  extern __shared__ %s: offset %ld, past the %u bytes the launch asked for\n", a->name,
                (long)(addr - base), c.shared_bytes);
        in_shared = true;
    }
    // Otherwise the buffer arguments whose mapping (guard pages included) holds the
    // address; all buffer arguments when none does.
    for (int pass = 0; pass < 2 && !in_shared; ++pass) {
        bool reported = false;
        for (size_t i = 0; i < c.kernel->param_count; ++i) {
            if (c.kernel->params[i].kind != 'p') continue;
            const char* p = *(char* const*)c.args[i];
            for (const Guarded& g : guarded) {
                const bool near = addr >= g.mapping && addr < g.mapping + g.mapping_bytes;
                if (g.data != p || (pass == 0 && !near)) continue;
                const long offset = (long)(addr - g.data);
                fprintf(stderr, "  argument %zu (%zu bytes): offset %ld%s\n", i, g.bytes, offset,
                        offset < 0 ? " (before its start)"
                        : (size_t)offset >= g.bytes ? " (past its end)"
                                                    : "");
                reported = true;
            }
        }
        if (reported) break;
    }
    for (const Fiber* f : sched.fibers)
        if (addr >= f->mapping && addr < f->mapping + page_bytes())
            fprintf(stderr, "  the fault is in a fiber stack's guard page: a kernel needs more than %zu KiB of stack\n",
                    STACK_BYTES >> 10);
    abort();
}

void install_fault_handler() {
    if (!sched.alt_stack.ss_sp) {  // the handler must run even when a fiber's stack is exhausted
        sched.alt_stack.ss_size = 64 << 10;
        sched.alt_stack.ss_sp = malloc(sched.alt_stack.ss_size);
        sigaltstack(&sched.alt_stack, nullptr);
    }
    std::lock_guard<std::mutex> lock(handler_mutex);
    if (launches_in_flight++ > 0) return;
    struct sigaction sa{};
    sa.sa_sigaction = on_fault;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGSEGV, &sa, &previous_segv);
    sigaction(SIGBUS, &sa, &previous_bus);
}

void remove_fault_handler() {
    std::lock_guard<std::mutex> lock(handler_mutex);
    if (--launches_in_flight > 0) return;
    sigaction(SIGSEGV, &previous_segv, nullptr);
    sigaction(SIGBUS, &previous_bus, nullptr);
}

[[noreturn]] void fail(const char* fmt, ...) {
    fprintf(stderr, "cuda_cpu: %s/%s: ", current.module, current.kernel ? current.kernel->name : "?");
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    abort();
}

// Writes a message into the caller's buffer; returns the error code 1.
int refuse(char* err, size_t err_len, const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, err_len, fmt, ap);
    va_end(ap);
    return 1;
}

const Module* find_module(const char* module) {
    for (size_t m = 0; m < cuda_cpu_module_count; ++m)
        if (strcmp(cuda_cpu_modules[m].name, module) == 0) return &cuda_cpu_modules[m];
    return nullptr;
}

Kernel* find_kernel(const Module* mod, const char* name) {
    for (size_t k = 0; mod && k < mod->count; ++k)
        if (strcmp(mod->kernels[k].name, name) == 0) return &mod->kernels[k];
    return nullptr;
}

const char* kind_name(char kind) {
    switch (kind) {
        case 'i': return "a signed integer";
        case 'u': return "an unsigned integer";
        case 'f': return "a floating-point number";
        case 'p': return "a pointer";
        default: return "a value of another type";
    }
}

// Why argument `i` (`got`) does not fit parameter `want`, or nullptr when it does; a
// pointer's element size must match unless either side is untyped (0).
const char* mismatch(const Param& want, const Param& got, char* why, size_t len) {
    if (want.bytes != got.bytes)
        snprintf(why, len, "has %zu bytes, the kernel takes %zu", got.bytes, want.bytes);
    else if (want.kind != got.kind)
        snprintf(why, len, "is %s, the kernel takes %s", kind_name(got.kind), kind_name(want.kind));
    else if (want.kind == 'p' && want.pointee_bytes && got.pointee_bytes && want.pointee_bytes != got.pointee_bytes)
        snprintf(why, len, "points at %zu-byte elements, the kernel's at %zu-byte ones", got.pointee_bytes,
                 want.pointee_bytes);
    else
        return nullptr;
    return why;
}

size_t round_up_to_page(size_t bytes) { return (bytes + CUDA_CPU_PAGE - 1) / CUDA_CPU_PAGE * CUDA_CPU_PAGE; }

// The pages of each extern __shared__ area past the launch's bytes: inaccessible during the
// launch (`on`), accessible again after it. They are whole pages of the array, which is
// page-aligned, so nothing else lives there.
void guard_shared(const SharedArray* arrays, uint32_t shared_bytes, bool on) {
    if (page_bytes() != CUDA_CPU_PAGE) return;  // the areas are 4 KiB-aligned: the canary only
    const size_t from = round_up_to_page(shared_bytes);
    for (const SharedArray* a = arrays; a->name; ++a) {
        char* base = (char*)a->address();
        if ((uintptr_t)base % CUDA_CPU_PAGE != 0) fail("extern __shared__ %s is not page-aligned", a->name);
        if (mprotect(base + from, CUDA_CPU_SHARED_AREA - from, on ? PROT_NONE : PROT_READ | PROT_WRITE) != 0)
            fail("cannot protect extern __shared__ %s", a->name);
    }
}

// Every block starts with its dynamic shared memory, up to the guarded page, all 0xff.
void poison_shared(const SharedArray* arrays, uint32_t shared_bytes) {
    for (const SharedArray* a = arrays; a->name; ++a) memset(a->address(), 0xff, round_up_to_page(shared_bytes));
}

// After a block: the bytes between the launch's request and the guarded page are untouched.
void check_shared_slack(const SharedArray* arrays, uint32_t shared_bytes) {
    for (const SharedArray* a = arrays; a->name; ++a) {
        const unsigned char* p = (const unsigned char*)a->address();
        for (size_t i = shared_bytes; i < round_up_to_page(shared_bytes); ++i)
            if (p[i] != 0xff)
                fail("block (%u,%u,%u) wrote extern __shared__ %s at byte %zu, past the %u bytes the launch asked for",
                     blockIdx.x, blockIdx.y, blockIdx.z, a->name, i, shared_bytes);
    }
}

}  // namespace

uint64_t warp_exchange(unsigned mask, uint64_t value, int src) {
    const uint64_t* values = rendezvous(mask, value);
    if (src < 0) return value;
    if (!(mask >> src & 1u)) fail("thread %u reads lane %d, outside mask %08x", sched.running->thread, src, mask);
    return values[src];
}

unsigned warp_ballot(unsigned mask, bool pred) {
    const uint64_t* values = rendezvous(mask, pred);
    unsigned bits = 0;
    for (unsigned l = 0; l < 32; ++l)
        if ((mask >> l & 1u) && values[l]) bits |= 1u << l;
    return bits;
}

unsigned lane_id() { return sched.running->thread & 31; }

}  // namespace cuda_cpu

void __syncthreads() {
    cuda_cpu::Block& b = cuda_cpu::sched.block;
    ++b.at_barrier;
    b.barrier_waiting.push_back(cuda_cpu::sched.running);
    cuda_cpu::suspend();
}

using namespace cuda_cpu;

// C ABI for the Rust side (crates/cuda-cpu/src/lib.rs) ------------------------------------

extern "C" size_t cuda_cpu_module_total() { return cuda_cpu_module_count; }

extern "C" const char* cuda_cpu_module_name(size_t m) { return cuda_cpu_modules[m].name; }

extern "C" size_t cuda_cpu_module_kernels(size_t m) { return cuda_cpu_modules[m].count; }

extern "C" const char* cuda_cpu_kernel_name(size_t m, size_t k) { return cuda_cpu_modules[m].kernels[k].name; }

extern "C" uint64_t cuda_cpu_kernel_executions(size_t m, size_t k) {
    return cuda_cpu_modules[m].kernels[k].executions.load();
}

// Runs kernel `name` of cuda/<module>.cu. args[i] points at parameter i, described by
// params[i] (size, kind, element size), which must match the kernel's. Returns 0, or 1 with a message in `err` when the launch is refused (as CUDA
// would refuse it, or for arguments that do not match the kernel).
extern "C" int cuda_cpu_launch(const char* module, const char* name, const uint32_t grid[3], const uint32_t block[3],
                               uint32_t shared_bytes, void* const* args, const Param* params, size_t nargs, char* err,
                               size_t err_len) {
    const Module* mod = find_module(module);
    Kernel* k = find_kernel(mod, name);
    if (!k) return refuse(err, err_len, "no kernel %s in cuda/%s.cu", name, module);
    if (nargs != k->param_count)
        return refuse(err, err_len, "%s takes %zu arguments, got %zu", name, k->param_count, nargs);
    char why[128];
    for (size_t i = 0; i < nargs; ++i)
        if (mismatch(k->params[i], params[i], why, sizeof why))
            return refuse(err, err_len, "%s: argument %zu %s", name, i, why);
    const uint64_t threads = (uint64_t)block[0] * block[1] * block[2];
    if (threads == 0 || threads > 1024 || block[2] > 64 || grid[0] == 0 || grid[1] == 0 || grid[2] == 0 ||
        grid[0] > 0x7fffffffu || grid[1] > 65535 || grid[2] > 65535)
        return refuse(err, err_len, "%s: invalid launch grid (%u,%u,%u) block (%u,%u,%u)", name, grid[0], grid[1],
                      grid[2], block[0], block[1], block[2]);
    if (shared_bytes > CUDA_CPU_DYNAMIC_SHARED)
        return refuse(err, err_len, "%s: %u bytes of dynamic shared memory, at most %u here", name, shared_bytes,
                      (unsigned)CUDA_CPU_DYNAMIC_SHARED);
    ++k->executions;
    current = {module, k, args, mod->shared, shared_bytes};
    sched.block.run = k->run;
    sched.block.args = args;
    sched.block.threads = (unsigned)threads;
    gridDim = {grid[0], grid[1], grid[2]};
    blockDim = {block[0], block[1], block[2]};
    install_fault_handler();
    guard_shared(mod->shared, shared_bytes, true);
    for (unsigned z = 0; z < grid[2]; ++z)
        for (unsigned y = 0; y < grid[1]; ++y)
            for (unsigned x = 0; x < grid[0]; ++x) {
                blockIdx = {x, y, z};
                poison_shared(mod->shared, shared_bytes);
                run_block();
                check_shared_slack(mod->shared, shared_bytes);
            }
    guard_shared(mod->shared, shared_bytes, false);
    remove_fault_handler();
    current = {};
    return 0;
}

// A buffer of `bytes` with PROT_NONE pages on both sides, aligned to `align` (a power of two
// up to a page): against the page after it, or with `at_start`, against the page before.
extern "C" void* cuda_cpu_alloc(size_t bytes, size_t align, int at_start) {
    const size_t page = page_bytes(), data_pages = (bytes + page - 1) / page + (bytes == 0);
    const size_t mapping_bytes = (data_pages + 2) * page;
    void* m = mmap(nullptr, mapping_bytes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) return nullptr;
    char* mapping = (char*)m;
    if (mprotect(mapping + page, data_pages * page, PROT_READ | PROT_WRITE) != 0) {
        munmap(m, mapping_bytes);
        return nullptr;
    }
    char* data = at_start ? mapping + page
                          : (char*)((uintptr_t)(mapping + page + data_pages * page - bytes) & ~(uintptr_t)(align - 1));
    std::lock_guard<std::mutex> lock(guarded_mutex);
    guarded.push_back({data, bytes, mapping, mapping_bytes});
    return data;
}

extern "C" void cuda_cpu_free(void* data) {
    std::lock_guard<std::mutex> lock(guarded_mutex);
    for (size_t i = 0; i < guarded.size(); ++i) {
        if (guarded[i].data != data) continue;
        munmap(guarded[i].mapping, guarded[i].mapping_bytes);
        guarded[i] = guarded.back();
        guarded.pop_back();
        return;
    }
}
