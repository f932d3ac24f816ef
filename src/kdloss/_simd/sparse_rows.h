/* The student's passes of a sparse (top-k) teacher, for one input dtype (kdloss._sparse).
 *
 * Included by sparse_impl.h with KD_REAL (the stored element type), KD_OUT (the gradient's type),
 * KD_SPARSE_FN(name), KD_LOAD / KD_LOAD_PARTIAL and KD_EXP_FOR_DOUBLE, as rows_impl.h is.
 *
 * A row of the small problem needs, from the student's full row of n classes, its maximum and
 * R = sum_{j not an id} e^((s_j - s_max) / T): the mass outside the teacher's ids, summed directly
 * (never as a total minus the ids' part, which cancels when the ids hold nearly everything). The
 * ids come sorted, distinct and in range (the Python layer's contract).
 *
 * A call that wants the gradient passes the gradient's row to the rest pass, which stores each
 * class's e^((s_j - s_max) / T) there as it sums them; the gradient pass then scales them in place
 * (one exponential per class in all, not two). */

/* The least R for which the gradient pass takes the stored exps: a stored exp below the gradient
 * type's normal range has lost bits, and it matters only when coef = g_rest / R is large, that is
 * when R is tiny. With R >= this, the row's largest stored exp (>= R / n) is normal for any
 * n < 2^34 (float32; 2^122 in float64), and a subnormal one is off by less than 2^-26 of it. Rows
 * below it (and rows with a non-finite R or coef) recompute their exps. */
#define KD_SPARSE_STORED_MIN_REST (sizeof(KD_OUT) == sizeof(float) ? 0x1p-90 : 0x1p-900)

#if KD_NATIVE_RANGE
typedef KD_REAL KD_SPARSE_FN(vr) __attribute__((vector_size(8 * KD_LANES)));
#endif

/* The largest of n values (NaN ignored: it never wins a comparison); -inf for none. */
static double KD_SPARSE_FN(row_max)(const KD_REAL *s, ptrdiff_t n)
{
    double top = -INFINITY;
    ptrdiff_t i = 0;
#if KD_NATIVE_RANGE
    enum { LANES = sizeof(KD_SPARSE_FN(vr)) / sizeof(KD_REAL) };
    KD_SPARSE_FN(vr) m0 = (KD_SPARSE_FN(vr)){0} - (KD_REAL)INFINITY, m1 = m0, x, y;
    for (; i + 2 * LANES <= n; i += 2 * LANES) {
        memcpy(&x, s + i, sizeof x);
        memcpy(&y, s + i + LANES, sizeof y);
        __typeof__(x > m0) gx = x > m0, gy = y > m1;
        m0 = (KD_SPARSE_FN(vr))((gx & (__typeof__(gx))x) | (~gx & (__typeof__(gx))m0));
        m1 = (KD_SPARSE_FN(vr))((gy & (__typeof__(gy))y) | (~gy & (__typeof__(gy))m1));
    }
    for (int lane = 0; lane < LANES; lane++) {
        top = m0[lane] > top ? m0[lane] : top;
        top = m1[lane] > top ? m1[lane] : top;
    }
#endif
    for (; i < n; i++)
        top = s[i] > top ? s[i] : top;
    return top;
}

/* e^((s_j - s_max) / T) of KD_LANES classes from p (count of them real; the rest are padded with
 * -inf, which gives 0). A whole vector of arguments in [-700, 0] (the usual case) takes the cheaper
 * exp, which gives the same bits where it applies. */
KD_INLINE kd_vd KD_SPARSE_FN(exps)(const KD_REAL *p, int count, kd_vd top, kd_vd inv_T)
{
    if (count == KD_LANES) {
        const kd_vd x = (KD_LOAD(p) - top) * inv_T;
        if (!kd_any(~(x >= -700.0)))
            return kd_exp_moderate(x, KD_EXP_FOR_DOUBLE);
        return kd_exp_wide(x, KD_EXP_FOR_DOUBLE);
    }
    return kd_exp_wide((KD_LOAD_PARTIAL(p, count, -INFINITY) - top) * inv_T, KD_EXP_FOR_DOUBLE);
}

/* `count` lanes of e into p, as KD_OUT. */
KD_INLINE void KD_SPARSE_FN(store_exps)(KD_OUT *p, kd_vd e, int count)
{
    if (count < KD_LANES) {
        for (int lane = 0; lane < count; lane++)
            p[lane] = (KD_OUT)e[lane];
        return;
    }
#if KD_EXP_FOR_DOUBLE
    memcpy(p, &e, sizeof e);
#else
    const kd_vf f = __builtin_convertvector(e, kd_vf);
    memcpy(p, &f, sizeof f);
#endif
}

/* *s_max: the row's maximum; *rest: R as above, summed by lanes over blocks of KD_BLOCK classes
 * and compensated across blocks. A block holding ids keeps its exps in a buffer, zeroes the ids'
 * entries and then sums the buffer in the same lane order. NaN or +inf outside the ids makes R
 * NaN; a row whose maximum is -inf (every class -inf or NaN) has R = 0, or NaN if a NaN is
 * outside the ids. Unless exps_out is NULL, every class's exp (the ids' too) is stored there as
 * KD_OUT; a row whose maximum is not finite stores nothing. */
static void KD_SPARSE_FN(sparse_rest)(const void *s_in, ptrdiff_t n, const int64_t *ids, ptrdiff_t k,
                                      double inv_T_scalar, double *s_max, double *rest, void *exps_out)
{
    const KD_REAL *s = s_in;
    KD_OUT *const exps = exps_out;
    const double top_scalar = KD_SPARSE_FN(row_max)(s, n);
    *s_max = top_scalar;
    if (!(top_scalar > -INFINITY)) {
        double nan_outside = 0.0;
        ptrdiff_t next = 0;
        for (ptrdiff_t j = 0; j < n; j++) {
            if (next < k && ids[next] == j) {
                next++;
                continue;
            }
            if ((double)s[j] != (double)s[j])
                nan_outside = NAN;
        }
        *rest = nan_outside;
        return;
    }
    const kd_vd top = kd_splat(top_scalar), inv_T = kd_splat(inv_T_scalar);
    double total = 0.0, error = 0.0;
    double buffer[KD_BLOCK + KD_LANES];
    ptrdiff_t next = 0; /* the first id not yet passed */
    for (ptrdiff_t start = 0; start < n; start += KD_BLOCK) {
        const ptrdiff_t len = n - start < KD_BLOCK ? n - start : KD_BLOCK;
        kd_vd sums = kd_splat(0.0);
        if (next < k && ids[next] < start + len) {
            for (ptrdiff_t i = 0; i < len; i += KD_LANES) {
                const int count = len - i < KD_LANES ? (int)(len - i) : KD_LANES;
                const kd_vd e = KD_SPARSE_FN(exps)(s + start + i, count, top, inv_T);
                memcpy(buffer + i, &e, sizeof e);
                if (exps)
                    KD_SPARSE_FN(store_exps)(exps + start + i, e, count);
            }
            for (; next < k && ids[next] < start + len; next++)
                buffer[ids[next] - start] = 0.0;
            for (ptrdiff_t i = 0; i < len; i += KD_LANES) {
                kd_vd e;
                memcpy(&e, buffer + i, sizeof e);
                sums += e; /* the tail's padding lanes hold exps of -inf: 0 */
            }
        } else {
            for (ptrdiff_t i = 0; i < len; i += KD_LANES) {
                const int count = len - i < KD_LANES ? (int)(len - i) : KD_LANES;
                const kd_vd e = KD_SPARSE_FN(exps)(s + start + i, count, top, inv_T);
                sums += e;
                if (exps)
                    KD_SPARSE_FN(store_exps)(exps + start + i, e, count);
            }
        }
        kd_add_compensated(&total, &error, kd_lane_sum(sums));
    }
    *rest = isfinite(total) ? total + error : total;
}

/* d_j *= coef for the n exps the rest pass stored in d, each product rounded once to KD_OUT
 * (float64: the bits the recomputing loop below gives). */
static void KD_SPARSE_FN(scale_stored)(KD_OUT *d, ptrdiff_t n, double coef_scalar)
{
    const kd_vd coef = kd_splat(coef_scalar);
    ptrdiff_t i = 0;
    for (; i + KD_LANES <= n; i += KD_LANES) {
#if KD_EXP_FOR_DOUBLE
        kd_vd e;
        memcpy(&e, d + i, sizeof e);
#else
        kd_vf stored;
        memcpy(&stored, d + i, sizeof stored);
        const kd_vd e = __builtin_convertvector(stored, kd_vd);
#endif
        KD_SPARSE_FN(store_exps)(d + i, coef * e, KD_LANES);
    }
    for (; i < n; i++)
        d[i] = (KD_OUT)(coef_scalar * (double)d[i]);
}

/* The dense gradient of one row: d_j = coef e^((s_j - s_max) / T) for every class, then
 * d_{ids[i]} = g[i] (the ids' own gradients, from the small problem). stored_rest is the rest
 * pass's R where that pass stored its exps in d, else -1: rows it allows scale those in place. */
static void KD_SPARSE_FN(sparse_gradient)(const void *s_in, ptrdiff_t n, const int64_t *ids,
                                          const double *g, ptrdiff_t k, double s_max,
                                          double inv_T_scalar, double coef_scalar, double stored_rest,
                                          void *d_out)
{
    const KD_REAL *s = s_in;
    KD_OUT *d = d_out;
    const kd_vd top = kd_splat(s_max), inv_T = kd_splat(inv_T_scalar), coef = kd_splat(coef_scalar);
    if (coef_scalar == 0.0) {
        memset(d, 0, (size_t)n * sizeof(KD_OUT));
    } else if (stored_rest >= KD_SPARSE_STORED_MIN_REST && isfinite(stored_rest) && isfinite(coef_scalar)) {
        KD_SPARSE_FN(scale_stored)(d, n, coef_scalar);
    } else {
        ptrdiff_t i = 0;
        for (; i + KD_LANES <= n; i += KD_LANES) {
            const kd_vd v = coef * KD_SPARSE_FN(exps)(s + i, KD_LANES, top, inv_T);
#if KD_EXP_FOR_DOUBLE
            memcpy(d + i, &v, sizeof v);
#else
            const kd_vf f = __builtin_convertvector(v, kd_vf);
            memcpy(d + i, &f, sizeof f);
#endif
        }
        if (i < n) {
            const kd_vd v = coef * KD_SPARSE_FN(exps)(s + i, (int)(n - i), top, inv_T);
            for (int lane = 0; i + lane < n; lane++)
                d[i + lane] = (KD_OUT)v[lane];
        }
    }
    for (ptrdiff_t i = 0; i < k; i++)
        d[ids[i]] = (KD_OUT)g[i];
}
