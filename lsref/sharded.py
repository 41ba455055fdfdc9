"""Beyond one array: partial statistics that merge exactly, vocabulary-parallel shards,
and streaming over memory-mapped files larger than memory.

The loss of a row needs only a few numbers from its logits, and those combine exactly
across any split of the classes::

    m     = max_k z_k                          (over the block)
    rest  = sum_k exp(z_k - m) - 1             (the max's own term, exactly 1, left out)
    U     = sum_k w_k (z_k - m)                (over the classes with w_k != 0)
    z_t   = the target's logit, where the target falls in the block

Two blocks merge with ``M = max(m1, m2)``: the block with the smaller max contributes
``(1 + rest) exp(m - M)`` to ``rest`` and ``U + (m - M) W`` to ``U`` (``W`` the block's
sum of weights). Keeping ``rest`` rather than the sum makes ``log1p(rest)`` accurate also
when one class dominates. Rows are independent, so row blocks just concatenate. From the
merged statistics, with ``L = log1p(rest)`` and ``lse = m + L``::

    loss_row = s [ beta (W L - U) + (q_t - beta) w_t (m - z_t + L) + lam lse^2 (+ KL const) ]
    g_k      = s [ (C + 2 lam lse) exp(z_k - lse) - w_k q_k ],   C = beta W + (q_t - beta) w_t

so the gradient of any block needs only that block and its rows' ``m`` and ``1 + rest``. The
statistics and the gradient are computed by the Cython kernel; merging and finishing are O(rows).
Class-index targets only (probability targets have no single target logit to carry).
"""
from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from . import _kernel, _params
from ._keywords import CROSS_ENTROPY_OPTIONS, N_THREADS, fill_doc, given
from ._npy import new_npy, npy_header
from ._typing import Float64Array, FloatArray, Loss64, Reduction, Smoothing
from ._validation import as_array, check_problem_shape
from .loss import cross_entropy, resolve_threads, value_and_grad

__all__ = ["PartialStats", "RowTerms", "partial_stats", "merge", "concat_rows", "finish",
           "block_gradient", "vocab_parallel_value_and_grad", "megatron_vocab_parallel",
           "stream_value_and_grad", "divisor"]


@dataclass(frozen=True)
class PartialStats:
    """Per-row statistics of one (row block, class block), or of several merged."""

    m: Float64Array         # (n,) max over the classes covered (-inf: no mass there)
    rest: Float64Array      # (n,) sum of exp(z - m), minus the max's own 1
    u: Float64Array         # (n,) sum of w_k (z_k - m) over w_k != 0
    zt: Float64Array        # (n,) the target's logit (0 where it is not covered)
    has_t: NDArray[np.bool_]   # (n,) the target's class is covered
    bad: NDArray[np.bool_]     # (n,) a NaN or +inf among the covered logits
    wsum: float             # sum of the nonzero class weights covered
    classes: int            # how many classes are covered

    @property
    def n_rows(self) -> int:
        """The number of rows the statistics describe."""
        return self.m.shape[0]


def _as_rows(name, z):
    z = as_array(name, z)
    if not z.dtype.isnative:                 # >f4 is float32, in native byte order
        z = z.astype(z.dtype.newbyteorder("="))
    if z.ndim != 2:
        raise ValueError(f"{name} must be a 2-D block (rows, classes), got shape {z.shape}")
    if z.dtype not in (np.float32, np.float64):
        if z.dtype.kind not in "fiu" and z.dtype.name != "bfloat16":
            raise TypeError(f"{name} must be floating-point logits, got dtype {z.dtype}")
        z = z.astype(np.float32 if z.dtype.itemsize <= 2 else np.float64)
    return np.ascontiguousarray(z)


def _targets(targets, n):
    t = np.asarray(targets)
    if t.dtype.kind not in "iu" or t.shape != (n,):
        raise ValueError(f"targets must be {n} integer class indices (one per row of the "
                         f"block), got shape {t.shape}, dtype {t.dtype}")
    return np.ascontiguousarray(t, dtype=np.int64)


def _block_weights(class_weight, offset, kb):
    if class_weight is None:
        return None, float(kb)
    w = np.asarray(class_weight, dtype=np.float64)
    if w.ndim != 1 or offset + kb > w.shape[0]:
        raise ValueError(f"class_weight must hold the weights of all classes (at least "
                         f"{offset + kb} for a block at class_offset={offset}), got shape "
                         f"{w.shape}")
    wb = np.ascontiguousarray(w[offset:offset + kb])
    return wb, float(wb[wb != 0].sum())


def partial_stats(z_block: ArrayLike, targets: ArrayLike, *, class_offset: int = 0,
                  class_weight: ArrayLike | None = None,
                  n_threads: int | None = None) -> PartialStats:
    """The statistics of one block of logits, to merge with the other blocks' statistics.

    Parameters
    ----------
    z_block : array_like of float, shape (n, kb)
        Logits: ``z_block[i]`` holds classes ``class_offset ... class_offset + kb - 1`` of
        row ``i``.
    targets : array_like of int, shape (n,)
        The rows' global class indices (in ``[0, K)``).
    class_offset : int >= 0, default=0
        The global index of the block's first class.
    class_weight : array_like of shape (K,), optional
        The full weight vector of all ``K`` classes (not the block's slice).
    n_threads : int in [1, lsref.MAX_THREADS], optional
        Threads for the kernel, as :func:`lsref.cross_entropy`.

    Returns
    -------
    PartialStats
        The block's per-row statistics.

    Raises
    ------
    TypeError
        If an argument has the wrong type; the message names it.
    ValueError
        If an argument has a bad value or shape; the message names it.


    Examples
    --------
    >>> import numpy as np, lsref
    >>> from lsref import sharded
    >>> z = np.array([[3.0, 1.0, 0.0, -1.0]]); t = np.array([0])
    >>> a = sharded.partial_stats(z[:, :2], t)
    >>> b = sharded.partial_stats(z[:, 2:], t, class_offset=2)
    >>> terms = sharded.finish(sharded.merge(a, b), t, 4, label_smoothing=0.1)
    >>> bool(np.isclose(terms.loss, lsref.cross_entropy(z, t, label_smoothing=0.1)))
    True
    """
    z = _as_rows("z_block", z_block)
    n, kb = z.shape
    t = _targets(targets, n)
    offset = int(class_offset)
    if offset < 0:
        raise ValueError(f"class_offset must be >= 0, got {offset}")
    wb, wsum = _block_weights(class_weight, offset, kb)
    m, rest, u, zt = (np.empty(n) for _ in range(4))
    has_t, bad = np.empty(n, np.uint8), np.empty(n, np.uint8)
    _kernel.block_stats(z=z, class_weight=wb, targets=t, offset=offset, m_out=m,
                        rest_out=rest, u_out=u, zt_out=zt, has_t=has_t, bad=bad,
                        n_threads=resolve_threads(n_threads, z.size))
    return PartialStats(m, rest, u, zt, has_t.astype(bool), bad.astype(bool), wsum, kb)


def _merge2(a, b):
    if a.n_rows != b.n_rows:
        raise ValueError(f"cannot merge statistics of {a.n_rows} and {b.n_rows} rows: merge "
                         f"class blocks of the same rows (row blocks: concat_rows)")
    with np.errstate(invalid="ignore", over="ignore"):
        M = np.maximum(a.m, b.m)
        a_top = a.m >= b.m
        # the smaller block's whole sum (its max term 1 included), rescaled to the larger max
        fa = np.where(a.m == -np.inf, 0.0, (1.0 + a.rest) * np.exp(a.m - M))
        fb = np.where(b.m == -np.inf, 0.0, (1.0 + b.rest) * np.exp(b.m - M))
        rest = np.where(a_top, a.rest + fb, b.rest + fa)
        rest = np.where(M == -np.inf, -1.0, rest)

        def shifted(s):
            # U relative to M; a block without mass (all -inf) puts -inf on weighted classes
            none = -np.inf if s.wsum > 0 else 0.0
            return np.where(s.m == -np.inf, none, s.u + (s.m - M) * s.wsum)
        u = shifted(a) + shifted(b)
    return PartialStats(M, rest, u, np.where(a.has_t, a.zt, b.zt), a.has_t | b.has_t,
                        a.bad | b.bad, a.wsum + b.wsum, a.classes + b.classes)


def merge(*stats: PartialStats) -> PartialStats:
    """Merge the statistics of class blocks of the same rows.

    The merge is associative and commutative up to rounding: any order and grouping.

    Parameters
    ----------
    *stats : PartialStats
        The statistics of class blocks of the same rows (at least one).

    Returns
    -------
    PartialStats
        The statistics of the classes all of them cover.

    Raises
    ------
    ValueError
        If no statistics are given, or they describe different numbers of rows.
    """
    if not stats:
        raise ValueError("merge needs at least one PartialStats")
    out = stats[0]
    for s in stats[1:]:
        out = _merge2(out, s)
    return out


def concat_rows(stats: Iterable[PartialStats]) -> PartialStats:
    """Stack the statistics of consecutive row blocks (each covering the same classes).

    Parameters
    ----------
    stats : iterable of PartialStats
        The row blocks' statistics, in row order.

    Returns
    -------
    PartialStats
        The statistics of all their rows.

    Raises
    ------
    ValueError
        If the blocks do not cover the same classes.
    """
    stats = list(stats)
    if len({(s.classes, s.wsum) for s in stats}) != 1:
        raise ValueError("concat_rows needs row blocks that cover the same classes")
    cat = {f: np.concatenate([getattr(s, f) for s in stats])
           for f in ("m", "rest", "u", "zt", "has_t", "bad")}
    return PartialStats(**cat, wsum=stats[0].wsum, classes=stats[0].classes)


@dataclass(frozen=True)
class RowTerms:
    """A finished problem: the loss, and what every block's gradient needs per row."""

    loss: Loss64            # the reduced loss (float64 scalar, or (n,) for "none")
    row_loss: Float64Array  # (n,) s * loss_row (before any 1/D)
    m: Float64Array         # (n,) the row max (0 on ignored rows)
    coef_e: Float64Array    # (n,) s (C + 2 lam lse) / (D se): g_k = coef_e exp(z_k - m) - ...
    coef_q: Float64Array    # (n,) s / D, 0 on ignored rows
    q_t: float
    beta: float
    class_weight: Float64Array | None   # (K,)
    divisor: float          # D of "mean" (1 for "sum" and "none")


def _problem(targets, num_classes, kw):
    """Validate the keywords and targets as the front door does, from the logits' shape."""
    t = np.asarray(targets)
    p = check_problem_shape(t.shape + (int(num_classes),), t, **kw)
    if p.prob_targets:
        raise ValueError("sharded statistics take class-index targets; probability targets "
                         "have no single target logit")
    return p


@fill_doc()
def divisor(targets: ArrayLike, num_classes: int, *, class_weight: ArrayLike | None = None,
            sample_weight: ArrayLike | None = None, ignore_index: int | None = -100) -> float:
    """The divisor ``D`` of ``reduction="mean"``, from the targets and weights alone.

    ``D`` is the sum over the non-ignored rows of the sample weight times the target's
    class weight. It needs no logits, so a stream can know it before it starts.

    Parameters
    ----------
    targets : array_like of int
        Class indices, one per row.
    num_classes : int
        ``K``, the number of classes.
    class_weight : array_like of shape (K,), optional
        Per-class weights.
    sample_weight : array_like shaped like ``targets``, optional
        Per-row weights.
    ignore_index : int or None, default=-100
        The target value of rows that count for nothing.

    Returns
    -------
    float
        ``D``.

    Raises
    ------
    %(raises)s
    """
    p = _problem(targets, num_classes, dict(class_weight=class_weight,
                                            sample_weight=sample_weight,
                                            ignore_index=ignore_index))
    return _divisor(p)[0]


def _divisor(p):
    """(D, the kernel's target rows, their ignore value or None, the rows that count or
    None, the flat sample weights or None)."""
    t, ignore, _, active = _params.index_rows(p.targets, p.ignore_index)
    sw = None if p.sample_weight is None else p.sample_weight.reshape(-1)
    return _params.mean_divisor(p, t, active), t, ignore, active, sw


@fill_doc(CROSS_ENTROPY_OPTIONS)
def finish(stats: PartialStats, targets: ArrayLike, num_classes: int, *,
           label_smoothing: float = 0.0, axis: int = -1, reduction: Reduction = "mean",
           smoothing: Smoothing = "uniform", class_weight: ArrayLike | None = None,
           sample_weight: ArrayLike | None = None, ignore_index: int | None = -100,
           z_loss: float = 0.0, kl: bool = False) -> RowTerms:
    """The loss from merged statistics, and the per-row terms of every block's gradient.

    Parameters
    ----------
    stats : PartialStats
        The merged statistics of every class.
    targets : array_like of int
        Class indices, one per row.
    num_classes : int
        ``K``, the number of classes.
    %(cross_entropy_options)s

    Returns
    -------
    RowTerms
        The loss (``RowTerms.loss``) and what :func:`block_gradient` needs per row.

    Raises
    ------
    TypeError
        If a keyword has the wrong type; the message names it.
    ValueError
        If a keyword has a bad value, or ``stats`` do not cover every class of every row.

    Notes
    -----
    The row algebra is the in-memory kernel's (``_kernel.finish_index``, ``_rowterms.h``).
    """
    kw = given(locals(), CROSS_ENTROPY_OPTIONS)
    p = _problem(targets, num_classes, kw)
    K = p.n_classes
    if stats.classes != K or stats.n_rows != p.n_rows:
        raise ValueError(f"the statistics cover {stats.classes} classes of {stats.n_rows} "
                         f"rows; the problem has {K} classes and {p.n_rows} rows (merge "
                         f"every class block first)")
    D, t, ignore, active, sw = _divisor(p)
    mean = p.reduction == "mean"
    scale = _params.mean_scale(D) if mean else 1.0
    q_t, beta = _params.index_target(p.label_smoothing, K, p.smoothing)
    params = _params.kernel_params(
        n_classes=K, class_weight=p.class_weight, sample_weight=sw, q_t=q_t, beta=beta,
        scale=scale, z_loss=p.z_loss, kl=p.kl, ignore_index=ignore)
    n = p.n_rows
    row, coef_e = np.empty(n), np.empty(n)

    def f64(a: ArrayLike) -> Float64Array:
        return np.ascontiguousarray(a, np.float64)

    _kernel.finish_index(m=f64(stats.m), rest=f64(stats.rest), u=f64(stats.u),
                         zt=f64(stats.zt), bad=np.ascontiguousarray(stats.bad, np.uint8),
                         targets=t, params=params, loss_out=row, coef_out=coef_e,
                         n_threads=resolve_threads(None, n * 8))
    loss = _params.reduce(p.reduction, row, D, scaled=False)
    if p.reduction == "none":
        loss = loss.reshape(p.batch_shape)
    s = np.ones(n) if sw is None else sw
    counts = np.ones(n, bool) if active is None else active
    coef_q = np.where(counts, s * scale, 0.0)
    m = np.where(counts & ~(stats.bad | (stats.m == -np.inf)), stats.m, 0.0)
    return RowTerms(loss, row, m, coef_e, coef_q, q_t, beta, params.class_weight,
                    D if mean else 1.0)


def block_gradient(z_block: ArrayLike, targets: ArrayLike, terms: RowTerms, *,
                   class_offset: int = 0, rows: slice | ArrayLike = slice(None),
                   out: FloatArray | None = None, n_threads: int | None = None) -> FloatArray:
    """The gradient of one block of logits, from the finished terms of all rows.

    Parameters
    ----------
    z_block : array_like of float, shape (n, kb)
        The block's logits, as given to :func:`partial_stats`.
    targets : array_like of int, shape (n,)
        The block's rows' global class indices.
    terms : RowTerms
        What :func:`finish` returned for all rows.
    class_offset : int >= 0, default=0
        The global index of the block's first class.
    rows : slice or array of int, default=slice(None)
        This block's rows among the rows of ``terms``.
    out : ndarray, optional
        A C-contiguous buffer of the block's shape and dtype to write the gradient to.
    n_threads : int in [1, lsref.MAX_THREADS], optional
        Threads for the kernel, as :func:`lsref.cross_entropy`.

    Returns
    -------
    ndarray
        The block's gradient (``out`` when given).

    Raises
    ------
    TypeError
        If an argument has the wrong type; the message names it.
    ValueError
        If an argument has a bad value or shape; the message names it.
    """
    z = _as_rows("z_block", z_block)
    n, kb = z.shape
    t = _targets(targets, n)
    wb, _ = _block_weights(terms.class_weight, int(class_offset), kb)
    m, ce, cq = (np.ascontiguousarray(a[rows], dtype=np.float64)
                 for a in (terms.m, terms.coef_e, terms.coef_q))
    if m.shape != (n,):
        raise ValueError(f"rows selects {m.shape[0]} rows of the terms; the block has {n}")
    if out is None:
        out = np.empty_like(z)
    elif out.shape != z.shape or out.dtype != z.dtype or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous {z.dtype} array of shape {z.shape}")
    _kernel.block_grad(z=z, class_weight=wb, targets=t, offset=int(class_offset), m=m,
                       coef_e=ce, coef_q=cq, q_t=terms.q_t, beta=terms.beta, grad_out=out,
                       n_threads=resolve_threads(n_threads, z.size))
    return out


# --- vocabulary-parallel shards ------------------------------------------------------------

def _offsets(shards):
    sizes = [np.shape(s)[-1] for s in shards]
    return np.concatenate([[0], np.cumsum(sizes)]).astype(int), int(sum(sizes))


@fill_doc(CROSS_ENTROPY_OPTIONS)
def vocab_parallel_value_and_grad(shards: Sequence[ArrayLike], targets: ArrayLike, *,
                                  label_smoothing: float = 0.0, axis: int = -1,
                                  reduction: Reduction = "mean", smoothing: Smoothing = "uniform",
                                  class_weight: ArrayLike | None = None,
                                  sample_weight: ArrayLike | None = None,
                                  ignore_index: int | None = -100, z_loss: float = 0.0,
                                  kl: bool = False) -> tuple[Loss64, list[FloatArray]]:
    """The exact loss and gradient of logits split along the vocabulary, one array per rank.

    This is how a tensor-parallel run holds them.

    Parameters
    ----------
    shards : sequence of array_like of float
        ``shards[r]`` is ``(N, K_r)``: rank ``r``'s classes, in rank order.
    targets : array_like of int, shape (N,)
        The global class indices.
    %(cross_entropy_options)s

    Returns
    -------
    loss : numpy.float64 or ndarray
        The loss, as :func:`lsref.cross_entropy` gives it for the whole logits.
    grads : list of ndarray
        The gradient of each shard.

    Raises
    ------
    %(raises)s
    """
    kw = given(locals(), CROSS_ENTROPY_OPTIONS)
    if not shards:
        raise ValueError("shards must hold at least one (N, K_r) array")
    offsets, K = _offsets(shards)
    t = np.asarray(targets)
    cw = kw.get("class_weight")
    stats = merge(*(partial_stats(s, t, class_offset=o, class_weight=cw)
                    for s, o in zip(shards, offsets)))
    terms = finish(stats, t, K, **kw)
    grads = [block_gradient(s, t, terms, class_offset=o) for s, o in zip(shards, offsets)]
    return terms.loss, grads


def megatron_vocab_parallel(shards: Sequence[ArrayLike], targets: ArrayLike,
                            label_smoothing: float
                            ) -> tuple[list[Float64Array], list[Float64Array]]:
    """What Megatron-LM's ``vocab_parallel_cross_entropy`` computes on each rank.

    It returns the per-token losses and the logits' gradients, one per rank.

    Megatron merges the max, the sum of exps and the target logit across ranks exactly, but
    its smoothing term is local: with ``Vp`` the rank's own vocabulary size,
    ``s = eps Vp / (Vp - 1)`` and ``loss_r = (1 - s)(lse - z_t) - s mean_local(z - lse)``;
    the gradient is ``softmax - (1 - s) onehot - s / Vp`` on the rank's classes. With one
    rank this is the exact loss with ``smoothing="others"``; with several, every rank has
    a different loss, and none is the exact one (:func:`vocab_parallel_value_and_grad`).
    Megatron also takes ``log`` of the exps after computing them, so in float32 a logit
    about 104 below the row max gives ``log 0``; this function computes in double and does
    not reproduce that. Requires ``0 < eps < 1`` as Megatron asserts (and ``eps = 0``, where
    there is no smoothing term).

    Parameters
    ----------
    shards : sequence of array_like of float
        ``shards[r]`` is ``(N, K_r)``: rank ``r``'s classes, in rank order.
    targets : array_like of int, shape (N,)
        The global class indices (Megatron has no ignore index).
    label_smoothing : float in [0, 1)
        ``eps``.

    Returns
    -------
    losses : list of ndarray
        Each rank's per-token losses, shape ``(N,)``.
    grads : list of ndarray
        Each rank's gradient of the sum of its per-token losses, shaped like its shard.

    Raises
    ------
    ValueError
        If ``label_smoothing`` is outside [0, 1) or a target is outside ``[0, K)``.
    """
    eps = float(label_smoothing)
    if not 0.0 <= eps < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1) (Megatron asserts 0 < eps < 1), "
                         f"got {label_smoothing!r}")
    offsets, K = _offsets(shards)
    t = np.asarray(targets)
    if t.dtype.kind not in "iu" or np.any((t < 0) | (t >= K)):
        raise ValueError(f"targets must be class indices in [0, {K - 1}] (Megatron has no "
                         f"ignore index)")
    stats = merge(*(partial_stats(s, t, class_offset=o) for s, o in zip(shards, offsets)))
    lse = stats.m + np.log1p(stats.rest)
    nll = (stats.m - stats.zt) + np.log1p(stats.rest)
    losses, grads = [], []
    for z, o in zip(shards, offsets):
        z = np.asarray(z, dtype=np.float64)
        Vp = z.shape[1]
        g = np.exp(z - lse[:, None])
        owned = (t >= o) & (t < o + Vp)
        rows = np.flatnonzero(owned)
        if eps > 0.0:
            s = eps * Vp / (Vp - 1)
            losses.append((1.0 - s) * nll - s * np.mean(z - lse[:, None], axis=1))
            g[rows, t[rows] - o] -= 1.0 - s
            g -= s / Vp
        else:
            losses.append(nll.copy())
            g[rows, t[rows] - o] -= 1.0
        grads.append(g)
    return losses, grads


# --- streaming over memory-mapped .npy files -----------------------------------------------

@fill_doc(CROSS_ENTROPY_OPTIONS, dict(grad=None, memory=256 << 20, progress=True), N_THREADS)
def stream_value_and_grad(logits: str | os.PathLike[str],
                          targets: ArrayLike | str | os.PathLike[str], *,
                          label_smoothing: float = 0.0, axis: int = -1,
                          reduction: Reduction = "mean", smoothing: Smoothing = "uniform",
                          class_weight: ArrayLike | None = None,
                          sample_weight: ArrayLike | str | os.PathLike[str] | None = None,
                          ignore_index: int | None = -100, z_loss: float = 0.0, kl: bool = False,
                          grad: str | os.PathLike[str] | None = None, memory: int = 256 << 20,
                          progress: bool = True, n_threads: int | None = None) -> Loss64:
    """The loss (and the gradient) of logits in an ``.npy`` file larger than memory.

    The file is read in row windows of about ``memory`` bytes. The "mean" divisor depends
    only on the targets and weights, so it is known before the first window; each window
    then goes through the kernel with row weights ``s * (1/D)``, as in memory. Only windows
    are ever mapped: the address space needed is ``memory`` plus the targets, whatever the
    file's size; the gradient is written from a reused buffer.

    Parameters
    ----------
    logits : str or os.PathLike
        The path of a 2-D C-order float32/float64 ``.npy`` (rows of classes).
    targets : array_like of int or str or os.PathLike
        Class indices, one per row, or the path of an ``.npy`` holding them (read whole,
        8 bytes per row).
    %(label_smoothing)s
    axis : int, default=-1
        Only -1: the file holds rows of classes.
    %(reduction)s
    %(smoothing)s
    %(class_weight)s
    sample_weight : array_like or str or os.PathLike, optional
        Per-row weights, or the path of an ``.npy`` holding them.
    %(ignore_index)s
    %(z_loss)s
    %(kl)s
    grad : str or os.PathLike, optional
        The path of an ``.npy`` to write the gradient to (created, or overwritten).
    memory : int, default=256 MiB
        About how many bytes of logits (and gradient) one window holds.
    progress : bool, default=True
        Print the progress to stderr.
    n_threads : int in [1, lsref.MAX_THREADS], optional
        Threads for the kernel, as :func:`lsref.cross_entropy`.

    Returns
    -------
    loss : numpy.float64 or ndarray
        The loss, as :func:`lsref.cross_entropy` gives it for the whole file.

    Raises
    ------
    %(raises)s
    """
    shape, fortran, dtype, offset = npy_header(logits)
    if len(shape) != 2 or fortran or dtype not in (np.float32, np.float64):
        raise ValueError(f"{logits}: need a 2-D C-order float32/float64 .npy, got shape "
                         f"{shape}, fortran_order={fortran}, dtype {dtype}")
    N, K = shape
    kw = given(locals(), CROSS_ENTROPY_OPTIONS)
    if kw["axis"] not in (-1, 1):
        raise ValueError("streamed logits are rows of classes: axis must be -1")
    t = np.load(targets, mmap_mode=None) if isinstance(targets, (str, os.PathLike)) \
        else np.asarray(targets)
    sw = kw.pop("sample_weight")
    if isinstance(sw, (str, os.PathLike)):
        sw = np.load(sw)
    p = _problem(t, K, dict(kw, sample_weight=sw))
    reduction = p.reduction
    D, _, _, _, s = _divisor(p)
    s = np.ones(N) if s is None else s
    # each row's weight carries 1/D, as in memory (D = 0: undivided, _params.mean_scale)
    row_scale = s * _params.mean_scale(D) if reduction == "mean" else s
    g_offset = new_npy(grad, shape, dtype) if grad is not None else None
    g_file = open(grad, "r+b") if grad is not None else None
    itemsize = np.dtype(dtype).itemsize
    step = max(1, int(memory) // (K * itemsize * (2 if grad is not None else 1)))
    rows_loss = np.empty(N) if reduction == "none" else None
    window_sums = []
    t0 = time.perf_counter()
    call_kw = {k: v for k, v in kw.items() if k not in ("reduction", "axis")}
    # the gradient goes through one reused buffer and a plain write: writing through a
    # mapping of the output file instead faults in every page, a cost per page that the
    # write does not have (the progress line prints the rate in MiB/s of logits)
    buf = np.empty((min(step, N), K), dtype) if grad is not None else None
    try:
        for r0 in range(0, N, step):
            r1 = min(N, r0 + step)
            z = np.memmap(logits, dtype=dtype, mode="r", offset=offset + r0 * K * itemsize,
                          shape=(r1 - r0, K))
            if buf is not None:
                out = buf[:r1 - r0]
                part = value_and_grad(z, t[r0:r1], reduction="none",
                                      sample_weight=row_scale[r0:r1], out=out,
                                      n_threads=n_threads, **call_kw)[0]
                g_file.seek(g_offset + r0 * K * itemsize)
                g_file.write(out.data)
            else:
                part = _loss_only(z, t[r0:r1], row_scale[r0:r1], n_threads, call_kw)
            part = np.asarray(part, np.float64)
            if rows_loss is not None:
                rows_loss[r0:r1] = part
            window_sums.append(np.sum(part))
            del z
            if progress:
                done = r1 * K * itemsize
                rate = done / max(time.perf_counter() - t0, 1e-9)
                print(f"\r  streaming {logits}: {100 * r1 / N:5.1f}% ({done / 2**30:.2f} of "
                      f"{N * K * itemsize / 2**30:.2f} GiB, {rate / 2**20:.0f} MiB/s)",
                      end="", file=sys.stderr, flush=True)
    finally:
        if g_file is not None:
            g_file.close()
    if progress:
        print(file=sys.stderr, flush=True)
    if reduction == "none":
        return rows_loss
    return np.float64(_params.reduce(reduction, np.array(window_sums, np.float64), D,
                                     scaled=True))


def _loss_only(z, t, row_scale, n_threads, kw):
    return cross_entropy(z, t, reduction="none", sample_weight=row_scale, n_threads=n_threads,
                         **kw)
