/* The total-variation row of the divergence table: TVD = (1/2) sum |P - Q|.
 *
 * Two passes, as the mixture's (divergence_mixture.h): the first is KL's, whose finish gives P and
 * Q - P of each class from its kept values (Q - P = P (w - y) / (1 + y) where the classes are near:
 * accurate relative to itself as the student approaches the teacher; e^b / Z_Q - P elsewhere). The
 * second sums |Q - P| and, for the gradient, sum Q sgn(Q - P) and sum P sgn(Q - P).
 *
 * Gradient (times T^2, over the logits; sgn(0) = 0, the subgradient at a tie):
 *     d_s = T Q (sgn(Q - P) - sum Q sgn(Q - P)) / 2,  d_t = T P (sum P sgn(Q - P) - sgn(Q - P)) / 2.
 *
 * TVD is finite wherever P and Q exist; a row the first pass does not settle stays NaN.
 *
 * Included by target_impl.h after divergence_kl.h. */

enum { KD_TVD_ABS, KD_TVD_SQ, KD_TVD_SP, KD_TVD_SUMS };
enum { KD_TVD_EQ = KD_KL_CONSTANTS, KD_TVD_EP, KD_TVD_CONSTANTS };
_Static_assert(KD_TVD_SUMS <= KD_MAX_SUMS && KD_TVD_CONSTANTS <= KD_MAX_CONSTANTS,
               "kd_row_sums / kd_row_finish too small");

typedef kd_kl_row kd_tvd_row;
typedef kd_kl_terms kd_tvd_terms;
#define kd_tvd_row_constants kd_kl_row_constants
#define kd_tvd_lane_constants kd_kl_lane_constants
#define kd_tvd_class_terms kd_kl_class_terms
#if !KD_LIBM
typedef kd_kl_single_row kd_tvd_single_row;
typedef kd_kl_single_terms_of kd_tvd_single_terms_of;
#define kd_tvd_single_row_constants kd_kl_single_row_constants
#define kd_tvd_single_terms kd_kl_single_terms
#endif

typedef struct {
    kd_kl_finished kl;
    kd_vd value;     /* NaN: not settled by the formulas */
    kd_vd e_q, e_p;  /* sum Q sgn(Q - P) / 2 and sum P sgn(Q - P) / 2 (after the second pass) */
} kd_tvd_finished;

KD_INLINE kd_tvd_finished kd_tvd_finish_lanes(const kd_vd *sum, const double *weights)
{
    kd_tvd_finished out;
    out.kl = kd_kl_finish_lanes(sum, weights);
    out.value = kd_select(out.kl.value == out.kl.value, kd_splat(0.0), kd_splat(NAN));
    out.e_q = out.e_p = kd_splat(0.0);
    return out;
}

/* P, Q and sgn(Q - P) / 2 of KD_LANES classes. */
KD_INLINE kd_vd kd_tvd_class_values(kd_vd t, kd_vd s, kd_vd ea, kd_vd w, const kd_kl_row *constants,
                                    const kd_tvd_finished *row, const int mode, const int for_double,
                                    kd_vd *p, kd_vd *q, kd_vd *half_sign)
{
    kd_vd q_minus_p, unused;
    kd_kl_gradient_lanes(t, s, ea, w, constants, &row->kl, mode, for_double, &q_minus_p, &unused, q);
    *p = ea * row->kl.inv_zp;
    *half_sign = kd_select(q_minus_p > 0.0, kd_splat(0.5), kd_select(q_minus_p < 0.0, kd_splat(-0.5), kd_splat(0.0)));
    return q_minus_p;
}

/* value_only: |Q - P| alone (the compiler drops what only the gradient's sums need). */
KD_INLINE void kd_tvd_second_terms(kd_vd t, kd_vd s, kd_vd ea, kd_vd w, const kd_kl_row *constants,
                                   const kd_tvd_finished *row, const int mode, const int for_double,
                                   const int value_only, kd_vd *sum)
{
    kd_vd p, q, half_sign;
    const kd_vd q_minus_p = kd_tvd_class_values(t, s, ea, w, constants, row, mode, for_double, &p, &q, &half_sign);
    sum[KD_TVD_ABS] += kd_select(q_minus_p < 0.0, -q_minus_p, q_minus_p);
    if (!value_only) {
        sum[KD_TVD_SQ] += q * half_sign;
        sum[KD_TVD_SP] += p * half_sign;
    }
}

KD_INLINE void kd_tvd_second_finish_lanes(kd_tvd_finished *row, const kd_vd *sum)
{
    const kd_vd value = 0.5 * sum[KD_TVD_ABS];
    row->value = kd_select((row->value == row->value) & (value == value), value, kd_splat(NAN));
    row->e_q = sum[KD_TVD_SQ];
    row->e_p = sum[KD_TVD_SP];
}

KD_INLINE void kd_tvd_gradient_lanes(kd_vd t, kd_vd s, kd_vd ea, kd_vd w, const kd_kl_row *constants,
                                     const kd_tvd_finished *row, const int mode, const int for_double,
                                     kd_vd *student_direction, kd_vd *teacher_direction,
                                     kd_vd *student_probability)
{
    kd_vd p, q, half_sign;
    kd_tvd_class_values(t, s, ea, w, constants, row, mode, for_double, &p, &q, &half_sign);
    *student_direction = q * (half_sign - row->e_q);
    *teacher_direction = p * (row->e_p - half_sign);
    *student_probability = q;
}

KD_INLINE void kd_tvd_finish_store(const kd_tvd_finished *lanes, int lane, kd_row_finish *out)
{
    kd_kl_finish_store(&lanes->kl, lane, out);
    out->value = lanes->value[lane];
    out->constant[KD_TVD_EQ] = lanes->e_q[lane];
    out->constant[KD_TVD_EP] = lanes->e_p[lane];
}

KD_INLINE kd_tvd_finished kd_tvd_finish_splat(const kd_row_finish *f)
{
    kd_tvd_finished out;
    out.kl = kd_kl_finish_splat(f);
    out.value = kd_splat(f->value);
    out.e_q = kd_splat(f->constant[KD_TVD_EQ]);
    out.e_p = kd_splat(f->constant[KD_TVD_EP]);
    return out;
}
