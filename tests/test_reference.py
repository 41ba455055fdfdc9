"""The oracle against scipy.special and against values derived by hand (the seed lesson)."""
import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from scipy import optimize, special

from lsref import reference as R

RNG = np.random.default_rng(20261124)


@pytest.mark.parametrize("shape,axis", [((7,), -1), ((5, 11), -1), ((5, 11), 0),
                                        ((3, 4, 6), 1)])
def test_logsumexp_and_log_softmax_match_scipy(shape, axis):
    x = RNG.standard_normal(shape) * 30
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
def test_eps_zero_and_one_closed_forms(K):
    z = RNG.standard_normal((9, K)) * 3
    t = RNG.integers(0, K, 9)
    lse = special.logsumexp(z, axis=1)
    assert_allclose(R.cross_entropy(z, t, reduction="none"), lse - z[np.arange(9), t],
                    rtol=1e-13)
    assert_allclose(R.cross_entropy(z, t, label_smoothing=1.0, reduction="none"),
                    lse - z.mean(axis=1), rtol=1e-13)
    # gradient: softmax - q
    q = R.smooth_labels(t, K, 0.3)
    assert_allclose(R.cross_entropy_grad(z, t, label_smoothing=0.3, reduction="sum"),
                    special.softmax(z, axis=1) - q, atol=1e-15)


def test_uniform_and_others_convert_exactly():
    """eps/(K-1) with eps_B equals eps/K with eps_A = eps_B K/(K-1) (SEMANTICS.md)."""
    K = 8
    z = RNG.standard_normal((6, K))
    t = RNG.integers(0, K, 6)
    a = R.cross_entropy(z, t, label_smoothing=0.2, smoothing="others")
    b = R.cross_entropy(z, t, label_smoothing=0.2 * K / (K - 1))
    assert a == pytest.approx(b, rel=1e-14)


def test_small_row_loss_is_accurate():
    """A row dominated by its target has loss log1p(sum of the rest), not log(1 + delta)."""
    z = np.array([[0.0, -40.0], [0.0, -700.0]])
    assert_allclose(R.cross_entropy(z, [0, 0], reduction="none"),
                    np.log1p(np.exp([-40.0, -700.0])), rtol=1e-15)


def test_reductions_and_ignore_index():
    z = RNG.standard_normal((6, 5))
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


def test_probability_target_mean_divides_by_rows():
    z = RNG.standard_normal((4, 3))
    P = special.softmax(RNG.standard_normal((4, 3)), axis=1)
    rows = R.cross_entropy(z, P, reduction="none")
    assert_allclose(rows, -(P * special.log_softmax(z, axis=1)).sum(axis=1), rtol=1e-14)
    assert R.cross_entropy(z, P) == pytest.approx(rows.mean(), rel=1e-15)


def test_class_axis_equals_moving_it_last():
    z = RNG.standard_normal((2, 5, 3, 4))
    t = RNG.integers(0, 5, (2, 3, 4))
    rows = R.cross_entropy(z, t, axis=1, label_smoothing=0.1, reduction="none")
    flat = R.cross_entropy(np.moveaxis(z, 1, -1).reshape(-1, 5), t.reshape(-1),
                           label_smoothing=0.1, reduction="none")
    assert_allclose(rows.reshape(-1), flat, rtol=1e-15)
    g = R.cross_entropy_grad(z, t, axis=1, label_smoothing=0.1)
    assert g.shape == z.shape
