/* The hot sweeps over one row of float32/float64 logits, written as plain C loops that the
 * compiler vectorises, compiled three times (generic x86-64 / any CPU, AVX2+FMA, AVX-512F)
 * and chosen at run time from the CPU's features (lsref_simd_init). No -ffast-math anywhere:
 * the exponential below keeps the special values the kernel relies on.
 *
 *   exp(x) for x <= 0 (x = z - max):  Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2, a
 *   polynomial for exp(r) (degree 5 for float, 2.5e-7 relative; a degree-13 Taylor polynomial
 *   for double, ~1 ulp), and 2^n built from the exponent bits. n comes from the "add 1.5 * 2^p"
 *   rounding trick, so no float -> int conversion happens (NaN stays defined behaviour).
 *   exp(-inf) and every result below the smallest normal number are exactly 0; NaN gives NaN.
 *
 * Sums are accumulated in double. For float32 rows each block of 64 terms is first summed in
 * float, each vector lane over its own 8 (AVX2) or 16 terms, then added to the double sum:
 * that keeps the float32 sum's relative error near 1e-7 while the float -> double
 * conversions, which per term would be a large share of the sweep's work, happen once a block
 * (asv: bench_loss.LossGradient.time_loss at float32 measures the sweep).
 * `omp simd reduction` allows the lanes their own partial sums (no -fassociative-math
 * needed), so the order of the additions, and with it the last bits of a result, depends on
 * the vector width: the paths agree to the documented accuracy, and a given machine always
 * takes the same path (bit-identical for every thread count).
 */
#ifndef LSREF_SIMD_H
#define LSREF_SIMD_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "_rowterms.h"          /* the row algebra, written once */

/* `omp simd` (OpenMP >= 4.0, _OPENMP >= 201307) gives each vector lane its own partial sum.
 * It is emitted only where the compiler implements it: gcc or clang with -fopenmp-simd
 * (LSREF_OPENMP_SIMD, defined by setup.py when that flag compiles) or with OpenMP >= 4.0.
 * MSVC's /openmp is OpenMP 2.0 (_OPENMP == 200203), which has no simd directive (error
 * C3001): there the loops stay plain C, still correct, vectorised only where the compiler
 * can do it by itself. No `reduction(max:...)` anywhere: OpenMP's identity for max is the
 * most negative finite value, not -inf (see the max sweeps below). */
#if (defined(_OPENMP) && _OPENMP >= 201307) || defined(LSREF_OPENMP_SIMD)
#define LSREF_PRAGMA(x) _Pragma(#x)
#else
#define LSREF_PRAGMA(x)
#endif

static inline float lsref_exp_neg_f32(float x)
{
    const float big = 12582912.0f;                 /* 1.5 * 2^23 */
    float xc = x < -87.0f ? -87.0f : x;            /* NaN passes through */
    float t = xc * 1.44269504088896341f + big;
    float n = t - big;                             /* round(x / ln 2), an integer */
    uint32_t tb, sb;
    float r, p, s, y;
    memcpy(&tb, &t, 4);
    r = xc - n * 0.693359375f;                     /* Cody-Waite: ln 2 in two parts */
    r = r - n * -2.12194440e-4f;
    /* exp(r) on |r| <= ln2/2 as 1 + r q(r), q of degree 4 Chebyshev-interpolated (near
       minimax) in float32: exp(0) is exactly 1 (the max term of a row's sum, which the
       kernel relies on), max relative error of the whole function ~2.5e-7 over [-87, 0],
       a quarter of the float32 accuracy bound, with fewer multiply-adds per term than
       Cephes' degree 7: this polynomial (the AVX2 sweeps' too) is the float32 sweeps' hot
       spot (asv: bench_loss.LossGradient at float32 measures them). */
    p = 0.008363173343241215f;
    p = p * r + 0.04187564551830292f;
    p = p * r + 0.16666577756404877f;
    p = p * r + 0.4999937117099762f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    sb = (tb - 0x4B400000u + 127u) << 23;          /* 2^n */
    memcpy(&s, &sb, 4);
    y = p * s;
    return x < -87.0f ? 0.0f : y;                  /* -inf, and below the normal range: 0 */
}

static inline double lsref_exp_neg_f64(double x)
{
    const double big = 6755399441055744.0;         /* 1.5 * 2^52 */
    double xc = x < -708.0 ? -708.0 : x;
    double t = xc * 1.4426950408889634074 + big;
    double n = t - big;
    uint64_t tb, sb;
    double r, p, s, y;
    memcpy(&tb, &t, 8);
    r = xc - n * 6.93147180369123816490e-01;       /* fdlibm's ln2 hi / lo */
    r = r - n * 1.90821492927058770002e-10;
    p = 1.0 / 6227020800.0;                        /* 1/13! ... 1/2!: Taylor, |r| <= 0.347 */
    p = p * r + 1.0 / 479001600.0;
    p = p * r + 1.0 / 39916800.0;
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * (r * r) + r + 1.0;
    sb = (tb - 0x4338000000000000ull + 1023ull) << 52;
    memcpy(&s, &sb, 8);
    y = p * s;
    return x < -708.0 ? 0.0 : y;
}

#if defined(__GNUC__) || defined(__clang__)
#define LSREF_UNUSED __attribute__((unused))     /* the AVX2 set replaces two of its sweeps */
#else
#define LSREF_UNUSED
#endif

/* The max of a row, for lsref_max_f32/f64 below: -inf for an empty row, a row of -inf or a
 * row of NaN; NaN entries are passed over (`NaN > a` is false), they surface in the sum of
 * the exponentials. Written with LANES explicit accumulators (128 bytes: 4 AVX2 or 2 AVX-512
 * registers), each starting at -inf, instead of `omp simd reduction(max:m)`: OpenMP's
 * identity for max is the most negative finite value, which clang uses (a row of -inf
 * came out as -DBL_MAX), and clang leaves that reduction scalar without -ffinite-math.
 * `z > a ? z : a` is exactly x86's maxps/maxpd(z, a) (a kept when z is NaN), so gcc and
 * clang vectorise the lanes without any relaxation of IEEE semantics. The last n % LANES
 * entries go into the first lanes, then the lanes are folded pairwise. */
#define LSREF_MAX_BODY(T, LANES)                                                             \
    T a[LANES]; Py_ssize_t k = 0, r; int j, h;                                               \
    if (n < LANES) {               /* a short row: one accumulator, no fold of empty lanes */ \
        a[0] = -INFINITY;                                                                    \
        for (; k < n; k++) a[0] = z[k] > a[0] ? z[k] : a[0];                                 \
        return a[0];                                                                         \
    }                                                                                        \
    for (j = 0; j < LANES; j++) a[j] = -INFINITY;                                            \
    for (; k + LANES <= n; k += LANES)                                                       \
        for (j = 0; j < LANES; j++) a[j] = z[k + j] > a[j] ? z[k + j] : a[j];                \
    for (r = n - k, j = 0; j < r; j++) a[j] = z[k + j] > a[j] ? z[k + j] : a[j];             \
    for (h = LANES / 2; h > 0; h /= 2)                                                       \
        for (j = 0; j < h; j++) a[j] = a[j + h] > a[j] ? a[j + h] : a[j];                    \
    return a[0];

/* One set of row sweeps, instantiated once per instruction set. */
#define LSREF_SWEEPS(SUF, ATTR)                                                              \
ATTR LSREF_UNUSED static float lsref_max_f32_##SUF(const float *z, Py_ssize_t n) {                        \
    LSREF_MAX_BODY(float, 32) }                                                              \
ATTR LSREF_UNUSED static double lsref_max_f64_##SUF(const double *z, Py_ssize_t n) {                      \
    LSREF_MAX_BODY(double, 16) }                                                             \
ATTR LSREF_UNUSED static void lsref_expsum_f32_##SUF(const float *z, Py_ssize_t n, float m, float *e,     \
                                        double *se_out, double *u_out) {                     \
    double se = 0.0, u = 0.0; Py_ssize_t k, j, end;                                          \
    for (k = 0; k < n; k += 64) {              /* the last block may be short (small K) */   \
        float bs = 0.0f, bu = 0.0f;                                                          \
        end = k + 64 < n ? k + 64 : n;                                                       \
        if (e) {                                                                             \
            LSREF_PRAGMA(omp simd reduction(+:bs,bu))                                        \
            for (j = k; j < end; j++) { float d = z[j] - m; float v = lsref_exp_neg_f32(d);  \
                                        e[j] = v; bs += v; bu += d; }                        \
        } else {                                                                             \
            LSREF_PRAGMA(omp simd reduction(+:bs,bu))                                        \
            for (j = k; j < end; j++) { float d = z[j] - m;                                  \
                                        bs += lsref_exp_neg_f32(d); bu += d; }               \
        }                                                                                    \
        se += (double)bs; u += (double)bu;                                                   \
    }                                                                                        \
    *se_out = se; *u_out = u; }                                                              \
ATTR LSREF_UNUSED static double lsref_rest_sum_f32_##SUF(const float *z, Py_ssize_t n, double m) { \
    /* lsref_rest_sum_f32_avx2i's rest (float exps, the max terms counted apart), compiled */ \
    float mf = (float)m; double rest = 0.0, nmax = 0.0; Py_ssize_t k, j, end;                \
    for (k = 0; k < n; k += 64) {                                                            \
        float bs = 0.0f, c = 0.0f;                                                           \
        end = k + 64 < n ? k + 64 : n;                                                       \
        LSREF_PRAGMA(omp simd reduction(+:bs,c))                                             \
        for (j = k; j < end; j++) { float d = z[j] - mf; float v = lsref_exp_neg_f32(d);     \
                                    float one = d == 0.0f ? 1.0f : 0.0f;                     \
                                    bs += v - one; c += one; }                               \
        rest += (double)bs; nmax += (double)c;                                               \
    }                                                                                        \
    return rest + (nmax - 1.0); }                                                            \
ATTR LSREF_UNUSED static void lsref_expsum_f64_##SUF(const double *z, Py_ssize_t n, double m, double *e,  \
                                        double *se_out, double *u_out) {                     \
    double se = 0.0, u = 0.0; Py_ssize_t k;                                                  \
    if (e) {                                                                                 \
        LSREF_PRAGMA(omp simd reduction(+:se,u))                                             \
        for (k = 0; k < n; k++) { double d = z[k] - m; double v = lsref_exp_neg_f64(d);      \
                                  e[k] = v; se += v; u += d; }                               \
    } else {                                                                                 \
        LSREF_PRAGMA(omp simd reduction(+:se,u))                                             \
        for (k = 0; k < n; k++) { double d = z[k] - m; se += lsref_exp_neg_f64(d); u += d; } \
    }                                                                                        \
    *se_out = se; *u_out = u; }                                                              \
ATTR LSREF_UNUSED static double lsref_rest_f32_##SUF(const float *z, Py_ssize_t n, double m,     \
                                                    float *e) {                              \
    /* rest = sum of exp(z_k - m) over k other than one max (whose term is exactly 1), with   \
       z_k - m exact in double and the double exp: a float32 row's dominated-row refinement. \
       The max terms are counted, not summed, so a small rest keeps its relative accuracy.  \
       With e, the exps go there too (rounded once to float). */                             \
    double rest = 0.0; Py_ssize_t k, j, end, nmax = 0;                                       \
    for (k = 0; k < n; k += 256) {                                                           \
        double part = 0.0; Py_ssize_t c = 0;                                                 \
        end = k + 256 < n ? k + 256 : n;                                                     \
        if (e) {                                                                             \
            LSREF_PRAGMA(omp simd reduction(+:part,c))                                       \
            for (j = k; j < end; j++) { double d = (double)z[j] - m;                         \
                double v = lsref_exp_neg_f64(d); e[j] = (float)v;                            \
                part += d == 0.0 ? 0.0 : v; c += d == 0.0; }                                 \
        } else {                                                                             \
            LSREF_PRAGMA(omp simd reduction(+:part,c))                                       \
            for (j = k; j < end; j++) { double d = (double)z[j] - m;                         \
                double v = lsref_exp_neg_f64(d); part += d == 0.0 ? 0.0 : v; c += d == 0.0; } \
        }                                                                                    \
        rest += part; nmax += c;                                                             \
    }                                                                                        \
    return rest + (double)(nmax - 1); }                                                      \
ATTR LSREF_UNUSED static void lsref_affine_f32_##SUF(float *g, Py_ssize_t n, double a, double b) {        \
    /* in float: a and b rounded once (6e-8), below the float32 result's own rounding */    \
    float af = (float)a, bf = (float)b; Py_ssize_t k;                                        \
    LSREF_PRAGMA(omp simd)                                                                   \
    for (k = 0; k < n; k++) g[k] = af * g[k] - bf; }                                         \
ATTR LSREF_UNUSED static void lsref_affine_f64_##SUF(double *g, Py_ssize_t n, double a, double b) {       \
    Py_ssize_t k;                                                                            \
    LSREF_PRAGMA(omp simd)                                                                   \
    for (k = 0; k < n; k++) g[k] = a * g[k] - b; }

typedef struct {
    const char *name;
    float (*max_f32)(const float *, Py_ssize_t);
    double (*max_f64)(const double *, Py_ssize_t);
    void (*expsum_f32)(const float *, Py_ssize_t, float, float *, double *, double *);
    void (*expsum_f64)(const double *, Py_ssize_t, double, double *, double *, double *);
    void (*affine_f32)(float *, Py_ssize_t, double, double);
    void (*affine_f64)(double *, Py_ssize_t, double, double);
    double (*rest_f32)(const float *, Py_ssize_t, double, float *);
    double (*rest_sum_f32)(const float *, Py_ssize_t, double);
    /* the most float roundings a term of expsum_f32's exp sum goes through before double
       (its partial sums are float): 64 in the compiled loop's blocks (if not vectorised),
       10 in the AVX2 one (8 per lane, 2 from the masked tail, 1 joining the two halves) */
    int f32_sum_run;
} lsref_simd_table;

#define LSREF_TABLE(SUF, NAME) { NAME, lsref_max_f32_##SUF, lsref_max_f64_##SUF,             \
    lsref_expsum_f32_##SUF, lsref_expsum_f64_##SUF, lsref_affine_f32_##SUF,                  \
    lsref_affine_f64_##SUF, lsref_rest_f32_##SUF, lsref_rest_sum_f32_##SUF, 64 }

LSREF_SWEEPS(generic, )
static const lsref_simd_table lsref_simd_generic = LSREF_TABLE(generic, "generic");

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define LSREF_X86_DISPATCH 1
LSREF_SWEEPS(avx2, __attribute__((target("avx2,fma"))))
LSREF_SWEEPS(avx512, __attribute__((target("avx512f,avx2,fma"))))
#endif

static lsref_simd_table lsref_simd = LSREF_TABLE(generic, "generic");

/* ---- small K: 8 rows at a time, one row per vector lane (AVX2) ------------------------------
 * For K up to LSREF_BLOCK_K the per-row sweeps are mostly overhead (call, horizontal
 * reductions, a masked tail, a scalar log per row). This block kernel transposes 8 rows so
 * that one vector holds class k of all 8, and max, exp, the sums and the finish (log
 * included) run across rows (`lsref bench`: 262144 x 10 and 65536 x 100 take it). It covers
 * the plain case only: float32 logits, class-index targets,
 * no class weights. A row it cannot finish exactly as the per-row path would (an ignored or
 * out-of-range target, a non-finite max or sum, a masked target, a row that needs the log1p
 * refinement) is flagged in redo[] and left to the per-row path. */
typedef struct {
    double q_t, beta, W, scale, lam, kl_const;
    const double *row_scale;                       /* sample weights, or NULL */
    int64_t ignore_index;
    int has_ignore;
    /* a dominated row (se < 2) whose loss _row_index would refine (its _mass_at_max rule,
       decided once per call in ce_index): when its max is the target / another class */
    int refine_if_target_max, refine_if_other_max;
    /* write the gradient's blocks with streaming stores (lsref_small_stream, decided once
       per call in _index_rows); the caller then calls lsref_store_fence before its results
       are read */
    int stream;
} lsref_small_params;

/* A gradient at least this large (bytes) is written past the caches by the small-K blocks
 * of 64 classes or more, where they copy a block from their buffer (lsref_small8_put): the
 * stores then need no read of the lines they fill first (a write-allocate), a third of the
 * block's memory traffic. Below it the gradient stays in the caches for whatever reads it
 * next. Paired A/B (benchmarks/ab.py, scale-3 logits) on a 2-core AVX-512 AMD EPYC (L3 32
 * MiB): 2 threads 0.79-0.87x the time at K = 64..100 and 18-52 MB, one thread 0.77-0.92x;
 * about 1.0x at 16 MB and at K = 50; but 1.1-1.8x *slower* at K = 17..33 and 3-4x at K = 3
 * (short blocks: 8 K floats), hence K >= 64 only. */
#define LSREF_STREAM_BYTES (16 << 20)

/* Whether the small-K blocks stream the (N, K) gradient at g (the logits at z): K >= 64,
 * large, not in place (the logits' lines are in the caches already), float-aligned. */
static int lsref_small_stream(const float *z, const float *g, size_t N, size_t K)
{
    return g != NULL && g != z && K >= 64
           && N * K * sizeof(float) >= (size_t)LSREF_STREAM_BYTES
           && ((uintptr_t)g & (sizeof(float) - 1)) == 0;
}

/* The most classes the block kernel takes (its scratch: about 100 bytes per class). Measured
 * on an AVX2 CPU (AMD EPYC, one thread, `lsref bench`-like shapes of 4M logits), against the
 * row path: value and gradient 2.4x faster at K = 32, 1.4x at 64, equal at about 100 and
 * 0.85x at 112..128 (the transposes back into rows cost more than the row path's sweeps
 * there); the loss alone is faster up to 128, but one limit for both keeps a loss the same
 * with and without its gradient. */
#define LSREF_BLOCK_K 100
/* v[] of the block kernel: whole groups of 8 classes */
#define LSREF_BLOCK_K8 ((LSREF_BLOCK_K + 7) & ~7)

#if defined(LSREF_X86_DISPATCH)
#include <immintrin.h>

/* ---- AVX2 float32 sweeps, written with intrinsics ------------------------------------------
 * The compiled C loop above is bound by latency, far from the FMA units' throughput: the
 * exponential's chain of dependent operations is longer than the out-of-order window can
 * hide. This version shortens the chain and the bookkeeping (`lsref bench` against
 * `LSREF_SIMD=generic lsref bench`, float32 workloads, measures the gain on a given CPU):
 *   - one-step reduction r = x - n ln2f in one FMA (the product is exact inside it); the
 *     error of ln2f, n (ln2f - ln2), is added back off the critical path, in the linear term;
 *   - q(r) by Estrin's scheme, not Horner's, and 2^n folded into the last FMA:
 *     y = 2^n + (r 2^n) q(r), so exp(0) is exactly 1;
 *   - two rows of lanes interleaved; float partial sums flushed to double every 128 terms
 *     without a horizontal reduction (which the compiled loop paid every 64).
 * Same polynomial as lsref_exp_neg_f32; max relative error 3.3e-7 over [-87, 0] (the scalar
 * function: 2.5e-7). Results below the smallest normal number and exp(-inf) are exactly 0; NaN
 * stays NaN. */
__attribute__((target("avx2,fma")))
static inline __m256 lsref_exp_neg_v8(__m256 x)
{
    const __m256 big = _mm256_set1_ps(12582912.0f);                  /* 1.5 * 2^23 */
    __m256 t = _mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), big);
    __m256 n = _mm256_sub_ps(t, big);                                /* round(x / ln 2) */
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693147182464599609375f), x);
    __m256 r2 = _mm256_mul_ps(r, r);
    __m256 a = _mm256_fmadd_ps(_mm256_set1_ps(0.4999937117099762f), r, _mm256_set1_ps(1.0f));
    __m256 b = _mm256_fmadd_ps(_mm256_set1_ps(0.04187564551830292f), r,
                               _mm256_set1_ps(0.16666577756404877f));
    __m256 c = _mm256_fmadd_ps(_mm256_set1_ps(0.008363173343241215f), r2, b);
    __m256 q = _mm256_fmadd_ps(c, r2, a);                            /* q(r), degree 4 */
    __m256 s = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(
                   _mm256_castps_si256(t), _mm256_set1_epi32(127 - 0x4B400000)), 23));
    /* ln2f - ln2 = 1.9046543e-9: r + n * that is the reduced argument to ~1e-14 */
    __m256 rs = _mm256_mul_ps(_mm256_fmadd_ps(n, _mm256_set1_ps(1.9046542999577679e-09f), r), s);
    __m256 y = _mm256_fmadd_ps(q, rs, s);
    /* x >= -87, or NaN: keep y; -inf and everything below the normal range: 0 */
    return _mm256_and_ps(y, _mm256_cmp_ps(x, _mm256_set1_ps(-87.0f), _CMP_NLT_UQ));
}

/* The sweeps' last 1..8 terms: z[k..n) - M into *d and their exps into *y, 0 in the lanes
 * past n (*msk: the lanes before it). */
__attribute__((target("avx2,fma")))
static inline void lsref_tail8(const float *z, Py_ssize_t k, Py_ssize_t n, __m256 M,
                               __m256i *msk, __m256 *d, __m256 *y)
{
    *msk = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(n - k)),
                              _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    __m256 keep = _mm256_castsi256_ps(*msk);
    *d = _mm256_and_ps(_mm256_sub_ps(_mm256_maskload_ps(z + k, *msk), M), keep);
    *y = _mm256_and_ps(lsref_exp_neg_v8(*d), keep);
}

__attribute__((target("avx2,fma")))
static float lsref_max_f32_avx2i(const float *z, Py_ssize_t n)
{
    /* max_ps(v, acc) returns acc where v is NaN: NaN passes over, as in the C loop */
    __m256 a = _mm256_set1_ps(-INFINITY), b = a, c = a, d = a;
    float f[8], m;
    Py_ssize_t k = 0;
    int j;
    for (; k + 32 <= n; k += 32) {
        a = _mm256_max_ps(_mm256_loadu_ps(z + k), a);
        b = _mm256_max_ps(_mm256_loadu_ps(z + k + 8), b);
        c = _mm256_max_ps(_mm256_loadu_ps(z + k + 16), c);
        d = _mm256_max_ps(_mm256_loadu_ps(z + k + 24), d);
    }
    for (; k + 8 <= n; k += 8) a = _mm256_max_ps(_mm256_loadu_ps(z + k), a);
    _mm256_storeu_ps(f, _mm256_max_ps(_mm256_max_ps(a, b), _mm256_max_ps(c, d)));
    m = f[0];
    for (j = 1; j < 8; j++) m = f[j] > m ? f[j] : m;
    for (; k < n; k++) m = z[k] > m ? z[k] : m;
    return m;
}

__attribute__((target("avx2,fma")))
static void lsref_expsum_f32_avx2i(const float *z, Py_ssize_t n, float m, float *e,
                                   double *se_out, double *u_out)
{
    const __m256 M = _mm256_set1_ps(m);
    __m256d S0 = _mm256_setzero_pd(), S1 = S0, U0 = S0, U1 = S0;
    double sf[4], uf[4];
    Py_ssize_t k = 0;
    while (k < n) {
        __m256 s0 = _mm256_setzero_ps(), s1 = s0, u0 = s0, u1 = s0;
        Py_ssize_t end = k + 128 <= n ? k + 128 : k + ((n - k) & ~(Py_ssize_t)15);
        for (; k < end; k += 16) {
            __m256 d0 = _mm256_sub_ps(_mm256_loadu_ps(z + k), M);
            __m256 d1 = _mm256_sub_ps(_mm256_loadu_ps(z + k + 8), M);
            __m256 y0 = lsref_exp_neg_v8(d0), y1 = lsref_exp_neg_v8(d1);
            if (e) { _mm256_storeu_ps(e + k, y0); _mm256_storeu_ps(e + k + 8, y1); }
            s0 = _mm256_add_ps(s0, y0); s1 = _mm256_add_ps(s1, y1);
            u0 = _mm256_add_ps(u0, d0); u1 = _mm256_add_ps(u1, d1);
        }
        while (k < n && n - k < 16) {              /* the last 1..15 terms, 8 at a time, masked */
            __m256i msk;
            __m256 d, y;
            lsref_tail8(z, k, n, M, &msk, &d, &y);
            if (e) _mm256_maskstore_ps(e + k, msk, y);
            s0 = _mm256_add_ps(s0, y); u0 = _mm256_add_ps(u0, d);
            k = k + 8 < n ? k + 8 : n;
        }
        s0 = _mm256_add_ps(s0, s1); u0 = _mm256_add_ps(u0, u1);
        S0 = _mm256_add_pd(S0, _mm256_cvtps_pd(_mm256_castps256_ps128(s0)));
        S1 = _mm256_add_pd(S1, _mm256_cvtps_pd(_mm256_extractf128_ps(s0, 1)));
        U0 = _mm256_add_pd(U0, _mm256_cvtps_pd(_mm256_castps256_ps128(u0)));
        U1 = _mm256_add_pd(U1, _mm256_cvtps_pd(_mm256_extractf128_ps(u0, 1)));
    }
    _mm256_storeu_pd(sf, _mm256_add_pd(S0, S1));
    _mm256_storeu_pd(uf, _mm256_add_pd(U0, U1));
    *se_out = (sf[0] + sf[1]) + (sf[2] + sf[3]);
    *u_out = (uf[0] + uf[1]) + (uf[2] + uf[3]);
}

/* rest = sum of exp(z_k - m) over k other than one max term, from the sweep's own float exps
 * (lsref_exp_neg_v8) with the terms at the max (exactly 1) counted apart from the float
 * partial sums: a dominated row's rest keeps its relative accuracy, which up to 10 float
 * roundings of 1 + small terms in lsref_expsum_f32_avx2i would lose (a dominated row's loss
 * is about c rest, far below the target mass c with small smoothing: K = 300, eps = 0.02
 * lost 1.2e-6 of it). Only the row path's refinement calls it, where that matters
 * (_float_se_too_coarse): counting the max terms in every sweep would add a compare and an
 * add per term to every row for the few that need it (asv: bench_loss.LossGradient times the
 * common sweep at large K, bench_loss.AtOptimum the dominated rows that take this one). */
__attribute__((target("avx2,fma")))
static double lsref_rest_sum_f32_avx2i(const float *z, Py_ssize_t n, double m)
{
    const __m256 M = _mm256_set1_ps((float)m), Z = _mm256_setzero_ps();
    __m256d S0 = _mm256_setzero_pd(), S1 = S0;
    __m256i C = _mm256_setzero_si256();            /* per lane: how many terms were the max */
    double sf[4];
    int32_t cf[8];
    Py_ssize_t k = 0;
    while (k < n) {
        __m256 s0 = _mm256_setzero_ps(), s1 = s0;
        Py_ssize_t end = k + 128 <= n ? k + 128 : k + ((n - k) & ~(Py_ssize_t)15);
        for (; k < end; k += 16) {
            __m256 d0 = _mm256_sub_ps(_mm256_loadu_ps(z + k), M);
            __m256 d1 = _mm256_sub_ps(_mm256_loadu_ps(z + k + 8), M);
            __m256 y0 = lsref_exp_neg_v8(d0), y1 = lsref_exp_neg_v8(d1);
            __m256 a0 = _mm256_cmp_ps(d0, Z, _CMP_EQ_OQ), a1 = _mm256_cmp_ps(d1, Z, _CMP_EQ_OQ);
            s0 = _mm256_add_ps(s0, _mm256_andnot_ps(a0, y0));
            s1 = _mm256_add_ps(s1, _mm256_andnot_ps(a1, y1));
            C = _mm256_sub_epi32(C, _mm256_add_epi32(_mm256_castps_si256(a0),
                                                     _mm256_castps_si256(a1)));
        }
        while (k < n && n - k < 16) {              /* the last 1..15 terms, 8 at a time, masked */
            __m256i msk;
            __m256 d, y, a;
            lsref_tail8(z, k, n, M, &msk, &d, &y);
            a = _mm256_and_ps(_mm256_cmp_ps(d, Z, _CMP_EQ_OQ), _mm256_castsi256_ps(msk));
            s0 = _mm256_add_ps(s0, _mm256_andnot_ps(a, y));
            C = _mm256_sub_epi32(C, _mm256_castps_si256(a));
            k = k + 8 < n ? k + 8 : n;
        }
        s0 = _mm256_add_ps(s0, s1);
        S0 = _mm256_add_pd(S0, _mm256_cvtps_pd(_mm256_castps256_ps128(s0)));
        S1 = _mm256_add_pd(S1, _mm256_cvtps_pd(_mm256_extractf128_ps(s0, 1)));
    }
    _mm256_storeu_pd(sf, _mm256_add_pd(S0, S1));
    _mm256_storeu_si256((__m256i *)cf, C);
    return ((sf[0] + sf[1]) + (sf[2] + sf[3]))
           + (double)((int64_t)cf[0] + cf[1] + cf[2] + cf[3] + cf[4] + cf[5] + cf[6] + cf[7] - 1);
}

static const lsref_simd_table lsref_simd_avx2 = { "avx2+fma", lsref_max_f32_avx2i,
    lsref_max_f64_avx2, lsref_expsum_f32_avx2i, lsref_expsum_f64_avx2, lsref_affine_f32_avx2,
    lsref_affine_f64_avx2, lsref_rest_f32_avx2, lsref_rest_sum_f32_avx2i, 10 };

/* ---- AVX-512 float32 exp sweep, written with intrinsics ------------------------------------
 * lsref_exp_neg_v8 and lsref_expsum_f32_avx2i at 16 lanes, the same polynomial and order of
 * operations, the tail in one masked step (AVX-512's masks cost nothing extra), float partial
 * sums flushed to double every 128 terms. The compiled loop at 512 bits was slower than the
 * AVX2 intrinsics on an AVX-512 AMD EPYC (loss at 128 x 1000: 36 against 28 us). */
__attribute__((target("avx512f,avx2,fma")))
static inline __m512 lsref_exp_neg_v16(__m512 x)
{
    const __m512 big = _mm512_set1_ps(12582912.0f);                  /* 1.5 * 2^23 */
    __m512 t = _mm512_fmadd_ps(x, _mm512_set1_ps(1.44269504088896341f), big);
    __m512 n = _mm512_sub_ps(t, big);                                /* round(x / ln 2) */
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693147182464599609375f), x);
    __m512 r2 = _mm512_mul_ps(r, r);
    __m512 a = _mm512_fmadd_ps(_mm512_set1_ps(0.4999937117099762f), r, _mm512_set1_ps(1.0f));
    __m512 b = _mm512_fmadd_ps(_mm512_set1_ps(0.04187564551830292f), r,
                               _mm512_set1_ps(0.16666577756404877f));
    __m512 c = _mm512_fmadd_ps(_mm512_set1_ps(0.008363173343241215f), r2, b);
    __m512 q = _mm512_fmadd_ps(c, r2, a);                            /* q(r), degree 4 */
    __m512 s = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(
                   _mm512_castps_si512(t), _mm512_set1_epi32(127 - 0x4B400000)), 23));
    __m512 rs = _mm512_mul_ps(_mm512_fmadd_ps(n, _mm512_set1_ps(1.9046542999577679e-09f), r), s);
    __m512 y = _mm512_fmadd_ps(q, rs, s);
    /* x >= -87, or NaN: keep y; -inf and everything below the normal range: 0 */
    return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.0f), _CMP_NLT_UQ), y);
}

/* 16 floats to double, added into lo (lanes 0..7) and hi (8..15) */
__attribute__((target("avx512f,avx2,fma")))
static inline void lsref_add16_pd(__m512d *lo, __m512d *hi, __m512 x)
{
    *lo = _mm512_add_pd(*lo, _mm512_cvtps_pd(_mm512_castps512_ps256(x)));
    *hi = _mm512_add_pd(*hi, _mm512_cvtps_pd(_mm256_castpd_ps(
              _mm512_extractf64x4_pd(_mm512_castps_pd(x), 1))));
}

__attribute__((target("avx512f,avx2,fma")))
static void lsref_expsum_f32_avx512i(const float *z, Py_ssize_t n, float m, float *e,
                                     double *se_out, double *u_out)
{
    const __m512 M = _mm512_set1_ps(m);
    __m512d S0 = _mm512_setzero_pd(), S1 = S0, U0 = S0, U1 = S0;
    double sf[8], uf[8];
    Py_ssize_t k = 0;
    while (k < n) {
        __m512 s0 = _mm512_setzero_ps(), s1 = s0, u0 = s0, u1 = s0;
        Py_ssize_t end = k + 128 <= n ? k + 128 : k + ((n - k) & ~(Py_ssize_t)31);
        for (; k < end; k += 32) {
            __m512 d0 = _mm512_sub_ps(_mm512_loadu_ps(z + k), M);
            __m512 d1 = _mm512_sub_ps(_mm512_loadu_ps(z + k + 16), M);
            __m512 y0 = lsref_exp_neg_v16(d0), y1 = lsref_exp_neg_v16(d1);
            if (e) { _mm512_storeu_ps(e + k, y0); _mm512_storeu_ps(e + k + 16, y1); }
            s0 = _mm512_add_ps(s0, y0); s1 = _mm512_add_ps(s1, y1);
            u0 = _mm512_add_ps(u0, d0); u1 = _mm512_add_ps(u1, d1);
        }
        while (k < n && n - k < 32) {              /* the last 1..31 terms, 16 at a time, masked */
            const Py_ssize_t left = n - k;
            const __mmask16 msk = (__mmask16)(left >= 16 ? 0xFFFFu : (1u << left) - 1u);
            __m512 d = _mm512_maskz_sub_ps(msk, _mm512_maskz_loadu_ps(msk, z + k), M);
            __m512 y = _mm512_maskz_mov_ps(msk, lsref_exp_neg_v16(d));
            if (e) _mm512_mask_storeu_ps(e + k, msk, y);
            s0 = _mm512_add_ps(s0, y); u0 = _mm512_add_ps(u0, d);
            k = left >= 16 ? k + 16 : n;
        }
        s0 = _mm512_add_ps(s0, s1); u0 = _mm512_add_ps(u0, u1);
        lsref_add16_pd(&S0, &S1, s0);
        lsref_add16_pd(&U0, &U1, u0);
    }
    _mm512_storeu_pd(sf, _mm512_add_pd(S0, S1));
    _mm512_storeu_pd(uf, _mm512_add_pd(U0, U1));
    *se_out = ((sf[0] + sf[1]) + (sf[2] + sf[3])) + ((sf[4] + sf[5]) + (sf[6] + sf[7]));
    *u_out = ((uf[0] + uf[1]) + (uf[2] + uf[3])) + ((uf[4] + uf[5]) + (uf[6] + uf[7]));
}

/* the compiled loops at 512 bits but for the float32 exp sweep (above); a term of its sum goes
   through up to 6 float roundings (4 per lane in a whole block of 128 terms; in the last block
   at most 3, then 2 from the masked tail; 1 joining s0 and s1) */
static const lsref_simd_table lsref_simd_avx512 = { "avx512f", lsref_max_f32_avx512,
    lsref_max_f64_avx512, lsref_expsum_f32_avx512i, lsref_expsum_f64_avx512,
    lsref_affine_f32_avx512, lsref_affine_f64_avx512, lsref_rest_f32_avx512,
    lsref_rest_sum_f32_avx512, 6 };

/* exp(x) for x <= 0, 4 doubles (lsref_exp_neg_v8d: the same at 8, to be changed with it):
 * lsref_exp_neg_f64's reduction and polynomial (~1 ulp);
 * x < -708 (and -inf) gives 0. */
__attribute__((target("avx2,fma")))
static inline __m256d lsref_exp_neg_v4d(__m256d x)
{
    const __m256d big = _mm256_set1_pd(6755399441055744.0);          /* 1.5 * 2^52 */
    __m256d xc = _mm256_max_pd(x, _mm256_set1_pd(-708.0));
    __m256d t = _mm256_fmadd_pd(xc, _mm256_set1_pd(1.4426950408889634074), big);
    __m256d n = _mm256_sub_pd(t, big);
    __m256d r = _mm256_fnmadd_pd(n, _mm256_set1_pd(6.93147180369123816490e-01), xc);
    r = _mm256_fnmadd_pd(n, _mm256_set1_pd(1.90821492927058770002e-10), r);
    __m256d p = _mm256_set1_pd(1.0 / 6227020800.0);
    p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(1.0 / 479001600.0));
    p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(1.0 / 39916800.0));
    p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(1.0 / 3628800.0));
    p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(1.0 / 362880.0));
    p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(1.0 / 40320.0));
    p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(1.0 / 5040.0));
    p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(1.0 / 720.0));
    p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(1.0 / 120.0));
    p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(1.0 / 24.0));
    p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(1.0 / 6.0));
    p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(0.5));
    p = _mm256_add_pd(_mm256_fmadd_pd(p, _mm256_mul_pd(r, r), r), _mm256_set1_pd(1.0));
    __m256d s = _mm256_castsi256_pd(_mm256_slli_epi64(_mm256_add_epi64(
        _mm256_castpd_si256(t), _mm256_set1_epi64x(1023 - 0x4338000000000000ll)), 52));
    return _mm256_and_pd(_mm256_mul_pd(p, s),
                         _mm256_cmp_pd(x, _mm256_set1_pd(-708.0), _CMP_NLT_UQ));
}

/* An 8 x 8 block of floats transposed in registers: lane j of r[i] becomes lane i of r[j]. */
__attribute__((target("avx2,fma")))
static inline void lsref_transpose8(__m256 r[8])
{
    __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
    __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
    __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
    __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
    __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xEE);
    __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    r[0] = _mm256_permute2f128_ps(s0, s4, 0x20);
    r[1] = _mm256_permute2f128_ps(s1, s5, 0x20);
    r[2] = _mm256_permute2f128_ps(s2, s6, 0x20);
    r[3] = _mm256_permute2f128_ps(s3, s7, 0x20);
    r[4] = _mm256_permute2f128_ps(s0, s4, 0x31);
    r[5] = _mm256_permute2f128_ps(s1, s5, 0x31);
    r[6] = _mm256_permute2f128_ps(s2, s6, 0x31);
    r[7] = _mm256_permute2f128_ps(s3, s7, 0x31);
}

/* log(x) for x in [1, 2^1023), 4 doubles (lsref_log_v8d: the same at 8, to be changed with
 * it), within 1.5 ulp (tests/test_simd.py: 1.07 measured
 * against mpmath; 2.9e-16 absolutely on [1, 17]): the small-K blocks' log(se), se in [1, K]
 * (glibc's log is the row path's). x = 2^k f with
 * f in [sqrt(2)/2, sqrt(2)), log f = 2 atanh(s), s = (f - 1)/(f + 1), |s| < 0.172, by its
 * series to s^21 (the next term is below 2^-53 of the sum), and k ln 2 in two parts (fdlibm's
 * split: k ln2_hi is exact). Outside the domain the result is meaningless (the blocks send
 * such rows back to the row path, which never reads it). */
__attribute__((target("avx2,fma")))
static inline __m256d lsref_log_v4d(__m256d x)
{
    const __m256i sqrt_half = _mm256_set1_epi64x(0x3FE6A09E667F3BCDll);
    __m256i bits = _mm256_castpd_si256(x);
    __m256i k = _mm256_srli_epi64(_mm256_sub_epi64(bits, sqrt_half), 52);     /* x >= 1: >= 0 */
    __m256d f = _mm256_castsi256_pd(_mm256_sub_epi64(bits, _mm256_slli_epi64(k, 52)));
    /* k (0..1023) as a double: its bits under 2^52's exponent, minus 2^52 */
    __m256d kd = _mm256_sub_pd(_mm256_castsi256_pd(_mm256_or_si256(
                     k, _mm256_set1_epi64x(0x4330000000000000ll))),
                 _mm256_set1_pd(4503599627370496.0));
    __m256d s = _mm256_div_pd(_mm256_sub_pd(f, _mm256_set1_pd(1.0)),
                              _mm256_add_pd(f, _mm256_set1_pd(1.0)));
    __m256d z = _mm256_mul_pd(s, s);
    __m256d p = _mm256_set1_pd(2.0 / 21.0);
    p = _mm256_fmadd_pd(p, z, _mm256_set1_pd(2.0 / 19.0));
    p = _mm256_fmadd_pd(p, z, _mm256_set1_pd(2.0 / 17.0));
    p = _mm256_fmadd_pd(p, z, _mm256_set1_pd(2.0 / 15.0));
    p = _mm256_fmadd_pd(p, z, _mm256_set1_pd(2.0 / 13.0));
    p = _mm256_fmadd_pd(p, z, _mm256_set1_pd(2.0 / 11.0));
    p = _mm256_fmadd_pd(p, z, _mm256_set1_pd(2.0 / 9.0));
    p = _mm256_fmadd_pd(p, z, _mm256_set1_pd(2.0 / 7.0));
    p = _mm256_fmadd_pd(p, z, _mm256_set1_pd(2.0 / 5.0));
    p = _mm256_fmadd_pd(p, z, _mm256_set1_pd(2.0 / 3.0));
    /* 2s + s z p, the small part added to k ln2_lo first */
    __m256d lo = _mm256_fmadd_pd(_mm256_mul_pd(s, z), p,
                                 _mm256_mul_pd(kd, _mm256_set1_pd(1.90821492927058770002e-10)));
    __m256d logf = _mm256_add_pd(_mm256_add_pd(s, s), lo);
    return _mm256_fmadd_pd(kd, _mm256_set1_pd(6.93147180369123816490e-01), logf);
}

/* The rows of one 8-row block (classes k0.. of 8 rows, stride K) turned into one class per
 * vector: v[k0 + k] holds class k0 + k of rows 0..7, for the 8 classes from k0 (n < 8: the
 * first n, the lanes past them 0; full rows are loaded whole, a short end masked). */
__attribute__((target("avx2,fma")))
static inline void lsref_block_load8(const float *base, Py_ssize_t K, Py_ssize_t k0,
                                     Py_ssize_t n, __m256 *v)
{
    int j;
    if (n == 8) {
        for (j = 0; j < 8; j++) v[j] = _mm256_loadu_ps(base + j * K + k0);
    } else {
        const __m256i keep = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n),
                                                _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        for (j = 0; j < 8; j++) v[j] = _mm256_maskload_ps(base + j * K + k0, keep);
    }
    lsref_transpose8(v);
}

/* g = A e - B for the 8 classes from k0 (n <= 8 of them) of the block's 8 rows (the rows in
 * dom: A ex - s beta from their exps in double, exd, with their own A and s beta, DA and DB),
 * turned back into rows and stored at dst + j K + k0 with full 8-wide stores: a short end
 * spills into the rows after it, which are written later, and up to 8 floats past the block
 * (dst has room for them), unless last_exact: then a store that would pass the block's end
 * is masked to its n classes. */
__attribute__((target("avx2,fma")))
static inline void lsref_block_store8(float *dst, Py_ssize_t K, Py_ssize_t k0, Py_ssize_t n,
                                      const __m256 *e, __m256 Av, __m256 Bv, unsigned dom,
                                      const double (*exd)[8], const __m256d *DA,
                                      const __m256d *DB, int last_exact)
{
    __m256 r[8];
    Py_ssize_t k;
    int j;
    const __m256 sel = _mm256_castsi256_ps(_mm256_cmpgt_epi32(
        _mm256_and_si256(_mm256_set1_epi32((int)dom),
                         _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128)),
        _mm256_setzero_si256()));
    for (k = 0; k < 8; k++) {
        if (k >= n) {
            r[k] = _mm256_setzero_ps();
            continue;
        }
        r[k] = _mm256_fmsub_ps(Av, e[k0 + k], Bv);
        if (dom)
            r[k] = _mm256_blendv_ps(r[k], _mm256_set_m128(
                _mm256_cvtpd_ps(_mm256_fmsub_pd(DA[1], _mm256_loadu_pd(exd[k0 + k] + 4), DB[1])),
                _mm256_cvtpd_ps(_mm256_fmsub_pd(DA[0], _mm256_loadu_pd(exd[k0 + k]), DB[0]))), sel);
    }
    lsref_transpose8(r);
    if (n < 8 && last_exact) {
        /* a row whose 8-wide store would pass the block's end (the last row; at K < 4 the
           ones before it too) stores exactly its n classes */
        const __m256i keep = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n),
                                                _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        for (j = 0; j < 8; j++) {
            if (j * K + k0 + 8 > 8 * K) _mm256_maskstore_ps(dst + j * K + k0, keep, r[j]);
            else _mm256_storeu_ps(dst + j * K + k0, r[j]);
        }
    } else {
        for (j = 0; j < 8; j++) _mm256_storeu_ps(dst + j * K + k0, r[j]);
    }
}

/* Every gradient row of the block into dst (stride K, room for 8 K + 8 floats, or 8 K with
 * last_exact): the short end
 * of the classes first, row after row, so that each spill is overwritten by the row it
 * spilled into (its short end, or its first 8 classes). */
__attribute__((target("avx2,fma")))
static inline void lsref_block_store(float *dst, Py_ssize_t K, const __m256 *e, __m256 Av,
                                     __m256 Bv, unsigned dom, const double (*exd)[8],
                                     const __m256d *DA, const __m256d *DB, int last_exact)
{
    const Py_ssize_t full = K & ~(Py_ssize_t)7;
    Py_ssize_t k0;
    if (full < K)
        lsref_block_store8(dst, K, full, K - full, e, Av, Bv, dom, exd, DA, DB, last_exact);
    for (k0 = 0; k0 < full; k0 += 8)
        lsref_block_store8(dst, K, k0, 8, e, Av, Bv, dom, exd, DA, DB, last_exact);
}

/* A dominated row alone (a block with one or two: random logits; lsref_small8_finish): its
 * exps in double from the exact z_k - m, into exr[0..K) (room for K rounded up to 4), 4 classes
 * at a time, and their rest (every class but the target, which is the max: exactly 1) summed
 * class after class, as the 8-row way sums each lane, so that a row's bits do not depend on
 * its neighbours. Kept per row, not scattered into the class-by-class array of the 8-row
 * way (whose vector loads then read what scalar stores had just written) and not blended
 * into every class of the block's stores: 262144 x 10 (one thread, scale-3 logits, 46% of
 * the blocks with a dominated row) 0.95x the time. What such a row still costs is mostly
 * these exps (a C harness with them left out: 0.88x). */
__attribute__((target("avx2,fma")))
static inline double lsref_dom_row_exps(const float *zr, Py_ssize_t K, double m, int32_t t,
                                        double *exr)
{
    const __m128i lane4 = _mm_setr_epi32(0, 1, 2, 3);
    const __m256d M = _mm256_set1_pd(m);
    double acc = 0.0;
    Py_ssize_t k, k0;
    for (k0 = 0; k0 < K; k0 += 4) {
        const __m128i in = _mm_cmpgt_epi32(_mm_set1_epi32((int)(K - k0)), lane4);
        _mm256_storeu_pd(exr + k0, lsref_exp_neg_v4d(_mm256_sub_pd(
            _mm256_cvtps_pd(_mm_maskload_ps(zr + k0, in)), M)));
    }
    for (k = 0; k < K; k++) acc += k == t ? 0.0 : exr[k];
    return acc;
}

/* Row r's gradient from its exps in double (lsref_dom_row_exps): a ex_k - b, rounded to float,
 * the same operations as lsref_block_store8's for a dominated lane, then its target entry gt;
 * exactly its K floats are written (over what the block stored for it, in lsref_small8_put's
 * buffer or in g). */
__attribute__((target("avx2,fma")))
static inline void lsref_dom_row_put(float *gr, Py_ssize_t K, const double *exr, double a,
                                     double b, int32_t t, double gt)
{
    const __m256d A = _mm256_set1_pd(a), B = _mm256_set1_pd(b);
    Py_ssize_t k0;
    for (k0 = 0; k0 + 4 <= K; k0 += 4)
        _mm_storeu_ps(gr + k0, _mm256_cvtpd_ps(_mm256_fmsub_pd(A, _mm256_loadu_pd(exr + k0), B)));
    if (k0 < K)
        _mm_maskstore_ps(gr + k0, _mm_cmpgt_epi32(_mm_set1_epi32((int)(K - k0)),
                                                  _mm_setr_epi32(0, 1, 2, 3)),
                         _mm256_cvtpd_ps(_mm256_fmsub_pd(A, _mm256_loadu_pd(exr + k0), B)));
    gr[t] = (float)gt;
}

/* A block's one or two dominated rows done row by row (lsref_dom_row_exps): which rows, their
 * exps in double, their A and s beta; lsref_small8_put writes them over the block's rows
 * before those leave for g (so that no line of g is written twice: a streamed block's lines
 * would be read back for it). */
typedef struct {
    int n, row[2];
    const double *ex[2];
    double a[2], b[2];
} lsref_dom_rows;

/* D from the one or two rows of lsref_dom_row_exps (rows_of[i]: the row of the exps at ex0 /
 * ex1, -1 for none) that are still dominated (bits of dom), with their A (da) and s beta
 * (db) by row. */
static inline void lsref_dom_rows_of(lsref_dom_rows *D, const int *rows_of,
                                     const double *ex0, const double *ex1, unsigned dom,
                                     const double *da, const double *db)
{
    int i;
    D->n = 0;
    for (i = 0; i < 2; i++) {
        const int r = rows_of[i];
        if (r >= 0 && ((dom >> r) & 1u)) {        /* (a row whose KL cancels left dom) */
            D->row[D->n] = r;
            D->ex[D->n] = i ? ex1 : ex0;
            D->a[D->n] = da[r];
            D->b[D->n] = db[r];
            D->n++;
        }
    }
}

/* The gradient rows of a block of 8 (lsref_block_store's arguments; tt and gt: the targets and
 * their gradient entries) into g, the finished rows only (bits of fine). The rows go into buf
 * (in L1) first, then are copied to g: 8 rows written in 8 interleaved streams straight into
 * g cost more than the copy (up to 1.5x the block's time at K = 64..128). A block with a row
 * left to the row path copies only its finished rows (in place, g is the logits the row path
 * has yet to read). */
__attribute__((target("avx2,fma")))
static inline void lsref_small8_put(float *g, Py_ssize_t i0, Py_ssize_t K, const __m256 *e,
                                    __m256 Av, __m256 Bv, unsigned dom,
                                    const double (*exd)[8], const __m256d *DA,
                                    const __m256d *DB, unsigned fine, const int32_t *tt,
                                    const double *gt, int P_stream, const lsref_dom_rows *D)
{
    float buf[8 * LSREF_BLOCK_K + 8];
    float *const out = g + i0 * K;
    Py_ssize_t j, k;
    if (fine == 0xFFu && K >= 8 && K <= 16) {
        /* 8 to 16 classes: the block's 8 rows are one short stretch of g (80 floats at
           K = 10), written in place; a store that would pass the block's end is masked (a
           spill could reach another thread's rows, or, in place, logits not yet read), then
           the targets. Through buf and a copy, the copy's loads waited on the scalar target
           stores (8% of the time at 262144 x 10). Below 8 classes, the masked stores of up
           to 3 rows cost more than the copy. */
        lsref_block_store(out, K, e, Av, Bv, dom, exd, DA, DB, 1);
        for (j = 0; j < 8; j++) out[j * K + tt[j]] = (float)gt[j];
        for (j = 0; j < D->n; j++)
            lsref_dom_row_put(out + D->row[j] * K, K, D->ex[j], D->a[j], D->b[j],
                              tt[D->row[j]], gt[D->row[j]]);
        return;
    }
    lsref_block_store(buf, K, e, Av, Bv, dom, exd, DA, DB, 0);
    for (j = 0; j < 8; j++) buf[j * K + tt[j]] = (float)gt[j];
    for (j = 0; j < D->n; j++)
        lsref_dom_row_put(buf + D->row[j] * K, K, D->ex[j], D->a[j], D->b[j], tt[D->row[j]],
                          gt[D->row[j]]);
    if (fine == 0xFFu && P_stream) {               /* past the caches (LSREF_STREAM_BYTES) */
        /* whole 64-byte lines only, streamed; the block's partial first and last lines (which
           the blocks beside it share) stored as usual. Blocks of fewer classes are too short
           for this: at K = 3 (96 bytes a block) streaming ran 3-4x slower. */
        const Py_ssize_t n = 8 * K;
        Py_ssize_t i = (Py_ssize_t)(((64u - ((uintptr_t)out & 63u)) & 63u) / sizeof(float));
        for (j = 0; j < i; j++) out[j] = buf[j];   /* up to 15 floats, to a line's start */
        for (; i + 16 <= n; i += 16) {
            _mm256_stream_ps(out + i, _mm256_loadu_ps(buf + i));
            _mm256_stream_ps(out + i + 8, _mm256_loadu_ps(buf + i + 8));
        }
        for (; i < n; i++) out[i] = buf[i];
    } else if (fine == 0xFFu) {                    /* the 8 rows are one stretch of g */
        /* the empty asm keeps the compiler from turning this copy into a call to memcpy
           (which, for K = 10, took 5% of the call; per row at K = 100, 11%) */
        for (k = 0; k < K; k++) {
            _mm256_storeu_ps(out + 8 * k, _mm256_loadu_ps(buf + 8 * k));
            __asm__ volatile("" ::: "memory");
        }
    } else {
        for (j = 0; j < 8; j++)
            if ((fine >> j) & 1u)
                memcpy(out + j * K, buf + j * K, (size_t)K * sizeof(float));
    }
}

/* The row algebra of the small-K blocks (_rowterms.h, w = 1) for 4 rows at once, one per
 * lane, in double: _rowterms.h's lsref_ce_index, lsref_kl_cancels, lsref_row_loss and
 * lsref_grad_factor written again in vectors (called lane by lane instead, 262144 x 10 took
 * 1.24x the time; a change to those functions must be made here too, and in its 8-lane copy
 * lsref_small_rows8; the small-K tests compare both paths with the oracle, and the two
 * widths bit for bit). From the max m, se, d_t = z_t - m and u: the loss
 * (row factor s), lse and A; returns the lanes (bits 0..3) where the KL form cancels (their
 * results are not to be used: the row path refines those rows). log(se), not
 * log1p(se - 1): a row kept here has no tiny loss (the refine flags of lsref_small_params),
 * and the log's 3e-16 absolute error is far below its bound. */
__attribute__((target("avx2,fma")))
static inline unsigned lsref_small_rows4(const lsref_small_params *P, double c, __m256d m,
                                         __m256d se, __m256d dt, __m256d u, __m256d s,
                                         __m256d *loss, __m256d *lse, __m256d *A)
{
    const __m256d L = lsref_log_v4d(se);
    __m256d ce = _mm256_setzero_pd(), lh, cz = _mm256_set1_pd(c);
    unsigned cancels = 0;
    if (P->q_t != 0.0) ce = _mm256_mul_pd(_mm256_set1_pd(P->q_t), _mm256_sub_pd(L, dt));
    if (P->beta != 0.0)
        ce = _mm256_add_pd(ce, _mm256_mul_pd(_mm256_set1_pd(P->beta), _mm256_sub_pd(
                 _mm256_mul_pd(_mm256_set1_pd(P->W - 1.0), L), _mm256_sub_pd(u, dt))));
    *lse = _mm256_add_pd(m, L);
    lh = ce;
    if (P->kl_const != 0.0) {                      /* lsref_kl_cancels */
        const __m256d sign = _mm256_set1_pd(-0.0);
        lh = _mm256_add_pd(ce, _mm256_set1_pd(P->kl_const));
        cancels = (unsigned)_mm256_movemask_pd(_mm256_cmp_pd(
            _mm256_andnot_pd(sign, lh),
            _mm256_mul_pd(_mm256_set1_pd(1e-2), _mm256_andnot_pd(sign, ce)), _CMP_LT_OQ));
    }
    if (P->lam != 0.0) {
        lh = _mm256_add_pd(lh, _mm256_mul_pd(_mm256_mul_pd(_mm256_set1_pd(P->lam), *lse), *lse));
        cz = _mm256_add_pd(cz, _mm256_mul_pd(_mm256_set1_pd(2.0 * P->lam), *lse));
    }
    *loss = _mm256_mul_pd(lh, s);
    *A = _mm256_div_pd(_mm256_mul_pd(s, cz), se);
    return cancels;
}

/* 8 rows (i0..i0+7) of K <= LSREF_BLOCK_K float32 logits, one row per vector lane: each
 * group of 8 classes of the 8 rows is loaded with vector loads and transposed in registers,
 * so that v[k] holds class k of all 8 rows; max, exp and the sums run across rows, and so
 * does the finish in double (log, the row algebra of _rowterms.h, the gradient's factor),
 * 4 rows per vector. A row whose target dominates (target at the max, se < 2) has its
 * gradient finished from its exps in double (below). The gradient is written with full
 * vector stores (lsref_small8_put; masked stores, microcoded on some CPUs, cost more than
 * the rest of the block: only a store that would pass the block's end is masked). */
__attribute__((target("avx2,fma")))
static inline void lsref_small8_finish(const float *z, Py_ssize_t i0, const Py_ssize_t K,
                                       const int64_t *t, const lsref_small_params *Pin,
                                       double *loss, float *g, unsigned char *redo, __m256 m,
                                       const __m256 *e, __m256d SE0, __m256d SE1, __m256d U0,
                                       __m256d U1);

__attribute__((target("avx2,fma")))
static inline void lsref_small8_body(const float *z, Py_ssize_t i0, const Py_ssize_t K,
                                     const int64_t *t, const lsref_small_params *P,
                                     double *loss, float *g, unsigned char *redo)
{
    /* v[k]: class k of the 8 rows; e[k], its exp, takes v[k]'s place (the block's working
       set stays small enough for L1 beside the rows it reads and writes) */
    __m256 v[LSREF_BLOCK_K8], *const e = v;
    Py_ssize_t k, k0;
    const float *base = z + i0 * K;
    /* The block reads 8 rows' worth of contiguous memory in 8 interleaved streams, which the
       hardware prefetchers follow less well than one row after another: the next block's
       logits (8 K floats from base + 8 K, ceil(K / 2) lines of 64 bytes, one more where they
       straddle) are asked for during this block's exp sweep, one line every second class
       (a prefetch never faults, past the array's end included). All of them at once here
       instead (K / 2 prefetches in a row, which fill the core's queue of outstanding misses
       and stall it) took 1.6x the time of the value and gradient at 65536 x 100 on a 2-core
       AVX-512 AMD EPYC (2 threads; a C harness of the kernel alone, runs alternating),
       1.7-2.3x at 102400 x 64, and without any prefetch about 1.5x; through the Python call
       (benchmarks/ab.py) the old way took 1.1-1.25x. Blocks of up to 16 classes (at most 8
       lines; on AVX2 CPUs, where no pairs run, they take this kernel) still ask for them all
       at once, as before: the pairs' measured the same either way. The last line is found
       from the block's last byte (logits need not be float-aligned). */
    const float *const next = base + 8 * K;
    const int spread = K > 16;                     /* a constant in the K <= 16 copies */
    if (spread) __builtin_prefetch((const char *)next + 32 * K - 1, 0, 3);
    else for (k = 0; k < 8 * K; k += 16) __builtin_prefetch(next + k, 0, 3);
    for (k0 = 0; k0 < K; k0 += 8) lsref_block_load8(base, K, k0, K - k0 < 8 ? K - k0 : 8, v + k0);
    __m256 m = _mm256_set1_ps(-INFINITY), m1 = m;
    for (k = 0; k + 1 < K; k += 2) {               /* NaN in v passes over, as in the rows */
        m = _mm256_max_ps(v[k], m);
        m1 = _mm256_max_ps(v[k + 1], m1);
    }
    if (k < K) m = _mm256_max_ps(v[k], m);
    m = _mm256_max_ps(m1, m);
    /* se = (number of max terms, each exactly 1) + the sum of the others: a row that its max
       dominates (se near 1) keeps the relative accuracy of its rest, which K roundings of
       1 + e_k in float would lose (1.3e-6 of a dominated row's loss, K = 3, eps = 0.02). The
       float partial sums of rest and u are flushed to double every 16 classes. */
    __m256d R0 = _mm256_setzero_pd(), R1 = R0, U0 = R0, U1 = R0;
    __m256 nmax = _mm256_setzero_ps();
    for (k0 = 0; k0 < K; k0 += 16) {
        __m256 rest = _mm256_setzero_ps(), u = rest;
        const Py_ssize_t end = k0 + 16 < K ? k0 + 16 : K;
        for (k = k0; k < end; k++) {
            __m256 d = _mm256_sub_ps(v[k], m);
            __m256 at_m = _mm256_cmp_ps(d, _mm256_setzero_ps(), _CMP_EQ_OQ);
            e[k] = lsref_exp_neg_v8(d);
            if (spread && (k & 1) == 0) __builtin_prefetch(next + 8 * k, 0, 3);
            rest = _mm256_add_ps(rest, _mm256_andnot_ps(at_m, e[k]));
            nmax = _mm256_add_ps(nmax, _mm256_and_ps(at_m, _mm256_set1_ps(1.0f)));
            u = _mm256_add_ps(u, d);
        }
        R0 = _mm256_add_pd(R0, _mm256_cvtps_pd(_mm256_castps256_ps128(rest)));
        R1 = _mm256_add_pd(R1, _mm256_cvtps_pd(_mm256_extractf128_ps(rest, 1)));
        U0 = _mm256_add_pd(U0, _mm256_cvtps_pd(_mm256_castps256_ps128(u)));
        U1 = _mm256_add_pd(U1, _mm256_cvtps_pd(_mm256_extractf128_ps(u, 1)));
    }
    const __m256d SE0 = _mm256_add_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(nmax)), R0);
    const __m256d SE1 = _mm256_add_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(nmax, 1)), R1);
    lsref_small8_finish(z, i0, K, t, P, loss, g, redo, m, e, SE0, SE1, U0, U1);
}

/* The rest of a block of 8 rows, from its max m, its exps e[k] (class k of the 8 rows), se
 * (SE0: rows 0..3, SE1: 4..7) and u (U0, U1) as summed above: the targets' terms, which rows
 * are finished here, the row algebra in double, the dominated rows, the gradient's stores. */
__attribute__((target("avx2,fma")))
static inline void lsref_small8_finish(const float *z, Py_ssize_t i0, const Py_ssize_t K,
                                       const int64_t *t, const lsref_small_params *Pin,
                                       double *loss, float *g, unsigned char *redo, __m256 m,
                                       const __m256 *e, __m256d SE0, __m256d SE1, __m256d U0,
                                       __m256d U1)
{
    /* the parameters copied: the stores into loss and g cannot touch a local, so they stay
       in registers and their tests are not repeated */
    const lsref_small_params Pc = *Pin, *const P = &Pc;
    int32_t tt[8];                                 /* the targets, 0 where not valid */
    unsigned fine;                                 /* bit j: row j is finished here */
    Py_ssize_t j, k, k0;
    const float *base = z + i0 * K;
    fine = 0;
    for (j = 0; j < 8; j++) {
        int64_t tj = t[i0 + j];
        int ok = tj >= 0 && tj < K && !(P->has_ignore && tj == P->ignore_index);
        fine |= (unsigned)ok << j;
        tt[j] = ok ? (int32_t)tj : 0;              /* a safe index for the gather */
    }
    const __m256i idx = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
                                           _mm256_set1_epi32((int)K));
    const __m256 zt = _mm256_i32gather_ps(base, _mm256_add_epi32(idx,
                                          _mm256_loadu_si256((const __m256i *)tt)), 4);
    /* exp(z_t - m) exactly as e[t] was computed, one lane per row */
    const __m256 et = lsref_exp_neg_v8(_mm256_sub_ps(zt, m));
    /* A row is finished here if its target is valid and m, se and z_t are finite (then z_t - m
       is too); it is dominated if its target is the max and se < 2. */
    {
        const __m256 inf = _mm256_set1_ps(INFINITY), sign = _mm256_set1_ps(-0.0f);
        const __m256d infd = _mm256_set1_pd(INFINITY), signd = _mm256_set1_pd(-0.0);
        __m256 finite = _mm256_and_ps(_mm256_cmp_ps(_mm256_andnot_ps(sign, m), inf, _CMP_LT_OQ),
                                      _mm256_cmp_ps(_mm256_andnot_ps(sign, zt), inf, _CMP_LT_OQ));
        fine &= (unsigned)_mm256_movemask_ps(finite);
        fine &= (unsigned)_mm256_movemask_pd(_mm256_cmp_pd(_mm256_andnot_pd(signd, SE0), infd,
                                                           _CMP_LT_OQ))
                | ((unsigned)_mm256_movemask_pd(_mm256_cmp_pd(_mm256_andnot_pd(signd, SE1), infd,
                                                              _CMP_LT_OQ)) << 4);
    }
    const unsigned at_max = (unsigned)_mm256_movemask_ps(_mm256_cmp_ps(zt, m, _CMP_EQ_OQ));
    const __m256d two = _mm256_set1_pd(2.0);
    const unsigned below2 = (unsigned)_mm256_movemask_pd(_mm256_cmp_pd(SE0, two, _CMP_LT_OQ))
        | ((unsigned)_mm256_movemask_pd(_mm256_cmp_pd(SE1, two, _CMP_LT_OQ)) << 4);
    /* a dominated row whose loss _row_index would refine goes back to it */
    if (P->refine_if_target_max) fine &= ~(at_max & below2);
    if (P->refine_if_other_max) fine &= ~(~at_max & below2);
    /* Every row's loss, A and target gradient from se as summed above, 4 rows per vector, by
       lsref_small_rows4 (the row algebra of _rowterms.h, w = 1); a lane whose row is
       not finished here computes garbage that nothing reads (the row path redoes it). */
    const double c = lsref_target_mass(P->q_t, P->beta, P->W - 1.0);    /* sum_k q_k */
    __m256d Mh[2], S[2], A[2], G[2], Lse[2], Dt[2];
    unsigned cancels = 0;
    for (j = 0; j < 2; j++) {
#define LSREF_HALF(x) _mm256_cvtps_pd(j ? _mm256_extractf128_ps(x, 1) : _mm256_castps256_ps128(x))
        __m256d lh;
        Mh[j] = LSREF_HALF(m);
        Dt[j] = _mm256_sub_pd(LSREF_HALF(zt), Mh[j]);
        S[j] = P->row_scale
            ? _mm256_mul_pd(_mm256_set1_pd(P->scale), _mm256_loadu_pd(P->row_scale + i0 + 4 * j))
            : _mm256_set1_pd(P->scale);
        cancels |= lsref_small_rows4(P, c, Mh[j], j ? SE1 : SE0, Dt[j], j ? U1 : U0, S[j], &lh,
                                     &Lse[j], &A[j]) << (4 * j);
        _mm256_storeu_pd(loss + i0 + 4 * j, lh);
        G[j] = _mm256_fmsub_pd(A[j], LSREF_HALF(et), _mm256_mul_pd(S[j], _mm256_set1_pd(P->q_t)));
#undef LSREF_HALF
    }
    fine &= ~cancels;                              /* KL cancels: the row path refines it */
    /* bit j: row j's target dominates, and its gradient is wanted (the loss alone is fine
       from se as summed above). Its target gradient s (c p_t - q_t), which cancels, comes from
       the sum of the other terms; the block's exps are taken again in double from the exact
       z_k - m (cheaper than judging whether the float ones would do, as _row_index does):
       rest, A and every entry of a dominated row's gradient from them (its loss stays the one
       above). 8 rows at a time, as the rest of the block: in a trained model most rows are
       dominated. */
    unsigned dom = g != NULL ? fine & at_max & below2 : 0u;
    double exd[LSREF_BLOCK_K8][8];                 /* the exps in double, class by class */
    __m256d DA[2] = {_mm256_setzero_pd(), _mm256_setzero_pd()}, DB[2] = {DA[0], DA[0]};
                                                   /* a dominated row's A and s beta */
    /* one or two dominated rows: each row's exps (lsref_dom_row_exps), its gradient written
       over the block's, by lsref_small8_put (lsref_dom_rows); rows_of[i]: the row of exr[i] */
    const int alone = dom != 0 && __builtin_popcount(dom) < 3;
    double exr[2][LSREF_BLOCK_K8];
    int rows_of[2] = {-1, -1};
    if (dom) {
        __m256d R[2] = {_mm256_setzero_pd(), _mm256_setzero_pd()};
        if (!alone) {                              /* 8 rows at a time */
            const __m128i t_lo = _mm_loadu_si128((const __m128i *)tt);
            const __m128i t_hi = _mm_loadu_si128((const __m128i *)(tt + 4));
            __m256 w[8];
            for (k0 = 0; k0 < K; k0 += 8) {
                const Py_ssize_t n = K - k0 < 8 ? K - k0 : 8;
                lsref_block_load8(base, K, k0, n, w);   /* the logits again (in place: unwritten) */
                for (k = 0; k < n; k++) {
                    const __m128i kk = _mm_set1_epi32((int)(k0 + k));
                    const __m256d e0 = lsref_exp_neg_v4d(_mm256_sub_pd(
                        _mm256_cvtps_pd(_mm256_castps256_ps128(w[k])), Mh[0]));
                    const __m256d e1 = lsref_exp_neg_v4d(_mm256_sub_pd(
                        _mm256_cvtps_pd(_mm256_extractf128_ps(w[k], 1)), Mh[1]));
                    _mm256_storeu_pd(exd[k0 + k], e0);
                    _mm256_storeu_pd(exd[k0 + k] + 4, e1);
                    /* rest: every class but the target (the max, exactly 1) */
                    R[0] = _mm256_add_pd(R[0], _mm256_andnot_pd(_mm256_castsi256_pd(
                               _mm256_cvtepi32_epi64(_mm_cmpeq_epi32(t_lo, kk))), e0));
                    R[1] = _mm256_add_pd(R[1], _mm256_andnot_pd(_mm256_castsi256_pd(
                               _mm256_cvtepi32_epi64(_mm_cmpeq_epi32(t_hi, kk))), e1));
                }
            }
        } else {
            /* one or two rows (random logits: most blocks with any): each alone, with the
               same arithmetic per class and the same order of the sum as the lanes above, so
               a row's results do not depend on its neighbours */
            double ms[8], rs[8] = {0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0};
            unsigned bits;
            int i = 0;
            _mm256_storeu_pd(ms, Mh[0]);
            _mm256_storeu_pd(ms + 4, Mh[1]);
            for (bits = dom; bits != 0; bits &= bits - 1, i++) {
                const int r = __builtin_ctz(bits);
                rows_of[i] = r;
                rs[r] = lsref_dom_row_exps(base + r * K, K, ms[r], tt[r], exr[i]);
            }
            R[0] = _mm256_loadu_pd(rs);
            R[1] = _mm256_loadu_pd(rs + 4);
        }
        for (j = 0; j < 2; j++) {
            if (!((dom >> (4 * j)) & 0xFu)) continue;  /* no dominated row in this half */
            /* the dominated lanes of this half (the others keep what they have) */
            const __m256d sel = _mm256_castsi256_pd(_mm256_cmpgt_epi64(
                _mm256_and_si256(_mm256_set1_epi64x((long long)(dom >> (4 * j))),
                                 _mm256_setr_epi64x(1, 2, 4, 8)), _mm256_setzero_si256()));
            const __m256d se = _mm256_add_pd(_mm256_set1_pd(1.0), R[j]);
            __m256d lh, ls, a, gt;
            unsigned cx = 0;
            if (P->lam == 0.0 && P->kl_const == 0.0) {
                /* lsref_small_rows4's A without its log, which only the z-loss (lse) and the
                   KL form (cancels) would use: the same operations, so the same bits (and
                   2 lam lse below is 0 either way); a third of a dominated block's extra */
                a = _mm256_div_pd(_mm256_mul_pd(S[j], _mm256_set1_pd(c)), se);
                ls = _mm256_setzero_pd();
            } else {
                cx = lsref_small_rows4(P, c, Mh[j], se, Dt[j], j ? U1 : U0, S[j], &lh, &ls, &a);
            }
            cx &= (dom >> (4 * j)) & 0xFu;
            fine &= ~(cx << (4 * j));
            dom &= ~(cx << (4 * j));
            /* _rowterms.h's lsref_dominated_target_grad, in vectors:
               s (beta W_other + 2 lam lse - q_t rest) / se */
            gt = _mm256_div_pd(_mm256_mul_pd(S[j], _mm256_sub_pd(
                     _mm256_fmadd_pd(_mm256_set1_pd(2.0 * P->lam), ls,
                                     _mm256_set1_pd(P->beta * (P->W - 1.0))),
                     _mm256_mul_pd(_mm256_set1_pd(P->q_t), R[j]))), se);
            G[j] = _mm256_blendv_pd(G[j], gt, sel);
            DA[j] = a;
            DB[j] = _mm256_mul_pd(S[j], _mm256_set1_pd(P->beta));
        }
    }
    {   /* redo[i0 + j] = 1 where bit j of fine is 0, 8 bytes at once */
        const __m128i bit = _mm_setr_epi8(1, 2, 4, 8, 16, 32, 64, -128, 0, 0, 0, 0, 0, 0, 0, 0);
        _mm_storel_epi64((__m128i *)(redo + i0), _mm_and_si128(_mm_cmpeq_epi8(
            _mm_and_si128(_mm_set1_epi8((char)fine), bit), _mm_setzero_si128()),
            _mm_set1_epi8(1)));
    }
    if (g == NULL) return;
    const __m256 Av = _mm256_set_m128(_mm256_cvtpd_ps(A[1]), _mm256_cvtpd_ps(A[0]));
    const __m256d beta = _mm256_set1_pd(P->beta);
    const __m256 Bv = _mm256_set_m128(_mm256_cvtpd_ps(_mm256_mul_pd(S[1], beta)),
                                      _mm256_cvtpd_ps(_mm256_mul_pd(S[0], beta)));
    double gt[8];
    _mm256_storeu_pd(gt, G[0]);
    _mm256_storeu_pd(gt + 4, G[1]);
    lsref_dom_rows D;
    D.n = 0;
    if (alone) {
        double da[8], db[8];
        _mm256_storeu_pd(da, DA[0]);
        _mm256_storeu_pd(da + 4, DA[1]);
        _mm256_storeu_pd(db, DB[0]);
        _mm256_storeu_pd(db + 4, DB[1]);
        lsref_dom_rows_of(&D, rows_of, exr[0], exr[1], dom, da, db);
    }
    lsref_small8_put(g, i0, K, e, Av, Bv, alone ? 0u : dom, exd, DA, DB, fine, tt, gt,
                     P->stream, &D);
}

/* The block kernel compiled once more for each K from 2 to 16 with K a constant, so that the
   loops over classes are unrolled and v[] (e[]) lives in registers: paired A/B, one thread,
   262144 x 10 on an AVX-512 AMD EPYC, value and gradient 0.90x the time, the loss 0.80x.
   The arithmetic is the same, so are the results. Larger K take the one compiled for any K. */
#define LSREF_SMALL8_FOR(KK)                                                                 \
__attribute__((target("avx2,fma"), flatten))                                                 \
static void lsref_small8_k##KK(const float *z, Py_ssize_t i0, const int64_t *t,              \
                               const lsref_small_params *P, double *loss, float *g,          \
                               unsigned char *redo)                                          \
{ lsref_small8_body(z, i0, KK, t, P, loss, g, redo); }
LSREF_SMALL8_FOR(2)  LSREF_SMALL8_FOR(3)  LSREF_SMALL8_FOR(4)  LSREF_SMALL8_FOR(5)
LSREF_SMALL8_FOR(6)  LSREF_SMALL8_FOR(7)  LSREF_SMALL8_FOR(8)  LSREF_SMALL8_FOR(9)
LSREF_SMALL8_FOR(10) LSREF_SMALL8_FOR(11) LSREF_SMALL8_FOR(12) LSREF_SMALL8_FOR(13)
LSREF_SMALL8_FOR(14) LSREF_SMALL8_FOR(15) LSREF_SMALL8_FOR(16)

typedef void (*lsref_small8_fixed)(const float *, Py_ssize_t, const int64_t *,
                                   const lsref_small_params *, double *, float *,
                                   unsigned char *);
static const lsref_small8_fixed lsref_small8_by_k[17] = {
    NULL, NULL, lsref_small8_k2, lsref_small8_k3, lsref_small8_k4, lsref_small8_k5,
    lsref_small8_k6, lsref_small8_k7, lsref_small8_k8, lsref_small8_k9, lsref_small8_k10,
    lsref_small8_k11, lsref_small8_k12, lsref_small8_k13, lsref_small8_k14, lsref_small8_k15,
    lsref_small8_k16};

static void lsref_small8_f32(const float *z, Py_ssize_t i0, Py_ssize_t K, const int64_t *t,
                             const lsref_small_params *P, double *loss, float *g,
                             unsigned char *redo)
{
    if (K >= 2 && K <= 16) lsref_small8_by_k[K](z, i0, t, P, loss, g, redo);
    else lsref_small8_body(z, i0, K, t, P, loss, g, redo);
}

/* ---- AVX-512: two blocks at once ------------------------------------------------------------
 * Two blocks of 8 rows (i0..i0+15) with the max and the exp sweep at 16 lanes, one row per
 * lane: each block is loaded and transposed as in lsref_small8_body and the two joined into
 * zmm registers; then each block is finished as lsref_small8_finish finishes it, its 8 rows'
 * double-precision work in one zmm register instead of two ymm. Every lane does what the
 * 8-row kernel's lane does, in the same order (lsref_exp_neg_v16 is lsref_exp_neg_v8 at 16
 * lanes, and so on; a masked add of e where the 8-row kernel adds e or 0), so a row's results
 * are the same bits in either kernel (tests/test_simd.py). On an AVX-512 AMD EPYC (Zen 4,
 * whose 512-bit operations take two passes through 256-bit units) the row sweep at 16 lanes
 * took 0.65x the time of the one at 8; paired A/B against the 8-row kernel alone, one thread,
 * scale-2 logits: value and gradient 0.81-0.89x at K = 3..16 (262144 x 10: 0.84x), the loss
 * 0.70-0.80x. */
/* lsref_log_v4d at 8 lanes: the same operations in the same order, so the same bits. */
/* the pairs' class arrays: K <= 16 (lsref_small_pair_f32) */
#define LSREF_PAIR_K 16

__attribute__((target("avx512f,avx2,fma")))
static inline __m512d lsref_log_v8d(__m512d x)
{
    const __m512i sqrt_half = _mm512_set1_epi64(0x3FE6A09E667F3BCDll);
    __m512i bits = _mm512_castpd_si512(x);
    __m512i k = _mm512_srli_epi64(_mm512_sub_epi64(bits, sqrt_half), 52);
    __m512d f = _mm512_castsi512_pd(_mm512_sub_epi64(bits, _mm512_slli_epi64(k, 52)));
    __m512d kd = _mm512_sub_pd(_mm512_castsi512_pd(_mm512_or_si512(
                     k, _mm512_set1_epi64(0x4330000000000000ll))),
                 _mm512_set1_pd(4503599627370496.0));
    __m512d s = _mm512_div_pd(_mm512_sub_pd(f, _mm512_set1_pd(1.0)),
                              _mm512_add_pd(f, _mm512_set1_pd(1.0)));
    __m512d z = _mm512_mul_pd(s, s);
    __m512d p = _mm512_set1_pd(2.0 / 21.0);
    p = _mm512_fmadd_pd(p, z, _mm512_set1_pd(2.0 / 19.0));
    p = _mm512_fmadd_pd(p, z, _mm512_set1_pd(2.0 / 17.0));
    p = _mm512_fmadd_pd(p, z, _mm512_set1_pd(2.0 / 15.0));
    p = _mm512_fmadd_pd(p, z, _mm512_set1_pd(2.0 / 13.0));
    p = _mm512_fmadd_pd(p, z, _mm512_set1_pd(2.0 / 11.0));
    p = _mm512_fmadd_pd(p, z, _mm512_set1_pd(2.0 / 9.0));
    p = _mm512_fmadd_pd(p, z, _mm512_set1_pd(2.0 / 7.0));
    p = _mm512_fmadd_pd(p, z, _mm512_set1_pd(2.0 / 5.0));
    p = _mm512_fmadd_pd(p, z, _mm512_set1_pd(2.0 / 3.0));
    __m512d lo = _mm512_fmadd_pd(_mm512_mul_pd(s, z), p,
                                 _mm512_mul_pd(kd, _mm512_set1_pd(1.90821492927058770002e-10)));
    __m512d logf = _mm512_add_pd(_mm512_add_pd(s, s), lo);
    return _mm512_fmadd_pd(kd, _mm512_set1_pd(6.93147180369123816490e-01), logf);
}

/* lsref_exp_neg_v4d at 8 lanes: the same operations in the same order, so the same bits. */
__attribute__((target("avx512f,avx2,fma")))
static inline __m512d lsref_exp_neg_v8d(__m512d x)
{
    const __m512d big = _mm512_set1_pd(6755399441055744.0);          /* 1.5 * 2^52 */
    __m512d xc = _mm512_max_pd(x, _mm512_set1_pd(-708.0));
    __m512d t = _mm512_fmadd_pd(xc, _mm512_set1_pd(1.4426950408889634074), big);
    __m512d n = _mm512_sub_pd(t, big);
    __m512d r = _mm512_fnmadd_pd(n, _mm512_set1_pd(6.93147180369123816490e-01), xc);
    r = _mm512_fnmadd_pd(n, _mm512_set1_pd(1.90821492927058770002e-10), r);
    __m512d p = _mm512_set1_pd(1.0 / 6227020800.0);
    p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(1.0 / 479001600.0));
    p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(1.0 / 39916800.0));
    p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(1.0 / 3628800.0));
    p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(1.0 / 362880.0));
    p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(1.0 / 40320.0));
    p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(1.0 / 5040.0));
    p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(1.0 / 720.0));
    p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(1.0 / 120.0));
    p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(1.0 / 24.0));
    p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(1.0 / 6.0));
    p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(0.5));
    p = _mm512_add_pd(_mm512_fmadd_pd(p, _mm512_mul_pd(r, r), r), _mm512_set1_pd(1.0));
    __m512d s = _mm512_castsi512_pd(_mm512_slli_epi64(_mm512_add_epi64(
        _mm512_castpd_si512(t), _mm512_set1_epi64(1023 - 0x4338000000000000ll)), 52));
    return _mm512_maskz_mov_pd(_mm512_cmp_pd_mask(x, _mm512_set1_pd(-708.0), _CMP_NLT_UQ),
                               _mm512_mul_pd(p, s));
}

/* lsref_small_rows4 at 8 lanes (rows 0..7 of a block; the same operations in the same order,
 * so the same bits): returns the lanes where the KL form cancels. */
__attribute__((target("avx512f,avx2,fma")))
static inline unsigned lsref_small_rows8(const lsref_small_params *P, double c, __m512d m,
                                         __m512d se, __m512d dt, __m512d u, __m512d s,
                                         __m512d *loss, __m512d *lse, __m512d *A)
{
    const __m512d L = lsref_log_v8d(se);
    __m512d ce = _mm512_setzero_pd(), lh, cz = _mm512_set1_pd(c);
    unsigned cancels = 0;
    if (P->q_t != 0.0) ce = _mm512_mul_pd(_mm512_set1_pd(P->q_t), _mm512_sub_pd(L, dt));
    if (P->beta != 0.0)
        ce = _mm512_add_pd(ce, _mm512_mul_pd(_mm512_set1_pd(P->beta), _mm512_sub_pd(
                 _mm512_mul_pd(_mm512_set1_pd(P->W - 1.0), L), _mm512_sub_pd(u, dt))));
    *lse = _mm512_add_pd(m, L);
    lh = ce;
    if (P->kl_const != 0.0) {                      /* lsref_kl_cancels */
        lh = _mm512_add_pd(ce, _mm512_set1_pd(P->kl_const));
        cancels = (unsigned)_mm512_cmp_pd_mask(
            _mm512_abs_pd(lh), _mm512_mul_pd(_mm512_set1_pd(1e-2), _mm512_abs_pd(ce)),
            _CMP_LT_OQ);
    }
    if (P->lam != 0.0) {
        lh = _mm512_add_pd(lh, _mm512_mul_pd(_mm512_mul_pd(_mm512_set1_pd(P->lam), *lse), *lse));
        cz = _mm512_add_pd(cz, _mm512_mul_pd(_mm512_set1_pd(2.0 * P->lam), *lse));
    }
    *loss = _mm512_mul_pd(lh, s);
    *A = _mm512_div_pd(_mm512_mul_pd(s, cz), se);
    return cancels;
}

/* The two blocks' finish (SE0/U0: rows 0..7, SE1/U1: 8..15): the targets' terms at 16 lanes,
 * then each block of 8 at 8 lanes in one zmm register, lsref_small8_finish's operations lane
 * by lane (the same bits), its dominated rows included. */
__attribute__((target("avx512f,avx2,fma")))
static inline void lsref_small16_finish(const float *z, Py_ssize_t i0, const Py_ssize_t K,
                                        const int64_t *t, const lsref_small_params *Pin,
                                        double *loss, float *g, unsigned char *redo, __m512 m,
                                        const __m512 *e, __m512d SE0, __m512d SE1,
                                        __m512d U0, __m512d U1)
{
    const lsref_small_params Pc = *Pin, *const P = &Pc;
    int32_t tt[16];
    unsigned fine = 0;
    Py_ssize_t j, k;
    const float *base = z + i0 * K;
    __m256 h[LSREF_PAIR_K];                        /* one block's exps, class by class */
    for (j = 0; j < 16; j++) {
        int64_t tj = t[i0 + j];
        int ok = tj >= 0 && tj < K && !(P->has_ignore && tj == P->ignore_index);
        fine |= (unsigned)ok << j;
        tt[j] = ok ? (int32_t)tj : 0;
    }
    const __m512i idx = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10,
                                                             11, 12, 13, 14, 15),
                                           _mm512_set1_epi32((int)K));
    const __m512 zt = _mm512_i32gather_ps(_mm512_add_epi32(idx, _mm512_loadu_si512(tt)),
                                          base, 4);
    const __m512 et = lsref_exp_neg_v16(_mm512_sub_ps(zt, m));
    {
        const __m512 inf = _mm512_set1_ps(INFINITY);
        const __m512d infd = _mm512_set1_pd(INFINITY);
        fine &= (unsigned)_mm512_cmp_ps_mask(_mm512_abs_ps(m), inf, _CMP_LT_OQ)
              & (unsigned)_mm512_cmp_ps_mask(_mm512_abs_ps(zt), inf, _CMP_LT_OQ);
        fine &= (unsigned)_mm512_cmp_pd_mask(_mm512_abs_pd(SE0), infd, _CMP_LT_OQ)
              | ((unsigned)_mm512_cmp_pd_mask(_mm512_abs_pd(SE1), infd, _CMP_LT_OQ) << 8);
    }
    const unsigned at_max = (unsigned)_mm512_cmp_ps_mask(zt, m, _CMP_EQ_OQ);
    const __m512d two = _mm512_set1_pd(2.0);
    const unsigned below2 = (unsigned)_mm512_cmp_pd_mask(SE0, two, _CMP_LT_OQ)
        | ((unsigned)_mm512_cmp_pd_mask(SE1, two, _CMP_LT_OQ) << 8);
    if (P->refine_if_target_max) fine &= ~(at_max & below2);
    if (P->refine_if_other_max) fine &= ~(~at_max & below2);
    const double c = lsref_target_mass(P->q_t, P->beta, P->W - 1.0);
    const __m128i bit = _mm_setr_epi8(1, 2, 4, 8, 16, 32, 64, -128, 0, 0, 0, 0, 0, 0, 0, 0);
    for (j = 0; j < 2; j++) {
#define LSREF_HALF8(x) (j ? _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(x), 1)) \
                          : _mm512_castps512_ps256(x))
        const Py_ssize_t r0 = i0 + 8 * j;
        const float *const rows = base + 8 * j * K;
        const int32_t *const tj = tt + 8 * j;
        const __m512d se = j ? SE1 : SE0, u = j ? U1 : U0;
        __m512d lh, ls, A, S, Mh, Dt, G, DA = _mm512_setzero_pd(), DB = DA;
        unsigned f = (fine >> (8 * j)) & 0xFFu, dom;
        double exd[LSREF_PAIR_K][8];               /* dominated rows' exps in double */
        double exr[2][LSREF_PAIR_K], gt8[8];       /* one or two: row by row */
        int rows_of[2] = {-1, -1}, alone = 0;
        Mh = _mm512_cvtps_pd(LSREF_HALF8(m));
        Dt = _mm512_sub_pd(_mm512_cvtps_pd(LSREF_HALF8(zt)), Mh);
        S = P->row_scale
            ? _mm512_mul_pd(_mm512_set1_pd(P->scale), _mm512_loadu_pd(P->row_scale + r0))
            : _mm512_set1_pd(P->scale);
        f &= ~lsref_small_rows8(P, c, Mh, se, Dt, u, S, &lh, &ls, &A);
        _mm512_storeu_pd(loss + r0, lh);
        G = _mm512_fmsub_pd(A, _mm512_cvtps_pd(LSREF_HALF8(et)),
                            _mm512_mul_pd(S, _mm512_set1_pd(P->q_t)));
        /* the dominated rows, as lsref_small8_finish does them (its comments say why) */
        dom = g != NULL ? f & (at_max >> (8 * j)) & (below2 >> (8 * j)) & 0xFFu : 0u;
        if (dom) {
            __m512d R = _mm512_setzero_pd(), a, gt;
            alone = __builtin_popcount(dom) < 3;
            if (!alone) {
                const __m512i t8 = _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)tj));
                __m256 w[8];
                Py_ssize_t k0;
                for (k0 = 0; k0 < K; k0 += 8) {
                    const Py_ssize_t n = K - k0 < 8 ? K - k0 : 8;
                    lsref_block_load8(rows, K, k0, n, w);
                    for (k = 0; k < n; k++) {
                        const __m512d ed = lsref_exp_neg_v8d(_mm512_sub_pd(
                            _mm512_cvtps_pd(w[k]), Mh));
                        const __mmask8 is_t = (__mmask8)_mm512_cmpeq_epi32_mask(
                            t8, _mm512_set1_epi32((int)(k0 + k)));
                        _mm512_storeu_pd(exd[k0 + k], ed);
                        R = _mm512_mask_add_pd(R, (__mmask8)~is_t, R, ed);
                    }
                }
            } else {
                double ms[8], rs[8] = {0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0};
                unsigned b;
                int i = 0;
                _mm512_storeu_pd(ms, Mh);
                for (b = dom; b != 0; b &= b - 1, i++) {
                    const int r = __builtin_ctz(b);
                    rows_of[i] = r;
                    rs[r] = lsref_dom_row_exps(rows + r * K, K, ms[r], tj[r], exr[i]);
                }
                R = _mm512_loadu_pd(rs);
            }
            {
                const __m512d se2 = _mm512_add_pd(_mm512_set1_pd(1.0), R);
                __m512d lh2, ls2;
                unsigned cx = 0;
                if (P->lam == 0.0 && P->kl_const == 0.0) {   /* as lsref_small8_finish */
                    a = _mm512_div_pd(_mm512_mul_pd(S, _mm512_set1_pd(c)), se2);
                    ls2 = _mm512_setzero_pd();
                } else {
                    cx = lsref_small_rows8(P, c, Mh, se2, Dt, u, S, &lh2, &ls2, &a) & dom;
                }
                f &= ~cx;
                gt = _mm512_div_pd(_mm512_mul_pd(S, _mm512_sub_pd(
                         _mm512_fmadd_pd(_mm512_set1_pd(2.0 * P->lam), ls2,
                                         _mm512_set1_pd(P->beta * (P->W - 1.0))),
                         _mm512_mul_pd(_mm512_set1_pd(P->q_t), R))), se2);
                G = _mm512_mask_mov_pd(G, (__mmask8)dom, gt);
                dom &= ~cx;
                DA = a;
                DB = _mm512_mul_pd(S, _mm512_set1_pd(P->beta));
            }
        }
        _mm_storel_epi64((__m128i *)(redo + r0), _mm_and_si128(_mm_cmpeq_epi8(
            _mm_and_si128(_mm_set1_epi8((char)f), bit), _mm_setzero_si128()),
            _mm_set1_epi8(1)));
        if (g != NULL) {
            const __m256d DA2[2] = {_mm512_castpd512_pd256(DA), _mm512_extractf64x4_pd(DA, 1)};
            const __m256d DB2[2] = {_mm512_castpd512_pd256(DB), _mm512_extractf64x4_pd(DB, 1)};
            lsref_dom_rows D;
            D.n = 0;
            if (alone) {                           /* as lsref_small8_finish */
                double da[8], db[8];
                _mm512_storeu_pd(da, DA);
                _mm512_storeu_pd(db, DB);
                lsref_dom_rows_of(&D, rows_of, exr[0], exr[1], dom, da, db);
            }
            for (k = 0; k < K; k++) h[k] = LSREF_HALF8(e[k]);
            _mm512_storeu_pd(gt8, G);
            lsref_small8_put(g, r0, K, h, _mm512_cvtpd_ps(A),
                             _mm512_cvtpd_ps(_mm512_mul_pd(S, _mm512_set1_pd(P->beta))),
                             alone ? 0u : dom, (const double (*)[8])exd, DA2, DB2, f, tj, gt8,
                             P->stream, &D);
        }
#undef LSREF_HALF8
    }
}

__attribute__((target("avx512f,avx2,fma")))
static inline void lsref_small16_body(const float *z, Py_ssize_t i0, const Py_ssize_t K,
                                      const int64_t *t, const lsref_small_params *P,
                                      double *loss, float *g, unsigned char *redo)
{
    __m512 v[LSREF_PAIR_K];                        /* class k of the 16 rows; then its exp */
    __m256 h[LSREF_PAIR_K], h1[LSREF_PAIR_K];      /* one block's 8 rows */
    Py_ssize_t k, k0;
    const float *base = z + i0 * K;
    for (k = 0; k < 16 * K; k += 16) __builtin_prefetch(base + 16 * K + k, 0, 3);
    for (k0 = 0; k0 < K; k0 += 8) {
        const Py_ssize_t n = K - k0 < 8 ? K - k0 : 8;
        lsref_block_load8(base, K, k0, n, h + k0);
        lsref_block_load8(base + 8 * K, K, k0, n, h1 + k0);
    }
    for (k = 0; k < K; k++)
        v[k] = _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castps_pd(_mm512_castps256_ps512(h[k])),
                                                   _mm256_castps_pd(h1[k]), 1));
    __m512 m = _mm512_set1_ps(-INFINITY), m1 = m;
    for (k = 0; k + 1 < K; k += 2) {               /* NaN in v passes over, as in the rows */
        m = _mm512_max_ps(v[k], m);
        m1 = _mm512_max_ps(v[k + 1], m1);
    }
    if (k < K) m = _mm512_max_ps(v[k], m);
    m = _mm512_max_ps(m1, m);
    /* R0, U0: rows 0..7 (the first block), R1, U1: rows 8..15, in double */
    __m512d R0 = _mm512_setzero_pd(), R1 = R0, U0 = R0, U1 = R0;
    __m512 nmax = _mm512_setzero_ps();
    const __m512 one = _mm512_set1_ps(1.0f);
    for (k0 = 0; k0 < K; k0 += 16) {
        __m512 rest = _mm512_setzero_ps(), u = rest;
        const Py_ssize_t end = k0 + 16 < K ? k0 + 16 : K;
        for (k = k0; k < end; k++) {
            __m512 d = _mm512_sub_ps(v[k], m);
            __mmask16 at_m = _mm512_cmp_ps_mask(d, _mm512_setzero_ps(), _CMP_EQ_OQ);
            v[k] = lsref_exp_neg_v16(d);
            rest = _mm512_mask_add_ps(rest, (__mmask16)~at_m, rest, v[k]);
            nmax = _mm512_mask_add_ps(nmax, at_m, nmax, one);
            u = _mm512_add_ps(u, d);
        }
        lsref_add16_pd(&R0, &R1, rest);
        lsref_add16_pd(&U0, &U1, u);
    }
    R0 = _mm512_add_pd(_mm512_cvtps_pd(_mm512_castps512_ps256(nmax)), R0);
    R1 = _mm512_add_pd(_mm512_cvtps_pd(_mm256_castpd_ps(
             _mm512_extractf64x4_pd(_mm512_castps_pd(nmax), 1))), R1);
    lsref_small16_finish(z, i0, K, t, P, loss, g, redo, m, v, R0, R1, U0, U1);
}

#define LSREF_SMALL16_FOR(KK)                                                                \
__attribute__((target("avx512f,avx2,fma"), flatten))                                         \
static void lsref_small16_k##KK(const float *z, Py_ssize_t i0, const int64_t *t,             \
                                const lsref_small_params *P, double *loss, float *g,         \
                                unsigned char *redo)                                         \
{ lsref_small16_body(z, i0, KK, t, P, loss, g, redo); }
LSREF_SMALL16_FOR(2)  LSREF_SMALL16_FOR(3)  LSREF_SMALL16_FOR(4)  LSREF_SMALL16_FOR(5)
LSREF_SMALL16_FOR(6)  LSREF_SMALL16_FOR(7)  LSREF_SMALL16_FOR(8)  LSREF_SMALL16_FOR(9)
LSREF_SMALL16_FOR(10) LSREF_SMALL16_FOR(11) LSREF_SMALL16_FOR(12) LSREF_SMALL16_FOR(13)
LSREF_SMALL16_FOR(14) LSREF_SMALL16_FOR(15) LSREF_SMALL16_FOR(16)

static const lsref_small8_fixed lsref_small16_by_k[17] = {
    NULL, NULL, lsref_small16_k2, lsref_small16_k3, lsref_small16_k4, lsref_small16_k5,
    lsref_small16_k6, lsref_small16_k7, lsref_small16_k8, lsref_small16_k9, lsref_small16_k10,
    lsref_small16_k11, lsref_small16_k12, lsref_small16_k13, lsref_small16_k14,
    lsref_small16_k15, lsref_small16_k16};

static int lsref_small16_on = 0;                   /* set by lsref_simd_init: the AVX-512 set */

/* Blocks 2b and 2b + 1 of the nblocks blocks of 8 rows (the second where there is one): at
 * once on the AVX-512 set (K <= 16; above, the pair's working set ran 1.6x slower at
 * K = 100), else one after the other. The pairing depends only on N, never on the threads,
 * and a row's bits do not depend on the kernel. */
static void lsref_small_pair_f32(const float *z, Py_ssize_t b, Py_ssize_t nblocks,
                                 Py_ssize_t K, const int64_t *t, const lsref_small_params *P,
                                 double *loss, float *g, unsigned char *redo)
{
    const Py_ssize_t i0 = 16 * b;
    if (2 * b + 1 < nblocks) {
        if (lsref_small16_on && K >= 2 && K <= 16) {
            lsref_small16_by_k[K](z, i0, t, P, loss, g, redo);
            return;
        }
        lsref_small8_f32(z, i0, K, t, P, loss, g, redo);
        lsref_small8_f32(z, i0 + 8, K, t, P, loss, g, redo);
    } else {
        lsref_small8_f32(z, i0, K, t, P, loss, g, redo);
    }
}
/* Orders the streaming stores of lsref_small8_put (weakly ordered) before the calling
 * thread's next ones: each thread calls it after its last block, before the region ends. */
static void lsref_store_fence(void) { _mm_sfence(); }
#define LSREF_HAVE_SMALL8 1
#else
#define LSREF_HAVE_SMALL8 0
static void lsref_store_fence(void) { }
static void lsref_small_pair_f32(const float *z, Py_ssize_t b, Py_ssize_t nblocks,
                                 Py_ssize_t K, const int64_t *t, const lsref_small_params *P,
                                 double *loss, float *g, unsigned char *redo) { (void)z;
    (void)b; (void)nblocks; (void)K; (void)t; (void)P; (void)loss; (void)g; (void)redo; }
#endif

/* How many of the n class indices t[i] are ign (where has_ignore), or -1 if one that is not is
 * outside [0, K) (a negative one wraps past K as unsigned). Without branches, so that the
 * compiler vectorises the loop (compiled once more for AVX2 CPUs); the Cython loop with early
 * returns, inside the fast path's large function, reloaded its variables from the stack for
 * every target (4% of a 262144 x 10 call on one thread). */
#define LSREF_COUNT_IGNORED_BODY                                                             \
    Py_ssize_t i, n_ign = 0;                                                                 \
    uint64_t bad = 0;                                                                        \
    for (i = 0; i < n; i++) {                                                                \
        const int64_t ti = t[i];                                                             \
        const uint64_t is_ign = (uint64_t)(has_ignore & (ti == ign));                        \
        n_ign += (Py_ssize_t)is_ign;                                                         \
        bad |= (is_ign ^ 1u) & (uint64_t)((uint64_t)ti >= (uint64_t)K);                      \
    }                                                                                        \
    return bad ? -1 : n_ign;
#if defined(LSREF_X86_DISPATCH)
__attribute__((target("avx2"), noinline))
static Py_ssize_t lsref_count_ignored_avx2(const int64_t *t, Py_ssize_t n, int64_t K,
                                           int has_ignore, int64_t ign)
{ LSREF_COUNT_IGNORED_BODY }
#endif
__attribute__((noinline))
static Py_ssize_t lsref_count_ignored_any(const int64_t *t, Py_ssize_t n, int64_t K,
                                          int has_ignore, int64_t ign)
{ LSREF_COUNT_IGNORED_BODY }

static Py_ssize_t lsref_count_ignored(const int64_t *t, Py_ssize_t n, int64_t K, int has_ignore,
                                      int64_t ign)
{
#if defined(LSREF_X86_DISPATCH)
    if (lsref_simd.name[0] != 'g') return lsref_count_ignored_avx2(t, n, K, has_ignore, ign);
#endif
    return lsref_count_ignored_any(t, n, K, has_ignore, ign);
}

/* exp(x) for x <= 0 over an array, through the exponential the selected sweeps use (the
 * tests check its accuracy and special values). */
#if defined(LSREF_X86_DISPATCH)
__attribute__((target("avx2,fma")))
static void lsref_exp_neg_f32_avx2_array(const float *x, float *y, Py_ssize_t n)
{
    Py_ssize_t k = 0;
    float xb[8], yb[8];
    int j;
    for (; k + 8 <= n; k += 8) _mm256_storeu_ps(y + k, lsref_exp_neg_v8(_mm256_loadu_ps(x + k)));
    if (k < n) {
        for (j = 0; j < 8; j++) xb[j] = k + j < n ? x[k + j] : 0.0f;
        _mm256_storeu_ps(yb, lsref_exp_neg_v8(_mm256_loadu_ps(xb)));
        for (j = 0; k + j < n; j++) y[k + j] = yb[j];
    }
}

__attribute__((target("avx512f,avx2,fma")))
static void lsref_exp_neg_f32_avx512_array(const float *x, float *y, Py_ssize_t n)
{
    Py_ssize_t k = 0;
    for (; k + 16 <= n; k += 16)
        _mm512_storeu_ps(y + k, lsref_exp_neg_v16(_mm512_loadu_ps(x + k)));
    if (k < n) {
        const __mmask16 msk = (__mmask16)((1u << (n - k)) - 1u);
        _mm512_mask_storeu_ps(y + k, msk, lsref_exp_neg_v16(_mm512_maskz_loadu_ps(msk, x + k)));
    }
}
#endif

static void lsref_exp_neg_f32_array(const float *x, float *y, Py_ssize_t n)
{
    Py_ssize_t k;
#if defined(LSREF_X86_DISPATCH)
    if (lsref_simd.expsum_f32 == lsref_expsum_f32_avx2i) {
        lsref_exp_neg_f32_avx2_array(x, y, n);
        return;
    }
    if (lsref_simd.expsum_f32 == lsref_expsum_f32_avx512i) {
        lsref_exp_neg_f32_avx512_array(x, y, n);
        return;
    }
#endif
    for (k = 0; k < n; k++) y[k] = lsref_exp_neg_f32(x[k]);
}

/* log(x), x in [1, 2^1023), over an array, through the block kernel's vector log (the tests
 * check its accuracy). Returns -1 where the block kernel does not run
 * (lsref_small8_available: this build, this CPU, LSREF_SIMD). */
#if defined(LSREF_X86_DISPATCH)
__attribute__((target("avx2,fma")))
static void lsref_log_block_avx2(const double *x, double *y, Py_ssize_t n)
{
    double xb[4], yb[4];
    Py_ssize_t k = 0;
    int j;
    for (; k + 4 <= n; k += 4) _mm256_storeu_pd(y + k, lsref_log_v4d(_mm256_loadu_pd(x + k)));
    if (k < n) {
        for (j = 0; j < 4; j++) xb[j] = k + j < n ? x[k + j] : 1.0;
        _mm256_storeu_pd(yb, lsref_log_v4d(_mm256_loadu_pd(xb)));
        for (j = 0; k + j < n; j++) y[k + j] = yb[j];
    }
}
#endif

static int lsref_small8_available(void);

static int lsref_log_block_array(const double *x, double *y, Py_ssize_t n)
{
#if defined(LSREF_X86_DISPATCH)
    if (lsref_small8_available()) {
        lsref_log_block_avx2(x, y, n);
        return 0;
    }
#endif
    (void)x; (void)y; (void)n;
    return -1;
}

/* The block kernel runs only where the CPU has AVX2+FMA and the sweeps are not forced to the
 * portable set. */
static int lsref_small8_available(void)
{
    return LSREF_HAVE_SMALL8 && lsref_simd.name[0] != 'g';
}

/* Choose the sweeps for this CPU. `force` ("generic", "avx2", "avx512", or NULL/"" for the
 * best available) is the LSREF_SIMD environment variable. Returns 0, or -1 if the forced
 * set is not available on this CPU (the generic set is used then). */
static int lsref_simd_init(const char *force)
{
    int want_any = (force == NULL || force[0] == '\0');
    lsref_simd = lsref_simd_generic;
#if LSREF_HAVE_SMALL8
    lsref_small16_on = 0;
#endif
    if (!want_any && strcmp(force, "generic") == 0) return 0;
#ifdef LSREF_X86_DISPATCH
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx2")
            && __builtin_cpu_supports("fma") && (want_any || strcmp(force, "avx512") == 0)) {
        lsref_simd = lsref_simd_avx512;
        lsref_small16_on = LSREF_HAVE_SMALL8;
        return 0;
    }
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")
            && (want_any || strcmp(force, "avx2") == 0)) {
        lsref_simd = lsref_simd_avx2;
        return 0;
    }
#endif
    return want_any ? 0 : -1;
}

#endif
