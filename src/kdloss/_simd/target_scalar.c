/* The scalar target: one lane, libm's exp and log. The reference the vector targets are tested
 * against, and the only target of compilers without GCC/Clang vector extensions. */
#include "simd.h"
#if KD_VECTOR_EXTENSIONS
#define KD_LANES 1
#define KD_LIBM 1
#define KD_TARGET_ID scalar
#define KD_TARGET_LABEL "scalar"
#include "target_impl.h"
#endif
