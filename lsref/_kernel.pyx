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
#   loss = s * sum_k w_k q_k (lse - z_k) + s*lam*lse**2   [+ s * sum_k w_k q_k log q_k (KL)]
#   g_j  = s * [(sum_k w_k q_k + 2*lam*lse) * p_j - w_j q_j],    p_j = exp(d_j) / se
#
# and sum_k w_k q_k (lse - z_k) needs only L, d_t, U = sum_k w_k d_k (and for probability
# rows sum_k w_k P_k d_k): so one sweep computes the statistics, writing exp(d_k) into the
# gradient row as scratch, and a second sweep rescales it while the row is still in cache.
# The algebra from those statistics to the loss and the gradient's factors is written once,
# in _rowterms.h, and every path uses it: the rows here, the small-K blocks of _simd.h, and
# finish_index (the merged statistics of lsref/sharded.py and lsref/dask.py). The
# coefficients (q_t, beta, W, 1/D) come from lsref/_params.py, in one KernelParams record.
#
# Why it is written this way:
# - Per-row helpers are `cdef inline ... noexcept nogil` over raw row pointers; the loops over
#   rows are hand-written prange loops (as scikit-learn's _loss does), with the weighted and
#   unweighted variants as separate loops rather than a branch per element.
# - Every output is per row (loss_out[i], the gradient row i). No reduction happens inside a
#   parallel loop: the front door sums loss_out with NumPy, so results are bit-identical for
#   every n_threads.
# - Storage and arithmetic are separate. `stored_in` is the logits' storage, `stored_out` the
#   gradient's: float32, float64, or 16-bit (float16 arrives viewed as uint16, bfloat16 as
#   int16: views, no copies; the integer type only selects the decoder). float64 is computed
#   in double; float32 and the 16-bit types in float (exp as expf), with every sum in double.
#   16-bit values are decoded exactly to float; results are rounded once to the output type
#   (double -> float with round-to-odd, then round-to-nearest-even, which equals a direct
#   correct rounding).
# - The gradient row serves as scratch for exp(d_k) only when it is float32/float64; a 16-bit
#   gradient would round the exps, so those rows evaluate exp a second time instead.
# - A term whose coefficient is zero is skipped, never multiplied: 0 * inf is taken as 0
#   (a masked class, z_k = -inf, with zero target mass contributes nothing).
# - Reading z_t before the first write and reading each z_k before writing g_k makes an
#   in-place gradient (grad_out is the logits buffer) safe.
# - This module never validates and never allocates: lsref/loss.py does both.
# - Ctrl-C stops a long call: in every parallel loop, thread 0 (the caller) asks Python for
#   pending signals every 50 ms (lsref_tick: a clock read every ~2**16 logits, the GIL only
#   then), and a KeyboardInterrupt ends the loop. One parallel region per call, not one per
#   block of rows: every region ends in a barrier where all threads wait for the slowest, and
#   on a loaded machine (threads descheduled) those waits dominate (asv: bench_loss.
#   LossGradient at n_threads > 1 measures it).
# - A process forked after the kernel ran threads (multiprocessing's "fork" start method,
#   PyTorch's DataLoader workers) cannot use the parent's OpenMP thread pool: GNU libgomp's
#   workers do not exist in the child and its first parallel region would wait for them
#   forever. Such a child runs every call on one thread (same results: they are bit-identical
#   for every thread count).
# - Row sums are blocked: a sum of a few hundred terms per block, then the blocks' sums, so a
#   row of 200k classes has the rounding error of ~1000 additions, not of 200k.

from cython.parallel cimport parallel, prange
from cpython.exc cimport PyErr_CheckSignals
from libc.math cimport exp, expf, log, log1p, fabs, INFINITY, NAN, isfinite, isnan
from libc.stdint cimport int64_t, uint16_t, int16_t, uint32_t
from libc.string cimport memset, memcmp, memchr
from cpython.mem cimport PyMem_Malloc, PyMem_Free
cimport numpy as cnp

import numpy as _np

cnp.import_array()

ctypedef fused stored_in:
    float
    double
    uint16_t       # float16 bits
    int16_t        # bfloat16 bits

ctypedef fused stored_out:
    float
    double
    uint16_t
    int16_t

ctypedef fused real_t:  # probability and binary targets
    float
    double

cdef extern from *:
    """
    #include <string.h>
    #include <math.h>
    #ifdef _OPENMP
    #include <omp.h>
    #define LSREF_OPENMP 1
    #define lsref_omp_max_threads() omp_get_max_threads()
    #else
    #define LSREF_OPENMP 0
    #define lsref_omp_max_threads() 1
    #endif
    #ifdef _OPENMP
    #define lsref_thread_num() omp_get_thread_num()
    #else
    #define lsref_thread_num() 0
    #endif

    /* When the calling thread should look for signals (Ctrl-C): after about 2**16 logits of
       its own rows, it reads the clock; every 50 ms it asks Python (taking the GIL, which
       every other thread of the call leaves alone). Only thread 0 of a parallel region,
       the caller itself, ticks. */
    #include <time.h>
    /* stop is read by every thread at every row, budget and next written by thread 0 only:
       64 bytes apart, on different cache lines (no false sharing) */
    typedef struct { int stop; char pad[64]; Py_ssize_t budget; double next; } lsref_ticker;
    static inline double lsref_now(void) {
        struct timespec ts;
        timespec_get(&ts, TIME_UTC);
        return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
    }
    static inline lsref_ticker lsref_ticker_new(void) {
        lsref_ticker t;
        t.budget = (Py_ssize_t)1 << 16;
        t.next = lsref_now() + 0.05;
        t.stop = 0;
        return t;
    }
    #if defined(__GNUC__) || defined(__clang__)
    #define LSREF_LOAD(x) __atomic_load_n(&(x), __ATOMIC_RELAXED)
    #define LSREF_STORE(x, v) __atomic_store_n(&(x), (v), __ATOMIC_RELAXED)
    #else
    #define LSREF_LOAD(x) (*(volatile int *)&(x))
    #define LSREF_STORE(x, v) (*(volatile int *)&(x) = (v))
    #endif
    /* a branch the rows rarely take: its code out of the hot path, nothing of it hoisted */
    #if defined(__GNUC__) || defined(__clang__)
    #define lsref_unlikely(x) __builtin_expect(!!(x), 0)
    #else
    #define lsref_unlikely(x) (x)
    #endif
    /* every thread: has the call been interrupted? */
    static inline int lsref_stopped(lsref_ticker *t) { return LSREF_LOAD(t->stop); }
    /* thread 0, holding the GIL: run Python's signal handlers; an exception they raise
       (KeyboardInterrupt) stays set, and every thread stops at its next row */
    static inline void lsref_check_signals(lsref_ticker *t) {
        if (PyErr_CheckSignals() < 0) LSREF_STORE(t->stop, 1);
    }
    static inline int lsref_tick(lsref_ticker *t, Py_ssize_t work) {
        double now;
        t->budget -= work;
        if (t->budget > 0) return 0;
        t->budget = (Py_ssize_t)1 << 16;
        now = lsref_now();
        if (now < t->next) return 0;
        t->next = now + 0.05;
        return 1;
    }

    #ifndef LSREF_BUILD_FLAGS
    #define LSREF_BUILD_FLAGS "unknown"
    #endif
    #ifndef LSREF_OPENMP_NOTE
    #define LSREF_OPENMP_NOTE ""
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

    /* IEEE binary16 -> binary32, exact (subnormals, inf and NaN included). */
    static inline float lsref_f16_to_f32(uint16_t h) {
        uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
        uint32_t e = (h >> 10) & 0x1fu, mant = h & 0x3ffu, bits;
        float out;
        if (e == 0) {
            out = (float)mant * 5.9604644775390625e-08f;      /* mant * 2^-24, exact */
            return sign ? -out : out;
        }
        if (e == 31) bits = sign | 0x7f800000u | (mant << 13);
        else bits = sign | ((e + 112u) << 23) | (mant << 13);
        memcpy(&out, &bits, 4);
        return out;
    }

    /* bfloat16 -> binary32: the top half of the float's bits, exact. */
    static inline float lsref_bf16_to_f32(int16_t b) {
        uint32_t bits = (uint32_t)(uint16_t)b << 16;
        float out;
        memcpy(&out, &bits, 4);
        return out;
    }

    /* double -> float rounded to odd: truncate toward zero and set the last bit if inexact.
       Rounding that to a format with at least two fewer significand bits (binary16: 11,
       bfloat16: 8) to nearest-even gives the correctly rounded result of the double. */
    static inline uint32_t lsref_round_to_odd_bits(double d) {
        float f = (float)d;
        uint32_t b;
        memcpy(&b, &f, 4);
        if (!isnan(d) && (double)f != d) {
            if (fabs((double)f) > fabs(d)) b -= 1u;
            b |= 1u;
        }
        return b;
    }

    static inline uint16_t lsref_to_f16(double d) {
        uint32_t x = lsref_round_to_odd_bits(d);
        uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
        uint32_t absx = x & 0x7fffffffu;
        if (absx >= 0x7f800000u)                                 /* inf, NaN */
            return sign | 0x7c00u | (absx > 0x7f800000u ? 0x200u : 0u);
        if (absx >= 0x477ff000u) return sign | 0x7c00u;          /* >= 65520: inf */
        if (absx < 0x38800000u) {                                /* < 2^-14: subnormal */
            float a;
            memcpy(&a, &absx, 4);
            return sign | (uint16_t)nearbyintf(a * 16777216.0f);  /* units of 2^-24, RNE */
        }
        uint32_t mant = absx & 0x7fffffu;
        uint32_t h = ((((absx >> 23) - 112u)) << 10) | (mant >> 13);
        uint32_t rem = mant & 0x1fffu;
        if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) h += 1u;
        return sign | (uint16_t)h;
    }

    static inline int16_t lsref_to_bf16(double d) {
        uint32_t x = lsref_round_to_odd_bits(d);
        if ((x & 0x7fffffffu) > 0x7f800000u) return (int16_t)(uint16_t)((x >> 16) | 0x40u);
        x += 0x7fffu + ((x >> 16) & 1u);
        return (int16_t)(uint16_t)(x >> 16);
    }
    """
    int LSREF_OPENMP
    int lsref_thread_num() nogil
    bint lsref_unlikely(bint) nogil
    ctypedef struct lsref_ticker:
        pass
    lsref_ticker lsref_ticker_new() nogil
    int lsref_tick(lsref_ticker *, Py_ssize_t) nogil
    int lsref_stopped(lsref_ticker *) nogil
    void lsref_check_signals(lsref_ticker *)
    int lsref_omp_max_threads() nogil
    const char *LSREF_BUILD_FLAGS
    const char *LSREF_OPENMP_NOTE
    const char *LSREF_COMPILER
    float lsref_f16_to_f32(uint16_t) nogil
    float lsref_bf16_to_f32(int16_t) nogil
    uint16_t lsref_to_f16(double) nogil
    int16_t lsref_to_bf16(double) nogil

cdef extern from "_simd.h" nogil:
    ctypedef struct lsref_simd_table:
        const char *name
        float (*max_f32)(const float *, Py_ssize_t) noexcept nogil
        double (*max_f64)(const double *, Py_ssize_t) noexcept nogil
        void (*expsum_f32)(const float *, Py_ssize_t, float, float *, double *,
                           double *) noexcept nogil
        void (*expsum_f64)(const double *, Py_ssize_t, double, double *, double *,
                           double *) noexcept nogil
        void (*affine_f32)(float *, Py_ssize_t, double, double) noexcept nogil
        void (*affine_f64)(double *, Py_ssize_t, double, double) noexcept nogil
        double (*rest_f32)(const float *, Py_ssize_t, double, float *) noexcept nogil
        double (*rest_sum_f32)(const float *, Py_ssize_t, double) noexcept nogil
        int f32_sum_run
    lsref_simd_table lsref_simd
    int lsref_simd_init(const char *force)
    ctypedef struct lsref_small_params:
        double q_t, beta, W, scale, lam, kl_const
        const double *row_scale
        int64_t ignore_index
        int has_ignore
        int refine_if_target_max, refine_if_other_max
        int stream
    int lsref_small_stream(const float *z, const float *g, size_t N, size_t K) noexcept nogil
    void lsref_store_fence() noexcept nogil
    void lsref_small_pair_f32(const float *z, Py_ssize_t b, Py_ssize_t nblocks, Py_ssize_t K,
                              const int64_t *t, const lsref_small_params *P, double *loss,
                              float *g, unsigned char *redo) noexcept nogil
    int lsref_small8_available() noexcept nogil
    Py_ssize_t lsref_count_ignored(const int64_t *t, Py_ssize_t n, int64_t K, int has_ignore,
                                   int64_t ign) noexcept nogil
    enum: LSREF_BLOCK_K
    enum: LSREF_STREAM_BYTES
    float lsref_exp_neg_f32(float) noexcept nogil
    void lsref_exp_neg_f32_array(const float *x, float *y, Py_ssize_t n) noexcept nogil
    int lsref_log_block_array(const double *x, double *y, Py_ssize_t n) noexcept nogil
    double lsref_exp_neg_f64(double) noexcept nogil


cdef extern from "_rowterms.h" nogil:
    # the row algebra (statistics -> loss and gradient factors), written once for every path
    double lsref_xlogx(double x) noexcept nogil
    double lsref_target_mass(double qw_t, double beta, double W_other) noexcept nogil
    double lsref_ce_index(double L, double d_t, double qw_t, double beta, double W_other,
                          double u_other) noexcept nogil
    double lsref_ce_prob(double L, double a, double beta, double W, double sp, double up,
                         double u) noexcept nogil
    double lsref_minus_entropy_index(double q_t, double w_t, double beta,
                                     double W_other) noexcept nogil
    bint lsref_kl_cancels(double ce, double minus_h) noexcept nogil
    bint lsref_mass_at_max(double other, double c) noexcept nogil
    double lsref_row_loss(double ce, double minus_h, double lam, double lse,
                          double s) noexcept nogil
    double lsref_grad_factor(double s, double c, double lam, double lse,
                             double se) noexcept nogil
    double lsref_target_grad(double A, double e_t, double s, double qw_t) noexcept nogil
    double lsref_dominated_target_grad(double s, double beta, double W_other, double lam,
                                       double lse, double qw_t, double rest,
                                       double se) noexcept nogil


def _init_simd():
    """Pick the row sweeps for this CPU; LSREF_SIMD=generic|avx2|avx512 forces a set."""
    import os
    force = os.environ.get("LSREF_SIMD", "").strip().lower()
    if lsref_simd_init(force.encode()) != 0:
        import warnings
        warnings.warn(f"LSREF_SIMD={force!r} is not available on this CPU (or build); using "
                      f"the generic sweeps", RuntimeWarning)
    return lsref_simd.name.decode()


SIMD_PATH = _init_simd()


def exp_neg(const double[::1] x, double[::1] out64, float[::1] out32):
    """The kernel's exp(x) for x <= 0 in double and in float (for the tests)."""
    cdef Py_ssize_t i
    for i in range(x.shape[0]):
        out64[i] = lsref_exp_neg_f64(x[i])
        out32[i] = lsref_exp_neg_f32(<float> x[i])


def exp_neg_f32_sweep(const float[::1] x, float[::1] out):
    """The float32 exp(x), x <= 0, of the sweeps selected for this CPU (for the tests)."""
    if out.shape[0] != x.shape[0]:
        raise ValueError("out must have the length of x")
    if x.shape[0] == 0:
        return
    lsref_exp_neg_f32_array(&x[0], &out[0], x.shape[0])


def log_block(const double[::1] x, double[::1] out):
    """The small-K blocks' vector log(x), x in [1, 2**1023) (for the tests); returns False
    (and writes nothing) where the blocks do not run (this build, this CPU, LSREF_SIMD)."""
    if out.shape[0] != x.shape[0]:
        raise ValueError("out must have the length of x")
    if x.shape[0] == 0:
        return True
    return lsref_log_block_array(&x[0], &out[0], x.shape[0]) == 0


# --- threads after fork, and interruptible calls -----------------------------------------------

cdef int _threads_started = 0     # this process has run a parallel region of more than 1 thread
cdef int _forked_child = 0        # ... and then forked: this is the child


def _after_fork_in_child():
    global _forked_child
    if _threads_started:
        _forked_child = 1


import os as _os
_os.register_at_fork(after_in_child=_after_fork_in_child)
del _os


def single_threaded_after_fork():
    """True in a process forked after its parent ran the kernel on several threads: such a
    process runs every call on one thread (OpenMP's thread pool does not survive fork)."""
    return bool(_forked_child)


cdef int _nt(int n_threads) noexcept:
    """The thread count a parallel loop may use: n_threads, or 1 in a forked child."""
    global _threads_started
    if _forked_child:
        return 1
    if n_threads > 1:
        _threads_started = 1
    return n_threads


cdef inline bint _interrupted(lsref_ticker *tk, int tid, Py_ssize_t work) noexcept nogil:
    """At the top of every row of a parallel loop: has a signal handler raised? Thread 0
    (the caller) asks Python every 50 ms (lsref_tick); every thread then skips its rows."""
    if lsref_stopped(tk):
        return True
    if tid == 0 and lsref_tick(tk, work):
        with gil:
            lsref_check_signals(tk)
    return lsref_stopped(tk)


cdef int _raise_pending() except -1:
    """Propagate the exception a signal handler left set (lsref_check_signals)."""
    return -1


# Parallel loops hand out their rows (or blocks) in chunks of about this many logits, to
# whichever thread is free (OpenMP's dynamic schedule), not in one fixed share per thread: on
# a shared machine a thread can start late or be descheduled, and with fixed shares the whole
# call then waits for it at the region's end barrier. Paired against fixed shares on a 2-core
# VM (benchmarks/ab.py, 2 threads) with a busy process beside them, median times: 262144 x 10
# 5.0 against 5.7 ms, 65536 x 100 5.4 against 6.7, 65536 x 1000 22 against 31; unloaded
# 0.97-1.03x. Each row's results do not depend on which thread computes it, so the results
# stay bit-identical for every n_threads. (The per-row finish of lsref.sharded, O(1) a row,
# keeps fixed shares.)
cdef enum:
    CHUNK_LOGITS = 262144


cdef inline Py_ssize_t _chunk(Py_ssize_t logits_per_item, Py_ssize_t n_items,
                              int nt) noexcept nogil:
    """Loop items per dynamic chunk: CHUNK_LOGITS' worth (rows of no logits: that many rows),
    but at most a sixteenth of each thread's share, so that a small call is still split
    (256 x 100 in one chunk took 2.1x the time of fixed shares on 2 threads) and the threads
    end together (to within a chunk)."""
    cdef Py_ssize_t c = CHUNK_LOGITS
    if logits_per_item >= 1:
        c = CHUNK_LOGITS // logits_per_item if logits_per_item < CHUNK_LOGITS else 1
    return max(1, min(c, n_items // (16 * nt)))


cdef inline Py_ssize_t _min(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    return a if a < b else b


OPENMP_ENABLED = bool(LSREF_OPENMP)
BUILD_FLAGS = LSREF_BUILD_FLAGS.decode()
OPENMP_NOTE = LSREF_OPENMP_NOTE.decode()    # why OpenMP is off (setup.py), or ""
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
    double qlq    # probability rows, KL form: sum_k w_k q_k log q_k


# ---------------------------------------------------------------------------------------------
# Storage: decode, exp in the compute precision, encode
# ---------------------------------------------------------------------------------------------

cdef inline double _ld(stored_in x) noexcept nogil:
    """A stored value, exactly, as a double."""
    if stored_in is uint16_t:
        return lsref_f16_to_f32(x)
    elif stored_in is int16_t:
        return lsref_bf16_to_f32(x)
    else:
        return x


cdef inline double _ex(stored_in x, double m) noexcept nogil:
    """exp(x - m): in double for float64 storage, else in float (x - m rounded to float)."""
    if stored_in is double:
        return exp(x - m)
    elif stored_in is float:
        return expf(x - <float> m)
    else:
        return expf(<float> _ld(x) - <float> m)


cdef inline void _st(stored_out *g, Py_ssize_t k, double v) noexcept nogil:
    """g[k] = v, rounded once to the output's storage."""
    if stored_out is uint16_t:
        g[k] = lsref_to_f16(v)
    elif stored_out is int16_t:
        g[k] = lsref_to_bf16(v)
    else:
        g[k] = <stored_out> v


def f16_from_double(const double[::1] x, uint16_t[::1] out):
    """Encode doubles as float16 bits (exposed so the tests can check the encoder)."""
    cdef Py_ssize_t i
    for i in range(x.shape[0]):
        out[i] = lsref_to_f16(x[i])


def bf16_from_double(const double[::1] x, int16_t[::1] out):
    """Encode doubles as bfloat16 bits (exposed so the tests can check the encoder)."""
    cdef Py_ssize_t i
    for i in range(x.shape[0]):
        out[i] = lsref_to_bf16(x[i])


# ---------------------------------------------------------------------------------------------
# Per-row helpers
# ---------------------------------------------------------------------------------------------

cdef inline double _row_max(const stored_in *z, Py_ssize_t K) noexcept nogil:
    """max_k z_k; NaN entries are passed over here (they surface in the sum of exps)."""
    cdef Py_ssize_t k
    cdef stored_in mf
    cdef double m = -INFINITY, v
    if stored_in is float or stored_in is double:
        mf = -INFINITY
        for k in range(K):
            if z[k] > mf:
                mf = z[k]
        return mf
    else:
        for k in range(K):
            v = _ld(z[k])
            if v > m:
                m = v
        return m


cdef enum:
    SUM_BLOCK = 256        # terms per block of a blocked row sum


cdef inline Py_ssize_t _first_max(const stored_in *z, Py_ssize_t K, double m) noexcept nogil:
    """The first k with z_k == m (m a finite max of the row)."""
    cdef Py_ssize_t k
    for k in range(K):
        if _ld(z[k]) == m:
            return k
    return 0


cdef inline double _rest_exact(const stored_in *z, Py_ssize_t K, double m) noexcept nogil:
    """rest = sum_k exp(z_k - m) without the first max term (exactly 1), from the logits in
    double (libm exp; z_k - m exact), blocked. se = 1 + rest and log(se) = log1p(rest) then
    keep the relative accuracy of a small rest, which 1 + rest rounded has lost (Blanchard,
    Higham & Higham 2021). Used where a vectorised float sum is not accurate enough: a
    dominated row's loss and target gradient, the KL form near the optimum."""
    cdef double rest = 0.0, part
    cdef bint skipped = False
    cdef Py_ssize_t k, k0
    if stored_in is float:                 # the same, vectorised (_simd.h)
        return lsref_simd.rest_f32(z, K, m, NULL)
    k0 = 0
    while k0 < K:
        part = 0.0
        for k in range(k0, _min(K, k0 + SUM_BLOCK)):
            if not skipped and _ld(z[k]) == m:
                skipped = True
            else:
                part += exp(_ld(z[k]) - m)
        rest += part
        k0 += SUM_BLOCK
    return rest


cdef inline double _rest_scratch(const stored_out *e, Py_ssize_t K) noexcept nogil:
    """rest from the exps already stored in the gradient row (the first 1.0 left out), summed
    in double, blocked: for an in-place gradient (the logits are gone) and for the target
    gradient of a dominated row (cheap: no exp)."""
    cdef double rest = 0.0, part
    cdef bint skipped = False
    cdef Py_ssize_t k, k0
    k0 = 0
    while k0 < K:
        part = 0.0
        for k in range(k0, _min(K, k0 + SUM_BLOCK)):
            if not skipped and e[k] == 1.0:
                skipped = True
            else:
                part += e[k]
        rest += part
        k0 += SUM_BLOCK
    return rest


cdef inline double _log_se(const stored_in *z, Py_ssize_t K, double m, double se) noexcept nogil:
    """log(se) = lse - m, from the exact rest where se < 2 (logsumexp, softmax)."""
    return log1p(_rest_exact(z, K, m)) if se < 2.0 else log(se)


cdef inline bint _float_rest_too_coarse(double rest, Py_ssize_t K, double s, double qw_t,
                                        double pull, double c, double lam,
                                        double lse) noexcept nogil:
    """Are the float exps e_k of a dominated float32 row (se = 1 + rest < 2, rest summed from
    them in double) whose target t is its max too coarse for its gradient? Each e_k is off
    by at most e_k (4e-7 + 2**-24 d_k), d_k = m - z_k: the float exponential with its
    rounding (3.3e-7 measured, tests/test_simd.py) and z_k - m rounded to float; those below
    exp(-87) are 0. Over the K - 1 others, sum_k e_k d_k <= rest log((K - 1) / rest) (equal
    terms are the worst case) and e_k (4e-7 + 2**-24 d_k) <= rest (4e-7 + 2**-24 log(1 /
    rest)) (it grows with e_k <= rest); so
      - rest is off by up to drest = rest (4e-7 + 2**-24 log((K - 1) / rest)) + K exp(-87),
        and g_t = s (pull - qw_t rest) / se by (|s| (|qw_t| + 2 |lam|) + |g_t|) drest / se
        (se and lse move with rest): large where pull cancels most of qw_t rest;
      - every other entry s (a e_k - beta w_k), a = (c + 2 lam lse) / se, by up to |s a| rest
        (4e-7 + 2**-24 log(1 / rest)): large where every class is far below the target and
        the gradient is as small as they are (no smoothing).
    Too coarse where either passes 0.9 of the 1e-6 bound (_tolerances.py; the rest is the
    result's own rounding to float) of |g_t| <= max|g|: the row's exps are then taken again
    in double. (Where max|g| is far below the terms a e_k and beta w_k, at the optimum, that
    rounding alone can exceed it: no float32 result does better, the term_scale of
    tests/support.py's assert_close_to_oracle.)"""
    cdef double se = 1.0 + rest
    cdef double g_t = fabs(s * (pull - qw_t * rest) / se), bound = 0.9e-6 * g_t
    cdef double far = log(1.0 / rest) if rest < 1.0 else 0.0
    cdef double drest = rest * (4e-7 + 5.9604644775390625e-08 * log(max(K - 1, 1) / rest)
                                ) + K * 1.6458114e-38
    return not ((fabs(s) * (fabs(qw_t) + 2.0 * fabs(lam)) + g_t) * drest / se <= bound
                and fabs(s * (c + 2.0 * lam * lse) / se) * rest
                    * (4e-7 + 5.9604644775390625e-08 * far) <= bound)     # NaN: too coarse


cdef inline bint _float_se_too_coarse(double se, Py_ssize_t K, double c,
                                      double loss) noexcept nogil:
    """Is se = sum_k exp(z_k - m) < 2 of an unweighted float32 row, as the float sweep summed
    it, too coarse for the row's loss? The sweep adds the exps in float partial sums: a term
    goes through up to run = min(K, f32_sum_run) float roundings (_simd.h), each off by at
    most 2**-24 of a partial sum <= se; the float exps themselves are off by up to rest (4e-7
    + 2**-24 log((K - 1) / rest)), rest = se - 1 (_float_rest_too_coarse). The loss moves by
    c times that over se. Near se = 1 the loss can be far below c (a dominated row, small
    smoothing) and one or two roundings of 1 + e_k are already too many: K = 300, eps = 0.02
    lost 1.2e-6 of the loss (AVX2; K = 3: 1.3e-6 generic). Too coarse where the bound passes
    0.9 of the 1e-6 bound of |loss| (_tolerances.py; the rest for the result's rounding);
    rest is then summed again with the max terms counted apart (rest_sum_f32). Rows with
    se >= 2 are not tested: their loss is >= c log(se) >= 0.69 c, so only many roundings all
    of one sign could matter (the property tests measure them). Not bounded here: the float
    sum of z_k - m (terms of one sign, as for every row)."""
    cdef double rest = se - 1.0 if se > 1.0 else 0.0
    cdef double run = <double> (K if K < lsref_simd.f32_sum_run else lsref_simd.f32_sum_run)
    cdef double allowed = 0.9e-6 * fabs(loss)
    cdef double dse
    # First, without a log, the same bound over se for 1 <= se < 2 (rest < 1, rest log((K - 1)
    # / rest) <= rest log(K - 1) + 1/e, log(K - 1) < min(K, 44)): most dominated rows whose max
    # is not the target have a large loss and stop here.
    if fabs(c) * (run * 5.9604644775390625e-08 + 4e-7
                  + 5.9604644775390625e-08 * (_min(K, 44) + 0.37)) <= allowed:
        return False
    allowed *= se
    dse = fabs(c) * (run * 5.9604644775390625e-08 * se + 4e-7 * rest)
    if rest > 0.0:
        dse += fabs(c) * 5.9604644775390625e-08 * rest * log(max(K - 1, 1) / rest)
    return not dse <= allowed                                         # NaN: too coarse


cdef inline row_stats _stats(const stored_in *z, Py_ssize_t K, const double *w,
                             stored_out *e) noexcept nogil:
    """m, se and U of one row; exp(z - m) goes to e when e is not NULL.

    Unweighted float32/float64 rows take the vectorised sweeps of _simd.h; the others are
    summed here, blocked."""
    cdef row_stats st
    cdef double m, ek, se = 0.0, u = 0.0, ps, pu
    cdef Py_ssize_t k, k0
    st.up = st.sp = st.qlq = 0.0
    if stored_in is float:
        if w == NULL and (e == NULL or stored_out is float):
            st.m = lsref_simd.max_f32(z, K)
            lsref_simd.expsum_f32(z, K, <float> st.m, <float *> e, &st.se, &st.u)
            return st
    elif stored_in is double:
        if w == NULL and (e == NULL or stored_out is double):
            st.m = lsref_simd.max_f64(z, K)
            lsref_simd.expsum_f64(z, K, st.m, <double *> e, &st.se, &st.u)
            return st
    st.m = m = _row_max(z, K)
    k0 = 0
    while k0 < K:
        ps = pu = 0.0
        for k in range(k0, _min(K, k0 + SUM_BLOCK)):
            ek = _ex(z[k], m)
            ps += ek
            if w == NULL:
                pu += _ld(z[k]) - m
            elif w[k] != 0.0:
                pu += w[k] * (_ld(z[k]) - m)
            if e != NULL:
                e[k] = <stored_out> ek
        se += ps
        u += pu
        k0 += SUM_BLOCK
    st.se = se
    st.u = u
    return st


cdef inline row_stats _stats_prob(const stored_in *z, const real_t *P, Py_ssize_t K,
                                  const double *w, double a, double beta, bint kl,
                                  stored_out *e) noexcept nogil:
    """Like _stats, plus the target sums of a probability row (and sum w q log q for KL)."""
    cdef row_stats st
    cdef double m, d, ek, wk, wp
    cdef double se = 0.0, u = 0.0, up = 0.0, sp = 0.0, qlq = 0.0
    cdef double bse, bu, bup, bsp, bqlq
    cdef Py_ssize_t k, k0
    st.m = m = _row_max(z, K)
    k0 = 0
    while k0 < K:
        bse = bu = bup = bsp = bqlq = 0.0
        for k in range(k0, _min(K, k0 + SUM_BLOCK)):
            ek = _ex(z[k], m)
            d = _ld(z[k]) - m
            bse += ek
            wk = 1.0 if w == NULL else w[k]
            wp = wk * P[k]
            if wk != 0.0:
                bu += wk * d
            if wp != 0.0:
                bup += wp * d
                bsp += wp
            if kl:
                bqlq += wk * lsref_xlogx(a * P[k] + beta)
            if e != NULL:
                e[k] = <stored_out> ek
        se += bse
        u += bu
        up += bup
        sp += bsp
        qlq += bqlq
        k0 += SUM_BLOCK
    st.se = se
    st.u = u
    st.up = up
    st.sp = sp
    st.qlq = qlq
    return st


cdef inline double _u_without(const stored_in *z, Py_ssize_t K, Py_ssize_t t, double m,
                              const double *w) noexcept nogil:
    """sum_{k != t} w_k (z_k - m), summed afresh: where z_t = -inf (U - w_t*d_t would be
    inf - inf) and for a tiny loss (U - w_t*d_t would keep the rounding error of w_t*d_t)."""
    cdef double u = 0.0, wk
    cdef Py_ssize_t k
    for k in range(K):
        wk = 1.0 if w == NULL else w[k]
        if k != t and wk != 0.0:
            u += wk * (_ld(z[k]) - m)
    return u


cdef inline void _fill_nan(stored_out *g, Py_ssize_t K) noexcept nogil:
    cdef Py_ssize_t k
    for k in range(K):
        _st(g, k, NAN)


cdef inline bint _scratch_ok(stored_out *g) noexcept nogil:
    """The gradient row may hold the exps between the sweeps (float32/float64 only)."""
    if stored_out is float or stored_out is double:
        return g != NULL
    else:
        return False


cdef inline double _row_index(const stored_in *z, Py_ssize_t K, Py_ssize_t t,
                              double q_t, double beta, double W, const double *w,
                              double s, double lam, bint kl, stored_out *g) noexcept nogil:
    """Loss of one row with class-index target t; writes the gradient row when g != NULL."""
    cdef double zt = _ld(z[t])            # read before g (possibly z itself) is written
    cdef double w_t = 1.0 if w == NULL else w[t]
    cdef bint scratch = _scratch_ok(g)
    cdef stored_out *e = g if scratch else NULL
    # after the stats sweep, an in-place gradient row holds exps, no longer the logits
    cdef bint z_gone = scratch and <const void *> g == <const void *> z
    cdef row_stats st = _stats(z, K, w, e)
    cdef double qw_t = q_t * w_t, W_other = W - w_t
    cdef double c = lsref_target_mass(qw_t, beta, W_other)     # sum_k w_k q_k
    cdef double L, lse, d_t, u_other, loss, A, B, e_t, se, minus_h = 0.0
    cdef double rest = -1.0                # sum of the non-max exps, where computed accurately
    cdef bint refine
    cdef Py_ssize_t k
    # The NaN rule comes first (SEMANTICS.md): every z_k = -inf (m = -inf), some z_k = +inf
    # (m = +inf) or a NaN (passed over by the max, it reaches se) make the row NaN whatever
    # its target mass.
    if lsref_unlikely(not isfinite(st.m) or isnan(st.se)):
        if g != NULL:
            _fill_nan(g, K)
        return NAN
    d_t = zt - st.m
    se = st.se
    # A dominated row (se < 2) whose target mass sits (almost) all on its max class: log(se)
    # needs the exact rest (_mass_at_max). Tested in an order that keeps ordinary rows off
    # branches on se (a coin flip per row).
    if d_t == 0.0:                         # the target is the max
        refine = lsref_mass_at_max(beta * W_other, c) and se < 2.0
    elif lsref_unlikely(fabs(qw_t) < 1e-2 * fabs(c) and se < 2.0):   # another class is
        refine = lsref_mass_at_max(qw_t + beta * (W_other - (      # the max, the target light
            1.0 if w == NULL else w[_first_max(z, K, st.m)] if not z_gone
            else w[_first_max(e, K, 1.0)])), c)
    else:
        refine = False
    if lsref_unlikely(refine):
        rest = _rest_scratch(e, K) if z_gone else _rest_exact(z, K, st.m)
    L = log1p(rest) if rest >= 0.0 else log(se)
    u_other = 0.0
    if beta != 0.0:
        if w_t == 0.0:
            u_other = st.u
        elif isfinite(d_t) and (rest < 0.0 or d_t == 0.0 or z_gone):
            u_other = st.u - w_t * d_t
        else:
            u_other = _u_without(z, K, t, st.m, w)
    loss = lsref_ce_index(L, d_t, qw_t, beta, W_other, u_other)
    # An unweighted float32 row summed by the float sweep (_stats), se < 2: its loss may be far
    # below the float partial sums' rounding of 1 + small terms (_float_se_too_coarse). Then
    # rest again, the max terms apart: from the logits (the sweep's float exps, the max terms
    # counted), or, in place, from the exps stored in the gradient row (summed in double).
    if stored_in is float:
        if (lsref_unlikely(se < 2.0) and rest < 0.0 and w == NULL
                and (stored_out is float or not scratch)
                and _float_se_too_coarse(se, K, c, loss)):
            # (from the logits where they are there, so that the loss-only call, which has no
            # stored exps, gives the same loss)
            rest = _rest_scratch(e, K) if z_gone else lsref_simd.rest_sum_f32(z, K, st.m)
            L = log1p(rest)
            loss = lsref_ce_index(L, d_t, qw_t, beta, W_other, u_other)
    if kl:                                 # minus H(q) = + sum_k w_k q_k log q_k
        minus_h = lsref_minus_entropy_index(q_t, w_t, beta, W_other)
        if lsref_kl_cancels(loss, minus_h) and rest < 0.0:
            rest = _rest_scratch(e, K) if z_gone else _rest_exact(z, K, st.m)
            L = log1p(rest)
            loss = lsref_ce_index(L, d_t, qw_t, beta, W_other, u_other)
    lse = st.m + L
    loss = lsref_row_loss(loss, minus_h, lam, lse, s)
    if g != NULL:
        # The target of a dominated row: g_t = s (c p_t - q_t w_t) with p_t ~ 1 cancels
        # (lsref_dominated_target_grad): from the sum of the other terms, the exps already in
        # the row or the logits.
        if lsref_unlikely(d_t == 0.0 and se < 2.0):
            if rest < 0.0:
                rest = _rest_scratch(e, K) if scratch else _rest_exact(z, K, st.m)
            # float32 logits: each stored exp carries up to ~4e-7 (expf) and 2**-24
            # |z_k - m| (z_k - m rounded to float), and so does their sum. Where that is too
            # much for the row's gradient, take its exps again in double from the exact
            # z_k - m (_float_rest_too_coarse).
            if stored_in is float and stored_out is float and scratch and not z_gone:
                if _float_rest_too_coarse(rest, K, s, qw_t,
                                          beta * W_other + 2.0 * lam * lse, c, lam, lse):
                    rest = lsref_simd.rest_f32(z, K, st.m, <float *> g)
        if rest >= 0.0:
            se = 1.0 + rest
        A = lsref_grad_factor(s, c, lam, lse, se)
        B = s * beta
        if scratch:
            e_t = _ld(g[t])
            if w == NULL and stored_out is float:
                lsref_simd.affine_f32(<float *> g, K, A, B)
            elif w == NULL and stored_out is double:
                lsref_simd.affine_f64(<double *> g, K, A, B)
            elif w == NULL:
                for k in range(K):
                    _st(g, k, A * _ld(g[k]) - B)
            else:
                for k in range(K):
                    _st(g, k, A * _ld(g[k]) - B * w[k])
        else:
            e_t = _ex(<stored_in> z[t], st.m)
            for k in range(K):            # z[k] is read before g[k] is written (in place)
                _st(g, k, A * _ex(z[k], st.m) - B * (1.0 if w == NULL else w[k]))
        # the target class: the whole expression, not a correction of a rounded value
        if d_t == 0.0 and rest >= 0.0:
            _st(g, t, lsref_dominated_target_grad(s, beta, W_other, lam, lse, qw_t, rest, se))
        else:
            _st(g, t, lsref_target_grad(A, e_t, s, qw_t))
    return loss


cdef inline double _row_prob(const stored_in *z, const real_t *P, Py_ssize_t K,
                             double a, double beta, double W, const double *w,
                             double s, double lam, bint kl, stored_out *g) noexcept nogil:
    """Loss of one row with a probability target P (q = a*P + beta)."""
    cdef bint scratch = _scratch_ok(g)
    cdef stored_out *e = g if scratch else NULL
    cdef bint z_gone = scratch and <const void *> g == <const void *> z
    cdef row_stats st = _stats_prob(z, P, K, w, a, beta, kl, e)
    cdef double c = a * st.sp + beta * W   # sum_k w_k q_k
    cdef double L, lse, loss, A, wk, ek, se = st.se, rest = -1.0
    cdef Py_ssize_t k, kmax
    if not isfinite(st.m) or isnan(st.se):   # the NaN rule first, as for class indices
        if g != NULL:
            _fill_nan(g, K)
        return NAN
    if se < 2.0:                           # as for class indices: mass (almost) all on the max
        kmax = _first_max(e, K, 1.0) if z_gone else _first_max(z, K, st.m)
        wk = 1.0 if w == NULL else w[kmax]
        if lsref_mass_at_max(c - wk * (a * P[kmax] + beta), c):
            rest = _rest_scratch(e, K) if z_gone else _rest_exact(z, K, st.m)
    L = log1p(rest) if rest >= 0.0 else log(se)
    loss = lsref_ce_prob(L, a, beta, W, st.sp, st.up, st.u)
    if kl:
        if lsref_kl_cancels(loss, st.qlq) and rest < 0.0:
            rest = _rest_scratch(e, K) if z_gone else _rest_exact(z, K, st.m)
            L = log1p(rest)
            loss = lsref_ce_prob(L, a, beta, W, st.sp, st.up, st.u)
    lse = st.m + L
    loss = lsref_row_loss(loss, st.qlq if kl else 0.0, lam, lse, s)
    if g != NULL:
        if rest >= 0.0:
            se = 1.0 + rest
        A = lsref_grad_factor(s, c, lam, lse, se)
        for k in range(K):
            wk = 1.0 if w == NULL else w[k]
            ek = _ld(g[k]) if scratch else _ex(z[k], st.m)
            _st(g, k, A * ek - s * wk * (a * P[k] + beta))
    return loss

# ---------------------------------------------------------------------------------------------
# Entry points (called by lsref/loss.py, sharded.py and dask.py only; arguments are trusted)
# ---------------------------------------------------------------------------------------------
#
# Each takes its arrays and one `params` record (a KernelParams, built once from a checked
# problem by lsref/_params.py): q_t, a, beta (the smoothed target), class_weight with its total
# W, sample_weight (per row, or None) and scale (1/D for "mean"), z_loss, kl, and ignore_index
# (None: nothing ignored). An extension type, so the entry points read its numbers as C fields.

cdef class KernelParams:
    """The coefficients of one kernel call (lsref/_params.py builds it, from a checked problem).

    The target is ``q_k = beta + (q_t - beta) [k == t]`` for class indices, ``a P_k + beta``
    for probability rows, ``a y + beta`` for binary labels. ``W`` is the class weights' total
    (it travels with them); a row's weight is ``scale`` times its ``sample_weight`` (``scale =
    1/D`` for ``"mean"``). ``ignore_index`` is None when nothing is ignored.
    """
    cdef readonly double q_t, a, beta, W, scale, z_loss
    cdef readonly bint kl
    cdef readonly object class_weight, sample_weight, ignore_index

    def __init__(self, *, double q_t=1.0, double a=1.0, double beta=0.0, class_weight=None,
                 double W=0.0, sample_weight=None, double scale=1.0, double z_loss=0.0,
                 bint kl=False, ignore_index=None):
        self.q_t, self.a, self.beta, self.W = q_t, a, beta, W
        self.scale, self.z_loss, self.kl = scale, z_loss, kl
        self.class_weight, self.sample_weight = class_weight, sample_weight
        self.ignore_index = ignore_index

    def __repr__(self):
        return (f"KernelParams(q_t={self.q_t!r}, a={self.a!r}, beta={self.beta!r}, "
                f"class_weight={self.class_weight!r}, W={self.W!r}, "
                f"sample_weight={self.sample_weight!r}, scale={self.scale!r}, "
                f"z_loss={self.z_loss!r}, kl={self.kl!r}, ignore_index={self.ignore_index!r})")


ctypedef struct coefs:
    double q_t, a, beta, W, scale, lam
    bint kl, has_ignore
    int64_t ignore_index


cdef coefs _coefs(KernelParams params) except *:
    """The scalar coefficients of a KernelParams record, read once per call."""
    cdef coefs c
    c.q_t, c.a, c.beta, c.W = params.q_t, params.a, params.beta, params.W
    c.scale, c.lam, c.kl = params.scale, params.z_loss, params.kl
    c.has_ignore = params.ignore_index is not None
    c.ignore_index = params.ignore_index if c.has_ignore else -1
    return c


# the most classes the small-K blocks take (_simd.h)
SMALL_K_MAX = LSREF_BLOCK_K
# a float32 gradient of at least this many bytes is streamed past the caches by those blocks
STREAM_BYTES = LSREF_STREAM_BYTES


def small_k_available():
    """Whether the small-K blocks (AVX2, float32, K <= SMALL_K_MAX) run on this CPU's vector
    path."""
    return bool(lsref_small8_available())


cdef inline void _index_row(const stored_in *z, const int64_t *targets, Py_ssize_t i,
                            Py_ssize_t K, const coefs *cf, const double *w, const double *rs,
                            double *loss_out, stored_out *grad_out) noexcept nogil:
    """Row i of _index_rows (one loss, and the gradient row where grad_out != NULL)."""
    cdef int64_t t = targets[i]
    cdef stored_out *g = grad_out + i * K if grad_out != NULL else NULL
    cdef double s
    if cf.has_ignore and t == cf.ignore_index:
        loss_out[i] = 0.0
        if g != NULL:
            memset(g, 0, K * sizeof(stored_out))
    else:
        s = cf.scale if rs == NULL else cf.scale * rs[i]
        loss_out[i] = _row_index(z + i * K, K, t, cf.q_t, cf.beta, cf.W, w, s, cf.lam, cf.kl, g)


cdef int _index_rows(const stored_in *z, const int64_t *targets, Py_ssize_t N, Py_ssize_t K,
                     const coefs *cf, const double *w, const double *rs, double *loss_out,
                     stored_out *grad_out, unsigned char *redo, int nt) except -1:
    """The row loop of class-index targets, for ce_index and index_fast: the N rows of z (C
    order, N, K >= 1), their losses into loss_out and, where grad_out != NULL, their gradient
    rows. With redo (an (N,) scratch, given where lsref._params.small_k_blocks says so) whole
    blocks of 8 rows go through the across-rows kernel of _simd.h first; the per-row loop then
    does the remaining rows and the ones that kernel flagged in redo."""
    cdef double q_t = cf.q_t, beta = cf.beta, W = cf.W, scale = cf.scale, z_loss = cf.lam
    cdef bint kl = cf.kl, has_ignore = cf.has_ignore
    cdef int64_t ignore_index = cf.ignore_index
    cdef Py_ssize_t i, b
    cdef Py_ssize_t n_blocked = 0          # rows 0..n_blocked-1: in the small-K blocks
    cdef bint want_grad = grad_out != NULL, small = False
    cdef double c
    cdef lsref_small_params P
    cdef float *g32 = NULL
    cdef int tid
    cdef lsref_ticker tk = lsref_ticker_new()
    if stored_in is float:
        if redo != NULL and (stored_out is float or not want_grad):
            small = True
            n_blocked = (N // 8) * 8
            P.q_t, P.beta, P.W, P.scale, P.lam = q_t, beta, W, scale, z_loss
            P.kl_const = lsref_minus_entropy_index(q_t, 1.0, beta, W - 1.0) if kl else 0.0
            P.row_scale = rs
            P.ignore_index, P.has_ignore = ignore_index, has_ignore
            # _row_index's rule for a dominated row's loss (the mass at the max class), which
            # for unweighted rows depends only on whether the target is the max
            c = lsref_target_mass(q_t, beta, W - 1.0)
            P.refine_if_target_max = lsref_mass_at_max(beta * (W - 1.0), c)
            P.refine_if_other_max = (fabs(q_t) < 1e-2 * fabs(c)
                                     and lsref_mass_at_max(q_t + beta * (W - 2.0), c))
            if want_grad:
                g32 = <float *> grad_out
            # a large gradient (not in place) is streamed past the caches by the blocks
            # (_simd.h, LSREF_STREAM_BYTES); each thread fences its stores after its blocks
            P.stream = lsref_small_stream(<const float *> z, g32, <size_t> N, <size_t> K)
    # Two parallel regions: the row loop reads the redo[] flags of every block, so the
    # blocks must all be done first (the end of a region is a barrier; two loops in one
    # region would not wait for each other). On one thread the loops run without a region
    # (starting one costs more than a row of 10 classes).
    if stored_in is float:
        # whole blocks of 8 rows, in pairs (lsref_small_pair_f32: at once on AVX-512);
        # redo[] flags the rows they leave
        if small and nt == 1:
            with nogil:
                for b in range((N // 8 + 1) // 2):
                    if _interrupted(&tk, 0, 16 * K):
                        break
                    lsref_small_pair_f32(z, b, N // 8, K, targets, &P, loss_out, g32, redo)
                if P.stream:
                    lsref_store_fence()
        elif small:
            with nogil, parallel(num_threads=nt):
                tid = lsref_thread_num()
                for b in prange((N // 8 + 1) // 2, schedule="dynamic",
                                chunksize=_chunk(16 * K, (N // 8 + 1) // 2, nt)):
                    if _interrupted(&tk, tid, 16 * K):
                        continue
                    lsref_small_pair_f32(z, b, N // 8, K, targets, &P, loss_out, g32, redo)
                if P.stream:
                    lsref_store_fence()
        if lsref_stopped(&tk):
            _raise_pending()
    # The rows before the first one the blocks handed back are done: the row loop starts
    # there (usually at n_blocked, the few rows past the last whole block, on one thread).
    cdef Py_ssize_t first = 0
    cdef const void *hand_back
    if small:
        hand_back = memchr(redo, 1, n_blocked)
        first = n_blocked if hand_back == NULL else <const unsigned char *> hand_back - redo
    if nt == 1 or N - first < 8:
        with nogil:
            for i in range(first, N):
                if i < n_blocked and not redo[i]:
                    continue                # done by the small-K blocks
                if _interrupted(&tk, 0, K):
                    break
                _index_row(z, targets, i, K, cf, w, rs, loss_out, grad_out)
    else:
        with nogil, parallel(num_threads=nt):
            tid = lsref_thread_num()
            for i in prange(first, N, schedule="dynamic", chunksize=_chunk(K, N - first, nt)):
                if i < n_blocked and not redo[i]:
                    continue                # done by the small-K blocks
                if _interrupted(&tk, tid, K):
                    continue
                _index_row(z, targets, i, K, cf, w, rs, loss_out, grad_out)
    if lsref_stopped(&tk):
        _raise_pending()
    return 0


def ce_index(const stored_in[:, ::1] logits,     # IN  (N, K)
             const int64_t[::1] targets,         # IN  (N,)
             KernelParams params,
             double[::1] loss_out,               # OUT (N,)
             stored_out[:, ::1] grad_out,        # OUT (N, K) or None; may be logits itself
             int n_threads,
             unsigned char[::1] small_k_scratch=None):   # SCRATCH (N,): the small-K blocks
    """Row losses (and gradient rows) of class-index targets (_index_rows).

    With ``small_k_scratch`` (given where lsref._params.small_k_blocks says so) whole blocks
    of 8 rows go through the across-rows kernel of _simd.h first; the per-row loop then does
    the remaining rows and the ones that kernel flagged in the scratch."""
    cdef coefs cf = _coefs(params)
    cdef const double[::1] class_weight = params.class_weight
    cdef const double[::1] row_scale = params.sample_weight
    cdef Py_ssize_t N = logits.shape[0], K = logits.shape[1]
    cdef const double *w = NULL
    cdef const double *rs = NULL
    cdef stored_out *g = NULL
    cdef unsigned char *redo = NULL
    if N == 0 or K == 0:
        return
    if class_weight is not None:
        w = &class_weight[0]
    if row_scale is not None:
        rs = &row_scale[0]
    if grad_out is not None:
        g = &grad_out[0, 0]
    if small_k_scratch is not None:
        redo = &small_k_scratch[0]
    _index_rows(&logits[0, 0], &targets[0], N, K, &cf, w, rs, &loss_out[0], g, redo,
                _nt(n_threads))


# --- the front door's fast path ----------------------------------------------------------------
#
# A call in a training loop is small (1-256 rows, 10-1,000 classes) and repeated thousands of
# times: there the general front door (lsref/loss.py: argument checks, layout, the reduction,
# in Python) costs ~30x the arithmetic. index_fast takes the common call -- NumPy arrays as
# the kernel stores them (C-contiguous float32/float64 (N, K) logits, int64 (N,) class
# indices), no weights, plain Python options -- checks it with C-level tests and computes it
# here. Whatever it does not take, or finds wrong, it hands back (None), and the general path
# runs: so there is one set of checks and error messages (the general path's), and the fast
# path never raises for bad input. The numbers are the general path's to the bit (the same
# row loop, coefficients from the same lsref/_params.py rules, NumPy's pairwise sum):
# tests/test_fast_path.py compares the two.

cdef object _fp_call = None             # lsref._params.index_call
cdef object _fp_default_threads = None  # lsref.loss.default_threads
cdef Py_ssize_t _fp_small_problem = 0   # lsref.loss.SMALL_PROBLEM
cdef Py_ssize_t _fp_max_threads = 0     # lsref._validation.MAX_THREADS
cdef object _fp_float32 = _np.float32

# What _fp_call returned for the last call, and what it was asked: a training loop asks the
# same question on every step, so it is answered once (the rules are pure functions of it).
ctypedef struct fast_key:
    double eps, divisor
    Py_ssize_t n_classes, n_rows
    int reduction
    bint others, float32

ctypedef struct fast_coefs:
    double q_t, beta, W, scale
    bint empty_mean, small

cdef fast_key _fp_memo_key
cdef fast_coefs _fp_memo
cdef bint _fp_memo_valid = False

# Rows up to this many use stack buffers for their losses and the small-K flags.
cdef enum:
    _STACK_ROWS = 512


def configure_fast_path(*, index_call, default_threads, small_problem, max_threads):
    """Give :func:`index_fast` the rules it takes from the Python side (lsref/loss.py calls
    this once, at import): the coefficients of a call (``lsref._params.index_call``), the
    default thread count, the size below which one thread runs, and the thread cap."""
    global _fp_call, _fp_default_threads, _fp_small_problem, _fp_max_threads, _fp_memo_valid
    _fp_call, _fp_default_threads, _fp_memo_valid = index_call, default_threads, False
    _fp_small_problem, _fp_max_threads = small_problem, max_threads


cdef extern from "numpy/arrayobject.h":
    object PyArray_Scalar(void *data, cnp.dtype descr, object base)


cdef object _scalar(double x, int typenum):
    """x as a NumPy scalar of the logits' dtype (float32 or float64), as dtype.type(x) gives
    it (the constructor goes through NumPy's argument parsing: ~5x the instructions)."""
    cdef float x32 = <float> x
    if typenum == cnp.NPY_FLOAT:
        return PyArray_Scalar(&x32, cnp.PyArray_DescrFromType(typenum), None)
    return PyArray_Scalar(&x, cnp.PyArray_DescrFromType(typenum), None)


cdef inline bint _overlap(cnp.ndarray a, cnp.ndarray b) noexcept:
    """Whether the bytes of two C-contiguous arrays intersect."""
    cdef char *pa = cnp.PyArray_BYTES(a)
    cdef char *pb = cnp.PyArray_BYTES(b)
    return pa < pb + cnp.PyArray_NBYTES(b) and pb < pa + cnp.PyArray_NBYTES(a)


cdef double _pairwise_sum(const double *a, Py_ssize_t n) noexcept nogil:
    """NumPy's pairwise summation of a contiguous float64 array (numpy/_core/src/umath/
    loops_utils.h.src, pairwise_sum): sequential below 8 terms, 8 accumulators up to 128,
    halves (at a multiple of 8) above. np.sum(a) is 0.0 + this, for every length
    (tests/test_fast_path.py checks it against np.sum), so both paths reduce to the bit."""
    cdef double r0, r1, r2, r3, r4, r5, r6, r7, res
    cdef Py_ssize_t i, n2
    if n < 8:
        res = -0.0
        for i in range(n):
            res += a[i]
        return res
    if n <= 128:
        r0, r1, r2, r3 = a[0], a[1], a[2], a[3]
        r4, r5, r6, r7 = a[4], a[5], a[6], a[7]
        i = 8
        while i < n - (n % 8):
            r0 += a[i]; r1 += a[i + 1]; r2 += a[i + 2]; r3 += a[i + 3]
            r4 += a[i + 4]; r5 += a[i + 5]; r6 += a[i + 6]; r7 += a[i + 7]
            i += 8
        res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
        while i < n:
            res += a[i]
            i += 1
        return res
    n2 = n // 2
    n2 -= n2 % 8
    return _pairwise_sum(a, n2) + _pairwise_sum(a + n2, n - n2)


def pairwise_sum(const double[::1] a):
    """:func:`_pairwise_sum` plus 0.0, as np.sum gives it (exposed for the tests)."""
    return 0.0 + (_pairwise_sum(&a[0], a.shape[0]) if a.shape[0] else 0.0)


def index_fast(logits, targets, label_smoothing, axis, reduction, smoothing, class_weight,
               sample_weight, ignore_index, z_loss, kl, n_threads, out, bint want_grad):
    """The loss (and, with ``want_grad``, the gradient) of a common class-index call, or
    None when the call is not one (then lsref/loss.py runs its general path).

    The arguments are those of ``lsref.value_and_grad`` in its order, unchecked."""
    global _fp_memo_key, _fp_memo, _fp_memo_valid
    cdef cnp.ndarray z, t, o = None, row_loss = None
    cdef object grad = None, loss
    cdef int typenum, nt, red
    cdef Py_ssize_t N, K, i, n_ignored = 0
    cdef double eps, lam, total
    cdef int64_t ign = 0
    cdef const int64_t *tp
    cdef bint has_ignore = False, small, empty_mean
    cdef coefs cf
    cdef fast_key key
    cdef double stack_loss[_STACK_ROWS]
    cdef unsigned char stack_redo[_STACK_ROWS]
    cdef double *lp = &stack_loss[0]
    cdef unsigned char *redo = NULL
    cdef void *gp = NULL
    cdef cnp.npy_intp dims[2]
    if _fp_call is None:
        return None
    # the arrays: exactly numpy.ndarray (no subclass, masked array or tensor), as stored
    if type(logits) is not cnp.ndarray or type(targets) is not cnp.ndarray:
        return None
    z, t = <cnp.ndarray> logits, <cnp.ndarray> targets
    if cnp.PyArray_NDIM(z) != 2 or cnp.PyArray_NDIM(t) != 1:
        return None
    typenum = cnp.PyArray_TYPE(z)
    if typenum != cnp.NPY_FLOAT and typenum != cnp.NPY_DOUBLE:
        return None
    if not (cnp.PyArray_ISCARRAY_RO(z) and cnp.PyArray_ISNOTSWAPPED(z)):
        return None
    N, K = cnp.PyArray_DIMS(z)[0], cnp.PyArray_DIMS(z)[1]
    if N == 0 or K == 0 or cnp.PyArray_DIMS(t)[0] != N:
        return None
    if (cnp.PyArray_TYPE(t) != cnp.NPY_INT64 or not cnp.PyArray_ISCARRAY_RO(t)
            or not cnp.PyArray_ISNOTSWAPPED(t)):
        return None
    # the options: plain Python values in their valid ranges
    if type(axis) is not int or (axis != -1 and axis != 1):
        return None
    if class_weight is not None or sample_weight is not None:
        return None
    if type(label_smoothing) is float:
        eps = label_smoothing
    elif type(label_smoothing) is int and 0 <= label_smoothing <= 1:
        eps = label_smoothing
    else:
        return None
    if not (0.0 <= eps <= 1.0):                 # NaN fails too
        return None
    if type(z_loss) is float:
        lam = z_loss
    elif type(z_loss) is int and 0 <= z_loss <= 2 ** 53:
        lam = z_loss
    else:
        return None
    if not (0.0 <= lam < INFINITY):
        return None
    if kl is not True and kl is not False:
        return None
    if type(reduction) is not str or type(smoothing) is not str:
        return None
    if reduction == "mean":
        red = 0
    elif reduction == "sum":
        red = 1
    elif reduction == "none":
        red = 2
    else:
        return None
    if not (smoothing == "uniform" or (smoothing == "others" and K >= 2)):
        return None
    if ignore_index is not None:
        if type(ignore_index) is not int or not (-2 ** 63 <= ignore_index < 2 ** 63):
            return None
        has_ignore, ign = True, ignore_index
    if n_threads is None:
        nt = 1 if N * K < _fp_small_problem else _fp_default_threads()
    elif type(n_threads) is int and 1 <= n_threads <= _fp_max_threads:
        nt = n_threads
    else:
        return None
    if out is not None:
        if not want_grad or type(out) is not cnp.ndarray:
            return None
        o = <cnp.ndarray> out
        if (cnp.PyArray_NDIM(o) != 2 or cnp.PyArray_DIMS(o)[0] != N
                or cnp.PyArray_DIMS(o)[1] != K or cnp.PyArray_TYPE(o) != typenum
                or not cnp.PyArray_ISCARRAY(o) or not cnp.PyArray_ISNOTSWAPPED(o)):
            return None
        if _overlap(o, t):
            return None
        if _overlap(o, z) and not (cnp.PyArray_BYTES(o) == cnp.PyArray_BYTES(z)
                                   and cnp.PyArray_STRIDES(o)[0] == cnp.PyArray_STRIDES(z)[0]
                                   and cnp.PyArray_STRIDES(o)[1] == cnp.PyArray_STRIDES(z)[1]):
            return None
    # the class indices: each in [0, K) or ignore_index
    tp = <const int64_t *> cnp.PyArray_DATA(t)
    n_ignored = lsref_count_ignored(tp, N, K, has_ignore, ign)
    if n_ignored < 0:
        return None
    # the coefficients, by lsref/_params.py's rules (the last call's, when it asked the same)
    memset(&key, 0, sizeof(fast_key))         # padding too: the key is compared bytewise
    key.eps, key.n_classes, key.n_rows, key.divisor = eps, K, N, <double> (N - n_ignored)
    key.others, key.reduction, key.float32 = smoothing == "others", red, typenum == cnp.NPY_FLOAT
    if not (_fp_memo_valid and memcmp(&key, &_fp_memo_key, sizeof(fast_key)) == 0):
        _fp_memo_valid = False
        (_fp_memo.q_t, _fp_memo.beta, _fp_memo.W, _fp_memo.scale, _fp_memo.empty_mean,
         _fp_memo.small) = _fp_call(eps, K, smoothing, reduction, key.divisor, key.float32, N)
        _fp_memo_key, _fp_memo_valid = key, True
    cf.q_t, cf.a, cf.beta, cf.W = _fp_memo.q_t, 1.0, _fp_memo.beta, _fp_memo.W
    cf.scale, cf.lam, cf.kl = _fp_memo.scale, lam, kl
    cf.has_ignore, cf.ignore_index = has_ignore, ign if has_ignore else -1
    small, empty_mean = _fp_memo.small, _fp_memo.empty_mean

    if want_grad:
        if o is not None:
            grad = o
        else:
            dims[0], dims[1] = N, K
            grad = cnp.PyArray_EMPTY(2, dims, typenum, 0)
        gp = cnp.PyArray_DATA(<cnp.ndarray> grad)
    if red == 2:
        dims[0] = N
        row_loss = cnp.PyArray_EMPTY(1, dims, cnp.NPY_DOUBLE, 0)
        lp = <double *> cnp.PyArray_DATA(row_loss)
    elif N > _STACK_ROWS:
        lp = <double *> PyMem_Malloc(N * sizeof(double))
        if lp == NULL:
            raise MemoryError()
    try:
        if small:
            redo = &stack_redo[0]
            if N > _STACK_ROWS:
                redo = <unsigned char *> PyMem_Malloc(N)
            if redo == NULL:
                raise MemoryError()
        nt = _nt(nt)
        if typenum == cnp.NPY_FLOAT:
            _index_rows(<const float *> cnp.PyArray_DATA(z), tp, N, K, &cf, NULL, NULL, lp,
                        <float *> gp, redo, nt)
        else:
            _index_rows(<const double *> cnp.PyArray_DATA(z), tp, N, K, &cf, NULL, NULL, lp,
                        <double *> gp, redo, nt)
        if red == 2:
            loss = row_loss if typenum == cnp.NPY_DOUBLE else row_loss.astype(_fp_float32)
        else:
            total = NAN if empty_mean else 0.0 + _pairwise_sum(lp, N)
            loss = _scalar(total, typenum)
    finally:
        if redo != NULL and redo != &stack_redo[0]:
            PyMem_Free(redo)
        if lp != &stack_loss[0] and red != 2:
            PyMem_Free(lp)
    return (loss, grad) if want_grad else loss


def ce_prob(const stored_in[:, ::1] logits,      # IN  (N, K)
            const real_t[:, ::1] probs,          # IN  (N, K)
            KernelParams params,                 # a, beta: q = a P + beta
            double[::1] loss_out,                # OUT (N,)
            stored_out[:, ::1] grad_out,         # OUT (N, K) or None; may be logits itself
            int n_threads):
    """Row losses (and gradient rows) of probability targets."""
    cdef coefs cf = _coefs(params)
    cdef const double[::1] class_weight = params.class_weight
    cdef const double[::1] row_scale = params.sample_weight
    cdef double a = cf.a, beta = cf.beta, W = cf.W, scale = cf.scale, z_loss = cf.lam
    cdef bint kl = cf.kl
    cdef Py_ssize_t N = logits.shape[0], K = logits.shape[1], i
    cdef const double *w = NULL if class_weight is None else &class_weight[0]
    cdef const double *rs = NULL if row_scale is None else &row_scale[0]
    cdef bint want_grad = grad_out is not None
    cdef stored_out *g
    cdef double s
    if N == 0 or K == 0:
        return
    cdef int nt = _nt(n_threads), tid
    cdef lsref_ticker tk = lsref_ticker_new()
    with nogil, parallel(num_threads=nt):
        tid = lsref_thread_num()
        for i in prange(N, schedule="dynamic", chunksize=_chunk(K, N, nt)):
            if _interrupted(&tk, tid, K):
                continue
            g = &grad_out[i, 0] if want_grad else NULL
            s = scale if rs == NULL else scale * rs[i]
            loss_out[i] = _row_prob(&logits[i, 0], &probs[i, 0], K, a, beta, W, w, s,
                                    z_loss, kl, g)
    if lsref_stopped(&tk):
        _raise_pending()


# --- binary (sigmoid) cross-entropy ----------------------------------------------------------
#
# Per element, with smoothed label y in [0, 1], weight c = s * w_k and logit x:
#   loss = c * [y * softplus(-x) + (1 - y) * softplus(x)]       (-y log sig(x) - (1-y) log sig(-x))
#   grad = c * (sigmoid(x) - y)
# softplus(+-x) = max(+-x, 0) + log1p(exp(-|x|)): one exp and one log1p, no overflow, and
# each term is skipped when its label factor is 0 (so x = +-inf with a matching label gives 0).

ctypedef struct loss_grad:
    double loss
    double grad


cdef inline loss_grad _bce_elem(double x, double y, double c) noexcept nogil:
    # Returned by value: a result written through a pointer to a prange-body variable would
    # not make Cython treat that variable as thread-private.
    cdef loss_grad r
    cdef double e, l1p, loss = 0.0, sig
    if isnan(x):
        r.loss = r.grad = NAN
        return r
    e = exp(-fabs(x))
    l1p = log1p(e)
    if y != 0.0:
        loss += y * ((-x if x < 0 else 0.0) + l1p)
    if y != 1.0:
        loss += (1.0 - y) * ((x if x > 0 else 0.0) + l1p)
    sig = 1.0 / (1.0 + e) if x >= 0 else e / (1.0 + e)
    r.loss = c * loss
    r.grad = c * (sig - y)
    return r


def bce(const stored_in[:, ::1] logits,           # IN  (N, K)
        const real_t[:, ::1] labels,              # IN  (N, K) or None
        const int64_t[::1] targets,               # IN  (N,) or None: class indices (one-hot)
        KernelParams params,                      # y' = a*y + beta
        double[::1] loss_out,                     # OUT (N,): the row sums
        double[:, ::1] elem_out,                  # OUT (N, K) or None: per-element losses
        stored_out[:, ::1] grad_out,              # OUT (N, K) or None; may be logits itself
        int n_threads):
    """Binary cross-entropy with logits, per element; row sums into loss_out."""
    cdef coefs cf = _coefs(params)
    cdef const double[::1] class_weight = params.class_weight
    cdef const double[::1] row_scale = params.sample_weight
    cdef double a = cf.a, b = cf.beta, scale = cf.scale
    cdef bint has_ignore = cf.has_ignore
    cdef int64_t ignore_index = cf.ignore_index
    cdef Py_ssize_t N = logits.shape[0], K = logits.shape[1], i, k
    cdef const double *w = NULL if class_weight is None else &class_weight[0]
    cdef const double *rs = NULL if row_scale is None else &row_scale[0]
    cdef bint want_grad = grad_out is not None, want_elem = elem_out is not None
    cdef bint by_index = targets is not None
    cdef double s, c, y, row
    cdef loss_grad lg
    cdef int64_t t
    if N == 0:
        return
    if K == 0:                            # a row of no elements sums to 0
        loss_out[:] = 0.0
        return
    cdef int nt = _nt(n_threads), tid
    cdef lsref_ticker tk = lsref_ticker_new()
    with nogil, parallel(num_threads=nt):
        tid = lsref_thread_num()
        for i in prange(N, schedule="dynamic", chunksize=_chunk(K, N, nt)):
            if _interrupted(&tk, tid, K):
                continue
            t = targets[i] if by_index else 0
            if by_index and has_ignore and t == ignore_index:
                loss_out[i] = 0.0
                if want_grad:
                    memset(&grad_out[i, 0], 0, K * sizeof(stored_out))
                if want_elem:
                    memset(&elem_out[i, 0], 0, K * sizeof(double))
            else:
                s = scale if rs == NULL else scale * rs[i]
                row = 0.0
                for k in range(K):
                    if by_index:
                        y = a * (1.0 if k == t else 0.0) + b
                    else:
                        y = a * labels[i, k] + b
                    c = s if w == NULL else s * w[k]
                    lg = _bce_elem(_ld(logits[i, k]), y, c)
                    row = row + lg.loss
                    if want_elem:
                        elem_out[i, k] = lg.loss
                    if want_grad:
                        _st(&grad_out[i, 0], k, lg.grad)
                loss_out[i] = row
    if lsref_stopped(&tk):
        _raise_pending()


# --- log-sum-exp and softmax ------------------------------------------------------------------

def logsumexp_rows(const stored_in[:, ::1] x,     # IN  (N, K)
                   double[::1] out,               # OUT (N,)
                   int n_threads):
    """log(sum(exp(x))) of every row, with scipy.special.logsumexp's special values:
    -inf for a row of -inf, +inf for a row holding +inf, NaN for a row holding NaN."""
    cdef Py_ssize_t N = x.shape[0], K = x.shape[1], i
    cdef row_stats st
    if N == 0:
        return
    cdef int nt = _nt(n_threads), tid
    cdef lsref_ticker tk = lsref_ticker_new()
    with nogil, parallel(num_threads=nt):
        tid = lsref_thread_num()
        for i in prange(N, schedule="dynamic", chunksize=_chunk(K, N, nt)):
            if _interrupted(&tk, tid, K):
                continue
            st = _stats(&x[i, 0], K, NULL, <double *> NULL)
            if isfinite(st.m):
                out[i] = st.m + _log_se(&x[i, 0], K, st.m, st.se)
            else:
                out[i] = _nonfinite_max(&x[i, 0], K, st.m)
    if lsref_stopped(&tk):
        _raise_pending()


cdef inline double _nonfinite_max(const stored_in *z, Py_ssize_t K, double m) noexcept nogil:
    """The logsumexp of a row whose max is +-inf: that max, or NaN if the row holds a NaN."""
    cdef Py_ssize_t k
    for k in range(K):
        if isnan(_ld(z[k])):
            return NAN
    return m


def softmax_rows(const stored_in[:, ::1] x,      # IN  (N, K)
                 stored_out[:, ::1] out,         # OUT (N, K)
                 bint log_space,
                 int n_threads):
    """softmax (log_space=False) or log_softmax (True) of every row."""
    cdef Py_ssize_t N = x.shape[0], K = x.shape[1], i, k
    cdef row_stats st
    cdef double inv, L
    cdef stored_out *o
    if N == 0 or K == 0:
        return
    cdef int nt = _nt(n_threads), tid
    cdef lsref_ticker tk = lsref_ticker_new()
    with nogil, parallel(num_threads=nt):
        tid = lsref_thread_num()
        for i in prange(N, schedule="dynamic", chunksize=_chunk(K, N, nt)):
            if _interrupted(&tk, tid, K):
                continue
            o = &out[i, 0]
            st = _stats(&x[i, 0], K, NULL, <double *> NULL)
            L = _log_se(&x[i, 0], K, st.m, st.se)
            if log_space:
                for k in range(K):
                    _st(o, k, (_ld(x[i, k]) - st.m) - L)
            else:
                inv = 1.0 / st.se
                for k in range(K):
                    _st(o, k, _ex(x[i, k], st.m) * inv)
    if lsref_stopped(&tk):
        _raise_pending()


# --- partial statistics of (row block, class block) pieces (lsref/sharded.py) -------------------
#
# A row's loss needs only m, se = sum exp(z - m), U = sum_k w_k (z_k - m) and z_t, and those
# merge exactly across class blocks (lsref/sharded.py). The block's sum of exps is kept as
# rest = se - 1, the sum without the block's (first) maximum, whose term is exactly 1: merged
# blocks keep it exact, and log1p(rest) is then accurate also for a dominated row.

ctypedef fused flt:
    float
    double


def block_stats(const flt[:, ::1] z,             # IN  (n, kb): one class block of n rows
                const double[::1] class_weight,  # IN  (kb,) this block's weights, or None
                const int64_t[::1] targets,      # IN  (n,) global class indices
                int64_t offset,                  # the block's first global class
                double[::1] m_out, double[::1] rest_out, double[::1] u_out,
                double[::1] zt_out,              # OUT (n,) each
                unsigned char[::1] has_t,        # OUT (n,): the target is in this block
                unsigned char[::1] bad,          # OUT (n,): a NaN or +inf in the block's row
                int n_threads):
    cdef Py_ssize_t n = z.shape[0], kb = z.shape[1], i, k
    cdef const double *w = NULL if class_weight is None else &class_weight[0]
    cdef row_stats st
    cdef int64_t t
    if n == 0:
        return
    cdef int nt = _nt(n_threads), tid
    cdef lsref_ticker tk = lsref_ticker_new()
    with nogil, parallel(num_threads=nt):
        tid = lsref_thread_num()
        for i in prange(n, schedule="dynamic", chunksize=_chunk(kb, n, nt)):
            if _interrupted(&tk, tid, kb):
                continue
            t = targets[i] - offset
            has_t[i] = 0 <= t < kb
            zt_out[i] = z[i, t] if 0 <= t < kb else 0.0
            if kb == 0:
                m_out[i], rest_out[i], u_out[i], bad[i] = -INFINITY, -1.0, 0.0, 0
                continue
            st = _stats(&z[i, 0], kb, w, <flt *> NULL)
            m_out[i] = st.m
            if st.m == -INFINITY:                    # -inf only (no mass here), or NaN
                bad[i] = 0
                for k in range(kb):
                    if isnan(z[i, k]):
                        bad[i] = 1
                rest_out[i], u_out[i] = -1.0, 0.0
                continue
            bad[i] = st.m == INFINITY or isnan(st.se)
            if bad[i]:
                rest_out[i], u_out[i] = -1.0, 0.0
                continue
            u_out[i] = st.u
            # se - 1 would cancel below 2: the rest summed again, as the in-memory rows do
            rest_out[i] = st.se - 1.0 if st.se >= 2.0 else _rest_exact(&z[i, 0], kb, st.m)
    if lsref_stopped(&tk):
        _raise_pending()


def block_grad(const flt[:, ::1] z,              # IN  (n, kb)
               const double[::1] class_weight,   # IN  (kb,) or None
               const int64_t[::1] targets,       # IN  (n,) global class indices
               int64_t offset,
               const double[::1] m,              # IN  (n,) the whole row's max (a logit)
               const double[::1] coef_e,         # IN  (n,) s (C + 2 lam lse) / se, 0 if ignored
               const double[::1] coef_q,         # IN  (n,) s, 0 if ignored
               double q_t, double beta,
               flt[:, ::1] grad_out,             # OUT (n, kb)
               int n_threads):
    """g_k = coef_e exp(z_k - m) - coef_q w_k q_k over one class block: the whole row's
    p_k = exp(z_k - m) / se, through the vectorised sweeps of the in-memory kernel."""
    cdef Py_ssize_t n = z.shape[0], kb = z.shape[1], i, k
    cdef const double *w = NULL if class_weight is None else &class_weight[0]
    cdef int64_t t
    cdef double a, c, e_t, se, u           # se, u: the sweep's sums, not used here
    cdef flt *g
    if n == 0 or kb == 0:
        return
    cdef int nt = _nt(n_threads), tid
    cdef lsref_ticker tk = lsref_ticker_new()
    with nogil, parallel(num_threads=nt):
        tid = lsref_thread_num()
        for i in prange(n, schedule="dynamic", chunksize=_chunk(kb, n, nt)):
            if _interrupted(&tk, tid, kb):
                continue
            t = targets[i] - offset
            a = coef_e[i]
            c = coef_q[i]
            g = &grad_out[i, 0]
            if a == 0.0 and c == 0.0:                # an ignored row
                memset(g, 0, kb * sizeof(flt))
                continue
            se = u = 0.0          # assigned in the loop body: private to each thread
            if flt is float:
                lsref_simd.expsum_f32(&z[i, 0], kb, <float> m[i], <float *> g, &se, &u)
            else:
                lsref_simd.expsum_f64(&z[i, 0], kb, m[i], <double *> g, &se, &u)
            e_t = g[t] if 0 <= t < kb else 0.0
            if w == NULL:
                if flt is float:
                    lsref_simd.affine_f32(<float *> g, kb, a, c * beta)
                else:
                    lsref_simd.affine_f64(<double *> g, kb, a, c * beta)
            else:
                for k in range(kb):
                    g[k] = <flt> (a * g[k] - c * w[k] * beta)
            if 0 <= t < kb:
                g[t] = <flt> lsref_target_grad(a, e_t, c, q_t * (1.0 if w == NULL else w[t]))
    if lsref_stopped(&tk):
        _raise_pending()


def finish_index(const double[::1] m,            # IN  (n,) merged statistics of whole rows
                 const double[::1] rest,
                 const double[::1] u,
                 const double[::1] zt,
                 const unsigned char[::1] bad,   # IN  (n,): a NaN or +inf in the row
                 const int64_t[::1] targets,     # IN  (n,) class indices
                 KernelParams params,
                 double[::1] loss_out,           # OUT (n,) s * loss_row (without scale)
                 double[::1] coef_out,           # OUT (n,) s scale (c + 2 lam lse) / se
                 int n_threads):
    """Finish merged statistics (lsref/sharded.py) with the row algebra of the in-memory rows
    (_rowterms.h): each row's loss, and the factor A of its gradient g_k = A exp(z_k - m) -
    s scale w_k q_k. Ignored rows get 0; a row with no softmax (a NaN or +inf, or only -inf)
    gets NaN."""
    cdef coefs cf = _coefs(params)
    cdef const double[::1] class_weight = params.class_weight
    cdef const double[::1] row_scale = params.sample_weight
    cdef const double *w = NULL if class_weight is None else &class_weight[0]
    cdef const double *rs = NULL if row_scale is None else &row_scale[0]
    cdef Py_ssize_t n = m.shape[0], i
    cdef int64_t t
    cdef double s, w_t, qw_t, W_other, d_t, u_other, L, lse, ce, minus_h, c
    if n == 0:
        return
    cdef int nt = _nt(n_threads)
    with nogil:
        for i in prange(n, schedule="static", num_threads=nt):
            t = targets[i]
            if cf.has_ignore and t == cf.ignore_index:
                loss_out[i] = 0.0
                coef_out[i] = 0.0
                continue
            if bad[i] or m[i] == -INFINITY:
                loss_out[i] = NAN
                coef_out[i] = NAN
                continue
            s = 1.0 if rs == NULL else rs[i]
            w_t = 1.0 if w == NULL else w[t]
            qw_t = cf.q_t * w_t
            W_other = cf.W - w_t
            d_t = zt[i] - m[i]
            u_other = u[i]
            if w_t != 0.0:
                # the target's own term leaves U. A masked target (d_t = -inf): its target
                # mass makes the loss +inf whatever the others give; without target mass the
                # others' sum is not in the statistics (NaN, not a wrong number)
                u_other = (u[i] - w_t * d_t if isfinite(d_t)
                           else (0.0 if qw_t != 0.0 else NAN))
            L = log1p(rest[i])
            lse = m[i] + L
            ce = lsref_ce_index(L, d_t, qw_t, cf.beta, W_other, u_other)
            minus_h = lsref_minus_entropy_index(cf.q_t, w_t, cf.beta, W_other) if cf.kl else 0.0
            loss_out[i] = lsref_row_loss(ce, minus_h, cf.lam, lse, s)
            c = lsref_target_mass(qw_t, cf.beta, W_other)
            coef_out[i] = lsref_grad_factor(s * cf.scale, c, cf.lam, lse, 1.0 + rest[i])
