"""lsref against PyTorch's own F.cross_entropy and autograd (float64), where torch is
installed. Equality is to float64 rounding: both compute the same mathematics."""
import numpy as np
import pytest

import lsref
from lsref import reference as R

torch = pytest.importorskip("torch")
F = torch.nn.functional

# float64 on both sides; PyTorch sums in a different order (cascade sums), so the agreement
# is to a few ulps of the result, not bit-for-bit.
RTOL = 1e-12


def torch_value_and_grad(z, t, **kw):
    zt = torch.tensor(z, requires_grad=True)
    tt = torch.tensor(t)
    if "weight" in kw and kw["weight"] is not None:
        kw["weight"] = torch.tensor(kw["weight"])
    loss = F.cross_entropy(zt, tt, **kw)
    loss.sum().backward()
    return loss.detach().numpy(), zt.grad.numpy()


CASES = [
    dict(label_smoothing=0.0),
    dict(label_smoothing=0.1),
    dict(label_smoothing=1.0),
    dict(label_smoothing=0.1, reduction="sum"),
    dict(label_smoothing=0.1, reduction="none"),
    dict(label_smoothing=0.2, ignore_index=3),
    dict(label_smoothing=0.1, weight=True),
    dict(label_smoothing=0.1, weight=True, reduction="none"),
]


@pytest.mark.parametrize("kw", CASES, ids=str)
@pytest.mark.parametrize("shape", [(13, 11), (3, 11, 4, 5)], ids=["NC", "NCHW"])
def test_class_index_targets_match_torch(kw, shape):
    rng = np.random.default_rng(21)
    z = rng.standard_normal(shape) * 3
    batch = (shape[0],) + shape[2:]
    t = rng.integers(0, shape[1], batch)
    t.reshape(-1)[::5] = -100
    kw = dict(kw)
    if kw.pop("weight", False):
        kw["weight"] = rng.random(shape[1]) + 0.5
    ignore = kw.get("ignore_index", -100)
    if ignore >= 0:
        t.reshape(-1)[1::7] = ignore
        t[t == -100] = 0
    ours = dict(label_smoothing=kw.get("label_smoothing", 0.0),
                reduction=kw.get("reduction", "mean"), ignore_index=ignore,
                class_weight=kw.get("weight"), axis=1)
    tl, tg = torch_value_and_grad(z, t, **kw)
    for impl in (lsref, R):
        loss, grad = impl.value_and_grad(z, t, **ours)
        np.testing.assert_allclose(loss, tl, rtol=RTOL, atol=1e-15)
        np.testing.assert_allclose(grad, tg, rtol=RTOL, atol=1e-15)


@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("weight", [False, True])
def test_probability_targets_match_torch(eps, weight):
    """PyTorch divides the mean of probability targets by the rows, whatever the weights."""
    rng = np.random.default_rng(22)
    z = rng.standard_normal((9, 6)) * 3
    P = rng.random((9, 6))
    P /= P.sum(axis=1, keepdims=True)
    w = rng.random(6) + 0.5 if weight else None
    tl, tg = torch_value_and_grad(z, P, label_smoothing=eps, weight=w)
    for impl in (lsref, R):
        loss, grad = impl.value_and_grad(z, P, label_smoothing=eps, class_weight=w)
        np.testing.assert_allclose(loss, tl, rtol=RTOL)
        np.testing.assert_allclose(grad, tg, rtol=RTOL, atol=1e-15)


def test_masked_class_minus_inf():
    """A -inf logit (masked class): eps=0 finite; eps>0 loss +inf with a finite gradient,
    -eps/K at the masked class: lsref and PyTorch agree."""
    z = np.array([[2.0, -np.inf, 0.5, 1.0], [0.1, 0.2, -np.inf, 0.3]])
    t = np.array([0, 3])
    for eps in (0.0, 0.1):
        tl, tg = torch_value_and_grad(z, t, label_smoothing=eps, reduction="none")
        loss, grad = lsref.value_and_grad(z, t, label_smoothing=eps, reduction="none")
        np.testing.assert_array_equal(np.isinf(loss), np.isinf(tl))
        np.testing.assert_allclose(loss, tl, rtol=RTOL)
        np.testing.assert_allclose(grad, tg, rtol=RTOL, atol=1e-16)
        assert np.isfinite(grad).all()
    assert grad[0, 1] == pytest.approx(-0.1 / 4, rel=1e-15)
