/* The forward KL row of the divergence table: KL(P || Q), P = softmax(t / T), Q = softmax(s / T).
 *
 * One formula for every row, with no cancellation as the student approaches the teacher
 * (../shared/notes/engineering.md, sections 1 and 5). With a = (t - t_max) / T, b = (s - s_max) / T,
 * d = a - b, Z_P = sum e^a, Z_Q = sum e^b = Z_P (1 + y):
 *
 *     KL = E_P[d] + log(Z_Q / Z_P) = m + log1p(y),     m = E_P[d],
 *     y  = E_P[e^-d - 1] (+ R, the student's mass where the teacher has none, over Z_P)
 *        = F - m,                                      F = E_P[e^-d - 1 + d] + R >= 0,
 *     KL = F + (log1p(y) - y).
 *
 * F is a sum of terms >= 0 of size d^2 where d is small, and log1p(y) - y = O(y^2) is computed by
 * a series where y is small: the relative error stays a few ulp down to KL = 0, except where d is
 * nearly one constant c != 0 over most of P's mass (F ~ E_P[d^2] / 2 against KL ~ Var_P(d) / 2).
 * The finish then reports the cancellation and the driver redoes the row with d measured from
 * m = E_P[d] (the student's reference s_ref = s_max - m T, kd_row_finish), where nothing cancels.
 * The per-class exponentials are e^a and e^-d (the student's e^b = e^a e^-d): two, as the usual
 * log-sum-exp form needs, the second of a small argument. Where |d| > 700 or a < -700 (e^-d could
 * overflow, or e^a underflow) a class takes e^b directly ("far" classes): its term of F is then
 * e^b - e^a + e^a d, computed without cancellation because d is large. Where y < -1/2 (the
 * normalisers differ by half or more, so KL is not small) the value is m + log Z_Q - log Z_P.
 *
 * Special values come out of the arithmetic: a class the teacher masks (-inf) adds its student
 * mass to R; a student -inf where the teacher is finite makes F (so KL) +inf; NaN, +inf, or a row
 * all -inf makes the sums NaN, and the caller decides the documented value.
 *
 * Gradient of KL (times T^2, over the logits): d_s = T (Q - P), d_t = T P (d - m), with
 * Q - P = P (e^-d - 1 - y) / (1 + y) for near classes (accurate relative to itself where the
 * student is close to the teacher) and e^b / Z_Q - P for far ones. Identical rows give d = 0,
 * e^-d - 1 = 0, y = 0: exactly 0 everywhere, whatever multiply-adds the compiler fuses.
 *
 * The interface every row of the divergence table gives rows_impl.h (prefix kd_kl_): the row's
 * per-class constants (_row, _row_constants, _lane_constants), the terms of KD_LANES classes
 * (_terms, _class_terms: KD_KL_SUMS sums and two kept values per class), the finish of a row's
 * sums (_finished, _finish_lanes, _finish_store, _finish_splat) and the gradient (_gradient_lanes).
 * Two-pass rows (divergence_mixture.h, divergence_tvd.h) add _second_terms and _second_finish_lanes.
 *
 * Included by target_impl.h after vector_math.h (kd_vd has KD_LANES lanes). */

/* The row sums (kd_row_sums.sum[...]): Z_P = sum e^a, Z_Q = sum e^b, sum e^a d over classes with
 * e^a > 0, and G = sum e^a (e^-d - 1 + d) over those plus e^b over the others (Z_P F). */
enum { KD_KL_ZP, KD_KL_ZQ, KD_KL_GAP, KD_KL_G, KD_KL_SUMS };
/* The gradient's row constants (kd_row_finish.constant[...]). */
enum { KD_KL_INV_ZP, KD_KL_INV_ZQ, KD_KL_MEAN_GAP, KD_KL_Y, KD_KL_INV_ONE_PLUS_Y, KD_KL_CONSTANTS };
_Static_assert(KD_KL_SUMS <= KD_MAX_SUMS && KD_KL_CONSTANTS <= KD_MAX_CONSTANTS,
               "kd_row_sums / kd_row_finish too small");

/* The row's constants the per-class arithmetic needs: its maxima, 1 / T, and t_max - s_max as an
 * exact sum hi + lo (TwoSum), so that d can be taken from t - s without rounding its shift. */
typedef struct {
    kd_vd t_max, s_max, shift_hi, shift_lo;
    double inv_T;
} kd_kl_row;

KD_INLINE kd_kl_row kd_kl_row_constants(double t_max, double s_max, double inv_T)
{
    const double hi = t_max - s_max, s_part = hi - t_max;
    const double lo = (t_max - (hi - s_part)) + (-s_max - s_part);
    const kd_kl_row row = {kd_splat(t_max), kd_splat(s_max), kd_splat(hi), kd_splat(isfinite(hi) ? lo : 0.0), inv_T};
    return row;
}

/* The same, lane by lane, for short rows (one row per lane). */
KD_INLINE kd_kl_row kd_kl_lane_constants(kd_vd t_max, kd_vd s_max, double inv_T)
{
    const kd_vd hi = t_max - s_max, s_part = hi - t_max;
    const kd_vd lo = (t_max - (hi - s_part)) + (-s_max - s_part);
    const kd_kl_row row = {t_max, s_max, hi, kd_select(lo == lo, lo, kd_splat(0.0)), inv_T};
    return row;
}

/* d = a - b = ((t - s) - (t_max - s_max)) / T. Where the student is close to the teacher, t - s is
 * small and is taken exactly (TwoSum; float inputs need no help, their difference is exact in
 * double), so d is accurate relative to itself even when the student is the teacher plus an
 * offset; and d is exactly 0 where the rows agree, whatever multiply-adds the compiler fuses. */
KD_INLINE kd_vd kd_kl_gap(kd_vd t, kd_vd s, const kd_kl_row *row, const int for_double,
                          const int finite)
{
    const kd_vd hi = t - s;
    if (!for_double)
        return (hi - row->shift_hi) * row->inv_T;
    const kd_vd s_part = hi - t;
    kd_vd lo = (t - (hi - s_part)) + (-s - s_part);
    if (!finite) /* NaN where hi is +-inf: then 0 (moderate rows hold finite logits only) */
        lo = kd_select(lo == lo, lo, kd_splat(0.0));
    return ((hi - row->shift_hi) + (lo - row->shift_lo)) * row->inv_T;
}

/* The terms of KD_LANES classes of logits t, s, in one of four modes (kd_row_mode, target_impl.h):
 * KD_MODERATE: every a and b of the row lies in [-700, 0], so every class is near and the cheaper
 * exp applies; KD_MASKED: so do the finite ones, and -inf logits (masked classes) take stand-ins
 * (kd_kl_masked_terms), with the cheaper exp on safe arguments; KD_MASKED_TEACHER: the same where
 * only the teacher masks and every b is in range; *out_of_range collects the lanes where that
 * assumption fails (a finite a or b < -700), and the caller then redoes the chunk in KD_GENERAL
 * mode, which handles every value. Each mode gives every class the same meaning, so the gradient
 * pass needs only to tell near classes from far ones (kd_kl_near). */
typedef struct {
    /* their shares of the row sums, each as weight * value: the passes accumulate them with one
     * fused multiply-add each (the build fuses nothing it is not asked to) */
    kd_vd weight[KD_KL_SUMS], value[KD_KL_SUMS];
    kd_vd kept_a, kept_w;  /* e^a, and e^-d - 1 (near classes) or e^b (far), for the gradient */
} kd_kl_terms;

KD_INLINE kd_vi kd_kl_near(kd_vd a, kd_vd d)
{
    return (a >= -700.0) & (d >= -700.0) & (d <= 700.0);
}

/* The masked modes' terms. A class the teacher masks takes the student's exponent in place of
 * the teacher's, a' = b, and d' = 0: its e^a' e^-d' = e^b adds to Z_Q and (as R) to G, and the
 * keeps below take it out of Z_P and the gap. A class the student masks takes b' = 0 and d' = 0
 * (every term finite), and its shares are then set: 0 to Z_Q, +inf to the gap and G where the
 * teacher allows it, 0 everywhere where the teacher masks it too. With teacher_only (the
 * student has no -inf and every b >= -700: kd_row_mode), the student's side is left out, and
 * only a' needs the range check; NaN fails it too. */
KD_INLINE kd_kl_terms kd_kl_masked_terms(kd_vd t, kd_vd s, const kd_kl_row *row, const int teacher_only,
                                         const int for_double, kd_vi *out_of_range)
{
    const kd_vd one = kd_splat(1.0);
    const kd_vi t_masked = t == -INFINITY;
    const kd_vi s_masked = teacher_only ? (kd_vi)kd_splat(0.0) : s == -INFINITY;
    const kd_vd b = kd_keep(~s_masked, (s - row->s_max) * row->inv_T);
    const kd_vd a = kd_select(t_masked, b, (t - row->t_max) * row->inv_T);
    /* (NaN where either side masks) */
    const kd_vd d = kd_keep(~(t_masked | s_masked), kd_kl_gap(t, s, row, for_double, 1));
    kd_vi in_range = a >= -700.0; /* and not NaN: every comparison with a NaN is false */
    if (!teacher_only)
        in_range &= b >= -700.0;
    *out_of_range |= ~in_range;
    kd_vd em1, f;
    const kd_vd ea = kd_exp_moderate(a, for_double);
    const kd_vd e = kd_exp_minus_one_parts(-d, for_double, 0, &em1, &f); /* teacher masks: 1, 0, 0 */
    kd_kl_terms out;
    out.kept_a = kd_keep(~t_masked, ea);
    out.weight[KD_KL_ZP] = out.kept_a;
    out.value[KD_KL_ZP] = one;
    for (int k = KD_KL_ZQ; k < KD_KL_SUMS; k++)
        out.weight[k] = ea;
    out.value[KD_KL_ZQ] = e;
    out.value[KD_KL_GAP] = d;
    out.value[KD_KL_G] = kd_select(t_masked, one, f);
    out.kept_w = kd_select(t_masked, ea, em1);
    if (!teacher_only) {
        const kd_vi ruled_out = s_masked & ~t_masked; /* KL = +inf */
        out.value[KD_KL_ZQ] = kd_keep(~s_masked, e);
        out.value[KD_KL_GAP] = kd_select(ruled_out, kd_splat(INFINITY), d);
        out.value[KD_KL_G] = kd_select(ruled_out, kd_splat(INFINITY), kd_keep(~s_masked, out.value[KD_KL_G]));
        out.kept_w = kd_keep(~s_masked, out.kept_w);
    }
    return out;
}

KD_INLINE kd_kl_terms kd_kl_class_terms(kd_vd t, kd_vd s, const kd_kl_row *row, const int mode,
                                        const int for_double, kd_vi *out_of_range)
{
    kd_kl_terms out;
    const double inv_T = row->inv_T;
    const kd_vd at = t - row->t_max, a = at * inv_T;
    const kd_vd d = kd_kl_gap(t, s, row, for_double, mode == KD_MODERATE);
    kd_vd em1, f;
    if (mode == KD_MASKED || mode == KD_MASKED_TEACHER)
        return kd_kl_masked_terms(t, s, row, mode == KD_MASKED_TEACHER, for_double, out_of_range);
    if (mode == KD_MODERATE) {
        const kd_vd ea = kd_exp_moderate(a, for_double);
        const kd_vd e = kd_exp_minus_one_parts(-d, for_double, 0, &em1, &f);
        out.weight[KD_KL_ZP] = ea;
        out.value[KD_KL_ZP] = kd_splat(1.0);
        out.weight[KD_KL_ZQ] = ea;
        out.value[KD_KL_ZQ] = e;
        out.weight[KD_KL_GAP] = ea;
        out.value[KD_KL_GAP] = d;
        out.weight[KD_KL_G] = ea;
        out.value[KD_KL_G] = f;
        out.kept_a = ea;
        out.kept_w = em1;
        return out;
    }
    const kd_vd bs = s - row->s_max;
    const kd_vd ea = kd_exp_wide(a, for_double);
    const kd_vi near = kd_kl_near(a, d), in_support = ea > 0.0;
    const kd_vd e = kd_exp_minus_one_parts(kd_select(near, -d, bs * inv_T), for_double, 1, &em1, &f);
    /* Each term is the moderate path's weight and value (e^a times something), with the far
     * classes' values behind a weight of 1: each class gives the same bits in either path (short
     * rows share a path per group). */
    const kd_vd near_a = kd_select(near, ea, kd_splat(1.0));
    const kd_vd eb = near_a * e;                               /* far: e^b itself */
    /* A student -inf where the teacher is finite rules out a class P allows: KL = +inf, also
     * where e^a underflows (the raw logits decide, not their exponentials). */
    const kd_vi ruled_out = (bs == -INFINITY) & (at != -INFINITY);
    const kd_vd far_g = (eb - ea) + kd_keep(in_support, ea * d);
    out.weight[KD_KL_ZP] = ea;
    out.value[KD_KL_ZP] = kd_splat(1.0);
    out.weight[KD_KL_ZQ] = near_a;
    out.value[KD_KL_ZQ] = e;
    out.weight[KD_KL_GAP] = ea;
    out.value[KD_KL_GAP] = kd_select(in_support, d, kd_splat(0.0)); /* masked: 0, not 0 * inf */
    out.weight[KD_KL_G] = kd_select(ruled_out, kd_splat(1.0), near_a);
    out.value[KD_KL_G] = kd_select(ruled_out, kd_splat(INFINITY), kd_select(near, f, far_g));
    out.kept_a = ea;
    out.kept_w = kd_select(near, em1, eb);
    return out;
}

#if !KD_LIBM
/* The terms in float32 lanes (vector_single.h), for inputs of float precision or less: the same
 * four sums and kept values, each class's terms accurate to a few float32 ulp relative to
 * themselves. d takes t - s exactly (TwoSum in float32), so it stays accurate relative to itself
 * when the student is the teacher plus an offset, and is exactly 0 where the rows agree. Two
 * modes, as in double: moderate (the row within 80 T of its maxima: every exponential a normal
 * float32) and masked (-inf logits among such finite ones, with kd_kl_masked_terms' stand-ins;
 * KD_MASKED_TEACHER when only the teacher masks and every b >= -80; *out_of_range collects the
 * lanes where a finite logit leaves that range, or a NaN arrives, and the caller redoes the chunk
 * in double). */
typedef struct {
    kd_vs t_max, s_max, shift_hi, shift_lo, inv_T;
    kd_vs inv_T_lo; /* 1 / T - inv_T, so that a and b can be taken to double's accuracy */
} kd_kl_single_row;

KD_INLINE kd_kl_single_row kd_kl_single_row_constants(double t_max, double s_max, double inv_T)
{
    const float t_top = (float)t_max, s_top = (float)s_max; /* exact: the row's own values */
    const float hi = t_top - s_top, s_part = hi - t_top;
    const float lo = (t_top - (hi - s_part)) + (-s_top - s_part);
    const float inv_T_hi = (float)inv_T;
    const kd_kl_single_row row = {kd_splat_single(t_top), kd_splat_single(s_top), kd_splat_single(hi),
                                  kd_splat_single(lo), kd_splat_single(inv_T_hi),
                                  kd_splat_single((float)(inv_T - inv_T_hi))};
    return row;
}

/* (x - x_max) / T as hi + lo, to about 2^-44 of it: x - x_max exactly (TwoSum), times 1 / T in two
 * parts; kd_exp_single takes both parts. Rounded to float32 alone, the argument would move the
 * exponential by up to 2e-7 |x - x_max| / T of itself (the difference, 1 / T and the product each
 * round), and a row's value inherits that where classes far below the maximum carry it:
 * measured, a KL of 6e-23 carried by one class 37 T below the teacher's maximum came out 3e-6
 * off, and a small TVD with masked classes (whose e^b is Q's alone) moved by 1.4e-6. unit_T (a
 * constant: T = 1) skips the products, exact there: the same hi, and the same lo but for the sign
 * of a zero, which e^(hi + lo) does not see. */
KD_INLINE kd_vs kd_kl_single_accurate(kd_vs x, kd_vs x_max, const kd_kl_single_row *row, const int unit_T,
                                      kd_vs *lo_out)
{
    const kd_vs hi = x - x_max, x_part = hi - x;
    const kd_vs lo = (x - (hi - x_part)) + (-x_max - x_part);
    if (unit_T) {
        *lo_out = lo;
        return hi;
    }
    const kd_vs scaled = hi * row->inv_T;
    const kd_vs product_error = kd_product_error_single(hi, row->inv_T, scaled);
    *lo_out = kd_fma_single(hi, row->inv_T_lo, kd_fma_single(lo, row->inv_T, product_error));
    return scaled;
}

typedef struct {
    kd_vs weight[KD_KL_SUMS], value[KD_KL_SUMS];
    kd_vs kept_a, kept_w;
} kd_kl_single_terms_of;

KD_INLINE kd_kl_single_terms_of kd_kl_single_terms(kd_vs t, kd_vs s, const kd_kl_single_row *row,
                                                   const int mode, const int unit_T, kd_vsi *out_of_range)
{
    const kd_vs one = kd_splat_single(1.0f);
    kd_vsi t_masked = {0}, s_masked = {0};
    kd_vs a_lo;
    kd_vs a = kd_kl_single_accurate(t, row->t_max, row, unit_T, &a_lo);
    const kd_vs hi = t - s, s_part = hi - t;
    const kd_vs lo = (t - (hi - s_part)) + (-s - s_part);
    kd_vs d = (hi - row->shift_hi) + (lo - row->shift_lo);
    if (!unit_T) /* times 1 is exact */
        d *= row->inv_T;
    kd_vs x = -d; /* the argument of e^-d - 1 - (-d) and its parts */
    kd_vs b_lo = kd_splat_single(0.0f);
    if (mode != KD_MODERATE) {
        /* As kd_kl_masked_terms, with the roles of the two exponentials exchanged where the
         * teacher masks: a' = 0 and x = b, so that e^b comes from the accurate reduction of
         * kd_exp_minus_one_parts_single (kd_exp_single's, with ln 2 in one float, is off by up
         * to 2e-7 of itself there; a masked class's e^b would carry that into the row). */
        t_masked = t == -INFINITY;
        if (mode == KD_MASKED)
            s_masked = s == -INFINITY;
        const kd_vs b = kd_keep_single(~s_masked, kd_kl_single_accurate(s, row->s_max, row, unit_T, &b_lo));
        b_lo = kd_keep_single(t_masked & ~s_masked, b_lo); /* 0 except where e^b is Q's alone */
        a = kd_keep_single(~t_masked, a);
        a_lo = kd_keep_single(~t_masked, a_lo);
        d = kd_keep_single(~(t_masked | s_masked), d); /* NaN where either side masks */
        x = kd_select_single(t_masked, b, -d);
        kd_vsi in_range = a >= -80.0f; /* and not NaN: every comparison with a NaN is false */
        if (mode == KD_MASKED)
            in_range &= b >= -80.0f;
        *out_of_range |= ~in_range;
    }
    kd_vs em1, f;
    const kd_vs ea = kd_exp_single(a, a_lo);
    kd_vs e = kd_exp_minus_one_parts_single(x, &em1, &f);
    if (mode != KD_MODERATE)
        e = kd_fma_single(e, b_lo, e); /* e^(b + b_lo) where the teacher masks; the others add 0 */
    kd_kl_single_terms_of out;
    out.kept_a = mode == KD_MODERATE ? ea : kd_keep_single(~t_masked, ea);
    out.weight[KD_KL_ZP] = out.kept_a;
    out.value[KD_KL_ZP] = one;
    for (int k = KD_KL_ZQ; k < KD_KL_SUMS; k++)
        out.weight[k] = ea;
    out.value[KD_KL_ZQ] = e;
    out.value[KD_KL_GAP] = d;
    out.value[KD_KL_G] = mode == KD_MODERATE ? f : kd_select_single(t_masked, e, f);
    out.kept_w = mode == KD_MODERATE ? em1 : kd_select_single(t_masked, e, em1);
    if (mode == KD_MASKED) {
        const kd_vsi ruled_out = s_masked & ~t_masked; /* KL = +inf */
        const kd_vs inf = kd_splat_single(INFINITY);
        out.value[KD_KL_ZQ] = kd_keep_single(~s_masked, e);
        out.value[KD_KL_GAP] = kd_select_single(ruled_out, inf, d);
        out.value[KD_KL_G] = kd_select_single(ruled_out, inf, kd_keep_single(~s_masked, out.value[KD_KL_G]));
        out.kept_w = kd_keep_single(~s_masked, out.kept_w);
    }
    return out;
}
#endif

/* The value and the gradient's row constants, lane by lane, from each lane's row sums. */
typedef struct {
    kd_vd value, inv_zp, inv_zq, mean_gap, y, inv_one_plus_y;
    kd_vd cancellation; /* kd_row_finish's (its recentre: mean_gap, where this is > 0) */
} kd_kl_finished;

KD_INLINE kd_kl_finished kd_kl_finish_lanes(const kd_vd *sum, const double *weights)
{
    (void)weights; /* KL has no parameters */
    const kd_vd zp = sum[KD_KL_ZP], zq = sum[KD_KL_ZQ], gap = sum[KD_KL_GAP], g = sum[KD_KL_G];
    kd_kl_finished out;
    out.inv_zp = 1.0 / zp;
    out.inv_zq = 1.0 / zq;
    out.mean_gap = gap * out.inv_zp;
    const kd_vd f = g * out.inv_zp, y = f - out.mean_gap;
    const kd_vi central = y >= -0.5, infinite = g == INFINITY;
    const kd_vd exact = f + kd_log1p_minus_identity(kd_select(central, y, kd_splat(0.0)));
    kd_vd value = exact;
    if (kd_any(~central)) { /* some lane's normalisers differ by half or more (or it is NaN) */
        const kd_vd ok_zq = kd_select(zq > 0.0, zq, kd_splat(1.0)); /* NaN rows: anything finite */
        const kd_vd ok_zp = kd_select(zp > 0.0, zp, kd_splat(1.0));
        const kd_vd direct = out.mean_gap + (kd_log_positive(ok_zq) - kd_log_positive(ok_zp));
        value = kd_select(central, exact, direct);
    }
    value = kd_select(value < 0.0, kd_splat(0.0), value); /* rounding; NaN stays NaN */
    value = kd_select(infinite, kd_splat(INFINITY), value);
    /* Any NaN in the sums: a row with special values, for the caller to settle. */
    const kd_vi unsettled = (zp != zp) | (zq != zq) | (gap != gap) | (g != g);
    out.value = kd_select(unsettled, kd_splat(NAN), value);
    /* 1 + y for the gradient: the cancellation-free y where it is accurate, else Z_Q / Z_P (which
     * leaves out the classes a student -inf rules out, as Q does). */
    /* (F - m rounds to eps max(|F|, |m|), Z_Q / Z_P - 1 to eps: the latter where the gap's mean is
     * large, as for a student class far below the teacher's) */
    const kd_vi small_parts = (f <= 1.0) & (f >= -1.0) & (out.mean_gap <= 1.0) & (out.mean_gap >= -1.0);
    out.y = kd_select(central & ~infinite & small_parts, y, zq * out.inv_zp - 1.0);
    out.inv_one_plus_y = 1.0 / (1.0 + out.y);
    /* F and log1p(y) - y (about -y^2 / 2) cancel where d is nearly one constant c != 0 over most
     * of P's mass: KL is then about Var_P(d) / 2 and F about E_P[d^2] / 2. That is the case when
     * the student is the teacher plus an offset on every class but the one at the maxima, which
     * the shift t_max - s_max follows (measured: float32 KL 5.3e-5 off at 3000 classes); the
     * direct form's m and log(Z_Q / Z_P) cancel likewise. Measured from s_ref = s_max - m T, d
     * has E_P[d] = 0 and nothing cancels; the driver redoes such a row (kd_row_finish). Only where
     * |m| <= 4, so that b stays within 4 of the ranges the modes checked. */
    const kd_vd m = out.mean_gap, abs_m = kd_select(m < 0.0, -m, m), rest = value - m;
    const kd_vd magnitude = kd_select(central, f, abs_m + kd_select(rest < 0.0, -rest, rest));
    const kd_vi helps = (out.value >= 0.0) & (out.value < INFINITY) & (abs_m <= 4.0) & (m != 0.0)
                      & (magnitude > 0.0);
    out.cancellation = kd_keep(helps, magnitude / value); /* +inf where rounding took value to 0 */
    return out;
}

/* Q - P and the KL's teacher direction P (d - m) of KD_LANES classes, from the kept values; and Q
 * (for the cross-entropy when T = 1, R = Q). */
KD_INLINE void kd_kl_gradient_lanes(kd_vd t, kd_vd s, kd_vd ea, kd_vd w, const kd_kl_row *constants,
                                    const kd_kl_finished *row, const int mode,
                                    const int for_double, kd_vd *q_minus_p, kd_vd *teacher_direction,
                                    kd_vd *student_probability)
{
    const double inv_T = constants->inv_T;
    /* (with the student finite, d is NaN only where the teacher masks, and P = 0 there) */
    const kd_vd d = kd_kl_gap(t, s, constants, for_double, mode == KD_MODERATE || mode == KD_MASKED_TEACHER);
    const kd_vd at = t - constants->t_max;
    const kd_vd p = ea * row->inv_zp;
    const kd_vd near_value = p * ((w - row->y) * row->inv_one_plus_y);
    if (mode == KD_MODERATE)
        *q_minus_p = near_value;
    else if (mode == KD_MASKED_TEACHER) /* every b >= -700: near where a >= -700 (not where t masks) */
        *q_minus_p = kd_select(at * inv_T >= -700.0, near_value, w * row->inv_zq - p);
    else
        *q_minus_p = kd_select(kd_kl_near(at * inv_T, d), near_value, w * row->inv_zq - p);
    *teacher_direction = kd_keep(ea > 0.0, p * (d - row->mean_gap));
    *student_probability = p + *q_minus_p;
}

/* One lane of a finish into the row's kd_row_finish, and back (splat into every lane). */
KD_INLINE void kd_kl_finish_store(const kd_kl_finished *lanes, int lane, kd_row_finish *out)
{
    out->value = lanes->value[lane];
    out->constant[KD_KL_INV_ZP] = lanes->inv_zp[lane];
    out->constant[KD_KL_INV_ZQ] = lanes->inv_zq[lane];
    out->constant[KD_KL_MEAN_GAP] = lanes->mean_gap[lane];
    out->constant[KD_KL_Y] = lanes->y[lane];
    out->constant[KD_KL_INV_ONE_PLUS_Y] = lanes->inv_one_plus_y[lane];
    out->cancellation = lanes->cancellation[lane];
    out->recentre = out->cancellation > 0.0 ? lanes->mean_gap[lane] : 0.0;
}

KD_INLINE kd_kl_finished kd_kl_finish_splat(const kd_row_finish *f)
{
    const kd_kl_finished out = {kd_splat(f->value), kd_splat(f->constant[KD_KL_INV_ZP]),
                                kd_splat(f->constant[KD_KL_INV_ZQ]), kd_splat(f->constant[KD_KL_MEAN_GAP]),
                                kd_splat(f->constant[KD_KL_Y]), kd_splat(f->constant[KD_KL_INV_ONE_PLUS_Y]),
                                kd_splat(f->cancellation)};
    return out;
}
