# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The compiled kernel of kdloss.

Three layers, as in scikit-learn's ``sklearn/_loss``:

1. Row helpers (``noexcept nogil``) work on one contiguous row of ``n`` classes. They return
   special values (inf, NaN) rather than raising.
2. Row loops (``*_rows``) run a helper over every row of a 2-D view under ``prange`` with a
   static (for gradients, dynamic) schedule and an explicit thread count; short rows go in
   blocks, one row per vector lane, and a few long rows are split into chunks shared among the
   threads. Each row's result depends on that row alone, and chunks merge in a fixed order,
   so results are bitwise identical for every thread count.
3. The Python layer (``kdloss._api``, and ``kdloss._training`` for gradients) validates and
   converts inputs, allocates outputs and resolves the thread count. The loops below assume its
   contract:

   - ``student`` and ``teacher`` have the same shape ``(rows, classes)`` and dtype, classes >= 1;
     any strides (a row whose classes are not contiguous is copied into per-thread scratch);
   - ``temperature`` is finite and > 0; ``num_threads`` >= 1;
   - ``out`` has one element per row (or the input's shape, C-contiguous, for softmax);
   - ``scratch`` has at least ``min(num_threads, rows)`` rows of ``2 * classes`` elements when
     the class axis is not contiguous (it is not touched otherwise).

All arithmetic is in double, whatever the input dtype. The KL of a row is computed by the
vectorised passes of ``_simd/`` (a polynomial exp, compiled for several instruction sets and
chosen at run time), finished here; rows with special values, and rows close to zero KL, are
recomputed by the scalar libm code below, which decides their documented values.

The training half (a row's loss with its gradient, Hinton's cross-entropy term, and their loop
over rows) is in ``_gradient.pxi``, included at the end, with the same layers.
"""

from cython cimport floating
from cython.parallel cimport prange, threadid
from libc.math cimport INFINITY, NAN, exp, expm1, fabs, isfinite, log, log1p
from libc.stddef cimport ptrdiff_t
from libc.stdint cimport int64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memset, strcmp
from cpython.buffer cimport PyBUF_C_CONTIGUOUS, PyBUF_FORMAT, PyBuffer_Release, PyObject_GetBuffer

import numpy as np

cdef extern from "simd.h" nogil:
    enum: KD_CHUNK
    enum: KD_SHORT_ROW
    enum: KD_MAX_STEP
    const double KD_EXACT_PATH_RATIO
    ctypedef struct kd_chunk_stats:
        double top_t, top_s
        double rest_t, rest_t_err
        double rest_s, rest_s_err
        double gap, gap_err
        double gap_scale
    ctypedef struct kd_row_range:
        double t_max, s_max, t_min, s_min
    enum: KD_CE_NONE
    enum: KD_CE_FROM_Q
    enum: KD_CE_OWN_EXP
    ctypedef struct kd_grad_row:
        kd_row_range range
        double inv_T
        double inv_zt, inv_zs
        double mean_gap
        double kl_coef, teacher_coef, ce_coef
        double inv_z1
        const double* exp_a
        const double* exp_b
        int with_kl
        int same_normaliser
        int ce_mode
    ctypedef struct kd_short_grad:
        const double* coef
        char* d_s
        char* d_t
        ptrdiff_t row_bytes
    ctypedef struct kd_target:
        const char* name
        void (*range_f32)(const float*, const float*, ptrdiff_t, kd_row_range*) noexcept nogil
        void (*range_f64)(const double*, const double*, ptrdiff_t, kd_row_range*) noexcept nogil
        void (*stats_f32)(const float*, const float*, ptrdiff_t, const kd_row_range*, double,
                          kd_chunk_stats*, double*, double*, ptrdiff_t, ptrdiff_t) noexcept nogil
        void (*stats_f64)(const double*, const double*, ptrdiff_t, const kd_row_range*, double,
                          kd_chunk_stats*, double*, double*, ptrdiff_t, ptrdiff_t) noexcept nogil
        void (*short_f32)(const char*, const char*, ptrdiff_t, ptrdiff_t, ptrdiff_t, ptrdiff_t,
                          ptrdiff_t, ptrdiff_t, double, kd_row_range*, kd_chunk_stats*,
                          double*, const kd_short_grad*) noexcept nogil
        void (*short_f64)(const char*, const char*, ptrdiff_t, ptrdiff_t, ptrdiff_t, ptrdiff_t,
                          ptrdiff_t, ptrdiff_t, double, kd_row_range*, kd_chunk_stats*,
                          double*, const kd_short_grad*) noexcept nogil
        void (*grad_f32)(const float*, const float*, ptrdiff_t, const kd_grad_row*, float*,
                         float*) noexcept nogil
        void (*grad_f64)(const double*, const double*, ptrdiff_t, const kd_grad_row*, double*,
                         double*) noexcept nogil
        void (*normaliser_f32)(const float*, ptrdiff_t, double, double*, double*) noexcept nogil
        void (*normaliser_f64)(const double*, ptrdiff_t, double, double*, double*) noexcept nogil
    const kd_target* kd_active_target  # NULL: the scalar path
    int kd_select_target(const char* name)
    const char* kd_available_targets()

cdef extern from *:
    """
    #ifdef _OPENMP
    #define KDLOSS_OPENMP 1
    #else
    #define KDLOSS_OPENMP 0
    #endif
    #if defined(__AVX512F__)
    #define KDLOSS_ISA "x86-64 AVX-512 (compile-time)"
    #elif defined(__AVX2__)
    #define KDLOSS_ISA "x86-64 AVX2 (compile-time)"
    #elif defined(__x86_64__) || defined(_M_X64)
    #define KDLOSS_ISA "x86-64 baseline (SSE2)"
    #elif defined(__aarch64__) || defined(_M_ARM64)
    #define KDLOSS_ISA "arm64 baseline (NEON)"
    #else
    #define KDLOSS_ISA "portable C"
    #endif
    """
    int KDLOSS_OPENMP
    const char* KDLOSS_ISA


# KD_EXACT_PATH_RATIO (simd.h): rows whose KL is below that share of the terms the fast
# evaluation subtracts are recomputed by the cancellation-free path, row_kl_exact.


# The kernel's fixed partitions, for tests: classes per chunk of a long row, and the longest row
# that the short-row pass takes (one row per vector lane).
CHUNK_CLASSES = KD_CHUNK
SHORT_ROW_CLASSES = KD_SHORT_ROW
# Doubles of per-thread scratch the gradient pass uses for a row of n classes: 2 * (n + this).
EXP_SCRATCH_PADDING = KD_MAX_STEP


def openmp_enabled():
    """True when the extension was compiled with OpenMP."""
    return bool(KDLOSS_OPENMP)


def instruction_set():
    """The instruction set the extension was compiled for (its baseline)."""
    return KDLOSS_ISA.decode()


def available_targets():
    """The kernel targets this build holds and this CPU runs, slowest first."""
    return kd_available_targets().decode().split()


def active_target():
    """The kernel target in use: "scalar" (libm), "baseline", "avx2" or "avx512"."""
    return "scalar" if kd_active_target == NULL else kd_active_target.name.decode().split("+")[0]


def select_target(str name):
    """Use the named target ("auto": the best this CPU runs). Not for use while kdloss runs."""
    if kd_select_target(name.encode()) != 0:
        raise ValueError(f"kernel target {name!r} is not available here; choose from {available_targets()}")


def _select_target_from_environment():
    """KDLOSS_TARGET names a target to use instead of the best one (for testing, or to rule out
    a target); an unknown or unavailable name warns and falls back to the best."""
    import os
    import warnings

    requested = os.environ.get("KDLOSS_TARGET", "auto")
    try:
        select_target(requested)
    except ValueError as error:
        warnings.warn(f"KDLOSS_TARGET ignored: {error}", RuntimeWarning, stacklevel=2)
        select_target("auto")


_select_target_from_environment()


# ---------------------------------------------------------------------------------------------
# Layer 1: row helpers
# ---------------------------------------------------------------------------------------------

cdef inline const floating* contiguous_row(
    const char* row, Py_ssize_t class_stride, Py_ssize_t n, floating* scratch
) noexcept nogil:
    """The row as a contiguous pointer: itself when it already is one, else copied to scratch."""
    cdef Py_ssize_t j
    if class_stride == <Py_ssize_t> sizeof(floating):
        return <const floating*> row
    for j in range(n):
        scratch[j] = (<const floating*> (row + j * class_stride))[0]
    return scratch


cdef struct CompensatedSum:
    double total
    double error  # what the additions to `total` rounded away


cdef inline void add_to(CompensatedSum* acc, double x) noexcept nogil:
    """acc += x with Neumaier's compensation.

    Plain summation can lose n * eps relative accuracy over n terms, and does when many terms
    are equal (a label-smoothed teacher); the compensated sum stays within a few eps.
    """
    cdef double total = acc.total + x
    if fabs(acc.total) >= fabs(x):
        acc.error += (acc.total - total) + x
    else:
        acc.error += (x - total) + acc.total
    acc.total = total


cdef inline double value_of(CompensatedSum acc) noexcept nogil:
    # An inf or NaN total makes the error NaN; the total is then the answer.
    return acc.total + acc.error if isfinite(acc.total) else acc.total


cdef inline double exp_minus_one_plus(double v) noexcept nogil:
    """e^v - 1 - v, accurate to a few ulp also where it is tiny (no cancellation)."""
    if fabs(v) >= 0.25:
        return expm1(v) - v
    # Taylor series sum_{k>=2} v^k / k!; the terms up to v^16 reach double precision for |v| < 1/4.
    cdef double s = 1.0 / 355687428096000.0  # 1/16!
    s = s * v + 1.0 / 1307674368000.0
    s = s * v + 1.0 / 87178291200.0
    s = s * v + 1.0 / 6227020800.0
    s = s * v + 1.0 / 479001600.0
    s = s * v + 1.0 / 39916800.0
    s = s * v + 1.0 / 3628800.0
    s = s * v + 1.0 / 362880.0
    s = s * v + 1.0 / 40320.0
    s = s * v + 1.0 / 5040.0
    s = s * v + 1.0 / 720.0
    s = s * v + 1.0 / 120.0
    s = s * v + 1.0 / 24.0
    s = s * v + 1.0 / 6.0
    s = s * v + 0.5
    return s * v * v


cdef inline double log1p_minus_identity(double y) noexcept nogil:
    """log(1 + y) - y, accurate also where it is tiny (no cancellation)."""
    if fabs(y) >= 0.0625:
        return log1p(y) - y
    # Taylor series sum_{k>=2} (-1)^(k+1) y^k / k; the terms up to y^16 reach double precision.
    cdef double s = -1.0 / 16.0
    s = s * y + 1.0 / 15.0
    s = s * y - 1.0 / 14.0
    s = s * y + 1.0 / 13.0
    s = s * y - 1.0 / 12.0
    s = s * y + 1.0 / 11.0
    s = s * y - 1.0 / 10.0
    s = s * y + 1.0 / 9.0
    s = s * y - 1.0 / 8.0
    s = s * y + 1.0 / 7.0
    s = s * y - 1.0 / 6.0
    s = s * y + 1.0 / 5.0
    s = s * y - 1.0 / 4.0
    s = s * y + 1.0 / 3.0
    s = s * y - 0.5
    return s * y * y


cdef inline double exact_difference(double x, double y, double* low) noexcept nogil:
    """x - y as high + low[0] exactly (Knuth's TwoSum); needs IEEE arithmetic, no fast-math."""
    cdef double high = x - y
    cdef double y_part = high - x
    low[0] = (x - (high - y_part)) + (-y - y_part)
    return high


cdef inline double log1p_by_log(double x) noexcept nogil:
    """log(1 + x) for x >= 0, to a few ulp, from libm's log (several times faster than log1p).

    With u = 1 + x rounded, log(u) * x / (u - 1) undoes the rounding of u (Goldberg, "What every
    computer scientist should know about floating-point arithmetic", 1991, theorem 4).
    """
    cdef double u = 1.0 + x
    return x if u == 1.0 else log(u) * x / (u - 1.0)


cdef inline double log_sum(double top, double rest) noexcept nogil:
    """log(top + rest) for a normaliser split as top (terms equal to 1, at least one) + rest.

    log(1 + rest) keeps full relative accuracy when one class dominates and the sum is 1 + tiny.
    """
    return log1p_by_log(rest) if top == 1.0 else log(top + rest)


cdef struct RowSums:
    # Sums over a row, with a = (t - t_max) / T and b = (s - s_max) / T. Each normaliser is kept
    # as (number of classes at the maximum, where e^0 = 1) + (the rest), so that log Z stays
    # accurate when Z is 1 + tiny.
    double top_t, top_s
    CompensatedSum rest_t, rest_s  # sum of e^a over a != 0, of e^b over b != 0
    CompensatedSum gap             # sum of e^a (a - b) over classes with e^a > 0
    double gap_scale               # sum of e^a (|a| + |b|): bounds the rounding error of gap


cdef inline void merge_chunk(RowSums* row, const kd_chunk_stats* chunk) noexcept nogil:
    """Adds one chunk's sums (from the vectorised pass) to the row's."""
    row.top_t += chunk.top_t
    row.top_s += chunk.top_s
    add_to(&row.rest_t, chunk.rest_t)
    row.rest_t.error += chunk.rest_t_err
    add_to(&row.rest_s, chunk.rest_s)
    row.rest_s.error += chunk.rest_s_err
    add_to(&row.gap, chunk.gap)
    row.gap.error += chunk.gap_err
    row.gap_scale += chunk.gap_scale


cdef inline double kl_from_sums(
    const RowSums* sums, double* mean_gap, double* z_teacher, double* magnitude
) noexcept nogil:
    """KL = E_P[a - b] - log Za + log Zb, and the size of the terms it subtracts."""
    cdef double rest_t = value_of(sums.rest_t), rest_s = value_of(sums.rest_s)
    cdef double log_zt = log_sum(sums.top_t, rest_t), log_zs = log_sum(sums.top_s, rest_s)
    z_teacher[0] = sums.top_t + rest_t
    mean_gap[0] = value_of(sums.gap) / z_teacher[0]
    magnitude[0] = sums.gap_scale / z_teacher[0] + log_zt + log_zs
    return mean_gap[0] - log_zt + log_zs


cdef inline void chunk_range(
    const floating* t, const floating* s, Py_ssize_t start, Py_ssize_t n, kd_row_range* out
) noexcept nogil:
    """The extrema of classes [start, start + KD_CHUNK) of a row of n classes (vectorised)."""
    cdef Py_ssize_t length = min(<Py_ssize_t> KD_CHUNK, n - start)
    if floating is float:
        kd_active_target.range_f32(t + start, s + start, length, out)
    else:
        kd_active_target.range_f64(t + start, s + start, length, out)


cdef inline void merge_range(kd_row_range* row, const kd_row_range* chunk) noexcept nogil:
    # Extrema are exact: merging chunks gives the same values as one pass over the row.
    row.t_max = chunk.t_max if chunk.t_max > row.t_max else row.t_max
    row.s_max = chunk.s_max if chunk.s_max > row.s_max else row.s_max
    row.t_min = chunk.t_min if chunk.t_min < row.t_min else row.t_min
    row.s_min = chunk.s_min if chunk.s_min < row.s_min else row.s_min


cdef inline void chunk_stats(
    const floating* t, const floating* s, Py_ssize_t start, Py_ssize_t n,
    const kd_row_range* extremes, double inv_T, kd_chunk_stats* out,
    double* exp_a=NULL, double* exp_b=NULL, ptrdiff_t ahead_t=0, ptrdiff_t ahead_s=0,
) noexcept nogil:
    """The vectorised sums over classes [start, start + KD_CHUNK) of a row of n classes. Unless
    NULL, exp_a and exp_b (indexed like the row) keep e^a and e^b for the gradient pass; unless 0,
    ahead_t and ahead_s are the bytes to the next row, which is prefetched meanwhile."""
    cdef Py_ssize_t length = min(<Py_ssize_t> KD_CHUNK, n - start)
    if exp_a != NULL:
        exp_a += start
        exp_b += start
    if floating is float:
        kd_active_target.stats_f32(t + start, s + start, length, extremes, inv_T, out, exp_a, exp_b,
                                   ahead_t, ahead_s)
    else:
        kd_active_target.stats_f64(t + start, s + start, length, extremes, inv_T, out, exp_a, exp_b,
                                   ahead_t, ahead_s)


cdef inline bint takes_short_row_pass(Py_ssize_t n) noexcept nogil:
    """Whether rows of n classes go through the short-row pass (one row per lane). kl_rows and
    one_row_loss both ask this, so a row gets the same bits alone as in a batch."""
    return n <= KD_SHORT_ROW and kd_active_target != NULL


cdef double row_kl(
    const floating* t, const floating* s, Py_ssize_t n, double inv_T,
    ptrdiff_t ahead_t=0, ptrdiff_t ahead_s=0,
) noexcept nogil:
    """KL(softmax(t / T) || softmax(s / T)) for one row (without the T^2 factor). Unless 0,
    ahead_t and ahead_s are the bytes from this row to the next, prefetched meanwhile.

    The vectorised passes: the row's extrema, then its sums chunk by chunk, merged in order (a
    long row split across threads, in ``kl_long_rows``, merges the same chunks in the same
    order). Special values (documented in README "Semantics"): NaN anywhere, +inf anywhere, or a
    teacher row that is all -inf gives NaN; a student -inf where the teacher is finite gives
    +inf; a teacher -inf masks its class (it adds nothing, whatever the student holds there).
    """
    if kd_active_target == NULL:
        return row_kl_scalar(t, s, n, inv_T)
    cdef Py_ssize_t c, n_chunks = (n + KD_CHUNK - 1) // KD_CHUNK
    cdef kd_row_range extremes, chunk_extremes
    cdef kd_chunk_stats chunk
    cdef RowSums sums
    chunk_range(t, s, 0, n, &extremes)
    for c in range(1, n_chunks):
        chunk_range(t, s, c * KD_CHUNK, n, &chunk_extremes)
        merge_range(&extremes, &chunk_extremes)
    memset(&sums, 0, sizeof(sums))
    for c in range(n_chunks):
        chunk_stats(t, s, c * KD_CHUNK, n, &extremes, inv_T, &chunk, NULL, NULL, ahead_t, ahead_s)
        merge_chunk(&sums, &chunk)
    return finish_row_kl(t, s, n, inv_T, extremes.t_max, extremes.s_max, &sums)


cdef double finish_row_kl(
    const floating* t, const floating* s, Py_ssize_t n, double inv_T,
    double t_max, double s_max, const RowSums* sums,
) noexcept nogil:
    """The KL from the vectorised sums, or the scalar path's value where those cannot decide."""
    cdef double mean_gap, z_teacher, magnitude
    cdef double kl = kl_from_sums(sums, &mean_gap, &z_teacher, &magnitude)
    if kl != kl:  # a NaN or +inf logit, or a row all -inf: the scalar path sorts out which
        return row_kl_scalar(t, s, n, inv_T)
    if kl > magnitude * KD_EXACT_PATH_RATIO or kl == INFINITY:
        return kl  # inf: the student rules out a class the teacher allows
    return row_kl_exact(t, s, n, inv_T, t_max, s_max, mean_gap, z_teacher)


cdef double row_kl_scalar(
    const floating* t, const floating* s, Py_ssize_t n, double inv_T
) noexcept nogil:
    """The same KL in scalar code with libm's exp: where the vectorised passes are not
    compiled (the "scalar" target), and for rows with special values, which it decides."""
    cdef Py_ssize_t i
    cdef double ti, si
    cdef double t_max = -INFINITY, s_max = -INFINITY
    cdef bint has_nan = False, student_gap = False

    # Pass 1: row maxima and special values.
    for i in range(n):
        ti = t[i]
        si = s[i]
        if ti > t_max:
            t_max = ti
        if si > s_max:
            s_max = si
        has_nan |= (ti != ti) | (si != si)
        student_gap |= (si == -INFINITY) & (ti != -INFINITY)
    if has_nan or t_max == INFINITY or t_max == -INFINITY or s_max == INFINITY:
        return NAN
    if student_gap:
        return INFINITY

    # Pass 2: the sums of RowSums.
    cdef RowSums sums
    scalar_row_sums(t, s, n, inv_T, t_max, s_max, &sums)
    cdef double mean_gap, z_teacher, magnitude
    cdef double kl = kl_from_sums(&sums, &mean_gap, &z_teacher, &magnitude)
    if kl > magnitude * KD_EXACT_PATH_RATIO or kl == INFINITY:
        return kl  # inf: a logit gap over T beyond the double range
    return row_kl_exact(t, s, n, inv_T, t_max, s_max, mean_gap, z_teacher)


cdef void scalar_row_sums(
    const floating* t, const floating* s, Py_ssize_t n, double inv_T, double t_max, double s_max,
    RowSums* sums,
) noexcept nogil:
    """The sums of RowSums for a row with these maxima, in scalar code with libm's exp."""
    cdef Py_ssize_t i
    cdef double a, b, ea, eb
    memset(sums, 0, sizeof(RowSums))
    for i in range(n):
        a = (t[i] - t_max) * inv_T
        b = (s[i] - s_max) * inv_T
        ea = exp(a)
        eb = exp(b)
        sums.top_t += (a == 0.0)
        add_to(&sums.rest_t, ea if a != 0.0 else 0.0)
        sums.top_s += (b == 0.0)
        add_to(&sums.rest_s, eb if b != 0.0 else 0.0)
        if ea > 0.0:  # a class the teacher masks (or underflows) adds nothing to E_P[a - b]
            add_to(&sums.gap, ea * (a - b))
            sums.gap_scale += ea * (fabs(a) + fabs(b))


cdef double row_kl_exact(
    const floating* t, const floating* s, Py_ssize_t n, double inv_T,
    double t_max, double s_max, double mean_gap, double z_teacher,
) noexcept nogil:
    """KL for a row close to zero KL, without cancellation.

    With d = ((t - s) - (t_max - s_max)) / T and u = d - c for any constant c:
    KL = E_P[u] + log(E_P[e^-u] + R e^c), where R is the student mass on classes outside the
    teacher's support, relative to Za. Writing F = E_P[e^-u - 1 + u] >= 0 and
    y = F - E_P[u] + R e^c, this is KL = F + R e^c + (log1p(y) - y): the dominant term F is a
    sum of non-negative terms, and the rest is O(y^2) (computed by a series where it is tiny). c = E_P[d] (from the fast pass) keeps u,
    and so the correction, small. t - s is taken exactly (as a sum hi + lo), so u is accurate to
    a few ulp of itself even when the student is the teacher plus an offset, and is exactly
    0 where t - s is constant over the row.
    """
    cdef Py_ssize_t i
    cdef double a, ea, u, ti, si, hi, lo
    cdef double shift_lo, shift = exact_difference(t_max, s_max, &shift_lo)
    cdef double c = mean_gap
    cdef double u_sum = 0.0  # only enters at second order: plain summation is enough
    cdef CompensatedSum f_sum = CompensatedSum(0.0, 0.0)
    cdef CompensatedSum outside_mass = CompensatedSum(0.0, 0.0)
    for i in range(n):
        ti = t[i]
        si = s[i]
        a = (ti - t_max) * inv_T
        ea = exp(a)
        if ea > 0.0:
            hi = exact_difference(ti, si, &lo)
            u = ((hi - shift) + (lo - shift_lo)) * inv_T - c
            add_to(&f_sum, ea * exp_minus_one_plus(-u))
            u_sum += ea * u
        else:
            add_to(&outside_mass, exp((si - s_max) * inv_T))
    cdef double f = value_of(f_sum) / z_teacher
    cdef double r = exp(c) * value_of(outside_mass) / z_teacher
    cdef double y = f - u_sum / z_teacher + r
    cdef double kl = f + r + log1p_minus_identity(y)
    return kl if kl > 0.0 else 0.0


cdef void row_softmax(
    const floating* x, Py_ssize_t n, double inv_T, floating* out, bint take_log
) noexcept nogil:
    """softmax(x / T) or log_softmax(x / T) of one row into ``out``.

    NaN or +inf anywhere, or a row that is all -inf, gives a row of NaN; -inf gives 0 (or -inf).
    These follow from the arithmetic: the max or the normaliser becomes NaN.
    """
    cdef Py_ssize_t i
    cdef double m = -INFINITY, a, top = 0.0, rest, z, log_z
    cdef CompensatedSum rest_sum = CompensatedSum(0.0, 0.0)
    for i in range(n):
        if x[i] > m:
            m = x[i]
    for i in range(n):
        a = (x[i] - m) * inv_T
        top += (a == 0.0)
        add_to(&rest_sum, exp(a) if a != 0.0 else 0.0)  # a NaN in the row makes the sum NaN
    rest = value_of(rest_sum)
    if m == INFINITY or m == -INFINITY:
        rest = NAN
    if take_log:
        log_z = log_sum(top, rest)
        for i in range(n):
            out[i] = <floating> ((x[i] - m) * inv_T - log_z)
    else:
        z = top + rest
        for i in range(n):
            out[i] = <floating> (exp((x[i] - m) * inv_T) / z)


# ---------------------------------------------------------------------------------------------
# Layer 2: loops over rows
# ---------------------------------------------------------------------------------------------

def kl_rows(
    const floating[:, :] student,
    const floating[:, :] teacher,
    double temperature,
    double[::1] out,
    floating[:, ::1] scratch,
    int num_threads,
):
    """out[i] = T^2 * KL(softmax(teacher[i] / T) || softmax(student[i] / T)) for every row i.

    Rows are shared among threads; when there are fewer rows than threads, long contiguous rows
    are split into chunks instead, so that every thread has work.
    """
    cdef Py_ssize_t n_rows = teacher.shape[0], n_classes = teacher.shape[1], i
    if n_rows == 0:
        return
    cdef double inv_T = 1.0 / temperature
    cdef const char* t_base = <const char*> &teacher[0, 0]
    cdef const char* s_base = <const char*> &student[0, 0]
    cdef Py_ssize_t t_row = teacher.strides[0], t_col = teacher.strides[1]
    cdef Py_ssize_t s_row = student.strides[0], s_col = student.strides[1]
    cdef bint contiguous = (t_col == <Py_ssize_t> sizeof(floating)
                            and s_col == <Py_ssize_t> sizeof(floating))
    cdef bint done = False
    if (n_rows < num_threads and n_classes > KD_CHUNK and contiguous
            and kd_active_target != NULL):
        with nogil:
            done = kl_long_rows(t_base, s_base, t_row, s_row, n_rows, n_classes, temperature,
                                &out[0], num_threads, <floating> 0)
    if done:
        return
    num_threads = <int> min(<Py_ssize_t> num_threads, n_rows)
    cdef Py_ssize_t n_blocks = (n_rows + SHORT_ROWS_BLOCK - 1) // SHORT_ROWS_BLOCK
    if takes_short_row_pass(n_classes):
        # Blocks of rows, fixed by row index: which thread takes a block changes no bit.
        num_threads = <int> min(<Py_ssize_t> num_threads, n_blocks)
        for i in prange(n_blocks, nogil=True, schedule="static", num_threads=num_threads,
                        use_threads_if=num_threads > 1):
            kl_short_rows(t_base, s_base, t_row, s_row, t_col, s_col, i * SHORT_ROWS_BLOCK,
                          min(<Py_ssize_t> SHORT_ROWS_BLOCK, n_rows - i * SHORT_ROWS_BLOCK),
                          n_classes, temperature, &out[0], <floating> 0)
        return
    cdef floating* t_scratch
    cdef floating* s_scratch
    cdef double kl
    for i in prange(n_rows, nogil=True, schedule="static", num_threads=num_threads,
                    use_threads_if=num_threads > 1):
        t_scratch = NULL
        s_scratch = NULL
        if not contiguous:
            t_scratch = &scratch[threadid(), 0]
            s_scratch = t_scratch + n_classes
        kl = row_kl(
            contiguous_row(t_base + i * t_row, t_col, n_classes, t_scratch),
            contiguous_row(s_base + i * s_row, s_col, n_classes, s_scratch),
            n_classes,
            inv_T,
            t_row if contiguous else 0,  # the next row, prefetched while this one is summed
            s_row if contiguous else 0,
        )
        out[i] = temperature * (temperature * kl)  # T^2 alone overflows for T > 1e154


cdef enum:
    SHORT_ROWS_BLOCK = 64  # rows per call of the short-row pass


cdef void kl_short_rows(
    const char* t_base, const char* s_base, Py_ssize_t t_row, Py_ssize_t s_row,
    Py_ssize_t t_col, Py_ssize_t s_col, Py_ssize_t first, Py_ssize_t n_rows,
    Py_ssize_t n_classes, double temperature, double* out, floating dtype_tag,
    const kd_short_grad* grad=NULL, bint* settled=NULL,
) noexcept nogil:
    """``kl_rows`` for rows [first, first + n_rows) of at most KD_SHORT_ROW classes (any
    strides): the vectorised passes take one row per lane, then each row is finished here
    (with the row contiguous, copied to a local buffer if need be, for the scalar and exact
    paths). With grad, the vector code also writes the gradient of the rows it settles, which
    are marked in settled[r] (rows [first, ...) are grad's rows 0, 1, ...)."""
    cdef kd_row_range ranges[SHORT_ROWS_BLOCK]
    cdef kd_chunk_stats stats[SHORT_ROWS_BLOCK]
    cdef RowSums sums
    cdef Py_ssize_t r
    cdef double inv_T = 1.0 / temperature
    cdef const char* t_first = t_base + first * t_row
    cdef const char* s_first = s_base + first * s_row
    cdef double kl[SHORT_ROWS_BLOCK]
    cdef floating t_copy[KD_SHORT_ROW]
    cdef floating s_copy[KD_SHORT_ROW]
    if floating is float:
        kd_active_target.short_f32(t_first, s_first, t_row, s_row, t_col, s_col, n_rows,
                                   n_classes, inv_T, ranges, stats, kl, grad)
    else:
        kd_active_target.short_f64(t_first, s_first, t_row, s_row, t_col, s_col, n_rows,
                                   n_classes, inv_T, ranges, stats, kl, grad)
    for r in range(n_rows):
        if settled != NULL:
            settled[r] = kl[r] == kl[r]
        if kl[r] == kl[r]:  # settled by the vector code
            out[first + r] = temperature * (temperature * kl[r])
            continue
        memset(&sums, 0, sizeof(sums))
        merge_chunk(&sums, &stats[r])
        out[first + r] = temperature * (temperature * finish_row_kl(
            contiguous_row(t_first + r * t_row, t_col, n_classes, t_copy),
            contiguous_row(s_first + r * s_row, s_col, n_classes, s_copy),
            n_classes, inv_T, ranges[r].t_max, ranges[r].s_max, &sums))


cdef bint kl_long_rows(
    const char* t_base, const char* s_base, Py_ssize_t t_row, Py_ssize_t s_row,
    Py_ssize_t n_rows, Py_ssize_t n_classes, double temperature, double* out,
    int num_threads, floating dtype_tag,
) noexcept nogil:
    """``kl_rows`` for a few long contiguous rows: each row's chunks are shared among threads.

    The chunks, and the order in which their sums are merged, are those of ``row_kl``, so the
    result is bitwise the same as one thread's. Returns False (nothing done) if out of memory.
    """
    cdef Py_ssize_t n_chunks = (n_classes + KD_CHUNK - 1) // KD_CHUNK, i, c
    cdef kd_row_range* extrema = <kd_row_range*> malloc(n_chunks * sizeof(kd_row_range))
    cdef kd_chunk_stats* chunks = <kd_chunk_stats*> malloc(n_chunks * sizeof(kd_chunk_stats))
    cdef const floating* t
    cdef const floating* s
    cdef double inv_T = 1.0 / temperature
    cdef kd_row_range extremes
    cdef RowSums sums
    if extrema == NULL or chunks == NULL:
        free(extrema)
        free(chunks)
        return False
    for i in range(n_rows):
        t = <const floating*> (t_base + i * t_row)
        s = <const floating*> (s_base + i * s_row)
        for c in prange(n_chunks, schedule="static", num_threads=num_threads):
            chunk_range(t, s, c * KD_CHUNK, n_classes, &extrema[c])
        extremes = extrema[0]
        for c in range(1, n_chunks):
            merge_range(&extremes, &extrema[c])
        for c in prange(n_chunks, schedule="static", num_threads=num_threads):
            chunk_stats(t, s, c * KD_CHUNK, n_classes, &extremes, inv_T, &chunks[c])
        memset(&sums, 0, sizeof(sums))
        for c in range(n_chunks):
            merge_chunk(&sums, &chunks[c])
        out[i] = temperature * (temperature * finish_row_kl(
            t, s, n_classes, inv_T, extremes.t_max, extremes.s_max, &sums))
    free(extrema)
    free(chunks)
    return True


def single_row_loss(object student, object teacher, object temperature):
    """T^2 KL of one row given as two 1-D C-contiguous float32 or float64 arrays of the same dtype
    and at most KD_CHUNK classes, with a finite float temperature > 0; None for anything else.

    The shortcut for the commonest small call, ``kd_loss(s, t, T)`` on one row: it recognises
    input already in the kernel's form (no conversion, no validation needed) and computes the
    row by the path ``kl_rows`` takes for it, so the result has the same bits. Everything else
    returns None and goes through the general path, which validates.
    """
    if type(student) is not np.ndarray or type(teacher) is not np.ndarray or type(temperature) is not float:
        return None
    cdef double T = temperature
    if not (T > 0.0 and isfinite(T)):
        return None
    cdef Py_buffer s_view, t_view
    try:
        PyObject_GetBuffer(student, &s_view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT)
    except ValueError:  # not C-contiguous
        return None
    try:
        PyObject_GetBuffer(teacher, &t_view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT)
    except ValueError:
        PyBuffer_Release(&s_view)
        return None
    cdef double loss = NAN
    cdef bint done = False
    cdef Py_ssize_t n = s_view.shape[0] if s_view.ndim == 1 else 0
    if (s_view.ndim == 1 and t_view.ndim == 1 and t_view.shape[0] == n and 1 <= n <= KD_CHUNK
            and strcmp(s_view.format, t_view.format) == 0):
        if strcmp(s_view.format, "d") == 0:
            with nogil:
                loss = one_row_loss(<const double*> t_view.buf, <const double*> s_view.buf, n, T)
            done = True
        elif strcmp(s_view.format, "f") == 0:
            with nogil:
                loss = one_row_loss(<const float*> t_view.buf, <const float*> s_view.buf, n, T)
            done = True
    PyBuffer_Release(&s_view)
    PyBuffer_Release(&t_view)
    return loss if done else None


cdef double one_row_loss(
    const floating* t, const floating* s, Py_ssize_t n, double temperature
) noexcept nogil:
    """T^2 KL of one contiguous row of n <= KD_CHUNK classes, as ``kl_rows`` computes it."""
    cdef double out
    if takes_short_row_pass(n):
        kl_short_rows(<const char*> t, <const char*> s, 0, 0, sizeof(floating), sizeof(floating),
                      0, 1, n, temperature, &out, <floating> 0)
        return out
    return temperature * (temperature * row_kl(t, s, n, 1.0 / temperature))


def softmax_rows(
    const floating[:, :] logits,
    double temperature,
    floating[:, ::1] out,
    floating[:, ::1] scratch,
    bint take_log,
    int num_threads,
):
    """out[i] = softmax(logits[i] / T), or its log, for every row i."""
    cdef Py_ssize_t n_rows = logits.shape[0], n_classes = logits.shape[1], i
    if n_rows == 0:
        return
    cdef double inv_T = 1.0 / temperature
    cdef const char* base = <const char*> &logits[0, 0]
    cdef Py_ssize_t row_stride = logits.strides[0], class_stride = logits.strides[1]
    cdef floating* row_scratch
    for i in prange(n_rows, nogil=True, schedule="static", num_threads=num_threads,
                    use_threads_if=num_threads > 1):
        row_scratch = NULL
        if class_stride != <Py_ssize_t> sizeof(floating):
            row_scratch = &scratch[threadid(), 0]
        row_softmax(
            contiguous_row(base + i * row_stride, class_stride, n_classes, row_scratch),
            n_classes,
            inv_T,
            &out[i, 0],
            take_log,
        )


include "_gradient.pxi"
