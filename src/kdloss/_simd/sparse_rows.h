/* The student's passes of a sparse (top-k) teacher, for one input dtype (kdloss._sparse).
 *
 * Included by sparse_impl.h with KD_REAL (the stored element type), KD_OUT (the gradient's type),
 * KD_SPARSE_FN(name), KD_LOAD / KD_LOAD_PARTIAL and KD_EXP_FOR_DOUBLE, as rows_impl.h is.
 *
 * A row of the small problem needs, from the student's full row of n classes, its maximum and
 * R = sum_{j not an id} e^((s_j - s_max) / T): the mass outside the teacher's ids, summed directly
 * (never as a total minus the ids' part, which cancels when the ids hold nearly everything). The
 * ids come sorted, distinct and in range (the Python layer's contract). */

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

/* *s_max: the row's maximum; *rest: R as above, summed by lanes over blocks of KD_BLOCK classes
 * and compensated across blocks. A block holding ids keeps its exps in a buffer, zeroes the ids'
 * entries and then sums the buffer in the same lane order. NaN or +inf outside the ids makes R
 * NaN; a row whose maximum is -inf (every class -inf or NaN) has R = 0, or NaN if a NaN is
 * outside the ids. */
static void KD_SPARSE_FN(sparse_rest)(const void *s_in, ptrdiff_t n, const int64_t *ids, ptrdiff_t k,
                                      double inv_T_scalar, double *s_max, double *rest)
{
    const KD_REAL *s = s_in;
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
                sums += KD_SPARSE_FN(exps)(s + start + i, count, top, inv_T);
            }
        }
        kd_add_compensated(&total, &error, kd_lane_sum(sums));
    }
    *rest = isfinite(total) ? total + error : total;
}

/* The dense gradient of one row: d_j = coef e^((s_j - s_max) / T) for every class, then
 * d_{ids[i]} = g[i] (the ids' own gradients, from the small problem). */
static void KD_SPARSE_FN(sparse_gradient)(const void *s_in, ptrdiff_t n, const int64_t *ids,
                                          const double *g, ptrdiff_t k, double s_max,
                                          double inv_T_scalar, double coef_scalar, void *d_out)
{
    const KD_REAL *s = s_in;
    KD_OUT *d = d_out;
    const kd_vd top = kd_splat(s_max), inv_T = kd_splat(inv_T_scalar), coef = kd_splat(coef_scalar);
    if (coef_scalar == 0.0) {
        memset(d, 0, (size_t)n * sizeof(KD_OUT));
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
