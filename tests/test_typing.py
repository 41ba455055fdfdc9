"""lsref's annotations as a user's type checker sees them: ``mypy --strict`` on a user's
script (tests/typing/user_script.py) passes, the script runs, and mypy rejects a misuse of
the API (so the annotations are real types, not ``Any``)."""
import os
import subprocess
import sys
import textwrap

import pytest

import lsref

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "typing", "user_script.py")
PKG = os.path.dirname(os.path.abspath(lsref.__file__))

# A user's misuse: a reduction that is not one of the Literal's values, and a result used as
# what it is not. Each line is one error that mypy must report, with this error code.
MISUSE = textwrap.dedent("""\
    import numpy as np
    import lsref

    logits = np.zeros((2, 3))
    lsref.cross_entropy(logits, [0, 1], reduction="avg")
    count: int = lsref.value_and_grad(logits, [0, 1])
    lsref.verify(logits, [0, 1], lsref.cross_entropy(logits, [0, 1])).passed.upper()
""")
MISUSE_ERRORS = {5: "[arg-type]", 6: "[assignment]", 7: "[attr-defined]"}


def _mypy(path, tmp_path):
    """``python -m mypy --strict path``, type-checking the lsref these tests import as a user's
    mypy finds an installed package: through its py.typed, its own modules' errors not
    reported. mypy runs outside the source tree (in a source checkout it would otherwise take
    lsref for the user's own code); a checkout's lsref is on PYTHONPATH, which mypy searches
    as it searches site-packages."""
    pytest.importorskip("mypy", reason="mypy (the test extra) type-checks the user script")
    root = os.path.dirname(PKG)
    env = {**os.environ, "MYPY_CACHE_DIR": str(tmp_path / "mypy_cache")}
    if os.path.basename(root) not in ("site-packages", "dist-packages"):
        env["PYTHONPATH"] = os.pathsep.join(
            [root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    r = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--no-error-summary",
                        "--show-error-codes", path],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    return r.returncode, r.stdout + r.stderr


def test_user_script_passes_mypy_strict(tmp_path):
    status, output = _mypy(SCRIPT, tmp_path)
    assert status == 0, output


def test_user_script_runs(tmp_path):
    r = subprocess.run([sys.executable, SCRIPT], cwd=tmp_path, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "verified: True" in r.stdout


def test_mypy_rejects_a_misuse_of_the_api(tmp_path):
    path = tmp_path / "misuse.py"
    path.write_text(MISUSE)
    status, output = _mypy(str(path), tmp_path)
    assert status == 1, output
    errors = {}
    for line in output.splitlines():
        if ": error: " in line:
            lineno = int(line.split(":")[1])
            errors[lineno] = line
    assert sorted(errors) == sorted(MISUSE_ERRORS), output
    for lineno, code in MISUSE_ERRORS.items():
        assert errors[lineno].endswith(code), output
    assert "Literal['avg']" in errors[5], output
