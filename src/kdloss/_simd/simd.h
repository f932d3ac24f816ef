/* The C half of the kdloss kernel, as Cython sees it: the row engine's per-target passes.
 *
 * Layers (the Cython half, _kernel.pyx, adds the loop over rows and the Python entry):
 *   1. vector_math.h: vector types, loads per input dtype, exp / log polynomials (libm on the scalar
 *      target);
 *   2. divergence_*.h: one file per divergence (a row of the divergence table): its per-class
 *      terms, how a row's sums finish into its value, its gradient terms, its special values;
 *   3. rows_impl.h: the passes over one row (or one chunk of a long row, or a group of short rows
 *      one per lane) that every divergence shares: extrema, sums (with the gradient's per-class
 *      values kept), finish, gradient; compiled once per input dtype (target_impl.h) and per
 *      instruction set (target_*.c), and chosen at run time (dispatch.c).
 *
 * Every target computes the same quantities in the same order of blocks; targets differ only in
 * vector width, FMA contraction and (scalar target) libm's exp and log, so results are bitwise
 * identical for any thread count on one machine, and agree to rounding across targets.
 *
 * Contract (the Cython layer keeps it): n >= 1, rows contiguous, inv_T finite and > 0, the range
 * passed to the sums the exact extrema of the whole row (over all its chunks). Special values
 * need no care here: a row the formulas cannot settle (a NaN or +inf logit, a teacher or student
 * row all -inf) finishes as NaN, and the caller decides its documented value.
 */
#ifndef KDLOSS_SIMD_H
#define KDLOSS_SIMD_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

/* The vector code is written in GCC/Clang vector extensions (with __builtin_convertvector:
 * GCC 9, Clang 3.7); other compilers get the scalar target only. */
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

/* The most classes a vector step takes (two vectors of 8 doubles, AVX-512): padding a row's
 * kept values by this much leaves room for the step that takes its last classes. */
#define KD_MAX_STEP 16

/* Rows of at most this many classes go through short_rows, one row per vector lane. */
#define KD_SHORT_ROW 64

/* Input dtypes, a row each of the dtype table (target_impl.h instantiates the passes per row).
 * 2-byte inputs are read as they are stored (no conversion copy) and widened exactly in
 * registers; their gradients are written as float32. */
enum { KD_FLOAT32 = 0, KD_FLOAT64 = 1, KD_FLOAT16 = 2, KD_BFLOAT16 = 3, KD_DTYPE_COUNT = 4 };

/* x rounded to float32 toward zero, with the last bit set where that is inexact ("round to odd"):
 * rounding this once more, to a float16 or bfloat16, gives x rounded once to that type (float32
 * holds more than twice their precision plus two bits). NaN stays NaN, and a finite x beyond the
 * float32 range gives the largest float32 (which rounds on to inf where it should). */
static inline float kd_float_rounded_to_odd(double x)
{
    union { float f; unsigned int u; } nearest;
    nearest.f = (float)x;
    const double back = nearest.f;
    if (back != x && x == x) {
        if (fabs(back) > fabs(x))
            nearest.u -= 1; /* one step toward zero */
        nearest.u |= 1;
    }
    return nearest.f;
}

/* One stored 2-byte value as a double (exact). */
static inline double kd_bfloat16_to_double(unsigned short bits)
{
    union { unsigned int u; float f; } word;
    word.u = (unsigned int)bits << 16; /* bfloat16 is the upper half of a float32 */
    return word.f;
}

static inline double kd_float16_to_double(unsigned short bits)
{
    const unsigned int magnitude = bits & 0x7fffu;
    double value;
    if (magnitude >= 0x7c00u) {
        value = magnitude == 0x7c00u ? (double)INFINITY : (double)NAN;
    } else if (magnitude < 0x400u) {
        value = magnitude * 0x1p-24; /* subnormal: an integer times 2^-24 */
    } else { /* normal: the float32 with the same fraction and the exponent rebiased by 127 - 15 */
        union { unsigned int u; float f; } word;
        word.u = (magnitude << 13) + (112u << 23);
        value = word.f;
    }
    return bits & 0x8000u ? -value : value;
}

/* The divergence table: a row each (divergence_*.h), instantiated for every input dtype. KL takes
 * one pass of sums; the mixture (c_P KL(P || M) + c_Q KL(Q || M), M = lam P + (1 - lam) Q: reverse
 * KL, JSD, skew KLs) and TVD need P and Q normalised, so they add a second pass over the values the
 * first kept. Their parameters (lam, c_P, c_Q) reach the finish as KD_WEIGHTS weights. */
enum { KD_KL = 0, KD_MIXTURE = 1, KD_TVD = 2, KD_DIVERGENCE_COUNT = 3 };
#define KD_WEIGHTS 3

/* How the sums' pass treats a row (target_impl.h, kd_row_mode): every logit in the cheap range;
 * -inf logits (masked classes) among finite ones in that range; -inf in the teacher only, the
 * student's logits all in the cheap range (the common masked vocabulary: a cheaper masked mode);
 * -inf on both sides at the same classes (a vocabulary both models mask: the moderate terms, with
 * stand-ins of weight 0 for those classes); anything (the general mode). */
enum { KD_GENERAL = 0, KD_MODERATE = 1, KD_MASKED = 2, KD_MASKED_TEACHER = 3, KD_SAME_MASK = 4 };
/* The later passes' mode for a KD_SAME_MASK row whose sums' pass took every chunk in that mode
 * (kd_row_finish.same_mask_fits): every class both sides allow is then near, and e^a > 0 marks
 * exactly those classes, so they take the moderate arithmetic from the logits as they are. */
enum { KD_SAME_MASK_FITS = 5 };

/* The most sums a divergence keeps per row, and constants its finish hands the gradient pass. */
#define KD_MAX_SUMS 4
#define KD_MAX_CONSTANTS 14

/* Extrema of a row (NaN ignored); and, where the driver recentres the row (recentred != 0), the
 * student's reference s_ref that the divergence's b = (s - s_ref) / T is taken from in place of
 * s_max (kd_student_reference; a zeroed struct means s_max). */
typedef struct {
    double t_max, s_max, t_min, s_min;
    int recentred;
    double s_ref;
} kd_row_range;

/* The sums a divergence keeps over a row (or a chunk of one), each compensated: err[i] holds
 * what rounding took from sum[i]. What each sum is belongs to the divergence (divergence_kl.h). */
typedef struct {
    double sum[KD_MAX_SUMS], err[KD_MAX_SUMS];
    /* KD_SAME_MASK rows: 1 where the chunk took that mode, 2 where it left it (a row's chunks
     * merge into the larger); 0 for rows of other modes */
    int same_mask;
    /* 1 where the chunk kept its values as float32 (kd_grad_row.kept_single): the moderate mode's
     * float32 lanes, which decide per row, so a row's chunks all agree */
    int kept_single;
} kd_row_sums;

/* A finished row: its divergence's value (NaN where the formulas cannot settle the row: special
 * values, for the caller) and the constants its gradient pass needs (the divergence's own).
 * cancellation: by how much the finish's terms cancel (the value's rounding is that many times
 * their own; 0 where the row cannot be helped), and recentre the move of the student's reference
 * that would remove it, in units of T: the driver redoes a row whose cancellation exceeds its
 * dtype's limit with s_ref = s_max - recentre T (divergence_kl.h). */
typedef struct {
    double value;
    double constant[KD_MAX_CONSTANTS];
    double cancellation, recentre;
    int same_mask_fits; /* the sums' same_mask was 1: the later passes take KD_SAME_MASK_FITS */
} kd_row_finish;

/* How the gradient pass scales a row: d_s = kl_coef dD/ds + ce_coef R (R = softmax(s) at T = 1,
 * for the cross-entropy of Hinton's loss) and d_t = kl_coef dD/dt, D the divergence (over T^2,
 * per unit of T: for KL, dD/ds = Q - P and dD/dt = P (d - m)). */
enum { KD_CE_NONE = 0, KD_CE_FROM_Q = 1, KD_CE_OWN_EXP = 2 };
typedef struct {
    kd_row_range range;
    kd_row_finish finish;
    double inv_T;
    double kl_coef, ce_coef;
    double inv_z1;         /* 1 / sum e^(s - s_max), for KD_CE_OWN_EXP */
    const double *kept_a;  /* the divergence's two per-class values, kept by the sums' pass */
    const double *kept_w;  /* (NULL: no divergence term, only the cross-entropy's) */
    int kept_single;       /* they are float32, (const float *)kept_a[i]: the values of the float32
                            * lanes, exact in half the bytes (a moderate row's; the sums' kept_single) */
    int ce_mode;           /* KD_CE_NONE; KD_CE_FROM_Q (T = 1, so R = Q); KD_CE_OWN_EXP */
    int round_to_odd;      /* float32 gradients rounded to odd (kd_float_rounded_to_odd) */
    int value_only;        /* second pass: the value's sums alone (no gradient pass follows) */
} kd_grad_row;

/* The gradient of the KL term for short_rows to write beside the value: row r (of the n_rows it
 * is given) gets d_s = coef[r] (Q - P) at d_s + r * row_bytes and, unless d_t is NULL,
 * d_t = coef[r] P (d - m) at d_t + r * row_bytes, each a contiguous row. Rows the formulas do
 * not settle (NaN value) are not written. */
typedef struct {
    const double *coef;
    char *d_s, *d_t;
    ptrdiff_t row_bytes;
    int round_to_odd; /* as kd_grad_row's */
} kd_short_grad;

typedef void (*kd_range_fn)(const void *t, const void *s, ptrdiff_t n, kd_row_range *out);
typedef void (*kd_sums_fn)(const void *t, const void *s, ptrdiff_t n, const kd_row_range *range,
                           double inv_T, kd_row_sums *out, double *kept_a, double *kept_w,
                           ptrdiff_t ahead_t, ptrdiff_t ahead_s);
typedef void (*kd_short_rows_fn)(const char *t_base, const char *s_base, ptrdiff_t t_row,
                                 ptrdiff_t s_row, ptrdiff_t t_col, ptrdiff_t s_col,
                                 ptrdiff_t n_rows, ptrdiff_t n, double inv_T, const double *weights,
                                 double *value, const kd_short_grad *grad);
typedef void (*kd_second_sums_fn)(const void *t, const void *s, ptrdiff_t n, const kd_grad_row *row,
                                  kd_row_sums *out);
typedef void (*kd_grad_fn)(const void *t, const void *s, ptrdiff_t n, const kd_grad_row *row,
                           void *d_s, void *d_t);
typedef void (*kd_normaliser_fn)(const void *s, ptrdiff_t n, double s_max, double *top,
                                 double *rest);

/* The passes of one input dtype. range: the extrema of t and s over n classes (pass 1). sums: the
 * kd_row_sums of n <= KD_CHUNK classes of a row with extrema *range (pass 2), optionally keeping
 * e^a and e^-d - 1 of each class for the gradient pass (kept_a, kept_w: room for
 * n + KD_MAX_STEP doubles each; float32 from the start of it where out->kept_single), and
 * prefetching the next row (ahead_t, ahead_s: bytes).
 * short_rows: both passes, the finish and (unless grad is NULL) the gradient for n_rows rows of
 * n <= KD_SHORT_ROW classes, one row per lane, any strides in bytes; NaN values for the rows the
 * caller must settle. gradient: the gradient of n <= KD_CHUNK classes of a row, a chunk whose
 * kept values row's kept_a, kept_w point at (d_t may be NULL); of a whole row where it keeps none.
 * normaliser: sum_j e^(s_j - s_max) of one row, as top (classes at the maximum) + rest.
 * second_sums (two-pass divergences, else NULL): the second pass's sums over n <= KD_CHUNK classes,
 * from the logits and the kept values of row (its kept_a, kept_w point at these classes' values)
 * and the first finish in row->finish. */
typedef struct {
    kd_range_fn range;
    kd_sums_fn sums;
    kd_short_rows_fn short_rows;
    kd_grad_fn gradient;
    kd_normaliser_fn normaliser;
    kd_second_sums_fn second_sums;
} kd_dtype_passes;

/* One divergence on one compiled instruction set: its passes for every input dtype, its finish
 * of `count` rows' sums into their kd_row_finish (shared by all dtypes: it sees only sums and the
 * weights; a row's bits do not depend on the others), for two-pass divergences the finish
 * of the second pass's sums (it completes *out; NULL for one pass), and its student gradient at
 * one class (where the Cython layer corrects a label's entry of Hinton's loss), from that class's
 * logits and kept values. */
typedef struct {
    kd_dtype_passes dtype[KD_DTYPE_COUNT];
    void (*finish)(const kd_row_sums *sums, int count, const double *weights, kd_row_finish *out);
    void (*second_finish)(const kd_row_sums *sums, kd_row_finish *out);
    double (*class_gradient)(const kd_grad_row *row, double t, double s, double kept_a, double kept_w);
} kd_divergence_passes;

/* A sparse (top-k) teacher's passes over the student's full row, per input dtype (float32 and
 * float64; sparse_rows.h): rest gives the row's maximum and the mass outside the sorted ids (and
 * stores the row's exps in exps_out unless it is NULL), gradient writes the dense gradient from
 * the small problem's (scaling the stored exps where stored_rest allows). */
typedef void (*kd_sparse_rest_fn)(const void *s, ptrdiff_t n, const int64_t *ids, ptrdiff_t k,
                                  double inv_T, double *s_max, double *rest, void *exps_out);
typedef void (*kd_sparse_grad_fn)(const void *s, ptrdiff_t n, const int64_t *ids, const double *g,
                                  ptrdiff_t k, double s_max, double inv_T, double coef, double stored_rest,
                                  void *d);
typedef struct {
    kd_sparse_rest_fn rest;
    kd_sparse_grad_fn gradient;
} kd_sparse_passes;

/* One compiled instruction set: every divergence of the table, and the sparse teacher's passes. */
typedef struct {
    const char *name;
    kd_divergence_passes divergence[KD_DIVERGENCE_COUNT];
    kd_sparse_passes sparse[2]; /* KD_FLOAT32, KD_FLOAT64 */
} kd_target;

/* The target in use; never NULL once the module is imported (kd_select_target ran). */
extern const kd_target *kd_active_target;

/* Use the named target ("auto": the fastest this CPU runs). 0 on success, -1 if the name is
 * unknown or this CPU or build cannot run it (the active target is then unchanged). */
int kd_select_target(const char *name);

/* Names of the targets this build holds and this CPU can run, best last, space separated. */
const char *kd_available_targets(void);

#endif
