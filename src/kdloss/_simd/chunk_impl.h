/* The two passes over one chunk of a row, for one input type.
 *
 * Included twice by target_impl.h, with KD_REAL (float or double), KD_FN(name) (a name with the
 * type in it), KD_LOAD (KD_LANES elements as doubles) and KD_EXP_FOR_DOUBLE (1: exp to full
 * double precision; 0 for float inputs, whose results are rounded to float32). */

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
    /* The tail, KD_LANES at a time, padded with its own first element (neutral for max and min). */
    for (; i < n; i += KD_LANES) {
        const int count = n - i < KD_LANES ? (int)(n - i) : KD_LANES;
        kd_vd tail_t = KD_LOAD_PARTIAL(t + i, count, t[i]), tail_s = KD_LOAD_PARTIAL(s + i, count, s[i]);
        for (int lane = 0; lane < KD_LANES; lane++) {
            tM = tail_t[lane] > tM ? tail_t[lane] : tM;
            sM = tail_s[lane] > sM ? tail_s[lane] : sM;
            tm = tail_t[lane] < tm ? tail_t[lane] : tm;
            sm = tail_s[lane] < sm ? tail_s[lane] : sm;
        }
    }
    out->t_max = tM;
    out->s_max = sM;
    out->t_min = tm;
    out->s_min = sm;
}

/* The terms of KD_LANES classes. */
typedef struct {
    kd_vi top_t, top_s;
    kd_vd rest_t, rest_s, gap, scale;
    kd_vd ea, eb; /* e^a and e^b themselves, kept for the gradient pass */
} KD_FN(terms);

/* Pass 2, the terms of KD_LANES classes.
 * moderate: every a and b lies in [-700, 0] (or is NaN), so exp needs no range handling and no
 * class is masked; otherwise classes with e^a == 0 (masked by the teacher) are left out of the
 * gap sums, where 0 * inf would make NaN. NaN in t or s reaches the sums either way.
 * The gap is summed from a - b, which is exactly 0 where the rows agree, so that identical rows
 * give exactly 0 whatever multiply-adds the compiler fuses. */
KD_INLINE KD_FN(terms) KD_FN(vector_terms)(kd_vd t, kd_vd s, kd_vd t_max, kd_vd s_max,
                                           double inv_T, const int moderate)
{
    KD_FN(terms) out;
    kd_vd a = (t - t_max) * inv_T;
    kd_vd b = (s - s_max) * inv_T;
    kd_vd ea, eb, difference = a - b, total = a + b, ruled_out = kd_splat(0.0);
    if (moderate) {
        ea = kd_exp_moderate(a, KD_EXP_FOR_DOUBLE);
        eb = kd_exp_moderate(b, KD_EXP_FOR_DOUBLE);
    } else {
        ea = kd_exp_nonpositive(a, KD_EXP_FOR_DOUBLE);
        eb = kd_exp_nonpositive(b, KD_EXP_FOR_DOUBLE);
        kd_vi in_support = ea > 0.0;
        /* A student -inf where the teacher is finite makes KL +inf, even where e^a underflows. */
        ruled_out = kd_keep((b == -INFINITY) & (a != -INFINITY), kd_splat(INFINITY));
        difference = kd_keep(in_support, difference);
        total = kd_keep(in_support, total);
    }
    kd_vi top_a = a == 0.0, top_b = b == 0.0; /* -1 where true */
    out.top_t = -top_a;
    out.top_s = -top_b;
    out.rest_t = kd_keep(~top_a, ea);
    out.rest_s = kd_keep(~top_b, eb);
    out.gap = ea * difference + ruled_out;
    out.scale = ea * total; /* a, b <= 0: this is -e^a (|a| + |b|) */
    out.ea = ea;
    out.eb = eb;
    return out;
}

/* Adds the terms of KD_STEP = 2 * KD_LANES classes to the block's lane sums, pairwise. The
 * teacher and student vectors come loaded: t0 and s0 the first KD_LANES classes, t1, s1 the next.
 * With `keeping`, e^a and e^b of these classes are also stored at keep_a and keep_b. */
KD_INLINE void KD_FN(add_step)(kd_vd t0, kd_vd s0, kd_vd t1, kd_vd s1, double t_max, double s_max,
                               double inv_T, const int moderate, kd_block_sums *block,
                               const int keeping, double *keep_a, double *keep_b)
{
    const kd_vd t_top = kd_splat(t_max), s_top = kd_splat(s_max);
    KD_FN(terms) x = KD_FN(vector_terms)(t0, s0, t_top, s_top, inv_T, moderate);
    KD_FN(terms) y = KD_FN(vector_terms)(t1, s1, t_top, s_top, inv_T, moderate);
    block->top_t += x.top_t + y.top_t;
    block->top_s += x.top_s + y.top_s;
    block->rest_t += x.rest_t + y.rest_t;
    block->rest_s += x.rest_s + y.rest_s;
    block->gap += x.gap + y.gap;
    block->scale += x.scale + y.scale;
    if (keeping) {
        memcpy(keep_a, &x.ea, sizeof x.ea);
        memcpy(keep_a + KD_LANES, &y.ea, sizeof y.ea);
        memcpy(keep_b, &x.eb, sizeof x.eb);
        memcpy(keep_b + KD_LANES, &y.eb, sizeof y.eb);
    }
}

KD_INLINE void KD_FN(add_chunk)(const KD_REAL *t, const KD_REAL *s, ptrdiff_t n, double t_max,
                                double s_max, double inv_T, const int moderate,
                                kd_chunk_stats *out, const int keeping, double *keep_a,
                                double *keep_b, ptrdiff_t ahead_t, ptrdiff_t ahead_s)
{
    for (ptrdiff_t start = 0; start < n; start += KD_BLOCK) {
        const ptrdiff_t len = n - start < KD_BLOCK ? n - start : KD_BLOCK;
        const KD_REAL *bt = t + start, *bs = s + start;
        const kd_vd zero = kd_splat(0.0);
        kd_block_sums block = {(kd_vi)zero, (kd_vi)zero, zero, zero, zero, zero};
        ptrdiff_t i = 0;
        for (; i + KD_STEP <= len; i += KD_STEP) {
            if (ahead_t) { /* the next row, a step at a time: it is in cache when its turn comes */
                for (size_t byte = 0; byte < KD_STEP * sizeof(KD_REAL); byte += 64) {
                    __builtin_prefetch((const char *)(bt + i) + ahead_t + byte);
                    __builtin_prefetch((const char *)(bs + i) + ahead_s + byte);
                }
            }
            KD_FN(add_step)(KD_LOAD(bt + i), KD_LOAD(bs + i), KD_LOAD(bt + i + KD_LANES),
                            KD_LOAD(bs + i + KD_LANES), t_max, s_max, inv_T, moderate, &block,
                            keeping, keep_a + start + i, keep_b + start + i);
        }
        if (i < len) {
            /* The last few classes, padded with classes that add 0: -inf in both rows, or in
             * moderate rows (where -inf is out of range) the maximum of each, whose a = b = 0
             * adds 1 to the top counts, taken out again below, and exactly 0 to every sum. */
            const int count = (int)(len - i), count0 = count < KD_LANES ? count : KD_LANES;
            const double fill_t = moderate ? t_max : -INFINITY, fill_s = moderate ? s_max : -INFINITY;
            KD_FN(add_step)(KD_LOAD_PARTIAL(bt + i, count0, fill_t),
                            KD_LOAD_PARTIAL(bs + i, count0, fill_s),
                            KD_LOAD_PARTIAL(bt + i + count0, count - count0, fill_t),
                            KD_LOAD_PARTIAL(bs + i + count0, count - count0, fill_s),
                            t_max, s_max, inv_T, moderate, &block, keeping, keep_a + start + i,
                            keep_b + start + i);
            if (moderate) {
                block.top_t[0] -= KD_STEP - count;
                block.top_s[0] -= KD_STEP - count;
            }
        }
        kd_add_block(out, &block);
    }
}

/* Pass 2: kd_chunk_stats of n <= KD_CHUNK classes of a row whose extrema are *range.
 * exp_a, exp_b: unless NULL, where e^a and e^b of every class are kept for the gradient pass
 * (room for n + KD_MAX_STEP values each: the tail's padding is stored too).
 * ahead_t, ahead_s: unless 0, bytes from this row to the next, which is prefetched a step at a
 * time, so that its first pass finds it in cache rather than waiting for memory. */
static void KD_FN(chunk_stats)(const KD_REAL *t, const KD_REAL *s, ptrdiff_t n,
                               const kd_row_range *range, double inv_T, kd_chunk_stats *out,
                               double *exp_a, double *exp_b, ptrdiff_t ahead_t, ptrdiff_t ahead_s)
{
    memset(out, 0, sizeof *out);
    const int moderate = kd_is_moderate(range, inv_T);
    const double t_max = range->t_max, s_max = range->s_max;
    if (exp_a == NULL && moderate)
        KD_FN(add_chunk)(t, s, n, t_max, s_max, inv_T, 1, out, 0, NULL, NULL, ahead_t, ahead_s);
    else if (exp_a == NULL)
        KD_FN(add_chunk)(t, s, n, t_max, s_max, inv_T, 0, out, 0, NULL, NULL, ahead_t, ahead_s);
    else if (moderate)
        KD_FN(add_chunk)(t, s, n, t_max, s_max, inv_T, 1, out, 1, exp_a, exp_b, ahead_t, ahead_s);
    else
        KD_FN(add_chunk)(t, s, n, t_max, s_max, inv_T, 0, out, 1, exp_a, exp_b, ahead_t, ahead_s);
}

/* The gradient of the KL term for one group of short rows, one row per lane (see
 * kd_short_grad): from the group's columns, extrema, kept exponentials and sums, as
 * gradient_impl.h computes it for one row. Lanes the vector code did not settle (NaN in kl)
 * and spare lanes are not written. */
static void KD_FN(short_gradient)(const kd_short_grad *grad, ptrdiff_t first, int rows, ptrdiff_t n,
                                  double inv_T, kd_vd kl, const kd_vd *columns_t,
                                  const kd_vd *columns_s, kd_vd t_max, kd_vd s_max,
                                  const kd_vd *exp_a, const kd_vd *exp_b, const KD_FN(terms) *sum)
{
    const kd_vd z_t = __builtin_convertvector(sum->top_t, kd_vd) + sum->rest_t;
    const kd_vd z_s = __builtin_convertvector(sum->top_s, kd_vd) + sum->rest_s;
    const kd_vd inv_zt = 1.0 / z_t, inv_zs = 1.0 / z_s, mean_gap = sum->gap / z_t;
    const kd_vi same_normaliser = inv_zt == inv_zs;
    kd_vd coef = kd_splat(0.0);
    for (int lane = 0; lane < rows; lane++)
        coef[lane] = grad->coef[first + lane];
    for (ptrdiff_t j = 0; j < n; j++) {
        const kd_vd ea = exp_a[j], eb = exp_b[j];
        const kd_vd p = ea * inv_zt, q = eb * inv_zs;
        /* As gradient_impl.h: exact zeros where the rows agree, whatever the compiler fuses. */
        const kd_vd d_s = kd_select(same_normaliser, (eb - ea) * inv_zs, q - p) * coef;
        const kd_vd gap = ((columns_t[j] - t_max) - (columns_s[j] - s_max)) * inv_T;
        /* An infinite KL (the student rules out a class the teacher allows): d_t is NaN. */
        const kd_vd d_t = kd_select(kl == INFINITY, kd_splat(NAN), kd_keep(ea > 0.0, p * (gap - mean_gap)) * coef);
        for (int lane = 0; lane < rows; lane++) {
            if (kl[lane] != kl[lane])
                continue;
            const ptrdiff_t offset = (first + lane) * grad->row_bytes + j * (ptrdiff_t)sizeof(KD_REAL);
            *(KD_REAL *)(grad->d_s + offset) = (KD_REAL)d_s[lane];
            if (grad->d_t)
                *(KD_REAL *)(grad->d_t + offset) = (KD_REAL)d_t[lane];
        }
    }
}

/* Short rows (n <= KD_SHORT_ROW), one row per lane: no reduction across lanes, and no per-row
 * call. Class j of row r is at t_base + r * t_row + j * t_col bytes (any strides). For each of the n_rows
 * rows, writes its extrema and its sums (in class order, plain: n is small) as one chunk.
 * A row's values do not depend on the rows beside it: the cheaper exp of moderate groups gives
 * the same bits as the general one wherever both apply (scaling by a power of two is exact).
 * kl[r] is the row's KL, or NaN where the scalar code must finish the row (special values, and
 * rows close to zero KL, which take the exact path) from its extrema and sums, which are
 * written for those rows only. */
static void KD_FN(short_rows)(const char *t_base, const char *s_base, ptrdiff_t t_row,
                              ptrdiff_t s_row, ptrdiff_t t_col, ptrdiff_t s_col, ptrdiff_t n_rows,
                              ptrdiff_t n, double inv_T, kd_row_range *ranges,
                              kd_chunk_stats *stats, double *kl, const kd_short_grad *grad)
{
    for (ptrdiff_t first = 0; first < n_rows; first += KD_LANES) {
        const int rows = n_rows - first < KD_LANES ? (int)(n_rows - first) : KD_LANES;
        const char *t[KD_LANES], *s[KD_LANES];
        for (int lane = 0; lane < KD_LANES; lane++) { /* spare lanes repeat the first row */
            ptrdiff_t row = first + (lane < rows ? lane : 0);
            t[lane] = t_base + row * t_row;
            s[lane] = s_base + row * s_row;
        }
        kd_vd columns_t[KD_SHORT_ROW], columns_s[KD_SHORT_ROW];
        kd_vd t_max = kd_splat(-INFINITY), s_max = t_max, t_min = -t_max, s_min = t_min;
        for (ptrdiff_t j = 0; j < n; j++) {
            kd_vd ct, cs; /* built lane by lane: faster than a gather instruction on AMD Zen 4 */
            for (int lane = 0; lane < KD_LANES; lane++) {
                ct[lane] = *(const KD_REAL *)(t[lane] + j * t_col);
                cs[lane] = *(const KD_REAL *)(s[lane] + j * s_col);
            }
            columns_t[j] = ct;
            columns_s[j] = cs;
            t_max = kd_select(ct > t_max, ct, t_max);
            s_max = kd_select(cs > s_max, cs, s_max);
            t_min = kd_select(ct < t_min, ct, t_min);
            s_min = kd_select(cs < s_min, cs, s_min);
        }
        const kd_vi moderate_lanes = ((t_min - t_max) * inv_T >= -700.0)
                                   & ((s_min - s_max) * inv_T >= -700.0);
        int moderate = 1;
        for (int lane = 0; lane < KD_LANES; lane++)
            moderate &= moderate_lanes[lane] != 0;
        const kd_vd zero = kd_splat(0.0);
        KD_FN(terms) sum = {(kd_vi)zero, (kd_vi)zero, zero, zero, zero, zero};
        kd_vd exp_a[KD_SHORT_ROW], exp_b[KD_SHORT_ROW]; /* kept for the gradient */
        for (ptrdiff_t j = 0; j < n; j++) {
            KD_FN(terms) x = moderate
                ? KD_FN(vector_terms)(columns_t[j], columns_s[j], t_max, s_max, inv_T, 1)
                : KD_FN(vector_terms)(columns_t[j], columns_s[j], t_max, s_max, inv_T, 0);
            sum.top_t += x.top_t;
            sum.top_s += x.top_s;
            sum.rest_t += x.rest_t;
            sum.rest_s += x.rest_s;
            sum.gap += x.gap;
            sum.scale += x.scale;
            exp_a[j] = x.ea;
            exp_b[j] = x.eb;
        }
        const kd_vd row_kl = kd_finish_kl(sum.top_t, sum.top_s, sum.rest_t, sum.rest_s, sum.gap, sum.scale);
        if (grad)
            KD_FN(short_gradient)(grad, first, rows, n, inv_T, row_kl, columns_t, columns_s, t_max,
                                  s_max, exp_a, exp_b, &sum);
        for (int lane = 0; lane < rows; lane++) {
            kl[first + lane] = row_kl[lane];
            if (row_kl[lane] == row_kl[lane])
                continue; /* settled: the scalar code needs no extrema or sums */
            kd_row_range *range = &ranges[first + lane];
            kd_chunk_stats *out = &stats[first + lane];
            range->t_max = t_max[lane];
            range->s_max = s_max[lane];
            range->t_min = t_min[lane];
            range->s_min = s_min[lane];
            memset(out, 0, sizeof *out);
            out->top_t = (double)sum.top_t[lane];
            out->top_s = (double)sum.top_s[lane];
            out->rest_t = sum.rest_t[lane];
            out->rest_s = sum.rest_s[lane];
            out->gap = sum.gap[lane];
            out->gap_scale = -sum.scale[lane];
        }
    }
}
