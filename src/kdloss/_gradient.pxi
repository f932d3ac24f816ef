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
# from the sums and the exponentials the loss computed (for short rows, inside the short-row
# pass, one row per lane). Same layers as the rest of the kernel: row helpers, then a loop over
# rows under prange (each row alone, so results do not depend on the thread count).

# ---------------------------------------------------------------------------------------------
# Layer 1: row helpers
# ---------------------------------------------------------------------------------------------

cdef struct LossTerms:
    double temperature, inv_T
    double kl_weight  # 0: no KL term, and the teacher row is not read
    double ce_weight  # 0: no cross-entropy term, and the label is not read
    # Bytes from a row to the next, which the gradient path prefetches while it computes this
    # row's sums (0: rows are copied to scratch first, nothing to prefetch).
    ptrdiff_t ahead_t, ahead_s


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
    RowSums* sums, double* keep_exp, ptrdiff_t ahead_t, ptrdiff_t ahead_s,
) noexcept nogil:
    """The RowSums of a row whose extrema are known: the chunks of row_kl, merged in its order.
    With keep_exp (vector targets only), e^a and e^b are kept there for the gradient pass, at
    keep_exp and keep_exp + n + KD_MAX_STEP."""
    cdef Py_ssize_t c
    cdef kd_chunk_stats chunk
    cdef double* exp_b = keep_exp + n + KD_MAX_STEP
    if kd_active_target == NULL:
        scalar_row_sums(t, s, n, inv_T, extremes.t_max, extremes.s_max, sums)
        return
    memset(sums, 0, sizeof(RowSums))
    for c in range((n + KD_CHUNK - 1) // KD_CHUNK):
        chunk_stats(t, s, c * KD_CHUNK, n, extremes, inv_T, &chunk, keep_exp,
                    exp_b if keep_exp != NULL else NULL, ahead_t, ahead_s)
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
    cdef double a, b, ea, eb, p, q, grad, gap
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
            eb = exp(b)
            p = ea * row.inv_zt
            q = eb * row.inv_zs
            grad = ((eb - ea) * row.inv_zs if row.same_normaliser else q - p) * row.kl_coef
            if d_t != NULL:
                gap = ((t[j] - row.range.t_max) - (s[j] - row.range.s_max)) * row.inv_T  # as the vector pass
                d_t[j] = <floating> ((p * (gap - row.mean_gap)) * row.teacher_coef if ea > 0.0 else 0.0)
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


cdef inline void set_kl_gradient_terms(
    kd_grad_row* row, const RowSums* sums, double coef
) noexcept nogil:
    """The row constants of the KL term's gradient, from the row's sums; coef scales it."""
    cdef double z_t = sums.top_t + value_of(sums.rest_t)
    cdef double z_s = sums.top_s + value_of(sums.rest_s)
    row.inv_zt = 1.0 / z_t
    row.inv_zs = 1.0 / z_s
    row.same_normaliser = row.inv_zt == row.inv_zs
    row.mean_gap = value_of(sums.gap) / z_t
    row.kl_coef = row.teacher_coef = coef


cdef inline void mark_undefined_kl_gradient(
    floating* d_s, floating* d_t, Py_ssize_t n, double kd_value
) noexcept nogil:
    """The documented gradients of a row whose KL term is not finite: NaN makes d_s and d_t NaN;
    +inf (the student rules out a class the teacher allows) keeps d_s and makes d_t NaN."""
    if kd_value != kd_value:
        fill_row(d_s, n, NAN)
        if d_t != NULL:
            fill_row(d_t, n, NAN)
    elif kd_value == INFINITY and d_t != NULL:
        fill_row(d_t, n, NAN)


cdef double row_loss_and_grad(
    const floating* t, const floating* s, Py_ssize_t n, const LossTerms* terms, Py_ssize_t label,
    double short_kd, double grad_scale, floating* d_s, floating* d_t, double* exp_scratch,
) noexcept nogil:
    """The loss of one row; and, unless d_s is NULL, grad_scale times its gradient into d_s and
    (unless NULL) d_t. exp_scratch: 2 * (n + KD_MAX_STEP) doubles, where the exponentials of the
    sums' pass are kept for the gradient pass (vector targets; ignored by the scalar one).
    short_kd: T^2 KL of a row that takes the short-row pass, as that pass computed it (so that
    the loss has the bits kl_rows gives the row); ignored for other rows.

    Special values, for the KL term as kl_rows: a NaN KL makes d_s and d_t NaN; an infinite KL
    (the student rules out a class the teacher allows) leaves d_s finite (T (Q - P), as
    autograd gives) and makes d_t NaN. A NaN cross-entropy makes d_s NaN."""
    cdef kd_grad_row row
    cdef RowSums sums
    cdef double kd_value = 0.0, ce = 0.0, top1 = 1.0, rest1 = 0.0
    cdef double T = terms.temperature
    cdef bint with_ce = terms.ce_weight != 0.0
    cdef bint want_grad = d_s != NULL
    cdef double* keep_exp = NULL
    cdef bint have_extrema = False
    memset(&row, 0, sizeof(row))
    row.inv_T = terms.inv_T
    row.with_kl = terms.kl_weight != 0.0
    row.ce_mode = KD_CE_NONE
    if row.with_kl:
        if takes_short_row_pass(n):
            kd_value = short_kd
        if want_grad or not takes_short_row_pass(n):
            row_extrema(t, s, n, &row.range)
            have_extrema = True
            keep_exp = exp_scratch if want_grad and kd_active_target != NULL else NULL
            row_sums(t, s, n, row.inv_T, &row.range, &sums, keep_exp, terms.ahead_t, terms.ahead_s)
            if keep_exp != NULL:
                row.exp_a = keep_exp
                row.exp_b = keep_exp + n + KD_MAX_STEP
        if not takes_short_row_pass(n):
            kd_value = T * (T * (finish_row_kl(t, s, n, row.inv_T, row.range.t_max, row.range.s_max, &sums)
                                 if kd_active_target != NULL else row_kl_scalar(t, s, n, row.inv_T)))
    if with_ce:
        if not have_extrema:
            row_extrema(s, s, n, &row.range)  # the student's extrema (in both halves)
        # Its own pass also at T = 1, where the KL's sums hold it too: the loss must not depend
        # on whether a gradient is asked for. The gradient pass then takes R = Q.
        student_normaliser(s, n, row.range.s_max, &top1, &rest1)
        row.ce_mode = KD_CE_FROM_Q if row.with_kl and row.inv_T == 1.0 else KD_CE_OWN_EXP
        # CE = log Z1 - (s_y - s_max); NaN, +inf, or a row all -inf make Z1 NaN.
        ce = log_sum(top1, rest1) - (s[label] - row.range.s_max)
    cdef double loss = ((terms.kl_weight * kd_value if row.with_kl else 0.0)
                        + (terms.ce_weight * ce if with_ce else 0.0))
    if not want_grad:
        return loss

    if row.with_kl:
        set_kl_gradient_terms(&row, &sums, grad_scale * terms.kl_weight * T)
    if with_ce:
        row.inv_z1 = 1.0 / (top1 + rest1)
        row.ce_coef = grad_scale * terms.ce_weight
    row_gradient(t, s, n, &row, d_s, d_t if row.with_kl else NULL)
    if with_ce:
        d_s[label] = <floating> label_gradient(t, s, label, &row, top1, rest1)

    if d_t != NULL and not row.with_kl:
        fill_row(d_t, n, 0.0)
    if row.with_kl:
        mark_undefined_kl_gradient(d_s, d_t, n, kd_value)
    if with_ce and ce != ce:
        fill_row(d_s, n, NAN)
    return loss


# ---------------------------------------------------------------------------------------------
# Layer 2: the loop over rows
# ---------------------------------------------------------------------------------------------

cdef struct RowsJob:
    # One call of loss_grad_rows, as the block helper below needs it.
    const char* t_base
    const char* s_base
    Py_ssize_t t_row, t_col, s_row, s_col, n_classes
    LossTerms terms
    const int64_t* labels        # NULL: no labels
    const double* row_weights    # NULL: all 1
    const double* grad_output    # NULL: all 1
    double grad_scale
    double* out
    char* d_student              # NULL: no gradient; else C-contiguous rows
    char* d_teacher              # NULL: no teacher gradient


cdef void loss_grad_block(
    const RowsJob* job, Py_ssize_t first, Py_ssize_t count, floating* scratch, double* exp_scratch,
    floating* student_sink,
) noexcept nogil:
    """loss_grad_rows for rows [first, first + count). Short rows come in blocks of
    SHORT_ROWS_BLOCK: the short-row pass gives their KL terms, one row per lane, as in kl_rows,
    and (for the KL term alone) the gradient of the rows it settles; other rows come one at a
    time. student_sink: a row that takes the student's gradient when only the teacher's is
    wanted (NULL otherwise)."""
    cdef Py_ssize_t n = job.n_classes, r, i, label
    cdef size_t row_bytes = n * sizeof(floating)
    cdef double short_kd[SHORT_ROWS_BLOCK]
    cdef double lane_coef[SHORT_ROWS_BLOCK]
    cdef bint settled[SHORT_ROWS_BLOCK]
    cdef kd_short_grad lane_grad
    cdef double weight
    cdef floating* d_s
    cdef floating* d_t
    cdef floating* s_scratch = NULL  # scratch: NULL when both rows are contiguous
    if scratch != NULL:
        s_scratch = scratch + n
    cdef bint short_kl = job.terms.kl_weight != 0.0 and takes_short_row_pass(n)
    # The KL term alone, into real gradient rows: the short-row pass writes the gradient too.
    cdef bint lane_gradient = short_kl and job.terms.ce_weight == 0.0 and job.d_student != NULL
    if lane_gradient:
        for r in range(count):
            i = first + r
            lane_coef[r] = (job.grad_scale * (job.row_weights[i] if job.row_weights != NULL else 1.0)
                            * (job.grad_output[i] if job.grad_output != NULL else 1.0)
                            * job.terms.kl_weight * job.terms.temperature)
        lane_grad.coef = lane_coef
        lane_grad.d_s = job.d_student + first * row_bytes
        lane_grad.d_t = job.d_teacher + first * row_bytes if job.d_teacher != NULL else NULL
        lane_grad.row_bytes = row_bytes
        kl_short_rows(job.t_base + first * job.t_row, job.s_base + first * job.s_row, job.t_row,
                      job.s_row, job.t_col, job.s_col, 0, count, n, job.terms.temperature,
                      short_kd, <floating> 0, &lane_grad, settled)
    elif short_kl:
        kl_short_rows(job.t_base + first * job.t_row, job.s_base + first * job.s_row, job.t_row,
                      job.s_row, job.t_col, job.s_col, 0, count, n, job.terms.temperature,
                      short_kd, <floating> 0)
    for r in range(count):
        i = first + r
        d_s = <floating*> (job.d_student + i * row_bytes) if job.d_student != NULL else student_sink
        d_t = <floating*> (job.d_teacher + i * row_bytes) if job.d_teacher != NULL else NULL
        weight = job.row_weights[i] if job.row_weights != NULL else 1.0
        label = job.labels[i] if job.labels != NULL else 0
        if weight == 0.0 or label < 0:  # left out: whatever it holds, 0
            job.out[i] = 0.0
            if d_s != NULL:
                fill_row(d_s, n, 0.0)
            if d_t != NULL:
                fill_row(d_t, n, 0.0)
            continue
        if lane_gradient and settled[r]:  # its gradient is written; the loss as row_loss_and_grad
            job.out[i] = weight * (job.terms.kl_weight * short_kd[r] + 0.0)
            continue
        job.out[i] = weight * row_loss_and_grad(
            contiguous_row(job.t_base + i * job.t_row, job.t_col, n, scratch),
            contiguous_row(job.s_base + i * job.s_row, job.s_col, n, s_scratch),
            n,
            &job.terms,
            label,
            short_kd[r],
            job.grad_scale * weight * (job.grad_output[i] if job.grad_output != NULL else 1.0),
            d_s,
            d_t,
            exp_scratch,
        )


cdef bint loss_grad_long_rows(
    const RowsJob* job, Py_ssize_t n_rows, int num_threads, double* keep_exp,
    floating* student_sink,
) noexcept nogil:
    """loss_grad_rows for a few long contiguous rows and the KL term alone: each row's chunks
    are shared among the threads, for the extrema, the sums and the gradient. The chunks, and
    the order in which their sums are merged, are those of row_sums, so the results are bitwise
    those of one thread. keep_exp: 2 * (classes + KD_MAX_STEP) doubles; student_sink: a row for
    the student's gradient when only the teacher's is wanted. Returns False (nothing done) if
    out of memory."""
    cdef Py_ssize_t n = job.n_classes, n_chunks = (n + KD_CHUNK - 1) // KD_CHUNK, i, c, start
    cdef size_t row_bytes = n * sizeof(floating)
    cdef kd_row_range* extrema = <kd_row_range*> malloc(n_chunks * sizeof(kd_row_range))
    cdef kd_chunk_stats* chunks = <kd_chunk_stats*> malloc(n_chunks * sizeof(kd_chunk_stats))
    cdef double* exp_b = keep_exp + n + KD_MAX_STEP
    cdef double T = job.terms.temperature, inv_T = job.terms.inv_T, weight, kd_value
    cdef const floating* t
    cdef const floating* s
    cdef floating* d_s
    cdef floating* d_t
    cdef floating* chunk_d_t
    cdef kd_grad_row row
    cdef kd_grad_row chunk_row
    cdef RowSums sums
    if extrema == NULL or chunks == NULL:
        free(extrema)
        free(chunks)
        return False
    for i in range(n_rows):
        t = <const floating*> (job.t_base + i * job.t_row)
        s = <const floating*> (job.s_base + i * job.s_row)
        d_s = <floating*> (job.d_student + i * row_bytes) if job.d_student != NULL else student_sink
        d_t = <floating*> (job.d_teacher + i * row_bytes) if job.d_teacher != NULL else NULL
        weight = job.row_weights[i] if job.row_weights != NULL else 1.0
        if weight == 0.0 or (job.labels != NULL and job.labels[i] < 0):  # left out: never read
            job.out[i] = 0.0
            fill_row(d_s, n, 0.0)
            if d_t != NULL:
                fill_row(d_t, n, 0.0)
            continue
        memset(&row, 0, sizeof(row))
        row.inv_T = inv_T
        row.with_kl = True
        row.ce_mode = KD_CE_NONE
        for c in prange(n_chunks, schedule="static", num_threads=num_threads):
            chunk_range(t, s, c * KD_CHUNK, n, &extrema[c])
        row.range = extrema[0]
        for c in range(1, n_chunks):
            merge_range(&row.range, &extrema[c])
        for c in prange(n_chunks, schedule="static", num_threads=num_threads):
            chunk_stats(t, s, c * KD_CHUNK, n, &row.range, inv_T, &chunks[c], keep_exp, exp_b)
        memset(&sums, 0, sizeof(sums))
        for c in range(n_chunks):
            merge_chunk(&sums, &chunks[c])
        kd_value = T * (T * finish_row_kl(t, s, n, inv_T, row.range.t_max, row.range.s_max, &sums))
        job.out[i] = weight * (job.terms.kl_weight * kd_value + 0.0)  # as row_loss_and_grad
        set_kl_gradient_terms(&row, &sums, job.grad_scale * weight
                              * (job.grad_output[i] if job.grad_output != NULL else 1.0)
                              * job.terms.kl_weight * T)
        row.exp_a = keep_exp
        row.exp_b = exp_b
        for c in prange(n_chunks, schedule="static", num_threads=num_threads):
            start = c * KD_CHUNK
            chunk_row = row  # the same row constants, with the kept exponentials of this chunk
            chunk_row.exp_a = keep_exp + start
            chunk_row.exp_b = exp_b + start
            chunk_d_t = NULL
            if d_t != NULL:
                chunk_d_t = d_t + start
            row_gradient(t + start, s + start, min(<Py_ssize_t> KD_CHUNK, n - start), &chunk_row,
                         d_s + start, chunk_d_t)
        mark_undefined_kl_gradient(d_s, d_t, n, kd_value)
    free(extrema)
    free(chunks)
    return True


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
    double[:, ::1] exp_scratch,
    floating[:, ::1] student_sink,
    int num_threads,
):
    """For every row i: ``out[i] = w_i * loss_i``, and ``d_student[i]`` (``d_teacher[i]``) =
    ``grad_scale * g_i * w_i`` times the gradient of loss_i, with loss_i as in row_loss_and_grad.

    Contract, beyond kl_rows's: ``labels`` (in [0, classes), or negative: the row is left out),
    ``row_weights`` (w, finite and >= 0; a weight of 0 leaves the row out) and ``grad_output``
    (g) have one entry per row, or none (no cross-entropy term; all weights 1; all g 1).
    ``d_student`` and ``d_teacher`` have the inputs' shape, or no rows: no gradient (no teacher
    gradient). ``exp_scratch`` has ``min(num_threads, rows)`` rows of
    ``2 * (classes + EXP_SCRATCH_PADDING)`` doubles when there is a gradient, and
    ``student_sink`` as many rows of ``classes`` elements when only the teacher's gradient is
    wanted (the student's is computed beside it, into the sink, and dropped). A row left out
    gets ``out[i] = 0`` and zero gradients, whatever it holds (NaN included): only the short-row
    pass reads it, beside its neighbours, and drops it.
    """
    cdef Py_ssize_t n_rows = teacher.shape[0], n_classes = teacher.shape[1], b
    if n_rows == 0:
        return
    cdef RowsJob job
    job.t_base = <const char*> &teacher[0, 0]
    job.s_base = <const char*> &student[0, 0]
    job.t_row, job.t_col = teacher.strides[0], teacher.strides[1]
    job.s_row, job.s_col = student.strides[0], student.strides[1]
    job.n_classes = n_classes
    cdef bint contiguous = (teacher.strides[1] == <Py_ssize_t> sizeof(floating)
                            and student.strides[1] == <Py_ssize_t> sizeof(floating))
    job.terms = LossTerms(temperature, 1.0 / temperature, kl_weight, ce_weight,
                          teacher.strides[0] if contiguous else 0, student.strides[0] if contiguous else 0)
    job.labels = &labels[0] if labels.shape[0] > 0 else NULL
    job.row_weights = &row_weights[0] if row_weights.shape[0] > 0 else NULL
    job.grad_output = &grad_output[0] if grad_output.shape[0] > 0 else NULL
    job.grad_scale = grad_scale
    job.out = &out[0]
    job.d_student = <char*> &d_student[0, 0] if d_student.shape[0] > 0 else NULL
    job.d_teacher = <char*> &d_teacher[0, 0] if d_teacher.shape[0] > 0 else NULL
    cdef bint done = False
    cdef floating* long_row_sink = NULL
    if (n_rows < num_threads and n_classes > KD_CHUNK and contiguous and ce_weight == 0.0
            and kd_active_target != NULL and exp_scratch.shape[0] > 0):
        # Fewer rows than threads: share each row's chunks among them, as kl_rows does.
        if job.d_student == NULL:
            long_row_sink = &student_sink[0, 0]
        with nogil:
            done = loss_grad_long_rows(&job, n_rows, num_threads, &exp_scratch[0, 0], long_row_sink)
    if done:
        return
    # Rows per block: the short-row pass takes SHORT_ROWS_BLOCK at a time; longer rows go a few
    # at a time, leaving every thread several blocks.
    cdef Py_ssize_t block = SHORT_ROWS_BLOCK if takes_short_row_pass(n_classes) else max(
        1, min(16, n_rows // (4 * num_threads)))
    cdef Py_ssize_t n_blocks = (n_rows + block - 1) // block
    cdef floating* row_scratch
    cdef floating* sink_row
    cdef double* exp_row_scratch
    cdef bint want_grad = job.d_student != NULL or job.d_teacher != NULL
    num_threads = <int> min(<Py_ssize_t> num_threads, n_blocks)
    # Rows are independent, so any schedule gives the same bits; a dynamic one keeps every
    # thread busy when another process takes a core for a while.
    for b in prange(n_blocks, nogil=True, schedule="dynamic", num_threads=num_threads,
                    use_threads_if=num_threads > 1):
        row_scratch = NULL
        exp_row_scratch = NULL
        if not contiguous:
            row_scratch = &scratch[threadid(), 0]
        sink_row = NULL
        if want_grad:
            exp_row_scratch = &exp_scratch[threadid(), 0]
        if job.d_student == NULL and job.d_teacher != NULL:
            sink_row = &student_sink[threadid(), 0]
        loss_grad_block(&job, b * block, min(block, n_rows - b * block), row_scratch,
                        exp_row_scratch, sink_row)
