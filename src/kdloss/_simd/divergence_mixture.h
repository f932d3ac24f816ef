/* The mixture row of the divergence table: D = c_P KL(P || M) + c_Q KL(Q || M), M = lam P + (1 - lam) Q,
 * with weights (lam, c_P, c_Q) from the Python table (kdloss._divergences): reverse KL (1, 0, 1),
 * JSD(beta) (beta, beta, 1 - beta), skew KL (beta, 1, 0), skew reverse KL (1 - beta, 0, 1).
 *
 * M needs P and Q normalised, so this row takes two passes. The first is KL's (divergence_kl.h): its
 * sums give Z_P, Z_Q and y = Z_Q / Z_P - 1, and it keeps e^a and w = e^-d - 1 of each class. The
 * second sums, per class, with rho = Q / P - 1 = (w - y) / (1 + y) (accurate relative to itself as
 * the student approaches the teacher) and sigma = P / Q - 1, so that M / P = 1 + (1 - lam) rho and
 * M / Q = 1 + lam sigma:
 *
 *     KL(P || M) = sum P phi((1 - lam) rho),  KL(Q || M) = sum Q phi(lam sigma),
 *     phi(x) = x - log1p(x) >= 0
 *
 * (each term is P log(P / M) - P + M, resp. Q: the added sum M - P is 0). Where |x| is below
 * about 0.3 on the sides the weights use ("central" classes: every class where the student is
 * close to the teacher), phi(x) = z (x - R(z)) with z = x / (2 + x) and R fdlibm's log polynomial:
 * nothing cancels, down to D = 0, and one division serves both sides. Elsewhere a term is
 * P log(P / M) - (P - M) (resp. Q), from logs of the ratios. Classes whose ratio Q / P is out of
 * range for that (|d| > 700, a mask, an underflow) take logs of P, Q and M from the logits
 * (log P = a - log Z_P), "far" classes. u = P / M - 1 and v = Q / M - 1 below.
 *
 * Gradient (times T^2, over the logits): with g = c_Q log(Q / M) - (1 - lam) c, f = c_P log(P / M)
 * - lam c, c = c_P u + c_Q v,
 *     d_s = T Q (g - E_Q[g]),  d_t = T P (f - E_P[f]),
 *     E_Q[g] = c_Q KL(Q || M) - (1 - lam) sum Q c,  E_P[f] = c_P KL(P || M) - lam sum P c.
 *
 * For inputs of float precision or less, the second pass of a moderate row takes its central
 * classes in float32 lanes, from rho and P taken in double (kd_mix_single_second_terms, below):
 * the one division and the polynomial of 16 classes a vector (AVX-512) where double's take 8.
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
    out.lam = weights[0];
    out.c_p = weights[1];
    out.c_q = weights[2];
    return out;
}

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

/* c = c_P u + c_Q v = kappa rho P / M (u = -mu rho P / M, v = lam rho P / M): kappa = 0 where the
 * weights balance (JSD: c_P = lam, c_Q = mu), and c is then 0 in every class, far ones too. */
KD_INLINE double kd_mix_kappa(const kd_mix_finished *row)
{
    return row->c_q * row->lam - row->c_p * (1.0 - row->lam);
}

/* log1p(x) = 2z + z R(z), z = x / (2 + x), R(z) = 2 (atanh(z) - z) / z = z^2 (2/3 + 2/5 z^2 + ...):
 * for double precision fdlibm's e_log.c polynomial (Lg7 .. Lg1), within 2^-58.45 for
 * |z| <= 0.1716 (x in [-0.29, 0.41]); for inputs of float precision or less, whose first pass is
 * good to about 2^-37, the series to z^18, within 2^-34 of R for |z| <= 0.3 (x in [-0.46, 0.86]),
 * which keeps more classes central. */
static const double KD_MIX_LOG_POLYNOMIAL[] = {
    1.479819860511658591e-01, 1.531383769920937332e-01, 1.818357216161805012e-01, 2.222219843214978396e-01,
    2.857142874366239149e-01, 3.999999999940941908e-01, 6.666666666666735130e-01,
};
static const double KD_MIX_LOG_SERIES[] = {
    2.0 / 19.0, 2.0 / 17.0, 2.0 / 15.0, 2.0 / 13.0, 2.0 / 11.0, 2.0 / 9.0, 2.0 / 7.0, 2.0 / 5.0, 2.0 / 3.0,
};
#define KD_MIX_CENTRAL_Z(for_double) ((for_double) ? 0.1715 : 0.3)

/* phi(x) = x - log1p(x) >= 0 from z = x / (2 + x), |z| <= KD_MIX_CENTRAL_Z: x - 2z = x z, so
 * phi(x) = z (x - R(z)), where x and R(z) ~ 2 z^2 / 3 have opposite signs or R is the smaller
 * by far: nothing cancels, down to x = 0. Returns x - R(z), for callers that scale by z. */
KD_INLINE kd_vd kd_mix_phi_factor(kd_vd x, kd_vd z, const int for_double)
{
    const kd_vd z2 = z * z;
    const kd_vd r = for_double ? kd_horner(z2, KD_MIX_LOG_POLYNOMIAL, KD_COUNT(KD_MIX_LOG_POLYNOMIAL))
                               : kd_horner(z2, KD_MIX_LOG_SERIES, KD_COUNT(KD_MIX_LOG_SERIES));
    return x - r * z2;
}

/* For inputs of float precision or less, the classes beyond the central range and within
 * |z| <= KD_MIX_WIDE_Z (kd_mix_class_values): R(z) / z^2 from a polynomial of degree 17 in z^2,
 * fitted for relative error with numpy and checked with mpmath at 50 digits, within 1.9e-11 of
 * itself (2^-35.6; the series above is within 2^-34); nothing in phi cancels there (see the
 * float32 pass's use of the same range, below). Students far from their teachers at T = 1 put a
 * quarter of their classes beyond the central range, where the logs cost several times the series. */
#define KD_MIX_WIDE_Z 0.8
#define KD_MIX_WIDE_W_FLOOR -0.99 /* Q / P >= 0.01: see the float32 pass's use, below */
static const double KD_MIX_LOG_SERIES_WIDE[] = {
    0x1.a8bbd5d9ec91bp+3, -0x1.ef0dfab2c0baap+4, 0x1.224ae453cf658p+4, 0x1.e1bdab49c2529p+3,
    -0x1.48b41fbf8be8dp+4, -0x1.d3c67e5923d74p+1, 0x1.64da817a52ef4p+4, -0x1.45be2a41f7e06p+4,
    0x1.52c3533bf57adp+3, -0x1.b261b458ce1e4p+1, 0x1.d2136f63bd725p-1, 0x1.5dae8c29980dap-7,
    0x1.5523717090af1p-3, 0x1.72a089149236ep-3, 0x1.c72e11926d960p-3, 0x1.24921ac0bcccap-2,
    0x1.999999f93ad58p-2, 0x1.5555555545173p-1,
};

KD_INLINE kd_vd kd_mix_phi_factor_wide(kd_vd x, kd_vd z)
{
    const kd_vd z2 = z * z;
    return x - kd_horner(z2, KD_MIX_LOG_SERIES_WIDE, KD_COUNT(KD_MIX_LOG_SERIES_WIDE)) * z2;
}

/* One class's values, both passes' view of it. With rho = Q / P - 1, sigma = P / Q - 1,
 * M / P = 1 + mu rho and M / Q = 1 + lam sigma, its shares of KL(P || M) and KL(Q || M) are
 *     P log(P / M) - P + M = P phi(mu rho),    Q log(Q / M) - Q + M = Q phi(lam sigma),
 * phi(x) = x - log1p(x) >= 0. Central classes (|z| <= KD_MIX_CENTRAL_Z on the sides the weights
 * use; every class where the student is close to the teacher) take phi from z (kd_mix_phi_factor),
 * with one division for both sides' z and 1 / (M / P); the others take logs of the ratios, and far
 * classes logs of P, Q and M from the logits. */
typedef struct {
    kd_vd p, q;             /* P, Q */
    kd_vd a_term, b_term;   /* P phi(mu rho), Q phi(lam sigma): shares of KL(P || M) and KL(Q || M) */
    kd_vd l1u, l1v;         /* log(P / M), log(Q / M) (with_logs only) */
    kd_vd c;                /* c_P u + c_Q v, u = P / M - 1, v = Q / M - 1 */
    kd_vi infinite;         /* a class that makes D infinite (its term is NaN, for the caller) */
} kd_mix_class;

/* The values of the classes that are not central: logs of the ratios (from kd_mix_class_values'
 * P, rho, ratio; d where mode is not KD_MODERATE, and near), or of P, Q and M from the logits (far
 * classes). */
KD_INLINE kd_mix_class kd_mix_other_values(kd_vd t, kd_vd s, kd_vd w, const kd_kl_row *constants,
                                           const kd_mix_finished *row, const int mode,
                                           const int for_double, const int use_c, kd_vd p_near,
                                           kd_vd rho, kd_vd ratio, kd_vd d, kd_vi near)
{
    const double lam = row->lam, mu = 1.0 - lam, inv_T = constants->inv_T;
    const kd_vd inv_one_plus_y = row->kl.inv_one_plus_y, zero = kd_splat(0.0), one = kd_splat(1.0);
    kd_mix_class other;
    if (mode == KD_MODERATE)
        d = kd_kl_gap(t, s, constants, for_double, 1);
    other.p = p_near;
    other.q = p_near * ratio;
    kd_vd other_rho = rho, other_ratio = ratio;
    /* Q / P well below 1: 1 + w has lost its bits, e^-d has them */
    const kd_vi small_ratio = w < -0.875;
    if (kd_any(small_ratio)) {
        const kd_vd direct = kd_exp_wide(kd_select(near & small_ratio, -d, zero), for_double) * inv_one_plus_y;
        other_ratio = kd_select(small_ratio, direct, ratio);
        other_rho = kd_select(small_ratio, direct - 1.0, rho);
        other.q = other.p * other_ratio;
    }
    near &= (other_ratio > 0.0) & (other_ratio < 0x1p900);
    kd_vd log_den = zero, other_r = one, u = zero, v = other_rho;
    if (mu != 0.0) {
        const kd_vi central = (other_rho < 0.5) & (other_rho > -0.5);
        const kd_vd other_den = kd_select(central, 1.0 + mu * other_rho, lam + mu * other_ratio);
        /* 1 + mu rho - den exactly (Fast2Sum): log(den) + den_error / den is log1p(mu rho) to
         * rounding of mu rho itself, not of 1 */
        const kd_vd den_error = kd_select(central, (1.0 - other_den) + mu * other_rho, zero);
        other_r = 1.0 / other_den;
        u = -mu * other_rho * other_r;
        v = lam * other_rho * other_r;
        log_den = kd_log_positive(kd_select(near, other_den, one)) + den_error * other_r;
    }
    other.c = use_c ? row->c_p * u + row->c_q * v : zero;
    /* log(P / M) = -log(den), log(Q / M) = log(Q / P) - log(den), log(Q / P) = -d - log(Z_Q / Z_P) */
    other.l1u = -log_den;
    other.l1v = (-d - row->log_ratio_z) - log_den;
    other.a_term = other.p * (mu * other_rho) - other.p * log_den;
    other.b_term = kd_mix_weighted(other.q, other.l1v) - other.p * (lam * other_rho);
    other.infinite = (kd_vi)zero;
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
        const kd_vd c = use_c ? kd_keep(fm > 0.0, (row->c_p * p + row->c_q * q) / safe_m - (row->c_p + row->c_q))
                               : zero;
        other.p = kd_select(near, other.p, p);
        other.q = kd_select(near, other.q, q);
        other.l1u = kd_select(near, other.l1u, l1u);
        other.l1v = kd_select(near, other.l1v, l1v);
        other.a_term = kd_select(near, other.a_term, (kd_mix_weighted(p, l1u) - p) + fm);
        other.b_term = kd_select(near, other.b_term, (kd_mix_weighted(q, l1v) - q) + fm);
        other.c = kd_select(near, other.c, c);
        /* One side rules out a class where the other has mass, however little (its probability
         * may underflow to 0): infinite where M is the ruling side's (lam = 1: M = P; lam = 0:
         * M = Q). NaN: the caller settles the row from the logits and the form's flags. */
        if (lam == 1.0 && row->c_q != 0.0)
            other.infinite = (t == -INFINITY) & (s > -INFINITY);
        if (lam == 0.0 && row->c_p != 0.0)
            other.infinite = (s == -INFINITY) & (t > -INFINITY);
        other.a_term = kd_select(other.infinite, kd_splat(NAN), other.a_term);
        other.b_term = kd_select(other.infinite, kd_splat(NAN), other.b_term);
    }
    return other;
}

/* A central-form class's shares of KL(P || M) and KL(Q || M), and (with_logs) log(P / M) and
 * log(Q / M), from phi's factors x - R(z) z^2 (kd_mix_phi_factor); out's p and q are set. */
KD_INLINE void kd_mix_central_terms(kd_mix_class *out, kd_vd x_a, kd_vd z_a, kd_vd z_b, kd_vd lam_rho, kd_vd ratio,
                                    kd_vd factor_a, kd_vd factor_b, const int need_a, const int need_b,
                                    const int with_logs)
{
    const kd_vd zero = kd_splat(0.0);
    out->a_term = need_a ? out->p * (z_a * factor_a) : zero;
    out->b_term = need_b ? z_b * (-lam_rho * out->p + out->q * factor_b) : zero;
    out->l1u = out->l1v = zero;
    if (with_logs) { /* log(P / M) = -log1p(x_a) = phi(x_a) - x_a, the same with x_b */
        out->l1u = z_a * factor_a - x_a;
        if (need_b) {
            const kd_vd x_b = -lam_rho / ratio;
            out->l1v = z_b * (x_b + factor_b) - x_b;
        }
    }
}

KD_INLINE kd_mix_class kd_mix_class_values(kd_vd t, kd_vd s, kd_vd ea, kd_vd w, const kd_kl_row *constants,
                                           const kd_mix_finished *row, const int mode,
                                           const int for_double, const int with_logs, const int with_c)
{
    const double lam = row->lam, mu = 1.0 - lam, inv_T = constants->inv_T;
    /* c = kappa rho P / M; with_c and kappa = 0 (JSD), c is 0 in every class */
    const double kappa = kd_mix_kappa(row);
    const int use_c = with_c && kappa != 0.0;
    /* r = P / M shares the division whether c is wanted or not: z_a and z_b, so the value, keep
     * their bits with and without the gradient */
    const int need_a = row->c_p != 0.0, need_b = row->c_q != 0.0, need_r = kappa != 0.0 && mu != 0.0;
    const kd_vd inv_one_plus_y = row->kl.inv_one_plus_y, zero = kd_splat(0.0), one = kd_splat(1.0);
    const kd_vi all = ~(kd_vi)zero;
    kd_mix_class out;
    out.p = ea * row->kl.inv_zp;
    const kd_vd rho = (w - row->kl.y) * inv_one_plus_y, ratio = (1.0 + w) * inv_one_plus_y;
    out.q = out.p * ratio;

    /* central classes: z_a = x_a / (2 + x_a) with x_a = mu rho; z_b = x_b / (2 + x_b) with
     * x_b = lam sigma, = -lam rho / (2 + (1 + mu) rho); r = P / M = 1 / (1 + x_a) */
    const kd_vd x_a = mu * rho, den = 1.0 + x_a, lam_rho = lam * rho;
    const kd_vd two_a = 2.0 + x_a, two_b = 2.0 + (1.0 + mu) * rho;
    const kd_vd inv = 1.0 / ((need_a ? two_a : one) * (need_b ? two_b : one) * (need_r ? den : one));
    const kd_vd z_a = need_a ? x_a * (inv * ((need_b ? two_b : one) * (need_r ? den : one))) : zero;
    const kd_vd z_b = need_b ? -lam_rho * (inv * ((need_a ? two_a : one) * (need_r ? den : one))) : zero;
    const kd_vd r = need_r ? inv * ((need_a ? two_a : one) * (need_b ? two_b : one)) : one;
    /* A side whose x is 0 whatever rho is (unused, or lam or mu 0) is central everywhere; else
     * Q / P well below 1 (1 + w has lost its bits) is not. */
    const kd_vi accurate = w >= -0.875;
    kd_vi central_a = all, central_b = all;
    if (need_a && mu != 0.0)
        central_a = accurate & (z_a <= KD_MIX_CENTRAL_Z(for_double)) & (z_a >= -KD_MIX_CENTRAL_Z(for_double));
    if (need_b && lam != 0.0)
        central_b = accurate & (z_b <= KD_MIX_CENTRAL_Z(for_double)) & (z_b >= -KD_MIX_CENTRAL_Z(for_double));
    kd_vd d = zero;
    kd_vi near = all;
    if (mode != KD_MODERATE) { /* w is e^b for far classes */
        d = kd_kl_gap(t, s, constants, for_double, 0);
        near = kd_kl_near((t - constants->t_max) * inv_T, d);
        central_a &= near;
        central_b &= near;
    }
    kd_mix_central_terms(&out, x_a, z_a, z_b, lam_rho, ratio, kd_mix_phi_factor(x_a, z_a, for_double),
                         kd_mix_phi_factor(zero, z_b, for_double), need_a, need_b, with_logs);
    out.c = !use_c ? zero : need_r ? kappa * (rho * r) : kappa * rho;
    out.infinite = (kd_vi)zero;
    if (!kd_any(~(central_a & central_b)))
        return out;
    if (!for_double) {
        /* Inputs of float precision or less: a class beyond the central range but within
         * |z| <= KD_MIX_WIDE_Z (and Q / P >= 0.01) takes phi from the longer series in place of
         * the logs, and counts as central from here on (each lane by its own values: a row's
         * result does not depend on the rows beside it in short_rows' lanes). */
        const kd_vi fair = (w >= KD_MIX_WIDE_W_FLOOR) & near;
        const kd_vi wide_a = ~central_a & fair & (z_a <= KD_MIX_WIDE_Z) & (z_a >= -KD_MIX_WIDE_Z);
        const kd_vi wide_b = ~central_b & fair & (z_b <= KD_MIX_WIDE_Z) & (z_b >= -KD_MIX_WIDE_Z);
        if (kd_any(wide_a | wide_b)) {
            kd_mix_class wide = out;
            kd_mix_central_terms(&wide, x_a, z_a, z_b, lam_rho, ratio, kd_mix_phi_factor_wide(x_a, z_a),
                                 kd_mix_phi_factor_wide(zero, z_b), need_a, need_b, with_logs);
            out.a_term = kd_select(wide_a, wide.a_term, out.a_term);
            out.b_term = kd_select(wide_b, wide.b_term, out.b_term);
            out.l1u = kd_select(wide_a, wide.l1u, out.l1u);
            out.l1v = kd_select(wide_b, wide.l1v, out.l1v);
            central_a |= wide_a;
            central_b |= wide_b;
            if (!kd_any(~(central_a & central_b)))
                return out;
        }
    }

    const kd_mix_class other = kd_mix_other_values(t, s, w, constants, row, mode, for_double, use_c,
                                                   out.p, rho, ratio, d, near);
    /* each side's central classes keep their phi; a class central on both sides keeps it all */
    const kd_vi both = central_a & central_b;
    out.p = kd_select(both, out.p, other.p);
    out.q = kd_select(both, out.q, other.q);
    out.c = kd_select(both, out.c, other.c);
    out.a_term = kd_select(central_a, out.a_term, other.a_term);
    out.b_term = kd_select(central_b, out.b_term, other.b_term);
    out.l1u = kd_select(central_a, out.l1u, other.l1u);
    out.l1v = kd_select(central_b, out.l1v, other.l1v);
    out.infinite = other.infinite;
    return out;
}

/* Adds KD_LANES classes' shares to the second pass's sums; value_only: the value's alone. */
KD_INLINE void kd_mix_second_terms(kd_vd t, kd_vd s, kd_vd ea, kd_vd w, const kd_kl_row *constants,
                                   const kd_mix_finished *row, const int mode, const int for_double,
                                   const int value_only, kd_vd *sum)
{
    const kd_mix_class x = kd_mix_class_values(t, s, ea, w, constants, row, mode, for_double, 0, !value_only);
    const kd_vi counts = (x.p != 0.0) | (x.q != 0.0) | x.infinite;
    sum[KD_MIX_A] += kd_keep(counts, x.a_term);
    sum[KD_MIX_B] += kd_keep(counts, x.b_term);
    if (!value_only && kd_mix_kappa(row) != 0.0) { /* sum Q c and sum P c; else 0 */
        sum[KD_MIX_SQ] += kd_mix_weighted(x.q, x.c);
        sum[KD_MIX_SP] += kd_mix_weighted(x.p, x.c);
    }
}

#if !KD_LIBM
/* The second pass in float32 lanes (vector_single.h), for inputs of float precision or less in
 * moderate rows (rows_impl.h, second_chunk): the central terms above, KD_SINGLE_LANES classes at
 * a time, over a wider central range than double's (KD_MIX_SINGLE_CENTRAL_Z). rho and P are
 * taken in double as the double terms take them, then rounded to float32: rho is then accurate
 * relative to itself, and every term of the value's sums (each >= 0) to a few float32 ulp of
 * itself. Float32 lane sums of at most KD_SINGLE_RUN steps are widened into the double block
 * sums. P is scaled by 2^KD_MIX_SINGLE_SCALE. A step takes the double terms where a class is
 * outside the central range of a side the weights use (a range of rho, kd_mix_single_second),
 * or where its terms, about P x^2 / 2, would fall below 2^-100 (a tiny P and a tiny rho; 2^-60
 * with the scale, far inside float32's normal range). The gradient's sums (not value_only) have
 * terms of both signs and a total of second order in rho: they stay in double. */
#define KD_MIX_SINGLE_SCALE 40
#define kd_mix_single_second_unscale 0x1p-40
/* The float32 pass's central range, |z| <= KD_MIX_SINGLE_CENTRAL_Z on each side the weights use:
 * wider than double's (KD_MIX_CENTRAL_Z), so that a student as far from its teacher as the
 * benchmark's eps = 1 rarely sends a step to the double terms. R(z) / z^2 (see
 * KD_MIX_LOG_SERIES) there: a polynomial of degree 4 in z^2, fitted for relative error with
 * numpy and checked with mpmath at 40 digits, within 1.1e-7 of itself in float32 coefficients.
 * R(z) ~ 2 z^2 / 3 is at most 0.15 of |x| (x = 2 z / (1 - z)), so this is within 1.7e-8 of
 * phi's factor x - R(z). */
#define KD_MIX_SINGLE_CENTRAL_Z 0.4
static const float KD_MIX_LOG_FIT_FLOAT[] = {
    0x1.0ae3f2p-2f, 0x1.aeb814p-3f, 0x1.254b62p-2f, 0x1.9995d2p-2f, 0x1.555556p-1f,
};
/* A step with a class outside that range, and every class within |z| <= KD_MIX_WIDE_Z,
 * takes R(z) / z^2 from a polynomial of degree 10 in z^2 over that range (students far from their
 * teachers at T = 1, whose classes would otherwise send nearly every step to the double terms):
 * fitted as the one above, within 6.4e-8 of itself in float32 coefficients and 1.3e-7 evaluated
 * in float32 (Horner, fused). Nothing in phi cancels there either: x and R(z) z^2 (at most 0.46
 * of |x - R(z) z^2| for |z| <= 0.8) have opposite signs or the sign of the result. Such a step
 * takes x, z and Q / P = 1 + rho from double, each rounded once (kd_mix_wide_z): z from the
 * central terms' shared float32 division, up to 5 ulp off, left row values 3.3e-7 off at T = 1.
 * The range reaches Q / P down to 0.01 (w >= KD_MIX_WIDE_W_FLOOR: the double first pass's
 * e^-d is within about 5e-12 of itself, so 1 + w is within 5e-10 there), and rho up to
 * KD_MIX_SINGLE_WIDE_RHO_CAP, so that |x_b| = lam |rho| / (1 + rho) is at least lam |rho| / 16
 * and P x_b^2 stays >= 2^-100 with a tiny bound 2^8 times the central one. */
#define KD_MIX_SINGLE_WIDE_RHO_CAP 15.0
static const float KD_MIX_LOG_FIT_FLOAT_WIDE[] = {
    0x1.f7f60ap+2f, -0x1.39d9dap+4f, 0x1.629692p+4f, -0x1.ba0f10p+3f, 0x1.60cc38p+2f, -0x1.23f5f4p+0f,
    0x1.7d118cp-2f, 0x1.a625a0p-3f, 0x1.25475cp-2f, 0x1.999698p-2f, 0x1.555556p-1f,
};

/* The shapes of the weights the float32 second pass is compiled for, one copy of its loop each
 * (rows_impl.h, second_chunk): with the weights' tests constant, a step keeps its sums and
 * constants in registers and computes only the sides it uses. Both sides without c: JSD; one side
 * with c and P / M: skew KL (P) and skew reverse KL (Q), beta < 1; any: every other weight. */
enum { KD_MIX_ANY_WEIGHTS, KD_MIX_BOTH_SIDES, KD_MIX_P_SIDE, KD_MIX_Q_SIDE, KD_MIX_SINGLE_SECOND_VARIANTS };

/* A row's constants for the float32 second pass: the range of rho where every class is central
 * on the sides the weights use (and Q / P keeps its bits, w >= -0.875), the least P rho^2
 * (P scaled) for which P x^2 >= 2^-100 on every used side (x = mu rho, or lam rho to within the
 * central range's factor), and the shape of the weights. */
typedef struct {
    double y, inv_one_plus_y, p_scale;
    kd_vs rho_low, rho_high, tiny, lam, mu, one_plus_mu;
    kd_vs wide_low, wide_high, wide_tiny; /* the same for |z| <= KD_MIX_WIDE_Z */
    int variant;
} kd_mix_single_second;

/* Which sides a step computes: the weights' own tests (KD_MIX_ANY_WEIGHTS), else constants. */
typedef struct {
    int a, b, r, c; /* KL(P || M)'s terms, KL(Q || M)'s, P / M, c (kappa != 0) */
} kd_mix_sides;

KD_INLINE kd_mix_sides kd_mix_sides_of(const kd_mix_finished *row, const int variant)
{
    const double kappa = kd_mix_kappa(row);
    kd_mix_sides out = {row->c_p != 0.0, row->c_q != 0.0, kappa != 0.0 && row->lam != 1.0, kappa != 0.0};
    if (variant != KD_MIX_ANY_WEIGHTS) {
        out.a = variant != KD_MIX_Q_SIDE;
        out.b = variant != KD_MIX_P_SIDE;
        out.r = out.c = variant != KD_MIX_BOTH_SIDES;
    }
    return out;
}

/* The row's variant: the one whose constant sides are the row's own, else KD_MIX_ANY_WEIGHTS. */
KD_INLINE int kd_mix_variant(const kd_mix_finished *row)
{
    const kd_mix_sides own = kd_mix_sides_of(row, KD_MIX_ANY_WEIGHTS);
    for (int variant = KD_MIX_ANY_WEIGHTS + 1; variant < KD_MIX_SINGLE_SECOND_VARIANTS; variant++) {
        const kd_mix_sides fixed = kd_mix_sides_of(row, variant);
        if (fixed.a == own.a && fixed.b == own.b && fixed.r == own.r && fixed.c == own.c)
            return variant;
    }
    return KD_MIX_ANY_WEIGHTS;
}

/* The range of rho where every class is within |z| <= c on the sides the weights use and
 * w >= w_floor, capped at rho_cap; *weight: the least of mu and lam on those sides. */
KD_INLINE void kd_mix_single_range(const kd_mix_finished *row, double c, double w_floor, double rho_cap,
                                   double *low_out, double *high_out, double *weight_out)
{
    const double lam = row->lam, mu = 1.0 - lam;
    const double y = row->kl.y[0], inv_one_plus_y = row->kl.inv_one_plus_y[0];
    double low = (w_floor - y) * inv_one_plus_y, high = rho_cap, weight = 1.0;
    if (row->c_p != 0.0 && mu != 0.0) { /* |x / (2 + x)| <= c, x = mu rho */
        low = fmax(low, -2.0 * c / ((1.0 + c) * mu));
        high = fmin(high, 2.0 * c / ((1.0 - c) * mu));
        weight = fmin(weight, mu);
    }
    if (row->c_q != 0.0 && lam != 0.0) { /* |lam rho / (2 + (1 + mu) rho)| <= c */
        low = fmax(low, -2.0 * c / (lam + c * (1.0 + mu)));
        if (lam > c * (1.0 + mu))
            high = fmin(high, 2.0 * c / (lam - c * (1.0 + mu)));
        weight = fmin(weight, lam);
    }
    *low_out = low;
    *high_out = fmin(high, 0x1p100);
    *weight_out = weight;
}

KD_INLINE kd_mix_single_second kd_mix_single_second_row(const kd_mix_finished *row)
{
    const double lam = row->lam, mu = 1.0 - lam;
    double low, high, weight, wide_low, wide_high, wide_weight;
    kd_mix_single_range(row, KD_MIX_SINGLE_CENTRAL_Z, -0.875, INFINITY, &low, &high, &weight);
    kd_mix_single_range(row, KD_MIX_WIDE_Z, KD_MIX_WIDE_W_FLOOR, KD_MIX_SINGLE_WIDE_RHO_CAP,
                        &wide_low, &wide_high, &wide_weight);
    const double tiny = fmin(ldexp(1.0, KD_MIX_SINGLE_SCALE - 100) / (weight * weight), 0x1p100);
    const double wide_tiny = fmin(ldexp(1.0, KD_MIX_SINGLE_SCALE - 92) / (wide_weight * wide_weight), 0x1p100);
    const kd_mix_single_second out = {
        row->kl.y[0], row->kl.inv_one_plus_y[0], row->kl.inv_zp[0] * ldexp(1.0, KD_MIX_SINGLE_SCALE),
        kd_splat_single((float)low), kd_splat_single((float)high), kd_splat_single((float)tiny),
        kd_splat_single((float)lam), kd_splat_single((float)mu), kd_splat_single((float)(1.0 + mu)),
        kd_splat_single((float)wide_low), kd_splat_single((float)wide_high), kd_splat_single((float)wide_tiny),
        kd_mix_variant(row),
    };
    return out;
}

/* z_a = x_a / (2 + x_a), x_a = mu rho, and z_b = -lam rho / (2 + (1 + mu) rho) in double, one
 * division for both. */
KD_INLINE void kd_mix_wide_z(kd_vd rho, double lam, double mu, kd_vd *z_a, kd_vd *z_b)
{
    const kd_vd x_a = mu * rho, two_a = 2.0 + x_a, two_b = 2.0 + (1.0 + mu) * rho;
    const kd_vd inv = 1.0 / (two_a * two_b);
    *z_a = x_a * (two_b * inv);
    *z_b = -lam * rho * (two_a * inv);
}

/* x - R(z) z^2 over the wide range (KD_MIX_LOG_FIT_FLOAT_WIDE). */
KD_INLINE kd_vs kd_mix_phi_factor_single_wide(kd_vs x, kd_vs z)
{
    const kd_vs u = z * z;
    kd_vs r = kd_splat_single(KD_MIX_LOG_FIT_FLOAT_WIDE[0]);
#pragma GCC unroll 16
    for (int i = 1; i < (int)KD_COUNT(KD_MIX_LOG_FIT_FLOAT_WIDE); i++)
        r = kd_fma_single(r, u, kd_splat_single(KD_MIX_LOG_FIT_FLOAT_WIDE[i]));
    return x - r * u;
}

/* x - R(z) z^2 (kd_mix_phi_factor in float32). */
KD_INLINE kd_vs kd_mix_phi_factor_single(kd_vs x, kd_vs z)
{
    const float *c = KD_MIX_LOG_FIT_FLOAT;
    const kd_vs u = z * z, u2 = u * u;
    const kd_vs low = kd_fma_single(u, kd_splat_single(c[3]), kd_splat_single(c[4]));
    const kd_vs high = kd_fma_single(u2, kd_splat_single(c[0]), kd_fma_single(u, kd_splat_single(c[1]), kd_splat_single(c[2])));
    return x - kd_fma_single(u2, high, low) * u;
}

/* Adds the terms of the KD_SINGLE_LANES classes whose kept e^a and w are ea0, w0 (the first
 * KD_LANES) and ea1, w1: the value's to the float32 lane sums, the gradient's to the double block
 * sums; returns 0, adding nothing, where the step must take the double terms. With zero_mass, a
 * class whose kept e^a is 0 (one both sides mask, in a same-mask row) takes rho = 0 and adds 0.
 * variant: the row's (kd_mix_variant), or KD_MIX_ANY_WEIGHTS. */
KD_INLINE int kd_mix_single_second_terms(kd_vd ea0, kd_vd ea1, kd_vd w0, kd_vd w1, const kd_mix_finished *row,
                                         const kd_mix_single_second *single, const int value_only,
                                         const int zero_mass, const int variant, kd_vs *sum, kd_vd *block_sum)
{
    const double kappa = kd_mix_kappa(row);
    const kd_mix_sides sides = kd_mix_sides_of(row, variant);
    const int need_a = sides.a, need_b = sides.b, need_r = sides.r;
    kd_vd rho0 = (w0 - single->y) * single->inv_one_plus_y, rho1 = (w1 - single->y) * single->inv_one_plus_y;
    if (zero_mass) {
        rho0 = kd_keep(ea0 != 0.0, rho0);
        rho1 = kd_keep(ea1 != 0.0, rho1);
    }
    const kd_vs rho = kd_narrow_halves(rho0, rho1);
    const kd_vs p = kd_narrow_halves(ea0 * single->p_scale, ea1 * single->p_scale);
    const kd_vs p_rho2 = p * (rho * rho);
    const kd_vsi fits = (rho >= single->rho_low) & (rho <= single->rho_high)
                      & ((rho == 0.0f) | (p_rho2 >= single->tiny));
    int wide = 0; /* some class beyond the central range: the wide one's polynomial for the step */
    if (kd_any((kd_vi)~fits)) {
        const kd_vsi fits_wide = (rho >= single->wide_low) & (rho <= single->wide_high)
                               & ((rho == 0.0f) | (p_rho2 >= single->wide_tiny));
        if (kd_any((kd_vi)~fits_wide))
            return 0;
        wide = 1;
    }

    const kd_vs one = kd_splat_single(1.0f), zero = kd_splat_single(0.0f);
    const kd_vs x_a = single->mu * rho, den = one + x_a, lam_rho = single->lam * rho;
    const kd_vs two_a = 2.0f + x_a, two_b = kd_fma_single(single->one_plus_mu, rho, kd_splat_single(2.0f));
    const kd_vs inv = one / ((need_a ? two_a : one) * (need_b ? two_b : one) * (need_r ? den : one));
    const kd_vs z_a = need_a ? x_a * (inv * ((need_b ? two_b : one) * (need_r ? den : one))) : zero;
    const kd_vs z_b = need_b ? -lam_rho * (inv * ((need_a ? two_a : one) * (need_r ? den : one))) : zero;
    if (!wide) {
        const kd_vs q = kd_fma_single(p, rho, p);
        if (need_a)
            sum[KD_MIX_A] += p * (z_a * kd_mix_phi_factor_single(x_a, z_a));
        if (need_b)
            sum[KD_MIX_B] += z_b * (-lam_rho * p + q * kd_mix_phi_factor_single(zero, z_b));
    } else {
        /* x, z and Q / P = 1 + rho from double, each rounded once: a term inherits their errors,
         * and in float32 1 + rho would cancel as Q / P falls towards 0.01 */
        const double lam = row->lam, mu = 1.0 - lam;
        kd_vd z_a0, z_a1, z_b0, z_b1;
        kd_mix_wide_z(rho0, lam, mu, &z_a0, &z_b0);
        kd_mix_wide_z(rho1, lam, mu, &z_a1, &z_b1);
        const kd_vs q = p * kd_narrow_halves(1.0 + rho0, 1.0 + rho1);
        const kd_vs lam_rho_d = kd_narrow_halves(lam * rho0, lam * rho1);
        if (need_a) {
            const kd_vs x = kd_narrow_halves(mu * rho0, mu * rho1), z = kd_narrow_halves(z_a0, z_a1);
            sum[KD_MIX_A] += p * (z * kd_mix_phi_factor_single_wide(x, z));
        }
        if (need_b) {
            const kd_vs z = kd_narrow_halves(z_b0, z_b1);
            sum[KD_MIX_B] += z * (-lam_rho_d * p + q * kd_mix_phi_factor_single_wide(zero, z));
        }
    }
    if (!value_only && sides.c) {
        /* sum Q c and sum P c, c = kappa rho P / M: terms of both signs whose total is second
         * order in rho, in double, as the double terms take them; P / M = 1 / (1 + mu rho) from
         * float32's by one Newton step */
        kd_vd r0 = kd_splat(1.0), r1 = r0;
        if (need_r) {
            kd_widen_halves(inv * ((need_a ? two_a : one) * (need_b ? two_b : one)), &r0, &r1);
            const double mu = 1.0 - row->lam;
            r0 = r0 * kd_fma(-(1.0 + mu * rho0), r0, kd_splat(2.0));
            r1 = r1 * kd_fma(-(1.0 + mu * rho1), r1, kd_splat(2.0));
        }
        const kd_vd p0 = ea0 * row->kl.inv_zp, p1 = ea1 * row->kl.inv_zp;
        const kd_vd c0 = kappa * (rho0 * r0), c1 = kappa * (rho1 * r1);
        block_sum[KD_MIX_SQ] += kd_fma(p0, rho0, p0) * c0 + kd_fma(p1, rho1, p1) * c1;
        block_sum[KD_MIX_SP] += p0 * c0 + p1 * c1;
    }
    return 1;
}
#endif

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
    const kd_mix_class x = kd_mix_class_values(t, s, ea, w, constants, row, mode, for_double, 1, 1);
    const kd_vd g = kd_mix_scaled(row->c_q, x.l1v) - kd_mix_scaled(1.0 - row->lam, x.c);
    const kd_vd f = kd_mix_scaled(row->c_p, x.l1u) - kd_mix_scaled(row->lam, x.c);
    *student_direction = kd_mix_weighted(x.q, g - row->e_q);
    *teacher_direction = kd_mix_weighted(x.p, f - row->e_p);
    *student_probability = x.q;
}

KD_INLINE void kd_mix_finish_store(const kd_mix_finished *lanes, int lane, kd_row_finish *out)
{
    kd_kl_finish_store(&lanes->kl, lane, out);
    /* The value comes from the second pass's terms, each >= 0: it does not take KL's cancellation
     * (measured within 1.7e-7 in float32 on rows where KL's was 5.3e-5), so no recentring. */
    out->cancellation = 0.0;
    out->recentre = 0.0;
    out->value = lanes->value[lane];
    out->constant[KD_MIX_LOG_ZP] = lanes->log_zp[lane];
    out->constant[KD_MIX_LOG_ZQ] = lanes->log_zq[lane];
    out->constant[KD_MIX_LOG_RATIO_Z] = lanes->log_ratio_z[lane];
    out->constant[KD_MIX_EQ] = lanes->e_q[lane];
    out->constant[KD_MIX_EP] = lanes->e_p[lane];
    out->constant[KD_MIX_LAM] = lanes->lam;
    out->constant[KD_MIX_CP] = lanes->c_p;
    out->constant[KD_MIX_CQ] = lanes->c_q;
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
    return out;
}
