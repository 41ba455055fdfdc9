"""pytest's hooks and fixtures for lsref's tests, and the hypothesis profiles.

The helpers and the test-only tolerances the test modules share live in support.py: test
modules import them from there, never from this file (tests/test_build.py checks)."""
import os
import warnings

import numpy as np
import pytest

with warnings.catch_warnings():    # a forced LSREF_SIMD the CPU lacks: pytest_configure says so
    warnings.filterwarnings("ignore", "LSREF_SIMD=", RuntimeWarning)
    from lsref import _kernel
from support import HYPOTHESIS_PROFILE, forced_simd_problem, hypothesis_profile, stable_seed

try:
    from hypothesis import settings
except ImportError:  # hypothesis is in the test extra; its tests skip without it
    settings = None

# Hypothesis is reproducible by default: "repro" derives each test's examples from the test
# itself (derandomize) and keeps no example database, so every run, here or in CI, draws the
# same examples; a failure also prints its @reproduce_failure blob.
# LSREF_HYPOTHESIS_PROFILE=explore (or pytest --hypothesis-profile=explore) draws fresh random
# examples on each run instead; a failure there prints its blob, and with it the example.
if settings is not None:
    settings.register_profile("repro", deadline=None, print_blob=True, max_examples=60,
                              derandomize=True, database=None)
    settings.register_profile("explore", deadline=None, print_blob=True, max_examples=60,
                              database=None)
    settings.load_profile(HYPOTHESIS_PROFILE)


def kernel_summary(config):
    from lsref.app.cli import openmp_status
    return (f"lsref kernel: {_kernel.COMPILER.strip()}, OpenMP {openmp_status()}, vector path "
            f"{_kernel.SIMD_PATH}; hypothesis profile {hypothesis_profile(config)!r}")


def pytest_configure(config):
    problem = forced_simd_problem(os.environ.get("LSREF_SIMD"), _kernel.SIMD_PATH)
    if problem:
        raise pytest.UsageError(problem)


def pytest_report_header(config):
    return [kernel_summary(config)]


def pytest_terminal_summary(terminalreporter):
    if not _kernel.OPENMP_ENABLED:          # a single-threaded build is said at the end too
        terminalreporter.write_sep("!", f"lsref's kernel is single-threaded (no OpenMP): "
                                        f"{_kernel.OPENMP_NOTE}", yellow=True)


@pytest.fixture(params=[np.float32, np.float64], ids=["float32", "float64"])
def dtype(request):
    return request.param


@pytest.fixture
def rng(request):
    """A generator of the test's own, seeded from its module and name (parameters included):
    its draws do not depend on which other tests ran before it, so running one test alone
    (-k, --lf) replays what it drew in the full run."""
    return np.random.default_rng(stable_seed(request.node.module.__name__, request.node.name))
