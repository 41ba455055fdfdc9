/* The comparison of issue 14's "AVX2 gap": a plain C loop over label-smoothed cross-entropy
 * whose exponential is glibc's vector expf (libmvec, about 1 ulp; gcc vectorises expf calls
 * to it under -O3 -ffast-math with AVX2). Per row: the max, exp and its sum (the exps stored in
 * the gradient), then the gradient in place. Built and timed against lsref and a copy by
 * benchmarks/libmvec_loop.py (one process, the same arrays). Not lsref's kernel: no special
 * values, no accuracy bookkeeping; a yardstick for the speed of the sweeps only. */
#include <math.h>
#include <stdint.h>

static void row(const float *z, float *g, long K, int64_t t, float eps, double *loss)
{
    float m = -INFINITY, s = 0.0f, u = 0.0f;
    long k;
    for (k = 0; k < K; k++) m = z[k] > m ? z[k] : m;
#pragma omp simd reduction(+:s, u)
    for (k = 0; k < K; k++) {
        float e = expf(z[k] - m);
        g[k] = e;
        s += e;
        u += z[k] - m;
    }
    double L = log((double)s), beta = eps / K, qt = 1.0 - eps + beta, dt = z[t] - m;
    *loss = qt * (L - dt) + beta * ((K - 1) * L - (u - dt));
    float A = 1.0f / s, B = (float)beta;
#pragma omp simd
    for (k = 0; k < K; k++) g[k] = A * g[k] - B;
    g[t] -= (float)(qt - beta);
}

void libmvec_value_and_grad(const float *z, const int64_t *t, float *g, double *loss, long N,
                            long K, float eps, int n_threads)
{
    long i;
#pragma omp parallel for num_threads(n_threads) schedule(static)
    for (i = 0; i < N; i++) row(z + i * K, g + i * K, K, t[i], eps, loss + i);
}
