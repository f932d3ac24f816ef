# Included by _kernel.pyx: losses with their gradients, and Hinton's loss (KL + cross-entropy).
#
# A row's loss is  kl_weight * T^2 KL(P || Q) + ce_weight * CE(softmax(s), label)  with
# P = softmax(t / T), Q = softmax(s / T), R = softmax(s), and its gradient
#
#     d_s = kl_weight T (Q - P) + ce_weight (R - onehot(label))
#     d_t = kl_weight T P (log P - log Q - KL) = kl_weight T P (a - b - E_P[a - b])
#
# with a = (t - t_max) / T, b = (s - s_max) / T. The KL term's value is computed exactly as
# kl_rows computes it (the same bits). The gradient takes one more vectorised pass over the row,
# from the sums the loss needed. Same layers as the rest of the kernel: row helpers, then a loop
# over rows under prange (each row alone, so results do not depend on the thread count).

# ---------------------------------------------------------------------------------------------
# Layer 1: row helpers
# ---------------------------------------------------------------------------------------------

cdef struct LossTerms:
    double temperature, inv_T
    double kl_weight  # 0: no KL term, and the teacher row is not read
    double ce_weight  # 0: no cross-entropy term, and the label is not read


cdef inline void fill_row(floating* x, Py_ssize_t n, double value) noexcept nogil:
    cdef Py_ssize_t j
    for j in range(n):
        x[j] = <floating> value


cdef void row_extrema(const floating* t, const floating* s, Py_ssize_t n, kd_row_range* out) noexcept nogil:
    """The extrema of a whole row (NaN ignored), chunk by chunk or in scalar code."""
    cdef Py_ssize_t c, j
    cdef kd_row_range chunk
    if kd_active_target != NULL:
        chunk_range(t, s, 0, n, out)
        for c in range(1, (n + KD_CHUNK - 1) // KD_CHUNK):
            chunk_range(t, s, c * KD_CHUNK, n, &chunk)
            merge_range(out, &chunk)
        return
    out.t_max = out.s_max = -INFINITY
    out.t_min = out.s_min = INFINITY
    for j in range(n):
        out.t_max = t[j] if t[j] > out.t_max else out.t_max
        out.s_max = s[j] if s[j] > out.s_max else out.s_max
        out.t_min = t[j] if t[j] < out.t_min else out.t_min
        out.s_min = s[j] if s[j] < out.s_min else out.s_min


cdef void row_sums(
    const floating* t, const floating* s, Py_ssize_t n, double inv_T, const kd_row_range* extremes,
    RowSums* sums,
) noexcept nogil:
    """The RowSums of a row whose extrema are known: the chunks of row_kl, merged in its order."""
    cdef Py_ssize_t c
    cdef kd_chunk_stats chunk
    if kd_active_target == NULL:
        scalar_row_sums(t, s, n, inv_T, extremes.t_max, extremes.s_max, sums)
        return
    memset(sums, 0, sizeof(RowSums))
    for c in range((n + KD_CHUNK - 1) // KD_CHUNK):
        chunk_stats(t, s, c * KD_CHUNK, n, extremes, inv_T, &chunk)
        merge_chunk(sums, &chunk)


cdef void student_normaliser(
    const floating* s, Py_ssize_t n, double s_max, double* top, double* rest
) noexcept nogil:
    """sum_j e^(s_j - s_max) as top (classes at the maximum) + rest: the normaliser of R."""
    cdef Py_ssize_t j
    cdef double x
    cdef CompensatedSum total = CompensatedSum(0.0, 0.0)
    if kd_active_target != NULL:
        if floating is float:
            kd_active_target.normaliser_f32(s, n, s_max, top, rest)
        else:
            kd_active_target.normaliser_f64(s, n, s_max, top, rest)
        return
    top[0] = 0.0
    for j in range(n):
        x = s[j] - s_max
        top[0] += (x == 0.0)
        add_to(&total, exp(x) if x != 0.0 else 0.0)
    rest[0] = value_of(total)


cdef void row_gradient(
    const floating* t, const floating* s, Py_ssize_t n, const kd_grad_row* row,
    floating* d_s, floating* d_t,
) noexcept nogil:
    """d_s and (unless NULL) d_t of one row, as gradient_impl.h computes them."""
    cdef Py_ssize_t j
    cdef double a, b, ea, p, q, grad
    if kd_active_target != NULL:
        if floating is float:
            kd_active_target.grad_f32(t, s, n, row, d_s, d_t)
        else:
            kd_active_target.grad_f64(t, s, n, row, d_s, d_t)
        return
    for j in range(n):
        grad = 0.0
        q = 0.0
        if row.with_kl:
            a = (t[j] - row.range.t_max) * row.inv_T
            b = (s[j] - row.range.s_max) * row.inv_T
            ea = exp(a)
            p = ea * row.inv_zt
            q = exp(b) * row.inv_zs
            grad = (q - p) * row.kl_coef
            if d_t != NULL:
                d_t[j] = <floating> ((p * ((a - b) - row.mean_gap)) * row.teacher_coef if ea > 0.0 else 0.0)
        if row.ce_mode == KD_CE_FROM_Q:
            grad = grad + q * row.ce_coef
        elif row.ce_mode == KD_CE_OWN_EXP:
            grad = grad + exp(s[j] - row.range.s_max) * (row.inv_z1 * row.ce_coef)
        d_s[j] = <floating> grad


cdef double label_gradient(
    const floating* t, const floating* s, Py_ssize_t y, const kd_grad_row* row,
    double top1, double rest1,
) noexcept nogil:
    """d_s at the label's class, where R - 1 would cancel in the vector pass's rounding:
    (e^(s_y - s_max) - Z1) / Z1 with Z1 = top1 + rest1 is exact when s_y is the maximum."""
    cdef double grad = 0.0, x = s[y] - row.range.s_max
    if row.with_kl:
        grad = (exp((s[y] - row.range.s_max) * row.inv_T) * row.inv_zs
                - exp((t[y] - row.range.t_max) * row.inv_T) * row.inv_zt) * row.kl_coef
    return grad + ((exp(x) - top1) - rest1) * row.inv_z1 * row.ce_coef


cdef double row_loss_and_grad(
    const floating* t, const floating* s, Py_ssize_t n, const LossTerms* terms, Py_ssize_t label,
    double grad_scale, floating* d_s, floating* d_t,
) noexcept nogil:
    """The loss of one row; and, unless d_s is NULL, grad_scale times its gradient into d_s and
    (unless NULL) d_t. Special values, for the KL term as kl_rows: a NaN KL makes d_s and d_t
    NaN; an infinite KL (the student rules out a class the teacher allows) leaves d_s finite
    (T (Q - P), as autograd gives) and makes d_t NaN. A NaN cross-entropy makes d_s NaN."""
    cdef kd_grad_row row
    cdef RowSums sums
    cdef double kd_value = 0.0, ce = 0.0, top1 = 1.0, rest1 = 0.0, z_t, z_s
    cdef double T = terms.temperature
    cdef bint with_ce = terms.ce_weight != 0.0
    cdef bint want_grad = d_s != NULL
    memset(&row, 0, sizeof(row))
    row.inv_T = terms.inv_T
    row.with_kl = terms.kl_weight != 0.0
    row.ce_mode = KD_CE_NONE
    if row.with_kl:
        if takes_short_row_pass(n):
            kd_value = one_row_loss(t, s, n, T)  # the bits kl_rows gives this row
        if want_grad or not takes_short_row_pass(n):
            row_extrema(t, s, n, &row.range)
            row_sums(t, s, n, row.inv_T, &row.range, &sums)
        if not takes_short_row_pass(n):
            kd_value = T * (T * (finish_row_kl(t, s, n, row.inv_T, row.range.t_max, row.range.s_max, &sums)
                                 if kd_active_target != NULL else row_kl_scalar(t, s, n, row.inv_T)))
    if with_ce:
        if row.with_kl and want_grad and row.inv_T == 1.0:  # R = Q: its normaliser is known
            top1 = sums.top_s
            rest1 = value_of(sums.rest_s)
            row.ce_mode = KD_CE_FROM_Q
        else:
            if not (row.with_kl and want_grad):
                row_extrema(s, s, n, &row.range)  # the student's extrema in both halves
            student_normaliser(s, n, row.range.s_max, &top1, &rest1)
            row.ce_mode = KD_CE_OWN_EXP
        # CE = log Z1 - (s_y - s_max); NaN, +inf, or a row all -inf make Z1 NaN.
        ce = log_sum(top1, rest1) - (s[label] - row.range.s_max)
    cdef double loss = (terms.kl_weight * kd_value if row.with_kl else 0.0) + (terms.ce_weight * ce if with_ce else 0.0)
    if not want_grad:
        return loss

    if row.with_kl:
        z_t = sums.top_t + value_of(sums.rest_t)
        z_s = sums.top_s + value_of(sums.rest_s)
        row.inv_zt = 1.0 / z_t
        row.inv_zs = 1.0 / z_s
        row.mean_gap = value_of(sums.gap) / z_t
        row.kl_coef = row.teacher_coef = grad_scale * terms.kl_weight * T
    if with_ce:
        row.inv_z1 = 1.0 / (top1 + rest1)
        row.ce_coef = grad_scale * terms.ce_weight
    row_gradient(t, s, n, &row, d_s, d_t if row.with_kl else NULL)
    if with_ce:
        d_s[label] = <floating> label_gradient(t, s, label, &row, top1, rest1)

    if d_t != NULL and not row.with_kl:
        fill_row(d_t, n, 0.0)
    if row.with_kl and kd_value != kd_value:
        fill_row(d_s, n, NAN)
        if d_t != NULL:
            fill_row(d_t, n, NAN)
    elif row.with_kl and kd_value == INFINITY and d_t != NULL:
        fill_row(d_t, n, NAN)
    if with_ce and ce != ce:
        fill_row(d_s, n, NAN)
    return loss


# ---------------------------------------------------------------------------------------------
# Layer 2: the loop over rows
# ---------------------------------------------------------------------------------------------

def loss_grad_rows(
    const floating[:, :] student,
    const floating[:, :] teacher,
    const int64_t[::1] labels,
    double temperature,
    double kl_weight,
    double ce_weight,
    const double[::1] row_weights,
    const double[::1] grad_output,
    double grad_scale,
    double[::1] out,
    floating[:, ::1] d_student,
    floating[:, ::1] d_teacher,
    floating[:, ::1] scratch,
    int num_threads,
):
    """For every row i: ``out[i] = w_i * loss_i``, and ``d_student[i]`` (``d_teacher[i]``) =
    ``grad_scale * g_i * w_i`` times the gradient of loss_i, with loss_i as in row_loss_and_grad.

    Contract, beyond kl_rows's: ``labels`` (in [0, classes), or negative: the row is left out),
    ``row_weights`` (w, finite and >= 0; a weight of 0 leaves the row out) and ``grad_output``
    (g) have one entry per row, or none (no cross-entropy term; all weights 1; all g 1).
    ``d_student`` and ``d_teacher`` have the inputs' shape, or no rows: no gradient (no teacher
    gradient). A row left out gets ``out[i] = 0`` and zero gradients, and is never read.
    """
    cdef Py_ssize_t n_rows = teacher.shape[0], n_classes = teacher.shape[1], i
    if n_rows == 0:
        return
    cdef LossTerms terms = LossTerms(temperature, 1.0 / temperature, kl_weight, ce_weight)
    cdef const char* t_base = <const char*> &teacher[0, 0]
    cdef const char* s_base = <const char*> &student[0, 0]
    cdef Py_ssize_t t_row = teacher.strides[0], t_col = teacher.strides[1]
    cdef Py_ssize_t s_row = student.strides[0], s_col = student.strides[1]
    cdef bint contiguous = (t_col == <Py_ssize_t> sizeof(floating)
                            and s_col == <Py_ssize_t> sizeof(floating))
    cdef bint want_grad = d_student.shape[0] > 0, want_teacher_grad = d_teacher.shape[0] > 0
    cdef bint with_labels = labels.shape[0] > 0, with_weights = row_weights.shape[0] > 0
    cdef bint with_grad_output = grad_output.shape[0] > 0
    cdef floating* t_scratch
    cdef floating* s_scratch
    cdef floating* d_s
    cdef floating* d_t
    cdef double weight
    cdef Py_ssize_t label
    num_threads = <int> min(<Py_ssize_t> num_threads, n_rows)
    for i in prange(n_rows, nogil=True, schedule="static", num_threads=num_threads,
                    use_threads_if=num_threads > 1):
        d_s = &d_student[i, 0] if want_grad else NULL
        d_t = &d_teacher[i, 0] if want_teacher_grad else NULL
        weight = row_weights[i] if with_weights else 1.0
        label = labels[i] if with_labels else 0
        if weight == 0.0 or label < 0:
            out[i] = 0.0
            if d_s != NULL:
                fill_row(d_s, n_classes, 0.0)
            if d_t != NULL:
                fill_row(d_t, n_classes, 0.0)
            continue
        t_scratch = NULL
        s_scratch = NULL
        if not contiguous:
            t_scratch = &scratch[threadid(), 0]
            s_scratch = t_scratch + n_classes
        out[i] = weight * row_loss_and_grad(
            contiguous_row(t_base + i * t_row, t_col, n_classes, t_scratch),
            contiguous_row(s_base + i * s_row, s_col, n_classes, s_scratch),
            n_classes,
            &terms,
            label,
            grad_scale * weight * (grad_output[i] if with_grad_output else 1.0),
            d_s,
            d_t,
        )
