/* The portable target: the architecture's baseline (SSE2 on x86-64, NEON on arm64). Two lanes of
 * doubles, four of floats: one register each. Four lanes, which GCC splits across two registers
 * by hand, took 1.6 to 2.6x as long to run and three times as long to compile (BENCHMARKS.md). */
#include "simd.h"
#if KD_VECTOR_EXTENSIONS
#define KD_LANES 2
#define KD_TARGET_ID baseline
#define KD_TARGET_LABEL "baseline"
#include "target_impl.h"
#endif
