"""Time per step of a NumPy training loop with lsref's loss, against the same step with a plain
NumPy loss.

The model is examples/mlp_gradient_descent.py's (the digits, 64 inputs, a tanh hidden layer of
64, 10 classes, label smoothing 0.1), trained by gradient descent on minibatches. One step is
the forward pass, the loss and its gradient, the backward pass by hand and the update. The two
loops differ only in how the loss and dloss/dlogits are computed:

- lsref: ``crit(logits, y); crit.backward()`` (``lsref.LabelSmoothingLoss``);
- NumPy: what a NumPy user writes (stable softmax, smoothed one-hot target, their difference).

    python benchmarks/training_step.py [--batch 32 128 1300] [--steps 2000] [--repeat 5]

Each figure is the median of ``--repeat`` runs of ``--steps`` steps, both loops in one process
(their ratio is what counts; absolute times vary between machines and runs). The output names
the CPU.
"""
import argparse
import time

import numpy as np

import lsref
from lsref.app.bench import machine_line

EPS = 0.1


def numpy_loss_and_grad(logits, y):
    """Label-smoothed cross-entropy (mean over rows) and its gradient, in plain NumPy."""
    n, k = logits.shape
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    se = e.sum(axis=1, keepdims=True)
    logp = z - np.log(se)
    q = np.full((n, k), EPS / k)
    q[np.arange(n), y] += 1.0 - EPS
    loss = -(q * logp).sum() / n
    return loss, (e / se - q) / n


def _data():
    from sklearn.datasets import load_digits
    digits = load_digits()
    return digits.data / 16.0, digits.target


def _train(X, y, batch, steps, loss_and_grad, seed=0):
    rng = np.random.default_rng(seed)
    n_in, n_hidden, k = X.shape[1], 64, 10
    W1 = rng.standard_normal((n_in, n_hidden)) / np.sqrt(n_in)
    b1 = np.zeros(n_hidden)
    W2 = rng.standard_normal((n_hidden, k)) / np.sqrt(n_hidden)
    b2 = np.zeros(k)
    batches = [rng.integers(0, len(y), batch) for _ in range(16)]
    lr = 0.5
    t0 = time.perf_counter()
    for step in range(steps):
        idx = batches[step % len(batches)]
        xb, yb = X[idx], y[idx]
        h = np.tanh(xb @ W1 + b1)
        loss, dlogits = loss_and_grad(h @ W2 + b2, yb)
        dW2, db2 = h.T @ dlogits, dlogits.sum(axis=0)
        dpre = (dlogits @ W2.T) * (1.0 - h * h)
        dW1, db1 = xb.T @ dpre, dpre.sum(axis=0)
        W1 -= lr * dW1
        b1 -= lr * db1
        W2 -= lr * dW2
        b2 -= lr * db2
    return (time.perf_counter() - t0) / steps, float(loss)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, nargs="+", default=[32, 128, 1300])
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--repeat", type=int, default=5)
    args = p.parse_args(argv)
    X, y = _data()
    crit = lsref.LabelSmoothingLoss(label_smoothing=EPS)

    def lsref_loss_and_grad(logits, yb):
        loss = crit(logits, yb)
        return loss, crit.backward()

    print(f"Machine: {machine_line()}")
    print(f"lsref {lsref.__version__}, numpy {np.__version__}; float64 model, eps = {EPS}; "
          f"median of {args.repeat} runs of {args.steps} steps\n")
    print("| batch | step with lsref (us) | step with NumPy loss (us) | NumPy / lsref |")
    print("|---:|---:|---:|---:|")
    for batch in args.batch:
        t_l, t_n = [], []
        for r in range(args.repeat):          # interleaved: drift hits both loops alike
            t_l.append(_train(X, y, batch, args.steps, lsref_loss_and_grad, seed=r)[0])
            t_n.append(_train(X, y, batch, args.steps, numpy_loss_and_grad, seed=r)[0])
        a, b = np.median(t_l), np.median(t_n)
        print(f"| {batch} | {a * 1e6:.1f} | {b * 1e6:.1f} | {b / a:.2f} |")


if __name__ == "__main__":
    main()
