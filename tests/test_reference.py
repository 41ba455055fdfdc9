"""The oracle against scipy.special and against values derived by hand (the seed lesson)."""
import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from scipy import optimize, special

from lsref import reference as R


@pytest.mark.parametrize("shape,axis", [((7,), -1), ((5, 11), -1), ((5, 11), 0),
                                        ((3, 4, 6), 1)])
def test_logsumexp_and_log_softmax_match_scipy(shape, axis, rng):
    x = rng.standard_normal(shape) * 30
    assert_allclose(R.logsumexp(x, axis=axis), special.logsumexp(x, axis=axis), rtol=1e-14)
    assert_allclose(R.log_softmax(x, axis=axis), special.log_softmax(x, axis=axis),
                    rtol=1e-13, atol=1e-13)
    assert_allclose(R.softmax(x, axis=axis), special.softmax(x, axis=axis), rtol=1e-13,
                    atol=1e-300)


def test_logsumexp_special_values_match_scipy():
    x = np.array([[-np.inf, -np.inf], [np.inf, 0.0], [np.nan, 0.0], [1e308, 1e308],
                  [-1e308, -1e308]])
    with np.errstate(all="ignore"):
        expected = special.logsumexp(x, axis=1)
    assert_array_equal(R.logsumexp(x), expected)


def test_seed_lesson_softmax_and_loss():
    """softmax([3, 1, 0]) = [0.844, 0.114, 0.042]; the loss is -log(0.8438) = 0.16985.

    The lesson prints 0.169, which is -log of the rounded 0.844 (0.1696): within 1e-3."""
    assert_allclose(R.softmax([3.0, 1.0, 0.0]), [0.844, 0.114, 0.042], atol=5e-4)
    assert R.cross_entropy([[3.0, 1.0, 0.0]], [0]) == pytest.approx(0.169, abs=1e-3)
    assert R.cross_entropy([[3.0, 1.0, 0.0]], [0]) == pytest.approx(0.16985, abs=5e-6)
    # and exactly: lse - z_t
    assert R.cross_entropy([[3.0, 1.0, 0.0]], [0]) == pytest.approx(
        np.log(np.exp(3) + np.exp(1) + 1) - 3, rel=1e-15)


def test_seed_lesson_soft_targets():
    """K=10, eps=0.1: 0.91 on the target, 0.01 elsewhere; K=4: [0.925, .025, .025, .025]."""
    q = R.smooth_labels([3], 10, 0.1)[0]
    assert_allclose(q, np.where(np.arange(10) == 3, 0.91, 0.01), rtol=1e-15)
    assert q.sum() == pytest.approx(1.0, rel=1e-15)
    assert_allclose(R.smooth_labels([0], 4, 0.1)[0], [0.925, 0.025, 0.025, 0.025], rtol=1e-15)


def test_smooth_labels_others_and_probabilities():
    q = R.smooth_labels(np.array([[2]]), 5, 0.2, smoothing="others")
    assert q.shape == (1, 1, 5)
    assert_allclose(q[0, 0], [0.05, 0.05, 0.8, 0.05, 0.05], rtol=1e-15)
    P = np.array([[0.5, 0.5, 0.0, 0.0]])
    assert_allclose(R.smooth_labels(P, 4, 0.2), [[0.45, 0.45, 0.05, 0.05]], rtol=1e-15)
    # class axis placed where asked
    assert R.smooth_labels(np.zeros((2, 3), int), 4, 0.1, axis=1).shape == (2, 4, 3)


def test_optimum_logit_gap_is_log_91():
    """Minimising the smoothed loss of one K=10 row lands on p = 0.91/0.01, a gap of
    log(0.91/0.01) = 4.51 (finite logits: the point of label smoothing)."""
    def f(z):
        return R.cross_entropy(z[None, :], [3], label_smoothing=0.1)

    def g(z):
        return R.cross_entropy_grad(z[None, :], [3], label_smoothing=0.1)[0]

    res = optimize.minimize(f, np.zeros(10), jac=g, method="BFGS", options={"gtol": 1e-12})
    p = special.softmax(res.x)
    assert_allclose(p[3], 0.91, rtol=1e-7)
    assert_allclose(np.delete(p, 3), 0.01, rtol=1e-6)
    gap = res.x[3] - np.delete(res.x, 3).mean()
    assert gap == pytest.approx(np.log(0.91 / 0.01), rel=1e-7)
    assert gap == pytest.approx(4.51, abs=0.005)
    # and at that optimum the loss equals the entropy of q
    q = R.smooth_labels([3], 10, 0.1)[0]
    assert f(res.x) == pytest.approx(-(q * np.log(q)).sum(), rel=1e-12)


@pytest.mark.parametrize("K", [2, 7, 100])
def test_eps_zero_and_one_closed_forms(K, rng):
    z = rng.standard_normal((9, K)) * 3
    t = rng.integers(0, K, 9)
    lse = special.logsumexp(z, axis=1)
    assert_allclose(R.cross_entropy(z, t, reduction="none"), lse - z[np.arange(9), t],
                    rtol=1e-13)
    assert_allclose(R.cross_entropy(z, t, label_smoothing=1.0, reduction="none"),
                    lse - z.mean(axis=1), rtol=1e-13)
    # gradient: softmax - q
    q = R.smooth_labels(t, K, 0.3)
    assert_allclose(R.cross_entropy_grad(z, t, label_smoothing=0.3, reduction="sum"),
                    special.softmax(z, axis=1) - q, atol=1e-15)


def test_uniform_and_others_convert_exactly(rng):
    """eps/(K-1) with eps_B equals eps/K with eps_A = eps_B K/(K-1) (SEMANTICS.md)."""
    K = 8
    z = rng.standard_normal((6, K))
    t = rng.integers(0, K, 6)
    a = R.cross_entropy(z, t, label_smoothing=0.2, smoothing="others")
    b = R.cross_entropy(z, t, label_smoothing=0.2 * K / (K - 1))
    assert a == pytest.approx(b, rel=1e-14)


def test_small_row_loss_is_accurate():
    """A row dominated by its target has loss log1p(sum of the rest), not log(1 + delta)."""
    z = np.array([[0.0, -40.0], [0.0, -700.0]])
    assert_allclose(R.cross_entropy(z, [0, 0], reduction="none"),
                    np.log1p(np.exp([-40.0, -700.0])), rtol=1e-15)


def test_reductions_and_ignore_index(rng):
    z = rng.standard_normal((6, 5))
    t = np.array([0, 1, -100, 3, 4, -100])
    rows = R.cross_entropy(z, t, label_smoothing=0.1, reduction="none")
    assert_array_equal(rows[[2, 5]], 0.0)
    assert R.cross_entropy(z, t, label_smoothing=0.1, reduction="sum") == pytest.approx(
        rows.sum(), rel=1e-15)
    assert R.cross_entropy(z, t, label_smoothing=0.1) == pytest.approx(rows.sum() / 4,
                                                                       rel=1e-15)
    g = R.cross_entropy_grad(z, t, label_smoothing=0.1)
    assert_array_equal(g[[2, 5]], 0.0)
    # every target ignored: NaN mean, zero gradient (PyTorch's choice)
    all_ignored = np.full(6, -100)
    assert np.isnan(R.cross_entropy(z, all_ignored))
    assert_array_equal(R.cross_entropy_grad(z, all_ignored), 0.0)
    assert R.cross_entropy(z, all_ignored, reduction="sum") == 0.0


def test_probability_target_mean_divides_by_rows(rng):
    z = rng.standard_normal((4, 3))
    P = special.softmax(rng.standard_normal((4, 3)), axis=1)
    rows = R.cross_entropy(z, P, reduction="none")
    assert_allclose(rows, -(P * special.log_softmax(z, axis=1)).sum(axis=1), rtol=1e-14)
    assert R.cross_entropy(z, P) == pytest.approx(rows.mean(), rel=1e-15)


def test_class_axis_equals_moving_it_last(rng):
    z = rng.standard_normal((2, 5, 3, 4))
    t = rng.integers(0, 5, (2, 3, 4))
    rows = R.cross_entropy(z, t, axis=1, label_smoothing=0.1, reduction="none")
    flat = R.cross_entropy(np.moveaxis(z, 1, -1).reshape(-1, 5), t.reshape(-1),
                           label_smoothing=0.1, reduction="none")
    assert_allclose(rows.reshape(-1), flat, rtol=1e-15)
    g = R.cross_entropy_grad(z, t, axis=1, label_smoothing=0.1)
    assert g.shape == z.shape


INF, NAN = np.inf, np.nan


@pytest.mark.parametrize("bad_row,kw", [
    ([NAN, 0.0, 1.0], dict(class_weight=[1.0, 1.0, 0.0])),       # weight-0 target, eps = 0
    ([0.0, INF, 1.0], dict(class_weight=[1.0, 1.0, 0.0])),
    ([-INF, -INF, -INF], dict(class_weight=[1.0, 1.0, 0.0])),
    ([-INF, -INF, -INF], {}),
    ([-INF, -INF, -INF], dict(z_loss=1e-3, class_weight=[1.0, 1.0, 0.0])),
    ([-INF, -INF, -INF], dict(label_smoothing=0.1, class_weight=[0.0, 0.0, 0.0])),
])
def test_nan_rule_comes_first_whatever_the_target_mass(bad_row, kw):
    """SEMANTICS.md: a row holding NaN or +inf, or only -inf, is NaN (loss and gradient) even
    where its target mass is 0; the other rows are untouched and the NaN reaches sum/mean."""
    z = np.array([[2.0, -1.0, 0.5], bad_row, [0.0, 3.0, -2.0]])
    t = np.array([0, 2, 1])
    rows, grad = R.value_and_grad(z, t, reduction="none", **kw)
    assert np.isnan(rows[1]) and np.isnan(grad[1]).all()
    good = [0, 2]
    eps = kw.get("label_smoothing", 0.0)
    w = np.asarray(kw.get("class_weight", np.ones(3)))
    q = (1 - eps) * np.eye(3)[t[good]] + eps / 3
    lse = special.logsumexp(z[good], axis=1)
    expected = ((w * q) * (lse[:, None] - z[good])).sum(axis=1) + kw.get("z_loss", 0.0) * lse**2
    assert_allclose(rows[good], expected, rtol=1e-14, atol=1e-300)
    assert np.isfinite(grad[good]).all()
    assert np.isnan(R.cross_entropy(z, t, reduction="sum", **kw))
    assert np.isnan(R.cross_entropy(z, t, reduction="mean", **kw))
    # an ignored row stays ignored: loss 0, gradient 0
    ignored = R.value_and_grad(z, [0, -100, 1], reduction="none", **kw)
    assert ignored[0][1] == 0.0 and (ignored[1][1] == 0.0).all()


def test_softmax_of_rows_without_one_is_nan_logsumexp_is_scipys():
    """SEMANTICS.md: softmax and log_softmax are NaN on the whole of a row holding NaN or +inf,
    or holding only -inf; logsumexp is scipy's (+inf, NaN, -inf)."""
    x = np.array([[INF, 0.0, 1.0], [NAN, 0.0, 1.0], [-INF, -INF, -INF], [INF, -INF, 0.0],
                  [INF, NAN, 0.0], [-INF, 0.0, 1.0]])
    undefined = [0, 1, 2, 3, 4]
    with np.errstate(all="ignore"):
        assert_array_equal(R.logsumexp(x), special.logsumexp(x, axis=1))
        assert_array_equal(R.logsumexp(x.T, axis=0), special.logsumexp(x, axis=1))
        assert_array_equal(R.softmax(x), special.softmax(x, axis=1))
        assert_allclose(R.softmax(x.T, axis=0), special.softmax(x, axis=1).T, rtol=1e-15)
    assert np.isnan(R.log_softmax(x)[undefined]).all()
    assert np.isnan(R.log_softmax(x.T, axis=0)[:, undefined]).all()
    assert_allclose(R.log_softmax(x)[5], special.log_softmax(x[5]), rtol=1e-15)
    assert R.log_softmax(x)[5, 0] == -INF
    x_in = x.copy()
    R.softmax(x), R.log_softmax(x), R.logsumexp(x)
    assert_array_equal(x, x_in)


@pytest.mark.parametrize("value", [3.0, -2.5, INF, -INF, NAN])
def test_zero_d_input_is_its_own_logsumexp_as_in_scipy(value):
    with np.errstate(all="ignore"):
        for f in ("logsumexp", "softmax", "log_softmax"):
            got, expected = getattr(R, f)(value), getattr(special, f)(value)
            assert np.shape(got) == () and np.shape(got) == np.shape(expected)
            assert_array_equal(got, expected)
            assert_array_equal(getattr(R, f)(np.array(value), axis=0), expected)
        assert_array_equal(R.logsumexp(value, keepdims=True),
                           special.logsumexp(value, keepdims=True))
    assert R.logsumexp(3.0) == 3.0


@pytest.mark.parametrize("shape,axis", [((3, 0), 1), ((3, 0), -1), ((0, 3), 0), ((0,), 0),
                                        ((2, 0, 3), 1), ((0, 3), 1), ((4, 0), 0)])
@pytest.mark.parametrize("keepdims", [False, True])
def test_degenerate_shapes_match_scipy(shape, axis, keepdims):
    """An empty class axis: logsumexp -inf (scipy's), softmax/log_softmax an empty result
    shaped like the input (scipy raises on an empty reduction there)."""
    x = np.zeros(shape)
    expected = special.logsumexp(x, axis=axis, keepdims=keepdims)
    got = R.logsumexp(x, axis=axis, keepdims=keepdims)
    assert got.shape == expected.shape
    assert_array_equal(got, expected)
    for f in (R.softmax, R.log_softmax):
        out = f(x, axis=axis)
        assert out.shape == shape
        if x.shape[axis] != 0:
            assert_array_equal(out, getattr(special, f.__name__)(x, axis=axis))


@pytest.mark.parametrize("shape", [(3, 0), (0, 4), (0,)])
def test_binary_cross_entropy_over_no_elements(shape):
    """K = 0 or no rows: the sum over no elements is 0, the mean over none is NaN, the
    per-element loss and the gradient are empty arrays shaped like the logits."""
    x = np.zeros(shape)
    rows, grad = R.binary_value_and_grad(x, np.zeros(shape), reduction="none")
    assert rows.shape == shape and grad.shape == shape
    assert R.binary_cross_entropy(x, np.zeros(shape), reduction="sum") == 0.0
    assert np.isnan(R.binary_cross_entropy(x, np.zeros(shape), reduction="mean"))
    assert R.binary_value_and_grad(x, np.zeros(shape))[1].shape == shape


def test_binary_cross_entropy_of_a_0d_logit():
    """A 0-d logit with a 0-d label is one element: softplus(-x) y + softplus(x) (1 - y)."""
    x, y = 0.5, 0.25
    expected = y * np.logaddexp(0, -x) + (1 - y) * np.logaddexp(0, x)
    for reduction in ("none", "sum", "mean"):
        loss, grad = R.binary_value_and_grad(np.array(x), np.array(y), reduction=reduction)
        assert_allclose(loss, expected, rtol=1e-15)
        assert_allclose(grad, special.expit(x) - y, rtol=1e-15)
