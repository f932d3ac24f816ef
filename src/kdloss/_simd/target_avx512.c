/* x86-64 with AVX-512 (F, DQ, VL), chosen at run time where the CPU has it: eight doubles a vector. */
#include "simd.h"
#if KD_VECTOR_EXTENSIONS && KD_X86_64
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512dq,avx512vl,avx2,fma,f16c"))), apply_to = function)
#else
#pragma GCC target("avx512f,avx512dq,avx512vl,avx2,fma,f16c")
#endif
#define KD_LANES 8
#define KD_TARGET_ID avx512
#define KD_TARGET_LABEL "avx512"
#include "target_impl.h"
#if defined(__clang__)
#pragma clang attribute pop
#endif
#endif
