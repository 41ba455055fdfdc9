"""Evidence for ``lsref.verify``: false alarms and missed mistakes, measured on real frameworks.

A fixed list of cases (a fixed seed) spans dtypes (float64, float32, float16, bfloat16), class
counts K from 2 to 256,000, logit scales, smoothing eps, class or sample weights of one sign
and of both signs, ignored targets, probability targets and PyTorch's (N, K, d) layout. For
each case the installed framework computes its own loss and autograd gradient, and
``lsref.verify`` judges them under that framework's convention, with the framework's own
keyword names:

- a FAIL on the framework's result is a **false alarm** (the frameworks compute these cases
  right; a non-finite framework result where the value is finite is a framework defect and is
  counted apart);
- then each known mistake that applies to the case is put into that same result, and verify
  must FAIL: the **detection rate** of each mistake (counted on the cases whose right result
  passed). A mistake applies where it moves the loss or a gradient element by at least
  ``CLEAR_ROUNDINGS`` roundings of the candidate dtype (:func:`effect`); smaller, no check can
  tell it from rounding. Mistakes that change an argument (the smoothing forgotten,
  eps/(K-1), the sum for the mean, weights dropped) are computed by the framework itself
  with that argument; the others are applied to its numbers. Where verify raises instead of
  answering, the mistake counts as missed and the table lists the exception.

``python -m lsref.evidence`` prints the table as markdown, with the machine and the versions
(``--quick`` for the reduced list the tests run, ``--frameworks torch,optax,keras``). A missing
framework's cases are skipped, and the table says so.

Examples
--------
>>> from lsref.app import evidence
>>> full = evidence.cases()
>>> len(full) > 300 and max(c.k for c in full)
256000
>>> sorted({c.framework for c in full})
['keras', 'optax', 'torch']
>>> print(evidence.cases(frameworks=["optax"])[0].label())
optax float64 N=2 K=50257 scale=3 eps=0.1 none
>>> evidence.MISTAKES["eps_k_minus_1"].title
'eps/(K-1) instead of eps/K'
"""
import math
import sys
import time
import warnings
import zlib
from dataclasses import dataclass, field, replace

import numpy as np

from lsref._tolerances import finfo
from lsref.verify import to_numpy, verify

from .conformance import Runner as _ConformanceRunner

__all__ = ["Case", "cases", "make_inputs", "RUNNERS", "MISTAKES", "evaluate", "run",
           "format_markdown", "main"]

IGNORE = -100


# --- cases ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    """One framework call. ``weights``: "none", "positive" or "mixed" (both signs); class
    weights for PyTorch, sample weights for Keras (Optax takes none). ``layout`` "kdim" is
    PyTorch's (N, K, 3) with the classes on axis 1. ``reduction`` is the framework's ("mean":
    Keras's sum_over_batch_size; Optax returns per-row losses, "none"). ``dominated``: the
    first row sits next to its smoothed optimum, p_t - q_t = delta (:func:`dominated_delta`)."""

    framework: str
    dtype: str
    n: int
    k: int
    scale: float = 3.0
    eps: float = 0.1
    weights: str = "none"
    ignore: bool = False
    targets: str = "index"
    layout: str = "rows"
    reduction: str = "mean"
    dominated: bool = False

    def label(self):
        parts = [self.framework, self.dtype, f"N={self.n}", f"K={self.k}",
                 f"scale={self.scale:g}", f"eps={self.eps:g}"]
        if self.weights != "none":
            parts.append(f"{self.weights} weights")
        parts += [name for name, on in (("ignore", self.ignore),
                                        ("probs", self.targets == "probs"),
                                        ("kdim", self.layout == "kdim")) if on]
        parts.append(self.reduction)
        if self.dominated:
            parts.append("dominated row")
        return " ".join(parts)


_KS = (2, 3, 10, 100, 1000, 5000)
_NS = (1, 4, 16, 64)
_SCALES = (0.1, 1.0, 3.0, 10.0, 30.0)
_EPSS = (0.0, 0.01, 0.1, 0.3, 1.0)
_WEIGHTS = ("none", "positive", "mixed")


def _fp16_fits(c):
    """PyTorch sums the smoothing term -sum_k w_k log p_k (and then the rows) in float16
    itself; keep it below float16's 65504 (above, PyTorch overflows, a known defect)."""
    if c.dtype != "float16" or c.eps == 0 or c.targets == "probs":
        return True
    rows = c.n * (3 if c.layout == "kdim" else 1)
    per_row = c.k * (math.log(c.k) + 2 * c.scale + 3) * (1.5 if c.weights != "none" else 1.0)
    return per_row * (1 if c.reduction == "none" else rows) < 2e4


def _draw(rng, framework):
    pick = lambda seq: seq[int(rng.integers(len(seq)))]   # noqa: E731
    dtype = pick(("float64", "float32", "float32", "float16", "bfloat16"))
    targets = "probs" if rng.random() < 0.25 else "index"
    layout = "kdim" if framework == "torch" and rng.random() < 0.2 else "rows"
    k = pick((2, 3, 10, 37, 100) if layout == "kdim" else _KS)
    n = pick((1, 2, 4) if layout == "kdim" else _NS)
    eps = pick(_EPSS)
    weights = "none" if framework == "optax" else pick(_WEIGHTS)
    ignore = framework != "optax" and targets == "index" and rng.random() < 0.3
    reduction = "none" if framework == "optax" else pick(("mean", "mean", "sum", "none"))
    if framework == "keras" and targets == "index" and ignore:
        eps = 0.0                   # ignore_class is SparseCategoricalCrossentropy's: no eps
    c = Case(framework, dtype, n, k, scale=pick(_SCALES), eps=eps, weights=weights,
             ignore=ignore, targets=targets, layout=layout, reduction=reduction,
             dominated=targets == "index" and rng.random() < 0.3)
    while not _fp16_fits(c):
        c = replace(c, n=1) if c.n > 1 else replace(c, k=max(2, c.k // 10))
    return c


# Big K, a few rows each (run time), and the cases the tolerance model had to answer for.
_FIXED = [
    Case("torch", "float64", 4, 50257, eps=0.1),
    Case("torch", "float32", 2, 256000, eps=0.1, dominated=True),
    Case("torch", "float32", 2, 256000, scale=1.0, eps=0.1),
    Case("torch", "float32", 4, 128256, eps=0.1, weights="positive", ignore=True),
    Case("torch", "float32", 2, 50257, eps=0.1, targets="probs"),
    Case("torch", "bfloat16", 4, 32000, eps=0.1),
    Case("torch", "float16", 2, 32000, eps=0.0),
    Case("torch", "float32", 16, 1000, eps=0.1, weights="mixed"),
    Case("torch", "float64", 16, 100, eps=0.1, weights="mixed", ignore=True),
    Case("torch", "float32", 16, 10, scale=1.0, eps=0.0, dominated=True),
    Case("torch", "float32", 4, 37, eps=0.1, layout="kdim", weights="positive", ignore=True),
    Case("optax", "float64", 2, 50257, eps=0.1, reduction="none"),
    Case("optax", "float32", 2, 256000, eps=0.1, reduction="none", dominated=True),
    Case("optax", "bfloat16", 2, 32000, eps=0.1, reduction="none"),
    Case("keras", "float32", 2, 128256, eps=0.1),
    Case("keras", "float32", 4, 50257, eps=0.0, ignore=True),
    Case("keras", "float64", 16, 1000, eps=0.1, weights="mixed"),
]

# The reduced list (tests, --quick): the fixed cases up to K = 50257 and a few draws each.
_QUICK_DRAWS = {"torch": 40, "optax": 16, "keras": 16}
_FULL_DRAWS = {"torch": 180, "optax": 70, "keras": 70}


def cases(frameworks=None, quick=False, seed=20240917):
    """The case list: fixed cases (big K, known hard spots) then seeded draws per framework.
    The same list on every run and machine."""
    names = list(RUNNERS) if frameworks is None else list(frameworks)
    unknown = [n for n in names if n not in RUNNERS]
    if unknown:
        raise ValueError(f"unknown framework(s) {', '.join(unknown)}; known: "
                         f"{', '.join(RUNNERS)}")
    draws = _QUICK_DRAWS if quick else _FULL_DRAWS
    out = [c for c in _FIXED if c.framework in names and (not quick or c.k <= 50257)]
    for fw in RUNNERS:
        rng = np.random.default_rng([seed, zlib.crc32(fw.encode())])
        drawn = [_draw(rng, fw) for _ in range(draws[fw])]
        if fw in names:
            out += drawn
    return out


# --- inputs -----------------------------------------------------------------------------------

def _np_dtype(name):
    if name == "bfloat16":
        import ml_dtypes
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def _eps_of(dtype):
    return float(finfo(_np_dtype(dtype) if isinstance(dtype, str) else dtype).eps)


def dominated_delta(dtype):
    """p_t - q_t on a case's dominated row: 1e4 roundings of the dtype (1.2e-3 in float32,
    2.2e-12 in float64), at most 1e-2: a gradient element far above a correct result's
    rounding, which set to 0 is a clear mistake."""
    return min(1e4 * _eps_of(dtype), 1e-2)


@dataclass
class Inputs:
    z: np.ndarray                 # logits in the case's dtype
    t: np.ndarray                 # class indices (int64) or probabilities (the case's dtype)
    w: object                     # weights (float64, exact in the case's dtype) or None
    axis: int


def _seed(case):
    return zlib.crc32(repr(case).encode())


def make_inputs(case):
    """The case's arrays, from a seed derived from the case itself."""
    rng = np.random.default_rng(_seed(case))
    K = case.k
    shape, axis = ((case.n, K, 3), 1) if case.layout == "kdim" else ((case.n, K), 1)
    z = rng.standard_normal(shape) * case.scale
    zl = np.moveaxis(z, axis, -1).reshape(-1, K)            # rows (a copy for kdim)
    batch = zl.shape[0]
    t = rng.integers(0, K, batch)
    if case.ignore:
        t[2::5] = IGNORE                                   # never the first row
    if case.dominated:
        q_t = 1.0 - case.eps + case.eps / K
        d = dominated_delta(case.dtype)
        p_t = q_t + d if q_t + 2 * d < 1.0 else q_t - d
        zl[0] = 0.0
        zl[0, t[0]] = math.log(p_t * (K - 1) / (1.0 - p_t))
    z = np.moveaxis(zl.reshape([s for i, s in enumerate(shape) if i != axis] + [K]), -1, axis)
    dt = _np_dtype(case.dtype)
    z = np.ascontiguousarray(z).astype(dt)
    rows_shape = tuple(s for i, s in enumerate(shape) if i != axis)
    w = None
    n_w = K if case.framework == "torch" else batch
    if case.weights != "none":
        w = rng.uniform(0.5, 1.5, n_w)
        if case.weights == "mixed":
            for _ in range(50):                             # a mean divisor well away from 0
                sign = np.where(rng.random(n_w) < 0.35, -1.0, 1.0)
                counted = t != IGNORE
                per = (w * sign)[t[counted]] if n_w == K else (w * sign)[counted]
                if abs(per.sum()) >= 0.25 * np.abs(per).sum():
                    break
            w = w * sign
        w = w.astype(dt).astype(np.float64)                 # what the framework sees, exactly
        if case.framework == "keras" and case.layout == "rows":
            w = w.reshape(rows_shape)
    if case.targets == "probs":
        P = rng.random(shape) ** 3
        t = (P / P.sum(axis=axis, keepdims=True)).astype(dt)
    else:
        t = t.reshape(rows_shape)
    return Inputs(z, t, w, axis)


def _onehot(t, k, axis, dtype):
    out = np.zeros(t.shape + (k,))
    np.put_along_axis(out, t[..., None], 1.0, axis=-1)
    return np.moveaxis(out, -1, axis).astype(dtype)


# --- runners ----------------------------------------------------------------------------------

@dataclass
class Call:
    """A framework's result and what verify needs to judge it."""

    loss: np.ndarray
    grad: np.ndarray
    convention: str
    targets: np.ndarray           # the targets the framework saw (one-hot where it took them)
    params: dict                  # its keyword arguments, by its own names


class Runner(_ConformanceRunner):
    """conformance's runner (version, available), plus the import to require and the divisor."""
    module = ""                   # the import that tells whether it is installed

    def divisor(self, case, inp):
        """The framework's "mean" divisor for this case (1 for sums and per-row losses)."""
        return 1.0


class TorchRunner(Runner):
    """torch.nn.functional.cross_entropy and autograd (pytorch/pytorch,
    aten/src/ATen/native/LossNLL.cpp: cross_entropy_loss_label_smoothing)."""

    name, module = "torch", "torch"

    def version(self):
        import torch
        return f"torch {torch.__version__}"

    @staticmethod
    def _tensor(a):
        import torch
        if a.dtype.name == "bfloat16":
            return torch.from_numpy(a.view(np.int16).copy()).view(torch.bfloat16)
        return torch.from_numpy(np.ascontiguousarray(a))

    def call(self, case, inp, eps=None, reduction=None, weighted=True):
        import torch
        import torch.nn.functional as F
        eps = case.eps if eps is None else eps
        reduction = case.reduction if reduction is None else reduction
        x = self._tensor(inp.z).requires_grad_(True)
        kw = dict(label_smoothing=eps, reduction=reduction)
        if case.ignore:
            kw["ignore_index"] = IGNORE
        if weighted and inp.w is not None:
            kw["weight"] = torch.tensor(inp.w).to(x.dtype)
        loss = F.cross_entropy(x, self._tensor(inp.t), **kw)
        (loss.sum() if reduction == "none" else loss).backward()
        params = {k: v for k, v in kw.items() if k != "weight"}
        if "weight" in kw:
            params["weight"] = inp.w
        return Call(to_numpy(loss), to_numpy(x.grad), "torch", inp.t, params)

    def divisor(self, case, inp):
        if case.reduction != "mean":
            return 1.0
        if case.targets == "probs":
            return float(np.prod(inp.t.shape) // case.k)
        t = inp.t.reshape(-1)
        t = t[t != IGNORE]
        return float(t.size if inp.w is None else inp.w[t].sum())


class OptaxRunner(Runner):
    """optax.softmax_cross_entropy(logits, optax.smooth_labels(labels, alpha)), or
    softmax_cross_entropy_with_integer_labels without smoothing; jax.vjp for the gradient of
    the rows' sum (google-deepmind/optax, optax/losses/_classification.py and
    optax/losses/_smoothing.py). float64 under jax.enable_x64."""

    name, module = "optax", "optax"

    def version(self):
        import jax
        import optax
        return f"jax {jax.__version__}, optax {optax.__version__}"

    def call(self, case, inp, eps=None, reduction=None, weighted=True):
        import jax
        import jax.numpy as jnp
        import optax
        eps = case.eps if eps is None else eps
        with jax.enable_x64(case.dtype == "float64"):
            zj = jnp.asarray(inp.z)
            if case.targets == "index" and case.eps == 0:
                tj = jnp.asarray(inp.t)
                t_ver, params = inp.t, {}

                def f(x):
                    return optax.softmax_cross_entropy_with_integer_labels(x, tj)
            else:
                t_ver = inp.t if case.targets == "probs" else _onehot(inp.t, case.k, -1,
                                                                      inp.z.dtype)
                lj = jnp.asarray(t_ver)
                params = dict(alpha=eps)

                def f(x):
                    return optax.softmax_cross_entropy(x, optax.smooth_labels(lj, eps))
            rows, vjp = jax.vjp(f, zj)
            (grad,) = vjp(jnp.ones_like(rows))
            return Call(np.asarray(rows), np.asarray(grad), "optax", t_ver, params)


class KerasRunner(Runner):
    """keras.losses.CategoricalCrossentropy (one-hot or probability targets, label_smoothing)
    or SparseCategoricalCrossentropy (class indices, ignore_class), from_logits=True, with
    tf.GradientTape (keras-team/keras, keras/src/losses/losses.py). float64 with the loss's
    dtype="float64" (Keras otherwise computes in floatx(), float32)."""

    name, module = "keras", "keras"

    def version(self):
        import keras
        import tensorflow as tf
        return f"keras {keras.__version__}, tensorflow {tf.__version__}"

    def _sparse(self, case):
        return case.targets == "index" and case.eps == 0 and (case.ignore or case.k % 2 == 0)

    def call(self, case, inp, eps=None, reduction=None, weighted=True):
        import keras
        import tensorflow as tf
        eps = case.eps if eps is None else eps
        reduction = case.reduction if reduction is None else reduction
        red = {"mean": "sum_over_batch_size"}.get(reduction, reduction)
        dtype = "float64" if case.dtype == "float64" else None
        params = dict(from_logits=True, reduction=red)
        if self._sparse(case):
            kw = dict(ignore_class=IGNORE) if case.ignore else {}
            loss_obj = keras.losses.SparseCategoricalCrossentropy(
                from_logits=True, reduction=red, dtype=dtype, **kw)
            params.update(kw)
            t_ver = inp.t
        else:
            t_ver = inp.t if case.targets == "probs" else _onehot(inp.t, case.k, -1,
                                                                  inp.z.dtype)
            loss_obj = keras.losses.CategoricalCrossentropy(
                from_logits=True, label_smoothing=eps, reduction=red, dtype=dtype)
            params["label_smoothing"] = eps
        x = tf.Variable(tf.constant(inp.z))
        sw = inp.w if (weighted and inp.w is not None) else None
        with tf.GradientTape() as tape:
            loss = loss_obj(tf.constant(t_ver), x,
                            sample_weight=None if sw is None else tf.constant(sw))
            total = tf.reduce_sum(loss) if red == "none" else loss
        grad = tape.gradient(total, x)
        if sw is not None:
            params["sample_weight"] = sw
        return Call(loss.numpy(), grad.numpy(), "keras", t_ver, params)

    def divisor(self, case, inp):
        if case.reduction != "mean":
            return 1.0
        if case.targets == "index" and case.ignore and self._sparse(case):
            return float(np.sum(inp.t != IGNORE))
        return float(case.n)


RUNNERS = {r.name: r for r in (TorchRunner(), OptaxRunner(), KerasRunner())}


# --- injected mistakes ------------------------------------------------------------------------

@dataclass
class Context:
    case: Case
    inp: Inputs
    right: Call
    runner: Runner
    _terms: object = None

    def rerun(self, **kw):
        return self.runner.call(self.case, self.inp, **kw)

    def terms(self):
        """Per element P_j + T_j, the sizes of the gradient's two terms, and per row
        |l_i| + T_i (1 + |lse_i|), the sizes of the loss's, from the float64 oracle under the
        framework's convention, scaled as the framework reduces (1/|D| for a mean)."""
        if self._terms is None:
            from lsref import reference as R
            from lsref.conventions import get_convention
            z, t = self.inp.z, self.right.targets
            plan = get_convention(self.right.convention).make_plan(z, t, self.right.params)
            g = R.gradient_terms(z, t, **plan.kwargs)
            rows, _ = R.value_and_grad(z, t, **dict(plan.kwargs, reduction="none"))
            row_t = np.sum(g["target"], axis=g["axis"])
            scale = 1.0 / abs(self.runner.divisor(self.case, self.inp))
            self._terms = (scale * (g["prob"] + g["target"]),
                           scale * (np.abs(rows) + row_t * (1.0 + np.abs(g["lse"]))))
        return self._terms


# A mistake counts (applies) where it moves the loss, or some gradient element, by at least
# this many roundings of the candidate dtype of the terms that value is made of (above).
# Below that, no check of a rounded result can tell it from rounding: e.g. eps/(K-1) for eps/K
# at K = 256000 in float32, or a 10% error in bfloat16 (13 roundings).
CLEAR_ROUNDINGS = 64


def effect(ctx, loss, grad):
    """The mistaken (loss, grad) against the right result, in roundings of the candidate
    dtype of the terms each value is made of (max over the loss values and the gradient)."""
    grad_size, row_size = ctx.terms()
    eps = _eps_of(np.asarray(ctx.right.grad).dtype)
    dg = np.abs(_f64(grad) - _f64(ctx.right.grad))
    dl = np.abs(_f64(loss) - _f64(ctx.right.loss))
    with np.errstate(divide="ignore", invalid="ignore"):
        eg = np.where(dg > 0, dg / (eps * grad_size), 0.0)
        size = row_size if dl.ndim else np.sum(row_size)
        el = np.where(dl > 0, dl / (eps * size), 0.0)
    out = max(float(np.max(eg, initial=0.0)), float(np.max(el, initial=0.0)))
    return out if math.isfinite(out) else math.inf


def _as(x, like):
    """float64 values rounded to the dtype of ``like``."""
    return np.asarray(x, np.float64).astype(np.asarray(like).dtype)


def _f64(x):
    return np.asarray(x).astype(np.float64)


def _element(scale):
    def inject(ctx):
        g = _f64(ctx.right.grad)
        i = np.unravel_index(int(np.argmax(np.abs(g))), g.shape)
        g[i] *= 1.0 + scale
        return ctx.right.loss, _as(g, ctx.right.grad)
    return inject


def _row_view(ctx, a):
    """Rows (positions) x classes of a gradient-shaped float64 array (a copy)."""
    return np.moveaxis(_f64(a), ctx.inp.axis, -1).reshape(-1, ctx.case.k)


def _from_rows(ctx, rows, like):
    shape = np.moveaxis(np.empty(np.shape(like), np.int8), ctx.inp.axis, -1).shape
    return _as(np.moveaxis(rows.reshape(shape), -1, ctx.inp.axis), like)


def _dominated_target_zero(ctx):
    g = _row_view(ctx, ctx.right.grad)
    t0 = int(ctx.inp.t.reshape(-1)[0])
    g[0, t0] = 0.0
    return ctx.right.loss, _from_rows(ctx, g, ctx.right.grad)


LSE_FACTOR = 1e-4


def _lse_off(ctx):
    """Row 0's lse computed as lse (1 + 1e-4): its loss grows by s C lse 1e-4 and its
    probabilities shrink by exp(-lse 1e-4) (C = sum_k w_k q_k, s its sample weight)."""
    case, inp = ctx.case, ctx.inp
    z = np.moveaxis(_f64(inp.z), inp.axis, -1).reshape(-1, case.k)[0]
    m = z.max()
    lse = m + math.log(np.exp(z - m).sum())
    p = np.exp(z - lse)
    if case.targets == "probs":
        P = np.moveaxis(_f64(inp.t), inp.axis, -1).reshape(-1, case.k)[0]
    else:
        P = np.zeros(case.k)
        P[int(inp.t.reshape(-1)[0])] = 1.0
    q = (1.0 - case.eps) * P + case.eps / case.k
    w = inp.w if (case.framework == "torch" and inp.w is not None) else np.ones(case.k)
    s = float(inp.w.reshape(-1)[0]) if (case.framework == "keras" and inp.w is not None) \
        else 1.0
    sC = s * float(np.sum(w * q)) / ctx.runner.divisor(case, inp)
    d = LSE_FACTOR * abs(lse)
    g = _row_view(ctx, ctx.right.grad)
    g[0] += sC * p * math.expm1(-d)
    loss = _f64(ctx.right.loss)
    if loss.ndim:
        loss.reshape(-1)[0] += sC * d
    else:
        loss = loss + sC * d
    return _as(loss, ctx.right.loss), _from_rows(ctx, g, ctx.right.grad)


def _sum_for_mean(ctx):
    c = ctx.rerun(reduction="sum")
    return c.loss, c.grad


def _grad_of_sum(ctx):
    return ctx.right.loss, ctx.rerun(reduction="sum").grad


def _grad_of_mean(ctx):
    rows = int(np.prod(np.shape(ctx.right.grad))) // ctx.case.k
    return ctx.right.loss, _as(_f64(ctx.right.grad) / rows, ctx.right.grad)


def _no_smoothing(ctx):
    c = ctx.rerun(eps=0.0)
    return c.loss, c.grad


def _eps_k_minus_1(ctx):
    # uniform smoothing with eps K/(K-1) is eps/(K-1) on each wrong class, 1 - eps on the target
    c = ctx.rerun(eps=ctx.case.eps * ctx.case.k / (ctx.case.k - 1))
    return c.loss, c.grad


def _weights_ignored(ctx):
    c = ctx.rerun(weighted=False)
    return c.loss, c.grad


def _positions(case):
    return case.n * (3 if case.layout == "kdim" else 1)


def _mean_not_sum(ctx):
    """A mean whose divisor is not 1 (else the sum is the mean)."""
    return ctx.case.reduction == "mean" and ctx.runner.divisor(ctx.case, ctx.inp) != 1.0


@dataclass(frozen=True)
class Mistake:
    title: str
    applies: object               # Context -> bool
    inject: object                # Context -> (loss, grad)
    named: str = ""               # how verify's diagnosis names it, where it does


MISTAKES = {
    "element_1e-3": Mistake(
        "one gradient element (the largest) off by 1e-3 relative",
        lambda x: True, _element(1e-3)),
    "element_10pct": Mistake(
        "one gradient element (the largest) off by 10%", lambda x: True, _element(0.1)),
    "dominated_zero": Mistake(
        "a dominated row's target gradient element set to 0",
        lambda x: x.case.dominated, _dominated_target_zero),
    "lse_off": Mistake(
        f"one row's log-sum-exp off by a factor 1 + {LSE_FACTOR:g}", lambda x: True, _lse_off),
    "sum_for_mean": Mistake(
        "the sum (loss and gradient) given for the mean", _mean_not_sum, _sum_for_mean),
    "grad_of_sum": Mistake(
        "the gradient of the sum given with the mean's loss", _mean_not_sum, _grad_of_sum,
        "the gradient misses the mean's 1/D factor"),
    "grad_of_mean": Mistake(
        "the gradient of the mean over rows given for a sum (or per-row losses)",
        lambda x: x.case.reduction != "mean" and _positions(x.case) > 1,
        _grad_of_mean, "the gradient carries a 1/N factor"),
    "no_smoothing": Mistake(
        "the smoothing forgotten (eps = 0 computed)", lambda x: x.case.eps > 0, _no_smoothing),
    "eps_k_minus_1": Mistake(
        "eps/(K-1) instead of eps/K",
        lambda x: (x.case.targets == "index" and 0 < x.case.eps
                   and x.case.eps * x.case.k / (x.case.k - 1) <= 1),
        _eps_k_minus_1, "smoothing form"),
    "weights_ignored": Mistake(
        "the weights dropped (class weights in PyTorch, sample weights in Keras)",
        lambda x: x.case.weights != "none", _weights_ignored),
}


# --- running ----------------------------------------------------------------------------------

@dataclass
class CaseResult:
    case: Case
    error: str = ""                          # the framework refused the case
    passed: bool = False                     # verify on the framework's own result
    framework_defect: bool = False           # non-finite where the value is finite
    report: str = ""                         # verify's report where it failed
    detected: dict = field(default_factory=dict)     # mistake -> bool, where it applies
    named: dict = field(default_factory=dict)        # mistake -> bool, where it has a name
    misses: dict = field(default_factory=dict)       # mistake -> verify's report (PASSED)
    raised: dict = field(default_factory=dict)       # "right" or mistake -> verify's exception
    effect: dict = field(default_factory=dict)       # mistake -> its size (see effect())
    seconds: float = 0.0


def evaluate(case, mistakes=None):
    """Run one case through its framework: verify its result, then each applicable mistake.

    Warnings (frameworks' deprecations, NumPy's on inf/NaN arithmetic) are not verdicts: they
    are silenced here, so that a run under ``-W error`` measures the same as one without."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _evaluate(case, mistakes)


def _evaluate(case, mistakes):
    t0 = time.perf_counter()
    runner = RUNNERS[case.framework]
    res = CaseResult(case)
    try:
        inp = make_inputs(case)                # bfloat16 needs ml_dtypes
        right = runner.call(case, inp)
    except Exception as exc:                   # the framework (or ml_dtypes) refused the case
        res.error = f"{type(exc).__name__}: {exc}"[:200]
        return res

    def judge(key, loss, grad):
        try:
            return verify(inp.z, right.targets, loss, grad, convention=right.convention,
                          **right.params)
        except Exception as exc:               # verify itself failed: said apart
            res.raised[key] = f"{type(exc).__name__}: {exc}"
            return None

    r = judge("right", right.loss, right.grad)
    res.passed = r is not None and r.passed
    if r is None:
        res.report = "verify raised " + res.raised["right"]
    elif not r.passed:
        res.report = str(r)
        res.framework_defect = any(c is not None and c.n_nonfinite
                                   for c in (r.loss, r.grad))
    ctx = Context(case, inp, right, runner)
    for name, m in MISTAKES.items():
        if not res.passed:
            break                              # a FAIL on a mistake there shows nothing
        if (mistakes is not None and name not in mistakes) or not m.applies(ctx):
            continue
        loss, grad = m.inject(ctx)
        res.effect[name] = effect(ctx, loss, grad)
        if res.effect[name] < CLEAR_ROUNDINGS:
            continue                           # rounding-sized here: does not count
        rm = judge(name, loss, grad)
        res.detected[name] = rm is not None and not rm.passed
        if m.named:
            res.named[name] = rm is not None and any(d.startswith(m.named)
                                                     for d in rm.diagnosis)
        if rm is not None and rm.passed:
            res.misses[name] = str(rm)
    res.seconds = time.perf_counter() - t0
    return res


@dataclass
class Evidence:
    results: list
    versions: dict
    skipped: dict                  # framework -> number of its cases skipped (not installed)
    seconds: float
    command: str = "python -m lsref.evidence"

    @property
    def ran(self):
        return [r for r in self.results if not r.error]

    def false_alarms(self):
        return [r for r in self.ran if not r.passed and not r.framework_defect]

    def framework_defects(self):
        return [r for r in self.ran if r.framework_defect]

    def mistake_rows(self):
        """(name, title, applies, detected, named or None) per mistake."""
        out = []
        for name, m in MISTAKES.items():
            hit = [r for r in self.ran if name in r.detected]
            named = [r.named[name] for r in hit if name in r.named]
            out.append((name, m.title, len(hit), sum(r.detected[name] for r in hit),
                        sum(named) if m.named else None))
        return out


def run(case_list=None, frameworks=None, quick=False, progress=False, stream=sys.stderr):
    """Run every case whose framework is installed; an :class:`Evidence` with the results."""
    todo = cases(frameworks, quick) if case_list is None else list(case_list)
    versions, skipped = {}, {}
    for name, runner in RUNNERS.items():
        if frameworks is not None and name not in frameworks:
            continue
        if runner.available():
            versions[name] = runner.version()
        else:
            versions[name] = "not installed"
    results, t0 = [], time.perf_counter()
    for i, case in enumerate(todo, 1):
        if versions.get(case.framework, "not installed") == "not installed":
            skipped[case.framework] = skipped.get(case.framework, 0) + 1
            continue
        if progress:
            stream.write(f"\r[{i}/{len(todo)}] {case.label():<70.70}")
            stream.flush()
        results.append(evaluate(case))
    if progress:
        stream.write("\r" + " " * 80 + "\r")
    return Evidence(results, versions, skipped, time.perf_counter() - t0)


def _pct(a, b):
    return f"{100.0 * a / b:.1f}%" if b else "-"


def format_markdown(ev, date=None, listed=12):
    from .bench import machine_line
    date = date or time.strftime("%Y-%m-%d", time.gmtime())
    lines = [f"Command: `{ev.command}` ({date}, {ev.seconds:.0f} s)",
             f"Machine: {machine_line()}",
             "Versions: " + "; ".join(ev.versions.values()), ""]
    for fw, n in ev.skipped.items():
        lines.append(f"Skipped: {n} {fw} cases ({fw} is not installed).")
    errors = [r for r in ev.results if r.error]
    if errors:
        lines.append(f"Framework errors (cases not run): {len(errors)}.")
    lines += ["", "| framework results | cases | verify FAILED (false alarms) | "
                  "non-finite framework results |", "|---|---:|---:|---:|"]
    for fw in [f for f in RUNNERS if any(r.case.framework == f for r in ev.ran)]:
        ran = [r for r in ev.ran if r.case.framework == fw]
        fa = [r for r in ran if not r.passed and not r.framework_defect]
        lines.append(f"| {ev.versions[fw]} | {len(ran)} | {len(fa)} of {len(ran)} | "
                     f"{sum(r.framework_defect for r in ran)} |")
    fa = ev.false_alarms()
    lines.append(f"| **all** | {len(ev.ran)} | **{len(fa)} of {len(ev.ran)}** | "
                 f"{len(ev.framework_defects())} |")
    lines += ["", f"Injected mistakes, on the {sum(r.passed for r in ev.ran)} cases whose right "
                  "result passed:", "",
              f"| injected mistake | cases where it applies (moves a value by >= "
                  f"{CLEAR_ROUNDINGS} roundings) | detected (verify FAILS) | "
                  "named by the diagnosis |", "|---|---:|---:|---:|"]
    for _name, title, n, d, named in ev.mistake_rows():
        lines.append(f"| {title} | {n} | {d} ({_pct(d, n)}) | "
                     f"{'-' if named is None else f'{named} of {n}'} |")
    if fa:
        lines += ["", f"False alarms ({len(fa)}):", ""]
        for r in fa[:listed]:
            lines.append(f"- {r.case.label()}: " + _headline(r.report))
    misses = [(name, r) for r in ev.ran for name in r.detected if not r.detected[name]]
    if misses:
        lines += ["", f"Missed mistakes ({len(misses)}):", ""]
        for name, r in misses[:listed]:
            why = f" (verify raised {r.raised[name]})" if name in r.raised else ""
            lines.append(f"- {name}: {r.case.label()}{why}")
        if len(misses) > listed:
            lines.append(f"- ... and {len(misses) - listed} more")
    return "\n".join(lines)


def _headline(report):
    """The report's mismatch lines, on one line."""
    keep = [ln.strip() for ln in report.splitlines() if "MISMATCH" in ln or "worst" in ln]
    return "; ".join(keep) or report.splitlines()[0]


def main(argv=None):
    import argparse
    p = argparse.ArgumentParser(prog="python -m lsref.evidence",
                                description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="the reduced list the tests run")
    p.add_argument("--frameworks", default=None, help="comma-separated: torch,optax,keras")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress line (it is shown only on a terminal)")
    p.add_argument("--verbose", action="store_true",
                   help="print every false alarm's and miss's full report")
    args = p.parse_args(argv)
    fws = None if args.frameworks is None else [f.strip() for f in args.frameworks.split(",")]
    ev = run(frameworks=fws, quick=args.quick,
             progress=not args.no_progress and sys.stderr.isatty())
    ev.command = "python -m lsref.evidence" + (" --quick" if args.quick else "") + (
        f" --frameworks {args.frameworks}" if args.frameworks else "")
    print(format_markdown(ev, listed=10 ** 6 if args.verbose else 12))
    if args.verbose:
        for r in ev.false_alarms():
            print(f"\n### false alarm: {r.case.label()}\n\n```\n{r.report}\n```")
        for r in ev.ran:
            for name, rep in r.misses.items():
                print(f"\n### missed {name}: {r.case.label()}\n\n```\n{rep}\n```")
    return 0


if __name__ == "__main__":
    sys.exit(main())
