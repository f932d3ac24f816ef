/* One instruction-set target: the passes for float32 and float64 rows (chunk_impl.h: the loss;
 * gradient_impl.h: the gradient), and their kd_target.
 *
 * Included by target_<name>.c after it sets KD_LANES (doubles per vector), KD_TARGET_ID (a C
 * identifier) and KD_TARGET_LABEL (its name in show_config). */
#include <math.h>

#include "simd.h"
#include "vector_math.h"

#define KD_STEP (2 * KD_LANES) /* classes per inner step: two vectors */
_Static_assert(KD_STEP <= KD_MAX_STEP, "KD_MAX_STEP must cover a step");
#define KD_BLOCK 256 /* classes per block: lane sums run over a block, then fold into the chunk */

/* Lane sums over one block. Short runs of plain additions, then a compensated fold per block,
 * keep the relative error of every sum within a few tens of eps for any row length. */
typedef struct {
    kd_vi top_t, top_s;  /* classes at the maximum, counted per lane */
    kd_vd rest_t, rest_s, gap, scale;
} kd_block_sums;

/* *sum + *err += x (Neumaier's compensated summation). */
static inline void kd_add_compensated(double *sum, double *err, double x)
{
    double total = *sum + x;
    *err += fabs(*sum) >= fabs(x) ? (*sum - total) + x : (x - total) + *sum;
    *sum = total;
}

static inline double kd_lane_count(kd_vi v)
{
    int64_t lanes[KD_LANES], total = 0;
    memcpy(lanes, &v, sizeof lanes);
    for (int i = 0; i < KD_LANES; i++)
        total += lanes[i];
    return (double)total;
}

static inline void kd_add_block(kd_chunk_stats *out, const kd_block_sums *block)
{
    out->top_t += kd_lane_count(block->top_t);
    out->top_s += kd_lane_count(block->top_s);
    kd_add_compensated(&out->rest_t, &out->rest_t_err, kd_lane_sum(block->rest_t));
    kd_add_compensated(&out->rest_s, &out->rest_s_err, kd_lane_sum(block->rest_s));
    kd_add_compensated(&out->gap, &out->gap_err, kd_lane_sum(block->gap));
    out->gap_scale -= kd_lane_sum(block->scale); /* a, b <= 0: this adds e^a (|a| + |b|) */
}

/* True when every a = (t - t_max) / T and b = (s - s_max) / T of the row lies in [-700, 0], so
 * that the cheaper exp applies and no class is masked. */
static inline int kd_is_moderate(const kd_row_range *range, double inv_T)
{
    return (range->t_min - range->t_max) * inv_T >= -700.0
        && (range->s_min - range->s_max) * inv_T >= -700.0;
}

/* KL per lane from the sums of one row per lane, as the scalar kl_from_sums computes it, with
 * the logs vectorised: NaN in the lanes that the scalar code must finish (any NaN, and KL below
 * KD_EXACT_PATH_RATIO of the terms it subtracts). log(top + rest) is corrected for the rounding
 * of top + rest, so it is as accurate as log1p(rest) where one class dominates. */
static inline kd_vd kd_finish_kl(kd_vi top_t, kd_vi top_s, kd_vd rest_t, kd_vd rest_s, kd_vd gap,
                                 kd_vd scale)
{
    const kd_vd count_t = __builtin_convertvector(top_t, kd_vd), count_s = __builtin_convertvector(top_s, kd_vd);
    const kd_vd z_t = count_t + rest_t, z_s = count_s + rest_s;
    const kd_vd log_zt = kd_log_at_least_one(z_t) + (rest_t - (z_t - count_t)) / z_t;
    const kd_vd log_zs = kd_log_at_least_one(z_s) + (rest_s - (z_s - count_s)) / z_s;
    const kd_vd kl = gap / z_t - log_zt + log_zs;
    const kd_vd magnitude = -scale / z_t + log_zt + log_zs;
    const kd_vi settled = ((kl > magnitude * KD_EXACT_PATH_RATIO) | (kl == INFINITY))
                        & (rest_t == rest_t) & (rest_s == rest_s);
    return kd_select(settled, kl, kd_splat(NAN));
}

#define KD_CAT_(a, b) a##_##b
#define KD_CAT(a, b) KD_CAT_(a, b)

#define KD_REAL float
#define KD_FN(name) KD_CAT(name, f32)
#define KD_LOAD kd_load_f32
#define KD_LOAD_PARTIAL kd_load_partial_f32
#define KD_EXP_FOR_DOUBLE 0
#include "chunk_impl.h"
#include "gradient_impl.h"
#undef KD_REAL
#undef KD_FN
#undef KD_LOAD
#undef KD_LOAD_PARTIAL
#undef KD_EXP_FOR_DOUBLE

#define KD_REAL double
#define KD_FN(name) KD_CAT(name, f64)
#define KD_LOAD kd_load_f64
#define KD_LOAD_PARTIAL kd_load_partial_f64
#define KD_EXP_FOR_DOUBLE 1
#include "chunk_impl.h"
#include "gradient_impl.h"
#undef KD_REAL
#undef KD_FN
#undef KD_LOAD
#undef KD_LOAD_PARTIAL
#undef KD_EXP_FOR_DOUBLE

const kd_target KD_CAT(kd_target, KD_TARGET_ID) = {
    KD_TARGET_LABEL, row_range_f32, row_range_f64, chunk_stats_f32, chunk_stats_f64,
    short_rows_f32, short_rows_f64, row_gradient_f32, row_gradient_f64, student_normaliser_f32,
    student_normaliser_f64,
};
