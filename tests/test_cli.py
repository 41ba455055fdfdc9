"""The `lsref` command, run as a user runs it."""
import subprocess
import sys

import lsref._kernel


def run(*args):
    return subprocess.run([sys.executable, "-m", "lsref.cli", *args], capture_output=True,
                          text=True, timeout=300)


def test_info_reports_build():
    r = run("info")
    assert r.returncode == 0, r.stderr
    assert f"lsref {lsref.__version__}" in r.stdout
    assert ("OpenMP: on" in r.stdout) == lsref._kernel.OPENMP_ENABLED
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
