"""Binary (sigmoid) cross-entropy: kernel vs oracle, finite differences, extremes."""
import numpy as np
import pytest
from numpy.testing import assert_array_equal

import lsref
from lsref import reference as R
from support import FD_GRAD_RTOL, HALF_DTYPES, assert_close_to_oracle, fd_gradient

ALL_DTYPES = [np.float32, np.float64] + HALF_DTYPES


def make(kind, dtype, rng, shape=(17, 6), axis=-1):
    x = (rng.standard_normal(shape) * 4).astype(dtype)
    K = shape[axis]
    batch = tuple(s for i, s in enumerate(shape) if i != axis % len(shape))
    if kind == "labels":
        y = (rng.random(shape) > 0.5).astype(np.float64)
    elif kind == "soft":
        y = rng.random(shape).astype(np.float32)
    elif kind == "int-labels":
        y = (rng.random(shape) > 0.5).astype(np.int64)
    else:
        y = rng.integers(0, K, batch)
        y.reshape(-1)[::4] = -100
    return x, y


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("kind", ["labels", "soft", "int-labels", "indices"])
@pytest.mark.parametrize("weights", [False, True])
@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("layout", ["rows", "NCHW"])
def test_binary_kernel_matches_oracle(dtype, kind, weights, eps, layout):
    rng = np.random.default_rng(41)
    shape, axis = ((17, 6), -1) if layout == "rows" else ((2, 6, 3, 4), 1)
    x, y = make(kind, dtype, rng, shape, axis)
    kw = dict(label_smoothing=eps, axis=axis)
    if weights:
        kw["class_weight"] = rng.random(6) + 0.5
        kw["sample_weight"] = rng.random(tuple(s for i, s in enumerate(shape)
                                               if i != axis % len(shape)))
    for reduction in ("mean", "sum", "none"):
        for n_threads in (1, 2):
            got = lsref.binary_value_and_grad(x, y, reduction=reduction, n_threads=n_threads,
                                              **kw)
            ref = R.binary_value_and_grad(x, y, reduction=reduction, **kw)
            assert got[1].dtype == x.dtype and got[1].shape == x.shape
            assert_close_to_oracle(*got, *ref, dtype, term_scale=np.max(np.abs(ref[1])))
            assert_array_equal(lsref.binary_cross_entropy(x, y, reduction=reduction,
                                                          n_threads=n_threads, **kw), got[0])


@pytest.mark.parametrize("kind", ["labels", "soft", "indices"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_binary_gradient_finite_differences(kind, reduction):
    rng = np.random.default_rng(42)
    x, y = make(kind, np.float64, rng, (5, 4))
    kw = dict(label_smoothing=0.1, reduction=reduction, class_weight=[1.0, 2.0, 0.5, 1.5])
    for mod in (lsref, R):
        g = mod.binary_cross_entropy_grad(x, y, **kw)
        g_fd = fd_gradient(lambda xx, mod=mod: np.sum(mod.binary_cross_entropy(xx, y, **kw)), x)
        np.testing.assert_allclose(g, g_fd, rtol=0, atol=FD_GRAD_RTOL * np.abs(g_fd).max())


def test_binary_smoothing_forms():
    """Keras: y(1-eps) + eps/2 for labels; timm: onehot(1-eps) + eps/K for class indices."""
    x = np.zeros((1, 4))
    # at x = 0, sigmoid = 1/2, so the gradient (sum reduction) is 1/2 - y'
    g = lsref.binary_cross_entropy_grad(x, [[1.0, 0.0, 1.0, 0.0]], label_smoothing=0.2,
                                        reduction="sum")
    np.testing.assert_allclose(g, [[0.5 - 0.9, 0.5 - 0.1, 0.5 - 0.9, 0.5 - 0.1]], rtol=1e-15)
    g = lsref.binary_cross_entropy_grad(x, [2], label_smoothing=0.2, reduction="sum")
    np.testing.assert_allclose(g, [[0.5 - 0.05, 0.5 - 0.05, 0.5 - 0.85, 0.5 - 0.05]],
                               rtol=1e-15)


def test_binary_extremes_are_stable():
    """|x| up to 1e300: softplus never overflows; x = +-inf with the matching label is 0."""
    x = np.array([[1e300, -1e300, 800.0, -800.0, np.inf, -np.inf, np.nan]])
    y = np.array([[1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0]])
    loss, grad = lsref.binary_value_and_grad(x, y, reduction="none")
    assert_array_equal(loss[0, :6], 0.0)
    assert_array_equal(grad[0, :6], 0.0)
    assert np.isnan(loss[0, 6]) and np.isnan(grad[0, 6])
    y2 = 1.0 - y
    loss2 = lsref.binary_cross_entropy(x, y2, reduction="none")
    assert_array_equal(loss2[0, :4], [1e300, 1e300, 800.0, 800.0])
    assert_array_equal(loss2[0, 4:6], np.inf)
    ref = R.binary_cross_entropy(x, y2, reduction="none")
    assert_array_equal(loss2, ref)


def test_binary_bad_input():
    with pytest.raises(ValueError, match=r"binary labels must be finite and in \[0, 1\]; "
                                         r"targets\[0, 1\] = 2.0"):
        lsref.binary_cross_entropy(np.zeros((2, 3)), [[0, 2, 1], [0, 0, 0]])
    with pytest.raises(ValueError, match=r"targets\[1\] = 3 is outside \[0, 3\)"):
        lsref.binary_cross_entropy(np.zeros((2, 3)), [0, 3])
    with pytest.raises(ValueError, match=r"targets must have the logits' shape \(2, 3\)"):
        lsref.binary_cross_entropy(np.zeros((2, 3)), np.zeros((3, 2)))
    with pytest.raises(TypeError, match="are class indices but have dtype float64"):
        lsref.binary_cross_entropy(np.zeros((2, 3)), np.zeros(2))


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=lambda d: np.dtype(d).name)
def test_binary_bit_identical_for_every_thread_count(dtype):
    """Per-element results written by the owning thread only: 1, 2 and 3 threads give the
    same bits (this caught a shared temporary inside the parallel loop)."""
    rng = np.random.default_rng(43)
    x = (rng.standard_normal((3001, 7)) * 4).astype(dtype)
    y = rng.random((3001, 7))
    kw = dict(label_smoothing=0.1, class_weight=rng.random(7), sample_weight=rng.random(3001),
              reduction="none")
    for _ in range(5):
        results = [lsref.binary_value_and_grad(x, y, n_threads=n, **kw) for n in (1, 2, 3)]
        for loss, grad in results[1:]:
            assert_array_equal(loss, results[0][0])
            assert_array_equal(grad, results[0][1])


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("weights", [False, True])
def test_binary_with_no_classes_follows_the_oracle(dtype, weights):
    """K = 0 with labels shaped like the logits was numpy's "cannot reshape array of size 0".
    The loss of each row is a sum over no elements: 0. "sum" is 0, "none" is empty, and
    "mean" divides by the number of elements, 0: nan, like the D = 0 rule of SEMANTICS.md;
    the gradient is empty. The kernel front door gives what the oracle gives."""
    x = np.zeros((3, 0), dtype)
    y = np.zeros((3, 0))
    kw = dict(class_weight=np.zeros(0), sample_weight=np.ones(3)) if weights else {}
    for reduction in ("mean", "sum", "none"):
        ref_loss, ref_grad = R.binary_value_and_grad(x, y, reduction=reduction, **kw)
        loss, grad = lsref.binary_value_and_grad(x, y, reduction=reduction, **kw)
        assert np.shape(loss) == np.shape(ref_loss) and grad.shape == ref_grad.shape == (3, 0)
        assert grad.dtype == dtype and np.asarray(loss).dtype == dtype
        assert_array_equal(loss, ref_loss)
        assert_array_equal(lsref.binary_cross_entropy(x, y, reduction=reduction, **kw),
                           ref_loss)
        assert lsref.binary_cross_entropy_grad(x, y, reduction=reduction, **kw).shape == (3, 0)
    assert np.isnan(lsref.binary_cross_entropy(x, y))
    assert lsref.binary_cross_entropy(x, y, reduction="sum") == 0.0
    # class indices cannot point into no classes: both refuse them alike
    for mod in (lsref, R):
        with pytest.raises(ValueError, match=r"logits has 0 classes along axis=1"):
            mod.binary_cross_entropy(x, np.zeros(3, int))
