"""Label-smoothed cross-entropy of dask arrays, chunked along rows and classes.

Each chunk of logits yields its rows' partial statistics (``lsref.sharded``, computed by the
kernel); ``dask.array.reduction`` merges them across the class chunks in a tree, exactly;
each row chunk then finishes its rows' losses, and each chunk of logits gets its gradient
from its rows' ``lse``. Everything is lazy and runs on any scheduler, a
``dask.distributed`` cluster included::

    from dask.distributed import Client
    client = Client("tcp://scheduler:8786")      # or LocalCluster(n_workers=...)
    loss, grad = lsref.dask.value_and_grad(logits, targets, label_smoothing=0.1)
    loss.compute(), grad.to_zarr(...)            # or grad.compute()

The workers need lsref installed. Class-index targets only (numpy or dask, one per row).

``linear_value_and_grad`` is the last layer and the loss (``lsref.linear_value_and_grad``)
over hidden states chunked by rows, for more rows than one machine holds: each row chunk
runs the in-memory layer on its rows, and the weight's and bias's gradients are summed over
the chunks in a tree.
"""
from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

try:
    import dask.array as da
except ImportError:                                  # pragma: no cover - exercised by hand
    raise ImportError("lsref.dask needs dask: python3 -m pip install \"dask[array]\" "
                      "distributed") \
        from None

from . import _params, sharded
from ._keywords import CROSS_ENTROPY_OPTIONS, LINEAR_OPTIONS, N_THREADS, fill_doc, given
from ._typing import Reduction, Smoothing
from ._validation import check_linear, check_problem_shape
from .linear import layer_rows
from .loss import loss_dtype as _storage_loss_dtype

__all__ = ["value_and_grad", "cross_entropy", "cross_entropy_grad", "linear_value_and_grad"]

_FIELDS = ("m", "rest", "u", "zt", "has_t", "bad", "wsum", "classes")


def _pack(s):
    n = s.n_rows
    return np.stack([s.m, s.rest, s.u, s.zt, s.has_t.astype(float), s.bad.astype(float),
                     np.full(n, s.wsum), np.full(n, float(s.classes))], axis=-1)


def _unpack(a):
    a = a.reshape(-1, len(_FIELDS))
    wsum = float(a[0, 6]) if a.shape[0] else 0.0
    classes = int(a[0, 7]) if a.shape[0] else 0
    return sharded.PartialStats(a[:, 0].copy(), a[:, 1].copy(), a[:, 2].copy(),
                                a[:, 3].copy(), a[:, 4] != 0, a[:, 5] != 0, wsum, classes)


def _stats_block(z, t, class_weight=None, block_info=None):
    c0 = block_info[0]["array-location"][1][0]
    s = sharded.partial_stats(z, t[:, 0], class_offset=c0, class_weight=class_weight,
                              n_threads=1)
    return _pack(s)[:, None, :]


def _merge_blocks(x, axis=None, keepdims=True):
    """Merge the statistics along axis 1 (the class chunks) of an (n, j, 8) block."""
    x = np.asarray(x)
    merged = sharded.merge(*(_unpack(x[:, j, :]) for j in range(x.shape[1])))
    return _pack(merged)[:, None, :]


def _finish_block(stats, t, s, num_classes=None, kw=None):
    """Per row: [s*loss_row, m, s*(C + 2 lam lse)/se, s, counts in D (s*w_t)]."""
    st = _unpack(stats)
    t = t[:, 0]
    sw = None if s is None else s[:, 0]
    terms = sharded.finish(st, t, num_classes, **dict(kw, reduction="none", sample_weight=sw))
    D_part = sharded.divisor(t, num_classes, class_weight=kw.get("class_weight"),
                             sample_weight=sw, ignore_index=kw.get("ignore_index", -100)) \
        if t.size else 0.0
    d = np.zeros(t.size)
    if t.size:
        d[0] = D_part                                    # this chunk's share of D
    return np.stack([terms.row_loss, terms.m, terms.coef_e, terms.coef_q, d], axis=-1)


def _grad_block(z, t, m, ce, cq, class_weight=None, q_t=0.0, beta=0.0, out_dtype=None,
                block_info=None):
    c0 = block_info[0]["array-location"][1][0]
    terms = sharded.RowTerms(None, None, m[:, 0], ce[:, 0], cq[:, 0], q_t, beta,
                             class_weight, 1.0)
    g = sharded.block_gradient(z, t[:, 0], terms, class_offset=c0, n_threads=1)
    return g.astype(out_dtype, copy=False)  # 16-bit logits: computed in float32, stored 16-bit


def _column(a, chunks, name):
    """A per-row argument as an (N, 1) dask array chunked like the logits' rows."""
    if a is None:
        return None
    if not isinstance(a, da.Array):
        a = np.asarray(a)
    if a.ndim != 1 or a.shape[0] != sum(chunks):
        raise ValueError(f"{name} must be one value per row ({sum(chunks)}), got shape "
                         f"{a.shape}")
    a = a if isinstance(a, da.Array) else da.from_array(a, chunks=(chunks,))
    return a.rechunk((chunks,))[:, None]


def _prepare(logits, targets, kw):
    if not isinstance(logits, da.Array):
        raise TypeError(f"logits must be a dask array, got {type(logits).__name__} (use "
                        f"lsref.value_and_grad for NumPy arrays)")
    if logits.ndim != 2:
        raise ValueError(f"logits must be 2-D (rows, classes), got shape {logits.shape}")
    if kw.get("axis", -1) not in (-1, 1):
        raise ValueError("lsref.dask takes rows of classes: axis must be -1")
    kw = {k: v for k, v in kw.items() if k != "axis"}
    K = logits.shape[1]
    cw = kw.get("class_weight")
    if cw is not None:
        cw = np.asarray(cw, dtype=np.float64)
        kw["class_weight"] = cw
    # the scalar options and the weights, checked now rather than on the workers
    p = check_problem_shape((0, K), np.zeros(0, np.int64), **{
        k: v for k, v in kw.items() if k != "sample_weight"})
    rows = logits.chunks[0]
    t = _column(targets, rows, "targets")
    if t is None or t.dtype.kind not in "iu":
        raise TypeError(f"targets must be integer class indices, got dtype "
                        f"{None if t is None else t.dtype}")
    sw = _column(kw.pop("sample_weight", None), rows, "sample_weight")
    return logits, t, sw, kw, K, _params.index_target(p.label_smoothing, K, p.smoothing)


def _terms(logits, t, sw, kw, K, split_every):
    ncb = len(logits.chunks[1])
    stats = da.map_blocks(_stats_block, logits, t, class_weight=kw.get("class_weight"),
                          chunks=(logits.chunks[0], (1,) * ncb, (len(_FIELDS),)),
                          new_axis=2, dtype=np.float64, meta=np.empty((0, 0, 0)))
    merged = da.reduction(stats, chunk=lambda x, axis, keepdims: x,
                          combine=_merge_blocks, aggregate=_merge_blocks, axis=1,
                          keepdims=True, dtype=np.float64, split_every=split_every,
                          concatenate=True, meta=np.empty((0, 0, 0)))
    args = [merged[:, 0, :], t] + ([sw] if sw is not None else [])

    def finish(st, tt, ss=None):
        return _finish_block(st, tt, ss, num_classes=K, kw=kw)

    return da.map_blocks(finish, *args, chunks=(logits.chunks[0], (5,)), dtype=np.float64,
                         meta=np.empty((0, 0)))


@fill_doc(CROSS_ENTROPY_OPTIONS, dict(split_every=None))
def value_and_grad(logits: da.Array, targets: ArrayLike | da.Array, *, label_smoothing: float = 0.0,
                   axis: int = -1, reduction: Reduction = "mean", smoothing: Smoothing = "uniform",
                   class_weight: ArrayLike | None = None,
                   sample_weight: ArrayLike | da.Array | None = None,
                   ignore_index: int | None = -100, z_loss: float = 0.0, kl: bool = False,
                   split_every: int | None = None) -> tuple[da.Array, da.Array]:
    """The loss and its gradient of dask logits, both lazy.

    Parameters
    ----------
    logits : dask.array.Array of float, shape (N, K)
        Logits chunked along rows and classes.
    targets : array_like of int, shape (N,)
        Class indices, NumPy or dask.
    %(label_smoothing)s
    axis : int, default=-1
        Only -1: rows of classes.
    %(reduction)s
    %(smoothing)s
    %(class_weight)s
    sample_weight : array_like of shape (N,), optional
        Per-row weights, NumPy or dask.
    %(ignore_index)s
    %(z_loss)s
    %(kl)s
    split_every : int, optional
        The fan-in of the merge tree over class chunks (dask's default otherwise).

    Returns
    -------
    loss : dask.array.Array
        The loss, as :func:`lsref.cross_entropy` gives it (lazy).
    grad : dask.array.Array
        The gradient, chunked as ``logits`` (lazy).

    Raises
    ------
    %(raises)s


    Examples
    --------
    >>> import numpy as np, dask.array as da, lsref, lsref.dask
    >>> z = np.random.default_rng(0).standard_normal((8, 12)); t = np.arange(8) % 12
    >>> loss, grad = lsref.dask.value_and_grad(da.from_array(z, chunks=(4, 5)), t,
    ...                                        label_smoothing=0.1)
    >>> ref_loss, ref_grad = lsref.value_and_grad(z, t, label_smoothing=0.1)
    >>> bool(np.isclose(loss.compute(), ref_loss)), bool(np.allclose(grad.compute(), ref_grad))
    (True, True)
    """
    kw = given(locals(), CROSS_ENTROPY_OPTIONS)
    logits, t, sw, kw, K, (q_t, beta) = _prepare(logits, targets, kw)
    reduction = kw.get("reduction", "mean")
    # the dtypes of the in-memory functions (SEMANTICS.md, "Storage"), declared here and
    # computed by the blocks alike: the gradient in the logits' dtype (native byte order),
    # the loss too, except float32 for 16-bit logits
    grad_dtype = np.dtype(logits.dtype).newbyteorder("=")
    loss_dtype = _storage_loss_dtype(grad_dtype)
    rows = _terms(logits, t, sw, kw, K, split_every)
    total = rows[:, 0].sum()
    if reduction == "mean":
        D = rows[:, 4].sum()
        loss = _params.mean(total, D)           # lazy: the rules of the in-memory path
        scale = _params.mean_scale(D)
    else:
        loss = total if reduction == "sum" else rows[:, 0]
        scale = 1.0
    grad = da.map_blocks(_grad_block, logits, t, rows[:, 1:2], rows[:, 2:3] * scale,
                         rows[:, 3:4] * scale, class_weight=kw.get("class_weight"), q_t=q_t,
                         beta=beta, out_dtype=grad_dtype, dtype=grad_dtype,
                         meta=np.empty((0, 0), grad_dtype))
    return loss.astype(loss_dtype), grad


@fill_doc(CROSS_ENTROPY_OPTIONS, dict(split_every=None))
def cross_entropy(logits: da.Array, targets: ArrayLike | da.Array, *, label_smoothing: float = 0.0,
                  axis: int = -1, reduction: Reduction = "mean", smoothing: Smoothing = "uniform",
                  class_weight: ArrayLike | None = None,
                  sample_weight: ArrayLike | da.Array | None = None,
                  ignore_index: int | None = -100, z_loss: float = 0.0, kl: bool = False,
                  split_every: int | None = None) -> da.Array:
    """The loss alone (lazy).

    Parameters
    ----------
    logits : dask.array.Array of float, shape (N, K)
        Logits chunked along rows and classes.
    targets : array_like of int, shape (N,)
        Class indices, NumPy or dask.
    %(label_smoothing)s
    axis : int, default=-1
        Only -1: rows of classes.
    %(reduction)s
    %(smoothing)s
    %(class_weight)s
    sample_weight : array_like of shape (N,), optional
        Per-row weights, NumPy or dask.
    %(ignore_index)s
    %(z_loss)s
    %(kl)s
    split_every : int, optional
        The fan-in of the merge tree over class chunks (dask's default otherwise).

    Returns
    -------
    dask.array.Array
        The loss (lazy).

    Raises
    ------
    %(raises)s
    """
    return value_and_grad(logits, targets, split_every=split_every,
                          **given(locals(), CROSS_ENTROPY_OPTIONS))[0]


@fill_doc(CROSS_ENTROPY_OPTIONS, dict(split_every=None))
def cross_entropy_grad(logits: da.Array, targets: ArrayLike | da.Array, *,
                       label_smoothing: float = 0.0, axis: int = -1, reduction: Reduction = "mean",
                       smoothing: Smoothing = "uniform", class_weight: ArrayLike | None = None,
                       sample_weight: ArrayLike | da.Array | None = None,
                       ignore_index: int | None = -100, z_loss: float = 0.0, kl: bool = False,
                       split_every: int | None = None) -> da.Array:
    """The gradient alone (lazy).

    Parameters
    ----------
    logits : dask.array.Array of float, shape (N, K)
        Logits chunked along rows and classes.
    targets : array_like of int, shape (N,)
        Class indices, NumPy or dask.
    %(label_smoothing)s
    axis : int, default=-1
        Only -1: rows of classes.
    %(reduction)s
    %(smoothing)s
    %(class_weight)s
    sample_weight : array_like of shape (N,), optional
        Per-row weights, NumPy or dask.
    %(ignore_index)s
    %(z_loss)s
    %(kl)s
    split_every : int, optional
        The fan-in of the merge tree over class chunks (dask's default otherwise).

    Returns
    -------
    dask.array.Array
        The gradient, chunked as ``logits`` (lazy).

    Raises
    ------
    %(raises)s
    """
    return value_and_grad(logits, targets, split_every=split_every,
                          **given(locals(), CROSS_ENTROPY_OPTIONS))[1]


# --- the linear layer + loss ---------------------------------------------------------------

def _layer_block(h, t, sw, weight, bias, options, chunk_size, n_threads):
    """One row chunk of lsref.dask.linear_value_and_grad: its rows' losses, the gradients of
    their sum, and (for "mean") its share of the divisor D, which adds up over row chunks."""
    n = h.shape[0]
    t = t.reshape(n)
    block = dict(options, reduction="sum", sample_weight=None if sw is None else sw.reshape(n))
    p = check_linear(h, weight, bias, t, block)[3]
    plan, row_loss, dh, dW, db = layer_rows(h, weight, bias, p, chunk_size, n_threads, True)
    # the block's D from its own plan: the rows that count, their weights (one rule, _params)
    D = (_params.mean_divisor(p, plan.targets, plan.active)
         if options["reduction"] == "mean" else 0.0)
    return row_loss, dh, dW, db, np.float64(D)


def _tree_sum(parts, split_every):
    """The sum of delayed arrays, in a tree of fan-in ``split_every``."""
    from dask import delayed
    add = delayed(lambda *xs: sum(xs[1:], xs[0]), pure=True)
    while len(parts) > 1:
        parts = [add(*parts[i:i + split_every]) if len(parts[i:i + split_every]) > 1
                 else parts[i] for i in range(0, len(parts), split_every)]
    return parts[0]


@fill_doc(LINEAR_OPTIONS, N_THREADS, dict(chunk_size=None, split_every=None))
def linear_value_and_grad(h: da.Array, weight: ArrayLike, targets: ArrayLike | da.Array, *,
                          bias: ArrayLike | None = None, label_smoothing: float = 0.0,
                          reduction: Reduction = "mean", smoothing: Smoothing = "uniform",
                          class_weight: ArrayLike | None = None,
                          sample_weight: ArrayLike | da.Array | None = None,
                          ignore_index: int | None = -100, z_loss: float = 0.0, kl: bool = False,
                          n_threads: int | None = None, chunk_size: int | None = None,
                          split_every: int | None = None
                          ) -> tuple[da.Array, da.Array, da.Array, da.Array | None]:
    """The last layer and the loss (:func:`lsref.linear_value_and_grad`) of dask rows.

    Parameters
    ----------
    h : dask.array.Array of float32 or float64, shape (N, d)
        Hidden states chunked by rows (the features in one chunk; rechunked if not).
    %(weight)s
    targets : array_like of int, shape (N,)
        Class indices, NumPy or dask.
    %(bias)s
    %(label_smoothing)s
    %(reduction)s
    %(smoothing)s
    %(class_weight)s
    sample_weight : array_like of shape (N,), optional
        Per-row weights, NumPy or dask.
    %(ignore_index)s
    %(z_loss)s
    %(kl)s
    %(n_threads)s
    %(chunk_size)s
    split_every : int, optional
        The fan-in of the tree that sums the weight's gradient over row chunks (8).

    Returns
    -------
    loss : dask.array.Array
        As :func:`lsref.linear_cross_entropy` gives it (lazy).
    dh : dask.array.Array
        Chunked as ``h`` (lazy).
    dweight : dask.array.Array
        ``(V, d)``, one chunk (lazy).
    dbias : dask.array.Array or None
        ``(V,)`` (lazy); None without a bias.

    Raises
    ------
    %(raises)s

    Examples
    --------
    >>> import numpy as np, dask.array as da, lsref, lsref.dask
    >>> rng = np.random.default_rng(0)
    >>> h, W, t = rng.standard_normal((12, 4)), rng.standard_normal((6, 4)), np.arange(12) % 6
    >>> loss, dh, dW, db = lsref.dask.linear_value_and_grad(
    ...     da.from_array(h, chunks=(5, 4)), W, t, label_smoothing=0.1)
    >>> ref = lsref.linear_value_and_grad(h, W, t, label_smoothing=0.1)
    >>> bool(np.isclose(loss.compute(), ref[0])), bool(np.allclose(dW.compute(), ref[2]))
    (True, True)
    """
    from dask import delayed
    if not isinstance(h, da.Array):
        raise TypeError(f"h must be a dask array, got {type(h).__name__} (use "
                        f"lsref.linear_value_and_grad for NumPy arrays)")
    if h.ndim != 2:
        raise ValueError(f"h must be 2-D (rows, features), got shape {h.shape}")
    options = {name: value for name, value in locals().items()
               if name in LINEAR_OPTIONS and name not in ("bias", "sample_weight")}
    # the layer's arrays and the options, checked now rather than on the workers
    _, weight, bias, _ = check_linear(np.empty((0, h.shape[1]), h.dtype), weight, bias,
                                      np.zeros(0, np.int64), options)
    split_every = 8 if split_every is None else int(split_every)
    if split_every < 2:
        raise ValueError(f"split_every must be at least 2, got {split_every}")
    h = h.rechunk({1: -1})
    rows = h.chunks[0]
    t = _column(targets, rows, "targets")
    if t.dtype.kind not in "iu":
        raise TypeError(f"targets must be integer class indices, got dtype {t.dtype}")
    sw = _column(sample_weight, rows, "sample_weight")
    V, d, dtype = weight.shape[0], h.shape[1], h.dtype
    hb, tb = h.to_delayed().ravel(), t.to_delayed().ravel()
    swb = [None] * len(hb) if sw is None else sw.to_delayed().ravel()
    block = delayed(_layer_block, nout=5, pure=True)
    parts = [block(hb[i], tb[i], swb[i], weight, bias, options, chunk_size, n_threads)
             for i in range(len(hb))]
    row_loss = da.concatenate([da.from_delayed(p[0], (n,), np.float64)
                               for p, n in zip(parts, rows)])
    dh = da.concatenate([da.from_delayed(p[1], (n, d), dtype) for p, n in zip(parts, rows)])
    dW = da.from_delayed(_tree_sum([p[2] for p in parts], split_every), (V, d), dtype)
    db = None if bias is None else da.from_delayed(
        _tree_sum([p[3] for p in parts], split_every), (V,), np.float64)
    loss_dtype = _storage_loss_dtype(np.dtype(dtype))
    if reduction == "mean":
        D = da.from_delayed(_tree_sum([p[4] for p in parts], split_every), (), np.float64)
        loss = _params.mean(row_loss.sum(), D)    # lazy: the rules of the in-memory path
        scale = _params.mean_scale(D)
        dh, dW = (dh * scale).astype(dtype), (dW * scale).astype(dtype)
        db = None if db is None else db * scale
    else:
        loss = row_loss.sum() if reduction == "sum" else row_loss
    return (loss.astype(loss_dtype), dh, dW, None if db is None else db.astype(dtype))
