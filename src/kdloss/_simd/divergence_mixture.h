/* The mixture row of the divergence table: D = c_P KL(P || M) + c_Q KL(Q || M), M = lam P + (1 - lam) Q,
 * with weights (lam, c_P, c_Q) from the Python table (kdloss._divergences): reverse KL (1, 0, 1),
 * JSD(beta) (beta, beta, 1 - beta), skew KL (beta, 1, 0), skew reverse KL (1 - beta, 0, 1).
 *
 * M needs P and Q normalised, so this row takes two passes. The first is KL's (divergence_kl.h): its
 * sums give Z_P, Z_Q and y = Z_Q / Z_P - 1, and it keeps e^a and w = e^-d - 1 of each class. The
 * second sums, per class, with rho = Q / P - 1 = (w - y) / (1 + y) (accurate relative to itself as
 * the student approaches the teacher), den = M / P = 1 + (1 - lam) rho, u = P / M - 1 and
 * v = Q / M - 1:
 *
 *     KL(P || M) = sum M h(u),  KL(Q || M) = sum M h(v),  h(x) = (1 + x) log1p(x) - x >= 0
 *
 * (sum M u = sum M v = 0). Near zero h(x) = (1 + x) L(x) + x^2 with L(x) = log1p(x) - x from its
 * series: every term is >= 0 and nothing cancels, down to D = 0. Rows whose first pass shows them
 * far from zero skip the series (kd_mix_finish_lanes). Elsewhere a term is
 * P log(P / M) - (P - M) (resp. Q), from logs of the ratios. Classes whose ratio Q / P is out of
 * range for that (|d| > 700, a mask, an underflow) take logs of P, Q and M from the logits
 * (log P = a - log Z_P), "far" classes.
 *
 * Gradient (times T^2, over the logits): with g = c_Q log(Q / M) - (1 - lam) c, f = c_P log(P / M)
 * - lam c, c = c_P u + c_Q v,
 *     d_s = T Q (g - E_Q[g]),  d_t = T P (f - E_P[f]),
 *     E_Q[g] = c_Q KL(Q || M) - (1 - lam) sum Q c,  E_P[f] = c_P KL(P || M) - lam sum P c.
 *
 * Special values: a row the first pass does not settle stays NaN; a value that is not finite (a
 * class M rules out where P or Q has mass) comes back NaN too, for the caller to settle from the
 * logits and the form's flags (infinite where one side rules out a class the other allows).
 *
 * Included by target_impl.h after divergence_kl.h. */

/* The second pass's sums (kd_row_sums.sum[...]): KL(P || M), KL(Q || M), sum Q c, sum P c. */
enum { KD_MIX_A, KD_MIX_B, KD_MIX_SQ, KD_MIX_SP, KD_MIX_SUMS };
/* The gradient's row constants after KL's (kd_row_finish.constant[...]). */
enum {
    KD_MIX_LOG_ZP = KD_KL_CONSTANTS, KD_MIX_LOG_ZQ, KD_MIX_LOG_RATIO_Z, KD_MIX_EQ, KD_MIX_EP, KD_MIX_LAM, KD_MIX_CP, KD_MIX_CQ,
    KD_MIX_FIRST_KL,
    KD_MIX_CONSTANTS
};
_Static_assert(KD_MIX_SUMS <= KD_MAX_SUMS && KD_MIX_CONSTANTS <= KD_MAX_CONSTANTS,
               "kd_row_sums / kd_row_finish too small");

/* The first pass is KL's. */
typedef kd_kl_row kd_mix_row;
typedef kd_kl_terms kd_mix_terms;
#define kd_mix_row_constants kd_kl_row_constants
#define kd_mix_lane_constants kd_kl_lane_constants
#define kd_mix_class_terms kd_kl_class_terms

typedef struct {
    kd_kl_finished kl;
    kd_vd value;          /* NaN: not settled by the formulas */
    kd_vd log_zp, log_zq; /* for far classes */
    kd_vd log_ratio_z;    /* log(Z_Q / Z_P) = log1p(y) */
    kd_vd e_q, e_p;       /* E_Q[g], E_P[f] (after the second pass) */
    kd_vd first_kl;       /* KL(P || Q) from the first pass: how far the row is from zero */
    double lam, c_p, c_q;
} kd_mix_finished;

KD_INLINE kd_mix_finished kd_mix_finish_lanes(const kd_vd *sum, const double *weights)
{
    kd_mix_finished out;
    out.kl = kd_kl_finish_lanes(sum, weights);
    out.value = kd_select(out.kl.value == out.kl.value, kd_splat(0.0), kd_splat(NAN));
    const kd_vd one = kd_splat(1.0), zp = sum[KD_KL_ZP], zq = sum[KD_KL_ZQ];
    out.log_zp = kd_log_positive(kd_select((zp > 0.0) & (zp < INFINITY), zp, one));
    out.log_zq = kd_log_positive(kd_select((zq > 0.0) & (zq < INFINITY), zq, one));
    const kd_vd y = out.kl.y, central = kd_select(y >= -0.5, y, kd_splat(0.0));
    out.log_ratio_z = kd_select(y >= -0.5, kd_log1p_minus_identity(central) + central, out.log_zq - out.log_zp);
    out.e_q = out.e_p = kd_splat(0.0);
    out.first_kl = out.kl.value;
    out.lam = weights[0];
    out.c_p = weights[1];
    out.c_q = weights[2];
    return out;
}

/* One class's values, both passes' view of it. */
typedef struct {
    kd_vd p, q;             /* P, Q */
    kd_vd a_term, b_term;   /* M h(u), M h(v): its shares of KL(P || M) and KL(Q || M) */
    kd_vd l1u, l1v;         /* log(P / M), log(Q / M) */
    kd_vd c;                /* c_P u + c_Q v */
    kd_vi infinite;         /* a class that makes D infinite (its term is NaN, for the caller) */
} kd_mix_class;

/* x * y, and 0 where x is 0 (a class with no mass adds nothing, whatever the log says). */
KD_INLINE kd_vd kd_mix_weighted(kd_vd x, kd_vd y)
{
    return kd_keep(x != 0.0, x * y);
}

/* log(e^x + e^y), -inf where both are. */
KD_INLINE kd_vd kd_mix_log_add(kd_vd x, kd_vd y, const int for_double)
{
    const kd_vd hi = kd_select(x > y, x, y), lo = kd_select(x > y, y, x);
    const kd_vi none = hi == -INFINITY;
    const kd_vd gap = kd_select(none, kd_splat(0.0), lo - hi);
    const kd_vd sum = hi + kd_log_positive(1.0 + kd_exp_wide(gap, for_double));
    return kd_select(none, kd_splat(-INFINITY), sum);
}

/* L(x) = log1p(x) - x for |x| < 1/16 by its series, as many terms as the largest |x| of the lanes
 * needs for full double precision (students close to their teachers take the short ones). */
KD_INLINE kd_vd kd_mix_log1p_series(kd_vd x)
{
    const kd_vd magnitude = kd_select(x < 0.0, -x, x);
    enum { ALL = KD_COUNT(KD_LOG1P_SERIES) };
    if (!kd_any(magnitude >= 0x1p-10)) /* (2^-10)^6 < 2^-53 */
        return kd_horner(x, KD_LOG1P_SERIES + ALL - 6, 6) * x * x;
    if (!kd_any(magnitude >= 0x1p-6))
        return kd_horner(x, KD_LOG1P_SERIES + ALL - 9, 9) * x * x;
    return kd_horner(x, KD_LOG1P_SERIES, ALL) * x * x;
}

/* Where the second pass takes the series: |u|, |v| below the limit returned. A row far enough
 * from zero takes logs for every class (limit 0): the rounding of its terms, about
 * eps (c_P mu + c_Q lam) E_P|rho| with eps the first pass's accuracy (2^-53 in double, ~2^-37
 * for 4-byte and 2-byte inputs), is then below 2^-44 (double) or ~2^-33 of its value, about
 * (c_P mu^2 + c_Q lam^2) E_P[rho^2] / 2 with E_P[rho^2] ~ 2 KL(P || Q) from the first pass.
 * Closer to zero, the series (no cancellation) where |u|, |v| < 1/16. */
KD_INLINE kd_vd kd_mix_series_limit(const kd_mix_finished *row, const int for_double)
{
    const double mu = 1.0 - row->lam;
    const double second_order = row->c_p * mu * mu + row->c_q * row->lam * row->lam;
    if (!(second_order > 0.0))
        return kd_splat(0.0625);
    const double root_needed = (for_double ? 0x1p-8 : 0x1p-3) * (row->c_p * mu + row->c_q * row->lam) / second_order;
    return kd_select(2.0 * row->first_kl >= root_needed * root_needed, kd_splat(0.0), kd_splat(0.0625));
}

KD_INLINE kd_mix_class kd_mix_class_values(kd_vd t, kd_vd s, kd_vd ea, kd_vd w, const kd_kl_row *constants,
                                           const kd_mix_finished *row, const int mode,
                                           const int for_double)
{
    const double lam = row->lam, mu = 1.0 - lam, inv_T = constants->inv_T;
    const kd_vd inv_one_plus_y = row->kl.inv_one_plus_y;
    kd_mix_class out;
    out.p = ea * row->kl.inv_zp;
    kd_vd rho = (w - row->kl.y) * inv_one_plus_y, ratio = (1.0 + w) * inv_one_plus_y;
    const kd_vd d = kd_kl_gap(t, s, constants, for_double, mode == KD_MODERATE);
    kd_vi near = (mode == KD_MODERATE) ? (w == w) | (w != w) /* all lanes */
                                       : kd_kl_near((t - constants->t_max) * inv_T, d);
    /* Q / P well below 1: 1 + w has lost its bits, e^-d has them */
    const kd_vi small_ratio = w < -0.875;
    if (kd_any(small_ratio)) {
        const kd_vd direct = kd_exp_wide(kd_select(near & small_ratio, -d, kd_splat(0.0)), for_double)
                             * inv_one_plus_y;
        ratio = kd_select(small_ratio, direct, ratio);
        rho = kd_select(small_ratio, direct - 1.0, rho);
    }
    near &= (ratio > 0.0) & (ratio < 0x1p900);
    const kd_vd zero = kd_splat(0.0), one = kd_splat(1.0);
    kd_vd den = one, den_error = zero, r = one, u = zero, v = rho, m = out.p; /* M = P where lam = 1 */
    if (mu != 0.0) {
        const kd_vi central = (rho < 0.5) & (rho > -0.5);
        den = kd_select(central, 1.0 + mu * rho, lam + mu * ratio);
        /* 1 + mu rho - den exactly (Fast2Sum): log(den) + den_error / den is log1p(mu rho) to
         * rounding of mu rho itself, not of 1 */
        den_error = kd_select(central, (1.0 - den) + mu * rho, zero);
        r = 1.0 / den;
        u = -mu * rho * r;
        v = lam * rho * r;
        m = out.p * den;
    }
    out.q = out.p * ratio;
    out.c = row->c_p * u + row->c_q * v;
    /* Near zero h(x) = (1 + x) L(x) + x^2 by the series of L; elsewhere logs of the ratios:
     * log(P / M) = -log(den), log(Q / M) = log(Q / P) - log(den), log(Q / P) = -d - log(Z_Q / Z_P). */
    const kd_vd limit = kd_mix_series_limit(row, for_double);
    const kd_vi tiny_u = (u < limit) & (u > -limit), tiny_v = (v < limit) & (v > -limit);
    out.l1u = out.l1v = out.a_term = out.b_term = zero;
    out.infinite = (kd_vi)zero;
    if (row->c_p != 0.0 && kd_any(tiny_u)) {
        const kd_vd lu = kd_mix_log1p_series(kd_keep(tiny_u, u));
        out.l1u = lu + u;
        out.a_term = m * (r * lu + u * u); /* 1 + u = P / M = r */
    }
    if (row->c_q != 0.0 && kd_any(tiny_v)) {
        const kd_vd lv = kd_mix_log1p_series(kd_keep(tiny_v, v));
        out.l1v = lv + v;
        out.b_term = m * ((ratio * r) * lv + v * v); /* 1 + v = Q / M */
    }
    if (kd_any(~(tiny_u & tiny_v))) {
        const kd_vd log_den = mu != 0.0
            ? kd_log_positive(kd_select((tiny_u & tiny_v) | ~near, one, den)) + den_error * r
            : zero;
        const kd_vd l1v = (-d - row->log_ratio_z) - log_den;
        out.l1u = kd_select(tiny_u, out.l1u, -log_den);
        out.l1v = kd_select(tiny_v, out.l1v, l1v);
        out.a_term = kd_select(tiny_u, out.a_term, out.p * (mu * rho) - out.p * log_den);
        out.b_term = kd_select(tiny_v, out.b_term, kd_mix_weighted(out.q, l1v) - out.p * (lam * rho));
    }
    if (mode != KD_MODERATE || kd_any(~near)) {
        /* far classes: logs of P, Q and M from the logits */
        const kd_vd lp = (t - constants->t_max) * inv_T - row->log_zp;
        const kd_vd lq = (s - constants->s_max) * inv_T - row->log_zq;
        const kd_vd lm = kd_mix_log_add(lam > 0.0 ? lp + log(lam) : kd_splat(-INFINITY),
                                        mu > 0.0 ? lq + log(mu) : kd_splat(-INFINITY), for_double);
        const kd_vd p = kd_exp_wide(kd_select(near, zero, lp), for_double);
        const kd_vd q = kd_exp_wide(kd_select(near, zero, lq), for_double);
        const kd_vd fm = kd_exp_wide(kd_select(near, zero, lm), for_double);
        const kd_vd l1u = lp - lm, l1v = lq - lm;
        const kd_vd safe_m = kd_select(fm > 0.0, fm, one);
        const kd_vd c = kd_keep(fm > 0.0, (row->c_p * p + row->c_q * q) / safe_m - (row->c_p + row->c_q));
        out.p = kd_select(near, out.p, p);
        out.q = kd_select(near, out.q, q);
        out.l1u = kd_select(near, out.l1u, l1u);
        out.l1v = kd_select(near, out.l1v, l1v);
        out.a_term = kd_select(near, out.a_term, (kd_mix_weighted(p, l1u) - p) + fm);
        out.b_term = kd_select(near, out.b_term, (kd_mix_weighted(q, l1v) - q) + fm);
        out.c = kd_select(near, out.c, c);
        /* One side rules out a class where the other has mass, however little (its probability
         * may underflow to 0): infinite where M is the ruling side's (lam = 1: M = P; lam = 0:
         * M = Q). NaN: the caller settles the row from the logits and the form's flags. */
        if (lam == 1.0 && row->c_q != 0.0)
            out.infinite = (t == -INFINITY) & (s > -INFINITY);
        if (lam == 0.0 && row->c_p != 0.0)
            out.infinite = (s == -INFINITY) & (t > -INFINITY);
        out.a_term = kd_select(out.infinite, kd_splat(NAN), out.a_term);
        out.b_term = kd_select(out.infinite, kd_splat(NAN), out.b_term);
    }
    return out;
}

/* Adds KD_LANES classes' shares to the second pass's sums. */
KD_INLINE void kd_mix_second_terms(kd_vd t, kd_vd s, kd_vd ea, kd_vd w, const kd_kl_row *constants,
                                   const kd_mix_finished *row, const int mode, const int for_double,
                                   kd_vd *sum)
{
    const kd_mix_class x = kd_mix_class_values(t, s, ea, w, constants, row, mode, for_double);
    const kd_vi counts = (x.p != 0.0) | (x.q != 0.0) | x.infinite;
    sum[KD_MIX_A] += kd_keep(counts, x.a_term);
    sum[KD_MIX_B] += kd_keep(counts, x.b_term);
    sum[KD_MIX_SQ] += kd_mix_weighted(x.q, x.c);
    sum[KD_MIX_SP] += kd_mix_weighted(x.p, x.c);
}

/* c * x, and 0 where the weight c is 0 (x may then be infinite). */
KD_INLINE kd_vd kd_mix_scaled(double c, kd_vd x)
{
    return c != 0.0 ? c * x : kd_splat(0.0);
}

KD_INLINE void kd_mix_second_finish_lanes(kd_mix_finished *row, const kd_vd *sum)
{
    const double mu = 1.0 - row->lam;
    const kd_vd value = kd_mix_scaled(row->c_p, sum[KD_MIX_A]) + kd_mix_scaled(row->c_q, sum[KD_MIX_B]);
    const kd_vi finite = (value == value) & (value < INFINITY) & (value > -INFINITY);
    row->value = kd_select(finite & (row->value == row->value),
                           kd_select(value < 0.0, kd_splat(0.0), value), kd_splat(NAN));
    row->e_q = kd_mix_scaled(row->c_q, sum[KD_MIX_B]) - kd_mix_scaled(mu, sum[KD_MIX_SQ]);
    row->e_p = kd_mix_scaled(row->c_p, sum[KD_MIX_A]) - kd_mix_scaled(row->lam, sum[KD_MIX_SP]);
}

/* The student direction Q (g - E_Q[g]) and the teacher direction P (f - E_P[f]) of KD_LANES
 * classes, and Q. */
KD_INLINE void kd_mix_gradient_lanes(kd_vd t, kd_vd s, kd_vd ea, kd_vd w, const kd_kl_row *constants,
                                     const kd_mix_finished *row, const int mode, const int for_double,
                                     kd_vd *student_direction, kd_vd *teacher_direction,
                                     kd_vd *student_probability)
{
    const kd_mix_class x = kd_mix_class_values(t, s, ea, w, constants, row, mode, for_double);
    const kd_vd g = kd_mix_scaled(row->c_q, x.l1v) - kd_mix_scaled(1.0 - row->lam, x.c);
    const kd_vd f = kd_mix_scaled(row->c_p, x.l1u) - kd_mix_scaled(row->lam, x.c);
    *student_direction = kd_mix_weighted(x.q, g - row->e_q);
    *teacher_direction = kd_mix_weighted(x.p, f - row->e_p);
    *student_probability = x.q;
}

KD_INLINE void kd_mix_finish_store(const kd_mix_finished *lanes, int lane, kd_row_finish *out)
{
    kd_kl_finish_store(&lanes->kl, lane, out);
    out->value = lanes->value[lane];
    out->constant[KD_MIX_LOG_ZP] = lanes->log_zp[lane];
    out->constant[KD_MIX_LOG_ZQ] = lanes->log_zq[lane];
    out->constant[KD_MIX_LOG_RATIO_Z] = lanes->log_ratio_z[lane];
    out->constant[KD_MIX_EQ] = lanes->e_q[lane];
    out->constant[KD_MIX_EP] = lanes->e_p[lane];
    out->constant[KD_MIX_LAM] = lanes->lam;
    out->constant[KD_MIX_CP] = lanes->c_p;
    out->constant[KD_MIX_CQ] = lanes->c_q;
    out->constant[KD_MIX_FIRST_KL] = lanes->first_kl[lane];
}

KD_INLINE kd_mix_finished kd_mix_finish_splat(const kd_row_finish *f)
{
    kd_mix_finished out;
    out.kl = kd_kl_finish_splat(f);
    out.value = kd_splat(f->value);
    out.log_zp = kd_splat(f->constant[KD_MIX_LOG_ZP]);
    out.log_zq = kd_splat(f->constant[KD_MIX_LOG_ZQ]);
    out.log_ratio_z = kd_splat(f->constant[KD_MIX_LOG_RATIO_Z]);
    out.e_q = kd_splat(f->constant[KD_MIX_EQ]);
    out.e_p = kd_splat(f->constant[KD_MIX_EP]);
    out.lam = f->constant[KD_MIX_LAM];
    out.c_p = f->constant[KD_MIX_CP];
    out.c_q = f->constant[KD_MIX_CQ];
    out.first_kl = kd_splat(f->constant[KD_MIX_FIRST_KL]);
    return out;
}
