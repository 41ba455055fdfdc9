"""How each framework's label-smoothed cross-entropy maps onto lsref's computation.

One record per framework call (SEMANTICS.md, "Conventions"). A record takes the keyword
arguments exactly as the user passed them to that framework and returns a :class:`Plan`: the
oracle's keywords plus the framework's reduction (its divisor, and what it returns when the
divisor is 0). Adding a framework is adding a record to ``CONVENTIONS``; its ``source`` names
the framework file it was read from ("owner/repo: path").

The records describe what each framework *means* to compute; where a framework's numbers
differ from that (an overflow, a NaN from ``0 * -inf``, smoothing spread over the wrong axis),
``lsref.verify`` reports the difference instead of copying it.

A record may pair the targets with the logits itself: pass both exactly as given to the
framework. HuggingFace's ``LabelSmoother(epsilon=0.1)(logits, labels, shift_labels=True)``
scores ``logits[:, :-1]`` against ``labels[:, 1:]``:

>>> import numpy as np, lsref
>>> z = np.array([[[2.0, 0.5, -1.0], [0.1, 0.2, 0.3], [1.0, -1.0, 0.0]]])  # (batch, seq, K)
>>> labels = np.array([[-100, 2, 0]])
>>> loss = lsref.cross_entropy(z[:, :-1], labels[:, 1:], label_smoothing=0.1)
>>> kw = dict(convention="transformers", epsilon=0.1)
>>> lsref.verify(z, labels, loss, shift_labels=True, **kw).passed
True
>>> lsref.verify(z, labels, loss, shift_labels=False, **kw).passed
False
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from ._keywords import CROSS_ENTROPY_OPTIONS
from ._typing import Reduction
from ._validation import targets_are_probabilities

__all__ = ["Plan", "Convention", "CONVENTIONS", "get_convention"]


@dataclass(frozen=True)
class Plan:
    """What the reference computes for one framework call.

    ``kwargs`` go to the oracle (``label_smoothing``, ``axis``, ``smoothing``,
    ``class_weight``, ``sample_weight``, ``ignore_index``, ``z_loss``, ``kl``). ``reduction``
    is ``"none"`` (per-row losses; the gradient is that of their sum), ``"sum"``, or
    ``"mean"``. For ``"mean"``, ``divisor`` names the divisor: ``"lsref"`` (PyTorch's: the
    summed weights of the non-ignored targets, rows for probability targets), ``"rows"`` (the
    number of per-row loss values that count), ``"sample_weight"`` (their summed sample
    weights), or a number. ``empty`` is the loss a mean returns when the divisor is 0.
    ``targets``, when not None, replaces the targets the user passed: a framework that pairs
    them with the logits in its own way (shifted labels) or builds its own target
    distribution from them.
    """

    kwargs: dict[str, Any]
    reduction: Reduction = "mean"
    divisor: str | float | None = "lsref"     # None where the reduction is not a mean
    empty: float = math.nan
    targets: np.ndarray[Any, Any] | None = None


@dataclass(frozen=True)
class Convention:
    """One framework call's record: its arguments, and how they map onto lsref's.

    Each field is described where it is declared. :meth:`make_plan` turns the arguments a
    user passed to the framework into the :class:`Plan` the oracle computes.
    """

    name: str
    call: str                     # the framework call this record describes
    params: tuple[str, ...]       # the argument names it accepts, as the framework spells them
    smoothing_param: str          # the name of its smoothing argument (for `lsref verify`)
    weight_param: str | None      # the name of its per-class/per-row weight argument, if any
    # (logits, targets, params) -> Plan
    plan: Callable[[np.ndarray[Any, Any], np.ndarray[Any, Any], dict[str, Any]], Plan] = \
        field(repr=False)
    notes: str = ""
    source: str = ""              # "owner/repo: path" of the framework source it was read from

    def make_plan(self, logits: ArrayLike, targets: ArrayLike,
                  params: Mapping[str, Any]) -> Plan:
        """What the reference computes for this framework call.

        Parameters
        ----------
        logits : array_like
            The logits, exactly as passed to the framework.
        targets : array_like
            The targets, exactly as passed to the framework.
        params : dict
            The framework call's keyword arguments, spelled as the framework spells them.

        Returns
        -------
        Plan
            The oracle's keywords and the framework's reduction.

        Raises
        ------
        TypeError
            If ``params`` holds an argument this record does not know, or one the
            framework call does not take with these targets.
        ValueError
            If an argument's value is one the framework would refuse or that lsref cannot
            verify; the message names it.
        """
        unknown = sorted(set(params) - set(self.params))
        if unknown:
            raise TypeError(f"convention {self.name!r} ({self.call}) takes "
                            f"{', '.join(self.params) or 'no arguments'}; got unexpected "
                            f"{', '.join(unknown)}")
        return self.plan(np.asarray(logits), np.asarray(targets), dict(params))


def _is_prob(logits, targets):
    return targets_are_probabilities(logits.shape, targets)


def _lsref(logits, targets, p):
    reduction = p.pop("reduction", "mean")
    return Plan(kwargs=p, reduction=reduction, divisor="lsref")


def _torch(logits, targets, p):
    reduction = p.pop("reduction", "mean")
    kw = dict(label_smoothing=p.get("label_smoothing", 0.0),
              axis=1 if logits.ndim >= 2 else 0,
              class_weight=p.get("weight"),
              ignore_index=p.get("ignore_index", -100))
    if _is_prob(logits, targets) and kw["ignore_index"] < 0:
        kw["ignore_index"] = None
    return Plan(kwargs=kw, reduction=reduction, divisor="lsref", empty=math.nan)


def _keras(logits, targets, p):
    if not p.get("from_logits", True):
        raise ValueError("lsref verifies losses of logits: pass from_logits=True (with "
                         "from_logits=False Keras renormalises and clips probabilities)")
    reduction = p.get("reduction", "sum_over_batch_size")
    kw = dict(axis=p.get("axis", -1), sample_weight=p.get("sample_weight"))
    if _is_prob(logits, targets):               # CategoricalCrossentropy
        if p.get("ignore_class") is not None:
            raise TypeError("ignore_class belongs to SparseCategoricalCrossentropy (class "
                            "indices), not CategoricalCrossentropy")
        kw.update(label_smoothing=p.get("label_smoothing", 0.0), ignore_index=None)
    else:                                       # SparseCategoricalCrossentropy
        if p.get("label_smoothing", 0.0):
            raise TypeError("Keras's SparseCategoricalCrossentropy has no label_smoothing; "
                            "smoothing needs one-hot targets (CategoricalCrossentropy)")
        kw.update(label_smoothing=0.0, ignore_index=p.get("ignore_class"))
    if reduction in (None, "none"):
        return Plan(kwargs=kw, reduction="none")
    if reduction == "sum":
        return Plan(kwargs=kw, reduction="sum")
    if reduction in ("sum_over_batch_size", "mean"):
        # sum / (number of loss values that count): sample weights scale values only
        return Plan(kwargs=kw, reduction="mean", divisor="rows", empty=0.0)
    if reduction == "mean_with_sample_weight":
        return Plan(kwargs=kw, reduction="mean", divisor="sample_weight", empty=0.0)
    raise ValueError(f"unknown Keras reduction {reduction!r}")


def _reduction_choice(name, value, allowed):
    if value not in allowed:
        raise ValueError(f"{name}: reduction must be one of "
                         f"{', '.join(repr(a) for a in allowed)}, got {value!r}")
    return value


def _optax(logits, targets, p):
    # google-deepmind/optax optax/losses/_classification.py (0.2.8): softmax_cross_entropy
    # and ..._with_integer_labels take where= (>= 0.2.4): a row mask of the batch shape (or
    # of the logits' rank, constant along axis); a masked row's loss is 0
    axis = p.get("axis", -1)
    kw = dict(axis=axis, label_smoothing=p.get("alpha", 0.0), ignore_index=None)
    if not _is_prob(logits, targets) and kw["label_smoothing"]:
        raise TypeError("optax.smooth_labels (alpha) takes one-hot or probability labels; "
                        "softmax_cross_entropy_with_integer_labels has no smoothing")
    where = p.get("where")
    if where is not None:
        where = np.asarray(where).astype(bool)
        if where.ndim == logits.ndim:
            if where.shape[axis] != 1 and not (where == where.take([0], axis)).all():
                raise ValueError("optax where= that masks classes (different along axis) is "
                                 "not supported: lsref verifies row masks")
            where = where.take(0, axis)
        kw["sample_weight"] = np.broadcast_to(where, logits.shape[:axis % logits.ndim]
                                              + logits.shape[axis % logits.ndim + 1:]
                                              ).astype(np.float64)
    # the per-row losses, or the jnp.mean / jnp.sum the user applied to them
    reduction = _reduction_choice("optax", p.get("reduction", "none"), ("none", "mean", "sum"))
    if reduction == "mean":          # jnp.mean: every row, masked or not
        return Plan(kwargs=kw, reduction="mean", divisor="rows", empty=math.nan)
    return Plan(kwargs=kw, reduction=reduction)


def _timm(logits, targets, p):
    if _is_prob(logits, targets):               # SoftTargetCrossEntropy
        if "smoothing" in p:
            raise TypeError("timm's SoftTargetCrossEntropy takes no smoothing")
        kw = dict(label_smoothing=0.0, ignore_index=None)
    else:                                       # LabelSmoothingCrossEntropy (default 0.1)
        eps = p.get("smoothing", 0.1)
        if not eps < 1.0:
            raise ValueError(f"timm's LabelSmoothingCrossEntropy asserts smoothing < 1.0, "
                             f"got {eps}")
        kw = dict(label_smoothing=eps, ignore_index=None)
    return Plan(kwargs=kw, reduction="mean", divisor="rows")


def _fairseq(smoothing):
    def plan(logits, targets, p):
        kw = dict(label_smoothing=p.get("epsilon", 0.0), smoothing=smoothing,
                  ignore_index=p.get("ignore_index"))
        return Plan(kwargs=kw, reduction="sum" if p.get("reduce", True) else "none")
    return plan


def _t5x(logits, targets, p):
    kw = dict(label_smoothing=p.get("label_smoothing", 0.0), smoothing="others", kl=True,
              z_loss=p.get("z_loss", 0.0), sample_weight=p.get("weights"), ignore_index=None)
    lnf = p.get("loss_normalizing_factor")
    if lnf is None:
        return Plan(kwargs=kw, reduction="sum")
    return Plan(kwargs=kw, reduction="mean", divisor=float(lnf), empty=math.nan)

def _class_indices(name, logits, targets):
    if targets.dtype.kind not in "iu":
        raise TypeError(f"{name} takes integer class indices as targets, got "
                        f"{targets.dtype}")


def _transformers(logits, targets, p):
    # huggingface/transformers src/transformers/trainer_pt_utils.py, LabelSmoother.__call__
    # (5.24.0): (1 - eps) * nll + eps/K * sum_k(-log p_k), class axis -1, over the positions
    # whose label is not ignore_index; divided by their count, or by num_items_in_batch.
    # Pass the logits and the labels exactly as given to it; with shift_labels=True the record
    # pairs logits[..., i, :] with labels[..., i + 1] (the last position counts nothing).
    name = "transformers LabelSmoother"
    _class_indices(name, logits, targets)
    ignore = p.get("ignore_index", -100)
    t = targets
    if t.ndim == logits.ndim and t.shape[-1:] == (1,):       # labels already unsqueezed
        t = t[..., 0]
    if p.get("shift_labels", False):
        if t.ndim < 1 or t.shape[-1] < 1:
            raise ValueError(f"{name}: shift_labels needs labels with a sequence axis")
        t = np.concatenate([t[..., 1:], np.full(t.shape[:-1] + (1,), ignore, t.dtype)], -1)
    kw = dict(label_smoothing=p.get("epsilon", 0.1), axis=-1, ignore_index=ignore)
    n = p.get("num_items_in_batch")
    if n is None:
        divisor = "rows"
    else:
        n = float(np.asarray(n))
        if not n > 0:
            raise ValueError(f"{name}: num_items_in_batch must be positive, got {n}")
        divisor = n
    return Plan(kwargs=kw, reduction="mean", divisor=divisor, empty=math.nan,
                targets=None if t is targets else t)


def _espnet(logits, targets, p):
    # espnet/espnet espnet/nets/pytorch_backend/transformer/label_smoothing_loss.py,
    # LabelSmoothingLoss.forward: KLDivLoss(log_softmax(x), q), q = eps/(size-1) off the
    # target and 1 - eps on it; padding_idx rows count 0; the sum over (batch, seqlen, class)
    # divided by the batch size, or by the number of non-padding tokens (normalize_length)
    name = "espnet LabelSmoothingLoss"
    missing = [k for k in ("size", "padding_idx", "smoothing") if k not in p]
    if missing:
        raise TypeError(f"{name} needs {', '.join(missing)} (its constructor has no default)")
    if logits.ndim != 3 or logits.shape[2] != p["size"]:
        raise ValueError(f"{name} takes x of shape (batch, seqlen, size={p['size']}), got "
                         f"{logits.shape}")
    _class_indices(name, logits, targets)
    kw = dict(label_smoothing=p["smoothing"], smoothing="others", kl=True, axis=-1,
              ignore_index=p["padding_idx"])
    divisor = "rows" if p.get("normalize_length", False) else float(logits.shape[0])
    return Plan(kwargs=kw, reduction="mean", divisor=divisor, empty=math.nan)


def _opennmt(logits, targets, p):
    # OpenNMT/OpenNMT-py onmt/utils/loss.py (>= 3.0.3, commit 9d617b8): the criterion is
    # nn.CrossEntropyLoss(ignore_index=padding_idx, reduction="sum", label_smoothing=...)
    _class_indices("OpenNMT-py", logits, targets)
    return _torch(logits, targets, dict(label_smoothing=p.get("label_smoothing", 0.0),
                                        ignore_index=p.get("ignore_index", -100),
                                        reduction="sum"))


def _opennmt_302(logits, targets, p):
    # OpenNMT/OpenNMT-py onmt/utils/loss.py (<= 3.0.2, e.g. commit 9698acd), LabelSmoothingLoss:
    # q = eps/(V-2) on each class but the target and the padding class, 1 - eps on the target,
    # 0 on the padding class; rows whose target is ignore_index are 0;
    # F.kl_div(log_softmax output, q, reduction="sum")
    name = "OpenNMT-py LabelSmoothingLoss"
    _class_indices(name, logits, targets)
    if logits.ndim != 2:
        raise ValueError(f"{name} takes output of shape (batch_size, n_classes), got "
                         f"{logits.shape}")
    K = logits.shape[1]
    eps = p.get("label_smoothing")
    if eps is None or not 0.0 < eps <= 1.0:
        raise ValueError(f"{name} asserts 0 < label_smoothing <= 1, got {eps} (with 0, "
                         f"OpenNMT-py uses NLLLoss: convention 'torch', reduction='sum')")
    V = p.get("tgt_vocab_size", K)
    if V != K:
        raise ValueError(f"{name}: tgt_vocab_size={V} but the output has {K} classes")
    ignore = p.get("ignore_index", -100)
    if not 0 <= ignore < K:
        raise ValueError(f"{name} sets the smoothing mass of class ignore_index to 0: pass the "
                         f"padding index (0 <= ignore_index < {K}), got {ignore}")
    if targets.shape != logits.shape[:1] or ((targets < 0) | (targets >= K)).any():
        raise ValueError(f"{name} takes targets of shape ({logits.shape[0]},) with classes "
                         f"in [0, {K})")
    q = np.full((targets.shape[0], K), eps / (K - 2))
    q[:, ignore] = 0.0
    q[np.arange(targets.shape[0]), targets] = 1.0 - eps
    q[targets == ignore] = 0.0
    kw = dict(label_smoothing=0.0, kl=True, axis=-1, ignore_index=None)
    return Plan(kwargs=kw, reduction="sum", targets=q)


def _nemo(logits, targets, p):
    # NVIDIA/NeMo nemo/collections/common/losses/smoothed_cross_entropy.py,
    # SmoothedCrossEntropyLoss.forward: -(1 - V eps/(V-1)) log p_t - eps/(V-1) sum_k log p_k,
    # i.e. eps/(V-1) off the target ("others"), times output_mask (labels != pad_id by
    # default), over the last predict_last_k positions (0: all); divided by mask sum + eps
    name = "NeMo SmoothedCrossEntropyLoss"
    _class_indices(name, logits, targets)
    if logits.ndim != 3:
        raise ValueError(f"{name} takes log_probs of shape (batch, seq_len, vocab), got "
                         f"{logits.shape}")
    mask, pad = p.get("output_mask"), p.get("pad_id")
    if mask is None and pad is None:
        raise ValueError(f"{name}: both output_mask and pad_id are None")
    mask = (targets != pad) if mask is None else np.asarray(mask)
    mask = np.broadcast_to(mask, targets.shape).astype(np.float64)
    k = int(p.get("predict_last_k", 0))
    if k:                                     # the last k positions only ([:, -k:])
        window = np.zeros_like(mask)
        window[:, -k:] = 1.0
        mask = mask * window
    kw = dict(label_smoothing=p.get("label_smoothing", 0.0), smoothing="others", axis=-1,
              ignore_index=None, sample_weight=mask)
    return Plan(kwargs=kw, reduction="mean", divisor=float(mask.sum()) + p.get("eps", 1e-6),
                empty=math.nan)


def _mlx(logits, targets, p):
    # ml-explore/mlx python/mlx/nn/losses.py, cross_entropy (commit 846d176): targets of the
    # logits' rank are probabilities (assumed to sum to 1), else class indices; eps/K along
    # axis; weights multiply each loss value; reduction "none" | "mean" (over every value) |
    # "sum"; 0 <= label_smoothing < 1
    eps = p.get("label_smoothing", 0.0)
    if not 0.0 <= eps < 1.0:
        raise ValueError(f"mlx cross_entropy: label_smoothing must be in [0, 1), got {eps}")
    reduction = _reduction_choice("mlx cross_entropy", p.get("reduction", "none"),
                                  ("none", "mean", "sum"))
    t = None
    prob = targets.ndim == logits.ndim
    if prob and not _is_prob(logits, targets):
        t = targets.astype(np.float64)
    kw = dict(label_smoothing=eps, axis=p.get("axis", -1), ignore_index=None,
              sample_weight=p.get("weights"))
    if reduction == "mean":
        return Plan(kwargs=kw, reduction="mean", divisor="rows", empty=math.nan, targets=t)
    return Plan(kwargs=kw, reduction=reduction, targets=t)


_TF1_REDUCTIONS = ("none", "weighted_sum", "weighted_sum_over_batch_size", "weighted_mean",
                   "weighted_sum_by_nonzero_weights")


def _tf1(logits, targets, p):
    # tensorflow/tensorflow tensorflow/python/ops/losses/losses_impl.py (2.21.0):
    # softmax_cross_entropy smooths onehot_labels * (1 - eps) + eps/K (class axis -1), then
    # compute_weighted_loss: losses * weights (broadcast), reduced by Reduction (default
    # SUM_BY_NONZERO_WEIGHTS: the sum over the number of non-zero weights); every mean is
    # div_no_nan (0 when its divisor is 0)
    if targets.shape != logits.shape:
        raise ValueError(f"tf.compat.v1.losses.softmax_cross_entropy: onehot_labels of shape "
                         f"{targets.shape} do not match the logits' {logits.shape}")
    t = None                     # one-hot labels of any dtype are probability targets as given
    reduction = _reduction_choice("tf.compat.v1.losses.softmax_cross_entropy",
                                  p.get("reduction", "weighted_sum_by_nonzero_weights"),
                                  _TF1_REDUCTIONS)
    w = np.asarray(p.get("weights", 1.0), np.float64)
    try:
        w = np.broadcast_to(w, logits.shape[:-1])
    except ValueError:
        raise ValueError(f"tf.compat.v1.losses.softmax_cross_entropy: weights of shape "
                         f"{w.shape} do not broadcast to the losses' {logits.shape[:-1]}"
                         ) from None
    eps = p.get("label_smoothing", 0)
    kw = dict(label_smoothing=eps if eps > 0 else 0.0, axis=-1, ignore_index=None,
              sample_weight=np.array(w))
    if reduction == "none":
        return Plan(kwargs=kw, reduction="none", targets=t)
    if reduction == "weighted_sum":
        return Plan(kwargs=kw, reduction="sum", targets=t)
    divisor = {"weighted_sum_over_batch_size": "rows", "weighted_mean": "sample_weight",
               "weighted_sum_by_nonzero_weights": float(np.count_nonzero(w))}[reduction]
    return Plan(kwargs=kw, reduction="mean", divisor=divisor, empty=0.0, targets=t)


CONVENTIONS: dict[str, Convention] = {c.name: c for c in [
    Convention("lsref", "lsref.cross_entropy", tuple(CROSS_ENTROPY_OPTIONS),
               "label_smoothing", "class_weight", _lsref,
               "lsref's own keywords and divisors (PyTorch's)."),
    Convention("torch", "torch.nn.functional.cross_entropy",
               ("weight", "ignore_index", "reduction", "label_smoothing"),
               "label_smoothing", "weight", _torch,
               "Class axis 1 (0 for 1-D input); eps/K with the weights in both terms; mean "
               "divides by the summed weights of the non-ignored targets (probability "
               "targets: by the rows); every target ignored gives NaN.",
               source="pytorch/pytorch: torch/nn/functional.py"),
    Convention("keras", "keras.losses.CategoricalCrossentropy / "
               "SparseCategoricalCrossentropy (from_logits=True)",
               ("from_logits", "label_smoothing", "axis", "reduction", "ignore_class",
                "sample_weight"),
               "label_smoothing", "sample_weight", _keras,
               "Probability targets: CategoricalCrossentropy, eps/K along axis; class "
               "indices: SparseCategoricalCrossentropy (no smoothing, ignore_class). "
               "sum_over_batch_size divides by the number of loss values that count; "
               "sample weights scale the values only; an empty mean is 0.",
               source="keras-team/keras: keras/src/losses/losses.py"),
    Convention("optax", "optax.softmax_cross_entropy(logits, optax.smooth_labels(labels, "
               "alpha)) / softmax_cross_entropy_with_integer_labels",
               ("alpha", "axis", "where", "reduction"), "alpha", None, _optax,
               "Per-row losses (reduction='none'), no weights, no ignore index; where= masks "
               "rows (>= 0.2.4; a masked row is 0). reduction='mean'/'sum' for the loss "
               "after your own jnp.mean/jnp.sum (the mean counts masked rows).",
               source="google-deepmind/optax: optax/losses/_classification.py"),
    Convention("timm", "timm.loss.LabelSmoothingCrossEntropy / SoftTargetCrossEntropy",
               ("smoothing",), "smoothing", None, _timm,
               "Class axis -1; eps/K; the mean over rows; smoothing < 1 (default 0.1).",
               source="huggingface/pytorch-image-models: timm/loss/cross_entropy.py"),
    Convention("fairseq", "fairseq label_smoothed_nll_loss (>= 0.12)",
               ("epsilon", "ignore_index", "reduce"), "epsilon", None, _fairseq("others"),
               "eps/(V-1) on the wrong classes, 1-eps on the target; the sum (reduce=True); "
               "ignored positions count 0. Pass the logits (or the log-probabilities: "
               "log_softmax is idempotent); gradients are with respect to what you pass.",
               source="facebookresearch/fairseq: "
                      "fairseq/criterions/label_smoothed_cross_entropy.py"),
    Convention("fairseq-0.10", "fairseq label_smoothed_nll_loss (<= 0.10.2)",
               ("epsilon", "ignore_index", "reduce"), "epsilon", None, _fairseq("uniform"),
               "The older eps/V form: (1-eps)*nll + eps/V * sum(-log p).",
               source="facebookresearch/fairseq: "
                      "fairseq/criterions/label_smoothed_cross_entropy.py"),
    Convention("t5x", "t5x.losses.compute_weighted_cross_entropy",
               ("label_smoothing", "z_loss", "weights", "loss_normalizing_factor"),
               "label_smoothing", "weights", _t5x,
               "eps/(V-1) ('others'), minus the target entropy (KL form), plus z_loss*lse**2; "
               "per-row weights; the sum, divided by loss_normalizing_factor if given.",
               source="google-research/t5x: t5x/losses.py"),
    Convention("transformers", "transformers.trainer_pt_utils.LabelSmoother(epsilon, "
               "ignore_index)(logits, labels, shift_labels, num_items_in_batch)",
               ("epsilon", "ignore_index", "shift_labels", "num_items_in_batch"),
               "epsilon", None, _transformers,
               "eps/K (default 0.1) along the last axis; labels equal to ignore_index "
               "(-100) count 0; the mean over the labels that count, or the sum over "
               "num_items_in_batch. Pass the unshifted logits and labels: shift_labels=True "
               "pairs logits[..., i, :] with labels[..., i + 1].",
               source="huggingface/transformers: src/transformers/trainer_pt_utils.py"),
    Convention("espnet", "espnet LabelSmoothingLoss(size, padding_idx, smoothing, "
               "normalize_length)(x, target)",
               ("size", "padding_idx", "smoothing", "normalize_length"),
               "smoothing", None, _espnet,
               "KL form, eps/(K-1) off the target; x is (batch, seqlen, size); padding_idx "
               "positions count 0; the sum over the batch size, or over the non-padding "
               "tokens with normalize_length=True.",
               source="espnet/espnet: "
                      "espnet/nets/pytorch_backend/transformer/label_smoothing_loss.py"),
    Convention("opennmt", "OpenNMT-py (>= 3.0.3) nn.CrossEntropyLoss(ignore_index=padding_idx, "
               "reduction='sum', label_smoothing)",
               ("label_smoothing", "ignore_index"), "label_smoothing", None, _opennmt,
               "PyTorch's form (eps/K), the sum; the padding index counts 0.",
               source="OpenNMT/OpenNMT-py: onmt/utils/loss.py"),
    Convention("opennmt-3.0.2", "OpenNMT-py (<= 3.0.2) LabelSmoothingLoss(label_smoothing, "
               "tgt_vocab_size, ignore_index)",
               ("label_smoothing", "tgt_vocab_size", "ignore_index"), "label_smoothing", None,
               _opennmt_302,
               "KL form, sum: eps/(V-2) on the classes other than the target and the padding "
               "class (which gets 0); 0 < eps <= 1; ignore_index is the padding index. Pass "
               "the logits (output = log_softmax of them).",
               source="OpenNMT/OpenNMT-py: onmt/utils/loss.py"),
    Convention("nemo", "NeMo SmoothedCrossEntropyLoss(pad_id, label_smoothing, predict_last_k, "
               "eps)(log_probs, labels, output_mask)",
               ("pad_id", "label_smoothing", "predict_last_k", "eps", "output_mask"),
               "label_smoothing", "output_mask", _nemo,
               "eps/(V-1) off the target; output_mask (default labels != pad_id) weights "
               "each position; the last predict_last_k positions (0: all); divided by the "
               "mask's sum + eps (1e-6). Pass the logits (log_probs = log_softmax of them).",
               source="NVIDIA/NeMo: nemo/collections/common/losses/smoothed_cross_entropy.py"),
    Convention("mlx", "mlx.nn.losses.cross_entropy",
               ("weights", "axis", "label_smoothing", "reduction"), "label_smoothing",
               "weights", _mlx,
               "eps/K along axis; class indices, or probabilities (the logits' rank) that "
               "sum to 1; weights scale each value; reduction 'none' (default), 'mean' over "
               "every value, 'sum'; no ignore index.",
               source="ml-explore/mlx: python/mlx/nn/losses.py"),
    Convention("tf1", "tf.compat.v1.losses.softmax_cross_entropy(onehot_labels, logits, "
               "weights, label_smoothing, reduction)",
               ("weights", "label_smoothing", "reduction"), "label_smoothing", "weights", _tf1,
               "eps/K on the last axis; weights broadcast to the per-row losses; default "
               "SUM_BY_NONZERO_WEIGHTS (the sum over the count of non-zero weights); MEAN "
               "divides by the summed weights, SUM_OVER_BATCH_SIZE by the rows; an empty "
               "mean is 0. Pass onehot_labels as the targets.",
               source="tensorflow/tensorflow: tensorflow/python/ops/losses/losses_impl.py"),
]}


def get_convention(name: str | Convention) -> Convention:
    """The record of a framework call, by name.

    Parameters
    ----------
    name : str or Convention
        A key of ``CONVENTIONS`` (``"torch"``, ``"keras"``, ...), or a record (returned
        as it is).

    Returns
    -------
    Convention
        The record.

    Raises
    ------
    ValueError
        If no record has that name; the message lists the known ones.

    Examples
    --------
    >>> from lsref.conventions import get_convention
    >>> get_convention("torch").smoothing_param
    'label_smoothing'
    """
    if isinstance(name, Convention):
        return name
    try:
        return CONVENTIONS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown convention {name!r}; known: "
                         f"{', '.join(CONVENTIONS)}") from None
