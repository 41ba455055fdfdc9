"""``lsref demo``: train a small NumPy network with and without label smoothing, and compare
accuracy, likelihood and calibration on held-out data.

The model is a one-hidden-layer perceptron (tanh), trained full-batch with L-BFGS
(``scipy.optimize.minimize(..., jac=True)``) on the objective
``LabelSmoothingLoss(eps) + l2/2 * |W|^2``; the gradient with respect to the logits comes
from the same fused pass as the loss. Seeds are fixed, so the numbers are reproducible.

Default data: scikit-learn's handwritten digits (1797 8x8 images, shipped inside
scikit-learn). Without scikit-learn the demo says so and uses a synthetic Gaussian mixture;
``--dataset file.npz`` takes any features/labels pair.
"""
import sys
import time
import zipfile
import zlib

import numpy as np

from lsref.calibration import optimal_logit_gap, reliability_diagram
from lsref.criterion import LabelSmoothingLoss
from lsref.loss import log_softmax, softmax

__all__ = ["load_dataset", "MLP", "train", "evaluate", "run"]

_FEATURE_KEYS = ("X", "x", "features", "data")
_LABEL_KEYS = ("y", "labels", "target", "targets")


# --- data ----------------------------------------------------------------------------------

def _synthetic(seed, n=2000, K=10, d=20):
    """Ten overlapping Gaussian clusters: hard enough that a model can be overconfident."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((K, d)) * 0.5
    y = np.arange(n) % K
    X = centres[y] + rng.standard_normal((n, d))
    return X, y


def load_dataset(path=None, *, seed=0, stream=None):
    """Features, integer labels and a description.

    ``path``: an ``.npz`` holding a 2-D feature array and a 1-D label array (keys ``X``/``y``,
    ``features``/``labels``, ``data``/``target``), or ``"synthetic"``: ten overlapping
    Gaussian classes. Without a path: scikit-learn's digits, or the synthetic mixture (with
    a message) when scikit-learn is not installed.
    """
    if path == "synthetic":
        X, y = _synthetic(seed)
        return X, y, "synthetic Gaussian mixture (2000 samples, 20 features, 10 classes)"
    if path is not None:
        # a truncated or corrupt archive raises BadZipFile, EOFError or zlib.error, on opening
        # or on reading a member
        unreadable = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)
        try:
            f = np.load(path, allow_pickle=False)
        except unreadable as e:
            raise ValueError(f"--dataset {path}: cannot read it as .npz ({e})") from None
        if not isinstance(f, np.lib.npyio.NpzFile):
            raise ValueError(f"--dataset {path}: expected an .npz archive of features and "
                             f"labels (np.savez(path, X=..., y=...)), got a single array")
        with f:
            keys = list(f.keys())
            xk = next((k for k in _FEATURE_KEYS if k in keys), None)
            yk = next((k for k in _LABEL_KEYS if k in keys), None)
            if xk is None or yk is None:
                raise ValueError(f"--dataset {path}: expected a features array (one of "
                                 f"{list(_FEATURE_KEYS)}) and a labels array (one of "
                                 f"{list(_LABEL_KEYS)}); the file holds {keys}")
            try:
                X, y = f[xk], f[yk]
            except unreadable as e:
                raise ValueError(f"--dataset {path}: cannot read it as .npz ({e})") from None
        X, y = _check_data(X, y, f"--dataset {path}")
        return X, y, f"{path} ({X.shape[0]} samples, {X.shape[1]} features, " \
                     f"{y.max() + 1} classes)"
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        print("scikit-learn is not installed, so the digits are not available: using a "
              "synthetic 10-class Gaussian mixture instead (python3 -m pip install "
              "scikit-learn for the digits)", file=stream or sys.stdout, flush=True)
        X, y = _synthetic(seed)
        return X, y, f"synthetic Gaussian mixture ({X.shape[0]} samples, 20 features, " \
                     f"10 classes)"
    d = load_digits()
    return d.data.astype(np.float64), d.target.astype(np.int64), \
        "scikit-learn digits (1797 8x8 images, 10 classes)"


def _check_data(X, y, where):
    X, y = np.asarray(X), np.asarray(y)
    if X.ndim != 2 or X.dtype.kind not in "fiu":
        raise ValueError(f"{where}: features must be a 2-D numeric array, got shape "
                         f"{X.shape}, dtype {X.dtype}")
    if not np.all(np.isfinite(X)):
        raise ValueError(f"{where}: features must be finite")
    if y.ndim != 1 or y.shape[0] != X.shape[0] or y.dtype.kind not in "iu":
        raise ValueError(f"{where}: labels must be a 1-D integer array with one label per "
                         f"row of features ({X.shape[0]}), got shape {y.shape}, dtype "
                         f"{y.dtype}")
    if y.min() < 0:
        raise ValueError(f"{where}: labels must be >= 0, got {y.min()}")
    if np.unique(y).size < 2:
        raise ValueError(f"{where}: need at least 2 classes")
    return X.astype(np.float64), y.astype(np.int64)


def split(X, y, *, test_fraction=0.3, seed=0):
    """A stratified train/test split, and features standardised with the training statistics."""
    rng = np.random.default_rng(seed)
    test = np.zeros(y.shape[0], bool)
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        test[idx[:int(round(test_fraction * idx.size))]] = True
    mu, sd = X[~test].mean(axis=0), X[~test].std(axis=0)
    sd[sd == 0] = 1.0
    Xs = (X - mu) / sd
    return Xs[~test], y[~test], Xs[test], y[test]


# --- the model -----------------------------------------------------------------------------

class MLP:
    """``logits = tanh(X W1 + b1) W2 + b2``, its parameters in one flat vector (for scipy)."""

    def __init__(self, n_features, n_hidden, n_classes):
        self.shapes = [(n_features, n_hidden), (n_hidden,), (n_hidden, n_classes),
                       (n_classes,)]
        self.sizes = [int(np.prod(s)) for s in self.shapes]

    def init(self, seed):
        rng = np.random.default_rng(seed)
        (d, h), _, (_, K), _ = self.shapes
        return np.concatenate([rng.standard_normal(d * h) / np.sqrt(d), np.zeros(h),
                               rng.standard_normal(h * K) / np.sqrt(h), np.zeros(K)])

    def unpack(self, theta):
        parts, at = [], 0
        for shape, size in zip(self.shapes, self.sizes):
            parts.append(theta[at:at + size].reshape(shape))
            at += size
        return parts

    def logits(self, theta, X):
        W1, b1, W2, b2 = self.unpack(theta)
        H = np.tanh(X @ W1 + b1)
        return H @ W2 + b2, H

    def objective(self, theta, X, y, crit, l2):
        """The regularised loss and its gradient with respect to ``theta``."""
        W1, b1, W2, b2 = self.unpack(theta)
        Z, H = self.logits(theta, X)
        loss, dZ = crit.value_and_grad(Z, y)            # one fused pass
        dH = (dZ @ W2.T) * (1.0 - H * H)                # back through tanh
        grad = np.concatenate([(X.T @ dH + l2 * W1).ravel(), dH.sum(axis=0),
                               (H.T @ dZ + l2 * W2).ravel(), dZ.sum(axis=0)])
        reg = 0.5 * l2 * (np.sum(W1 * W1) + np.sum(W2 * W2))
        return float(loss) + reg, grad


class _Progress:
    """One status line, rewritten in place on a terminal; a line per 100 iterations in a log."""

    def __init__(self, label, maxiter, show):
        self.label, self.maxiter, self.show, self.it = label, maxiter, show, 0
        self.tty = sys.stdout.isatty()
        self.t0 = time.perf_counter()

    def __call__(self, intermediate_result):
        self.it += 1
        if not self.show:
            return
        msg = (f"  {self.label}: iteration {self.it:4d}/{self.maxiter}, "
               f"objective {intermediate_result.fun:.4f}")
        if self.tty and (self.it % 5 == 0 or self.it == 1):
            print("\r" + msg, end="", flush=True)
        elif not self.tty and self.it % 100 == 0:
            print(msg, flush=True)

    def done(self, res):
        if self.show:
            print(("\r" if self.tty else "") + f"  {self.label}: {res.nit} iterations, "
                  f"objective {res.fun:.4f}, {time.perf_counter() - self.t0:.1f} s" + " " * 12,
                  flush=True)


def train(X, y, label_smoothing, *, n_hidden=64, l2=1e-4, maxiter=400, seed=0,
          progress=True):
    """Fit the MLP with L-BFGS; returns ``(model, theta, scipy_result)``."""
    from scipy.optimize import minimize
    K = int(y.max()) + 1
    model = MLP(X.shape[1], n_hidden, K)
    crit = LabelSmoothingLoss(label_smoothing=label_smoothing)
    prog = _Progress(f"eps={label_smoothing:g}", maxiter, progress)
    res = minimize(model.objective, model.init(seed), args=(X, y, crit, l2), jac=True,
                   method="L-BFGS-B", callback=prog,
                   options=dict(maxiter=maxiter, maxfun=2 * maxiter, gtol=1e-9, ftol=0.0))
    prog.done(res)
    return model, res.x, res


def logit_gap(Z, y):
    """Mean over rows of ``z_label - mean(z_other)``: the quantity whose optimum is
    :func:`lsref.calibration.optimal_logit_gap`."""
    K = Z.shape[1]
    z_t = Z[np.arange(Z.shape[0]), y]
    return float(np.mean(z_t - (Z.sum(axis=1) - z_t) / (K - 1)))


def evaluate(model, theta, X_train, y_train, X_test, y_test, *, n_bins=15):
    """Held-out accuracy, NLL, ECE, mean confidence; the training logit gap."""
    Z = model.logits(theta, X_test)[0]
    P = softmax(Z)
    nll = -float(np.mean(log_softmax(Z)[np.arange(y_test.size), y_test]))
    diagram = reliability_diagram(P, y_test, n_bins=n_bins)
    return dict(accuracy=float(np.mean(P.argmax(axis=1) == y_test)), nll=nll,
                ece=diagram.ece, confidence=float(np.mean(P.max(axis=1))),
                gap=logit_gap(model.logits(theta, X_train)[0], y_train), diagram=diagram)


def _one_blas_thread():
    """NumPy's BLAS on one thread while training, where threadpoolctl (a scikit-learn
    dependency) is installed. The matrices are small, so threads only add contention (the
    progress line prints the training time), and 400 L-BFGS iterations amplify the last-bit
    differences of a threaded BLAS's summation order into different third digits."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        import contextlib
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


# --- the command ---------------------------------------------------------------------------

def _table(rows, K, markdown):
    head = ["eps", "test accuracy", "test NLL", "test ECE", "mean max-prob",
            "logit gap (train)", "optimum gap"]
    body = []
    for eps, r in rows:
        opt = optimal_logit_gap(K, eps)
        body.append([f"{eps:g}", f"{r['accuracy']:.4f}", f"{r['nll']:.4f}", f"{r['ece']:.4f}",
                     f"{r['confidence']:.4f}", f"{r['gap']:.2f}",
                     "inf" if np.isinf(opt) else f"{opt:.2f}"])
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
        lines += ["| " + " | ".join(b) + " |" for b in body]
    else:
        w = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
        lines = ["  ".join(h.rjust(w[i]) for i, h in enumerate(head))]
        lines += ["  ".join(b[i].rjust(w[i]) for i in range(len(head))) for b in body]
    return "\n".join(lines)


def _figure(rows, path, title):
    from lsref.calibration import plot_reliability, pyplot
    plt = pyplot()
    fig, axes = plt.subplots(1, len(rows), figsize=(4.2 * len(rows), 4.6), squeeze=False)
    for ax, (eps, r) in zip(axes[0], rows):
        plot_reliability(diagram=r["diagram"], ax=ax,
                         title=f"label_smoothing={eps:g}: accuracy {r['accuracy']:.3f}")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(*, dataset=None, eps=(0.0, 0.1), out="lsref-demo.png", quick=False, seed=0,
        n_hidden=64, l2=1e-4, maxiter=None, markdown=False, progress=True, stream=None):
    """The demo: train for each ``eps``, print the table, write the PNG. Returns the rows."""
    stream = sys.stdout if stream is None else stream
    maxiter = maxiter or (60 if quick else 400)
    X, y, desc = load_dataset(dataset, seed=seed, stream=stream)
    Xtr, ytr, Xte, yte = split(X, y, seed=seed)
    K = int(y.max()) + 1
    print(f"lsref demo: {desc}; {ytr.size} training / {yte.size} test samples", file=stream)
    print(f"model: {X.shape[1]}-{n_hidden}-{K} tanh MLP, L-BFGS (at most {maxiter} "
          f"iterations), l2={l2:g}, seed {seed}" + (" [quick]" if quick else ""), file=stream,
          flush=True)
    rows = []
    with _one_blas_thread():
        for e in eps:
            model, theta, _ = train(Xtr, ytr, e, n_hidden=n_hidden, l2=l2, maxiter=maxiter,
                                    seed=seed, progress=progress)
            rows.append((e, evaluate(model, theta, Xtr, ytr, Xte, yte)))
    print("", file=stream)
    print(_table(rows, K, markdown), file=stream)
    print("\nECE: 15 equal-width bins of the test set's max probability. Logit gap: mean "
          "over training rows of z_label - mean(z_other); at the loss's optimum it is "
          "log((1 - eps + eps/K) / (eps/K)).", file=stream)
    if out:
        try:
            _figure(rows, out, f"lsref demo: {desc}")
            print(f"reliability diagrams (test set): {out}", file=stream)
        except ImportError as e:
            print(f"no picture: {e}", file=stream)
    return rows
