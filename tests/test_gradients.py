"""Gradients (oracle and kernel, float64) against finite differences and check_grad."""
import numpy as np
import pytest
from numpy.testing import assert_allclose
from scipy.optimize import check_grad

import lsref
from lsref import reference as R
from support import CHECK_GRAD_RTOL, FD_GRAD_RTOL, fd_gradient

CASES = [
    dict(label_smoothing=0.0),
    dict(label_smoothing=0.1),
    dict(label_smoothing=1.0),
    dict(label_smoothing=0.3, smoothing="others"),
    dict(label_smoothing=0.1, reduction="sum"),
    dict(label_smoothing=0.1, reduction="none"),   # the gradient of the sum of the rows
]


@pytest.mark.parametrize("kind,kw", [(kind, kw) for kind in ("index", "probs") for kw in CASES
                                     if kind == "index" or kw.get("smoothing") != "others"],
                         ids=lambda v: v if isinstance(v, str) else
                         ",".join(f"{k}={x}" for k, x in v.items()))
@pytest.mark.parametrize("impl", ["oracle", "kernel"])
def test_gradient_matches_finite_differences(kw, impl, kind):
    rng = np.random.default_rng(11)
    z = rng.standard_normal((6, 7)) * 3
    if kind == "index":
        t = rng.integers(0, 7, 6)
        t[2] = -100
    else:
        t = rng.random((6, 7)) * 0.5                # unnormalised on purpose: (sum q) p - q
    mod = R if impl == "oracle" else lsref
    def loss(zz):
        return np.sum(mod.cross_entropy(zz, t, **kw))

    g = mod.cross_entropy_grad(z, t, **kw)
    g_fd = fd_gradient(loss, z)
    assert_allclose(g, g_fd, rtol=0, atol=FD_GRAD_RTOL * np.max(np.abs(g_fd)))


@pytest.mark.parametrize("impl", ["oracle", "kernel"])
def test_check_grad_all_directions_and_random(impl):
    """scipy.optimize.check_grad on the scalar mean loss over a flattened logit matrix."""
    rng = np.random.default_rng(12)
    mod = R if impl == "oracle" else lsref
    for shape, direction in [((5, 4), "all"), ((64, 300), "random")]:
        t = rng.integers(0, shape[1], shape[0])
        # each closure is used within this iteration; the defaults bind its shape and targets
        def f(x, shape=shape, t=t):
            return float(mod.cross_entropy(x.reshape(shape), t, label_smoothing=0.1))

        def g(x, shape=shape, t=t):
            return mod.cross_entropy_grad(x.reshape(shape), t, label_smoothing=0.1).ravel()

        x0 = rng.standard_normal(shape[0] * shape[1]) * 3
        kwargs = dict(direction=direction)
        if direction == "random":
            kwargs["seed"] = 0
        err = check_grad(f, g, x0, **kwargs)
        # "all": err is the norm of (forward differences - gradient). "random": err is the
        # error of one directional derivative along an unnormalised standard-normal v, whose
        # size is at most |g| |v| with |v| ~ sqrt(n). A wrong factor or sign in the gradient
        # gives an error of the order of the scale itself.
        scale = np.linalg.norm(g(x0))
        if direction == "random":
            scale *= np.sqrt(x0.size)
        assert err <= CHECK_GRAD_RTOL * scale, (shape, err, scale)
        if direction == "all":                             # and the check can fail
            assert check_grad(f, lambda x, g=g: 1.01 * g(x), x0, **kwargs) > CHECK_GRAD_RTOL * scale


NEW_TERMS = [
    dict(label_smoothing=0.1, class_weight=[1.0, 0.5, 2.0, 0.0, 1.5, 1.0, 0.7]),
    dict(label_smoothing=0.1, sample_weight=[0.5, 1.0, 2.0, 0.0, 1.0, 3.0]),
    dict(label_smoothing=0.2, z_loss=0.05),
    dict(label_smoothing=0.2, kl=True),
    dict(label_smoothing=0.3, smoothing="others", kl=True, z_loss=0.01,
         class_weight=[1.0, 0.5, 2.0, 0.3, 1.5, 1.0, 0.7], sample_weight=[1, 2, 3, 4, 5, 6]),
]


@pytest.mark.parametrize("kw", NEW_TERMS, ids=lambda kw: ",".join(kw))
@pytest.mark.parametrize("impl", ["oracle", "kernel"])
@pytest.mark.parametrize("kind", ["index", "probs"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_new_terms_gradient_matches_finite_differences(kw, impl, kind, reduction):
    """Class and sample weights, z-loss and the KL form: gradients against 4th-order finite
    differences (float64)."""
    kw = dict(kw, reduction=reduction)
    if kind == "probs" and kw.get("smoothing") == "others":
        kw.pop("smoothing")
    rng = np.random.default_rng(13)
    z = rng.standard_normal((6, 7)) * 3
    t = rng.integers(0, 7, 6) if kind == "index" else rng.random((6, 7))
    mod = R if impl == "oracle" else lsref
    g = mod.cross_entropy_grad(z, t, **kw)
    g_fd = fd_gradient(lambda zz: np.sum(mod.cross_entropy(zz, t, **kw)), z)
    assert_allclose(g, g_fd, rtol=0, atol=FD_GRAD_RTOL * np.max(np.abs(g_fd)))
