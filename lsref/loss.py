"""The front door: validation, layout, dtype policy, ``out=``, threads and reduction.

This module never loops over elements. It checks the arguments (``lsref._validation``), moves
the class axis last and hands the kernel C-contiguous ``(n_rows, K)`` rows, copying only when
the caller's layout is not already that. The kernel writes per-row losses (in float64) and
gradient rows; the reduction over rows happens here, with NumPy's pairwise summation, so the
result does not depend on the number of threads.
"""
import os

import numpy as np

from . import _kernel
from ._validation import check_axis, check_float_array, check_n_threads, check_problem

__all__ = ["cross_entropy", "cross_entropy_grad", "value_and_grad", "logsumexp",
           "log_softmax", "softmax"]

_NATIVE = (np.dtype(np.float32), np.dtype(np.float64))


def _default_threads():
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _threads(n_threads):
    n = check_n_threads(n_threads)
    return _default_threads() if n is None else n


def _compute_dtype(dtype):
    """float32 and float64 run natively; narrower floats are computed in float32."""
    return dtype if dtype in _NATIVE else np.dtype(np.float32)


def _rows_view(a, K, dtype):
    """``a`` (class axis already last) as C-contiguous (n_rows, K) of ``dtype``; no copy if it
    already is one."""
    return np.ascontiguousarray(a.reshape(-1, K) if a.flags.c_contiguous else a,
                                dtype=dtype).reshape(-1, K)


def _check_out(out, logits, dtype, others):
    """The caller's out= buffer: the logits' shape and ``dtype``, writeable, overlapping no
    input except (exactly) the logits themselves."""
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a numpy.ndarray, got {type(out).__name__}")
    if out.shape != logits.shape:
        raise ValueError(f"out must have the logits' shape {logits.shape}, got {out.shape}")
    if out.dtype != dtype:
        raise ValueError(f"out must have dtype {dtype} (the gradient's dtype), got {out.dtype}")
    if not out.flags.writeable:
        raise ValueError("out is read-only")
    for name, arr in others:
        if arr is not None and np.may_share_memory(out, arr) and np.shares_memory(out, arr):
            raise ValueError(f"out overlaps {name}, which it must not overwrite")
    if np.may_share_memory(out, logits) and np.shares_memory(out, logits):
        same = (out.__array_interface__["data"][0] == logits.__array_interface__["data"][0]
                and out.strides == logits.strides)
        if not same:
            raise ValueError("out overlaps logits without being the logits array itself; pass "
                             "out=logits for an in-place gradient, or a separate buffer")


def _run(logits, targets, *, want_grad, out, n_threads, **kw):
    p = check_problem(logits, targets, **kw)
    nt = _threads(n_threads)
    in_dtype = p.logits.dtype
    dtype = _compute_dtype(in_dtype)
    K, N = p.n_classes, p.n_rows

    if out is not None:
        if not want_grad:
            raise TypeError("out= is only accepted where a gradient is computed")
        _check_out(out, np.moveaxis(p.logits, -1, p.axis),
                   in_dtype, [("targets", targets), ("class_weight", kw.get("class_weight")),
                              ("sample_weight", kw.get("sample_weight"))])

    z = _rows_view(p.logits, K, dtype)
    cw = None if p.class_weight is None else np.ascontiguousarray(p.class_weight)
    W = float(K) if cw is None else float(np.sum(cw))
    sw = None if p.sample_weight is None else np.ascontiguousarray(p.sample_weight.reshape(-1))

    if p.prob_targets:
        targets_rows = _rows_view(p.targets, K, dtype)
        active = None
    else:
        targets_rows = np.ascontiguousarray(p.targets.reshape(-1), dtype=np.int64)
        active = None if p.ignore_index is None else targets_rows != p.ignore_index

    # The "mean" divisor D (SEMANTICS.md, "Reductions"), known before the kernel runs so that
    # the gradient rows can carry 1/D.
    scale, divisor = 1.0, None
    if p.reduction == "mean":
        if p.prob_targets:
            divisor = float(N)
        else:
            t_kept = targets_rows if active is None else targets_rows[active]
            if sw is None and cw is None:
                divisor = float(t_kept.size)
            else:
                s_kept = np.ones(t_kept.size) if sw is None else (
                    sw if active is None else sw[active])
                divisor = float(np.sum(s_kept if cw is None else s_kept * cw[t_kept]))
        scale = 1.0 / divisor if divisor != 0 else 1.0

    # Where the gradient goes: straight into out= when that buffer already has the kernel's
    # row layout (this covers out=logits, an in-place gradient); otherwise into a new row
    # buffer, copied into out= afterwards. The kernel works in place only when the caller
    # asked for it: in place, a row's loss is refined from the stored (float) exps, which can
    # differ from the loss-only result in the last bit.
    grad_rows, direct = None, False
    if want_grad:
        if out is not None and out.dtype == dtype:
            o = np.moveaxis(out, p.axis, -1)
            if o.flags.c_contiguous:
                grad_rows, direct = o.reshape(-1, K), True
        if grad_rows is None:
            grad_rows = np.empty((N, K), dtype)

    row_loss = np.empty(N, np.float64)
    if p.prob_targets:
        a, beta = 1.0 - p.label_smoothing, p.label_smoothing / K
        _kernel.ce_prob(z, targets_rows, a, beta, cw, W, sw, scale, p.z_loss,
                        row_loss, grad_rows, nt)
    else:
        q_t, beta = p.q_target_and_beta
        _kernel.ce_index(z, targets_rows, q_t, beta, cw, W, sw, scale, p.z_loss,
                         -1 if p.ignore_index is None else p.ignore_index,
                         p.ignore_index is not None, row_loss, grad_rows, nt)

    if p.reduction == "none":
        loss = row_loss.reshape(p.batch_shape).astype(in_dtype)
    elif p.reduction == "sum":
        loss = in_dtype.type(np.sum(row_loss))
    else:
        # row_loss already carries 1/D; D = 0 (empty batch, all ignored) gives NaN like PyTorch
        loss = in_dtype.type(np.sum(row_loss)) if divisor != 0 else in_dtype.type(np.nan)

    if not want_grad:
        return loss, None
    if direct:
        return loss, out
    grad = np.moveaxis(grad_rows.reshape(p.batch_shape + (K,)), -1, p.axis)
    if out is not None:
        np.copyto(out, grad, casting="unsafe")
        return loss, out
    return loss, grad.astype(in_dtype, copy=False)


_DOC_KEYWORDS = """
    Parameters
    ----------
    logits : array_like of float, any shape with a class axis
        Unnormalised scores. float32 and float64 are computed natively; float16 is computed
        in float32; integers are widened to float64.
    targets : array_like
        Class indices (an integer array shaped like ``logits`` without the class axis), or
        probabilities (a float array shaped like ``logits``).
    label_smoothing : float in [0, 1], default=0.0
        ``eps``: the target becomes ``(1 - eps) * onehot + eps / K`` (``smoothing="uniform"``).
    axis : int, default=-1
        The class axis (PyTorch's ``(N, C, d1, ...)`` layout is ``axis=1``).
    reduction : {"mean", "sum", "none"}, default="mean"
        ``"mean"`` divides the sum by ``D``: the number of non-ignored rows (times their
        sample and target-class weights), or the number of rows for probability targets.
    smoothing : {"uniform", "others"}, default="uniform"
        ``"uniform"`` puts ``eps / K`` on every class (PyTorch, Keras, Optax, timm);
        ``"others"`` puts ``eps / (K - 1)`` on every wrong class and ``1 - eps`` on the
        target (fairseq >= 0.12, T5X). Class-index targets only.
    class_weight : array_like of shape (K,), optional
        Per-class weights, inside both the target and the smoothing term (PyTorch's
        ``weight``).
    sample_weight : array_like shaped like ``logits`` without the class axis, optional
        Per-row weights.
    ignore_index : int or None, default=-100
        Rows whose class-index target equals it have loss 0, gradient 0, and are left out
        of the ``"mean"`` divisor.
    z_loss : float >= 0, default=0.0
        Adds ``z_loss * lse**2`` per row.
    n_threads : int, optional
        Threads for the kernel; default: every core this process may use. Results are
        bit-identical for every value.
"""

_DOC_NOTES = """
    Notes
    -----
    For one row ``z`` with smoothed target ``q``, ``lse = log(sum(exp(z)))`` and
    ``p = exp(z - lse)``::

        loss_i = sum_k w_k q_k (lse - z_k) + z_loss * lse**2          (times sample_weight_i)
        dloss_i/dz_j = (sum_k w_k q_k) p_j - w_j q_j + 2 z_loss lse p_j

    A row whose logits hold +inf or NaN, or are all -inf, gets NaN (that row only). A
    masked class (``z_k = -inf``) that receives smoothing mass makes the loss +inf; its
    gradient stays finite. See SEMANTICS.md for the whole special-value policy.
"""


def cross_entropy(logits, targets, *, label_smoothing=0.0, axis=-1, reduction="mean",
                  smoothing="uniform", class_weight=None, sample_weight=None,
                  ignore_index=-100, z_loss=0.0, n_threads=None):
    loss, _ = _run(logits, targets, want_grad=False, out=None, n_threads=n_threads,
                   label_smoothing=label_smoothing, axis=axis, reduction=reduction,
                   smoothing=smoothing, class_weight=class_weight,
                   sample_weight=sample_weight, ignore_index=ignore_index, z_loss=z_loss)
    return loss


cross_entropy.__doc__ = """Label-smoothed softmax cross-entropy.
""" + _DOC_KEYWORDS + """
    Returns
    -------
    loss : scalar of the logits' dtype, or an array shaped like ``logits`` without the class
        axis for ``reduction="none"``.
""" + _DOC_NOTES + """
    Examples
    --------
    >>> import numpy as np, lsref
    >>> logits = np.array([[3.0, 1.0, 0.0]])
    >>> round(float(lsref.cross_entropy(logits, [0])), 4)          # -log(0.8438)
    0.1698
    >>> # q = [0.9333, 0.0333, 0.0333]: 0.9333*0.1698 + 0.0333*(2.1698 + 3.1698)
    >>> round(float(lsref.cross_entropy(logits, [0], label_smoothing=0.1)), 4)
    0.3365
"""


def value_and_grad(logits, targets, *, label_smoothing=0.0, axis=-1, reduction="mean",
                   smoothing="uniform", class_weight=None, sample_weight=None,
                   ignore_index=-100, z_loss=0.0, n_threads=None, out=None):
    return _run(logits, targets, want_grad=True, out=out, n_threads=n_threads,
                label_smoothing=label_smoothing, axis=axis, reduction=reduction,
                smoothing=smoothing, class_weight=class_weight,
                sample_weight=sample_weight, ignore_index=ignore_index, z_loss=z_loss)


value_and_grad.__doc__ = """The loss and its gradient with respect to ``logits``, in one pass.
""" + _DOC_KEYWORDS + """    out : ndarray, optional
        Where to write the gradient: a buffer of the logits' shape and dtype, or the logits
        array itself (an in-place gradient that needs no extra memory).

    Returns
    -------
    loss : as :func:`cross_entropy`.
    grad : ndarray of the logits' shape and dtype (``out`` when given). For
        ``reduction="none"`` it is the gradient of the sum of the row losses.
""" + _DOC_NOTES + """
    Examples
    --------
    >>> import numpy as np, lsref
    >>> loss, grad = lsref.value_and_grad(np.array([[3.0, 1.0, 0.0]]), [0],
    ...                                   label_smoothing=0.1)
    >>> np.round(grad, 4)                     # softmax - q
    array([[-0.0895,  0.0809,  0.0087]])
    >>> bool(np.isclose(grad.sum(), 0))
    True
"""


def cross_entropy_grad(logits, targets, *, label_smoothing=0.0, axis=-1, reduction="mean",
                       smoothing="uniform", class_weight=None, sample_weight=None,
                       ignore_index=-100, z_loss=0.0, n_threads=None, out=None):
    return value_and_grad(logits, targets, label_smoothing=label_smoothing, axis=axis,
                          reduction=reduction, smoothing=smoothing, class_weight=class_weight,
                          sample_weight=sample_weight, ignore_index=ignore_index,
                          z_loss=z_loss, n_threads=n_threads, out=out)[1]


cross_entropy_grad.__doc__ = """The gradient of :func:`cross_entropy` with respect to
``logits`` (the fused pass of :func:`value_and_grad`, loss discarded).

Takes the keywords of :func:`value_and_grad`, ``out=`` included.

Examples
--------
>>> import numpy as np, lsref
>>> g = lsref.cross_entropy_grad(np.zeros((2, 4)), [1, 3], label_smoothing=0.1)
>>> g[0]                                  # (softmax - q) / 2 rows
array([ 0.1125, -0.3375,  0.1125,  0.1125])
"""


# --- log-sum-exp and softmax ---------------------------------------------------------------

def _row_layout(x, axis):
    x = check_float_array("x", x)
    if x.ndim == 0:
        raise ValueError("x must have at least one dimension, got a scalar")
    axis = check_axis(axis, x.ndim)
    xm = np.moveaxis(x, axis, -1)
    return x, axis, xm, _rows_view(xm, xm.shape[-1], _compute_dtype(x.dtype))


def logsumexp(x, axis=-1, keepdims=False, *, n_threads=None):
    """``log(sum(exp(x), axis=axis))``, computed stably in one kernel pass.

    Sums are accumulated in float64; the result has the input's dtype. Special values
    follow ``scipy.special.logsumexp``: a slice of ``-inf`` gives ``-inf``, a slice
    holding ``+inf`` gives ``+inf``, a slice holding NaN gives NaN.

    Parameters
    ----------
    x : array_like of float
    axis : int, default=-1
    keepdims : bool, default=False
    n_threads : int, optional

    Examples
    --------
    >>> import numpy as np, lsref
    >>> x = np.array([[1000.0, 1000.0], [-np.inf, -np.inf]])
    >>> lsref.logsumexp(x)                    # np.log(np.sum(np.exp(x))) overflows
    array([1000.69314718,         -inf])
    """
    x, axis, xm, rows = _row_layout(x, axis)
    out = np.empty(rows.shape[0], np.float64)
    if rows.shape[1] == 0:
        out.fill(-np.inf)
    else:
        _kernel.logsumexp_rows(rows, out, _threads(n_threads))
    out = out.reshape(xm.shape[:-1]).astype(x.dtype)
    return np.expand_dims(out, axis) if keepdims else out


def _softmax(x, axis, n_threads, log_space):
    x, axis, xm, rows = _row_layout(x, axis)
    res = np.empty(rows.shape, rows.dtype)
    _kernel.softmax_rows(rows, res, log_space, _threads(n_threads))
    return np.moveaxis(res.reshape(xm.shape), -1, axis).astype(x.dtype, copy=False)


def softmax(x, axis=-1, *, n_threads=None):
    """``exp(x - logsumexp(x))`` along ``axis``.

    Examples
    --------
    >>> import numpy as np, lsref
    >>> np.round(lsref.softmax(np.array([3.0, 1.0, 0.0])), 3)
    array([0.844, 0.114, 0.042])
    """
    return _softmax(x, axis, n_threads, False)


def log_softmax(x, axis=-1, *, n_threads=None):
    """``x - logsumexp(x)`` along ``axis``, without forming ``exp(x)`` overflow.

    Examples
    --------
    >>> import numpy as np, lsref
    >>> lsref.log_softmax(np.array([1000.0, 1000.0]))
    array([-0.69314718, -0.69314718])
    """
    return _softmax(x, axis, n_threads, True)
