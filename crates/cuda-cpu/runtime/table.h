// table.h: the kernel name table the generated code fills (see build.rs). Each entry runs
// one `extern "C" __global__` kernel from an argument array laid out like cudaLaunchKernel's
// `void** args` (args[i] points at the value of parameter i) and knows its parameter sizes,
// and kinds (signed/unsigned integer, floating point, pointer and the size of what it points
// at), so a launch with the wrong arguments is refused instead of reading garbage.
#pragma once
#include <stddef.h>
#include <stdint.h>

#include <atomic>
#include <type_traits>
#include <utility>

namespace cuda_cpu {

// A parameter's kind: 'i' signed and 'u' unsigned integer, 'f' floating point, 'p' pointer,
// 'o' anything else; for a pointer also the size of its element (0 for void*).
struct Param {
    size_t bytes;
    char kind;
    size_t pointee_bytes;
};

template <typename P> constexpr Param param() {
    if constexpr (std::is_pointer_v<P>) {
        using E = std::remove_cv_t<std::remove_pointer_t<P>>;
        if constexpr (std::is_void_v<E>)
            return {sizeof(P), 'p', 0};
        else
            return {sizeof(P), 'p', sizeof(E)};
    } else if constexpr (std::is_floating_point_v<P>) {
        return {sizeof(P), 'f', 0};
    } else if constexpr (std::is_integral_v<P>) {
        return {sizeof(P), std::is_signed_v<P> ? 'i' : 'u', 0};
    } else {
        return {sizeof(P), 'o', 0};
    }
}

struct Kernel {
    const char* name;
    void (*run)(void* const* args);
    const Param* params;
    size_t param_count;
    std::atomic<uint64_t> executions{0};
};

// An `extern __shared__` array: its name and this OS thread's copy (CUDA_CPU_SHARED_AREA
// bytes, page-aligned).
struct SharedArray {
    const char* name;
    void* (*address)();
};

struct Module {
    const char* name;  // cuda/<name>.cu
    Kernel* kernels;
    size_t count;
    const SharedArray* shared;  // ends with a null entry
};

template <auto F> struct Entry;
template <typename... P, void (*F)(P...)> struct Entry<F> {
    static constexpr size_t count = sizeof...(P);
    static constexpr Param params[sizeof...(P) + 1] = {param<P>()..., Param{0, 0, 0}};
    template <size_t... I> static void call(void* const* args, std::index_sequence<I...>) {
        F(*static_cast<P*>(args[I])...);
    }
    static void run(void* const* args) { call(args, std::index_sequence_for<P...>{}); }
};

}  // namespace cuda_cpu

#define CUDA_CPU_KERNEL(f) \
    { #f, &cuda_cpu::Entry<&f>::run, cuda_cpu::Entry<&f>::params, cuda_cpu::Entry<&f>::count }
