// table.h: the kernel name table the generated code fills (see build.rs). Each entry runs
// one `extern "C" __global__` kernel from an argument array laid out like cudaLaunchKernel's
// `void** args` (args[i] points at the value of parameter i) and knows its parameter sizes,
// so a launch with the wrong arguments is refused instead of reading garbage.
#pragma once
#include <stddef.h>
#include <stdint.h>

#include <atomic>
#include <utility>

namespace cuda_cpu {

struct Kernel {
    const char* name;
    void (*run)(void* const* args);
    const size_t* param_sizes;
    size_t params;
    std::atomic<uint64_t> executions{0};
};

struct Module {
    const char* name;  // cuda/<name>.cu
    Kernel* kernels;
    size_t count;
};

template <auto F> struct Entry;
template <typename... P, void (*F)(P...)> struct Entry<F> {
    static constexpr size_t params = sizeof...(P);
    static constexpr size_t param_sizes[sizeof...(P) + 1] = {sizeof(P)..., 0};
    template <size_t... I> static void call(void* const* args, std::index_sequence<I...>) {
        F(*static_cast<P*>(args[I])...);
    }
    static void run(void* const* args) { call(args, std::index_sequence_for<P...>{}); }
};

}  // namespace cuda_cpu

#define CUDA_CPU_KERNEL(f) \
    { #f, &cuda_cpu::Entry<&f>::run, cuda_cpu::Entry<&f>::param_sizes, cuda_cpu::Entry<&f>::params }
