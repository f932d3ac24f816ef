# The student's passes of a sparse (top-k) teacher (``_simd/sparse_rows.h``), over the rows of a
# block under ``prange``; included by _kernel.pyx. Contract (kdloss._sparse keeps it): student
# rows C-contiguous, float32 or float64; ``ids[i, :counts[i]]`` sorted, distinct, in range;
# per-row arrays C-contiguous with one entry per row; the gradient of the student's dtype.


def sparse_rest_rows(
    const floating[:, ::1] student,
    const int64_t[:, ::1] ids,
    const int64_t[::1] counts,
    double temperature,
    double[::1] s_max,
    double[::1] rest,
    int num_threads,
    floating[:, ::1] exps=None,
):
    """Per row i: ``s_max[i]``, the row's maximum, and ``rest[i]``, the sum over the classes
    outside ``ids[i, :counts[i]]`` of ``exp((s - s_max) / T)``; with ``exps`` (the gradient's
    array), every class's ``exp((s - s_max) / T)`` stored there for ``sparse_gradient_rows``."""
    cdef Py_ssize_t n_rows = student.shape[0], n = student.shape[1], i
    if n_rows == 0:
        return
    cdef int dtype = KD_FLOAT64 if floating is double else KD_FLOAT32
    cdef double inv_T = 1.0 / temperature
    cdef bint store = exps is not None
    with nogil, parallel(num_threads=num_threads, use_threads_if=num_threads > 1):
        for i in prange(n_rows, schedule="dynamic"):
            kd_active_target.sparse[dtype].rest(&student[i, 0], n, &ids[i, 0], counts[i], inv_T,
                                                &s_max[i], &rest[i],
                                                <void*>&exps[i, 0] if store else NULL)


def sparse_gradient_rows(
    const floating[:, ::1] student,
    const int64_t[:, ::1] ids,
    const int64_t[::1] counts,
    const double[:, ::1] id_grads,
    const double[::1] s_max,
    const double[::1] coef,
    double temperature,
    floating[:, ::1] d_student,
    int num_threads,
    const double[::1] stored_rest=None,
):
    """Per row i: ``d_student[i, j] = coef[i] exp((s_j - s_max[i]) / T)``, and at the ids
    ``d_student[i, ids[i, m]] = id_grads[i, m]`` (m < counts[i]). ``stored_rest``: the rest sums
    of a ``sparse_rest_rows`` call that stored its exps in ``d_student``, which rows then scale in
    place (rows with a tiny rest sum recompute theirs)."""
    cdef Py_ssize_t n_rows = student.shape[0], n = student.shape[1], i
    if n_rows == 0:
        return
    cdef int dtype = KD_FLOAT64 if floating is double else KD_FLOAT32
    cdef double inv_T = 1.0 / temperature
    cdef bint stored = stored_rest is not None
    with nogil, parallel(num_threads=num_threads, use_threads_if=num_threads > 1):
        for i in prange(n_rows, schedule="dynamic"):
            kd_active_target.sparse[dtype].gradient(&student[i, 0], n, &ids[i, 0], &id_grads[i, 0],
                                                    counts[i], s_max[i], inv_T, coef[i],
                                                    stored_rest[i] if stored else -1.0,
                                                    &d_student[i, 0])
