/* One instruction-set target: the passes of every row of the dtype table (rows_impl.h), the finish,
 * and their kd_target.
 *
 * Included by target_<name>.c after it sets KD_LANES (doubles per vector), KD_TARGET_ID (a C
 * identifier) and KD_TARGET_LABEL (its name in show_config); KD_LIBM (scalar target): exp and log
 * from libm, one lane. */
#include <math.h>

#include "simd.h"
#include "vector_math.h"
#include "divergence_kl.h"

#define KD_STEP (2 * KD_LANES) /* classes per inner step: two vectors */
_Static_assert(KD_STEP <= KD_MAX_STEP, "KD_MAX_STEP must cover a step");
#define KD_BLOCK 256 /* classes per block: lane sums run over a block, then fold into the chunk */

/* Lane sums over one block. Short runs of plain additions, then a compensated fold per block,
 * keep the relative error of every sum within a few tens of eps for any row length. */
typedef struct {
    kd_vd zp, zq, gap, g;
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

static inline void kd_add_block(kd_row_sums *out, const kd_block_sums *block)
{
    kd_add_compensated(&out->zp, &out->zp_err, kd_lane_sum(block->zp));
    kd_add_compensated(&out->zq, &out->zq_err, kd_lane_sum(block->zq));
    kd_add_compensated(&out->gap, &out->gap_err, kd_lane_sum(block->gap));
    kd_add_compensated(&out->g, &out->g_err, kd_lane_sum(block->g));
}

/* True when every a = (t - t_max) / T and b = (s - s_max) / T of the row lies in [-700, 0], so
 * that the cheaper exp applies and every class is near. */
static inline int kd_is_moderate(const kd_row_range *range, double inv_T)
{
    return (range->t_min - range->t_max) * inv_T >= -700.0
        && (range->s_min - range->s_max) * inv_T >= -700.0;
}

/* A compensated sum's value; an inf or NaN total makes the error NaN, and the total is the answer. */
static inline double kd_sum_value(double total, double error)
{
    return isfinite(total) ? total + error : total;
}

/* The finish of one row (a long row's merged chunks), by the same lane arithmetic as short rows. */
static void kd_finish_row(const kd_row_sums *sums, kd_row_finish *out)
{
    kd_kl_finished lanes = kd_kl_finish_lanes(kd_splat(kd_sum_value(sums->zp, sums->zp_err)),
                                              kd_splat(kd_sum_value(sums->zq, sums->zq_err)),
                                              kd_splat(kd_sum_value(sums->gap, sums->gap_err)),
                                              kd_splat(kd_sum_value(sums->g, sums->g_err)));
    out->value = lanes.value[0];
    out->inv_zp = lanes.inv_zp[0];
    out->inv_zq = lanes.inv_zq[0];
    out->mean_gap = lanes.mean_gap[0];
    out->y = lanes.y[0];
    out->inv_one_plus_y = lanes.inv_one_plus_y[0];
}

#define KD_CAT_(a, b) a##_##b
#define KD_CAT(a, b) KD_CAT_(a, b)

/* The dtype table: one instantiation of rows_impl.h per input dtype. */
#define KD_DEREFERENCE(p) (*(p))
#define KD_NATIVE_RANGE 1
#define KD_SCALAR KD_DEREFERENCE
#define KD_EXP_FOR_DOUBLE 0
#define KD_OUT float
#define KD_REAL float
#define KD_FN(name) KD_CAT(name, f32)
#define KD_LOAD kd_load_f32
#define KD_LOAD_PARTIAL kd_load_partial_f32
#include "rows_impl.h"
#undef KD_REAL
#undef KD_FN
#undef KD_LOAD
#undef KD_LOAD_PARTIAL
#undef KD_EXP_FOR_DOUBLE
#undef KD_OUT

#define KD_EXP_FOR_DOUBLE 1
#define KD_OUT double
#define KD_REAL double
#define KD_FN(name) KD_CAT(name, f64)
#define KD_LOAD kd_load_f64
#define KD_LOAD_PARTIAL kd_load_partial_f64
#include "rows_impl.h"
#undef KD_REAL
#undef KD_FN
#undef KD_LOAD
#undef KD_LOAD_PARTIAL
#undef KD_EXP_FOR_DOUBLE
#undef KD_OUT
#undef KD_NATIVE_RANGE
#undef KD_SCALAR

/* 2-byte inputs: stored bits, widened in registers; float32 gradients, float32-level exp. */
#define KD_NATIVE_RANGE 0
#define KD_EXP_FOR_DOUBLE 0
#define KD_OUT float
#define KD_REAL uint16_t
#define KD_SCALAR(p) kd_float16_to_double(*(p))
#define KD_FN(name) KD_CAT(name, f16)
#define KD_LOAD kd_load_f16
#define KD_LOAD_PARTIAL kd_load_partial_f16
#include "rows_impl.h"
#undef KD_SCALAR
#undef KD_FN
#undef KD_LOAD
#undef KD_LOAD_PARTIAL

#define KD_SCALAR(p) kd_bfloat16_to_double(*(p))
#define KD_FN(name) KD_CAT(name, bf16)
#define KD_LOAD kd_load_bf16
#define KD_LOAD_PARTIAL kd_load_partial_bf16
#include "rows_impl.h"
#undef KD_SCALAR
#undef KD_FN
#undef KD_LOAD
#undef KD_LOAD_PARTIAL
#undef KD_REAL
#undef KD_OUT
#undef KD_EXP_FOR_DOUBLE
#undef KD_NATIVE_RANGE

#define KD_DTYPE_PASSES(suffix)                                                                    \
    {                                                                                              \
        KD_CAT(row_range, suffix), KD_CAT(row_sums, suffix), KD_CAT(short_rows, suffix),           \
            KD_CAT(row_gradient, suffix), KD_CAT(student_normaliser, suffix)                       \
    }

const kd_target KD_CAT(kd_target, KD_TARGET_ID) = {
    KD_TARGET_LABEL,
    {[KD_FLOAT32] = KD_DTYPE_PASSES(f32), [KD_FLOAT64] = KD_DTYPE_PASSES(f64),
     [KD_FLOAT16] = KD_DTYPE_PASSES(f16), [KD_BFLOAT16] = KD_DTYPE_PASSES(bf16)},
    kd_finish_row,
};
