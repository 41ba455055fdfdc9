"""``LabelSmoothingLoss``: the loss as an object with a ``backward()``, for NumPy models.

A training step needs the loss and its gradient with respect to the logits; the kernel
computes both in one fused pass. The criterion keeps the gradient of its last call, so a
hand-written model can call ``crit(logits, y)`` in its forward pass and ``crit.backward()``
in its backward pass without a second sweep over the logits.
"""
from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from numpy.typing import ArrayLike

from ._keywords import CROSS_ENTROPY_OPTIONS, LINEAR_OPTIONS, N_THREADS
from ._typing import FloatArray, Loss
from ._validation import check_options
from .linear import chunk_rows, linear_value_and_grad
from .loss import value_and_grad

__all__ = ["LabelSmoothingLoss", "LinearLabelSmoothingLoss"]

# What the constructor stores: every option of a call but label_smoothing (its own argument)
# and sample_weight (which belongs to a batch, so it is passed per call), and the threads.
_STORED = [name for name in (*CROSS_ENTROPY_OPTIONS, *N_THREADS)
           if name not in ("label_smoothing", "sample_weight")]


def _stored_keywords(owner: str, keywords: Mapping[str, Any],
                     allowed: Collection[str]) -> dict[str, Any]:
    """``keywords`` as a criterion stores them; a TypeError naming ``owner`` for any
    keyword it does not take."""
    unknown = sorted(set(keywords) - set(allowed))
    if unknown:
        raise TypeError(f"{owner} got unexpected keyword(s) {unknown}; it takes "
                        f"label_smoothing and {sorted(allowed)}")
    return dict(keywords)


class _Criterion:
    """What the criteria share: their stored options and their repr."""

    label_smoothing: float
    keywords: dict[str, Any]

    def __repr__(self) -> str:
        kw = "".join(f", {k}={v!r}" for k, v in self.keywords.items())
        return f"{type(self).__name__}(label_smoothing={self.label_smoothing!r}{kw})"


class LabelSmoothingLoss(_Criterion):
    """Label-smoothed softmax cross-entropy as a callable criterion.

    Parameters
    ----------
    label_smoothing : float in [0, 1], default=0.1
        ``eps``; the target becomes ``(1 - eps) * onehot + eps / K``.
    **keywords
        Any keyword of :func:`lsref.cross_entropy` except ``sample_weight`` (which belongs
        to a batch, so it is passed per call): ``axis``, ``reduction``, ``smoothing``,
        ``class_weight``, ``ignore_index``, ``z_loss``, ``kl``, ``n_threads``.

    Notes
    -----
    Calling the criterion computes the loss and the gradient with respect to ``logits`` in
    one pass (:func:`lsref.value_and_grad`) and keeps the gradient; :meth:`backward` returns
    it without recomputing anything. Each call allocates a new gradient array, so gradients
    returned earlier stay valid.

    Examples
    --------
    >>> import numpy as np, lsref
    >>> crit = lsref.LabelSmoothingLoss(label_smoothing=0.1)
    >>> logits = np.array([[3.0, 1.0, 0.0], [0.0, 2.0, 0.0]])
    >>> loss = crit(logits, [0, 1])
    >>> round(float(loss), 4)                       # mean of 0.3365 and 0.3729
    0.3547
    >>> crit.backward().round(4)                     # (softmax - q) / 2 rows
    array([[-0.0448,  0.0404,  0.0043],
           [ 0.0366, -0.0732,  0.0366]])

    As the objective of ``scipy.optimize.minimize(..., jac=True)`` for a linear model
    ``logits = X @ W``: the chain rule gives ``X.T @ dlogits``.

    >>> from scipy.optimize import minimize
    >>> rng = np.random.default_rng(0)
    >>> X, y = rng.standard_normal((60, 4)), rng.integers(0, 3, 60)
    >>> def fun(w):
    ...     loss, dlogits = crit.value_and_grad(X @ w.reshape(4, 3), y)
    ...     return loss, (X.T @ dlogits).ravel()
    >>> minimize(fun, np.zeros(12), jac=True, method="L-BFGS-B").success
    True
    """

    def __init__(self, label_smoothing: float = 0.1, **keywords: Any) -> None:
        if "sample_weight" in keywords:
            raise TypeError("sample_weight belongs to a batch: pass it when calling the "
                            "criterion, crit(logits, targets, sample_weight=...)")
        if "out" in keywords:
            raise TypeError("LabelSmoothingLoss does not take out=; it allocates each "
                            "gradient (use lsref.value_and_grad(..., out=) to reuse a buffer)")
        keywords = _stored_keywords("LabelSmoothingLoss", keywords, _STORED)
        # every option is checked now, with the checks (and messages) of a call, so a typo
        # fails at construction, not mid-training; only what needs the logits (the axis's
        # bounds, the class weights' length) waits for the first call
        check_options(label_smoothing=label_smoothing, **keywords)
        self.label_smoothing = float(label_smoothing)
        self.keywords = keywords
        self._grad: FloatArray | None = None

    def value_and_grad(self, logits: ArrayLike, targets: ArrayLike, *,
                       sample_weight: ArrayLike | None = None) -> tuple[Loss, FloatArray]:
        """The loss and its gradient with respect to ``logits`` (kept for :meth:`backward`).

        Parameters
        ----------
        logits : array_like of float
            Unnormalised scores, the class axis at the criterion's ``axis``.
        targets : array_like
            Class indices or probabilities, as :func:`lsref.cross_entropy` takes them.
        sample_weight : array_like shaped like ``logits`` without the class axis, optional
            Per-row weights of this batch.

        Returns
        -------
        loss : float or ndarray
            As :func:`lsref.value_and_grad`.
        grad : ndarray
            The gradient with respect to ``logits``, a new array.

        Raises
        ------
        TypeError
            If an argument has the wrong type; the message names it.
        ValueError
            If an argument has a bad value or shape; the message names it.
        """
        self._grad = None                       # a call that fails leaves no stale gradient
        loss, grad = value_and_grad(logits, targets, label_smoothing=self.label_smoothing,
                                    sample_weight=sample_weight, **self.keywords)
        self._grad = grad
        return loss, grad

    def __call__(self, logits: ArrayLike, targets: ArrayLike, *,
                 sample_weight: ArrayLike | None = None) -> Loss:
        """The loss; its gradient is kept for :meth:`backward`.

        Parameters
        ----------
        logits : array_like of float
            Unnormalised scores, the class axis at the criterion's ``axis``.
        targets : array_like
            Class indices or probabilities, as :func:`lsref.cross_entropy` takes them.
        sample_weight : array_like shaped like ``logits`` without the class axis, optional
            Per-row weights of this batch.

        Returns
        -------
        loss : float or ndarray
            As :func:`lsref.cross_entropy`.
        """
        return self.value_and_grad(logits, targets, sample_weight=sample_weight)[0]

    def backward(self) -> FloatArray:
        """The gradient of the last call's loss with respect to its logits.

        It was computed in the same pass as the loss; nothing is recomputed.

        Returns
        -------
        grad : ndarray
            Shaped like the last call's logits. For ``reduction="none"`` it is the
            gradient of the sum of the row losses.

        Raises
        ------
        RuntimeError
            If the criterion has not been called yet (or its last call failed).
        """
        if self._grad is None:
            raise RuntimeError("backward() needs a forward call first: crit(logits, targets)")
        return self._grad


# What LinearLabelSmoothingLoss stores: the options of lsref.linear_value_and_grad but the
# bias and sample_weight (a batch's, passed per call) and label_smoothing (its own argument)
_LINEAR_STORED = [name for name in (*LINEAR_OPTIONS, *N_THREADS, "chunk_size")
                  if name not in ("bias", "label_smoothing", "sample_weight")]


class LinearLabelSmoothingLoss(_Criterion):
    """A model's last layer and label-smoothed cross-entropy as one criterion.

    ``crit(h, weight, targets, bias=b)`` is the loss of the logits ``h @ weight.T + b``
    (:func:`lsref.linear_cross_entropy`, which never makes them); :meth:`backward` returns
    the gradients with respect to ``h``, ``weight`` and ``bias``, computed in the same pass.

    Parameters
    ----------
    label_smoothing : float in [0, 1], default=0.1
        ``eps``; the target becomes ``(1 - eps) * onehot + eps / K``.
    **keywords
        Any keyword of :func:`lsref.linear_value_and_grad` but ``bias`` and
        ``sample_weight`` (a batch's, passed per call): ``reduction``, ``smoothing``,
        ``class_weight``, ``ignore_index``, ``z_loss``, ``kl``, ``n_threads``, ``chunk_size``.

    Examples
    --------
    >>> import numpy as np, lsref
    >>> rng = np.random.default_rng(0)
    >>> h, W, b = rng.standard_normal((8, 4)), rng.standard_normal((5, 4)), np.zeros(5)
    >>> y = rng.integers(0, 5, 8)
    >>> crit = lsref.LinearLabelSmoothingLoss(label_smoothing=0.1)
    >>> loss = crit(h, W, y, bias=b)
    >>> dh, dW, db = crit.backward()
    >>> dh.shape, dW.shape, db.shape
    ((8, 4), (5, 4), (5,))
    >>> bool(np.isclose(loss, lsref.cross_entropy(h @ W.T + b, y, label_smoothing=0.1)))
    True
    """

    def __init__(self, label_smoothing: float = 0.1, **keywords: Any) -> None:
        if "sample_weight" in keywords or "bias" in keywords:
            raise TypeError("sample_weight and bias belong to a call: pass them when calling "
                            "the criterion, crit(h, weight, targets, bias=..., "
                            "sample_weight=...)")
        keywords = _stored_keywords("LinearLabelSmoothingLoss", keywords, _LINEAR_STORED)
        options = {k: v for k, v in keywords.items() if k != "chunk_size"}
        check_options(label_smoothing=label_smoothing, **options)
        if keywords.get("chunk_size") is not None:
            chunk_rows(1, 1, keywords["chunk_size"])        # its checks, now
        self.label_smoothing = float(label_smoothing)
        self.keywords = keywords
        self._grads: tuple[FloatArray, FloatArray, FloatArray | None] | None = None

    def __call__(self, h: ArrayLike, weight: ArrayLike, targets: ArrayLike, *,
                 bias: ArrayLike | None = None, sample_weight: ArrayLike | None = None) -> Loss:
        """The loss of the logits ``h @ weight.T + bias``; the gradients are kept.

        Parameters
        ----------
        h : array_like of float32 or float64, shape (..., d)
            The layer's inputs.
        weight : array_like, shape (V, d)
            The output matrix.
        targets : array_like
            Class indices or probabilities, as :func:`lsref.linear_value_and_grad` takes
            them.
        bias : array_like of shape (V,), optional
            The layer's bias.
        sample_weight : array_like shaped like ``targets`` (class indices), optional
            Per-row weights of this batch.

        Returns
        -------
        loss : float or ndarray
            As :func:`lsref.linear_cross_entropy`.
        """
        self._grads = None                      # a call that fails leaves no stale gradient
        loss, dh, dweight, dbias = linear_value_and_grad(
            h, weight, targets, bias=bias, label_smoothing=self.label_smoothing,
            sample_weight=sample_weight, **self.keywords)
        self._grads = (dh, dweight, dbias)
        return loss

    def backward(self) -> tuple[FloatArray, FloatArray, FloatArray | None]:
        """The gradients of the last call's loss: ``(dh, dweight, dbias)``.

        Returns
        -------
        dh, dweight : ndarray
            Shaped like the last call's ``h`` and ``weight``.
        dbias : ndarray or None
            None where the call had no bias.

        Raises
        ------
        RuntimeError
            If the criterion has not been called yet (or its last call failed).
        """
        if self._grads is None:
            raise RuntimeError("backward() needs a forward call first: "
                               "crit(h, weight, targets)")
        return self._grads
