"""Calibration: is a classifier's confidence its accuracy?

A model is calibrated when, among the predictions it makes with confidence ``c`` (its largest
probability), a fraction ``c`` is right. The usual measures bin the predictions by confidence
(Guo et al., 2017, "On Calibration of Modern Neural Networks"):

- expected calibration error, ``ECE = sum_b (n_b / n) |acc_b - conf_b|``;
- maximum calibration error, ``MCE = max_b |acc_b - conf_b|`` over non-empty bins;
- the reliability diagram: ``acc_b`` against ``conf_b``, per bin.

Bins are right-closed, ``((b-1)/B, b/B]`` for equal width (``strategy="uniform"``, the first
bin also takes 0); ``strategy="quantile"`` places the edges at the quantiles of the
confidences, so the bins hold (nearly) equal numbers of predictions. Both follow
``sklearn.calibration.calibration_curve``, which the tests check them against.

Also here: the optimum that label smoothing aims at, for either smoothing form.
"""
from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ._typing import FloatArray, Smoothing, Strategy
from ._validation import SMOOTHINGS, check_choice, check_real

__all__ = ["optimal_probabilities", "optimal_logit_gap", "reliability_diagram",
           "expected_calibration_error", "maximum_calibration_error", "plot_reliability",
           "ReliabilityDiagram"]

STRATEGIES = typing.get_args(Strategy)     # the values of its Literal type


# --- the optimum of the smoothed loss ------------------------------------------------------

def _check_classes(num_classes, smoothing):
    if isinstance(num_classes, (bool, np.bool_)) or not isinstance(num_classes,
                                                                  (int, np.integer)):
        raise TypeError(f"num_classes must be an integer, got {num_classes!r}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    check_choice("smoothing", smoothing, SMOOTHINGS)
    return int(num_classes)


def optimal_probabilities(num_classes: int, label_smoothing: float, *,
                          smoothing: Smoothing = "uniform") -> tuple[float, float]:
    """The predicted probabilities that minimise the smoothed loss: the smoothed target.

    Cross-entropy against a target ``q`` is minimised by ``p = q``, so the optimum puts
    ``1 - eps + eps/K`` on the labelled class and ``eps/K`` on each other one
    (``smoothing="uniform"``), or ``1 - eps`` and ``eps/(K-1)`` (``smoothing="others"``,
    fairseq and T5X).

    Parameters
    ----------
    num_classes : int >= 2
        ``K``, the number of classes.
    label_smoothing : float in [0, 1]
        ``eps``.
    smoothing : {"uniform", "others"}, default="uniform"
        Where the smoothing mass goes, as in :func:`lsref.cross_entropy`.

    Returns
    -------
    p_target : float
        The probability of the labelled class.
    p_other : float
        The probability of each other class.

    Raises
    ------
    TypeError
        If ``num_classes`` is not an integer or ``label_smoothing`` not a real number.
    ValueError
        If ``num_classes < 2``, ``label_smoothing`` is outside [0, 1] or ``smoothing`` is
        unknown.

    Examples
    --------
    >>> from lsref.calibration import optimal_probabilities
    >>> [round(p, 6) for p in optimal_probabilities(10, 0.1)]
    [0.91, 0.01]
    >>> [round(p, 6) for p in optimal_probabilities(10, 0.1, smoothing="others")]
    [0.9, 0.011111]
    """
    K = _check_classes(num_classes, smoothing)
    eps = check_real("label_smoothing", label_smoothing, 0.0, 1.0)
    if smoothing == "uniform":
        return 1.0 - eps + eps / K, eps / K
    return 1.0 - eps, eps / (K - 1)


def optimal_logit_gap(num_classes: int, label_smoothing: float, *,
                      smoothing: Smoothing = "uniform") -> float:
    """The logit gap between the labelled class and each other class at the optimum.

    ``log(p_target / p_other)``: finite for ``eps > 0``, ``inf`` without smoothing (the
    unsmoothed loss has no minimiser; it pushes the gap to infinity).

    Parameters
    ----------
    num_classes : int >= 2
        ``K``, the number of classes.
    label_smoothing : float in [0, 1]
        ``eps``.
    smoothing : {"uniform", "others"}, default="uniform"
        Where the smoothing mass goes, as in :func:`lsref.cross_entropy`.

    Returns
    -------
    float
        ``log(p_target / p_other)`` of :func:`optimal_probabilities`.

    Raises
    ------
    TypeError
        If ``num_classes`` is not an integer or ``label_smoothing`` not a real number.
    ValueError
        If ``num_classes < 2``, ``label_smoothing`` is outside [0, 1] or ``smoothing`` is
        unknown.

    Examples
    --------
    >>> from lsref.calibration import optimal_logit_gap
    >>> round(optimal_logit_gap(10, 0.1), 4)           # log(0.91 / 0.01)
    4.5109
    >>> round(optimal_logit_gap(10, 0.1, smoothing="others"), 4)    # log(0.9 * 9 / 0.1)
    4.3944
    >>> optimal_logit_gap(10, 0.0)
    inf
    """
    p_t, p_o = optimal_probabilities(num_classes, label_smoothing, smoothing=smoothing)
    if p_o == 0.0:
        return np.inf
    return float(np.log(p_t) - np.log(p_o))


# --- binned calibration --------------------------------------------------------------------

@dataclass(frozen=True)
class ReliabilityDiagram:
    """Per-bin data of a reliability diagram (arrays of length ``n_bins``).

    ``confidence[b]`` and ``accuracy[b]`` are NaN for an empty bin. ``ece`` and ``mce`` are
    computed from these arrays.
    """

    bin_edges: FloatArray       # (n_bins + 1,)
    counts: NDArray[np.intp]    # (n_bins,) predictions per bin
    confidence: FloatArray      # (n_bins,) mean confidence in the bin
    accuracy: FloatArray        # (n_bins,) fraction right in the bin
    strategy: Strategy

    @property
    def ece(self) -> float:
        """Expected calibration error: the count-weighted mean of ``|accuracy - confidence|``."""
        nz = self.counts > 0
        n = self.counts.sum()
        return float(np.sum(self.counts[nz] / n *
                            np.abs(self.accuracy[nz] - self.confidence[nz])))

    @property
    def mce(self) -> float:
        """Maximum calibration error: the largest ``|accuracy - confidence|`` of a non-empty bin."""
        nz = self.counts > 0
        return float(np.max(np.abs(self.accuracy[nz] - self.confidence[nz])))


def _confidence_and_correct(probs, labels):
    probs = np.asarray(probs)
    if probs.dtype.kind not in "fiu":
        raise TypeError(f"probs must be an array of real numbers, got dtype {probs.dtype}")
    probs = probs.astype(np.float64, copy=False)
    if probs.ndim != 2 or probs.shape[1] < 2:
        raise ValueError(f"probs must have shape (n_samples, n_classes >= 2), got shape "
                         f"{probs.shape}")
    if probs.shape[0] == 0:
        raise ValueError("probs must hold at least one prediction, got 0 rows")
    bad = ~np.isfinite(probs) | (probs < 0) | (probs > 1)
    if bad.any():
        i = tuple(int(v) for v in np.argwhere(bad)[0])
        raise ValueError(f"probs must be probabilities in [0, 1]; probs{list(i)} = "
                         f"{probs[i]!r}")
    # rows are softmax outputs: they sum to 1 up to float32 rounding over K terms
    dev = np.abs(probs.sum(axis=1) - 1.0)
    tol = 1e-6 * max(1.0, np.sqrt(probs.shape[1]))
    if np.any(dev > tol):
        i = int(np.argmax(dev))
        raise ValueError(f"each row of probs must sum to 1 (probabilities, not logits: "
                         f"use lsref.softmax); row {i} sums to {probs[i].sum()!r}")
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise TypeError(f"labels must be integer class indices, got dtype {labels.dtype}")
    if labels.shape != (probs.shape[0],):
        raise ValueError(f"labels must have shape ({probs.shape[0]},) to match probs, got "
                         f"{labels.shape}")
    out = (labels < 0) | (labels >= probs.shape[1])
    if out.any():
        i = int(np.argmax(out))
        raise ValueError(f"labels must be in [0, {probs.shape[1] - 1}]; labels[{i}] = "
                         f"{int(labels[i])}")
    pred = np.argmax(probs, axis=1)
    return probs[np.arange(probs.shape[0]), pred], (pred == labels)


def _check_bins(n_bins, strategy):
    if isinstance(n_bins, (bool, np.bool_)) or not isinstance(n_bins, (int, np.integer)):
        raise TypeError(f"n_bins must be an integer, got {n_bins!r}")
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    check_choice("strategy", strategy, STRATEGIES)
    return int(n_bins)


def reliability_diagram(probs: ArrayLike, labels: ArrayLike, *, n_bins: int = 15,
                        strategy: Strategy = "uniform") -> ReliabilityDiagram:
    """Bin predictions by confidence: the data of a reliability diagram.

    Parameters
    ----------
    probs : array_like of shape (n_samples, n_classes)
        Predicted probabilities (rows sum to 1; pass ``lsref.softmax(logits)`` for logits).
    labels : array_like of int, shape (n_samples,)
        The true classes.
    n_bins : int, default=15
        The number of confidence bins.
    strategy : {"uniform", "quantile"}, default="uniform"
        Equal-width bins on [0, 1], or edges at the quantiles of the confidences
        (equal-mass bins).

    Returns
    -------
    ReliabilityDiagram
        ``bin_edges``, ``counts``, ``confidence``, ``accuracy`` per bin, and ``ece``/``mce``.

    Raises
    ------
    TypeError
        If ``n_bins`` is not an integer.
    ValueError
        If ``n_bins < 1``, ``strategy`` is unknown, or ``probs`` and ``labels`` do not
        have the shapes above.

    Examples
    --------
    >>> import numpy as np
    >>> from lsref.calibration import reliability_diagram
    >>> probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.4, 0.6]])
    >>> d = reliability_diagram(probs, [0, 1, 0, 0], n_bins=5)
    >>> d.counts
    array([0, 0, 2, 0, 2])
    >>> d.accuracy[[2, 4]], d.confidence[[2, 4]]
    (array([0.5, 0.5]), array([0.6, 0.9]))
    >>> round(d.ece, 6), round(d.mce, 6)             # 0.5 * 0.1 + 0.5 * 0.4
    (0.25, 0.4)
    """
    n_bins = _check_bins(n_bins, strategy)
    conf, correct = _confidence_and_correct(probs, labels)
    if strategy == "uniform":
        edges = np.linspace(0.0, 1.0, n_bins + 1)
    else:
        edges = np.percentile(conf, np.linspace(0.0, 100.0, n_bins + 1))
    # right-closed bins: conf in (edges[b], edges[b+1]] goes to bin b (the first takes 0 too)
    idx = np.searchsorted(edges[1:-1], conf, side="left")
    counts = np.bincount(idx, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        confidence = np.bincount(idx, weights=conf, minlength=n_bins) / counts
        accuracy = np.bincount(idx, weights=correct.astype(np.float64),
                               minlength=n_bins) / counts
    return ReliabilityDiagram(edges, counts, confidence, accuracy, strategy)


def expected_calibration_error(probs: ArrayLike, labels: ArrayLike, *, n_bins: int = 15,
                               strategy: Strategy = "uniform") -> float:
    """ECE: ``sum_b (n_b / n) |acc_b - conf_b|`` over confidence bins.

    0 for a perfectly calibrated model; the fraction of predictions whose confidence is
    misplaced, on average.

    Parameters
    ----------
    probs : array_like of shape (n_samples, n_classes)
        Predicted probabilities (rows sum to 1; pass ``lsref.softmax(logits)`` for logits).
    labels : array_like of int, shape (n_samples,)
        The true classes.
    n_bins : int, default=15
        The number of confidence bins.
    strategy : {"uniform", "quantile"}, default="uniform"
        Equal-width bins on [0, 1], or edges at the quantiles of the confidences
        (equal-mass bins).

    Returns
    -------
    float
        The expected calibration error, in [0, 1].

    Raises
    ------
    TypeError
        If ``n_bins`` is not an integer.
    ValueError
        If ``n_bins < 1``, ``strategy`` is unknown, or ``probs`` and ``labels`` do not
        have the shapes above.

    Examples
    --------
    >>> import numpy as np
    >>> from lsref.calibration import expected_calibration_error
    >>> probs = np.tile([0.8, 0.2], (10, 1))         # 80% confident, 8 of 10 right
    >>> labels = np.array([0] * 8 + [1] * 2)
    >>> round(expected_calibration_error(probs, labels), 12)
    0.0
    >>> round(expected_calibration_error(probs, np.array([0] * 5 + [1] * 5)), 6)
    0.3
    """
    return reliability_diagram(probs, labels, n_bins=n_bins, strategy=strategy).ece


def maximum_calibration_error(probs: ArrayLike, labels: ArrayLike, *, n_bins: int = 15,
                              strategy: Strategy = "uniform") -> float:
    """MCE: the largest ``|acc_b - conf_b|`` over non-empty confidence bins.

    Parameters
    ----------
    probs : array_like of shape (n_samples, n_classes)
        Predicted probabilities (rows sum to 1; pass ``lsref.softmax(logits)`` for logits).
    labels : array_like of int, shape (n_samples,)
        The true classes.
    n_bins : int, default=15
        The number of confidence bins.
    strategy : {"uniform", "quantile"}, default="uniform"
        Equal-width bins on [0, 1], or edges at the quantiles of the confidences
        (equal-mass bins).

    Returns
    -------
    float
        The maximum calibration error, in [0, 1].

    Raises
    ------
    TypeError
        If ``n_bins`` is not an integer.
    ValueError
        If ``n_bins < 1``, ``strategy`` is unknown, or ``probs`` and ``labels`` do not
        have the shapes above.

    Examples
    --------
    >>> import numpy as np
    >>> from lsref.calibration import maximum_calibration_error
    >>> probs = np.tile([0.8, 0.2], (10, 1))         # 80% confident, half right
    >>> round(maximum_calibration_error(probs, np.array([0] * 5 + [1] * 5)), 6)
    0.3
    """
    return reliability_diagram(probs, labels, n_bins=n_bins, strategy=strategy).mce


def pyplot() -> Any:
    """matplotlib.pyplot, or an ImportError that says how to install it (an optional
    dependency)."""
    try:
        import matplotlib.pyplot as plt  # headless, matplotlib picks its Agg backend itself
    except ImportError:
        raise ImportError("plot_reliability needs matplotlib, which is optional: "
                          "python3 -m pip install matplotlib") from None
    return plt


def plot_reliability(probs: ArrayLike | None = None, labels: ArrayLike | None = None, *,
                     diagram: ReliabilityDiagram | None = None, n_bins: int = 15,
                     strategy: Strategy = "uniform", ax: Any = None,
                     title: str | None = None) -> Any:
    """Draw a reliability diagram with matplotlib (an optional dependency).

    Pass ``probs`` and ``labels`` (binned as in :func:`reliability_diagram`), or a
    ``diagram`` already computed. Bars show each bin's accuracy (with its number of
    predictions at the foot), the diagonal is perfect calibration, and the gap to it is
    shaded; the title carries the ECE.

    Parameters
    ----------
    probs : array_like of shape (n_samples, n_classes), optional
        Predicted probabilities, as :func:`reliability_diagram` takes them.
    labels : array_like of int, shape (n_samples,), optional
        The true classes.
    diagram : ReliabilityDiagram, optional
        A diagram already computed, instead of ``probs`` and ``labels``.
    n_bins : int, default=15
        The number of confidence bins (with ``probs``).
    strategy : {"uniform", "quantile"}, default="uniform"
        How the bins are cut (with ``probs``).
    ax : matplotlib.axes.Axes, optional
        Where to draw; a new figure by default.
    title : str, optional
        A first title line, above the ECE.

    Returns
    -------
    matplotlib.axes.Axes
        The axes drawn on.

    Raises
    ------
    TypeError
        If neither ``probs`` and ``labels`` nor ``diagram`` is given.
    ImportError
        If matplotlib is not installed.
    """
    if diagram is None:
        if probs is None or labels is None:
            raise TypeError("plot_reliability needs probs and labels, or diagram=")
        diagram = reliability_diagram(probs, labels, n_bins=n_bins, strategy=strategy)
    plt = pyplot()
    if ax is None:
        _, ax = plt.subplots(figsize=(4.5, 4.5))
    d = diagram
    lo, hi = d.bin_edges[:-1], d.bin_edges[1:]
    nz = d.counts > 0
    width = (hi - lo)[nz]
    ax.bar(lo[nz], d.accuracy[nz], width=width, align="edge", color="#4c72b0",
           edgecolor="white", label="accuracy")
    gap_lo = np.minimum(d.accuracy[nz], d.confidence[nz])
    ax.bar(lo[nz], np.abs(d.accuracy[nz] - d.confidence[nz]), bottom=gap_lo, width=width,
           align="edge", color="#dd8452", alpha=0.45, edgecolor="#dd8452",
           label="gap to confidence")
    for x, w, n in zip(lo[nz], width, d.counts[nz]):     # how many predictions each bar holds
        ax.text(x + w / 2, 0.015, str(n), ha="center", va="bottom", fontsize=6,
                color="white", rotation=90 if n >= 1000 else 0)
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (max probability)")
    ax.set_ylabel("accuracy")
    ax.set_aspect("equal")
    ax.legend(loc="upper left", fontsize=8)
    ece = f"ECE = {d.ece:.3f}"
    ax.set_title(f"{title}\n{ece}" if title else ece, fontsize=10)
    return ax
