"""Helpers and test-only tolerances shared by the test modules.

Test modules import from here (``from support import ...``); pytest puts this folder on
``sys.path`` (its default "prepend" import mode, the folder having no ``__init__.py``), as it
does for conftest.py. conftest.py holds only pytest's hooks, fixtures and the hypothesis
profiles, and takes what it needs from here: no test module imports conftest.

The kernel's own accuracy bounds, and the verification model, are the library's and live in
``lsref/_tolerances.py``; the tolerances below are used by the tests alone.
"""
import os
import zlib

import numpy as np
import pytest

from lsref._tolerances import kernel_accuracy

try:
    import ml_dtypes
except ImportError:  # an optional dependency: the bfloat16 tests skip without it
    ml_dtypes = None


# --- reproducible random draws ---------------------------------------------------------------

# The hypothesis profile conftest.py loads ("repro" or "explore", both registered there).
HYPOTHESIS_PROFILE = os.environ.get("LSREF_HYPOTHESIS_PROFILE", "repro")


def hypothesis_profile(config):
    """The hypothesis profile in effect: pytest's --hypothesis-profile (hypothesis's plugin
    loads it after conftest.py has loaded HYPOTHESIS_PROFILE), else HYPOTHESIS_PROFILE."""
    return config.getoption("--hypothesis-profile", None) or HYPOTHESIS_PROFILE


def stable_seed(*parts):
    """A seed for numpy's default_rng from test parameters, the same in every process
    (the built-in hash of a str changes from run to run with PYTHONHASHSEED)."""
    return zlib.crc32(repr(parts).encode())


# --- the forced vector path ------------------------------------------------------------------

# The vector path LSREF_SIMD forces (.ci/run runs the kernel tests once per path the CPU
# has): the kernel's name for it. A forced path the kernel did not take (the CPU or the build
# lacks it, or a misspelling) stops the run: the tests must not pass on another path.
SIMD_NAMES = {"generic": "generic", "avx2": "avx2+fma", "avx512": "avx512f"}


def forced_simd_problem(forced, taken):
    """Why the forced vector path ``forced`` (LSREF_SIMD) is not the one taken, or None."""
    forced = (forced or "").strip().lower()
    if not forced:
        return None
    if forced not in SIMD_NAMES:
        return (f"LSREF_SIMD={forced!r} is not a vector path (choose from "
                f"{', '.join(SIMD_NAMES)})")
    if SIMD_NAMES[forced] != taken:
        return (f"LSREF_SIMD={forced!r} was requested but the kernel runs {taken!r} (this "
                f"CPU or build lacks {forced})")
    return None


# --- test-only tolerances --------------------------------------------------------------------

# Finite-difference checks of the float64 oracle and kernel: a 4th-order central difference
# with step h has truncation error O(h^4 f^(5)) ~ 1e-20 and rounding error
# ~ eps64 * |f| / h ~ 1e-16 * 10 / 1e-4 = 1e-11 for losses of order 10; 1e-8 relative to the
# largest gradient entry is ~1000x above that and still catches a factor or sign error.
FD_STEP = 1e-4
FD_GRAD_RTOL = 1e-8


def fd_gradient(f, z, h=FD_STEP):
    """4th-order central differences of the scalar f, one logit at a time."""
    g = np.empty_like(z)
    for idx in np.ndindex(z.shape):
        def at(delta, idx=idx):
            zz = z.copy()
            zz[idx] += delta
            return f(zz)
        g[idx] = (-at(2 * h) + 8 * at(h) - 8 * at(-h) + at(-2 * h)) / (12 * h)
    return g


# scipy.optimize.check_grad uses a forward difference (error ~ sqrt(eps64) * scale ~ 1e-8 of
# the gradient's norm); 1e-6 of the norm is the bound with margin for curvature.
CHECK_GRAD_RTOL = 1e-6

# A scipy.optimize fit of softmax regression to K tight clusters (centres 4 apart, noise
# sigma = 0.03) with eps = 0.1: the trained mean logit gap sits above the analytic optimum by
# a bias that grows like sigma^2 (measured: 4.7e-2 at sigma 0.3, 5.3e-3 at 0.1, 5.1e-4 at
# 0.03; about 0.5 sigma^2), because the mean of log-ratios over a noisy cluster is not the
# log-ratio at its centre. 2e-3 is 4x that bias at sigma 0.03 and 20x below the gap
# difference between the two smoothing forms (4.511 vs 4.394).
FIT_GAP_ATOL = 2e-3

# ECE/MCE of hand-built examples: sums of at most a few hundred float64 terms in [0, 1].
CALIBRATION_ATOL = 1e-12


# --- the kernel against the oracle -----------------------------------------------------------

def finfo(dtype):
    """np.finfo, or ml_dtypes.finfo for bfloat16 (which numpy does not know)."""
    dtype = np.dtype(dtype)
    return ml_dtypes.finfo(dtype) if dtype.name == "bfloat16" else np.finfo(dtype)


HALF_DTYPES = [np.float16] + ([ml_dtypes.bfloat16] if ml_dtypes is not None else [])


def assert_close_to_oracle(loss, grad, ref_loss, ref_grad, dtype, term_scale=0.0):
    """The kernel's (loss, grad) against the float64 oracle's, within kernel_accuracy(dtype).

    Row losses that the output dtype can only hold as subnormals are compared absolutely
    (their relative precision is gone by construction). The gradient bound is relative to
    max|g_ref|, or to ``term_scale`` when larger: a gradient entry is the difference of two
    terms (c p_j and w_j q_j), so its rounding error scales with them, not with the
    difference, which can be exactly 0 (e.g. eps = 1 on equal logits). Unweighted rows with
    reduction="none" have term_scale 1."""
    acc = kernel_accuracy(dtype)
    fi = finfo(dtype)
    loss_dtype = np.asarray(loss).dtype             # 16-bit logits have a float32 loss
    loss_acc = kernel_accuracy(loss_dtype) if loss_dtype.name in (
        "float32", "float16", "bfloat16") else acc
    loss = np.asarray(loss, np.float64)
    ref_loss = np.asarray(ref_loss, np.float64)
    assert loss.shape == ref_loss.shape
    np.testing.assert_allclose(loss, ref_loss, rtol=max(loss_acc.loss_rtol, acc.loss_rtol)
                               if loss_dtype == np.float64 else loss_acc.loss_rtol,
                               atol=float(finfo(loss_dtype if loss_dtype.name != "float64"
                                                else dtype).smallest_normal),
                               equal_nan=True)
    if grad is not None:
        assert grad.shape == ref_grad.shape
        scale = max(np.max(np.abs(ref_grad)) if ref_grad.size else 0.0, term_scale)
        np.testing.assert_allclose(np.asarray(grad, np.float64), ref_grad, rtol=0,
                                   atol=acc.grad_rtol * scale
                                   + float(fi.smallest_subnormal) / 2, equal_nan=True)


# --- optional frameworks ---------------------------------------------------------------------

def require(module):
    """Import an optional framework, or skip; with LSREF_REQUIRE_FRAMEWORKS=1 (CI) a missing
    framework fails instead, so cross-framework tests cannot silently stop running."""
    if os.environ.get("LSREF_REQUIRE_FRAMEWORKS", "") not in ("", "0"):
        import importlib
        try:
            return importlib.import_module(module)
        except ImportError as exc:
            pytest.fail(f"LSREF_REQUIRE_FRAMEWORKS is set but {module} cannot be imported: "
                        f"{exc}")
    return pytest.importorskip(module)


def hide_module(monkeypatch, name):
    """Make ``import name`` (and its submodules) fail, as if it were not installed."""
    import builtins
    real_import = builtins.__import__

    def without(module, *args, **kwargs):
        if module == name or module.startswith(name + "."):
            raise ImportError(f"No module named {name!r}")
        return real_import(module, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", without)


def gemm_rounding(n_terms, dtype):
    """gamma(n) = n u / (1 - n u), u the unit roundoff of ``dtype``: the relative bound of a
    sum of n products against the sum of their magnitudes, whatever the order (Higham, 2nd ed.,
    section 3.5; lsref/_tolerances.py, "the linear layer")."""
    u = float(finfo(dtype).eps) / 2
    nu = n_terms * u
    return nu / (1.0 - nu) if nu < 1.0 else np.inf


def assert_linear_close(got, ref, h, weight, bias, targets, **kw):
    """lsref.linear_value_and_grad's (loss, dh, dweight, dbias) against the oracle's on the
    same inputs, within the bound of lsref/_tolerances.py ("the linear layer"): the kernel's
    own (kernel_accuracy) plus what the GEMMs' rounding (gemm_rounding) does to the logits,
    carried to first order (times 2) through the loss and the softmax, then the GEMMs of dh and
    dweight. float32 results; float64 ones take the flat 1e-12 of assert_linear_close64."""
    from lsref import reference as R
    loss, dh, dw, db = got
    r_loss, r_dh, r_dw, r_db = ref
    dtype = np.asarray(h).dtype
    acc, u = kernel_accuracy(dtype), float(finfo(dtype).eps) / 2
    V, d = weight.shape
    H = np.asarray(h, np.float64).reshape(-1, d)
    W = np.asarray(weight, np.float64)
    N = H.shape[0]
    b = 0.0 if bias is None else np.asarray(bias, np.float64)
    z = H @ W.T + b
    # |dz|: the GEMM's rounding, then the logit stored in dtype
    ez = gemm_rounding(d, dtype) * (np.abs(H) @ np.abs(W).T + np.abs(b)) + u * np.abs(z)
    t = np.asarray(targets)
    prob = t.ndim == H.ndim and np.issubdtype(t.dtype, np.floating)
    _, G = R.value_and_grad(z, t.reshape((N, V) if prob else (N,)), **kw)
    lse = R.logsumexp(z, axis=1)
    P = np.exp(z - lse[:, None])
    # a row's softmax part s (c + 2 z_loss |lse|) p_k: c <= max(w) sum|q|
    eps = kw.get("label_smoothing", 0.0)
    cw = kw.get("class_weight")
    wmax = 1.0 if cw is None else float(np.max(np.abs(cw)))
    qsum = ((1 - eps) * np.abs(t.reshape(N, V)).sum(axis=1) + eps) if prob else np.ones(N)
    s = np.ones(N) if kw.get("sample_weight") is None else np.abs(
        np.asarray(kw["sample_weight"], np.float64).reshape(N))
    if kw.get("reduction", "mean") == "mean":
        D = float(N) if prob else R.mean_divisor(
            t.reshape(N), V, class_weight=cw, sample_weight=kw.get("sample_weight"),
            ignore_index=kw.get("ignore_index", -100))
        s = s / D if D else s
    amp = s * (wmax * qsum + 2 * kw.get("z_loss", 0.0) * np.abs(lse))
    dG = acc.grad_rtol * np.max(np.abs(G)) + 4 * amp[:, None] * P * ez.max(axis=1)[:, None]
    row_dl = 2 * np.sum(np.abs(G) * ez, axis=1)
    r_loss = np.asarray(r_loss, np.float64)
    err = np.abs(np.asarray(loss, np.float64) - r_loss)
    bound = acc.loss_rtol * np.abs(r_loss) + (row_dl.reshape(r_loss.shape)
                                             if r_loss.ndim else row_dl.sum())
    assert np.all(err <= bound), (np.max(err), np.max(bound))
    aW, aH = np.abs(W), np.abs(H)
    checks = [("dh", dh.reshape(N, d), np.asarray(r_dh).reshape(N, d),
               dG @ aW + gemm_rounding(V, dtype) * (np.abs(G) @ aW)),
              ("dweight", dw, r_dw, dG.T @ aH + gemm_rounding(N, dtype) * (np.abs(G).T @ aH))]
    if bias is not None:
        checks.append(("dbias", db, r_db, dG.sum(axis=0)))
    for name, got_x, ref_x, tol in checks:
        ref_x = np.asarray(ref_x, np.float64)
        e = np.abs(np.asarray(got_x, np.float64) - ref_x)
        tol = tol + u * np.abs(ref_x)                  # the result stored in dtype
        assert np.all(e <= tol), (name, np.max(e), np.max(e / tol))


def assert_linear_close64(got, ref):
    """float64 results of lsref.linear_value_and_grad against the oracle: within 1e-12 (the
    loss relatively; each gradient relatively to its largest entry)."""
    for name, g, r in zip(("loss", "dh", "dweight", "dbias"), got, ref):
        if r is None:
            assert g is None, name
            continue
        g, r = np.asarray(g, np.float64), np.asarray(r, np.float64)
        assert g.shape == r.shape, name
        scale = np.max(np.abs(r)) if r.size else 0.0
        np.testing.assert_allclose(g, r, rtol=0, atol=1e-12 * scale + 1e-300, equal_nan=True,
                                   err_msg=name)
