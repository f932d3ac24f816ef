# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The compiled kernel of kdloss: one row engine for the loss and its gradient.

Layers, as in scikit-learn's ``sklearn/_loss``:

0. The C passes (``_simd/``, see ``simd.h``): per instruction-set target (scalar libm, baseline,
   AVX2, AVX-512, chosen at run time) and per input dtype, the extrema, the sums, the finish and
   the gradient of one row (or of a chunk of one, or of a group of short rows one per vector
   lane), from the divergence's own terms (``divergence_kl.h``).
1. Row helpers (``noexcept nogil``) below run those passes over one contiguous row: its value
   and, when asked, its gradient in the same sweep. Special values come back as values (inf,
   NaN), never as errors.
2. Row loops run the helpers over the rows of a 2-D view under ``prange``, in blocks of rows
   under a dynamic schedule (a thread another process holds up does not hold up the call), with
   per-thread scratch allocated here. Three shapes of work: ordinary rows one at a time (the
   loss alone of a group of them finished together, one row per vector lane), short rows (at most
   ``SHORT_ROW_CLASSES`` classes) one per vector lane, and a few long rows split into chunks
   shared among the threads. Each row's result depends on that row alone, and
   chunks merge in a fixed order, so results are bitwise identical for every thread count.
   The loss alone is the same loop with the gradient off: ``kd_loss`` and ``kd_loss_and_grad``
   give the same loss bits by construction.
3. The Python layer (``kdloss._api``, ``kdloss._training``) validates and converts, allocates the
   outputs and resolves the thread count. The loops assume its contract:

   - ``student`` and ``teacher`` have the same shape ``(rows, classes)`` and dtype (float32 or
     float64), classes >= 1, any strides (a row whose classes are not contiguous is copied into
     per-thread scratch);
   - ``temperature`` is finite and > 0 with ``1 / temperature`` finite; ``num_threads`` >= 1;
   - per-row arrays (``out``, labels, weights, ``grad_output``) have one entry per row, gradients
     the inputs' shape, C-contiguous.
"""

cimport cython
from cython cimport floating
from cython.parallel cimport parallel, prange
from libc.math cimport INFINITY, NAN, exp, fabs, isfinite, log
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
    enum: KD_KL
    enum: KD_MIXTURE
    enum: KD_TVD
    enum: KD_WEIGHTS
    enum: KD_FLOAT32
    enum: KD_FLOAT64
    enum: KD_FLOAT16
    enum: KD_BFLOAT16
    float kd_float_rounded_to_odd(double x)
    double kd_float16_to_double(unsigned short bits)
    double kd_bfloat16_to_double(unsigned short bits)
    ctypedef struct kd_row_range:
        double t_max, s_max, t_min, s_min
        int recentred
        double s_ref
    enum: KD_MAX_SUMS
    enum: KD_DIVERGENCE_COUNT
    ctypedef struct kd_row_sums:
        double sum[4]
        double err[4]
        int same_mask
        int kept_single
    ctypedef struct kd_row_finish:
        double value
        double constant[14]
        double cancellation, recentre
    enum: KD_CE_NONE
    enum: KD_CE_FROM_Q
    enum: KD_CE_OWN_EXP
    ctypedef struct kd_grad_row:
        kd_row_range range
        kd_row_finish finish
        double inv_T, kl_coef, ce_coef, inv_z1
        const double* kept_a
        const double* kept_w
        int kept_single
        int ce_mode
        int round_to_odd
        int value_only
    ctypedef struct kd_short_grad:
        const double* coef
        char* d_s
        char* d_t
        ptrdiff_t row_bytes
        int round_to_odd
    ctypedef struct kd_dtype_passes:
        void (*range)(const void*, const void*, ptrdiff_t, kd_row_range*) noexcept nogil
        void (*sums)(const void*, const void*, ptrdiff_t, const kd_row_range*, double,
                     kd_row_sums*, double*, double*, ptrdiff_t, ptrdiff_t) noexcept nogil
        void (*short_rows)(const char*, const char*, ptrdiff_t, ptrdiff_t, ptrdiff_t, ptrdiff_t,
                           ptrdiff_t, ptrdiff_t, double, const double*, double*,
                           const kd_short_grad*) noexcept nogil
        void (*gradient)(const void*, const void*, ptrdiff_t, const kd_grad_row*, void*,
                         void*) noexcept nogil
        void (*normaliser)(const void*, ptrdiff_t, double, double*, double*) noexcept nogil
        void (*second_sums)(const void*, const void*, ptrdiff_t, const kd_grad_row*,
                            kd_row_sums*) noexcept nogil
    ctypedef struct kd_divergence_passes:
        kd_dtype_passes dtype[4]
        void (*finish)(const kd_row_sums*, int, const double*, kd_row_finish*) noexcept nogil
        void (*second_finish)(const kd_row_sums*, kd_row_finish*) noexcept nogil
        double (*class_gradient)(const kd_grad_row*, double, double, double, double) noexcept nogil
    ctypedef struct kd_sparse_passes:
        void (*rest)(const void*, ptrdiff_t, const int64_t*, ptrdiff_t, double, double*,
                     double*, void*) noexcept nogil
        void (*gradient)(const void*, ptrdiff_t, const int64_t*, const double*, ptrdiff_t, double,
                         double, double, double, void*) noexcept nogil
    ctypedef struct kd_target:
        const char* name
        kd_divergence_passes divergence[3]
        kd_sparse_passes sparse[2]
    const kd_target* kd_active_target
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


# The kernel's fixed partitions, for tests: classes per chunk of a long row, and the longest row
# that the short-row pass takes (one row per vector lane).
CHUNK_CLASSES = KD_CHUNK
SHORT_ROW_CLASSES = KD_SHORT_ROW
# Rows of the kernel's divergence table (codes 0 .. DIVERGENCE_COUNT - 1; 0 is KL).
DIVERGENCE_COUNT = KD_DIVERGENCE_COUNT


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
    return kd_active_target.name.decode().split("+")[0]


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

# Input elements as stored: float32, float64, or the bits of a 2-byte float (float16 or
# bfloat16, told apart by the dtype code the job carries). Gradients are float64 for float64
# inputs and float32 for every other.
ctypedef fused kd_input:
    float
    double
    unsigned short


cdef inline const kd_dtype_passes* passes(int divergence, int dtype) noexcept nogil:
    """The active target's passes for this divergence (its table row) and input dtype (its row)."""
    return &kd_active_target.divergence[divergence].dtype[dtype]


cdef inline double value_at(const kd_input* x, Py_ssize_t i, int dtype) noexcept nogil:
    """Element i of a row as a double (2-byte floats widened exactly)."""
    if kd_input is cython.ushort:
        return kd_bfloat16_to_double(x[i]) if dtype == KD_BFLOAT16 else kd_float16_to_double(x[i])
    else:
        return x[i]


cdef inline const kd_input* contiguous_row(
    const char* row, Py_ssize_t class_stride, Py_ssize_t n, kd_input* scratch
) noexcept nogil:
    """The row as a contiguous pointer: itself when it already is one, else copied to scratch."""
    cdef Py_ssize_t j
    if class_stride == <Py_ssize_t> sizeof(kd_input):
        return <const kd_input*> row
    for j in range(n):
        scratch[j] = (<const kd_input*> (row + j * class_stride))[0]
    return scratch


cdef inline void fill_row(void* x, Py_ssize_t n, double value, size_t out_size) noexcept nogil:
    """n gradient elements (float64 when out_size is 8, else float32) set to value."""
    cdef Py_ssize_t j
    if out_size == sizeof(double):
        for j in range(n):
            (<double*> x)[j] = value
    else:
        for j in range(n):
            (<float*> x)[j] = <float> value


cdef inline void write_at(void* x, Py_ssize_t j, double value, size_t out_size, bint round_to_odd) noexcept nogil:
    """Gradient element j set to value, rounded once (float32 with round_to_odd: to odd)."""
    if out_size == sizeof(double):
        (<double*> x)[j] = value
    elif round_to_odd:
        (<float*> x)[j] = kd_float_rounded_to_odd(value)
    else:
        (<float*> x)[j] = <float> value


cdef struct CompensatedSum:
    double total
    double error  # what the additions to `total` rounded away


cdef inline void add_to(CompensatedSum* acc, double x) noexcept nogil:
    """acc += x with Neumaier's compensation (a few eps for any number of terms)."""
    cdef double total = acc.total + x
    if fabs(acc.total) >= fabs(x):
        acc.error += (acc.total - total) + x
    else:
        acc.error += (x - total) + acc.total
    acc.total = total


cdef inline double value_of(CompensatedSum acc) noexcept nogil:
    # An inf or NaN total makes the error NaN; the total is then the answer.
    return acc.total + acc.error if isfinite(acc.total) else acc.total


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


cdef inline void merge_range(kd_row_range* row, const kd_row_range* chunk) noexcept nogil:
    # Extrema are exact: merging chunks gives the same values as one pass over the row.
    row.t_max = chunk.t_max if chunk.t_max > row.t_max else row.t_max
    row.s_max = chunk.s_max if chunk.s_max > row.s_max else row.s_max
    row.t_min = chunk.t_min if chunk.t_min < row.t_min else row.t_min
    row.s_min = chunk.s_min if chunk.s_min < row.s_min else row.s_min


cdef inline void merge_sums(kd_row_sums* row, const kd_row_sums* chunk) noexcept nogil:
    """Adds one chunk's sums to the row's, compensated, in chunk order."""
    cdef CompensatedSum acc
    cdef int k
    for k in range(KD_MAX_SUMS):
        acc = CompensatedSum(row.sum[k], row.err[k])
        add_to(&acc, chunk.sum[k])
        row.sum[k] = acc.total
        row.err[k] = acc.error + chunk.err[k]
    row.same_mask = max(row.same_mask, chunk.same_mask)  # 2 (a chunk left the same-mask mode) wins


cdef inline Py_ssize_t chunk_length(Py_ssize_t start, Py_ssize_t n) noexcept nogil:
    return min(<Py_ssize_t> KD_CHUNK, n - start)


cdef void row_extrema(
    const kd_input* t, const kd_input* s, Py_ssize_t n, const kd_dtype_passes* p, kd_row_range* out
) noexcept nogil:
    """The extrema of a whole row (NaN ignored), chunk by chunk."""
    cdef Py_ssize_t c, start
    cdef kd_row_range chunk
    p.range(t, s, chunk_length(0, n), out)
    for c in range(1, (n + KD_CHUNK - 1) // KD_CHUNK):
        start = c * KD_CHUNK
        p.range(t + start, s + start, chunk_length(start, n), &chunk)
        merge_range(out, &chunk)


cdef void row_sums(
    const kd_input* t, const kd_input* s, Py_ssize_t n, const kd_dtype_passes* p, double inv_T,
    const kd_row_range* extremes, kd_row_sums* sums, double* kept_a, double* kept_w,
    ptrdiff_t ahead_t, ptrdiff_t ahead_s,
) noexcept nogil:
    """The sums of a row whose extrema are known, chunk by chunk, merged in order. Unless NULL,
    kept_a and kept_w (indexed like the row) keep each class's values for the gradient pass:
    doubles, or float32 from each chunk's start where sums.kept_single (kept_value)."""
    cdef Py_ssize_t c, start
    cdef kd_row_sums chunk
    cdef int kept_single = 1
    memset(sums, 0, sizeof(kd_row_sums))
    for c in range((n + KD_CHUNK - 1) // KD_CHUNK):
        start = c * KD_CHUNK
        p.sums(t + start, s + start, chunk_length(start, n), extremes, inv_T, &chunk,
               kept_a + start if kept_a != NULL else NULL,
               kept_w + start if kept_w != NULL else NULL, ahead_t, ahead_s)
        merge_sums(sums, &chunk)
        kept_single &= chunk.kept_single  # the same in every chunk: a row's mode decides it
    sums.kept_single = kept_single


cdef void second_row_sums(
    const kd_input* t, const kd_input* s, Py_ssize_t n, const kd_dtype_passes* p,
    const kd_grad_row* row, kd_row_sums* sums,
) noexcept nogil:
    """The second pass's sums of a two-pass divergence over a row, chunk by chunk, merged in order,
    from the kept values and the first finish in ``row``."""
    cdef Py_ssize_t c, start
    cdef kd_row_sums chunk
    cdef kd_grad_row chunk_row = row[0]
    memset(sums, 0, sizeof(kd_row_sums))
    for c in range((n + KD_CHUNK - 1) // KD_CHUNK):
        start = c * KD_CHUNK
        chunk_row.kept_a = row.kept_a + start
        chunk_row.kept_w = row.kept_w + start
        p.second_sums(t + start, s + start, chunk_length(start, n), &chunk_row, &chunk)
        merge_sums(sums, &chunk)


cdef double settle_special(
    const kd_input* t_row, const kd_input* s_row, Py_ssize_t n, const LossTerms* terms,
) noexcept nogil:
    """The documented value of a row the formulas leave as NaN (README "Semantics"): NaN for a
    NaN or +inf logit anywhere; +inf where one side rules out (-inf) a class the other allows,
    when that makes the divergence infinite (the form's flags: for KL, a student -inf where the
    teacher is finite, a student row all -inf included); else NaN for a side with no class."""
    cdef Py_ssize_t i
    cdef double t_max = -INFINITY, s_max = -INFINITY, ti, si
    cdef bint has_nan = False, student_gap = False, teacher_gap = False
    for i in range(n):
        ti = value_at(t_row, i, terms.dtype)
        si = value_at(s_row, i, terms.dtype)
        has_nan |= (ti != ti) | (si != si)
        t_max = ti if ti > t_max else t_max
        s_max = si if si > s_max else s_max
        student_gap |= (si == -INFINITY) & (ti != -INFINITY)
        teacher_gap |= (ti == -INFINITY) & (si != -INFINITY)
    if has_nan or t_max == INFINITY or s_max == INFINITY:
        return NAN
    if (student_gap and terms.infinite_student_gap) or (teacher_gap and terms.infinite_teacher_gap):
        return INFINITY
    return NAN


cdef struct LossTerms:
    double temperature, inv_T
    double weights[3]  # the divergence's weights (KD_WEIGHTS: the mixture's lam, c_P, c_Q)
    bint two_pass      # the divergence takes a second pass over the kept values
    bint infinite_student_gap  # +inf where the student rules out a class the teacher allows
    bint infinite_teacher_gap  # +inf where the teacher rules out a class the student allows
    double kl_weight  # 0: no KL term, and the teacher row is not read
    double ce_weight  # 0: no cross-entropy term, and the label is not read
    # Bytes from a row to the next, which the sums' pass prefetches while it sums this row (0:
    # rows are copied to scratch first, nothing to prefetch).
    ptrdiff_t ahead_t, ahead_s
    int divergence   # the divergence's row of the divergence table (KD_KL, ...)
    int dtype        # the input's row of the dtype table (KD_FLOAT32, ...)
    size_t out_size  # bytes of one gradient element (8: float64, 4: float32)
    bint round_to_odd  # float32 gradients rounded to odd, for a caller that rounds them to 2 bytes


cdef inline double cancellation_limit(int dtype) noexcept nogil:
    """How far a row's finish may cancel before the row is redone recentred (kd_row_finish): the
    value's error is about the cancellation times the terms' own, measured ~1.4e-7 in the float32
    lanes (the target is 1e-6) and ~2e-16 in double (1e-11)."""
    return 1e3 if dtype == KD_FLOAT64 else 4.0


cdef bint recentre_row(
    kd_row_range* range, const kd_row_finish* finish, Py_ssize_t n, const LossTerms* terms,
) noexcept nogil:
    """Where the finish of a row of n classes cancels beyond its dtype's limit and asks for a
    recentring, moves the student's reference to s_max - recentre T (a float32 value for
    float-precision inputs, so that t_max - s_ref stays exact, as their passes assume) and returns
    True: the caller redoes the row's sums and finish. A row is recentred once; short rows (the
    short-row pass, whose cancellation stays within about 1 / KD_SHORT_ROW) never."""
    if n <= KD_SHORT_ROW or range.recentred or not (finish.cancellation > cancellation_limit(terms.dtype)):
        return False
    cdef double s_ref = range.s_max - finish.recentre * terms.temperature
    if terms.dtype != KD_FLOAT64:
        s_ref = <float> s_ref
    range.recentred = 1
    range.s_ref = s_ref
    return True


cdef inline double kept_value(const double* kept, Py_ssize_t y, bint single) noexcept nogil:
    """Class y's kept value: a double, or float32 at its chunk's start (kd_grad_row.kept_single)."""
    if not single:
        return kept[y]
    return (<const float*> (kept + (y // KD_CHUNK) * KD_CHUNK))[y % KD_CHUNK]


cdef double label_divergence_part(
    const kd_input* t_row, const kd_input* s_row, Py_ssize_t y, const LossTerms* terms,
    const kd_grad_row* row,
) noexcept nogil:
    """dD/ds at class y (Q_y - P_y for KL) from its kept values, as the gradient pass computes it."""
    return kd_active_target.divergence[terms.divergence].class_gradient(
        row, value_at(t_row, y, terms.dtype), value_at(s_row, y, terms.dtype),
        kept_value(row.kept_a, y, row.kept_single), kept_value(row.kept_w, y, row.kept_single))


cdef void row_gradient(
    const kd_input* t, const kd_input* s, Py_ssize_t n, const kd_dtype_passes* p,
    const kd_grad_row* row, char* d_s, char* d_t, size_t out_size,
) noexcept nogil:
    """The gradient pass over a row, chunk by chunk (each chunk's kept values at its own start)."""
    cdef Py_ssize_t c, start
    cdef kd_grad_row chunk_row = row[0]
    for c in range((n + KD_CHUNK - 1) // KD_CHUNK):
        start = c * KD_CHUNK
        if row.kept_a != NULL:
            chunk_row.kept_a = row.kept_a + start
            chunk_row.kept_w = row.kept_w + start
        p.gradient(t + start, s + start, chunk_length(start, n), &chunk_row, d_s + start * out_size,
                   d_t + start * out_size if d_t != NULL else NULL)


cdef double row_loss_and_grad(
    const kd_input* t, const kd_input* s, Py_ssize_t n, const LossTerms* terms, Py_ssize_t label,
    double short_kd, double grad_scale, void* d_s, void* d_t, double* kept,
) noexcept nogil:
    """The loss of one row, ``kl_weight T^2 KL + ce_weight CE``; and, unless d_s is NULL,
    grad_scale times its gradient into d_s and (unless NULL) d_t. kept: 2 * (n + KD_MAX_STEP)
    doubles for the per-class values the gradient pass reads (needed only with a gradient).
    short_kd: T^2 KL of a row that takes the short-row pass, as that pass computed it (so that
    the loss has the bits the loss alone gives); ignored for other rows.

    Special values, for the KL term: NaN makes d_s and d_t NaN; +inf from a class the student
    rules out leaves d_s finite (T (Q - P), as autograd gives) and makes d_t NaN; +inf from a
    student row all -inf makes both NaN. A NaN cross-entropy makes d_s NaN."""
    cdef kd_grad_row row
    cdef kd_row_sums sums
    cdef double T = terms.temperature, kd_value = 0.0, ce = 0.0, top1 = 1.0, rest1 = 0.0
    cdef bint with_kl = terms.kl_weight != 0.0, with_ce = terms.ce_weight != 0.0
    cdef bint want_grad = d_s != NULL, short_row = n <= KD_SHORT_ROW
    cdef bint need_sums = with_kl and (want_grad or not short_row)
    cdef bint keeping = want_grad or terms.two_pass
    cdef int dtype = terms.dtype
    cdef size_t out_size = terms.out_size
    cdef const kd_dtype_passes* p = passes(terms.divergence, dtype)
    memset(&row, 0, sizeof(row))
    row.inv_T = terms.inv_T
    row.ce_mode = KD_CE_NONE
    row.round_to_odd = terms.round_to_odd
    row.value_only = not want_grad
    if with_kl or with_ce:
        # With the cross-entropy alone, the student's extrema in both halves (t is not read).
        row_extrema(t if with_kl else s, s, n, p, &row.range)
    if need_sums:
        if keeping:
            row.kept_a = kept
            row.kept_w = kept + n + KD_MAX_STEP
        while True:  # twice where the finish asks for the row recentred (recentre_row)
            row_sums(t, s, n, p, terms.inv_T, &row.range, &sums, kept if keeping else NULL,
                     kept + n + KD_MAX_STEP if keeping else NULL, terms.ahead_t, terms.ahead_s)
            kd_active_target.divergence[terms.divergence].finish(&sums, 1, terms.weights, &row.finish)
            if not recentre_row(&row.range, &row.finish, n, terms):
                break
        row.kept_single = sums.kept_single  # 0 unless the sums' pass kept float32
        if terms.two_pass and row.finish.value == row.finish.value:
            second_row_sums(t, s, n, p, &row, &sums)
            kd_active_target.divergence[terms.divergence].second_finish(&sums, &row.finish)
    # The formulas settle every row but those with special values (NaN in the value).
    cdef bint settled = not need_sums or row.finish.value == row.finish.value
    if with_kl:
        if short_row and short_kd == short_kd:
            kd_value = short_kd
        elif short_row or not settled:
            kd_value = T * (T * settle_special(t, s, n, terms))
        else:
            kd_value = T * (T * row.finish.value)  # T^2 alone overflows for T > 1e154
    if with_ce:
        # Its own pass also at T = 1, where the KL's sums hold it too: the loss must not depend
        # on whether a gradient is asked for. The gradient pass then takes R = Q.
        p.normaliser(s, n, row.range.s_max, &top1, &rest1)
        row.ce_mode = KD_CE_FROM_Q if with_kl and terms.inv_T == 1.0 else KD_CE_OWN_EXP
        # CE = log Z1 - (s_y - s_max); NaN, +inf, or a row all -inf make Z1 NaN.
        ce = log_sum(top1, rest1) - (value_at(s, label, dtype) - row.range.s_max)
    cdef double loss = ((terms.kl_weight * kd_value if with_kl else 0.0)
                        + (terms.ce_weight * ce if with_ce else 0.0))
    if not want_grad:
        return loss

    if with_kl:
        row.kl_coef = grad_scale * terms.kl_weight * T
    if with_ce:
        row.inv_z1 = 1.0 / (top1 + rest1)
        row.ce_coef = grad_scale * terms.ce_weight
    if with_kl and not settled:
        fill_row(d_s, n, NAN, out_size)
        if d_t != NULL:
            fill_row(d_t, n, NAN, out_size)
        return loss
    row_gradient(t, s, n, p, &row, <char*> d_s, <char*> d_t if with_kl else NULL, out_size)
    if with_ce:
        # R_y - 1 would cancel in the pass's rounding; (e^(s_y - s_max) - Z1) / Z1 is exact
        # where s_y is the maximum.
        write_at(d_s, label, (label_divergence_part(t, s, label, terms, &row) * row.kl_coef if with_kl else 0.0)
                 + ((exp(value_at(s, label, dtype) - row.range.s_max) - top1) - rest1)
                 * row.inv_z1 * row.ce_coef, out_size, terms.round_to_odd)
    if d_t != NULL and not with_kl:
        fill_row(d_t, n, 0.0, out_size)
    if with_kl and kd_value == INFINITY and d_t != NULL:
        fill_row(d_t, n, NAN, out_size)
    if with_ce and ce != ce:
        fill_row(d_s, n, NAN, out_size)
    return loss


# ---------------------------------------------------------------------------------------------
# Layer 2: loops over rows
# ---------------------------------------------------------------------------------------------

cdef enum:
    SHORT_ROWS_BLOCK = 64  # rows per call of the short-row pass
    FINISH_ROWS = 8  # longer rows finished together, one per lane (a vector of doubles on AVX-512)
    # Logits per block of longer rows (at most 16 rows), and per hand-out of blocks to a thread
    # under the dynamic schedule: a thread another process holds up keeps at most a hand-out
    # (a fraction of a millisecond of work) from the others, and hand-outs that large keep the
    # shared counter off the hot path.
    BLOCK_ELEMENTS = 1 << 15
    HANDOUT_ELEMENTS = 1 << 16


cdef struct RowsJob:
    # One call of the row loop, as the block helper below needs it.
    const char* t_base
    const char* s_base
    Py_ssize_t t_row, t_col, s_row, s_col, n_classes
    LossTerms terms
    const int64_t* labels        # NULL: no labels
    const double* row_weights    # NULL: all 1
    const double* grad_output    # NULL: all 1
    double grad_scale
    double* out
    char* d_student              # NULL: no student gradient (or none at all)
    char* d_teacher              # NULL: no teacher gradient
    bint want_grad


cdef struct ThreadScratch:
    # One thread's buffers, allocated by the loop: row copies (classes not contiguous), the
    # kept per-class values (gradients), a row for a student gradient nobody wants.
    void* rows
    double* kept
    void* student_sink


cdef void short_rows_block(
    const RowsJob* job, Py_ssize_t first, Py_ssize_t count, double* kd_values, bint* written,
) noexcept nogil:
    """T^2 KL of rows [first, first + count) (count <= SHORT_ROWS_BLOCK, short rows, any strides)
    from the short-row pass, one row per lane; with the KL term alone and a student gradient
    wanted, the pass writes the gradient too (written[r]: row r's gradient is written)."""
    cdef Py_ssize_t n = job.n_classes, r, i
    cdef size_t row_bytes = n * job.terms.out_size  # of a gradient row
    cdef double coef[SHORT_ROWS_BLOCK]
    cdef kd_short_grad grad
    cdef bint lane_gradient = job.terms.ce_weight == 0.0 and job.d_student != NULL
    if lane_gradient:
        for r in range(count):
            i = first + r
            coef[r] = (job.grad_scale * (job.row_weights[i] if job.row_weights != NULL else 1.0)
                       * (job.grad_output[i] if job.grad_output != NULL else 1.0)
                       * job.terms.kl_weight * job.terms.temperature)
        grad.coef = coef
        grad.d_s = job.d_student + first * row_bytes
        grad.d_t = job.d_teacher + first * row_bytes if job.d_teacher != NULL else NULL
        grad.row_bytes = row_bytes
        grad.round_to_odd = job.terms.round_to_odd
    passes(job.terms.divergence, job.terms.dtype).short_rows(
        job.t_base + first * job.t_row, job.s_base + first * job.s_row,
        job.t_row, job.s_row, job.t_col, job.s_col, count, n,
        job.terms.inv_T, job.terms.weights, kd_values, &grad if lane_gradient else NULL)
    for r in range(count):
        written[r] = lane_gradient and kd_values[r] == kd_values[r]
        kd_values[r] = job.terms.temperature * (job.terms.temperature * kd_values[r])


cdef void loss_rows_block(
    const RowsJob* job, Py_ssize_t first, Py_ssize_t count, kd_input* t_copy, kd_input* s_copy,
) noexcept nogil:
    """The loss alone of rows [first, first + count) of more than SHORT_ROW_CLASSES classes, for a
    one-pass divergence and no cross-entropy: each row's extrema and sums, then one finish for up
    to FINISH_ROWS rows, one row per lane. A row's finish does not depend on the rows beside it,
    so each value has the bits row_loss_and_grad gives; rows of a few hundred classes pay the
    finish's latency (divisions, a log) once per group instead of once per row."""
    cdef Py_ssize_t n = job.n_classes, g, r, i, m
    cdef const kd_dtype_passes* p = passes(job.terms.divergence, job.terms.dtype)
    cdef kd_row_range extent[FINISH_ROWS]
    cdef kd_row_sums sums[FINISH_ROWS]
    cdef kd_row_finish finished[FINISH_ROWS]
    cdef const kd_input* t
    cdef const kd_input* s
    cdef double T = job.terms.temperature, kd_value, weight
    g = 0
    while g < count:
        m = min(<Py_ssize_t> FINISH_ROWS, count - g)
        for r in range(m):
            i = first + g + r
            t = contiguous_row(job.t_base + i * job.t_row, job.t_col, n, t_copy)
            s = contiguous_row(job.s_base + i * job.s_row, job.s_col, n, s_copy)
            row_extrema(t, s, n, p, &extent[r])
            row_sums(t, s, n, p, job.terms.inv_T, &extent[r], &sums[r], NULL, NULL,
                     job.terms.ahead_t, job.terms.ahead_s)
        kd_active_target.divergence[job.terms.divergence].finish(sums, <int> m, job.terms.weights, finished)
        for r in range(m):
            i = first + g + r
            if recentre_row(&extent[r], &finished[r], n, &job.terms):  # as row_loss_and_grad
                t = contiguous_row(job.t_base + i * job.t_row, job.t_col, n, t_copy)
                s = contiguous_row(job.s_base + i * job.s_row, job.s_col, n, s_copy)
                row_sums(t, s, n, p, job.terms.inv_T, &extent[r], &sums[r], NULL, NULL, 0, 0)
                kd_active_target.divergence[job.terms.divergence].finish(&sums[r], 1, job.terms.weights,
                                                                         &finished[r])
            weight = job.row_weights[i] if job.row_weights != NULL else 1.0
            if weight == 0.0 or (job.labels != NULL and job.labels[i] < 0):  # left out: 0
                job.out[i] = 0.0
                continue
            if finished[r].value == finished[r].value:
                kd_value = T * (T * finished[r].value)  # T^2 alone overflows for T > 1e154
            else:  # special values: the documented value, from a scan of the row
                kd_value = T * (T * settle_special(
                    contiguous_row(job.t_base + i * job.t_row, job.t_col, n, t_copy),
                    contiguous_row(job.s_base + i * job.s_row, job.s_col, n, s_copy), n, &job.terms))
            job.out[i] = weight * (job.terms.kl_weight * kd_value + 0.0)  # as row_loss_and_grad
        g += m


cdef void rows_block(
    const RowsJob* job, Py_ssize_t first, Py_ssize_t count, ThreadScratch* scratch,
    kd_input dtype_tag,
) noexcept nogil:
    """The loop's work for rows [first, first + count): short rows get their KL from the
    short-row pass (one row per lane) and, for the KL term alone, their gradient too; the loss
    alone of longer rows (one-pass divergence, no cross-entropy) goes through loss_rows_block;
    every other row, and short rows with a cross-entropy term, through row_loss_and_grad."""
    cdef Py_ssize_t n = job.n_classes, r, i, label
    cdef size_t row_bytes = n * job.terms.out_size  # of a gradient row
    cdef double short_kd[SHORT_ROWS_BLOCK]
    cdef bint written[SHORT_ROWS_BLOCK]
    cdef double weight
    cdef void* d_s
    cdef void* d_t
    cdef kd_input* t_copy = <kd_input*> scratch.rows
    cdef kd_input* s_copy = t_copy + n if t_copy != NULL else NULL
    cdef bint short_kl = job.terms.kl_weight != 0.0 and n <= KD_SHORT_ROW
    if short_kl:
        short_rows_block(job, first, count, short_kd, written)
    if (short_kl and not job.want_grad and job.terms.ce_weight == 0.0 and job.row_weights == NULL
            and job.labels == NULL):
        # The loss alone of short rows, every weight 1: the values as below, without the
        # per-row bookkeeping; rows with special values (NaN) still go through the row helper.
        for r in range(count):
            if short_kd[r] == short_kd[r]:
                job.out[first + r] = job.terms.kl_weight * short_kd[r] + 0.0
            else:
                job.out[first + r] = row_loss_and_grad(
                    contiguous_row(job.t_base + (first + r) * job.t_row, job.t_col, n, t_copy),
                    contiguous_row(job.s_base + (first + r) * job.s_row, job.s_col, n, s_copy),
                    n, &job.terms, 0, NAN, job.grad_scale, NULL, NULL, NULL)
        return
    if (not short_kl and job.terms.kl_weight != 0.0 and not job.want_grad and job.terms.ce_weight == 0.0
            and not job.terms.two_pass):
        loss_rows_block(job, first, count, t_copy, s_copy)
        return
    for r in range(count):
        i = first + r
        d_s = <void*> (job.d_student + i * row_bytes) if job.d_student != NULL else NULL
        if d_s == NULL and job.want_grad:
            d_s = scratch.student_sink
        d_t = <void*> (job.d_teacher + i * row_bytes) if job.d_teacher != NULL else NULL
        weight = job.row_weights[i] if job.row_weights != NULL else 1.0
        label = job.labels[i] if job.labels != NULL else 0
        if weight == 0.0 or label < 0:  # left out: whatever it holds, 0
            job.out[i] = 0.0
            if d_s != NULL:
                fill_row(d_s, n, 0.0, job.terms.out_size)
            if d_t != NULL:
                fill_row(d_t, n, 0.0, job.terms.out_size)
            continue
        if short_kl and (written[r] or (not job.want_grad and job.terms.ce_weight == 0.0
                                        and short_kd[r] == short_kd[r])):
            job.out[i] = weight * (job.terms.kl_weight * short_kd[r] + 0.0)  # as row_loss_and_grad
            continue
        job.out[i] = weight * row_loss_and_grad(
            contiguous_row(job.t_base + i * job.t_row, job.t_col, n, t_copy),
            contiguous_row(job.s_base + i * job.s_row, job.s_col, n, s_copy),
            n,
            &job.terms,
            label,
            short_kd[r] if short_kl else NAN,
            job.grad_scale * weight * (job.grad_output[i] if job.grad_output != NULL else 1.0),
            d_s,
            d_t,
            scratch.kept,
        )


cdef bint long_rows(
    const RowsJob* job, Py_ssize_t n_rows, int num_threads, kd_input dtype_tag,
) noexcept nogil:
    """The loop for a few long contiguous rows and the KL term alone: each row's chunks are
    shared among the threads, for the extrema, the sums and the gradient, one chunk at a time
    (dynamic schedule: a thread held up by another process leaves its chunks to the others).
    The chunks, and the order in which their sums are merged, are those of row_sums, so the
    results are bitwise those of one thread. Returns False (nothing done) if out of memory."""
    cdef Py_ssize_t n = job.n_classes, n_chunks = (n + KD_CHUNK - 1) // KD_CHUNK, i, c, start
    cdef size_t out_size = job.terms.out_size, row_bytes = n * out_size  # of a gradient row
    cdef kd_row_range* extrema = <kd_row_range*> malloc(n_chunks * sizeof(kd_row_range))
    cdef kd_row_sums* chunks = <kd_row_sums*> malloc(n_chunks * sizeof(kd_row_sums))
    cdef double* kept = NULL
    cdef char* sink = NULL
    cdef double T = job.terms.temperature, inv_T = job.terms.inv_T, weight, kd_value
    cdef const kd_input* t
    cdef const kd_input* s
    cdef char* d_s
    cdef char* d_t
    cdef kd_grad_row row
    cdef kd_grad_row chunk_row
    cdef kd_row_sums sums
    cdef const kd_dtype_passes* p = passes(job.terms.divergence, job.terms.dtype)
    cdef bint keeping = job.want_grad or job.terms.two_pass
    if keeping:
        kept = <double*> malloc(2 * (n + KD_MAX_STEP) * sizeof(double))
    if job.want_grad and job.d_student == NULL:
        sink = <char*> malloc(row_bytes)
    if extrema == NULL or chunks == NULL or (keeping and kept == NULL) or (
            job.want_grad and job.d_student == NULL and sink == NULL):
        free(extrema)
        free(chunks)
        free(kept)
        free(sink)
        return False
    for i in range(n_rows):
        t = <const kd_input*> (job.t_base + i * job.t_row)
        s = <const kd_input*> (job.s_base + i * job.s_row)
        d_s = job.d_student + i * row_bytes if job.d_student != NULL else sink
        d_t = job.d_teacher + i * row_bytes if job.d_teacher != NULL else NULL
        weight = job.row_weights[i] if job.row_weights != NULL else 1.0
        if weight == 0.0 or (job.labels != NULL and job.labels[i] < 0):  # left out: never read
            job.out[i] = 0.0
            if d_s != NULL:
                fill_row(d_s, n, 0.0, out_size)
            if d_t != NULL:
                fill_row(d_t, n, 0.0, out_size)
            continue
        memset(&row, 0, sizeof(row))
        row.inv_T = inv_T
        row.ce_mode = KD_CE_NONE
        row.round_to_odd = job.terms.round_to_odd
        row.value_only = not job.want_grad
        for c in prange(n_chunks, schedule="dynamic", num_threads=num_threads):
            p.range(t + c * KD_CHUNK, s + c * KD_CHUNK, chunk_length(c * KD_CHUNK, n), &extrema[c])
        row.range = extrema[0]
        for c in range(1, n_chunks):
            merge_range(&row.range, &extrema[c])
        while True:  # twice where the finish asks for the row recentred (as row_loss_and_grad)
            for c in prange(n_chunks, schedule="dynamic", num_threads=num_threads):
                start = c * KD_CHUNK
                p.sums(t + start, s + start, chunk_length(start, n), &row.range, inv_T, &chunks[c],
                       kept + start if kept != NULL else NULL,
                       kept + n + KD_MAX_STEP + start if kept != NULL else NULL, 0, 0)
            memset(&sums, 0, sizeof(sums))
            row.kept_single = 1  # as row_sums: the same in every chunk (0 where none kept)
            for c in range(n_chunks):
                merge_sums(&sums, &chunks[c])
                row.kept_single &= chunks[c].kept_single
            kd_active_target.divergence[job.terms.divergence].finish(&sums, 1, job.terms.weights, &row.finish)
            if not recentre_row(&row.range, &row.finish, n, &job.terms):
                break
        if job.terms.two_pass and row.finish.value == row.finish.value:
            row.kept_a = kept
            row.kept_w = kept + n + KD_MAX_STEP
            for c in prange(n_chunks, schedule="dynamic", num_threads=num_threads):
                start = c * KD_CHUNK
                chunk_row = row  # the same row constants, with the kept values of this chunk
                chunk_row.kept_a = kept + start
                chunk_row.kept_w = kept + n + KD_MAX_STEP + start
                p.second_sums(t + start, s + start, chunk_length(start, n), &chunk_row, &chunks[c])
            memset(&sums, 0, sizeof(sums))
            for c in range(n_chunks):
                merge_sums(&sums, &chunks[c])
            kd_active_target.divergence[job.terms.divergence].second_finish(&sums, &row.finish)
        kd_value = T * (T * (row.finish.value if row.finish.value == row.finish.value
                             else settle_special(t, s, n, &job.terms)))
        job.out[i] = weight * (job.terms.kl_weight * kd_value + 0.0)  # as row_loss_and_grad
        if not job.want_grad:
            continue
        if row.finish.value != row.finish.value:
            fill_row(d_s, n, NAN, out_size)
            if d_t != NULL:
                fill_row(d_t, n, NAN, out_size)
            continue
        row.kl_coef = (job.grad_scale * weight * (job.grad_output[i] if job.grad_output != NULL else 1.0)
                       * job.terms.kl_weight * T)
        for c in prange(n_chunks, schedule="dynamic", num_threads=num_threads):
            start = c * KD_CHUNK
            chunk_row = row  # the same row constants, with the kept values of this chunk
            chunk_row.kept_a = kept + start
            chunk_row.kept_w = kept + n + KD_MAX_STEP + start
            p.gradient(t + start, s + start, chunk_length(start, n), &chunk_row, d_s + start * out_size,
                       d_t + start * out_size if d_t != NULL else NULL)
        if kd_value == INFINITY and d_t != NULL:
            fill_row(d_t, n, NAN, out_size)
    free(extrema)
    free(chunks)
    free(kept)
    free(sink)
    return True


cdef int rows_loop(RowsJob* job, Py_ssize_t n_rows, int num_threads, kd_input dtype_tag) noexcept nogil:
    """Every row of the job, in blocks under a dynamic schedule; 0, or -1 if out of memory."""
    cdef Py_ssize_t n = job.n_classes, b
    cdef bint contiguous = job.t_col == <Py_ssize_t> sizeof(kd_input) and job.s_col == <Py_ssize_t> sizeof(kd_input)
    if (n_rows < num_threads and n > KD_CHUNK and contiguous and job.terms.ce_weight == 0.0):
        # Fewer rows than threads: share each row's chunks among them.
        if long_rows(job, n_rows, num_threads, dtype_tag):
            return 0
    # Rows per block: the short-row pass takes SHORT_ROWS_BLOCK at a time; longer rows go a few
    # at a time (about BLOCK_ELEMENTS logits), leaving every thread several blocks.
    cdef Py_ssize_t block = SHORT_ROWS_BLOCK if n <= KD_SHORT_ROW else max(
        1, min(16, BLOCK_ELEMENTS // n, n_rows // (4 * num_threads)))
    cdef Py_ssize_t n_blocks = (n_rows + block - 1) // block
    cdef ThreadScratch* scratch
    cdef int failed = 0
    cdef int* failure = &failed
    cdef bint keeps = (job.want_grad or job.terms.two_pass) and job.terms.kl_weight != 0.0
    cdef bint sinks = job.want_grad and job.d_student == NULL
    num_threads = <int> min(<Py_ssize_t> num_threads, n_blocks)
    # Blocks are handed out a chunk of about HANDOUT_ELEMENTS logits at a time (and at least 8
    # hand-outs per thread): a thread another process holds up leaves the rest to the others,
    # and holds up the end of the call by one hand-out at most.
    cdef Py_ssize_t chunk = max(1, min(HANDOUT_ELEMENTS // (block * n), n_blocks // (8 * num_threads)))
    with parallel(num_threads=num_threads, use_threads_if=num_threads > 1):
        # Assigned here, so private to each thread: its own buffers.
        scratch = <ThreadScratch*> malloc(sizeof(ThreadScratch))
        if scratch != NULL:
            scratch.rows = malloc(2 * n * sizeof(kd_input)) if not contiguous else NULL
            scratch.kept = <double*> malloc(2 * (n + KD_MAX_STEP) * sizeof(double)) if keeps else NULL
            scratch.student_sink = malloc(n * job.terms.out_size) if sinks else NULL
        if (scratch == NULL or (not contiguous and scratch.rows == NULL)
                or (keeps and scratch.kept == NULL) or (sinks and scratch.student_sink == NULL)):
            failure[0] = 1
        for b in prange(n_blocks, schedule="dynamic", chunksize=chunk):
            if not failure[0]:
                rows_block(job, b * block, min(block, n_rows - b * block), scratch, dtype_tag)
        if scratch != NULL:
            free(scratch.rows)
            free(scratch.kept)
            free(scratch.student_sink)
            free(scratch)
    return -1 if failed else 0


# ---------------------------------------------------------------------------------------------
# Layer 3: the entries Python calls (kdloss._api, kdloss._training)
# ---------------------------------------------------------------------------------------------

cdef void run_rows(
    const kd_input[:, :] student,
    const kd_input[:, :] teacher,
    object form,
    int dtype,
    const int64_t* labels,
    double temperature,
    double kl_weight,
    double ce_weight,
    const double* row_weights,
    const double* grad_output,
    double grad_scale,
    double* out,
    char* d_student,
    char* d_teacher,
    bint round_to_odd,
    int num_threads,
) except *:
    """The row loop over every row of two 2-D views (the entries below unpack their arguments)."""
    cdef Py_ssize_t n_rows = teacher.shape[0]
    if n_rows == 0:
        return
    cdef RowsJob job
    job.t_base = <const char*> &teacher[0, 0]
    job.s_base = <const char*> &student[0, 0]
    job.t_row, job.t_col = teacher.strides[0], teacher.strides[1]
    job.s_row, job.s_col = student.strides[0], student.strides[1]
    job.n_classes = teacher.shape[1]
    cdef bint contiguous = (teacher.strides[1] == <Py_ssize_t> sizeof(kd_input)
                            and student.strides[1] == <Py_ssize_t> sizeof(kd_input))
    cdef int divergence = form.code
    if not 0 <= divergence < KD_DIVERGENCE_COUNT:
        raise ValueError(f"the kernel's divergence table has no row {divergence}")
    job.terms = LossTerms(temperature, 1.0 / temperature, form.weights,
                          kd_active_target.divergence[divergence].second_finish != NULL,
                          form.infinite_where_student_rules_out, form.infinite_where_teacher_rules_out,
                          kl_weight, ce_weight,
                          teacher.strides[0] if contiguous else 0, student.strides[0] if contiguous else 0,
                          divergence, dtype, sizeof(double) if kd_input is double else sizeof(float),
                          round_to_odd)
    job.labels = labels
    job.row_weights = row_weights
    job.grad_output = grad_output
    job.grad_scale = grad_scale
    job.out = out
    job.d_student = d_student
    job.d_teacher = d_teacher
    job.want_grad = d_student != NULL or d_teacher != NULL
    cdef int status
    with nogil:
        status = rows_loop(&job, n_rows, num_threads, <kd_input> 0)
    if status != 0:
        raise MemoryError("kdloss: out of memory for the kernel's per-thread row buffers")


# Gradients: float64 for float64 logits, float32 for every other dtype.
ctypedef fused kd_output:
    float
    double


# The dtype table's rows, for the entries' ``dtype`` argument (float16 and bfloat16 are handed
# over as their bits, a ``uint16`` view, and told apart by this code).
DTYPE_CODES = {"float32": KD_FLOAT32, "float64": KD_FLOAT64, "float16": KD_FLOAT16, "bfloat16": KD_BFLOAT16}


cdef int checked_dtype(int dtype, kd_input input_tag, size_t out_size) except -1:
    """``dtype`` when it is the row of the logits' element type and of the gradients' (out_size:
    0 when there are none), else ValueError: a wrong combination would read the wrong bits."""
    cdef bint matches
    if kd_input is float:
        matches = dtype == KD_FLOAT32
    elif kd_input is double:
        matches = dtype == KD_FLOAT64
    else:
        matches = dtype == KD_FLOAT16 or dtype == KD_BFLOAT16
    cdef size_t gradient_size = sizeof(double) if kd_input is double else sizeof(float)
    if not matches or (out_size != 0 and out_size != gradient_size):
        raise ValueError(f"dtype code {dtype} does not match the arrays' element types")
    return dtype


def loss_grad_rows(
    const kd_input[:, :] student,
    const kd_input[:, :] teacher,
    object form,
    int dtype,
    const int64_t[::1] labels,
    double temperature,
    double kl_weight,
    double ce_weight,
    const double[::1] row_weights,
    const double[::1] grad_output,
    double grad_scale,
    double[::1] out,
    kd_output[:, ::1] d_student,
    kd_output[:, ::1] d_teacher,
    bint round_to_odd,
    int num_threads,
):
    """For every row i: ``out[i] = w_i * loss_i`` with ``loss_i = kl_weight T^2 D + ce_weight
    CE``, and ``d_student[i]`` (``d_teacher[i]``) = ``grad_scale * g_i * w_i`` times its gradient.

    Contract, beyond the module's: ``form`` the divergence's ``kdloss._divergences.KernelForm``
    (its row of the divergence table and that row's weights); ``dtype`` the
    logits' row of the dtype table (``DTYPE_CODES``; float16 and bfloat16 as ``uint16`` bits),
    gradients float64 for float64 logits and float32 otherwise. ``labels`` (in [0, classes), or
    negative: the row is left out), ``row_weights`` (w, finite and >= 0; a weight of 0 leaves the
    row out) and ``grad_output`` (g) have one entry per row, or none (no cross-entropy term; all
    weights 1; all g 1). ``d_student`` and ``d_teacher`` have the inputs' shape, or no rows: no
    such gradient (with a teacher gradient only, the student's is computed into per-thread
    scratch and dropped). A row left out gets ``out[i] = 0`` and zero gradients, whatever it
    holds (NaN included): only the short-row pass reads it, beside its neighbours, and drops it.
    ``round_to_odd``: float32 gradients rounded to odd (for a caller that rounds them on to 2 bytes).
    """
    if teacher.shape[0] == 0:
        return
    run_rows(student, teacher, form, checked_dtype(dtype, <kd_input> 0, sizeof(kd_output)),
             &labels[0] if labels.shape[0] > 0 else NULL,
             temperature, kl_weight, ce_weight,
             &row_weights[0] if row_weights.shape[0] > 0 else NULL,
             &grad_output[0] if grad_output.shape[0] > 0 else NULL,
             grad_scale, &out[0],
             <char*> &d_student[0, 0] if d_student.shape[0] > 0 else NULL,
             <char*> &d_teacher[0, 0] if d_teacher.shape[0] > 0 else NULL,
             round_to_odd, num_threads)


def kl_rows(
    const kd_input[:, :] student,
    const kd_input[:, :] teacher,
    object form,
    int dtype,
    double temperature,
    double[::1] out,
    int num_threads,
):
    """out[i] = T^2 * D(softmax(teacher[i] / T), softmax(student[i] / T)) for every row i, D the
    divergence computed as ``form`` (a ``KernelForm``): the row loop with the divergence term alone, no gradient.
    ``dtype`` as in ``loss_grad_rows``."""
    if teacher.shape[0] == 0:
        return
    run_rows(student, teacher, form, checked_dtype(dtype, <kd_input> 0, 0), NULL, temperature,
             1.0, 0.0, NULL, NULL, 1.0, &out[0], NULL, NULL, False, num_threads)


def single_row_loss(object student, object teacher, object temperature, object form=None):
    """T^2 D of one row given as two 1-D C-contiguous arrays of the same dtype (float64, float32,
    float16, or ``ml_dtypes.bfloat16``) and at most KD_CHUNK classes, with a finite float
    temperature > 0; None for anything else. D is KL, or the divergence of ``form`` (a
    ``KernelForm``, already resolved; reverse KL runs as KL of the exchanged pair, as in the
    row loop).

    The shortcut for the commonest small call, ``kd_loss(s, t, T)`` on one row: it recognises
    input already in the kernel's form (no conversion, no validation needed) and computes the
    row by the path the row loop takes for it, so the result has the same bits. Everything else
    returns None and goes through the general path, which validates.
    """
    if type(student) is not np.ndarray or type(teacher) is not np.ndarray or type(temperature) is not float:
        return None
    cdef double T = temperature
    if not (T > 0.0 and isfinite(T) and isfinite(1.0 / T)):
        return None
    cdef RowForm row_form = RowForm(KD_KL, [0.0, 0.0, 0.0], True, False)  # KL's (kdloss._divergences.KL_FORM)
    if form is not None:
        if form.exchanged is not None:
            student, teacher, form = teacher, student, form.exchanged
        row_form.divergence = form.code
        row_form.weights[0], row_form.weights[1], row_form.weights[2] = form.weights
        row_form.infinite_student_gap = form.infinite_where_student_rules_out
        row_form.infinite_teacher_gap = form.infinite_where_teacher_rules_out
    cdef int dtype = -1, bits_dtype = -1  # bits_dtype: what a "H" (uint16) buffer holds
    if student.dtype.char == "E" and student.dtype.name == "bfloat16" and teacher.dtype == student.dtype:
        # ml_dtypes' bfloat16 has no buffer format: its bits, as the general path passes them.
        student, teacher, bits_dtype = student.view(np.uint16), teacher.view(np.uint16), KD_BFLOAT16
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
    cdef Py_ssize_t n = s_view.shape[0] if s_view.ndim == 1 else 0
    if (s_view.ndim == 1 and t_view.ndim == 1 and t_view.shape[0] == n and 1 <= n <= KD_CHUNK
            and strcmp(s_view.format, t_view.format) == 0):
        if strcmp(s_view.format, "d") == 0:
            dtype = KD_FLOAT64
        elif strcmp(s_view.format, "f") == 0:
            dtype = KD_FLOAT32
        elif strcmp(s_view.format, "e") == 0:
            dtype = KD_FLOAT16
        elif strcmp(s_view.format, "H") == 0:
            dtype = bits_dtype
    cdef double* kept = NULL
    if dtype >= 0 and kd_active_target.divergence[row_form.divergence].second_finish != NULL and n > KD_SHORT_ROW:
        kept = <double*> malloc(2 * (n + KD_MAX_STEP) * sizeof(double))
        if kept == NULL:
            dtype = -1  # the general path, which reports the memory error
    if dtype >= 0:
        with nogil:
            if dtype == KD_FLOAT64:
                loss = one_row_loss(<const double*> t_view.buf, <const double*> s_view.buf, n, T, dtype, &row_form,
                                    kept)
            elif dtype == KD_FLOAT32:
                loss = one_row_loss(<const float*> t_view.buf, <const float*> s_view.buf, n, T, dtype, &row_form,
                                    kept)
            elif dtype == KD_FLOAT16 or dtype == KD_BFLOAT16:
                loss = one_row_loss(<const unsigned short*> t_view.buf, <const unsigned short*> s_view.buf, n,
                                    T, dtype, &row_form, kept)
    free(kept)
    PyBuffer_Release(&s_view)
    PyBuffer_Release(&t_view)
    return loss if dtype >= 0 else None


cdef struct RowForm:
    # A KernelForm's fields for the kernel (LossTerms'): its row of the divergence table, weights
    # and special values.
    int divergence
    double weights[3]
    bint infinite_student_gap, infinite_teacher_gap


cdef double one_row_loss(
    const kd_input* t, const kd_input* s, Py_ssize_t n, double temperature, int dtype, const RowForm* form,
    double* kept,
) noexcept nogil:
    """T^2 D of one contiguous row of n <= KD_CHUNK classes, as the row loop computes it. kept:
    2 (n + KD_MAX_STEP) doubles for a two-pass divergence's kept values (else NULL)."""
    cdef RowsJob job
    cdef double out
    cdef ThreadScratch scratch
    memset(&job, 0, sizeof(job))
    memset(&scratch, 0, sizeof(scratch))
    scratch.kept = kept
    job.t_base = <const char*> t
    job.s_base = <const char*> s
    job.t_col = job.s_col = sizeof(kd_input)
    job.n_classes = n
    job.terms = LossTerms(temperature, 1.0 / temperature, form.weights,
                          kd_active_target.divergence[form.divergence].second_finish != NULL,
                          form.infinite_student_gap, form.infinite_teacher_gap, 1.0, 0.0, 0, 0,
                          form.divergence, dtype, sizeof(double) if kd_input is double else sizeof(float), False)
    job.grad_scale = 1.0
    job.out = &out
    rows_block(&job, 0, 1, &scratch, <kd_input> 0)
    return out


# ---------------------------------------------------------------------------------------------
# softmax and log_softmax (scalar code with libm; not in the speed targets)
# ---------------------------------------------------------------------------------------------

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


def softmax_rows(
    const floating[:, :] logits,
    double temperature,
    floating[:, ::1] out,
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
    cdef bint contiguous = class_stride == <Py_ssize_t> sizeof(floating)
    cdef floating* row_scratch
    cdef int failed = 0
    cdef int* failure = &failed
    num_threads = <int> min(<Py_ssize_t> num_threads, n_rows)
    # Rows go to the threads as they ask (dynamic), about HANDOUT_ELEMENTS logits at a time.
    cdef Py_ssize_t rows_per_handout = max(1, HANDOUT_ELEMENTS // n_classes)
    with nogil, parallel(num_threads=num_threads, use_threads_if=num_threads > 1):
        row_scratch = NULL
        if not contiguous:
            row_scratch = <floating*> malloc(n_classes * sizeof(floating))
            if row_scratch == NULL:
                failure[0] = 1
        for i in prange(n_rows, schedule="dynamic", chunksize=rows_per_handout):
            if not failure[0]:
                row_softmax(contiguous_row(base + i * row_stride, class_stride, n_classes, row_scratch),
                            n_classes, inv_T, &out[i, 0], take_log)
        free(row_scratch)
    if failed:
        raise MemoryError("kdloss: out of memory for the kernel's per-thread row buffers")


# The sparse (top-k) teacher's passes over the student's rows (kdloss._sparse).
include "_sparse_rows.pxi"
