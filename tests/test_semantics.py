"""Every framework term in oracle and kernel: class and sample weights, z-loss, the KL form,
16-bit logits, and the special values of SEMANTICS.md."""
import numpy as np
import pytest
from numpy.testing import assert_array_equal

import lsref
from lsref import reference as R
from support import HALF_DTYPES, assert_close_to_oracle, finfo, stable_seed

ALL_DTYPES = [np.float32, np.float64] + HALF_DTYPES
DTYPE_IDS = [np.dtype(d).name for d in ALL_DTYPES]

# Each feature set is combined with every dtype, target kind, reduction and thread count.
FEATURES = {
    "class_weight": dict(class_weight="w"),
    "sample_weight": dict(sample_weight="s"),
    "both_weights": dict(class_weight="w", sample_weight="s", label_smoothing=0.1),
    "z_loss": dict(z_loss=1e-2, label_smoothing=0.1),
    "kl": dict(kl=True, label_smoothing=0.1),
    "kl_others_zloss": dict(kl=True, z_loss=1e-3, label_smoothing=0.2, smoothing="others"),
    "everything": dict(class_weight="w", sample_weight="s", z_loss=1e-3, kl=True,
                       label_smoothing=0.3),
}


def build(features, shape, axis, dtype, kind, rng):
    K = shape[axis]
    batch = tuple(s for i, s in enumerate(shape) if i != axis % len(shape))
    z = (rng.standard_normal(shape) * 3).astype(dtype)
    if kind == "probs":
        t = rng.random(shape)
        t /= t.sum(axis=axis, keepdims=True)
    else:
        t = rng.integers(0, K, batch)
        t.reshape(-1)[::5] = -100
    kw = {}
    for key, value in features.items():
        if value == "w":
            w = rng.random(K) + 0.25
            w[1] = 0.0                          # a class that does not count
            kw[key] = w
        elif value == "s":
            kw[key] = rng.random(batch) * 2
        else:
            kw[key] = value
    return z, t, kw


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("feature,kind", [
    (f, k) for f in FEATURES for k in ("index", "probs")
    if not (k == "probs" and FEATURES[f].get("smoothing") == "others")])  # indices only
@pytest.mark.parametrize("layout", ["rows", "NCHW"])
@pytest.mark.parametrize("n_threads", [1, 2])
def test_kernel_matches_oracle_with_every_term(dtype, feature, kind, layout, n_threads):
    features = FEATURES[feature]
    shape, axis = ((29, 41), -1) if layout == "rows" else ((2, 41, 3, 5), 1)
    rng = np.random.default_rng(stable_seed(feature, kind, layout))
    z, t, kw = build(features, shape, axis, dtype, kind, rng)
    for reduction in ("mean", "sum", "none"):
        ref = R.value_and_grad(z, t, axis=axis, reduction=reduction, **kw)
        got = lsref.value_and_grad(z, t, axis=axis, reduction=reduction, n_threads=n_threads,
                                   **kw)
        assert got[1].dtype == z.dtype
        assert_close_to_oracle(*got, *ref, dtype)
        assert_array_equal(lsref.cross_entropy(z, t, axis=axis, reduction=reduction,
                                               n_threads=n_threads, **kw), got[0])


@pytest.mark.parametrize("dtype", HALF_DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("out_kind", ["float32", "same", "logits"])
def test_half_precision_out(dtype, out_kind):
    """16-bit logits: the gradient in the input dtype, or in float32 when out= says so (then
    at float32 accuracy), or in place."""
    rng = np.random.default_rng(31)
    z = (rng.standard_normal((33, 300)) * 3).astype(dtype)
    t = rng.integers(0, 300, 33)
    ref = R.value_and_grad(z, t, label_smoothing=0.1)
    zz = z.copy()
    out = {"float32": np.empty(z.shape, np.float32), "same": np.empty_like(z),
           "logits": zz}[out_kind]
    loss, grad = lsref.value_and_grad(zz, t, label_smoothing=0.1, out=out)
    assert grad is out
    assert np.asarray(loss).dtype == np.float32       # the loss of 16-bit logits
    assert_close_to_oracle(loss, None, ref[0], None, np.float32)
    assert_close_to_oracle(ref[0], grad, ref[0], ref[1],
                           np.float32 if out_kind == "float32" else dtype)


def test_float16_32000_classes_is_finite_and_accurate():
    """Acceptance: K=32000 float16, eps=0.1: a finite loss within 1e-3 of the float64 oracle
    on the upcast input (PyTorch's float16 path overflows to inf here)."""
    rng = np.random.default_rng(32)
    z = (rng.standard_normal((64, 32000)) * 3).astype(np.float16)
    t = rng.integers(0, 32000, 64)
    loss = lsref.cross_entropy(z, t, label_smoothing=0.1)
    ref = R.cross_entropy(z.astype(np.float64), t, label_smoothing=0.1)
    assert np.isfinite(loss)
    assert abs(float(loss) - ref) <= 1e-3 * ref
    per_row = lsref.cross_entropy(z, t, label_smoothing=0.1, reduction="none")
    assert np.all(np.isfinite(per_row))


def correctly_rounded_bits(x, target, bits):
    """The nearest 16-bit value to each double, ties to even, found by comparing exact
    double distances to the three candidates around the library's own conversion (which
    for bfloat16 goes through float32 and can be one step off: a double just above a tie
    becomes the tie, then rounds to even)."""
    with np.errstate(over="ignore"):
        first = x.astype(target).view(bits).astype(np.int64)
    out = first.copy()
    for i in np.flatnonzero(np.isfinite(x)):
        cands = [c for c in (first[i] - 1, first[i], first[i] + 1)
                 if np.iinfo(bits).min <= c <= np.iinfo(bits).max]
        vals = [float(np.array(c, bits).view(target).astype(np.float64)) for c in cands]
        keep = [(c, v) for c, v in zip(cands, vals)
                if np.isfinite(v) and np.sign(v) * np.sign(x[i]) >= 0]
        if not keep:
            continue
        dist = [abs(v - x[i]) for _, v in keep]
        best = min(dist)
        ties = [c for (c, _), d in zip(keep, dist) if d == best]
        choice = ties[0] if len(ties) == 1 else [c for c in ties if c % 2 == 0][0]
        if np.isfinite(float(np.array(first[i], bits).view(target).astype(np.float64))):
            out[i] = choice
    return out.astype(bits)


@pytest.mark.parametrize("codec", ["float16", "bfloat16"])
def test_16bit_encoders_round_correctly(codec):
    """The kernel's double -> 16-bit rounding equals NumPy's / ml_dtypes' correctly rounded
    conversion, over random magnitudes, ties, subnormals, overflow and specials."""
    from lsref import _kernel
    if codec == "bfloat16":
        ml_dtypes = pytest.importorskip("ml_dtypes")
        target, encode, bits = ml_dtypes.bfloat16, _kernel.bf16_from_double, np.int16
    else:
        target, encode, bits = np.float16, _kernel.f16_from_double, np.uint16
    rng = np.random.default_rng(33)
    x = np.concatenate([
        rng.standard_normal(20000) * 10.0 ** rng.integers(-12, 6, 20000),
        finfo(target).smallest_subnormal * np.arange(-40, 40) / 2,    # ties among subnormals
        [0.0, -0.0, np.inf, -np.inf, 65504.0, 65519.9, 65520.0, 1e6, 1e-30, -1e-30],
        # values halfway between adjacent 16-bit numbers, and just off them
        (lambda v: np.concatenate([v, np.nextafter(v, np.inf), np.nextafter(v, -np.inf)]))(
            np.arange(1, 3000, dtype=np.float64) / 512 + 1 / 4096),
    ])
    got = np.empty(x.size, bits)
    encode(np.ascontiguousarray(x), got)
    assert_array_equal(got, correctly_rounded_bits(x, target, bits))
    nan = np.empty(1, bits)
    encode(np.array([np.nan]), nan)
    assert np.isnan(nan.view(target).astype(np.float64))[0]


# --- special values (SEMANTICS.md), by exact equality where the value is inf/NaN/0 ----------

@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=DTYPE_IDS)
def test_special_values_table(dtype):
    inf, nan = np.inf, np.nan
    z = np.array([
        [1.0, -inf, 0.5, 2.0],        # 0: masked non-target class
        [-inf, 1.0, 0.5, 2.0],        # 1: masked target (t = 0)
        [-inf, -inf, -inf, -inf],     # 2: every class masked
        [inf, 1.0, 0.5, 2.0],         # 3: +inf
        [nan, 1.0, 0.5, 2.0],         # 4: NaN
        [0.0, 1.0, 0.5, 2.0],         # 5: an ordinary row
    ]).astype(dtype)
    t = np.array([0, 0, 1, 2, 3, 3])
    for eps in (0.0, 0.1):
        loss, grad = lsref.value_and_grad(z, t, label_smoothing=eps, reduction="none")
        ref_loss, ref_grad = R.value_and_grad(z, t, label_smoothing=eps, reduction="none")
        loss, grad = np.asarray(loss, np.float64), grad.astype(np.float64)
        if eps == 0:
            assert np.isfinite(loss[0]) and grad[0, 1] == 0.0        # p = 0 at the mask
        else:
            assert loss[0] == inf                                    # mass on the impossible
            assert grad[0, 1] == pytest.approx(-eps / 4, rel=float(finfo(dtype).eps))
        assert np.all(np.isfinite(grad[0]))
        assert loss[1] == inf and np.all(np.isfinite(grad[1]))       # z_t = -inf
        assert np.isnan(loss[2]) and np.all(np.isnan(grad[2]))       # all -inf
        assert np.isnan(loss[3]) and np.all(np.isnan(grad[3]))       # +inf: that row only
        assert np.isnan(loss[4]) and np.all(np.isnan(grad[4]))       # NaN: that row only
        assert np.isfinite(loss[5]) and np.all(np.isfinite(grad[5]))
        assert_array_equal(np.isnan(loss), np.isnan(ref_loss))
        assert_array_equal(np.isinf(loss), np.isinf(ref_loss))
        finite = np.isfinite(ref_loss)
        assert_close_to_oracle(loss[finite], grad[finite], ref_loss[finite], ref_grad[finite],
                               np.float64 if dtype == np.float64 else
                               (np.float32 if dtype == np.float32 else dtype))
        # the NaN rows reach the reductions, as they should
        assert np.isnan(lsref.cross_entropy(z, t, label_smoothing=eps))


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=DTYPE_IDS)
def test_zero_weight_masked_class_is_finite(dtype):
    """A masked class (-inf) with weight 0: 0 * inf is 0, so the loss is finite (PyTorch
    gives NaN here)."""
    z = np.array([[1.0, -np.inf, 0.5, 2.0], [0.3, -np.inf, 0.1, -1.0]]).astype(dtype)
    t = np.array([0, 3])
    w = np.array([1.0, 0.0, 2.0, 1.0])
    for mod in (lsref, R):
        loss, grad = mod.value_and_grad(z, t, label_smoothing=0.1, class_weight=w)
        assert np.isfinite(float(loss)) and np.all(np.isfinite(grad.astype(np.float64)))
        assert float(grad[0, 1]) == 0.0
    # probability targets with zero mass on the masked class, eps = 0: finite too
    P = np.array([[0.5, 0.0, 0.25, 0.25], [0.0, 0.0, 0.5, 0.5]]).astype(dtype)
    for mod in (lsref, R):
        assert np.isfinite(float(mod.cross_entropy(z, P)))


@pytest.mark.parametrize("dtype,big", [(np.float32, 1e4), (np.float64, 1e300),
                                       (np.float16, 6e4)])
def test_huge_finite_logits(dtype, big):
    rng = np.random.default_rng(34)
    z = (np.sign(rng.standard_normal((20, 50))) * big).astype(dtype)
    z[:, 0] = big                                           # every row has a max of +big
    t = rng.integers(0, 50, 20)
    for eps in (0.0, 0.1):
        loss, grad = lsref.value_and_grad(z, t, label_smoothing=eps, reduction="none")
        ref = R.value_and_grad(z, t, label_smoothing=eps, reduction="none")
        assert np.all(np.isfinite(np.asarray(loss, np.float64)))
        assert np.all(np.isfinite(grad.astype(np.float64)))
        assert_close_to_oracle(loss, grad, *ref, dtype)


def test_empty_batch_every_ignored_and_nan_isolation_with_weights():
    z = np.zeros((0, 5), np.float32)
    loss, grad = lsref.value_and_grad(z, np.zeros(0, int), class_weight=np.ones(5),
                                      label_smoothing=0.1)
    assert np.isnan(loss) and grad.shape == (0, 5)
    z = np.ones((3, 5))
    loss, grad = lsref.value_and_grad(z, np.full(3, -100), sample_weight=[1.0, 2.0, 3.0])
    assert np.isnan(loss) and np.all(grad == 0.0)
    z[1, 2] = np.nan
    rows, grad = lsref.value_and_grad(z, np.array([0, 1, 2]), class_weight=np.arange(1.0, 6),
                                      reduction="none", label_smoothing=0.1, z_loss=0.1)
    assert np.isnan(rows[1]) and np.all(np.isnan(grad[1]))
    assert np.all(np.isfinite(rows[[0, 2]])) and np.all(np.isfinite(grad[[0, 2]]))


# --- properties of the new terms -----------------------------------------------------------

def test_kl_form_is_zero_at_the_optimum_and_keeps_the_gradient():
    """KL = CE - H(q): 0 when p = q, and the same gradient as the cross-entropy."""
    q = R.smooth_labels([2, 0], 5, 0.1)
    z = np.log(q)                                  # softmax(z) = q exactly
    for mod in (lsref, R):
        assert abs(mod.cross_entropy(z, [2, 0], label_smoothing=0.1, kl=True)) < 1e-15
        np.testing.assert_allclose(
            mod.cross_entropy_grad(z, [2, 0], label_smoothing=0.1, kl=True),
            mod.cross_entropy_grad(z, [2, 0], label_smoothing=0.1), rtol=0, atol=0)


def test_sample_weight_multiplies_rows_and_weights_enter_the_mean_divisor():
    rng = np.random.default_rng(35)
    z = rng.standard_normal((7, 6))
    t = rng.integers(0, 6, 7)
    t[0] = -100
    s = rng.random(7) + 0.1
    w = rng.random(6) + 0.1
    base = lsref.cross_entropy(z, t, label_smoothing=0.1, class_weight=w, reduction="none")
    rows = lsref.cross_entropy(z, t, label_smoothing=0.1, class_weight=w, sample_weight=s,
                               reduction="none")
    np.testing.assert_allclose(rows, base * s, rtol=1e-14)
    kept = t != -100
    D = np.sum(s[kept] * w[t[kept]])
    mean = lsref.cross_entropy(z, t, label_smoothing=0.1, class_weight=w, sample_weight=s)
    assert mean == pytest.approx(rows.sum() / D, rel=1e-14)
