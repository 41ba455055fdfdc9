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
 * conversions, which doubled the sweep's cost on the 2-GHz test machine, happen once a block.
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

#if defined(_OPENMP) || defined(LSREF_OPENMP_SIMD)
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
       a quarter of the float32 accuracy bound, for 30% less work than Cephes' degree 7
       on a CPU where this loop is the bottleneck. */
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

/* One set of row sweeps, instantiated once per instruction set. */
#define LSREF_SWEEPS(SUF, ATTR)                                                              \
ATTR static float lsref_max_f32_##SUF(const float *z, Py_ssize_t n) {                        \
    float m = -INFINITY; Py_ssize_t k;                                                       \
    LSREF_PRAGMA(omp simd reduction(max:m))                                                  \
    for (k = 0; k < n; k++) m = z[k] > m ? z[k] : m;                                         \
    return m; }                                                                              \
ATTR static double lsref_max_f64_##SUF(const double *z, Py_ssize_t n) {                      \
    double m = -INFINITY; Py_ssize_t k;                                                      \
    LSREF_PRAGMA(omp simd reduction(max:m))                                                  \
    for (k = 0; k < n; k++) m = z[k] > m ? z[k] : m;                                         \
    return m; }                                                                              \
ATTR static void lsref_expsum_f32_##SUF(const float *z, Py_ssize_t n, float m, float *e,     \
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
ATTR static void lsref_expsum_f64_##SUF(const double *z, Py_ssize_t n, double m, double *e,  \
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
ATTR static void lsref_affine_f32_##SUF(float *g, Py_ssize_t n, double a, double b) {        \
    /* in float: a and b rounded once (6e-8), below the float32 result's own rounding */    \
    float af = (float)a, bf = (float)b; Py_ssize_t k;                                        \
    LSREF_PRAGMA(omp simd)                                                                   \
    for (k = 0; k < n; k++) g[k] = af * g[k] - bf; }                                         \
ATTR static void lsref_affine_f64_##SUF(double *g, Py_ssize_t n, double a, double b) {       \
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
} lsref_simd_table;

#define LSREF_TABLE(SUF, NAME) { NAME, lsref_max_f32_##SUF, lsref_max_f64_##SUF,             \
    lsref_expsum_f32_##SUF, lsref_expsum_f64_##SUF, lsref_affine_f32_##SUF,                  \
    lsref_affine_f64_##SUF }

LSREF_SWEEPS(generic, )
static const lsref_simd_table lsref_simd_generic = LSREF_TABLE(generic, "generic");

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#define LSREF_X86_DISPATCH 1
LSREF_SWEEPS(avx2, __attribute__((target("avx2,fma"))))
LSREF_SWEEPS(avx512, __attribute__((target("avx512f,avx2,fma"))))
static const lsref_simd_table lsref_simd_avx2 = LSREF_TABLE(avx2, "avx2+fma");
static const lsref_simd_table lsref_simd_avx512 = LSREF_TABLE(avx512, "avx512f");
#endif

static lsref_simd_table lsref_simd = LSREF_TABLE(generic, "generic");

/* Choose the sweeps for this CPU. `force` ("generic", "avx2", "avx512", or NULL/"" for the
 * best available) is the LSREF_SIMD environment variable. Returns 0, or -1 if the forced
 * set is not available on this CPU (the generic set is used then). */
static int lsref_simd_init(const char *force)
{
    int want_any = (force == NULL || force[0] == '\0');
    lsref_simd = lsref_simd_generic;
    if (!want_any && strcmp(force, "generic") == 0) return 0;
#ifdef LSREF_X86_DISPATCH
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx2")
            && __builtin_cpu_supports("fma") && (want_any || strcmp(force, "avx512") == 0)) {
        lsref_simd = lsref_simd_avx512;
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
