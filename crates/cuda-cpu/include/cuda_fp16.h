// cuda_fp16.h for the CPU execution of cuda/*.cu: __half as its 16 bits, with CUDA's
// conversions (round to nearest even, gradual underflow, overflow to infinity; every NaN
// becomes the canonical 0x7fff, as in CUDA).
#pragma once
#include <stdint.h>
#include <string.h>

struct __half {
    uint16_t __x;
};

inline float __half2float(__half h) {
    uint32_t sign = (uint32_t)(h.__x & 0x8000u) << 16, exp = (h.__x >> 10) & 0x1fu, man = h.__x & 0x3ffu;
    uint32_t u;
    if (exp == 0x1f) {
        u = sign | 0x7f800000u | (man << 13);
    } else if (exp != 0) {
        u = sign | ((exp + 112) << 23) | (man << 13);
    } else {
        float sub = (float)man * 0x1p-24f;  // exact: man < 2^10
        memcpy(&u, &sub, 4);
        u |= sign;
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

inline __half __float2half_rn(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    const uint16_t sign = (x >> 16) & 0x8000u;
    x &= 0x7fffffffu;
    if (x > 0x7f800000u) return {0x7fff};
    if (x >= 0x477ff000u) return {(uint16_t)(sign | 0x7c00u)};  // >= 65520 rounds to infinity
    if (x >= 0x38800000u) {                                      // normal: >= 2^-14
        uint32_t r = x - 0x38000000u;                            // exponent bias 127 -> 15
        r += 0xfffu + ((r >> 13) & 1u);
        return {(uint16_t)(sign | (r >> 13))};
    }
    if (x <= 0x33000000u) return {sign};  // <= 2^-25: rounds to zero (the tie goes to even)
    // Subnormal: the result counts units of 2^-24.
    const uint32_t shift = 126 - (x >> 23), man = (x & 0x7fffffu) | 0x800000u;
    uint32_t q = man >> shift;
    const uint32_t rem = man & ((1u << shift) - 1), half_unit = 1u << (shift - 1);
    if (rem > half_unit || (rem == half_unit && (q & 1u))) ++q;
    return {(uint16_t)(sign | q)};
}
