/* One row of the divergence table on one target: rows_impl.h for every row of the dtype table, the
 * finish of a row's sums and the student gradient at one class, and the macro that lists them.
 *
 * Included by target_impl.h once per divergence, with KD_DIV(name) (its functions, e.g.
 * kd_kl_name), KD_DIV_SUFFIX (a C identifier) and KD_DIV_SUMS (how many row sums it keeps). */

#define KD_DEREFERENCE(p) (*(p))
#define KD_NATIVE_RANGE 1
#define KD_SCALAR KD_DEREFERENCE
#define KD_EXP_FOR_DOUBLE 0
#define KD_OUT float
#define KD_REAL float
#define KD_FN(name) KD_CAT3(name, f32, KD_DIV_SUFFIX)
#define KD_LOAD kd_load_f32
#define KD_LOAD_PARTIAL kd_load_partial_f32
#define KD_LOAD_SINGLE kd_load_single_f32
#define KD_LOAD_PARTIAL_SINGLE kd_load_partial_single_f32
#include "rows_impl.h"
#undef KD_REAL
#undef KD_FN
#undef KD_LOAD
#undef KD_LOAD_PARTIAL
#undef KD_LOAD_SINGLE
#undef KD_LOAD_PARTIAL_SINGLE
#undef KD_EXP_FOR_DOUBLE
#undef KD_OUT

#define KD_EXP_FOR_DOUBLE 1
#define KD_OUT double
#define KD_REAL double
#define KD_FN(name) KD_CAT3(name, f64, KD_DIV_SUFFIX)
#define KD_LOAD kd_load_f64
#define KD_LOAD_PARTIAL kd_load_partial_f64
#include "rows_impl.h"
#undef KD_REAL
#undef KD_FN
#undef KD_LOAD
#undef KD_LOAD_PARTIAL
#undef KD_LOAD_SINGLE
#undef KD_LOAD_PARTIAL_SINGLE
#undef KD_EXP_FOR_DOUBLE
#undef KD_OUT
#undef KD_NATIVE_RANGE
#undef KD_SCALAR

/* 2-byte inputs: stored bits, widened in registers; float32 gradients, float32-level exp. */
#define KD_NATIVE_RANGE 0
#define KD_EXP_FOR_DOUBLE 0
#define KD_OUT float
#define KD_REAL uint16_t
#define KD_SCALAR(p) kd_f16_value(*(p))
#define KD_FN(name) KD_CAT3(name, f16, KD_DIV_SUFFIX)
#define KD_LOAD kd_load_f16
#define KD_LOAD_PARTIAL kd_load_partial_f16
#define KD_LOAD_SINGLE kd_load_single_f16
#define KD_LOAD_PARTIAL_SINGLE kd_load_partial_single_f16
#include "rows_impl.h"
#undef KD_SCALAR
#undef KD_FN
#undef KD_LOAD
#undef KD_LOAD_PARTIAL
#undef KD_LOAD_SINGLE
#undef KD_LOAD_PARTIAL_SINGLE

#define KD_SCALAR(p) kd_bfloat16_to_double(*(p))
#define KD_FN(name) KD_CAT3(name, bf16, KD_DIV_SUFFIX)
#define KD_LOAD kd_load_bf16
#define KD_LOAD_PARTIAL kd_load_partial_bf16
#define KD_LOAD_SINGLE kd_load_single_bf16
#define KD_LOAD_PARTIAL_SINGLE kd_load_partial_single_bf16
#include "rows_impl.h"
#undef KD_SCALAR
#undef KD_FN
#undef KD_LOAD
#undef KD_LOAD_PARTIAL
#undef KD_LOAD_SINGLE
#undef KD_LOAD_PARTIAL_SINGLE
#undef KD_REAL
#undef KD_OUT
#undef KD_EXP_FOR_DOUBLE
#undef KD_NATIVE_RANGE


/* The finish of `count` rows (each a row's merged chunks), KD_LANES at a time, one row per lane:
 * the same lane arithmetic as short rows, so a row's bits do not depend on the rows beside it.
 * Spare lanes repeat the group's first row. */
static void KD_CAT(finish_rows, KD_DIV_SUFFIX)(const kd_row_sums *sums, int count, const double *weights,
                                               kd_row_finish *out)
{
    for (int first = 0; first < count; first += KD_LANES) {
        kd_vd lanes[KD_DIV_SUMS];
        for (int k = 0; k < KD_DIV_SUMS; k++) {
            double values[KD_LANES];
            for (int lane = 0; lane < KD_LANES; lane++) {
                const kd_row_sums *row = &sums[first + lane < count ? first + lane : first];
                values[lane] = kd_sum_value(row->sum[k], row->err[k]);
            }
            memcpy(&lanes[k], values, sizeof values);
        }
        const KD_DIV(finished) finished = KD_DIV(finish_lanes)(lanes, weights);
        for (int lane = 0; lane < KD_LANES && first + lane < count; lane++) {
            KD_DIV(finish_store)(&finished, lane, &out[first + lane]);
            out[first + lane].same_mask_fits = sums[first + lane].same_mask == 1;
        }
    }
}

#if KD_DIV_SECOND_SUMS
/* The finish of the second pass's sums (merged over a row's chunks) into the row's finish. */
static void KD_CAT(second_finish_row, KD_DIV_SUFFIX)(const kd_row_sums *sums, kd_row_finish *out)
{
    kd_vd lanes[KD_DIV_SECOND_SUMS];
    for (int k = 0; k < KD_DIV_SECOND_SUMS; k++)
        lanes[k] = kd_splat(kd_sum_value(sums->sum[k], sums->err[k]));
    KD_DIV(finished) finished = KD_DIV(finish_splat)(out);
    KD_DIV(second_finish_lanes)(&finished, lanes);
    KD_DIV(finish_store)(&finished, 0, out);
}
#endif

/* dD/ds at one class (Q - P for KL), by the gradient pass's arithmetic (float64 logits). */
static double KD_CAT(class_gradient, KD_DIV_SUFFIX)(const kd_grad_row *row, double t, double s,
                                                   double kept_a, double kept_w)
{
    const KD_DIV(finished) finish = KD_DIV(finish_splat)(&row->finish);
    const KD_DIV(row) constants = KD_DIV(row_constants)(row->range.t_max, kd_student_reference(&row->range),
                                                        row->inv_T);
    kd_vd q_minus_p, teacher_direction, q;
    KD_DIV(gradient_lanes)(kd_splat(t), kd_splat(s), kd_splat(kept_a), kd_splat(kept_w), &constants,
                           &finish, 0, 1, &q_minus_p, &teacher_direction, &q);
    return q_minus_p[0];
}
