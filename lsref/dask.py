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
"""
import numpy as np

try:
    import dask.array as da
except ImportError:                                  # pragma: no cover - exercised by hand
    raise ImportError("lsref.dask needs dask: python3 -m pip install \"lsref[dask]\"") \
        from None

from . import _params, sharded
from ._keywords import CROSS_ENTROPY_OPTIONS, fill_doc, given
from ._validation import check_problem_shape
from .loss import loss_dtype as _storage_loss_dtype

__all__ = ["value_and_grad", "cross_entropy", "cross_entropy_grad"]

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
    finish = (lambda st, tt, ss=None: _finish_block(st, tt, ss, num_classes=K, kw=kw))
    return da.map_blocks(finish, *args, chunks=(logits.chunks[0], (5,)), dtype=np.float64,
                         meta=np.empty((0, 0)))


@fill_doc(CROSS_ENTROPY_OPTIONS, dict(split_every=None))
def value_and_grad(logits, targets, *, label_smoothing=0.0, axis=-1, reduction="mean",
                   smoothing="uniform", class_weight=None, sample_weight=None,
                   ignore_index=-100, z_loss=0.0, kl=False,
                   split_every=None):
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
def cross_entropy(logits, targets, *, label_smoothing=0.0, axis=-1, reduction="mean",
                  smoothing="uniform", class_weight=None, sample_weight=None,
                  ignore_index=-100, z_loss=0.0, kl=False,
                  split_every=None):
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
def cross_entropy_grad(logits, targets, *, label_smoothing=0.0, axis=-1, reduction="mean",
                       smoothing="uniform", class_weight=None, sample_weight=None,
                       ignore_index=-100, z_loss=0.0, kl=False,
                       split_every=None):
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
