"""Properties that hold for every input (hypothesis), checked on the kernel and the oracle."""
import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, strategies as st  # noqa: E402
from hypothesis.extra import numpy as hynp  # noqa: E402

import lsref  # noqa: E402
from lsref import reference as R  # noqa: E402
from support import assert_close_to_oracle  # noqa: E402


@st.composite
def problems(draw, dtype=np.float64):
    n = draw(st.integers(1, 12))
    k = draw(st.integers(2, 40))
    z = draw(hynp.arrays(dtype, (n, k), elements=st.floats(-50, 50, width=32)))
    t = draw(hynp.arrays(np.int64, (n,), elements=st.integers(0, k - 1)))
    eps = draw(st.sampled_from([0.0, 0.1, 0.5, 1.0]))
    smoothing = draw(st.sampled_from(["uniform", "others"]))
    return z, t, dict(label_smoothing=eps, smoothing=smoothing)


@given(problems(), st.floats(-30, 30))
def test_shift_invariance(problem, c):
    """Adding a constant to a row changes neither its loss nor its gradient."""
    z, t, kw = problem
    loss, grad = lsref.value_and_grad(z, t, reduction="none", **kw)
    loss2, grad2 = lsref.value_and_grad(z + c, t, reduction="none", **kw)
    np.testing.assert_allclose(loss2, loss, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(grad2, grad, rtol=0, atol=1e-13)


@given(problems())
def test_gradient_rows_sum_to_zero(problem):
    """sum_j (p_j - q_j) = 1 - 1 = 0 for every (unweighted) row."""
    z, t, kw = problem
    grad = lsref.cross_entropy_grad(z, t, reduction="none", **kw)
    np.testing.assert_allclose(grad.sum(axis=1), 0.0, atol=1e-14 * z.shape[1])


@given(problems())
def test_loss_at_least_target_entropy(problem):
    """Gibbs: sum q (lse - z) = H(q) + KL(q || p) >= H(q)."""
    z, t, kw = problem
    q = R.smooth_labels(t, z.shape[1], kw["label_smoothing"], smoothing=kw["smoothing"])
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.sum(np.where(q > 0, q * np.log(q), 0.0), axis=1)
    loss = lsref.cross_entropy(z, t, reduction="none", **kw)
    assert np.all(loss >= h - 1e-12 * np.maximum(1, h))


@given(problems(), st.randoms(use_true_random=False))
def test_permutation_equivariance(problem, rnd):
    """Permuting the classes (and relabelling the targets) permutes the gradient columns and
    leaves the loss unchanged."""
    z, t, kw = problem
    perm = np.array(rnd.sample(range(z.shape[1]), z.shape[1]))
    inv = np.argsort(perm)
    loss, grad = lsref.value_and_grad(z, t, reduction="none", **kw)
    loss_p, grad_p = lsref.value_and_grad(z[:, perm], inv[t], reduction="none", **kw)
    np.testing.assert_allclose(loss_p, loss, rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(grad_p, grad[:, perm], rtol=0, atol=1e-14)


@given(problems(np.float32))
def test_kernel_equals_oracle_float32(problem):
    z, t, kw = problem
    assert_close_to_oracle(*lsref.value_and_grad(z, t, **kw), *R.value_and_grad(z, t, **kw),
                           np.float32, term_scale=1.0 / len(t))


@given(problems())
def test_kernel_equals_oracle_float64(problem):
    z, t, kw = problem
    assert_close_to_oracle(*lsref.value_and_grad(z, t, reduction="none", **kw),
                           *R.value_and_grad(z, t, reduction="none", **kw), np.float64,
                           term_scale=1.0)
