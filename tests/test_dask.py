"""lsref.dask: dask arrays chunked along rows and classes give the in-memory result, on the
threaded scheduler and on a LocalCluster of worker processes."""
import numpy as np
import pytest

import lsref
from lsref._tolerances import kernel_accuracy
from support import require

da = require("dask.array")
ldask = pytest.importorskip("lsref.dask") if da is not None else None

F64 = kernel_accuracy(np.float64)


def problem(dtype=np.float64, N=64, K=103, seed=0):
    rng = np.random.default_rng(seed)
    z = (rng.standard_normal((N, K)) * 3).astype(dtype)
    t = rng.integers(0, K, N)
    return z, t, rng


def chunked_4x4(z):
    N, K = z.shape
    return da.from_array(z, chunks=(-(-N // 4), -(-K // 4)))


@pytest.mark.parametrize("kw", [
    dict(label_smoothing=0.1),
    dict(label_smoothing=0.1, reduction="sum", z_loss=1e-3),
    dict(label_smoothing=0.2, reduction="none", ignore_index=5),
    dict(label_smoothing=0.3, smoothing="others", kl=True),
    dict(label_smoothing=0.1, weights=True),
], ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()))
def test_4x4_chunks_equal_the_in_memory_result(kw):
    z, t, rng = problem()
    kw = dict(kw)
    if kw.pop("weights", False):
        kw.update(class_weight=rng.random(z.shape[1]), sample_weight=rng.random(z.shape[0]))
    x = chunked_4x4(z)
    assert x.numblocks == (4, 4)
    loss, grad = ldask.value_and_grad(x, t, **kw)
    ref_loss, ref_grad = lsref.value_and_grad(z, t, **kw)
    np.testing.assert_allclose(loss.compute(), ref_loss, rtol=1e-12)
    np.testing.assert_allclose(grad.compute(), ref_grad, rtol=0,
                               atol=1e-12 * np.abs(ref_grad).max())


def test_float32_and_dask_targets_and_a_deep_merge_tree():
    z, t, rng = problem(np.float32, N=50, K=260)
    x = da.from_array(z, chunks=(13, 20))                  # 13 class chunks
    loss, grad = ldask.value_and_grad(x, da.from_array(t, chunks=7), label_smoothing=0.1,
                                      split_every=2)
    ref_loss, ref_grad = lsref.value_and_grad(z, t, label_smoothing=0.1)
    acc = kernel_accuracy(np.float32)
    assert grad.dtype == np.float32
    np.testing.assert_allclose(loss.compute(), ref_loss, rtol=acc.loss_rtol)
    np.testing.assert_allclose(grad.compute(), ref_grad, rtol=0,
                               atol=acc.grad_rtol * np.abs(ref_grad).max())


def test_special_values_and_empty_mean():
    z, t, _ = problem(N=8, K=12)
    z[1, 3] = -np.inf
    z[2, 5] = np.nan
    z[3, :6] = -np.inf                                     # a whole chunk of -inf
    kw = dict(label_smoothing=0.1, reduction="none")
    loss, grad = ldask.value_and_grad(da.from_array(z, chunks=(3, 6)), t, **kw)
    ref_loss, ref_grad = lsref.value_and_grad(z, t, **kw)
    np.testing.assert_allclose(loss.compute(), ref_loss, rtol=1e-12)
    np.testing.assert_allclose(grad.compute(), ref_grad, rtol=0, atol=1e-12)
    ignored = np.full(8, -100)
    loss, grad = ldask.value_and_grad(da.from_array(z, chunks=(3, 6)), ignored)
    assert np.isnan(loss.compute()) and not np.any(grad.compute())   # like the kernel


def test_on_a_local_cluster_of_two_worker_processes():
    distributed = require("distributed")
    z, t, rng = problem(N=96, K=200, seed=3)
    w = rng.random(200)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        loss, grad = ldask.value_and_grad(chunked_4x4(z), t, label_smoothing=0.1,
                                          class_weight=w)
        loss, grad = client.compute([loss, grad], sync=True)
        workers = len(client.scheduler_info()["workers"])
    assert workers == 2
    ref_loss, ref_grad = lsref.value_and_grad(z, t, label_smoothing=0.1, class_weight=w)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-12)
    np.testing.assert_allclose(grad, ref_grad, rtol=0, atol=1e-12 * np.abs(ref_grad).max())


@pytest.mark.parametrize("call,exc,match", [
    (lambda: ldask.value_and_grad(np.zeros((2, 3)), [0, 1]), TypeError, "dask array"),
    (lambda: ldask.value_and_grad(da.zeros((2, 3, 4)), [0, 1]), ValueError, "2-D"),
    (lambda: ldask.value_and_grad(da.zeros((2, 3)), [0.0, 1.0]), TypeError, "integer"),
    (lambda: ldask.value_and_grad(da.zeros((2, 3)), [0, 1, 2]), ValueError, "one value per"),
    (lambda: ldask.value_and_grad(da.zeros((2, 3)), [0, 1], label_smoothing=2.0), ValueError,
     "label_smoothing"),
    (lambda: ldask.value_and_grad(da.zeros((2, 3)), [0, 1], axis=0), ValueError, "axis"),
])
def test_bad_input_is_a_clear_error(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_bad_targets_fail_when_computed():
    loss = ldask.cross_entropy(da.zeros((2, 3), chunks=(1, 3)), [0, 7])
    with pytest.raises(ValueError, match="targets"):
        loss.compute()


def test_docstring_example():
    import doctest
    result = doctest.testmod(ldask, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def _dask_dtypes():
    out = [np.float16, np.float32, np.float64, ">f4", ">f2"]
    try:
        import ml_dtypes
        out.append(ml_dtypes.bfloat16)
    except ImportError:
        pass
    return out


@pytest.mark.parametrize("dtype", _dask_dtypes(), ids=lambda d: np.dtype(d).str)
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_declared_dtypes_are_the_computed_ones(dtype, reduction):
    """float16 logits declared a float16 gradient and computed float32. The dtypes dask
    declares before computing are the ones computed, and both are the in-memory rule
    (SEMANTICS.md, "Storage"): the gradient in the logits' dtype (native byte order), the
    loss too, except float32 for 16-bit logits."""
    z, t, _ = problem(np.float64, N=16, K=11)
    z = z.astype(dtype)
    native = np.dtype(dtype).newbyteorder("=")
    is_half = native.itemsize == 2
    loss_dtype = np.dtype(np.float32) if is_half else native
    loss, grad = ldask.value_and_grad(chunked_4x4(z), t, label_smoothing=0.1,
                                      reduction=reduction)
    assert grad.dtype == native and grad._meta.dtype == native
    assert loss.dtype == loss_dtype
    lc, gc = loss.compute(), grad.compute()
    assert gc.dtype == grad.dtype
    assert np.asarray(lc).dtype == loss.dtype
    ref_loss, ref_grad = lsref.reference.value_and_grad(z.astype(np.float64), t,
                                                        label_smoothing=0.1,
                                                        reduction=reduction)
    # 16-bit logits are read exactly and computed in float32; only the stored gradient
    # is rounded to 16 bits (bfloat16: 8 significant bits)
    tol = 1e-12 if native.itemsize == 8 else 1e-5
    gtol = 2 ** -8 if is_half else tol
    np.testing.assert_allclose(np.asarray(gc, np.float64), ref_grad, rtol=0,
                               atol=gtol * np.abs(ref_grad).max())
    np.testing.assert_allclose(np.asarray(lc, np.float64), ref_loss, rtol=tol)
