"""Run each installed framework's own label-smoothed loss and autograd over a matrix of cases
and judge every result with ``lsref.verify`` (``lsref conformance``).

A runner per framework builds the case's inputs in the case's dtype, calls the framework the
way its users do, and returns the loss, the gradient with respect to the logits, and the
convention and arguments to verify them with. The inputs are the same bits on both sides.
"""
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from lsref.verify import to_numpy, verify

__all__ = ["Case", "cases", "RUNNERS", "run"]


@dataclass(frozen=True)
class Case:
    name: str
    dtype: str = "float32"
    n: int = 64
    k: int = 1000
    eps: float = 0.1
    targets: str = "index"          # "index" or "probs"
    layout: str = "rows"            # "rows" (N, K) or "kdim" (class axis 1 of a 3-D/4-D array)
    weight: bool = False
    ignore: bool = False
    special: str = ""               # "", "-inf", "-inf-zero-weight", "huge"
    frameworks: tuple = ("torch", "jax", "keras")


def cases(quick=False):
    """The matrix: dtypes x eps, then one case per feature and extreme."""
    out = []
    for dtype in ("float64", "float32", "float16", "bfloat16"):
        for eps in (0.0, 0.1, 1.0):
            out.append(Case(f"{dtype} eps={eps:g} K=1000", dtype=dtype, eps=eps))
    out += [
        Case("class weights", weight=True, frameworks=("torch",)),
        Case("ignored targets", ignore=True, eps=0.1, frameworks=("torch",)),
        Case("ignored targets, eps=0", ignore=True, eps=0.0, frameworks=("torch", "keras")),
        Case("probability targets", targets="probs"),
        Case("probability targets + class weights", targets="probs", weight=True,
             frameworks=("torch",)),
        Case("K-dim layout (class axis 1)", layout="kdim", k=37),
        Case("-inf logits, eps=0", special="-inf", eps=0.0),
        Case("-inf logits, eps=0.1", special="-inf", eps=0.1),
        Case("-inf logit with class weight 0", special="-inf-zero-weight", weight=True,
             frameworks=("torch",)),
        Case("huge logits (+-1e4)", special="huge"),
        Case("K=2", k=2),
        Case("float16 K=32000", dtype="float16", k=32000, n=16),
        Case("K=128256", k=128256, n=8),
    ]
    if quick:
        out = [c for c in out if c.k <= 32000 and c.dtype in ("float32", "float16")]
    return out


# --- inputs ---------------------------------------------------------------------------------

def _np_dtype(name):
    if name == "bfloat16":
        import ml_dtypes
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def make_inputs(case, seed=0):
    """(logits, targets, class weights) as NumPy arrays, logits in the case's dtype."""
    rng = np.random.default_rng(seed)
    if case.layout == "kdim":
        shape, axis = (4, case.k, 5), 1
    else:
        shape, axis = (case.n, case.k), 1
    z = rng.standard_normal(shape) * 3
    batch = tuple(s for i, s in enumerate(shape) if i != axis)
    t = rng.integers(0, case.k, batch)
    if case.special == "huge":
        z = np.sign(z) * 1e4
    w = rng.random(case.k) + 0.5 if case.weight else None
    zl = np.moveaxis(z, axis, -1)                     # a view: writes land in z
    if case.special == "-inf":                        # one masked non-target class per row
        masked = (t + 1) % case.k
        np.put_along_axis(zl, masked[..., None], -np.inf, axis=-1)
    if case.special == "-inf-zero-weight":            # a class nobody targets, masked, weight 0
        col = int(np.setdiff1d(np.arange(case.k), t)[0])
        zl[..., col] = -np.inf
        w[col] = 0.0
    if case.ignore:
        t.reshape(-1)[::5] = -100
    z = z.astype(_np_dtype(case.dtype))
    if case.targets == "probs":                       # in the logits' dtype, as users pass them
        P = rng.random(shape)
        t = (P / P.sum(axis=axis, keepdims=True)).astype(z.dtype)
    return z, t, w, axis


def _onehot(t, k, axis):
    out = np.zeros(t.shape + (k,))
    np.put_along_axis(out, t[..., None], 1.0, axis=-1)
    return np.moveaxis(out, -1, axis)


# --- runners ---------------------------------------------------------------------------------

class Runner:
    name = ""

    def version(self):
        raise NotImplementedError

    def available(self):
        try:
            self.version()
            return True
        except ImportError:
            return False


class TorchRunner(Runner):
    name = "torch"

    def version(self):
        import torch
        return f"torch {torch.__version__}"

    def _tensor(self, a):
        import torch
        if a.dtype.name == "bfloat16":
            return torch.from_numpy(a.view(np.int16).copy()).view(torch.bfloat16)
        return torch.from_numpy(np.ascontiguousarray(a))

    def run(self, case, z, t, w, axis):
        import torch
        import torch.nn.functional as F
        zt = self._tensor(z).requires_grad_(True)
        params = dict(label_smoothing=case.eps)
        kw = dict(label_smoothing=case.eps)
        if w is not None:
            kw["weight"] = torch.tensor(w, dtype=zt.dtype)
            params["weight"] = w
        tt = self._tensor(t)
        loss = F.cross_entropy(zt, tt, **kw)
        loss.backward()
        return loss, zt.grad, "torch", params, t


class JaxRunner(Runner):
    name = "jax"

    def version(self):
        import jax
        import optax
        return f"jax {jax.__version__}, optax {optax.__version__}"

    def run(self, case, z, t, w, axis):
        import jax
        import jax.numpy as jnp
        import optax
        if w is not None:
            return None
        zj = jnp.asarray(z)
        params = dict(axis=axis)
        if case.targets == "probs" or case.eps > 0 or case.special.startswith("-inf"):
            # optax's smoothing takes one-hot/probability labels: smooth_labels(labels, alpha)
            labels = t if case.targets == "probs" else _onehot(t, case.k, axis)
            lj = jnp.asarray(labels, dtype=zj.dtype)
            t_ver = np.asarray(lj)                     # the labels optax saw, exactly

            def f(x):
                y = optax.smooth_labels(jnp.moveaxis(lj, axis, -1), case.eps)
                return optax.softmax_cross_entropy(jnp.moveaxis(x, axis, -1), y)
            params["alpha"] = case.eps
        else:
            tj = jnp.asarray(t)
            t_ver = t

            def f(x):
                return optax.softmax_cross_entropy_with_integer_labels(x, tj, axis=axis)
        rows, vjp = jax.vjp(f, zj)
        (grad,) = vjp(jnp.ones_like(rows))
        return np.asarray(rows), np.asarray(grad), "optax", params, t_ver


class KerasRunner(Runner):
    name = "keras"

    def version(self):
        import keras
        return f"keras {keras.__version__} ({keras.backend.backend()} backend)"

    def run(self, case, z, t, w, axis):
        import keras
        if w is not None:
            return None
        params = dict(from_logits=True, axis=axis)
        if case.ignore:
            labels, t_ver = t, t
            loss_obj = keras.losses.SparseCategoricalCrossentropy(
                from_logits=True, ignore_class=-100, axis=axis)
            params["ignore_class"] = -100
            if case.eps:
                return None
        else:
            labels = t if case.targets == "probs" else _onehot(t, case.k, axis).astype(z.dtype)
            loss_obj = keras.losses.CategoricalCrossentropy(
                from_logits=True, label_smoothing=case.eps, axis=axis)
            params["label_smoothing"] = case.eps
            t_ver = labels
        loss, grad = _keras_value_and_grad(loss_obj, labels, z)
        return loss, grad, "keras", params, t_ver


def _keras_value_and_grad(loss_obj, labels, z):
    import keras
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf
        x = tf.Variable(tf.constant(z))
        with tf.GradientTape() as tape:
            loss = loss_obj(tf.constant(labels), x)
        return loss.numpy(), tape.gradient(loss, x).numpy()
    if backend == "jax":
        import jax
        import jax.numpy as jnp
        loss, grad = jax.value_and_grad(lambda x: loss_obj(jnp.asarray(labels), x))(
            jnp.asarray(z))
        return np.asarray(loss), np.asarray(grad)
    if backend == "torch":
        import torch
        x = torch.from_numpy(np.ascontiguousarray(z)).requires_grad_(True)
        loss = loss_obj(torch.from_numpy(np.asarray(labels)), x)
        loss.backward()
        return loss.detach().numpy(), x.grad.numpy()
    raise RuntimeError(f"unsupported Keras backend {backend!r}")


RUNNERS = {r.name: r for r in (TorchRunner(), JaxRunner(), KerasRunner())}

# Where a framework's result is known to be wrong, and what verify must then say.
KNOWN_DEFECTS = {
    ("torch", "float16 K=32000"): "half-precision overflow",
    ("torch", "float16 eps=0.1 K=1000"): "half-precision overflow",
    ("torch", "float16 eps=1 K=1000"): "half-precision overflow",
    ("keras", "float64 eps=0 K=1000"): "precision",
    ("keras", "float64 eps=0.1 K=1000"): "precision",
    ("keras", "float64 eps=1 K=1000"): "precision",
    ("torch", "-inf logit with class weight 0"): "NaN from 0 * (-inf)",
    ("jax", "-inf logits, eps=0"): "NaN from 0 * (-inf)",
    ("keras", "-inf logits, eps=0"): "NaN from 0 * (-inf)",
    ("keras", "K-dim layout (class axis 1)"): "smoothing over the wrong axis",
}


@dataclass
class Row:
    framework: str
    case: str
    result: str
    verdict: str
    diagnosis: str
    report: dict = field(default_factory=dict, repr=False)


def _fmt(loss):
    a = np.asarray(loss, dtype=np.float64) if np.asarray(loss).dtype.name != "bfloat16" \
        else np.asarray(loss).astype(np.float64)
    if a.ndim == 0:
        return f"{float(a):.7g}"
    fin = np.isfinite(a)
    text = f"{a.size} rows"
    if fin.any():
        text += f", mean of finite {a[fin].mean():.6g}"
    for name, mask in (("inf", np.isinf(a)), ("NaN", np.isnan(a))):
        if mask.any():
            text += f", {int(mask.sum())} {name}"
    return text


def run(frameworks=None, quick=False, progress=True, stream=sys.stderr):
    """Run the matrix for the installed frameworks; return (rows, versions)."""
    names = list(RUNNERS) if frameworks is None else list(frameworks)
    unknown = [n for n in names if n not in RUNNERS]
    if unknown:
        raise ValueError(f"unknown framework(s) {', '.join(unknown)}; known: "
                         f"{', '.join(RUNNERS)}")
    versions, active = {}, []
    for n in names:
        if RUNNERS[n].available():
            versions[n] = RUNNERS[n].version()
            active.append(n)
        else:
            versions[n] = "not installed"
    todo = [(n, c) for n in active for c in cases(quick) if n in c.frameworks]
    rows, t0 = [], time.perf_counter()
    for i, (fw, case) in enumerate(todo, 1):
        if progress:
            stream.write(f"\r[{i}/{len(todo)}] {fw}: {case.name:<40.40}")
            stream.flush()
        z, t, w, axis = make_inputs(case)
        try:
            out = RUNNERS[fw].run(case, z, t, w, axis)
        except Exception as exc:                        # the framework refused the case
            rows.append(Row(fw, case.name, f"error: {type(exc).__name__}: {exc}"[:80],
                            "not run", ""))
            continue
        if out is None:
            continue
        loss, grad, conv, params, t_ver = out
        loss, grad = to_numpy(loss), to_numpy(grad)
        report = verify(z, t_ver, loss, grad, convention=conv, **params)
        known = KNOWN_DEFECTS.get((fw, case.name))
        if report.passed:
            verdict = "pass"
        elif known and any(d.startswith(known) for d in report.diagnosis):
            verdict = "FAIL (known defect)"
        else:
            verdict = "FAIL"
        rows.append(Row(fw, case.name, _fmt(loss), verdict, " ".join(report.diagnosis),
                        report.to_dict()))
    if progress:
        stream.write(f"\r{len(todo)} cases in {time.perf_counter() - t0:.1f} s" + " " * 40
                     + "\n")
    return rows, versions


def format_table(rows, versions, markdown=False):
    head = ["framework", "case", "framework result (loss)", "verdict", "diagnosis"]
    # the table shows each diagnosis' headline (before its first colon); JSON has it whole
    body = [[r.framework, r.case, r.result, r.verdict, r.diagnosis.split(":")[0]]
            for r in rows]
    lines = ["Versions: " + "; ".join(f"{n} not installed" if v == "not installed" else v
                                      for n, v in versions.items())]
    if markdown:
        lines.append("")
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "---|" * len(head))
        for b in body:
            lines.append("| " + " | ".join(x.replace("|", "\\|") for x in b) + " |")
        return "\n".join(lines)
    width = [max(len(h), *(min(len(b[i]), 48) for b in body)) if body else len(h)
             for i, h in enumerate(head[:4])]
    lines.append("  ".join(h.ljust(w) for h, w in zip(head[:4], width)) + "  diagnosis")
    for b in body:
        lines.append("  ".join(x[:48].ljust(w) for x, w in zip(b[:4], width)) + "  " + b[4])
    return "\n".join(lines)
