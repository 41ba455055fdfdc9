"""The oracle against exact arithmetic (mpmath, 50 digits): it is the witness the kernel is
measured against, so its own error must sit well below the kernel's float64 bounds
(lsref/_tolerances.py: 1e-12 of the loss, 1e-13 of max|g|). Here it is held to 1e-14."""
import numpy as np
import pytest

from lsref import reference as R

mpmath = pytest.importorskip("mpmath")

RTOL = 1e-14
DIGITS = 50


def exact_loss_and_grad(z, c, s=1.0, z_loss=0.0):
    """One row's loss s sum_k c_k (lse - z_k) + s lam lse^2 and its gradient
    s [(sum_k c_k) p_j - c_j] + 2 s lam lse p_j, with c = w q, in 50-digit arithmetic
    (SEMANTICS.md, formula for formula). Returns (loss, grad) rounded to float64."""
    with mpmath.workdps(DIGITS):
        mpf = mpmath.mpf
        zz = [mpf(float(v)) for v in z]
        cc = [mpf(float(v)) for v in c]
        m = max(zz)
        e = [mpmath.exp(v - m) for v in zz]
        S = mpmath.fsum(e)
        lse = m + mpmath.log(S)
        C = mpmath.fsum(cc)
        s, lam = mpf(float(s)), mpf(float(z_loss))
        loss = s * mpmath.fsum(ck * (lse - zk) for ck, zk in zip(cc, zz) if ck) + s * lam * lse**2
        grad = [s * ((C + 2 * lam * lse) * ek / S - ck) for ek, ck in zip(e, cc)]
        return float(loss), np.array([float(g) for g in grad])


def exact_q(K, eps, target=None, P=None, smoothing="uniform"):
    """The smoothed target q as exact rationals rounded once (SEMANTICS.md's table)."""
    with mpmath.workdps(DIGITS):
        e = mpmath.mpf(eps)
        if P is not None:
            return np.array([float((1 - e) * mpmath.mpf(float(v)) + e / K) for v in P])
        off = e / K if smoothing == "uniform" else e / (K - 1)
        on = (1 - e) + (e / K if smoothing == "uniform" else 0)
        return np.array([float(on if k == target else off) for k in range(K)])


def assert_exact(loss, grad, exact_loss, exact_grad, rtol=RTOL):
    assert abs(loss - exact_loss) <= rtol * abs(exact_loss), (loss, exact_loss)
    scale = np.max(np.abs(exact_grad))
    err = np.max(np.abs(grad - exact_grad))
    assert err <= rtol * scale, (err / scale, int(np.argmax(np.abs(grad - exact_grad))))


@pytest.mark.parametrize("K", [65536, 200000])
def test_large_K_unnormalised_targets_match_mpmath(K):
    """Item 9: K >= 65k, unnormalised probability targets, class weights, one dominant logit
    carrying most of the target mass. The dominant class's gradient (sum_k c_k) p - c is a
    difference of two near-equal numbers unless computed from p - 1 = expm1(-(lse - z))."""
    rng = np.random.default_rng(65536 + K)
    z = rng.standard_normal(K) * 3.0
    z[K // 3] = 30.0
    P = rng.random(K) * 1e-9                     # sums to ~2.5, not 1
    P[K // 3] = 2.5
    w = rng.uniform(0.5, 2.0, K)
    eps = 1e-9
    loss, grad = R.value_and_grad(z[None], P[None], label_smoothing=eps, class_weight=w,
                                  reduction="none")
    exact_loss, exact_grad = exact_loss_and_grad(z, w * exact_q(K, eps, P=P))
    assert_exact(loss[0], grad[0], exact_loss, exact_grad)


# Item 7: dominated rows, where the loss is tiny and its terms lse - z_k for the classes that
# carry the mass are tiny. (logits, targets, keywords); targets a class index or probabilities.
DOMINATED = {
    # the max is a non-target class carrying all the mass: q = [0, 1]; loss log1p(e^-40)
    "others_eps1_max_not_target": ([0.0, 40.0], 0, dict(label_smoothing=1.0,
                                                         smoothing="others")),
    # weight 0 on the target: only eps/K on the max class counts; ~2.1e-19
    "weight0_target_max_carries_mass": ([0.0, 40.0], 0, dict(label_smoothing=0.1,
                                                              class_weight=[0.0, 1.0])),
    # probability target on the max class, a 1e-12 smoothing mass on the other
    "probs_on_max_eps_1e-12": ([0.0, 30.0], [0.0, 1.0], dict(label_smoothing=1e-12)),
    # the target is the max: loss log1p(sum of the rest)
    "target_is_max": ([0.0, -40.0], 0, {}),
    "target_is_max_three_classes": ([40.0, 0.0, 1.0], 0, {}),
    "target_is_max_weighted_smoothed": ([35.0, -2.0, 1.0, 0.5], 0,
                                        dict(label_smoothing=1e-10,
                                             class_weight=[2.0, 0.5, 1.0, 3.0])),
    "target_is_max_z_loss_at_zero_lse": ([0.0, -45.0, -50.0], 0, dict(z_loss=1e-4)),
}


@pytest.mark.parametrize("name", list(DOMINATED))
def test_dominated_row_loss_and_gradient_match_mpmath(name):
    """A tiny loss keeps its relative accuracy (lse - z_top = log1p(sum of the rest)), and so
    does the gradient of the class that carries the mass (p_top - 1 = expm1(-(lse - z_top)))."""
    z, target, kw = DOMINATED[name]
    z = np.asarray(z)
    K = z.size
    eps = kw.get("label_smoothing", 0.0)
    w = np.asarray(kw.get("class_weight", np.ones(K)))
    if isinstance(target, list):
        targets, q = np.asarray([target]), exact_q(K, eps, P=target)
    else:
        targets = [target]
        q = exact_q(K, eps, target=target, smoothing=kw.get("smoothing", "uniform"))
    loss, grad = R.value_and_grad(z[None], targets, reduction="none", **kw)
    exact_loss, exact_grad = exact_loss_and_grad(z, w * q, z_loss=kw.get("z_loss", 0.0))
    assert exact_loss < 1e-8
    assert_exact(loss[0], grad[0], exact_loss, exact_grad)


def test_dominated_row_values_from_the_issue():
    """The three rows of the issue, their losses against mpmath's closed forms."""
    with mpmath.workdps(DIGITS):
        tiny40 = float(mpmath.log1p(mpmath.exp(-40)))
        tiny30 = mpmath.log1p(mpmath.exp(-30))
        eps = mpmath.mpf(1e-12)
        probs = float(eps / 2 * (30 + tiny30) + (1 - eps / 2) * tiny30)
    assert tiny40 == pytest.approx(4.248354255291589e-18, rel=1e-15)
    got = R.cross_entropy([[0.0, 40.0]], [0], label_smoothing=1, smoothing="others",
                          reduction="none")[0]
    assert got == pytest.approx(tiny40, rel=RTOL)
    got = R.cross_entropy([[0.0, 40.0]], [0], label_smoothing=0.1, class_weight=[0, 1],
                          reduction="none")[0]
    assert got == pytest.approx(0.05 * tiny40, rel=RTOL)
    got = R.cross_entropy([[0.0, 30.0]], np.array([[0.0, 1.0]]), label_smoothing=1e-12,
                          reduction="none")[0]
    assert got == pytest.approx(probs, rel=RTOL)
