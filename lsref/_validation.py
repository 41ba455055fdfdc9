"""Argument checking shared by the oracle (reference.py) and the front door (loss.py).

Checking is not computing: both layers must reject exactly the same inputs with exactly the
same messages, so the checks live once, here. Nothing in this module computes a loss.
Every error names the argument and the offending value (SEMANTICS.md, "Bad input").
"""
import numbers
import operator
import typing
from dataclasses import dataclass

import numpy as np

from ._keywords import BINARY_OPTIONS, CROSS_ENTROPY_OPTIONS
from ._typing import Reduction, Smoothing

# the values the annotations' Literal types name (lsref/_typing.py)
REDUCTIONS = typing.get_args(Reduction)
SMOOTHINGS = typing.get_args(Smoothing)


@dataclass(frozen=True)
class Problem:
    """A validated cross-entropy call, with the class axis moved last.

    ``logits`` and ``targets`` are views (or the caller's arrays) with the class axis last;
    nothing has been copied or cast yet. ``batch_shape`` is the logits' shape without the
    class axis; ``n_rows`` its product. A problem checked from the logits' shape alone
    (:func:`check_problem_shape`: sharded statistics, smoothed labels) has ``logits=None``.
    It holds the checked arguments only: the coefficients computed from them are
    ``lsref._params``'s (the kernel side) and the oracle's own.
    """

    logits: object              # (..., K), class axis last; None when checked by shape
    targets: np.ndarray         # (...,) integer, or (..., K) float (probability targets)
    prob_targets: bool
    axis: int                   # normalised class axis of the caller's layout
    batch_shape: tuple
    n_rows: int
    n_classes: int
    label_smoothing: float
    smoothing: str
    reduction: str
    ignore_index: object        # int, or None (nothing ignored)
    class_weight: object        # (K,) float64 or None
    sample_weight: object       # batch_shape float64 or None
    z_loss: float
    kl: bool = False            # subtract H(q): the KL form


def check_real(name, value, lo=None, hi=None):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r} "
                        f"({type(value).__name__})")
    value = float(value)
    if not np.isfinite(value) or (lo is not None and value < lo) or (hi is not None and value > hi):
        rng = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise ValueError(f"{name} must be finite and in {rng}, got {value!r}")
    return value


def check_choice(name, value, choices):
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


def targets_are_probabilities(logits_shape, targets):
    """A target array shaped like the logits is a probability target whatever its dtype
    (integer or boolean one-hot included); one shaped like the logits without the class axis
    holds class indices (SEMANTICS.md, "Targets that are not a distribution")."""
    return tuple(np.shape(targets)) == tuple(logits_shape)


def is_bfloat16(dtype):
    return dtype.name == "bfloat16"


def as_array(name, x):
    """``np.asarray(x)`` for the array argument ``name``, refusing what it would get wrong.

    Every array argument (logits, targets, class_weight, sample_weight, out=) goes through
    here once. Refused, with an error naming the argument:

    - a masked array (``numpy.ma``): ``asarray`` drops the mask, and the kernel would
      compute with the masked values (SEMANTICS.md, "Storage");
    - a ragged nested sequence, which is not an array at all;
    - a tensor that is part of an autograd graph (PyTorch's ``requires_grad``): converting
      it would silently cut the graph, so the caller detaches it on purpose.
    """
    if isinstance(x, np.ma.MaskedArray):
        raise TypeError(f"{name} is a masked array; lsref refuses masked arrays (the mask "
                        f"would be dropped and the masked values used). Pass "
                        f"{name}.filled(...) or select the unmasked rows")
    if getattr(x, "requires_grad", False) is True and type(x).__module__.startswith("torch"):
        raise TypeError(f"{name} is a torch.Tensor that requires grad; call {name}.detach() "
                        f"(lsref computes the gradient itself and does not join autograd)")
    try:
        return np.asarray(x)
    except ValueError as e:
        raise ValueError(f"{name} must be a rectangular array; got a ragged nested "
                         f"sequence ({e})") from None


def check_float_array(name, x):
    """A real floating array (integers are widened to float64, as scipy.special does;
    bfloat16 from ml_dtypes counts as floating)."""
    x = as_array(name, x)
    if x.dtype.kind == "f" or is_bfloat16(x.dtype):
        return x
    if x.dtype.kind in "iu":
        return x.astype(np.float64)
    raise TypeError(f"{name} must be an array of real floating-point numbers, "
                    f"got dtype {x.dtype}")


def check_axis_type(axis, name="axis"):
    """An integer axis (its bounds are checked against the array: :func:`check_axis`).
    ``True``/``False`` are refused: ``axis=True`` meaning axis 1 is a typo, not a choice."""
    if isinstance(axis, (bool, np.bool_)):
        raise TypeError(f"{name} must be an integer, got {axis!r}")
    try:
        return operator.index(axis)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {axis!r}") from None


def check_axis(axis, ndim, name="axis"):
    axis = check_axis_type(axis, name)
    if not -ndim <= axis < ndim:
        raise ValueError(f"{name}={axis} is out of bounds for logits with {ndim} dimension(s)")
    return axis % ndim


# The most threads one kernel call may start. Each OpenMP thread reserves its stack (8 MiB
# by default on Linux), so the cap bounds the address space a call can claim: 256 threads
# came to 2.2 GB of virtual memory in all, inside a 4 GiB RLIMIT_AS (tests/test_validation.py
# runs that); 512 could not start there, and 2**31 - 1 asked libgomp for 481 GB. Far more
# threads than any machine this runs on has cores.
MAX_THREADS = 256


def _positive_int(name, value, kind):
    """An integer >= 1 (not a bool); the messages name the argument and say what it must be."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be {kind}, got {value!r}")
    try:
        n = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be {kind}, got {value!r}") from None
    if n < 1:
        raise ValueError(f"{name} must be {kind}, got {n}")
    return n


def check_n_threads(n_threads):
    """None (the default count), or an integer in [1, MAX_THREADS]."""
    if n_threads is None:
        return None
    n = _positive_int("n_threads", n_threads, "None or a positive integer")
    if n > MAX_THREADS:
        raise ValueError(f"n_threads={n} is more than the cap lsref.MAX_THREADS = "
                         f"{MAX_THREADS}")
    return n


def check_num_classes(num_classes):
    """The number of classes of ``smooth_labels``: an integer >= 1 (not a bool)."""
    return _positive_int("num_classes", num_classes, "a positive integer")


def _position(shape, flat_index):
    idx = np.unravel_index(flat_index, shape)
    return "[" + ", ".join(str(int(i)) for i in idx) + "]"


def _check_weight(name, w, shape, what):
    """Finite real weights of the given shape (``shape=None``: of any length along one axis,
    for a weight vector checked before the number of classes is known)."""
    if w is None:
        return None
    w = as_array(name, w)
    if w.dtype.kind not in "fiu" and not is_bfloat16(w.dtype):   # PyTorch's bf16 weight=
        raise TypeError(f"{name} must be a real numeric array, got dtype {w.dtype}")
    if shape is None:
        if w.ndim != 1:
            raise ValueError(f"{name} must have shape (K,) ({what}), got {w.shape}")
        shape = w.shape
    if w.shape != shape:
        raise ValueError(f"{name} must have shape {shape} ({what}), got {w.shape}")
    w = w.astype(np.float64, copy=False)
    bad = ~np.isfinite(w)
    if bad.any():
        i = int(np.flatnonzero(bad.ravel())[0])
        raise ValueError(f"{name} must be finite; {name}{_position(shape, i)} = "
                         f"{float(w.ravel()[i])}")
    return w


def check_in_range(what, name, x, lo, hi):
    """Every element finite and in [lo, hi]; checked a block of rows at a time so that no
    temporary as large as x is made. Raises naming the first bad position and value."""
    if x.size == 0:
        return
    rows = x.reshape(1, *x.shape) if x.ndim == 0 else x
    step = max(1, (1 << 20) // max(1, rows[0].size))
    for start in range(0, rows.shape[0], step):
        block = rows[start:start + step]
        with np.errstate(invalid="ignore"):
            bad = ~(np.isfinite(block) & (block >= lo) & (block <= hi))
        if bad.any():
            j = int(np.flatnonzero(bad.ravel())[0])
            idx = np.unravel_index(j, block.shape)
            pos = (start + int(idx[0]),) + tuple(int(i) for i in idx[1:])
            where = "[" + ", ".join(map(str, pos[1:] if x.ndim == 0 else pos)) + "]"
            rng = (" numbers" if lo == -np.inf and hi == np.inf else
                   f" and >= {lo:g}" if hi == np.inf else f" and in [{lo:g}, {hi:g}]")
            raise ValueError(f"{what} must be finite{rng}; "
                             f"{name}{where} = {float(block[idx])}")


def check_bool(name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def _check_ignore_index(ignore_index):
    if ignore_index is None:
        return None
    if isinstance(ignore_index, (bool, np.bool_)):
        raise TypeError(f"ignore_index must be an integer or None, got {ignore_index!r}")
    try:
        return operator.index(ignore_index)
    except TypeError:
        raise TypeError(f"ignore_index must be an integer or None, got "
                        f"{ignore_index!r}") from None


def _check_class_indices(targets, K, ignore_index):
    """Every class index in [0, K) or equal to ignore_index; else name the first bad one."""
    valid = (targets >= 0) & (targets < K)
    if ignore_index is not None:
        valid |= targets == ignore_index
    if not valid.all():
        i = int(np.flatnonzero(~valid.ravel())[0])
        ign = "" if ignore_index is None else f" and is not ignore_index ({ignore_index})"
        raise ValueError(f"targets{_position(targets.shape, i)} = "
                         f"{targets.ravel()[i]} is outside [0, {K}){ign}")


# The options of a call that do not depend on its arrays, each with the one check that
# check_problem, check_binary_problem and the front door apply to it. check_options runs them
# by name, so an object that stores options (LabelSmoothingLoss) can refuse a bad one when it
# is built, with the message the call would give.
_OPTIONS = {
    "label_smoothing": lambda v: check_real("label_smoothing", v, 0.0, 1.0),
    "reduction": lambda v: check_choice("reduction", v, REDUCTIONS),
    "smoothing": lambda v: check_choice("smoothing", v, SMOOTHINGS),
    "z_loss": lambda v: check_real("z_loss", v, 0.0),
    "kl": lambda v: check_bool("kl", v),
    "ignore_index": lambda v: _check_ignore_index(v),
    "axis": lambda v: check_axis_type(v),
    "n_threads": lambda v: check_n_threads(v),
    "class_weight": lambda v: _check_weight("class_weight", v, None, "one weight per class"),
}


def check_options(**options):
    """Check each given option (``label_smoothing=``, ``axis=``, ``class_weight=``, ...) as
    a call would, before any array is seen: the axis's bounds and the class weights' length
    wait for the logits. Raises TypeError/ValueError naming the option; returns nothing."""
    for name, value in options.items():
        if name not in _OPTIONS:
            raise TypeError(f"unexpected keyword argument {name!r}")
        _OPTIONS[name](value)


def _options(given, registry):
    """The options of a call: the registry's defaults (lsref/_keywords.py), overridden by
    ``given``; a name the registry does not have is refused."""
    if not given.keys() <= registry.keys():
        unknown = sorted(set(given) - set(registry))
        raise TypeError(f"unexpected keyword argument(s): {', '.join(unknown)}")
    return {**registry, **given}


def check_problem(logits, targets, **options):
    """Validate a cross-entropy call (the options of ``CROSS_ENTROPY_OPTIONS``, their
    defaults where not given); raise TypeError/ValueError naming the bad argument."""
    logits = _class_logits(logits)
    return _check_problem(logits.shape, logits, targets, _options(options, CROSS_ENTROPY_OPTIONS))


def check_arguments(arguments):
    """:func:`check_problem` of a front door's own arguments: its ``locals()``, which hold
    ``logits``, ``targets`` and every option of ``CROSS_ENTROPY_OPTIONS`` (its signature is
    checked against the registry at import, ``_keywords.check_signature``), so no default is
    merged in on every call."""
    logits = _class_logits(arguments["logits"])
    return _check_problem(logits.shape, logits, arguments["targets"], arguments)


def _class_logits(logits):
    logits = check_float_array("logits", logits)
    if logits.ndim == 0:
        raise ValueError("logits must have at least one dimension (the class axis), "
                         "got a scalar")
    return logits


def check_problem_shape(logits_shape, targets, **options):
    """Validate a cross-entropy call whose logits are known by their shape only (sharded
    statistics, smoothed labels): the targets, weights and options, as :func:`check_problem`
    does. The returned problem has ``logits=None``."""
    return _check_problem(logits_shape, None, targets, _options(options, CROSS_ENTROPY_OPTIONS))


def _check_problem(logits_shape, logits, targets, o):
    """The checks of a call given the logits' shape (and the logits, when there are any, to
    keep as a view with the class axis last); ``o`` maps every option to its value."""
    label_smoothing, axis, reduction, smoothing = (o["label_smoothing"], o["axis"],
                                                   o["reduction"], o["smoothing"])
    class_weight, sample_weight, ignore_index = (o["class_weight"], o["sample_weight"],
                                                 o["ignore_index"])
    z_loss, kl = o["z_loss"], o["kl"]
    shape = tuple(logits_shape)
    axis = check_axis(axis, len(shape))
    K = shape[axis]
    if K == 0:
        raise ValueError(f"logits has 0 classes along axis={axis} (shape {shape})")
    eps = _OPTIONS["label_smoothing"](label_smoothing)
    reduction = _OPTIONS["reduction"](reduction)
    smoothing = _OPTIONS["smoothing"](smoothing)
    z_loss = _OPTIONS["z_loss"](z_loss)
    kl = _OPTIONS["kl"](kl)
    ignore_index = _OPTIONS["ignore_index"](ignore_index)

    batch_shape = shape[:axis] + shape[axis + 1:]

    targets = as_array("targets", targets)
    kind = targets.dtype.kind
    if is_bfloat16(targets.dtype):
        kind = "f"
    if targets_are_probabilities(shape, targets) and kind in "biu":
        # shaped like the logits: probabilities whatever the dtype (Keras users' integer
        # one-hot labels), read exactly as float64
        targets, kind = targets.astype(np.float64), "f"
    if kind == "b" or kind not in "iuf":
        raise TypeError(f"targets must be integer class indices or floating-point "
                        f"probabilities, got dtype {targets.dtype}")
    if kind == "f":
        if targets.shape == batch_shape and targets.shape != shape:
            raise TypeError(f"targets of shape {targets.shape} are class indices but have "
                            f"floating dtype {targets.dtype}; pass an integer array "
                            f"(e.g. targets.astype(np.int64))")
        if targets.shape != shape:
            raise ValueError(f"probability targets must have the logits' shape "
                             f"{shape}, got {targets.shape}")
        prob = True
        # any finite values: the loss is linear in q, negative or unnormalised rows included
        check_in_range("probability targets", "targets", targets, -np.inf, np.inf)
        t = np.moveaxis(targets, axis, -1)
        if smoothing == "others":
            raise ValueError("smoothing='others' (eps/(K-1)) is defined for class-index "
                             "targets only, got probability targets")
        if ignore_index is not None and ignore_index >= 0:
            raise ValueError(f"ignore_index={ignore_index} cannot be used with probability "
                             f"targets (they have no class index to ignore); pass "
                             f"ignore_index=None")
        ignore_index = None
    else:
        if targets.shape != batch_shape:
            raise ValueError(f"class-index targets must have shape {batch_shape} (logits "
                             f"{shape} without axis {axis}), got {targets.shape}")
        prob = False
        _check_class_indices(targets, K, ignore_index)
        t = targets
    if smoothing == "others" and K == 1:
        raise ValueError("smoothing='others' spreads eps over the K-1 other classes and needs "
                         "K >= 2, got K = 1")

    cw = _check_weight("class_weight", class_weight, (K,), "one weight per class")
    sw = _check_weight("sample_weight", sample_weight, batch_shape,
                       "the logits' shape without the class axis")
    z = None if logits is None else np.moveaxis(logits, axis, -1)
    return Problem(logits=z, targets=t, prob_targets=prob, axis=axis, batch_shape=batch_shape,
                   n_rows=int(np.prod(batch_shape, dtype=np.int64)), n_classes=K,
                   label_smoothing=eps, smoothing=smoothing, reduction=reduction,
                   ignore_index=ignore_index, class_weight=cw, sample_weight=sw,
                   z_loss=z_loss, kl=kl)


@dataclass(frozen=True)
class BinaryProblem:
    """A validated binary cross-entropy call, the class axis moved last.

    ``labels`` (same shape as the logits, values in [0, 1]) or ``indices`` (class indices,
    one-hot along the class axis: timm's per-class form) is set, not both."""

    logits: np.ndarray          # (..., K)
    labels: object              # (..., K) or None
    indices: object             # (...,) int or None
    axis: int
    shape: tuple                # the logits' shape with the class axis last
    n_rows: int
    n_classes: int
    label_smoothing: float
    reduction: str
    ignore_index: object
    class_weight: object
    sample_weight: object


def check_binary_problem(logits, targets, **options):
    """Validate a binary cross-entropy call (the options of ``BINARY_OPTIONS``); raise
    TypeError/ValueError naming the argument."""
    return _check_binary(logits, targets, _options(options, BINARY_OPTIONS))


def check_binary_arguments(arguments):
    """:func:`check_binary_problem` of a front door's own ``locals()`` (as
    :func:`check_arguments`)."""
    return _check_binary(arguments["logits"], arguments["targets"], arguments)


def _check_binary(logits, targets, o):
    label_smoothing, axis, reduction = o["label_smoothing"], o["axis"], o["reduction"]
    class_weight, sample_weight, ignore_index = (o["class_weight"], o["sample_weight"],
                                                 o["ignore_index"])
    logits = check_float_array("logits", logits)
    if logits.ndim == 0:
        logits = logits.reshape(1)
    axis = check_axis(axis, logits.ndim)
    K = logits.shape[axis]
    eps = _OPTIONS["label_smoothing"](label_smoothing)
    reduction = _OPTIONS["reduction"](reduction)
    ignore_index = _OPTIONS["ignore_index"](ignore_index)
    z = np.moveaxis(logits, axis, -1)
    batch_shape = z.shape[:-1]
    targets = as_array("targets", targets)
    if targets.ndim == 0 and logits.size == 1:
        targets = targets.reshape(logits.shape)
    kind = "f" if is_bfloat16(targets.dtype) else targets.dtype.kind
    if kind not in "biuf":
        raise TypeError(f"targets must be binary labels or class indices, got dtype "
                        f"{targets.dtype}")
    labels = indices = None
    if targets.shape == logits.shape:
        check_in_range("binary labels", "targets", targets, 0.0, 1.0)
        labels = np.moveaxis(targets, axis, -1)
        ignore_index = None
    elif targets.shape == batch_shape and kind in "iu":
        if K == 0:
            raise ValueError(f"logits has 0 classes along axis={axis} (shape {logits.shape})")
        _check_class_indices(targets, K, ignore_index)
        indices = targets
    elif targets.shape == batch_shape:
        raise TypeError(f"targets of shape {targets.shape} are class indices but have dtype "
                        f"{targets.dtype}; pass an integer array")
    else:
        raise ValueError(f"targets must have the logits' shape {logits.shape} (binary labels) "
                         f"or {batch_shape} (class indices along axis {axis}), got "
                         f"{targets.shape}")
    cw = _check_weight("class_weight", class_weight, (K,), "one weight per class")
    sw = _check_weight("sample_weight", sample_weight, batch_shape,
                       "the logits' shape without the class axis")
    return BinaryProblem(logits=z, labels=labels, indices=indices, axis=axis, shape=z.shape,
                         n_rows=int(np.prod(batch_shape, dtype=np.int64)), n_classes=K,
                         label_smoothing=eps, reduction=reduction, ignore_index=ignore_index,
                         class_weight=cw, sample_weight=sw)


# --- the linear layer + loss ------------------------------------------------------------

def _float_input(name, x, dtype=None, shape=None, what=None):
    x = check_float_array(name, x)
    if dtype is None and x.dtype not in (np.float32, np.float64):
        raise TypeError(f"{name} must be float32 or float64, got {x.dtype}")
    if dtype is not None and x.dtype != dtype:
        raise TypeError(f"{name} has dtype {x.dtype}, h has {dtype}: give them one dtype")
    if shape is not None and x.shape != shape:
        raise ValueError(f"{name} must have shape {shape} ({what}), got {x.shape}")
    return x


def check_linear(h, weight, bias, targets, options):
    """A linear layer + loss call (lsref.linear, and its oracle): ``h`` (..., d) and ``weight``
    (V, d) float32 or float64 of one dtype, ``bias`` (V,) of it or None, each error naming the
    argument; then the cross-entropy call of the (..., V) logits they make, checked as
    :func:`check_problem` checks it (``options``: every cross-entropy option but ``axis``).
    Returns ``(h, weight, bias, problem)``, the arrays as NumPy arrays."""
    h = _float_input("h", h)
    if h.ndim < 1:
        raise ValueError("h must have at least one dimension (the features), got a scalar")
    weight = check_float_array("weight", weight)
    if weight.ndim != 2:
        raise ValueError(f"weight must have shape (V, d), got {weight.shape}")
    d = h.shape[-1]
    if weight.shape[1] != d:
        raise ValueError(f"weight has {weight.shape[1]} features per class (shape "
                         f"{weight.shape}), h has {d} (shape {h.shape})")
    weight = _float_input("weight", weight, h.dtype)
    V = weight.shape[0]
    if bias is not None:
        bias = _float_input("bias", bias, h.dtype, (V,), "one per class of weight")
    p = check_problem_shape(h.shape[:-1] + (V,), targets, axis=-1, **options)
    return h, weight, bias, p
