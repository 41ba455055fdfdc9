"""The kernel side's coefficients: from a checked problem to what the kernel multiplies by.

Every rule that turns the user's options into numbers lives here once, for every kernel
path (the in-memory rows of ``loss.py``, ``sharded.py``'s statistics and ``dask.py``'s lazy
blocks): the smoothed target's coefficients, the class weights' total, the "mean" divisor
``D`` and what ``D = 0`` gives, and the one record the kernel's entry points take.

The oracle (``reference.py``) derives each of these rules itself, from the formulas of the
semantics, and imports nothing from here: it stays an independent witness.
"""
import numpy as np

from . import _kernel

__all__ = ["index_target", "prob_target", "binary_label", "class_weight_total",
           "mean_divisor", "binary_mean_divisor", "mean_scale", "mean", "reduce",
           "KernelParams", "kernel_params", "small_k_blocks", "index_call", "index_rows"]


# --- the smoothed target ---------------------------------------------------------------------

def index_target(label_smoothing, n_classes, smoothing):
    """``(q_t, beta)`` of a class-index target: ``q_k = beta + (q_t - beta) [k == t]``.

    ``"uniform"``: ``q_t = 1 - eps + eps/K``, ``beta = eps/K``; ``"others"``: ``q_t = 1 - eps``,
    ``beta = eps/(K - 1)`` (0 when ``eps = 0``, so that ``K = 1`` needs no division).
    """
    eps, K = label_smoothing, n_classes
    if smoothing == "uniform":
        return 1.0 - eps + eps / K, eps / K
    return 1.0 - eps, (eps / (K - 1) if eps else 0.0)


def prob_target(label_smoothing, n_classes):
    """``(a, beta)`` of a probability target row ``P``: ``q_k = a P_k + beta``."""
    return 1.0 - label_smoothing, label_smoothing / n_classes


def binary_label(label_smoothing, n_classes, class_indices):
    """``(a, b)`` of a binary label ``y``: ``y' = a y + b``; Keras's ``y (1 - eps) + eps/2``
    for labels, timm's ``onehot (1 - eps) + eps/K`` for class indices."""
    eps = label_smoothing
    return 1.0 - eps, (eps / n_classes if class_indices else eps / 2)


def class_weight_total(class_weight, n_classes):
    """``W = sum_k w_k`` (``K`` without class weights)."""
    return float(n_classes) if class_weight is None else float(np.sum(class_weight))


INT64 = np.iinfo(np.int64)


def index_rows(targets, ignore_index):
    """Class-index targets as the kernel's int64 rows, with (ignore value or None, ignoring?,
    the rows that count or None). An ignore_index that no int64 can equal (2**63, say) is left
    to NumPy's exact comparison: the rows equal to it (possible only for uint64 targets)
    are marked -1 for the kernel, and if there are none, nothing is ignored."""
    t = targets.reshape(-1)
    if ignore_index is None:
        return np.ascontiguousarray(t, dtype=np.int64), None, False, None
    if INT64.min <= ignore_index <= INT64.max:
        rows = np.ascontiguousarray(t, dtype=np.int64)
        return rows, ignore_index, True, rows != ignore_index
    active = t != ignore_index
    if active.all():
        return np.ascontiguousarray(t, dtype=np.int64), None, False, None
    rows = t.astype(np.int64)                 # the ignored values wrap; they are marked next
    rows[~active] = -1                        # the validated targets are in [0, K) elsewhere
    return rows, -1, True, active


# --- the "mean" divisor ------------------------------------------------------------------------

def mean_divisor(problem, targets, active):
    """``D`` of ``reduction="mean"`` (SEMANTICS.md, "Reductions"): the number of rows for
    probability targets (PyTorch: whatever the weights); for class indices the sum over the
    rows that count of sample weight times the target's class weight (unweighted, the
    number of those rows).

    ``problem`` is the checked call; ``targets`` its class indices as the kernel's flat rows
    and ``active`` the rows that count (None: all), from :func:`index_rows`.
    """
    if problem.prob_targets:
        return float(problem.n_rows)
    class_weight = problem.class_weight
    sample_weight = (None if problem.sample_weight is None
                     else problem.sample_weight.reshape(-1))
    t = targets if active is None else targets[active]
    if sample_weight is None and class_weight is None:
        return float(t.size)
    s = np.ones(t.size) if sample_weight is None else (
        sample_weight if active is None else sample_weight[active])
    return float(np.sum(s if class_weight is None else s * class_weight[t]))


def binary_mean_divisor(active_rows, n_classes):
    """``D`` of a binary ``"mean"``: the elements of the rows that count (PyTorch's
    BCEWithLogits and Keras: weights scale the terms, not the divisor)."""
    return float(active_rows * n_classes)


def mean_scale(divisor):
    """The factor ``1/D`` the gradient rows carry for ``"mean"``; where ``D = 0`` (an empty
    batch, every target ignored, or weights that sum to 0) the gradient is left unscaled:
    0 on every ignored row, the gradient of the sum otherwise."""
    if isinstance(divisor, float):        # the in-memory call: a number, known now
        return 1.0 / divisor if divisor != 0 else 1.0
    return 1.0 / np.where(divisor != 0, divisor, 1.0)      # a lazy (dask) divisor


def mean(total, divisor):
    """``total / D``; NaN where ``D = 0`` (like PyTorch). NumPy scalars or arrays, or dask
    arrays (through NumPy's array-function protocol)."""
    safe = np.where(divisor != 0, divisor, 1.0)
    return np.where(divisor != 0, total / safe, np.nan)


def reduce(reduction, row_loss, divisor, *, scaled):
    """The loss of a reduction from per-row losses (float64): the rows as they are for
    ``"none"``, their pairwise sum for ``"sum"``, and for ``"mean"`` that sum divided by
    ``D`` (``scaled``: the rows already carry ``1/D``), NaN where ``D = 0``. Summed with
    NumPy outside any parallel loop, so the result is the same for every thread count."""
    if reduction == "none":
        return row_loss
    total = np.sum(row_loss)
    if reduction == "sum":
        return total
    if divisor == 0:
        return np.float64(np.nan)
    return total if scaled else total / divisor


# --- what the kernel's entry points take -------------------------------------------------------

KernelParams = _kernel.KernelParams     # the record (an extension type: the kernel reads C fields)


def kernel_params(*, n_classes, class_weight=None, sample_weight=None, q_t=1.0, a=1.0,
                  beta=0.0, scale=1.0, z_loss=0.0, kl=False, ignore_index=None):
    """The :class:`KernelParams` record of a call: the weights as the kernel reads them
    (float64, C order, the sample weights flat), the class weights with their total ``W``
    (``K`` without them), and the coefficients ``q_t``, ``a``, ``beta``, ``scale``,
    ``z_loss``, ``kl`` and ``ignore_index``. (Every keyword is spelled out in both calls:
    a ``**`` pass-through into the extension type's constructor costs ~5x the call.)"""
    cw = None if class_weight is None else np.ascontiguousarray(class_weight, np.float64)
    sw = None if sample_weight is None else np.ascontiguousarray(
        np.reshape(sample_weight, -1), np.float64)
    return KernelParams(q_t=q_t, a=a, beta=beta, class_weight=cw,
                        W=class_weight_total(cw, n_classes), sample_weight=sw, scale=scale,
                        z_loss=z_loss, kl=kl, ignore_index=ignore_index)


def small_k_blocks(float32, n_rows, n_classes, class_weighted):
    """Whether ``ce_index`` may run the across-rows blocks of small K (float32, at most
    ``_kernel.SMALL_K_MAX`` classes, no class weights, at least one block of 8 rows, a CPU
    with AVX2): then the caller passes it an (N,) uint8 scratch array. Decided here only;
    the kernel trusts it."""
    return (float32 and not class_weighted and n_classes <= _kernel.SMALL_K_MAX and n_rows >= 8
            and _kernel.small_k_available())


def index_call(label_smoothing, n_classes, smoothing, reduction, divisor, float32, n_rows):
    """What the kernel's fast path (``_kernel.index_fast``: class indices, no weights) needs
    from the rules above, in one call: ``(q_t, beta, W, scale, empty_mean, small_k)``, with
    ``divisor`` the rows that count (``D``). ``empty_mean``: the loss is NaN (``"mean"`` at
    ``D = 0``, as :func:`reduce` says); ``small_k``: :func:`small_k_blocks`."""
    q_t, beta = index_target(label_smoothing, n_classes, smoothing)
    mean = reduction == "mean"
    return (q_t, beta, class_weight_total(None, n_classes),
            mean_scale(divisor) if mean else 1.0, mean and divisor == 0,
            small_k_blocks(float32, n_rows, n_classes, False))
