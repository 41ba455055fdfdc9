"""lsref.calibration: ECE/MCE on hand-computed examples, the binning against a plain loop and
against scikit-learn's calibration_curve, the analytic optimum against a numerical minimum of
the oracle's loss, plotting, and clear errors."""
import numpy as np
import pytest

from lsref import reference as R
from lsref.calibration import (
    expected_calibration_error,
    maximum_calibration_error,
    optimal_logit_gap,
    optimal_probabilities,
    plot_reliability,
    reliability_diagram,
)
from support import CALIBRATION_ATOL, hide_module, require


def two_class(conf, correct):
    """probs rows [c, 1-c] (c >= 0.5 is the confidence), label 0 if correct else 1."""
    conf = np.asarray(conf, float)
    return np.stack([conf, 1 - conf], axis=1), np.where(correct, 0, 1)


def test_perfect_calibration_has_zero_ece():
    # bin (0.6, 0.8]: 10 at 0.7, 7 right; bin (0.8, 1.0]: 10 at 0.9, 9 right
    probs, labels = two_class([0.7] * 10 + [0.9] * 10, [1] * 7 + [0] * 3 + [1] * 9 + [0])
    assert abs(expected_calibration_error(probs, labels, n_bins=5)) < CALIBRATION_ATOL
    assert abs(maximum_calibration_error(probs, labels, n_bins=5)) < CALIBRATION_ATOL


def test_a_known_miscalibrated_case():
    # 4 at 0.95 with 2 right (gap 0.45), 6 at 0.6 with 3 right (gap 0.1):
    # ECE = 0.4 * 0.45 + 0.6 * 0.1 = 0.24, MCE = 0.45
    probs, labels = two_class([0.95] * 4 + [0.6] * 6, [1, 1, 0, 0, 1, 1, 1, 0, 0, 0])
    assert abs(expected_calibration_error(probs, labels, n_bins=10) - 0.24) < CALIBRATION_ATOL
    assert abs(maximum_calibration_error(probs, labels, n_bins=10) - 0.45) < CALIBRATION_ATOL
    d = reliability_diagram(probs, labels, n_bins=10)
    assert d.counts.sum() == 10 and d.counts[9] == 4 and d.counts[5] == 6
    np.testing.assert_allclose(d.accuracy[[5, 9]], [0.5, 0.5], atol=CALIBRATION_ATOL)
    np.testing.assert_allclose(d.confidence[[5, 9]], [0.6, 0.95], atol=CALIBRATION_ATOL)
    assert np.all(np.isnan(d.accuracy[d.counts == 0]))


def test_overconfident_everywhere():
    """Always 100% sure, right half of the time: ECE = MCE = 0.5 for any binning."""
    probs = np.tile([1.0, 0.0, 0.0], (8, 1))
    labels = np.array([0, 1] * 4)
    for strategy in ("uniform", "quantile"):
        for n_bins in (1, 7, 15):
            assert abs(expected_calibration_error(probs, labels, n_bins=n_bins,
                                                  strategy=strategy) - 0.5) < CALIBRATION_ATOL


def test_bins_are_right_closed():
    """A confidence on an edge belongs to the bin below it (Guo et al.; scikit-learn)."""
    probs, labels = two_class([0.6, 0.8, 1.0, 0.5], [1, 1, 1, 1])
    d = reliability_diagram(probs, labels, n_bins=5)       # edges 0, .2, .4, .6, .8, 1
    np.testing.assert_array_equal(d.counts, [0, 0, 2, 1, 1])


def brute_force(conf, correct, edges):
    """ECE by a loop over bins, written from the definition."""
    n, ece = len(conf), 0.0
    for b in range(len(edges) - 1):
        lo, hi = edges[b], edges[b + 1]
        inside = [i for i in range(n) if (conf[i] > lo or (b == 0 and conf[i] >= lo))
                  and conf[i] <= hi]
        if inside:
            acc = sum(correct[i] for i in inside) / len(inside)
            c = sum(conf[i] for i in inside) / len(inside)
            ece += len(inside) / n * abs(acc - c)
    return ece


@pytest.mark.parametrize("seed", range(5))
def test_matches_a_plain_loop(seed):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((300, 6)) * 2
    probs = R.softmax(z)
    labels = rng.integers(0, 6, 300)
    conf, correct = probs.max(axis=1), probs.argmax(axis=1) == labels
    for n_bins in (1, 10, 15):
        ref = brute_force(conf, correct, np.linspace(0, 1, n_bins + 1))
        assert abs(expected_calibration_error(probs, labels, n_bins=n_bins) - ref) \
            < CALIBRATION_ATOL
        q_edges = np.percentile(conf, np.linspace(0, 100, n_bins + 1))
        ref_q = brute_force(conf, correct, q_edges)
        assert abs(expected_calibration_error(probs, labels, n_bins=n_bins,
                                              strategy="quantile") - ref_q) < CALIBRATION_ATOL


@pytest.mark.parametrize("strategy", ["uniform", "quantile"])
def test_matches_scikit_learn_calibration_curve(strategy):
    calibration = require("sklearn.calibration")
    rng = np.random.default_rng(9)
    probs = R.softmax(rng.standard_normal((500, 4)) * 1.5)
    labels = rng.integers(0, 4, 500)
    conf, correct = probs.max(axis=1), (probs.argmax(axis=1) == labels).astype(int)
    prob_true, prob_pred = calibration.calibration_curve(correct, conf, n_bins=10,
                                                         strategy=strategy)
    d = reliability_diagram(probs, labels, n_bins=10, strategy=strategy)
    nz = d.counts > 0
    np.testing.assert_allclose(d.accuracy[nz], prob_true, atol=CALIBRATION_ATOL)
    np.testing.assert_allclose(d.confidence[nz], prob_pred, atol=CALIBRATION_ATOL)


def test_quantile_bins_hold_equal_numbers():
    rng = np.random.default_rng(10)
    probs = R.softmax(rng.standard_normal((1000, 5)))
    d = reliability_diagram(probs, rng.integers(0, 5, 1000), n_bins=10, strategy="quantile")
    assert d.counts.sum() == 1000 and d.counts.min() >= 99 and d.counts.max() <= 101


@pytest.mark.parametrize("K,eps,smoothing,p", [
    (10, 0.1, "uniform", (0.91, 0.01)),          # the seed lesson's numbers
    (10, 0.1, "others", (0.9, 0.1 / 9)),
    (2, 0.2, "uniform", (0.9, 0.1)),
    (5, 0.0, "uniform", (1.0, 0.0)),
    (4, 1.0, "uniform", (0.25, 0.25)),
])
def test_optimal_probabilities(K, eps, smoothing, p):
    np.testing.assert_allclose(optimal_probabilities(K, eps, smoothing=smoothing), p,
                               rtol=1e-15)


@pytest.mark.parametrize("K,eps,smoothing", [(10, 0.1, "uniform"), (10, 0.1, "others"),
                                             (3, 0.3, "uniform"), (1000, 0.05, "others")])
def test_optimal_gap_minimises_the_oracle_loss(K, eps, smoothing):
    """The gap that minimises the oracle's loss for logits (gap, 0, ..., 0), found
    numerically, is the analytic one."""
    from scipy.optimize import minimize_scalar

    def loss(gap):
        z = np.zeros((1, K))
        z[0, 0] = gap
        return float(R.cross_entropy(z, [0], label_smoothing=eps, smoothing=smoothing))
    res = minimize_scalar(loss, bracket=(0.0, 20.0), tol=1e-12)
    assert abs(res.x - optimal_logit_gap(K, eps, smoothing=smoothing)) < 1e-6


def test_seed_lesson_gap():
    assert round(optimal_logit_gap(10, 0.1), 2) == 4.51       # "about 4.5"
    assert optimal_logit_gap(10, 0.0) == np.inf
    assert optimal_logit_gap(4, 1.0) == 0.0                   # eps = 1: the uniform target


@pytest.mark.parametrize("call,exc,match", [
    (lambda: optimal_probabilities(1, 0.1), ValueError, "num_classes"),
    (lambda: optimal_probabilities(10.0, 0.1), TypeError, "num_classes"),
    (lambda: optimal_probabilities(10, 1.2), ValueError, "label_smoothing"),
    (lambda: optimal_logit_gap(10, 0.1, smoothing="x"), ValueError, "smoothing"),
    (lambda: reliability_diagram([[0.5, 0.5]], [0], n_bins=0), ValueError, "n_bins"),
    (lambda: reliability_diagram([[0.5, 0.5]], [0], strategy="equal"), ValueError, "strategy"),
    (lambda: reliability_diagram([[2.0, -1.0]], [0]), ValueError, r"probs\[0, 0\]"),
    (lambda: reliability_diagram([[0.2, 0.2]], [0]), ValueError, "sum to 1"),
    (lambda: reliability_diagram([[np.nan, 0.5]], [0]), ValueError, "probs"),
    (lambda: reliability_diagram([0.5, 0.5], [0]), ValueError, "shape"),
    (lambda: reliability_diagram(np.zeros((0, 3)), []), ValueError, "at least one"),
    (lambda: reliability_diagram([[0.5, 0.5]], [2]), ValueError, r"labels\[0\] = 2"),
    (lambda: reliability_diagram([[0.5, 0.5]], [0.0]), TypeError, "labels"),
    (lambda: reliability_diagram([[0.5, 0.5]], [0, 1]), ValueError, "labels must have shape"),
    (lambda: plot_reliability(), TypeError, "probs and labels"),
])
def test_bad_input_is_a_clear_error(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_inputs_are_not_modified():
    probs, labels = two_class([0.7, 0.9], [1, 0])
    p0, l0 = probs.copy(), labels.copy()
    reliability_diagram(probs, labels)
    np.testing.assert_array_equal(probs, p0)
    np.testing.assert_array_equal(labels, l0)


def test_plot_reliability_draws_bars_and_saves(tmp_path):
    require("matplotlib")
    import matplotlib.pyplot as plt
    probs, labels = two_class([0.95] * 4 + [0.6] * 6, [1, 1, 0, 0, 1, 1, 1, 0, 0, 0])
    ax = plot_reliability(probs, labels, n_bins=10, title="t")
    heights = sorted(round(p.get_height(), 12) for p in ax.patches)
    assert heights == [0.1, 0.45, 0.5, 0.5]          # two accuracy bars, two gap bars
    assert "ECE = 0.240" in ax.get_title()
    path = tmp_path / "r.png"
    ax.figure.savefig(path)
    plt.close(ax.figure)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_reliability_without_matplotlib_says_what_to_install(monkeypatch):
    hide_module(monkeypatch, "matplotlib")
    probs, labels = two_class([0.7], [1])
    with pytest.raises(ImportError, match="pip install matplotlib"):
        plot_reliability(probs, labels)
