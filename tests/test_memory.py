"""No N x K temporaries: the kernel reads the weight vector and the class indices, never a
dense target matrix. Peak extra memory (tracemalloc, which NumPy reports its buffers to) is
the gradient (when allocated) plus O(N + K)."""
import tracemalloc

import numpy as np
import pytest

import lsref

N, K = 4096, 32000
# O(N + K): a handful of per-row (int64/float64/bool) and per-class vectors; 32 of them is
# a generous count and still 3 orders of magnitude below one N x K float32 array (524 MB).
SMALL = 32 * 8 * (N + K)
# Probability and label targets are range-checked a block of at most 2**20 elements at a
# time: a constant few MB of boolean temporaries, independent of N x K.
CHECK_BLOCK = 4 * 2**20


def peak_extra(fn):
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        fn()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(51)
    z = rng.standard_normal((N, K), dtype=np.float32)
    t = rng.integers(0, K, N)
    t[::7] = -100
    return z, t, dict(label_smoothing=0.1, class_weight=rng.random(K) + 0.5,
                      sample_weight=rng.random(N), z_loss=1e-4, kl=True)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_peak_memory_allocating_and_with_out(data, dtype):
    z, t, kw = data
    z = z.astype(dtype)
    grad_bytes = z.nbytes
    extra = peak_extra(lambda: lsref.value_and_grad(z, t, **kw))
    assert extra <= grad_bytes + SMALL, (extra, grad_bytes)
    out = np.empty_like(z)
    extra = peak_extra(lambda: lsref.value_and_grad(z, t, out=out, **kw))
    assert extra <= SMALL, extra
    extra = peak_extra(lambda: lsref.cross_entropy(z, t, **kw))
    assert extra <= SMALL, extra


def test_peak_memory_probability_targets(data):
    z, _, kw = data
    P = np.full((N, K), 1.0 / K, np.float32)
    kw = dict(kw, sample_weight=None)
    out = np.empty_like(z)
    extra = peak_extra(lambda: lsref.value_and_grad(z, P, out=out, **kw))
    assert extra <= SMALL + CHECK_BLOCK, extra
