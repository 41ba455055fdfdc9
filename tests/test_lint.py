"""``ruff check .`` over the source tree is clean, with the configuration of pyproject.toml's
``[tool.ruff]`` (ruff is the lint extra: ``pip install ".[lint]"``)."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_ruff_check_is_clean():
    pytest.importorskip("ruff", reason="ruff is not installed (the lint extra: \".[lint]\")")
    pyproject = os.path.join(ROOT, "pyproject.toml")
    if not os.path.exists(pyproject):
        pytest.skip("the tests are not in a source tree (no pyproject.toml beside them)")
    # --no-cache: the check leaves no .ruff_cache in the tree it reads
    r = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "."], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
