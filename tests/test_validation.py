"""Every bad input of SEMANTICS.md: the exception type, and a message naming the argument
and the value. The oracle and the kernel reject the same inputs the same way."""
import numpy as np
import pytest

import lsref
from lsref import reference as R

Z = np.zeros((4, 5))
T = np.array([0, 1, 2, 3])

BAD = [
    # (logits, targets, keywords, exception, message pattern)
    (Z, np.array([0, 1, 7, 3]), {}, ValueError, r"targets\[2\] = 7 is outside \[0, 5\)"),
    (Z, np.array([0, -1, 2, 3]), {}, ValueError, r"targets\[1\] = -1 .*ignore_index \(-100\)"),
    (Z, np.array([0, -100, 2, 3]), dict(ignore_index=None), ValueError,
     r"targets\[1\] = -100 is outside"),
    (np.zeros((2, 3, 5)), np.array([[0, 1, 2], [3, 9, 0]]), dict(axis=2), ValueError,
     r"targets\[1, 1\] = 9"),
    (Z, T, dict(label_smoothing=1.5), ValueError, r"label_smoothing .* got 1.5"),
    (Z, T, dict(label_smoothing=-0.1), ValueError, r"label_smoothing .* got -0.1"),
    (Z, T, dict(label_smoothing=float("nan")), ValueError, r"label_smoothing .* got nan"),
    (Z, T, dict(label_smoothing="0.1"), TypeError, r"label_smoothing must be a real number"),
    (np.zeros((4, 0)), T, {}, ValueError, r"0 classes"),
    (np.zeros((4, 1)), np.zeros(4, int), dict(label_smoothing=0.1, smoothing="others"),
     ValueError, r"smoothing='others' .* K >= 2, got K = 1"),
    (Z, np.array([0, 1, 2]), {}, ValueError, r"targets must have shape \(4,\) .* got \(3,\)"),
    (Z, np.zeros((4, 4)), {}, ValueError, r"probability targets must have the logits' shape"),
    (Z, T.astype(float), {}, TypeError, r"class indices but have floating dtype float64"),
    (Z, T.astype(bool), {}, TypeError, r"targets must be integer .* got dtype bool"),
    (np.array([["a", "b"]]), np.array([0]), {}, TypeError, r"logits must be .* dtype <U1"),
    (Z.astype(complex), T, {}, TypeError, r"logits must be .* complex128"),
    (np.float64(1.0), np.array(0), {}, ValueError, r"logits must have at least one dimension"),
    (Z, T, dict(class_weight=np.ones(4)), ValueError, r"class_weight must have shape \(5,\)"),
    (Z, T, dict(class_weight=[1, 1, np.inf, 1, 1]), ValueError,
     r"class_weight must be finite; class_weight\[2\] = inf"),
    (Z, T, dict(sample_weight=np.ones(5)), ValueError, r"sample_weight must have shape \(4,\)"),
    (Z, T, dict(sample_weight=[1, np.nan, 1, 1]), ValueError, r"sample_weight\[1\] = nan"),
    (Z, T, dict(reduction="avg"), ValueError, r"reduction must be one of .* got 'avg'"),
    (Z, T, dict(smoothing="uniformly"), ValueError, r"smoothing must be one of"),
    (Z, T, dict(axis=2), ValueError, r"axis=2 is out of bounds"),
    (Z, T, dict(z_loss=-1.0), ValueError, r"z_loss must be finite and in >= 0.0, got -1.0"),
    (Z, np.full((4, 5), 0.2), dict(ignore_index=0), ValueError,
     r"ignore_index=0 cannot be used with probability targets"),
    (Z, np.full((4, 5), 0.2), dict(label_smoothing=0.1, smoothing="others"), ValueError,
     r"smoothing='others' .* class-index targets only"),
    (Z, np.full((4, 5), -0.2), {}, ValueError, r"targets\[0, 0\] = -0.2"),
    (Z, T, dict(ignore_index=1.5), TypeError, r"ignore_index must be an integer"),
    (Z, T, dict(kl=1), TypeError, r"kl must be True or False, got 1"),
    (Z, T, dict(z_loss=float("inf")), ValueError, r"z_loss must be finite"),
    (Z, np.full((4, 5), np.nan), {}, ValueError, r"probability targets must be finite .* nan"),
]


@pytest.mark.parametrize("impl", ["kernel", "oracle"])
@pytest.mark.parametrize("logits,targets,kw,exc,match", BAD)
def test_bad_input_raises_naming_argument(impl, logits, targets, kw, exc, match):
    mod = lsref if impl == "kernel" else R
    z0, t0 = np.array(logits, copy=True), np.array(targets, copy=True)
    for fn in (mod.cross_entropy, mod.value_and_grad, mod.cross_entropy_grad):
        with pytest.raises(exc, match=match):
            fn(logits, targets, **kw)
    np.testing.assert_array_equal(logits, z0)       # nothing modified on the way out
    np.testing.assert_array_equal(targets, t0)


@pytest.mark.parametrize("n_threads,exc", [(0, ValueError), (-2, ValueError),
                                           (1.5, TypeError), (True, TypeError)])
def test_bad_n_threads(n_threads, exc):
    with pytest.raises(exc, match="n_threads"):
        lsref.cross_entropy(Z, T, n_threads=n_threads)


def test_bad_out_buffers():
    z = np.random.default_rng(0).standard_normal((4, 5))
    with pytest.raises(ValueError, match=r"out must have the logits' shape \(4, 5\)"):
        lsref.value_and_grad(z, T, out=np.empty((5, 4)))
    with pytest.raises(ValueError, match="out must have dtype float64"):
        lsref.value_and_grad(z, T, out=np.empty((4, 5), np.float32))
    with pytest.raises(TypeError, match="out must be a numpy.ndarray"):
        lsref.value_and_grad(z, T, out=[[0.0] * 5] * 4)
    ro = np.empty((4, 5))
    ro.setflags(write=False)
    with pytest.raises(ValueError, match="out is read-only"):
        lsref.value_and_grad(z, T, out=ro)
    big = np.zeros((5, 5))
    big[:4] = z
    with pytest.raises(ValueError, match="out overlaps logits without being the logits"):
        lsref.value_and_grad(big[:4], T, out=big[1:])
    P = np.full((4, 5), 0.2)
    with pytest.raises(ValueError, match="out overlaps targets"):
        lsref.value_and_grad(z, P, out=P)
    sw = np.ones((4, 5))
    with pytest.raises(ValueError, match="out overlaps sample_weight"):
        lsref.value_and_grad(z, T, sample_weight=sw[:, 0], out=sw)
    np.testing.assert_array_equal(P, 0.2)


def test_empty_batch_and_all_ignored():
    """D = 0: the mean is NaN (like PyTorch), the sum 0, the gradient 0 (SEMANTICS.md)."""
    for z, t in [(np.zeros((0, 5)), np.zeros(0, int)), (Z, np.full(4, -100))]:
        for mod in (lsref, R):
            loss, grad = mod.value_and_grad(z, t, label_smoothing=0.1)
            assert np.isnan(loss)
            np.testing.assert_array_equal(grad, 0.0)
            assert mod.cross_entropy(z, t, reduction="sum") == 0.0
            assert mod.cross_entropy(z, t, reduction="none").shape == t.shape


def test_out_dtype_policy_for_16bit_logits():
    """16-bit logits: the gradient may go to a float16/bfloat16 buffer (the logits' dtype)
    or a float32 one; nothing else."""
    z = np.zeros((4, 5), np.float16)
    lsref.value_and_grad(z, T, out=np.empty((4, 5), np.float32))
    lsref.value_and_grad(z, T, out=np.empty((4, 5), np.float16))
    with pytest.raises(ValueError, match="out must have dtype float16 or float32"):
        lsref.value_and_grad(z, T, out=np.empty((4, 5), np.float64))
    with pytest.raises(ValueError, match="out must have dtype float32 .* got float16"):
        lsref.value_and_grad(z.astype(np.float32), T, out=np.empty((4, 5), np.float16))


def test_large_probability_targets_are_checked_in_blocks():
    """A bad value far into a big probability array is found and located exactly."""
    z = np.zeros((3000, 700), np.float32)
    P = np.full(z.shape, 1 / 700, np.float32)
    P[2999, 698] = -1.0
    with pytest.raises(ValueError, match=r"targets\[2999, 698\] = -1.0"):
        lsref.cross_entropy(z, P)
