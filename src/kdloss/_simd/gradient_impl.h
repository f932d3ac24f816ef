/* The gradient pass over one row, and the student's normaliser at T = 1 (for the cross-entropy
 * of Hinton's loss), for one input type.
 *
 * Included twice by target_impl.h, with the macros chunk_impl.h uses. Everything is computed in
 * double and rounded once on the store. */

/* Stores `count` lanes of x as KD_REAL. */
KD_INLINE void KD_FN(store)(KD_REAL *p, kd_vd x, int count)
{
    if (sizeof(KD_REAL) == sizeof(float)) {
        kd_vf narrow = __builtin_convertvector(x, kd_vf);
        memcpy(p, &narrow, count * sizeof(float));
    } else {
        memcpy(p, &x, count * sizeof(double));
    }
}

/* The gradient of KD_LANES classes: d_s = kl_coef (Q - P) + ce_coef R and
 * d_t = teacher_coef P (a - b - E_P[a - b]), where a class the teacher masks (P = 0) gets
 * exactly 0 in d_t. The flags are constants, so each combination compiles to its own loop. */
KD_INLINE void KD_FN(gradient_lanes)(kd_vd t, kd_vd s, const kd_grad_row *row, ptrdiff_t i,
                                     const int with_kl, const int ce_mode, const int moderate,
                                     const int stored, kd_vd *d_s, kd_vd *d_t)
{
    kd_vd grad = kd_splat(0.0), q = grad, ea, eb;
    if (with_kl) {
        kd_vd a = (t - row->range.t_max) * row->inv_T;
        kd_vd b = (s - row->range.s_max) * row->inv_T;
        if (stored) { /* kept by the sums' pass: the same values */
            ea = kd_load_f64(row->exp_a + i);
            eb = kd_load_f64(row->exp_b + i);
        } else if (moderate) {
            ea = kd_exp_moderate(a, KD_EXP_FOR_DOUBLE);
            eb = kd_exp_moderate(b, KD_EXP_FOR_DOUBLE);
        } else {
            ea = kd_exp_nonpositive(a, KD_EXP_FOR_DOUBLE);
            eb = kd_exp_nonpositive(b, KD_EXP_FOR_DOUBLE);
        }
        kd_vd p = ea * row->inv_zt;
        q = eb * row->inv_zs;
        /* With one normaliser, (e^b - e^a) / Z: exactly 0 where the rows agree, whatever
         * multiply-adds the compiler fuses (q - p could become fma(e^b, 1/Z, -p) otherwise). */
        grad = (row->same_normaliser ? (eb - ea) * row->inv_zs : q - p) * row->kl_coef;
        /* a - b from the unscaled differences: exactly 0 where the rows agree (a - b itself
         * could become fma(t - t_max, 1/T, -b), which is not). */
        kd_vd gap = ((t - row->range.t_max) - (s - row->range.s_max)) * row->inv_T;
        *d_t = kd_keep(ea > 0.0, p * (gap - row->mean_gap)) * row->teacher_coef;
    }
    if (ce_mode == KD_CE_FROM_Q)
        grad += q * row->ce_coef;
    else if (ce_mode == KD_CE_OWN_EXP)
        grad += kd_exp_nonpositive(s - row->range.s_max, KD_EXP_FOR_DOUBLE) * (row->inv_z1 * row->ce_coef);
    *d_s = grad;
}

KD_INLINE void KD_FN(gradient_loop)(const KD_REAL *t, const KD_REAL *s, ptrdiff_t n,
                                    const kd_grad_row *row, KD_REAL *d_s, KD_REAL *d_t,
                                    const int with_kl, const int ce_mode, const int moderate,
                                    const int stored)
{
    kd_vd grad_s, grad_t = kd_splat(0.0);
    ptrdiff_t i = 0;
    for (; i + KD_LANES <= n; i += KD_LANES) {
        kd_vd tv = with_kl ? KD_LOAD(t + i) : grad_t;
        KD_FN(gradient_lanes)(tv, KD_LOAD(s + i), row, i, with_kl, ce_mode, moderate, stored,
                              &grad_s, &grad_t);
        KD_FN(store)(d_s + i, grad_s, KD_LANES);
        if (d_t)
            KD_FN(store)(d_t + i, grad_t, KD_LANES);
    }
    if (i < n) { /* the tail, padded with the maxima (harmless, and not stored) */
        const int count = (int)(n - i);
        kd_vd tv = with_kl ? KD_LOAD_PARTIAL(t + i, count, row->range.t_max) : grad_t;
        KD_FN(gradient_lanes)(tv, KD_LOAD_PARTIAL(s + i, count, row->range.s_max), row, i, with_kl,
                              ce_mode, moderate, stored, &grad_s, &grad_t);
        KD_FN(store)(d_s + i, grad_s, count);
        if (d_t)
            KD_FN(store)(d_t + i, grad_t, count);
    }
}

/* The gradient of one row of n classes (any n), into d_s and, unless it is NULL, d_t. */
static void KD_FN(row_gradient)(const KD_REAL *t, const KD_REAL *s, ptrdiff_t n,
                                const kd_grad_row *row, KD_REAL *d_s, KD_REAL *d_t)
{
    if (!row->with_kl) {
        KD_FN(gradient_loop)(t, s, n, row, d_s, NULL, 0, KD_CE_OWN_EXP, 0, 0);
        return;
    }
    if (row->exp_a != NULL) {
        switch (row->ce_mode) {
        case KD_CE_NONE: KD_FN(gradient_loop)(t, s, n, row, d_s, d_t, 1, KD_CE_NONE, 0, 1); break;
        case KD_CE_FROM_Q: KD_FN(gradient_loop)(t, s, n, row, d_s, d_t, 1, KD_CE_FROM_Q, 0, 1); break;
        default: KD_FN(gradient_loop)(t, s, n, row, d_s, d_t, 1, KD_CE_OWN_EXP, 0, 1); break;
        }
        return;
    }
    const int moderate = kd_is_moderate(&row->range, row->inv_T);
    switch (row->ce_mode * 2 + moderate) {
    case 0: KD_FN(gradient_loop)(t, s, n, row, d_s, d_t, 1, KD_CE_NONE, 0, 0); break;
    case 1: KD_FN(gradient_loop)(t, s, n, row, d_s, d_t, 1, KD_CE_NONE, 1, 0); break;
    case 2: KD_FN(gradient_loop)(t, s, n, row, d_s, d_t, 1, KD_CE_FROM_Q, 0, 0); break;
    case 3: KD_FN(gradient_loop)(t, s, n, row, d_s, d_t, 1, KD_CE_FROM_Q, 1, 0); break;
    case 4: KD_FN(gradient_loop)(t, s, n, row, d_s, d_t, 1, KD_CE_OWN_EXP, 0, 0); break;
    default: KD_FN(gradient_loop)(t, s, n, row, d_s, d_t, 1, KD_CE_OWN_EXP, 1, 0); break;
    }
}

/* sum_j e^(s_j - s_max) over a row of n classes, as top (classes at the maximum, each adding
 * exactly 1) + rest, so that log of it stays accurate when it is 1 + tiny. Lane sums over
 * blocks of KD_BLOCK classes, compensated across blocks. NaN, +inf, or a row all -inf makes
 * rest NaN. */
static void KD_FN(student_normaliser)(const KD_REAL *s, ptrdiff_t n, double s_max, double *top,
                                      double *rest)
{
    const kd_vd s_top = kd_splat(s_max), zero = kd_splat(0.0);
    double total = 0.0, error = 0.0, count = 0.0;
    for (ptrdiff_t start = 0; start < n; start += KD_BLOCK) {
        const ptrdiff_t len = n - start < KD_BLOCK ? n - start : KD_BLOCK;
        kd_vi tops = (kd_vi)zero;
        kd_vd sums = zero;
        for (ptrdiff_t i = 0; i < len; i += KD_LANES) {
            const int lanes = len - i < KD_LANES ? (int)(len - i) : KD_LANES;
            /* The tail is padded with -inf, which adds exactly 0. */
            kd_vd x = (lanes == KD_LANES ? KD_LOAD(s + start + i)
                                         : KD_LOAD_PARTIAL(s + start + i, lanes, -INFINITY)) - s_top;
            kd_vi at_top = x == 0.0;
            tops -= at_top;
            sums += kd_keep(~at_top, kd_exp_nonpositive(x, KD_EXP_FOR_DOUBLE));
        }
        count += kd_lane_count(tops);
        kd_add_compensated(&total, &error, kd_lane_sum(sums));
    }
    *top = count;
    *rest = isfinite(total) ? total + error : total;
}
