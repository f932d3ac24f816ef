/* Run-time choice of the instruction-set target (numpy does the same for its SIMD loops). */
#include <string.h>

#include "simd.h"

#if KD_VECTOR_EXTENSIONS
extern const kd_target kd_target_scalar, kd_target_baseline;
#if KD_X86_64
extern const kd_target kd_target_avx2, kd_target_avx512;
#endif
#endif

/* The target of that name, if this build holds it and this CPU runs it. */
static const kd_target *kd_find(const char *name, int *found)
{
    *found = 1;
#if KD_VECTOR_EXTENSIONS
    if (strcmp(name, "scalar") == 0)
        return &kd_target_scalar;
    if (strcmp(name, "baseline") == 0)
        return &kd_target_baseline;
#if KD_X86_64
    __builtin_cpu_init();
    /* F16C (float16 loads) came with every AVX2 CPU; it is checked all the same. */
    if (strcmp(name, "avx2") == 0 && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")
        && __builtin_cpu_supports("f16c"))
        return &kd_target_avx2;
    if (strcmp(name, "avx512") == 0 && __builtin_cpu_supports("avx512f")
        && __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl")
        && __builtin_cpu_supports("f16c"))
        return &kd_target_avx512;
#endif
#endif
    *found = 0;
    return NULL;
}

static const char *const kd_target_names[] = {"scalar", "baseline", "avx2", "avx512"};
#define KD_TARGET_COUNT (sizeof kd_target_names / sizeof kd_target_names[0])

const kd_target *kd_active_target = NULL;

int kd_select_target(const char *name)
{
    int found;
    if (strcmp(name, "auto") == 0) {
        for (int i = KD_TARGET_COUNT - 1; i >= 0; i--) {
            const kd_target *target = kd_find(kd_target_names[i], &found);
            if (found) {
                kd_active_target = target;
                return 0;
            }
        }
    }
    const kd_target *target = kd_find(name, &found);
    if (!found)
        return -1;
    kd_active_target = target;
    return 0;
}

const char *kd_available_targets(void)
{
    static char names[64];
    int found;
    names[0] = '\0';
    for (size_t i = 0; i < KD_TARGET_COUNT; i++) {
        kd_find(kd_target_names[i], &found);
        if (found) {
            if (names[0])
                strcat(names, " ");
            strcat(names, kd_target_names[i]);
        }
    }
    return names;
}
