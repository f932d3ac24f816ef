/* x86-64 with AVX2, FMA and F16C (Haswell, Zen and later), chosen at run time where the CPU has them. */
#include "simd.h"
#if KD_VECTOR_EXTENSIONS && KD_X86_64
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#else
#pragma GCC target("avx2,fma,f16c")
#endif
#define KD_LANES 4
#define KD_TARGET_ID avx2
#define KD_TARGET_LABEL "avx2+fma"
#include "target_impl.h"
#if defined(__clang__)
#pragma clang attribute pop
#endif
#endif
