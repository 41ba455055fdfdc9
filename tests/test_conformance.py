"""Real frameworks, their own losses and autograd, judged by lsref.verify. Where a framework is
right verify passes; where it is wrong it fails with the right diagnosis."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from lsref import verify
from lsref.app import conformance as C
from support import require

FRAMEWORK_MODULE = {"torch": "torch", "jax": "optax", "keras": "keras"}


def run_case(framework, name):
    require(FRAMEWORK_MODULE[framework])
    case = next(c for c in C.cases() if c.name == name)
    z, t, w, axis = C.make_inputs(case)
    loss, grad, conv, params, t_ver = C.RUNNERS[framework].run(case, z, t, w, axis)
    from lsref.verify import to_numpy
    return verify(z, t_ver, to_numpy(loss), to_numpy(grad), convention=conv, **params)


def test_torch_float16_overflow_at_32000_classes():
    r = run_case("torch", "float16 K=32000")
    assert not r.passed and r.loss.n_nonfinite == 1
    assert r.diagnosis[0].startswith("half-precision overflow")


def test_torch_nan_for_zero_weight_masked_class():
    r = run_case("torch", "-inf logit with class weight 0")
    assert not r.passed
    assert r.diagnosis[0].startswith("NaN from 0 * (-inf)")


def test_optax_nan_for_minus_inf_logits_with_one_hot_labels():
    r = run_case("jax", "-inf logits, eps=0")
    assert not r.passed and r.loss.n_nonfinite > 0
    assert r.diagnosis[0].startswith("NaN from 0 * (-inf)")


def test_keras_smooths_over_the_last_axis_whatever_axis_says():
    r = run_case("keras", "K-dim layout (class axis 1)")
    assert not r.passed
    assert r.diagnosis[0].startswith("smoothing over the wrong axis")


def test_keras_float64_is_computed_in_float32():
    r = run_case("keras", "float64 eps=0.1 K=1000")
    assert not r.passed and r.diagnosis[0].startswith("precision")


@pytest.mark.parametrize("framework", ["torch", "jax", "keras"])
def test_whole_matrix_passes_or_names_a_known_defect(framework):
    """Acceptance: every case passes where the framework is right; every failure is one of
    the documented defects, with its diagnosis."""
    require(FRAMEWORK_MODULE[framework])
    rows, versions = C.run([framework], progress=False)
    assert rows
    for row in rows:
        assert row.verdict in ("pass", "FAIL (known defect)"), (row.case, row.diagnosis)
    known = {case for fw, case in C.KNOWN_DEFECTS if fw == framework}
    failed = {r.case for r in rows if r.verdict != "pass"}
    assert failed == known


def lsref_cli(*args, cwd):
    import shutil
    script = shutil.which("lsref", path=os.path.dirname(sys.executable)) or "lsref"
    return subprocess.run([script, *args], capture_output=True, text=True, cwd=cwd,
                          timeout=600)


def test_cli_verify_npz_exit_codes(tmp_path):
    import lsref
    rng = np.random.default_rng(71)
    z = (rng.standard_normal((8, 5)) * 2).astype(np.float32)
    t = rng.integers(0, 5, 8)
    w = rng.random(5) + 0.5
    loss, grad = lsref.reference.value_and_grad(z, t, label_smoothing=0.1, class_weight=w)
    good = tmp_path / "good.npz"
    np.savez(good, logits=z, targets=t, loss=np.float32(loss), grad=grad.astype(np.float32),
             weight=w)
    r = lsref_cli("verify", str(good), "--convention", "torch", "--label-smoothing", "0.1",
                  cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "PASSED" in r.stdout
    bad = tmp_path / "bad.npz"
    np.savez(bad, logits=z, targets=t, loss=np.float32(loss * 1.01), weight=w)
    r = lsref_cli("verify", str(bad), "--convention", "torch", "--label-smoothing", "0.1",
                  "--json", cwd=tmp_path)
    assert r.returncode == 1
    assert json.loads(r.stdout)["passed"] is False
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, logits=z, targets=np.array([{"a": 1}], dtype=object), loss=loss)
    r = lsref_cli("verify", str(pickled), cwd=tmp_path)
    assert r.returncode == 2 and "cannot read" in r.stderr
    r = lsref_cli("verify", str(tmp_path / "missing.npz"), cwd=tmp_path)
    assert r.returncode == 2 and "no such file" in r.stderr
    np.savez(tmp_path / "nologits.npz", targets=t, loss=loss)
    r = lsref_cli("verify", str(tmp_path / "nologits.npz"), cwd=tmp_path)
    assert r.returncode == 2 and "no array named logits" in r.stderr
    r = lsref_cli("verify", str(good), "--convention", "nope", cwd=tmp_path)
    assert r.returncode == 2 and "unknown convention" in r.stderr


def test_cli_conformance_runs_and_prints_a_table(tmp_path):
    require("torch")
    r = lsref_cli("conformance", "--frameworks", "torch", "--quick", "--markdown",
                  cwd=tmp_path)
    # PyTorch's float16 overflow is a known defect, and a failed case: exit 1, not 0
    assert r.returncode == 1, r.stdout + r.stderr
    assert "| framework | case |" in r.stdout and "torch 2." in r.stdout
    assert "FAIL (known defect)" in r.stdout
    assert "\r" not in r.stderr and "[1/" not in r.stderr   # progress only on a terminal
    r = lsref_cli("conformance", "--frameworks", "nope", cwd=tmp_path)
    assert r.returncode == 2
