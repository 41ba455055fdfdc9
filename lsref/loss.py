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
from ._validation import (as_array, check_axis, check_binary_problem, check_float_array,
                          check_n_threads, check_problem, is_bfloat16)

__all__ = ["cross_entropy", "cross_entropy_grad", "value_and_grad", "logsumexp",
           "log_softmax", "softmax", "binary_cross_entropy", "binary_cross_entropy_grad",
           "binary_value_and_grad"]


def _default_threads():
    if not _kernel.OPENMP_ENABLED:
        return 1
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


# Below this many logits the default is one thread. The work is then shorter than waking a
# thread team, and in a training loop that alternates with NumPy's BLAS calls the two thread
# pools spin-wait against each other: `lsref demo`'s MLP (1258 x 10 logits per evaluation;
# its progress line prints the training time) is such a loop. Results are bit-identical for
# every thread count, so this changes only the time.
SMALL_PROBLEM = 32768


def _threads(n_threads, size=None):
    n = check_n_threads(n_threads)
    if n is not None:
        return n
    return 1 if size is not None and size < SMALL_PROBLEM else _default_threads()


# --- storage: what the kernel reads and writes ---------------------------------------------

def _is_half(dtype):
    return dtype == np.float16 or is_bfloat16(dtype)


def _native_dtype(dtype):
    return dtype if dtype.isnative else dtype.newbyteorder("=")


def _native_order(a):
    """``a`` in native byte order: big-endian ``>f4`` on a little-endian machine is float32
    (converted, values unchanged), so it follows float32's rules, not float64's."""
    return a if a.dtype.isnative else a.astype(_native_dtype(a.dtype))


def _native(a):
    """``a`` in a dtype the kernel stores natively, in native byte order: float32, float64,
    float16, bfloat16 (others, e.g. longdouble, are converted to float64)."""
    a = _native_order(a)
    if a.dtype in (np.float32, np.float64) or _is_half(a.dtype):
        return a
    return a.astype(np.float64)


def _bits(a):
    """The kernel's view of ``a``: 16-bit floats as their bits (float16 as uint16, bfloat16
    as int16; no copy), float32/float64 as they are."""
    if a.dtype == np.float16:
        return a.view(np.uint16)
    if is_bfloat16(a.dtype):
        return a.view(np.int16)
    return a


def _as_rows(a):
    """(n_rows, K) of an array whose last axis is the class axis (an explicit row count, so
    that K = 0 works: reshape(-1, 0) cannot infer it)."""
    return a.reshape(int(np.prod(a.shape[:-1], dtype=np.int64)), a.shape[-1])


def _rows(a, K):
    """``a`` (native dtype, class axis last) as C-contiguous (n_rows, K) kernel storage; no
    copy when it already is."""
    return _as_rows(np.ascontiguousarray(_bits(a)))


def _real_rows(a, K):
    """Targets read as real numbers (probabilities, binary labels): float32 or float64 rows;
    other dtypes are converted (16-bit to float32, integers and booleans to float64)."""
    a = _native_order(a)
    if a.dtype not in (np.float32, np.float64):
        a = a.astype(np.float32 if _is_half(a.dtype) else np.float64)
    return _as_rows(np.ascontiguousarray(a))


_INT64 = np.iinfo(np.int64)


def _index_rows(targets, ignore_index):
    """Class-index targets as the kernel's int64 rows, with (ignore value, ignoring?, the
    rows that count or None). An ignore_index that no int64 can equal (2**63, say) is left
    to NumPy's exact comparison: the rows equal to it (possible only for uint64 targets)
    are marked -1 for the kernel, and if there are none, nothing is ignored."""
    t = targets.reshape(-1)
    if ignore_index is None:
        return np.ascontiguousarray(t, dtype=np.int64), -1, False, None
    if _INT64.min <= ignore_index <= _INT64.max:
        rows = np.ascontiguousarray(t, dtype=np.int64)
        return rows, ignore_index, True, rows != ignore_index
    active = t != ignore_index
    if active.all():
        return np.ascontiguousarray(t, dtype=np.int64), -1, False, None
    rows = t.astype(np.int64)                 # the ignored values wrap; they are marked next
    rows[~active] = -1                        # the validated targets are in [0, K) elsewhere
    return rows, -1, True, active


def _check_out(out, logits, dtype, others):
    """The caller's out= buffer: the logits' shape, the gradient's dtype (the logits' dtype,
    or float32 for 16-bit logits), writeable, overlapping no input except (exactly) the
    logits themselves."""
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a numpy.ndarray, got {type(out).__name__}")
    as_array("out", out)                  # a masked buffer is refused, as any masked input
    if out.shape != logits.shape:
        raise ValueError(f"out must have the logits' shape {logits.shape}, got {out.shape}")
    allowed = [dtype] + ([np.dtype(np.float32)] if _is_half(dtype) else [])
    if _native_dtype(out.dtype) not in allowed:         # either byte order is written
        names = " or ".join(str(d) for d in allowed)
        raise ValueError(f"out must have dtype {names} (the gradient's dtype), got "
                         f"{out.dtype}")
    if not out.flags.writeable:
        raise ValueError("out is read-only")
    for name, arr in others:
        if isinstance(arr, np.ndarray) and np.may_share_memory(out, arr) \
                and np.shares_memory(out, arr):
            raise ValueError(f"out overlaps {name}, which it must not overwrite")
    if np.may_share_memory(out, logits) and np.shares_memory(out, logits):
        same = (out.__array_interface__["data"][0] == logits.__array_interface__["data"][0]
                and out.strides == logits.strides and out.dtype == logits.dtype)
        if not same:
            raise ValueError("out overlaps logits without being the logits array itself; pass "
                             "out=logits for an in-place gradient, or a separate buffer")


def _grad_buffer(out, axis, shape_last, dtype, inputs):
    """(kernel rows, returned array, copy-back target). The gradient goes straight into
    out= when that buffer already has the kernel's row layout (this covers out=logits, an
    in-place gradient); otherwise into a new buffer (copied into out= afterwards)."""
    if out is not None:
        _check_out(out, *inputs)
        o = np.moveaxis(out, axis, -1)
        if o.flags.c_contiguous and o.dtype.isnative:
            return _as_rows(_bits(o)), out, None
        buf = np.empty(shape_last, _native_dtype(out.dtype))
        return _as_rows(_bits(buf)), None, (out, buf)
    buf = np.empty(shape_last, dtype)
    return _as_rows(_bits(buf)), np.moveaxis(buf, -1, axis), None


def _finish_grad(ret, copy_back, axis):
    if copy_back is not None:
        out, buf = copy_back
        np.copyto(out, np.moveaxis(buf, -1, axis))
        return out
    return ret


def _loss_dtype(dtype):
    """The loss is returned in the logits' dtype, except for 16-bit logits: their loss is
    computed in float32 and returned so (float16 would overflow at 65504 and round a loss
    of 15.52 to +-0.008; a loss costs N numbers at most)."""
    return np.dtype(np.float32) if _is_half(dtype) else dtype


def _reduce(reduction, row_loss, divisor, batch_shape, dtype):
    if reduction == "none":
        return row_loss.reshape(batch_shape).astype(dtype)
    total = np.sum(row_loss)              # pairwise, outside the parallel loop
    if reduction == "mean" and divisor == 0:
        return dtype.type(np.nan)         # empty batch or every target ignored, like PyTorch
    return dtype.type(total)              # the rows already carry 1/D for "mean"


def _start(p, want_grad, out, n_threads):
    """What every front-door call needs first: the thread count and the logits in a dtype the
    kernel stores natively."""
    if out is not None and not want_grad:
        raise TypeError("out= is only accepted where a gradient is computed")
    zn = _native(p.logits)
    return _threads(n_threads, zn.size), zn, zn.dtype, p.n_classes, p.n_rows


def _run(logits, targets, *, want_grad, out, n_threads, **kw):
    p = check_problem(logits, targets, **kw)
    nt, zn, dtype, K, N = _start(p, want_grad, out, n_threads)
    z = _rows(zn, K)
    cw = None if p.class_weight is None else np.ascontiguousarray(p.class_weight)
    W = float(K) if cw is None else float(np.sum(cw))
    sw = None if p.sample_weight is None else np.ascontiguousarray(p.sample_weight.reshape(-1))
    if p.prob_targets:
        targets_rows, active = _real_rows(p.targets, K), None
    else:
        targets_rows, ignore, ignoring, active = _index_rows(p.targets, p.ignore_index)

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

    grad_rows = ret = copy_back = None
    if want_grad:
        grad_rows, ret, copy_back = _grad_buffer(
            out, p.axis, p.logits.shape, dtype,
            (np.moveaxis(p.logits, -1, p.axis), dtype,
             [("targets", targets), ("class_weight", kw.get("class_weight")),
              ("sample_weight", kw.get("sample_weight"))]))

    row_loss = np.empty(N, np.float64)
    if p.prob_targets:
        a, beta = 1.0 - p.label_smoothing, p.label_smoothing / K
        _kernel.ce_prob(z, targets_rows, a, beta, cw, W, sw, scale, p.z_loss, p.kl,
                        row_loss, grad_rows, nt)
    else:
        q_t, beta = p.q_target_and_beta
        # O(N) scratch for the across-rows kernel of small K (float32, no class weights)
        redo = (np.empty(N, np.uint8) if dtype == np.float32 and cw is None and K <= 16
                else None)
        _kernel.ce_index(z, targets_rows, q_t, beta, cw, W, sw, scale, p.z_loss, p.kl,
                         ignore, ignoring, row_loss, grad_rows, nt, redo)

    loss = _reduce(p.reduction, row_loss, divisor, p.batch_shape, _loss_dtype(dtype))
    return loss, (_finish_grad(ret, copy_back, p.axis) if want_grad else None)


_DOC_KEYWORDS = """
    Parameters
    ----------
    logits : array_like of float, any shape with a class axis
        Unnormalised scores. float64 is computed in double; float32, float16 and bfloat16
        (``ml_dtypes``) are read as they are stored and computed in float32 with every sum in
        double; integers are widened to float64.
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
        of the ``"mean"`` divisor. Any integer is accepted; one that no target can equal
        (``2**63``, say) ignores nothing.
    z_loss : float >= 0, default=0.0
        Adds ``z_loss * lse**2`` per row (T5X, PaLM); its gradient is ``2 z_loss lse p``.
    kl : bool, default=False
        The KL form (T5X): subtract the target entropy ``H(q) = -sum_k w_k q_k log q_k``
        from each row, so a perfect prediction has loss 0. The gradient does not change.
    n_threads : int in [1, lsref.MAX_THREADS], optional
        Threads for the kernel; default: every core this process may use (one for fewer
        than 32768 logits, where threads cost more than they save). Results are
        bit-identical for every value. At most ``lsref.MAX_THREADS`` (256): each thread
        reserves its stack, and the cap keeps a call inside a 4 GiB address space; a larger
        value raises ``ValueError``.
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
                  ignore_index=-100, z_loss=0.0, kl=False, n_threads=None):
    loss, _ = _run(logits, targets, want_grad=False, out=None, n_threads=n_threads,
                   label_smoothing=label_smoothing, axis=axis, reduction=reduction,
                   smoothing=smoothing, class_weight=class_weight,
                   sample_weight=sample_weight, ignore_index=ignore_index, z_loss=z_loss,
                   kl=kl)
    return loss


cross_entropy.__doc__ = """Label-smoothed softmax cross-entropy.
""" + _DOC_KEYWORDS + """
    Returns
    -------
    loss : scalar of the logits' dtype (float32 for float16/bfloat16 logits), or an array
        shaped like ``logits`` without the class axis for ``reduction="none"``.
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
                   ignore_index=-100, z_loss=0.0, kl=False, n_threads=None, out=None):
    return _run(logits, targets, want_grad=True, out=out, n_threads=n_threads,
                label_smoothing=label_smoothing, axis=axis, reduction=reduction,
                smoothing=smoothing, class_weight=class_weight,
                sample_weight=sample_weight, ignore_index=ignore_index, z_loss=z_loss,
                kl=kl)


value_and_grad.__doc__ = """The loss and its gradient with respect to ``logits``, in one pass.
""" + _DOC_KEYWORDS + """    out : ndarray, optional
        Where to write the gradient: a buffer of the logits' shape and dtype (or float32,
        for float16/bfloat16 logits), or the logits array itself (an in-place gradient
        that needs no extra memory).

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
                       ignore_index=-100, z_loss=0.0, kl=False, n_threads=None, out=None):
    return value_and_grad(logits, targets, label_smoothing=label_smoothing, axis=axis,
                          reduction=reduction, smoothing=smoothing, class_weight=class_weight,
                          sample_weight=sample_weight, ignore_index=ignore_index,
                          z_loss=z_loss, kl=kl, n_threads=n_threads, out=out)[1]


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
    """(x, axis, x with that axis last, its kernel rows, was x 0-d). Degenerate shapes as
    scipy.special has them: a 0-d x is a slice of one element (axis -1 or 0), and an empty
    axis or an empty batch is a (n_rows, 0) or (0, K) array of rows."""
    x = _native(check_float_array("x", x))
    scalar = x.ndim == 0
    if scalar:
        x = x.reshape(1)
    axis = check_axis(axis, x.ndim)
    xm = np.moveaxis(x, axis, -1)
    return x, axis, xm, _rows(xm, xm.shape[-1]), scalar


def logsumexp(x, axis=-1, keepdims=False, *, n_threads=None):
    """``log(sum(exp(x), axis=axis))``, computed stably in one kernel pass.

    Sums are accumulated in float64; the result has the input's dtype (in native byte
    order). Special values and degenerate shapes follow ``scipy.special.logsumexp``: a slice
    of ``-inf`` gives ``-inf``, a slice holding ``+inf`` gives ``+inf``, a slice holding NaN
    gives NaN; an empty slice (``axis`` of length 0) gives ``-inf``, the log of an empty
    sum; a 0-d ``x`` is its own log-sum-exp (with ``keepdims=True``, shape ``(1,)``).

    Parameters
    ----------
    x : array_like of float
    axis : int, default=-1
    keepdims : bool, default=False
    n_threads : int, optional
        As :func:`cross_entropy`: at most ``lsref.MAX_THREADS``.

    Examples
    --------
    >>> import numpy as np, lsref
    >>> x = np.array([[1000.0, 1000.0], [-np.inf, -np.inf]])
    >>> lsref.logsumexp(x)                    # np.log(np.sum(np.exp(x))) overflows
    array([1000.69314718,         -inf])
    """
    nt = check_n_threads(n_threads)
    x, axis, xm, rows, _ = _row_layout(x, axis)
    out = np.empty(rows.shape[0], np.float64)
    if rows.shape[1] == 0:
        out.fill(-np.inf)                 # the log of an empty sum
    elif rows.shape[0]:
        _kernel.logsumexp_rows(rows, out, _threads(nt, rows.size))
    out = out.reshape(xm.shape[:-1]).astype(x.dtype)
    return np.expand_dims(out, axis) if keepdims else out


def _softmax(x, axis, n_threads, log_space):
    nt = check_n_threads(n_threads)
    x, axis, xm, rows, scalar = _row_layout(x, axis)
    res = np.empty(xm.shape, x.dtype)
    if rows.size:                         # an empty axis or batch: an empty result
        _kernel.softmax_rows(rows, _as_rows(_bits(res)), log_space,
                             _threads(nt, rows.size))
    res = np.moveaxis(res, -1, axis)
    return res.reshape(()) if scalar else res


def softmax(x, axis=-1, *, n_threads=None):
    """``exp(x - logsumexp(x))`` along ``axis``.

    The result has the input's shape and dtype (in native byte order). An empty ``axis``
    or batch gives an empty result; a 0-d ``x`` gives 1 (NaN for ``-inf``, ``+inf``, NaN),
    as ``scipy.special.softmax``. ``n_threads`` as :func:`logsumexp`.

    Examples
    --------
    >>> import numpy as np, lsref
    >>> np.round(lsref.softmax(np.array([3.0, 1.0, 0.0])), 3)
    array([0.844, 0.114, 0.042])
    """
    return _softmax(x, axis, n_threads, False)


def log_softmax(x, axis=-1, *, n_threads=None):
    """``x - logsumexp(x)`` along ``axis``, without forming ``exp(x)`` overflow.

    Shapes, dtypes and degenerate inputs as :func:`softmax` (a 0-d ``x`` gives 0, as
    ``scipy.special.log_softmax``).

    Examples
    --------
    >>> import numpy as np, lsref
    >>> lsref.log_softmax(np.array([1000.0, 1000.0]))
    array([-0.69314718, -0.69314718])
    """
    return _softmax(x, axis, n_threads, True)


# --- binary (sigmoid) cross-entropy --------------------------------------------------------

def _run_binary(logits, targets, *, want_grad, out, n_threads, **kw):
    p = check_binary_problem(logits, targets, **kw)
    nt, zn, dtype, K, N = _start(p, want_grad, out, n_threads)
    z = _rows(zn, K)
    cw = None if p.class_weight is None else np.ascontiguousarray(p.class_weight)
    sw = None if p.sample_weight is None else np.ascontiguousarray(p.sample_weight.reshape(-1))
    ignore, ignoring = -1, False
    if p.indices is not None:
        idx, ignore, ignoring, active = _index_rows(p.indices, p.ignore_index)
        labels = np.zeros((1, 1))                  # unread: the one-hot comes from idx
        active_rows = N if active is None else int(np.sum(active))
    else:
        idx, labels, active_rows = None, _real_rows(p.labels, K) if K else np.zeros((1, 1)), N
    # "mean": over the elements of the rows that count (PyTorch's BCEWithLogits and Keras
    # divide by the element count; weights scale the terms, not the divisor)
    divisor = float(active_rows * K) if p.reduction == "mean" else None
    scale = 1.0 / divisor if divisor else 1.0

    grad_rows = ret = copy_back = None
    if want_grad:
        grad_rows, ret, copy_back = _grad_buffer(
            out, p.axis, p.shape, dtype,
            (np.moveaxis(p.logits, -1, p.axis), dtype,
             [("targets", targets), ("class_weight", kw.get("class_weight")),
              ("sample_weight", kw.get("sample_weight"))]))
    elem = np.empty((N, K), np.float64) if p.reduction == "none" else None
    row_loss = np.empty(N, np.float64)
    a, b = p.smoothing_affine
    if K:
        _kernel.bce(z, labels, idx, a, b, cw, sw, scale, ignore, ignoring, row_loss, elem,
                    grad_rows, nt)
    else:
        row_loss.fill(0.0)                # a row of no elements: an empty sum (the gradient,
                                          # and "none"'s losses, are empty arrays)
    if p.reduction == "none":
        loss = np.moveaxis(elem.reshape(p.shape), -1, p.axis).astype(_loss_dtype(dtype))
    else:
        loss = _reduce(p.reduction, row_loss, divisor, p.shape[:-1], _loss_dtype(dtype))
    return loss, (_finish_grad(ret, copy_back, p.axis) if want_grad else None)


def binary_value_and_grad(logits, targets, *, label_smoothing=0.0, axis=-1, reduction="mean",
                          class_weight=None, sample_weight=None, ignore_index=-100,
                          n_threads=None, out=None):
    """Binary (sigmoid) cross-entropy with logits, and its gradient, in one pass.

    Each logit is an independent yes/no score. Per element, with ``y'`` the smoothed label::

        loss = -y' log(sigmoid(x)) - (1 - y') log(1 - sigmoid(x))
             = y' softplus(-x) + (1 - y') softplus(x)
        dloss/dx = sigmoid(x) - y'

    computed stably for any ``|x|`` (one ``exp(-|x|)`` and one ``log1p`` per element).

    Parameters
    ----------
    logits : array_like of float, any shape
    targets : array_like
        Either labels in [0, 1] shaped like ``logits`` (Keras's ``BinaryCrossentropy``:
        ``y' = y (1 - eps) + eps / 2``), or integer class indices shaped like ``logits``
        without ``axis`` (timm's ``BinaryCrossEntropy``: one-hot along ``axis``, then
        ``y' = onehot (1 - eps) + eps / K``).
    label_smoothing : float in [0, 1], default=0.0
    axis : int, default=-1
        The class axis: where ``class_weight`` applies and class indices point.
    reduction : {"mean", "sum", "none"}, default="mean"
        ``"mean"`` divides by the number of elements (of the rows not ignored); weights
        scale the terms, not the divisor (PyTorch's ``BCEWithLogitsLoss(weight=...)``).
        ``"none"`` returns the per-element losses, shaped like ``logits``.
    class_weight : array_like of shape (K,), optional
    sample_weight : array_like shaped like ``logits`` without ``axis``, optional
    ignore_index : int or None, default=-100
        For class-index targets: rows with this target count for nothing.
    n_threads : int in [1, lsref.MAX_THREADS], optional
        As :func:`cross_entropy`.
    out : ndarray, optional
        Where to write the gradient (as :func:`value_and_grad`).

    Returns
    -------
    loss, grad

    Examples
    --------
    >>> import numpy as np, lsref
    >>> x = np.array([[2.0, -1.0, 0.0]])
    >>> loss, grad = lsref.binary_value_and_grad(x, [[1.0, 0.0, 1.0]], label_smoothing=0.1)
    >>> np.round(grad * 3, 4)                 # sigmoid(x) - (y * 0.9 + 0.05)
    array([[-0.0692,  0.2189, -0.45  ]])
    >>> float(lsref.binary_cross_entropy(np.array([800.0]), [1.0]))   # no overflow
    0.0
    """
    return _run_binary(logits, targets, want_grad=True, out=out, n_threads=n_threads,
                       label_smoothing=label_smoothing, axis=axis, reduction=reduction,
                       class_weight=class_weight, sample_weight=sample_weight,
                       ignore_index=ignore_index)


def binary_cross_entropy(logits, targets, *, label_smoothing=0.0, axis=-1, reduction="mean",
                         class_weight=None, sample_weight=None, ignore_index=-100,
                         n_threads=None):
    """Binary (sigmoid) cross-entropy with logits; see :func:`binary_value_and_grad`."""
    return _run_binary(logits, targets, want_grad=False, out=None, n_threads=n_threads,
                       label_smoothing=label_smoothing, axis=axis, reduction=reduction,
                       class_weight=class_weight, sample_weight=sample_weight,
                       ignore_index=ignore_index)[0]


def binary_cross_entropy_grad(logits, targets, *, label_smoothing=0.0, axis=-1,
                              reduction="mean", class_weight=None, sample_weight=None,
                              ignore_index=-100, n_threads=None, out=None):
    """The gradient of :func:`binary_cross_entropy`; see :func:`binary_value_and_grad`."""
    return binary_value_and_grad(logits, targets, label_smoothing=label_smoothing, axis=axis,
                                 reduction=reduction, class_weight=class_weight,
                                 sample_weight=sample_weight, ignore_index=ignore_index,
                                 n_threads=n_threads, out=out)[1]
