"""Softmax regression with label smoothing, trained by scipy.optimize.

The model is ``logits = X @ W + b``. ``LabelSmoothingLoss.value_and_grad`` returns the loss and
its gradient with respect to the logits from one pass; the chain rule turns the latter into
the gradient with respect to ``W`` and ``b``, which is what ``minimize(..., jac=True)`` wants.

    python3 examples/softmax_regression_scipy.py

needs scipy, and scikit-learn for the digits (``python3 -m pip install scipy scikit-learn``;
the ``demo`` extra of a source checkout, ``pip install ".[demo]"``, brings both).
"""
import numpy as np
from scipy.optimize import minimize
from sklearn.datasets import load_digits

import lsref
from lsref.calibration import expected_calibration_error, optimal_logit_gap

digits = load_digits()
X, y = digits.data / 16.0, digits.target            # pixels in [0, 1]; 10 classes
rng = np.random.default_rng(0)
order = rng.permutation(len(y))
train, test = order[:1300], order[1300:]
n_features, K = X.shape[1], 10


def unpack(theta):
    return theta[:n_features * K].reshape(n_features, K), theta[n_features * K:]


def objective(theta, X, y, crit, l2=1e-3):
    """The smoothed loss plus an L2 penalty, and its gradient with respect to theta."""
    W, b = unpack(theta)
    loss, dlogits = crit.value_and_grad(X @ W + b, y)   # dloss/dlogits, same pass
    grad_W = X.T @ dlogits + l2 * W                      # chain rule through X @ W + b
    grad_b = dlogits.sum(axis=0)
    return float(loss) + 0.5 * l2 * np.sum(W * W), np.concatenate([grad_W.ravel(), grad_b])


for eps in (0.0, 0.1):
    crit = lsref.LabelSmoothingLoss(label_smoothing=eps)
    result = minimize(objective, np.zeros(n_features * K + K), args=(X[train], y[train], crit),
                      jac=True, method="L-BFGS-B", options=dict(maxiter=500))
    W, b = unpack(result.x)
    logits = X[test] @ W + b
    probs = lsref.softmax(logits)
    accuracy = np.mean(probs.argmax(axis=1) == y[test])
    ece = expected_calibration_error(probs, y[test])
    z = X[train] @ W + b
    z_label = z[np.arange(len(train)), y[train]]
    gap = np.mean(z_label - (z.sum(axis=1) - z_label) / (K - 1))
    print(f"eps={eps}: {result.nit} L-BFGS iterations, test accuracy {accuracy:.3f}, "
          f"ECE {ece:.3f}, mean logit gap {gap:.2f} (optimum {optimal_logit_gap(K, eps):.2f})")
