"""The vectorised row sweeps: the exponential's accuracy and special values, and the portable
(generic) path against the one this CPU takes, within the documented accuracy."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
from numpy.testing import assert_array_equal

from lsref import _kernel
from conftest import assert_close_to_oracle


def test_exp_accuracy_and_special_values():
    x = -np.linspace(0.0, 87.0, 400001)
    o64, o32 = np.empty_like(x), np.empty(x.size, np.float32)
    _kernel.exp_neg(x, o64, o32)
    ref32 = np.exp(x.astype(np.float32).astype(np.float64))
    assert np.max(np.abs(o32 / ref32 - 1)) < 3e-7              # _simd.h: ~2.5e-7
    assert np.max(np.abs(o64 / np.exp(x) - 1)) < 4.5e-16       # ~1 ulp
    assert o32[0] == 1.0 and o64[0] == 1.0                      # the max term is exactly 1
    special = np.array([-np.inf, np.nan, -87.5, -1e30, -0.0, -750.0])
    o64, o32 = np.empty(6), np.empty(6, np.float32)
    _kernel.exp_neg(special, o64, o32)
    assert_array_equal(o32[[0, 2, 3, 5]], 0.0)
    assert_array_equal(o64[[0, 3, 5]], 0.0)
    assert np.isnan(o32[1]) and np.isnan(o64[1])
    assert o32[4] == 1.0 and o64[4] == 1.0


SCRIPT = textwrap.dedent("""
    import json, sys, numpy as np, lsref
    from lsref import _kernel
    rng = np.random.default_rng(5)
    out = {"path": _kernel.SIMD_PATH}
    for dt in ("float32", "float64"):
        for k in (10, 100, 1000, 5000):
            z = (rng.standard_normal((64, k)) * 3).astype(dt)
            z[3, 1] = -np.inf
            t = rng.integers(0, k, 64)
            loss, grad = lsref.value_and_grad(z, t, label_smoothing=0.1, reduction="none")
            out[f"{dt}-{k}"] = [z.tolist(), t.tolist(), loss.astype(float).tolist(),
                                grad.astype(float).tolist()]
    json.dump(out, sys.stdout)
""")


def run_with(simd):
    env = dict(os.environ, LSREF_SIMD=simd)
    r = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                       text=True, timeout=300, cwd=os.path.dirname(__file__) or ".")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_generic_path_matches_the_oracle_and_the_fast_path():
    """LSREF_SIMD=generic forces the portable sweeps (any x86-64, or another architecture):
    same results as the path this CPU takes, within the documented accuracy, and both within
    the oracle's bounds."""
    from lsref import reference as R
    generic = run_with("generic")
    native = run_with("")
    assert generic["path"] == "generic"
    for key in (k for k in generic if k != "path"):
        z, t, loss_g, grad_g = generic[key]
        dtype = np.float32 if key.startswith("float32") else np.float64
        z, t = np.array(z, dtype), np.array(t)
        ref = R.value_and_grad(z, t, label_smoothing=0.1, reduction="none")
        for loss, grad in ((loss_g, grad_g), native[key][2:]):
            assert_close_to_oracle(np.array(loss, dtype), np.array(grad, dtype), *ref, dtype)
