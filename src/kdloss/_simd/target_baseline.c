/* The portable target: the architecture's baseline (SSE2 on x86-64, NEON on arm64). */
#include "simd.h"
#if KD_VECTOR_EXTENSIONS
#define KD_LANES 4
#define KD_TARGET_ID baseline
#define KD_TARGET_LABEL "baseline"
#include "target_impl.h"
#endif
