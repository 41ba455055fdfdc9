"""Big-endian inputs (SEMANTICS.md, "Storage"): results come back in the logits' dtype in
native byte order, so ``>f4`` logits give float32 (they used to be computed and returned as
float64) and ``>f2`` follows the float16 rule (a float32 loss, a float16 gradient). Targets,
weights and out= buffers may be big-endian too. Values are checked against the oracle."""
import sys

import numpy as np
import pytest
from numpy.testing import assert_array_equal
from scipy import special

import lsref
from lsref import reference as R
from support import assert_close_to_oracle

pytestmark = pytest.mark.skipif(sys.byteorder != "little",
                                reason="the non-native byte order here is big-endian")

# (stored dtype, the gradient's dtype, the loss's dtype)
CASES = [(">f8", np.float64, np.float64), (">f4", np.float32, np.float32),
         (">f2", np.float16, np.float32)]


def problem(stored, N=7, K=5, seed=0):
    rng = np.random.default_rng(seed)
    z = (rng.standard_normal((N, K)) * 2).astype(stored)
    t = rng.integers(0, K, N)
    return z, t, rng


def native(z):
    return z.astype(z.dtype.newbyteorder("="))


@pytest.mark.parametrize("stored,gdt,ldt", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_cross_entropy_entry_points(stored, gdt, ldt, reduction):
    z, t, rng = problem(stored)
    z0 = z.copy()
    kw = dict(label_smoothing=0.1, reduction=reduction)
    ref_loss, ref_grad = R.value_and_grad(native(z), t, **kw)
    loss, grad = lsref.value_and_grad(z, t, **kw)
    assert np.asarray(loss).dtype == ldt and grad.dtype == gdt
    assert_close_to_oracle(loss, grad, ref_loss, ref_grad, gdt, term_scale=1.0)
    loss = lsref.cross_entropy(z, t, **kw)
    assert np.asarray(loss).dtype == ldt
    assert_close_to_oracle(loss, None, ref_loss, None, gdt)
    grad = lsref.cross_entropy_grad(z, t, **kw)
    assert grad.dtype == gdt
    assert_close_to_oracle(loss, grad, ref_loss, ref_grad, gdt, term_scale=1.0)
    crit = lsref.LabelSmoothingLoss(0.1, reduction=reduction)
    loss = crit(z, t)
    assert np.asarray(loss).dtype == ldt and crit.backward().dtype == gdt
    assert_close_to_oracle(loss, crit.backward(), ref_loss, ref_grad, gdt, term_scale=1.0)
    assert_array_equal(z, z0)                          # the input is left as it was


@pytest.mark.parametrize("stored,gdt,ldt", CASES, ids=[c[0] for c in CASES])
def test_big_endian_targets_and_weights(stored, gdt, ldt):
    z, t, rng = problem(stored, seed=1)
    K = z.shape[1]
    cw, sw = rng.random(K) + 0.5, rng.random(z.shape[0]) + 0.5
    P = rng.random(z.shape)
    kw = dict(label_smoothing=0.1, class_weight=cw.astype(">f8"),
              sample_weight=sw.astype(">f4"))
    ref = R.value_and_grad(native(z), t, label_smoothing=0.1, class_weight=cw,
                           sample_weight=sw.astype(np.float32))
    got = lsref.value_and_grad(z, t.astype(">i8"), **kw)
    assert got[1].dtype == gdt
    assert_close_to_oracle(*got, *ref, gdt, term_scale=1.0)
    got = lsref.value_and_grad(z, t.astype(">i4"), ignore_index=int(t[0]), **kw)
    ref = R.value_and_grad(native(z), t, label_smoothing=0.1, class_weight=cw,
                           sample_weight=sw.astype(np.float32), ignore_index=int(t[0]))
    assert_close_to_oracle(*got, *ref, gdt, term_scale=1.0)
    ref = R.value_and_grad(native(z), P.astype(np.float32), label_smoothing=0.1)
    got = lsref.value_and_grad(z, P.astype(">f4"), label_smoothing=0.1)
    assert got[1].dtype == gdt
    assert_close_to_oracle(*got, *ref, gdt, term_scale=1.0)


@pytest.mark.parametrize("stored,gdt,ldt", CASES, ids=[c[0] for c in CASES])
def test_out_buffers_in_either_byte_order(stored, gdt, ldt):
    """out= may be native (the gradient's dtype) or big-endian (the caller's storage,
    written in place); out=logits is an in-place gradient in the logits' own byte order."""
    z, t, _ = problem(stored, seed=2)
    ref_loss, ref_grad = R.value_and_grad(native(z), t, label_smoothing=0.1)
    for out in (np.empty(z.shape, gdt), np.empty(z.shape, np.dtype(gdt).newbyteorder(">")),
                np.empty(z.shape[::-1], stored).T):
        loss, grad = lsref.value_and_grad(z, t, label_smoothing=0.1, out=out)
        assert grad is out
        assert_close_to_oracle(loss, grad, ref_loss, ref_grad, gdt, term_scale=1.0)
    zz = z.copy()
    loss, grad = lsref.value_and_grad(zz, t, label_smoothing=0.1, out=zz)
    assert grad is zz and grad.dtype == np.dtype(stored)
    assert_close_to_oracle(loss, grad, ref_loss, ref_grad, gdt, term_scale=1.0)
    with pytest.raises(ValueError, match=r"out must have dtype"):
        lsref.value_and_grad(z, t, out=np.empty(z.shape, ">f8" if stored != ">f8" else ">f4"))


@pytest.mark.parametrize("stored,gdt,ldt", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("kind", ["labels", "indices"])
def test_binary_entry_points(stored, gdt, ldt, kind):
    z, t, rng = problem(stored, seed=3)
    y = rng.random(z.shape).astype(">f4") if kind == "labels" else t.astype(">i8")
    ref_loss, ref_grad = R.binary_value_and_grad(native(z), native(y), label_smoothing=0.1)
    loss, grad = lsref.binary_value_and_grad(z, y, label_smoothing=0.1)
    assert np.asarray(loss).dtype == ldt and grad.dtype == gdt
    assert_close_to_oracle(loss, grad, ref_loss, ref_grad, gdt, term_scale=1.0)
    assert np.asarray(lsref.binary_cross_entropy(z, y)).dtype == ldt
    assert lsref.binary_cross_entropy_grad(z, y).dtype == gdt


@pytest.mark.parametrize("stored", [">f8", ">f4", ">f2"])
@pytest.mark.parametrize("axis", [0, -1])
def test_logsumexp_and_softmax(stored, axis):
    """The result has the logits' dtype in native byte order, as scipy.special gives."""
    x = (np.random.default_rng(4).standard_normal((6, 9)) * 3).astype(stored)
    x64 = x.astype(np.float64)
    want = np.dtype(stored).newbyteorder("=")
    rtol = {8: 1e-14, 4: 1e-6, 2: 1e-3}[want.itemsize]
    for ours, theirs in [(lsref.logsumexp, special.logsumexp),
                         (lsref.softmax, special.softmax),
                         (lsref.log_softmax, special.log_softmax)]:
        got = ours(x, axis=axis)
        assert got.dtype == want and got.dtype.isnative
        np.testing.assert_allclose(got.astype(np.float64), theirs(x64, axis=axis),
                                   rtol=rtol, atol=rtol)
