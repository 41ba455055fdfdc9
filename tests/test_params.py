"""The kernel side's coefficients (lsref/_params.py) against the oracle's own derivations.

_params.py turns a checked problem into the numbers the kernel multiplies by; the oracle
derives the same rules separately (reference.py). These tests hold the two derivations
together, so a change to one side that the other does not share fails here."""
import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from lsref import _params, reference as R
from lsref._validation import check_problem_shape


@pytest.mark.parametrize("smoothing", ["uniform", "others"])
@pytest.mark.parametrize("K", [2, 3, 10, 1000])
@pytest.mark.parametrize("eps", [0.0, 0.1, 0.5, 1.0])
def test_index_target_is_the_oracles_smoothed_label(smoothing, K, eps):
    q_t, beta = _params.index_target(eps, K, smoothing)
    t = np.arange(min(K, 5))
    q = R.smooth_labels(t, K, eps, smoothing=smoothing)
    expected = np.full((t.size, K), beta)
    expected[np.arange(t.size), t] = q_t
    assert_allclose(expected, q, rtol=4 * np.finfo(float).eps, atol=0)


def test_index_target_with_one_class_needs_no_division():
    """K = 1 with smoothing="others" is refused by the checks (eps/(K-1)); the coefficients
    themselves must still not divide by zero for eps = 0 (the uniform form's K = 1 is 1)."""
    assert _params.index_target(0.0, 1, "others") == (1.0, 0.0)
    assert _params.index_target(0.0, 1, "uniform") == (1.0, 0.0)
    assert_array_equal(R.smooth_labels([0], 1, 0.0), [[1.0]])


@pytest.mark.parametrize("K", [1, 4, 100])
@pytest.mark.parametrize("eps", [0.0, 0.3, 1.0])
def test_prob_target_is_the_oracles_smoothed_label(K, eps):
    rng = np.random.default_rng(7)
    P = rng.dirichlet(np.ones(K), size=3)
    a, beta = _params.prob_target(eps, K)
    assert_allclose(a * P + beta, R.smooth_labels(P, K, eps), rtol=4e-16, atol=1e-17)


@pytest.mark.parametrize("indices", [False, True])
@pytest.mark.parametrize("eps", [0.0, 0.2, 1.0])
def test_binary_label_is_the_oracles(indices, eps):
    """The oracle's smoothed label, read off its gradient at x = 0: sigmoid(0) - y' = 1/2 - y'
    (sum reduction, no weights)."""
    K = 4
    x = np.zeros((2, K))
    targets = np.array([1, 3]) if indices else np.array([[1.0, 0, 0, 0.5], [0, 1, 0, 0]])
    _, g = R.binary_value_and_grad(x, targets, label_smoothing=eps, reduction="sum")
    y = (np.eye(K)[targets] if indices else targets)
    a, b = _params.binary_label(eps, K, indices)
    assert_allclose(0.5 - g, a * y + b, rtol=0, atol=1e-15)


def test_mean_divisor_is_the_oracles():
    rng = np.random.default_rng(11)
    N, K = 50, 7
    t = rng.integers(0, K, N)
    t[::6] = -100
    cw = rng.random(K) + 0.1
    sw = rng.random(N)
    for class_weight, sample_weight in ((None, None), (cw, None), (None, sw), (cw, sw)):
        p = check_problem_shape((N, K), t, class_weight=class_weight,
                                sample_weight=sample_weight)
        rows, _, _, active = _params.index_rows(p.targets, p.ignore_index)
        D = _params.mean_divisor(p, rows, active)
        ref = R.mean_divisor(t, K, class_weight=class_weight, sample_weight=sample_weight)
        assert_allclose(D, ref, rtol=1e-15)
        # and the oracle's mean loss divides by it
        z = rng.standard_normal((N, K))
        total = R.cross_entropy(z, t, reduction="sum", class_weight=class_weight,
                                sample_weight=sample_weight)
        mean = R.cross_entropy(z, t, class_weight=class_weight, sample_weight=sample_weight)
        assert_allclose(mean, total / D, rtol=1e-14)


def test_a_mean_over_nothing_is_nan_on_both_sides_and_the_gradient_stays_undivided():
    t = np.array([-100, -100])
    z = np.zeros((2, 3))
    rows, _, _, active = _params.index_rows(t, -100)
    D = _params.mean_divisor(check_problem_shape((2, 3), t), rows, active)
    assert D == 0.0 and R.mean_divisor(t, 3) == 0.0
    assert np.isnan(_params.reduce("mean", np.zeros(2), D, scaled=True))
    assert np.isnan(_params.mean(0.0, D))
    assert _params.mean_scale(D) == 1.0
    loss, grad = R.value_and_grad(z, t)
    assert np.isnan(loss) and np.all(grad == 0.0)
