"""The `lsref` command, run as a user runs it."""
import os
import shutil
import subprocess
import sys
import tempfile

import lsref._kernel

# The console script installed beside this interpreter (what a user types), run from a
# neutral folder so that the source tree cannot shadow the installed package.
SCRIPT = shutil.which("lsref", path=os.path.dirname(sys.executable)) or shutil.which("lsref")


def run(*args):
    assert SCRIPT, "the lsref console script is not installed"
    return subprocess.run([SCRIPT, *args], capture_output=True, text=True, timeout=300,
                          cwd=tempfile.gettempdir())


def test_info_reports_build():
    r = run("info")
    assert r.returncode == 0, r.stderr
    assert f"lsref {lsref.__version__}" in r.stdout
    assert ("OpenMP: on (multi-threaded)" in r.stdout) == lsref._kernel.OPENMP_ENABLED
    if not lsref._kernel.OPENMP_ENABLED:        # single-threaded, and why (setup.py)
        assert "OpenMP: off (single-threaded: " in r.stdout
        assert lsref._kernel.OPENMP_NOTE and lsref._kernel.OPENMP_NOTE in r.stdout
    assert lsref._kernel.BUILD_FLAGS in r.stdout


def test_selfcheck_small_passes_and_reports():
    r = run("selfcheck", "--rows", "256", "--classes", "3000", "--repeat", "2")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "loss relative error" in r.stdout and "FAIL" not in r.stdout
    assert "faster" in r.stdout


def test_usage_error_exit_code():
    r = run("nonsense")
    assert r.returncode == 2
    assert "invalid choice" in r.stderr
