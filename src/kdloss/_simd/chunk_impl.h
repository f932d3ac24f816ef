/* The two passes over one chunk of a row, for one input type.
 *
 * Included twice by target_impl.h, with KD_REAL (float or double), KD_FN(name) (a name with the
 * type in it), KD_LOAD (KD_LANES elements as doubles) and KD_EXP_DEGREE (8 for float, whose
 * results are rounded to float32; 11 for double). */

typedef KD_REAL KD_FN(vr) __attribute__((vector_size(8 * KD_LANES))); /* native lanes of KD_REAL */

KD_INLINE KD_FN(vr) KD_FN(vmax)(KD_FN(vr) x, KD_FN(vr) m)
{
    __typeof__(x > m) greater = x > m;
    return (KD_FN(vr))((greater & (__typeof__(greater))x) | (~greater & (__typeof__(greater))m));
}

/* Pass 1: the extrema of t and s over n classes. NaN never wins a comparison, so it is ignored
 * here; pass 2 lets it through to the sums. */
static void KD_FN(row_range)(const KD_REAL *t, const KD_REAL *s, ptrdiff_t n, kd_row_range *out)
{
    enum { LANES = sizeof(KD_FN(vr)) / sizeof(KD_REAL) };
    const KD_FN(vr) inf = (KD_FN(vr)){0} + (KD_REAL)INFINITY;
    KD_FN(vr) t_max = -inf, s_max = -inf, t_min = inf, s_min = inf, x, y;
    ptrdiff_t i = 0;
    for (; i + LANES <= n; i += LANES) {
        memcpy(&x, t + i, sizeof x);
        memcpy(&y, s + i, sizeof y);
        t_max = KD_FN(vmax)(x, t_max);
        s_max = KD_FN(vmax)(y, s_max);
        t_min = -KD_FN(vmax)(-x, -t_min);
        s_min = -KD_FN(vmax)(-y, -s_min);
    }
    double tM = -INFINITY, sM = -INFINITY, tm = INFINITY, sm = INFINITY;
    for (int lane = 0; lane < LANES; lane++) {
        tM = t_max[lane] > tM ? t_max[lane] : tM;
        sM = s_max[lane] > sM ? s_max[lane] : sM;
        tm = t_min[lane] < tm ? t_min[lane] : tm;
        sm = s_min[lane] < sm ? s_min[lane] : sm;
    }
    for (; i < n; i++) {
        tM = t[i] > tM ? t[i] : tM;
        sM = s[i] > sM ? s[i] : sM;
        tm = t[i] < tm ? t[i] : tm;
        sm = s[i] < sm ? s[i] : sm;
    }
    out->t_max = tM;
    out->s_max = sM;
    out->t_min = tm;
    out->s_min = sm;
}

/* Pass 2, one step: adds the terms of KD_STEP classes to the block's lane sums.
 * moderate: every a and b lies in [-700, 0] (or is NaN), so exp needs no range handling and no
 * class is masked; otherwise classes with e^a == 0 (masked by the teacher) are left out of the
 * gap sums, where 0 * inf would make NaN. NaN in t or s reaches the sums either way.
 * The gap is summed from a - b, which is exactly 0 where the rows agree, so that identical rows
 * give exactly 0 whatever multiply-adds the compiler fuses. */
KD_INLINE void KD_FN(add_step)(const KD_REAL *t, const KD_REAL *s, double t_max, double s_max,
                               double inv_T, const int moderate, kd_block_sums *block)
{
    enum { V = KD_STEP / KD_LANES };
    kd_vd rest_t[V], rest_s[V], gap[V], scale[V];
#pragma GCC unroll 8
    for (int v = 0; v < V; v++) {
        kd_vd a = (KD_LOAD(t + v * KD_LANES) - t_max) * inv_T;
        kd_vd b = (KD_LOAD(s + v * KD_LANES) - s_max) * inv_T;
        kd_vd ea, eb, difference = a - b, total = a + b, ruled_out = kd_splat(0.0);
        if (moderate) {
            ea = kd_exp_moderate(a, KD_EXP_DEGREE);
            eb = kd_exp_moderate(b, KD_EXP_DEGREE);
        } else {
            ea = kd_exp_nonpositive(a, KD_EXP_DEGREE);
            eb = kd_exp_nonpositive(b, KD_EXP_DEGREE);
            kd_vi in_support = ea > 0.0;
            /* A student -inf where the teacher is finite makes KL +inf, even where e^a
             * underflows to 0. */
            ruled_out = kd_keep((b == -INFINITY) & (a != -INFINITY), kd_splat(INFINITY));
            difference = kd_keep(in_support, difference);
            total = kd_keep(in_support, total);
        }
        kd_vi top_a = a == 0.0, top_b = b == 0.0;
        block->top_t -= top_a; /* a comparison is -1 where true */
        block->top_s -= top_b;
        rest_t[v] = kd_keep(~top_a, ea);
        rest_s[v] = kd_keep(~top_b, eb);
        gap[v] = ea * difference + ruled_out;
        scale[v] = ea * total; /* a, b <= 0: this is -e^a (|a| + |b|) */
    }
    /* Fixed-order trees, so the association never depends on the compiler. */
#pragma GCC unroll 8
    for (int width = V / 2; width >= 1; width /= 2) {
#pragma GCC unroll 8
        for (int v = 0; v < width; v++) {
            rest_t[v] += rest_t[v + width];
            rest_s[v] += rest_s[v + width];
            gap[v] += gap[v + width];
            scale[v] += scale[v + width];
        }
    }
    block->rest_t += rest_t[0];
    block->rest_s += rest_s[0];
    block->gap += gap[0];
    block->scale += scale[0];
}

KD_INLINE void KD_FN(add_chunk)(const KD_REAL *t, const KD_REAL *s, ptrdiff_t n, double t_max,
                                double s_max, double inv_T, const int moderate,
                                kd_chunk_stats *out)
{
    for (ptrdiff_t start = 0; start < n; start += KD_BLOCK) {
        const ptrdiff_t len = n - start < KD_BLOCK ? n - start : KD_BLOCK;
        kd_block_sums block;
        memset(&block, 0, sizeof block);
        ptrdiff_t i = 0;
        for (; i + KD_STEP <= len; i += KD_STEP)
            KD_FN(add_step)(t + start + i, s + start + i, t_max, s_max, inv_T, moderate, &block);
        if (i < len) {
            /* The last few classes, padded with classes that add 0: -inf in both rows, or in
             * moderate rows (where -inf is out of range) copies of the maximum in the teacher
             * and the student, whose terms are taken out again below. */
            KD_REAL pad_t[KD_STEP], pad_s[KD_STEP];
            for (int j = 0; j < KD_STEP; j++) {
                int real = i + j < len;
                pad_t[j] = real ? t[start + i + j] : moderate ? (KD_REAL)t_max : -(KD_REAL)INFINITY;
                pad_s[j] = real ? s[start + i + j] : moderate ? (KD_REAL)s_max : -(KD_REAL)INFINITY;
            }
            KD_FN(add_step)(pad_t, pad_s, t_max, s_max, inv_T, moderate, &block);
            /* A padding class in a moderate row has a = b = 0: it adds 1 to each top count and
             * exactly 0 to every sum (e^0 * 0), so taking the counts out again is exact. */
            if (moderate) {
                block.top_t[0] -= KD_STEP - (len - i);
                block.top_s[0] -= KD_STEP - (len - i);
            }
        }
        kd_add_block(out, &block);
    }
}

/* Pass 2: kd_chunk_stats of n <= KD_CHUNK classes of a row whose extrema are *range. */
static void KD_FN(chunk_stats)(const KD_REAL *t, const KD_REAL *s, ptrdiff_t n,
                               const kd_row_range *range, double inv_T, kd_chunk_stats *out)
{
    memset(out, 0, sizeof *out);
    if (kd_is_moderate(range, inv_T))
        KD_FN(add_chunk)(t, s, n, range->t_max, range->s_max, inv_T, 1, out);
    else
        KD_FN(add_chunk)(t, s, n, range->t_max, range->s_max, inv_T, 0, out);
}
