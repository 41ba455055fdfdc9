"""Assertions for users' own test suites (pytest-friendly), and a conformance check of the
user's own loss function (:func:`check_loss_function`)."""
from __future__ import annotations

import dataclasses
import inspect
import math
import sys
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike

from ._tolerances import WITNESS_RTOL, WITNESS_SAFETY, WITNESS_STEP, verify_eps, verify_growth
from .conventions import get_convention
from .verify import VerificationReport, to_numpy, verify

__all__ = ["assert_matches_reference", "check_loss_function", "LossFunctionReport",
           "CaseResult"]


def assert_matches_reference(logits: ArrayLike, targets: ArrayLike,
                             loss: ArrayLike | None = None, grad: ArrayLike | None = None, *,
                             convention: str = "lsref", rtol: float | None = None,
                             atol: float | None = None,
                             **params: Any) -> VerificationReport:
    """Raise ``AssertionError`` unless a framework's loss and gradient match the reference.

    The reference is lsref's float64 oracle; the arguments are those of
    :func:`lsref.verify`, and the error message is its report.

    Parameters
    ----------
    logits : array_like
        Exactly what was given to the framework.
    targets : array_like
        Exactly what was given to the framework.
    loss : array_like, optional
        The framework's loss (scalar, or per row).
    grad : array_like, optional
        The framework's gradient with respect to ``logits``.
    convention : str, default="lsref"
        Whose semantics (see ``lsref.conventions.CONVENTIONS``).
    rtol : float, optional
        With ``atol``, replaces the tolerance model by ``atol + rtol * |reference|``.
    atol : float, optional
        See ``rtol``.
    **params
        The keyword arguments exactly as passed to the framework.

    Returns
    -------
    VerificationReport
        The report of a passing verification.

    Raises
    ------
    AssertionError
        If the loss or the gradient does not match; the message is the report.
    TypeError
        If an argument does not fit the convention (as :func:`lsref.verify`).
    ValueError
        If neither ``loss`` nor ``grad`` is given, or an argument has a bad value.

    Examples
    --------
    >>> import numpy as np, lsref, lsref.testing
    >>> z, t = np.array([[1.0, 2.0, 0.5]]), np.array([1])
    >>> report = lsref.testing.assert_matches_reference(z, t, loss=lsref.cross_entropy(z, t))
    >>> report.passed
    True
    """
    report = verify(logits, targets, loss, grad, convention=convention, rtol=rtol, atol=atol,
                    **params)
    if not report.passed:
        raise AssertionError("\n" + str(report))
    return report


# --- check_loss_function: the user's own function over a matrix of cases ---------------------

# How the candidate is called and differentiated (check_loss_function's kind=)
Kind = Literal["torch", "jax", "numpy"]
KINDS = typing.get_args(Kind)

# The per-class (or per-row) weight and ignore arguments, by convention, as each spells them.
_WEIGHT = {"torch": ("weight", "class"), "lsref": ("class_weight", "class"),
           "keras": ("sample_weight", "row"), "t5x": ("weights", "row")}
_IGNORE = {"torch": "ignore_index", "lsref": "ignore_index", "fairseq": "ignore_index",
           "fairseq-0.10": "ignore_index"}
_DEFAULT_EPS = {"timm": 0.1}
_ONE_HOT = ("keras", "optax")        # their smoothing takes one-hot / probability labels
_HALF = ("float16", "bfloat16")


@dataclass(frozen=True)
class _Case:
    dtype: str = "float64"
    n: int = 16
    k: int = 100
    eps: float = 0.1
    weight: bool = False
    ignore: bool = False
    special: str = ""               # "", "-inf", "huge"


def _matrix(quick):
    out = [_Case(dtype=d, eps=e) for d in ("float64", "float32", "float16", "bfloat16")
           for e in (0.0, 0.1)]
    out += [_Case(eps=1.0), _Case(k=2), _Case(dtype="float32", n=8, k=1000),
            _Case(weight=True), _Case(ignore=True), _Case(special="-inf", eps=0.0),
            _Case(special="-inf"), _Case(special="huge"),
            _Case(dtype="float32", special="huge")]
    if not quick:
        out += [_Case(dtype="float16", n=4, k=32000), _Case(dtype="float32", n=2, k=128256)]
    return out


@dataclass
class CaseResult:
    """One case of :func:`check_loss_function`.

    Its verdict ("pass", "FAIL", "error"), the diagnoses, the
    :class:`lsref.VerificationReport`, the finite-difference witness and, for a failure, a
    small reproducer (a Python snippet).
    """

    name: str
    verdict: str
    dtype: str
    shape: tuple[int, ...]
    params: dict[str, Any]
    diagnosis: list[str] = field(default_factory=list)
    report: VerificationReport | None = None
    witness: dict[str, Any] = field(default_factory=dict)
    loss: str = ""
    reproducer: str = ""
    shrunk_shape: tuple[int, ...] = ()

    @property
    def passed(self) -> bool:
        """The case's verdict is "pass"."""
        return self.verdict == "pass"


@dataclass
class LossFunctionReport:
    """What :func:`check_loss_function` found.

    ``passed`` (every case that ran passed, and at least one ran), the ``cases``, the
    ``skipped`` ones with the reason, ``failures``.
    """

    function: str
    kind: str
    convention: str
    params: dict[str, Any]
    cases: list[CaseResult] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)      # (case name, reason)

    @property
    def n_run(self) -> int:
        """The number of cases that ran."""
        return len(self.cases)

    @property
    def failures(self) -> list[CaseResult]:
        """The cases that ran and did not pass."""
        return [c for c in self.cases if not c.passed]

    @property
    def passed(self) -> bool:
        """Every case that ran passed, and at least one ran."""
        return self.n_run > 0 and not self.failures

    def to_dict(self) -> dict[str, Any]:
        """The report as plain JSON types.

        Returns
        -------
        dict
            The function, its kind and convention, the parameters, the verdict, the
            skipped cases and every case with its report.
        """
        return dict(function=self.function, kind=self.kind, convention=self.convention,
                    params={k: _literal(v) for k, v in self.params.items()},
                    passed=self.passed, skipped=[list(s) for s in self.skipped],
                    cases=[dict(name=c.name, verdict=c.verdict, dtype=c.dtype,
                                shape=list(c.shape), loss=c.loss, diagnosis=c.diagnosis,
                                witness={k: v for k, v in c.witness.items()},
                                report=None if c.report is None else c.report.to_dict(),
                                reproducer=c.reproducer) for c in self.cases])

    def table(self, markdown: bool = False) -> str:
        """The cases as a table, one line each.

        Parameters
        ----------
        markdown : bool, default=False
            A Markdown table instead of aligned plain text.

        Returns
        -------
        str
            The table.
        """
        head = ["case", "loss", "verdict", "gradient witness", "diagnosis"]
        body = [[c.name, c.loss, c.verdict, c.witness.get("verdict", ""),
                 (c.diagnosis[0].split(":")[0] if c.diagnosis else "")] for c in self.cases]
        if markdown:
            lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            lines += ["| " + " | ".join(x.replace("|", "\\|") for x in b) + " |" for b in body]
            return "\n".join(lines)
        width = [max([len(h)] + [min(len(b[i]), 44) for b in body]) for i, h in
                 enumerate(head[:4])]
        lines = ["  ".join(h.ljust(w) for h, w in zip(head[:4], width)) + "  " + head[4]]
        lines += ["  ".join(x[:44].ljust(w) for x, w in zip(b[:4], width)) + "  " + b[4]
                  for b in body]
        return "\n".join(lines)

    def __str__(self) -> str:
        verdict = "PASSED" if self.passed else "FAILED"
        n_fail = len(self.failures)
        lines = [f"lsref.testing.check_loss_function: {verdict}  [{self.function} ({self.kind})"
                 f" under the {self.convention} convention, params "
                 f"{ {k: _literal(v) for k, v in self.params.items()} }]",
                 f"  {self.n_run} case(s) run, {n_fail} failed, {len(self.skipped)} skipped",
                 "", self.table()]
        for name, why in self.skipped:
            lines.append(f"  skipped {name}: {why}")
        for c in self.failures:
            lines += ["", f"--- {c.name}: {c.verdict}"]
            if c.report is not None:                   # it lists verify's own diagnoses
                lines.append("  " + str(c.report).replace("\n", "\n  "))
            own = [] if c.report is None else c.report.diagnosis
            lines += [f"  diagnosis: {d}" for d in c.diagnosis if d not in own]
            if c.reproducer.startswith("#"):
                lines.append("  " + c.reproducer[2:])
            elif c.reproducer:
                shape = "x".join(map(str, c.shrunk_shape))
                lines += [f"  reproducer (shrunk to logits of shape {shape}):", "",
                          "    " + c.reproducer.replace("\n", "\n    ")]
        return "\n".join(lines)


# --- calling the candidate -------------------------------------------------------------------

def _accepted(fn, names):
    """The argument names out of ``names`` that fn takes (all of them for **kwargs)."""
    target = fn
    if hasattr(fn, "forward") and type(fn).__module__.split(".")[0] != "builtins":
        target = fn.forward                       # a torch.nn.Module: its forward's signature
    try:
        sig = inspect.signature(target)
    except (TypeError, ValueError):
        return set(names)
    if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        return set(names)
    return {n for n in names if n in sig.parameters}


def _np_dtype(name):
    if name == "bfloat16":
        import ml_dtypes
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def _torch_tensor(a):
    import torch
    a = np.ascontiguousarray(a).copy()
    if a.dtype.name == "bfloat16":
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def _is_from(obj, package):
    return type(obj).__module__.split(".")[0] in ((package, "jaxlib") if package == "jax"
                                                  else (package,))


def _call(kind, fn, z, t, fn_params, want_grad=True):
    """(loss, gradient or None) of the candidate as NumPy arrays; per-row losses have the
    gradient of their sum (autograd's ones vector)."""
    if kind == "torch":
        import torch
        zt = _torch_tensor(z).requires_grad_(want_grad)
        tt = _torch_tensor(t)
        p = {k: _torch_tensor(v) if isinstance(v, np.ndarray) else v
             for k, v in fn_params.items()}
        with torch.enable_grad() if want_grad else torch.no_grad():
            out = fn(zt, tt, **p)
        if not torch.is_tensor(out):
            raise TypeError(f"a PyTorch loss function must return a tensor, got "
                            f"{type(out).__name__}")
        grad = None
        if want_grad and out.requires_grad:
            out.backward(torch.ones_like(out) if out.ndim else None)
            grad = zt.grad
        return to_numpy(out), to_numpy(grad)
    if kind == "jax":
        import jax
        import jax.numpy as jnp
        zj, tj = jnp.asarray(z), jnp.asarray(t)
        p = {k: jnp.asarray(v) if isinstance(v, np.ndarray) else v
             for k, v in fn_params.items()}
        if not want_grad:
            return np.asarray(fn(zj, tj, **p)), None
        out, vjp = jax.vjp(lambda x: fn(x, tj, **p), zj)
        (grad,) = vjp(jnp.ones_like(out))
        return np.asarray(out), np.asarray(grad)
    out = fn(z.copy(), t.copy(), **{k: v.copy() if isinstance(v, np.ndarray) else v
                                    for k, v in fn_params.items()})
    if isinstance(out, (tuple, list)):
        if len(out) != 2:
            raise TypeError(f"a NumPy loss function returns the loss or (loss, grad), got a "
                            f"{type(out).__name__} of {len(out)}")
        return to_numpy(out[0]), to_numpy(out[1])
    return to_numpy(out), None


def _detect_kind(fn, convention, fn_params):
    """torch if fn takes or returns PyTorch tensors, jax for JAX arrays, else numpy."""
    if "torch" in sys.modules and isinstance(fn, sys.modules["torch"].nn.Module):
        return "torch"
    rng = np.random.default_rng(0)
    z = rng.standard_normal((2, 3))
    t = np.eye(3)[[0, 2]] if convention.name in _ONE_HOT else np.array([0, 2])
    try:
        out = fn(z.copy(), t.copy(), **fn_params)
    except Exception:
        out = None
    first = out[0] if isinstance(out, (tuple, list)) and out else out
    if first is not None:
        for kind in ("torch", "jax"):
            if _is_from(first, kind):
                return kind
        return "numpy"
    errors = []
    for kind, module in (("torch", "torch"), ("jax", "jax")):
        try:
            __import__(module)
        except ImportError:
            continue
        try:
            _call(kind, fn, z, t, fn_params, want_grad=False)
            return kind
        except Exception as exc:
            errors.append(f"{kind}: {type(exc).__name__}: {exc}")
    raise ValueError("cannot tell what kind of function this is (it fails on NumPy arrays"
                     + "".join(f"; {e}" for e in errors) + "): pass kind='torch', 'jax' or "
                     "'numpy'")


# --- one case ----------------------------------------------------------------------------

def _inputs(case, conv, rng):
    """(logits in the case dtype, targets, weight array or None) as NumPy arrays."""
    z = rng.standard_normal((case.n, case.k)) * 3
    t = rng.integers(0, case.k, case.n)
    if case.special == "huge":
        z = np.sign(z) * 1e4
    if case.special == "-inf":                          # one masked non-target class per row
        z[np.arange(case.n), (t + 1) % case.k] = -np.inf
    if case.ignore:
        t[::5] = -100
    dt = _np_dtype(case.dtype)
    z = z.astype(dt)
    w = None
    if case.weight:
        size = case.k if _WEIGHT[conv.name][1] == "class" else case.n
        w = (rng.random(size) + 0.5).astype(dt)       # exactly what the candidate gets
    if conv.name in _ONE_HOT:
        t = np.eye(case.k, dtype=dt)[t]
    return z, t, w


def _case_name(case, eps, shape, conv):
    extra = {"-inf": ", -inf logits", "huge": ", huge logits (+-1e4)"}.get(case.special, "")
    if case.weight:
        extra += f", {_WEIGHT.get(conv.name, (None, 'class'))[1]} weights"
    extra += ", ignored targets" if case.ignore else ""
    return f"{case.dtype} K={shape[-1]} N={shape[0]} eps={eps:g}{extra}"


def _lse(z64):
    fin = np.where(np.isfinite(z64), z64, -np.inf)
    m = np.max(fin, axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore"):
        return (m + np.log(np.sum(np.exp(fin - m), axis=-1, keepdims=True)))[..., 0]


def _witness(kind, fn, z, t, fn_params, loss, grad, reduction, w, rng):
    """The candidate's gradient against finite differences of its own loss, along its own
    gradient's direction and along a random direction (lsref's oracle plays no part)."""
    dtype = z.dtype.name
    if dtype not in WITNESS_STEP:
        return dict(verdict="n/a", why=f"{dtype} losses carry 3 significant digits")
    if grad is None:
        return dict(verdict="n/a", why="no gradient")
    z64, g = z.astype(np.float64), np.asarray(grad, np.float64)
    lvals = np.asarray(loss, np.float64)
    if g.shape != z.shape or not np.all(np.isfinite(g)) or not np.all(np.isfinite(lvals)):
        return dict(verdict="n/a", why="non-finite loss or gradient")
    fin = np.isfinite(z64)
    eps, _ = verify_eps(z.dtype)
    h = WITNESS_STEP[dtype]
    mass = 1.0 if (lvals.ndim == 0 and reduction == "mean") else float(z.shape[0])
    if w is not None:
        w64 = np.asarray(w, np.float64)
        mass *= max(w64.max() / max(w64.min(), 1e-300), w64.max())
    lse = _lse(z64)
    noise = 1.5 * WITNESS_SAFETY * eps * (
        np.sum(np.abs(lvals)) + mass * (verify_growth(z.shape[-1])
                                        + float(np.max(np.abs(lse[np.isfinite(lse)]),
                                                       initial=0.0))))
    coef = {2: -1.0 / 12, 1: 8.0 / 12, -1: -8.0 / 12, -2: 1.0 / 12}
    results = []
    for label, d in (("the gradient's own direction", np.where(fin, g, 0.0)),
                     ("a random direction", np.where(fin, rng.standard_normal(z.shape), 0.0))):
        top = np.max(np.abs(d), initial=0.0)
        if top == 0:
            continue
        d = d / top
        fd, pred = 0.0, 0.0
        for k, c in coef.items():
            zk = (z64 + k * h * d).astype(z.dtype)
            lk, _ = _call(kind, fn, zk, t, fn_params, want_grad=False)
            fd += c * float(np.sum(np.asarray(lk, np.float64)))
            with np.errstate(invalid="ignore"):             # -inf - (-inf) where d = 0
                step = np.where(fin, zk.astype(np.float64) - z64, 0.0)
            pred += c * float(np.sum(g * step))
        tol = WITNESS_RTOL[dtype] * h * float(np.sum(np.abs(g * d))) + noise
        results.append(dict(direction=label, finite_difference=fd, gradient=pred,
                            tolerance=tol, conclusive=bool(tol < abs(pred)),
                            agrees=bool(abs(fd - pred) <= tol)))
    if not results:
        return dict(verdict="n/a", why="zero gradient")
    bad = [r for r in results if not r["agrees"] and (r["conclusive"]
                                                     or abs(r["finite_difference"]) > 2 * r[
                                                         "tolerance"])]
    out = dict(step=h, directions=results)
    if bad:
        r = bad[0]
        fd, pred = r["finite_difference"], r["gradient"]
        text = (f"finite-difference witness: along {r['direction']} the slope of the "
                f"candidate's own loss is {fd:.6g} (4-point central difference, step {h:g}) "
                f"but its gradient gives {pred:.6g} (tolerance {r['tolerance']:.3g})")
        if fd != 0 and abs(pred / fd + 1) < 0.1:
            text += ": the gradient has the wrong sign"
        elif fd != 0:
            text += f": the gradient is {pred / fd:.4g} times the slope of the loss"
        return dict(out, verdict="DISAGREES", diagnosis=text)
    if any(r["conclusive"] for r in results):
        return dict(out, verdict="agrees")
    return dict(out, verdict="inconclusive", why="finite-difference noise above the slope")


def _run_one(kind, fn, conv, z, t, w, verify_params, fn_params, seed):
    """(verdict, diagnosis, report, witness, loss text) of the candidate on one input."""
    try:
        loss, grad = _call(kind, fn, z, t, fn_params)
    except Exception as exc:
        return "error", [f"the function raised {type(exc).__name__}: {exc}"], None, {}, ""
    try:
        report = verify(z, t, loss, grad, convention=conv, **verify_params)
    except (ValueError, TypeError) as exc:
        return "error", [f"cannot verify its result: {exc}"], None, {}, _fmt_loss(loss)
    reduction = conv.make_plan(z, t, dict(verify_params)).reduction
    try:
        witness = _witness(kind, fn, z, t, fn_params, loss, grad, reduction, w,
                           np.random.default_rng(seed))
    except Exception as exc:
        witness = dict(verdict="n/a", why=f"the function raised {type(exc).__name__}: {exc}")
    diagnosis = list(report.diagnosis)
    if witness.get("verdict") == "DISAGREES":
        diagnosis.append(witness["diagnosis"])
    ok = report.passed and witness.get("verdict") != "DISAGREES"
    return ("pass" if ok else "FAIL"), diagnosis, report, witness, _fmt_loss(loss)


def _fmt_loss(loss):
    a = np.asarray(loss)
    a = a.astype(np.float64) if a.dtype.name == "bfloat16" else np.asarray(a, np.float64)
    if a.ndim == 0:
        return f"{float(a):.7g}"
    return f"{a.size} values, sum {float(np.sum(a)):.7g}"


def _signature(verdict, diagnosis, witness):
    heads = tuple(d.split(":")[0].split(" (")[0] for d in diagnosis)
    return verdict, heads, witness.get("verdict")


# --- shrinking ---------------------------------------------------------------------------

def _shrink(attempt, z, t, w, params, conv, failing):
    """Smaller inputs that fail the same way: one row, fewer classes, no weights, rounder
    logits. ``attempt(z, t, w, params)`` returns the failure signature."""
    row_w = w is not None and _WEIGHT[conv.name][1] == "row"
    wname = _WEIGHT.get(conv.name, (None,))[0]

    def take(zz, tt, ww, pp):
        return attempt(zz, tt, ww, pp) == failing

    # 1. one row: the first that fails the same way
    n = z.shape[0]
    if n > 1:
        for i in range(min(n, 16)):
            ww = w[i:i + 1] if row_w else w
            pp = dict(params, **({wname: ww} if w is not None else {}))
            if take(z[i:i + 1], t[i:i + 1], ww, pp):
                z, t, w, params = z[i:i + 1], t[i:i + 1], ww, pp
                break
    # 2. fewer classes: keep the targets and the masked classes, add others in order
    K = z.shape[-1]
    if K > 2:
        onehot = t.ndim == z.ndim
        tgt = np.argmax(t, axis=-1) if onehot else t[t >= 0]
        must = list(dict.fromkeys([int(c) for c in np.atleast_1d(tgt)]
                                  + [int(c) for c in np.nonzero(np.isneginf(
                                      z.astype(np.float64)).any(axis=0))[0]]))
        for k2 in [k for k in (2, 3, 4, 6, 8, 16, 32, 64, 128, 1024) if k < K]:
            if len(must) > k2:
                continue
            cols = must + [c for c in range(K) if c not in must][:k2 - len(must)]
            cols = np.array(sorted(cols))
            zz = z[:, cols]
            if onehot:
                tt = t[:, cols]
            else:
                remap = {int(c): i for i, c in enumerate(cols)}
                tt = np.array([remap.get(int(x), int(x)) for x in t], dtype=t.dtype)
            ww = w[cols] if (w is not None and not row_w) else w
            pp = dict(params, **({wname: ww} if w is not None else {}))
            if take(zz, tt, ww, pp):
                z, t, w, params = zz, tt, ww, pp
                break
    # 3. simpler parameters: no weights
    if w is not None:
        pp = {k: v for k, v in params.items() if k != wname}
        if take(z, t, None, pp):
            w, params = None, pp
    # 4. rounder logits
    for digits in (0, 1):
        zz = np.round(z.astype(np.float64), digits).astype(z.dtype)
        if not np.array_equal(zz.astype(np.float64), z.astype(np.float64),
                              equal_nan=True) and take(zz, t, w, params):
            z = zz
            break
    return z, t, w, params


def _literal(v):
    if isinstance(v, np.ndarray):
        return _array_literal(v)
    return v


def _num(x):
    x = float(x)
    if math.isnan(x):
        return "np.nan"
    if math.isinf(x):
        return "np.inf" if x > 0 else "-np.inf"
    return repr(x)


def _array_literal(a):
    if a.dtype.kind in "iu":
        body, dtype = repr(a.tolist()), ""
    else:
        a64 = a.astype(np.float64)

        def nest(x):
            return "[" + ", ".join(nest(y) if np.ndim(y) else _num(y) for y in x) + "]"
        body = nest(a64) if a.ndim else _num(a64)
        dtype = (", dtype=ml_dtypes.bfloat16" if a.dtype.name == "bfloat16"
                 else f", dtype=np.{a.dtype.name}")
    return f"np.array({body}{dtype})"


def _fn_source(fn):
    mod, name = getattr(fn, "__module__", None), getattr(fn, "__qualname__", None)
    if mod and name and "<" not in name and mod != "__main__":
        try:
            obj = sys.modules[mod]
            for part in name.split("."):
                obj = getattr(obj, part)
            if obj is fn:
                if "." in name:
                    return f"import {mod}\nfn = {mod}.{name}"
                return f"from {mod} import {name} as fn"
        except (KeyError, AttributeError):
            pass
    return "fn = ...  # the loss function under test"


def _reproducer(fn, kind, conv, z, t, params):
    lines = ["import numpy as np"]
    if any(getattr(a, "dtype", None) is not None and a.dtype.name == "bfloat16"
           for a in [z, t, *params.values()]):
        lines.append("import ml_dtypes")
    lines += ["import lsref.testing", _fn_source(fn),
              f"logits = {_array_literal(z)}", f"targets = {_array_literal(t)}"]
    args = "".join(f", {k}={_literal(v)!s}" if isinstance(v, np.ndarray) else f", {k}={v!r}"
                   for k, v in params.items())
    lines.append(f"report = lsref.testing.check_loss_function(fn, convention={conv.name!r}, "
                 f"kind={kind!r}, inputs=(logits, targets){args})")
    lines.append("print(report)")
    return "\n".join(lines)


# --- the entry point ----------------------------------------------------------------------

def check_loss_function(fn: Callable[..., Any], *, convention: str, kind: Kind | None = None,
                        quick: bool = False, inputs: tuple[ArrayLike, ArrayLike] | None = None,
                        shrink: bool = True, seed: int = 0,
                        **params: Any) -> LossFunctionReport:
    """Run a user's own label-smoothed loss function over a matrix of cases, and judge it.

    Each result is judged against lsref's float64 reference under ``convention``.

    Parameters
    ----------
    fn : callable
        ``fn(logits, targets, **params) -> loss``. A PyTorch function takes tensors and
        returns a tensor (the gradient comes from autograd); a JAX function takes and returns
        JAX arrays (the gradient comes from ``jax.vjp``, i.e. ``jax.grad`` of the summed
        loss); a NumPy function returns the loss or ``(loss, grad)``. Per-row losses are
        judged with the gradient of their sum.
    convention : str
        The semantics ``fn`` claims (as in :func:`lsref.verify`): "torch", "keras", "optax",
        "timm", "fairseq", "fairseq-0.10", "t5x" or "lsref".
    kind : {"torch", "jax", "numpy"}, optional
        Detected when not given (PyTorch for an ``nn.Module`` or a function that takes or
        returns tensors, JAX for JAX arrays, else NumPy).
    quick : bool
        Leave out the two large cases (K = 32000 in float16, K = 128256 in float32).
    inputs : (logits, targets), optional
        Check these arrays only (NumPy, in the dtype to test) instead of the matrix.
    shrink : bool
        Shrink each failing case to a small reproducer (one row, few classes).
    seed : int, default=0
        The seed of the random inputs.
    **params
        The convention's keyword arguments (``label_smoothing=0.1``, ``reduction="none"``,
        ...). Those ``fn`` accepts are passed to it; the others only describe what it does
        (a function without a ``reduction`` argument that returns per-row losses:
        ``reduction="none"``). The matrix varies the smoothing, the weights and the ignored
        targets through the convention's own argument names where ``fn`` accepts them and
        ``params`` does not fix them. Without ``jax_enable_x64`` JAX computes float64 as
        float32; its float64 cases then run in float32.

    Returns
    -------
    LossFunctionReport
        ``passed``; per case the verdict, the diagnosis (a known mistake, in words), the
        verification report, the finite-difference witness (the candidate's gradient against
        the slope of its own loss, independent of lsref's reference) and, for a failure, a
        reproducer snippet. ``print(report)`` for a terminal.

    Examples
    --------
    >>> import numpy as np, lsref, lsref.testing
    >>> def mine(logits, targets, label_smoothing=0.0):   # NumPy: (loss, grad)
    ...     return lsref.value_and_grad(logits, targets, label_smoothing=label_smoothing)
    >>> lsref.testing.check_loss_function(mine, convention="lsref", quick=True).passed
    True
    >>> def wrong_sign(logits, targets, label_smoothing=0.0):
    ...     loss, grad = mine(logits, targets, label_smoothing)
    ...     return loss, -grad
    >>> report = lsref.testing.check_loss_function(wrong_sign, convention="lsref",
    ...                                            inputs=(np.array([[2.0, 0.5, -1.0]]),
    ...                                                    np.array([0])))
    >>> report.passed, report.failures[0].witness["verdict"]
    (False, 'DISAGREES')
    """
    conv = get_convention(convention)
    unknown = sorted(set(params) - set(conv.params))
    if unknown:
        raise TypeError(f"convention {conv.name!r} ({conv.call}) takes "
                        f"{', '.join(conv.params)}; got unexpected {', '.join(unknown)}")
    accepted = _accepted(fn, set(conv.params))
    fixed = dict(params)
    if kind is None:
        kind = _detect_kind(fn, conv, {k: v for k, v in fixed.items() if k in accepted})
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    name = getattr(fn, "__qualname__", None) or type(fn).__name__
    result = LossFunctionReport(function=name, kind=kind, convention=conv.name,
                                params=dict(params))
    sparam = conv.smoothing_param
    wname = _WEIGHT.get(conv.name, (None,))[0]
    iname = _IGNORE.get(conv.name)

    def attempt_full(z, t, w, vparams, fparams, seed_):
        return _run_one(kind, fn, conv, z, t, w, vparams, fparams, seed_)

    def split(p):
        return p, {k: v for k, v in p.items() if k in accepted}

    todo = []
    if inputs is not None:
        z, t = (np.asarray(to_numpy(a)) for a in inputs)
        w = params.get(wname) if wname else None
        w = None if w is None else np.asarray(to_numpy(w))
        todo.append((f"given inputs ({z.dtype.name}, shape {z.shape})", z, t, w, dict(fixed)))
    else:
        seen = set()
        x64 = True
        if kind == "jax":
            import jax
            x64 = bool(jax.config.jax_enable_x64)
        for i, case in enumerate(_matrix(quick)):
            if not x64 and case.dtype == "float64":    # JAX would compute it as float32
                case = dataclasses.replace(case, dtype="float32")
            p = dict(fixed)
            if sparam in fixed:
                eps = float(fixed[sparam])
            elif sparam in accepted:
                eps = case.eps
                p[sparam] = eps
            else:
                eps = _DEFAULT_EPS.get(conv.name, 0.0)
            label = _case_name(case, eps, (case.n, case.k), conv)
            if label in seen:
                continue
            seen.add(label)
            why = None
            if case.weight and (wname is None or wname in fixed or wname not in accepted):
                why = (f"{conv.name} has no weight argument" if wname is None else
                       f"the function takes no {wname!r} argument (or it is fixed)")
            elif case.ignore and (iname is None or iname in fixed or iname not in accepted
                                  or conv.name in _ONE_HOT):
                why = (f"{conv.name} has no ignore argument" if iname is None else
                       f"the function takes no {iname!r} argument (or it is fixed)")
            elif kind == "numpy" and case.dtype == "bfloat16":
                why = "NumPy has no bfloat16 arithmetic of its own"
            if why is None and case.dtype == "bfloat16":
                try:
                    import ml_dtypes  # noqa: F401
                except ImportError:
                    why = "ml_dtypes is not installed"
            if why:
                result.skipped.append((label, why))
                continue
            z, t, w = _inputs(case, conv, np.random.default_rng([seed, i]))
            if w is not None:
                p[wname] = w
            if case.ignore:
                p[iname] = -100
            todo.append((label, z, t, w, p))

    shrunk = {}
    for j, (label, z, t, w, p) in enumerate(todo):
        vparams, fparams = split(p)
        verdict, diagnosis, report, witness, loss_text = attempt_full(z, t, w, vparams,
                                                                     fparams, [seed, j])
        res = CaseResult(name=label, verdict=verdict, dtype=z.dtype.name, shape=z.shape,
                         params={k: _literal(v) for k, v in p.items()}, diagnosis=diagnosis,
                         report=report, witness=witness, loss=loss_text)
        if verdict == "FAIL":
            failing = _signature(verdict, diagnosis, witness)
            zs, ts, ws, ps = z, t, w, p
            if failing in shrunk:                       # one reproducer per kind of failure
                res.reproducer = f"# fails as {shrunk[failing]} does: see its reproducer"
                result.cases.append(res)
                continue
            shrunk[failing] = label
            if shrink:
                def attempt(zz, tt, ww, pp, j=j):
                    vp, fp = split(pp)
                    v, d, _, wi, _ = attempt_full(zz, tt, ww, vp, fp, [seed, j])
                    return _signature(v, d, wi)
                zs, ts, ws, ps = _shrink(attempt, z, t, w, p, conv, failing)
            res.shrunk_shape = zs.shape
            res.reproducer = _reproducer(fn, kind, conv, zs, ts, ps)
        result.cases.append(res)
    return result
