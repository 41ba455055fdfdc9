"""The front door: validation, layout, dtype policy, ``out=``, threads and reduction.

This module never loops over elements. It checks the arguments (``lsref._validation``), moves
the class axis last and hands the kernel C-contiguous ``(n_rows, K)`` rows, copying only when
the caller's layout is not already that. The kernel writes per-row losses (in float64) and
gradient rows; the reduction over rows happens here, with NumPy's pairwise summation, so the
result does not depend on the number of threads.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from . import _kernel, _params
from ._keywords import BINARY_OPTIONS, CROSS_ENTROPY_OPTIONS, EXECUTION_OPTIONS, N_THREADS, fill_doc
from ._typing import FloatArray, Loss, Reduction, Smoothing
from ._validation import (
    MAX_THREADS,
    as_array,
    check_arguments,
    check_axis,
    check_binary_arguments,
    check_float_array,
    check_n_threads,
    is_bfloat16,
)

__all__ = ["cross_entropy", "cross_entropy_grad", "value_and_grad", "logsumexp",
           "log_softmax", "softmax", "binary_cross_entropy", "binary_cross_entropy_grad",
           "binary_value_and_grad"]


def default_threads() -> int:
    if not _kernel.OPENMP_ENABLED:
        return 1
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


# Below this many logits the default is one thread. The work is then shorter than waking a
# thread team, and in a training loop that alternates with NumPy's BLAS calls the two thread
# pools spin-wait against each other: `lsref demo`'s MLP (1258 x 10 logits per evaluation;
# its progress line prints the training time) is such a loop. Two threads pay off from about
# 10,000 float32 logits (value and gradient, AVX2 EPYC: 160 x 100 took 13.3 us on one thread
# and 9.9 on two, 64 x 100 5.9 and 6.3). Results are bit-identical for every thread count, so
# this changes only the time.
SMALL_PROBLEM = 16384


# The kernel's fast path for the common call (_kernel.index_fast) takes these rules from here
_kernel.configure_fast_path(index_call=_params.index_call, default_threads=default_threads,
                           small_problem=SMALL_PROBLEM, max_threads=MAX_THREADS)


def resolve_threads(n_threads: int | None, size: int | None = None) -> int:
    """The kernel's thread count: ``n_threads`` checked, or the default for ``size`` logits."""
    n = check_n_threads(n_threads)
    if n is not None:
        return n
    return 1 if size is not None and size < SMALL_PROBLEM else default_threads()


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


def loss_dtype(dtype):
    """The loss is returned in the logits' dtype, except for 16-bit logits: their loss is
    computed in float32 and returned so (float16 would overflow at 65504 and round a loss
    of 15.52 to +-0.008; a loss costs N numbers at most)."""
    return np.dtype(np.float32) if _is_half(dtype) else dtype


def _reduce(reduction, row_loss, divisor, batch_shape, dtype):
    """The caller's loss from rows that already carry 1/D (_params.reduce)."""
    loss = _params.reduce(reduction, row_loss, divisor, scaled=True)
    return loss.reshape(batch_shape).astype(dtype) if reduction == "none" else dtype.type(loss)


def _start(p, want_grad, out, n_threads):
    """What every front-door call needs first: the thread count and the logits in a dtype the
    kernel stores natively."""
    if out is not None and not want_grad:
        raise TypeError("out= is only accepted where a gradient is computed")
    zn = _native(p.logits)
    return resolve_threads(n_threads, zn.size), zn, zn.dtype, p.n_classes, p.n_rows


def _run(args, *, want_grad):
    """The call of a front door, from its ``locals()`` (``args``): the logits, the targets,
    every option, ``n_threads`` and, where a gradient is computed, ``out``."""
    p = check_arguments(args)
    nt, zn, dtype, K, N = _start(p, want_grad, args.get("out"), args["n_threads"])
    z = _rows(zn, K)
    plan = KernelPlan(p, K)
    params = plan.params()

    grad_rows = ret = copy_back = None
    if want_grad:
        grad_rows, ret, copy_back = _grad_buffer(
            args.get("out"), p.axis, p.logits.shape, dtype,
            (np.moveaxis(p.logits, -1, p.axis), dtype,
             [("targets", args["targets"]), ("class_weight", args["class_weight"]),
              ("sample_weight", args["sample_weight"])]))

    row_loss = np.empty(N, np.float64)
    plan.run(z, plan.targets, params, row_loss, grad_rows, nt)
    loss = plan.loss(row_loss, dtype)
    return loss, (_finish_grad(ret, copy_back, p.axis) if want_grad else None)


class KernelPlan:
    """A checked call (``p``, with ``K`` classes) as the kernel takes it: the targets as its
    rows (``targets``), the rows that count (``active``), the divisor ``D`` of ``"mean"``
    (``divisor``, None otherwise) and the coefficients; ``params`` and ``run`` for all the
    rows or a block of them (the linear layer runs the rows in chunks, lsref.linear)."""

    def __init__(self, p, K):
        self.p, self.K = p, K
        self.q_t = self.a = 1.0
        if p.prob_targets:
            self.targets, self.ignore, self.active = _real_rows(p.targets, K), None, None
            self.a, self.beta = _params.prob_target(p.label_smoothing, K)
        else:
            self.targets, self.ignore, _, self.active = _params.index_rows(p.targets,
                                                                           p.ignore_index)
            self.q_t, self.beta = _params.index_target(p.label_smoothing, K, p.smoothing)
        # the rows carry 1/D for "mean", known before the kernel runs
        self.divisor = (_params.mean_divisor(p, self.targets, self.active)
                        if p.reduction == "mean" else None)
        self.scale = _params.mean_scale(self.divisor) if p.reduction == "mean" else 1.0

    def params(self, rows=slice(None)):
        """The kernel's record for the rows ``rows`` (a slice; the sample weights sliced)."""
        p = self.p
        sw = None if p.sample_weight is None else np.reshape(p.sample_weight, -1)[rows]
        return _params.kernel_params(
            n_classes=self.K, class_weight=p.class_weight, sample_weight=sw, q_t=self.q_t,
            a=self.a, beta=self.beta, scale=self.scale, z_loss=p.z_loss, kl=p.kl,
            ignore_index=self.ignore)

    def loss(self, row_loss, dtype):
        """The caller's loss from the per-row losses of every row (they carry 1/D), in the
        dtype of logits of ``dtype``."""
        return _reduce(self.p.reduction, row_loss, self.divisor, self.p.batch_shape,
                       loss_dtype(dtype))

    def run(self, z, targets, params, row_loss, grad_rows, nt):
        """The kernel over the rows ``z`` ((n, K), C order) with their ``targets`` and
        ``params``: per-row losses into ``row_loss``, the gradient into ``grad_rows``
        (None: none; it may be ``z`` itself)."""
        n = z.shape[0]
        # Positional on purpose: a keyword call into a fused-type Cython function goes through
        # its generic dispatcher, about 3x the instructions of the whole positional call, on
        # every call (the arguments are in the order of _kernel.pyi)
        if self.p.prob_targets:
            _kernel.ce_prob(z, targets, params, row_loss, grad_rows, nt)
        else:
            scratch = (np.empty(n, np.uint8) if _params.small_k_blocks(
                z.dtype == np.float32, n, self.K, self.p.class_weight is not None) else None)
            _kernel.ce_index(z, targets, params, row_loss, grad_rows, nt, scratch)


@fill_doc(CROSS_ENTROPY_OPTIONS, N_THREADS)
def cross_entropy(logits: ArrayLike, targets: ArrayLike, *, label_smoothing: float = 0.0,
                  axis: int = -1, reduction: Reduction = "mean", smoothing: Smoothing = "uniform",
                  class_weight: ArrayLike | None = None, sample_weight: ArrayLike | None = None,
                  ignore_index: int | None = -100, z_loss: float = 0.0, kl: bool = False,
                  n_threads: int | None = None) -> Loss:
    """Label-smoothed softmax cross-entropy.

    Parameters
    ----------
    %(logits)s
    %(targets)s
    %(cross_entropy_options)s
    %(n_threads)s

    Returns
    -------
    loss : float or ndarray
        A scalar of the logits' dtype (float32 for float16/bfloat16 logits), or, for
        ``reduction="none"``, an array of that dtype shaped like ``logits`` without the
        class axis.

    Raises
    ------
    %(raises)s

    See Also
    --------
    value_and_grad : The loss and its gradient in one pass.
    lsref.reference.cross_entropy : The oracle (float64, formula for formula).

    Notes
    -----
    %(notes_cross_entropy)s

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
    fast: Any = _kernel.index_fast(logits, targets, label_smoothing, axis, reduction, smoothing,
                                   class_weight, sample_weight, ignore_index, z_loss, kl, n_threads,
                                   None, False)
    return _run(locals(), want_grad=False)[0] if fast is None else fast


@fill_doc(CROSS_ENTROPY_OPTIONS, EXECUTION_OPTIONS)
def value_and_grad(logits: ArrayLike, targets: ArrayLike, *, label_smoothing: float = 0.0,
                   axis: int = -1, reduction: Reduction = "mean", smoothing: Smoothing = "uniform",
                   class_weight: ArrayLike | None = None, sample_weight: ArrayLike | None = None,
                   ignore_index: int | None = -100, z_loss: float = 0.0, kl: bool = False,
                   n_threads: int | None = None,
                   out: FloatArray | None = None) -> tuple[Loss, FloatArray]:
    """The loss and its gradient with respect to ``logits``, in one pass.

    Parameters
    ----------
    %(logits)s
    %(targets)s
    %(cross_entropy_options)s
    %(n_threads)s
    %(out)s

    Returns
    -------
    loss : float or ndarray
        As :func:`cross_entropy`.
    grad : ndarray
        The gradient, of the logits' shape and dtype (float32 for float16/bfloat16
        logits); ``out`` when given. For ``reduction="none"`` it is the gradient of the
        sum of the row losses.

    Raises
    ------
    %(raises)s

    See Also
    --------
    cross_entropy : The loss alone.
    cross_entropy_grad : The gradient alone.

    Notes
    -----
    %(notes_cross_entropy)s

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
    fast: Any = _kernel.index_fast(logits, targets, label_smoothing, axis, reduction, smoothing,
                                   class_weight, sample_weight, ignore_index, z_loss, kl, n_threads,
                                   out, True)
    return _run(locals(), want_grad=True) if fast is None else fast


@fill_doc(CROSS_ENTROPY_OPTIONS, EXECUTION_OPTIONS)
def cross_entropy_grad(logits: ArrayLike, targets: ArrayLike, *, label_smoothing: float = 0.0,
                       axis: int = -1, reduction: Reduction = "mean",
                       smoothing: Smoothing = "uniform", class_weight: ArrayLike | None = None,
                       sample_weight: ArrayLike | None = None, ignore_index: int | None = -100,
                       z_loss: float = 0.0, kl: bool = False, n_threads: int | None = None,
                       out: FloatArray | None = None) -> FloatArray:
    """The gradient of :func:`cross_entropy` with respect to ``logits``.

    It is the fused pass of :func:`value_and_grad`, with the loss discarded.

    Parameters
    ----------
    %(logits)s
    %(targets)s
    %(cross_entropy_options)s
    %(n_threads)s
    %(out)s

    Returns
    -------
    grad : ndarray
        As :func:`value_and_grad`.

    Raises
    ------
    %(raises)s

    Notes
    -----
    %(notes_cross_entropy)s

    Examples
    --------
    >>> import numpy as np, lsref
    >>> g = lsref.cross_entropy_grad(np.zeros((2, 4)), [1, 3], label_smoothing=0.1)
    >>> g[0]                                  # (softmax - q) / 2 rows
    array([ 0.1125, -0.3375,  0.1125,  0.1125])
    """
    fast: Any = _kernel.index_fast(logits, targets, label_smoothing, axis, reduction, smoothing,
                                   class_weight, sample_weight, ignore_index, z_loss, kl, n_threads,
                                   out, True)
    return (_run(locals(), want_grad=True) if fast is None else fast)[1]


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


@fill_doc(N_THREADS)
def logsumexp(x: ArrayLike, axis: int = -1, keepdims: bool = False, *,
              n_threads: int | None = None) -> FloatArray:
    """Compute ``log(sum(exp(x), axis=axis))`` stably, in one kernel pass.

    Sums are accumulated in float64. Special values and degenerate shapes follow
    ``scipy.special.logsumexp``: a slice of ``-inf`` gives ``-inf``, a slice holding
    ``+inf`` gives ``+inf``, a slice holding NaN gives NaN; an empty slice (``axis`` of
    length 0) gives ``-inf``, the log of an empty sum; a 0-d ``x`` is its own log-sum-exp
    (with ``keepdims=True``, shape ``(1,)``).

    Parameters
    ----------
    %(x)s
    axis : int, default=-1
        The axis to reduce.
    keepdims : bool, default=False
        Keep the reduced axis, with length 1.
    %(n_threads)s

    Returns
    -------
    ndarray
        ``x``'s shape without ``axis`` (with it, of length 1, for ``keepdims=True``), in
        ``x``'s dtype (in native byte order).

    Raises
    ------
    TypeError
        If ``x`` is not real numbers, or ``axis`` or ``n_threads`` is not an integer.
    ValueError
        If ``axis`` is out of bounds or ``n_threads`` out of [1, ``lsref.MAX_THREADS``].

    Notes
    -----
    With ``m`` the slice's maximum, ``logsumexp(x) = m + log(sum(exp(x - m)))``: no
    ``exp`` overflows.

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
        _kernel.logsumexp_rows(x=rows, out=out, n_threads=resolve_threads(nt, rows.size))
    out = out.reshape(xm.shape[:-1]).astype(x.dtype)
    return np.expand_dims(out, axis) if keepdims else out


def _softmax(x, axis, n_threads, log_space):
    nt = check_n_threads(n_threads)
    x, axis, xm, rows, scalar = _row_layout(x, axis)
    res = np.empty(xm.shape, x.dtype)
    if rows.size:                         # an empty axis or batch: an empty result
        _kernel.softmax_rows(x=rows, out=_as_rows(_bits(res)), log_space=log_space,
                             n_threads=resolve_threads(nt, rows.size))
    res = np.moveaxis(res, -1, axis)
    return res.reshape(()) if scalar else res


@fill_doc(N_THREADS)
def softmax(x: ArrayLike, axis: int = -1, *, n_threads: int | None = None) -> FloatArray:
    """Compute ``exp(x - logsumexp(x))`` along ``axis``.

    An empty ``axis`` or batch gives an empty result; a 0-d ``x`` gives 1 (NaN for
    ``-inf``, ``+inf``, NaN), as ``scipy.special.softmax``.

    Parameters
    ----------
    %(x)s
    %(x_axis)s
    %(n_threads)s

    Returns
    -------
    ndarray
        The probabilities, of ``x``'s shape and dtype (in native byte order). A slice
        holding NaN or ``+inf``, or only ``-inf``, is NaN.

    Raises
    ------
    TypeError
        If ``x`` is not real numbers, or ``axis`` or ``n_threads`` is not an integer.
    ValueError
        If ``axis`` is out of bounds or ``n_threads`` out of [1, ``lsref.MAX_THREADS``].

    Notes
    -----
    ``softmax(x)_k = exp(x_k - lse)``, ``lse = logsumexp(x)``.

    Examples
    --------
    >>> import numpy as np, lsref
    >>> np.round(lsref.softmax(np.array([3.0, 1.0, 0.0])), 3)
    array([0.844, 0.114, 0.042])
    """
    return _softmax(x, axis, n_threads, False)


@fill_doc(N_THREADS)
def log_softmax(x: ArrayLike, axis: int = -1, *, n_threads: int | None = None) -> FloatArray:
    """Compute ``x - logsumexp(x)`` along ``axis``, without forming ``exp(x)``.

    Shapes, dtypes and degenerate inputs as :func:`softmax` (a 0-d ``x`` gives 0, as
    ``scipy.special.log_softmax``).

    Parameters
    ----------
    %(x)s
    %(x_axis)s
    %(n_threads)s

    Returns
    -------
    ndarray
        The log-probabilities, of ``x``'s shape and dtype (in native byte order).

    Raises
    ------
    TypeError
        If ``x`` is not real numbers, or ``axis`` or ``n_threads`` is not an integer.
    ValueError
        If ``axis`` is out of bounds or ``n_threads`` out of [1, ``lsref.MAX_THREADS``].

    Notes
    -----
    ``log_softmax(x)_k = (x_k - m) - log(sum(exp(x - m)))``, ``m`` the slice's maximum.

    Examples
    --------
    >>> import numpy as np, lsref
    >>> lsref.log_softmax(np.array([1000.0, 1000.0]))
    array([-0.69314718, -0.69314718])
    """
    return _softmax(x, axis, n_threads, True)


# --- binary (sigmoid) cross-entropy --------------------------------------------------------

def _run_binary(args, *, want_grad):
    """The call of a binary front door, from its ``locals()`` (as :func:`_run`)."""
    p = check_binary_arguments(args)
    nt, zn, dtype, K, N = _start(p, want_grad, args.get("out"), args["n_threads"])
    z = _rows(zn, K)
    ignore = None
    if p.indices is not None:
        idx, ignore, _, active = _params.index_rows(p.indices, p.ignore_index)
        labels = np.zeros((1, 1))                  # unread: the one-hot comes from idx
        active_rows = N if active is None else int(np.sum(active))
    else:
        idx, labels, active_rows = None, _real_rows(p.labels, K) if K else np.zeros((1, 1)), N
    divisor = _params.binary_mean_divisor(active_rows, K)
    a, b = _params.binary_label(p.label_smoothing, K, p.indices is not None)
    params = _params.kernel_params(
        n_classes=K, class_weight=p.class_weight, sample_weight=p.sample_weight, a=a, beta=b,
        ignore_index=ignore,
        scale=_params.mean_scale(divisor) if p.reduction == "mean" else 1.0)

    grad_rows = ret = copy_back = None
    if want_grad:
        grad_rows, ret, copy_back = _grad_buffer(
            args.get("out"), p.axis, p.shape, dtype,
            (np.moveaxis(p.logits, -1, p.axis), dtype,
             [("targets", args["targets"]), ("class_weight", args["class_weight"]),
              ("sample_weight", args["sample_weight"])]))
    elem = np.empty((N, K), np.float64) if p.reduction == "none" else None
    row_loss = np.empty(N, np.float64)
    if K:
        # positional, as for ce_index (_run)
        _kernel.bce(z, labels, idx, params, row_loss, elem, grad_rows, nt)
    else:
        row_loss.fill(0.0)                # a row of no elements: an empty sum (the gradient,
                                          # and "none"'s losses, are empty arrays)
    if p.reduction == "none":
        loss = np.moveaxis(elem.reshape(p.shape), -1, p.axis).astype(loss_dtype(dtype))
    else:
        loss = _reduce(p.reduction, row_loss, divisor, p.shape[:-1], loss_dtype(dtype))
    return loss, (_finish_grad(ret, copy_back, p.axis) if want_grad else None)


@fill_doc(BINARY_OPTIONS, EXECUTION_OPTIONS)
def binary_value_and_grad(logits: ArrayLike, targets: ArrayLike, *, label_smoothing: float = 0.0,
                          axis: int = -1, reduction: Reduction = "mean",
                          class_weight: ArrayLike | None = None,
                          sample_weight: ArrayLike | None = None, ignore_index: int | None = -100,
                          n_threads: int | None = None,
                          out: FloatArray | None = None) -> tuple[Loss, FloatArray]:
    """Binary (sigmoid) cross-entropy with logits, and its gradient, in one pass.

    Each logit is an independent yes/no score.

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
    %(n_threads)s
    %(out)s

    Returns
    -------
    loss : float or ndarray
        A scalar of the logits' dtype (float32 for float16/bfloat16 logits), or, for
        ``reduction="none"``, the per-element losses shaped like ``logits``.
    grad : ndarray
        The gradient, of the logits' shape and dtype (float32 for float16/bfloat16
        logits); ``out`` when given.

    Raises
    ------
    %(raises)s

    Notes
    -----
    %(notes_binary)s

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
    return _run_binary(locals(), want_grad=True)


@fill_doc(BINARY_OPTIONS, N_THREADS)
def binary_cross_entropy(logits: ArrayLike, targets: ArrayLike, *, label_smoothing: float = 0.0,
                         axis: int = -1, reduction: Reduction = "mean",
                         class_weight: ArrayLike | None = None,
                         sample_weight: ArrayLike | None = None, ignore_index: int | None = -100,
                         n_threads: int | None = None) -> Loss:
    """Binary (sigmoid) cross-entropy with logits.

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
    %(n_threads)s

    Returns
    -------
    loss : float or ndarray
        As :func:`binary_value_and_grad`.

    Raises
    ------
    %(raises)s

    Notes
    -----
    %(notes_binary)s

    Examples
    --------
    >>> import numpy as np, lsref
    >>> round(float(lsref.binary_cross_entropy(np.array([0.0, 0.0]), [1.0, 0.0])), 6)
    0.693147
    """
    return _run_binary(locals(), want_grad=False)[0]


@fill_doc(BINARY_OPTIONS, EXECUTION_OPTIONS)
def binary_cross_entropy_grad(logits: ArrayLike, targets: ArrayLike, *,
                              label_smoothing: float = 0.0, axis: int = -1,
                              reduction: Reduction = "mean", class_weight: ArrayLike | None = None,
                              sample_weight: ArrayLike | None = None,
                              ignore_index: int | None = -100, n_threads: int | None = None,
                              out: FloatArray | None = None) -> FloatArray:
    """The gradient of :func:`binary_cross_entropy` with respect to ``logits``.

    The gradient of :func:`binary_value_and_grad`, without the loss.

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
    %(n_threads)s
    %(out)s

    Returns
    -------
    grad : ndarray
        As :func:`binary_value_and_grad`.

    Raises
    ------
    %(raises)s

    Notes
    -----
    %(notes_binary)s

    Examples
    --------
    >>> import numpy as np, lsref
    >>> lsref.binary_cross_entropy_grad(np.array([0.0, 0.0]), [1.0, 0.0])   # / 2 elements
    array([-0.25,  0.25])
    """
    return _run_binary(locals(), want_grad=True)[1]
