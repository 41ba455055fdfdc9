import os

import numpy as np
import pytest

from lsref._tolerances import kernel_accuracy

try:
    import ml_dtypes
except ImportError:  # an optional dependency: the bfloat16 tests skip without it
    ml_dtypes = None

try:
    from hypothesis import settings
except ImportError:  # hypothesis is in the test extra; its tests skip without it
    settings = None

if settings is not None:
    settings.register_profile("dev", deadline=None, print_blob=True, max_examples=60)
    settings.register_profile("ci", deadline=None, print_blob=True, max_examples=60,
                              derandomize=True, database=None)
    settings.load_profile("ci" if os.environ.get("CI") else "dev")


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
