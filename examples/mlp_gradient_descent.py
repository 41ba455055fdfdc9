"""A one-hidden-layer network in NumPy, trained by plain gradient descent with label smoothing.

Forward: ``h = tanh(X @ W1 + b1)``, ``logits = h @ W2 + b2``, ``loss = crit(logits, y)``.
Backward: ``crit.backward()`` gives dloss/dlogits (computed in the same pass as the loss), and
the chain rule does the rest by hand.

    python3 examples/mlp_gradient_descent.py

needs scikit-learn for the digits (``python3 -m pip install scikit-learn``; the ``demo`` extra
of a source checkout, ``pip install ".[demo]"``, brings it).
"""
import numpy as np
from sklearn.datasets import load_digits

import lsref
from lsref.calibration import expected_calibration_error

digits = load_digits()
X, y = digits.data / 16.0, digits.target
rng = np.random.default_rng(0)
order = rng.permutation(len(y))
train, test = order[:1300], order[1300:]

n_in, n_hidden, K = X.shape[1], 64, 10
W1 = rng.standard_normal((n_in, n_hidden)) / np.sqrt(n_in)
b1 = np.zeros(n_hidden)
W2 = rng.standard_normal((n_hidden, K)) / np.sqrt(n_hidden)
b2 = np.zeros(K)
crit = lsref.LabelSmoothingLoss(label_smoothing=0.1)
learning_rate = 0.5

for step in range(1, 2001):
    # forward
    h = np.tanh(X[train] @ W1 + b1)
    loss = crit(h @ W2 + b2, y[train])
    # backward: dloss/dlogits from the criterion, then the chain rule
    dlogits = crit.backward()
    dW2, db2 = h.T @ dlogits, dlogits.sum(axis=0)
    dpre = (dlogits @ W2.T) * (1.0 - h * h)              # through tanh
    dW1, db1 = X[train].T @ dpre, dpre.sum(axis=0)
    # plain gradient descent
    W1 -= learning_rate * dW1
    b1 -= learning_rate * db1
    W2 -= learning_rate * dW2
    b2 -= learning_rate * db2
    if step % 500 == 0:
        probs = lsref.softmax(np.tanh(X[test] @ W1 + b1) @ W2 + b2)
        accuracy = np.mean(probs.argmax(axis=1) == y[test])
        print(f"step {step}: training loss {float(loss):.4f}, test accuracy {accuracy:.3f}, "
              f"test ECE {expected_calibration_error(probs, y[test]):.3f}")
