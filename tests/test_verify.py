"""lsref.verify: no false alarm on right results, every injected mistake caught and named."""
import json

import numpy as np
import pytest

import lsref
from lsref import reference as R
from lsref.conventions import CONVENTIONS

RNG = np.random.default_rng(61)


def problem(dtype=np.float32, n=48, k=10, ignore=True):
    z = (RNG.standard_normal((n, k)) * 3).astype(dtype)
    t = RNG.integers(0, k, n)
    if ignore:
        t[::7] = -100
    w = (RNG.random(k) + 0.5).astype(dtype)
    return z, t, w


def exact(z, t, dtype, **kw):
    """The right answer, rounded to the candidate dtype (what a correct framework returns)."""
    loss, grad = R.value_and_grad(z, t, **kw)
    return np.asarray(loss).astype(dtype), grad.astype(dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
@pytest.mark.parametrize("k", [10, 1000, 32000])
def test_right_results_pass(dtype, k):
    z, t, w = problem(dtype, n=16, k=k)
    loss, grad = exact(z, t, dtype, label_smoothing=0.1, class_weight=w)
    r = lsref.verify(z, t, loss, grad, convention="torch", label_smoothing=0.1, weight=w)
    assert r.passed, str(r)
    # and lsref's own kernel result, computed in that dtype, passes too
    loss, grad = lsref.value_and_grad(z, t, label_smoothing=0.1, class_weight=w)
    assert lsref.verify(z, t, loss, grad, convention="torch", label_smoothing=0.1,
                        weight=w).passed


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_injected_eps_over_k_minus_1_is_named(dtype):
    z, t, w = problem(dtype)
    loss, grad = exact(z, t, dtype, label_smoothing=0.1, smoothing="others")
    r = lsref.verify(z, t, loss, grad, convention="torch", label_smoothing=0.1)
    assert not r.passed
    assert r.diagnosis[0].startswith("smoothing form: the candidate puts eps/(K-1)")


def test_injected_eps_over_k_where_fairseq_expects_k_minus_1():
    z, t, _ = problem(np.float32)
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
def test_injected_divisor_n_instead_of_sum_of_weights_and_reverse(dtype):
    z, t, w = problem(dtype)
    s, gs = R.value_and_grad(z, t, label_smoothing=0.1, class_weight=w, reduction="sum")
    n = np.sum(t != -100)
    r = lsref.verify(z, t, np.asarray(s / n).astype(dtype), (gs / n).astype(dtype),
                     convention="torch", label_smoothing=0.1, weight=w)
    assert not r.passed
    assert r.diagnosis[0].startswith("the mean's divisor: the candidate divides by the number "
                                     "of rows")
    # the reverse: a Keras-style mean (by the count) given the weighted divisor
    sw = RNG.random(len(t)) + 0.5
    s, gs = R.value_and_grad(z, t, sample_weight=sw, reduction="sum")
    D = np.sum(sw[t != -100])
    r = lsref.verify(z, t, np.asarray(s / D).astype(dtype), (gs / D).astype(dtype),
                     convention="keras", ignore_class=-100, sample_weight=sw)
    assert not r.passed
    assert r.diagnosis[0].startswith("the mean's divisor: the candidate divides by the summed")


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_injected_gradient_without_1_over_d(dtype):
    z, t, w = problem(dtype)
    loss, _ = exact(z, t, dtype, label_smoothing=0.1)
    _, gs = exact(z, t, dtype, label_smoothing=0.1, reduction="sum")
    r = lsref.verify(z, t, loss, gs, convention="torch", label_smoothing=0.1)
    assert not r.passed
    assert r.diagnosis[0].startswith("the gradient misses the mean's 1/D factor")


def test_one_float32_gradient_element_off_by_1e_3_is_caught():
    """Acceptance: one element, one part in 1e-3, K from 10 to 32000."""
    for k in (10, 1000, 32000):
        z, t, _ = problem(np.float32, n=16, k=k, ignore=False)
        loss, grad = exact(z, t, np.float32, label_smoothing=0.1)
        p = R.softmax(z.astype(np.float64))
        i, j = np.unravel_index(np.argmin(np.abs(p - 1.0 / k)), p.shape)  # a typical element
        bad = grad.copy()
        bad[i, j] *= np.float32(1.001)
        r = lsref.verify(z, t, loss, bad, convention="torch", label_smoothing=0.1)
        assert not r.passed and r.grad.n_failed == 1 and r.grad.worst_index == (i, j), str(r)


def test_half_precision_overflow_is_named():
    z, t, _ = problem(np.float16, n=8, k=100, ignore=False)
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


def test_keras_wrong_axis_smoothing_is_named():
    z = (RNG.standard_normal((4, 7, 3)) * 2).astype(np.float32)
    t = RNG.integers(0, 7, (4, 3))
    P = np.moveaxis(np.eye(7)[t], -1, 1)
    q_wrong = 0.9 * P + 0.1 / 3                       # eps divided by the last axis (3)
    loss = np.float32(R.cross_entropy(z, q_wrong, axis=1, reduction="none").mean())
    r = lsref.verify(z, P, loss, convention="keras", label_smoothing=0.1, axis=1)
    assert not r.passed
    assert r.diagnosis[0].startswith("smoothing over the wrong axis")


def test_report_text_json_and_nonfinite_listing():
    z, t, _ = problem(np.float32, n=6, k=5, ignore=False)
    loss, grad = exact(z, t, np.float32, label_smoothing=0.1, reduction="none")
    grad[2, 3] = np.nan
    r = lsref.verify(z, t, loss, grad, convention="lsref", label_smoothing=0.1,
                     reduction="none")
    assert not r.passed
    assert r.grad.nonfinite[0]["index"] == [2, 3]
    assert "candidate NaN where the value is finite" in str(r)
    d = json.loads(json.dumps(r.to_dict()))
    assert d["passed"] is False and d["grad"]["n_nonfinite"] == 1


def test_explicit_tolerances_and_bad_arguments():
    z, t, _ = problem(np.float64, n=4, k=5, ignore=False)
    loss = R.cross_entropy(z, t)
    assert lsref.verify(z, t, loss * (1 + 1e-6), rtol=1e-5).passed
    assert not lsref.verify(z, t, loss * (1 + 1e-4), rtol=1e-5).passed
    with pytest.raises(TypeError, match="convention 'torch' .* got unexpected label_smothing"):
        lsref.verify(z, t, loss, convention="torch", label_smothing=0.1)
    with pytest.raises(ValueError, match="unknown convention 'pytorch'"):
        lsref.verify(z, t, loss, convention="pytorch")
    with pytest.raises(ValueError, match="give the candidate loss, grad, or both"):
        lsref.verify(z, t)


def test_testing_helper_raises_with_the_report():
    z, t, _ = problem(np.float64, n=4, k=5, ignore=False)
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
def test_every_convention_accepts_its_right_answer(name):
    """Each record's own reference, rounded to float32, passes under that record."""
    from lsref.verify import _reference
    conv = CONVENTIONS[name]
    z = (RNG.standard_normal((12, 6)) * 2).astype(np.float32)
    probs_only = name in ("optax", "keras", "tf1")
    t = RNG.integers(0, 6, 12)
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
