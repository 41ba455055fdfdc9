"""lsref.verify: no false alarm on right results, every injected mistake caught and named."""
import json

import numpy as np
import pytest

import lsref
from lsref import reference as R
from lsref.conventions import CONVENTIONS
from support import require


def problem(rng, dtype=np.float32, n=48, k=10, ignore=True):
    z = (rng.standard_normal((n, k)) * 3).astype(dtype)
    t = rng.integers(0, k, n)
    if ignore:
        t[::7] = -100
    w = (rng.random(k) + 0.5).astype(dtype)
    return z, t, w


def exact(z, t, dtype, **kw):
    """The right answer, rounded to the candidate dtype (what a correct framework returns)."""
    loss, grad = R.value_and_grad(z, t, **kw)
    return np.asarray(loss).astype(dtype), grad.astype(dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
@pytest.mark.parametrize("k", [10, 1000, 32000])
def test_right_results_pass(dtype, k, rng):
    z, t, w = problem(rng, dtype, n=16, k=k)
    loss, grad = exact(z, t, dtype, label_smoothing=0.1, class_weight=w)
    r = lsref.verify(z, t, loss, grad, convention="torch", label_smoothing=0.1, weight=w)
    assert r.passed, str(r)
    # and lsref's own kernel result, computed in that dtype, passes too
    loss, grad = lsref.value_and_grad(z, t, label_smoothing=0.1, class_weight=w)
    assert lsref.verify(z, t, loss, grad, convention="torch", label_smoothing=0.1,
                        weight=w).passed


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_injected_eps_over_k_minus_1_is_named(dtype, rng):
    z, t, w = problem(rng, dtype)
    loss, grad = exact(z, t, dtype, label_smoothing=0.1, smoothing="others")
    r = lsref.verify(z, t, loss, grad, convention="torch", label_smoothing=0.1)
    assert not r.passed
    assert r.diagnosis[0].startswith("smoothing form: the candidate puts eps/(K-1)")


def test_injected_eps_over_k_where_fairseq_expects_k_minus_1(rng):
    z, t, _ = problem(rng, np.float32)
    loss, grad = exact(z, t, np.float32, label_smoothing=0.2, ignore_index=-100,
                       reduction="sum")
    r = lsref.verify(z, t, loss, grad, convention="fairseq", epsilon=0.2, ignore_index=-100)
    assert not r.passed
    assert r.diagnosis[0].startswith("smoothing form: the candidate puts eps/K")
    loss, grad = exact(z, t, np.float32, label_smoothing=0.2, ignore_index=-100,
                       reduction="sum", smoothing="others")
    assert lsref.verify(z, t, loss, grad, convention="fairseq", epsilon=0.2,
                        ignore_index=-100).passed


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_injected_divisor_n_instead_of_sum_of_weights_and_reverse(dtype, rng):
    z, t, w = problem(rng, dtype)
    s, gs = R.value_and_grad(z, t, label_smoothing=0.1, class_weight=w, reduction="sum")
    n = np.sum(t != -100)
    r = lsref.verify(z, t, np.asarray(s / n).astype(dtype), (gs / n).astype(dtype),
                     convention="torch", label_smoothing=0.1, weight=w)
    assert not r.passed
    assert r.diagnosis[0].startswith("the mean's divisor: the candidate divides by the number "
                                     "of rows")
    # the reverse: a Keras-style mean (by the count) given the weighted divisor
    sw = rng.random(len(t)) + 0.5
    s, gs = R.value_and_grad(z, t, sample_weight=sw, reduction="sum")
    D = np.sum(sw[t != -100])
    r = lsref.verify(z, t, np.asarray(s / D).astype(dtype), (gs / D).astype(dtype),
                     convention="keras", ignore_class=-100, sample_weight=sw)
    assert not r.passed
    assert r.diagnosis[0].startswith("the mean's divisor: the candidate divides by the summed")


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_injected_gradient_without_1_over_d(dtype, rng):
    z, t, w = problem(rng, dtype)
    loss, _ = exact(z, t, dtype, label_smoothing=0.1)
    _, gs = exact(z, t, dtype, label_smoothing=0.1, reduction="sum")
    r = lsref.verify(z, t, loss, gs, convention="torch", label_smoothing=0.1)
    assert not r.passed
    assert r.diagnosis[0].startswith("the gradient misses the mean's 1/D factor")


def test_one_float32_gradient_element_off_by_1e_3_is_caught(rng):
    """Acceptance: one element, one part in 1e-3, K from 10 to 32000."""
    for k in (10, 1000, 32000):
        z, t, _ = problem(rng, np.float32, n=16, k=k, ignore=False)
        loss, grad = exact(z, t, np.float32, label_smoothing=0.1)
        p = R.softmax(z.astype(np.float64))
        i, j = np.unravel_index(np.argmin(np.abs(p - 1.0 / k)), p.shape)  # a typical element
        bad = grad.copy()
        bad[i, j] *= np.float32(1.001)
        r = lsref.verify(z, t, loss, bad, convention="torch", label_smoothing=0.1)
        assert not r.passed and r.grad.n_failed == 1 and r.grad.worst_index == (i, j), str(r)


def test_half_precision_overflow_is_named(rng):
    z, t, _ = problem(rng, np.float16, n=8, k=100, ignore=False)
    _, grad = exact(z, t, np.float16, label_smoothing=0.1)
    r = lsref.verify(z, t, np.float16(np.inf), grad, convention="torch", label_smoothing=0.1)
    assert not r.passed and r.loss.n_nonfinite == 1
    assert r.diagnosis[0].startswith("half-precision overflow")


def test_nan_from_zero_times_minus_inf_is_named():
    z = np.array([[1.0, -np.inf, 0.5], [0.2, 0.1, 0.0]], np.float32)
    t = np.array([0, 2])
    r = lsref.verify(z, t, np.float32(np.nan), convention="torch", label_smoothing=0.1,
                     weight=np.array([1.0, 0.0, 1.0]))
    assert not r.passed and r.diagnosis[0].startswith("NaN from 0 * (-inf)")


def test_keras_wrong_axis_smoothing_is_named(rng):
    z = (rng.standard_normal((4, 7, 3)) * 2).astype(np.float32)
    t = rng.integers(0, 7, (4, 3))
    P = np.moveaxis(np.eye(7)[t], -1, 1)
    q_wrong = 0.9 * P + 0.1 / 3                       # eps divided by the last axis (3)
    loss = np.float32(R.cross_entropy(z, q_wrong, axis=1, reduction="none").mean())
    r = lsref.verify(z, P, loss, convention="keras", label_smoothing=0.1, axis=1)
    assert not r.passed
    assert r.diagnosis[0].startswith("smoothing over the wrong axis")


def test_report_text_json_and_nonfinite_listing(rng):
    z, t, _ = problem(rng, np.float32, n=6, k=5, ignore=False)
    loss, grad = exact(z, t, np.float32, label_smoothing=0.1, reduction="none")
    grad[2, 3] = np.nan
    r = lsref.verify(z, t, loss, grad, convention="lsref", label_smoothing=0.1,
                     reduction="none")
    assert not r.passed
    assert r.grad.nonfinite[0]["index"] == [2, 3]
    assert "candidate NaN where the value is finite" in str(r)
    d = json.loads(json.dumps(r.to_dict()))
    assert d["passed"] is False and d["grad"]["n_nonfinite"] == 1


def test_explicit_tolerances_and_bad_arguments(rng):
    z, t, _ = problem(rng, np.float64, n=4, k=5, ignore=False)
    loss = R.cross_entropy(z, t)
    assert lsref.verify(z, t, loss * (1 + 1e-6), rtol=1e-5).passed
    assert not lsref.verify(z, t, loss * (1 + 1e-4), rtol=1e-5).passed
    with pytest.raises(TypeError, match="convention 'torch' .* got unexpected label_smothing"):
        lsref.verify(z, t, loss, convention="torch", label_smothing=0.1)
    with pytest.raises(ValueError, match="unknown convention 'pytorch'"):
        lsref.verify(z, t, loss, convention="pytorch")
    with pytest.raises(ValueError, match="give the candidate loss, grad, or both"):
        lsref.verify(z, t)


def test_testing_helper_raises_with_the_report(rng):
    z, t, _ = problem(rng, np.float64, n=4, k=5, ignore=False)
    loss = R.cross_entropy(z, t)
    lsref.testing.assert_matches_reference(z, t, loss=loss)
    with pytest.raises(AssertionError, match="lsref.verify: FAILED"):
        lsref.testing.assert_matches_reference(z, t, loss=loss * 1.01)


# what a record needs beyond its smoothing argument: required arguments, a (batch, seq,
# class) layout, or one-hot targets
_EXTRA = {"espnet": dict(size=6, padding_idx=0), "nemo": dict(pad_id=0),
          "opennmt-3.0.2": dict(ignore_index=0)}
_SEQUENCE = ("espnet", "nemo")


@pytest.mark.parametrize("name", sorted(CONVENTIONS))
def test_every_convention_accepts_its_right_answer(name, rng):
    """Each record's own reference, rounded to float32, passes under that record."""
    from lsref.verify import _reference
    conv = CONVENTIONS[name]
    z = (rng.standard_normal((12, 6)) * 2).astype(np.float32)
    probs_only = name in ("optax", "keras", "tf1")
    t = rng.integers(0, 6, 12)
    params = {conv.smoothing_param: 0.1} if name not in ("keras",) or probs_only else {}
    params.update(_EXTRA.get(name, {}))
    if probs_only:
        t = np.eye(6)[t].astype(np.float32)
    if name in _SEQUENCE:
        z, t = z.reshape(3, 4, 6), t.reshape(3, 4)
    plan = conv.make_plan(z, t, params)
    loss, grad, _, _ = _reference(z.astype(np.float64),
                                  t if plan.targets is None else plan.targets, plan)
    r = lsref.verify(z, t, np.asarray(loss).astype(np.float32), grad.astype(np.float32),
                     convention=name, **params)
    assert r.passed, str(r)


# --- the tolerance model at the edges: no false alarm, single-element errors still caught ------

def _torch_result(z, t, **kw):
    torch = require("torch")
    import torch.nn.functional as F
    x = torch.from_numpy(z).requires_grad_(True)
    tt = torch.from_numpy(t)
    if "weight" in kw and kw["weight"] is not None:
        kw = dict(kw, weight=torch.from_numpy(kw["weight"]))
    loss = F.cross_entropy(x, tt, **kw)
    loss.backward()
    return loss.detach().numpy(), x.grad.numpy()


@pytest.mark.parametrize("dtype,k,eps,scale", [
    (np.float64, 50257, 0.1, 4.0),       # GPT-2's vocabulary: 4,000-eps elements, one factor
    (np.float32, 256000, 0.1, 1.0),      # p_j ~ q_j cancel; the summed -eps/K is 4e-4 off
    (np.float32, 256000, 0.1, 4.0),
    (np.float32, 256000, 0.0, 4.0),
])
def test_pytorch_large_vocabularies_pass(dtype, k, eps, scale):
    """PyTorch's right results at large K: its recursive sums (of the exps, of the smoothing
    term's K equal upstream gradients) scale each row's probabilities by one factor, which the
    model separates from element errors. The old model failed the first three (up to 1.3 million
    elements 'outside tolerance', and 'computed in float32' for float64)."""
    rng = np.random.default_rng(7)
    z = (rng.standard_normal((4, k)) * scale).astype(dtype)
    t = rng.integers(0, k, 4)
    loss, grad = _torch_result(z, t, label_smoothing=eps)
    r = lsref.verify(z, t, loss=loss, grad=grad, convention="torch", label_smoothing=eps)
    assert r.passed, str(r)
    assert r.grad.row_factor <= r.grad.row_factor_bound
    # one element 1e-3 off (where its terms do not cancel) is still caught
    g = grad.copy()
    i = np.unravel_index(np.argmax(np.abs(g)), g.shape)
    g[i] *= 1.001
    assert not lsref.verify(z, t, grad=g, convention="torch", label_smoothing=eps).passed


@pytest.mark.parametrize("k,lead", [(1000, 18.0), (50, 16.0)])
def test_dominated_row_target_element_set_to_zero_is_caught(k, lead):
    """A row whose target leads by `lead`: g_t = p_t - 1 is ~1e-6..1e-5, far below the size of
    its terms (1). PyTorch's own float32 result passes; the same with g_t set to 0 fails (the
    old model gave that element a tolerance of ~2.5e-5 and passed it)."""
    rng = np.random.default_rng(3)
    z = rng.standard_normal((4, k)).astype(np.float32)
    t = rng.integers(0, k, 4)
    z[np.arange(4), t] = lead
    loss, grad = _torch_result(z, t)
    assert lsref.verify(z, t, loss=loss, grad=grad, convention="torch").passed
    g = grad.copy()
    g[0, t[0]] = 0.0
    r = lsref.verify(z, t, grad=g, convention="torch")
    assert not r.passed and r.grad.worst_index == (0, int(t[0])), str(r)


def test_negative_mean_divisor_is_an_ordinary_divisor():
    """Class weights of both signs (PyTorch's tests draw them from [-9, 9]) give a negative D:
    the tolerance stays positive and the right result (the oracle's, the kernel's, PyTorch's)
    passes; the old model's tolerance was negative, so every result failed."""
    rng = np.random.default_rng(11)
    z = rng.standard_normal((6, 5))
    t = rng.integers(0, 5, 6)
    w = np.array([-9.0, 2.5, 1.0, -4.0, 0.5])
    D = w[t].sum()
    assert D < 0
    for loss, grad in (R.value_and_grad(z, t, class_weight=w),
                       lsref.value_and_grad(z, t, class_weight=w),
                       _torch_result(z, t, weight=w)):
        r = lsref.verify(z, t, loss=loss, grad=grad, convention="torch", weight=w)
        assert r.passed, str(r)
    loss, grad = R.value_and_grad(z, t, class_weight=w)
    assert not lsref.verify(z, t, loss=loss * (1 + 1e-9), grad=grad, convention="torch",
                            weight=w).passed


def test_bfloat16_weights_are_read():
    """PyTorch requires a bf16 weight= for bf16 logits: such a call can be verified, and bf16
    class weights mean their exact values everywhere."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    torch = require("torch")
    import torch.nn.functional as F
    rng = np.random.default_rng(5)
    z = rng.standard_normal((8, 6)).astype(np.float32)
    t = rng.integers(0, 6, 8)
    w = (rng.random(6) + 0.5).astype(ml_dtypes.bfloat16)
    assert lsref.cross_entropy(z, t, class_weight=w) == \
        lsref.cross_entropy(z, t, class_weight=w.astype(np.float64))
    x = torch.from_numpy(z).to(torch.bfloat16).requires_grad_(True)
    wt = torch.from_numpy(w.view(np.int16).copy()).view(torch.bfloat16)
    loss = F.cross_entropy(x, torch.from_numpy(t), weight=wt, label_smoothing=0.1)
    loss.backward()
    zb = z.astype(ml_dtypes.bfloat16)
    r = lsref.verify(zb, t, loss=loss, grad=x.grad, convention="torch", weight=wt,
                     label_smoothing=0.1)
    assert r.passed, str(r)


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint8, bool])
def test_integer_one_hot_targets_are_probabilities(dtype):
    """Shaped like the logits means probabilities, whatever the dtype (what Keras users pass):
    the same numbers as the class indices, in the kernel, the oracle and verify."""
    rng = np.random.default_rng(8)
    z = rng.standard_normal((5, 4)).astype(np.float32)
    t = rng.integers(0, 4, 5)
    oh = np.eye(4, dtype=dtype)[t]
    for mod in (lsref, R):
        loss, grad = mod.value_and_grad(z, oh, label_smoothing=0.1)
        ref_loss, ref_grad = R.value_and_grad(z, t, label_smoothing=0.1)
        np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
        np.testing.assert_allclose(grad, ref_grad, rtol=0, atol=1e-6 * np.abs(ref_grad).max())
    loss, grad = R.value_and_grad(z, t, label_smoothing=0.1, reduction="none")
    r = lsref.verify(z, oh, loss=loss, grad=grad, convention="keras", label_smoothing=0.1,
                     reduction="none")
    assert r.passed, str(r)


def test_negative_and_unnormalised_soft_targets_follow_the_calculus():
    """Probability targets need not be >= 0 or sum to 1 (PyTorch accepts both): the kernel
    equals the oracle, the oracle equals autograd's (sum q) p - q, and PyTorch's result
    verifies."""
    rng = np.random.default_rng(9)
    z = rng.standard_normal((6, 5))
    for P in (rng.standard_normal((6, 5)), 3.0 * rng.random((6, 5))):
        ref_loss, ref_grad = R.value_and_grad(z, P, reduction="sum")
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        np.testing.assert_allclose(ref_grad, P.sum(1, keepdims=True) * p - P, rtol=0,
                                   atol=1e-14)
        np.testing.assert_allclose(ref_loss, -(P * np.log(p)).sum(), rtol=1e-13)
        loss, grad = lsref.value_and_grad(z, P, reduction="sum")
        np.testing.assert_allclose(loss, ref_loss, rtol=1e-12)
        np.testing.assert_allclose(grad, ref_grad, rtol=0, atol=1e-13 * np.abs(ref_grad).max())
        loss, grad = _torch_result(z, P)
        assert lsref.verify(z, P, loss=loss, grad=grad, convention="torch").passed


@pytest.mark.parametrize("kw,exc,match", [
    (dict(reduction="avg"), ValueError, r"reduction='avg' is not a reduction of"),
    (dict(reduction=None), ValueError, r"reduction=None is not a reduction of"),
    (dict(reduction="MEAN"), ValueError, r"reduction='MEAN'"),
    (dict(rtol=-1.0), ValueError, r"rtol must be finite and >= 0, got -1.0"),
    (dict(rtol=float("nan")), ValueError, r"rtol must be finite and >= 0, got nan"),
    (dict(atol=float("inf")), ValueError, r"atol must be finite and >= 0, got inf"),
    (dict(atol="1e-3"), TypeError, r"atol must be a number"),
])
def test_unknown_reduction_and_bad_tolerances_are_errors(kw, exc, match):
    """The old code ran these, and reported a right result as right or wrong by accident."""
    z, t = np.array([[1.0, 2.0, 0.5]]), np.array([1])
    loss = R.cross_entropy(z, t)
    with pytest.raises(exc, match=match):
        lsref.verify(z, t, loss=loss, convention="torch", **kw)


def test_infinities_on_both_sides_raise_no_warning():
    """A +inf loss (smoothing mass on a -inf class) given as +inf is right, silently."""
    import warnings
    z = np.array([[-np.inf, 0.0, 1.0], [0.0, 1.0, 2.0]])
    t = np.array([0, 1])
    loss, grad = R.value_and_grad(z, t, label_smoothing=0.1, reduction="none")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = lsref.verify(z, t, loss=loss, grad=grad, label_smoothing=0.1, reduction="none")
    assert r.passed and np.isinf(loss[0])


@pytest.mark.parametrize("mistake,words", [
    ("sum for mean", "the sum over rows where the mean was meant (8 times the mean"),
    ("mean for sum", "the mean where the sum was meant"),
    ("smoothing forgotten", "smoothing forgotten"),
    ("grad of mean for none", "gradient of the mean over rows"),
    ("grad of sum for mean", "misses the mean's 1/D factor"),
])
def test_reduction_and_smoothing_mistakes_are_named(mistake, words):
    rng = np.random.default_rng(12)
    z = rng.standard_normal((8, 5))
    t = rng.integers(0, 5, 8)
    kw = dict(label_smoothing=0.1)
    if mistake == "sum for mean":
        args = dict(loss=R.cross_entropy(z, t, reduction="sum", **kw))
    elif mistake == "mean for sum":
        args = dict(loss=R.cross_entropy(z, t, **kw), reduction="sum")
    elif mistake == "smoothing forgotten":
        args = dict(zip(("loss", "grad"), R.value_and_grad(z, t)))
    elif mistake == "grad of mean for none":
        args = dict(grad=R.cross_entropy_grad(z, t, **kw), reduction="none")
    else:
        args = dict(grad=R.cross_entropy_grad(z, t, reduction="sum", **kw))
    r = lsref.verify(z, t, convention="torch", **kw, **args)
    assert not r.passed
    assert any(words in d for d in r.diagnosis), r.diagnosis


def test_a_pass_reads_as_a_pass(rng):
    """The report's figure is the verdict's: the worst error as a fraction of its tolerance
    (below 1 on a pass), not a relative error of an element near 0."""
    z, t, w = problem(rng, np.float32, n=32, k=100, ignore=False)
    loss, grad = exact(z, t, np.float32, label_smoothing=0.1)
    r = lsref.verify(z, t, loss=loss, grad=grad, convention="torch", label_smoothing=0.1)
    assert r.passed and 0 <= r.grad.max_error_ratio <= 1
    assert f"worst error {r.grad.max_error_ratio:.3g} x its tolerance" in str(r)
    bad = lsref.verify(z, t, loss=loss, grad=grad * 1.01, convention="torch",
                       label_smoothing=0.1)
    assert bad.grad.max_error_ratio > 1 and "x its tolerance" in str(bad)


@pytest.mark.parametrize("convention,kw", [("optax", dict(alpha=0.1)),
                                           ("keras", dict(label_smoothing=0.1))])
def test_smoothing_form_named_for_one_hot_targets(convention, kw):
    """Keras and Optax take one-hot labels: eps/(K-1) there is named as for class indices
    (the old diagnosis skipped probability targets and said no known mistake fits)."""
    rng = np.random.default_rng(13)
    z = rng.standard_normal((8, 6))
    t = rng.integers(0, 6, 8)
    reduction = "none" if convention == "optax" else "mean"
    loss, grad = R.value_and_grad(z, t, label_smoothing=0.1, smoothing="others",
                                  reduction=reduction)
    r = lsref.verify(z, np.eye(6)[t], loss=loss, grad=grad, convention=convention, **kw)
    assert not r.passed
    assert r.diagnosis[0].startswith("smoothing form: the candidate puts eps/(K-1)"), r.diagnosis


def test_report_json_is_strict_json():
    """A failing report where the reference is 0 and the error is not has an infinite
    relative error: to_dict() (and `lsref verify --json`) writes it as the string "inf", which
    every JSON parser reads (the old report wrote the non-standard token Infinity)."""
    z = np.array([[0.0, 1.0, 2.0], [1.0, 2.0, 3.0]])
    t = np.array([-100, 1])                           # row 0 ignored: its gradient is 0
    grad = R.cross_entropy_grad(z, t, reduction="none")
    grad[0] = [1.0, 0.0, 0.0]
    text = json.dumps(lsref.verify(z, t, grad=grad, reduction="none").to_dict())
    assert "Infinity" not in text and "NaN" not in text
    assert json.loads(text)["grad"]["max_rel_error"] == "inf"
