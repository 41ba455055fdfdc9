"""The last layer and the loss in one pass: ``logits = h W^T + b`` and label-smoothed
cross-entropy, without the (N, V) logits.

A language model's logits are the largest array of its step (8192 tokens x 32000 classes
is 1 GB in float32), made only to be reduced to a loss and a gradient. Here the rows go in
chunks: a chunk's logits are written by BLAS into one reused buffer, the kernel turns them
into their gradient in place (``out=`` the logits), and BLAS takes that gradient on to the
layer's inputs and weights::

    Z_c = h_c W^T + b        (into the buffer)
    G_c = dloss/dZ_c          (the kernel, in place; the rows carry 1/D for "mean", D known
                               before the first chunk from the targets and weights)
    dh_c = G_c W,  dW += G_c^T h_c (one GEMM, or by tiles of classes),  db += sum over rows of G_c

The kernel's results do not depend on ``n_threads`` (bit for bit); the GEMMs are BLAS's, on
BLAS's own threads. ``lsref.reference.linear_value_and_grad`` is the oracle (the logits
materialised in float64).
"""
from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ._blas import gemm_at_b
from ._keywords import LINEAR_OPTIONS, N_THREADS, fill_doc
from ._typing import FloatArray, Loss, Reduction, Smoothing
from ._validation import Problem, check_linear
from .loss import KernelPlan, resolve_threads

__all__ = ["linear_cross_entropy", "linear_value_and_grad", "chunk_rows", "layer_rows"]

# The automatic chunk (chunk_rows): the buffer of a chunk's logits takes about 1/LOGITS_SHARE
# of what all the (N, V) logits would (the goal: extra memory <= 1/8 of them, with room for the
# other buffers: at 2048 x 128256, 224 rows, 0.109 of the logits), or SMALL_BUFFER bytes if
# that is more (below it chunking saves little memory
# and costs BLAS speed: GEMMs on few rows run slower, e.g. on a 2-core AVX-512 EPYC, float32,
# d = 512, V = 32000, the whole step took 2.2 s in chunks of 192 rows, 1.55 s of 512 and
# 1.27 s of 1024; at d = 1024, 256 rows ran h W^T at 169 GFLOP/s against 182 for 1024), and
# at most MAX_ROWS rows, past which BLAS gains nothing and the buffer only grows. Whether the
# buffer fits a cache does not matter here: the kernel's one pass over it is 1-2% of the time.
LOGITS_SHARE = 9
SMALL_BUFFER = 64 * 2 ** 20
MAX_ROWS = 2048
# The kernel runs on one thread by default here: between the GEMMs, BLAS's threads are still
# spinning when the kernel starts, and two kernel threads fought them (same machine, d = 512,
# the kernel's time per step: 95 ms on two threads against 39 on one, in chunks of 192 rows;
# 32 against 27 in chunks of 1024).
KERNEL_THREADS = 1
# The scratch of the weight's gradient (_gemm_accumulate): 2048 classes at d = 1024, float32.
TILE_BYTES = 8 * 2 ** 20


def chunk_rows(n_rows: int, row_bytes: int, chunk_size: int | None = None) -> int:
    """Rows per chunk: ``chunk_size`` when given (checked), else the automatic choice for
    ``n_rows`` rows of logits of ``row_bytes`` bytes each (see LOGITS_SHARE above).

    Examples
    --------
    >>> from lsref.linear import chunk_rows
    >>> row = 32000 * 4                                  # V = 32000 float32 logits
    >>> chunk_rows(8192, row), chunk_rows(2048, row), chunk_rows(2048, 128256 * 4)
    (896, 512, 224)
    >>> chunk_rows(8192, row, chunk_size=100)
    100
    """
    if chunk_size is not None:
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)):
            raise TypeError(f"chunk_size must be a positive integer or None, got "
                            f"{type(chunk_size).__name__}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive integer, got {chunk_size}")
        return int(chunk_size)
    rows = max(n_rows // LOGITS_SHARE, SMALL_BUFFER // max(row_bytes, 1)) // 32 * 32
    return max(32, min(MAX_ROWS, rows))


@fill_doc(LINEAR_OPTIONS, N_THREADS, dict(chunk_size=None))
def linear_value_and_grad(h: ArrayLike, weight: ArrayLike, targets: ArrayLike, *,
                          bias: ArrayLike | None = None, label_smoothing: float = 0.0,
                          reduction: Reduction = "mean", smoothing: Smoothing = "uniform",
                          class_weight: ArrayLike | None = None,
                          sample_weight: ArrayLike | None = None, ignore_index: int | None = -100,
                          z_loss: float = 0.0, kl: bool = False, n_threads: int | None = None,
                          chunk_size: int | None = None
                          ) -> tuple[Loss, FloatArray, FloatArray, FloatArray | None]:
    """The loss of a linear layer's logits and its gradients, without the logits.

    The loss is ``cross_entropy(h @ weight.T + bias, targets)``; the gradients are with
    respect to ``h``, ``weight`` and ``bias``.

    Parameters
    ----------
    %(h)s
    %(weight)s
    %(targets_linear)s
    %(bias)s
    %(linear_options)s
    %(n_threads)s
    %(chunk_size)s

    Returns
    -------
    loss : float or ndarray
        As :func:`lsref.cross_entropy` of the logits (a scalar of ``h``'s dtype, or per-row
        losses shaped like ``h`` without its last axis for ``reduction="none"``).
    dh : ndarray
        The gradient with respect to ``h``, of its shape and dtype.
    dweight : ndarray
        The gradient with respect to ``weight``, ``(V, d)``.
    dbias : ndarray or None
        The gradient with respect to ``bias``, ``(V,)``; None without a bias.

    Raises
    ------
    %(raises)s

    See Also
    --------
    linear_cross_entropy : The loss alone.
    lsref.reference.linear_value_and_grad : The oracle (the logits in float64).

    Notes
    -----
    The extra memory is one ``(chunk_size, V)`` buffer (:func:`chunk_rows`), not the
    ``(N, V)`` logits. For ``reduction="none"`` the gradients are those of the sum of the
    row losses (as :func:`lsref.value_and_grad`'s). ``n_threads=None`` runs the kernel on
    one thread here (BLAS's threads, which run the GEMMs, are still spinning when it
    starts); the GEMMs run on BLAS's own threads.

    Examples
    --------
    >>> import numpy as np, lsref
    >>> rng = np.random.default_rng(0)
    >>> h, W = rng.standard_normal((6, 4)), rng.standard_normal((5, 4))
    >>> t = np.array([0, 1, 2, 3, 4, 0])
    >>> loss, dh, dW, db = lsref.linear_value_and_grad(h, W, t, label_smoothing=0.1)
    >>> full = lsref.value_and_grad(h @ W.T, t, label_smoothing=0.1)
    >>> bool(np.isclose(loss, full[0])), np.allclose(dh, full[1] @ W), db is None
    (True, True, True)
    """
    return _run(locals(), want_grad=True)


@fill_doc(LINEAR_OPTIONS, N_THREADS, dict(chunk_size=None))
def linear_cross_entropy(h: ArrayLike, weight: ArrayLike, targets: ArrayLike, *,
                         bias: ArrayLike | None = None, label_smoothing: float = 0.0,
                         reduction: Reduction = "mean", smoothing: Smoothing = "uniform",
                         class_weight: ArrayLike | None = None,
                         sample_weight: ArrayLike | None = None, ignore_index: int | None = -100,
                         z_loss: float = 0.0, kl: bool = False, n_threads: int | None = None,
                         chunk_size: int | None = None) -> Loss:
    """Label-smoothed cross-entropy of the logits ``h @ weight.T + bias``, without them.

    Parameters
    ----------
    %(h)s
    %(weight)s
    %(targets_linear)s
    %(bias)s
    %(linear_options)s
    %(n_threads)s
    %(chunk_size)s

    Returns
    -------
    loss : float or ndarray
        As :func:`lsref.cross_entropy` of the logits.

    Raises
    ------
    %(raises)s

    See Also
    --------
    linear_value_and_grad : The loss and the three gradients.

    Examples
    --------
    >>> import numpy as np, lsref
    >>> h, W, b = np.eye(2), np.array([[2.0, 0.0], [0.0, 1.0], [0.0, 0.0]]), np.zeros(3)
    >>> loss = lsref.linear_cross_entropy(h, W, [0, 1], bias=b, reduction="none")
    >>> np.allclose(loss, lsref.cross_entropy(h @ W.T + b, [0, 1], reduction="none"))
    True
    """
    return _run(locals(), want_grad=False)


def _run(args, *, want_grad):
    options = {name: args[name] for name in LINEAR_OPTIONS if name != "bias"}
    h, weight, bias, p = check_linear(args["h"], args["weight"], args["bias"],
                                      args["targets"], options)
    plan, row_loss, dh, dW, db = layer_rows(h, weight, bias, p, args["chunk_size"],
                                            args["n_threads"], want_grad)
    loss = plan.loss(row_loss, h.dtype)
    if not want_grad:
        return loss
    return loss, dh, dW, None if db is None else db.astype(h.dtype)


def layer_rows(h: FloatArray, weight: FloatArray, bias: FloatArray | None, p: Problem,
               chunk_size: int | None, n_threads: int | None, want_grad: bool
               ) -> tuple[KernelPlan, NDArray[np.float64], FloatArray | None,
                          FloatArray | None, NDArray[np.float64] | None]:
    """The chunked pass over checked arrays (``check_linear``): ``(plan, row_loss, dh, dW,
    db)``, the per-row losses in float64 (carrying 1/D for "mean", as the kernel's rows do),
    the gradients (None without want_grad; db in float64, None without a bias)."""
    dtype, d, V, N = h.dtype, h.shape[-1], weight.shape[0], p.n_rows
    rows = chunk_rows(N, V * dtype.itemsize, chunk_size)
    nt = KERNEL_THREADS if n_threads is None else resolve_threads(n_threads)
    H = np.ascontiguousarray(h.reshape(N, d))
    W = np.ascontiguousarray(weight)
    plan = KernelPlan(p, V)
    row_loss = np.empty(N, np.float64)
    buf = np.empty((min(rows, N), V), dtype)
    dh = np.empty((N, d), dtype) if want_grad else None
    dW = np.zeros((V, d), dtype) if want_grad else None
    db = np.zeros(V, np.float64) if want_grad and bias is not None else None
    accumulate = _gemm_accumulate(dtype, d) if want_grad else None
    for start in range(0, N, rows):
        stop = min(N, start + rows)
        z = buf[:stop - start]
        np.matmul(H[start:stop], W.T, out=z)
        if bias is not None:
            z += bias
        chunk = slice(start, stop)
        plan.run(z, plan.targets[chunk], plan.params(chunk), row_loss[chunk],
                 z if want_grad else None, nt)
        if want_grad:
            np.matmul(z, W, out=dh[chunk])
            accumulate(dW, z, H[chunk])
            if db is not None:
                db += z.sum(axis=0, dtype=np.float64)
    return plan, row_loss, None if dh is None else dh.reshape(h.shape), dW, db


def _gemm_accumulate(dtype, d):
    """``f(c, a, b)``: ``c += a^T b`` in place, c (V, d): one GEMM with beta = 1 by NumPy's own
    BLAS where ``_blas.gemm_at_b`` finds it (NumPy's Linux wheels), else NumPy's matmul into a
    scratch of TILE_BYTES, V-tile by V-tile, and an add. SciPy's BLAS gemm would need no add
    either, but SciPy bundles its own OpenBLAS: its threads and NumPy's took turns spinning
    against each other between the GEMMs (2-core AVX-512 EPYC, d = 1024, V = 32000, a step of
    4096 rows: 5.1-5.7 s with SciPy's gemm, 4.5-4.7 s with the scratch; a scratch of all of
    c, 4.6-4.9 s, but c's size)."""
    direct = gemm_at_b(dtype)
    if direct is not None:
        return direct
    tile = max(64, TILE_BYTES // max(1, d * np.dtype(dtype).itemsize))
    scratch = np.empty((tile, d), dtype)

    def accumulate(c, a, b):
        for start in range(0, c.shape[0], tile):
            stop = min(c.shape[0], start + tile)
            part = scratch[:stop - start]
            np.matmul(a[:, start:stop].T, b, out=part)
            c[start:stop] += part
    return accumulate
