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

so the gradient of any block needs only that block and its rows' ``m`` and ``1 + rest``. The statistics
and the gradient are computed by the Cython kernel; merging and finishing are O(rows).
Class-index targets only (probability targets have no single target logit to carry).
"""
import os
import sys
import time
from dataclasses import dataclass

import numpy as np

from . import _kernel
from ._validation import as_array, check_problem
from .reference import _DEFAULTS
from .loss import _threads, value_and_grad

__all__ = ["PartialStats", "RowTerms", "partial_stats", "merge", "concat_rows", "finish",
           "block_gradient", "vocab_parallel_value_and_grad", "megatron_vocab_parallel",
           "stream_value_and_grad", "divisor"]


@dataclass(frozen=True)
class PartialStats:
    """Per-row statistics of one (row block, class block), or of several merged."""

    m: np.ndarray           # (n,) max over the classes covered (-inf: no mass there)
    rest: np.ndarray        # (n,) sum of exp(z - m), minus the max's own 1
    u: np.ndarray           # (n,) sum of w_k (z_k - m) over w_k != 0
    zt: np.ndarray          # (n,) the target's logit (0 where it is not covered)
    has_t: np.ndarray       # (n,) bool: the target's class is covered
    bad: np.ndarray         # (n,) bool: a NaN or +inf among the covered logits
    wsum: float             # sum of the nonzero class weights covered
    classes: int            # how many classes are covered

    @property
    def n_rows(self):
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


def partial_stats(z_block, targets, *, class_offset=0, class_weight=None, n_threads=None):
    """The statistics of one block of logits: rows ``z_block[i]`` are classes
    ``class_offset ... class_offset + z_block.shape[1] - 1`` of the rows whose global
    class-index targets are ``targets``. ``class_weight`` is the full (K,) weight vector.

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
    _kernel.block_stats(z, wb, t, offset, m, rest, u, zt, has_t, bad,
                        _threads(n_threads, z.size))
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


def merge(*stats):
    """Merge the statistics of class blocks of the same rows (in any order and grouping:
    the merge is associative and commutative up to rounding)."""
    if not stats:
        raise ValueError("merge needs at least one PartialStats")
    out = stats[0]
    for s in stats[1:]:
        out = _merge2(out, s)
    return out


def concat_rows(stats):
    """Stack the statistics of consecutive row blocks (each covering the same classes)."""
    stats = list(stats)
    if len({(s.classes, s.wsum) for s in stats}) != 1:
        raise ValueError("concat_rows needs row blocks that cover the same classes")
    cat = {f: np.concatenate([getattr(s, f) for s in stats])
           for f in ("m", "rest", "u", "zt", "has_t", "bad")}
    return PartialStats(**cat, wsum=stats[0].wsum, classes=stats[0].classes)


@dataclass(frozen=True)
class RowTerms:
    """A finished problem: the loss, and what every block's gradient needs per row."""

    loss: object            # the reduced loss (float64 scalar, or (n,) for "none")
    row_loss: np.ndarray    # (n,) s * loss_row (before any 1/D)
    m: np.ndarray           # (n,) the row max (0 on ignored rows)
    coef_e: np.ndarray      # (n,) s (C + 2 lam lse) / (D se): g_k = coef_e exp(z_k - m) - ...
    coef_q: np.ndarray      # (n,) s / D, 0 on ignored rows
    q_t: float
    beta: float
    class_weight: object    # (K,) float64 or None
    divisor: float          # D of "mean" (1 for "sum" and "none")


def _xlogx(x):
    return x * np.log(x) if x > 0 else 0.0


def _problem(targets, num_classes, kw):
    """Validate the keywords and targets as the front door does (the logits stand in as a
    zero-memory broadcast array)."""
    t = np.asarray(targets)
    stand_in = np.broadcast_to(np.zeros((), np.float64), t.shape + (int(num_classes),))
    p = check_problem(stand_in, t, **kw)
    if p.prob_targets:
        raise ValueError("sharded statistics take class-index targets; probability targets "
                         "have no single target logit")
    return p


_KW = _DEFAULTS                    # cross_entropy's keywords and their defaults


def divisor(targets, num_classes, *, class_weight=None, sample_weight=None,
            ignore_index=-100):
    """D of ``reduction="mean"``: the sum over non-ignored rows of sample weight times the
    target's class weight. It needs no logits, so a stream can know it before it starts."""
    p = _problem(targets, num_classes, dict(_KW, class_weight=class_weight,
                                            sample_weight=sample_weight,
                                            ignore_index=ignore_index))
    return _divisor(p)[0]


def _divisor(p):
    t = p.targets.reshape(-1)
    active = np.ones(t.shape, bool) if p.ignore_index is None else t != p.ignore_index
    s = np.ones(t.shape) if p.sample_weight is None else p.sample_weight.reshape(-1)
    w_t = np.ones(t.shape) if p.class_weight is None else \
        p.class_weight[np.where(active, t, 0)]
    return float(np.sum(s[active] * w_t[active])), active, s, w_t


def finish(stats, targets, num_classes, **kw):
    """The loss from merged statistics (every class covered), and the per-row terms that
    :func:`block_gradient` needs. Takes the keywords of :func:`lsref.cross_entropy`."""
    kw = {**_KW, **kw}
    p = _problem(targets, num_classes, kw)
    K = p.n_classes
    if stats.classes != K or stats.n_rows != p.n_rows:
        raise ValueError(f"the statistics cover {stats.classes} classes of {stats.n_rows} "
                         f"rows; the problem has {K} classes and {p.n_rows} rows (merge "
                         f"every class block first)")
    t = p.targets.reshape(-1)
    D, active, s, w_t = _divisor(p)
    W = K if p.class_weight is None else float(p.class_weight[p.class_weight != 0].sum())
    q_t, beta = p.q_target_and_beta
    lam = p.z_loss
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        L = np.log1p(stats.rest)
        lse = stats.m + L
        row = np.zeros(p.n_rows)
        if beta != 0.0:
            row += beta * (W * L - stats.u)
        coef_t = (q_t - beta) * w_t
        row += np.where(coef_t != 0.0, coef_t * ((stats.m - stats.zt) + L), 0.0)
        if lam:
            row += lam * lse ** 2
        if p.kl:
            row += w_t * _xlogx(q_t) + (W - w_t) * _xlogx(beta)
        row *= s
        C = beta * W + coef_t
        undefined = stats.bad | (stats.m == -np.inf)
    row = np.where(active, np.where(undefined, np.nan, row), 0.0)
    scale = 1.0
    if p.reduction == "mean":
        loss = np.float64(row.sum() / D) if D != 0 else np.float64(np.nan)
        # D = 0: as the in-memory kernel and the oracle do, the gradient is left unscaled
        # (0 when every row is ignored; the gradient of the sum when the targets' weights
        # sum to 0)
        scale = 1.0 / D if D != 0 else 1.0
    elif p.reduction == "sum":
        loss = np.float64(row.sum())
    else:
        loss = row.reshape(p.batch_shape)
    with np.errstate(invalid="ignore", divide="ignore"):
        coef_e = np.where(active, np.where(undefined, np.nan,
                                           s * scale * (C + 2 * lam * lse) / (1.0 + stats.rest)),
                          0.0)
    coef_q = np.where(active, s * scale, 0.0)
    m = np.where(active & ~undefined, stats.m, 0.0)
    return RowTerms(loss, row, m, coef_e, coef_q, q_t, beta, p.class_weight,
                    D if p.reduction == "mean" else 1.0)


def block_gradient(z_block, targets, terms, *, class_offset=0, rows=slice(None), out=None,
                   n_threads=None):
    """The gradient of one block of logits, from the finished :class:`RowTerms` of all rows
    (``rows`` selects this block's rows in them). Written to ``out`` when given."""
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
    _kernel.block_grad(z, wb, t, int(class_offset), m, ce, cq, terms.q_t, terms.beta, out,
                       _threads(n_threads, z.size))
    return out


# --- vocabulary-parallel shards ------------------------------------------------------------

def _offsets(shards):
    sizes = [np.shape(s)[-1] for s in shards]
    return np.concatenate([[0], np.cumsum(sizes)]).astype(int), int(sum(sizes))


def vocab_parallel_value_and_grad(shards, targets, **kw):
    """The exact loss and gradient of logits split along the vocabulary, one array per rank
    (as a tensor-parallel run holds them): ``shards[r]`` is ``(N, K_r)``, classes in rank
    order. Returns ``(loss, [grad_r])``. Takes the keywords of :func:`lsref.cross_entropy`
    (2-D logits, class axis last)."""
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


def megatron_vocab_parallel(shards, targets, label_smoothing):
    """What Megatron-LM's ``vocab_parallel_cross_entropy`` computes on each rank: the
    per-token losses and the logits' gradients, one per rank.

    Megatron merges the max, the sum of exps and the target logit across ranks exactly, but
    its smoothing term is local: with ``Vp`` the rank's own vocabulary size,
    ``s = eps Vp / (Vp - 1)`` and ``loss_r = (1 - s)(lse - z_t) - s mean_local(z - lse)``;
    the gradient is ``softmax - (1 - s) onehot - s / Vp`` on the rank's classes. With one
    rank this is the exact loss with ``smoothing="others"``; with several, every rank has
    a different loss, and none is the exact one (:func:`vocab_parallel_value_and_grad`).
    Megatron also takes ``log`` of the exps after computing them, so in float32 a logit
    about 104 below the row max gives ``log 0``; this function computes in double and does
    not reproduce that. Requires ``0 < eps < 1`` as Megatron asserts (and ``eps = 0``, where
    there is no smoothing term)."""
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

def _npy_header(path):
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read = {(1, 0): np.lib.format.read_array_header_1_0,
                (2, 0): np.lib.format.read_array_header_2_0}.get(version)
        if read is None:
            raise ValueError(f"{path}: .npy format version {version} is not supported")
        shape, fortran, dtype = read(f)
        offset = f.tell()
    return shape, fortran, dtype, offset


def _new_npy(path, shape, dtype):
    """An .npy file of the given shape, its data not written yet (a sparse file), without
    mapping it whole (a memory limit on the address space would forbid that)."""
    with open(path, "wb") as f:
        np.lib.format.write_array_header_2_0(f, dict(descr=np.lib.format.dtype_to_descr(
            np.dtype(dtype)), fortran_order=False, shape=tuple(shape)))
        offset = f.tell()
        f.truncate(offset + int(np.prod(shape)) * np.dtype(dtype).itemsize)
    return offset


def stream_value_and_grad(logits, targets, *, grad=None, memory=256 << 20, progress=True,
                          n_threads=None, **kw):
    """The loss (and, with ``grad=``, the gradient) of logits in an ``.npy`` file larger than
    memory, reading it in row windows of about ``memory`` bytes.

    ``logits`` is the path of a 2-D C-order float32/float64 ``.npy``; ``targets`` (and a
    ``sample_weight``) are arrays or ``.npy`` paths, read whole (8 bytes per row).
    ``grad`` is the path of an ``.npy`` to write the gradient to (created, or overwritten).
    The "mean" divisor depends only on the targets and weights, so it is known before the
    first window; each window then goes through the kernel with ``reduction="sum"`` and
    row weights ``s / D``. Only windows are ever mapped: the address space needed is
    ``memory`` plus the targets, whatever the file's size; the gradient is written from a
    reused buffer.
    """
    shape, fortran, dtype, offset = _npy_header(logits)
    if len(shape) != 2 or fortran or dtype not in (np.float32, np.float64):
        raise ValueError(f"{logits}: need a 2-D C-order float32/float64 .npy, got shape "
                         f"{shape}, fortran_order={fortran}, dtype {dtype}")
    N, K = shape
    kw = {**_KW, **kw}
    if kw["axis"] not in (-1, 1):
        raise ValueError("streamed logits are rows of classes: axis must be -1")
    t = np.load(targets, mmap_mode=None) if isinstance(targets, (str, os.PathLike)) \
        else np.asarray(targets)
    sw = kw.pop("sample_weight")
    if isinstance(sw, (str, os.PathLike)):
        sw = np.load(sw)
    p = _problem(t, K, dict(kw, sample_weight=sw))
    reduction = p.reduction
    D, active, s, _ = _divisor(p)
    row_scale = s / D if reduction == "mean" and D != 0 else s   # D = 0: as in memory
    g_offset = _new_npy(grad, shape, dtype) if grad is not None else None
    g_file = open(grad, "r+b") if grad is not None else None
    itemsize = np.dtype(dtype).itemsize
    step = max(1, int(memory) // (K * itemsize * (2 if grad is not None else 1)))
    rows_loss = np.empty(N) if reduction == "none" else None
    total = 0.0
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
            total += float(np.sum(part))
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
    if reduction == "mean" and D == 0:
        return np.float64(np.nan)
    return np.float64(total)


def _loss_only(z, t, row_scale, n_threads, kw):
    from .loss import cross_entropy
    return cross_entropy(z, t, reduction="none", sample_weight=row_scale, n_threads=n_threads,
                         **kw)
