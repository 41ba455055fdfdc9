"""LabelSmoothingLoss: the oracle's loss, finite-difference gradients (alone and through a
NumPy MLP), one fused pass per call, scipy.optimize training that reaches the analytic
optimum, and clear errors."""
import numpy as np
import pytest

import lsref
from lsref import criterion, reference as R
from lsref._tolerances import kernel_accuracy
from lsref.app.demo import MLP, logit_gap
from lsref.calibration import optimal_logit_gap
from support import CHECK_GRAD_RTOL, FD_GRAD_RTOL, FIT_GAP_ATOL, fd_gradient

F64 = kernel_accuracy(np.float64)

CASES = [dict(), dict(reduction="sum"), dict(reduction="none"), dict(smoothing="others"),
         dict(class_weight=[1.0, 2.0, 0.5, 1.0, 3.0]), dict(z_loss=1e-3), dict(kl=True),
         dict(ignore_index=2)]


@pytest.mark.parametrize("kw", CASES, ids=lambda kw: ",".join(f"{k}={v}" for k, v in
                                                               kw.items()) or "default")
def test_loss_is_the_oracles_and_gradient_matches_finite_differences(kw):
    rng = np.random.default_rng(3)
    z = rng.standard_normal((6, 5)) * 2
    t = np.array([0, 2, 4, 1, 2, 3])
    crit = lsref.LabelSmoothingLoss(label_smoothing=0.2, **kw)
    loss = crit(z, t)
    ref = R.cross_entropy(z, t, label_smoothing=0.2, **kw)
    np.testing.assert_allclose(loss, ref, rtol=F64.loss_rtol)
    g = crit.backward()

    def total(zz):
        return float(np.sum(R.cross_entropy(zz, t, label_smoothing=0.2, **kw)))
    fd = fd_gradient(total, z)
    np.testing.assert_allclose(g, fd, rtol=0, atol=FD_GRAD_RTOL * np.max(np.abs(fd)))


def test_sample_weight_is_per_call():
    rng = np.random.default_rng(4)
    z, t, w = rng.standard_normal((5, 4)), np.array([0, 1, 2, 3, 0]), rng.random(5)
    crit = lsref.LabelSmoothingLoss(0.1)
    loss, g = crit.value_and_grad(z, t, sample_weight=w)
    ref_loss, ref_g = R.value_and_grad(z, t, label_smoothing=0.1, sample_weight=w)
    np.testing.assert_allclose(loss, ref_loss, rtol=F64.loss_rtol)
    np.testing.assert_allclose(g, ref_g, rtol=0, atol=F64.grad_rtol * np.max(np.abs(ref_g)))
    assert crit.backward() is g


def test_backward_returns_the_gradient_of_the_same_pass(monkeypatch):
    calls = []
    real = criterion.value_and_grad

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)
    monkeypatch.setattr(criterion, "value_and_grad", counting)
    rng = np.random.default_rng(5)
    z, t = rng.standard_normal((4, 3)), np.array([0, 1, 2, 0])
    crit = lsref.LabelSmoothingLoss(0.1)
    crit(z, t)
    g1 = crit.backward()
    g2 = crit.backward()
    assert len(calls) == 1 and g1 is g2                  # one fused pass, nothing recomputed
    ref = R.cross_entropy_grad(z, t, label_smoothing=0.1)
    np.testing.assert_allclose(g1, ref, rtol=0, atol=F64.grad_rtol * np.max(np.abs(ref)))
    # a new call gives a new array; the earlier gradient is left as it was
    before = g1.copy()
    crit(z + 1.0, t[::-1].copy())
    assert crit.backward() is not g1
    np.testing.assert_array_equal(g1, before)


def test_inputs_are_not_modified():
    rng = np.random.default_rng(6)
    z, t = rng.standard_normal((4, 3)).astype(np.float32), np.array([0, 1, 2, 0])
    z0, t0 = z.copy(), t.copy()
    crit = lsref.LabelSmoothingLoss(0.1)
    crit(z, t)
    np.testing.assert_array_equal(z, z0)
    np.testing.assert_array_equal(t, t0)
    assert crit.backward().dtype == np.float32


def test_mlp_gradient_through_the_criterion():
    """The chain rule of a NumPy MLP around the criterion: against 4th-order central
    differences, and against scipy.optimize.check_grad."""
    from scipy.optimize import check_grad
    rng = np.random.default_rng(8)
    X, y = rng.standard_normal((12, 3)), rng.integers(0, 3, 12)
    model = MLP(3, 4, 3)
    theta = model.init(2)
    crit = lsref.LabelSmoothingLoss(0.1)

    def f(th):
        return model.objective(th, X, y, crit, 1e-2)[0]

    def g(th):
        return model.objective(th, X, y, crit, 1e-2)[1]
    fd = fd_gradient(f, theta)
    np.testing.assert_allclose(g(theta), fd, rtol=0, atol=FD_GRAD_RTOL * np.max(np.abs(fd)))
    assert check_grad(f, g, theta, seed=0) < CHECK_GRAD_RTOL * np.linalg.norm(g(theta))


def _fit_clusters(sigma, smoothing, seed=0):
    """Softmax regression with scipy.optimize on K=10 tight, well-separated clusters."""
    from scipy.optimize import minimize
    rng = np.random.default_rng(seed)
    K, n = 10, 500
    y = np.arange(n) % K
    X = np.hstack([np.eye(K)[y] * 4 + sigma * rng.standard_normal((n, K)), np.ones((n, 1))])
    crit = lsref.LabelSmoothingLoss(0.1, smoothing=smoothing)

    def fun(w):
        loss, dz = crit.value_and_grad(X @ w.reshape(K + 1, K), y)
        return float(loss), (X.T @ dz).ravel()
    res = minimize(fun, np.zeros((K + 1) * K), jac=True, method="L-BFGS-B",
                   options=dict(maxiter=2000, gtol=1e-10, ftol=0.0))
    return res, logit_gap(X @ res.x.reshape(K + 1, K), y)


@pytest.mark.parametrize("smoothing", ["uniform", "others"])
def test_scipy_fit_reaches_the_analytic_logit_gap(smoothing):
    res, gap = _fit_clusters(0.03, smoothing)
    assert res.success, res.message
    assert np.max(np.abs(res.jac)) < 1e-7
    target = optimal_logit_gap(10, 0.1, smoothing=smoothing)  # 4.5109 / 4.3944
    assert abs(gap - target) < FIT_GAP_ATOL, (gap, target)
    # and it approaches the optimum as the clusters tighten (the bias goes like sigma^2)
    _, gap_wide = _fit_clusters(0.1, smoothing)
    assert abs(gap_wide - target) > abs(gap - target)


def test_without_smoothing_the_gap_keeps_growing():
    """eps = 0 has no finite optimum on separable data: more iterations, a larger gap."""
    from scipy.optimize import minimize
    rng = np.random.default_rng(1)
    K, n = 10, 200
    y = np.arange(n) % K
    X = np.hstack([np.eye(K)[y] * 4 + 0.03 * rng.standard_normal((n, K)), np.ones((n, 1))])
    crit = lsref.LabelSmoothingLoss(0.0)

    def fun(w):
        loss, dz = crit.value_and_grad(X @ w.reshape(K + 1, K), y)
        return float(loss), (X.T @ dz).ravel()
    gaps = []
    for it in (20, 200):
        res = minimize(fun, np.zeros((K + 1) * K), jac=True, method="L-BFGS-B",
                       options=dict(maxiter=it, gtol=0.0, ftol=0.0))
        gaps.append(logit_gap(X @ res.x.reshape(K + 1, K), y))
    assert gaps[1] > gaps[0] > optimal_logit_gap(10, 0.1)


@pytest.mark.parametrize("kw,exc,match", [
    (dict(label_smoothing=1.5), ValueError, "label_smoothing"),
    (dict(label_smoothing="0.1"), TypeError, "label_smoothing"),
    (dict(reduction="avg"), ValueError, "reduction"),
    (dict(smoothing="fairseq"), ValueError, "smoothing"),
    (dict(z_loss=-1.0), ValueError, "z_loss"),
    (dict(sample_weight=[1.0]), TypeError, "sample_weight"),
    (dict(out=np.zeros(3)), TypeError, "out="),
    (dict(label_smooting=0.1), TypeError, "label_smooting"),
])
def test_bad_construction_is_a_clear_error(kw, exc, match):
    with pytest.raises(exc, match=match):
        lsref.LabelSmoothingLoss(**kw)


def test_backward_before_a_call_is_an_error():
    with pytest.raises(RuntimeError, match="forward call"):
        lsref.LabelSmoothingLoss(0.1).backward()


def test_bad_call_arguments_name_the_argument():
    crit = lsref.LabelSmoothingLoss(0.1)
    crit(np.zeros((2, 3)), [0, 2])
    with pytest.raises(ValueError, match="targets"):
        crit(np.zeros((2, 3)), [0, 3])
    with pytest.raises(RuntimeError):
        crit.backward()                 # a failed call leaves no stale gradient behind


def test_repr_shows_the_settings():
    assert repr(lsref.LabelSmoothingLoss(0.2, reduction="sum")) == \
        "LabelSmoothingLoss(label_smoothing=0.2, reduction='sum')"
