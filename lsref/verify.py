"""Is a framework's label-smoothed loss (and gradient) right? ``lsref.verify`` answers, for the
user's own arrays: where it is not, and, when the mismatch fits a known mistake, why.

The reference is the float64 oracle (``lsref.reference``) on the exact inputs, under the
framework's convention (``lsref.conventions``); the tolerance model is in
``lsref._tolerances`` (one model, per candidate dtype and K).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from . import reference as R
from ._diagnosis import diagnose
from ._npy import npy_header
from ._tolerances import VERIFY_SAFETY, verify_eps, verify_growth, verify_row_factor_bound
from ._validation import targets_are_probabilities
from .conventions import Plan, get_convention

__all__ = ["verify", "VerificationReport", "Comparison"]

_MAX_LISTED = 8

_Path = str | os.PathLike[str]     # an .npy file (verify_files)


def to_numpy(x):
    """NumPy view of a NumPy array, a PyTorch tensor (detached, on the CPU), a JAX or
    TensorFlow array, or anything np.asarray takes."""
    if x is None:
        return None
    if hasattr(x, "detach"):                       # torch
        x = x.detach()
        if getattr(x, "dtype", None) is not None and str(x.dtype) == "torch.bfloat16":
            import ml_dtypes
            return x.cpu().view(__import__("torch").int16).numpy().view(ml_dtypes.bfloat16)
        return x.cpu().numpy()
    return np.asarray(x)


@dataclass
class Comparison:
    """The candidate against the reference, for the loss or the gradient."""

    name: str
    shape: tuple[int, ...]
    n_checked: int = 0
    n_failed: int = 0
    max_abs_error: float = 0.0
    max_rel_error: float = 0.0
    max_error_eps: float = 0.0          # max relative error in units of the candidate's eps
    worst_index: tuple[int, ...] = ()
    worst_candidate: float = math.nan
    worst_reference: float = math.nan
    worst_tolerance: float = math.nan
    max_error_ratio: float = 0.0        # the verdict's figure: worst error / its tolerance
    row_factor: float = 0.0             # gradient: the largest common factor of a row (model)
    row_factor_bound: float = 0.0       # ... and what that row's sums allow
    # disagreements in inf/NaN, listed apart
    nonfinite: list[dict[str, Any]] = field(default_factory=list)
    n_nonfinite: int = 0

    @property
    def passed(self) -> bool:
        """Every element inside its tolerance, and no non-finite disagreement."""
        return self.n_failed == 0 and self.n_nonfinite == 0


@dataclass
class VerificationReport:
    """What :func:`verify` found: the verdict, and the comparisons behind it.

    ``passed`` is the verdict; ``loss`` and ``grad`` are the :class:`Comparison` of each
    candidate given (None otherwise); ``diagnosis`` names a known mistake that fits a
    failure, in words. ``print(report)`` for a terminal, :meth:`to_dict` for JSON.
    """

    passed: bool
    convention: str
    call: str
    dtype: str
    n_classes: int
    params: dict[str, Any]
    loss: Comparison | None = None
    grad: Comparison | None = None
    diagnosis: list[str] = field(default_factory=list)
    tolerance: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The report as plain JSON types (non-finite numbers as the strings "inf", "nan").

        Returns
        -------
        dict
            The report's fields, nested comparisons included, as ``json.dumps`` writes
            them in strict JSON.
        """
        d = asdict(self)
        d["params"] = {k: _jsonable(v) for k, v in self.params.items()}
        return json.loads(json.dumps(_finite(d), default=_jsonable, allow_nan=False))

    def __str__(self) -> str:
        verdict = "PASSED" if self.passed else "FAILED"
        lines = [f"lsref.verify: {verdict}  [{self.convention}: {self.call}]",
                 f"  candidate dtype {self.dtype}, K = {self.n_classes}, "
                 f"params {_fmt_params(self.params)}",
                 f"  tolerance: {self.tolerance}"]
        for comp in (self.loss, self.grad):
            if comp is None:
                continue
            state = "ok" if comp.passed else "MISMATCH"
            lines.append(f"  {comp.name:<8} {state}: worst error {comp.max_error_ratio:.3g} x "
                         f"its tolerance, {comp.n_failed} of {comp.n_checked} outside "
                         f"tolerance (max abs err {comp.max_abs_error:.3g})")
            if comp.row_factor:
                lines.append(f"           rows' common factor (exp-sum rounding) up to "
                             f"{comp.row_factor:.3g}, allowed {comp.row_factor_bound:.3g}; "
                             f"removed before elements are compared")
            if comp.n_checked and (comp.n_failed or comp.name == "gradient"):
                where = "" if comp.worst_index == () else f" at {list(comp.worst_index)}"
                lines.append(f"           worst{where}: candidate {comp.worst_candidate:.9g}, "
                             f"reference {comp.worst_reference:.9g} "
                             f"(tolerance {comp.worst_tolerance:.3g})")
            if comp.n_nonfinite:
                lines.append(f"           {comp.n_nonfinite} non-finite disagreement(s):")
                for item in comp.nonfinite:
                    lines.append(f"             at {item['index']}: candidate "
                                 f"{item['candidate']}, reference {item['reference']} "
                                 f"({item['kind']})")
        for d in self.diagnosis:
            lines.append(f"  diagnosis: {d}")
        return "\n".join(lines)


def _finite(v):
    """v with every non-finite float replaced by its string (JSON has no inf or NaN)."""
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    if isinstance(v, (float, np.floating)) and not math.isfinite(v):
        return str(float(v))
    return v


def _jsonable(v):
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v if isinstance(v, (int, float, str, bool, type(None), list, dict)) else str(v)


def _fmt_params(params):
    def short(v):
        v = np.asarray(v)
        return f"<array {v.shape}>" if v.ndim else repr(v.item())
    return "{" + ", ".join(f"{k}={short(v)}" for k, v in params.items()) + "}"


# --- the reference under a plan ------------------------------------------------------------

def _reference(z, t, plan):
    """(loss, grad, loss tolerance pieces, grad tolerance pieces) in float64 for a plan."""
    kw = plan.kwargs
    rows, grad = R.value_and_grad(z, t, reduction="none", **kw)
    terms = R.gradient_terms(z, t, **kw)
    axis = terms["axis"]
    row_target = np.sum(terms["target"], axis=axis)       # T_i, per row
    with np.errstate(invalid="ignore"):       # M_i: the sizes of the loss's summed terms
        sizes = np.where(np.isfinite(terms["log_p"]), terms["target"] * np.abs(terms["log_p"]),
                         0.0)
        row_mass = (np.sum(sizes, axis=axis) - np.max(sizes, axis=axis, initial=0.0)
                    if sizes.size else np.sum(sizes, axis=axis))
    if plan.reduction == "none":
        return rows, grad, (rows, row_target, terms["lse"], row_mass), terms
    D = _divisor_of(plan, lambda: (terms["divisor"], terms["rows"], terms["sample_weight"]))
    if plan.reduction == "sum":
        loss, scale = np.float64(np.sum(rows)), 1.0
    elif _empty_mean(plan, D):            # the convention's mean of nothing, a zero gradient
        loss, scale = np.float64(plan.empty), 0.0
    else:
        loss, scale = np.float64(np.sum(rows) / D), 1.0 / D
    grad = grad * scale
    # term sizes are sizes: a negative divisor (weights of both signs) flips signs, not sizes
    size = abs(scale)
    terms = dict(terms, prob=terms["prob"] * size, target=terms["target"] * size)
    return loss, grad, (rows * scale, row_target * size, terms["lse"], row_mass * size), terms


def _row_loss_tolerance(loss_pieces, eps, K):
    """Each row loss's tolerance (_tolerances.py): its own rounding, the recursive sum of its
    K terms (sizes M_i), and lse's error times the row's target mass T_i."""
    rows, row_target, lse, row_mass = loss_pieces
    G = verify_growth(K)
    return VERIFY_SAFETY * eps * (np.abs(rows) + G * row_mass
                                  + row_target * (G + np.abs(lse)))


def _tolerances(ref_loss, loss_pieces, terms, eps, tiny, K, reduction, rtol, atol, ref_grad):
    """Per-element tolerances of the loss and the gradient (the model of _tolerances.py, or
    atol + rtol*|reference| when the caller gave either)."""
    rows = loss_pieces[0]
    if rtol is not None or atol is not None:
        r = 0.0 if rtol is None else rtol
        a = 0.0 if atol is None else atol
        return (a + r * np.abs(ref_loss)), (a + r * np.abs(ref_grad))
    with np.errstate(invalid="ignore", over="ignore"):
        row_tol = _row_loss_tolerance(loss_pieces, eps, K)
        if reduction == "none":
            loss_tol = row_tol
        else:
            n = max(np.size(rows), 1)
            loss_tol = (np.sum(np.where(np.isfinite(row_tol), row_tol, 0.0))
                        + VERIFY_SAFETY * eps * math.log2(n + 1) * np.abs(ref_loss))
        log_p = np.where(np.isfinite(terms["log_p"]), np.abs(terms["log_p"]), 0.0)
        grad_tol = (VERIFY_SAFETY * eps * (terms["prob"] * (4.0 + log_p + math.log(max(K, 1)))
                                           + terms["target"] + np.abs(ref_grad))
                    + tiny)
    loss_tol = loss_tol + tiny
    return loss_tol, grad_tol


def _row_factor(cand, ref_grad, terms, eps, tiny, K, dtype):
    """The model's common factor delta_i of each row (_tolerances.py): the median over the row
    of (g_j - g_ref_j) / P_j, clipped to its bound; where fewer than 3 elements can show it,
    the bound itself widens those elements' tolerance instead. Returns (the shift delta_i P_j
    to add to the reference, the tolerance to add, the largest |delta_i|, its row's bound)."""
    axis = terms["axis"]
    cand = np.asarray(cand, np.float64) if cand.dtype.name != "bfloat16" else \
        cand.astype(np.float64)
    if cand.shape != ref_grad.shape or ref_grad.size == 0 or ref_grad.ndim == 0:
        return 0.0, 0.0, 0.0, 0.0
    rows_last = np.moveaxis(terms["prob"], axis, -1).shape
    P = np.moveaxis(terms["prob"], axis, -1).reshape(-1, K)
    T = np.moveaxis(terms["target"], axis, -1).reshape(-1, K)
    d = np.moveaxis(cand - ref_grad, axis, -1).reshape(-1, K)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        # elements the candidate dtype holds to its relative precision (a gradient entry
        # flushed to 0 or subnormal says nothing about the row's factor)
        use = np.isfinite(d) & (P > 0) & (P >= 0.25 * T) & (P * eps >= 4.0 * tiny)
        ratio = np.where(use, d / np.where(use, P, 1.0), np.nan)
    bound = verify_row_factor_bound(eps, K, np.abs(terms["lse"]).reshape(-1), dtype)
    bound = np.where(np.isfinite(bound), bound, 0.0)
    delta = np.zeros(P.shape[0])
    some = use.sum(axis=1) >= 3            # a median of 1 or 2 values is one element's error
    if some.any():
        delta[some] = np.clip(np.nanmedian(ratio[some], axis=1), -bound[some], bound[some])
    widen = np.where(some, 0.0, bound)

    def back(per_row):
        return np.moveaxis((per_row[:, None] * P).reshape(rows_last), -1, axis)
    i = int(np.argmax(np.where(some, np.abs(delta), -1.0)))
    return back(delta), back(widen), float(abs(delta[i])), float(bound[i])


def _compare(name, cand, ref, tol, eps, shift=0.0):
    """cand against ref (+ shift, the rows' common factor) within tol, element by element."""
    cand = np.asarray(cand, np.float64) if cand.dtype.name != "bfloat16" else \
        cand.astype(np.float64)
    ref = np.asarray(ref, np.float64)
    comp = Comparison(name=name, shape=tuple(ref.shape))
    if cand.shape != ref.shape:
        if cand.size == ref.size == 1:
            cand = cand.reshape(ref.shape)
        else:
            raise ValueError(f"the candidate {name} has shape {cand.shape}, the reference "
                             f"{ref.shape} (check the reduction and the convention)")
    scalar = ref.ndim == 0
    tol = np.broadcast_to(tol, ref.shape)
    shift = np.broadcast_to(np.asarray(shift, np.float64), ref.shape)
    if scalar:                                     # compare as one element; index []
        cand, ref, tol = cand.reshape(1), ref.reshape(1), tol.reshape(1)
        shift = shift.reshape(1)
    cf, rf = np.isfinite(cand), np.isfinite(ref)
    same_special = (~cf & ~rf) & ((np.isnan(cand) & np.isnan(ref)) | (cand == ref))
    bad_special = ~(cf & rf) & ~same_special
    comp.n_nonfinite = int(bad_special.sum())
    for idx in list(zip(*np.nonzero(bad_special)))[:_MAX_LISTED]:
        c, r = float(cand[idx]), float(ref[idx])
        kind = ("candidate NaN where the value is finite" if math.isnan(c) and math.isfinite(r)
                else "candidate infinite where the value is finite" if math.isfinite(r)
                else "candidate finite where the value is not" if math.isfinite(c)
                else "a different non-finite value")
        comp.nonfinite.append(dict(index=[] if scalar else [int(i) for i in idx],
                                   candidate=c, reference=r, kind=kind))
    both = cf & rf
    comp.n_checked = int(both.sum())
    if comp.n_checked:
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            err = np.where(both, np.abs(cand - ref), 0.0)
            judged = np.where(both, np.abs(cand - (ref + shift)), 0.0)
            rel = np.where(both & (ref != 0), err / np.abs(ref), np.where(err > 0, np.inf, 0))
            ratio = np.where(both, judged / np.where(tol > 0, tol, np.finfo(float).tiny), 0.0)
        comp.n_failed = int(np.sum(ratio > 1.0))
        comp.max_abs_error = float(err.max())
        comp.max_rel_error = float(rel.max())
        comp.max_error_eps = comp.max_rel_error / eps
        comp.max_error_ratio = float(ratio.max())
        worst = np.unravel_index(int(np.argmax(ratio)), ref.shape)
        comp.worst_index = () if scalar else tuple(int(i) for i in worst)
        comp.worst_candidate = float(cand[worst])
        comp.worst_reference = float(ref[worst])
        comp.worst_tolerance = float(tol[worst])
    return comp


def _compare_gradient(cand, ref_grad, grad_tol, terms, eps, tiny, K, model):
    """The gradient's Comparison; under the tolerance model (not an explicit rtol/atol) with
    each row's common factor removed first (_row_factor)."""
    shift, widen, factor, bound = 0.0, 0.0, 0.0, 0.0
    if model:
        shift, widen, factor, bound = _row_factor(cand, ref_grad, terms, eps, tiny, K,
                                                  cand.dtype)
    comp = _compare("gradient", cand, ref_grad, grad_tol + widen, eps, shift)
    comp.row_factor, comp.row_factor_bound = factor, bound
    return comp


def _checked_plan(conv, z, t, params, rtol, atol):
    """The convention's plan for these arguments; a reduction the framework does not have and
    a tolerance that is not a finite number >= 0 are errors naming the argument (a misread
    reduction would be checked against the wrong reference)."""
    for name, value in (("rtol", rtol), ("atol", atol)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer,
                                                             np.floating)):
            raise TypeError(f"{name} must be a number >= 0, got {value!r}")
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be finite and >= 0, got {value!r}")
    plan = conv.make_plan(z, t, params)
    if plan.reduction not in ("none", "sum", "mean"):
        given = params.get("reduction", plan.reduction)
        raise ValueError(f"reduction={given!r} is not a reduction of {conv.call} (convention "
                         f"{conv.name!r}): use 'none', 'sum' or 'mean'")
    return plan


def _check(z, t, plan, loss, grad, eps, tiny, rtol, atol):
    ref_loss, ref_grad, loss_pieces, terms = _reference(z, t, plan)
    K = terms["n_classes"]
    loss_tol, grad_tol = _tolerances(ref_loss, loss_pieces, terms, eps, tiny, K,
                                     plan.reduction, rtol, atol, ref_grad)
    lc = None if loss is None else _compare("loss", loss, ref_loss, loss_tol, eps)
    gc = None if grad is None else _compare_gradient(grad, ref_grad, grad_tol, terms, eps, tiny,
                                                     K, rtol is None and atol is None)
    return lc, gc, (ref_loss, ref_grad, terms)


def verify(logits: ArrayLike, targets: ArrayLike, loss: ArrayLike | None = None,
           grad: ArrayLike | None = None, *, convention: str = "lsref",
           rtol: float | None = None, atol: float | None = None,
           **params: Any) -> VerificationReport:
    """Check a framework's loss and/or gradient against the float64 reference.

    Parameters
    ----------
    logits, targets : array_like (NumPy, PyTorch, JAX or TensorFlow arrays)
        Exactly what was given to the framework.
    loss, grad : array_like, optional
        The framework's loss (scalar, or per row) and its gradient with respect to
        ``logits``. Give either or both.
    convention : str, default="lsref"
        Whose semantics: "torch", "keras", "optax", "timm", "fairseq", "fairseq-0.10",
        "t5x", "transformers", "espnet", "opennmt", "opennmt-3.0.2", "nemo", "mlx", "tf1"
        or "lsref" (see ``lsref.conventions.CONVENTIONS``).
    rtol, atol : float, optional
        Replace the tolerance model by ``atol + rtol * |reference|``.
    **params
        The keyword arguments exactly as passed to the framework, e.g. ``weight=``,
        ``ignore_index=``, ``label_smoothing=`` for PyTorch.

    Returns
    -------
    VerificationReport
        ``passed``; for the loss and the gradient the largest absolute and relative error
        (also in units of the candidate dtype's epsilon), the worst element with both values,
        non-finite disagreements listed apart; a ``diagnosis`` where a known mistake fits.
        ``print(report)`` for a terminal, ``report.to_dict()`` for JSON.

    Examples
    --------
    >>> import numpy as np, lsref
    >>> z = np.array([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]])
    >>> t = np.array([0, 2])
    >>> ref_loss = lsref.cross_entropy(z, t, label_smoothing=0.1)
    >>> lsref.verify(z, t, loss=ref_loss, convention="torch", label_smoothing=0.1).passed
    True
    >>> r = lsref.verify(z, t, loss=ref_loss * 1.01, convention="torch", label_smoothing=0.1)
    >>> r.passed
    False
    """
    conv = get_convention(convention)
    z, t = to_numpy(logits), to_numpy(targets)
    loss, grad = to_numpy(loss), to_numpy(grad)
    if loss is None and grad is None:
        raise ValueError("give the candidate loss, grad, or both")
    params = {k: to_numpy(v) if hasattr(v, "shape") else v for k, v in params.items()}
    plan = _checked_plan(conv, z, t, params, rtol, atol)
    if plan.targets is not None:              # the targets as the framework pairs/builds them
        t = np.asarray(plan.targets)
    cand_dtype = (grad if grad is not None else loss).dtype
    if cand_dtype.kind != "f" and cand_dtype.name != "bfloat16":
        cand_dtype = np.dtype(np.float64)
    eps, tiny = verify_eps(cand_dtype)
    lc, gc, (ref_loss, ref_grad, terms) = _check(z, t, plan, loss, grad, eps, tiny, rtol, atol)
    report = VerificationReport(
        passed=all(c is None or c.passed for c in (lc, gc)), convention=conv.name,
        call=conv.call, dtype=cand_dtype.name, n_classes=terms["n_classes"], params=params,
        loss=lc, grad=gc,
        tolerance=(f"atol={atol}, rtol={rtol}" if (rtol is not None or atol is not None)
                   else f"model for {cand_dtype.name} (eps {eps:.3g}) and K = "
                        f"{terms['n_classes']}"))
    if not report.passed:
        report.diagnosis = diagnose(z, t, plan, loss, grad, lc, gc, cand_dtype, eps, tiny,
                                    ref_loss, ref_grad, _check)
    return report


# --- files larger than memory --------------------------------------------------------------

def _divisor_of(plan, counts):
    """The divisor a plan's reduction divides by: 1 unless it is a "mean"; a number; or what
    ``counts()`` gives, (lsref's D, the rows that count, their sample weights), read as the
    plan's ``divisor`` names it (conventions.Plan)."""
    if plan.reduction != "mean" or plan.divisor is None:
        return 1.0
    if not isinstance(plan.divisor, str):
        return float(plan.divisor)
    lsref_d, rows, sample_weight = counts()
    return {"lsref": lsref_d, "rows": rows, "sample_weight": sample_weight}[plan.divisor]


def _empty_mean(plan, D):
    """A plan's "mean" over nothing: its loss is the convention's ``empty`` value."""
    return plan.reduction == "mean" and D == 0


def _plan_divisor(plan, t, K):
    """The "mean" divisor of the whole problem, from its targets and weights alone
    (gradient_terms would need the logits)."""
    def counts():
        kw = plan.kwargs
        N = t.shape[0]
        s = np.ones(N) if kw.get("sample_weight") is None else \
            np.asarray(kw["sample_weight"], np.float64).reshape(-1)
        prob = targets_are_probabilities((N, K), t)
        ignore = kw.get("ignore_index", -100)
        counted = np.ones(N, bool) if (prob or ignore is None) else t != ignore
        lsref_d = float(N) if prob else R.mean_divisor(
            t, K, class_weight=kw.get("class_weight"), sample_weight=kw.get("sample_weight"),
            ignore_index=ignore)
        return lsref_d, float(counted.sum()), float(s[counted].sum())
    return _divisor_of(plan, counts)


def _merge_comparisons(parts, name, shape, eps):
    """One Comparison for a whole array from those of its row windows (index offsets)."""
    out = Comparison(name=name, shape=shape)
    worst_ratio = -1.0
    for r0, c in parts:
        out.n_checked += c.n_checked
        out.n_failed += c.n_failed
        out.n_nonfinite += c.n_nonfinite
        for item in c.nonfinite:
            if len(out.nonfinite) < _MAX_LISTED:
                idx = list(item["index"])
                out.nonfinite.append(dict(item, index=[idx[0] + r0] + idx[1:] if idx else []))
        out.max_abs_error = max(out.max_abs_error, c.max_abs_error)
        out.max_rel_error = max(out.max_rel_error, c.max_rel_error)
        if c.row_factor > out.row_factor:
            out.row_factor, out.row_factor_bound = c.row_factor, c.row_factor_bound
        if c.n_checked:
            ratio = c.max_error_ratio
            if ratio > worst_ratio:
                worst_ratio = ratio
                out.max_error_ratio = ratio
                idx = c.worst_index
                out.worst_index = (idx[0] + r0,) + tuple(idx[1:]) if idx else ()
                out.worst_candidate = c.worst_candidate
                out.worst_reference = c.worst_reference
                out.worst_tolerance = c.worst_tolerance
    out.max_error_eps = out.max_rel_error / eps
    return out


def verify_files(logits: _Path, targets: ArrayLike | _Path, loss: ArrayLike | _Path | None = None,
                 grad: _Path | None = None, *, convention: str = "lsref",
                 rtol: float | None = None, atol: float | None = None,
                 memory: int = 128 << 20, progress: bool = False,
                 **params: Any) -> VerificationReport:
    """:func:`verify` for logits (and a gradient) in ``.npy`` files larger than memory.

    ``logits`` and ``grad`` are paths of 2-D C-order ``.npy`` files (rows, classes), read in
    row windows of about ``memory`` bytes through ``np.memmap`` windows; ``targets`` an array
    or an ``.npy`` path; ``loss`` a number (or, for per-row losses, an array or ``.npy``
    path). The reference and the tolerance model are those of :func:`verify`, window by
    window, with the whole problem's "mean" divisor; the report covers the whole arrays.
    """
    conv = get_convention(convention)
    shape, fortran, dtype, offset = npy_header(logits)
    if len(shape) != 2 or fortran:
        raise ValueError(f"{logits}: need a 2-D C-order .npy of (rows, classes), got shape "
                         f"{shape}, fortran_order={fortran}")
    N, K = shape

    def load(a):
        if isinstance(a, (str, bytes)) or hasattr(a, "__fspath__"):
            return np.load(a)
        return None if a is None else np.asarray(a)

    t = load(targets)
    loss = load(loss) if not isinstance(loss, (int, float)) else np.float64(loss)
    g_info = None
    if grad is not None:
        g_shape, g_fortran, g_dtype, g_offset = npy_header(grad)
        if tuple(g_shape) != tuple(shape) or g_fortran:
            raise ValueError(f"{grad}: the gradient must have the logits' shape {shape} in "
                             f"C order, got {g_shape}")
        g_info = (g_dtype, g_offset)
    if loss is None and grad is None:
        raise ValueError("give the candidate loss, grad, or both")
    # the plan from the whole targets and weights (a record may count them), with a zero-copy
    # stand-in for the logits
    stand_in = np.broadcast_to(np.zeros((), dtype), (N, K))
    plan = _checked_plan(conv, stand_in, t, dict(params), rtol, atol)
    if plan.targets is not None:
        if np.shape(plan.targets) == (N, K) != t.shape:
            raise ValueError(f"convention {conv.name!r} builds a target distribution as large "
                             f"as the logits; use lsref.verify on arrays in memory")
        t = np.asarray(plan.targets)
    D = _plan_divisor(plan, t, K)
    cand_dtype = g_info[0] if g_info else np.asarray(loss).dtype
    if cand_dtype.kind != "f":
        cand_dtype = np.dtype(np.float64)
    eps, tiny = verify_eps(cand_dtype)
    itemsize = np.dtype(dtype).itemsize
    step = max(1, int(memory) // (K * (itemsize + (cand_dtype.itemsize if g_info else 0) + 40)))
    sw = plan.kwargs.get("sample_weight")
    g_parts, l_parts = [], []
    ref_total, tol_total = 0.0, 0.0
    row_losses = plan.reduction == "none"
    for r0 in range(0, N, step):
        r1 = min(N, r0 + step)
        z = np.asarray(np.memmap(logits, dtype=dtype, mode="r",
                                 offset=offset + r0 * K * itemsize, shape=(r1 - r0, K)))
        kw = dict(plan.kwargs)
        if sw is not None:
            kw["sample_weight"] = np.asarray(sw).reshape(-1)[r0:r1]
        wplan = Plan(kwargs=kw, reduction=plan.reduction,
                     divisor=None if plan.reduction != "mean" else D, empty=plan.empty)
        ref_loss, ref_grad, pieces, terms = _reference(z, t[r0:r1], wplan)
        if g_info:
            gz = np.asarray(np.memmap(grad, dtype=g_info[0], mode="r",
                                      offset=g_info[1] + r0 * K * g_info[0].itemsize,
                                      shape=(r1 - r0, K)))
        _, grad_tol = _tolerances(ref_loss, pieces, terms, eps, tiny, K, plan.reduction, rtol,
                                  atol, ref_grad)
        if g_info:
            g_parts.append((r0, _compare_gradient(gz, ref_grad, grad_tol, terms, eps, tiny, K,
                                                  rtol is None and atol is None)))
        if loss is not None:
            if row_losses:
                l_tol, _ = _tolerances(ref_loss, pieces, terms, eps, tiny, K, "none", rtol,
                                       atol, ref_grad)
                l_parts.append((r0, _compare("loss", np.asarray(loss)[r0:r1], ref_loss,
                                             l_tol, eps)))
            else:
                with np.errstate(invalid="ignore", over="ignore"):
                    row_tol = _row_loss_tolerance(pieces, eps, K)
                tol_total += float(np.sum(np.where(np.isfinite(row_tol), row_tol, 0.0)))
                ref_total += float(np.sum(pieces[0]))
        if progress:
            print(f"\r  verifying {logits}: {100 * r1 / N:5.1f}%", end="", flush=True)
    if progress:
        print(flush=True)
    lc = None
    if loss is not None:
        if row_losses:
            lc = _merge_comparisons(l_parts, "loss", (N,), eps)
        else:
            ref = np.float64(plan.empty) if _empty_mean(plan, D) \
                else np.float64(ref_total)
            if rtol is not None or atol is not None:
                tol = (atol or 0.0) + (rtol or 0.0) * abs(ref)
            else:
                tol = tol_total + VERIFY_SAFETY * eps * math.log2(N + 1) * abs(ref) + tiny
            lc = _compare("loss", np.asarray(loss), ref, tol, eps)
    gc = _merge_comparisons(g_parts, "gradient", (N, K), eps) if g_info else None
    return VerificationReport(
        passed=all(c is None or c.passed for c in (lc, gc)), convention=conv.name,
        call=conv.call, dtype=cand_dtype.name, n_classes=K, params=params, loss=lc, grad=gc,
        tolerance=(f"atol={atol}, rtol={rtol}" if (rtol is not None or atol is not None)
                   else f"model for {cand_dtype.name} (eps {eps:.3g}) and K = {K}, "
                        f"windows of {step} rows"))
