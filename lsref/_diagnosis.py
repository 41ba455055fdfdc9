"""Known mistakes, each as an alternative computation: when a candidate that fails against the
reference passes against one of these, the report names that mistake in words."""
import dataclasses

import numpy as np

from . import reference as R
from ._tolerances import finfo
from ._validation import targets_are_probabilities

_HALF = ("float16", "bfloat16")


def _nonfinite_kinds(comp):
    return [item for item in (comp.nonfinite if comp is not None else [])]


def _rows_with_minus_inf(z, axis):
    return np.any(np.isneginf(z.astype(np.float64)), axis=axis)


def _passes(result, loss, grad):
    lc, gc, _ = result
    return (loss is None or lc.passed) and (grad is None or gc.passed)


def _alt(plan, **changes):
    kw = dict(plan.kwargs)
    top = {k: changes.pop(k) for k in ("reduction", "divisor", "empty") if k in changes}
    kw.update(changes)
    return dataclasses.replace(plan, kwargs=kw, **top)


def diagnose(z, t, plan, loss, grad, lc, gc, dtype, eps, tiny, ref_loss, ref_grad, check):
    found = []
    kw = plan.kwargs
    axis = kw.get("axis", -1)
    ndim = z.ndim
    axis_n = axis % ndim if ndim else 0
    K = z.shape[axis_n] if ndim else 1
    eps_s = float(kw.get("label_smoothing", 0.0) or 0.0)
    prob_targets = targets_are_probabilities(z.shape, t)

    # --- non-finite values where the value is finite ------------------------------------
    bad = _nonfinite_kinds(lc) + _nonfinite_kinds(gc)
    if bad:
        inf_loss = any("infinite" in b["kind"] for b in _nonfinite_kinds(lc))
        nan_any = any("NaN" in b["kind"] for b in bad)
        if inf_loss and dtype.name in _HALF:
            found.append(
                f"half-precision overflow: the candidate loss is infinite where the value is "
                f"finite. In {dtype.name} a sum over K = {K} classes (e.g. of -log p for "
                f"the smoothing term) exceeds the largest finite {dtype.name} "
                f"({float(finfo(dtype).max):g}"
                f"); accumulate in float32 (or upcast the logits) before reducing.")
        if nan_any and _rows_with_minus_inf(z, axis_n).any():
            found.append(
                "NaN from 0 * (-inf): a class with logit -inf (masked) and zero target mass "
                "(a 0 label, or class weight 0) was multiplied into the sum instead of "
                "skipped; its contribution is 0, so the loss is finite (or +inf where the "
                "masked class does get target mass).")
        if not found:
            found.append("non-finite values where the reference is finite (or the reverse); "
                         "no known mistake explains them: see the listed positions.")
        return found

    def try_plan(alt_plan, alt_t=None, loss_only=False, alt_eps=None):
        g = None if (loss_only and loss is not None) else grad
        e = eps if alt_eps is None else alt_eps
        return _passes(check(z, t if alt_t is None else alt_t, alt_plan, loss, g, e, tiny,
                             None, None), loss, g)

    # --- computed in a narrower precision than the result's dtype ------------------------
    if dtype == np.float64:
        eps32 = float(np.finfo(np.float32).eps)
        if try_plan(plan, alt_eps=eps32):
            found.append("precision: the result has dtype float64 but only float32 accuracy: "
                         "the framework computed in float32 (Keras casts inputs to floatx(), "
                         "float32 unless a dtype policy says otherwise; TF1's "
                         "compute_weighted_loss casts the losses to float32).")
            return found

    # --- smoothing forgotten: the candidate computed eps = 0 ------------------------------
    if eps_s > 0 and try_plan(_alt(plan, label_smoothing=0.0)):
        found.append(f"smoothing forgotten: the candidate is the unsmoothed cross-entropy "
                     f"(eps = 0), where label smoothing eps = {eps_s:g} was asked for.")
        return found

    # --- the smoothing form: eps/K vs eps/(K-1) -----------------------------------------
    # (one-hot probability targets, as Keras and Optax take them, are class indices here)
    form_t = None
    if prob_targets and z.size and ndim:
        with np.errstate(invalid="ignore"):
            tf = np.asarray(t, np.float64)
            if np.all((tf == 0) | (tf == 1)) and np.all(tf.sum(axis=axis_n) == 1):
                form_t = np.argmax(tf, axis=axis_n)
    if eps_s > 0 and (not prob_targets or form_t is not None) and K > 1:
        cur = kw.get("smoothing", "uniform")
        other = "others" if cur == "uniform" else "uniform"
        alt_form = _alt(plan, smoothing=other)
        if form_t is not None:
            alt_form = _alt(alt_form, ignore_index=None)
        if try_plan(alt_form, form_t):
            if other == "others":
                found.append(f"smoothing form: the candidate puts eps/(K-1) = {eps_s}/{K - 1} "
                             f"on each wrong class and 1-eps on the target (fairseq >= 0.12, "
                             f"T5X), where this convention puts eps/K = {eps_s}/{K} on every "
                             f"class (PyTorch, Keras, Optax, timm).")
            else:
                found.append(f"smoothing form: the candidate puts eps/K = {eps_s}/{K} on every "
                             f"class, where this convention puts eps/(K-1) = {eps_s}/{K - 1} "
                             f"on each wrong class and 1-eps on the target.")

    # --- smoothing mass divided by the wrong axis length ---------------------------------
    if eps_s > 0 and ndim > 1 and axis_n != ndim - 1 and z.shape[-1] != K:
        K_last = z.shape[-1]
        if prob_targets:
            P = t.astype(np.float64)
            counted = np.ones(P.shape, bool)
        else:                          # ignored targets: rows of zero mass, not indices
            ignored = (t == kw["ignore_index"]) if kw.get("ignore_index") is not None \
                else np.zeros(t.shape, bool)
            P = np.moveaxis(R.smooth_labels(np.where(ignored, 0, t), K, 0.0), -1, axis_n)
            counted = np.expand_dims(~ignored, axis_n)
        q_wrong = np.where(counted, (1.0 - eps_s) * P + eps_s / K_last, 0.0)
        # judged on the loss: with targets that no longer sum to 1, TensorFlow's fused kernel
        # returns the gradient p - q where autodiff gives (sum q) p - q
        if try_plan(_alt(plan, label_smoothing=0.0, ignore_index=None, smoothing="uniform"),
                    q_wrong, loss_only=True):
            found.append(f"smoothing over the wrong axis: the candidate adds eps/{K_last} "
                         f"(the last axis' length) to each class, but the classes lie along "
                         f"axis {axis} with K = {K}: it should add eps/{K} (Keras 3.15 "
                         f"divides eps by shape[-1] whatever `axis` is).")

    # --- a sum where the mean was meant, and the reverse -----------------------------------
    if (lc is not None and not lc.passed and np.ndim(ref_loss) == 0
            and plan.reduction in ("mean", "sum")):
        other = "sum" if plan.reduction == "mean" else "mean"
        alt = dataclasses.replace(plan, reduction=other,
                                  divisor=plan.divisor if plan.divisor is not None
                                  else "lsref")
        if try_plan(alt, loss_only=True):
            ratio = float(np.asarray(loss, np.float64)) / float(ref_loss) \
                if float(ref_loss) != 0 else float("nan")
            if other == "sum":
                found.append(f"reduction: the candidate loss is the sum over rows where the "
                             f"mean was meant ({ratio:.6g} times the mean: the divisor D).")
            else:
                found.append(f"reduction: the candidate loss is the mean where the sum was "
                             f"meant (1/{1 / ratio:.6g} of the sum).")
            return found

    # --- the mean's divisor ----------------------------------------------------------------
    if plan.reduction == "mean" and loss is not None:
        terms = R.gradient_terms(z, t, **kw)
        divisors = {"lsref": ("the summed weights of the non-ignored targets", terms["divisor"]),
                    "rows": ("the number of rows (targets) that count", terms["rows"]),
                    "sample_weight": ("the summed sample weights", terms["sample_weight"])}
        cur = plan.divisor if plan.divisor in divisors else None
        for name, (words, value) in divisors.items():
            if name == cur or value == 0 or cur is None:
                continue
            if abs(value - divisors[cur][1]) <= 1e-12 * abs(value):
                continue
            if try_plan(dataclasses.replace(plan, divisor=name)):
                found.append(f"the mean's divisor: the candidate divides by {words} "
                             f"({value:g}) where this convention divides by "
                             f"{divisors[cur][0]} ({divisors[cur][1]:g}).")
                break

    # --- a gradient that misses the 1/D of a mean (or has one too many) ----------------------
    if grad is not None and plan.reduction == "mean" and (loss is None or lc.passed):
        ref_sum = check(z, t, dataclasses.replace(plan, reduction="sum"), None, grad, eps, tiny,
                        None, None)
        if ref_sum[1].passed:
            found.append("the gradient misses the mean's 1/D factor: it is the gradient of the "
                         "summed loss, while the loss is a mean.")
    if grad is not None and plan.reduction in ("sum", "none") and (loss is None or lc.passed):
        D = np.asarray(ref_grad).size / max(1, K)
        ref_mean = check(z, t, dataclasses.replace(plan, reduction="mean", divisor="rows"),
                         None, grad, eps, tiny, None, None)
        if D > 1 and ref_mean[1].passed:
            found.append("the gradient carries a 1/N factor (it is the gradient of the mean "
                         "over rows) while the reduction is 'none' or 'sum', which have none.")

    if not found:
        worst = [c for c in (lc, gc) if c is not None and not c.passed]
        where = "; ".join(f"{c.name} worst at {list(c.worst_index)}: candidate "
                          f"{c.worst_candidate:.9g}, reference {c.worst_reference:.9g}"
                          for c in worst)
        found.append(f"no known mistake fits ({where}).")
    return found
