import os
import warnings
import zlib

import numpy as np
import pytest

with warnings.catch_warnings():    # a forced LSREF_SIMD the CPU lacks: pytest_configure says so
    warnings.filterwarnings("ignore", "LSREF_SIMD=", RuntimeWarning)
    from lsref import _kernel
from lsref._tolerances import kernel_accuracy

try:
    import ml_dtypes
except ImportError:  # an optional dependency: the bfloat16 tests skip without it
    ml_dtypes = None

try:
    from hypothesis import settings
except ImportError:  # hypothesis is in the test extra; its tests skip without it
    settings = None

# Hypothesis is reproducible by default: "repro" derives each test's examples from the test
# itself (derandomize) and keeps no example database, so every run, here or in CI, draws the
# same examples; a failure also prints its @reproduce_failure blob.
# LSREF_HYPOTHESIS_PROFILE=explore (or pytest --hypothesis-profile=explore) draws fresh random
# examples on each run instead; a failure there prints its blob, and with it the example.
HYPOTHESIS_PROFILE = os.environ.get("LSREF_HYPOTHESIS_PROFILE", "repro")
if settings is not None:
    settings.register_profile("repro", deadline=None, print_blob=True, max_examples=60,
                              derandomize=True, database=None)
    settings.register_profile("explore", deadline=None, print_blob=True, max_examples=60,
                              database=None)
    settings.load_profile(HYPOTHESIS_PROFILE)


def stable_seed(*parts):
    """A seed for numpy's default_rng from test parameters, the same in every process
    (the built-in hash of a str changes from run to run with PYTHONHASHSEED)."""
    return zlib.crc32(repr(parts).encode())


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


def kernel_summary():
    from lsref.app.cli import openmp_status
    return (f"lsref kernel: {_kernel.COMPILER.strip()}, OpenMP {openmp_status()}, vector path "
            f"{_kernel.SIMD_PATH}; hypothesis profile {HYPOTHESIS_PROFILE!r}")


def pytest_configure(config):
    problem = forced_simd_problem(os.environ.get("LSREF_SIMD"), _kernel.SIMD_PATH)
    if problem:
        raise pytest.UsageError(problem)


def pytest_report_header(config):
    return [kernel_summary()]


def pytest_terminal_summary(terminalreporter):
    if not _kernel.OPENMP_ENABLED:          # a single-threaded build is said at the end too
        terminalreporter.write_sep("!", f"lsref's kernel is single-threaded (no OpenMP): "
                                        f"{_kernel.OPENMP_NOTE}", yellow=True)


def assert_close_to_oracle(loss, grad, ref_loss, ref_grad, dtype, term_scale=0.0):
    """The kernel's (loss, grad) against the float64 oracle's, within KERNEL_ACCURACY[dtype].

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


def finfo(dtype):
    dtype = np.dtype(dtype)
    return ml_dtypes.finfo(dtype) if dtype.name == "bfloat16" else np.finfo(dtype)


HALF_DTYPES = [np.float16] + ([ml_dtypes.bfloat16] if ml_dtypes is not None else [])


@pytest.fixture(params=[np.float32, np.float64], ids=["float32", "float64"])
def dtype(request):
    return request.param


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
