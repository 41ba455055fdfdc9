/* The row algebra of label-smoothed cross-entropy, written once for every kernel path: the
 * per-row functions of _kernel.pyx, the small-K blocks of _simd.h, and finish_index, which
 * finishes the merged statistics of lsref/sharded.py and lsref/dask.py.
 *
 * A row z (length K) is known by its statistics
 *     m = max_k z_k,   se = sum_k exp(z_k - m),   L = log(se) = lse - m,   d_t = z_t - m,
 *     U = sum_k w_k (z_k - m) over w_k != 0,      u_other = U - w_t d_t,
 * its class-index target q_k = beta + (q_t - beta) [k == t] (both smoothing forms), class
 * weights w (total W; W_other = W - w_t), a row factor s and the z-loss coefficient lam:
 *
 *     ce    = q_t w_t (L - d_t) + beta (W_other L - u_other)        = sum_k w_k q_k (lse - z_k)
 *     loss  = s [ce + minus_h + lam lse^2]        (minus_h = sum_k w_k q_k log q_k: KL form)
 *     g_j   = A exp(z_j - m) - s w_j q_j,         A = s (c + 2 lam lse) / se,
 *     c     = q_t w_t + beta W_other              = sum_k w_k q_k
 *
 * A term whose target factor is 0 is skipped, never multiplied: 0 * inf is 0 (a masked class,
 * z_k = -inf, with no target mass contributes nothing). The oracle (lsref/reference.py)
 * derives the same quantities on its own, element by element, as an independent witness.
 */
#ifndef LSREF_ROWTERMS_H
#define LSREF_ROWTERMS_H

#include <math.h>

/* x log x, with 0 log 0 = 0 */
static inline double lsref_xlogx(double x)
{
    return x > 0.0 ? x * log(x) : 0.0;
}

/* c = sum_k w_k q_k of a class-index row */
static inline double lsref_target_mass(double qw_t, double beta, double W_other)
{
    return qw_t + beta * W_other;
}

/* ce = sum_k w_k q_k (lse - z_k) of a class-index row */
static inline double lsref_ce_index(double L, double d_t, double qw_t, double beta,
                                    double W_other, double u_other)
{
    double ce = 0.0;
    if (qw_t != 0.0) ce = qw_t * (L - d_t);
    if (beta != 0.0) ce += beta * (W_other * L - u_other);
    return ce;
}

/* ce of a probability row q = a P + beta, from sp = sum_k w_k P_k, up = sum_k w_k P_k d_k
 * and U */
static inline double lsref_ce_prob(double L, double a, double beta, double W, double sp,
                                   double up, double u)
{
    double ce = 0.0;
    if (a != 0.0) ce = a * (sp * L - up);
    if (beta != 0.0) ce += beta * (W * L - u);
    return ce;
}

/* minus_h = sum_k w_k q_k log q_k of a class-index row (the KL form's constant) */
static inline double lsref_minus_entropy_index(double q_t, double w_t, double beta,
                                               double W_other)
{
    return w_t * lsref_xlogx(q_t) + W_other * lsref_xlogx(beta);
}

/* The KL form ce + minus_h has lost two or more of ce's digits: ce must then come from an
 * accurate L (the exact rest), not from log(se). */
static inline int lsref_kl_cancels(double ce, double minus_h)
{
    return minus_h != 0.0 && fabs(ce + minus_h) < 1e-2 * fabs(ce);
}

/* Almost all of the weighted target mass c sits on the row's max class (the mass elsewhere,
 * `other`, is below 1% of it): only then can the loss be tiny, since every other class k adds
 * its mass times lse - z_k >= log 2 when se < 2. There the loss is about c log(se), and
 * log(se) must come from an accurate rest (a row with more mass elsewhere has a loss
 * >= 0.69 * other, far above the ~1e-16 * c error of log(se)). */
static inline int lsref_mass_at_max(double other, double c)
{
    return fabs(other) < 1e-2 * fabs(c);
}

/* The row's loss from ce: the KL constant (0 without the KL form), the z-loss, the row factor */
static inline double lsref_row_loss(double ce, double minus_h, double lam, double lse,
                                    double s)
{
    double loss = ce;
    if (minus_h != 0.0) loss += minus_h;
    if (lam != 0.0) loss += lam * lse * lse;
    return loss * s;
}

/* A = s (c + 2 lam lse) / se: g_j = A exp(z_j - m) - s w_j q_j */
static inline double lsref_grad_factor(double s, double c, double lam, double lse, double se)
{
    return s * (c + 2.0 * lam * lse) / se;
}

/* The target's gradient from its stored exp e_t */
static inline double lsref_target_grad(double A, double e_t, double s, double qw_t)
{
    return A * e_t - s * qw_t;
}

/* The target's gradient in a dominated row (the target is the max, se < 2), where
 * s (c p_t - q_t w_t) with p_t ~ 1 cancels: with p_t = 1/se and 1 - p_t = rest/se it is
 * s (beta W_other + 2 lam lse - q_t w_t rest) / se, from the sum of the other terms. */
static inline double lsref_dominated_target_grad(double s, double beta, double W_other,
                                                 double lam, double lse, double qw_t,
                                                 double rest, double se)
{
    return s * (beta * W_other + 2.0 * lam * lse - qw_t * rest) / se;
}

#endif
