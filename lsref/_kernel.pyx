# Design
# ======
# What is computed, per row z (length K) of a C-contiguous (N, K) logit array:
#
#   m   = max_k z_k                      d_k = z_k - m  (<= 0)
#   se  = sum_k exp(d_k)                 L   = log(se)      lse = m + L
#
# A smoothed target is q_k = beta + (q_t - beta)*[k == t] for a class index t (both smoothing
# forms fit: "uniform" has q_t = 1-eps+eps/K, beta = eps/K; "others" has q_t = 1-eps,
# beta = eps/(K-1)), or q_k = a*P_k + beta for a probability row P (a = 1-eps, beta = eps/K).
# With class weights w (default 1, W = sum_k w_k), a row weight s (sample weight times the
# 1/D of a "mean") and z-loss coefficient lam, the row loss and gradient are
#
#   loss = s * sum_k w_k q_k (lse - z_k) + s*lam*lse**2
#   g_j  = s * [(sum_k w_k q_k + 2*lam*lse) * p_j - w_j q_j],    p_j = exp(d_j) / se
#
# and sum_k w_k q_k (lse - z_k) needs only L, d_t, U = sum_k w_k d_k (and for probability
# rows sum_k w_k P_k d_k): so one sweep computes the statistics, writing exp(d_k) into the
# gradient row as scratch, and a second sweep rescales it while the row is still in cache.
#
# Why it is written this way:
# - Per-row helpers are `cdef inline ... noexcept nogil` over raw row pointers; the loops over
#   rows are hand-written prange loops (as scikit-learn's _loss does), with the weighted and
#   unweighted variants as separate loops rather than a branch per element.
# - Every output is per row (loss_out[i], the gradient row i). No reduction happens inside a
#   parallel loop: the front door sums loss_out with NumPy, so results are bit-identical for
#   every n_threads.
# - Sums are accumulated in double for float32 storage too; exp(d_k) is evaluated in the
#   storage precision (expf for float32: its error is ~1 ulp of a float32, below what a float32
#   result can show).
# - A term whose coefficient is zero is skipped, never multiplied: 0 * inf is taken as 0
#   (a masked class, z_k = -inf, with zero target mass contributes nothing).
# - Reading z_t before the first write and reading each z_k before writing g_k makes an
#   in-place gradient (grad_out is the logits buffer) safe.
# - This module never validates and never allocates: lsref/loss.py does both.

from cython.parallel cimport prange
from libc.math cimport exp, expf, log, log1p, INFINITY, NAN, isfinite, isnan
from libc.stdint cimport int64_t
from libc.string cimport memset

ctypedef fused floating:
    float
    double

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    #define LSREF_OPENMP 1
    #define lsref_omp_max_threads() omp_get_max_threads()
    #else
    #define LSREF_OPENMP 0
    #define lsref_omp_max_threads() 1
    #endif
    #ifndef LSREF_BUILD_FLAGS
    #define LSREF_BUILD_FLAGS "unknown"
    #endif
    #if defined(__clang__)
    #define LSREF_COMPILER "clang " __clang_version__
    #elif defined(__GNUC__)
    #define LSREF_COMPILER "gcc " __VERSION__
    #elif defined(_MSC_VER)
    #define LSREF_COMPILER "msvc"
    #else
    #define LSREF_COMPILER "unknown"
    #endif
    """
    int LSREF_OPENMP
    int lsref_omp_max_threads() nogil
    const char *LSREF_BUILD_FLAGS
    const char *LSREF_COMPILER

OPENMP_ENABLED = bool(LSREF_OPENMP)
BUILD_FLAGS = LSREF_BUILD_FLAGS.decode()
COMPILER = LSREF_COMPILER.decode()


def omp_max_threads():
    """Number of threads OpenMP would use by default (1 without OpenMP)."""
    return lsref_omp_max_threads()


ctypedef struct row_stats:
    double m      # max_k z_k (its storage value, widened)
    double se     # sum_k exp(z_k - m)
    double u      # sum_k w_k (z_k - m) over w_k != 0
    double up     # probability rows: sum_k w_k P_k (z_k - m) over w_k P_k != 0
    double sp     # probability rows: sum_k w_k P_k


# ---------------------------------------------------------------------------------------------
# Per-row helpers
# ---------------------------------------------------------------------------------------------

cdef inline double _row_max(const floating *z, Py_ssize_t K) noexcept nogil:
    """max_k z_k; NaN entries are passed over here (they surface in the sum of exps)."""
    cdef floating m = -INFINITY
    cdef Py_ssize_t k
    for k in range(K):
        if z[k] > m:
            m = z[k]
    return m


cdef inline floating _exp(floating x) noexcept nogil:
    if floating is float:
        return expf(x)
    else:
        return exp(x)


cdef inline double _log_se(const floating *z, Py_ssize_t K, double m, double se,
                           const floating *e) noexcept nogil:
    """L = log(se) = lse - m, accurate also when one class dominates.

    The max term of se is exactly 1 (exp(0)); when se < 2, log(se) = log(1 + delta) has lost
    the low bits of delta to the rounding of 1 + delta, and the row's loss can be of size
    delta. There, sum the other terms again and take log1p (Blanchard, Higham & Higham 2021).
    Without e the exps are recomputed from z in double (z_k - m exactly, exp in double), so
    a float32 row's small loss carries no float32 rounding of z_k - m; the term left out is
    the first z_k equal to m. With e (only for an in-place gradient, where z is already
    overwritten by its float exps) the stored values are summed, leaving out the first 1."""
    cdef double rest = 0.0
    cdef bint skipped = False
    cdef Py_ssize_t k
    if not (se < 2.0):                     # NaN too: nothing to refine
        return log(se)
    if e != NULL:
        for k in range(K):
            if not skipped and e[k] == 1.0:
                skipped = True
            else:
                rest += e[k]
    else:
        for k in range(K):
            if not skipped and z[k] == m:
                skipped = True
            else:
                rest += exp(<double> z[k] - m)
    return log1p(rest)


cdef inline row_stats _stats(const floating *z, Py_ssize_t K, const double *w,
                             floating *e) noexcept nogil:
    """se and U of one row (m filled in first); exp(z - m) goes to e when e is not NULL."""
    cdef row_stats st
    cdef floating m, d, ek
    cdef double se = 0.0, u = 0.0
    cdef Py_ssize_t k
    st.m = _row_max(z, K)
    m = <floating> st.m
    if w == NULL:
        if e != NULL:
            for k in range(K):
                d = z[k] - m
                ek = _exp(d)
                se += ek
                u += d
                e[k] = ek
        else:
            for k in range(K):
                d = z[k] - m
                se += _exp(d)
                u += d
    else:
        for k in range(K):
            d = z[k] - m
            ek = _exp(d)
            se += ek
            if w[k] != 0.0:
                u += w[k] * d
            if e != NULL:
                e[k] = ek
    st.se = se
    st.u = u
    st.up = 0.0
    st.sp = 0.0
    return st


cdef inline row_stats _stats_prob(const floating *z, const floating *P, Py_ssize_t K,
                                  const double *w, floating *e) noexcept nogil:
    """Like _stats, plus the target sums of a probability row."""
    cdef row_stats st
    cdef floating m, d, ek
    cdef double se = 0.0, u = 0.0, up = 0.0, sp = 0.0, wk, wp
    cdef Py_ssize_t k
    st.m = _row_max(z, K)
    m = <floating> st.m
    for k in range(K):
        d = z[k] - m
        ek = _exp(d)
        se += ek
        wk = 1.0 if w == NULL else w[k]
        wp = wk * P[k]
        if wk != 0.0:
            u += wk * d
        if wp != 0.0:
            up += wp * d
            sp += wp
        if e != NULL:
            e[k] = ek
    st.se = se
    st.u = u
    st.up = up
    st.sp = sp
    return st


cdef inline double _u_without(const floating *z, Py_ssize_t K, Py_ssize_t t, double m,
                              const double *w) noexcept nogil:
    """sum_{k != t} w_k (z_k - m): the rare path taken when z_t = -inf, where U - w_t*d_t
    would be inf - inf."""
    cdef double u = 0.0, wk
    cdef Py_ssize_t k
    for k in range(K):
        wk = 1.0 if w == NULL else w[k]
        if k != t and wk != 0.0:
            u += wk * (z[k] - m)
    return u


cdef inline void _fill(floating *g, Py_ssize_t K, floating value) noexcept nogil:
    cdef Py_ssize_t k
    for k in range(K):
        g[k] = value


cdef inline double _row_index(const floating *z, Py_ssize_t K, Py_ssize_t t,
                              double q_t, double beta, double W, const double *w,
                              double s, double lam, floating *g) noexcept nogil:
    """Loss of one row with class-index target t; writes the gradient row when g != NULL."""
    cdef double zt = z[t]                  # read before g (possibly z itself) is written
    cdef double w_t = 1.0 if w == NULL else w[t]
    cdef row_stats st = _stats(z, K, w, g)
    cdef double L, lse, d_t, u_other, loss, c, A, B, e_t
    cdef Py_ssize_t k
    if not isfinite(st.m):                 # every z_k = -inf, or some z_k = +inf
        if g != NULL:
            _fill(g, K, <floating> NAN)
        return NAN
    L = _log_se(z, K, st.m, st.se, g if <const floating *> g == z else NULL)
    lse = st.m + L
    d_t = zt - st.m
    loss = 0.0
    if q_t * w_t != 0.0:
        loss = q_t * w_t * (L - d_t)
    if beta != 0.0:
        if w_t == 0.0:
            u_other = st.u
        elif isfinite(d_t):
            u_other = st.u - w_t * d_t
        else:
            u_other = _u_without(z, K, t, st.m, w)
        loss += beta * ((W - w_t) * L - u_other)
    if lam != 0.0:
        loss += lam * lse * lse
    loss *= s
    if g != NULL:
        c = q_t * w_t + beta * (W - w_t)   # sum_k w_k q_k
        A = s * (c + 2.0 * lam * lse) / st.se
        B = s * beta
        e_t = g[t]
        if w == NULL:
            for k in range(K):
                g[k] = <floating> (A * g[k] - B)
        else:
            for k in range(K):
                g[k] = <floating> (A * g[k] - B * w[k])
        # the target class: the whole expression, not a correction of a rounded value
        g[t] = <floating> (A * e_t - s * q_t * w_t)
    return loss


cdef inline double _row_prob(const floating *z, const floating *P, Py_ssize_t K,
                             double a, double beta, double W, const double *w,
                             double s, double lam, floating *g) noexcept nogil:
    """Loss of one row with a probability target P (q = a*P + beta)."""
    cdef row_stats st = _stats_prob(z, P, K, w, g)
    cdef double L, lse, loss, c, A, wk
    cdef Py_ssize_t k
    if not isfinite(st.m):
        if g != NULL:
            _fill(g, K, <floating> NAN)
        return NAN
    L = _log_se(z, K, st.m, st.se, g if <const floating *> g == z else NULL)
    lse = st.m + L
    loss = 0.0
    if a != 0.0:
        loss = a * (st.sp * L - st.up)
    if beta != 0.0:
        loss += beta * (W * L - st.u)
    if lam != 0.0:
        loss += lam * lse * lse
    loss *= s
    if g != NULL:
        c = a * st.sp + beta * W
        A = s * (c + 2.0 * lam * lse) / st.se
        for k in range(K):
            wk = 1.0 if w == NULL else w[k]
            g[k] = <floating> (A * g[k] - s * wk * (a * P[k] + beta))
    return loss


# ---------------------------------------------------------------------------------------------
# Entry points (called by lsref/loss.py only; arguments are trusted)
# ---------------------------------------------------------------------------------------------

def ce_index(const floating[:, ::1] logits,      # IN  (N, K)
             const int64_t[::1] targets,         # IN  (N,)
             double q_t, double beta,
             const double[::1] class_weight,     # IN  (K,) or None
             double W,
             const double[::1] row_scale,        # IN  (N,) or None: sample weight
             double scale,                       # every row's factor (1/D for "mean")
             double z_loss,
             int64_t ignore_index, bint has_ignore,
             double[::1] loss_out,               # OUT (N,)
             floating[:, ::1] grad_out,          # OUT (N, K) or None; may be logits itself
             int n_threads):
    """Row losses (and gradient rows) of class-index targets."""
    cdef Py_ssize_t N = logits.shape[0], K = logits.shape[1], i
    cdef const double *w = NULL if class_weight is None else &class_weight[0]
    cdef const double *rs = NULL if row_scale is None else &row_scale[0]
    cdef bint want_grad = grad_out is not None
    cdef floating *g
    cdef int64_t t
    cdef double s
    if N == 0 or K == 0:
        return
    with nogil:
        for i in prange(N, schedule="static", num_threads=n_threads):
            t = targets[i]
            g = &grad_out[i, 0] if want_grad else NULL
            if has_ignore and t == ignore_index:
                loss_out[i] = 0.0
                if want_grad:
                    memset(g, 0, K * sizeof(floating))
            else:
                s = scale if rs == NULL else scale * rs[i]
                loss_out[i] = _row_index(&logits[i, 0], K, t, q_t, beta, W, w, s, z_loss, g)


def ce_prob(const floating[:, ::1] logits,       # IN  (N, K)
            const floating[:, ::1] probs,        # IN  (N, K)
            double a, double beta,
            const double[::1] class_weight,      # IN  (K,) or None
            double W,
            const double[::1] row_scale,         # IN  (N,) or None
            double scale,
            double z_loss,
            double[::1] loss_out,                # OUT (N,)
            floating[:, ::1] grad_out,           # OUT (N, K) or None; may be logits itself
            int n_threads):
    """Row losses (and gradient rows) of probability targets."""
    cdef Py_ssize_t N = logits.shape[0], K = logits.shape[1], i
    cdef const double *w = NULL if class_weight is None else &class_weight[0]
    cdef const double *rs = NULL if row_scale is None else &row_scale[0]
    cdef bint want_grad = grad_out is not None
    cdef floating *g
    cdef double s
    if N == 0 or K == 0:
        return
    with nogil:
        for i in prange(N, schedule="static", num_threads=n_threads):
            g = &grad_out[i, 0] if want_grad else NULL
            s = scale if rs == NULL else scale * rs[i]
            loss_out[i] = _row_prob(&logits[i, 0], &probs[i, 0], K, a, beta, W, w, s,
                                    z_loss, g)


def logsumexp_rows(const floating[:, ::1] x,     # IN  (N, K)
                   double[::1] out,              # OUT (N,)
                   int n_threads):
    """log(sum(exp(x))) of every row, with scipy.special.logsumexp's special values:
    -inf for a row of -inf, +inf for a row holding +inf, NaN for a row holding NaN."""
    cdef Py_ssize_t N = x.shape[0], K = x.shape[1], i
    cdef row_stats st
    if N == 0:
        return
    with nogil:
        for i in prange(N, schedule="static", num_threads=n_threads):
            st = _stats(&x[i, 0], K, NULL, <floating *> NULL)
            if isfinite(st.m):
                out[i] = st.m + _log_se(&x[i, 0], K, st.m, st.se, <floating *> NULL)
            else:
                out[i] = _nonfinite_max(&x[i, 0], K, st.m)


cdef inline double _nonfinite_max(const floating *z, Py_ssize_t K, double m) noexcept nogil:
    """The logsumexp of a row whose max is +-inf: that max, or NaN if the row holds a NaN."""
    cdef Py_ssize_t k
    for k in range(K):
        if isnan(z[k]):
            return NAN
    return m


def softmax_rows(const floating[:, ::1] x,      # IN  (N, K)
                 floating[:, ::1] out,          # OUT (N, K); may be x itself
                 bint log_space,
                 int n_threads):
    """softmax (log_space=False) or log_softmax (True) of every row."""
    cdef Py_ssize_t N = x.shape[0], K = x.shape[1], i, k
    cdef row_stats st
    cdef double inv, lse
    cdef floating *o
    if N == 0 or K == 0:
        return
    with nogil:
        for i in prange(N, schedule="static", num_threads=n_threads):
            o = &out[i, 0]
            if log_space:
                st = _stats(&x[i, 0], K, NULL, <floating *> NULL)
                lse = _log_se(&x[i, 0], K, st.m, st.se, <floating *> NULL)
                for k in range(K):
                    o[k] = <floating> ((x[i, k] - st.m) - lse)
            else:
                st = _stats(&x[i, 0], K, NULL, o)
                inv = 1.0 / st.se
                for k in range(K):
                    o[k] = <floating> (o[k] * inv)
