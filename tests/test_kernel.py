"""The kernel (through the front door) against the float64 oracle, over the layout grid."""
import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from scipy import special

import lsref
from lsref import reference as R
from lsref._tolerances import kernel_accuracy
from support import assert_close_to_oracle, stable_seed

K = 37

# name -> (shape of the logits, class axis, how the array is laid out in memory)
LAYOUTS = {
    "rows-C": ((23, K), -1, "C"),
    "rows-F": ((23, K), -1, "F"),
    "rows-strided": ((23, K), -1, "strided"),
    "classes-first": ((K, 23), 0, "C"),
    "NCHW": ((2, K, 3, 4), 1, "C"),
    "one-row": ((K,), -1, "C"),
}
SMOOTHINGS = [dict(label_smoothing=0.0), dict(label_smoothing=0.1),
              dict(label_smoothing=0.2, smoothing="others")]


def make_logits(shape, layout, dtype, rng, scale=3.0):
    z = (rng.standard_normal(shape) * scale).astype(dtype)
    if layout == "F":
        return np.asfortranarray(z)
    if layout == "strided":
        wide = np.zeros(shape[:-1] + (2 * shape[-1],), dtype)
        wide[..., ::2] = z
        return wide[..., ::2]
    return z


def make_targets(shape, axis, kind, ignore, rng):
    n_classes = shape[axis]
    batch = tuple(s for i, s in enumerate(shape) if i != axis % len(shape))
    if kind == "probs":
        P = rng.random(shape)
        return P / P.sum(axis=axis, keepdims=True)
    t = rng.integers(0, n_classes, batch)
    if ignore and t.size > 1:
        t.reshape(-1)[::4] = -100
    return t


def make_readonly(z, how, tmp_path):
    if how == "writeable":
        return z
    if how == "readonly":
        z = z.copy(order="K") if z.base is None else z
        z.setflags(write=False)
        return z
    path = tmp_path / "logits.dat"
    mm = np.memmap(path, dtype=z.dtype, mode="w+", shape=z.shape)
    mm[...] = z
    mm.flush()
    return np.memmap(path, dtype=z.dtype, mode="r", shape=z.shape)


# smoothing="others" is defined for class-index targets only
TARGET_CASES = [(kind, ignore, smooth)
                for kind, ignore in [("index", False), ("index", True), ("probs", False)]
                for smooth in range(len(SMOOTHINGS))
                if not (kind == "probs" and SMOOTHINGS[smooth].get("smoothing") == "others")]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("kind,ignore,smooth", TARGET_CASES)
@pytest.mark.parametrize("out_kind", ["new", "buffer", "logits"])
@pytest.mark.parametrize("n_threads", [1, 2])
def test_kernel_matches_oracle(dtype, layout, kind, ignore, out_kind, n_threads, smooth):
    """value_and_grad, cross_entropy and cross_entropy_grad equal the oracle within the
    stated accuracy, for every layout, target kind and out= choice; inputs stay untouched."""
    kw = dict(SMOOTHINGS[smooth])
    rng = np.random.default_rng(stable_seed(layout, kind, ignore, smooth))
    shape, axis, order = LAYOUTS[layout]
    z = make_logits(shape, order, dtype, rng)
    t = make_targets(shape, axis, kind, ignore, rng)
    z0, t0 = z.copy(), t.copy()
    for reduction in ("mean", "sum", "none"):
        kw.update(axis=axis, reduction=reduction)
        ref_loss, ref_grad = R.value_and_grad(z, t, **kw)
        if out_kind == "new":
            out = None
        elif out_kind == "buffer":
            out = np.full_like(z, np.nan)
        else:
            z = z0.copy(order="K") if order != "strided" else make_logits(shape, order,
                                                                          dtype, rng)
            z[...] = z0
            out = z
        loss, grad = lsref.value_and_grad(z, t, n_threads=n_threads, out=out, **kw)
        assert grad.dtype == dtype and grad.shape == z0.shape
        assert np.asarray(loss).dtype == dtype
        if out is not None:
            assert grad is out
        assert_close_to_oracle(loss, grad, ref_loss, ref_grad, dtype)
        assert_array_equal(t, t0)
        if out_kind != "logits":
            assert_array_equal(z, z0)
            # the loss-only and gradient-only entry points agree with the fused one
            assert_array_equal(lsref.cross_entropy(z, t, n_threads=n_threads, **kw), loss)
            assert_array_equal(lsref.cross_entropy_grad(z, t, n_threads=n_threads, **kw),
                               grad)
        else:
            z = z0.copy()


@pytest.mark.parametrize("how", ["readonly", "memmap"])
def test_readonly_and_memmap_inputs(dtype, how, tmp_path):
    rng = np.random.default_rng(3)
    z = make_readonly((rng.standard_normal((40, 300)) * 3).astype(dtype), how, tmp_path)
    t = rng.integers(0, 300, 40)
    t.setflags(write=False)
    loss, grad = lsref.value_and_grad(z, t, label_smoothing=0.1)
    assert_close_to_oracle(loss, grad, *R.value_and_grad(z, t, label_smoothing=0.1), dtype)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("kind", ["index", "probs"])
def test_bit_identical_for_every_thread_count(dtype, reduction, kind):
    """Per-row outputs and a NumPy reduction outside the parallel loop: n_threads does not
    change a single bit."""
    rng = np.random.default_rng(4)
    z = (rng.standard_normal((1031, 777)) * 3).astype(dtype)
    t = make_targets(z.shape, -1, kind, kind == "index", rng)
    results = [lsref.value_and_grad(z, t, label_smoothing=0.1, reduction=reduction,
                                    n_threads=n) for n in (1, 2, 3)]
    for loss, grad in results[1:]:
        assert_array_equal(loss, results[0][0])
        assert_array_equal(grad, results[0][1])


def test_no_copy_for_c_contiguous_rows_and_in_place_gradient():
    """out=logits on C-contiguous rows writes the gradient over the logits (no extra
    buffer) and equals the out-of-place result."""
    rng = np.random.default_rng(5)
    z = (rng.standard_normal((64, 1000)) * 3).astype(np.float32)
    t = rng.integers(0, 1000, 64)
    loss_a, grad_a = lsref.value_and_grad(z, t, label_smoothing=0.1)
    zz = z.copy()
    loss_b, grad_b = lsref.value_and_grad(zz, t, label_smoothing=0.1, out=zz)
    assert grad_b is zz
    assert loss_b == loss_a
    assert_array_equal(grad_b, grad_a)


@pytest.mark.parametrize("K_", [2, 10, 1000, 50000])
@pytest.mark.parametrize("eps,smoothing", [(0.0, "uniform"), (0.1, "uniform"),
                                           (1.0, "uniform"), (0.1, "others")])
def test_accuracy_bounds_up_to_50k_classes(dtype, K_, eps, smoothing):
    """The acceptance bounds: scale-3 random logits, K up to 50k, reduced and per row."""
    rng = np.random.default_rng(K_)
    N = 48 if K_ == 50000 else 300
    z = (rng.standard_normal((N, K_)) * 3).astype(dtype)
    t = rng.integers(0, K_, N)
    for reduction in ("mean", "none"):
        kw = dict(label_smoothing=eps, smoothing=smoothing, reduction=reduction)
        assert_close_to_oracle(*lsref.value_and_grad(z, t, **kw),
                               *R.value_and_grad(z, t, **kw), dtype)


def test_dominated_rows_keep_relative_accuracy(dtype):
    """A row whose target dominates has a tiny loss; it keeps its relative accuracy."""
    rng = np.random.default_rng(6)
    z = (rng.standard_normal((2000, 2)) * 5).astype(dtype)
    t = np.argmax(z, axis=1)
    loss = lsref.cross_entropy(z, t, reduction="none")
    ref = R.cross_entropy(z, t, reduction="none")
    assert_close_to_oracle(loss, None, ref, None, dtype)


@pytest.mark.parametrize("K", [2, 5, 12])
def test_dominated_rows_with_smoothing_on_zero_weight_classes(dtype, K):
    """With eps > 0 the loss is tiny too when the other classes have weight 0 (their
    smoothing mass does not count): it keeps its relative accuracy. (Found by the sharded
    statistics' hypothesis test: the float64 kernel was 6e-8 off before.)"""
    rng = np.random.default_rng(K)
    z = (rng.standard_normal((300, K)) * 3).astype(dtype)
    z[:, 0] = z.max(axis=1) + rng.uniform(5, 30, 300).astype(dtype)   # class 0 dominates
    t = np.zeros(300, np.int64)
    w = np.zeros(K)
    w[0] = 1.3                                   # only the target class has weight
    kw = dict(label_smoothing=0.1, class_weight=w, reduction="none")
    loss = lsref.cross_entropy(z, t, **kw)
    ref = R.cross_entropy(z, t, **kw)
    # the loss is the target's own term: w_0 q_t log(1 + sum_k exp(z_k - z_0)); check the
    # oracle against that directly too
    z64 = z.astype(np.float64)
    exact = 1.3 * (0.9 + 0.1 / K) * np.log1p(np.exp(z64[:, 1:] - z64[:, :1]).sum(axis=1))
    assert_allclose(ref, exact, rtol=1e-13)
    assert np.all(ref < 1e-1)                    # tiny losses, down to ~1e-13
    assert_close_to_oracle(loss, None, ref, None, dtype)


# --- logsumexp, softmax, log_softmax -------------------------------------------------------

@pytest.mark.parametrize("shape,axis", [((50,), -1), ((30, 200), -1), ((30, 200), 0),
                                        ((3, 4, 5), 1)])
def test_logsumexp_softmax_match_scipy(dtype, shape, axis):
    rng = np.random.default_rng(7)
    x = (rng.standard_normal(shape) * 10).astype(dtype)
    x64 = x.astype(np.float64)
    rtol = kernel_accuracy(dtype).loss_rtol
    got = lsref.logsumexp(x, axis=axis)
    assert got.dtype == dtype
    assert_allclose(got, special.logsumexp(x64, axis=axis), rtol=rtol)
    assert_allclose(lsref.logsumexp(x, axis=axis, keepdims=True),
                    special.logsumexp(x64, axis=axis, keepdims=True), rtol=rtol)
    assert_allclose(lsref.log_softmax(x, axis=axis), special.log_softmax(x64, axis=axis),
                    rtol=rtol * 10, atol=rtol * 10)
    assert_allclose(lsref.softmax(x, axis=axis), special.softmax(x64, axis=axis),
                    rtol=rtol * 10, atol=np.finfo(dtype).tiny)


def test_logsumexp_special_values_match_scipy(dtype):
    rows = [[-np.inf, -np.inf, -np.inf], [np.inf, 0.0, 1.0], [np.nan, 0.0, 1.0],
            [np.inf, np.nan, 0.0], [-np.inf, 2.0, -np.inf], [np.inf, np.inf, -np.inf]]
    x = np.array(rows, dtype)
    with np.errstate(all="ignore"):
        expected = special.logsumexp(x.astype(np.float64), axis=1)
        expected_softmax = special.softmax(x.astype(np.float64), axis=1)
    assert_array_equal(lsref.logsumexp(x), expected.astype(dtype))
    assert_array_equal(np.isnan(lsref.softmax(x)), np.isnan(expected_softmax))
    assert_array_equal(lsref.softmax(x)[4], [0.0, 1.0, 0.0])
    assert_array_equal(lsref.log_softmax(x)[4], [-np.inf, 0.0, -np.inf])


# --- degenerate shapes, as scipy.special has them --------------------------------------------

DEGENERATE = [((3, 0), -1), ((3, 0), 0), ((3, 0), 1), ((0, 3), -1), ((0, 3), 0),
              ((0, 0), 0), ((0, 0), -1), ((0,), -1), ((0,), 0), ((2, 0, 3), 1),
              ((2, 0, 3), 0), ((2, 0, 3), -1), ((), -1), ((), 0)]


@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("shape,axis", DEGENERATE, ids=str)
def test_logsumexp_degenerate_shapes_match_scipy(dtype, shape, axis, keepdims):
    """An empty class axis was numpy's "cannot reshape array of size 0" and a 0-d input
    raised; scipy.special gives -inf (the log of an empty sum) and the input itself."""
    x = np.full(shape, 3.0, dtype)
    expected = special.logsumexp(x, axis=axis, keepdims=keepdims)
    got = lsref.logsumexp(x, axis=axis, keepdims=keepdims)
    assert got.shape == np.shape(expected)
    assert got.dtype == dtype
    assert_array_equal(got, expected)


@pytest.mark.parametrize("value", [3.0, -2.5, -np.inf, np.inf, np.nan])
def test_zero_dimensional_input_matches_scipy(dtype, value):
    x = dtype(value)
    with np.errstate(all="ignore"):
        for ours, theirs in [(lsref.logsumexp, special.logsumexp),
                             (lsref.softmax, special.softmax),
                             (lsref.log_softmax, special.log_softmax)]:
            for axis in (-1, 0):
                expected = theirs(x, axis=axis)
                got = ours(x, axis=axis)
                assert got.shape == () and got.dtype == dtype
                assert_array_equal(got, expected)
    for fn in (lsref.logsumexp, lsref.softmax, lsref.log_softmax):
        with pytest.raises(ValueError, match=r"axis=1 is out of bounds"):
            fn(x, axis=1)


@pytest.mark.parametrize("shape,axis", [s for s in DEGENERATE if s[0]], ids=str)
def test_softmax_of_an_empty_axis_or_batch_is_empty(dtype, shape, axis):
    """An empty result of the input's shape (SEMANTICS.md). scipy.special.softmax agrees
    where it is defined (an empty batch); over an empty axis it raises (no max of nothing),
    and lsref gives the empty result instead."""
    x = np.zeros(shape, dtype)
    for ours, theirs in [(lsref.softmax, special.softmax),
                         (lsref.log_softmax, special.log_softmax)]:
        got = ours(x, axis=axis)
        assert got.shape == shape and got.dtype == dtype
        if x.shape[axis] > 0:
            assert_array_equal(got, theirs(x, axis=axis))
