"""The keywords of lsref's public functions, written once: names, order, defaults, and text.

Every cross-entropy function takes the same options, and the oracle, the front door, the
criterion and the conventions all need the list. It lives here, and nowhere else:

- ``CROSS_ENTROPY_OPTIONS``, ``BINARY_OPTIONS`` and ``EXECUTION_OPTIONS``: the names in
  signature order, with their defaults;
- ``PARAMETERS``: the numpydoc text of every shared parameter (and of the shared Notes);
- :func:`fill_doc`: the decorator that fills a docstring written in the ``def`` from
  ``PARAMETERS`` (scipy's ``doccer.docfiller`` idea: ``%(label_smoothing)s`` on a line of
  its own becomes that parameter's entry, indented to match) and checks, when the function
  is defined, that its keyword-only parameters are the registry's options in order, with
  the registry's defaults.

The public signatures stay explicit (no ``**kw``: ``help()``, ``inspect.signature`` and
IDEs show every keyword); the check at definition time is what keeps them equal to the
registry. It costs one ``inspect.signature`` per public function at import (microseconds),
and a mismatch fails on ``import lsref``, naming the function, before any test or user
can call it with the wrong default.

This module imports nothing from lsref, so that the oracle (which must not import the
kernel side), the front door, the criterion and the conventions can all use it.
"""
from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, TypeVar

# a decorated function keeps its own type (its annotations are what type checkers see)
_F = TypeVar("_F", bound=Callable[..., Any])

__all__ = ["CROSS_ENTROPY_OPTIONS", "BINARY_OPTIONS", "LINEAR_OPTIONS", "EXECUTION_OPTIONS",
           "N_THREADS",
           "PARAMETERS", "fill_doc", "check_signature", "given"]


def _subset(options, *names):
    """The named entries of ``options``, in the order given (each must exist)."""
    return MappingProxyType({name: options[name] for name in names})


# What a softmax cross-entropy call computes, in the order of every public signature
# (SEMANTICS.md). Read-only: a caller that needs a dict with changes builds its own.
CROSS_ENTROPY_OPTIONS = MappingProxyType(dict(
    label_smoothing=0.0, axis=-1, reduction="mean", smoothing="uniform", class_weight=None,
    sample_weight=None, ignore_index=-100, z_loss=0.0, kl=False))

# Binary (sigmoid) cross-entropy: the options it shares with softmax cross-entropy, with the
# same defaults (it has no smoothing form, z-loss or KL form).
BINARY_OPTIONS = _subset(CROSS_ENTROPY_OPTIONS, "label_smoothing", "axis", "reduction",
                         "class_weight", "sample_weight", "ignore_index")

# The linear layer + loss (lsref.linear): the layer's bias, then every option of a softmax
# cross-entropy call but the class axis (the layer's outputs are the last axis).
LINEAR_OPTIONS = MappingProxyType(dict(
    bias=None, **{name: value for name, value in CROSS_ENTROPY_OPTIONS.items()
                  if name != "axis"}))

# How a call runs, not what it computes: they follow the options in every signature.
EXECUTION_OPTIONS = MappingProxyType(dict(n_threads=None, out=None))

# The functions that return no gradient take the thread count only.
N_THREADS = _subset(EXECUTION_OPTIONS, "n_threads")


# The numpydoc entries of the shared parameters, and shared Notes. Each is written from
# column 0 (an entry's description indented by 4); fill_doc indents it to its placeholder.
PARAMETERS = {
    "logits": """\
logits : array_like of float, any shape with a class axis
    Unnormalised scores. float64 is computed in double; float32, float16 and bfloat16
    (``ml_dtypes``) are read as they are stored and computed in float32 with every sum in
    double; integers are widened to float64.""",

    "logits_oracle": """\
logits : array_like of float, any shape with a class axis
    Unnormalised scores, read as float64 (integers are widened).""",

    "targets": """\
targets : array_like
    Class indices (an integer array shaped like ``logits`` without the class axis), or
    probabilities (a float array shaped like ``logits``, any finite values).""",

    "label_smoothing": """\
label_smoothing : float in [0, 1], default=0.0
    ``eps``: the target becomes ``(1 - eps) * onehot + eps / K`` (``smoothing="uniform"``).""",

    "axis": """\
axis : int, default=-1
    The class axis (PyTorch's ``(N, C, d1, ...)`` layout is ``axis=1``).""",

    "reduction": """\
reduction : {"mean", "sum", "none"}, default="mean"
    ``"mean"`` divides the sum by ``D``: the number of non-ignored rows (times their
    sample and target-class weights), or the number of rows for probability targets.
    ``"none"`` returns the per-row losses.""",

    "smoothing": """\
smoothing : {"uniform", "others"}, default="uniform"
    ``"uniform"`` puts ``eps / K`` on every class (PyTorch, Keras, Optax, timm);
    ``"others"`` puts ``eps / (K - 1)`` on every wrong class and ``1 - eps`` on the
    target (fairseq >= 0.12, T5X). Class-index targets only.""",

    "class_weight": """\
class_weight : array_like of shape (K,), optional
    Per-class weights, inside both the target and the smoothing term (PyTorch's
    ``weight``).""",

    "sample_weight": """\
sample_weight : array_like shaped like ``logits`` without the class axis, optional
    Per-row weights.""",

    "ignore_index": """\
ignore_index : int or None, default=-100
    Rows whose class-index target equals it have loss 0, gradient 0, and are left out
    of the ``"mean"`` divisor. Any integer is accepted; one that no target can equal
    (``2**63``, say) ignores nothing.""",

    "z_loss": """\
z_loss : float >= 0, default=0.0
    Adds ``z_loss * lse**2`` per row (T5X, PaLM); its gradient is ``2 z_loss lse p``.""",

    "kl": """\
kl : bool, default=False
    The KL form (T5X): subtract the target entropy ``H(q) = -sum_k w_k q_k log q_k``
    from each row, so a perfect prediction has loss 0. The gradient does not change.""",

    "n_threads": """\
n_threads : int in [1, lsref.MAX_THREADS], optional
    Threads for the kernel; default: every core this process may use (one for fewer
    than 16384 logits, where threads cost more than they save). Results are
    bit-identical for every value. At most ``lsref.MAX_THREADS`` (256): each thread
    reserves its stack, and the cap keeps a call inside a 4 GiB address space; a larger
    value raises ``ValueError``.""",

    "out": """\
out : ndarray, optional
    Where to write the gradient: a buffer of the logits' shape and dtype (or float32,
    for float16/bfloat16 logits), or the logits array itself (an in-place gradient
    that needs no extra memory). In place, a row whose sum is refined reads its stored
    exponentials instead of the logits, which are gone: a few entries can then differ
    from the out-of-place result in the last bit, both within the accuracy bounds.""",

    # the oracle takes the front door's execution options so that a call can be copied
    # verbatim between the two
    "n_threads_oracle": """\
n_threads : int, optional
    Accepted and ignored (the oracle is single-threaded), so that a call to the front
    door runs here unchanged.""",

    "out_oracle": """\
out : None, optional
    Accepted only as None: the oracle allocates its own float64 result (anything else
    raises ``ValueError``).""",

    "binary_logits": """\
logits : array_like of float
    Independent yes/no scores, any shape (a 0-d ``logits`` is one element).""",

    "binary_targets": """\
targets : array_like
    Either labels in [0, 1] shaped like ``logits`` (Keras's ``BinaryCrossentropy``:
    ``y' = y (1 - eps) + eps / 2``), or integer class indices shaped like ``logits``
    without ``axis`` (timm's ``BinaryCrossEntropy``: one-hot along ``axis``, then
    ``y' = onehot (1 - eps) + eps / K``).""",

    "binary_label_smoothing": """\
label_smoothing : float in [0, 1], default=0.0
    ``eps``, applied to the labels as ``targets`` describes.""",

    "binary_axis": """\
axis : int, default=-1
    The class axis: where ``class_weight`` applies and class indices point.""",

    "binary_reduction": """\
reduction : {"mean", "sum", "none"}, default="mean"
    ``"mean"`` divides by the number of elements (of the rows not ignored); weights
    scale the terms, not the divisor (PyTorch's ``BCEWithLogitsLoss(weight=...)``).
    ``"none"`` returns the per-element losses, shaped like ``logits``.""",

    "binary_class_weight": """\
class_weight : array_like of shape (K,), optional
    Per-class weights (K the length of ``axis``), scaling each element's term.""",

    "binary_sample_weight": """\
sample_weight : array_like shaped like ``logits`` without ``axis``, optional
    Per-row weights, scaling each element's term.""",

    "binary_ignore_index": """\
ignore_index : int or None, default=-100
    For class-index targets: rows with this target count for nothing (loss 0, gradient
    0, not in the ``"mean"`` divisor). Labels shaped like ``logits`` ignore nothing.""",

    "x": """\
x : array_like of float
    The input; integers are widened to float64.""",

    "x_axis": """\
axis : int, default=-1
    The axis to normalise over.""",

    "raises": """\
TypeError
    If an argument has the wrong type (float class indices, a non-integer ``axis``,
    a string ``label_smoothing``, a masked array, ...); the message names it.
ValueError
    If an argument has a bad value or shape (a class index outside ``[0, K)``,
    ``label_smoothing`` outside [0, 1], an ``axis`` out of bounds, ...); the message
    names it and, for arrays, the first bad position.""",

    "notes_cross_entropy": """\
For one row ``z`` with smoothed target ``q``, ``lse = log(sum(exp(z)))`` and
``p = exp(z - lse)``::

    loss_i = sum_k w_k q_k (lse - z_k) + z_loss * lse**2          (times sample_weight_i)
    dloss_i/dz_j = (sum_k w_k q_k) p_j - w_j q_j + 2 z_loss lse p_j

A row whose logits hold +inf or NaN, or are all -inf, gets NaN (that row only). A
masked class (``z_k = -inf``) that receives smoothing mass makes the loss +inf; its
gradient stays finite. See SEMANTICS.md for the whole special-value policy.""",

    "notes_binary": """\
Per element, with ``y'`` the smoothed label and ``c`` the product of its weights::

    loss = c [-y' log(sigmoid(x)) - (1 - y') log(1 - sigmoid(x))]
         = c [y' softplus(-x) + (1 - y') softplus(x)]
    dloss/dx = c (sigmoid(x) - y')

computed stably for any ``|x|`` (one ``exp(-|x|)`` and one ``log1p`` per element).""",
}

# Every option of a softmax cross-entropy call, in signature order, as one placeholder: the
# functions that take them all unchanged write %(cross_entropy_options)s once.
PARAMETERS["cross_entropy_options"] = "\n".join(PARAMETERS[name]
                                                for name in CROSS_ENTROPY_OPTIONS)

# The linear layer + loss (lsref.linear)
PARAMETERS.update({
    "h": """\
h : array_like of float32 or float64, shape (..., d)
    The layer's inputs (hidden states), one row of ``d`` features per target.""",

    "weight": """\
weight : array_like, shape (V, d), ``h``'s dtype
    The output matrix: ``logits = h @ weight.T + bias``, ``V`` classes.""",

    "targets_linear": """\
targets : array_like
    Class indices (an integer array shaped like ``h`` without its last axis), or
    probabilities (a float array of that shape plus ``(V,)``).""",

    "bias": """\
bias : array_like of shape (V,), ``h``'s dtype, optional
    Added to every row of logits.""",

    "chunk_size": """\
chunk_size : int, optional
    Rows of logits made at a time (one buffer of ``chunk_size x V``); by default chosen
    from the rows (lsref.linear.chunk_rows: a tenth of all the logits, or 64 MiB if that
    is more; at most 2048 rows). The results do not depend on it beyond the GEMMs'
    rounding.""",
})
PARAMETERS["linear_options"] = "\n".join(PARAMETERS[name] for name in LINEAR_OPTIONS
                                         if name != "bias")
PARAMETERS = MappingProxyType(PARAMETERS)

_PLACEHOLDER = re.compile(r"^([ \t]*)%\((\w+)\)s[ \t]*$", re.MULTILINE)


def fill_doc(*option_sets: Mapping[str, object]) -> Callable[[_F], _F]:
    """Decorator: fill a docstring's placeholders and check the keyword-only parameters.

    Parameters
    ----------
    *option_sets : mapping of str to object
        The registry's options that the function's keyword-only parameters must be, in
        this order, with these defaults (``CROSS_ENTROPY_OPTIONS``, ``N_THREADS``, ...).
        None given: the signature is not checked.

    Returns
    -------
    decorator : callable
        It sets ``func.__doc__`` (each line holding only ``%(name)s`` replaced by
        ``PARAMETERS[name]``, indented as the placeholder was), checks the signature
        (:func:`check_signature`) and returns ``func`` itself.

    Raises
    ------
    KeyError
        If a placeholder names no entry of ``PARAMETERS``.
    TypeError
        If the signature does not match ``option_sets``.
    """
    def decorate(func: _F) -> _F:
        if option_sets:
            check_signature(func, *option_sets)
        if func.__doc__ is not None:          # None under python -OO
            func.__doc__ = _fill(func.__doc__)
        return func
    return decorate


def _fill(doc: str) -> str:
    def entry(match):
        indent, name = match.groups()
        return "\n".join(indent + line if line else line
                         for line in PARAMETERS[name].splitlines())
    return _PLACEHOLDER.sub(entry, doc)


def check_signature(func: Callable[..., Any], *option_sets: Mapping[str, object]) -> None:
    """Check that ``func``'s keyword-only parameters are exactly ``option_sets``.

    Parameters
    ----------
    func : callable
        A public function.
    *option_sets : mapping of str to object
        Registry options; their names, in order, with their defaults.

    Raises
    ------
    TypeError
        If the keyword-only parameters differ from the options in a name, their order,
        or a default, or if the function takes ``**kwargs``.
    """
    expected = [(name, default) for options in option_sets for name, default in options.items()]
    params = inspect.signature(func).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        raise TypeError(f"{func.__qualname__} takes **kwargs; public signatures are "
                        "explicit")
    got = [(p.name, p.default) for p in params if p.kind is p.KEYWORD_ONLY]
    # compare defaults by type and value: 0 == 0.0 == False would hide a changed default
    if [(n, type(d), d) for n, d in got] != [(n, type(d), d) for n, d in expected]:
        raise TypeError(f"{func.__qualname__}'s keyword-only parameters "
                        f"{_format(got)} differ from the registry's {_format(expected)} "
                        f"(lsref/_keywords.py)")


def _format(pairs):
    return "(" + ", ".join(f"{n}={d!r}" for n, d in pairs) + ")"


def given(arguments: Mapping[str, Any], *option_sets: Mapping[str, object]) -> dict[str, Any]:
    """``{name: arguments[name]}`` for every option of ``option_sets``, in their order.

    A public function passes its own options on with ``given(locals(), OPTIONS)`` as its
    first statement (``locals()`` then holds exactly its arguments), instead of writing the
    list of names a second time in the call: a new option added to the registry and the
    signature (check_signature) then reaches the computation, never a silent default. (The
    front doors of ``loss.py`` hand their ``locals()`` itself to
    ``_validation.check_arguments``, which reads the options from it: the same guarantee,
    without building a dict on every call.)
    """
    return {name: arguments[name] for options in option_sets for name in options}
