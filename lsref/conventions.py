"""How each framework's label-smoothed cross-entropy maps onto lsref's computation.

One record per framework call (SEMANTICS.md, "Conventions"). A record takes the keyword
arguments exactly as the user passed them to that framework and returns a :class:`Plan`: the
oracle's keywords plus the framework's reduction (its divisor, and what it returns when the
divisor is 0). Adding a framework is adding a record to ``CONVENTIONS``.

The records describe what each framework *means* to compute; where a framework's numbers
differ from that (an overflow, a NaN from ``0 * -inf``, smoothing spread over the wrong axis),
``lsref.verify`` reports the difference instead of copying it.
"""
import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

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
    """

    kwargs: dict
    reduction: str = "mean"
    divisor: object = "lsref"
    empty: float = math.nan


@dataclass(frozen=True)
class Convention:
    name: str
    call: str                     # the framework call this record describes
    params: tuple                 # the argument names it accepts, as the framework spells them
    smoothing_param: str          # the name of its smoothing argument (for `lsref verify`)
    weight_param: object          # the name of its per-class/per-row weight argument, if any
    plan: Callable = field(repr=False)   # (logits, targets, params) -> Plan
    notes: str = ""

    def make_plan(self, logits, targets, params):
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


def _optax(logits, targets, p):
    kw = dict(axis=p.get("axis", -1), label_smoothing=p.get("alpha", 0.0), ignore_index=None)
    if not _is_prob(logits, targets) and kw["label_smoothing"]:
        raise TypeError("optax.smooth_labels (alpha) takes one-hot or probability labels; "
                        "softmax_cross_entropy_with_integer_labels has no smoothing")
    return Plan(kwargs=kw, reduction="none")


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


CONVENTIONS = {c.name: c for c in [
    Convention("lsref", "lsref.cross_entropy",
               ("label_smoothing", "axis", "reduction", "smoothing", "class_weight",
                "sample_weight", "ignore_index", "z_loss", "kl"),
               "label_smoothing", "class_weight", _lsref,
               "lsref's own keywords and divisors (PyTorch's)."),
    Convention("torch", "torch.nn.functional.cross_entropy",
               ("weight", "ignore_index", "reduction", "label_smoothing"),
               "label_smoothing", "weight", _torch,
               "Class axis 1 (0 for 1-D input); eps/K with the weights in both terms; mean "
               "divides by the summed weights of the non-ignored targets (probability "
               "targets: by the rows); every target ignored gives NaN."),
    Convention("keras", "keras.losses.CategoricalCrossentropy / "
               "SparseCategoricalCrossentropy (from_logits=True)",
               ("from_logits", "label_smoothing", "axis", "reduction", "ignore_class",
                "sample_weight"),
               "label_smoothing", "sample_weight", _keras,
               "Probability targets: CategoricalCrossentropy, eps/K along axis; class "
               "indices: SparseCategoricalCrossentropy (no smoothing, ignore_class). "
               "sum_over_batch_size divides by the number of loss values that count; "
               "sample weights scale the values only; an empty mean is 0."),
    Convention("optax", "optax.softmax_cross_entropy(logits, optax.smooth_labels(labels, "
               "alpha)) / softmax_cross_entropy_with_integer_labels",
               ("alpha", "axis"), "alpha", None, _optax,
               "Per-row losses, no reduction, no weights, no ignore index."),
    Convention("timm", "timm.loss.LabelSmoothingCrossEntropy / SoftTargetCrossEntropy",
               ("smoothing",), "smoothing", None, _timm,
               "Class axis -1; eps/K; the mean over rows; smoothing < 1 (default 0.1)."),
    Convention("fairseq", "fairseq label_smoothed_nll_loss (>= 0.12)",
               ("epsilon", "ignore_index", "reduce"), "epsilon", None, _fairseq("others"),
               "eps/(V-1) on the wrong classes, 1-eps on the target; the sum (reduce=True); "
               "ignored positions count 0. Pass the logits (or the log-probabilities: "
               "log_softmax is idempotent); gradients are with respect to what you pass."),
    Convention("fairseq-0.10", "fairseq label_smoothed_nll_loss (<= 0.10.2)",
               ("epsilon", "ignore_index", "reduce"), "epsilon", None, _fairseq("uniform"),
               "The older eps/V form: (1-eps)*nll + eps/V * sum(-log p)."),
    Convention("t5x", "t5x.losses.compute_weighted_cross_entropy",
               ("label_smoothing", "z_loss", "weights", "loss_normalizing_factor"),
               "label_smoothing", "weights", _t5x,
               "eps/(V-1) ('others'), minus the target entropy (KL form), plus z_loss*lse**2; "
               "per-row weights; the sum, divided by loss_normalizing_factor if given."),
]}


def get_convention(name):
    if isinstance(name, Convention):
        return name
    try:
        return CONVENTIONS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown convention {name!r}; known: "
                         f"{', '.join(CONVENTIONS)}") from None
