/* The passes over one row for one input dtype: extrema, sums, short rows, gradient, normaliser.
 *
 * Included once per row of the dtype table by target_impl.h, with KD_REAL (the stored element
 * type), KD_OUT (the gradient's element type), KD_FN(name) (a name with the dtype in it), KD_LOAD /
 * KD_LOAD_PARTIAL (KD_LANES elements as doubles), KD_SCALAR(p) (one element as a double),
 * KD_NATIVE_RANGE (1: KD_REAL compares natively, so the extrema pass runs in its own lanes) and
 * KD_EXP_FOR_DOUBLE (1: exp to full double precision; 0 for inputs of float precision or less,
 * whose results are rounded to float32). The divergence's own arithmetic comes from the row of the
 * divergence table named by KD_DIV(name) (e.g. kd_kl_name, divergence_kl.h), with KD_DIV_SUMS sums,
 * and KD_DIV_SECOND_SUMS sums in a second pass (0: the divergence takes one pass). KD_DIV_SINGLE
 * (1: the row's first pass may run in float32 lanes, vector_single.h) with KD_LOAD_SINGLE /
 * KD_LOAD_PARTIAL_SINGLE (a vector of floats per dtype) gives float-precision inputs their
 * float32 sums' pass on the vector targets; KD_DIV_SINGLE_STUDENT_MASKED (1: also rows where the
 * student masks a class or reaches below 80 T) extends it to the masked mode of both sides. Its
 * moderate rows keep their values as float32, exact in half the bytes (kd_grad_row.kept_single),
 * and the later passes have a loop for them (KD_KEPT_SINGLE); the masked modes keep doubles.
 * KD_DIV_SINGLE_SECOND (1: the row gives KD_DIV(single_second_terms), which takes a step of the
 * second pass in float32 lanes or declines it, compiled for each of KD_DIV_SINGLE_SECOND_VARIANTS
 * shapes of the row's parameters: KD_DIV(single_second).variant the row's, 0 the one for any)
 * gives float-precision inputs' moderate rows a float32 second pass, and same-mask rows whose
 * every chunk fitted that mode (its zero_mass: the classes both sides mask add 0); a step it
 * declines takes the double terms. */

/* 1: this dtype's rows of this divergence may keep float32 values (kd_grad_row.kept_single). */
#if !KD_LIBM && !KD_EXP_FOR_DOUBLE && KD_DIV_SINGLE
#define KD_KEPT_SINGLE 1
#else
#define KD_KEPT_SINGLE 0
#endif

#if KD_NATIVE_RANGE
typedef KD_REAL KD_FN(vr) __attribute__((vector_size(8 * KD_LANES))); /* native lanes of KD_REAL */

/* x > m ? x : m, lane by lane: the semantics of the max instructions (NaN in x loses), which GCC
 * does not find in the portable form on AVX-512 (measured: the extrema pass took twice the time
 * of reading the row). */
KD_INLINE KD_FN(vr) KD_FN(vmax)(KD_FN(vr) x, KD_FN(vr) m)
{
#if defined(__GNUC__) && !defined(__clang__) && defined(__AVX512F__) && KD_LANES == 8
    if (sizeof(KD_REAL) == sizeof(float))
        return (KD_FN(vr))_mm512_max_ps((__m512)x, (__m512)m);
    return (KD_FN(vr))_mm512_max_pd((__m512d)x, (__m512d)m);
#elif defined(__GNUC__) && !defined(__clang__) && defined(__AVX__) && KD_LANES == 4
    if (sizeof(KD_REAL) == sizeof(float))
        return (KD_FN(vr))_mm256_max_ps((__m256)x, (__m256)m);
    return (KD_FN(vr))_mm256_max_pd((__m256d)x, (__m256d)m);
#else
    __typeof__(x > m) greater = x > m;
    return (KD_FN(vr))((greater & (__typeof__(greater))x) | (~greater & (__typeof__(greater))m));
#endif
}

/* The whole vectors of pass 1, in KD_REAL's own lanes, folded into *r; returns the classes done. */
KD_INLINE ptrdiff_t KD_FN(range_vectors)(const KD_REAL *t, const KD_REAL *s, ptrdiff_t n, kd_row_range *r)
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
    for (int lane = 0; lane < LANES; lane++)
        kd_range_fold(r, t_max[lane], s_max[lane], t_min[lane], s_min[lane]);
    return i;
}
#else
/* The same for stored types that do not compare natively (2-byte floats): widened exactly to
 * float32 lanes (vector_single.h), twice as many per vector as double's. */
KD_INLINE ptrdiff_t KD_FN(range_vectors)(const KD_REAL *t, const KD_REAL *s, ptrdiff_t n, kd_row_range *r)
{
    const kd_vs inf = kd_splat_single(INFINITY);
    kd_vs t_max = -inf, s_max = -inf, t_min = inf, s_min = inf;
    ptrdiff_t i = 0;
    for (; i + KD_SINGLE_LANES <= n; i += KD_SINGLE_LANES) {
        const kd_vs x = KD_LOAD_SINGLE(t + i), y = KD_LOAD_SINGLE(s + i);
        t_max = kd_select_single(x > t_max, x, t_max);
        s_max = kd_select_single(y > s_max, y, s_max);
        t_min = kd_select_single(x < t_min, x, t_min);
        s_min = kd_select_single(y < s_min, y, s_min);
    }
    for (int lane = 0; lane < KD_SINGLE_LANES; lane++)
        kd_range_fold(r, t_max[lane], s_max[lane], t_min[lane], s_min[lane]);
    return i;
}
#endif

/* Pass 1: the extrema of t and s over n classes. NaN never wins a comparison, so it is ignored
 * here; pass 2 lets it through to the sums. */
static void KD_FN(row_range)(const void *t_in, const void *s_in, ptrdiff_t n, kd_row_range *out)
{
    const KD_REAL *t = t_in, *s = s_in;
    kd_row_range r = {-INFINITY, -INFINITY, INFINITY, INFINITY};
    for (ptrdiff_t i = KD_FN(range_vectors)(t, s, n, &r); i < n; i++) {
        const double ti = KD_SCALAR(t + i), si = KD_SCALAR(s + i);
        kd_range_fold(&r, ti, si, ti, si);
    }
    *out = r;
}

/* The terms of KD_LANES classes in a mode; KD_SAME_MASK's are the moderate terms of the stand-ins
 * (kd_same_mask_stand_in), where the classes both sides mask get weight 0 and keep 0. */
KD_INLINE KD_DIV(terms) KD_FN(terms_in_mode)(kd_vd t, kd_vd s, const KD_DIV(row) *row, const int mode,
                                             const kd_same_mask_row *same, kd_vi *out_of_range)
{
    if (mode != KD_SAME_MASK)
        return KD_DIV(class_terms)(t, s, row, mode, KD_EXP_FOR_DOUBLE, out_of_range);
    const kd_vi kept = ~kd_same_mask_stand_in(&t, &s, same, out_of_range);
    KD_DIV(terms) x = KD_DIV(class_terms)(t, s, row, KD_MODERATE, KD_EXP_FOR_DOUBLE, out_of_range);
    for (int k = 0; k < KD_DIV_SUMS; k++)
        x.weight[k] = kd_keep(kept, x.weight[k]);
    x.kept_a = kd_keep(kept, x.kept_a);
    x.kept_w = kd_keep(kept, x.kept_w);
    return x;
}

/* Adds the terms of KD_STEP = 2 * KD_LANES classes to the block's lane sums, pairwise; t0, s0 the
 * first KD_LANES classes, t1, s1 the next. With `keeping`, e^a and the gradient's w of these
 * classes are stored at keep_a and keep_w. */
KD_INLINE void KD_FN(add_step)(kd_vd t0, kd_vd s0, kd_vd t1, kd_vd s1, const KD_DIV(row) *row,
                               const int mode, const kd_same_mask_row *same, kd_block_sums *block,
                               const int keeping, double *keep_a, double *keep_w, kd_vi *out_of_range)
{
    KD_DIV(terms) x = KD_FN(terms_in_mode)(t0, s0, row, mode, same, out_of_range);
    KD_DIV(terms) y = KD_FN(terms_in_mode)(t1, s1, row, mode, same, out_of_range);
    for (int k = 0; k < KD_DIV_SUMS; k++)
        block->sum[k] = kd_fma(x.weight[k], x.value[k], kd_fma(y.weight[k], y.value[k], block->sum[k]));
    if (keeping) {
        memcpy(keep_a, &x.kept_a, sizeof x.kept_a);
        memcpy(keep_a + KD_LANES, &y.kept_a, sizeof y.kept_a);
        memcpy(keep_w, &x.kept_w, sizeof x.kept_w);
        memcpy(keep_w + KD_LANES, &y.kept_w, sizeof y.kept_w);
    }
}

/* Returns nonzero when a masked chunk (KD_MASKED, KD_MASKED_TEACHER) met finite logits outside
 * the cheap range (its sums are then to be redone in KD_GENERAL mode), or a KD_SAME_MASK chunk
 * met a class one side masks alone or such logits (to be redone in KD_MASKED mode; it stops at the
 * first block that does). */
KD_INLINE int KD_FN(add_chunk)(const KD_REAL *t, const KD_REAL *s, ptrdiff_t n, double t_max,
                               double s_max, double inv_T, const int mode, kd_row_sums *out,
                               const int keeping, double *keep_a, double *keep_w,
                               ptrdiff_t ahead_t, ptrdiff_t ahead_s)
{
    kd_vi out_of_range = (kd_vi)kd_splat(0.0);
    const KD_DIV(row) row = KD_DIV(row_constants)(t_max, s_max, inv_T);
    const kd_same_mask_row same = kd_same_mask_row_of(mode, t_max, s_max, inv_T);
    for (ptrdiff_t start = 0; start < n; start += KD_BLOCK) {
        const ptrdiff_t len = n - start < KD_BLOCK ? n - start : KD_BLOCK;
        const KD_REAL *bt = t + start, *bs = s + start;
        kd_block_sums block;
        for (int k = 0; k < KD_DIV_SUMS; k++)
            block.sum[k] = kd_splat(0.0);
        ptrdiff_t i = 0;
        for (; i + KD_STEP <= len; i += KD_STEP) {
            if (ahead_t) { /* the next row, a step at a time: it is in cache when its turn comes */
                for (size_t byte = 0; byte < KD_STEP * sizeof(KD_REAL); byte += 64) {
                    __builtin_prefetch((const char *)(bt + i) + ahead_t + byte);
                    __builtin_prefetch((const char *)(bs + i) + ahead_s + byte);
                }
            }
            KD_FN(add_step)(KD_LOAD(bt + i), KD_LOAD(bs + i), KD_LOAD(bt + i + KD_LANES),
                            KD_LOAD(bs + i + KD_LANES), &row, mode, &same, &block,
                            keeping, keep_a + start + i, keep_w + start + i, &out_of_range);
        }
        if (i < len) {
            /* The last few classes, padded with -inf in both rows: a class both mask, which adds
             * exactly 0 to every sum (the general terms; for real classes they give the same bits
             * as the moderate ones). */
            const int count = (int)(len - i), count0 = count < KD_LANES ? count : KD_LANES;
            KD_FN(add_step)(KD_LOAD_PARTIAL(bt + i, count0, -INFINITY),
                            KD_LOAD_PARTIAL(bs + i, count0, -INFINITY),
                            KD_LOAD_PARTIAL(bt + i + count0, count - count0, -INFINITY),
                            KD_LOAD_PARTIAL(bs + i + count0, count - count0, -INFINITY),
                            &row, mode == KD_SAME_MASK ? KD_SAME_MASK : KD_GENERAL, &same, &block,
                            keeping, keep_a + start + i, keep_w + start + i, &out_of_range);
        }
        if (mode == KD_SAME_MASK && kd_any(out_of_range)) /* a misfit: redone in another mode */
            return 1;
        kd_add_block(out, &block, KD_DIV_SUMS);
    }
    int any = 0;
    for (int lane = 0; lane < KD_LANES; lane++)
        any |= out_of_range[lane] != 0;
    return any;
}

#if !KD_LIBM && !KD_EXP_FOR_DOUBLE && KD_DIV_SINGLE
/* The sums of a chunk of a row in float32 lanes (vector_single.h), in the moderate or a masked
 * mode (masked: -inf logits among finite ones within 80 T of their maxima): lane sums of at most
 * KD_SINGLE_RUN steps, widened into the block's double lane sums, which fold into the chunk as
 * add_chunk's do. The chunk's last step is padded with a class at both maxima and weight 0, which
 * adds exactly 0. Returns nonzero when a masked chunk met a finite logit outside that range (or a
 * NaN): its sums are then to be redone in double. */
KD_INLINE int KD_FN(add_single_chunk)(const KD_REAL *t, const KD_REAL *s, ptrdiff_t n, double t_max,
                                      double s_max, double inv_T, const int mode, const int unit_T,
                                      kd_row_sums *out, const int keeping, double *keep_a, double *keep_w,
                                      ptrdiff_t ahead_t, ptrdiff_t ahead_s)
{
    const KD_DIV(single_row) row = KD_DIV(single_row_constants)(t_max, s_max, inv_T);
    const kd_same_mask_single_row same = kd_same_mask_single_row_of(mode, t_max, s_max, inv_T);
    const int term_mode = mode == KD_SAME_MASK ? KD_MODERATE : mode;
    kd_vsi lane_index, out_of_range = {0};
    for (int lane = 0; lane < KD_SINGLE_LANES; lane++)
        lane_index[lane] = lane;
    for (ptrdiff_t start = 0; start < n; start += KD_BLOCK) {
        const ptrdiff_t len = n - start < KD_BLOCK ? n - start : KD_BLOCK;
        const KD_REAL *bt = t + start, *bs = s + start;
        kd_block_sums block;
        for (int k = 0; k < KD_DIV_SUMS; k++)
            block.sum[k] = kd_splat(0.0);
        for (ptrdiff_t run = 0; run < len; run += KD_SINGLE_RUN * KD_SINGLE_LANES) {
            const ptrdiff_t run_end = len - run < KD_SINGLE_RUN * KD_SINGLE_LANES ? len : run + KD_SINGLE_RUN * KD_SINGLE_LANES;
            kd_vs lane_sum[KD_DIV_SUMS];
            for (int k = 0; k < KD_DIV_SUMS; k++)
                lane_sum[k] = kd_splat_single(0.0f);
            for (ptrdiff_t i = run; i < run_end; i += KD_SINGLE_LANES) {
                if (ahead_t) { /* the next row, a step at a time (see add_chunk) */
                    for (size_t byte = 0; byte < KD_SINGLE_LANES * sizeof(KD_REAL); byte += 64) {
                        __builtin_prefetch((const char *)(bt + i) + ahead_t + byte);
                        __builtin_prefetch((const char *)(bs + i) + ahead_s + byte);
                    }
                }
                const int count = run_end - i < KD_SINGLE_LANES ? (int)(run_end - i) : KD_SINGLE_LANES;
                kd_vs tv, sv;
                kd_vsi live = ~(kd_vsi){0};
                if (count == KD_SINGLE_LANES) {
                    tv = KD_LOAD_SINGLE(bt + i);
                    sv = KD_LOAD_SINGLE(bs + i);
                } else {
                    tv = KD_LOAD_PARTIAL_SINGLE(bt + i, count, (float)t_max);
                    sv = KD_LOAD_PARTIAL_SINGLE(bs + i, count, (float)s_max);
                    live = lane_index < count;
                }
                if (mode == KD_SAME_MASK) /* classes both sides mask: stand-ins of weight 0 */
                    live &= ~kd_same_mask_stand_in_single(&tv, &sv, &same, &out_of_range);
                KD_DIV(single_terms_of) x = KD_DIV(single_terms)(tv, sv, &row, term_mode, unit_T, &out_of_range);
                if (mode == KD_SAME_MASK || count < KD_SINGLE_LANES) {
                    for (int k = 0; k < KD_DIV_SUMS; k++)
                        x.weight[k] = kd_keep_single(live, x.weight[k]);
                    x.kept_a = kd_keep_single(live, x.kept_a);
                    x.kept_w = kd_keep_single(live, x.kept_w);
                }
                for (int k = 0; k < KD_DIV_SUMS; k++)
                    lane_sum[k] = kd_fma_single(x.weight[k], x.value[k], lane_sum[k]);
                if (keeping && mode == KD_MODERATE) { /* as float32: half the bytes (kept_single) */
                    memcpy((float *)keep_a + start + i, &x.kept_a, sizeof x.kept_a);
                    memcpy((float *)keep_w + start + i, &x.kept_w, sizeof x.kept_w);
                } else if (keeping) {
                    kd_store_widened(keep_a + start + i, x.kept_a);
                    kd_store_widened(keep_w + start + i, x.kept_w);
                }
            }
            for (int k = 0; k < KD_DIV_SUMS; k++) {
                kd_vd low, high;
                kd_widen_halves(lane_sum[k], &low, &high);
                block.sum[k] += low + high;
            }
        }
        if (mode == KD_SAME_MASK && kd_any((kd_vi)out_of_range))
            return 1;
        kd_add_block(out, &block, KD_DIV_SUMS);
    }
    int any = 0;
    for (int lane = 0; lane < KD_SINGLE_LANES; lane++)
        any |= out_of_range[lane] != 0;
    return any;
}
#endif

/* Pass 2: kd_row_sums of n <= KD_CHUNK classes of a row whose extrema are *range.
 * kept_a, kept_w: unless NULL, where e^a and w of every class are kept for the gradient pass
 * (room for n + KD_MAX_STEP values each: the tail's padding is stored too).
 * ahead_t, ahead_s: unless 0, bytes from this row to the next, which is prefetched a step at a
 * time, so that its first pass finds it in cache rather than waiting for memory. */
KD_INLINE void KD_FN(row_sums_in)(const void *t_in, const void *s_in, ptrdiff_t n,
                                  const kd_row_range *range, double inv_T, kd_row_sums *out,
                                  double *kept_a, double *kept_w, ptrdiff_t ahead_t, ptrdiff_t ahead_s,
                                  int *same_mask)
{
    const KD_REAL *t = t_in, *s = s_in;
    memset(out, 0, sizeof *out);
    const int keeping = kept_a != NULL;
    int mode = kd_row_mode(range, inv_T);
    *same_mask = mode == KD_SAME_MASK;
    const double t_max = range->t_max, s_max = kd_student_reference(range);
    /* Each mode and keeping flag is a constant in its own copy of the loop. */
#define KD_CHUNK_IN(m, k) KD_FN(add_chunk)(t, s, n, t_max, s_max, inv_T, m, out, k, kept_a, kept_w, ahead_t, ahead_s)
    int redo = 0;
#if !KD_LIBM && !KD_EXP_FOR_DOUBLE && KD_DIV_SINGLE
#define KD_SINGLE_CHUNK_AT(m, u, k)                                                                \
    KD_FN(add_single_chunk)(t, s, n, t_max, s_max, inv_T, m, u, out, k, kept_a, kept_w, ahead_t, ahead_s)
#define KD_SINGLE_CHUNK(m, k) KD_SINGLE_CHUNK_AT(m, 0, k)
    if (kd_single_resolves(range, inv_T)) {
        if (mode == KD_MODERATE && kd_is_single_moderate(range, inv_T)) {
            /* T = 1 (LLM distillation's usual) in copies of its own, without the products by 1 / T */
            if (inv_T == 1.0)
                keeping ? KD_SINGLE_CHUNK_AT(KD_MODERATE, 1, 1) : KD_SINGLE_CHUNK_AT(KD_MODERATE, 1, 0);
            else
                keeping ? KD_SINGLE_CHUNK(KD_MODERATE, 1) : KD_SINGLE_CHUNK(KD_MODERATE, 0);
            out->kept_single = keeping;
            return;
        }
        /* masked: float32 first; out of its range (or a NaN), double's modes; a chunk whose masks
         * differ on the two sides, the masked modes */
        if (mode == KD_SAME_MASK) {
            if (!(keeping ? KD_SINGLE_CHUNK(KD_SAME_MASK, 1) : KD_SINGLE_CHUNK(KD_SAME_MASK, 0)))
                return;
            memset(out, 0, sizeof *out);
            mode = KD_MASKED;
            *same_mask = 2;
        }
        if (mode == KD_MASKED_TEACHER && kd_student_within(range, inv_T, -80.0)) {
            if (!(keeping ? KD_SINGLE_CHUNK(KD_MASKED_TEACHER, 1) : KD_SINGLE_CHUNK(KD_MASKED_TEACHER, 0)))
                return;
            memset(out, 0, sizeof *out);
        } else if (KD_DIV_SINGLE_STUDENT_MASKED && (mode == KD_MASKED || mode == KD_MASKED_TEACHER)) {
            if (!(keeping ? KD_SINGLE_CHUNK(KD_MASKED, 1) : KD_SINGLE_CHUNK(KD_MASKED, 0)))
                return;
            memset(out, 0, sizeof *out);
        }
    }
#undef KD_SINGLE_CHUNK
#undef KD_SINGLE_CHUNK_AT
#endif
    if (mode == KD_SAME_MASK) {
        if (!(keeping ? KD_CHUNK_IN(KD_SAME_MASK, 1) : KD_CHUNK_IN(KD_SAME_MASK, 0)))
            return;
        memset(out, 0, sizeof *out);
        mode = KD_MASKED;
        *same_mask = 2;
    }
    if (mode == KD_MODERATE)
        keeping ? KD_CHUNK_IN(KD_MODERATE, 1) : KD_CHUNK_IN(KD_MODERATE, 0);
    else if (mode == KD_MASKED)
        redo = keeping ? KD_CHUNK_IN(KD_MASKED, 1) : KD_CHUNK_IN(KD_MASKED, 0);
    else if (mode == KD_MASKED_TEACHER)
        redo = keeping ? KD_CHUNK_IN(KD_MASKED_TEACHER, 1) : KD_CHUNK_IN(KD_MASKED_TEACHER, 0);
    if (mode == KD_GENERAL || redo) {
        memset(out, 0, sizeof *out);
        keeping ? KD_CHUNK_IN(KD_GENERAL, 1) : KD_CHUNK_IN(KD_GENERAL, 0);
    }
#undef KD_CHUNK_IN
}

static void KD_FN(row_sums)(const void *t_in, const void *s_in, ptrdiff_t n,
                            const kd_row_range *range, double inv_T, kd_row_sums *out,
                            double *kept_a, double *kept_w, ptrdiff_t ahead_t, ptrdiff_t ahead_s)
{
    int same_mask;
    KD_FN(row_sums_in)(t_in, s_in, n, range, inv_T, out, kept_a, kept_w, ahead_t, ahead_s, &same_mask);
    out->same_mask = same_mask;
}

/* Stores `count` lanes of x as KD_OUT, each rounded once (float32: to nearest, or with
 * round_to_odd to odd, for a caller that rounds once more to 2 bytes). */
KD_INLINE void KD_FN(store)(KD_OUT *p, kd_vd x, int count, const int round_to_odd)
{
    if (sizeof(KD_OUT) == sizeof(float)) {
        kd_vf narrow = round_to_odd ? kd_round_to_odd(x) : __builtin_convertvector(x, kd_vf);
        memcpy(p, &narrow, count * sizeof(float));
    } else {
        memcpy(p, &x, count * sizeof(double));
    }
}

/* One value as KD_OUT (see store). */
KD_INLINE KD_OUT KD_FN(narrow)(double x, const int round_to_odd)
{
    return sizeof(KD_OUT) == sizeof(float) && round_to_odd ? (KD_OUT)kd_float_rounded_to_odd(x) : (KD_OUT)x;
}

/* The KL's gradient for one group of short rows, one row per lane (see kd_short_grad): from the
 * group's columns, maxima, kept values and finish. Lanes the finish did not settle (NaN) and
 * spare lanes are not written. */
static void KD_FN(short_gradient)(const kd_short_grad *grad, ptrdiff_t first, int rows, ptrdiff_t n,
                                  const KD_DIV(row) *constants, const KD_DIV(finished) *row,
                                  const kd_vd *columns_t, const kd_vd *columns_s,
                                  const kd_vd *kept_a, const kd_vd *kept_w, const int moderate)
{
    kd_vd coef = kd_splat(0.0);
    for (int lane = 0; lane < rows; lane++)
        coef[lane] = grad->coef[first + lane];
    const kd_vi infinite = row->value == INFINITY;
    for (ptrdiff_t j = 0; j < n; j++) {
        kd_vd q_minus_p, teacher_direction, q;
        KD_DIV(gradient_lanes)(columns_t[j], columns_s[j], kept_a[j], kept_w[j], constants, row,
                             moderate, KD_EXP_FOR_DOUBLE, &q_minus_p, &teacher_direction, &q);
        const kd_vd d_s = q_minus_p * coef;
        /* An infinite KL (the student rules out a class the teacher allows): d_t is NaN. */
        const kd_vd d_t = kd_select(infinite, kd_splat(NAN), teacher_direction * coef);
        for (int lane = 0; lane < rows; lane++) {
            if (row->value[lane] != row->value[lane])
                continue;
            const ptrdiff_t offset = (first + lane) * grad->row_bytes + j * (ptrdiff_t)sizeof(KD_OUT);
            *(KD_OUT *)(grad->d_s + offset) = KD_FN(narrow)(d_s[lane], grad->round_to_odd);
            if (grad->d_t)
                *(KD_OUT *)(grad->d_t + offset) = KD_FN(narrow)(d_t[lane], grad->round_to_odd);
        }
    }
}

/* Short rows (n <= KD_SHORT_ROW), one row per lane: no reduction across lanes, and no per-row
 * call. Class j of row r is at t_base + r * t_row + j * t_col bytes (any strides). value[r] is
 * the row's KL, or NaN where the caller must settle the row (special values). A row's values do
 * not depend on the rows beside it: the moderate terms give the same bits as the general ones
 * wherever both apply. */
static void KD_FN(short_rows)(const char *t_base, const char *s_base, ptrdiff_t t_row,
                              ptrdiff_t s_row, ptrdiff_t t_col, ptrdiff_t s_col, ptrdiff_t n_rows,
                              ptrdiff_t n, double inv_T, const double *weights, double *value,
                              const kd_short_grad *grad)
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
                ct[lane] = KD_SCALAR((const KD_REAL *)(t[lane] + j * t_col));
                cs[lane] = KD_SCALAR((const KD_REAL *)(s[lane] + j * s_col));
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
        kd_vd sum[KD_DIV_SUMS];
        for (int k = 0; k < KD_DIV_SUMS; k++)
            sum[k] = kd_splat(0.0);
        kd_vd kept_a[KD_SHORT_ROW], kept_w[KD_SHORT_ROW];
        const KD_DIV(row) constants = KD_DIV(lane_constants)(t_max, s_max, inv_T);
        kd_vi unused = (kd_vi)kd_splat(0.0); /* short rows take the moderate or the general mode */
        for (ptrdiff_t j = 0; j < n; j++) {
            KD_DIV(terms) x = moderate
                ? KD_DIV(class_terms)(columns_t[j], columns_s[j], &constants, KD_MODERATE, KD_EXP_FOR_DOUBLE, &unused)
                : KD_DIV(class_terms)(columns_t[j], columns_s[j], &constants, KD_GENERAL, KD_EXP_FOR_DOUBLE, &unused);
            for (int k = 0; k < KD_DIV_SUMS; k++)
                sum[k] = kd_fma(x.weight[k], x.value[k], sum[k]);
            kept_a[j] = x.kept_a;
            kept_w[j] = x.kept_w;
        }
        KD_DIV(finished) row = KD_DIV(finish_lanes)(sum, weights);
#if KD_DIV_SECOND_SUMS
        kd_vd second[KD_DIV_SECOND_SUMS];
        for (int k = 0; k < KD_DIV_SECOND_SUMS; k++)
            second[k] = kd_splat(0.0);
        for (ptrdiff_t j = 0; j < n; j++)
            moderate ? KD_DIV(second_terms)(columns_t[j], columns_s[j], kept_a[j], kept_w[j], &constants, &row,
                                            KD_MODERATE, KD_EXP_FOR_DOUBLE, 0, second)
                     : KD_DIV(second_terms)(columns_t[j], columns_s[j], kept_a[j], kept_w[j], &constants, &row,
                                            KD_GENERAL, KD_EXP_FOR_DOUBLE, 0, second);
        KD_DIV(second_finish_lanes)(&row, second);
#endif
        if (grad)
            KD_FN(short_gradient)(grad, first, rows, n, &constants, &row, columns_t, columns_s,
                                  kept_a, kept_w, moderate);
        for (int lane = 0; lane < rows; lane++)
            value[first + lane] = row.value[lane];
    }
}

/* The gradient of KD_LANES classes: d_s = kl_coef (Q - P) + ce_coef R and d_t = kl_coef P (d - m),
 * where a class the teacher masks (P = 0) gets exactly 0 in d_t. The flags are constants, so each
 * combination compiles to its own loop. */
KD_INLINE void KD_FN(gradient_lanes_in)(kd_vd t, kd_vd s, const kd_grad_row *row,
                                     const KD_DIV(row) *constants, const KD_DIV(finished) *finish,
                                     ptrdiff_t i, const int with_kl, const int ce_mode,
                                     const int mode, const int kept_single, kd_vd *d_s, kd_vd *d_t)
{
    kd_vd grad = kd_splat(0.0), q = grad;
    const kd_vd bs = s - row->range.s_max;
    if (with_kl) {
        const kd_vd ea = kd_load_kept(row->kept_a, i, kept_single), w = kd_load_kept(row->kept_w, i, kept_single);
        kd_vd q_minus_p, teacher_direction;
        KD_DIV(gradient_lanes)(t, s, ea, w, constants, finish, mode, KD_EXP_FOR_DOUBLE,
                             &q_minus_p, &teacher_direction, &q);
        grad = q_minus_p * row->kl_coef;
        *d_t = teacher_direction * row->kl_coef;
    }
    if (ce_mode == KD_CE_FROM_Q)
        grad += q * row->ce_coef;
    else if (ce_mode == KD_CE_OWN_EXP)
        grad += kd_exp_wide(bs, KD_EXP_FOR_DOUBLE) * (row->inv_z1 * row->ce_coef);
    *d_s = grad;
}

/* The same in any mode: the same-mask modes take the moderate gradient (kd_same_mask_lanes) and 0
 * where both sides mask, or, for the KD_LANES classes where that does not apply, the general one
 * (the sums' pass took such classes in the masked or the general mode; every mode gives the
 * classes the stand-ins admit the same kept values, in double: only the moderate mode keeps
 * float32, kept_single). */
KD_INLINE void KD_FN(gradient_lanes)(kd_vd t, kd_vd s, const kd_grad_row *row,
                                     const KD_DIV(row) *constants, const KD_DIV(finished) *finish,
                                     ptrdiff_t i, const int with_kl, const int ce_mode,
                                     const int mode, const int kept_single, const kd_same_mask_row *same,
                                     kd_vd *d_s, kd_vd *d_t)
{
    if (mode != KD_SAME_MASK && mode != KD_SAME_MASK_FITS) {
        KD_FN(gradient_lanes_in)(t, s, row, constants, finish, i, with_kl, ce_mode, mode, kept_single, d_s, d_t);
        return;
    }
    kd_vi kept;
    if (kd_same_mask_lanes(&t, &s, kd_load_f64(row->kept_a + i), same, mode, &kept) == KD_MODERATE)
        KD_FN(gradient_lanes_in)(t, s, row, constants, finish, i, with_kl, ce_mode, KD_MODERATE, 0, d_s, d_t);
    else
        KD_FN(gradient_lanes_in)(t, s, row, constants, finish, i, with_kl, ce_mode, KD_GENERAL, 0, d_s, d_t);
    *d_s = kd_keep(kept, *d_s);
    *d_t = kd_keep(kept, *d_t);
}

KD_INLINE void KD_FN(gradient_loop)(const KD_REAL *t, const KD_REAL *s, ptrdiff_t n,
                                    const kd_grad_row *row, KD_OUT *d_s, KD_OUT *d_t,
                                    const int with_kl, const int ce_mode, const int mode,
                                    const int with_teacher, const int kept_single)
{
    const KD_DIV(finished) finish = KD_DIV(finish_splat)(&row->finish);
    const KD_DIV(row) constants = KD_DIV(row_constants)(row->range.t_max, kd_student_reference(&row->range),
                                                        row->inv_T);
    const kd_same_mask_row same = kd_same_mask_row_of(mode, row->range.t_max, kd_student_reference(&row->range),
                                                      row->inv_T);
    kd_vd grad_s, grad_t = kd_splat(0.0);
    ptrdiff_t i = 0;
    for (; i + KD_LANES <= n; i += KD_LANES) {
        kd_vd tv = with_kl ? KD_LOAD(t + i) : grad_t;
        KD_FN(gradient_lanes)(tv, KD_LOAD(s + i), row, &constants, &finish, i, with_kl, ce_mode,
                              mode, kept_single, &same, &grad_s, &grad_t);
        KD_FN(store)(d_s + i, grad_s, KD_LANES, row->round_to_odd);
        if (with_teacher && d_t)
            KD_FN(store)(d_t + i, grad_t, KD_LANES, row->round_to_odd);
    }
    if (i < n) { /* the tail, padded with the maxima (harmless, and not stored) */
        const int count = (int)(n - i);
        kd_vd tv = with_kl ? KD_LOAD_PARTIAL(t + i, count, row->range.t_max) : grad_t;
        KD_FN(gradient_lanes)(tv, KD_LOAD_PARTIAL(s + i, count, row->range.s_max), row, &constants,
                              &finish, i, with_kl, ce_mode, mode, kept_single, &same, &grad_s, &grad_t);
        KD_FN(store)(d_s + i, grad_s, count, row->round_to_odd);
        if (with_teacher && d_t)
            KD_FN(store)(d_t + i, grad_t, count, row->round_to_odd);
    }
}

/* The gradient of one row of n classes (any n), into d_s and, unless it is NULL, d_t. Without a
 * KL term (kept_a NULL) only the cross-entropy's part, and t is not read. The plain loss's
 * student gradient has its own loops (with_teacher 0), where the compiler drops the teacher
 * direction's arithmetic and, in moderate rows, the reading of t. */
static void KD_FN(row_gradient)(const void *t_in, const void *s_in, ptrdiff_t n,
                                const kd_grad_row *row, void *d_s_out, void *d_t_out)
{
    const KD_REAL *t = t_in, *s = s_in;
    KD_OUT *d_s = d_s_out, *d_t = d_t_out;
    if (row->kept_a == NULL) {
        KD_FN(gradient_loop)(t, s, n, row, d_s, NULL, 0, KD_CE_OWN_EXP, 0, 0, 0);
        return;
    }
    /* the divergence's gradient mode: KD_MODERATE, KD_MASKED_TEACHER (the plain loss only: a
     * cheaper test of near classes), KD_SAME_MASK or KD_GENERAL; a moderate row's kept values
     * float32 or double (kept_single), a loop each */
    const int mode = kd_row_mode(&row->range, row->inv_T);
    const int moderate = mode == KD_MODERATE, kept_single = KD_KEPT_SINGLE && row->kept_single;
#define KD_LOOP(d_t_, ce, m, with_teacher)                                                         \
    ((m) == KD_MODERATE && kept_single                                                             \
         ? KD_FN(gradient_loop)(t, s, n, row, d_s, d_t_, 1, ce, m, with_teacher, 1)                \
         : KD_FN(gradient_loop)(t, s, n, row, d_s, d_t_, 1, ce, m, with_teacher, 0))
#define KD_SAME_MASK_LOOPS(m) /* their kept values are double */                                 \
    do {                                                                                           \
        if (row->ce_mode == KD_CE_NONE && d_t == NULL)                                             \
            KD_FN(gradient_loop)(t, s, n, row, d_s, NULL, 1, KD_CE_NONE, m, 0, 0);                 \
        else if (row->ce_mode == KD_CE_NONE)                                                       \
            KD_FN(gradient_loop)(t, s, n, row, d_s, d_t, 1, KD_CE_NONE, m, 1, 0);                  \
        else if (row->ce_mode == KD_CE_FROM_Q)                                                     \
            KD_FN(gradient_loop)(t, s, n, row, d_s, d_t, 1, KD_CE_FROM_Q, m, 1, 0);                \
        else                                                                                       \
            KD_FN(gradient_loop)(t, s, n, row, d_s, d_t, 1, KD_CE_OWN_EXP, m, 1, 0);               \
    } while (0)
    if (mode == KD_SAME_MASK) {
        if (row->finish.same_mask_fits)
            KD_SAME_MASK_LOOPS(KD_SAME_MASK_FITS);
        else
            KD_SAME_MASK_LOOPS(KD_SAME_MASK);
        return;
    }
#undef KD_SAME_MASK_LOOPS
    if (row->ce_mode == KD_CE_NONE && mode == KD_MASKED_TEACHER) {
        d_t ? KD_LOOP(d_t, KD_CE_NONE, KD_MASKED_TEACHER, 1) : KD_LOOP(NULL, KD_CE_NONE, KD_MASKED_TEACHER, 0);
        return;
    }
    if (row->ce_mode == KD_CE_NONE && d_t == NULL) {
        moderate ? KD_LOOP(NULL, KD_CE_NONE, KD_MODERATE, 0) : KD_LOOP(NULL, KD_CE_NONE, KD_GENERAL, 0);
        return;
    }
    switch (row->ce_mode * 2 + moderate) {
    case 0: KD_LOOP(d_t, KD_CE_NONE, KD_GENERAL, 1); break;
    case 1: KD_LOOP(d_t, KD_CE_NONE, KD_MODERATE, 1); break;
    case 2: KD_LOOP(d_t, KD_CE_FROM_Q, KD_GENERAL, 1); break;
    case 3: KD_LOOP(d_t, KD_CE_FROM_Q, KD_MODERATE, 1); break;
    case 4: KD_LOOP(d_t, KD_CE_OWN_EXP, KD_GENERAL, 1); break;
    default: KD_LOOP(d_t, KD_CE_OWN_EXP, KD_MODERATE, 1); break;
    }
#undef KD_LOOP
}

#if KD_DIV_SECOND_SUMS
/* Adds the second pass's terms of KD_LANES classes to sum, in a mode; the same-mask modes as the
 * gradient's (gradient_lanes): the moderate terms (kd_same_mask_lanes), 0 where both sides mask. */
KD_INLINE void KD_FN(second_terms_in_mode)(kd_vd t, kd_vd s, kd_vd ea, kd_vd w, const KD_DIV(row) *constants,
                                           const KD_DIV(finished) *finish, const kd_same_mask_row *same,
                                           const int mode, const int value_only, kd_vd *sum)
{
    if (mode != KD_SAME_MASK && mode != KD_SAME_MASK_FITS) {
        KD_DIV(second_terms)(t, s, ea, w, constants, finish, mode, KD_EXP_FOR_DOUBLE, value_only, sum);
        return;
    }
    kd_vd part[KD_DIV_SECOND_SUMS];
    for (int k = 0; k < KD_DIV_SECOND_SUMS; k++)
        part[k] = kd_splat(0.0);
    kd_vi kept;
    if (kd_same_mask_lanes(&t, &s, ea, same, mode, &kept) == KD_MODERATE)
        KD_DIV(second_terms)(t, s, ea, w, constants, finish, KD_MODERATE, KD_EXP_FOR_DOUBLE, value_only, part);
    else
        KD_DIV(second_terms)(t, s, ea, w, constants, finish, KD_GENERAL, KD_EXP_FOR_DOUBLE, value_only, part);
    for (int k = 0; k < KD_DIV_SECOND_SUMS; k++)
        sum[k] += kd_keep(kept, part[k]);
}

#if !KD_LIBM && !KD_EXP_FOR_DOUBLE && KD_DIV_SINGLE_SECOND
/* One step (KD_STEP classes from i) of the second pass in double, for the steps the float32 lanes
 * decline: out of line, so that the float32 loop keeps its sums and constants in registers. */
static __attribute__((noinline)) void KD_FN(second_step_in_double)(const KD_REAL *t, const KD_REAL *s, ptrdiff_t i,
                                                                 const kd_grad_row *row, const KD_DIV(row) *constants,
                                                                 const KD_DIV(finished) *finish,
                                                                 const kd_same_mask_row *same, const int mode,
                                                                 const int value_only, const int kept_single,
                                                                 kd_vd *sum)
{
    for (int half = 0; half < KD_STEP; half += KD_LANES)
        KD_FN(second_terms_in_mode)(KD_LOAD(t + i + half), KD_LOAD(s + i + half),
                                    kd_load_kept(row->kept_a, i + half, kept_single),
                                    kd_load_kept(row->kept_w, i + half, kept_single), constants, finish, same, mode,
                                    value_only, sum);
}

/* The whole steps of the second pass's classes [*i, end) in float32 lanes, their sums widened into
 * the block's every KD_SINGLE_RUN steps; a step they cannot take exactly takes the double terms
 * (in a same-mask row every chunk of which fitted, the classes both sides mask have kept e^a = 0,
 * and add 0). variant: the row's shape of weights (KD_DIV(single_second).variant), a constant. */
KD_INLINE void KD_FN(single_second_steps)(const KD_REAL *t, const KD_REAL *s, ptrdiff_t *i, ptrdiff_t end,
                                          const kd_grad_row *row, const KD_DIV(row) *constants,
                                          const KD_DIV(finished) *finish, const kd_same_mask_row *same,
                                          const KD_DIV(single_second) *single, const int mode,
                                          const int value_only, const int variant, const int kept_single,
                                          kd_block_sums *block)
{
    ptrdiff_t j = *i;
    while (j + KD_STEP <= end) {
        kd_vs lane_sum[KD_DIV_SECOND_SUMS];
        for (int k = 0; k < KD_DIV_SECOND_SUMS; k++)
            lane_sum[k] = kd_splat_single(0.0f);
        for (int step = 0; step < KD_SINGLE_RUN && j + KD_STEP <= end; step++, j += KD_STEP) {
            const kd_vd ea0 = kd_load_kept(row->kept_a, j, kept_single);
            const kd_vd ea1 = kd_load_kept(row->kept_a, j + KD_LANES, kept_single);
            const kd_vd w0 = kd_load_kept(row->kept_w, j, kept_single);
            const kd_vd w1 = kd_load_kept(row->kept_w, j + KD_LANES, kept_single);
            if (!KD_DIV(single_second_terms)(ea0, ea1, w0, w1, finish, single, value_only,
                                             mode == KD_SAME_MASK_FITS, variant, lane_sum, block->sum))
                KD_FN(second_step_in_double)(t, s, j, row, constants, finish, same, mode, value_only, kept_single,
                                             block->sum);
        }
        for (int k = 0; k < KD_DIV_SECOND_SUMS; k++) {
            kd_vd low, high;
            kd_widen_halves(lane_sum[k], &low, &high);
            block->sum[k] += (low + high) * KD_DIV(single_second_unscale);
        }
    }
    *i = j;
}
#endif

/* The second pass over n classes in one mode (KD_MODERATE: every logit in the cheap range), from
 * kept values of the format kept_single says. */
KD_INLINE void KD_FN(second_chunk)(const KD_REAL *t, const KD_REAL *s, ptrdiff_t n, const kd_grad_row *row,
                                   const KD_DIV(row) *constants, const KD_DIV(finished) *finish,
                                   const kd_same_mask_row *same, const int mode, const int value_only,
                                   const int kept_single, kd_row_sums *out)
{
#if !KD_LIBM && !KD_EXP_FOR_DOUBLE && KD_DIV_SINGLE_SECOND
    const KD_DIV(single_second) single = KD_DIV(single_second_row)(finish); /* the row's, once */
#endif
    for (ptrdiff_t start = 0; start < n; start += KD_BLOCK) {
        const ptrdiff_t len = n - start < KD_BLOCK ? n - start : KD_BLOCK;
        kd_block_sums block;
        for (int k = 0; k < KD_DIV_SECOND_SUMS; k++)
            block.sum[k] = kd_splat(0.0);
        ptrdiff_t i = start;
#if !KD_LIBM && !KD_EXP_FOR_DOUBLE && KD_DIV_SINGLE_SECOND
        if (mode == KD_MODERATE || mode == KD_SAME_MASK_FITS) {
            /* one copy of the loop per shape of the weights the row declares (at most four) */
#define KD_SINGLE_STEPS(v)                                                                         \
    KD_FN(single_second_steps)(t, s, &i, start + len, row, constants, finish, same, &single, mode, value_only, v, \
                               kept_single, &block)
            _Static_assert(KD_DIV_SINGLE_SECOND_VARIANTS <= 4, "second_chunk compiles four variants at most");
            if (KD_DIV_SINGLE_SECOND_VARIANTS > 1 && single.variant == 1)
                KD_SINGLE_STEPS(1);
            else if (KD_DIV_SINGLE_SECOND_VARIANTS > 2 && single.variant == 2)
                KD_SINGLE_STEPS(2);
            else if (KD_DIV_SINGLE_SECOND_VARIANTS > 3 && single.variant == 3)
                KD_SINGLE_STEPS(3);
            else
                KD_SINGLE_STEPS(0);
#undef KD_SINGLE_STEPS
        }
#endif
        for (; i < start + len; i += KD_LANES) {
            const int count = start + len - i < KD_LANES ? (int)(start + len - i) : KD_LANES;
            /* the tail padded with a class both mask: it adds 0 */
            const kd_vd tv = count == KD_LANES ? KD_LOAD(t + i) : KD_LOAD_PARTIAL(t + i, count, -INFINITY);
            const kd_vd sv = count == KD_LANES ? KD_LOAD(s + i) : KD_LOAD_PARTIAL(s + i, count, -INFINITY);
            /* the kept values cover the padding of the sums' pass, which adds 0 (e^a = 0) */
            KD_FN(second_terms_in_mode)(tv, sv, kd_load_kept(row->kept_a, i, kept_single),
                                        kd_load_kept(row->kept_w, i, kept_single), constants, finish, same, mode,
                                        value_only, block.sum);
        }
        kd_add_block(out, &block, KD_DIV_SECOND_SUMS);
    }
}

/* The second pass's sums over n <= KD_CHUNK classes (see kd_second_sums_fn). */
static void KD_FN(second_sums)(const void *t_in, const void *s_in, ptrdiff_t n, const kd_grad_row *row,
                               kd_row_sums *out)
{
    memset(out, 0, sizeof *out);
    const KD_DIV(finished) finish = KD_DIV(finish_splat)(&row->finish);
    const KD_DIV(row) constants = KD_DIV(row_constants)(row->range.t_max, kd_student_reference(&row->range),
                                                        row->inv_T);
    /* each mode, value_only and format of the kept values (float32 only in moderate rows) a
     * constant in its own copy of the loop */
    const int mode = kd_row_mode(&row->range, row->inv_T);
    const kd_same_mask_row same = kd_same_mask_row_of(mode, row->range.t_max, kd_student_reference(&row->range),
                                                      row->inv_T);
#define KD_SECOND_IN(m, v, k) KD_FN(second_chunk)(t_in, s_in, n, row, &constants, &finish, &same, m, v, k, out)
    if (mode == KD_MODERATE && KD_KEPT_SINGLE && row->kept_single)
        row->value_only ? KD_SECOND_IN(KD_MODERATE, 1, 1) : KD_SECOND_IN(KD_MODERATE, 0, 1);
    else if (mode == KD_MODERATE)
        row->value_only ? KD_SECOND_IN(KD_MODERATE, 1, 0) : KD_SECOND_IN(KD_MODERATE, 0, 0);
    else if (mode == KD_SAME_MASK && row->finish.same_mask_fits)
        row->value_only ? KD_SECOND_IN(KD_SAME_MASK_FITS, 1, 0) : KD_SECOND_IN(KD_SAME_MASK_FITS, 0, 0);
    else if (mode == KD_SAME_MASK)
        row->value_only ? KD_SECOND_IN(KD_SAME_MASK, 1, 0) : KD_SECOND_IN(KD_SAME_MASK, 0, 0);
    else
        row->value_only ? KD_SECOND_IN(KD_GENERAL, 1, 0) : KD_SECOND_IN(KD_GENERAL, 0, 0);
#undef KD_SECOND_IN
}
#endif

/* sum_j e^(s_j - s_max) over a row of n classes, as top (classes at the maximum, each adding
 * exactly 1) + rest, so that log of it stays accurate when it is 1 + tiny. Lane sums over
 * blocks of KD_BLOCK classes, compensated across blocks. NaN, +inf, or a row all -inf makes
 * rest NaN. */
static void KD_FN(student_normaliser)(const void *s_in, ptrdiff_t n, double s_max, double *top,
                                      double *rest)
{
    const KD_REAL *s = s_in;
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
            sums += kd_keep(~at_top, kd_exp_wide(x, KD_EXP_FOR_DOUBLE));
        }
        count += kd_lane_count(tops);
        kd_add_compensated(&total, &error, kd_lane_sum(sums));
    }
    *top = count;
    *rest = isfinite(total) ? total + error : total;
}

#undef KD_KEPT_SINGLE
