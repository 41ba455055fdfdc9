r"""The oracle: label-smoothed softmax cross-entropy in plain NumPy, float64 throughout.

Every function here states one formula of SEMANTICS.md and computes it directly, element by
element, without the algebraic shortcuts the kernel takes. It never imports the kernel, so it
stays an independent witness; the only thing it shares with the fast path is the argument
checking (``lsref._validation``), so that both reject the same inputs with the same messages.

Notation (one row ``z`` of length ``K``)::

    lse   = log sum_k exp(z_k)  = m + log sum_k exp(z_k - m),  m = max_k z_k
    p_k   = exp(z_k - lse)                                      (softmax)
    q     = smooth_labels(target)                               (the smoothed target)
    loss  = s * sum_k w_k q_k (lse - z_k) + s * lam * lse**2
    dloss/dz_j = s * [(sum_k w_k q_k) p_j - w_j q_j] + s * 2 lam lse p_j

with class weights ``w`` (default 1), a sample weight ``s`` (default 1) and z-loss ``lam``
(default 0). A product whose target factor ``w_k q_k`` is 0 is 0, even where ``z_k = -inf``.
The KL form (T5X) subtracts ``s * H_w(q) = -s * sum_k w_k q_k log q_k`` (``0 log 0 = 0``)
from the loss, and leaves the gradient as it is.

Accuracy: the kernel is measured against this oracle, so it keeps full relative accuracy where
float64 allows. ``lse - z_top`` is ``log1p`` of the other terms (a tiny loss stays exact) and the
top class's gradient is formed from ``expm1`` (a dominated row's gradient is not rounding
noise). Row sums are NumPy's pairwise sums along the contiguous class axis, not compensated
sums: against 50-digit mpmath at K = 200000 they land within ~1e-16 of the exact sum of the same
terms, which neither ``math.fsum`` nor a long-double sum improves (tests/test_reference_exact.py).

Binary (sigmoid) cross-entropy, per element with smoothed label ``y`` and weight ``c``::

    loss = c * [y * softplus(-x) + (1 - y) * softplus(x)],   dloss/dx = c * (sigmoid(x) - y)

References
----------
C. Szegedy et al., "Rethinking the Inception Architecture for Computer Vision", CVPR 2016
(label smoothing). P. Blanchard, D. J. Higham, N. J. Higham, "Accurately computing the
log-sum-exp and softmax functions", IMA J. Numer. Anal. 41 (2021).
"""
from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from ._keywords import (
    BINARY_OPTIONS,
    CROSS_ENTROPY_OPTIONS,
    EXECUTION_OPTIONS,
    LINEAR_OPTIONS,
    N_THREADS,
    fill_doc,
    given,
)
from ._typing import Float64Array, Loss64, Reduction, Smoothing
from ._validation import (
    SMOOTHINGS,
    check_axis,
    check_binary_problem,
    check_choice,
    check_float_array,
    check_linear,
    check_num_classes,
    check_problem,
    check_problem_shape,
)

__all__ = ["logsumexp", "log_softmax", "softmax", "smooth_labels", "cross_entropy",
           "cross_entropy_grad", "value_and_grad", "binary_cross_entropy",
           "binary_cross_entropy_grad", "binary_value_and_grad", "mean_divisor",
           "linear_value_and_grad", "linear_cross_entropy"]

def _undefined(x, axis):
    """The slices along ``axis`` with no softmax (kept as a length-1 axis): SEMANTICS.md's NaN
    rule, written once. A slice holding NaN or +inf, or holding only -inf, is undefined; an
    empty slice is not (it has nothing to normalise)."""
    if x.shape[axis] == 0:
        return np.zeros(x.shape[:axis] + (1,) + x.shape[axis + 1:], bool)
    return (np.isnan(x).any(axis=axis, keepdims=True)
            | (x == np.inf).any(axis=axis, keepdims=True)
            | (x == -np.inf).all(axis=axis, keepdims=True))


def _shift_and_log_sum(x, axis):
    """(m, L, top) with lse = m + L and log_softmax = (x - m) - L, along ``axis`` (kept).

    m is the max of each slice (0 where that max is infinite, which then lands in L: a slice
    of -inf gives L = -inf, one holding +inf gives L = +inf), top the index of that max. The
    max term of sum exp(x - m) is exactly 1, so L = log1p(sum of the other terms): log(1 + delta)
    would lose delta's low bits when one class dominates (Blanchard, Higham & Higham 2021).
    L is then lse - x_top itself, to full relative accuracy however small.
    """
    if x.shape[axis] == 0:
        shape = x.shape[:axis] + (1,) + x.shape[axis + 1:]
        return np.zeros(shape), np.full(shape, -np.inf), np.zeros(shape, np.intp)
    m = np.max(x, axis=axis, keepdims=True)
    finite = np.isfinite(m)
    shift = np.where(finite, m, 0.0)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        e = np.exp(x - shift)
        top = np.argmax(x, axis=axis, keepdims=True)
        e_top = np.take_along_axis(e, top, axis=axis)      # 1 where the max is finite
        np.put_along_axis(e, top, 0.0, axis=axis)
        rest = np.sum(e, axis=axis, keepdims=True)
        L = np.where(finite, np.log1p(rest), np.log(rest + e_top))
    return shift, L, top


def _as_axis(x, axis):
    """A float64 copy of ``x`` and the checked axis; a 0-d ``x`` is one slice of length 1
    (its own log-sum-exp), as in scipy.special."""
    x = check_float_array("x", x).astype(np.float64)
    shape = x.shape
    if x.ndim == 0:
        x = x.reshape(1)
    return x, check_axis(axis, x.ndim), shape


@fill_doc()
def logsumexp(x: ArrayLike, axis: int = -1, keepdims: bool = False) -> Float64Array:
    """Compute ``log(sum(exp(x), axis))`` in float64, stably.

    Special values as scipy.special's: a slice holding NaN gives NaN, one holding +inf (and
    no NaN) +inf, one of only -inf (or an empty one) -inf. A 0-d ``x`` is its own
    log-sum-exp.

    Parameters
    ----------
    %(x)s
    axis : int, default=-1
        The axis to reduce.
    keepdims : bool, default=False
        Keep the reduced axis, with length 1.

    Returns
    -------
    ndarray of float64
        ``x``'s shape without ``axis`` (with it, of length 1, for ``keepdims=True``).

    Raises
    ------
    TypeError
        If ``x`` is not real numbers or ``axis`` is not an integer.
    ValueError
        If ``axis`` is out of bounds.

    Notes
    -----
    ``lse = m + log1p(sum_{k != top} exp(x_k - m))``, ``m = x_top`` the slice's maximum:
    the max's own term is exactly 1, so a dominated slice keeps full relative accuracy.

    Examples
    --------
    >>> import numpy as np
    >>> from lsref import reference
    >>> float(reference.logsumexp([3.0, 1.0, 0.0]))   # log(e**3 + e + 1)
    3.1698460...
    """
    x, axis, _ = _as_axis(x, axis)
    m, L, _ = _shift_and_log_sum(x, axis)
    out = m + L
    return out if keepdims else np.squeeze(out, axis=axis)


@fill_doc()
def log_softmax(x: ArrayLike, axis: int = -1) -> Float64Array:
    """Compute ``(x - m) - log(sum(exp(x - m)))`` along ``axis`` (float64), ``m`` the max.

    A slice holding NaN or +inf, or only -inf, is NaN throughout (SEMANTICS.md: it has no
    softmax); an empty axis gives an empty result, a 0-d ``x`` gives 0.

    Parameters
    ----------
    %(x)s
    %(x_axis)s

    Returns
    -------
    ndarray of float64
        The log-probabilities, of ``x``'s shape.

    Raises
    ------
    TypeError
        If ``x`` is not real numbers or ``axis`` is not an integer.
    ValueError
        If ``axis`` is out of bounds.

    Examples
    --------
    >>> from lsref import reference
    >>> reference.log_softmax([1000.0, 1000.0])
    array([-0.69314718, -0.69314718])
    """
    x, axis, shape = _as_axis(x, axis)
    m, L, _ = _shift_and_log_sum(x, axis)
    with np.errstate(invalid="ignore"):
        out = np.where(_undefined(x, axis), np.nan, (x - m) - L)
    return out.reshape(shape)


@fill_doc()
def softmax(x: ArrayLike, axis: int = -1) -> Float64Array:
    """Compute ``exp(log_softmax(x))`` along ``axis`` (float64).

    Parameters
    ----------
    %(x)s
    %(x_axis)s

    Returns
    -------
    ndarray of float64
        The probabilities, of ``x``'s shape; NaN where :func:`log_softmax` is.

    Raises
    ------
    TypeError
        If ``x`` is not real numbers or ``axis`` is not an integer.
    ValueError
        If ``axis`` is out of bounds.

    Examples
    --------
    >>> import numpy as np
    >>> from lsref import reference
    >>> np.round(reference.softmax([3.0, 1.0, 0.0]), 3)
    array([0.844, 0.114, 0.042])
    """
    return np.exp(log_softmax(x, axis=axis))


@fill_doc()
def smooth_labels(targets: ArrayLike, num_classes: int, label_smoothing: float, *,
                  smoothing: Smoothing = "uniform", axis: int = -1) -> Float64Array:
    """The smoothed target distribution ``q`` (float64), the class axis at ``axis``.

    Parameters
    ----------
    targets : array_like
        Class indices (any integer array; the result gains a class axis) or
        probabilities (a float array whose ``axis`` has length ``num_classes``).
    num_classes : int >= 1
        ``K``, the number of classes.
    label_smoothing : float in [0, 1]
        ``eps``, the mass moved off the targets.
    %(smoothing)s
    axis : int, default=-1
        Where the class axis is (of the result; of probability targets).

    Returns
    -------
    q : ndarray of float64
        The smoothed targets, with ``num_classes`` classes along ``axis``.

    Raises
    ------
    %(raises)s

    Notes
    -----
    With ``eps = label_smoothing``::

        uniform, index t:   q_k = (1 - eps) [k = t] + eps / K
        others,  index t:   q_t = 1 - eps,  q_k = eps / (K - 1)  for k != t
        uniform, probs P:   q_k = (1 - eps) P_k + eps / K

    Examples
    --------
    >>> from lsref import reference
    >>> reference.smooth_labels([0], 4, 0.1)
    array([[0.925, 0.025, 0.025, 0.025]])
    """
    K = check_num_classes(num_classes)
    targets = np.asarray(targets)
    options = dict(label_smoothing=label_smoothing, axis=axis, smoothing=smoothing,
                   ignore_index=None)
    if targets.dtype.kind in "iu":
        # the logits' shape: the targets' with a class axis of K inserted at ``axis``
        ndim = targets.ndim + 1
        where = check_axis(axis, ndim)
        shape = targets.shape[:where] + (K,) + targets.shape[where:]
        p = check_problem_shape(shape, targets, **options)
    else:
        p = check_problem_shape(targets.shape, targets, **options)
        if p.n_classes != K:
            raise ValueError(f"probability targets have {p.n_classes} classes along "
                             f"axis={axis}, but num_classes={K}")
    q = _smoothed_rows(p)
    return np.moveaxis(q.reshape(p.batch_shape + (K,)), -1, p.axis)


def _smoothed_rows(p):
    """q of every row, shape (n_rows, K); rows of ignored targets are 0."""
    K, eps = p.n_classes, p.label_smoothing
    if p.prob_targets:
        P = p.targets.reshape(-1, K).astype(np.float64)
        return (1.0 - eps) * P + eps / K
    t = p.targets.reshape(-1)
    onehot = np.zeros((t.size, K))
    keep = np.ones(t.size, bool) if p.ignore_index is None else t != p.ignore_index
    onehot[np.flatnonzero(keep), t[keep]] = 1.0
    if p.smoothing == "uniform":
        q = (1.0 - eps) * onehot + eps / K
    else:
        q = (1.0 - eps) * onehot + eps / (K - 1) * (1.0 - onehot)
    q[~keep] = 0.0
    return q


def _mass_times_p_minus_target(c, prob, neg_log_p, top):
    """(sum_k c_k) p_j - c_j for every class j, with c = w q, along the last axis.

    At the top class (the max logit) p_top is close to 1 when it dominates, and C p_top - c_top
    subtracts two near-equal numbers. There it is computed as the same value rearranged,

        (sum_{k != top} c_k) p_top + c_top (p_top - 1),   p_top - 1 = expm1(-(lse - z_top)),

    whose two terms keep their relative accuracy (lse - z_top = log1p(...) is accurate). On a
    dominated row the gradient is otherwise all rounding error (e.g. 0 instead of -4e-18).
    Where two or more classes tie at the max, each p is at most 1/2 and this is the plain
    formula again: its error is then ~1e-16 of the terms, not of their difference.
    """
    C = c.sum(axis=-1, keepdims=True)
    out = C * prob - c
    c_top = np.take_along_axis(c, top, axis=-1)
    p_top = np.take_along_axis(prob, top, axis=-1)
    others = c.copy()
    np.put_along_axis(others, top, 0.0, axis=-1)
    others = others.sum(axis=-1, keepdims=True)           # sum_{k != top} c_k, summed directly
    at_top = others * p_top + c_top * np.expm1(-np.take_along_axis(neg_log_p, top, axis=-1))
    np.put_along_axis(out, top, at_top, axis=-1)
    return out


def _rows(logits, targets, kw):
    """Validate, then compute per-row losses, the unreduced gradient rows, the "mean"
    divisor, and the sizes of the gradient's terms (for gradient_terms)."""
    p = check_problem(logits, targets, **kw)
    K = p.n_classes
    z = p.logits.reshape(-1, K).astype(np.float64)
    q = _smoothed_rows(p)
    w = np.ones(K) if p.class_weight is None else p.class_weight
    s = np.ones(p.n_rows) if p.sample_weight is None else p.sample_weight.reshape(-1)
    if p.prob_targets:
        active = np.ones(p.n_rows, bool)
    else:
        t = p.targets.reshape(-1)
        active = np.ones(p.n_rows, bool) if p.ignore_index is None else t != p.ignore_index

    m, L, top = _shift_and_log_sum(z, -1)
    c = w * q                                     # target mass w_k q_k, 0 on ignored rows
    with np.errstate(invalid="ignore", over="ignore"):
        neg_log_p = L - (z - m)                   # lse - z_k, without forming lse (= L at top)
        lse = m + L
        # neg_log_p is +inf where z_k = -inf; a zero target mass there contributes 0, not NaN
        terms = np.where(c == 0.0, 0.0, c * neg_log_p)
        row_loss = s * terms.sum(axis=-1)
        if p.z_loss:                              # a zero coefficient is skipped, not 0 * inf
            row_loss += s * p.z_loss * lse[:, 0] ** 2
        if p.kl:
            # minus the (weighted) target entropy: + s * sum_k w_k q_k log q_k, 0 log 0 = 0
            row_loss += s * np.where(c == 0.0, 0.0, c * np.log(np.where(q > 0, q, 1.0))).sum(-1)
        prob = np.exp(-neg_log_p)
        grad = s[:, None] * _mass_times_p_minus_target(c, prob, neg_log_p, top)
        if p.z_loss:
            grad += s[:, None] * 2.0 * p.z_loss * lse * prob
    # SEMANTICS.md's NaN rule comes first: a row with no softmax (NaN, +inf, only -inf) is
    # NaN whatever its target mass, that row only
    undefined = _undefined(z, -1)[:, 0]
    row_loss[undefined] = np.nan
    grad[undefined] = np.nan
    row_loss = np.where(active, row_loss, 0.0)
    grad[~active] = 0.0

    divisor = _mean_divisor(p, active, s, w)
    # the sizes of the gradient's two terms, s (sum_k w_k q_k + 2 lam lse) p_j and s w_j q_j,
    # and each row's lse: what a tolerance model for a computed gradient needs
    with np.errstate(invalid="ignore", over="ignore"):
        terms = dict(prob=np.abs(s[:, None] * (c.sum(axis=-1, keepdims=True)
                                               + 2.0 * p.z_loss * lse) * prob),
                     target=np.abs(s[:, None] * c), lse=lse[:, 0], log_p=-neg_log_p)
    for v in terms.values():
        v[~active] = 0.0
    return p, row_loss, grad, divisor, terms


def gradient_terms(logits: ArrayLike, targets: ArrayLike, **kw: Any) -> dict[str, Any]:
    """For tolerance models: the per-element sizes ``|s C p_j|`` and ``|s w_j q_j|`` of the
    gradient's two terms, the log-probabilities and each row's lse, in the caller's layout
    (rows, not reduced: a caller applies its own 1/D). Not part of the formulas above."""
    kw = {**CROSS_ENTROPY_OPTIONS, **_strip(kw)}
    p, _, _, divisor, t = _rows(logits, targets, kw)
    K = p.n_classes
    shape = p.batch_shape + (K,)
    out = {k: np.moveaxis(t[k].reshape(shape), -1, p.axis) for k in ("prob", "target", "log_p")}
    out["lse"] = t["lse"].reshape(p.batch_shape)
    # what the "mean" divisors count: lsref's D, the rows that count, their sample weights
    if p.prob_targets or p.ignore_index is None:
        counted = np.ones(p.n_rows, bool)
    else:
        counted = p.targets.reshape(-1) != p.ignore_index
    s = np.ones(p.n_rows) if p.sample_weight is None else p.sample_weight.reshape(-1)
    out.update(divisor=divisor, rows=float(counted.sum()), sample_weight=float(s[counted].sum()),
               n_classes=K, axis=p.axis, prob_targets=p.prob_targets)
    return out


def _mean_divisor(p, active, s, w):
    """D of ``reduction="mean"`` (SEMANTICS.md, "Reductions"): the number of rows for
    probability targets (PyTorch: whatever the weights); for class indices the sum over the
    rows that count of sample weight times the target's class weight."""
    if p.prob_targets:
        return float(p.n_rows)
    t = p.targets.reshape(-1)
    return float(np.sum(s[active] * w[t[active]]))


def _reduced(reduction, loss, grad, divisor):
    """The loss of a reduction (``loss`` per row or per element) and its gradient. For
    "mean", D = 0 (an empty batch, every target ignored, weights summing to 0) gives a NaN
    mean and leaves the gradient undivided (0 on the rows that do not count)."""
    if reduction == "none":
        return loss, grad
    if reduction == "sum":
        return np.float64(np.sum(loss)), grad
    if divisor == 0:
        return np.float64(np.nan), grad
    return np.float64(np.sum(loss) / divisor), grad / divisor


def _reduce(p, row_loss, grad, divisor):
    loss, grad = _reduced(p.reduction, row_loss, grad, divisor)
    if p.reduction == "none":
        loss = loss.reshape(p.batch_shape)
    return loss, np.moveaxis(grad.reshape(p.batch_shape + (p.n_classes,)), -1, p.axis)


def mean_divisor(targets: ArrayLike, num_classes: int, *, class_weight: ArrayLike | None = None,
                 sample_weight: ArrayLike | None = None, ignore_index: int | None = -100) -> float:
    """The divisor ``D`` of ``reduction="mean"`` for class-index targets.

    The sum over the rows that are not ignored of sample weight times the target's class
    weight (the number of those rows, unweighted). It needs no logits.

    Parameters
    ----------
    targets : array_like of int
        Class indices, any shape.
    num_classes : int
        ``K``, the number of classes.
    class_weight : array_like of shape (K,), optional
        Per-class weights.
    sample_weight : array_like shaped like ``targets``, optional
        Per-row weights.
    ignore_index : int or None, default=-100
        Rows whose target equals it do not count.

    Returns
    -------
    float
        ``D`` (0 when no row counts: the mean is then NaN).

    Raises
    ------
    TypeError, ValueError
        If an argument is malformed (the message names it), or for probability targets
        (their divisor is the number of rows).

    Examples
    --------
    >>> from lsref import reference
    >>> reference.mean_divisor([0, 2, -100, 1], 3, class_weight=[1.0, 2.0, 0.5])
    3.5
    """
    t = np.asarray(targets)
    p = check_problem_shape(t.shape + (check_num_classes(num_classes),), t,
                            class_weight=class_weight, sample_weight=sample_weight,
                            ignore_index=ignore_index)
    if p.prob_targets:
        raise ValueError("mean_divisor takes class-index targets; the divisor of probability "
                         "targets is the number of rows")
    t = p.targets.reshape(-1)
    active = np.ones(t.size, bool) if p.ignore_index is None else t != p.ignore_index
    w = np.ones(p.n_classes) if p.class_weight is None else p.class_weight
    s = np.ones(p.n_rows) if p.sample_weight is None else p.sample_weight.reshape(-1)
    return _mean_divisor(p, active, s, w)


@fill_doc(CROSS_ENTROPY_OPTIONS, EXECUTION_OPTIONS)
def value_and_grad(logits: ArrayLike, targets: ArrayLike, *, label_smoothing: float = 0.0,
                   axis: int = -1, reduction: Reduction = "mean", smoothing: Smoothing = "uniform",
                   class_weight: ArrayLike | None = None, sample_weight: ArrayLike | None = None,
                   ignore_index: int | None = -100, z_loss: float = 0.0, kl: bool = False,
                   n_threads: int | None = None, out: None = None) -> tuple[Loss64, Float64Array]:
    """The loss and its gradient with respect to ``logits`` (float64), computed directly.

    The keywords are those of :func:`lsref.value_and_grad`, so that a call runs on either
    unchanged.

    Parameters
    ----------
    %(logits_oracle)s
    %(targets)s
    %(cross_entropy_options)s
    %(n_threads_oracle)s
    %(out_oracle)s

    Returns
    -------
    loss : numpy.float64 or ndarray of float64
        The reduced loss, or for ``reduction="none"`` the per-row losses, shaped like
        ``logits`` without the class axis.
    grad : ndarray of float64
        The gradient, shaped like ``logits``; for ``reduction="none"``, the gradient of
        the sum of the row losses. With ``reduction="mean"`` and ``D = 0`` (every row
        ignored) the loss is NaN and the gradient 0.

    Raises
    ------
    %(raises)s

    Notes
    -----
    %(notes_cross_entropy)s

    Examples
    --------
    >>> import numpy as np
    >>> from lsref import reference
    >>> loss, grad = reference.value_and_grad([[3.0, 1.0, 0.0]], [0], label_smoothing=0.1)
    >>> np.round(grad, 4)                     # softmax - q
    array([[-0.0895,  0.0809,  0.0087]])
    """
    kw = _strip(given(locals(), CROSS_ENTROPY_OPTIONS, EXECUTION_OPTIONS))
    return _reduce(*_rows(logits, targets, kw)[:4])


@fill_doc(CROSS_ENTROPY_OPTIONS, EXECUTION_OPTIONS)
def cross_entropy(logits: ArrayLike, targets: ArrayLike, *, label_smoothing: float = 0.0,
                  axis: int = -1, reduction: Reduction = "mean", smoothing: Smoothing = "uniform",
                  class_weight: ArrayLike | None = None, sample_weight: ArrayLike | None = None,
                  ignore_index: int | None = -100, z_loss: float = 0.0, kl: bool = False,
                  n_threads: int | None = None, out: None = None) -> Loss64:
    """The label-smoothed cross-entropy (float64).

    The keywords are those of :func:`lsref.cross_entropy` (and ``out=None``), so that a
    call runs on either unchanged.

    Parameters
    ----------
    %(logits_oracle)s
    %(targets)s
    %(cross_entropy_options)s
    %(n_threads_oracle)s
    %(out_oracle)s

    Returns
    -------
    loss : numpy.float64 or ndarray of float64
        As :func:`value_and_grad`.

    Raises
    ------
    %(raises)s

    Notes
    -----
    %(notes_cross_entropy)s

    Examples
    --------
    >>> from lsref import reference
    >>> round(float(reference.cross_entropy([[3.0, 1.0, 0.0]], [0])), 4)   # -log(0.8438)
    0.1698
    """
    return value_and_grad(logits, targets,
                          **given(locals(), CROSS_ENTROPY_OPTIONS, EXECUTION_OPTIONS))[0]


@fill_doc(CROSS_ENTROPY_OPTIONS, EXECUTION_OPTIONS)
def cross_entropy_grad(logits: ArrayLike, targets: ArrayLike, *, label_smoothing: float = 0.0,
                       axis: int = -1, reduction: Reduction = "mean",
                       smoothing: Smoothing = "uniform", class_weight: ArrayLike | None = None,
                       sample_weight: ArrayLike | None = None, ignore_index: int | None = -100,
                       z_loss: float = 0.0, kl: bool = False, n_threads: int | None = None,
                       out: None = None) -> Float64Array:
    """The gradient of :func:`cross_entropy` with respect to ``logits`` (float64).

    Parameters
    ----------
    %(logits_oracle)s
    %(targets)s
    %(cross_entropy_options)s
    %(n_threads_oracle)s
    %(out_oracle)s

    Returns
    -------
    grad : ndarray of float64
        As :func:`value_and_grad`.

    Raises
    ------
    %(raises)s

    Notes
    -----
    %(notes_cross_entropy)s

    Examples
    --------
    >>> import numpy as np
    >>> from lsref import reference
    >>> reference.cross_entropy_grad(np.zeros((2, 4)), [1, 3], label_smoothing=0.1)[0]
    array([ 0.1125, -0.3375,  0.1125,  0.1125])
    """
    return value_and_grad(logits, targets,
                          **given(locals(), CROSS_ENTROPY_OPTIONS, EXECUTION_OPTIONS))[1]


def _strip(kw, defaults=CROSS_ENTROPY_OPTIONS):
    """Accept the front door's execution-only keywords so calls can be copied verbatim."""
    kw = dict(kw)
    kw.pop("n_threads", None)
    if kw.pop("out", None) is not None:
        raise ValueError("the oracle allocates its own float64 result; out= is not accepted")
    unknown = set(kw) - set(defaults)
    if unknown:
        raise TypeError(f"unexpected keyword argument(s): {', '.join(sorted(unknown))}")
    if "smoothing" in kw:
        check_choice("smoothing", kw["smoothing"], SMOOTHINGS)
    return kw


# --- binary (sigmoid) cross-entropy -------------------------------------------------------

def _softplus(x):
    """log(1 + exp(x)), without overflow (NumPy's logaddexp(0, x))."""
    return np.logaddexp(0.0, x)


@fill_doc(BINARY_OPTIONS, EXECUTION_OPTIONS)
def binary_value_and_grad(logits: ArrayLike, targets: ArrayLike, *, label_smoothing: float = 0.0,
                          axis: int = -1, reduction: Reduction = "mean",
                          class_weight: ArrayLike | None = None,
                          sample_weight: ArrayLike | None = None, ignore_index: int | None = -100,
                          n_threads: int | None = None,
                          out: None = None) -> tuple[Loss64, Float64Array]:
    """Binary cross-entropy with logits and its gradient (float64), element by element.

    The keywords are those of :func:`lsref.binary_value_and_grad`, so that a call runs on
    either unchanged.

    Parameters
    ----------
    %(binary_logits)s
    %(binary_targets)s
    %(binary_label_smoothing)s
    %(binary_axis)s
    %(binary_reduction)s
    %(binary_class_weight)s
    %(binary_sample_weight)s
    %(binary_ignore_index)s
    %(n_threads_oracle)s
    %(out_oracle)s

    Returns
    -------
    loss : numpy.float64 or ndarray of float64
        The reduced loss, or for ``reduction="none"`` the per-element losses, shaped like
        ``logits``.
    grad : ndarray of float64
        The gradient, shaped like ``logits``.

    Raises
    ------
    %(raises)s

    Notes
    -----
    %(notes_binary)s

    Examples
    --------
    >>> from lsref import reference
    >>> loss, grad = reference.binary_value_and_grad([[0.0]], [[1.0]])
    >>> round(float(loss), 6), float(grad[0, 0])           # log 2, sigmoid(0) - 1
    (0.693147, -0.5)
    """
    kw = _strip(given(locals(), BINARY_OPTIONS, EXECUTION_OPTIONS), BINARY_OPTIONS)
    p = check_binary_problem(logits, targets, **kw)
    K, N = p.n_classes, p.n_rows
    x = p.logits.reshape(N, K).astype(np.float64)
    # the smoothed label: Keras's y (1 - eps) + eps/2 for binary labels, timm's
    # onehot (1 - eps) + eps/K for class indices (one-hot along the class axis)
    eps = p.label_smoothing
    a, b = 1.0 - eps, (eps / 2 if p.indices is None else eps / K)
    if p.indices is None:
        y = a * p.labels.reshape(N, K).astype(np.float64) + b
        active = np.ones(N, bool)
    else:
        t = p.indices.reshape(-1)
        active = np.ones(N, bool) if p.ignore_index is None else t != p.ignore_index
        onehot = np.zeros((N, K))
        onehot[np.flatnonzero(active), t[active]] = 1.0
        y = a * onehot + b
    w = np.ones(K) if p.class_weight is None else p.class_weight
    s = np.ones(N) if p.sample_weight is None else p.sample_weight.reshape(-1)
    c = s[:, None] * w[None, :] * active[:, None]
    with np.errstate(invalid="ignore", over="ignore"):
        # each term is skipped where its label factor is 0: 0 * inf (x = -+inf) is 0
        pos = np.where(y == 0.0, 0.0, y * _softplus(-x))
        neg = np.where(y == 1.0, 0.0, (1.0 - y) * _softplus(x))
        loss = c * (pos + neg)
        grad = c * (np.exp(-_softplus(-x)) - y)          # sigmoid(x) = exp(-softplus(-x))
    loss[~active] = 0.0
    grad[~active] = 0.0
    # "mean" is over the elements of the rows that count: weights scale the terms, not D
    loss, grad = _reduced(p.reduction, loss, grad, float(active.sum() * K))
    if p.reduction == "none":
        loss = np.moveaxis(loss.reshape(p.shape), -1, p.axis)
    return loss, np.moveaxis(grad.reshape(p.shape), -1, p.axis)


@fill_doc(BINARY_OPTIONS, EXECUTION_OPTIONS)
def binary_cross_entropy(logits: ArrayLike, targets: ArrayLike, *, label_smoothing: float = 0.0,
                         axis: int = -1, reduction: Reduction = "mean",
                         class_weight: ArrayLike | None = None,
                         sample_weight: ArrayLike | None = None, ignore_index: int | None = -100,
                         n_threads: int | None = None, out: None = None) -> Loss64:
    """Binary cross-entropy with logits (float64).

    The loss of :func:`binary_value_and_grad`, without the gradient.

    Parameters
    ----------
    %(binary_logits)s
    %(binary_targets)s
    %(binary_label_smoothing)s
    %(binary_axis)s
    %(binary_reduction)s
    %(binary_class_weight)s
    %(binary_sample_weight)s
    %(binary_ignore_index)s
    %(n_threads_oracle)s
    %(out_oracle)s

    Returns
    -------
    loss : numpy.float64 or ndarray of float64
        As :func:`binary_value_and_grad`.

    Raises
    ------
    %(raises)s

    Notes
    -----
    %(notes_binary)s

    Examples
    --------
    >>> from lsref import reference
    >>> round(float(reference.binary_cross_entropy([0.0, 0.0], [1.0, 0.0])), 6)   # log 2
    0.693147
    """
    return binary_value_and_grad(logits, targets,
                                 **given(locals(), BINARY_OPTIONS, EXECUTION_OPTIONS))[0]


@fill_doc(BINARY_OPTIONS, EXECUTION_OPTIONS)
def binary_cross_entropy_grad(logits: ArrayLike, targets: ArrayLike, *,
                              label_smoothing: float = 0.0, axis: int = -1,
                              reduction: Reduction = "mean", class_weight: ArrayLike | None = None,
                              sample_weight: ArrayLike | None = None,
                              ignore_index: int | None = -100, n_threads: int | None = None,
                              out: None = None) -> Float64Array:
    """The gradient of :func:`binary_cross_entropy` with respect to ``logits`` (float64).

    Parameters
    ----------
    %(binary_logits)s
    %(binary_targets)s
    %(binary_label_smoothing)s
    %(binary_axis)s
    %(binary_reduction)s
    %(binary_class_weight)s
    %(binary_sample_weight)s
    %(binary_ignore_index)s
    %(n_threads_oracle)s
    %(out_oracle)s

    Returns
    -------
    grad : ndarray of float64
        As :func:`binary_value_and_grad`.

    Raises
    ------
    %(raises)s

    Notes
    -----
    %(notes_binary)s

    Examples
    --------
    >>> from lsref import reference
    >>> reference.binary_cross_entropy_grad([0.0, 0.0], [1.0, 0.0])   # / 2 elements
    array([-0.25,  0.25])
    """
    return binary_value_and_grad(logits, targets,
                                 **given(locals(), BINARY_OPTIONS, EXECUTION_OPTIONS))[1]


# --- the linear layer + loss ---------------------------------------------------------------

@fill_doc(LINEAR_OPTIONS, N_THREADS, dict(chunk_size=None))
def linear_value_and_grad(h: ArrayLike, weight: ArrayLike, targets: ArrayLike, *,
                          bias: ArrayLike | None = None, label_smoothing: float = 0.0,
                          reduction: Reduction = "mean", smoothing: Smoothing = "uniform",
                          class_weight: ArrayLike | None = None,
                          sample_weight: ArrayLike | None = None, ignore_index: int | None = -100,
                          z_loss: float = 0.0, kl: bool = False, n_threads: int | None = None,
                          chunk_size: int | None = None
                          ) -> tuple[Loss64, Float64Array, Float64Array, Float64Array | None]:
    """The oracle of :func:`lsref.linear_value_and_grad` (float64), the logits made whole.

    The logits ``h @ weight.T + bias``, then :func:`value_and_grad` of them and the chain
    rule, ``dh = G weight``, ``dweight = G^T h``, ``dbias = sum_rows G``.

    The keywords are those of :func:`lsref.linear_value_and_grad`, so that a call runs on
    either unchanged (``n_threads`` and ``chunk_size`` are accepted and unused).

    Parameters
    ----------
    %(h)s
    %(weight)s
    %(targets_linear)s
    %(bias)s
    %(linear_options)s
    %(n_threads_oracle)s
    %(chunk_size)s

    Returns
    -------
    loss : numpy.float64 or ndarray of float64
        As :func:`value_and_grad` of the logits.
    dh, dweight : ndarray of float64
        The gradients with respect to ``h`` and ``weight``, of their shapes.
    dbias : ndarray of float64 or None
        The gradient with respect to ``bias``; None without a bias.

    Raises
    ------
    %(raises)s

    Examples
    --------
    >>> import numpy as np
    >>> from lsref import reference
    >>> h, W = np.array([[1.0, 0.0]]), np.array([[2.0, 0.0], [0.0, 0.0]])
    >>> loss, dh, dW, db = reference.linear_value_and_grad(h, W, [0], bias=np.zeros(2))
    >>> float(np.round(loss, 4)), dh.round(4).tolist(), db.round(4).tolist()
    (0.1269, [[-0.2384, 0.0]], [-0.1192, 0.1192])
    """
    options = {name: value for name, value in locals().items() if name in LINEAR_OPTIONS
               and name != "bias"}
    h, W, b, p = check_linear(h, weight, bias, targets, options)
    d, V, N = h.shape[-1], W.shape[0], p.n_rows
    H = h.reshape(N, d).astype(np.float64)
    W = W.astype(np.float64)
    z = H @ W.T
    if b is not None:
        z = z + b.astype(np.float64)
    loss, G = value_and_grad(z.reshape(h.shape[:-1] + (V,)), targets, **options)
    G = G.reshape(N, V)
    return (loss, (G @ W).reshape(h.shape), G.T @ H,
            None if b is None else G.sum(axis=0))


@fill_doc(LINEAR_OPTIONS, N_THREADS, dict(chunk_size=None))
def linear_cross_entropy(h: ArrayLike, weight: ArrayLike, targets: ArrayLike, *,
                         bias: ArrayLike | None = None, label_smoothing: float = 0.0,
                         reduction: Reduction = "mean", smoothing: Smoothing = "uniform",
                         class_weight: ArrayLike | None = None,
                         sample_weight: ArrayLike | None = None, ignore_index: int | None = -100,
                         z_loss: float = 0.0, kl: bool = False, n_threads: int | None = None,
                         chunk_size: int | None = None) -> Loss64:
    """The oracle of :func:`lsref.linear_cross_entropy` (float64).

    The loss of :func:`linear_value_and_grad`.

    Parameters
    ----------
    %(h)s
    %(weight)s
    %(targets_linear)s
    %(bias)s
    %(linear_options)s
    %(n_threads_oracle)s
    %(chunk_size)s

    Returns
    -------
    loss : numpy.float64 or ndarray of float64
        As :func:`cross_entropy` of the logits.

    Raises
    ------
    %(raises)s

    Examples
    --------
    >>> import numpy as np
    >>> from lsref import reference
    >>> float(np.round(reference.linear_cross_entropy(np.eye(2), np.eye(2), [0, 1]), 4))
    0.3133
    """
    return linear_value_and_grad(**locals())[0]
