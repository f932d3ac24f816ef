/* The vectorised half of the kdloss kernel, as Cython sees it.
 *
 * Two passes over a chunk of one row (at most KD_CHUNK classes), compiled once per instruction
 * set and chosen at run time (dispatch.c). Every target computes the same quantities in the
 * same order of blocks; targets differ only in vector width and in FMA contraction, so results
 * are bitwise identical for any thread count on one machine, and agree to rounding across
 * machines.
 *
 * Contract (the Cython layer keeps it): n >= 1, rows contiguous, inv_T finite and > 0, the
 * range passed to stats the exact extrema of the whole row (over all its chunks). Special values need no
 * care here: a NaN, +inf, or all -inf row makes the statistics NaN, and the caller then
 * recomputes that row on the scalar path, which decides its documented value.
 */
#ifndef KDLOSS_SIMD_H
#define KDLOSS_SIMD_H

#include <stddef.h>

/* The vector code is written in GCC/Clang vector extensions (with __builtin_convertvector:
 * GCC 9, Clang 3.7); other compilers get the scalar path. */
#if defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 9)
#define KD_VECTOR_EXTENSIONS 1
#else
#define KD_VECTOR_EXTENSIONS 0
#endif
#if defined(__x86_64__)
#define KD_X86_64 1
#else
#define KD_X86_64 0
#endif

/* Classes per chunk. A row longer than this is reduced chunk by chunk, in order; a few long rows
 * are split across threads at the same boundaries, so the split cannot change a bit. */
#define KD_CHUNK 16384

/* The fast evaluation of KL subtracts terms of size `magnitude`; its relative error is about
 * eps * magnitude / KL. Rows whose KL is below magnitude * KD_EXACT_PATH_RATIO take the
 * cancellation-free (exact) path, which keeps ~1e-15 relative accuracy down to KL = 0. */
#define KD_EXACT_PATH_RATIO (1.0 / 1024.0)

/* The most classes a vector step takes (two vectors of 8 doubles, AVX-512): padding a row's
 * kept exponentials by this much leaves room for the step that takes its last classes. */
#define KD_MAX_STEP 16

/* Rows of at most this many classes go through short_rows, one row per vector lane. */
#define KD_SHORT_ROW 64

/* Extrema of a row (NaN ignored). */
typedef struct {
    double t_max, s_max, t_min, s_min;
} kd_row_range;

/* Sums over one chunk, with a = (t - t_max) / T and b = (s - s_max) / T (so a, b <= 0). Each
 * normaliser is kept as (classes at the maximum, where e^0 = 1 exactly) + (the rest), so that
 * log Z stays accurate when one class dominates and Z is 1 + tiny. Sums are compensated: *_err
 * holds what rounding took from the sum beside it. */
typedef struct {
    double top_t, top_s;           /* number of classes with a == 0, with b == 0 */
    double rest_t, rest_t_err;     /* sum of e^a over classes with a != 0 */
    double rest_s, rest_s_err;     /* sum of e^b over classes with b != 0 */
    double gap, gap_err;           /* sum of e^a (a - b) over classes with e^a > 0 */
    double gap_scale;              /* sum of e^a (|a| + |b|): bounds the rounding in gap */
} kd_chunk_stats;

/* What the gradient pass needs to know of a row (see gradient_impl.h), with a = (t - t_max) / T,
 * b = (s - s_max) / T, P = softmax(a), Q = softmax(b) and R = softmax(s) (the student at T = 1,
 * for the cross-entropy of Hinton's loss). */
enum { KD_CE_NONE = 0, KD_CE_FROM_Q = 1, KD_CE_OWN_EXP = 2 };
typedef struct {
    kd_row_range range;    /* the row's extrema */
    double inv_T;
    double inv_zt, inv_zs; /* 1 / sum e^a, 1 / sum e^b */
    double mean_gap;       /* E_P[a - b] */
    double kl_coef;        /* d_s = kl_coef (Q - P) + ... */
    double teacher_coef;   /* d_t = teacher_coef P (a - b - mean_gap) */
    double ce_coef;        /* ... + ce_coef R */
    double inv_z1;         /* 1 / sum e^(s - s_max), for KD_CE_OWN_EXP */
    const double *exp_a;   /* e^a and e^b of every class, kept by stats_*; NULL: recompute */
    const double *exp_b;
    int with_kl;           /* 0: no KL term, and t is not read */
    int same_normaliser;   /* inv_zt == inv_zs */
    int ce_mode;           /* KD_CE_NONE; KD_CE_FROM_Q (T = 1, so R = Q); KD_CE_OWN_EXP */
} kd_grad_row;

typedef void (*kd_range_f32_fn)(const float *t, const float *s, ptrdiff_t n, kd_row_range *out);
typedef void (*kd_range_f64_fn)(const double *t, const double *s, ptrdiff_t n, kd_row_range *out);
typedef void (*kd_stats_f32_fn)(const float *t, const float *s, ptrdiff_t n,
                                const kd_row_range *range, double inv_T, kd_chunk_stats *out,
                                double *exp_a, double *exp_b, ptrdiff_t ahead_t, ptrdiff_t ahead_s);
typedef void (*kd_stats_f64_fn)(const double *t, const double *s, ptrdiff_t n,
                                const kd_row_range *range, double inv_T, kd_chunk_stats *out,
                                double *exp_a, double *exp_b, ptrdiff_t ahead_t, ptrdiff_t ahead_s);

/* The gradient of the KL term, for short_rows to write beside the loss: row r (of the n_rows
 * it is given) gets d_s = coef[r] (Q - P) at d_s + r * row_bytes and, unless d_t is NULL,
 * d_t = coef[r] P (a - b - E_P[a - b]) at d_t + r * row_bytes, each a contiguous row. Rows whose
 * KL the vector code leaves to the scalar code (NaN in kl) are not written. */
typedef struct {
    const double *coef;
    char *d_s, *d_t;
    ptrdiff_t row_bytes;
} kd_short_grad;

typedef void (*kd_short_rows_fn)(const char *t_base, const char *s_base, ptrdiff_t t_row,
                                 ptrdiff_t s_row, ptrdiff_t t_col, ptrdiff_t s_col,
                                 ptrdiff_t n_rows, ptrdiff_t n, double inv_T,
                                 kd_row_range *ranges, kd_chunk_stats *stats, double *kl,
                                 const kd_short_grad *grad);

typedef void (*kd_grad_f32_fn)(const float *t, const float *s, ptrdiff_t n, const kd_grad_row *row,
                               float *d_s, float *d_t);
typedef void (*kd_grad_f64_fn)(const double *t, const double *s, ptrdiff_t n,
                               const kd_grad_row *row, double *d_s, double *d_t);
typedef void (*kd_normaliser_f32_fn)(const float *s, ptrdiff_t n, double s_max, double *top,
                                     double *rest);
typedef void (*kd_normaliser_f64_fn)(const double *s, ptrdiff_t n, double s_max, double *top,
                                     double *rest);

/* One compiled instruction set. range_*: the extrema of t and s over n classes (pass 1).
 * stats_*: kd_chunk_stats of n <= KD_CHUNK classes of a row with extrema *range (pass 2);
 * optionally keeping e^a and e^b of each class for the gradient pass (exp_a, exp_b, with room
 * for n + KD_MAX_STEP values each), and prefetching the next row (ahead_t, ahead_s: bytes).
 * short_*: both passes for n_rows rows of n <= KD_SHORT_ROW classes, one row per lane, any
 * strides (in bytes), and each row's KL where the vector code can settle it (else NaN, and the
 * row's extrema and sums for the scalar code to finish it); and, unless grad is NULL, the
 * gradient of the rows it settles.
 * grad_*: the gradient of one row of any length (d_t may be NULL: no teacher gradient).
 * normaliser_*: sum_j e^(s_j - s_max) of one row of any length, as top + rest. */
typedef struct {
    const char *name;
    kd_range_f32_fn range_f32;
    kd_range_f64_fn range_f64;
    kd_stats_f32_fn stats_f32;
    kd_stats_f64_fn stats_f64;
    kd_short_rows_fn short_f32; /* rows of float */
    kd_short_rows_fn short_f64; /* rows of double */
    kd_grad_f32_fn grad_f32;
    kd_grad_f64_fn grad_f64;
    kd_normaliser_f32_fn normaliser_f32;
    kd_normaliser_f64_fn normaliser_f64;
} kd_target;

/* The target in use; never NULL once the module is imported (kd_select_target ran). */
extern const kd_target *kd_active_target;

/* Use the named target ("auto": the fastest this CPU runs). 0 on success, -1 if the name is
 * unknown or this CPU or build cannot run it (the active target is then unchanged). */
int kd_select_target(const char *name);

/* Names of the targets this build holds and this CPU can run, best last, space separated. */
const char *kd_available_targets(void);

#endif
