// cuda_bf16.h for the CPU execution of cuda/*.cu: __nv_bfloat16 as its 16 bits, with CUDA's
// conversions (round to nearest even; every NaN becomes the canonical 0x7fff, as in CUDA;
// half::bf16::from_f32 differs only there, keeping the NaN's payload).
#pragma once
#include <stdint.h>
#include <string.h>

struct __nv_bfloat16 {
    uint16_t __x;
};

inline float __bfloat162float(__nv_bfloat16 h) {
    uint32_t u = (uint32_t)h.__x << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

inline __nv_bfloat16 __float2bfloat16_rn(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return {0x7fff};
    u += 0x7fffu + ((u >> 16) & 1u);
    return {(uint16_t)(u >> 16)};
}
