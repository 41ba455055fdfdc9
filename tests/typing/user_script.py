"""A user's script over lsref's public API, type-checked with ``mypy --strict`` and run.

tests/test_typing.py runs mypy on it against the lsref that Python imports (its annotations
and py.typed, as a user's mypy sees them), then runs it. Each ``assert_type`` states what
a user's type checker infers for a result: mypy fails on one that it infers otherwise (an
``Any`` included), and at run time ``assert_type`` returns its argument unchecked, so the
run checks the values with plain asserts.
"""
from __future__ import annotations

import sys
from typing import Any

import numpy as np
from numpy.typing import NDArray

if sys.version_info >= (3, 11):
    from typing import assert_type
else:                                   # Python 3.10: typing_extensions (a mypy dependency)
    from typing_extensions import assert_type

import lsref
import lsref.calibration
import lsref.conventions
import lsref.reference
import lsref.testing
from lsref import LabelSmoothingLoss, LinearLabelSmoothingLoss, VerificationReport

FloatArray = NDArray[np.floating[Any]]
Loss = np.floating[Any] | FloatArray


def train_step(logits: NDArray[np.float32], labels: NDArray[np.int64],
               buffer: NDArray[np.float32]) -> float:
    """One step's loss, its gradient written into a reused buffer."""
    loss, grad = lsref.value_and_grad(logits, labels, label_smoothing=0.1, out=buffer)
    assert_type(loss, Loss)
    assert_type(grad, FloatArray)
    assert grad is buffer
    return float(loss)


def main() -> None:
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((8, 5)).astype(np.float32)
    labels = rng.integers(0, 5, 8)

    # the front door: losses, gradients, and the options' Literal types
    loss = lsref.cross_entropy(logits, labels, label_smoothing=0.1, reduction="mean")
    assert_type(loss, Loss)
    per_row = lsref.cross_entropy(logits, labels, reduction="none", smoothing="others",
                                  label_smoothing=0.2, ignore_index=None, n_threads=1)
    assert isinstance(per_row, np.ndarray) and per_row.shape == (8,)
    grad = lsref.cross_entropy_grad(logits, labels, label_smoothing=0.1)
    assert_type(grad, FloatArray)
    assert grad.shape == logits.shape and grad.dtype == np.float32
    z_grad = lsref.cross_entropy_grad(logits, labels, z_loss=1e-4, kl=True, n_threads=2)
    assert z_grad.shape == grad.shape

    buffer = np.empty_like(logits)
    step_loss: float = train_step(logits, labels, buffer)
    assert abs(step_loss - float(loss)) < 1e-6

    # log-sum-exp and softmax
    lse = lsref.logsumexp(logits, axis=1, keepdims=True)
    probs = lsref.softmax(logits)
    log_probs = lsref.log_softmax(logits, axis=-1)
    assert_type(lse, FloatArray)
    assert_type(probs, FloatArray)
    assert_type(log_probs, FloatArray)
    assert lse.shape == (8, 1) and np.allclose(probs.sum(axis=1), 1.0)

    # smoothed targets (the oracle's: float64)
    q = lsref.smooth_labels(labels, 5, 0.1)
    assert_type(q, NDArray[np.float64])
    assert q.shape == (8, 5)

    # binary (sigmoid) cross-entropy
    yes_no = (rng.random((8, 5)) > 0.5).astype(np.float64)
    bce = lsref.binary_cross_entropy(logits, yes_no, label_smoothing=0.1)
    bce_loss, bce_grad = lsref.binary_value_and_grad(logits, yes_no, reduction="sum")
    bce_only_grad = lsref.binary_cross_entropy_grad(logits, yes_no)
    assert_type(bce, Loss)
    assert_type(bce_loss, Loss)
    assert_type(bce_grad, FloatArray)
    assert bce_grad.shape == bce_only_grad.shape == logits.shape and float(bce) > 0

    # the last layer and the loss, without the logits
    h = rng.standard_normal((8, 4))
    weight = rng.standard_normal((5, 4))
    bias = np.zeros(5)
    lin = lsref.linear_cross_entropy(h, weight, labels, bias=bias, label_smoothing=0.1)
    lin_loss, dh, dweight, dbias = lsref.linear_value_and_grad(h, weight, labels, bias=bias,
                                                               label_smoothing=0.1,
                                                               chunk_size=4)
    assert_type(lin, Loss)
    assert_type(dbias, FloatArray | None)
    assert dbias is not None and dbias.shape == (5,)
    assert dh.shape == h.shape and dweight.shape == weight.shape
    assert abs(float(lin) - float(lin_loss)) < 1e-9       # chunks change only the rounding

    # the criteria, with backward()
    crit = LabelSmoothingLoss(label_smoothing=0.1, reduction="sum")
    crit_loss = crit(logits, labels)
    crit_grad = crit.backward()
    crit_loss2, crit_grad2 = crit.value_and_grad(logits, labels, sample_weight=np.ones(8))
    assert_type(crit_loss, Loss)
    assert_type(crit_grad, FloatArray)
    assert crit_grad.shape == crit_grad2.shape and float(crit_loss) == float(crit_loss2)
    linear_crit = LinearLabelSmoothingLoss(label_smoothing=0.1)
    linear_crit(h, weight, labels, bias=bias)
    crit_dh, crit_dweight, crit_dbias = linear_crit.backward()
    assert_type(crit_dbias, FloatArray | None)
    assert crit_dh.shape == h.shape and crit_dweight.shape == weight.shape

    # the oracle (float64 whatever the inputs)
    ref_loss, ref_grad = lsref.reference.value_and_grad(logits, labels, label_smoothing=0.1)
    assert_type(ref_loss, np.float64 | NDArray[np.float64])
    assert_type(ref_grad, NDArray[np.float64])
    ref_lse = lsref.reference.logsumexp(logits, axis=1)
    divisor: float = lsref.reference.mean_divisor(labels, 5, class_weight=np.ones(5))
    assert divisor == 8.0 and ref_lse.dtype == np.float64
    assert abs(float(ref_loss) - float(loss)) < 1e-5

    # verify a loss and gradient, and the report's fields
    report = lsref.verify(logits, labels, loss, grad, label_smoothing=0.1)
    assert_type(report, VerificationReport)
    passed: bool = report.passed
    dtype_name: str = report.dtype
    if report.loss is not None:
        worst: float = report.loss.max_error_ratio
        assert worst <= 1.0 and report.loss.passed
    summary = report.to_dict()
    assert passed and dtype_name == "float32" and summary["passed"] is True
    torch_report = lsref.verify(logits, labels, loss, convention="torch", label_smoothing=0.1)
    assert torch_report.convention == "torch" and torch_report.passed

    # the assertion for a user's own test suite
    checked = lsref.testing.assert_matches_reference(logits, labels, loss=loss, grad=grad,
                                                     label_smoothing=0.1)
    assert_type(checked, VerificationReport)

    # calibration
    p_target, p_other = lsref.calibration.optimal_probabilities(5, 0.1, smoothing="uniform")
    gap: float = lsref.calibration.optimal_logit_gap(5, 0.1)
    diagram = lsref.calibration.reliability_diagram(probs, labels, n_bins=5,
                                                    strategy="quantile")
    ece: float = lsref.calibration.expected_calibration_error(probs, labels)
    assert_type(diagram.ece, float)
    assert diagram.counts.sum() == 8 and 0.0 <= ece <= 1.0 and gap > 0
    assert abs(p_target + 4 * p_other - 1.0) < 1e-12

    # conventions: the records behind verify(convention=...)
    convention = lsref.conventions.get_convention("torch")
    plan = convention.make_plan(logits, labels, {"label_smoothing": 0.1})
    assert_type(plan, lsref.conventions.Plan)
    assert plan.reduction == "mean" and convention.smoothing_param == "label_smoothing"
    names: list[str] = sorted(lsref.conventions.CONVENTIONS)
    assert "torch" in names

    threads: int = lsref.MAX_THREADS
    version: str = lsref.__version__
    print(f"lsref {version} (up to {threads} threads): loss {float(loss):.4f}, "
          f"verified: {passed}")


if __name__ == "__main__":
    main()
