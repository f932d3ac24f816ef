/* One instruction-set target: for every row of the divergence table, the passes of every row of
 * the dtype table (rows_impl.h), its finish and its class gradient; and their kd_target.
 *
 * Included by target_<name>.c after it sets KD_LANES (doubles per vector), KD_TARGET_ID (a C
 * identifier) and KD_TARGET_LABEL (its name in show_config); KD_LIBM (scalar target): exp and log
 * from libm, one lane. */
#include <float.h>
#include <math.h>

#include "simd.h"
#include "vector_math.h"

#define KD_STEP (2 * KD_LANES) /* classes per inner step: two vectors */
_Static_assert(KD_STEP <= KD_MAX_STEP, "KD_MAX_STEP must cover a step");

#include "vector_single.h"
#include "divergence_kl.h"
#include "divergence_mixture.h"
#include "divergence_tvd.h"
#define KD_BLOCK 256 /* classes per block: lane sums run over a block, then fold into the chunk */

/* Lane sums over one block. Short runs of plain additions, then a compensated fold per block,
 * keep the relative error of every sum within a few tens of eps for any row length. */
typedef struct {
    kd_vd sum[KD_MAX_SUMS];
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

static inline void kd_add_block(kd_row_sums *out, const kd_block_sums *block, const int count)
{
    for (int k = 0; k < count; k++)
        kd_add_compensated(&out->sum[k], &out->err[k], kd_lane_sum(block->sum[k]));
}

/* Folds candidate maxima and minima into a row's extrema (NaN never wins a comparison). */
static inline void kd_range_fold(kd_row_range *r, double t_max, double s_max, double t_min, double s_min)
{
    r->t_max = t_max > r->t_max ? t_max : r->t_max;
    r->s_max = s_max > r->s_max ? s_max : r->s_max;
    r->t_min = t_min < r->t_min ? t_min : r->t_min;
    r->s_min = s_min < r->s_min ? s_min : r->s_min;
}

/* The student logit the divergence's b = (s - s_ref) / T is measured from: s_max, unless the driver
 * recentred the row (kd_row_finish.recentre). The modes' range checks keep s_max: a recentred
 * reference is within 4 T of it, inside their margins. */
static inline double kd_student_reference(const kd_row_range *range)
{
    return range->recentred ? range->s_ref : range->s_max;
}

/* True when every a = (t - t_max) / T of the row (the teacher's side) or every b = (s - s_max) / T
 * (the student's) lies in [low, 0]. */
static inline int kd_teacher_within(const kd_row_range *range, double inv_T, double low)
{
    return (range->t_min - range->t_max) * inv_T >= low;
}

static inline int kd_student_within(const kd_row_range *range, double inv_T, double low)
{
    return (range->s_min - range->s_max) * inv_T >= low;
}

/* True when every a and b of the row lies in [-700, 0], so that the cheaper exp applies and every
 * class is near. */
static inline int kd_is_moderate(const kd_row_range *range, double inv_T)
{
    return kd_teacher_within(range, inv_T, -700.0) && kd_student_within(range, inv_T, -700.0);
}

/* True when every a and b of the row lies in [-80, 0], where every exponential is a normal float32:
 * the range of the float32 terms (vector_single.h) for inputs of float precision or less. */
static inline int kd_is_single_moderate(const kd_row_range *range, double inv_T)
{
    return kd_teacher_within(range, inv_T, -80.0) && kd_student_within(range, inv_T, -80.0);
}

/* True when the row's largest logits are at least 2^-20 T in magnitude. The float32 terms hold
 * a class's share of KL, about P d^2 / 2, only while d^2 stays in float32's normal range; where
 * every logit is tiny beside T (T above ~1e18 for logits of order 1, or logits of ~1e-30 at T = 1)
 * every d is too (measured: KL 0.0 where it is 1e-49 at T = 1e22), and the row takes the double
 * terms. The finite extrema count (a masked row's minimum is -inf). */
static inline int kd_single_resolves(const kd_row_range *range, double inv_T)
{
    double largest = fmax(fabs(range->t_max), fabs(range->s_max));
    if (isfinite(range->t_min))
        largest = fmax(largest, fabs(range->t_min));
    if (isfinite(range->s_min))
        largest = fmax(largest, fabs(range->s_min));
    return largest * inv_T >= 0x1p-20;
}

/* The mode of the sums' pass for a row with these extrema: moderate; masked (some -inf logits, both
 * maxima finite: tried first, and a chunk whose finite logits leave the cheap range is redone in
 * the general mode), of the teacher only where the student's logits are all in the cheap range,
 * or of both sides at the same classes where both hold -inf (tried first: a chunk where the masks
 * differ is redone in the masked mode); or general. */
static inline int kd_row_mode(const kd_row_range *range, double inv_T)
{
    if (kd_is_moderate(range, inv_T))
        return KD_MODERATE;
    if ((range->t_min == -INFINITY || range->s_min == -INFINITY) && isfinite(range->t_max)
        && isfinite(range->s_max)) {
        if (range->t_min == -INFINITY && range->s_min == -INFINITY)
            return KD_SAME_MASK;
        return kd_student_within(range, inv_T, -700.0) ? KD_MASKED_TEACHER : KD_MASKED;
    }
    return KD_GENERAL;
}

/* KD_SAME_MASK's lower bound on a finite class's a and b in double lanes: within the moderate
 * terms' range, and where a recentred student reference (up to 4 T above s_max) leaves
 * d = a - b >= -700, so that every class it admits is near in every mode, and the kept values
 * mean the same whichever mode a chunk took. */
#define KD_SAME_MASK_LOW (-696.0)
/* ... and in float32 lanes (the float32 terms' range is [-80, 0]) */
#define KD_SAME_MASK_LOW_SINGLE (-79.0)

/* A KD_SAME_MASK row's constants: the logits its stand-ins take (the teacher's maximum and the
 * student's reference), and on each side the least logit x with (x - x_max) / T >= the mode's
 * bound, so that the range test of a class is one comparison per side. */
typedef struct {
    double t_max, s_ref, t_low, s_low;
} kd_same_mask_row;

/* The least logit whose a (or b) from x_max is at least KD_SAME_MASK_LOW, rounded up (a class
 * below the bound is never admitted); +inf where it overflows, so that every finite class takes
 * another mode. */
static inline double kd_same_mask_low(double x_max, double inv_T)
{
    const double bound = x_max + KD_SAME_MASK_LOW / inv_T;
    return bound > -INFINITY ? nextafter(bound, INFINITY) : INFINITY;
}

/* The constants of a row in a mode: zeros unless KD_SAME_MASK, the only mode that reads them. */
static inline kd_same_mask_row kd_same_mask_row_of(int mode, double t_max, double s_ref, double inv_T)
{
    const kd_same_mask_row none = {0}, row = {t_max, s_ref, kd_same_mask_low(t_max, inv_T),
                                              kd_same_mask_low(s_ref, inv_T)};
    return mode == KD_SAME_MASK ? row : none;
}

/* KD_SAME_MASK: the classes of a vector as the moderate terms take them. A class both sides mask
 * stands in as a class at both maxima, whose terms are finite (the caller gives them weight 0);
 * returns those lanes. The lanes where one side masks alone, or a finite logit is below its bound
 * (or NaN: it fails every comparison), join *misfit: the caller then takes them in a mode that
 * handles them. */
KD_INLINE kd_vi kd_same_mask_stand_in(kd_vd *t, kd_vd *s, const kd_same_mask_row *row, kd_vi *misfit)
{
    kd_vi masked = *t == -INFINITY;
    const kd_vi both_masked = masked & (*s == -INFINITY);
    *misfit |= ~(both_masked | ((*t >= row->t_low) & (*s >= row->s_low)));
#if defined(__GNUC__) && !defined(__clang__) && !defined(__AVX__)
    /* (GCC 12 stops with an internal error on the selects below in the portable target's double
     * lanes, two SSE registers each, unless the mask is opaque to it) */
    __asm__("" : "+m"(masked));
#endif
    *t = kd_select(masked, kd_splat(row->t_max), *t);
    *s = kd_select(masked, kd_splat(row->s_ref), *s);
    return masked;
}

/* How the passes after the sums' (gradient, second sums) take a vector of a KD_SAME_MASK row, whose
 * logits are *t, *s and e^a ea: returns the mode of its arithmetic (KD_MODERATE, or KD_GENERAL
 * where a class does not fit the same-mask mode), with *t, *s the logits to take it at and *kept
 * the lanes whose results count. KD_SAME_MASK_FITS (the sums' pass fitted every class): the
 * logits as they are, and e^a > 0 marks the classes both sides allow. */
KD_INLINE int kd_same_mask_lanes(kd_vd *t, kd_vd *s, kd_vd ea, const kd_same_mask_row *row, const int mode,
                                 kd_vi *kept)
{
    if (mode == KD_SAME_MASK_FITS) {
        *kept = ea != 0.0;
        return KD_MODERATE;
    }
    kd_vd t_in = *t, s_in = *s;
    kd_vi misfit = (kd_vi)kd_splat(0.0);
    *kept = ~kd_same_mask_stand_in(&t_in, &s_in, row, &misfit);
    if (kd_any(misfit)) {
        *kept = ~(kd_vi)kd_splat(0.0);
        return KD_GENERAL;
    }
    *t = t_in;
    *s = s_in;
    return KD_MODERATE;
}

#if !KD_LIBM
/* The same in float32 lanes. */
typedef struct {
    kd_vs t_max, s_ref, t_low, s_low;
} kd_same_mask_single_row;

/* kd_same_mask_low for a float32 logit, with KD_SAME_MASK_LOW_SINGLE: rounded up to a float, so
 * that x >= it is x >= the bound; +inf where it leaves float's range */
static inline float kd_same_mask_low_single(float x_max, double inv_T)
{
    const double bound = (double)x_max + KD_SAME_MASK_LOW_SINGLE / inv_T;
    if (!(bound >= -FLT_MAX))
        return INFINITY;
    float rounded = (float)bound;
    if ((double)rounded < bound)
        rounded = nextafterf(rounded, INFINITY);
    return rounded;
}

static inline kd_same_mask_single_row kd_same_mask_single_row_of(int mode, double t_max, double s_ref,
                                                                 double inv_T)
{
    const float t_top = (float)t_max, s_top = (float)s_ref; /* exact: the row's own values */
    const kd_same_mask_single_row none = {{0}};
    if (mode != KD_SAME_MASK)
        return none;
    const kd_same_mask_single_row row = {kd_splat_single(t_top), kd_splat_single(s_top),
                                         kd_splat_single(kd_same_mask_low_single(t_top, inv_T)),
                                         kd_splat_single(kd_same_mask_low_single(s_top, inv_T))};
    return row;
}

KD_INLINE kd_vsi kd_same_mask_stand_in_single(kd_vs *t, kd_vs *s, const kd_same_mask_single_row *row,
                                              kd_vsi *misfit)
{
    const kd_vsi masked = *t == -INFINITY;
    const kd_vsi both_masked = masked & (*s == -INFINITY);
    *misfit |= ~(both_masked | ((*t >= row->t_low) & (*s >= row->s_low)));
    *t = kd_select_single(masked, row->t_max, *t);
    *s = kd_select_single(masked, row->s_ref, *s);
    return masked;
}
#endif

/* A compensated sum's value; an inf or NaN total makes the error NaN, and the total is the answer. */
static inline double kd_sum_value(double total, double error)
{
    return isfinite(total) ? total + error : total;
}

#define KD_CAT_(a, b) a##_##b
#define KD_CAT(a, b) KD_CAT_(a, b)
#define KD_CAT3_(a, b, c) a##_##b##_##c
#define KD_CAT3(a, b, c) KD_CAT3_(a, b, c)

/* The divergence table: each row's header, then its passes for every dtype (dtype_rows.h), its
 * finish and class gradient. */
#define KD_DIV_SUFFIX kl
#define KD_DIV(name) kd_kl_##name
#define KD_DIV_SUMS KD_KL_SUMS
#define KD_DIV_SECOND_SUMS 0
#define KD_DIV_SINGLE 1
#define KD_DIV_SINGLE_STUDENT_MASKED 1
#define KD_DIV_SINGLE_SECOND 0
#include "dtype_rows.h"
#undef KD_DIV_SUFFIX
#undef KD_DIV
#undef KD_DIV_SUMS
#undef KD_DIV_SECOND_SUMS
#undef KD_DIV_SINGLE
#undef KD_DIV_SINGLE_STUDENT_MASKED
#undef KD_DIV_SINGLE_SECOND

#define KD_DIV_SUFFIX mixture
#define KD_DIV(name) kd_mix_##name
#define KD_DIV_SUMS KD_KL_SUMS
#define KD_DIV_SECOND_SUMS 4 /* a number for #if */
/* The second pass weighs log(M / Q) through each normaliser separately: a float32 first pass
 * (errors of 1e-7 in Z_P and Z_Q) would move a value far below its terms by 1e-6 of itself and
 * more (measured: 3.7e-6 for skew_reverse_kl, beta 0.9). Tried again beside the float32 second
 * pass: values within 1.9e-7 on 1000-class rows, but a gradient 4.4 float32 ulp of its row's
 * largest entry off, for 6% less time. */
#define KD_DIV_SINGLE 0
#define KD_DIV_SINGLE_STUDENT_MASKED 0
/* its second pass's central classes in float32 lanes, from the double first pass's rho */
#define KD_DIV_SINGLE_SECOND 1
#define KD_DIV_SINGLE_SECOND_VARIANTS KD_MIX_SINGLE_SECOND_VARIANTS
_Static_assert(KD_DIV_SECOND_SUMS == KD_MIX_SUMS, "KD_DIV_SECOND_SUMS");
#include "dtype_rows.h"
#undef KD_DIV_SUFFIX
#undef KD_DIV
#undef KD_DIV_SUMS
#undef KD_DIV_SECOND_SUMS
#undef KD_DIV_SINGLE
#undef KD_DIV_SINGLE_STUDENT_MASKED
#undef KD_DIV_SINGLE_SECOND
#undef KD_DIV_SINGLE_SECOND_VARIANTS

#define KD_DIV_SUFFIX tvd
#define KD_DIV(name) kd_tvd_##name
#define KD_DIV_SUMS KD_KL_SUMS
#define KD_DIV_SECOND_SUMS 3
/* P - Q from e^-d - 1 and y is accurate relative to itself, and a class the teacher masks takes
 * its Q from e^b with b to double's accuracy (kd_kl_single_accurate). Rows where the student
 * masks stay in double: such a class's P (from e^a, not shared with Q) was off by 6e-8 |a| of
 * itself when a was rounded to float32; a is now as accurate as b, and the float32 pass for
 * them has not been measured since. */
#define KD_DIV_SINGLE 1
#define KD_DIV_SINGLE_STUDENT_MASKED 0
#define KD_DIV_SINGLE_SECOND 0
_Static_assert(KD_DIV_SECOND_SUMS == KD_TVD_SUMS, "KD_DIV_SECOND_SUMS");
#include "dtype_rows.h"
#undef KD_DIV_SUFFIX
#undef KD_DIV
#undef KD_DIV_SUMS
#undef KD_DIV_SECOND_SUMS
#undef KD_DIV_SINGLE
#undef KD_DIV_SINGLE_STUDENT_MASKED
#undef KD_DIV_SINGLE_SECOND

/* The passes of one dtype; second: the second pass's sums, or NULL (one-pass divergences). */
#define KD_DTYPE_PASSES(dtype, div, second)                                                        \
    {                                                                                              \
        KD_CAT3(row_range, dtype, div), KD_CAT3(row_sums, dtype, div),                             \
            KD_CAT3(short_rows, dtype, div), KD_CAT3(row_gradient, dtype, div),                    \
            KD_CAT3(student_normaliser, dtype, div), second                                        \
    }
#define KD_ONE_PASS(dtype, div) KD_DTYPE_PASSES(dtype, div, NULL)
#define KD_TWO_PASSES(dtype, div) KD_DTYPE_PASSES(dtype, div, KD_CAT3(second_sums, dtype, div))
#define KD_DIVERGENCE_PASSES(div, passes, second_finish)                                           \
    {                                                                                              \
        {[KD_FLOAT32] = passes(f32, div), [KD_FLOAT64] = passes(f64, div),                         \
         [KD_FLOAT16] = passes(f16, div), [KD_BFLOAT16] = passes(bf16, div)},                      \
            KD_CAT(finish_rows, div), second_finish, KD_CAT(class_gradient, div)                   \
    }

#include "sparse_impl.h"

const kd_target KD_CAT(kd_target, KD_TARGET_ID) = {
    KD_TARGET_LABEL,
    {
        [KD_KL] = KD_DIVERGENCE_PASSES(kl, KD_ONE_PASS, NULL),
        [KD_MIXTURE] = KD_DIVERGENCE_PASSES(mixture, KD_TWO_PASSES, second_finish_row_mixture),
        [KD_TVD] = KD_DIVERGENCE_PASSES(tvd, KD_TWO_PASSES, second_finish_row_tvd),
    },
    {
        [KD_FLOAT32] = {sparse_rest_f32, sparse_gradient_f32},
        [KD_FLOAT64] = {sparse_rest_f64, sparse_gradient_f64},
    },
};
