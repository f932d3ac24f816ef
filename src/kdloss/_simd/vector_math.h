/* Vector types and a vectorisable exp, in GCC/Clang vector extensions.
 *
 * Included by each target's translation unit after it sets KD_LANES (doubles per vector), so the
 * same source becomes SSE2, AVX2 or AVX-512 code. Everything here is static inline: each target
 * gets its own copy, compiled for its own instruction set. Plain IEEE arithmetic only (no
 * -ffast-math): inf, NaN and subnormals behave as in scalar code.
 */
#ifndef KDLOSS_VECTOR_MATH_H
#define KDLOSS_VECTOR_MATH_H

#include <stdint.h>
#include <string.h>

#ifndef KD_LIBM
#define KD_LIBM 0 /* 1: the scalar target (libm's exp and log, one lane) */
#endif

#define KD_INLINE static inline __attribute__((always_inline))

/* Everything here is inlined, so no vector crosses a function-call ABI (setup.py passes
 * -Wno-psabi to silence GCC's notes about vector arguments in the baseline target). */

typedef double kd_vd __attribute__((vector_size(8 * KD_LANES)));    /* KD_LANES doubles */
typedef int64_t kd_vi __attribute__((vector_size(8 * KD_LANES)));   /* lane masks, counts */
typedef float kd_vf __attribute__((vector_size(4 * KD_LANES)));     /* KD_LANES floats */

KD_INLINE kd_vd kd_splat(double x) { return (kd_vd){0} + x; }

/* mask ? yes : no, lane by lane (mask lanes are all ones or all zeros, as comparisons give). */
KD_INLINE kd_vd kd_select(kd_vi mask, kd_vd yes, kd_vd no)
{
    return (kd_vd)((mask & (kd_vi)yes) | (~mask & (kd_vi)no));
}

KD_INLINE kd_vd kd_keep(kd_vi mask, kd_vd x) { return (kd_vd)(mask & (kd_vi)x); }

/* KD_LANES elements from p, as doubles (unaligned loads; float -> double is exact). */
typedef double kd_vd_unaligned __attribute__((vector_size(8 * KD_LANES), aligned(1), may_alias));
typedef float kd_vf_unaligned __attribute__((vector_size(4 * KD_LANES), aligned(1), may_alias));

KD_INLINE kd_vd kd_load_f64(const double *p) { return *(const kd_vd_unaligned *)p; }

#if defined(__GNUC__) && !defined(__clang__) && (defined(__AVX512F__) || defined(__AVX__) || defined(__F16C__))
/* GCC 12 splits a float -> double vector conversion into halves; the intrinsic is one
 * instruction. (The target pragma of each file defines __AVX__ / __AVX512F__.) */
#include <immintrin.h>
#endif

KD_INLINE kd_vd kd_load_f32(const float *p)
{
#if defined(__GNUC__) && !defined(__clang__) && defined(__AVX512F__) && KD_LANES == 8
    return (kd_vd)_mm512_cvtps_pd(_mm256_loadu_ps(p));
#elif defined(__GNUC__) && !defined(__clang__) && defined(__AVX__) && KD_LANES == 4
    return (kd_vd)_mm256_cvtps_pd(_mm_loadu_ps(p));
#else
    return __builtin_convertvector(*(const kd_vf_unaligned *)p, kd_vd);
#endif
}

/* A portable partial load (as below) through memory, each element widened by `widen`. */
#define KD_PARTIAL_LOAD_BY_LANES(name, type, widen)                                                \
    KD_INLINE kd_vd name(const type *p, int count, double fill)                                   \
    {                                                                                              \
        double lanes[KD_LANES];                                                                    \
        for (int i = 0; i < KD_LANES; i++)                                                         \
            lanes[i] = i < count ? widen(p[i]) : fill;                                             \
        kd_vd v;                                                                                   \
        memcpy(&v, lanes, sizeof v);                                                               \
        return v;                                                                                  \
    }

/* The first `count` (0 to KD_LANES) elements of p as doubles, and `fill` in the other lanes.
 * Reads nothing past p[count - 1]. AVX2 and AVX-512 use masked loads; the portable version goes
 * through memory (and stalls store forwarding, which only the tail of a row pays). */
#if defined(__GNUC__) && !defined(__clang__) && defined(__AVX512F__) && KD_LANES == 8
KD_INLINE kd_vd kd_load_partial_f32(const float *p, int count, double fill)
{
    __m256 v = _mm256_mask_loadu_ps(_mm256_set1_ps((float)fill), (__mmask8)((1u << count) - 1), p);
    return (kd_vd)_mm512_cvtps_pd(v);
}
KD_INLINE kd_vd kd_load_partial_f64(const double *p, int count, double fill)
{
    return (kd_vd)_mm512_mask_loadu_pd(_mm512_set1_pd(fill), (__mmask8)((1u << count) - 1), p);
}
#elif defined(__GNUC__) && !defined(__clang__) && defined(__AVX2__) && KD_LANES == 4
KD_INLINE kd_vd kd_load_partial_f32(const float *p, int count, double fill)
{
    __m128i in = _mm_cmpgt_epi32(_mm_set1_epi32(count), _mm_setr_epi32(0, 1, 2, 3));
    __m128 v = _mm_blendv_ps(_mm_set1_ps((float)fill), _mm_maskload_ps(p, in), _mm_castsi128_ps(in));
    return (kd_vd)_mm256_cvtps_pd(v);
}
KD_INLINE kd_vd kd_load_partial_f64(const double *p, int count, double fill)
{
    __m256i in = _mm256_cmpgt_epi64(_mm256_set1_epi64x(count), _mm256_setr_epi64x(0, 1, 2, 3));
    return (kd_vd)_mm256_blendv_pd(_mm256_set1_pd(fill), _mm256_maskload_pd(p, in), _mm256_castsi256_pd(in));
}
#else
KD_PARTIAL_LOAD_BY_LANES(kd_load_partial_f32, float, (double))
KD_PARTIAL_LOAD_BY_LANES(kd_load_partial_f64, double, (double))
#endif

/* KD_LANES doubles rounded to float32 to odd (kd_float_rounded_to_odd, simd.h), lane by lane. */
KD_INLINE kd_vf kd_round_to_odd(kd_vd x)
{
    typedef int32_t kd_vi32 __attribute__((vector_size(4 * KD_LANES)));
    const kd_vf nearest = __builtin_convertvector(x, kd_vf);
    const kd_vd back = __builtin_convertvector(nearest, kd_vd);
    const kd_vi32 inexact = __builtin_convertvector((back != x) & (x == x), kd_vi32); /* -1 or 0 */
    /* rounded away from zero: above a positive x, below a negative one */
    const kd_vi32 away = __builtin_convertvector(((x > 0.0) & (back > x)) | ((x < 0.0) & (back < x)), kd_vi32);
    return (kd_vf)(((kd_vi32)nearest + away) | (inexact & 1)); /* + (-1): one step toward zero */
}

/* KD_LANES stored 2-byte values as doubles, widened exactly in registers. */
typedef uint16_t kd_vh __attribute__((vector_size(2 * KD_LANES)));
typedef uint32_t kd_vu32 __attribute__((vector_size(4 * KD_LANES)));

KD_INLINE kd_vd kd_widen_bfloat16(kd_vh h)
{
    kd_vu32 word = __builtin_convertvector(h, kd_vu32) << 16; /* the upper half of a float32 */
    return __builtin_convertvector((kd_vf)word, kd_vd);
}

KD_INLINE kd_vd kd_widen_float16(kd_vh h)
{
    kd_vu32 word = __builtin_convertvector(h, kd_vu32);
    kd_vu32 magnitude = (word & 0x7fff) << 13;            /* the bits of a float32 2^112 too small */
    kd_vu32 scaled = (kd_vu32)((kd_vf)magnitude * 0x1p112f); /* exact, subnormals included */
    typedef int32_t kd_mask32 __attribute__((vector_size(4 * KD_LANES)));
    kd_mask32 special = (kd_mask32)((word & 0x7c00) == 0x7c00); /* inf and NaN keep their bits */
    kd_vu32 bits = (kd_vu32)((special & (kd_mask32)(magnitude | 0x7f800000)) | (~special & (kd_mask32)scaled));
    return __builtin_convertvector((kd_vf)(bits | ((word & 0x8000) << 16)), kd_vd);
}

KD_INLINE kd_vd kd_load_bf16(const uint16_t *p)
{
    kd_vh h;
    memcpy(&h, p, sizeof h);
    return kd_widen_bfloat16(h);
}

KD_INLINE kd_vd kd_load_f16(const uint16_t *p)
{
#if defined(__GNUC__) && !defined(__clang__) && defined(__F16C__) && defined(__AVX512F__) && KD_LANES == 8
    return (kd_vd)_mm512_cvtps_pd(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)));
#elif defined(__GNUC__) && !defined(__clang__) && defined(__F16C__) && KD_LANES == 4
    return (kd_vd)_mm256_cvtps_pd(_mm_cvtph_ps(_mm_loadl_epi64((const __m128i *)p))); /* F16C: exact */
#else
    kd_vh h;
    memcpy(&h, p, sizeof h);
    return kd_widen_float16(h);
#endif
}

/* One stored float16 as a double, the way this target widens one value fastest: F16C's
 * conversion where it has it, else kd_float16_to_double's bits (both exact). Every per-value
 * widening of float16 goes through it: partial loads and the short rows' columns. */
KD_INLINE double kd_f16_value(uint16_t bits)
{
#if defined(__GNUC__) && !defined(__clang__) && defined(__F16C__)
    return _cvtsh_ss(bits);
#else
    return kd_float16_to_double(bits);
#endif
}

KD_PARTIAL_LOAD_BY_LANES(kd_load_partial_bf16, uint16_t, kd_bfloat16_to_double)
KD_PARTIAL_LOAD_BY_LANES(kd_load_partial_f16, uint16_t, kd_f16_value)

/* Sum of the lanes in a fixed order (a balanced tree). */
KD_INLINE double kd_lane_sum(kd_vd v)
{
    double lanes[KD_LANES];
    memcpy(lanes, &v, sizeof lanes);
    for (int width = KD_LANES / 2; width >= 1; width /= 2)
        for (int i = 0; i < width; i++)
            lanes[i] += lanes[i + width];
    return lanes[0];
}

/* exp(x) for x <= 0, in double: relative error about 1 ulp (2e-16) where for_double, and 5e-12
 * otherwise (for float32 inputs, whose results are rounded to float32).
 *
 * exp(x) = p 2^m with p = e^r (times a table entry), from x = k ln(2) / N + r. Two ways to get p:
 *  - N = 1: |r| <= ln(2) / 2, e^r = 1 + r (1 + r q(r)) with q a near-minimax polynomial of
 *    degree 9 (float64) or 6 (float32);
 *  - N = 16, on AVX-512 in float64: p = 2^(j / 16) e^r with j = k mod 16 looked up in a 16-entry
 *    table held in two registers (one permute), |r| <= ln(2) / 32, so q needs degree 4 only.
 * The polynomials are Chebyshev fits made with mpmath at 50 digits. Two ways to apply 2^m:
 *  - kd_exp_moderate, for -708 <= x <= 0: adds m to the exponent bits of p (cheapest; out of
 *    that range, or for NaN, the bits are garbage, so callers check the range first);
 *  - kd_exp_nonpositive, for any x <= 0, -inf or NaN: multiplies by 2^(m + 60), a normal number
 *    down to exp(-746) = 0, then by 2^-60, so the result rounds once, also into the subnormal
 *    range. NaN fails the clamp's comparison and stays NaN. */
#define KD_ROUND_MAGIC 6755399441055744.0 /* 1.5 * 2^52: adding it rounds to an integer */

/* a * b + c: one fused multiply-add where the target has FMA, else two roundings. The build
 * turns the compiler's own contraction off (-ffp-contract=off), so that each expression rounds
 * the same way wherever it is inlined: a class gives the same bits in every path that takes it. */
KD_INLINE kd_vd kd_fma(kd_vd a, kd_vd b, kd_vd c)
{
#if defined(__GNUC__) && !defined(__clang__) && defined(__AVX512F__) && KD_LANES == 8
    return (kd_vd)_mm512_fmadd_pd((__m512d)a, (__m512d)b, (__m512d)c);
#elif defined(__GNUC__) && !defined(__clang__) && defined(__FMA__) && KD_LANES == 4
    return (kd_vd)_mm256_fmadd_pd((__m256d)a, (__m256d)b, (__m256d)c);
#elif defined(__clang__) && defined(__FMA__)
    return __builtin_elementwise_fma(a, b, c);
#else
    return a * b + c;
#endif
}

/* Horner's rule over `count` coefficients, highest degree first (unrolled: count is constant). */
KD_INLINE kd_vd kd_horner(kd_vd r, const double *coefficients, const int count)
{
    kd_vd q = kd_splat(coefficients[0]);
#pragma GCC unroll 16
    for (int i = 1; i < count; i++)
        q = kd_fma(q, r, kd_splat(coefficients[i]));
    return q;
}

#define KD_COUNT(array) ((int)(sizeof(array) / sizeof(array[0])))

/* q(r) = (e^r - 1 - r) / r^2 for |r| <= ln(2) / 2, highest degree first. */
static const double KD_EXP_Q_DOUBLE[] = {
    0x1.af389eea54156p-26, 0x1.28917c9f3a495p-22, 0x1.71de0db2eb873p-19, 0x1.a019b914881bap-16,
    0x1.a01a01a7c2f2cp-13, 0x1.6c16c17889f3cp-10, 0x1.11111111109b5p-7, 0x1.5555555553d68p-5,
    0x1.5555555555556p-3, 0x1.0000000000001p-1,
};
static const double KD_EXP_Q_SINGLE[] = {
    0x1.a11313706b54dp-16, 0x1.a1516a0790f9dp-13, 0x1.6c1685918e3cfp-10, 0x1.1110c63a3c331p-7,
    0x1.5555555c85fc4p-5, 0x1.55555567506dep-3, 0x1.0000000000000p-1,
};

#if defined(__GNUC__) && !defined(__clang__) && defined(__AVX512F__) && KD_LANES == 8
#define KD_EXP_TABLE 1
/* q(r) = (e^r - 1 - r) / r^2 for |r| <= ln(2) / 32, highest degree first. */
static const double KD_EXP_Q_DOUBLE_SIXTEENTHS[] = {
    0x1.6c17bbcef4edbp-10, 0x1.11120b7404ab0p-7, 0x1.5555555519110p-5, 0x1.55555554dccc9p-3,
    0x1.0000000000000p-1,
};
/* 2^(j / 16), j = 0 .. 15, correctly rounded. */
static const double KD_EXP2_SIXTEENTHS[16] __attribute__((aligned(64))) = {
    0x1.0000000000000p+0, 0x1.0b5586cf9890fp+0, 0x1.172b83c7d517bp+0, 0x1.2387a6e756238p+0,
    0x1.306fe0a31b715p+0, 0x1.3dea64c123422p+0, 0x1.4bfdad5362a27p+0, 0x1.5ab07dd485429p+0,
    0x1.6a09e667f3bcdp+0, 0x1.7a11473eb0187p+0, 0x1.8ace5422aa0dbp+0, 0x1.9c49182a3f090p+0,
    0x1.ae89f995ad3adp+0, 0x1.c199bdd85529cp+0, 0x1.d5818dcfba487p+0, 0x1.ea4afa2a490dap+0,
};

/* kd_exp_parts to full double precision, with the table. */
KD_INLINE kd_vd kd_exp_parts_sixteenths(kd_vd x, kd_vi *m_bits)
{
    /* 16 / ln 2; k in the low bits */
    kd_vd shifted = kd_fma(x, kd_splat(0x1.71547652b82fep+4), kd_splat(KD_ROUND_MAGIC));
    kd_vd k = shifted - KD_ROUND_MAGIC;
    kd_vd r = kd_fma(-k, kd_splat(0x1.62e42fefa39efp-5), x); /* ln(2) / 16, fused: one rounding */
    r = r - k * 0x1.abc9e3b39803fp-60;      /* the rest of ln(2) / 16 */
    kd_vd q = kd_horner(r, KD_EXP_Q_DOUBLE_SIXTEENTHS, KD_COUNT(KD_EXP_Q_DOUBLE_SIXTEENTHS));
    /* The permute reads the low 4 bits of each index: k mod 16. */
    __m512d entry = _mm512_permutex2var_pd(_mm512_load_pd(KD_EXP2_SIXTEENTHS), (__m512i)shifted,
                                           _mm512_load_pd(KD_EXP2_SIXTEENTHS + 8));
    /* The low bits of shifted hold 2^51 + k; shifted right by 4, they hold 2^47 + floor(k / 16),
     * and shifted left by 52, only floor(k / 16) stays. */
    *m_bits = ((kd_vi)shifted >> 4) << 52;
    return (kd_vd)entry * kd_fma(r, kd_fma(r, q, kd_splat(1.0)), kd_splat(1.0));
}
#else
#define KD_EXP_TABLE 0
#endif

/* p and m with exp(x) = p 2^m, for x <= 0; m comes as m << 52, the bits to add to an exponent
 * field (garbage for NaN). */
KD_INLINE kd_vd kd_exp_parts(kd_vd x, const int for_double, kd_vi *m_bits)
{
#if KD_EXP_TABLE
    if (for_double) /* measured: 10% faster in float64; in float32, 5% slower than below */
        return kd_exp_parts_sixteenths(x, m_bits);
#endif
    kd_vd shifted = kd_fma(x, kd_splat(1.4426950408889634), kd_splat(KD_ROUND_MAGIC)); /* 1 / ln 2; k in the low bits */
    kd_vd k = shifted - KD_ROUND_MAGIC;
    kd_vd r, q;
    if (for_double) { /* Cody and Waite, exact without FMA: k * 6.93145751953125e-1 is exact */
        r = kd_fma(-k, kd_splat(6.93145751953125e-1), x); /* exact, fused or not */
        r = kd_fma(-k, kd_splat(1.42860682030941723212e-6), r);
        q = kd_horner(r, KD_EXP_Q_DOUBLE, KD_COUNT(KD_EXP_Q_DOUBLE));
    } else { /* |k| <= 1076: r off by at most 1076 * 2.3e-17 = 2.5e-14, below the fit's 5e-12 */
        r = kd_fma(-k, kd_splat(0x1.62e42fefa39efp-1), x);
        q = kd_horner(r, KD_EXP_Q_SINGLE, KD_COUNT(KD_EXP_Q_SINGLE));
    }
    *m_bits = (kd_vi)shifted << 52; /* the low bits hold 2^51 + k: only k survives the shift */
    return kd_fma(r, kd_fma(r, q, kd_splat(1.0)), kd_splat(1.0));
}

/* True when some lane of the mask (each lane all ones or all zeros) is set. GCC 12 turns the
 * portable loop into about 18 instructions on AVX-512 (a mask widened into a vector, then folded);
 * the test instructions take one or two. */
KD_INLINE int kd_any(kd_vi mask)
{
#if defined(__GNUC__) && !defined(__clang__) && defined(__AVX512F__) && KD_LANES == 8
    return _mm512_test_epi64_mask((__m512i)mask, (__m512i)mask) != 0;
#elif defined(__GNUC__) && !defined(__clang__) && defined(__AVX__) && KD_LANES == 4
    return !_mm256_testz_si256((__m256i)mask, (__m256i)mask);
#else
    int any = 0;
    for (int lane = 0; lane < KD_LANES; lane++)
        any |= mask[lane] != 0;
    return any;
#endif
}

#if KD_LIBM
/* The scalar target: the same functions from libm, lane by lane (one lane). An independent
 * reference for the polynomials above, and the target of compilers without vector extensions. */
#define KD_LANEWISE(x, expr)                                                                       \
    ({                                                                                             \
        kd_vd out_;                                                                                \
        for (int lane_ = 0; lane_ < KD_LANES; lane_++) {                                           \
            const double v = (x)[lane_];                                                           \
            out_[lane_] = (expr);                                                                  \
        }                                                                                          \
        out_;                                                                                      \
    })

KD_INLINE kd_vd kd_exp_moderate(kd_vd x, const int for_double)
{
    (void)for_double;
    return KD_LANEWISE(x, exp(v));
}

KD_INLINE kd_vd kd_exp_wide(kd_vd x, const int for_double)
{
    (void)for_double;
    return KD_LANEWISE(x, exp(v));
}

/* e^x - 1 - x without cancellation: a Taylor series (to x^16) for |x| < 1/4, else expm1(x) - x. */
static inline double kd_exp_minus_one_plus_scalar(double x)
{
    if (fabs(x) >= 0.25)
        return expm1(x) - x;
    double s = 1.0 / 355687428096000.0; /* 1/16! */
    static const double inverse_factorials[] = {
        1.0 / 1307674368000.0, 1.0 / 87178291200.0, 1.0 / 6227020800.0, 1.0 / 479001600.0,
        1.0 / 39916800.0, 1.0 / 3628800.0, 1.0 / 362880.0, 1.0 / 40320.0, 1.0 / 5040.0,
        1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5,
    };
    for (int i = 0; i < (int)(sizeof inverse_factorials / sizeof inverse_factorials[0]); i++)
        s = s * x + inverse_factorials[i];
    return s * x * x;
}

KD_INLINE kd_vd kd_exp_minus_one_parts(kd_vd x, const int for_double, const int wide, kd_vd *em1,
                                       kd_vd *f)
{
    (void)for_double;
    (void)wide;
    *em1 = KD_LANEWISE(x, expm1(v));
    *f = KD_LANEWISE(x, kd_exp_minus_one_plus_scalar(v));
    return KD_LANEWISE(x, exp(v));
}

KD_INLINE kd_vd kd_log_positive(kd_vd x) { return KD_LANEWISE(x, log(v)); }

static const double KD_LOG1P_SERIES[] = {
    -1.0 / 16.0, 1.0 / 15.0, -1.0 / 14.0, 1.0 / 13.0, -1.0 / 12.0, 1.0 / 11.0, -1.0 / 10.0,
    1.0 / 9.0, -1.0 / 8.0, 1.0 / 7.0, -1.0 / 6.0, 1.0 / 5.0, -1.0 / 4.0, 1.0 / 3.0, -0.5,
};
KD_INLINE kd_vd kd_log1p_minus_identity(kd_vd y)
{
    kd_vd series = kd_horner(y, KD_LOG1P_SERIES, KD_COUNT(KD_LOG1P_SERIES)) * y * y;
    kd_vd logged = KD_LANEWISE(y, log1p(v) - v);
    return kd_select((y < 0.0625) & (y > -0.0625), series, logged);
}
#else
KD_INLINE kd_vd kd_exp_moderate(kd_vd x, const int for_double)
{
    kd_vi m_bits;
    kd_vd p = kd_exp_parts(x, for_double, &m_bits);
    return (kd_vd)((kd_vi)p + m_bits);
}

KD_INLINE kd_vd kd_exp_nonpositive(kd_vd x, const int for_double)
{
    x = kd_select(x < -746.0, kd_splat(-746.0), x);
    kd_vi m_bits;
    kd_vd p = kd_exp_parts(x, for_double, &m_bits);
    return p * (kd_vd)(m_bits + (1083LL << 52)) * 0x1p-60; /* 2^(m + 60), then 2^-60 */
}

/* exp(x) for any x <= 709 (-inf gives 0, NaN stays NaN), rounded once also into the subnormal
 * range: p 2^m applied as two exact scalings 2^(m - m / 2) 2^(m / 2), each a normal number. Where
 * kd_exp_moderate applies it gives the same bits, so a row's values do not depend on which one ran. */
KD_INLINE kd_vd kd_exp_wide(kd_vd x, const int for_double)
{
    x = kd_select(x < -746.0, kd_splat(-746.0), x);
    kd_vi m_bits;
    kd_vd p = kd_exp_parts(x, for_double, &m_bits);
    kd_vi m = m_bits >> 52, half = m >> 1;
    return p * (kd_vd)((m - half + 1023) << 52) * (kd_vd)((half + 1023) << 52);
}

/* e^x, e^x - 1 and e^x - 1 - x together, for x in [-700, 700] (`wide`: any x <= 709, -inf, NaN),
 * each accurate relative to itself: where |x| <= ln(2) / 2 (k = 0) they come from r = x and the
 * polynomial's parts, so e^x - 1 - x = x^2 q(x) does not cancel; elsewhere from e^x, where the
 * subtractions lose at most a few ulp. The N = 1 reduction always, AVX-512's table too: with the
 * table, k = 0 only for |x| <= ln(2) / 32, and e^x - 1 - x lost up to 100 ulp just beyond that
 * (measured: float64 KL errors of 1e-13 instead of 1e-15, for 2% of speed). */
KD_INLINE kd_vd kd_exp_minus_one_parts(kd_vd x, const int for_double, const int wide, kd_vd *em1,
                                       kd_vd *f)
{
    kd_vd clamped = wide ? kd_select(x < -746.0, kd_splat(-746.0), x) : x;
    kd_vd shifted = kd_fma(clamped, kd_splat(1.4426950408889634), kd_splat(KD_ROUND_MAGIC));
    kd_vd k = shifted - KD_ROUND_MAGIC;
    kd_vd r, q;
    if (for_double) {
        r = kd_fma(-k, kd_splat(6.93145751953125e-1), clamped);
        r = kd_fma(-k, kd_splat(1.42860682030941723212e-6), r);
        q = kd_horner(r, KD_EXP_Q_DOUBLE, KD_COUNT(KD_EXP_Q_DOUBLE));
    } else {
        r = kd_fma(-k, kd_splat(0x1.62e42fefa39efp-1), clamped);
        q = kd_horner(r, KD_EXP_Q_SINGLE, KD_COUNT(KD_EXP_Q_SINGLE));
    }
    kd_vd small = r * (r * q); /* e^r - 1 - r */
    kd_vd r_em1 = small + r;   /* e^r - 1 */
    kd_vd p = r_em1 + 1.0;
    kd_vi m = (kd_vi)shifted - (kd_vi)kd_splat(KD_ROUND_MAGIC); /* same exponent: the bits differ by k */
    kd_vd e;
    if (wide) {
        kd_vi half = m >> 1;
        e = p * (kd_vd)((m - half + 1023) << 52) * (kd_vd)((half + 1023) << 52);
    } else {
        e = (kd_vd)((kd_vi)p + ((kd_vi)shifted << 52)); /* the low bits hold 2^51 + k: k survives */
    }
    kd_vi central = k == 0.0;
    *em1 = kd_select(central, r_em1, e - 1.0);
    *f = kd_select(central, small, (e - 1.0) - x);
    return e;
}

/* log(x) for finite normal x > 0, within 1 ulp: fdlibm's e_log.c algorithm, lane by lane.
 * x = 2^k m with m in [sqrt(2)/2, sqrt(2)), f = m - 1, s = f / (2 + f), and
 * log(m) = f - (f^2 / 2 - s (f^2 / 2 + R(s^2))), R a minimax polynomial (fdlibm's Lg1..Lg7). */
KD_INLINE kd_vd kd_log_positive(kd_vd x)
{
    typedef uint64_t kd_vu __attribute__((vector_size(8 * KD_LANES)));
    kd_vu bits = (kd_vu)x;
    kd_vi exponent = (kd_vi)(bits >> 52) - 1023;
    kd_vd m = (kd_vd)((bits & 0x000fffffffffffffULL) | 0x3ff0000000000000ULL); /* [1, 2) */
    kd_vi halve = m > 1.4142135623730951;
    m = kd_select(halve, m * 0.5, m);
    exponent -= halve; /* -1 where halved */
    kd_vd k = __builtin_convertvector(exponent, kd_vd);
    kd_vd f = m - 1.0;
    kd_vd s = f / (2.0 + f);
    kd_vd z = s * s, w = z * z;
    kd_vd r_even = w * (3.999999999940941908e-01 + w * (2.222219843214978396e-01 + w * 1.531383769920937332e-01));
    kd_vd r_odd = z * (6.666666666666735130e-01 + w * (2.857142874366239149e-01
                       + w * (1.818357216161805012e-01 + w * 1.479819860511658591e-01)));
    kd_vd r = r_odd + r_even;
    kd_vd half_f2 = 0.5 * f * f;
    return k * 6.93147180369123816490e-01 - ((half_f2 - (s * (half_f2 + r) + k * 1.90821492927058770002e-10)) - f);
}

/* log(1 + y) - y for y >= -1/2, accurate relative to itself also where it is tiny: a Taylor series
 * for |y| < 1/16 (terms to y^16 reach double precision), else log(u) y / (u - 1) - y with
 * u = 1 + y rounded (Goldberg 1991, theorem 4: the factor undoes the rounding of u). */
static const double KD_LOG1P_SERIES[] = {
    -1.0 / 16.0, 1.0 / 15.0, -1.0 / 14.0, 1.0 / 13.0, -1.0 / 12.0, 1.0 / 11.0, -1.0 / 10.0,
    1.0 / 9.0, -1.0 / 8.0, 1.0 / 7.0, -1.0 / 6.0, 1.0 / 5.0, -1.0 / 4.0, 1.0 / 3.0, -0.5,
};
KD_INLINE kd_vd kd_log1p_series(kd_vd y)
{
    return kd_horner(y, KD_LOG1P_SERIES, KD_COUNT(KD_LOG1P_SERIES)) * y * y;
}
KD_INLINE kd_vd kd_log1p_minus_identity(kd_vd y)
{
    kd_vi tiny = (y < 0.0625) & (y > -0.0625);
    if (!kd_any(~tiny)) /* every lane takes the series (a student close to its teacher) */
        return kd_log1p_series(y);
    kd_vd u = 1.0 + y;
    kd_vd safe_u = kd_select(u == 1.0, kd_splat(2.0), u); /* lanes that take the series */
    kd_vd logged = kd_log_positive(safe_u) * (y / (safe_u - 1.0)) - y;
    if (!kd_any(tiny)) /* no lane takes it: skip its 15-term chain (each lane's bits unchanged) */
        return logged;
    return kd_select(tiny, kd_log1p_series(y), logged);
}

#endif /* KD_LIBM */

#endif
