/* float32 lanes: the arithmetic of the sums' pass for inputs of float precision or less.
 *
 * A float32, float16 or bfloat16 row whose logits all lie within 80 T of their maxima (so every
 * exponential is a normal float32) takes its per-class terms in float32 vectors: twice the lanes
 * of double, and a shorter polynomial. Each term is accurate to a few float32 ulp relative to
 * itself (the cancellation-free forms carry over), lane sums run over at most KD_SINGLE_RUN terms
 * before they are widened into the double block sums, and the finish stays in double: a row's
 * value is within about 1e-7 of the exact one (README "Accuracy"; the project's target for
 * float32 inputs is 1e-6). The scalar target keeps libm in double (it is the tests' reference):
 * there only the types and loads serve, for the extrema of 2-byte inputs.
 *
 * Included by target_impl.h after vector_math.h.
 */
#ifndef KDLOSS_VECTOR_SINGLE_H
#define KDLOSS_VECTOR_SINGLE_H

#define KD_SINGLE_LANES (2 * KD_LANES) /* floats per vector: a whole register, one step of classes */
_Static_assert(KD_SINGLE_LANES == KD_STEP, "a float32 vector is one step of the double passes");

/* Vector steps a float32 lane sum takes before it is widened into double: at most four terms per
 * lane, so a lane sum rounds at most three times (relative error below 2e-7 for sums of terms of
 * one sign). */
#define KD_SINGLE_RUN 4

typedef float kd_vs __attribute__((vector_size(8 * KD_LANES)));
typedef int32_t kd_vsi __attribute__((vector_size(8 * KD_LANES)));

KD_INLINE kd_vs kd_splat_single(float x) { return (kd_vs){0} + x; }

KD_INLINE kd_vs kd_select_single(kd_vsi mask, kd_vs yes, kd_vs no)
{
    return (kd_vs)((mask & (kd_vsi)yes) | (~mask & (kd_vsi)no));
}

KD_INLINE kd_vs kd_keep_single(kd_vsi mask, kd_vs x) { return (kd_vs)(mask & (kd_vsi)x); }

/* a * b + c, fused where the target has FMA (see kd_fma). */
#if defined(__GNUC__) && !defined(__clang__) && defined(__AVX512F__) && KD_LANES == 8
#define KD_SINGLE_FUSED 1
KD_INLINE kd_vs kd_fma_single(kd_vs a, kd_vs b, kd_vs c)
{
    return (kd_vs)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)c);
}
#elif defined(__GNUC__) && !defined(__clang__) && defined(__FMA__) && KD_LANES == 4
#define KD_SINGLE_FUSED 1
KD_INLINE kd_vs kd_fma_single(kd_vs a, kd_vs b, kd_vs c)
{
    return (kd_vs)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)c);
}
#elif defined(__clang__) && defined(__FMA__)
#define KD_SINGLE_FUSED 1
KD_INLINE kd_vs kd_fma_single(kd_vs a, kd_vs b, kd_vs c)
{
    return __builtin_elementwise_fma(a, b, c);
}
#else
#define KD_SINGLE_FUSED 0
KD_INLINE kd_vs kd_fma_single(kd_vs a, kd_vs b, kd_vs c)
{
    return a * b + c;
}
#endif

/* a * b - p exactly, for p = a * b rounded (TwoProduct): one FMA where the target has it, else
 * Dekker's product of Veltkamp halves (the baseline target; 2^12 + 1 splits a float32). */
KD_INLINE kd_vs kd_product_error_single(kd_vs a, kd_vs b, kd_vs p)
{
#if KD_SINGLE_FUSED
    return kd_fma_single(a, b, -p);
#else
    const kd_vs ca = a * 4097.0f, a_hi = ca - (ca - a), a_lo = a - a_hi;
    const kd_vs cb = b * 4097.0f, b_hi = cb - (cb - b), b_lo = b - b_hi;
    return ((a_hi * b_hi - p) + a_hi * b_lo + a_lo * b_hi) + a_lo * b_lo;
#endif
}

/* KD_LANES floats as doubles (exact). */
KD_INLINE kd_vd kd_widen_single(kd_vf x)
{
#if defined(__GNUC__) && !defined(__clang__) && defined(__AVX512F__) && KD_LANES == 8
    return (kd_vd)_mm512_cvtps_pd((__m256)x);
#elif defined(__GNUC__) && !defined(__clang__) && defined(__AVX__) && KD_LANES == 4
    return (kd_vd)_mm256_cvtps_pd((__m128)x);
#else
    return __builtin_convertvector(x, kd_vd);
#endif
}

/* The lower and upper halves of a float32 vector, as doubles. The x86 targets split and join
 * halves in registers: through memory, GCC 12 stores two halves and loads them as one vector, a
 * load that store forwarding cannot serve (the float32 mixture pass's hottest instructions). */
KD_INLINE void kd_widen_halves(kd_vs x, kd_vd *low, kd_vd *high)
{
#if defined(__GNUC__) && !defined(__clang__) && defined(__AVX512F__) && KD_LANES == 8
    *low = (kd_vd)_mm512_cvtps_pd(_mm512_castps512_ps256((__m512)x));
    *high = (kd_vd)_mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd((__m512d)x, 1)));
#elif defined(__GNUC__) && !defined(__clang__) && defined(__AVX__) && KD_LANES == 4
    *low = (kd_vd)_mm256_cvtps_pd(_mm256_castps256_ps128((__m256)x));
    *high = (kd_vd)_mm256_cvtps_pd(_mm256_extractf128_ps((__m256)x, 1));
#else
    kd_vf half[2];
    memcpy(half, &x, sizeof half);
    *low = kd_widen_single(half[0]);
    *high = kd_widen_single(half[1]);
#endif
}

/* KD_LANES kept values from i as doubles (exact): float32 where the sums' pass kept them so
 * (single, a constant; kd_grad_row.kept_single), else double. */
KD_INLINE kd_vd kd_load_kept(const double *kept, ptrdiff_t i, const int single)
{
    if (!single)
        return kd_load_f64(kept + i);
    kd_vf x;
    memcpy(&x, (const float *)kept + i, sizeof x);
    return kd_widen_single(x);
}

/* A float32 vector stored at p as KD_SINGLE_LANES doubles, each half one whole store (through an
 * array of halves, GCC copied it 16 bytes at a time). */
KD_INLINE void kd_store_widened(double *p, kd_vs x)
{
    kd_vd low, high;
    kd_widen_halves(x, &low, &high);
    memcpy(p, &low, sizeof low);
    memcpy(p + KD_LANES, &high, sizeof high);
}

/* Two vectors of doubles as one float32 vector (rounded to nearest), low lanes first. */
KD_INLINE kd_vs kd_narrow_halves(kd_vd low, kd_vd high)
{
#if defined(__GNUC__) && !defined(__clang__) && defined(__AVX512F__) && KD_LANES == 8
    const __m512 first = _mm512_castps256_ps512(_mm512_cvtpd_ps((__m512d)low));
    const __m256 second = _mm512_cvtpd_ps((__m512d)high);
    return (kd_vs)_mm512_insertf64x4((__m512d)first, _mm256_castps_pd(second), 1);
#elif defined(__GNUC__) && !defined(__clang__) && defined(__AVX__) && KD_LANES == 4
    const __m256 first = _mm256_castps128_ps256(_mm256_cvtpd_ps((__m256d)low));
    return (kd_vs)_mm256_insertf128_ps(first, _mm256_cvtpd_ps((__m256d)high), 1);
#else
    const kd_vf half[2] = {__builtin_convertvector(low, kd_vf), __builtin_convertvector(high, kd_vf)};
    kd_vs out;
    memcpy(&out, half, sizeof out);
    return out;
#endif
}

/* KD_SINGLE_LANES stored elements as float32 (exact), per input dtype. */
KD_INLINE kd_vs kd_load_single_f32(const float *p)
{
    kd_vs v;
    memcpy(&v, p, sizeof v);
    return v;
}

typedef uint16_t kd_vsh __attribute__((vector_size(2 * KD_SINGLE_LANES)));
typedef uint32_t kd_vsu __attribute__((vector_size(8 * KD_LANES)));

KD_INLINE kd_vs kd_load_single_bf16(const uint16_t *p)
{
    kd_vsh h;
    memcpy(&h, p, sizeof h);
    return (kd_vs)(__builtin_convertvector(h, kd_vsu) << 16); /* the upper half of a float32 */
}

KD_INLINE kd_vs kd_load_single_f16(const uint16_t *p)
{
#if defined(__GNUC__) && !defined(__clang__) && defined(__F16C__) && defined(__AVX512F__) && KD_LANES == 8
    return (kd_vs)_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
#elif defined(__GNUC__) && !defined(__clang__) && defined(__F16C__) && KD_LANES == 4
    return (kd_vs)_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)); /* F16C: exact */
#else
    kd_vsh h;
    memcpy(&h, p, sizeof h);
    const kd_vsu word = __builtin_convertvector(h, kd_vsu);
    const kd_vsu magnitude = (word & 0x7fff) << 13; /* the bits of a float32 2^112 too small */
    const kd_vsu scaled = (kd_vsu)((kd_vs)magnitude * 0x1p112f); /* exact, subnormals included */
    const kd_vsi special = (kd_vsi)((word & 0x7c00) == 0x7c00); /* inf and NaN keep their bits */
    const kd_vsu bits = (kd_vsu)((special & (kd_vsi)(magnitude | 0x7f800000)) | (~special & (kd_vsi)scaled));
    return (kd_vs)(bits | ((word & 0x8000) << 16));
#endif
}

/* The first `count` (0 to KD_SINGLE_LANES) elements of p as float32, and `fill` in the other
 * lanes; reads nothing past p[count - 1]. Only a chunk's last step takes it. */
#define KD_SINGLE_PARTIAL_LOAD(name, type, widen)                                                  \
    KD_INLINE kd_vs name(const type *p, int count, float fill)                                    \
    {                                                                                              \
        float lanes[KD_SINGLE_LANES];                                                              \
        for (int i = 0; i < KD_SINGLE_LANES; i++)                                                  \
            lanes[i] = i < count ? (float)widen(p[i]) : fill;                                      \
        kd_vs v;                                                                                   \
        memcpy(&v, lanes, sizeof v);                                                               \
        return v;                                                                                  \
    }
KD_SINGLE_PARTIAL_LOAD(kd_load_partial_single_f32, float, (float))
KD_SINGLE_PARTIAL_LOAD(kd_load_partial_single_f16, uint16_t, kd_f16_value)
KD_SINGLE_PARTIAL_LOAD(kd_load_partial_single_bf16, uint16_t, kd_bfloat16_to_double)

/* exp in float32 for |x| <= 87: x = k ln(2) + r, |r| <= ln(2) / 2, e^r = 1 + r + r^2 q(r), q of
 * degree 5 (a least-squares Chebyshev fit made with mpmath at 40 digits, in float32
 * coefficients): q within 9e-9 relative of (e^r - 1 - r) / r^2, so e^r - 1 - r is accurate
 * relative to itself. Cody and Waite's two-part ln(2): k * KD_LN2_HIGH is exact for |k| < 2^15. */
static const float KD_EXP_Q_FLOAT[] = {
    0x1.a1516cp-13f, 0x1.6d431ap-10f, 0x1.1110c6p-7f, 0x1.5554eap-5f, 0x1.555556p-3f, 0x1.000000p-1f,
};
#define KD_LN2_HIGH 0x1.63p-1f          /* 0.693359375: 9 bits */
#define KD_LN2_LOW -0x1.bd0106p-13f     /* ln(2) - KD_LN2_HIGH */
#define KD_ROUND_MAGIC_FLOAT 12582912.0f /* 1.5 * 2^23: adding it rounds to an integer */

typedef struct {
    kd_vs k, r, small, scale; /* x = k ln 2 + r, small = e^r - 1 - r, scale = 2^k */
} kd_exp_reduced;

KD_INLINE kd_exp_reduced kd_exp_reduce_single(kd_vs x)
{
    kd_exp_reduced out;
    const kd_vs shifted = kd_fma_single(x, kd_splat_single(0x1.715476p+0f), kd_splat_single(KD_ROUND_MAGIC_FLOAT));
    out.k = shifted - KD_ROUND_MAGIC_FLOAT;
    const kd_vs r = kd_fma_single(-out.k, kd_splat_single(KD_LN2_HIGH), x); /* exact */
    out.r = kd_fma_single(-out.k, kd_splat_single(KD_LN2_LOW), r);
    kd_vs q = kd_splat_single(KD_EXP_Q_FLOAT[0]);
#pragma GCC unroll 8
    for (int i = 1; i < (int)(sizeof KD_EXP_Q_FLOAT / sizeof KD_EXP_Q_FLOAT[0]); i++)
        q = kd_fma_single(q, out.r, kd_splat_single(KD_EXP_Q_FLOAT[i]));
    out.small = out.r * (out.r * q);
    /* the low bits of shifted hold 2^22 + k: shifted into the exponent field, only k survives */
    out.scale = (kd_vs)(((kd_vsi)shifted << 23) + (kd_vsi)kd_splat_single(1.0f));
    return out;
}

/* e^(x + x_lo) for -87 <= x <= 0 (the scale 2^k is a normal float32 there) and a correction x_lo
 * of about 2^-24 x, within about 1 float32 ulp, for weights (a class's e^a, with a to double's
 * accuracy as x + x_lo): r = x - k ln(2) + x_lo, and q of degree 4 (1.1e-8). With FMA, ln(2) in
 * one float leaves r off by 1.9e-9 k (2.4e-7 of e^x at x = -87); without it, k ln(2) would round
 * (6e-8 |x| of e^x), so the baseline takes Cody and Waite's two-part ln(2), whose first product
 * is exact. */
static const float KD_EXP_Q_FLOAT_SHORT[] = {
    0x1.6d431ap-10f, 0x1.120b66p-7f, 0x1.5554eap-5f, 0x1.5554dcp-3f, 0x1.000000p-1f,
};
KD_INLINE kd_vs kd_exp_single(kd_vs x, kd_vs x_lo)
{
    const kd_vs shifted = kd_fma_single(x, kd_splat_single(0x1.715476p+0f), kd_splat_single(KD_ROUND_MAGIC_FLOAT));
    const kd_vs k = shifted - KD_ROUND_MAGIC_FLOAT;
#if KD_SINGLE_FUSED
    const kd_vs r = kd_fma_single(-k, kd_splat_single(0x1.62e430p-1f), x) + x_lo;
#else
    const kd_vs r_high = kd_fma_single(-k, kd_splat_single(KD_LN2_HIGH), x); /* exact */
    const kd_vs r = kd_fma_single(-k, kd_splat_single(KD_LN2_LOW), r_high) + x_lo;
#endif
    kd_vs q = kd_splat_single(KD_EXP_Q_FLOAT_SHORT[0]);
#pragma GCC unroll 8
    for (int i = 1; i < (int)(sizeof KD_EXP_Q_FLOAT_SHORT / sizeof KD_EXP_Q_FLOAT_SHORT[0]); i++)
        q = kd_fma_single(q, r, kd_splat_single(KD_EXP_Q_FLOAT_SHORT[i]));
    const kd_vs p = kd_fma_single(r, kd_fma_single(r, q, kd_splat_single(1.0f)), kd_splat_single(1.0f));
    return (kd_vs)((kd_vsi)p + ((kd_vsi)shifted << 23)); /* p 2^k: k into the exponent field */
}

/* e^x, e^x - 1 and e^x - 1 - x for |x| <= 87, each accurate relative to itself, with no case
 * split: with c = 2^k - 1,
 *     e^x - 1 - x = 2^k (e^r - 1 - r) + (c - k ln 2) + c r,
 * where c - k ln(2)_high is exact for the k that matter (|k| <= 2, where e^x - 1 - x is not much
 * larger than x's own terms), and each later rounding is relative to a partial sum no larger than
 * a few times the result. At k = 0 it is e^r - 1 - r itself; x = 0 gives exactly 1, 0, 0. */
KD_INLINE kd_vs kd_exp_minus_one_parts_single(kd_vs x, kd_vs *em1, kd_vs *f)
{
    const kd_exp_reduced e = kd_exp_reduce_single(x);
    const kd_vs c = e.scale - 1.0f;
    const kd_vs exact_part = kd_fma_single(-e.k, kd_splat_single(KD_LN2_HIGH), c);
    const kd_vs with_r = kd_fma_single(c, e.r, exact_part);
    const kd_vs rest = kd_fma_single(-e.k, kd_splat_single(KD_LN2_LOW), with_r);
    *f = kd_fma_single(e.scale, e.small, rest);
    *em1 = *f + x;
    return kd_fma_single(e.scale, e.small + e.r, e.scale);
}

#endif
