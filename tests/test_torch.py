"""lsref against PyTorch's own F.cross_entropy and autograd (float64), where torch is
installed. Equality is to float64 rounding: both compute the same mathematics."""
import numpy as np
import pytest

import lsref
from lsref import reference as R
from support import require

torch = require("torch")
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


def test_zero_weight_masked_class_torch_is_nan_lsref_is_finite():
    """SEMANTICS.md: PyTorch computes 0 * (-inf) = NaN for a masked class with weight 0 when
    eps > 0; the mathematical value is finite. lsref gives it, and the difference is real."""
    z = np.array([[1.0, -np.inf, 0.5, 2.0], [0.3, -np.inf, 0.1, -1.0]])
    t = np.array([0, 3])
    w = np.array([1.0, 0.0, 2.0, 1.0])
    tl, tg = torch_value_and_grad(z, t, label_smoothing=0.1, weight=w)
    loss, grad = lsref.value_and_grad(z, t, label_smoothing=0.1, class_weight=w)
    assert np.isnan(tl)                                  # PyTorch's defect
    assert np.isfinite(loss)
    # lsref's value is PyTorch's on the same rows with the masked class dropped (weight 0
    # means it contributes nothing), renormalised over the remaining classes' eps/K mass
    keep = [0, 2, 3]
    zk = z[:, keep]
    ref = R.cross_entropy(z, t, label_smoothing=0.1, class_weight=w)
    assert loss == pytest.approx(ref, rel=RTOL)
    manual = 0.0
    for i in range(2):
        logp = zk[i] - np.log(np.exp(zk[i]).sum())
        q = np.full(4, 0.1 / 4)
        q[t[i]] += 0.9
        manual += -(w[keep] * q[keep] * logp).sum()
    assert loss == pytest.approx(manual / (w[0] + w[3]), rel=RTOL)
    assert np.isfinite(grad).all()


def test_float16_32000_classes_torch_overflows_lsref_does_not():
    """PyTorch sums -log p over 32000 classes in float16 and returns inf; lsref computes in
    float32 and is within 1e-3 of the float64 value."""
    rng = np.random.default_rng(23)
    z = (rng.standard_normal((16, 32000)) * 3).astype(np.float16)
    t = rng.integers(0, 32000, 16)
    tl = F.cross_entropy(torch.tensor(z), torch.tensor(t), label_smoothing=0.1)
    ref = R.cross_entropy(z, t, label_smoothing=0.1)
    loss = lsref.cross_entropy(z, t, label_smoothing=0.1)
    assert torch.isinf(tl).item()                        # the known fp16 overflow
    assert np.isfinite(loss) and abs(float(loss) - ref) <= 1e-3 * ref


@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_binary_matches_torch_bce_with_logits(eps, reduction):
    """Keras-style smoothing applied to the labels, then PyTorch's BCEWithLogits with a
    per-class weight (broadcast), against lsref.binary_value_and_grad."""
    rng = np.random.default_rng(24)
    x = rng.standard_normal((9, 5)) * 4
    y = (rng.random((9, 5)) > 0.5).astype(np.float64)
    w = rng.random(5) + 0.5
    xt = torch.tensor(x, requires_grad=True)
    ys = torch.tensor(y * (1 - eps) + eps / 2)
    tl = F.binary_cross_entropy_with_logits(xt, ys, weight=torch.tensor(w),
                                            reduction=reduction)
    tl.sum().backward()
    loss, grad = lsref.binary_value_and_grad(x, y, label_smoothing=eps, class_weight=w,
                                             reduction=reduction)
    np.testing.assert_allclose(loss, tl.detach().numpy(), rtol=RTOL, atol=1e-15)
    np.testing.assert_allclose(grad, xt.grad.numpy(), rtol=RTOL, atol=1e-15)
